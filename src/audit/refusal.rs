//! Audit record kinds for refusals that have no request line (issue 11 items 8, 11):
//!
//! ```text
//! {"seq":…,"prev":…,"kind":"connection","time":…,"site":…,"ingress":"mtls","listener":"internet",
//!  "client":"192.0.2.7:50412","reason":"no-client-certificate","terminal":null,"cn":null,"serial":null,"hash":…}
//! {"seq":…,"prev":…,"kind":"suppressed","time":…,"site":…,"of":"request","ingress":"mtls",
//!  "source":"192.0.2.7","terminal":"pc-1","cn":"pc-1","reason":"terminal-revoked",
//!  "count":4810,"first":…,"last":…,"hash":…}
//! ```
//!
//! `connection`: a connection refused before any request (allow-list, handshake failure or
//! timeout, dropped from the handshake budget, connection limits). `suppressed`: refusals
//! beyond the per-terminal and per-source rate ([`crate::audit::limiter`]), counted instead of
//! written one by one: who, why, how many, first and last time. Both are chained and verified
//! like every line; the index files them under "no patient".

use serde::{Deserialize, Serialize};

/// A connection refused before any request (`"kind":"connection"`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConnectionRecord {
    pub time: String,
    pub site: String,
    /// `"mtls"`, `"wireguard"` or `"site"`.
    pub ingress: String,
    /// The listener's name (`"wireguard"` for the tunnel).
    pub listener: String,
    pub client: String,
    pub reason: String,
    /// The registered terminal's name, when the handshake got as far as a known credential.
    pub terminal: Option<String>,
    pub cn: Option<String>,
    pub serial: Option<String>,
}

/// Refusals counted instead of written one by one (`"kind":"suppressed"`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SuppressedRecord {
    /// When the summary was written.
    pub time: String,
    pub site: String,
    /// What was suppressed: `"request"` (request lines) or `"connection"` lines.
    pub of: String,
    pub ingress: String,
    /// The source address (IPv4, or the IPv6 /64), or `"*"` for the overflow of a flood from
    /// more sources than the limiter tracks.
    pub source: String,
    pub terminal: Option<String>,
    pub cn: Option<String>,
    pub reason: String,
    pub count: u64,
    /// Times of the first and the last suppressed refusal.
    pub first: String,
    pub last: String,
}
