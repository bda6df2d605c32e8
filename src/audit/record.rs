//! The records callers hand to the log: a request decision and the outcome of a forwarded
//! request (the refusals without a request line are in [`super::refusal`]).

use serde::{Deserialize, Serialize};

use super::kinds::{Decision, Ingress};
use crate::registry::model::Category;

/// Formats an instant as RFC 3339 with the +09:00 offset (the `time` of every record).
pub use crate::ops::clock::rfc3339 as format_time;

/// One request decision, as written to the log (`"kind":"request"`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RequestRecord {
    /// RFC 3339 with the Japan offset, e.g. `2026-04-01T09:00:00.123+09:00` (see [`format_time`]).
    pub time: String,
    pub site: String,
    /// `"mtls"`, `"wireguard"`, `"site"` or `"admin"`.
    pub ingress: Ingress,
    pub client: String,
    pub terminal: Option<String>,
    pub physician: Option<String>,
    pub method: String,
    pub path: String,
    pub patient: Option<String>,
    /// The record category (art 8.2), serialised as in the route table (`"labs"`, ...).
    pub category: Option<Category>,
    /// `"allow"` or `"deny"`.
    pub decision: Decision,
    pub reason: String,
    pub serial: Option<String>,
    pub cn: Option<String>,
    /// The liaison-office staff member who made an admin change on the office console
    /// (issue 15); absent for every other record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staff: Option<String>,
}

/// What happened to a forwarded request (`"kind":"outcome"`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Outcome {
    pub status: u16,
    pub bytes: u64,
    pub duration_us: u64,
}

/// `end` of an outcome whose client went away before the response was complete.
pub const CLIENT_CLOSED: &str = "client-closed";
/// `status` of such an outcome when no response head had been sent (nginx's "client closed
/// request"); when the head had been sent, the status sent stays.
pub const CLIENT_CLOSED_STATUS: u16 = 499;
