//! `seibo-gate init`: a ready site in one directory — a commented, valid `gate.toml`, the
//! terminal CA, the gateway's server certificate and the state directory (mode 0700). The
//! file's text is in `template`; this creates the files.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::site::config::{Config, ConfigError};
use crate::site::pki::{self, Ca, PkiError};

mod template;

/// A TOML string literal (quoted and escaped).
pub(crate) fn toml_str(s: &str) -> String {
    template::toml_str(s)
}

/// The enabled `[wireguard]` section of a site whose gateway has public key `public`, binds
/// `listen`, is dialled at `endpoint` and answers at `address` inside the tunnel.
pub(crate) fn wireguard_section(
    public: &str,
    listen: SocketAddr,
    endpoint: &str,
    address: &str,
) -> String {
    template::wireguard_section(public, listen, endpoint, address)
}

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

/// Writes the site and returns the config path.
pub fn init(o: &InitOptions) -> Result<PathBuf, InitError> {
    let cfg_path = o.dir.join(CONFIG_FILE);
    if cfg_path.exists() {
        return Err(InitError::Exists(cfg_path));
    }
    let private = private_segment(o)?;
    create_dirs(o)?;
    let ca = create_ca_and_server_cert(o)?;
    let wireguard = match o.wireguard {
        Some(addr) => Some(write_wireguard(&o.dir, &ca, addr, TUNNEL_ADDRESS, None)?.0),
        None => None,
    };
    write_config(o, &private, wireguard, "")
}

/// Writes `gate.toml` (the template, the `[wireguard]` section when given, then `extra`:
/// sections a network site adds) and checks that it loads; the config's path.
pub(crate) fn write_config(
    o: &InitOptions,
    private: &[String],
    wireguard: Option<String>,
    extra: &str,
) -> Result<PathBuf, InitError> {
    let cfg_path = o.dir.join(CONFIG_FILE);
    let mut text = template::config_text(&template::Values {
        site: &o.site,
        name: o.name.as_deref().unwrap_or(&o.site),
        listen: o.listen,
        upstream: &o.upstream,
        private,
        metrics: o.metrics,
        wireguard,
    });
    text.push_str(extra);
    pki::write_new_file(&cfg_path, text.as_bytes(), 0o640)?;
    Config::load(&cfg_path)?;
    Ok(cfg_path)
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> InitError {
    let path = path.to_path_buf();
    move |source| InitError::Io { path, source }
}

/// `--private`, or the upstream's own address (/32 or /128) when it is an address; the
/// upstream must be a URI either way.
pub(crate) fn private_segment(o: &InitOptions) -> Result<Vec<String>, InitError> {
    let upstream_uri: http::Uri = o
        .upstream
        .parse()
        .map_err(|e| InitError::Invalid(format!("--upstream {:?}: {e}", o.upstream)))?;
    if !o.private.is_empty() {
        return Ok(o.private.clone());
    }
    let host = upstream_uri.host().unwrap_or("").trim_matches(['[', ']']);
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => Ok(vec![format!("{ip}/32")]),
        Ok(IpAddr::V6(ip)) => Ok(vec![format!("{ip}/128")]),
        Err(_) => Err(InitError::Invalid(format!(
            "--upstream host {host:?} is a name: give the private segment with --private CIDR"
        ))),
    }
}

/// The site directory, `ca/`, `tls/` and the state directory (mode 0700).
pub(crate) fn create_dirs(o: &InitOptions) -> Result<(), InitError> {
    std::fs::create_dir_all(&o.dir).map_err(io_error(&o.dir))?;
    for d in [o.dir.join("ca"), o.dir.join("tls")] {
        std::fs::create_dir_all(&d).map_err(io_error(&d))?;
    }
    crate::ops::server::prepare_state_dir(&o.dir.join("state"))
        .map_err(|e| InitError::Invalid(e.to_string()))
}

/// The machine's host name, when `/etc/hostname` gives one.
pub(crate) fn hostname() -> Option<String> {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// The terminal CA, and the gateway's server certificate for the listener's address (or the
/// host name when it listens on all addresses), `localhost` and 127.0.0.1.
fn create_ca_and_server_cert(o: &InitOptions) -> Result<Ca, InitError> {
    let ca_cert = o.dir.join("ca").join("terminal-ca.crt");
    let ca_key = o.dir.join("ca").join("terminal-ca.key");
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
    } else if let Some(h) = hostname() {
        sans.push(h);
    }
    if !sans.iter().any(|s| s == "127.0.0.1") {
        sans.push("127.0.0.1".into());
    }
    let tls_dir = o.dir.join("tls");
    ca.issue_server(
        &sans,
        &tls_dir.join("server.crt"),
        &tls_dir.join("server.key"),
    )?;
    Ok(ca)
}

/// Writes the gateway's WireGuard key and its in-tunnel server certificate for `address`
/// (the gateway's own address inside the tunnel) into the site directory `site_dir`;
/// returns the config section and the gateway's public key (base64).
pub(crate) fn write_wireguard(
    site_dir: &Path,
    ca: &Ca,
    addr: SocketAddr,
    address: &str,
    endpoint_host: Option<&str>,
) -> Result<(String, String), InitError> {
    let dir = site_dir.join("wireguard");
    std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
    let (private, public) = crate::ingress::wireguard::generate_keypair();
    pki::write_new_file(
        &dir.join("gateway.key"),
        format!("{}\n", crate::ingress::wireguard::key_to_base64(&private)).as_bytes(),
        0o600,
    )?;
    let tls_dir = site_dir.join("tls");
    std::fs::create_dir_all(&tls_dir).map_err(io_error(&tls_dir))?;
    ca.issue_server(
        &[address.to_string()],
        &tls_dir.join("tunnel.crt"),
        &tls_dir.join("tunnel.key"),
    )?;
    let host = if let Some(h) = endpoint_host {
        h.to_string()
    } else if addr.ip().is_unspecified() {
        hostname().unwrap_or_else(|| "gateway.example.jp".to_string())
    } else {
        addr.ip().to_string()
    };
    let endpoint = if host.contains(':') {
        format!("[{host}]:{}", addr.port())
    } else {
        format!("{host}:{}", addr.port())
    };
    let public = crate::ingress::wireguard::key_to_base64(&public);
    Ok((
        template::wireguard_section(&public, addr, &endpoint, address),
        public,
    ))
}

#[cfg(test)]
mod tests;
