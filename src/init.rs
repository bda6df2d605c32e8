//! `seibo-gate init`: a ready site in one directory — a commented, valid `gate.toml`, the
//! terminal CA, the gateway's server certificate and the state directory (mode 0700).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError};
use crate::pki::{self, Ca, PkiError};

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{0}")]
    Pki(#[from] PkiError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} already exists: init never overwrites a site")]
    Exists(PathBuf),
    #[error("{0}")]
    Invalid(String),
    #[error("the written config does not validate: {0}")]
    Config(#[from] ConfigError),
}

/// What `init` needs to know.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub dir: PathBuf,
    pub site: String,
    /// The site's name shown at the foot of every page; default: the id.
    pub name: Option<String>,
    pub listen: SocketAddr,
    pub upstream: String,
    /// Private-segment CIDRs; default: the upstream's own address (/32 or /128).
    pub private: Vec<String>,
    /// Where the metrics listener binds (loopback by default).
    pub metrics: Option<SocketAddr>,
    /// Enables the WireGuard ingress on this UDP address (art 12.2).
    pub wireguard: Option<SocketAddr>,
}

impl InitOptions {
    pub fn new(dir: &Path) -> InitOptions {
        InitOptions {
            dir: dir.to_path_buf(),
            site: "seiyo-hospital".into(),
            name: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            upstream: "http://127.0.0.1:8080".into(),
            private: Vec::new(),
            metrics: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            wireguard: None,
        }
    }
}

pub const CONFIG_FILE: &str = "gate.toml";

/// The gateway's address inside the tunnel, and the pool terminals get theirs from.
pub const TUNNEL_ADDRESS: &str = "10.77.0.1";
pub const TUNNEL_POOL: &str = "10.77.0.0/24";

/// Writes the gateway's WireGuard key and its in-tunnel server certificate; returns the
/// config section.
fn wireguard_section(o: &InitOptions, ca: &Ca, addr: SocketAddr) -> Result<String, InitError> {
    let dir = o.dir.join("wireguard");
    std::fs::create_dir_all(&dir).map_err(|source| InitError::Io {
        path: dir.clone(),
        source,
    })?;
    let (private, public) = crate::wireguard::generate_keypair();
    pki::write_new_file(
        &dir.join("gateway.key"),
        format!("{}\n", crate::wireguard::key_to_base64(&private)).as_bytes(),
        0o600,
    )?;
    let tls_dir = o.dir.join("tls");
    ca.issue_server(
        &[TUNNEL_ADDRESS.to_string()],
        &tls_dir.join("tunnel.crt"),
        &tls_dir.join("tunnel.key"),
    )?;
    let host = if addr.ip().is_unspecified() {
        std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "gateway.example.jp".to_string())
    } else {
        addr.ip().to_string()
    };
    let endpoint = if host.contains(':') {
        format!("[{host}]:{}", addr.port())
    } else {
        format!("{host}:{}", addr.port())
    };
    Ok(format!(
        r#"[wireguard]
# Userspace WireGuard ingress (art 12.2): no kernel module, no TUN device, no root.
# Gateway public key: {public}
listen = {listen}
private_key = "wireguard/gateway.key"
# The gateway's own address inside the tunnel; only its HTTPS port answers there.
address = "{TUNNEL_ADDRESS}"
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
        public = crate::wireguard::key_to_base64(&public),
        listen = toml_str(&addr.to_string()),
        endpoint = toml_str(&endpoint),
    ))
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Writes the site and returns the config path.
pub fn init(o: &InitOptions) -> Result<PathBuf, InitError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| InitError::Io { path, source }
    };
    let cfg_path = o.dir.join(CONFIG_FILE);
    if cfg_path.exists() {
        return Err(InitError::Exists(cfg_path));
    }
    let upstream_uri: http::Uri = o
        .upstream
        .parse()
        .map_err(|e| InitError::Invalid(format!("--upstream {:?}: {e}", o.upstream)))?;
    let private = if o.private.is_empty() {
        let host = upstream_uri.host().unwrap_or("").trim_matches(['[', ']']);
        match host.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => vec![format!("{ip}/32")],
            Ok(IpAddr::V6(ip)) => vec![format!("{ip}/128")],
            Err(_) => {
                return Err(InitError::Invalid(format!(
                "--upstream host {host:?} is a name: give the private segment with --private CIDR"
            )))
            }
        }
    } else {
        o.private.clone()
    };

    std::fs::create_dir_all(&o.dir).map_err(io(&o.dir))?;
    let ca_dir = o.dir.join("ca");
    let tls_dir = o.dir.join("tls");
    for d in [&ca_dir, &tls_dir] {
        std::fs::create_dir_all(d).map_err(io(d))?;
    }
    crate::server::prepare_state_dir(&o.dir.join("state"))
        .map_err(|e| InitError::Invalid(e.to_string()))?;

    let ca_cert = ca_dir.join("terminal-ca.crt");
    let ca_key = ca_dir.join("terminal-ca.key");
    pki::create_ca(
        &format!("Seibo Net terminal CA ({})", o.site),
        &ca_cert,
        &ca_key,
    )?;
    let ca = Ca::load(&ca_cert, &ca_key)?;
    let mut sans = vec!["localhost".to_string()];
    let ip = o.listen.ip();
    if !ip.is_unspecified() {
        sans.insert(0, ip.to_string());
    } else if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
        let h = h.trim();
        if !h.is_empty() {
            sans.push(h.to_string());
        }
    }
    if !sans.iter().any(|s| s == "127.0.0.1") {
        sans.push("127.0.0.1".into());
    }
    ca.issue_server(
        &sans,
        &tls_dir.join("server.crt"),
        &tls_dir.join("server.key"),
    )?;

    let wireguard = match o.wireguard {
        Some(addr) => wireguard_section(o, &ca, addr)?,
        None => {
            "# [wireguard]\n# Enable with `seibo-gate init --wireguard ADDR:PORT` (art 12.2).\n"
                .to_string()
        }
    };
    let private_list = private
        .iter()
        .map(|p| toml_str(p))
        .collect::<Vec<_>>()
        .join(", ");
    let metrics = match o.metrics {
        Some(m) => format!("[metrics]\n# Prometheus scrape endpoint (/metrics). Keep it on loopback or a scrape network.\nlisten = {}\n", toml_str(&m.to_string())),
        None => "# [metrics]\n# listen = \"127.0.0.1:9464\"\n".to_string(),
    };
    let text = format!(
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

[state]
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

[[listener]]
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

{metrics}
{wireguard}
[auth]
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
path = "/patients/{{patient}}/{{category}}/**"

[[route]]
# The EMR's own style sheets, scripts and images: no patient data.
path = "/static/**"
no_patient = true
"#,
        site = toml_str(&o.site),
        name = toml_str(o.name.as_deref().unwrap_or(&o.site)),
        listen = toml_str(&o.listen.to_string()),
        upstream = toml_str(&o.upstream),
    );
    pki::write_new_file(&cfg_path, text.as_bytes(), 0o640)?;
    Config::load(&cfg_path)?;
    Ok(cfg_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_a_valid_site_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let o = InitOptions::new(&dir.path().join("site"));
        let p = init(&o).unwrap();
        let cfg = Config::load(&p).unwrap();
        assert_eq!(cfg.site.id, "seiyo-hospital");
        assert_eq!(
            cfg.site.name, "seiyo-hospital",
            "the name defaults to the id"
        );
        assert_eq!(
            cfg.site.home, "/.seibo/whoami",
            "the EMR's root is not routed"
        );
        assert_eq!(cfg.routes.len(), 2);
        assert!(cfg.ca.key.exists());
        assert!(matches!(init(&o), Err(InitError::Exists(_))));
    }

    /// Issue 11 item 26: `init --name` is the name physicians see; the commented start page
    /// is valid once uncommented (the root is then refused until a route allows it).
    #[test]
    fn init_writes_the_sites_name_and_a_commented_start_page() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = InitOptions::new(&dir.path().join("site"));
        o.name = Some("西陽市民病院 / Seiyo \"City\" Hospital".into());
        let p = init(&o).unwrap();
        let cfg = Config::load(&p).unwrap();
        assert_eq!(cfg.site.name, "西陽市民病院 / Seiyo \"City\" Hospital");
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("\n# home = \"/\"\n"), "{text}");
        let home = text.replace("\n# home = \"/\"\n", "\nhome = \"/\"\n");
        let err = Config::parse(&p, &home).unwrap_err().to_string();
        assert!(err.contains("site.home: \"/\" is not an EMR page"), "{err}");
        let routed = format!("{home}\n[[route]]\npath = \"/\"\nno_patient = true\n");
        assert_eq!(Config::parse(&p, &routed).unwrap().site.home, "/");
    }

    /// Art 12.2: `init --wireguard` writes an enabled, valid section with a fresh key.
    #[test]
    fn art_12_2_init_with_wireguard_writes_key_and_section() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = InitOptions::new(&dir.path().join("site"));
        o.wireguard = Some("127.0.0.1:51820".parse().unwrap());
        let cfg = Config::load(&init(&o).unwrap()).unwrap();
        let wg = cfg.wireguard.expect("wireguard enabled");
        assert_eq!(wg.address.to_string(), TUNNEL_ADDRESS);
        assert_eq!(wg.endpoint, "127.0.0.1:51820");
        let key = std::fs::read_to_string(&wg.private_key).unwrap();
        assert!(crate::wireguard::key_from_base64(key.trim()).is_ok());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&wg.private_key)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn init_needs_private_segment_for_a_named_upstream() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = InitOptions::new(dir.path());
        o.upstream = "http://emr.internal:8080".into();
        assert!(matches!(init(&o), Err(InitError::Invalid(_))));
    }
}
