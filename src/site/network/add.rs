//! `seibo-gate site add`, run at the network's home: the bundle another site needs (its
//! gateway's server and site-gateway certificates, the regional CA certificate — never its
//! key —, its etcd client credentials, and `site.toml`, the site descriptor), the site added
//! to the network's list and to the home's own `[[network.sites]]`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use super::{
    check_site, create_private_dir, host_port, io_err, issue_site_files, text, Descriptor,
    NetworkError, NetworkFile, SiteEntry, DESCRIPTOR_FILE, ETCD_CA_CERT, ETCD_CA_KEY, NETWORK_FILE,
};
use crate::site::config::Config;
use crate::site::init;
use crate::site::pki::Ca;

/// What `site add` needs.
#[derive(Debug, Clone)]
pub struct SiteAddOptions {
    pub site: String,
    pub name: Option<String>,
    /// DNS names and addresses the new site's gateway is reached at.
    pub hosts: Vec<String>,
    /// Where the new site's peer API binds (its port is the one other sites dial).
    pub peer_listen: SocketAddr,
    /// The new site's WireGuard UDP socket, when it has the WireGuard ingress.
    pub wireguard: Option<SocketAddr>,
    /// The bundle's directory (new or empty).
    pub out: PathBuf,
}

/// What `site add` did, for its report.
#[derive(Debug, Clone)]
pub struct Added {
    pub bundle: PathBuf,
    pub site: SiteEntry,
}

/// Adds a site to the network whose home `home` (its `gate.toml`) is; writes the bundle.
pub fn add_site(home: &Config, o: &SiteAddOptions) -> Result<Added, NetworkError> {
    let base = home
        .path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let nf_path = base.join(NETWORK_FILE);
    if !nf_path.exists() {
        return Err(NetworkError::Invalid(format!(
            "{} is not the network's home (no {NETWORK_FILE} beside it): run `site add` with the \
             config `network init` wrote",
            home.path.display()
        )));
    }
    let mut nf = NetworkFile::read(&nf_path)?;
    if nf.site(&o.site).is_some() {
        return Err(NetworkError::Invalid(format!(
            "--site {}: already a site of network {}",
            o.site, nf.id
        )));
    }
    let ca = Ca::load(&home.ca.cert, &home.ca.key)?;
    check_site(&ca, &o.site, &o.hosts)?;
    let etcd_ca = Ca::load(&base.join(ETCD_CA_CERT), &base.join(ETCD_CA_KEY))?;
    prepare_out(&o.out)?;
    // The bundle is written whole or not at all: on any failure its files are removed (the
    // directory was new or empty).
    match write_bundle(home, o, &base, &mut nf, &ca, &etcd_ca) {
        Ok(added) => Ok(added),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&o.out);
            Err(e)
        }
    }
}

/// The bundle's files, the site in the home's config and in the network's list.
fn write_bundle(
    home: &Config,
    o: &SiteAddOptions,
    base: &Path,
    nf: &mut NetworkFile,
    ca: &Ca,
    etcd_ca: &Ca,
) -> Result<Added, NetworkError> {
    let nf_path = base.join(NETWORK_FILE);
    let first_host = o.hosts.first().map(String::as_str).unwrap_or("localhost");
    let mut site = SiteEntry {
        id: o.site.clone(),
        name: o.name.clone().unwrap_or_else(|| o.site.clone()),
        hosts: o.hosts.clone(),
        peer: host_port(first_host, o.peer_listen.port()),
        wireguard_endpoint: None,
        wireguard_public_key: None,
        tunnel_address: None,
    };
    issue_site_files(&o.out, ca, etcd_ca, &site)?;
    if let Some(addr) = o.wireguard {
        let address = free_tunnel_address(nf)?;
        let (_, public) =
            init::write_wireguard(&o.out, ca, addr, &address.to_string(), Some(first_host))?;
        site.wireguard_endpoint = Some(host_port(first_host, addr.port()));
        site.wireguard_public_key = Some(public);
        site.tunnel_address = Some(address.to_string());
    }
    nf.sites.push(site.clone());
    let descriptor = Descriptor {
        site: site.id.clone(),
        peer_listen: o.peer_listen.to_string(),
        wireguard_listen: o.wireguard.map(|a| a.to_string()),
        network: nf.clone(),
    };
    super::write_toml(
        &o.out.join(DESCRIPTOR_FILE),
        &descriptor,
        "# Site descriptor written by `seibo-gate site add`: `seibo-gate init --join` reads it.\n",
    )?;
    let before = append_to_home(home, &site)?;
    if let Err(e) = nf.write(&nf_path) {
        let _ = std::fs::write(&home.path, before);
        return Err(e);
    }
    Ok(Added {
        bundle: o.out.clone(),
        site,
    })
}

/// The bundle's directory: created 0700, or an existing empty one.
fn prepare_out(out: &Path) -> Result<(), NetworkError> {
    if out.exists() {
        let mut entries = std::fs::read_dir(out).map_err(io_err(out))?;
        if entries.next().is_some() {
            return Err(NetworkError::Exists(out.to_path_buf()));
        }
    }
    create_private_dir(out)
}

/// The new site gateway's address inside the tunnel: from the top of the terminals' pool
/// down (terminals are given addresses from the bottom up, skipping the sites').
fn free_tunnel_address(nf: &NetworkFile) -> Result<Ipv4Addr, NetworkError> {
    let pool: ipnetwork::Ipv4Network = init::TUNNEL_POOL
        .parse()
        .map_err(|e| NetworkError::Invalid(format!("tunnel pool: {e}")))?;
    let used: Vec<String> = nf
        .sites
        .iter()
        .filter_map(|s| s.tunnel_address.clone())
        .collect();
    let top = u32::from(pool.broadcast());
    (1..pool.size())
        .filter_map(|i| top.checked_sub(i).map(Ipv4Addr::from))
        .filter(|ip| *ip != pool.network())
        .find(|ip| !used.contains(&ip.to_string()))
        .ok_or_else(|| NetworkError::Invalid(format!("tunnel pool {pool} is full")))
}

/// Appends the site to the home's `gate.toml` and checks that it still loads (restored
/// otherwise); the text before, to restore it if a later step fails.
fn append_to_home(home: &Config, site: &SiteEntry) -> Result<String, NetworkError> {
    let path = &home.path;
    let before = std::fs::read_to_string(path).map_err(io_err(path))?;
    let after = format!("{before}{}", text::site_block(site));
    std::fs::write(path, &after).map_err(io_err(path))?;
    if let Err(e) = Config::load(path) {
        std::fs::write(path, &before).map_err(io_err(path))?;
        return Err(NetworkError::File {
            path: path.clone(),
            message: format!("adding the site would make it invalid (left unchanged): {e}"),
        });
    }
    Ok(before)
}
