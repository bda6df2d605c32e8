//! [`AuditLog`], the handle callers hold: opening (and recovering) the log, appending records
//! through the writer thread, closing.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use std::sync::mpsc;

use tokio::sync::oneshot;

use super::anchor::{check_anchor, read_head, sync_dir, write_head, HeadErr, HEAD_FILE};
use super::chain::LOG_FILE;
use super::chain::{patient_key, scan_log, BodyOut, LineKey, Scan, ScanErr, Scanned, ZERO_HASH};
use super::error::{io_err, seq_note, AuditError};
use super::index::{IndexWriter, Rebuild};
use super::record::{Outcome, RequestRecord};
use super::refusal::{ConnectionRecord, SuppressedRecord};
use super::writer::{self, Cmd, Shared};

struct Inner {
    tx: mpsc::Sender<Cmd>,
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
        let (file, st, index) = recover(dir)?;
        let running = writer::start(dir, file, &st, index)?;
        tracing::info!(dir = %dir.display(), seq = st.last_seq, "audit log opened");
        Ok(AuditLog {
            inner: Arc::new(Inner {
                tx: running.tx,
                shared: running.shared,
                thread: Mutex::new(Some(running.thread)),
            }),
        })
    }

    /// Appends a request line; resolves only once it is synced to disk.
    /// Returns its seq (the request id).  On error the request must be refused.
    pub async fn record(&self, rec: RequestRecord) -> Result<u64, AuditError> {
        let key = LineKey::Request(patient_key(rec.patient.as_deref()));
        self.append_acked(&BodyOut::Request(&rec), key).await
    }

    /// Hands a request line to the writer now (before returning) and gives what resolves
    /// with its seq once it is synced: the write starts while the caller goes on (issue 16:
    /// the request is forwarded meanwhile). On error the request must be refused.
    pub fn record_now(&self, rec: &RequestRecord) -> Result<PendingRecord, AuditError> {
        let key = LineKey::Request(patient_key(rec.patient.as_deref()));
        let body = serde_json::to_vec(&BodyOut::Request(rec))
            .map_err(|e| AuditError::Encode(e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Cmd::Append {
                body,
                key,
                reply: Some(tx),
            })
            .map_err(|_| AuditError::Closed)?;
        Ok(PendingRecord { rx })
    }

    /// Appends an outcome line for request `rid`; fire-and-forget (durable
    /// with the next batch).  Never blocks.
    pub fn outcome(&self, rid: u64, outcome: Outcome) {
        self.outcome_end(rid, outcome, None);
    }

    /// [`AuditLog::outcome`] of an exchange that ended otherwise than normally (`end`, e.g.
    /// [`super::CLIENT_CLOSED`]); fire-and-forget like it.
    pub fn outcome_end(&self, rid: u64, outcome: Outcome, end: Option<&str>) {
        let body = match serde_json::to_vec(&outcome_body(rid, outcome, end)) {
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
        self.append_acked(&outcome_body(rid, outcome, None), LineKey::Outcome(rid))
            .await
    }

    /// Appends a connection refusal line; fire-and-forget (durable with the next batch).
    pub fn connection(&self, rec: &ConnectionRecord) {
        self.append_unacked(&BodyOut::Connection(rec), "connection");
    }

    /// Appends a suppression summary line; fire-and-forget (durable with the next batch).
    pub fn suppressed(&self, rec: &SuppressedRecord) {
        self.append_unacked(&BodyOut::Suppressed(rec), "suppressed");
    }

    /// Appends a line and resolves with its seq once it is synced.
    async fn append_acked(&self, body: &BodyOut<'_>, key: LineKey) -> Result<u64, AuditError> {
        let body = serde_json::to_vec(body).map_err(|e| AuditError::Encode(e.to_string()))?;
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
    pub(super) fn inject_failure(&self, on: bool) {
        self.inner
            .shared
            .inject_failure
            .store(on, Ordering::Release);
    }
}

/// A request line handed to the writer ([`AuditLog::record_now`]): resolves with its seq once
/// the line is synced. Dropped unresolved, the line is written all the same.
#[derive(Debug)]
pub struct PendingRecord {
    rx: oneshot::Receiver<Result<u64, AuditError>>,
}

impl std::future::Future for PendingRecord {
    type Output = Result<u64, AuditError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(AuditError::Closed)))
    }
}

fn outcome_body(rid: u64, outcome: Outcome, end: Option<&str>) -> BodyOut<'_> {
    BodyOut::Outcome {
        rid,
        status: outcome.status,
        bytes: outcome.bytes,
        duration_us: outcome.duration_us,
        end,
    }
}

/// Recovers the log in `dir` for appending: checks the whole chain against the head anchor,
/// truncates a torn final line, anchors a fresh log, and brings the index up to date (or
/// leaves it behind: without it the gateway still runs, queries scan the log).
fn recover(dir: &Path) -> Result<(File, Scan, Option<IndexWriter>), AuditError> {
    let log_path = dir.join(LOG_FILE);
    let head = match read_head(dir) {
        Ok(h) => h,
        Err(HeadErr::Io(e)) => return Err(io_err(&dir.join(HEAD_FILE))(e)),
        Err(HeadErr::Invalid(reason)) => return Err(AuditError::Corrupt { line: 0, reason }),
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&log_path)
        .map_err(io_err(&log_path))?;
    let reader = File::open(&log_path).map_err(io_err(&log_path))?;
    // The index is checked against every line of the chain scan, and repaired from the
    // first disagreement on; without it the gateway still runs (queries scan the log).
    let mut rebuild = Rebuild::open(dir)
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
    let anchor_seq = head.as_ref().map_or(0, |h| h.seq);
    let st = scan_log(reader, anchor_seq, true, &mut on_line).map_err(|e| match e {
        ScanErr::Io(source) => io_err(&log_path)(source),
        ScanErr::Broken { line, seq, reason } => corrupt(line, &seq, &reason),
    })?;
    truncate_torn(&file, &log_path, &st)?;
    check_anchor(&st, head.as_ref()).map_err(|(line, seq, reason)| corrupt(line, &seq, &reason))?;
    if head.is_none() {
        // Fresh log: anchor "nothing yet" durably, so a later missing
        // anchor means tampering.
        write_head(dir, 0, &ZERO_HASH).map_err(io_err(&dir.join(HEAD_FILE)))?;
        sync_dir(dir).map_err(io_err(dir))?;
    }
    let index = rebuild.and_then(|r| {
        r.finish(st.last_seq, st.good_len, st.last_hash)
            .map_err(|e| {
                tracing::warn!(error = %e, "audit: could not bring the index up to date; running without it")
            })
            .ok()
    });
    Ok((file, st, index))
}

fn corrupt(line: u64, seq: &Option<u64>, reason: &str) -> AuditError {
    AuditError::Corrupt {
        line,
        reason: format!("{}{}", reason, seq_note(seq)),
    }
}

/// Cuts the log back to its last good line when something follows it: the zeros the writer
/// grows the file by ahead of its lines (a stop without the writer's own clean-up), or a
/// torn write.
fn truncate_torn(file: &File, log_path: &Path, st: &Scan) -> Result<(), AuditError> {
    let len = file.metadata().map_err(io_err(log_path))?.len();
    if len == st.good_len {
        return Ok(());
    }
    if st.torn.is_none() && zeros_from(file, st.good_len).map_err(io_err(log_path))? {
        tracing::debug!(
            bytes = len - st.good_len,
            "audit: cutting the zero tail written ahead of the lines"
        );
    } else {
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
    }
    file.set_len(st.good_len).map_err(io_err(log_path))?;
    file.sync_data().map_err(io_err(log_path))
}

/// True when `file` holds only zero bytes from `offset` to its end.
fn zeros_from(file: &File, mut offset: u64) -> std::io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = file.read_at(&mut buf, offset)?;
        if n == 0 {
            return Ok(true);
        }
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        offset += n as u64;
    }
}
