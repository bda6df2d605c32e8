//! The errors of the audit module's public functions: writing ([`AuditError`]) and checking
//! ([`VerifyError`]) the log.

use std::io;
use std::path::{Path, PathBuf};

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

/// Maps an I/O error on `path` to [`AuditError::Io`].
pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    }
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

/// ` (seq N)` when the line at fault has a seq, for messages.
pub(super) fn seq_note(seq: &Option<u64>) -> String {
    seq.map(|s| format!(" (seq {s})")).unwrap_or_default()
}
