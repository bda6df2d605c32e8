//! The rows of a query: the filter, a row (a request line joined with its outcome), and the
//! state that collects them from lines read in log order, whether the lines come from a scan
//! of the whole log or through the index.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::chain::{outcome_rid, written_kind};
use super::error::AuditError;
use super::record::RequestRecord;

/// Filter for [`super::query()`].  `since` is inclusive, `until` exclusive; both are
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
pub(super) struct KindOnly<'a> {
    pub(super) seq: u64,
    #[serde(borrow)]
    pub(super) kind: Cow<'a, str>,
}

#[derive(Deserialize)]
pub(super) struct OutcomeLine {
    pub(super) rid: u64,
    status: u16,
    bytes: u64,
    duration_us: u64,
    #[serde(default)]
    end: Option<String>,
}

/// The rows found so far by a query, in log order.
pub(super) struct QueryState<'f> {
    filter: &'f QueryFilter,
    /// Exact members a matching request line must contain (serde_json escapes every `"`
    /// inside a value, so `"patient":"P1"` can only be that member): lines without them are
    /// skipped unparsed, which makes a scan a byte search instead of a JSON parse per line.
    needles: Vec<memchr::memmem::Finder<'static>>,
    pub(super) rows: Vec<QueryRow>,
    /// Row of each request seq, to join outcomes.
    by_rid: HashMap<u64, usize>,
}

impl<'f> QueryState<'f> {
    pub(super) fn new(filter: &'f QueryFilter) -> Self {
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

    pub(super) fn filter(&self) -> &'f QueryFilter {
        self.filter
    }

    pub(super) fn push_request(&mut self, seq: u64, request: RequestRecord) {
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

    pub(super) fn join_outcome(&mut self, o: &OutcomeLine) {
        if let Some(row) = self.by_rid.get(&o.rid).and_then(|&i| self.rows.get_mut(i)) {
            row.status = Some(o.status);
            row.bytes = Some(o.bytes);
            row.duration_us = Some(o.duration_us);
            row.end = o.end.clone();
        }
    }

    /// The next line of a sequential scan (`line_no` is 1-based, for errors).
    pub(super) fn scan_line(&mut self, line: &[u8], line_no: u64) -> Result<(), AuditError> {
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

/// Whether a request line passes the filter; `Err` when its time cannot be read.
pub(super) fn matches(f: &QueryFilter, rec: &RequestRecord) -> Result<bool, String> {
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
