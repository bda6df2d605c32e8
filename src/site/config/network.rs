//! `[network]` (the regional network's sites) and `[peer]` (the read-only peer API), raw →
//! typed (issue 14). Every site's id is unique and valid, this site is one of them, peer
//! addresses are `HOST:PORT`, and WireGuard tunnel addresses are unique in the network.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::Path;

use super::raw::{RawNetwork, RawNetworkSite, RawPeer};
use super::types::{Network, NetworkSite, PeerApi, SiteTunnel};
use super::validate::{parse_addr, parse_nets, resolve};
use crate::registry::ids::SiteId;

/// `[network]`; `None` when a problem was found (each is reported).
pub(super) fn network(
    raw: &RawNetwork,
    this_site: &str,
    problems: &mut Vec<String>,
) -> Option<Network> {
    let n = problems.len();
    if !SiteId::is_valid(&raw.id) {
        problems.push(format!(
            "network.id: {:?} must be 1-64 letters, digits, '-' or '_'",
            raw.id
        ));
    }
    let mut ids = HashSet::new();
    let mut tunnels = HashSet::new();
    let mut sites = Vec::new();
    for (i, s) in raw.sites.iter().enumerate() {
        let key = format!("network.sites[{i}]");
        if !ids.insert(s.id.clone()) {
            problems.push(format!("{key}.id: {:?} is listed twice", s.id));
        }
        if let Some(site) = site(&key, s, problems) {
            if let Some(t) = &site.wireguard {
                if !tunnels.insert(t.address) {
                    problems.push(format!(
                        "{key}.tunnel_address: {} is another site's too (each gateway needs its own address in the tunnel)",
                        t.address
                    ));
                }
            }
            sites.push(site);
        }
    }
    if !ids.contains(this_site) {
        problems.push(format!(
            "network.sites: this site ({this_site:?}, [site] id) is not listed"
        ));
    }
    if problems.len() != n {
        return None;
    }
    Some(Network {
        id: raw.id.clone(),
        sites,
    })
}

fn site(key: &str, s: &RawNetworkSite, problems: &mut Vec<String>) -> Option<NetworkSite> {
    let n = problems.len();
    if !SiteId::is_valid(&s.id) {
        problems.push(format!(
            "{key}.id: {:?} must be 1-64 letters, digits, '-' or '_'",
            s.id
        ));
    }
    let peer = host_port(&s.peer);
    if peer.is_none() {
        problems.push(format!(
            "{key}.peer: {:?} must be HOST:PORT (the site's peer API; [::1]:PORT for IPv6)",
            s.peer
        ));
    }
    let wireguard = tunnel(key, s, problems);
    if problems.len() != n {
        return None;
    }
    let (peer_host, peer_port) = peer?;
    Some(NetworkSite {
        id: s.id.clone(),
        name: s
            .name
            .clone()
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| s.id.clone()),
        peer_host,
        peer_port,
        wireguard,
    })
}

/// The three WireGuard keys of a site: all or none.
fn tunnel(key: &str, s: &RawNetworkSite, problems: &mut Vec<String>) -> Option<SiteTunnel> {
    let (endpoint, public_key, address) = match (
        &s.wireguard_endpoint,
        &s.wireguard_public_key,
        &s.tunnel_address,
    ) {
        (None, None, None) => return None,
        (Some(e), Some(k), Some(a)) => (e, k, a),
        _ => {
            problems.push(format!(
                "{key}: wireguard_endpoint, wireguard_public_key and tunnel_address go together (all three, or none)"
            ));
            return None;
        }
    };
    if host_port(endpoint).is_none() {
        problems.push(format!(
            "{key}.wireguard_endpoint: {endpoint:?} must be HOST:PORT"
        ));
    }
    if crate::ingress::wireguard::key_from_base64(public_key).is_err() {
        problems.push(format!(
            "{key}.wireguard_public_key: {public_key:?} is not a base64 WireGuard key"
        ));
    }
    let address = address
        .parse::<Ipv4Addr>()
        .map_err(|e| {
            problems.push(format!(
                "{key}.tunnel_address: {address:?} is not an IPv4 address: {e}"
            ))
        })
        .ok()?;
    Some(SiteTunnel {
        endpoint: endpoint.clone(),
        public_key: public_key.clone(),
        address,
    })
}

/// `HOST:PORT` (`[v6]:PORT` for IPv6) split; `None` when malformed.
pub fn host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains(':') && host.parse::<std::net::Ipv6Addr>().is_err() {
        return None;
    }
    Some((host.to_string(), port))
}

/// `[peer]`: needs `[network]` (whose sites it answers).
pub(super) fn peer(
    raw: &RawPeer,
    has_network: bool,
    base: &Path,
    problems: &mut Vec<String>,
) -> Option<PeerApi> {
    if !has_network {
        problems.push(
            "peer: the peer API answers the sites of [network]: add [network] and its [[network.sites]]"
                .into(),
        );
    }
    let listen = parse_addr("peer.listen", &raw.listen, problems);
    let allow = match &raw.allow {
        Some(a) => parse_nets("peer.allow", a, problems),
        None => ["0.0.0.0/0", "::/0"]
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect(),
    };
    Some(PeerApi {
        listen: listen?,
        allow,
        cert: resolve(base, &raw.cert),
        key: resolve(base, &raw.key),
    })
}
