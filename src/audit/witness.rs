//! What one machine can prove about its own audit log, and what it cannot (art 12.8).
//!
//! The hash chain and the head anchor are unkeyed: whoever can write the audit directory can
//! rewrite lines, recompute every hash and the anchor, and the chain verifies. What is left to
//! one machine is made explicit here:
//!
//! * [`verify`] requires the per-patient index (`audit.idx`): a missing or unreadable index is
//!   a failure ([`VerifyError::Index`]), not a silent pass, because deleting it is what a
//!   rewrite that does not want to recompute it would do. [`rebuild_index`] (`audit verify
//!   --rebuild-index`) derives it again from the log, on purpose.
//! * `audit head` prints the current head as `SEQ:HASH` for an administrator to record
//!   somewhere this machine cannot write (paper, another host, the regional registry later).
//!   [`VerifyOptions::head`] (`audit verify --head SEQ:HASH`) then checks that line `SEQ` of
//!   the log still has that hash: any rewrite of a line up to `SEQ`, or a log cut or replaced
//!   below it, fails, however carefully the chain, the anchor and the index were recomputed.
//!
//! Lines written after the last recorded head are protected only by the chain: a rewrite of
//! them that recomputes it is not detected until a head covering them is recorded elsewhere.

use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::anchor::{check_anchor, read_head, Head, HeadErr, HEAD_FILE};
use super::chain::{scan_log, Scan, ScanErr, Scanned, LOG_FILE, ZERO_HASH};
use super::error::VerifyError;
use super::index::{self, INDEX_FILE};

/// Result of a successful [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Number of lines checked (= last seq).
    pub records: u64,
    /// `hash` of the last line (64 zeros for an empty log).
    pub head: String,
}

/// A chain head recorded outside this machine: `SEQ:HASH` (line `SEQ` has chain hash `HASH`)
/// or `HASH` alone (some line has it). `0:` followed by 64 zeros is the empty log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordedHead {
    pub seq: Option<u64>,
    pub hash: [u8; 64],
}

/// A recorded head that is not `SEQ:HASH` or `HASH` (the message says which part is wrong).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RecordedHeadError(String);

impl FromStr for RecordedHead {
    type Err = RecordedHeadError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (seq, hash) = match s.split_once(':') {
            Some((seq, hash)) => {
                let seq = seq.parse::<u64>().map_err(|_| {
                    RecordedHeadError(format!(
                        "{seq:?} is not a line number (expected SEQ:HASH as `audit head` prints it)"
                    ))
                })?;
                (Some(seq), hash)
            }
            None => (None, s),
        };
        let bytes = hash.as_bytes();
        if bytes.len() != 64 || !bytes.iter().all(|b| b.is_ascii_hexdigit()) {
            return Err(RecordedHeadError(format!(
                "{hash:?} is not a chain hash (64 hexadecimal digits, as `audit head` prints it)"
            )));
        }
        let mut h = [0u8; 64];
        for (d, b) in h.iter_mut().zip(bytes) {
            *d = b.to_ascii_lowercase();
        }
        Ok(RecordedHead { seq, hash: h })
    }
}

impl fmt::Display for RecordedHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hash = String::from_utf8_lossy(&self.hash);
        match self.seq {
            Some(seq) => write!(f, "{seq}:{hash}"),
            None => f.write_str(&hash),
        }
    }
}

/// What [`verify_with`] checks beyond the chain and the anchor.
#[derive(Debug, Clone, Copy, Default)]
pub struct VerifyOptions {
    /// Accept a missing or unreadable index (it is then not checked). `audit head` and the
    /// fuzz target use this; `audit verify` never does.
    pub index_optional: bool,
    /// A head recorded elsewhere that the log must still contain.
    pub head: Option<RecordedHead>,
}

/// [`verify_with`] with the default options: chain, anchor, and an index that must be there.
pub fn verify(dir: &Path) -> Result<VerifyReport, VerifyError> {
    verify_with(dir, &VerifyOptions::default())
}

/// Reads `DIR/audit.log` from the start and checks every link, the head anchor, the index
/// and (optionally) a recorded head. Read only; safe while a gateway is appending (the anchor
/// is read first, and an unterminated final segment — a write in progress — is ignored).
///
/// Failures are reported in this order: a broken chain or anchor, a recorded head the log no
/// longer contains, then the index.
pub fn verify_with(dir: &Path, opts: &VerifyOptions) -> Result<VerifyReport, VerifyError> {
    let head = read_anchor(dir)?;
    // Read before the log, like the anchor: its trusted entries only describe lines already there.
    let mut check = index::Check::open(dir).map_err(VerifyError::Index)?;
    let mut index_fault = match (&check, opts.index_optional) {
        (None, false) if dir.join(INDEX_FILE).exists() => Some(format!(
            "{INDEX_FILE} has no valid header (damaged or replaced); `audit verify --rebuild-index` derives it again from the log"
        )),
        (None, false) => Some(format!(
            "{INDEX_FILE} is missing (deleted?); `audit verify --rebuild-index` derives it again from the log"
        )),
        _ => None,
    };
    let want = opts.head;
    let mut at_recorded_seq: Option<[u8; 64]> = None;
    let mut hash_seen = false;
    let log = open_log(dir)?;
    let mut on_line = |l: &Scanned| {
        if let (Some(c), None) = (check.as_mut(), &index_fault) {
            index_fault = c.line(l).err();
        }
        if let Some(w) = &want {
            match w.seq {
                Some(seq) if seq == l.seq => at_recorded_seq = Some(l.hash),
                Some(_) => {}
                None => hash_seen |= l.hash == w.hash,
            }
        }
    };
    let st = scan_anchored(log, head.as_ref(), &mut on_line)?;
    if let Some(w) = &want {
        check_recorded_head(w, st.last_seq, at_recorded_seq, hash_seen)?;
    }
    if let Some(fault) = index_fault {
        return Err(VerifyError::Index(fault));
    }
    if let Some(c) = &check {
        c.finish(st.last_seq).map_err(VerifyError::Index)?;
    }
    Ok(VerifyReport {
        records: st.last_seq,
        head: String::from_utf8_lossy(&st.last_hash).into_owned(),
    })
}

/// The head the anchor file names (`seq`, chain hash): what a gateway publishes to the
/// regional registry for the others to witness. `None` for a log with no anchor yet.
pub fn anchored_head(dir: &Path) -> Result<Option<(u64, String)>, VerifyError> {
    Ok(read_anchor(dir)?.map(|h| (h.seq, h.hash)))
}

/// The head anchor, for checking: an invalid one is a broken chain (line 0).
fn read_anchor(dir: &Path) -> Result<Option<Head>, VerifyError> {
    match read_head(dir) {
        Ok(h) => Ok(h),
        Err(HeadErr::Io(source)) => Err(VerifyError::Io {
            path: dir.join(HEAD_FILE),
            source,
        }),
        Err(HeadErr::Invalid(reason)) => Err(VerifyError::Broken {
            line: 0,
            seq: None,
            reason,
        }),
    }
}

/// The log file, opened for a scan, with its path (for errors).
fn open_log(dir: &Path) -> Result<(PathBuf, File), VerifyError> {
    let path = dir.join(LOG_FILE);
    match File::open(&path) {
        Ok(f) => Ok((path, f)),
        Err(source) => Err(VerifyError::Io { path, source }),
    }
}

/// Scans the whole log (`on_line` sees every good line) and checks it against the anchor.
fn scan_anchored(
    (path, file): (PathBuf, File),
    head: Option<&Head>,
    on_line: &mut dyn FnMut(&Scanned),
) -> Result<Scan, VerifyError> {
    let st = scan_log(file, head.map_or(0, |h| h.seq), false, on_line).map_err(|e| match e {
        ScanErr::Io(source) => VerifyError::Io { path, source },
        ScanErr::Broken { line, seq, reason } => VerifyError::Broken { line, seq, reason },
    })?;
    check_anchor(&st, head).map_err(|(line, seq, reason)| VerifyError::Broken {
        line,
        seq,
        reason,
    })?;
    Ok(st)
}

fn check_recorded_head(
    want: &RecordedHead,
    last_seq: u64,
    at_recorded_seq: Option<[u8; 64]>,
    hash_seen: bool,
) -> Result<(), VerifyError> {
    let mismatch = |m: String| Err(VerifyError::HeadMismatch(m));
    match want.seq {
        Some(0) if want.hash == ZERO_HASH => Ok(()),
        Some(0) => mismatch(format!(
            "{want}: line 0 is the empty log, whose hash is 64 zeros"
        )),
        Some(seq) if seq > last_seq => mismatch(format!(
            "{want}: the log ends at line {last_seq}, before the recorded line {seq} \
             (lines were removed or the log was replaced)"
        )),
        Some(seq) => match at_recorded_seq {
            Some(h) if h == want.hash => Ok(()),
            Some(h) => mismatch(format!(
                "line {seq} now has hash {}, not the recorded {}: the log was rewritten at or \
                 before line {seq}",
                String::from_utf8_lossy(&h),
                String::from_utf8_lossy(&want.hash)
            )),
            None => mismatch(format!("{want}: line {seq} was not read")),
        },
        None if want.hash == ZERO_HASH || hash_seen => Ok(()),
        None => mismatch(format!(
            "no line of the log has hash {want}: the log was rewritten or replaced"
        )),
    }
}

/// Derives `DIR/audit.idx` again from the log (after checking the whole chain and anchor);
/// the number of lines indexed. Only while no gateway has the log open (the gateway's own
/// index thread writes the file; it also rebuilds it at every start).
pub fn rebuild_index(dir: &Path) -> Result<u64, VerifyError> {
    let head = read_anchor(dir)?;
    let log = open_log(dir)?;
    let index_err = |e: &dyn fmt::Display| VerifyError::Index(e.to_string());
    let mut rebuild = index::Rebuild::open(dir).map_err(|e| index_err(&e))?;
    let mut failed: Option<io::Error> = None;
    let mut on_line = |l: &Scanned| {
        if failed.is_none() {
            failed = rebuild.line(l).err();
        }
    };
    let st = scan_anchored(log, head.as_ref(), &mut on_line)?;
    if let Some(e) = failed {
        return Err(index_err(&e));
    }
    rebuild
        .finish(st.last_seq, st.good_len, st.last_hash)
        .map_err(|e| index_err(&e))?;
    Ok(st.last_seq)
}
