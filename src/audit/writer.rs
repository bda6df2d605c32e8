//! The writer thread and its group commit: it drains everything queued, appends it with one
//! `write`, calls `sync_data` once and only then completes the waiters. It owns the head
//! thread ([`super::anchor`]) and the index thread ([`super::index`]), which it feeds after
//! every synced batch and stops when it stops.
//!
//! Lines nobody waits for (outcomes, connection refusals, suppression summaries) are held
//! back for at most [`HOLD`] and go out with the next line somebody waits for: at one
//! connection, the outcome of request N and the record of request N+1 share one `fdatasync`
//! instead of taking one each (the record of N+1 no longer queues behind the outcome's sync).
//!
//! The file is grown ahead of the lines in written chunks of zeros ([`CHUNK`]), and lines
//! overwrite them in place: a sync then writes the data blocks only, not the inode's size and
//! extents as well (on ext4 the inode is written at every sync of a growing file, through the
//! journal when there is one).
//! Readers stop at the unterminated zero tail like at a write in progress; recovery and a
//! clean stop cut it off, so a log at rest is plain JSON Lines.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};

use tokio::sync::oneshot;

use super::anchor::{head_thread, HeadSlot};
use super::chain::{encode_line, LineKey, Scan};
use super::error::{io_err, AuditError};
use super::index::{self, IndexSlot, IndexWriter};

/// Upper bounds for one group commit.
const MAX_BATCH_LINES: usize = 8192;
const MAX_BATCH_BYTES: usize = 8 << 20;
/// While outcome lines are waiting after a failed write, retry this often.
const RETRY_INTERVAL: Duration = Duration::from_millis(250);
/// How long a busy writer waits for more records before syncing a batch.
const GROUP_WINDOW: Duration = Duration::from_micros(200);
/// How long a line nobody waits for may be held back for the next line somebody waits for.
const HOLD: Duration = Duration::from_millis(2);
/// Bounds of what is held back (beyond, it is committed at once).
const MAX_HELD_LINES: usize = 1024;
const MAX_HELD_BYTES: usize = 1 << 20;
/// The file grows by this many zero bytes at a time, ahead of the lines.
pub(super) const CHUNK: u64 = 1 << 20;
/// After growing failed for lack of room, the next try is this much later.
const GROW_RETRY: Duration = Duration::from_secs(5);

pub(super) type Reply = oneshot::Sender<Result<u64, AuditError>>;
type CloseReply = oneshot::Sender<Result<(), AuditError>>;

/// What the handle sends the writer thread.
pub(super) enum Cmd {
    Append {
        body: Vec<u8>,
        key: LineKey,
        reply: Option<Reply>,
    },
    Close(CloseReply),
}

struct Entry {
    body: Vec<u8>,
    key: LineKey,
    reply: Option<Reply>,
}

/// State the writer shares with the handle.
pub(super) struct Shared {
    pub(super) written: AtomicU64,
    pub(super) failed: AtomicBool,
    #[cfg(test)]
    pub(super) inject_failure: AtomicBool,
}

/// A started writer: its command channel, shared state and thread.
pub(super) struct Running {
    pub(super) tx: mpsc::Sender<Cmd>,
    pub(super) shared: Arc<Shared>,
    pub(super) thread: JoinHandle<()>,
}

/// Starts the writer thread, with its head thread and (given an up-to-date index) its index
/// thread, on a log `file` recovered up to `st`.
pub(super) fn start(
    dir: &Path,
    file: File,
    st: &Scan,
    index_writer: Option<IndexWriter>,
) -> Result<Running, AuditError> {
    let (index, index_thread) = index_writer.and_then(index::spawn).unzip();
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
        alloc_end: st.good_len,
        zeros: Vec::new(),
        grow_failed: None,
        carry: Vec::new(),
        buf: Vec::with_capacity(1 << 20),
        shared: shared.clone(),
        head: slot.clone(),
        head_thread: Some(head_thread),
        index,
        index_thread,
        starts: Vec::new(),
        pace: Pace::new(),
        held: Vec::new(),
        held_bytes: 0,
        held_since: None,
    };
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("audit-writer".into())
        .spawn(move || writer.run(rx));
    match thread {
        Ok(thread) => Ok(Running { tx, shared, thread }),
        Err(e) => {
            slot.stop();
            Err(io_err(dir)(e))
        }
    }
}

struct Writer {
    file: File,
    next_seq: u64,
    last_hash: [u8; 64],
    /// File length after the last synced batch; anything beyond is rolled back.
    good_len: u64,
    /// Length of the file: the lines, then zeros written ahead of them.
    alloc_end: u64,
    /// [`CHUNK`] zero bytes, made on the first growth.
    zeros: Vec<u8>,
    /// When growing ahead last failed (for lack of room).
    grow_failed: Option<Instant>,
    /// Outcome lines of failed batches, retried first.
    carry: Vec<(Vec<u8>, LineKey)>,
    buf: Vec<u8>,
    shared: Arc<Shared>,
    head: Arc<HeadSlot>,
    head_thread: Option<JoinHandle<()>>,
    /// Where every synced batch goes for the index thread (`None`: no index).
    index: Option<Arc<IndexSlot>>,
    index_thread: Option<JoinHandle<()>>,
    /// Start offset (within `buf`) of each line of the batch being written.
    starts: Vec<usize>,
    pace: Pace,
    /// Lines nobody waits for, held back for the next commit (see the module documentation).
    held: Vec<Entry>,
    held_bytes: usize,
    /// When the oldest held line arrived.
    held_since: Option<Instant>,
}

/// The arrival rate of records, to decide whether waiting [`GROUP_WINDOW`] before a sync
/// gathers more records into it. Idle or light load: no wait (a lone request is synced at
/// once). Busy: every `fdatasync` costs tens of microseconds of CPU (block layer, device
/// notification), and without the wait a batch held ~2.5 lines at 16,000 requests/s.
struct Pace {
    last: Instant,
    /// Smoothed records per second.
    rate: f64,
}

impl Pace {
    fn new() -> Pace {
        Pace {
            last: Instant::now(),
            rate: 0.0,
        }
    }

    /// Records one batch about to be committed.
    fn batch(&mut self, records: usize) {
        let now = Instant::now();
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

/// The writer's end of the command channel, and how it ended.
struct Intake {
    rx: mpsc::Receiver<Cmd>,
    close: Option<CloseReply>,
    disconnected: bool,
}

impl Intake {
    fn open(&self) -> bool {
        self.close.is_none() && !self.disconnected
    }

    /// The first command of a batch: waits for one (until `deadline` when lines are held
    /// back), or, while lines carried over from a failed write wait, takes what is there
    /// (sleeping [`RETRY_INTERVAL`] when nothing is). Empty when the wait ended without one.
    fn first(&mut self, carrying: bool, deadline: Option<Instant>) -> Vec<Cmd> {
        let mut cmds = Vec::new();
        if carrying {
            match self.rx.try_recv() {
                Ok(c) => cmds.push(c),
                Err(TryRecvError::Empty) => std::thread::sleep(RETRY_INTERVAL),
                Err(TryRecvError::Disconnected) => self.disconnected = true,
            }
        } else if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(c) => cmds.push(c),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => self.disconnected = true,
            }
        } else {
            match self.rx.recv() {
                Ok(c) => cmds.push(c),
                Err(_) => self.disconnected = true,
            }
        }
        cmds
    }
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Cmd>) {
        let mut intake = Intake {
            rx,
            close: None,
            disconnected: false,
        };
        while intake.open() {
            let entries = self.gather(&mut intake);
            if intake.open() && self.may_hold(&entries) {
                self.hold(entries);
                continue;
            }
            let entries = self.with_held(entries);
            self.pace.batch(entries.len());
            self.commit(entries);
        }
        let entries = self.with_held(Vec::new());
        self.commit(entries);
        self.finish(intake.close);
    }

    /// True when `entries` (all of them lines nobody waits for) may join the held lines:
    /// within the bounds, the oldest held for less than [`HOLD`], the log writable.
    fn may_hold(&self, entries: &[Entry]) -> bool {
        let within_time = self.held_since.is_none_or(|t| t.elapsed() < HOLD);
        let bytes: usize = entries.iter().map(|e| e.body.len()).sum();
        !entries.is_empty()
            && entries.iter().all(|e| e.reply.is_none())
            && within_time
            && self.held.len() + entries.len() <= MAX_HELD_LINES
            && self.held_bytes + bytes <= MAX_HELD_BYTES
            && !self.shared.failed.load(Ordering::Acquire)
    }

    fn hold(&mut self, entries: Vec<Entry>) {
        self.held_since.get_or_insert_with(Instant::now);
        self.held_bytes += entries.iter().map(|e| e.body.len()).sum::<usize>();
        self.held.extend(entries);
    }

    /// The held lines (they arrived first), then `entries`.
    fn with_held(&mut self, entries: Vec<Entry>) -> Vec<Entry> {
        self.held_since = None;
        self.held_bytes = 0;
        let mut all = std::mem::take(&mut self.held);
        all.extend(entries);
        all
    }

    /// One batch: the carried-over lines, then what is queued (up to the batch bounds),
    /// waiting [`GROUP_WINDOW`] once when busy.
    fn gather(&mut self, intake: &mut Intake) -> Vec<Entry> {
        let deadline = self.held_since.map(|t| t + HOLD);
        let mut cmds = intake.first(!self.carry.is_empty(), deadline);
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
                    Cmd::Close(reply) => intake.close = Some(reply),
                }
            }
            if !intake.open() || entries.len() >= MAX_BATCH_LINES || bytes >= MAX_BATCH_BYTES {
                break;
            }
            match intake.rx.try_recv() {
                Ok(c) => cmds.push(c),
                Err(TryRecvError::Empty) if !waited && self.pace.worth_waiting() => {
                    // Busy: more records are due within the window; one sync for them all.
                    waited = true;
                    std::thread::sleep(GROUP_WINDOW);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => intake.disconnected = true,
            }
        }
        entries
    }

    /// Stops the head and index threads and answers the closer (if any).
    fn finish(mut self, close: Option<CloseReply>) {
        if self.alloc_end != self.good_len {
            // At rest the log is its lines only (recovery would cut the tail otherwise).
            match self
                .file
                .set_len(self.good_len)
                .and_then(|()| self.file.sync_data())
            {
                Ok(()) => self.alloc_end = self.good_len,
                Err(e) => tracing::warn!(error = %e, "audit: could not cut the zero tail at stop"),
            }
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
            Ok(()) => self.committed(first, hash, entries),
            Err(err) => self.write_failed(&err, entries),
        }
    }

    /// After a synced batch `first..`: advances the chain, feeds the index and the head,
    /// completes the waiters.
    fn committed(&mut self, first: u64, hash: [u8; 64], entries: Vec<Entry>) {
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

    /// After a failed batch: enters the failed state, rolls the file back, fails the waiters
    /// and carries the unacknowledged (outcome) lines over to the next batch.
    fn write_failed(&mut self, err: &io::Error, entries: Vec<Entry>) {
        if !self.shared.failed.swap(true, Ordering::AcqRel) {
            tracing::error!(error = %err, "audit: write failed, refusing requests until it succeeds");
        }
        // Roll back a partial write so the chain stays intact; if
        // even that fails, the next batch retries it first.
        match self.file.set_len(self.good_len) {
            Ok(()) => self.alloc_end = self.good_len,
            Err(e) => tracing::error!(error = %e, "audit: could not roll back partial write"),
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

    fn write_batch(&mut self) -> io::Result<()> {
        if self.shared.failed.load(Ordering::Acquire)
            && self.file.metadata()?.len() != self.alloc_end
        {
            self.file.set_len(self.good_len)?;
            self.alloc_end = self.good_len;
        }
        let end = self.good_len + self.buf.len() as u64;
        self.grow(end);
        #[cfg(test)]
        if self.shared.inject_failure.load(Ordering::Acquire) {
            let half = self.buf.len() / 2;
            self.file.write_all_at(&self.buf[..half], self.good_len)?;
            return Err(io::Error::other("injected write failure"));
        }
        self.file.write_all_at(&self.buf, self.good_len)?;
        // Never below the lines: a later growth starts past them.
        self.alloc_end = self.alloc_end.max(end);
        self.file.sync_data()
    }

    /// Writes zeros ahead of the lines until the file reaches past `end` (whole [`CHUNK`]s;
    /// the batch's sync makes them durable with it). Best effort: without room for them (a
    /// nearly full disk) the lines extend the file themselves, and growing is tried again
    /// after [`GROW_RETRY`].
    fn grow(&mut self, end: u64) {
        if end <= self.alloc_end || self.grow_failed.is_some_and(|t| t.elapsed() < GROW_RETRY) {
            return;
        }
        if self.zeros.is_empty() {
            self.zeros = vec![0; CHUNK as usize];
        }
        let before = self.alloc_end;
        let target = end.div_ceil(CHUNK) * CHUNK;
        while self.alloc_end < target {
            let n = (target - self.alloc_end).min(CHUNK) as usize;
            if let Err(e) = self.file.write_all_at(&self.zeros[..n], self.alloc_end) {
                tracing::debug!(error = %e, "audit: no room to grow the log ahead of its lines");
                self.grow_failed = Some(Instant::now());
                if self.file.set_len(before).is_ok() {
                    self.alloc_end = before;
                }
                return;
            }
            self.alloc_end += n as u64;
        }
        self.grow_failed = None;
    }
}
