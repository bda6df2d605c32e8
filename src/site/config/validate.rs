//! Validation: raw structs → typed values, one function per section, in the order the
//! problems are reported. Every problem is collected (each naming its key), none stops the
//! others; relative paths are resolved beside the config file.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnetwork::IpNetwork;

use super::home::resolve_home;
use super::in_networks;
use super::raw::{
    RawAdmin, RawAuth, RawCa, RawConfig, RawLimits, RawListener, RawOffice, RawPolicy,
    RawRouteOptions, RawSite, RawState, RawUpstream, RawWireGuard,
};
use super::strip::StripList;
use super::types::{
    Auth, CaPaths, Config, FloodLimits, Limits, Listener, ListenerKind, Office, Policy, Site,
    Upstream, WireGuard,
};
use crate::policy::route::{RouteSpec, RouteTable};

/// `[state]`, validated.
struct State {
    dir: PathBuf,
    admin_socket: PathBuf,
    purge_interval: Duration,
    audit_verify_interval: Duration,
}

/// The whole config; `None` when a part that others need could not be built (the problems
/// say why).
pub(super) fn validate(raw: RawConfig, base: &Path, problems: &mut Vec<String>) -> Option<Config> {
    let mut site = site(&raw.site, problems);
    let state = state(&raw.state, base, problems);
    let ca = ca(&raw.ca, base, problems);
    let listeners = listeners(raw.listeners, base, problems);
    let upstream = upstream(&raw.upstream, problems);
    let metrics = metrics(raw.metrics.map(|m| m.listen), problems);
    let limits = limits(&raw.limits, problems);
    let auth = auth(&raw.auth, problems);
    let wireguard = raw
        .wireguard
        .filter(|w| w.enabled.unwrap_or(true))
        .and_then(|w| wireguard(w, base, problems));
    let policy = policy(&raw.policy);
    if raw.routes.is_empty() {
        problems.push(
            "route: no [[route]] is configured, every request would be refused (art 8.2)".into(),
        );
    }
    let future_grace_days = admin(&raw.admin, problems);
    let office = raw
        .office
        .and_then(|o| office(o, &listeners, base, problems));
    let registry = super::registry::registry(&raw.registry, base, problems);
    let routes = routes(&raw.routes, &raw.route_options, problems);
    let network = raw
        .network
        .as_ref()
        .and_then(|n| super::network::network(n, &raw.site.id, problems));
    let peer = raw
        .peer
        .as_ref()
        .and_then(|p| super::network::peer(p, network.is_some(), base, problems));
    if let Some(t) = &routes {
        match resolve_home(t, raw.site.home.as_deref()) {
            Ok(home) => site.home = home,
            Err(e) => problems.push(e.to_string()),
        }
    }

    Some(Config {
        path: PathBuf::new(),
        site,
        state_dir: state.dir,
        admin_socket: state.admin_socket,
        purge_interval: state.purge_interval,
        audit_verify_interval: state.audit_verify_interval,
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
        registry,
        network,
        peer,
        office,
    })
}

/// `[office]`: the console's listener, apart from every physician listener, with an
/// allow-list that must be given (normally the office LAN only).
fn office(
    o: RawOffice,
    listeners: &[Listener],
    base: &Path,
    problems: &mut Vec<String>,
) -> Option<Office> {
    let listen = parse_addr("office.listen", &o.listen, problems);
    let allow = parse_nets("office.allow", &o.allow, problems);
    if o.allow.is_empty() {
        problems.push(
            "office.allow: empty list would refuse everyone; name the liaison office's network (e.g. \"10.20.5.0/24\")".into(),
        );
    }
    let first = listeners.first();
    let cert = o
        .cert
        .map(|p| resolve(base, &p))
        .or_else(|| first.map(|l| l.cert.clone()));
    let key = o
        .key
        .map(|p| resolve(base, &p))
        .or_else(|| first.map(|l| l.key.clone()));
    let (Some(cert), Some(key)) = (cert, key) else {
        problems.push(
            "office.cert, office.key: needed when there is no [[listener]] to share them with"
                .into(),
        );
        return None;
    };
    let secs = |key: &str, v: Option<u64>, default: u64, problems: &mut Vec<String>| {
        let v = v.unwrap_or(default);
        if v == 0 {
            problems.push(format!("office.{key}: must be at least 1"));
        }
        Duration::from_secs(v.max(1))
    };
    let idle_timeout = secs("idle_timeout_secs", o.idle_timeout_secs, 600, problems);
    let session_lifetime = secs(
        "session_lifetime_secs",
        o.session_lifetime_secs,
        8 * 3600,
        problems,
    );
    let listen = listen?;
    if listeners.iter().any(|l| l.listen == listen) {
        problems.push(format!(
            "office.listen: {listen} is a physician listener's address; the console needs its own"
        ));
    }
    Some(Office {
        listen,
        allow,
        cert,
        key,
        idle_timeout,
        session_lifetime,
    })
}

/// `p` beside the config file unless absolute.
pub(super) fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

pub(super) fn parse_nets(
    key: &str,
    items: &[String],
    problems: &mut Vec<String>,
) -> Vec<IpNetwork> {
    let mut out = Vec::new();
    for (i, s) in items.iter().enumerate() {
        match s.parse::<IpNetwork>() {
            Ok(n) => out.push(n),
            Err(e) => problems.push(format!("{key}[{i}]: {s:?} is not a CIDR network: {e}")),
        }
    }
    out
}

/// `key: "text" is not ADDR:PORT` when `text` is not a socket address.
pub(super) fn parse_addr(key: &str, text: &str, problems: &mut Vec<String>) -> Option<SocketAddr> {
    text.parse::<SocketAddr>()
        .map_err(|e| problems.push(format!("{key}: {text:?} is not ADDR:PORT: {e}")))
        .ok()
}

/// `[site]`; the start page (`home`) is set once the route table is known.
fn site(raw: &RawSite, problems: &mut Vec<String>) -> Site {
    if !crate::registry::ids::SiteId::is_valid(&raw.id) {
        problems.push(format!(
            "site.id: {:?} must be 1-64 letters, digits, '-' or '_'",
            raw.id
        ));
    }
    Site {
        name: raw
            .name
            .clone()
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| raw.id.clone()),
        contact: raw
            .contact
            .clone()
            .unwrap_or_else(|| "地域連携室 / the liaison office".to_string()),
        home: String::new(),
        id: raw.id.clone(),
    }
}

fn state(raw: &RawState, base: &Path, problems: &mut Vec<String>) -> State {
    let dir = resolve(base, raw.dir.as_deref().unwrap_or(Path::new("state")));
    let admin_socket = raw
        .admin_socket
        .as_ref()
        .map(|p| resolve(base, p))
        .unwrap_or_else(|| dir.join("admin.sock"));
    let purge_interval = Duration::from_secs(raw.purge_interval_secs.unwrap_or(3600));
    let audit_verify_interval = Duration::from_secs(raw.audit_verify_interval_secs.unwrap_or(3600));
    if audit_verify_interval.is_zero() {
        problems.push("state.audit_verify_interval_secs: must be at least 1".into());
    }
    if purge_interval.is_zero() {
        problems.push("state.purge_interval_secs: must be at least 1".into());
    }
    State {
        dir,
        admin_socket,
        purge_interval,
        audit_verify_interval,
    }
}

fn ca(raw: &RawCa, base: &Path, problems: &mut Vec<String>) -> CaPaths {
    let terminal_days = raw.terminal_days.unwrap_or(825);
    if terminal_days == 0 || terminal_days > 3650 {
        problems.push(format!(
            "ca.terminal_days: {terminal_days} must be between 1 and 3650"
        ));
    }
    CaPaths {
        cert: resolve(base, &raw.cert),
        key: resolve(base, &raw.key),
        terminal_days,
    }
}

/// Every `[[listener]]`; one whose address does not parse is left out (its problem says so).
fn listeners(raw: Vec<RawListener>, base: &Path, problems: &mut Vec<String>) -> Vec<Listener> {
    if raw.is_empty() {
        problems.push("listener: at least one [[listener]] is needed".into());
    }
    let mut listeners = Vec::new();
    for (i, l) in raw.into_iter().enumerate() {
        if let Some(l) = listener(i, l, &listeners, base, problems) {
            listeners.push(l);
        }
    }
    listeners
}

/// `[[listener]]` number `i`, checked against the ones before it.
fn listener(
    i: usize,
    l: RawListener,
    before: &[Listener],
    base: &Path,
    problems: &mut Vec<String>,
) -> Option<Listener> {
    let key = format!("listener[{i}]");
    let listen = parse_addr(&format!("{key}.listen"), &l.listen, problems);
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
    let listen = listen?;
    if before.iter().any(|x| x.listen == listen) {
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
    Some(Listener {
        name: l.name.unwrap_or_else(|| format!("mtls-{i}")),
        kind,
        listen,
        allow,
        cert: resolve(base, &l.cert),
        key: resolve(base, &l.key),
    })
}

fn metrics(listen: Option<String>, problems: &mut Vec<String>) -> Option<SocketAddr> {
    parse_addr("metrics.listen", &listen?, problems)
}

fn limits(raw: &RawLimits, problems: &mut Vec<String>) -> Limits {
    let limits = Limits {
        handshake_timeout: Duration::from_millis(raw.handshake_timeout_ms.unwrap_or(10_000)),
        header_read_timeout: Duration::from_millis(raw.header_read_timeout_ms.unwrap_or(15_000)),
        max_connections: raw.max_connections.unwrap_or(10_000),
        max_connections_per_terminal: raw.max_connections_per_terminal.unwrap_or(32),
        idle_timeout: Duration::from_millis(raw.idle_timeout_ms.unwrap_or(60_000)),
        max_header_bytes: raw.max_header_bytes.unwrap_or(64 * 1024),
        max_headers: raw.max_headers.unwrap_or(100),
        max_body_bytes: raw.max_body_bytes.unwrap_or(1024 * 1024),
        flood: flood_limits(raw, problems),
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
    limits
}

/// `[limits]`' flood keys, validated (each problem names its key).
fn flood_limits(raw: &RawLimits, problems: &mut Vec<String>) -> FloodLimits {
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

fn auth(raw: &RawAuth, problems: &mut Vec<String>) -> Auth {
    let auth = Auth {
        password_required: match raw.password.as_deref() {
            None | Some("required") => true,
            Some("off") => false,
            Some(other) => {
                problems.push(format!(
                    "auth.password: {other:?} must be \"required\" or \"off\""
                ));
                true
            }
        },
        idle_timeout: Duration::from_secs(raw.idle_timeout_secs.unwrap_or(15 * 60)),
        session_lifetime: Duration::from_secs(raw.session_lifetime_secs.unwrap_or(12 * 3600)),
        max_failures: raw.max_failures.unwrap_or(5),
        lockout: Duration::from_secs(raw.lockout_secs.unwrap_or(15 * 60)),
        signin_attempts_per_minute: raw
            .signin_attempts_per_minute
            .unwrap_or(crate::policy::signin_rate::DEFAULT_PER_MINUTE),
    };
    if !(1..=crate::policy::signin_rate::MAX_PER_MINUTE).contains(&auth.signin_attempts_per_minute)
    {
        problems.push(format!(
            "auth.signin_attempts_per_minute: {} must be between 1 and {}",
            auth.signin_attempts_per_minute,
            crate::policy::signin_rate::MAX_PER_MINUTE
        ));
    }
    if auth.idle_timeout.is_zero() || auth.session_lifetime.is_zero() {
        problems
            .push("auth: idle_timeout_secs and session_lifetime_secs must be at least 1".into());
    }
    if auth.max_failures == 0 {
        problems.push("auth.max_failures: must be at least 1".into());
    }
    auth
}

fn policy(raw: &RawPolicy) -> Policy {
    Policy {
        block_downloads: raw.block_downloads.unwrap_or(true),
        blank_print: raw.blank_print.unwrap_or(true),
    }
}

/// `[admin]`: `future_grace_days`.
fn admin(raw: &RawAdmin, problems: &mut Vec<String>) -> u32 {
    let future_grace_days = raw
        .future_grace_days
        .unwrap_or(crate::ops::dates::DEFAULT_FUTURE_GRACE_DAYS);
    if future_grace_days > 31 {
        problems.push(format!(
            "admin.future_grace_days: {future_grace_days} must be between 0 and 31"
        ));
    }
    future_grace_days
}

/// `[[route]]` and `[routes]`: the route table, with the site's patient query keys.
fn routes(
    specs: &[RouteSpec],
    options: &RawRouteOptions,
    problems: &mut Vec<String>,
) -> Option<RouteTable> {
    // `/office/` is the liaison office's console (issue 15), on its own listener only: a
    // physician listener never serves it, so no route may forward it to the EMR either.
    for (i, r) in specs.iter().enumerate() {
        let p = r.path.trim_start_matches('/');
        if p == "office" || p.starts_with("office/") {
            problems.push(format!(
                "route[{i}].path: {:?} is the liaison office console's path (/office/), never served on a physician listener",
                r.path
            ));
        }
    }
    let table = match RouteTable::new(specs) {
        Ok(t) => t,
        Err(errs) => {
            problems.extend(errs.into_iter().map(|e| format!("route: {e}")));
            return None;
        }
    };
    let Some(keys) = &options.patient_query_keys else {
        return Some(table);
    };
    match table.with_patient_query_keys(keys) {
        Ok(t) => Some(t),
        Err(errs) => {
            problems.extend(
                errs.into_iter()
                    .map(|(i, e)| format!("routes.patient_query_keys[{i}]: {e}")),
            );
            None
        }
    }
}

fn wireguard(w: RawWireGuard, base: &Path, problems: &mut Vec<String>) -> Option<WireGuard> {
    let n = problems.len();
    let listen = parse_addr("wireguard.listen", &w.listen, problems);
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

fn upstream(raw: &RawUpstream, problems: &mut Vec<String>) -> Option<Upstream> {
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
    let strip_headers = match StripList::with_extra(raw.strip_headers.as_deref().unwrap_or(&[])) {
        Ok(l) => l,
        Err(errs) => {
            problems.extend(
                errs.into_iter()
                    .map(|(i, e)| format!("upstream.strip_headers[{i}]: {e}")),
            );
            StripList::default()
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
