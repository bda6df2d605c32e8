//! Sidecar per-patient index of the audit log: `DIR/audit.idx`.
//!
//! Derived data only: `audit.log` stays the single source of truth, and a query through the
//! index returns exactly what a scan of the whole log returns, or falls back to that scan.
//!
//! ```text
//! header (128 bytes): "SGAIDX01" covered:u64 log_end:u64 hash:[64 hex] sum:u64 check:[8] zeros
//! entry i (16 bytes): key:u64 offset:u64        (little endian; entry i is the line seq i+1)
//! ```
//!
//! * `key` is [`patient_key`] of the request's `patient` (0: none); an outcome line gets the
//!   key of its request (`rid`), so a per-patient query finds the outcomes too.
//! * `offset` is where the line starts in `audit.log`.
//! * The header's `covered` (W) says how many entries are trusted; `log_end` is the byte
//!   length of the log up to line W and `hash` the chain hash of line W, so a reader can tell
//!   whether the log is still the one that was indexed; `sum` is a checksum of entries
//!   1..=W (see [`entry_sum`]) that a query recomputes as it reads them, so an altered entry
//!   is noticed even where it does not name the patient asked for; `check` is the first 8
//!   bytes of the SHA-256 of the header before it (a torn header write is not believed).
//!
//! Crash safety: the writer thread hands each synced batch of log lines to the index thread
//! (never the other way round: an entry only exists for a line already durable in the log),
//! which appends the entries and, at most every [`SYNC_INTERVAL`], `fdatasync`s them and only
//! then writes the header naming the new W. Entries beyond W may be torn or missing after a
//! crash; they are ignored by readers and re-derived from the log at the next open. At open
//! every trusted entry is compared with the log during the chain scan that open already does;
//! at the first disagreement the header is lowered, the rest truncated and rebuilt, with a
//! warning. `verify` compares them too, so a tampered index is reported like a broken chain.
//!
//! None of this is on the request path: requests wait for the log's group commit only; the
//! index thread's writes and syncs run beside it. If the index cannot be written it is left
//! behind (queries scan the log beyond its watermark) and rebuilt at the next open.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use ring::digest;

use super::{
    matches, KindOnly, OutcomeLine, QueryFilter, QueryRow, QueryState, RequestRecord, Scanned,
    LOG_FILE, ZERO_HASH,
};

/// Name of the index inside the audit directory.
pub const INDEX_FILE: &str = "audit.idx";
const MAGIC: &[u8; 8] = b"SGAIDX01";
const HEADER_LEN: u64 = 128;
const ENTRY_LEN: u64 = 16;
/// Keys of the most recent lines kept in memory to give an outcome its request's key without
/// reading the file (outcomes follow their requests within seconds).
const RING: u64 = if cfg!(test) { 64 } else { 1 << 16 };
/// How often the index thread makes its new entries durable and advances the watermark.
pub(super) const SYNC_INTERVAL: Duration = Duration::from_millis(250);
/// Entries kept in memory while the index file cannot be written (16 MiB); beyond that the
/// index stops until the next open.
const MAX_PENDING: usize = 1 << 20;
/// Entries read per chunk by a query.
const QUERY_CHUNK: usize = 1 << 16;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("audit index I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The index does not fit the log (missing, stale, torn, tampered): scan the log instead.
    #[error("audit index not usable: {0}")]
    Unusable(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> IndexError + '_ {
    move |source| IndexError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn unusable(reason: impl Into<String>) -> IndexError {
    IndexError::Unusable(reason.into())
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
pub fn patient_key(patient: Option<&str>) -> u64 {
    let Some(p) = patient else { return 0 };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in p.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.max(1)
}

fn encode_entry(key: u64, offset: u64) -> [u8; ENTRY_LEN as usize] {
    let mut e = [0u8; ENTRY_LEN as usize];
    e[..8].copy_from_slice(&key.to_le_bytes());
    e[8..].copy_from_slice(&offset.to_le_bytes());
    e
}

fn decode_entry(e: &[u8]) -> (u64, u64) {
    let mut k = [0u8; 8];
    let mut o = [0u8; 8];
    k.copy_from_slice(&e[..8]);
    o.copy_from_slice(&e[8..16]);
    (u64::from_le_bytes(k), u64::from_le_bytes(o))
}

/// The contribution of entry `seq` to the header's `sum` (wrapping addition over entries): a
/// 64-bit mix of position, key and offset, so any accidental change of an entry shows.
fn entry_sum(seq: u64, key: u64, offset: u64) -> u64 {
    let mut x = key ^ offset.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seq.rotate_left(32);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn entry_pos(seq: u64) -> u64 {
    HEADER_LEN + (seq - 1) * ENTRY_LEN
}

// ---------------------------------------------------------------------------
// Header
// ---------------------------------------------------------------------------

/// The watermark: entries `1..=covered` are durable and describe `audit.log[..log_end]`,
/// whose last line has chain hash `hash`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Header {
    pub covered: u64,
    pub log_end: u64,
    pub hash: [u8; 64],
    pub sum: u64,
}

impl Header {
    const EMPTY: Header = Header {
        covered: 0,
        log_end: 0,
        hash: ZERO_HASH,
        sum: 0,
    };

    fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut b = [0u8; HEADER_LEN as usize];
        b[..8].copy_from_slice(MAGIC);
        b[8..16].copy_from_slice(&self.covered.to_le_bytes());
        b[16..24].copy_from_slice(&self.log_end.to_le_bytes());
        b[24..88].copy_from_slice(&self.hash);
        b[88..96].copy_from_slice(&self.sum.to_le_bytes());
        let check = digest::digest(&digest::SHA256, &b[..96]);
        b[96..104].copy_from_slice(&check.as_ref()[..8]);
        b
    }

    fn decode(b: &[u8]) -> Result<Header, String> {
        if b.len() < HEADER_LEN as usize {
            return Err("header is short".into());
        }
        if &b[..8] != MAGIC {
            return Err("not an audit index (bad magic)".into());
        }
        let check = digest::digest(&digest::SHA256, &b[..96]);
        if b[96..104] != check.as_ref()[..8] {
            return Err("header checksum mismatch (torn or altered)".into());
        }
        let (covered, log_end) = decode_entry(&b[8..24]);
        let mut hash = [0u8; 64];
        hash.copy_from_slice(&b[24..88]);
        let (sum, _) = decode_entry(&b[88..104]);
        Ok(Header {
            covered,
            log_end,
            hash,
            sum,
        })
    }
}

/// Reads the header; `Ok(Err(reason))` when it is not valid.
fn read_header(file: &File) -> io::Result<Result<Header, String>> {
    let mut b = [0u8; HEADER_LEN as usize];
    let mut got = 0;
    while got < b.len() {
        match file.read_at(&mut b[got..], got as u64)? {
            0 => break,
            n => got += n,
        }
    }
    Ok(Header::decode(&b[..got]))
}

// ---------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------

/// The index file as the writer side sees it.
pub(super) struct IndexWriter {
    path: PathBuf,
    file: File,
    /// Entries present in the file (the first `synced.covered` of them trusted).
    on_file: u64,
    /// Entries not yet written, for lines `on_file + 1 ..= indexed`.
    pending: Vec<u8>,
    /// Lines indexed so far (the last one is seq `indexed`).
    indexed: u64,
    /// Keys of the last `RING` lines, by `(seq - 1) % RING`.
    ring: Vec<u64>,
    /// [`entry_sum`] of entries `1..=indexed`.
    sum: u64,
    /// The header the file has.
    synced: Header,
    /// The header to write at the next sync.
    latest: Header,
}

impl IndexWriter {
    /// The key of line `seq` (already indexed).
    fn key_of(&self, seq: u64) -> io::Result<u64> {
        if seq == 0 || seq > self.indexed {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("outcome for line {seq}, which is not indexed"),
            ));
        }
        if self.indexed - seq < RING {
            return Ok(self.ring[((seq - 1) % RING) as usize]);
        }
        if seq <= self.on_file {
            let mut k = [0u8; 8];
            self.file.read_exact_at(&mut k, entry_pos(seq))?;
            return Ok(u64::from_le_bytes(k));
        }
        let at = ((seq - 1 - self.on_file) * ENTRY_LEN) as usize;
        let mut k = [0u8; 8];
        k.copy_from_slice(self.pending.get(at..at + 8).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "pending index entry missing")
        })?);
        Ok(u64::from_le_bytes(k))
    }

    fn resolve(&self, key: LineKey) -> io::Result<u64> {
        match key {
            LineKey::Request(k) => Ok(k),
            LineKey::Outcome(rid) => self.key_of(rid),
        }
    }

    /// Records line `indexed + 1` with its resolved key (in memory; see [`Self::write_pending`]).
    fn note(&mut self, key: u64, offset: u64) {
        self.indexed += 1;
        self.ring[((self.indexed - 1) % RING) as usize] = key;
        self.sum = self.sum.wrapping_add(entry_sum(self.indexed, key, offset));
    }

    fn push(&mut self, key: LineKey, offset: u64) -> io::Result<()> {
        let key = self.resolve(key)?;
        self.pending.extend_from_slice(&encode_entry(key, offset));
        self.note(key, offset);
        Ok(())
    }

    fn write_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let at = HEADER_LEN + self.on_file * ENTRY_LEN;
        if let Err(e) = self.file.write_all_at(&self.pending, at) {
            // Leave no partial entries behind the trusted ones; retried later.
            let _ = self.file.set_len(at);
            return Err(e);
        }
        self.on_file += (self.pending.len() as u64) / ENTRY_LEN;
        self.pending.clear();
        Ok(())
    }

    fn write_header(&mut self, h: Header) -> io::Result<()> {
        self.file.write_all_at(&h.encode(), 0)?;
        self.synced = h;
        Ok(())
    }

    /// Makes every entry durable, then advances the watermark (the header itself becomes
    /// durable with the next sync or at close; until then the older one stands, which is safe).
    fn sync(&mut self) -> io::Result<()> {
        self.write_pending()?;
        if self.latest != self.synced {
            self.file.sync_data()?;
            self.write_header(self.latest)?;
        }
        Ok(())
    }

    fn close(&mut self) -> io::Result<()> {
        self.sync()?;
        self.file.sync_data()
    }
}

/// Lines handed from the log writer to the index thread, accumulated between two syncs.
#[derive(Default)]
struct Handoff {
    /// Seq of `lines[0]`.
    first_seq: u64,
    /// Key and byte offset of each line, in log order.
    lines: Vec<(LineKey, u64)>,
    /// Log length and chain hash after the last line.
    log_end: u64,
    hash: Option<[u8; 64]>,
    /// Lines were dropped (the index thread was not keeping up): the index stops.
    lost: bool,
    stop: bool,
}

/// The writer's side of the index thread. The writer appends each synced batch under a mutex
/// and wakes the index thread only when it finds the slot empty (at most once per sync
/// interval under load): no thread handoff per batch, nothing a request waits for.
#[derive(Default)]
pub(super) struct IndexSlot {
    state: Mutex<Handoff>,
    cv: Condvar,
}

impl IndexSlot {
    fn lock(&self) -> MutexGuard<'_, Handoff> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lines `first_seq..` (key, offset) are durable in the log, which now ends at `log_end`
    /// with chain hash `hash`.
    pub(super) fn publish(
        &self,
        first_seq: u64,
        lines: impl Iterator<Item = (LineKey, u64)>,
        log_end: u64,
        hash: [u8; 64],
    ) {
        let mut g = self.lock();
        if g.lost {
            return;
        }
        let was_empty = g.lines.is_empty();
        if was_empty {
            g.first_seq = first_seq;
        }
        g.lines.extend(lines);
        if g.lines.len() > MAX_PENDING {
            g.lines = Vec::new();
            g.lost = true;
        }
        g.log_end = log_end;
        g.hash = Some(hash);
        drop(g);
        if was_empty {
            self.cv.notify_one();
        }
    }

    /// Makes the index thread sync what it has and end.
    pub(super) fn stop(&self) {
        self.lock().stop = true;
        self.cv.notify_one();
    }
}

/// The index thread: takes what the writer published, at most every [`SYNC_INTERVAL`],
/// appends the entries, syncs them and then advances the watermark; a final sync at stop.
pub(super) fn index_thread(mut w: IndexWriter, slot: Arc<IndexSlot>) {
    let mut last_sync = Instant::now();
    let mut failing = false;
    let mut stopped = false;
    loop {
        let (taken, stop) = {
            let mut g = slot.lock();
            // Idle: sleep until lines arrive (or, after a failed write, retry in a while).
            while g.lines.is_empty() && !g.stop && !g.lost {
                if failing {
                    g = slot
                        .cv
                        .wait_timeout(g, SYNC_INTERVAL)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                    break;
                }
                g = slot.cv.wait(g).unwrap_or_else(PoisonError::into_inner);
            }
            // Let a sync interval's worth of batches gather (unless stopping).
            let left = SYNC_INTERVAL.saturating_sub(last_sync.elapsed());
            if !g.stop && !left.is_zero() {
                g = slot
                    .cv
                    .wait_timeout_while(g, left, |h| !h.stop)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            let taken = std::mem::take(&mut *g);
            g.lost = taken.lost;
            g.stop = taken.stop;
            (taken, g.stop)
        };
        if !stopped {
            if let Err(e) = apply(&mut w, taken) {
                tracing::error!(error = %e, path = %w.path.display(),
                    "audit: index stopped (queries scan the log beyond it; rebuilt at the next start)");
                stopped = true;
                w.pending.clear();
                w.latest = w.synced;
            }
        }
        last_sync = Instant::now();
        match w.sync() {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("audit: index writes succeed again");
            }
            Ok(()) => {}
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, path = %w.path.display(),
                        "audit: could not write the index (retrying; queries scan the log beyond it)");
                }
                failing = true;
                if w.pending.len() / ENTRY_LEN as usize > MAX_PENDING {
                    tracing::error!("audit: index stopped: too many entries waiting");
                    stopped = true;
                    w.pending.clear();
                    w.latest = w.synced;
                }
            }
        }
        if stop {
            break;
        }
    }
    if let Err(e) = w.close() {
        tracing::warn!(error = %e, path = %w.path.display(), "audit: could not sync the index at close");
    }
}

fn apply(w: &mut IndexWriter, h: Handoff) -> io::Result<()> {
    if h.lost {
        return Err(io::Error::other(
            "the index thread fell too far behind the log",
        ));
    }
    let Some(hash) = h.hash else {
        return Ok(()); // nothing new
    };
    if h.lines.is_empty() {
        return Ok(());
    }
    if h.first_seq != w.indexed + 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "lines start at {} but the index ends at {}",
                h.first_seq, w.indexed
            ),
        ));
    }
    for (key, offset) in h.lines {
        w.push(key, offset)?;
    }
    w.latest = Header {
        covered: w.indexed,
        log_end: h.log_end,
        hash,
        sum: w.sum,
    };
    Ok(())
}

/// Open-time check of the index against the log, fed line by line by the chain scan.
pub(super) struct Rebuild {
    w: IndexWriter,
    /// Entries believed (up to the old watermark) and not yet compared, read in order.
    old: Option<BufReader<File>>,
    trusted: u64,
}

impl Rebuild {
    /// Opens (creating) `DIR/audit.idx` and drops whatever lies beyond its watermark.
    pub(super) fn open(dir: &Path) -> Result<Rebuild, IndexError> {
        let path = dir.join(INDEX_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path))?;
        let len = file.metadata().map_err(io_err(&path))?.len();
        let header = match read_header(&file).map_err(io_err(&path))? {
            Ok(h) if len >= HEADER_LEN + h.covered * ENTRY_LEN => Some(h),
            Ok(h) => {
                tracing::warn!(path = %path.display(), covered = h.covered, len,
                    "audit: index shorter than its watermark; rebuilding it");
                None
            }
            Err(_) if len == 0 => None,
            Err(reason) => {
                tracing::warn!(path = %path.display(), %reason, "audit: index header not valid; rebuilding it");
                None
            }
        };
        let mut w = IndexWriter {
            path: path.clone(),
            file,
            on_file: 0,
            pending: Vec::with_capacity(1 << 20),
            indexed: 0,
            ring: vec![0; RING as usize],
            sum: 0,
            synced: Header::EMPTY,
            latest: Header::EMPTY,
        };
        let trusted = match header {
            Some(h) => {
                w.synced = h;
                w.on_file = h.covered;
                h.covered
            }
            None => {
                w.write_header(Header::EMPTY).map_err(io_err(&path))?;
                w.file.sync_data().map_err(io_err(&path))?;
                0
            }
        };
        // Entries beyond the watermark may be torn: they are derived again below.
        let keep = HEADER_LEN + trusted * ENTRY_LEN;
        if len > keep {
            w.file.set_len(keep).map_err(io_err(&path))?;
        }
        let old = if trusted > 0 {
            let mut f = w.file.try_clone().map_err(io_err(&path))?;
            f.seek(SeekFrom::Start(HEADER_LEN)).map_err(io_err(&path))?;
            Some(BufReader::with_capacity(1 << 20, f))
        } else {
            None
        };
        Ok(Rebuild { w, old, trusted })
    }

    /// The next good line of the log, from the chain scan.
    pub(super) fn line(&mut self, l: &Scanned) -> io::Result<()> {
        let (seq, offset) = (l.seq, l.offset);
        if seq != self.w.indexed + 1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "index rebuild fed out of order",
            ));
        }
        let key = self.w.resolve(l.key)?;
        let want = encode_entry(key, offset);
        if seq <= self.trusted {
            let mut have = [0u8; ENTRY_LEN as usize];
            let old = self.old.as_mut().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "index reader missing")
            })?;
            old.read_exact(&mut have)?;
            if have == want {
                self.w.note(key, offset);
                return Ok(());
            }
            let (k, o) = decode_entry(&have);
            tracing::warn!(path = %self.w.path.display(), seq, index_key = k, index_offset = o,
                log_key = key, log_offset = offset,
                "audit: index disagrees with the log; rebuilding it from this line");
            self.lower(seq - 1, offset, l.prev)?;
        }
        self.w.pending.extend_from_slice(&want);
        self.w.note(key, offset);
        if self.w.pending.len() >= 1 << 20 {
            self.w.write_pending()?;
        }
        Ok(())
    }

    /// Moves the watermark down to `covered` lines (durably) and drops the entries after it.
    fn lower(&mut self, covered: u64, log_end: u64, hash: [u8; 64]) -> io::Result<()> {
        // Called with `indexed == covered`: the running sum is that of the entries kept.
        self.w.write_header(Header {
            covered,
            log_end,
            hash,
            sum: self.w.sum,
        })?;
        self.w.file.sync_data()?;
        self.w.file.set_len(HEADER_LEN + covered * ENTRY_LEN)?;
        self.w.on_file = covered;
        self.trusted = covered;
        self.old = None;
        Ok(())
    }

    /// After the scan: the log has `covered` good lines, `log_end` bytes, last hash `hash`.
    /// Makes the index cover exactly that, durably.
    pub(super) fn finish(
        mut self,
        covered: u64,
        log_end: u64,
        hash: [u8; 64],
    ) -> io::Result<IndexWriter> {
        if self.w.indexed != covered {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("index rebuilt {} lines of {covered}", self.w.indexed),
            ));
        }
        if self.trusted > covered {
            tracing::warn!(path = %self.w.path.display(), index = self.trusted, log = covered,
                "audit: index covers more lines than the log has; cut back");
            self.lower(covered, log_end, hash)?;
        }
        self.old = None;
        self.w.latest = Header {
            covered,
            log_end,
            hash,
            sum: self.w.sum,
        };
        if self.w.latest != self.w.synced {
            self.w.close()?;
        }
        Ok(self.w)
    }
}

// ---------------------------------------------------------------------------
// Checking (audit verify)
// ---------------------------------------------------------------------------

/// `verify`'s comparison of the trusted entries with the log, fed by the chain scan.
pub(super) struct Check {
    reader: BufReader<File>,
    file: File,
    header: Header,
    checked: u64,
    ring: Vec<u64>,
}

impl Check {
    /// `None` when there is no index (nothing to check).
    pub(super) fn open(dir: &Path) -> Result<Option<Check>, String> {
        let path = dir.join(INDEX_FILE);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{INDEX_FILE}: {e}")),
        };
        let h = match read_header(&file) {
            Ok(Ok(h)) => h,
            // Rewritten at the next open; nothing it says is believed meanwhile.
            Ok(Err(_)) => return Ok(None),
            Err(e) => return Err(format!("{INDEX_FILE}: {e}")),
        };
        let mut r = file.try_clone().map_err(|e| format!("{INDEX_FILE}: {e}"))?;
        r.seek(SeekFrom::Start(HEADER_LEN))
            .map_err(|e| format!("{INDEX_FILE}: {e}"))?;
        Ok(Some(Check {
            reader: BufReader::with_capacity(1 << 20, r),
            file,
            header: h,
            checked: 0,
            ring: vec![0; RING as usize],
        }))
    }

    /// Compares the line's entry (if trusted) with the log; `Err(reason)` on a disagreement.
    pub(super) fn line(&mut self, l: &Scanned) -> Result<(), String> {
        let (seq, offset, key) = (l.seq, l.offset, l.key);
        if seq > self.header.covered {
            return Ok(());
        }
        if seq == self.header.covered && (l.end, l.hash) != (self.header.log_end, self.header.hash)
        {
            return Err(format!(
                "{INDEX_FILE}'s watermark (line {seq}) does not describe the log's line {seq}"
            ));
        }
        let mut e = [0u8; ENTRY_LEN as usize];
        self.reader
            .read_exact(&mut e)
            .map_err(|err| format!("{INDEX_FILE} entry {seq}: {err}"))?;
        let (k, o) = decode_entry(&e);
        let want = match key {
            LineKey::Request(k) => k,
            LineKey::Outcome(rid) if self.checked - rid < RING => {
                self.ring[((rid - 1) % RING) as usize]
            }
            LineKey::Outcome(rid) => {
                let mut b = [0u8; 8];
                self.file
                    .read_exact_at(&mut b, entry_pos(rid))
                    .map_err(|err| format!("{INDEX_FILE} entry {rid}: {err}"))?;
                u64::from_le_bytes(b)
            }
        };
        if (k, o) != (want, offset) {
            return Err(format!(
                "{INDEX_FILE} entry {seq} (key {k:016x}, offset {o}) does not describe the log's \
                 line (key {want:016x}, offset {offset}); the log is the record, the index is \
                 rebuilt at the next start"
            ));
        }
        self.ring[((seq - 1) % RING) as usize] = k;
        self.checked = seq;
        Ok(())
    }

    /// After the scan of `lines` lines.
    pub(super) fn finish(&self, lines: u64) -> Result<(), String> {
        if self.header.covered > lines {
            return Err(format!(
                "{INDEX_FILE} covers {} lines but the log has {lines}",
                self.header.covered
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Query
// ---------------------------------------------------------------------------

/// Reads the line starting at `offset` (without its `\n`).
fn read_line_at(log: &File, offset: u64, buf: &mut Vec<u8>) -> io::Result<bool> {
    buf.clear();
    let mut chunk = [0u8; 2048];
    let mut at = offset;
    loop {
        let n = log.read_at(&mut chunk, at)?;
        if n == 0 {
            return Ok(false);
        }
        if let Some(i) = memchr::memchr(b'\n', &chunk[..n]) {
            buf.extend_from_slice(&chunk[..i]);
            return Ok(true);
        }
        buf.extend_from_slice(&chunk[..n]);
        at += n as u64;
    }
}

/// The `seq` a line as written starts with (`{"seq":N,`), read without parsing it.
fn written_seq(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(b"{\"seq\":")?;
    let n = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if rest.get(n) != Some(&b',') {
        return None;
    }
    std::str::from_utf8(&rest[..n]).ok()?.parse().ok()
}

/// A per-patient query through the index: the entries up to the watermark name the lines of
/// the patient (and their outcomes), each read and checked; the log beyond the watermark is
/// scanned. Any disagreement is an error, and the caller scans the whole log instead.
pub(super) fn query(
    dir: &Path,
    filter: &QueryFilter,
    patient: &str,
) -> Result<Vec<QueryRow>, IndexError> {
    let idx_path = dir.join(INDEX_FILE);
    let log_path = dir.join(LOG_FILE);
    let idx = match File::open(&idx_path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(unusable(format!("{INDEX_FILE} does not exist")))
        }
        Err(e) => return Err(io_err(&idx_path)(e)),
    };
    // The header may be caught mid-update by the index thread: read it again then.
    let mut header = Err(String::new());
    for _ in 0..3 {
        header = read_header(&idx).map_err(io_err(&idx_path))?;
        if header.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let h = header.map_err(|r| unusable(format!("{INDEX_FILE}: {r}")))?;
    let log = File::open(&log_path).map_err(io_err(&log_path))?;
    let log_len = log.metadata().map_err(io_err(&log_path))?.len();
    if log_len < h.log_end {
        return Err(unusable(format!(
            "the log ({log_len} bytes) is shorter than the index says ({})",
            h.log_end
        )));
    }

    // Entries 1..=W: the lines filed under the patient's key.
    let key = patient_key(Some(patient));
    let mut hits: Vec<(u64, u64)> = Vec::new();
    let mut last_offset = None;
    let mut reader = &idx;
    reader
        .seek(SeekFrom::Start(HEADER_LEN))
        .map_err(io_err(&idx_path))?;
    let mut chunk = vec![0u8; QUERY_CHUNK * ENTRY_LEN as usize];
    let mut seq = 0u64;
    let mut sum = 0u64;
    while seq < h.covered {
        let n = (h.covered - seq).min(QUERY_CHUNK as u64) as usize;
        let bytes = &mut chunk[..n * ENTRY_LEN as usize];
        reader.read_exact(bytes).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => unusable(format!(
                "{INDEX_FILE} is shorter than its watermark ({} lines)",
                h.covered
            )),
            _ => io_err(&idx_path)(e),
        })?;
        for e in bytes.chunks_exact(ENTRY_LEN as usize) {
            seq += 1;
            let (k, o) = decode_entry(e);
            sum = sum.wrapping_add(entry_sum(seq, k, o));
            if k == key {
                hits.push((seq, o));
            }
        }
        if seq == h.covered {
            last_offset = bytes
                .chunks_exact(ENTRY_LEN as usize)
                .last()
                .map(|e| decode_entry(e).1);
        }
    }

    if sum != h.sum {
        return Err(unusable(format!(
            "the entries of {INDEX_FILE} do not add up to its checksum (altered or damaged)"
        )));
    }
    let mut buf = Vec::with_capacity(1024);
    // Is the log still the one indexed? Line W must end at log_end with the hash recorded.
    if let Some(o) = last_offset {
        let ok = read_line_at(&log, o, &mut buf).map_err(io_err(&log_path))?
            && o + buf.len() as u64 + 1 == h.log_end
            && written_seq(&buf) == Some(h.covered)
            && buf.ends_with(&[&h.hash[..], b"\"}"].concat());
        if !ok {
            return Err(unusable(format!(
                "line {} of the log is not the one indexed (log replaced or altered?)",
                h.covered
            )));
        }
    } else if h.log_end != 0 {
        return Err(unusable("empty index with a nonzero log end"));
    }

    let mut state = QueryState::new(filter);
    let hit_seqs: HashSet<u64> = hits.iter().map(|&(s, _)| s).collect();
    for &(seq, offset) in &hits {
        let bad = |why: &str| unusable(format!("line {seq} (offset {offset}): {why}"));
        if !read_line_at(&log, offset, &mut buf).map_err(io_err(&log_path))? {
            return Err(bad("no complete line there"));
        }
        if written_seq(&buf) != Some(seq) {
            return Err(bad("the line there has another seq"));
        }
        let k: KindOnly = serde_json::from_slice(&buf).map_err(|_| bad("not a valid line"))?;
        match k.kind.as_ref() {
            "request" => {
                let rec: RequestRecord =
                    serde_json::from_slice(&buf).map_err(|_| bad("not a valid request line"))?;
                if patient_key(rec.patient.as_deref()) != key {
                    return Err(bad("its patient is not the one the index files it under"));
                }
                // Another patient with the same key (a hash collision): not a hit.
                if rec.patient.as_deref() != Some(patient) {
                    continue;
                }
                let m = matches(filter, &rec).map_err(|r| bad(&r))?;
                if m {
                    state.push_request(seq, rec);
                }
            }
            "outcome" => {
                let o: OutcomeLine =
                    serde_json::from_slice(&buf).map_err(|_| bad("not a valid outcome line"))?;
                if !hit_seqs.contains(&o.rid) {
                    return Err(bad(
                        "an outcome whose request is not filed under the patient",
                    ));
                }
                state.join_outcome(&o);
            }
            _ => return Err(bad("unknown kind")),
        }
    }

    // The log beyond the watermark: scanned as usual.
    let mut tail = BufReader::with_capacity(1 << 20, log);
    tail.seek(SeekFrom::Start(h.log_end))
        .map_err(io_err(&log_path))?;
    let mut line_no = h.covered;
    loop {
        buf.clear();
        if tail
            .read_until(b'\n', &mut buf)
            .map_err(io_err(&log_path))?
            == 0
        {
            break;
        }
        line_no += 1;
        let Some(line) = buf.strip_suffix(b"\n") else {
            break; // write in progress
        };
        if written_seq(line) != Some(line_no) {
            return Err(unusable(format!(
                "line {line_no} beyond the index's watermark has another seq"
            )));
        }
        state
            .scan_line(line, line_no)
            .map_err(|e| unusable(e.to_string()))?;
    }
    Ok(state.rows)
}

#[cfg(test)]
mod tests;
