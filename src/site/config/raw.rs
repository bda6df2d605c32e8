//! The configuration as written: serde structs, unknown keys refused. Validation turns them
//! into the types of [`super::types`].

use std::path::PathBuf;

use serde::Deserialize;

use crate::policy::route::RouteSpec;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) site: RawSite,
    #[serde(default)]
    pub(super) state: RawState,
    pub(super) ca: RawCa,
    #[serde(default, rename = "listener")]
    pub(super) listeners: Vec<RawListener>,
    pub(super) upstream: RawUpstream,
    #[serde(default)]
    pub(super) metrics: Option<RawMetrics>,
    #[serde(default)]
    pub(super) limits: RawLimits,
    #[serde(default)]
    pub(super) auth: RawAuth,
    #[serde(default)]
    pub(super) wireguard: Option<RawWireGuard>,
    #[serde(default)]
    pub(super) policy: RawPolicy,
    #[serde(default, rename = "route")]
    pub(super) routes: Vec<RouteSpec>,
    #[serde(default)]
    pub(super) admin: RawAdmin,
    /// `[routes]`: settings for the whole route table.
    #[serde(default, rename = "routes")]
    pub(super) route_options: RawRouteOptions,
    /// `[office]`: the liaison office's console (issue 15), off when absent.
    #[serde(default)]
    pub(super) office: Option<RawOffice>,
    #[serde(default)]
    pub(super) registry: super::registry::RawRegistry,
    /// `[network]`: the sites of the regional network (issue 14).
    #[serde(default)]
    pub(super) network: Option<RawNetwork>,
    /// `[peer]`: the read-only peer API other sites' gateways query (issue 14).
    #[serde(default)]
    pub(super) peer: Option<RawPeer>,
}

/// `[network]` and its `[[network.sites]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNetwork {
    pub(super) id: String,
    #[serde(default)]
    pub(super) sites: Vec<RawNetworkSite>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNetworkSite {
    pub(super) id: String,
    #[serde(default)]
    pub(super) name: Option<String>,
    /// HOST:PORT of the site's peer API.
    pub(super) peer: String,
    #[serde(default)]
    pub(super) wireguard_endpoint: Option<String>,
    #[serde(default)]
    pub(super) wireguard_public_key: Option<String>,
    #[serde(default)]
    pub(super) tunnel_address: Option<String>,
}

/// `[peer]`: the listener of the read-only peer API.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPeer {
    pub(super) listen: String,
    #[serde(default)]
    pub(super) allow: Option<Vec<String>>,
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOffice {
    pub(super) listen: String,
    pub(super) allow: Vec<String>,
    #[serde(default)]
    pub(super) cert: Option<PathBuf>,
    #[serde(default)]
    pub(super) key: Option<PathBuf>,
    #[serde(default)]
    pub(super) idle_timeout_secs: Option<u64>,
    #[serde(default)]
    pub(super) session_lifetime_secs: Option<u64>,
}

/// `[admin]`: how admin commands treat what they are given.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    #[serde(default)]
    pub(super) future_grace_days: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRouteOptions {
    /// Query keys that name a patient (issue 11 item 5); default `patient`, `patient_id`, `pid`.
    #[serde(default)]
    pub(super) patient_query_keys: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSite {
    pub(super) id: String,
    #[serde(default)]
    pub(super) name: Option<String>,
    #[serde(default)]
    pub(super) contact: Option<String>,
    /// The start page: where `/` and sign-in lead (see [`crate::policy::start`]).
    #[serde(default)]
    pub(super) home: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    #[serde(default)]
    pub(super) dir: Option<PathBuf>,
    #[serde(default)]
    pub(super) admin_socket: Option<PathBuf>,
    #[serde(default)]
    pub(super) purge_interval_secs: Option<u64>,
    #[serde(default)]
    pub(super) audit_verify_interval_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCa {
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
    #[serde(default)]
    pub(super) terminal_days: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    #[serde(default)]
    pub(super) password: Option<String>,
    #[serde(default)]
    pub(super) idle_timeout_secs: Option<u64>,
    #[serde(default)]
    pub(super) session_lifetime_secs: Option<u64>,
    #[serde(default)]
    pub(super) max_failures: Option<u32>,
    #[serde(default)]
    pub(super) lockout_secs: Option<u64>,
    #[serde(default)]
    pub(super) signin_attempts_per_minute: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWireGuard {
    #[serde(default)]
    pub(super) enabled: Option<bool>,
    pub(super) listen: String,
    pub(super) private_key: PathBuf,
    pub(super) address: String,
    pub(super) pool: String,
    pub(super) endpoint: String,
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
    #[serde(default)]
    pub(super) https_port: Option<u16>,
    #[serde(default)]
    pub(super) http: Option<bool>,
    #[serde(default)]
    pub(super) keepalive_secs: Option<u16>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    #[serde(default)]
    pub(super) block_downloads: Option<bool>,
    #[serde(default)]
    pub(super) blank_print: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    #[serde(default)]
    pub(super) name: Option<String>,
    #[serde(default)]
    pub(super) kind: Option<String>,
    pub(super) listen: String,
    #[serde(default)]
    pub(super) allow: Option<Vec<String>>,
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub(super) url: String,
    pub(super) private: Vec<String>,
    #[serde(default)]
    pub(super) connect_timeout_ms: Option<u64>,
    #[serde(default)]
    pub(super) response_timeout_ms: Option<u64>,
    #[serde(default)]
    pub(super) pool_idle_per_host: Option<usize>,
    /// The EMR's own identity headers to drop from clients' requests, beside the defaults.
    #[serde(default)]
    pub(super) strip_headers: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub(super) listen: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    #[serde(default)]
    pub(super) handshake_timeout_ms: Option<u64>,
    #[serde(default)]
    pub(super) header_read_timeout_ms: Option<u64>,
    #[serde(default)]
    pub(super) max_connections: Option<usize>,
    #[serde(default)]
    pub(super) max_connections_per_terminal: Option<usize>,
    #[serde(default)]
    pub(super) idle_timeout_ms: Option<u64>,
    #[serde(default)]
    pub(super) max_header_bytes: Option<usize>,
    #[serde(default)]
    pub(super) max_headers: Option<usize>,
    #[serde(default)]
    pub(super) max_body_bytes: Option<u64>,
    /// Issue 11 items 7, 8, 11: handshake budget and refusal audit rate (see [`FloodLimits`](super::FloodLimits)).
    #[serde(default)]
    pub(super) max_handshakes: Option<usize>,
    #[serde(default)]
    pub(super) max_handshakes_per_source: Option<usize>,
    #[serde(default)]
    pub(super) refusal_audit_rate: Option<f64>,
    #[serde(default)]
    pub(super) refusal_audit_burst: Option<u32>,
    #[serde(default)]
    pub(super) refusal_summary_interval_ms: Option<u64>,
}
