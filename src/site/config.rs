//! The site's configuration: TOML (`gate.toml`) parsed into raw serde structs (unknown keys
//! refused), then validated into typed values before any port is bound. Every problem is
//! reported at once, each naming its key. Relative paths are relative to the config file.
//!
//! * `raw`: the serde structs, as written;
//! * `validate`: raw → typed, one function per section;
//! * `types`: [`Config`] and the validated types the gateway reads;
//! * `home`: `[site] home`, the start page, checked against the route table
//!   ([`resolve_home`]);
//! * `registry`: `[registry]`, the registry backend (sled, or etcd for the regional registry);
//! * `network`: `[network]` and `[peer]`, the regional network's sites and the peer API;
//! * `strip`: the request headers never forwarded ([`StripList`], `[upstream] strip_headers`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;

mod home;
mod network;
mod raw;
mod registry;
mod strip;
mod types;
mod validate;

pub use home::{resolve_home, HomeError};
pub use registry::{EtcdConfig, RegistryBackend, RegistryConfig, DEFAULT_MAX_STALE_SECS};
pub use strip::{canonical_name, StripHeaderError, StripList, DEFAULT_STRIP_HEADERS};
pub use types::{
    Auth, CaPaths, Config, FloodLimits, Limits, Listener, ListenerKind, Network, NetworkSite,
    Office, PeerApi, Policy, Site, SiteTunnel, Upstream, WireGuard,
};

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
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
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
        let cfg = validate::validate(raw, &base, &mut problems);
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

#[cfg(test)]
mod tests;
