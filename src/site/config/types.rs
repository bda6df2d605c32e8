//! The validated configuration: what the rest of the gateway reads.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnetwork::IpNetwork;

use super::strip::StripList;
use crate::policy::route::{RouteSpec, RouteTable};

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    pub site: Site,
    /// Registries (sled), audit log, sessions: everything that must survive a restart.
    pub state_dir: PathBuf,
    /// Unix socket (mode 0600) on which the running gateway serves admin commands.
    pub admin_socket: PathBuf,
    /// How often `serve` checks whether the art 11 purge is due (it runs once per Japan day).
    pub purge_interval: Duration,
    /// How often `serve` verifies the audit log's hash chain (exported as a metric).
    pub audit_verify_interval: Duration,
    pub ca: CaPaths,
    pub listeners: Vec<Listener>,
    pub upstream: Upstream,
    /// Prometheus scrape endpoint; loopback by default.
    pub metrics: Option<SocketAddr>,
    pub limits: Limits,
    pub auth: Auth,
    pub policy: Policy,
    /// The WireGuard ingress (art 12.2), when enabled.
    pub wireguard: Option<WireGuard>,
    pub routes: RouteTable,
    /// The routes as written, for tools that print them.
    pub route_specs: Vec<RouteSpec>,
    /// `[admin] future_grace_days`: how far ahead a date given to an admin command may lie
    /// without `--allow-future` (`src/dates.rs`).
    pub future_grace_days: u32,
    /// `[registry]`: sled (embedded) or the regional registry on etcd.
    pub registry: super::RegistryConfig,
    /// `[network]`: the sites of the regional network, when this site is part of one.
    pub network: Option<Network>,
    /// `[peer]`: the read-only peer API for the network-wide audit query.
    pub peer: Option<PeerApi>,
    /// `[office]`: the liaison office's console (issue 15), when enabled.
    pub office: Option<Office>,
}

/// The liaison office's console (issue 15): its own mutual-TLS listener for staff
/// certificates, open to the office LAN only.
#[derive(Debug, Clone)]
pub struct Office {
    pub listen: SocketAddr,
    /// Source addresses allowed to connect (the office LAN); others are closed at accept.
    pub allow: Vec<IpNetwork>,
    /// The console's server certificate and key (default: the first listener's).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// A staff session idle longer than this ends (default 10 minutes).
    pub idle_timeout: Duration,
    /// A staff session ends this long after sign-in at the latest (default 8 hours).
    pub session_lifetime: Duration,
}

#[derive(Debug, Clone)]
pub struct Site {
    pub id: String,
    /// The site's name as physicians see it in every page's footer (default: the id).
    pub name: String,
    /// Whom a refused physician should contact (shown on every refusal page).
    pub contact: String,
    /// The start page (`[site] home`, validated by [`super::resolve_home`]): where `/`
    /// and sign-in lead.
    pub home: String,
}

#[derive(Debug, Clone)]
pub struct CaPaths {
    /// Terminal CA certificate: client certificates must chain to it.
    pub cert: PathBuf,
    /// Its private key (used by `terminal add` only, never by `serve`).
    pub key: PathBuf,
    pub terminal_days: u32,
}

/// The password factor and sessions (art 6.3, 13.1).
#[derive(Debug, Clone)]
pub struct Auth {
    /// `required` in production; `off` only for a test bench (terminal credential alone).
    pub password_required: bool,
    pub idle_timeout: Duration,
    pub session_lifetime: Duration,
    /// Wrong passwords in a row before the account is locked.
    pub max_failures: u32,
    pub lockout: Duration,
    /// Password tries per terminal per minute (burst as many): `crate::policy::signin_rate`.
    pub signin_attempts_per_minute: u32,
}

/// The userspace WireGuard ingress (art 12.2): terminals reach the gateway's own HTTPS
/// service at `address` inside the tunnel, never the LAN behind it.
#[derive(Debug, Clone)]
pub struct WireGuard {
    /// The UDP socket.
    pub listen: SocketAddr,
    /// File holding the gateway's private key (base64, mode 0600).
    pub private_key: PathBuf,
    /// The gateway's address inside the tunnel.
    pub address: std::net::Ipv4Addr,
    /// Terminals' tunnel addresses are allocated from here.
    pub pool: ipnetwork::Ipv4Network,
    /// `HOST:PORT` written into terminals' configurations.
    pub endpoint: String,
    /// Server certificate for HTTPS inside the tunnel (SAN: `address`).
    pub cert: PathBuf,
    pub key: PathBuf,
    pub https_port: u16,
    /// Plain HTTP on port 80 inside the tunnel (off by default: sign-in cookies need HTTPS).
    pub http: bool,
    /// PersistentKeepalive written into terminals' configurations.
    pub keepalive_secs: u16,
}

/// What the gateway does to EMR responses for art 13.2.5 (no printing or saving).
#[derive(Debug, Clone)]
pub struct Policy {
    /// Refuse responses that would download a file (`Content-Disposition: attachment`).
    pub block_downloads: bool,
    /// Add an `@media print` style sheet: printed, HTML pages show only the notice.
    pub blank_print: bool,
}

/// Who may connect to a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// Physicians' registered terminals from outside (art 6.2).
    Terminal,
    /// The site's own in-hospital EMR system, which asserts the physician (art 6.1).
    SiteSystem,
}

/// A mutual-TLS listener (art 12.1, 12.3).
#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    pub kind: ListenerKind,
    pub listen: SocketAddr,
    /// Source addresses allowed to connect; others are closed before the handshake (art 12.4).
    pub allow: Vec<IpNetwork>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The web EMR behind the gateway (art 12.6).
#[derive(Clone)]
pub struct Upstream {
    /// `http://host:port`, no path.
    pub authority: http::uri::Authority,
    pub host: String,
    pub port: u16,
    /// The private segment: the gateway never connects outside these networks.
    pub private: Vec<IpNetwork>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub pool_idle_per_host: usize,
    /// Request headers never forwarded: the defaults plus `strip_headers` (issue 11 item 3).
    pub strip_headers: StripList,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("authority", &self.authority.as_str())
            .field("private", &self.private)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.authority)
    }
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub handshake_timeout: Duration,
    /// HTTP/1: the whole request head must arrive within this (slowloris); it also bounds the
    /// wait for the next request on a kept-alive connection.
    pub header_read_timeout: Duration,
    /// Open client connections across all listeners.
    pub max_connections: usize,
    /// Open connections of one terminal credential (certificate fingerprint); more get 429.
    pub max_connections_per_terminal: usize,
    /// A connection with no request in flight and no bytes moving for this long is closed.
    pub idle_timeout: Duration,
    /// Request head size: HTTP/1 request line and headers, HTTP/2 header list (431 beyond).
    pub max_header_bytes: usize,
    /// Number of request header fields (431 beyond).
    pub max_headers: usize,
    /// Request body size where a route sets no `max_body_bytes` (413 beyond).
    pub max_body_bytes: u64,
    /// The handshake budget and the refusal audit rate (issue 11 items 7, 8, 11).
    pub flood: FloodLimits,
}

/// Limits against floods of unauthenticated connections and of refusals (`[limits]`).
#[derive(Debug, Clone, PartialEq)]
pub struct FloodLimits {
    /// Handshakes in progress across all listeners and the tunnel (`max_handshakes`); a
    /// connection takes a `max_connections` slot only once its handshake is verified. When
    /// the budget is full the oldest pending handshake is dropped for the new one.
    pub max_handshakes: usize,
    /// Handshakes in progress from one source address (an IPv6 /64 counts as one); beyond
    /// it the source's own oldest pending handshake is dropped.
    pub max_handshakes_per_source: usize,
    /// Refusals written to the audit one by one, per terminal and per source address:
    /// a token bucket refilled at `refusal_audit_rate` per second up to `refusal_audit_burst`.
    pub refusal_audit_rate: f64,
    pub refusal_audit_burst: u32,
    /// How often the refusals beyond the rate are written as one summary record each.
    pub refusal_summary_interval: Duration,
}

impl Default for FloodLimits {
    fn default() -> FloodLimits {
        FloodLimits {
            max_handshakes: 256,
            max_handshakes_per_source: 32,
            refusal_audit_rate: 1.0,
            refusal_audit_burst: 20,
            refusal_summary_interval: Duration::from_secs(10),
        }
    }
}

/// The regional network this site belongs to (`[network]`, issue 14): every site's gateway,
/// this one included, as `audit query --network` asks them and WireGuard terminals reach them.
#[derive(Debug, Clone)]
pub struct Network {
    /// The network's id (e.g. `seibo-net`).
    pub id: String,
    pub sites: Vec<NetworkSite>,
}

impl Network {
    /// The site with this id.
    pub fn site(&self, id: &str) -> Option<&NetworkSite> {
        self.sites.iter().find(|s| s.id == id)
    }
}

/// One site of the network (`[[network.sites]]`).
#[derive(Debug, Clone)]
pub struct NetworkSite {
    pub id: String,
    /// Its name as people read it (default: the id).
    pub name: String,
    /// Its peer API: the host (DNS name or IP address, the name its certificate carries) and
    /// port.
    pub peer_host: String,
    pub peer_port: u16,
    /// Its WireGuard ingress, when it has one: what a terminal's `.conf` names in its `[Peer]`.
    pub wireguard: Option<SiteTunnel>,
}

/// A site gateway as a WireGuard terminal's `[Peer]` names it.
#[derive(Debug, Clone)]
pub struct SiteTunnel {
    /// `HOST:PORT` terminals dial.
    pub endpoint: String,
    /// The gateway's public key (base64).
    pub public_key: String,
    /// The gateway's own address inside the tunnel (unique in the network).
    pub address: std::net::Ipv4Addr,
}

/// The read-only peer API (`[peer]`, issue 14): mutual TLS accepting only site-gateway
/// certificates of the network's CA, serving audit queries and nothing else.
#[derive(Debug, Clone)]
pub struct PeerApi {
    pub listen: SocketAddr,
    /// Source networks allowed to connect (default: any; the certificate decides).
    pub allow: Vec<IpNetwork>,
    /// This site's gateway certificate (CN = the site id, OU = site-gateway) and key: served
    /// here, and presented when this site asks the others.
    pub cert: PathBuf,
    pub key: PathBuf,
}
