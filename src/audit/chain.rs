//! The log file and its hash chain: how a line is written ([`encode_line`]), checked
//! ([`check_line`]) and read back in order ([`scan_log`], [`for_each_line`]), and what the
//! index files each line under ([`LineKey`], [`patient_key`]).
//!
//! A line is `{"seq":N,"prev":"<64 hex>","kind":…,…,"hash":"<64 hex>"}`; `hash` is the hex
//! SHA-256 of `prev` followed by the line without its trailing `,"hash":"…"` member (see the
//! module documentation of [`crate::audit`]).

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, BufRead, BufReader};

use ring::digest;
use serde::{Deserialize, Serialize};

use super::record::RequestRecord;
use super::refusal::{ConnectionRecord, SuppressedRecord};

/// Name of the audit log inside the audit directory.
pub const LOG_FILE: &str = "audit.log";

/// `prev` of the first line.
pub(super) const ZERO_HASH: [u8; 64] = [b'0'; 64];
/// Every line ends with `,"hash":"<64 hex>"}`.
const HASH_MEMBER: &[u8] = b",\"hash\":\"";
pub(super) const HASH_SUFFIX_LEN: usize = 9 + 64 + 2;

/// Record body as serialised by callers (`{"kind":…,…}`); the writer
/// prefixes `seq`/`prev` and appends `hash`.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub(super) enum BodyOut<'a> {
    Request(&'a RequestRecord),
    Outcome {
        rid: u64,
        status: u16,
        bytes: u64,
        duration_us: u64,
        /// How the exchange ended when not normally: `"client-closed"` (issue 11 item 9).
        #[serde(skip_serializing_if = "Option::is_none")]
        end: Option<&'a str>,
    },
    Connection(&'a ConnectionRecord),
    Suppressed(&'a SuppressedRecord),
}

/// What the index files a log line under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LineKey {
    /// A request line and the key of its patient.
    Request(u64),
    /// An outcome line: it takes the key of request `rid`.
    Outcome(u64),
}

/// The index key of a patient id: FNV-1a 64 of its bytes, never 0 (0 is "no patient").
/// Collisions only cost a read: every line read through the index is checked.
pub(super) fn patient_key(patient: Option<&str>) -> u64 {
    let Some(p) = patient else { return 0 };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in p.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.max(1)
}

pub(super) fn hex_sha256(parts: &[&[u8]]) -> [u8; 64] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut ctx = digest::Context::new(&digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    let d = ctx.finish();
    let mut out = [0u8; 64];
    for (pair, b) in out.chunks_exact_mut(2).zip(d.as_ref()) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0x0f)];
    }
    out
}

/// Appends one complete line (with `\n`) to `buf`; returns its hash.
pub(super) fn encode_line(buf: &mut Vec<u8>, seq: u64, prev: &[u8; 64], body: &[u8]) -> [u8; 64] {
    let start = buf.len();
    buf.extend_from_slice(b"{\"seq\":");
    buf.extend_from_slice(seq.to_string().as_bytes());
    buf.extend_from_slice(b",\"prev\":\"");
    buf.extend_from_slice(prev);
    buf.extend_from_slice(b"\",");
    // `body` is `{"kind":…}`: drop its opening brace, keep the closing one.
    buf.extend_from_slice(body.get(1..).unwrap_or_default());
    let hash = hex_sha256(&[prev, &buf[start..]]);
    buf.pop(); // closing brace of the canonical form
    buf.extend_from_slice(HASH_MEMBER);
    buf.extend_from_slice(&hash);
    buf.extend_from_slice(b"\"}\n");
    hash
}

/// Fields needed to check the chain; the hash covers the rest.
#[derive(Deserialize)]
struct LineHeader<'a> {
    seq: u64,
    #[serde(borrow)]
    prev: Cow<'a, str>,
    #[serde(borrow)]
    hash: Cow<'a, str>,
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    rid: Option<u64>,
    #[serde(default, borrow)]
    patient: Option<Cow<'a, str>>,
}

enum LineFault {
    /// Not valid JSON / missing fields (may be a torn write if it is the last line).
    Parse(String),
    /// Valid line that does not fit the chain.
    Chain { seq: u64, reason: String },
}

/// Checks one line (without `\n`) against the expected seq and previous hash; returns its
/// hash and what the index files it under.
fn check_line(
    line: &[u8],
    expected: u64,
    prev: &[u8; 64],
) -> Result<([u8; 64], LineKey), LineFault> {
    let h: LineHeader =
        serde_json::from_slice(line).map_err(|e| LineFault::Parse(format!("invalid JSON: {e}")))?;
    let seq = h.seq;
    let bad = |reason: String| LineFault::Chain { seq, reason };
    if seq != expected {
        return Err(bad(format!(
            "seq {seq} where {expected} was expected (line deleted, inserted or reordered)"
        )));
    }
    if h.prev.as_bytes() != prev {
        return Err(bad(
            "prev does not match the hash of the preceding line (chain link broken)".into(),
        ));
    }
    let n = line.len();
    if n < HASH_SUFFIX_LEN + 2 {
        return Err(bad("line too short for a hash member".into()));
    }
    let (canon, suffix) = line.split_at(n - HASH_SUFFIX_LEN);
    if !suffix.starts_with(HASH_MEMBER)
        || !suffix.ends_with(b"\"}")
        || &suffix[HASH_MEMBER.len()..HASH_MEMBER.len() + 64] != h.hash.as_bytes()
    {
        return Err(bad("\"hash\" is not the last member of the line".into()));
    }
    let computed = hex_sha256(&[prev, canon, b"}"]);
    if computed.as_slice() != h.hash.as_bytes() {
        return Err(bad(
            "hash does not match the line content (line altered)".into()
        ));
    }
    let key = match h.kind.as_ref() {
        "request" => LineKey::Request(patient_key(h.patient.as_deref())),
        "outcome" => match h.rid {
            Some(rid) if rid >= 1 && rid < seq => LineKey::Outcome(rid),
            _ => return Err(bad("outcome without a valid earlier rid".into())),
        },
        // Connection refusals and suppression summaries name no patient.
        "connection" | "suppressed" => LineKey::Request(0),
        other => return Err(bad(format!("unknown kind {other:?}"))),
    };
    Ok((computed, key))
}

/// A good line as [`scan_log`] hands it to its caller (for the index).
pub(super) struct Scanned {
    pub(super) seq: u64,
    /// Byte offsets of the line's start and of the next line's.
    pub(super) offset: u64,
    pub(super) end: u64,
    pub(super) key: LineKey,
    /// Chain hashes of the previous line and of this one.
    pub(super) prev: [u8; 64],
    pub(super) hash: [u8; 64],
}

/// What [`scan_log`] found: the end of the good chain.
pub(super) struct Scan {
    pub(super) last_seq: u64,
    pub(super) last_hash: [u8; 64],
    /// Length of the file up to the end of the last good line.
    pub(super) good_len: u64,
    /// Hash of the line whose seq equals the anchor's seq.
    pub(super) anchor_hash: Option<[u8; 64]>,
    /// A torn final line (1-based line number and why), only when repairing.
    pub(super) torn: Option<(u64, String)>,
}

pub(super) enum ScanErr {
    Io(io::Error),
    Broken {
        line: u64,
        seq: Option<u64>,
        reason: String,
    },
}

/// Reads the whole log and checks every link.  An unterminated final segment
/// is always ignored (a write in progress, a torn write that was never
/// acknowledged, or the zeros the writer grows the file by); with `repair`, an
/// unparsable *final* line, or lines after zeros (a batch that never fully reached
/// the disk), are reported as torn instead of being an error.  `on_line` sees every
/// good line.
pub(super) fn scan_log(
    file: File,
    anchor_seq: u64,
    repair: bool,
    on_line: &mut dyn FnMut(&Scanned),
) -> Result<Scan, ScanErr> {
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut buf = Vec::with_capacity(1024);
    let mut st = Scan {
        last_seq: 0,
        last_hash: ZERO_HASH,
        good_len: 0,
        anchor_hash: None,
        torn: None,
    };
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(ScanErr::Io)?;
        if n == 0 {
            break;
        }
        let line_no = st.last_seq + 1;
        let Some(line) = buf.strip_suffix(b"\n") else {
            // Zeros alone are the space the writer grows the file by ahead of its lines.
            if repair && buf.iter().any(|&b| b != 0) {
                st.torn = Some((line_no, "final line has no newline".into()));
            }
            break;
        };
        if memchr::memchr(0, line).is_some() {
            // Zeros before more data: after a crash, part of the last batch never reached the
            // disk (its blocks still hold the zeros written ahead of the lines).
            let reason = "zero bytes inside a line (a write that never reached the disk)";
            if repair {
                st.torn = Some((line_no, reason.into()));
                break;
            }
            return Err(ScanErr::Broken {
                line: line_no,
                seq: None,
                reason: reason.into(),
            });
        }
        match check_line(line, line_no, &st.last_hash) {
            Ok((hash, key)) => {
                on_line(&Scanned {
                    seq: line_no,
                    offset: st.good_len,
                    end: st.good_len + n as u64,
                    key,
                    prev: st.last_hash,
                    hash,
                });
                st.last_seq = line_no;
                st.last_hash = hash;
                st.good_len += n as u64;
                if line_no == anchor_seq {
                    st.anchor_hash = Some(hash);
                }
            }
            Err(LineFault::Parse(reason))
                if repair && reader.fill_buf().map_err(ScanErr::Io)?.is_empty() =>
            {
                st.torn = Some((line_no, reason));
                break;
            }
            Err(LineFault::Parse(reason)) => {
                return Err(ScanErr::Broken {
                    line: line_no,
                    seq: None,
                    reason,
                })
            }
            Err(LineFault::Chain { seq, reason }) => {
                return Err(ScanErr::Broken {
                    line: line_no,
                    seq: Some(seq),
                    reason,
                })
            }
        }
    }
    Ok(st)
}

/// Feeds every complete line of `reader` (without its `\n`) to `each` with its 1-based
/// number, counting on from `before` lines; stops at the end or at an unterminated final
/// segment (a write in progress). Nothing is checked: for queries, not for verification.
pub(super) fn for_each_line<R: BufRead, E>(
    reader: &mut R,
    before: u64,
    io: impl Fn(io::Error) -> E,
    mut each: impl FnMut(&[u8], u64) -> Result<(), E>,
) -> Result<(), E> {
    let mut buf = Vec::with_capacity(1024);
    let mut line_no = before;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf).map_err(&io)? == 0 {
            return Ok(());
        }
        line_no += 1;
        let Some(line) = buf.strip_suffix(b"\n") else {
            return Ok(()); // write in progress
        };
        each(line, line_no)?;
    }
}

/// The `seq` a line as written starts with (`{"seq":N,`), read without parsing it.
pub(super) fn written_seq(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(b"{\"seq\":")?;
    let n = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if rest.get(n) != Some(&b',') {
        return None;
    }
    std::str::from_utf8(&rest[..n]).ok()?.parse().ok()
}

/// The `kind` of a line as [`encode_line`] writes it (`{"seq":N,"prev":"<64 hex>","kind":"…"`),
/// read without parsing the line; `None` for anything else.
pub(super) fn written_kind(line: &[u8]) -> Option<&[u8]> {
    let rest = line.strip_prefix(b"{\"seq\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let rest = rest.get(digits..)?.strip_prefix(b",\"prev\":\"")?;
    let rest = rest.get(64..)?.strip_prefix(b"\",\"kind\":\"")?;
    let end = memchr::memchr(b'"', rest)?;
    Some(&rest[..end])
}

/// The `rid` of an outcome line (`…,"kind":"outcome","rid":N,…`), read without parsing it.
pub(super) fn outcome_rid(line: &[u8]) -> Option<u64> {
    const RID: &[u8] = b"\"kind\":\"outcome\",\"rid\":";
    let at = memchr::memmem::find(line, RID)? + RID.len();
    let digits = line.get(at..)?;
    let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&digits[..n]).ok()?.parse().ok()
}
