//! The sections a network site's `gate.toml` gets beside a single site's: `[registry]` (the
//! regional registry, keys exactly as issue 13 lists them), `[peer]` (the read-only peer API)
//! and `[network]` with one `[[network.sites]]` per site.

use crate::site::init::toml_str;

use super::{NetworkFile, SiteEntry};

/// `[registry]`, `[peer]` and `[network]` for site `site` of `nf`, its peer API bound at
/// `peer_listen`.
pub(super) fn sections(nf: &NetworkFile, peer_listen: &str) -> String {
    let mut s = registry_section(nf);
    s.push_str(&peer_section(peer_listen));
    s.push_str(&format!(
        "\n[network]\n# The regional network this site belongs to (issue 14): `audit query --network` asks\n# every site below; a WireGuard terminal's .conf has one [Peer] per site with WireGuard.\n# `seibo-gate site add` at the network's home appends a site here.\nid = {}\n",
        toml_str(&nf.id)
    ));
    for site in &nf.sites {
        s.push_str(&site_block(site));
    }
    s
}

fn registry_section(nf: &NetworkFile) -> String {
    let endpoints = nf
        .endpoints
        .iter()
        .map(|e| toml_str(e))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
[registry]
# The regional registry (art 6.2, 9.4): physicians, terminals, consents and sessions shared by
# every gateway of the network, in etcd under `prefix`. Client-certificate authentication
# with the credentials `site add` issued (`registry/`, the network's etcd CA).
backend = "etcd"
endpoints = [{endpoints}]
prefix = {prefix}
ca = "registry/etcd-ca.crt"
cert = "registry/gateway.crt"
key = "registry/gateway.key"
max_stale_secs = {stale}
"#,
        prefix = toml_str(&nf.prefix),
        stale = nf.max_stale_secs,
    )
}

fn peer_section(listen: &str) -> String {
    format!(
        r#"
[peer]
# The read-only peer API (art 12.8): the other sites' gateways ask it for this site's audit
# rows of a patient or a physician (`audit query --network`), and nothing else. Mutual TLS:
# only site-gateway certificates of the regional CA are accepted (a terminal's is refused).
listen = {listen}
cert = "peer/site.crt"
key = "peer/site.key"
# Source networks allowed to connect (default any: the certificate decides). Narrow it to
# the other sites' addresses, e.g. allow = ["198.51.100.20/32"].
"#,
        listen = toml_str(listen),
    )
}

/// One `[[network.sites]]` table.
pub fn site_block(s: &SiteEntry) -> String {
    let mut b = format!(
        "\n[[network.sites]]\nid = {}\nname = {}\n# Its peer API (the name its site-gateway certificate carries, and the port).\npeer = {}\n",
        toml_str(&s.id),
        toml_str(&s.name),
        toml_str(&s.peer)
    );
    if let (Some(e), Some(k), Some(a)) = (
        &s.wireguard_endpoint,
        &s.wireguard_public_key,
        &s.tunnel_address,
    ) {
        b.push_str(&format!(
            "# Its WireGuard ingress, as terminals' .conf files name it.\nwireguard_endpoint = {}\nwireguard_public_key = {}\ntunnel_address = {}\n",
            toml_str(e),
            toml_str(k),
            toml_str(a)
        ));
    }
    b
}
