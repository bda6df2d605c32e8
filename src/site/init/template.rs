//! The `gate.toml` that `init` writes: commented, valid, byte for byte what a new site gets.
//! Sections with values are built by functions; the fixed text is in constants.

use std::net::SocketAddr;

use super::TUNNEL_POOL;

/// A TOML string literal (quoted and escaped).
pub(super) fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// What the config file says beyond the fixed text.
pub(super) struct Values<'a> {
    pub site: &'a str,
    pub name: &'a str,
    pub listen: SocketAddr,
    pub upstream: &'a str,
    pub private: &'a [String],
    pub metrics: Option<SocketAddr>,
    /// The `[wireguard]` section ([`wireguard_section`]), or `None` for the commented hint.
    pub wireguard: Option<String>,
}

/// The whole `gate.toml`.
pub(super) fn config_text(v: &Values<'_>) -> String {
    let mut text = site_section(v.site, v.name);
    text.push_str(STATE_AND_CA);
    text.push_str(&listener_and_upstream(v.listen, v.upstream, v.private));
    text.push_str(&metrics_section(v.metrics));
    text.push('\n');
    text.push_str(v.wireguard.as_deref().unwrap_or(WIREGUARD_OFF));
    text.push('\n');
    text.push_str(AUTH_POLICY_LIMITS_ROUTES);
    text
}

fn site_section(site: &str, name: &str) -> String {
    format!(
        r#"# seibo-gate site configuration, written by `seibo-gate init`.
# Paths are relative to this file. `seibo-gate check-config --config FILE` validates it.

[site]
# Short id of this site: written into every audit record and sent to the EMR.
id = {site}
# The site's name as physicians see it at the foot of every page (`init --name`).
name = {name}
# Shown on every refusal page: whom a physician should contact.
contact = "地域連携室 / Liaison office"
# The start page, where `/` and the sign-in lead: an EMR page without patient data that a
# [[route]] below allows (the EMR's menu, say), or "/.seibo/whoami". Default: the EMR's root
# "/" when a route allows it, else "/.seibo/whoami". `check-config` refuses any other page.
# home = "/"

"#,
        site = toml_str(site),
        name = toml_str(name),
    )
}

const STATE_AND_CA: &str = r#"[state]
# Registries (physicians, terminals, consents) and the audit log. Mode 0700.
dir = "state"
# Admin commands reach the running gateway on admin.sock (mode 0600) in the state directory;
# admin_socket = "/run/seibo-gate/admin.sock" puts it elsewhere (a directory the service writes).

[ca]
# The terminal CA: client certificates must chain to it (art 12.1).
cert = "ca/terminal-ca.crt"
# Its key is read by `terminal add` only; keep it offline or root-only.
key = "ca/terminal-ca.key"
# Validity of new terminal certificates, in days.
terminal_days = 825

"#;

fn listener_and_upstream(listen: SocketAddr, upstream: &str, private: &[String]) -> String {
    let private_list = private
        .iter()
        .map(|p| toml_str(p))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"[[listener]]
name = "internet"
listen = {listen}
# Source networks allowed to connect; others are closed before the TLS handshake (art 12.4).
allow = ["0.0.0.0/0", "::/0"]
cert = "tls/server.crt"
key = "tls/server.key"

[upstream]
# The web EMR (plain HTTP inside the private segment).
url = {upstream}
# The private segment (art 12.6): the gateway never connects anywhere else.
private = [{private_list}]
connect_timeout_ms = 3000
response_timeout_ms = 30000

"#,
        listen = toml_str(&listen.to_string()),
        upstream = toml_str(upstream),
    )
}

fn metrics_section(metrics: Option<SocketAddr>) -> String {
    match metrics {
        Some(m) => format!("[metrics]\n# Prometheus scrape endpoint (/metrics). Keep it on loopback or a scrape network.\nlisten = {}\n", toml_str(&m.to_string())),
        None => "# [metrics]\n# listen = \"127.0.0.1:9464\"\n".to_string(),
    }
}

const WIREGUARD_OFF: &str =
    "# [wireguard]\n# Enable with `seibo-gate init --wireguard ADDR:PORT` (art 12.2).\n";

const AUTH_POLICY_LIMITS_ROUTES: &str = r#"[auth]
# Second factor (art 6.3, 13.1): the physician's ID and password, after the terminal's
# certificate. "off" only for a test bench.
password = "required"
# Sessions end after this much inactivity, and in any case after the lifetime.
idle_timeout_secs = 900
session_lifetime_secs = 43200
# Wrong passwords in a row before the account is locked, and for how long.
max_failures = 5
lockout_secs = 900
# Password tries (sign-in, password change) per terminal per minute; beyond it a 429 page.
signin_attempts_per_minute = 20

[policy]
# Art 13.2.5: refuse EMR responses that would save a file (Content-Disposition: attachment),
# and print HTML pages as a notice only (印刷はできません / Printing is not permitted).
block_downloads = true
blank_print = true

# An in-hospital listener for the site's own EMR system (art 6.1): it presents a certificate
# from `seibo-gate site-system add` and names the physician in X-Seibo-Site-Physician.
# [[listener]]
# name = "in-hospital"
# kind = "site-system"
# listen = "10.20.0.2:8444"
# allow = ["10.20.0.0/16"]
# cert = "tls/server.crt"
# key = "tls/server.key"

[limits]
# Safe defaults; docs/security.md says what each one stops.
handshake_timeout_ms = 10000
# Request head read (slowloris), and a connection on which nothing moves.
header_read_timeout_ms = 15000
idle_timeout_ms = 60000
max_connections = 10000
max_connections_per_terminal = 32
# Request head size and field count (431 beyond), and body size unless a route sets its own (413).
max_header_bytes = 65536
max_headers = 100
max_body_bytes = 1048576

# Routes: which EMR pages may be viewed, for which patient and record category (art 8.2).
# Anything that matches no route is refused (default deny). Tried in order.
# Categories: basic diagnoses prescriptions labs notes flowsheets summaries reports images staff-records

[[route]]
# The generic layout: /patients/<patient id>/<category>[/...]
path = "/patients/{patient}/{category}/**"

[[route]]
# The EMR's own style sheets, scripts and images: no patient data.
path = "/static/**"
no_patient = true
"#;

/// The enabled `[wireguard]` section: the gateway's public key (base64), the UDP address
/// and what terminals' configurations name as the endpoint.
pub(super) fn wireguard_section(
    public: &str,
    listen: SocketAddr,
    endpoint: &str,
    address: &str,
) -> String {
    format!(
        r#"[wireguard]
# Userspace WireGuard ingress (art 12.2): no kernel module, no TUN device, no root.
# Gateway public key: {public}
listen = {listen}
private_key = "wireguard/gateway.key"
# The gateway's own address inside the tunnel; only its HTTPS port answers there.
address = {address}
# Terminals' tunnel addresses are allocated from this pool by `terminal add --wireguard`.
pool = "{TUNNEL_POOL}"
# What terminals' .conf files name as Endpoint: the address they reach this gateway at.
endpoint = {endpoint}
cert = "tls/tunnel.crt"
key = "tls/tunnel.key"
https_port = 443
# Plain HTTP on port 80 inside the tunnel (sign-in cookies need HTTPS: keep it off).
http = false
keepalive_secs = 25
"#,
        listen = toml_str(&listen.to_string()),
        endpoint = toml_str(endpoint),
        address = toml_str(address),
    )
}
