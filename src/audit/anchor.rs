//! The head anchor `DIR/audit.head`: the last durable line of the log (`seq` and chain hash)
//! in two fixed-size slots, so that lines removed from the tail are detected.
//!
//! Each slot is `{"seq":N,"hash":"…"}` padded with spaces to [`HEAD_SLOT`] bytes, one per
//! line; the newest well-formed slot counts. The head thread ([`head_thread`]) overwrites the
//! older slot in place and `fdatasync`s it after synced batches, coalesced to at most one
//! update per [`HEAD_MIN_INTERVAL`] (always one at close). A write torn by a crash spoils one
//! slot only.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::chain::Scan;

/// Name of the head anchor inside the audit directory.
pub const HEAD_FILE: &str = "audit.head";
const HEAD_TMP_FILE: &str = "audit.head.tmp";
/// Minimum spacing of head anchor updates (the anchor lags the log by at most
/// this plus one fsync).
const HEAD_MIN_INTERVAL: Duration = Duration::from_millis(50);
/// Size of one head anchor slot, newline included.
pub(super) const HEAD_SLOT: usize = 128;

#[derive(Serialize, Deserialize)]
pub(super) struct Head {
    pub(super) seq: u64,
    pub(super) hash: String,
}

pub(super) enum HeadErr {
    Io(io::Error),
    Invalid(String),
}

/// The newest well-formed slot of the anchor file (a slot torn by a crash is
/// ignored while the other one is intact).
pub(super) fn read_head(dir: &Path) -> Result<Option<Head>, HeadErr> {
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
pub(super) fn check_anchor(
    st: &Scan,
    head: Option<&Head>,
) -> Result<(), (u64, Option<u64>, String)> {
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
pub(super) fn write_head(dir: &Path, seq: u64, hash: &[u8; 64]) -> io::Result<()> {
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
pub(super) struct HeadFile {
    file: File,
    next_slot: u64,
}

impl HeadFile {
    pub(super) fn open(dir: &Path) -> io::Result<HeadFile> {
        // No truncation: the slot not overwritten next is the fallback.
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(dir.join(HEAD_FILE))?;
        Ok(HeadFile { file, next_slot: 0 })
    }

    pub(super) fn update(&mut self, seq: u64, hash: &[u8; 64]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let at = self.next_slot * HEAD_SLOT as u64;
        self.file.write_all_at(&head_slot(seq, hash), at)?;
        self.file.sync_data()?;
        self.next_slot = 1 - self.next_slot;
        Ok(())
    }
}

pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[derive(Default)]
struct HeadState {
    next: Option<(u64, [u8; 64])>,
    stop: bool,
    /// The head thread sleeps on the condvar (otherwise a notify is a wasted syscall: it
    /// takes `next` when it comes back from writing or from its coalescing pause).
    waiting: bool,
}

/// Latest-value slot between the log writer and the head writer: updates are
/// coalesced, so the head never slows the group commit down.
#[derive(Default)]
pub(super) struct HeadSlot {
    state: Mutex<HeadState>,
    cv: Condvar,
}

impl HeadSlot {
    fn lock(&self) -> MutexGuard<'_, HeadState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn publish(&self, seq: u64, hash: [u8; 64]) {
        let mut g = self.lock();
        g.next = Some((seq, hash));
        let waiting = g.waiting;
        drop(g);
        if waiting {
            self.cv.notify_one();
        }
    }

    pub(super) fn stop(&self) {
        self.lock().stop = true;
        self.cv.notify_one();
    }
}

/// The head thread: writes each head the writer publishes into the anchor's older slot.
pub(super) fn head_thread(dir: PathBuf, slot: Arc<HeadSlot>) {
    let mut file: Option<HeadFile> = None;
    loop {
        let (job, stop) = {
            let mut g = slot.lock();
            while g.next.is_none() && !g.stop {
                g.waiting = true;
                g = slot.cv.wait(g).unwrap_or_else(PoisonError::into_inner);
                g.waiting = false;
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
