//! `seibo-gate network init`: the network at its home (the liaison office of Seiyo City
//! Hospital, art 6.2) — the regional terminal CA with name constraints, the etcd CA, the
//! first site's gateway (certificates, `gate.toml` with `[registry]`, `[peer]`, `[network]`)
//! and the network's site list.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use super::{
    check_site, create_private_dir, host_port, issue_site_files, text, NetworkError, NetworkFile,
    SiteEntry, CA_CERT, CA_KEY, ETCD_CA_CERT, ETCD_CA_KEY, NETWORK_DIR, NETWORK_FILE,
    TUNNEL_NETWORK,
};
use crate::site::config::DEFAULT_MAX_STALE_SECS;
use crate::site::init::{self, InitOptions, CONFIG_FILE, TUNNEL_ADDRESS};
use crate::site::pki::{self, Ca, Permit};

/// What `network init` needs.
#[derive(Debug, Clone)]
pub struct NetworkInitOptions {
    /// The first site, as `init` takes it (its `wireguard` enables the WireGuard ingress).
    pub site: InitOptions,
    /// The network's id (e.g. `seibo-net`); the etcd prefix is `/<id>/`.
    pub network: String,
    /// DNS names and addresses the first site's gateway is reached at.
    pub hosts: Vec<String>,
    /// Where its peer API binds.
    pub peer_listen: SocketAddr,
    /// etcd's client URLs.
    pub etcd: Vec<String>,
    /// The regional CA's permitted subtrees; default: the first site's hosts. The WireGuard
    /// network ([`TUNNEL_NETWORK`]) is always added.
    pub permit: Vec<String>,
}

/// Creates the network and its first site; the first site's config path.
pub fn network_init(o: &NetworkInitOptions) -> Result<PathBuf, NetworkError> {
    let s = &o.site;
    let cfg_path = s.dir.join(CONFIG_FILE);
    if cfg_path.exists() {
        return Err(NetworkError::Exists(cfg_path));
    }
    if !crate::registry::ids::SiteId::is_valid(&o.network) {
        return Err(NetworkError::Invalid(format!(
            "--network {:?}: use 1-64 letters, digits, '-' or '_'",
            o.network
        )));
    }
    if !crate::registry::ids::SiteId::is_valid(&s.site) || o.hosts.is_empty() {
        return Err(NetworkError::Invalid(format!(
            "--site {:?} (1-64 letters, digits, '-' or '_') and at least one --host are needed",
            s.site
        )));
    }
    if o.etcd.is_empty() {
        return Err(NetworkError::Invalid(
            "--etcd: give the regional registry's client URLs (https://HOST:2379, repeatable)"
                .into(),
        ));
    }
    let permits = permits(&o.permit, &o.hosts)?;
    // Checked before anything is written: a host outside the constraints leaves no files.
    if let Some(h) = o
        .hosts
        .iter()
        .find(|h| !pki::host_permitted(Some(&permits), h))
    {
        return Err(NetworkError::Invalid(format!(
            "--host {h}: outside every --permit; the regional CA could not vouch for it"
        )));
    }
    let private = init::private_segment(s)?;
    init::create_dirs(s)?;
    create_private_dir(&s.dir.join(NETWORK_DIR))?;

    pki::create_constrained_ca(
        &format!("Seibo Net regional terminal CA ({})", o.network),
        &permits,
        &s.dir.join(CA_CERT),
        &s.dir.join(CA_KEY),
    )?;
    let ca = Ca::load(&s.dir.join(CA_CERT), &s.dir.join(CA_KEY))?;
    check_site(&ca, &s.site, &o.hosts)?;
    pki::create_ca(
        &format!("Seibo Net etcd CA ({})", o.network),
        &s.dir.join(ETCD_CA_CERT),
        &s.dir.join(ETCD_CA_KEY),
    )?;
    let etcd_ca = Ca::load(&s.dir.join(ETCD_CA_CERT), &s.dir.join(ETCD_CA_KEY))?;

    let first_host = o.hosts.first().map(String::as_str).unwrap_or("localhost");
    let mut site = SiteEntry {
        id: s.site.clone(),
        name: s.name.clone().unwrap_or_else(|| s.site.clone()),
        hosts: o.hosts.clone(),
        peer: host_port(first_host, o.peer_listen.port()),
        wireguard_endpoint: None,
        wireguard_public_key: None,
        tunnel_address: None,
    };
    issue_site_files(&s.dir, &ca, &etcd_ca, &site)?;
    let wireguard = match s.wireguard {
        Some(addr) => {
            let (section, public) =
                init::write_wireguard(&s.dir, &ca, addr, TUNNEL_ADDRESS, Some(first_host))?;
            site.wireguard_endpoint = Some(host_port(first_host, addr.port()));
            site.wireguard_public_key = Some(public);
            site.tunnel_address = Some(TUNNEL_ADDRESS.to_string());
            Some(section)
        }
        None => None,
    };
    let nf = NetworkFile {
        id: o.network.clone(),
        endpoints: o.etcd.clone(),
        prefix: format!("/{}/", o.network),
        max_stale_secs: DEFAULT_MAX_STALE_SECS,
        sites: vec![site],
    };
    nf.write(&s.dir.join(NETWORK_FILE))?;
    let extra = text::sections(&nf, &o.peer_listen.to_string());
    Ok(init::write_config(s, &private, wireguard, &extra)?)
}

/// The permitted subtrees: `--permit` values, else each host exactly; the WireGuard network
/// always.
fn permits(permit: &[String], hosts: &[String]) -> Result<Vec<Permit>, NetworkError> {
    let mut out = Vec::new();
    if permit.is_empty() {
        for h in hosts {
            out.push(Permit::for_host(h)?);
        }
    } else {
        for p in permit {
            out.push(Permit::from_str(p)?);
        }
    }
    out.push(Permit::from_str(TUNNEL_NETWORK)?);
    out.dedup();
    Ok(out)
}
