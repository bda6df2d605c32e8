//! The index keeper: the thread that takes each synced batch of log lines from the writer
//! and files them in the index, syncing at most every [`SYNC_INTERVAL`].

use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::format::{Header, ENTRY_LEN};
use super::writer::IndexWriter;
use crate::audit::chain::LineKey;

/// How often the index thread makes its new entries durable and advances the watermark.
pub(super) const SYNC_INTERVAL: Duration = Duration::from_millis(250);
/// Entries kept in memory while the index file cannot be written (16 MiB); beyond that the
/// index stops until the next open.
const MAX_PENDING: usize = 1 << 20;

/// Starts the index thread on an up-to-date index; `None` (with a warning) when it cannot be
/// started: the gateway then runs without the index.
pub(in crate::audit) fn spawn(w: IndexWriter) -> Option<(Arc<IndexSlot>, JoinHandle<()>)> {
    let slot = Arc::new(IndexSlot::default());
    let thread_slot = slot.clone();
    let spawned = std::thread::Builder::new()
        .name("audit-index".into())
        .spawn(move || index_thread(w, thread_slot));
    match spawned {
        Ok(h) => Some((slot, h)),
        Err(e) => {
            tracing::warn!(error = %e, "audit: no index thread; running without the index");
            None
        }
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
pub(in crate::audit) struct IndexSlot {
    state: Mutex<Handoff>,
    cv: Condvar,
}

impl IndexSlot {
    fn lock(&self) -> MutexGuard<'_, Handoff> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lines `first_seq..` (key, offset) are durable in the log, which now ends at `log_end`
    /// with chain hash `hash`.
    pub(in crate::audit) fn publish(
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
    pub(in crate::audit) fn stop(&self) {
        self.lock().stop = true;
        self.cv.notify_one();
    }

    /// Waits for lines (after a failed write, at most [`SYNC_INTERVAL`]), lets a sync
    /// interval's worth of batches gather (unless stopping) and takes them.
    fn take(&self, last_sync: Instant, failing: bool) -> Handoff {
        let mut g = self.lock();
        // Idle: sleep until lines arrive (or, after a failed write, retry in a while).
        while g.lines.is_empty() && !g.stop && !g.lost {
            if failing {
                g = self
                    .cv
                    .wait_timeout(g, SYNC_INTERVAL)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                break;
            }
            g = self.cv.wait(g).unwrap_or_else(PoisonError::into_inner);
        }
        // Let a sync interval's worth of batches gather (unless stopping).
        let left = SYNC_INTERVAL.saturating_sub(last_sync.elapsed());
        if !g.stop && !left.is_zero() {
            g = self
                .cv
                .wait_timeout_while(g, left, |h| !h.stop)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let taken = std::mem::take(&mut *g);
        g.lost = taken.lost;
        g.stop = taken.stop;
        taken
    }
}

/// The index thread: takes what the writer published, at most every [`SYNC_INTERVAL`],
/// appends the entries, syncs them and then advances the watermark; a final sync at stop.
fn index_thread(mut w: IndexWriter, slot: Arc<IndexSlot>) {
    let mut last_sync = Instant::now();
    let mut failing = false;
    let mut stopped = false;
    loop {
        let taken = slot.take(last_sync, failing);
        let stop = taken.stop;
        if !stopped {
            if let Err(e) = apply(&mut w, taken) {
                tracing::error!(error = %e, path = %w.path.display(),
                    "audit: index stopped (queries scan the log beyond it; rebuilt at the next start)");
                stopped = true;
                give_up(&mut w);
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
                    give_up(&mut w);
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

/// Stops indexing: drops what waits and keeps the watermark where the file has it.
fn give_up(w: &mut IndexWriter) {
    w.pending.clear();
    w.latest = w.synced;
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
