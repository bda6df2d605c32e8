//! `audit query`: request lines matching a filter, joined with their outcomes — through the
//! index for a patient (module [`super::index`]), by a scan of the whole log otherwise or
//! when the index cannot answer.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::OffsetDateTime;

use super::chain::{for_each_line, LOG_FILE};
use super::error::{io_err, AuditError};
use super::index;
use super::rows::{QueryFilter, QueryRow, QueryState};
use crate::ops::clock::JST;

/// A query time argument that is neither RFC 3339 nor a date.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid time {0:?}: expected RFC 3339 (e.g. 2026-04-01T09:00:00+09:00) \
     or a date YYYY-MM-DD (midnight Japan time)"
)]
pub struct TimeArgError(String);

/// Parses a query time argument: RFC 3339, or a bare date `YYYY-MM-DD`
/// meaning 00:00 Japan time.
pub fn parse_time_arg(s: &str) -> Result<OffsetDateTime, TimeArgError> {
    let s = s.trim();
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t);
    }
    time::Date::parse(s, format_description!("[year]-[month]-[day]"))
        .map(|d| d.midnight().assume_offset(JST))
        .map_err(|_| TimeArgError(s.to_string()))
}

/// Lists request lines matching `filter`, in log order, joined with their
/// outcomes.  Does not check the hash chain (use [`super::verify`] for that).
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
    let mut state = QueryState::new(filter);
    for_each_line(
        &mut reader,
        0,
        |e| io_err(&path)(e),
        |line, line_no| state.scan_line(line, line_no),
    )?;
    Ok(state.rows)
}
