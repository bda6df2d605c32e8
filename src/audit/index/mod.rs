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
//! * `key` is `patient_key` (module `chain`) of the request's `patient` (0: none); an outcome line gets the
//!   key of its request (`rid`), so a per-patient query finds the outcomes too.
//! * `offset` is where the line starts in `audit.log`.
//! * The header's `covered` (W) says how many entries are trusted; `log_end` is the byte
//!   length of the log up to line W and `hash` the chain hash of line W, so a reader can tell
//!   whether the log is still the one that was indexed; `sum` is a checksum of entries
//!   1..=W (see `format::entry_sum`) that a query recomputes as it reads them, so an altered entry
//!   is noticed even where it does not name the patient asked for; `check` is the first 8
//!   bytes of the SHA-256 of the header before it (a torn header write is not believed).
//!
//! Crash safety: the writer thread hands each synced batch of log lines to the index thread
//! (never the other way round: an entry only exists for a line already durable in the log),
//! which appends the entries and, at most every `SYNC_INTERVAL` (250 ms), `fdatasync`s them and only
//! then writes the header naming the new W. Entries beyond W may be torn or missing after a
//! crash; they are ignored by readers and re-derived from the log at the next open. At open
//! every trusted entry is compared with the log during the chain scan that open already does;
//! at the first disagreement the header is lowered, the rest truncated and rebuilt, with a
//! warning. `verify` compares them too, so a tampered index is reported like a broken chain.
//!
//! None of this is on the request path: requests wait for the log's group commit only; the
//! index thread's writes and syncs run beside it. If the index cannot be written it is left
//! behind (queries scan the log beyond its watermark) and rebuilt at the next open.
//!
//! ## Layout
//!
//! * `format`: the header (watermark) and the entries, and `IndexError`.
//! * `writer`: the file as the writer side sees it, and the open-time check and repair.
//! * `thread`: the index keeper, the thread fed by the log writer after every synced batch.
//! * `check`: `audit verify`'s comparison of the entries with the log.
//! * `query`: a per-patient query through the index.

mod check;
mod format;
mod query;
mod thread;
mod writer;

pub(super) use check::Check;
pub use format::INDEX_FILE;
pub(super) use query::query;
pub(super) use thread::{spawn, IndexSlot};
pub(super) use writer::{IndexWriter, Rebuild};

#[cfg(test)]
mod tests;
