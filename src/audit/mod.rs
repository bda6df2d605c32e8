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
//! only then completes the waiters. Lines nobody waits for (outcomes, refusal
//! summaries) wait up to 2 ms for the next line somebody waits for; the file is
//! grown ahead of its lines in written chunks of zeros, which readers stop at
//! and recovery and a clean stop cut off (module `writer`).  [`AuditLog::record`] therefore resolves
//! only when the request line is on disk, and the gateway must not send any byte
//! of a response to a request whose `record` has not resolved, nor the EMR's
//! response to one whose `record` failed (fail closed; docs/security.md, "Audit
//! durability").
//!
//! Beside the log, `DIR/audit.idx` (module `index`) files every line under the key of its
//! patient, so that [`query()`] with a patient reads only that patient's lines (and the log
//! beyond the index's watermark).  It is derived: kept by its own thread off the request
//! path, checked against the log at every open and by [`verify`], and never believed where
//! it disagrees with the log (the query then scans the whole log, with a warning).
//!
//! ## Layout
//!
//! * `record`: [`RequestRecord`] and [`Outcome`], what callers hand to the log; `refusal`:
//!   [`ConnectionRecord`] and [`SuppressedRecord`], refusals without a request line.
//! * `chain`: the line format, its hashing and checking, the scan of the whole chain.
//! * `anchor`: the head anchor (`audit.head`), its two slots and its thread.
//! * `writer`: the writer thread and its group commit; `handle`: [`AuditLog`], opening
//!   (recovery) and appending.
//! * `rows`: [`QueryFilter`], [`QueryRow`] and the joining of outcomes to requests;
//!   `query`: [`query()`] through the index or by a full scan.
//! * `index`: the per-patient index (`audit.idx`): format, keeper thread, check, query.
//! * `witness`: [`verify`], [`verify_with`], [`rebuild_index`] and recorded heads.
//! * `error`: [`AuditError`] and [`VerifyError`].

mod anchor;
mod chain;
mod error;
mod handle;
mod index;
mod kinds;
pub(crate) mod limiter;
mod query;
mod record;
mod refusal;
mod rows;
mod witness;
mod writer;

pub use anchor::HEAD_FILE;
pub use chain::LOG_FILE;
pub use error::{AuditError, VerifyError};
pub use handle::{AuditLog, PendingRecord};
pub use index::INDEX_FILE;
pub use kinds::{Decision, Ingress};
pub use query::{parse_time_arg, query, query_full_scan, TimeArgError};
pub use record::{format_time, Outcome, RequestRecord, CLIENT_CLOSED, CLIENT_CLOSED_STATUS};
pub use refusal::{ConnectionRecord, SuppressedRecord};
pub use rows::{QueryFilter, QueryRow};
pub use witness::{
    anchored_head, rebuild_index, verify, verify_with, RecordedHead, RecordedHeadError,
    VerifyOptions, VerifyReport,
};

#[cfg(test)]
mod tests;
