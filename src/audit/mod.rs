//! Tamper-evident, group-committed audit log (network rules, Article 12.8).
//!
//! Every request, allowed or refused, gets a record in `DIR/audit.log`, an
//! append-only file with one JSON object per line.  Lines form a hash chain:
//!
//! ```text
//! {"seq":1,"prev":"000…0","kind":"request","time":"…",…,"hash":"<hex>"}
//! {"seq":2,"prev":"<hash of line 1>","kind":"outcome","rid":1,…,"hash":"<hex>"}
//! ```
//!
//! * `seq` starts at 1 and is gap-free (it is also the line number);
//! * `prev` is the `hash` of the previous line (64 zeros for the first line);
//! * `hash` is the lowercase hex SHA-256 of the ASCII `prev` followed by the
//!   *canonical form* of the line: the exact bytes of the line as written,
//!   with the trailing `,"hash":"…"` member removed (so `{"seq":…,"prev":…,
//!   "kind":…,…}`).  `hash` is always the last member.  Because the digest is
//!   over the stored bytes, any edit (even whitespace) is detected.
//!
//! The anchor file `DIR/audit.head` records the last durable line in two
//! fixed-size slots, one per line (`{"seq":N,"hash":"…"}` padded with spaces to
//! `HEAD_SLOT` bytes); the newest well-formed slot counts.  A helper thread
//! overwrites the older slot in place and `fdatasync`s it after synced batches
//! (coalesced: at most one update per `HEAD_MIN_INTERVAL`, always one at close):
//! an in-place overwrite of an allocated block needs no journal commit, where a
//! replace-by-rename forced one per update and slowed the log's own syncs, and a
//! write torn by a crash spoils one slot only.  Removing lines from the tail of
//! the log is therefore detected as well.  A fresh log gets the anchor `seq 0` at
//! open; a missing anchor next to a non-empty log counts as tampering.
//!
//! Writes are done by one dedicated OS thread with group commit: it drains
//! everything queued, appends it with one `write`, calls `sync_data` once and
//! only then completes the waiters.  [`AuditLog::record`] therefore resolves
//! only when the request line is on disk, and the gateway must not forward a
//! request whose `record` failed (fail closed).
//!
//! Beside the log, `DIR/audit.idx` (module [`index`]) files every line under the key of its
//! patient, so that [`query`] with a patient reads only that patient's lines (and the log
//! beyond the index's watermark).  It is derived: kept by its own thread off the request
//! path, checked against the log at every open and by [`verify`], and never believed where
//! it disagrees with the log (the query then scans the whole log, with a warning).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use ring::digest;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::macros::{format_description, offset};
use time::{OffsetDateTime, UtcOffset};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot};

mod index;
mod kinds;
mod refusal;
mod witness;

use index::LineKey;
pub use index::{patient_key, IndexError, INDEX_FILE};
pub use kinds::Decision;
pub use refusal::{ConnectionRecord, SuppressedRecord};
pub use witness::{rebuild_index, verify, verify_with, RecordedHead, VerifyOptions};

/// Name of the audit log inside the audit directory.
pub const LOG_FILE: &str = "audit.log";
/// Name of the head anchor inside the audit directory.
pub const HEAD_FILE: &str = "audit.head";
const HEAD_TMP_FILE: &str = "audit.head.tmp";

/// Japan Standard Time, the offset used for `time` fields.
pub const JST: UtcOffset = offset!(+9);

/// `prev` of the first line.
const ZERO_HASH: [u8; 64] = [b'0'; 64];
/// Every line ends with `,"hash":"<64 hex>"}`.
const HASH_MEMBER: &[u8] = b",\"hash\":\"";
const HASH_SUFFIX_LEN: usize = 9 + 64 + 2;
/// Upper bounds for one group commit.
const MAX_BATCH_LINES: usize = 8192;
const MAX_BATCH_BYTES: usize = 8 << 20;
/// While outcome lines are waiting after a failed write, retry this often.
const RETRY_INTERVAL: Duration = Duration::from_millis(250);
/// Minimum spacing of head anchor updates (the anchor lags the log by at most
/// this plus one fsync).
const HEAD_MIN_INTERVAL: Duration = Duration::from_millis(50);
/// Size of one head anchor slot, newline included.
const HEAD_SLOT: usize = 128;

/// One request decision, as written to the log (`"kind":"request"`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RequestRecord {
    /// RFC 3339 with the Japan offset, e.g. `2026-04-01T09:00:00.123+09:00` (see [`now_jst`]).
    pub time: String,
    pub site: String,
    /// `"mtls"`, `"wireguard"` or `"site"`.
    pub ingress: String,
    pub client: String,
    pub terminal: Option<String>,
    pub physician: Option<String>,
    pub method: String,
    pub path: String,
    pub patient: Option<String>,
    pub category: Option<String>,
    /// `"allow"` or `"deny"`.
    pub decision: String,
    pub reason: String,
    pub serial: Option<String>,
    pub cn: Option<String>,
}

/// What happened to a forwarded request (`"kind":"outcome"`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Outcome {
    pub status: u16,
    pub bytes: u64,
    pub duration_us: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("audit log is corrupt at line {line}: {reason}")]
    Corrupt { line: u64, reason: String },
    #[error("audit log is closed")]
    Closed,
    #[error("audit record could not be written (fail closed): {0}")]
    WriteFailed(String),
    #[error("audit record could not be encoded: {0}")]
    Encode(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Result of a successful [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Number of lines checked (= last seq).
    pub records: u64,
    /// `hash` of the last line (64 zeros for an empty log).
    pub head: String,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The chain is broken; `line` is 1-based (0 when no single line is to blame).
    #[error("audit chain broken at line {line}{}: {reason}", seq_note(.seq))]
    Broken {
        line: u64,
        seq: Option<u64>,
        reason: String,
    },
    #[error("audit I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The chain is intact but the index disagrees with it (altered, or a lying disk): queries
    /// could miss lines until the next start rebuilds it.
    #[error("audit log intact but its index is wrong: {0}")]
    Index(String),
    /// The chain is intact but does not contain a head recorded elsewhere (`audit verify
    /// --head`): the log was rewritten (or replaced) since that head was recorded.
    #[error("audit log does not contain the recorded head: {0}")]
    HeadMismatch(String),
}

fn seq_note(seq: &Option<u64>) -> String {
    seq.map(|s| format!(" (seq {s})")).unwrap_or_default()
}

/// Current time formatted for [`RequestRecord::time`].
pub fn now_jst() -> String {
    format_time(OffsetDateTime::now_utc())
}

/// Formats an instant as RFC 3339 with the +09:00 offset.
pub fn format_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(JST);
    // RFC 3339 formatting only fails for years outside 0..=9999.
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

// ---------------------------------------------------------------------------
// Line encoding and checking
// ---------------------------------------------------------------------------

/// Record body as serialised by callers (`{"kind":…,…}`); the writer
/// prefixes `seq`/`prev` and appends `hash`.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum BodyOut<'a> {
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

/// `end` of an outcome whose client went away before the response was complete.
pub const CLIENT_CLOSED: &str = "client-closed";
/// `status` of such an outcome when no response head had been sent (nginx's "client closed
/// request"); when the head had been sent, the status sent stays.
pub const CLIENT_CLOSED_STATUS: u16 = 499;

fn hex_sha256(parts: &[&[u8]]) -> [u8; 64] {
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
fn encode_line(buf: &mut Vec<u8>, seq: u64, prev: &[u8; 64], body: &[u8]) -> [u8; 64] {
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
struct Scanned {
    seq: u64,
    /// Byte offsets of the line's start and of the next line's.
    offset: u64,
    end: u64,
    key: LineKey,
    /// Chain hashes of the previous line and of this one.
    prev: [u8; 64],
    hash: [u8; 64],
}

struct Scan {
    last_seq: u64,
    last_hash: [u8; 64],
    /// Length of the file up to the end of the last good line.
    good_len: u64,
    /// Hash of the line whose seq equals the anchor's seq.
    anchor_hash: Option<[u8; 64]>,
    /// A torn final line (1-based line number and why), only when repairing.
    torn: Option<(u64, String)>,
}

enum ScanErr {
    Io(io::Error),
    Broken {
        line: u64,
        seq: Option<u64>,
        reason: String,
    },
}

/// Reads the whole log and checks every link.  An unterminated final segment
/// is always ignored (a write in progress, or a torn write that was never
/// acknowledged); with `repair`, an unparsable *final* line is reported as
/// torn instead of being an error.  `on_line` sees every good line.
fn scan_log(
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
            if repair {
                st.torn = Some((line_no, "final line has no newline".into()));
            }
            break;
        };
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

#[derive(Serialize, Deserialize)]
struct Head {
    seq: u64,
    hash: String,
}

enum HeadErr {
    Io(io::Error),
    Invalid(String),
}

/// The newest well-formed slot of the anchor file (a slot torn by a crash is
/// ignored while the other one is intact).
fn read_head(dir: &Path) -> Result<Option<Head>, HeadErr> {
    let bytes = match fs::read(dir.join(HEAD_FILE)) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(HeadErr::Io(e)),
    };
    let mut newest: Option<Head> = None;
    let mut fault = String::from("it is empty");
    for slot in bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
    {
        match serde_json::from_slice::<Head>(slot) {
            Ok(h) if h.hash.len() == 64 && h.hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
                if newest.as_ref().is_none_or(|n| h.seq > n.seq) {
                    newest = Some(h);
                }
            }
            Ok(_) => fault = "it has a malformed hash".into(),
            Err(e) => fault = e.to_string(),
        }
    }
    match newest {
        Some(h) => Ok(Some(h)),
        None => Err(HeadErr::Invalid(format!(
            "{HEAD_FILE} is not valid: {fault}"
        ))),
    }
}

/// Checks the scanned log against the head anchor: (line, seq, reason) on failure.
fn check_anchor(st: &Scan, head: Option<&Head>) -> Result<(), (u64, Option<u64>, String)> {
    match head {
        None if st.last_seq > 0 => Err((
            0,
            None,
            format!("{HEAD_FILE} is missing although the log has {} lines", st.last_seq),
        )),
        None => Ok(()),
        Some(h) if h.seq > st.last_seq => Err((
            st.last_seq + 1,
            Some(h.seq),
            format!(
                "log ends at seq {} but {HEAD_FILE} anchors seq {}: lines were removed from the tail",
                st.last_seq, h.seq
            ),
        )),
        Some(h) if h.seq == 0 => Ok(()),
        Some(h) => match st.anchor_hash {
            Some(a) if a.as_slice() == h.hash.as_bytes() => Ok(()),
            _ => Err((
                h.seq,
                Some(h.seq),
                format!("hash of seq {} differs from the one anchored in {HEAD_FILE}", h.seq),
            )),
        },
    }
}

// ---------------------------------------------------------------------------
// Head anchor thread
// ---------------------------------------------------------------------------

/// One anchor slot: the JSON object, padded with spaces to `HEAD_SLOT` bytes.
fn head_slot(seq: u64, hash: &[u8; 64]) -> [u8; HEAD_SLOT] {
    let mut slot = [b' '; HEAD_SLOT];
    let mut text = format!("{{\"seq\":{seq},\"hash\":\"").into_bytes();
    text.extend_from_slice(hash);
    text.extend_from_slice(b"\"}");
    // At most 9 + 20 digits + 10 + 64 + 2 = 105 bytes.
    slot[..text.len()].copy_from_slice(&text);
    slot[HEAD_SLOT - 1] = b'\n';
    slot
}

/// Creates the anchor file with both slots at `seq` (temp file, fsync, rename).
fn write_head(dir: &Path, seq: u64, hash: &[u8; 64]) -> io::Result<()> {
    let tmp = dir.join(HEAD_TMP_FILE);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    let slot = head_slot(seq, hash);
    f.write_all(&slot)?;
    f.write_all(&slot)?;
    f.sync_data()?;
    fs::rename(&tmp, dir.join(HEAD_FILE))
}

/// The anchor file, updated in place: each update overwrites the older slot.
struct HeadFile {
    file: File,
    next_slot: u64,
}

impl HeadFile {
    fn open(dir: &Path) -> io::Result<HeadFile> {
        // No truncation: the slot not overwritten next is the fallback.
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(dir.join(HEAD_FILE))?;
        Ok(HeadFile { file, next_slot: 0 })
    }

    fn update(&mut self, seq: u64, hash: &[u8; 64]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let at = self.next_slot * HEAD_SLOT as u64;
        self.file.write_all_at(&head_slot(seq, hash), at)?;
        self.file.sync_data()?;
        self.next_slot = 1 - self.next_slot;
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[derive(Default)]
struct HeadState {
    next: Option<(u64, [u8; 64])>,
    stop: bool,
}

/// Latest-value slot between the log writer and the head writer: updates are
/// coalesced, so the head never slows the group commit down.
#[derive(Default)]
struct HeadSlot {
    state: Mutex<HeadState>,
    cv: Condvar,
}

impl HeadSlot {
    fn lock(&self) -> MutexGuard<'_, HeadState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, seq: u64, hash: [u8; 64]) {
        self.lock().next = Some((seq, hash));
        self.cv.notify_one();
    }

    fn stop(&self) {
        self.lock().stop = true;
        self.cv.notify_one();
    }
}

fn head_thread(dir: PathBuf, slot: Arc<HeadSlot>) {
    let mut file: Option<HeadFile> = None;
    loop {
        let (job, stop) = {
            let mut g = slot.lock();
            while g.next.is_none() && !g.stop {
                g = slot.cv.wait(g).unwrap_or_else(PoisonError::into_inner);
            }
            (g.next.take(), g.stop)
        };
        if let Some((seq, hash)) = job {
            let written = match file.as_mut() {
                Some(f) => f.update(seq, &hash),
                None => HeadFile::open(&dir).and_then(|mut f| {
                    let r = f.update(seq, &hash);
                    file = Some(f);
                    r
                }),
            };
            if let Err(e) = written {
                tracing::warn!(error = %e, seq, "audit: could not update {HEAD_FILE}");
                file = None;
            }
            if !stop {
                // Coalesce: under load, one fsynced head update per interval
                // instead of one per batch (the fsyncs compete with the log's).
                std::thread::sleep(HEAD_MIN_INTERVAL);
            }
        }
        if stop {
            if let Err(e) = sync_dir(&dir) {
                tracing::warn!(error = %e, "audit: could not sync audit directory");
            }
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// Writer thread
// ---------------------------------------------------------------------------

type Reply = oneshot::Sender<Result<u64, AuditError>>;

enum Cmd {
    Append {
        body: Vec<u8>,
        key: LineKey,
        reply: Option<Reply>,
    },
    Close(oneshot::Sender<Result<(), AuditError>>),
}

struct Entry {
    body: Vec<u8>,
    key: LineKey,
    reply: Option<Reply>,
}

struct Shared {
    written: AtomicU64,
    failed: AtomicBool,
    #[cfg(test)]
    inject_failure: AtomicBool,
}

struct Writer {
    file: File,
    next_seq: u64,
    last_hash: [u8; 64],
    /// File length after the last synced batch; anything beyond is rolled back.
    good_len: u64,
    /// Outcome lines of failed batches, retried first.
    carry: Vec<(Vec<u8>, LineKey)>,
    buf: Vec<u8>,
    shared: Arc<Shared>,
    head: Arc<HeadSlot>,
    head_thread: Option<JoinHandle<()>>,
    /// Where every synced batch goes for the index thread (`None`: no index).
    index: Option<Arc<index::IndexSlot>>,
    index_thread: Option<JoinHandle<()>>,
    /// Start offset (within `buf`) of each line of the batch being written.
    starts: Vec<usize>,
    pace: Pace,
}

/// How long a busy writer waits for more records before syncing a batch.
const GROUP_WINDOW: Duration = Duration::from_micros(200);

/// The arrival rate of records, to decide whether waiting [`GROUP_WINDOW`] before a sync
/// gathers more records into it. Idle or light load: no wait (a lone request is synced at
/// once). Busy: every `fdatasync` costs tens of microseconds of CPU (block layer, device
/// notification), and without the wait a batch held ~2.5 lines at 16,000 requests/s.
struct Pace {
    last: std::time::Instant,
    /// Smoothed records per second.
    rate: f64,
}

impl Pace {
    fn new() -> Pace {
        Pace {
            last: std::time::Instant::now(),
            rate: 0.0,
        }
    }

    /// Records one batch about to be committed.
    fn batch(&mut self, records: usize) {
        let now = std::time::Instant::now();
        let secs = now.duration_since(self.last).as_secs_f64().max(1e-6);
        self.last = now;
        let instant = records as f64 / secs;
        self.rate = 0.8 * self.rate + 0.2 * instant;
    }

    /// True when at least two more records are expected within the window.
    fn worth_waiting(&self) -> bool {
        self.rate * GROUP_WINDOW.as_secs_f64() >= 2.0
    }
}

impl Writer {
    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        let mut disconnected = false;
        let mut close = None;
        while close.is_none() && !disconnected {
            let mut cmds = Vec::new();
            if self.carry.is_empty() {
                match rx.blocking_recv() {
                    Some(c) => cmds.push(c),
                    None => disconnected = true,
                }
            } else {
                match rx.try_recv() {
                    Ok(c) => cmds.push(c),
                    Err(TryRecvError::Empty) => std::thread::sleep(RETRY_INTERVAL),
                    Err(TryRecvError::Disconnected) => disconnected = true,
                }
            }
            let mut entries: Vec<Entry> = self
                .carry
                .drain(..)
                .map(|(body, key)| Entry {
                    body,
                    key,
                    reply: None,
                })
                .collect();
            let mut bytes = 0usize;
            let mut waited = false;
            loop {
                for cmd in cmds.drain(..) {
                    match cmd {
                        Cmd::Append { body, key, reply } => {
                            bytes += body.len();
                            entries.push(Entry { body, key, reply });
                        }
                        Cmd::Close(reply) => close = Some(reply),
                    }
                }
                if close.is_some()
                    || disconnected
                    || entries.len() >= MAX_BATCH_LINES
                    || bytes >= MAX_BATCH_BYTES
                {
                    break;
                }
                match rx.try_recv() {
                    Ok(c) => cmds.push(c),
                    Err(TryRecvError::Empty) if !waited && self.pace.worth_waiting() => {
                        // Busy: more records are due within the window; one sync for them all.
                        waited = true;
                        std::thread::sleep(GROUP_WINDOW);
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => disconnected = true,
                }
            }
            self.pace.batch(entries.len());
            self.commit(entries);
        }
        let result = if self.carry.is_empty() && !self.shared.failed.load(Ordering::Acquire) {
            Ok(())
        } else {
            tracing::error!(
                lost = self.carry.len(),
                "audit: writer stopped in failed state; pending outcome lines were not written"
            );
            Err(AuditError::WriteFailed(format!(
                "writer stopped in failed state with {} outcome lines unwritten",
                self.carry.len()
            )))
        };
        self.head.stop();
        if let Some(h) = self.head_thread.take() {
            if h.join().is_err() {
                tracing::error!("audit: head thread panicked");
            }
        }
        if let Some(slot) = self.index.take() {
            slot.stop();
        }
        if let Some(h) = self.index_thread.take() {
            if h.join().is_err() {
                tracing::error!("audit: index thread panicked");
            }
        }
        if let Some(reply) = close {
            // The closer may have gone away; nothing else to tell.
            let _ = reply.send(result);
        }
    }

    fn commit(&mut self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        let first = self.next_seq;
        let mut hash = self.last_hash;
        self.buf.clear();
        self.starts.clear();
        for (seq, e) in (first..).zip(&entries) {
            self.starts.push(self.buf.len());
            hash = encode_line(&mut self.buf, seq, &hash, &e.body);
        }
        match self.write_batch() {
            Ok(()) => {
                let n = entries.len() as u64;
                if let Some(slot) = &self.index {
                    let base = self.good_len;
                    slot.publish(
                        first,
                        entries
                            .iter()
                            .zip(&self.starts)
                            .map(|(e, &at)| (e.key, base + at as u64)),
                        base + self.buf.len() as u64,
                        hash,
                    );
                }
                self.next_seq += n;
                self.last_hash = hash;
                self.good_len += self.buf.len() as u64;
                self.shared.written.fetch_add(n, Ordering::Relaxed);
                if self.shared.failed.swap(false, Ordering::AcqRel) {
                    tracing::info!("audit: writes succeed again, leaving failed state");
                }
                self.head.publish(self.next_seq - 1, hash);
                for (seq, e) in (first..).zip(entries) {
                    if let Some(reply) = e.reply {
                        // The waiting request may have been cancelled; its line is written anyway.
                        let _ = reply.send(Ok(seq));
                    }
                }
            }
            Err(err) => {
                if !self.shared.failed.swap(true, Ordering::AcqRel) {
                    tracing::error!(error = %err, "audit: write failed, refusing requests until it succeeds");
                }
                // Roll back a partial write so the chain stays intact; if
                // even that fails, the next batch retries it first.
                if let Err(e) = self.file.set_len(self.good_len) {
                    tracing::error!(error = %e, "audit: could not roll back partial write");
                }
                let msg = err.to_string();
                for e in entries {
                    match e.reply {
                        Some(reply) => {
                            let _ = reply.send(Err(AuditError::WriteFailed(msg.clone())));
                        }
                        None => self.carry.push((e.body, e.key)),
                    }
                }
            }
        }
    }

    fn write_batch(&mut self) -> io::Result<()> {
        if self.shared.failed.load(Ordering::Acquire)
            && self.file.metadata()?.len() != self.good_len
        {
            self.file.set_len(self.good_len)?;
        }
        #[cfg(test)]
        if self.shared.inject_failure.load(Ordering::Acquire) {
            let half = self.buf.len() / 2;
            self.file.write_all(&self.buf[..half])?;
            return Err(io::Error::other("injected write failure"));
        }
        self.file.write_all(&self.buf)?;
        self.file.sync_data()
    }
}

// ---------------------------------------------------------------------------
// Public handle
// ---------------------------------------------------------------------------

struct Inner {
    tx: mpsc::UnboundedSender<Cmd>,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Handle to the audit writer; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("written", &self.written())
            .field("failed", &self.failed())
            .finish()
    }
}

impl AuditLog {
    /// Opens (creating) `DIR/audit.log`, recovers the chain, starts the writer thread.
    ///
    /// A torn final line (crash during a write) is truncated away with a
    /// warning; any other damage, or a log shorter than its head anchor, is
    /// an error and the gateway must not start.
    pub fn open(dir: &Path) -> Result<AuditLog, AuditError> {
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err(dir))?;
        }
        let log_path = dir.join(LOG_FILE);
        let head = match read_head(dir) {
            Ok(h) => h,
            Err(HeadErr::Io(e)) => return Err(io_err(&dir.join(HEAD_FILE))(e)),
            Err(HeadErr::Invalid(reason)) => return Err(AuditError::Corrupt { line: 0, reason }),
        };
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&log_path)
            .map_err(io_err(&log_path))?;
        let reader = File::open(&log_path).map_err(io_err(&log_path))?;
        // The index is checked against every line of the chain scan, and repaired from the
        // first disagreement on; without it the gateway still runs (queries scan the log).
        let mut rebuild = index::Rebuild::open(dir)
            .map_err(|e| {
                tracing::warn!(error = %e, "audit: running without the index (queries scan the whole log)")
            })
            .ok();
        let mut on_line = |l: &Scanned| {
            let failed = rebuild.as_mut().and_then(|r| r.line(l).err());
            if let Some(e) = failed {
                tracing::warn!(error = %e, "audit: index rebuild failed; running without it");
                rebuild = None;
            }
        };
        let st = scan_log(
            reader,
            head.as_ref().map_or(0, |h| h.seq),
            true,
            &mut on_line,
        )
        .map_err(|e| match e {
            ScanErr::Io(source) => io_err(&log_path)(source),
            ScanErr::Broken { line, seq, reason } => AuditError::Corrupt {
                line,
                reason: format!("{}{}", reason, seq_note(&seq)),
            },
        })?;
        let len = file.metadata().map_err(io_err(&log_path))?.len();
        if len != st.good_len {
            let (line, reason) = st
                .torn
                .clone()
                .unwrap_or_else(|| (st.last_seq + 1, "unterminated data".into()));
            tracing::warn!(
                line,
                %reason,
                dropped_bytes = len - st.good_len,
                "audit: truncating torn final line of {}",
                log_path.display()
            );
            file.set_len(st.good_len).map_err(io_err(&log_path))?;
            file.sync_data().map_err(io_err(&log_path))?;
        }
        check_anchor(&st, head.as_ref()).map_err(|(line, seq, reason)| AuditError::Corrupt {
            line,
            reason: format!("{}{}", reason, seq_note(&seq)),
        })?;
        if head.is_none() {
            // Fresh log: anchor "nothing yet" durably, so a later missing
            // anchor means tampering.
            write_head(dir, 0, &ZERO_HASH).map_err(io_err(&dir.join(HEAD_FILE)))?;
            sync_dir(dir).map_err(io_err(dir))?;
        }

        let index_writer = rebuild.and_then(|r| {
            r.finish(st.last_seq, st.good_len, st.last_hash)
                .map_err(|e| {
                    tracing::warn!(error = %e, "audit: could not bring the index up to date; running without it")
                })
                .ok()
        });
        let (index, index_thread) = match index_writer {
            Some(w) => {
                let slot = Arc::new(index::IndexSlot::default());
                let thread_slot = slot.clone();
                let spawned = std::thread::Builder::new()
                    .name("audit-index".into())
                    .spawn(move || index::index_thread(w, thread_slot));
                match spawned {
                    Ok(h) => (Some(slot), Some(h)),
                    Err(e) => {
                        tracing::warn!(error = %e, "audit: no index thread; running without the index");
                        (None, None)
                    }
                }
            }
            None => (None, None),
        };

        let shared = Arc::new(Shared {
            written: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            #[cfg(test)]
            inject_failure: AtomicBool::new(false),
        });
        let slot = Arc::new(HeadSlot::default());
        let head_thread = {
            let head_dir = dir.to_path_buf();
            let slot = slot.clone();
            std::thread::Builder::new()
                .name("audit-head".into())
                .spawn(move || head_thread(head_dir, slot))
                .map_err(io_err(dir))?
        };
        let writer = Writer {
            file,
            next_seq: st.last_seq + 1,
            last_hash: st.last_hash,
            good_len: st.good_len,
            carry: Vec::new(),
            buf: Vec::with_capacity(1 << 20),
            shared: shared.clone(),
            head: slot.clone(),
            head_thread: Some(head_thread),
            index,
            index_thread,
            starts: Vec::new(),
            pace: Pace::new(),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(rx));
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                slot.stop();
                return Err(io_err(dir)(e));
            }
        };
        tracing::info!(dir = %dir.display(), seq = st.last_seq, "audit log opened");
        Ok(AuditLog {
            inner: Arc::new(Inner {
                tx,
                shared,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// Appends a request line; resolves only once it is synced to disk.
    /// Returns its seq (the request id).  On error the request must be refused.
    pub async fn record(&self, rec: RequestRecord) -> Result<u64, AuditError> {
        let body = serde_json::to_vec(&BodyOut::Request(&rec))
            .map_err(|e| AuditError::Encode(e.to_string()))?;
        let key = LineKey::Request(patient_key(rec.patient.as_deref()));
        let (tx, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Cmd::Append {
                body,
                key,
                reply: Some(tx),
            })
            .map_err(|_| AuditError::Closed)?;
        rx.await.map_err(|_| AuditError::Closed)?
    }

    /// Appends an outcome line for request `rid`; fire-and-forget (durable
    /// with the next batch).  Never blocks.
    pub fn outcome(&self, rid: u64, outcome: Outcome) {
        self.outcome_end(rid, outcome, None);
    }

    /// [`AuditLog::outcome`] of an exchange that ended otherwise than normally (`end`, e.g.
    /// [`CLIENT_CLOSED`]); fire-and-forget like it.
    pub fn outcome_end(&self, rid: u64, outcome: Outcome, end: Option<&str>) {
        let body = BodyOut::Outcome {
            rid,
            status: outcome.status,
            bytes: outcome.bytes,
            duration_us: outcome.duration_us,
            end,
        };
        let body = match serde_json::to_vec(&body) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, rid, "audit: could not encode outcome");
                return;
            }
        };
        if self
            .inner
            .tx
            .send(Cmd::Append {
                body,
                key: LineKey::Outcome(rid),
                reply: None,
            })
            .is_err()
        {
            tracing::error!(rid, "audit: outcome after close, not recorded");
        }
    }

    /// Appends an outcome line for request `rid` and resolves once it is synced (admin
    /// commands answer only when their whole record, request and outcome, is on disk).
    pub async fn outcome_synced(&self, rid: u64, outcome: Outcome) -> Result<u64, AuditError> {
        let body = serde_json::to_vec(&BodyOut::Outcome {
            rid,
            status: outcome.status,
            bytes: outcome.bytes,
            duration_us: outcome.duration_us,
            end: None,
        })
        .map_err(|e| AuditError::Encode(e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Cmd::Append {
                body,
                key: LineKey::Outcome(rid),
                reply: Some(tx),
            })
            .map_err(|_| AuditError::Closed)?;
        rx.await.map_err(|_| AuditError::Closed)?
    }

    /// Appends a connection refusal line; fire-and-forget (durable with the next batch).
    pub fn connection(&self, rec: &ConnectionRecord) {
        self.append_unacked(&BodyOut::Connection(rec), "connection");
    }

    /// Appends a suppression summary line; fire-and-forget (durable with the next batch).
    pub fn suppressed(&self, rec: &SuppressedRecord) {
        self.append_unacked(&BodyOut::Suppressed(rec), "suppressed");
    }

    fn append_unacked(&self, body: &BodyOut<'_>, what: &str) {
        let body = match serde_json::to_vec(body) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, what, "audit: could not encode a record");
                return;
            }
        };
        let cmd = Cmd::Append {
            body,
            key: LineKey::Request(0),
            reply: None,
        };
        if self.inner.tx.send(cmd).is_err() {
            tracing::error!(what, "audit: record after close, not recorded");
        }
    }

    /// Flushes everything queued and stops the writer thread.  Returns an
    /// error if the writer stopped in failed state.  Closing twice is fine.
    pub async fn close(&self) -> Result<(), AuditError> {
        let (tx, rx) = oneshot::channel();
        if self.inner.tx.send(Cmd::Close(tx)).is_err() {
            return Ok(());
        }
        // A dropped reply means another close got there first.
        let result = rx.await.unwrap_or(Ok(()));
        let handle = self
            .inner
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            match tokio::task::spawn_blocking(move || h.join()).await {
                Ok(Ok(())) => {}
                _ => tracing::error!("audit: writer thread did not stop cleanly"),
            }
        }
        result
    }

    /// Number of lines written (synced) by this process.
    pub fn written(&self) -> u64 {
        self.inner.shared.written.load(Ordering::Relaxed)
    }

    /// Whether the last write failed (requests are being refused).
    pub fn failed(&self) -> bool {
        self.inner.shared.failed.load(Ordering::Acquire)
    }

    #[cfg(test)]
    fn inject_failure(&self, on: bool) {
        self.inner
            .shared
            .inject_failure
            .store(on, Ordering::Release);
    }
}

// ---------------------------------------------------------------------------
// Query
// ---------------------------------------------------------------------------

/// Filter for [`query`].  `since` is inclusive, `until` exclusive; both are
/// compared as instants.
#[derive(Debug, Clone, Default)]
pub struct QueryFilter {
    pub patient: Option<String>,
    pub physician: Option<String>,
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
}

/// One query result: a request line joined with its outcome (if written).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct QueryRow {
    pub seq: u64,
    #[serde(flatten)]
    pub request: RequestRecord,
    pub status: Option<u16>,
    pub bytes: Option<u64>,
    pub duration_us: Option<u64>,
    /// `"client-closed"` when the client went away before the response was complete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
}

#[derive(Deserialize)]
struct KindOnly<'a> {
    seq: u64,
    #[serde(borrow)]
    kind: Cow<'a, str>,
}

#[derive(Deserialize)]
struct OutcomeLine {
    rid: u64,
    status: u16,
    bytes: u64,
    duration_us: u64,
    #[serde(default)]
    end: Option<String>,
}

/// Parses a query time argument: RFC 3339, or a bare date `YYYY-MM-DD`
/// meaning 00:00 Japan time.
pub fn parse_time_arg(s: &str) -> Result<OffsetDateTime, String> {
    let s = s.trim();
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t);
    }
    time::Date::parse(s, format_description!("[year]-[month]-[day]"))
        .map(|d| d.midnight().assume_offset(JST))
        .map_err(|_| {
            format!(
                "invalid time {s:?}: expected RFC 3339 (e.g. 2026-04-01T09:00:00+09:00) \
                 or a date YYYY-MM-DD (midnight Japan time)"
            )
        })
}

/// Lists request lines matching `filter`, in log order, joined with their
/// outcomes.  Does not check the hash chain (use [`verify`] for that).
///
/// With a patient, the lines come through the index (`audit.idx`) and the log beyond its
/// watermark; every line read is checked, and if the index is missing or disagrees with the
/// log the whole log is scanned instead, with a warning.  Without a patient (physician or
/// time range only) the whole log is scanned.
pub fn query(dir: &Path, filter: &QueryFilter) -> Result<Vec<QueryRow>, AuditError> {
    if let Some(patient) = &filter.patient {
        match index::query(dir, filter, patient) {
            Ok(rows) => return Ok(rows),
            Err(e) => tracing::warn!(
                error = %e,
                "audit: the index cannot answer this query; scanning the whole log instead"
            ),
        }
    }
    query_full_scan(dir, filter)
}

/// [`query`] by reading the whole log, never the index (the reference it is tested against).
pub fn query_full_scan(dir: &Path, filter: &QueryFilter) -> Result<Vec<QueryRow>, AuditError> {
    let path = dir.join(LOG_FILE);
    let file = File::open(&path).map_err(io_err(&path))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut buf = Vec::with_capacity(1024);
    let mut state = QueryState::new(filter);
    let mut line_no = 0u64;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf).map_err(io_err(&path))? == 0 {
            break;
        }
        line_no += 1;
        let Some(line) = buf.strip_suffix(b"\n") else {
            break; // write in progress
        };
        state.scan_line(line, line_no)?;
    }
    Ok(state.rows)
}

/// The rows found so far by a query, in log order.
struct QueryState<'f> {
    filter: &'f QueryFilter,
    /// Exact members a matching request line must contain (serde_json escapes every `"`
    /// inside a value, so `"patient":"P1"` can only be that member): lines without them are
    /// skipped unparsed, which makes a scan a byte search instead of a JSON parse per line.
    needles: Vec<memchr::memmem::Finder<'static>>,
    rows: Vec<QueryRow>,
    /// Row of each request seq, to join outcomes.
    by_rid: HashMap<u64, usize>,
}

impl<'f> QueryState<'f> {
    fn new(filter: &'f QueryFilter) -> Self {
        let needles = [
            ("patient", &filter.patient),
            ("physician", &filter.physician),
        ]
        .into_iter()
        .filter_map(|(k, v)| {
            let v = serde_json::to_string(v.as_ref()?).ok()?;
            Some(memchr::memmem::Finder::new(format!("\"{k}\":{v}").as_bytes()).into_owned())
        })
        .collect();
        QueryState {
            filter,
            needles,
            rows: Vec::new(),
            by_rid: HashMap::new(),
        }
    }

    fn push_request(&mut self, seq: u64, request: RequestRecord) {
        self.by_rid.insert(seq, self.rows.len());
        self.rows.push(QueryRow {
            seq,
            request,
            status: None,
            bytes: None,
            duration_us: None,
            end: None,
        });
    }

    fn join_outcome(&mut self, o: &OutcomeLine) {
        if let Some(row) = self.by_rid.get(&o.rid).and_then(|&i| self.rows.get_mut(i)) {
            row.status = Some(o.status);
            row.bytes = Some(o.bytes);
            row.duration_us = Some(o.duration_us);
            row.end = o.end.clone();
        }
    }

    /// The next line of a sequential scan (`line_no` is 1-based, for errors).
    fn scan_line(&mut self, line: &[u8], line_no: u64) -> Result<(), AuditError> {
        if !self.needles.is_empty() {
            match written_kind(line) {
                Some(b"request") if self.needles.iter().any(|n| n.find(line).is_none()) => {
                    return Ok(())
                }
                Some(b"outcome")
                    if outcome_rid(line).is_some_and(|r| !self.by_rid.contains_key(&r)) =>
                {
                    return Ok(())
                }
                _ => {}
            }
        }
        let corrupt = |e: serde_json::Error| AuditError::Corrupt {
            line: line_no,
            reason: format!("invalid JSON: {e}"),
        };
        let k: KindOnly = serde_json::from_slice(line).map_err(corrupt)?;
        match k.kind.as_ref() {
            "request" => {
                let rec: RequestRecord = serde_json::from_slice(line).map_err(corrupt)?;
                if matches(self.filter, &rec).map_err(|reason| AuditError::Corrupt {
                    line: line_no,
                    reason,
                })? {
                    self.push_request(k.seq, rec);
                }
            }
            "outcome" => {
                let o: OutcomeLine = serde_json::from_slice(line).map_err(corrupt)?;
                self.join_outcome(&o);
            }
            // Connection refusals and suppression summaries are not request rows.
            "connection" | "suppressed" => {}
            other => {
                return Err(AuditError::Corrupt {
                    line: line_no,
                    reason: format!("unknown kind {other:?}"),
                })
            }
        }
        Ok(())
    }
}

/// The `kind` of a line as [`encode_line`] writes it (`{"seq":N,"prev":"<64 hex>","kind":"…"`),
/// read without parsing the line; `None` for anything else.
fn written_kind(line: &[u8]) -> Option<&[u8]> {
    let rest = line.strip_prefix(b"{\"seq\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let rest = rest.get(digits..)?.strip_prefix(b",\"prev\":\"")?;
    let rest = rest.get(64..)?.strip_prefix(b"\",\"kind\":\"")?;
    let end = memchr::memchr(b'"', rest)?;
    Some(&rest[..end])
}

/// The `rid` of an outcome line (`…,"kind":"outcome","rid":N,…`), read without parsing it.
fn outcome_rid(line: &[u8]) -> Option<u64> {
    const RID: &[u8] = b"\"kind\":\"outcome\",\"rid\":";
    let at = memchr::memmem::find(line, RID)? + RID.len();
    let digits = line.get(at..)?;
    let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&digits[..n]).ok()?.parse().ok()
}

fn matches(f: &QueryFilter, rec: &RequestRecord) -> Result<bool, String> {
    if f.patient.is_some() && f.patient != rec.patient {
        return Ok(false);
    }
    if f.physician.is_some() && f.physician != rec.physician {
        return Ok(false);
    }
    if f.since.is_some() || f.until.is_some() {
        let t = OffsetDateTime::parse(&rec.time, &Rfc3339)
            .map_err(|e| format!("bad time {:?}: {e}", rec.time))?;
        if f.since.is_some_and(|s| t < s) || f.until.is_some_and(|u| t >= u) {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rec(i: u64) -> RequestRecord {
        RequestRecord {
            time: now_jst(),
            site: "seibo".into(),
            ingress: "mtls".into(),
            client: format!("10.0.0.{}:4433", i % 250),
            terminal: Some(format!("T{}", i % 7)),
            physician: Some(format!("DR{}", i % 3)),
            method: "GET".into(),
            path: format!("/emr/patient/{i}"),
            patient: Some(format!("P{}", i % 5)),
            category: Some("lab".into()),
            decision: if i.is_multiple_of(4) { "deny" } else { "allow" }.into(),
            reason: "consent".into(),
            serial: Some("01ab".into()),
            cn: Some("Dr. Tanaka \"quoted\" 田中".into()),
        }
    }

    fn lines(dir: &Path) -> Vec<String> {
        fs::read_to_string(dir.join(LOG_FILE))
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn write_lines(dir: &Path, lines: &[String]) {
        let mut s = lines.join("\n");
        s.push('\n');
        fs::write(dir.join(LOG_FILE), s).unwrap();
    }

    fn broken_at(dir: &Path) -> (u64, Option<u64>, String) {
        match verify(dir) {
            Err(VerifyError::Broken { line, seq, reason }) => (line, seq, reason),
            other => panic!("expected Broken, got {other:?}"),
        }
    }

    /// Writes `n` request lines sequentially (seq 1..=n), closes.
    async fn make_log(dir: &Path, n: u64) {
        let log = AuditLog::open(dir).unwrap();
        for i in 1..=n {
            assert_eq!(log.record(rec(i)).await.unwrap(), i);
        }
        log.close().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_append_reopen_verify() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let log = AuditLog::open(&dir).unwrap();
        let mut tasks = Vec::new();
        for t in 0..32u64 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..50u64 {
                    let rid = log.record(rec(t * 100 + i)).await.unwrap();
                    log.outcome(
                        rid,
                        Outcome {
                            status: 200,
                            bytes: i,
                            duration_us: 10,
                        },
                    );
                    ids.push(rid);
                }
                ids
            }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            ids.extend(t.await.unwrap());
        }
        log.close().await.unwrap();
        assert_eq!(log.written(), 3200);
        assert!(!log.failed());
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 1600);
        assert_eq!(verify(&dir).unwrap().records, 3200);
        // After close, record is refused.
        assert!(matches!(log.record(rec(1)).await, Err(AuditError::Closed)));
        log.close().await.unwrap();

        let log = AuditLog::open(&dir).unwrap();
        let rid = log.record(rec(1)).await.unwrap();
        assert_eq!(rid, 3201);
        log.outcome(
            rid,
            Outcome {
                status: 404,
                bytes: 0,
                duration_us: 1,
            },
        );
        log.close().await.unwrap();
        let report = verify(&dir).unwrap();
        assert_eq!(report.records, 3202);
        for (i, l) in lines(&dir).iter().enumerate() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["seq"].as_u64(), Some(i as u64 + 1));
        }
        let Ok(Some(head)) = read_head(&dir) else {
            panic!("no anchor")
        };
        assert_eq!(head.seq, 3202);
        assert_eq!(head.hash, report.head);

        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(LOG_FILE)), 0o600);
    }

    #[tokio::test]
    async fn empty_log_verifies() {
        let tmp = tempfile::tempdir().unwrap();
        let log = AuditLog::open(tmp.path()).unwrap();
        log.close().await.unwrap();
        let r = verify(tmp.path()).unwrap();
        assert_eq!(r.records, 0);
        assert_eq!(r.head, "0".repeat(64));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn verify_detects_tampering() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        make_log(dir, 10).await;
        assert_eq!(verify(dir).unwrap().records, 10);
        let orig = lines(dir);

        // Edited field in a middle line.
        let mut l = orig.clone();
        l[4] = l[4].replace("/emr/patient/5", "/emr/patient/6");
        write_lines(dir, &l);
        let (line, seq, reason) = broken_at(dir);
        assert_eq!((line, seq), (5, Some(5)), "{reason}");
        assert!(reason.contains("altered"), "{reason}");
        // The gateway refuses to start on it, naming the line.
        match AuditLog::open(dir) {
            Err(AuditError::Corrupt { line: 5, .. }) => {}
            other => panic!("expected Corrupt at 5, got {other:?}"),
        }

        // Deleted middle line.
        let mut l = orig.clone();
        l.remove(4);
        write_lines(dir, &l);
        assert_eq!(broken_at(dir).0, 5);
        assert_eq!(broken_at(dir).1, Some(6));

        // Swapped lines.
        let mut l = orig.clone();
        l.swap(3, 4);
        write_lines(dir, &l);
        assert_eq!(broken_at(dir).0, 4);

        // Inserted copy of a line.
        let mut l = orig.clone();
        l.insert(3, orig[2].clone());
        write_lines(dir, &l);
        assert_eq!(broken_at(dir).0, 4);

        // Truncated tail: caught by the head anchor.
        write_lines(dir, &orig[..8]);
        let (line, seq, reason) = broken_at(dir);
        assert_eq!((line, seq), (9, Some(10)), "{reason}");
        assert!(AuditLog::open(dir).is_err());

        // Forgery: edit line 5 and recompute its hash; the link from line 6 breaks.
        let mut l = orig.clone();
        let edited = l[4]
            .replace("\"deny\"", "\"allow\"")
            .replace("/emr/patient/5", "/x");
        let prev: [u8; 64] = {
            let v: serde_json::Value = serde_json::from_str(&edited).unwrap();
            v["prev"].as_str().unwrap().as_bytes().try_into().unwrap()
        };
        let canon = &edited[..edited.len() - HASH_SUFFIX_LEN];
        let h = hex_sha256(&[&prev, canon.as_bytes(), b"}"]);
        l[4] = format!(
            "{canon},\"hash\":\"{}\"}}",
            std::str::from_utf8(&h).unwrap()
        );
        write_lines(dir, &l);
        let (line, seq, reason) = broken_at(dir);
        assert_eq!((line, seq), (6, Some(6)), "{reason}");
        assert!(reason.contains("prev"), "{reason}");

        // Whole-chain forgery of the tail is caught by the anchor hash.
        let mut l = orig[..9].to_vec();
        let v: serde_json::Value = serde_json::from_str(&orig[9]).unwrap();
        let prev: [u8; 64] = v["prev"].as_str().unwrap().as_bytes().try_into().unwrap();
        let mut buf = Vec::new();
        let body = serde_json::to_vec(&BodyOut::Request(&rec(99))).unwrap();
        encode_line(&mut buf, 10, &prev, &body);
        l.push(String::from_utf8(buf).unwrap().trim_end().to_owned());
        write_lines(dir, &l);
        assert_eq!(broken_at(dir).0, 10);

        // Deleted anchor.
        write_lines(dir, &orig);
        assert_eq!(verify(dir).unwrap().records, 10);
        fs::remove_file(dir.join(HEAD_FILE)).unwrap();
        assert_eq!(broken_at(dir).0, 0);
        assert!(AuditLog::open(dir).is_err());
    }

    /// Art 12.8: the anchor's two slots are overwritten in turn; a slot torn by a crash is
    /// ignored while the other is intact, and an anchor with no valid slot is an error.
    #[test]
    fn head_anchor_slots_survive_a_torn_update() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let h = |c: u8| [c; 64];
        write_head(dir, 0, &ZERO_HASH).unwrap();
        let mut f = HeadFile::open(dir).unwrap();
        f.update(5, &h(b'a')).unwrap();
        f.update(9, &h(b'b')).unwrap();
        f.update(12, &h(b'c')).unwrap(); // overwrites the slot that held 5
        let bytes = fs::read(dir.join(HEAD_FILE)).unwrap();
        assert_eq!(bytes.len(), 2 * HEAD_SLOT);
        let head = read_head(dir).ok().flatten().unwrap();
        assert_eq!((head.seq, head.hash.as_bytes()), (12, &h(b'c')[..]));

        // Tear the newest slot (slot 0): the other one (seq 9) counts.
        let mut torn = bytes.clone();
        torn[20..40].fill(0);
        fs::write(dir.join(HEAD_FILE), &torn).unwrap();
        assert_eq!(read_head(dir).ok().flatten().unwrap().seq, 9);

        // Both slots spoiled: invalid, never "no anchor".
        torn[HEAD_SLOT + 20..HEAD_SLOT + 40].fill(0);
        fs::write(dir.join(HEAD_FILE), &torn).unwrap();
        assert!(matches!(read_head(dir), Err(HeadErr::Invalid(_))));

        // The single-line anchor of earlier versions still reads.
        let old = format!("{{\"seq\":7,\"hash\":\"{}\"}}\n", "d".repeat(64));
        fs::write(dir.join(HEAD_FILE), old).unwrap();
        assert_eq!(read_head(dir).ok().flatten().unwrap().seq, 7);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn torn_last_line_is_repaired() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        make_log(dir, 5).await;
        let good = fs::read(dir.join(LOG_FILE)).unwrap();

        // Partial write without a newline.
        let mut torn = good.clone();
        torn.extend_from_slice(b"{\"seq\":6,\"prev\":\"ab");
        fs::write(dir.join(LOG_FILE), &torn).unwrap();
        assert_eq!(verify(dir).unwrap().records, 5); // in-progress write ignored
        let log = AuditLog::open(dir).unwrap();
        assert_eq!(fs::read(dir.join(LOG_FILE)).unwrap(), good);
        assert_eq!(log.record(rec(6)).await.unwrap(), 6);
        log.close().await.unwrap();
        assert_eq!(verify(dir).unwrap().records, 6);

        // Garbage (e.g. zero-filled block) ending in a newline on the last line.
        let good = fs::read(dir.join(LOG_FILE)).unwrap();
        let mut torn = good.clone();
        torn.extend_from_slice(b"\0\0\0\0{\"seq\n");
        fs::write(dir.join(LOG_FILE), &torn).unwrap();
        assert_eq!(broken_at(dir).0, 7);
        let log = AuditLog::open(dir).unwrap();
        assert_eq!(fs::read(dir.join(LOG_FILE)).unwrap(), good);
        assert_eq!(log.record(rec(7)).await.unwrap(), 7);
        log.close().await.unwrap();
        assert_eq!(verify(dir).unwrap().records, 7);

        // A bad line in the middle is not repaired: open refuses, naming it.
        let mut l = lines(dir);
        l[2] = "{\"seq\":3,".into();
        write_lines(dir, &l);
        match AuditLog::open(dir) {
            Err(e @ AuditError::Corrupt { line: 3, .. }) => {
                assert!(e.to_string().contains("line 3"), "{e}")
            }
            other => panic!("expected Corrupt at line 3, got {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn query_filters_and_joins_outcomes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let log = AuditLog::open(dir).unwrap();
        let mk = |time: &str, patient: &str, physician: &str| RequestRecord {
            time: time.into(),
            patient: Some(patient.into()),
            physician: Some(physician.into()),
            ..rec(1)
        };
        let a = log
            .record(mk("2026-04-01T09:00:00+09:00", "P1", "DR1"))
            .await
            .unwrap();
        let b = log
            .record(mk("2026-04-01T23:30:00+09:00", "P2", "DR1"))
            .await
            .unwrap();
        let c = log
            .record(mk("2026-04-02T00:00:00+09:00", "P1", "DR2"))
            .await
            .unwrap();
        let d = log
            .record(mk("2026-04-03T01:00:00.5+09:00", "P1", "DR1"))
            .await
            .unwrap();
        log.outcome(
            a,
            Outcome {
                status: 200,
                bytes: 1234,
                duration_us: 50,
            },
        );
        log.outcome(
            c,
            Outcome {
                status: 502,
                bytes: 0,
                duration_us: 7,
            },
        );
        log.close().await.unwrap();

        let q = |f: QueryFilter| {
            query(dir, &f)
                .unwrap()
                .into_iter()
                .map(|r| r.seq)
                .collect::<Vec<_>>()
        };
        assert_eq!(q(QueryFilter::default()), vec![a, b, c, d]);
        assert_eq!(
            q(QueryFilter {
                patient: Some("P1".into()),
                ..Default::default()
            }),
            vec![a, c, d]
        );
        assert_eq!(
            q(QueryFilter {
                physician: Some("DR1".into()),
                ..Default::default()
            }),
            vec![a, b, d]
        );
        assert_eq!(
            q(QueryFilter {
                patient: Some("P1".into()),
                physician: Some("DR1".into()),
                ..Default::default()
            }),
            vec![a, d]
        );
        // Day of 2026-04-01 in Japan; `until` is exclusive.
        assert_eq!(
            q(QueryFilter {
                since: Some(parse_time_arg("2026-04-01").unwrap()),
                until: Some(parse_time_arg("2026-04-02").unwrap()),
                ..Default::default()
            }),
            vec![a, b]
        );
        // Instants compare across offsets: 2026-04-01T15:00Z = 2026-04-02T00:00+09:00.
        assert_eq!(
            q(QueryFilter {
                since: Some(parse_time_arg("2026-04-01T15:00:00Z").unwrap()),
                ..Default::default()
            }),
            vec![c, d]
        );

        let rows = query(dir, &QueryFilter::default()).unwrap();
        assert_eq!(rows[0].status, Some(200));
        assert_eq!(rows[0].bytes, Some(1234));
        assert_eq!(rows[0].duration_us, Some(50));
        assert_eq!(rows[1].status, None);
        assert_eq!(rows[2].status, Some(502));
        let v = serde_json::to_value(&rows[0]).unwrap();
        for k in [
            "seq",
            "time",
            "decision",
            "reason",
            "physician",
            "terminal",
            "patient",
            "category",
            "path",
            "status",
            "bytes",
            "duration_us",
        ] {
            assert!(v.get(k).is_some(), "missing {k} in {v}");
        }
        assert_eq!(v["status"], 200);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn query_prefilter_is_exact() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let log = AuditLog::open(dir).unwrap();
        let mk = |patient: &str, physician: &str, path: &str| RequestRecord {
            patient: Some(patient.into()),
            physician: Some(physician.into()),
            path: path.into(),
            cn: Some("\"patient\":\"P1\"".into()),
            ..rec(1)
        };
        let a = log.record(mk("P1", "DR1", "/a")).await.unwrap();
        let b = log.record(mk("P10", "DR1", "/p/P1")).await.unwrap();
        let c = log
            .record(mk("P2", "DR10", "/x?\"patient\":\"P1\""))
            .await
            .unwrap();
        let d = log.record(mk("P1\"x", "DR1", "/q")).await.unwrap();
        for (rid, status) in [(c, 404), (a, 200)] {
            log.outcome(
                rid,
                Outcome {
                    status,
                    bytes: 1,
                    duration_us: 1,
                },
            );
        }
        log.close().await.unwrap();
        let q = |patient: Option<&str>, physician: Option<&str>| {
            query(
                dir,
                &QueryFilter {
                    patient: patient.map(Into::into),
                    physician: physician.map(Into::into),
                    ..Default::default()
                },
            )
            .unwrap()
        };
        let rows = q(Some("P1"), None);
        assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![a]);
        assert_eq!(rows[0].status, Some(200));
        assert_eq!(q(Some("P1\"x"), None)[0].seq, d);
        assert_eq!(
            q(None, Some("DR1"))
                .iter()
                .map(|r| r.seq)
                .collect::<Vec<_>>(),
            vec![a, b, d]
        );
        let rows = q(Some("P2"), Some("DR10"));
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].seq, rows[0].status), (c, Some(404)));
        assert!(q(Some("P2"), Some("DR1")).is_empty());
        // The unparsed readers agree with the writer's format.
        let lines = lines(dir);
        assert_eq!(written_kind(lines[0].as_bytes()), Some(&b"request"[..]));
        assert_eq!(written_kind(lines[4].as_bytes()), Some(&b"outcome"[..]));
        assert_eq!(outcome_rid(lines[4].as_bytes()), Some(c));
        assert_eq!(outcome_rid(lines[0].as_bytes()), None);
    }

    #[test]
    fn time_args() {
        let t = parse_time_arg("2026-04-01").unwrap();
        assert_eq!(t.offset(), JST);
        assert_eq!(t, parse_time_arg("2026-03-31T15:00:00Z").unwrap());
        assert!(parse_time_arg("yesterday").is_err());
        assert!(parse_time_arg("2026-13-01").is_err());
        let now = now_jst();
        assert!(now.ends_with("+09:00"), "{now}");
        assert!(parse_time_arg(&now).is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fails_closed_and_recovers() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let log = AuditLog::open(dir).unwrap();
        let r1 = log.record(rec(1)).await.unwrap();
        assert_eq!(r1, 1);

        log.inject_failure(true);
        // Outcome of an already-forwarded request, queued while the disk is "full".
        log.outcome(
            r1,
            Outcome {
                status: 200,
                bytes: 10,
                duration_us: 3,
            },
        );
        match log.record(rec(2)).await {
            Err(AuditError::WriteFailed(msg)) => assert!(msg.contains("injected"), "{msg}"),
            other => panic!("expected WriteFailed, got {other:?}"),
        }
        assert!(log.failed());
        assert!(log.record(rec(3)).await.is_err());
        // The partial write was rolled back: the log still verifies.
        assert_eq!(verify(dir).unwrap().records, 1);

        log.inject_failure(false);
        let r4 = log.record(rec(4)).await.unwrap();
        assert!(!log.failed());
        // The carried outcome line was written first (seq 2), then the request.
        assert_eq!(r4, 3);
        log.close().await.unwrap();
        assert_eq!(verify(dir).unwrap().records, 3);
        let rows = query(dir, &QueryFilter::default()).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].status, Some(200));
        assert_eq!(rows[1].request.path, "/emr/patient/4");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_writer_retries_carried_outcomes_when_idle() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let log = AuditLog::open(dir).unwrap();
        let r1 = log.record(rec(1)).await.unwrap();
        log.inject_failure(true);
        log.outcome(
            r1,
            Outcome {
                status: 200,
                bytes: 1,
                duration_us: 1,
            },
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(log.failed());
        log.inject_failure(false);
        for _ in 0..50 {
            if !log.failed() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!log.failed());
        assert_eq!(log.written(), 2);
        log.close().await.unwrap();
        assert_eq!(verify(dir).unwrap().records, 2);
    }

    #[test]
    fn handle_and_futures_are_send_sync() {
        fn send_sync<T: Send + Sync + Clone>() {}
        fn send<T: Send>(_: &T) {}
        send_sync::<AuditLog>();
        let tmp = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let log = AuditLog::open(tmp.path()).unwrap();
            let fut = log.record(rec(1));
            send(&fut);
            fut.await.unwrap();
            log.close().await.unwrap();
        });
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn verify_while_appending() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let log = AuditLog::open(&dir).unwrap();
        let writer = {
            let log = log.clone();
            tokio::spawn(async move {
                for i in 0..2000 {
                    let rid = log.record(rec(i)).await.unwrap();
                    log.outcome(
                        rid,
                        Outcome {
                            status: 200,
                            bytes: 1,
                            duration_us: 1,
                        },
                    );
                }
            })
        };
        let checker = tokio::task::spawn_blocking(move || {
            let mut last = 0;
            for _ in 0..20 {
                let r = verify(&dir).unwrap();
                assert!(r.records >= last);
                last = r.records;
            }
        });
        writer.await.unwrap();
        checker.await.unwrap();
        log.close().await.unwrap();
        assert_eq!(verify(tmp.path()).unwrap().records, 4000);
    }
}
