//! Seibo Net as one network (issue 14, art 6.2): the liaison office of Seiyo City Hospital
//! holds the network's regional terminal CA; every site's gateway trusts it, so a terminal
//! issued once works at every site.
//!
//! * [`init`]: `network init` — the regional CA (name-constrained), the etcd CA, the first
//!   site's gateway and its `gate.toml`, and the network's site list (`network/network.toml`
//!   at the network's home);
//! * [`add`]: `site add` — the bundle another site needs (its server and site-gateway
//!   certificates, the regional CA certificate without its key, its etcd client credentials,
//!   a site descriptor), and the site added to the list;
//! * [`etcd`]: `network etcd-member` — an etcd member's certificate from the network's etcd CA;
//! * [`join`]: `init --join BUNDLE` — a working `gate.toml` from a bundle, at that site;
//! * [`text`]: the `[registry]`, `[peer]` and `[network]` sections they write;
//! * here: the network's files, what they hold, and issuing one site's certificates.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::site::init::InitError;
use crate::site::pki::{self, Ca, LeafSpec, PkiError};

pub mod add;
pub mod etcd;
pub mod init;
pub mod join;
mod text;

pub use text::site_block;
#[cfg(test)]
mod tests;

pub use add::{add_site, SiteAddOptions};
pub use init::{network_init, NetworkInitOptions};
pub use join::join;

/// The network's own files at its home, beside `gate.toml`.
pub const NETWORK_DIR: &str = "network";
/// The network's site list and registry settings.
pub const NETWORK_FILE: &str = "network/network.toml";
/// The etcd CA (client and member certificates of the regional registry).
pub const ETCD_CA_CERT: &str = "network/etcd-ca.crt";
pub const ETCD_CA_KEY: &str = "network/etcd-ca.key";
/// A bundle's site descriptor.
pub const DESCRIPTOR_FILE: &str = "site.toml";
/// The regional CA certificate (and, at the home, its key), as in a single site.
pub const CA_CERT: &str = "ca/terminal-ca.crt";
pub const CA_KEY: &str = "ca/terminal-ca.key";
/// The WireGuard network: every site gateway's in-tunnel address and every terminal's lie
/// inside; the regional CA may vouch for addresses here (the in-tunnel pages).
pub const TUNNEL_NETWORK: &str = "10.77.0.0/16";
/// Default port of the peer API.
pub const DEFAULT_PEER_PORT: u16 = 8843;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("{0}")]
    Init(#[from] InitError),
    #[error("{0}")]
    Pki(#[from] PkiError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    /// A bad argument (exit 64).
    #[error("{0}")]
    Invalid(String),
    /// An output that exists (exit 73).
    #[error("{} already exists: nothing is overwritten", .0.display())]
    Exists(PathBuf),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> NetworkError {
    let path = path.to_path_buf();
    move |source| NetworkError::Io { path, source }
}

/// `network/network.toml`: the network's id, its regional registry and its sites.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NetworkFile {
    pub id: String,
    /// etcd's client URLs and the key prefix of this network (issue 13).
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub max_stale_secs: u64,
    #[serde(default)]
    pub sites: Vec<SiteEntry>,
}

/// One site of the network as the list keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SiteEntry {
    pub id: String,
    pub name: String,
    /// DNS names and addresses the site's gateway is reached at (its certificates' SANs).
    pub hosts: Vec<String>,
    /// HOST:PORT of its peer API.
    pub peer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard_public_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_address: Option<String>,
}

/// A bundle's `site.toml`: the network as it stood when the site was added, which site the
/// bundle is for, and where that site's gateway binds its peer API and WireGuard socket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Descriptor {
    pub site: String,
    pub peer_listen: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard_listen: Option<String>,
    pub network: NetworkFile,
}

impl NetworkFile {
    pub fn read(path: &Path) -> Result<NetworkFile, NetworkError> {
        read_toml(path)
    }

    /// Replaces the file (a temporary file renamed over it).
    pub fn write(&self, path: &Path) -> Result<(), NetworkError> {
        write_toml(path, self, "# The network's site list and regional registry, written by `seibo-gate network init` and `site add`.\n")
    }

    pub fn site(&self, id: &str) -> Option<&SiteEntry> {
        self.sites.iter().find(|s| s.id == id)
    }
}

pub(crate) fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, NetworkError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    toml::from_str(&text).map_err(|e| NetworkError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

pub(crate) fn write_toml<T: Serialize>(
    path: &Path,
    value: &T,
    header: &str,
) -> Result<(), NetworkError> {
    let body = toml::to_string(value).map_err(|e| NetworkError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let tmp = path.with_extension("toml.new");
    let _ = std::fs::remove_file(&tmp);
    pki::write_new_file(&tmp, format!("{header}{body}").as_bytes(), 0o644)?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Checks a site id and its hosts against the regional CA's name constraints.
pub(crate) fn check_site(ca: &Ca, site: &str, hosts: &[String]) -> Result<(), NetworkError> {
    if !crate::registry::ids::SiteId::is_valid(site) {
        return Err(NetworkError::Invalid(format!(
            "--site {site:?}: use 1-64 letters, digits, '-' or '_'"
        )));
    }
    if hosts.is_empty() {
        return Err(NetworkError::Invalid(
            "--host: give at least one DNS name or IP address the site's gateway is reached at"
                .into(),
        ));
    }
    let permits = pki::permitted_subtrees(ca.cert_der())?;
    for h in hosts {
        if !pki::host_permitted(permits.as_deref(), h) {
            let list = permits
                .iter()
                .flatten()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            return Err(NetworkError::Invalid(format!(
                "--host {h}: outside the regional CA's name constraints ({list}); the CA can \
                 vouch only for those (network init --permit sets them)"
            )));
        }
    }
    Ok(())
}

/// Issues one site's certificates into its directory `dir`: the gateway's server
/// certificate (`tls/`), its site-gateway certificate (`peer/`), its etcd client credentials
/// (`registry/`), and copies the regional CA certificate (`ca/`). The regional CA's key is
/// never copied.
pub(crate) fn issue_site_files(
    dir: &Path,
    ca: &Ca,
    etcd_ca: &Ca,
    site: &SiteEntry,
) -> Result<(), NetworkError> {
    for d in ["ca", "tls", "peer", "registry"] {
        create_private_dir(&dir.join(d))?;
    }
    let ca_cert = dir.join(CA_CERT);
    if !ca_cert.exists() {
        pki::write_new_file(&ca_cert, ca.cert_pem().as_bytes(), 0o644)?;
    }
    ca.issue_server(
        &site.hosts,
        &dir.join("tls/server.crt"),
        &dir.join("tls/server.key"),
    )?;
    ca.issue_site_gateway(
        &site.id,
        &site.hosts,
        &dir.join("peer/site.crt"),
        &dir.join("peer/site.key"),
    )?;
    pki::write_new_file(
        &dir.join("registry/etcd-ca.crt"),
        etcd_ca.cert_pem().as_bytes(),
        0o644,
    )?;
    etcd_ca.issue_leaf(
        &LeafSpec {
            cn: &site.id,
            ou: None,
            sans: &[],
            server: false,
            client: true,
        },
        &dir.join("registry/gateway.crt"),
        &dir.join("registry/gateway.key"),
    )?;
    Ok(())
}

/// A directory (and its parents) with mode 0700 when created.
pub(crate) fn create_private_dir(d: &Path) -> Result<(), NetworkError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(d)
        .map_err(io_err(d))
}

/// `HOST:PORT` for a host that may be an IPv6 address.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}
