//! The wg-quick configuration a WireGuard terminal imports (`terminal add --wireguard`,
//! art 12.2), and the choice of its tunnel address from the pool.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use time::OffsetDateTime;

use super::key_to_base64;

/// One site gateway a terminal's `.conf` names in a `[Peer]`.
#[derive(Clone)]
pub struct ConfPeer {
    /// The site's id (a comment).
    pub site: String,
    pub public_key: [u8; 32],
    /// The gateway's own address inside the tunnel (the peer's `AllowedIPs`, /32).
    pub address: Ipv4Addr,
    pub endpoint: String,
}

/// Everything a terminal's `NAME.conf` says.
#[derive(Clone)]
pub struct ClientConf<'a> {
    /// The terminal's name and its physician (comments only).
    pub terminal: &'a str,
    pub physician: &'a str,
    /// The site that issued it, and when (comments only).
    pub site: &'a str,
    pub issued: OffsetDateTime,
    /// The terminal's private key and its one tunnel address.
    pub private_key: [u8; 32],
    pub address: Ipv4Addr,
    /// The gateway's public key, its address inside the tunnel and its UDP endpoint.
    pub gateway_public_key: [u8; 32],
    pub gateway_address: Ipv4Addr,
    pub endpoint: &'a str,
    pub keepalive_secs: u16,
    /// The network's other site gateways (issue 14): one more `[Peer]` each, so that one
    /// terminal reaches every site.
    pub other_sites: Vec<ConfPeer>,
}

impl ClientConf<'_> {
    /// The file's text, as the official WireGuard clients import it.
    pub fn render(&self) -> String {
        let mut text = self.render_own();
        for p in &self.other_sites {
            text.push_str(&format!(
                "\n# Site {site}: open https://{gw}/ for its EMR.\n\
                 [Peer]\n\
                 PublicKey = {public}\n\
                 Endpoint = {endpoint}\n\
                 AllowedIPs = {gw}/32\n\
                 PersistentKeepalive = {keepalive}\n",
                site = p.site,
                gw = p.address,
                public = key_to_base64(&p.public_key),
                endpoint = p.endpoint,
                keepalive = self.keepalive_secs,
            ));
        }
        text
    }

    fn render_own(&self) -> String {
        format!(
            "# Seibo Net terminal {name} of physician {physician}, issued {issued} by site {site}.\n\
             # Import into the WireGuard client; then open https://{gw}/ in the browser.\n\
             [Interface]\n\
             PrivateKey = {private}\n\
             Address = {ip}/32\n\
             \n\
             [Peer]\n\
             PublicKey = {public_gw}\n\
             Endpoint = {endpoint}\n\
             AllowedIPs = {gw}/32\n\
             PersistentKeepalive = {keepalive}\n",
            name = self.terminal,
            physician = self.physician,
            issued = crate::ops::clock::rfc3339(self.issued),
            site = self.site,
            gw = self.gateway_address,
            private = key_to_base64(&self.private_key),
            ip = self.address,
            public_gw = key_to_base64(&self.gateway_public_key),
            endpoint = self.endpoint,
            keepalive = self.keepalive_secs,
        )
    }
}

/// The first address of `pool` that is neither its network nor broadcast address, nor the
/// gateway's own, nor `used` by a registered terminal; `None` when the pool is full.
pub fn free_address(
    pool: Ipv4Network,
    gateway: Ipv4Addr,
    used: &HashSet<Ipv4Addr>,
) -> Option<Ipv4Addr> {
    pool.iter()
        .filter(|ip| *ip != pool.network() && *ip != pool.broadcast() && *ip != gateway)
        .find(|ip| !used.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_address_skips_network_broadcast_gateway_and_used() {
        let pool: Ipv4Network = "10.77.0.0/30".parse().expect("pool");
        let gw = Ipv4Addr::new(10, 77, 0, 1);
        let mut used = HashSet::new();
        assert_eq!(
            free_address(pool, gw, &used),
            Some(Ipv4Addr::new(10, 77, 0, 2))
        );
        used.insert(Ipv4Addr::new(10, 77, 0, 2));
        assert_eq!(free_address(pool, gw, &used), None);
    }

    #[test]
    fn render_names_the_peer_and_the_interface() {
        let c = ClientConf {
            terminal: "pc-1",
            physician: "dr-a",
            site: "s",
            issued: time::macros::datetime!(2026-01-02 03:04:05 UTC),
            private_key: [1; 32],
            address: Ipv4Addr::new(10, 77, 0, 2),
            gateway_public_key: [2; 32],
            gateway_address: Ipv4Addr::new(10, 77, 0, 1),
            endpoint: "gw.example:51820",
            keepalive_secs: 25,
            other_sites: Vec::new(),
        };
        let text = c.render();
        assert!(text.starts_with(
            "# Seibo Net terminal pc-1 of physician dr-a, issued 2026-01-02T12:04:05+09:00 by site s.\n"
        ));
        assert!(text.contains("Address = 10.77.0.2/32\n"));
        assert!(text.contains(&format!("PrivateKey = {}\n", key_to_base64(&[1; 32]))));
        assert!(text.contains("AllowedIPs = 10.77.0.1/32\nPersistentKeepalive = 25\n"));
        assert_eq!(text.matches("[Peer]").count(), 1);
    }

    #[test]
    fn art_12_2_a_network_terminal_gets_one_peer_per_site_gateway() {
        let c = ClientConf {
            terminal: "pc-1",
            physician: "dr-a",
            site: "seiyo-hospital",
            issued: time::macros::datetime!(2026-01-02 03:04:05 UTC),
            private_key: [1; 32],
            address: Ipv4Addr::new(10, 77, 0, 2),
            gateway_public_key: [2; 32],
            gateway_address: Ipv4Addr::new(10, 77, 0, 1),
            endpoint: "gate.seiyo.example:51820",
            keepalive_secs: 25,
            other_sites: vec![ConfPeer {
                site: "nomura-clinic".into(),
                public_key: [3; 32],
                address: Ipv4Addr::new(10, 77, 0, 254),
                endpoint: "gate.nomura.example:51820".into(),
            }],
        };
        let text = c.render();
        assert_eq!(text.matches("[Interface]").count(), 1);
        assert_eq!(text.matches("[Peer]").count(), 2);
        assert!(text.contains(&format!(
            "[Peer]\nPublicKey = {}\nEndpoint = gate.nomura.example:51820\nAllowedIPs = 10.77.0.254/32\n",
            key_to_base64(&[3; 32])
        )));
        assert!(text.contains("AllowedIPs = 10.77.0.1/32\n"));
    }
}
