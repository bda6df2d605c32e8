//! Issuing a terminal's credential and the registry record that goes with it (`terminal add`,
//! `site-system add`, the demo): a client certificate from the terminal CA (NAME.crt, NAME.key,
//! NAME.p12), or a WireGuard key pair and NAME.conf (art 12.2). The caller registers the
//! returned [`Terminal`] and, when the registry refuses it, removes the files
//! ([`IssuedCertificate::remove_files`], [`IssuedWireGuard::remove_files`]): files that are
//! not registered must not be mistaken for a working credential.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use crate::ingress::wireguard::{self, conf::ClientConf, WgError};
use crate::registry::model::{wireguard_fingerprint, Terminal, TerminalKind};
use crate::site::config;
use crate::site::pki::{self, Ca, ClientKind, IssuedClient, PkiError};

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("reading {}", path.display())]
    ReadKey {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Key(#[from] WgError),
    #[error("creating {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Whose terminal, its name, where its files go, how long it is valid, and when it is issued.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The physician's id (empty for a site system).
    pub physician: &'a str,
    pub name: &'a str,
    /// Directory for the credential files (created 0700).
    pub out: &'a Path,
    pub days: u32,
    pub now: OffsetDateTime,
}

/// A certificate terminal: its files and its registry record.
#[derive(Debug)]
pub struct IssuedCertificate {
    pub terminal: Terminal,
    pub files: IssuedClient,
}

impl IssuedCertificate {
    /// Removes the certificate, key and PKCS#12 files (the registry refused the terminal).
    pub fn remove_files(&self) {
        for p in [
            &self.files.cert_path,
            &self.files.key_path,
            &self.files.p12_path,
        ] {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Issues a client certificate named `common_name` (the physician's name, or the site
/// system's) for `req`, and the record of a terminal of `kind`.
pub fn certificate(
    ca: &Ca,
    kind: TerminalKind,
    common_name: &str,
    req: &Request<'_>,
) -> Result<IssuedCertificate, IssueError> {
    let cert_kind = match kind {
        TerminalKind::Terminal => ClientKind::Terminal,
        TerminalKind::SiteSystem => ClientKind::SiteSystem,
    };
    let files = ca.issue_client(cert_kind, common_name, req.name, req.out, req.days)?;
    let terminal = Terminal {
        name: req.name.to_string(),
        physician: req.physician.to_string(),
        fingerprint: files.info.fingerprint.clone(),
        serial: files.info.serial.clone(),
        not_after: files.info.not_after.to_offset(crate::ops::clock::JST),
        revoked: false,
        registered: crate::ops::clock::rfc3339(req.now),
        kind,
        tunnel_ip: None,
    };
    Ok(IssuedCertificate { terminal, files })
}

/// A WireGuard terminal: its wg-quick configuration and its registry record.
#[derive(Debug)]
pub struct IssuedWireGuard {
    pub terminal: Terminal,
    pub conf_path: PathBuf,
    /// The terminal's public key (base64).
    pub public_key: String,
}

impl IssuedWireGuard {
    /// Removes NAME.conf (the registry refused the terminal).
    pub fn remove_files(&self) {
        let _ = std::fs::remove_file(&self.conf_path);
    }
}

/// The network's other site gateways with a WireGuard ingress, as `[Peer]`s.
fn other_sites(
    network: Option<&config::Network>,
    site: &str,
) -> Result<Vec<wireguard::conf::ConfPeer>, IssueError> {
    let mut out = Vec::new();
    for s in network.iter().flat_map(|n| n.sites.iter()) {
        let Some(t) = s.wireguard.as_ref().filter(|_| s.id != site) else {
            continue;
        };
        out.push(wireguard::conf::ConfPeer {
            site: s.id.clone(),
            public_key: wireguard::key_from_base64(&t.public_key)?,
            address: t.address,
            endpoint: t.endpoint.clone(),
        });
    }
    Ok(out)
}

/// Generates a key pair for `req` with tunnel address `ip` and writes NAME.conf (0600) for
/// the gateway of `wg` at site `site`, with one more `[Peer]` for each of `network`'s other
/// sites that has a WireGuard ingress (issue 14).
pub fn wireguard(
    wg: &config::WireGuard,
    site: &str,
    network: Option<&config::Network>,
    ip: Ipv4Addr,
    req: &Request<'_>,
) -> Result<IssuedWireGuard, IssueError> {
    let gateway_key =
        std::fs::read_to_string(&wg.private_key).map_err(|source| IssueError::ReadKey {
            path: wg.private_key.clone(),
            source,
        })?;
    let gateway_public = wireguard::public_key_of(&wireguard::key_from_base64(gateway_key.trim())?);
    let (private, public) = wireguard::generate_keypair();
    let conf = ClientConf {
        terminal: req.name,
        physician: req.physician,
        site,
        issued: req.now,
        private_key: private,
        address: ip,
        gateway_public_key: gateway_public,
        gateway_address: wg.address,
        endpoint: &wg.endpoint,
        keepalive_secs: wg.keepalive_secs,
        other_sites: other_sites(network, site)?,
    };
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(req.out)
            .map_err(|source| IssueError::CreateDir {
                path: req.out.to_path_buf(),
                source,
            })?;
    }
    let conf_path = req.out.join(format!("{}.conf", req.name));
    pki::write_new_file(&conf_path, conf.render().as_bytes(), 0o600)?;
    let public_key = wireguard::key_to_base64(&public);
    let terminal = Terminal {
        name: req.name.to_string(),
        physician: req.physician.to_string(),
        fingerprint: wireguard_fingerprint(&public_key),
        serial: String::new(),
        not_after: (req.now + time::Duration::days(i64::from(req.days)))
            .to_offset(crate::ops::clock::JST),
        revoked: false,
        registered: crate::ops::clock::rfc3339(req.now),
        kind: TerminalKind::Terminal,
        tunnel_ip: Some(ip),
    };
    Ok(IssuedWireGuard {
        terminal,
        conf_path,
        public_key,
    })
}
