//! The site's configuration: TOML (`gate.toml`) parsed into raw serde structs (unknown keys
//! refused), then validated into typed values before any port is bound. Every problem is
//! reported at once, each naming its key. Relative paths are relative to the config file.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnetwork::IpNetwork;
use serde::Deserialize;

use crate::route::{RouteSpec, RouteTable};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: {} problem(s):\n  - {}", .problems.len(), .problems.join("\n  - "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

// ---------------------------------------------------------------------------------------------
// Raw, as written.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    site: RawSite,
    #[serde(default)]
    state: RawState,
    ca: RawCa,
    #[serde(default, rename = "listener")]
    listeners: Vec<RawListener>,
    upstream: RawUpstream,
    #[serde(default)]
    metrics: Option<RawMetrics>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    wireguard: Option<RawWireGuard>,
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default, rename = "route")]
    routes: Vec<RouteSpec>,
    #[serde(default)]
    admin: RawAdmin,
    /// `[routes]`: settings for the whole route table.
    #[serde(default, rename = "routes")]
    route_options: RawRouteOptions,
}

/// `[admin]`: how admin commands treat what they are given.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    #[serde(default)]
    future_grace_days: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRouteOptions {
    /// Query keys that name a patient (issue 11 item 5); default `patient`, `patient_id`, `pid`.
    #[serde(default)]
    patient_query_keys: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSite {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    contact: Option<String>,
    /// The start page: where `/` and sign-in lead (see [`crate::start`]).
    #[serde(default)]
    home: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawState {
    #[serde(default)]
    dir: Option<PathBuf>,
    #[serde(default)]
    admin_socket: Option<PathBuf>,
    #[serde(default)]
    purge_interval_secs: Option<u64>,
    #[serde(default)]
    audit_verify_interval_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCa {
    cert: PathBuf,
    key: PathBuf,
    #[serde(default)]
    terminal_days: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    idle_timeout_secs: Option<u64>,
    #[serde(default)]
    session_lifetime_secs: Option<u64>,
    #[serde(default)]
    max_failures: Option<u32>,
    #[serde(default)]
    lockout_secs: Option<u64>,
    #[serde(default)]
    signin_attempts_per_minute: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWireGuard {
    #[serde(default)]
    enabled: Option<bool>,
    listen: String,
    private_key: PathBuf,
    address: String,
    pool: String,
    endpoint: String,
    cert: PathBuf,
    key: PathBuf,
    #[serde(default)]
    https_port: Option<u16>,
    #[serde(default)]
    http: Option<bool>,
    #[serde(default)]
    keepalive_secs: Option<u16>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    block_downloads: Option<bool>,
    #[serde(default)]
    blank_print: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    listen: String,
    #[serde(default)]
    allow: Option<Vec<String>>,
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    url: String,
    private: Vec<String>,
    #[serde(default)]
    connect_timeout_ms: Option<u64>,
    #[serde(default)]
    response_timeout_ms: Option<u64>,
    #[serde(default)]
    pool_idle_per_host: Option<usize>,
    /// The EMR's own identity headers to drop from clients' requests, beside the defaults.
    #[serde(default)]
    strip_headers: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(default)]
    handshake_timeout_ms: Option<u64>,
    #[serde(default)]
    header_read_timeout_ms: Option<u64>,
    #[serde(default)]
    max_connections: Option<usize>,
    #[serde(default)]
    max_connections_per_terminal: Option<usize>,
    #[serde(default)]
    idle_timeout_ms: Option<u64>,
    #[serde(default)]
    max_header_bytes: Option<usize>,
    #[serde(default)]
    max_headers: Option<usize>,
    #[serde(default)]
    max_body_bytes: Option<u64>,
    /// Issue 11 items 7, 8, 11: handshake budget and refusal audit rate (see [`FloodLimits`]).
    #[serde(default)]
    max_handshakes: Option<usize>,
    #[serde(default)]
    max_handshakes_per_source: Option<usize>,
    #[serde(default)]
    refusal_audit_rate: Option<f64>,
    #[serde(default)]
    refusal_audit_burst: Option<u32>,
    #[serde(default)]
    refusal_summary_interval_ms: Option<u64>,
}

// ---------------------------------------------------------------------------------------------
// Validated.

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
}

#[derive(Debug, Clone)]
pub struct Site {
    pub id: String,
    /// The site's name as physicians see it in every page's footer (default: the id).
    pub name: String,
    /// Whom a refused physician should contact (shown on every refusal page).
    pub contact: String,
    /// The start page (`[site] home`, validated by [`crate::start::resolve_home`]): where `/`
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
    /// Password tries per terminal per minute (burst as many): `crate::signin_rate`.
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
    pub strip_headers: crate::forward::StripList,
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

/// `[limits]`' flood keys, validated (each problem names its key).
fn validate_flood_limits(raw: &RawLimits, problems: &mut Vec<String>) -> FloodLimits {
    let d = FloodLimits::default();
    let f = FloodLimits {
        max_handshakes: raw.max_handshakes.unwrap_or(d.max_handshakes),
        max_handshakes_per_source: raw
            .max_handshakes_per_source
            .unwrap_or(d.max_handshakes_per_source),
        refusal_audit_rate: raw.refusal_audit_rate.unwrap_or(d.refusal_audit_rate),
        refusal_audit_burst: raw.refusal_audit_burst.unwrap_or(d.refusal_audit_burst),
        refusal_summary_interval: raw
            .refusal_summary_interval_ms
            .map_or(d.refusal_summary_interval, Duration::from_millis),
    };
    if !(1..=100_000).contains(&f.max_handshakes) {
        problems.push(format!(
            "limits.max_handshakes: {} must be between 1 and 100000",
            f.max_handshakes
        ));
    }
    if f.max_handshakes_per_source == 0 || f.max_handshakes_per_source > f.max_handshakes {
        problems.push(format!(
            "limits.max_handshakes_per_source: {} must be between 1 and max_handshakes ({})",
            f.max_handshakes_per_source, f.max_handshakes
        ));
    }
    if !(f.refusal_audit_rate.is_finite() && (0.001..=10_000.0).contains(&f.refusal_audit_rate)) {
        problems.push(format!(
            "limits.refusal_audit_rate: {} must be between 0.001 and 10000 (refusals per second)",
            f.refusal_audit_rate
        ));
    }
    if !(1..=100_000).contains(&f.refusal_audit_burst) {
        problems.push(format!(
            "limits.refusal_audit_burst: {} must be between 1 and 100000",
            f.refusal_audit_burst
        ));
    }
    if !(Duration::from_millis(100)..=Duration::from_secs(3600))
        .contains(&f.refusal_summary_interval)
    {
        problems.push(format!(
            "limits.refusal_summary_interval_ms: {} must be between 100 and 3600000",
            f.refusal_summary_interval.as_millis()
        ));
    }
    f
}

/// True when `ip` lies inside one of `nets`.
pub fn in_networks(nets: &[IpNetwork], ip: IpAddr) -> bool {
    let ip = canonical_ip(ip);
    nets.iter().any(|n| n.contains(ip))
}

/// `::ffff:a.b.c.d` is the IPv4 address a.b.c.d (a dual-stack socket reports it that way).
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Validates config text as if read from `path` (relative paths resolve beside it).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let base = if base.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base
        };
        let mut problems = Vec::new();
        let cfg = validate(raw, &base, &mut problems);
        match cfg {
            Some(mut cfg) if problems.is_empty() => {
                cfg.path = path.to_path_buf();
                Ok(cfg)
            }
            _ => Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems,
            }),
        }
    }
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn parse_nets(key: &str, items: &[String], problems: &mut Vec<String>) -> Vec<IpNetwork> {
    let mut out = Vec::new();
    for (i, s) in items.iter().enumerate() {
        match s.parse::<IpNetwork>() {
            Ok(n) => out.push(n),
            Err(e) => problems.push(format!("{key}[{i}]: {s:?} is not a CIDR network: {e}")),
        }
    }
    out
}

fn validate(raw: RawConfig, base: &Path, problems: &mut Vec<String>) -> Option<Config> {
    if !crate::ids::SiteId::is_valid(&raw.site.id) {
        problems.push(format!(
            "site.id: {:?} must be 1-64 letters, digits, '-' or '_'",
            raw.site.id
        ));
    }
    let mut site = Site {
        name: raw
            .site
            .name
            .clone()
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| raw.site.id.clone()),
        contact: raw
            .site
            .contact
            .unwrap_or_else(|| "地域連携室 / the liaison office".to_string()),
        home: String::new(),
        id: raw.site.id,
    };

    let state_dir = resolve(base, raw.state.dir.as_deref().unwrap_or(Path::new("state")));
    let admin_socket = raw
        .state
        .admin_socket
        .map(|p| resolve(base, &p))
        .unwrap_or_else(|| state_dir.join("admin.sock"));
    let purge_interval = Duration::from_secs(raw.state.purge_interval_secs.unwrap_or(3600));
    let audit_verify_interval =
        Duration::from_secs(raw.state.audit_verify_interval_secs.unwrap_or(3600));
    if audit_verify_interval.is_zero() {
        problems.push("state.audit_verify_interval_secs: must be at least 1".into());
    }
    if purge_interval.is_zero() {
        problems.push("state.purge_interval_secs: must be at least 1".into());
    }

    let terminal_days = raw.ca.terminal_days.unwrap_or(825);
    if terminal_days == 0 || terminal_days > 3650 {
        problems.push(format!(
            "ca.terminal_days: {terminal_days} must be between 1 and 3650"
        ));
    }
    let ca = CaPaths {
        cert: resolve(base, &raw.ca.cert),
        key: resolve(base, &raw.ca.key),
        terminal_days,
    };

    if raw.listeners.is_empty() {
        problems.push("listener: at least one [[listener]] is needed".into());
    }
    let mut listeners = Vec::new();
    for (i, l) in raw.listeners.into_iter().enumerate() {
        let key = format!("listener[{i}]");
        let listen = match l.listen.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(e) => {
                problems.push(format!(
                    "{key}.listen: {:?} is not ADDR:PORT: {e}",
                    l.listen
                ));
                None
            }
        };
        let allow = match &l.allow {
            Some(a) => {
                let nets = parse_nets(&format!("{key}.allow"), a, problems);
                if a.is_empty() {
                    problems.push(format!(
                        "{key}.allow: empty list would refuse everyone; omit it to allow all"
                    ));
                }
                nets
            }
            None => ["0.0.0.0/0", "::/0"]
                .iter()
                .filter_map(|n| n.parse::<IpNetwork>().ok())
                .collect(),
        };
        if let Some(listen) = listen {
            if listeners.iter().any(|x: &Listener| x.listen == listen) {
                problems.push(format!("{key}.listen: {listen} is used twice"));
            }
            let kind = match l.kind.as_deref() {
                None | Some("terminal") => ListenerKind::Terminal,
                Some("site-system") => ListenerKind::SiteSystem,
                Some(other) => {
                    problems.push(format!(
                        "{key}.kind: {other:?} must be \"terminal\" or \"site-system\""
                    ));
                    ListenerKind::Terminal
                }
            };
            if kind == ListenerKind::SiteSystem && l.allow.is_none() {
                problems.push(format!(
                    "{key}.allow: a site-system listener needs the in-hospital network's CIDRs (art 6.1)"
                ));
            }
            listeners.push(Listener {
                name: l.name.unwrap_or_else(|| format!("mtls-{i}")),
                kind,
                listen,
                allow,
                cert: resolve(base, &l.cert),
                key: resolve(base, &l.key),
            });
        }
    }

    let upstream = validate_upstream(&raw.upstream, problems);

    let metrics = match raw.metrics {
        Some(m) => match m.listen.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(e) => {
                problems.push(format!(
                    "metrics.listen: {:?} is not ADDR:PORT: {e}",
                    m.listen
                ));
                None
            }
        },
        None => None,
    };

    let limits = Limits {
        handshake_timeout: Duration::from_millis(raw.limits.handshake_timeout_ms.unwrap_or(10_000)),
        header_read_timeout: Duration::from_millis(
            raw.limits.header_read_timeout_ms.unwrap_or(15_000),
        ),
        max_connections: raw.limits.max_connections.unwrap_or(10_000),
        max_connections_per_terminal: raw.limits.max_connections_per_terminal.unwrap_or(32),
        idle_timeout: Duration::from_millis(raw.limits.idle_timeout_ms.unwrap_or(60_000)),
        max_header_bytes: raw.limits.max_header_bytes.unwrap_or(64 * 1024),
        max_headers: raw.limits.max_headers.unwrap_or(100),
        max_body_bytes: raw.limits.max_body_bytes.unwrap_or(1024 * 1024),
        flood: validate_flood_limits(&raw.limits, problems),
    };
    if limits.handshake_timeout.is_zero() {
        problems.push("limits.handshake_timeout_ms: must be at least 1".into());
    }
    if limits.header_read_timeout.is_zero() {
        problems.push("limits.header_read_timeout_ms: must be at least 1".into());
    }
    if limits.max_connections == 0 {
        problems.push("limits.max_connections: must be at least 1".into());
    }
    if limits.max_connections_per_terminal == 0 {
        problems.push("limits.max_connections_per_terminal: must be at least 1".into());
    }
    if limits.idle_timeout.is_zero() {
        problems.push("limits.idle_timeout_ms: must be at least 1".into());
    }
    // hyper's HTTP/1 read buffer cannot be smaller than 8 KiB.
    if !(8192..=1024 * 1024).contains(&limits.max_header_bytes) {
        problems.push(format!(
            "limits.max_header_bytes: {} must be between 8192 and 1048576",
            limits.max_header_bytes
        ));
    }
    if !(1..=1000).contains(&limits.max_headers) {
        problems.push(format!(
            "limits.max_headers: {} must be between 1 and 1000",
            limits.max_headers
        ));
    }

    let auth = Auth {
        password_required: match raw.auth.password.as_deref() {
            None | Some("required") => true,
            Some("off") => false,
            Some(other) => {
                problems.push(format!(
                    "auth.password: {other:?} must be \"required\" or \"off\""
                ));
                true
            }
        },
        idle_timeout: Duration::from_secs(raw.auth.idle_timeout_secs.unwrap_or(15 * 60)),
        session_lifetime: Duration::from_secs(raw.auth.session_lifetime_secs.unwrap_or(12 * 3600)),
        max_failures: raw.auth.max_failures.unwrap_or(5),
        lockout: Duration::from_secs(raw.auth.lockout_secs.unwrap_or(15 * 60)),
        signin_attempts_per_minute: raw
            .auth
            .signin_attempts_per_minute
            .unwrap_or(crate::signin_rate::DEFAULT_PER_MINUTE),
    };
    if !(1..=crate::signin_rate::MAX_PER_MINUTE).contains(&auth.signin_attempts_per_minute) {
        problems.push(format!(
            "auth.signin_attempts_per_minute: {} must be between 1 and {}",
            auth.signin_attempts_per_minute,
            crate::signin_rate::MAX_PER_MINUTE
        ));
    }
    if auth.idle_timeout.is_zero() || auth.session_lifetime.is_zero() {
        problems
            .push("auth: idle_timeout_secs and session_lifetime_secs must be at least 1".into());
    }
    if auth.max_failures == 0 {
        problems.push("auth.max_failures: must be at least 1".into());
    }
    let wireguard = raw
        .wireguard
        .filter(|w| w.enabled.unwrap_or(true))
        .and_then(|w| validate_wireguard(w, base, problems));
    let policy = Policy {
        block_downloads: raw.policy.block_downloads.unwrap_or(true),
        blank_print: raw.policy.blank_print.unwrap_or(true),
    };

    if raw.routes.is_empty() {
        problems.push(
            "route: no [[route]] is configured, every request would be refused (art 8.2)".into(),
        );
    }
    let future_grace_days = raw
        .admin
        .future_grace_days
        .unwrap_or(crate::dates::DEFAULT_FUTURE_GRACE_DAYS);
    if future_grace_days > 31 {
        problems.push(format!(
            "admin.future_grace_days: {future_grace_days} must be between 0 and 31"
        ));
    }
    let routes = match RouteTable::new(&raw.routes) {
        Ok(t) => match &raw.route_options.patient_query_keys {
            None => Some(t),
            Some(keys) => match t.with_patient_query_keys(keys) {
                Ok(t) => Some(t),
                Err(errs) => {
                    problems.extend(
                        errs.into_iter()
                            .map(|(i, e)| format!("routes.patient_query_keys[{i}]: {e}")),
                    );
                    None
                }
            },
        },
        Err(errs) => {
            problems.extend(errs.into_iter().map(|e| format!("route: {e}")));
            None
        }
    };
    if let Some(t) = &routes {
        match crate::start::resolve_home(t, raw.site.home.as_deref()) {
            Ok(home) => site.home = home,
            Err(e) => problems.push(e.to_string()),
        }
    }

    Some(Config {
        path: PathBuf::new(),
        site,
        state_dir,
        admin_socket,
        purge_interval,
        audit_verify_interval,
        ca,
        listeners,
        upstream: upstream?,
        metrics,
        limits,
        auth,
        policy,
        wireguard,
        routes: routes?,
        route_specs: raw.routes,
        future_grace_days,
    })
}

fn validate_wireguard(
    w: RawWireGuard,
    base: &Path,
    problems: &mut Vec<String>,
) -> Option<WireGuard> {
    let n = problems.len();
    let listen = w
        .listen
        .parse::<SocketAddr>()
        .map_err(|e| {
            problems.push(format!(
                "wireguard.listen: {:?} is not ADDR:PORT: {e}",
                w.listen
            ))
        })
        .ok();
    let address = w
        .address
        .parse::<std::net::Ipv4Addr>()
        .map_err(|e| {
            problems.push(format!(
                "wireguard.address: {:?} is not an IPv4 address: {e}",
                w.address
            ))
        })
        .ok();
    let pool = w
        .pool
        .parse::<ipnetwork::Ipv4Network>()
        .map_err(|e| {
            problems.push(format!(
                "wireguard.pool: {:?} is not an IPv4 CIDR: {e}",
                w.pool
            ))
        })
        .ok();
    if let (Some(a), Some(p)) = (address, pool) {
        if !p.contains(a) {
            problems.push(format!(
                "wireguard.address: {a} is outside wireguard.pool {p}"
            ));
        }
        if p.prefix() > 30 {
            problems.push(format!(
                "wireguard.pool: {p} leaves no addresses for terminals"
            ));
        }
    }
    if w.endpoint
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .is_none()
    {
        problems.push(format!(
            "wireguard.endpoint: {:?} must be HOST:PORT (what terminals connect to)",
            w.endpoint
        ));
    }
    let https_port = w.https_port.unwrap_or(443);
    if https_port == 0 || https_port == 80 {
        problems.push(format!("wireguard.https_port: {https_port} is not usable"));
    }
    if problems.len() != n {
        return None;
    }
    Some(WireGuard {
        listen: listen?,
        private_key: resolve(base, &w.private_key),
        address: address?,
        pool: pool?,
        endpoint: w.endpoint,
        cert: resolve(base, &w.cert),
        key: resolve(base, &w.key),
        https_port,
        http: w.http.unwrap_or(false),
        keepalive_secs: w.keepalive_secs.unwrap_or(25),
    })
}

fn validate_upstream(raw: &RawUpstream, problems: &mut Vec<String>) -> Option<Upstream> {
    let private = parse_nets("upstream.private", &raw.private, problems);
    if raw.private.is_empty() {
        problems.push(
            "upstream.private: name the private segment's networks (art 12.6); the gateway connects nowhere else"
                .into(),
        );
    }
    let uri = match raw.url.parse::<http::Uri>() {
        Ok(u) => u,
        Err(e) => {
            problems.push(format!("upstream.url: {:?} is not a URL: {e}", raw.url));
            return None;
        }
    };
    if uri.scheme_str() != Some("http") {
        problems.push(format!(
            "upstream.url: {:?} must be http://HOST[:PORT] (the EMR sits in the private segment behind the gateway)",
            raw.url
        ));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        problems.push(format!(
            "upstream.url: {:?} must not have a path or query",
            raw.url
        ));
    }
    let authority = match uri.authority() {
        Some(a) => a.clone(),
        None => {
            problems.push(format!("upstream.url: {:?} has no host", raw.url));
            return None;
        }
    };
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = authority.port_u16().unwrap_or(80);
    if let Ok(ip) = host.parse::<IpAddr>() {
        if !private.is_empty() && !in_networks(&private, ip) {
            problems.push(format!(
                "upstream.url: {ip} is outside upstream.private {:?} (art 12.6)",
                raw.private
            ));
        }
    }
    let strip_headers =
        match crate::forward::StripList::with_extra(raw.strip_headers.as_deref().unwrap_or(&[])) {
            Ok(l) => l,
            Err(errs) => {
                problems.extend(
                    errs.into_iter()
                        .map(|(i, e)| format!("upstream.strip_headers[{i}]: {e}")),
                );
                crate::forward::StripList::default()
            }
        };
    Some(Upstream {
        authority,
        host,
        port,
        private,
        connect_timeout: Duration::from_millis(raw.connect_timeout_ms.unwrap_or(3_000)),
        response_timeout: Duration::from_millis(raw.response_timeout_ms.unwrap_or(30_000)),
        pool_idle_per_host: raw.pool_idle_per_host.unwrap_or(256),
        strip_headers,
    })
}

#[cfg(test)]
mod tests;
