//! `seibo-gate firewall`: an nftables ruleset for the gateway host, derived from the same
//! config the gateway runs with (art 12.4, 12.5), so the host firewall and the gateway's own
//! allow-lists cannot drift apart.
//!
//! What the ruleset allows, and nothing else (every base chain's policy is `drop`):
//!
//! * **input**: replies to established connections; loopback; the IPv6 neighbour-discovery
//!   messages without which IPv6 does not work at all; each listener's TCP port from that
//!   listener's `allow` networks only (IPv4 and IPv6 in separate sets; a listener bound to one
//!   address is opened on that address only; a listener on `[::]` serves both families); the
//!   metrics port from its scrape network (see below); the WireGuard UDP port (art 12.2) from
//!   anywhere, as the gateway answers registered keys only.
//! * **output**: replies; loopback; neighbour discovery; TCP to the upstream EMR's port inside
//!   `upstream.private` only; DNS (port 53, UDP and TCP) only when the upstream is named by a
//!   host name rather than an address.
//! * **forward**: nothing. The gateway is a proxy, never a router.
//!
//! The metrics scrape network: the config has no key for it, so it is derived from
//! `[metrics] listen`. On loopback nothing is opened (Prometheus runs on the host or scrapes
//! through a tunnel). On a specific address, the port is opened to that address's own /24
//! (IPv4) or /64 (IPv6): put the endpoint on the monitoring network, next to Prometheus. An
//! unspecified address (`0.0.0.0`, `[::]`) is refused: it would expose the metrics on every
//! interface and no scrape network can be derived from it.
//!
//! Not opened, on purpose (the ruleset's header says so too): remote management (SSH), time
//! synchronisation (NTP), DHCP. Add the rules your site needs to the printed ruleset before
//! loading it: in nftables a packet dropped by any base chain is dropped, so an `accept` in
//! another table cannot re-open what this one drops.
//!
//! Load with `nft -f FILE`; the ruleset first deletes its own table, so loading it again
//! replaces the previous version atomically and touches no other table.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use crate::site::config::{canonical_ip, Config, Upstream};

/// The nftables table the ruleset owns.
pub const TABLE: &str = "seibo_gate";

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error(
        "metrics.listen {0} is an unspecified address: bind the metrics endpoint to loopback or to one address on the monitoring network, so the firewall can open it to that network only"
    )]
    MetricsUnspecified(SocketAddr),
}

/// IPv4 and IPv6 networks, each normalised (host bits cleared), without networks contained in
/// another, sorted. `any` is true when the family's whole address space is allowed.
#[derive(Debug, Default, PartialEq, Eq)]
struct Families {
    v4: Vec<Ipv4Network>,
    v6: Vec<Ipv6Network>,
}

impl Families {
    fn v4_any(&self) -> bool {
        self.v4.iter().any(|n| n.prefix() == 0)
    }
    fn v6_any(&self) -> bool {
        self.v6.iter().any(|n| n.prefix() == 0)
    }
}

fn split(nets: &[IpNetwork]) -> Families {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for n in nets {
        match n {
            IpNetwork::V4(n) => v4.push(*n),
            IpNetwork::V6(n) => {
                // `::ffff:a.b.c.d/p` (p >= 96) is an IPv4 network in IPv6 clothing: the packet
                // on the wire is IPv4, so it belongs in the IPv4 set.
                match n.network().to_ipv4_mapped() {
                    Some(v4addr) if n.prefix() >= 96 => {
                        if let Ok(m) = Ipv4Network::new(v4addr, n.prefix() - 96) {
                            v4.push(m);
                        }
                    }
                    _ => v6.push(*n),
                }
            }
        }
    }
    let mut v4: Vec<Ipv4Network> = v4
        .into_iter()
        .filter_map(|n| Ipv4Network::new(n.network(), n.prefix()).ok())
        .collect();
    let mut v6: Vec<Ipv6Network> = v6
        .into_iter()
        .filter_map(|n| Ipv6Network::new(n.network(), n.prefix()).ok())
        .collect();
    v4.sort_by_key(|n| (n.prefix(), n.network()));
    v6.sort_by_key(|n| (n.prefix(), n.network()));
    let mut keep4: Vec<Ipv4Network> = Vec::new();
    for n in v4 {
        if !keep4.iter().any(|k| k.contains(n.network())) {
            keep4.push(n);
        }
    }
    let mut keep6: Vec<Ipv6Network> = Vec::new();
    for n in v6 {
        if !keep6.iter().any(|k| k.contains(n.network())) {
            keep6.push(n);
        }
    }
    keep4.sort_by_key(|n| n.network());
    keep6.sort_by_key(|n| n.network());
    Families {
        v4: keep4,
        v6: keep6,
    }
}

/// Text safe inside an nftables `#` comment: names come from the config and must not be able
/// to end the comment line and smuggle in a rule.
fn comment_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || " _-.:/@()[]".contains(c) {
                c
            } else {
                '?'
            }
        })
        .take(80)
        .collect()
}

fn set_block(out: &mut String, name: &str, ty: &str, elements: &[String]) {
    let _ = writeln!(out, "\tset {name} {{");
    let _ = writeln!(out, "\t\ttype {ty}");
    let _ = writeln!(out, "\t\tflags interval");
    let _ = writeln!(out, "\t\tauto-merge");
    let _ = writeln!(out, "\t\telements = {{ {} }}", elements.join(", "));
    let _ = writeln!(out, "\t}}");
    out.push('\n');
}

/// Which families a socket bound to `ip` receives: a specific address only its own family;
/// `0.0.0.0` IPv4 only; `[::]` both (Linux dual-stack sockets, `bindv6only=0`).
fn families_of(ip: IpAddr) -> (bool, bool) {
    match ip {
        IpAddr::V4(_) => (true, false),
        IpAddr::V6(v6) if v6.is_unspecified() => (true, true),
        IpAddr::V6(_) => (false, true),
    }
}

/// The rule lines being collected: named sets, and the `input` and `output` chains' own rules
/// (between each chain's fixed head and tail).
#[derive(Default)]
struct Rules {
    sets: String,
    input: String,
    output: String,
}

/// The printed nftables ruleset for this site. See the module documentation for what it opens.
pub fn ruleset(cfg: &Config) -> Result<String, FirewallError> {
    let mut rules = Rules::default();
    for (i, l) in cfg.listeners.iter().enumerate() {
        listener_rules(&mut rules, i, &l.name, l.listen, &l.allow);
    }
    if let Some(p) = &cfg.peer {
        listener_rules(&mut rules, cfg.listeners.len(), "peer", p.listen, &p.allow);
    }
    if let Some(o) = &cfg.office {
        // The liaison office's console: open to its allow-list (the office LAN) only.
        listener_rules(
            &mut rules,
            cfg.listeners.len() + 1,
            "office",
            o.listen,
            &o.allow,
        );
    }
    if let Some(wg) = &cfg.wireguard {
        wireguard_rules(&mut rules.input, wg.listen);
    }
    metrics_rules(&mut rules.input, cfg.metrics)?;
    egress_rules(&mut rules, &cfg.upstream);
    peer_egress_rules(&mut rules, cfg);
    registry_egress_rules(&mut rules, cfg);
    Ok(assemble(cfg, &rules))
}

/// Listeners (art 12.4): each port open to its allow-list only.
fn listener_rules(
    rules: &mut Rules,
    i: usize,
    name: &str,
    listen: SocketAddr,
    allow: &[IpNetwork],
) {
    let name = comment_safe(name);
    let port = listen.port();
    let ip = canonical_ip(listen.ip());
    if ip.is_loopback() {
        let _ = writeln!(
            rules.input,
            "\t# listener {name:?} ({listen}) is on loopback: covered by the loopback rule"
        );
        return;
    }
    let (want4, want6) = families_of(ip);
    let allow = split(allow);
    let _ = writeln!(
        rules.input,
        "\t# listener {name:?} on {listen}: its allow-list only"
    );
    if want4 {
        let daddr = match ip {
            IpAddr::V4(a) if !a.is_unspecified() => format!("ip daddr {a} "),
            _ => String::new(),
        };
        let elems: Vec<String> = allow.v4.iter().map(|n| n.to_string()).collect();
        let family = Family {
            nf: "ipv4",
            ip: "ip",
            addr: "ipv4_addr",
            name: "IPv4",
            suffix: "v4",
        };
        family_listener_rule(rules, &family, i, &daddr, port, allow.v4_any(), &elems);
    }
    if want6 {
        let daddr = match ip {
            IpAddr::V6(a) if !a.is_unspecified() => format!("ip6 daddr {a} "),
            _ => String::new(),
        };
        let elems: Vec<String> = allow.v6.iter().map(|n| n.to_string()).collect();
        let family = Family {
            nf: "ipv6",
            ip: "ip6",
            addr: "ipv6_addr",
            name: "IPv6",
            suffix: "v6",
        };
        family_listener_rule(rules, &family, i, &daddr, port, allow.v6_any(), &elems);
    }
}

/// How one address family is spelled in nftables.
struct Family {
    nf: &'static str,
    ip: &'static str,
    addr: &'static str,
    name: &'static str,
    suffix: &'static str,
}

/// One family's rule for a listener: open to all, closed, or open to a named set.
fn family_listener_rule(
    rules: &mut Rules,
    f: &Family,
    i: usize,
    daddr: &str,
    port: u16,
    any: bool,
    elems: &[String],
) {
    if any {
        let _ = writeln!(
            rules.input,
            "\t{daddr}meta nfproto {} tcp dport {port} accept",
            f.nf
        );
    } else if elems.is_empty() {
        let _ = writeln!(
            rules.input,
            "\t# no {} source is allowed: {} stays closed",
            f.name, f.name
        );
    } else {
        let set = format!("listener{i}_{}", f.suffix);
        set_block(&mut rules.sets, &set, f.addr, elems);
        let _ = writeln!(
            rules.input,
            "\t{daddr}{} saddr @{set} tcp dport {port} accept",
            f.ip
        );
    }
}

/// WireGuard (art 12.2): its UDP port from anywhere; the gateway itself ignores every datagram
/// that is not from a registered key (no answer at all).
fn wireguard_rules(input: &mut String, listen: SocketAddr) {
    let ip = canonical_ip(listen.ip());
    let port = listen.port();
    if ip.is_loopback() {
        let _ = writeln!(
            input,
            "\t# wireguard on {listen} is on loopback: covered by the loopback rule"
        );
        return;
    }
    let _ = writeln!(
        input,
        "\t# wireguard on {listen}: unknown keys get no answer from the gateway"
    );
    let (want4, want6) = families_of(ip);
    match ip {
        IpAddr::V4(a) if !a.is_unspecified() => {
            let _ = writeln!(input, "\tip daddr {a} udp dport {port} accept");
        }
        IpAddr::V6(a) if !a.is_unspecified() => {
            let _ = writeln!(input, "\tip6 daddr {a} udp dport {port} accept");
        }
        _ => {
            if want4 {
                let _ = writeln!(input, "\tmeta nfproto ipv4 udp dport {port} accept");
            }
            if want6 {
                let _ = writeln!(input, "\tmeta nfproto ipv6 udp dport {port} accept");
            }
        }
    }
}

/// Metrics: loopback, or the endpoint's own /24 or /64.
fn metrics_rules(input: &mut String, metrics: Option<SocketAddr>) -> Result<(), FirewallError> {
    let Some(m) = metrics else {
        let _ = writeln!(input, "\t# no metrics listener configured");
        return Ok(());
    };
    let ip = canonical_ip(m.ip());
    let port = m.port();
    if ip.is_loopback() {
        let _ = writeln!(
            input,
            "\t# metrics on {m} (loopback): covered by the loopback rule"
        );
        return Ok(());
    }
    if ip.is_unspecified() {
        return Err(FirewallError::MetricsUnspecified(m));
    }
    match ip {
        IpAddr::V4(a) => {
            let net = Ipv4Network::new(a, 24)
                .and_then(|n| Ipv4Network::new(n.network(), 24))
                .map(|n| n.to_string())
                .unwrap_or_else(|_| format!("{a}/32"));
            let _ = writeln!(input, "\t# metrics on {m}: scrapes from its own /24 only");
            let _ = writeln!(
                input,
                "\tip daddr {a} ip saddr {net} tcp dport {port} accept"
            );
        }
        IpAddr::V6(a) => {
            let net = Ipv6Network::new(a, 64)
                .and_then(|n| Ipv6Network::new(n.network(), 64))
                .map(|n| n.to_string())
                .unwrap_or_else(|_| format!("{a}/128"));
            let _ = writeln!(input, "\t# metrics on {m}: scrapes from its own /64 only");
            let _ = writeln!(
                input,
                "\tip6 daddr {a} ip6 saddr {net} tcp dport {port} accept"
            );
        }
    }
    Ok(())
}

/// Egress (art 12.5, 12.6): the upstream EMR in the private segment, and DNS if named.
fn egress_rules(rules: &mut Rules, up: &Upstream) {
    let private = split(&up.private);
    let _ = writeln!(
        rules.output,
        "\t# the upstream EMR {}: port {} inside upstream.private only",
        comment_safe(up.authority.as_str()),
        up.port
    );
    let v4: Vec<String> = private.v4.iter().map(|n| n.to_string()).collect();
    let v6: Vec<String> = private.v6.iter().map(|n| n.to_string()).collect();
    for (elems, any, nf, ip, set, ty) in [
        (
            &v4,
            private.v4_any(),
            "ipv4",
            "ip",
            "upstream_v4",
            "ipv4_addr",
        ),
        (
            &v6,
            private.v6_any(),
            "ipv6",
            "ip6",
            "upstream_v6",
            "ipv6_addr",
        ),
    ] {
        if elems.is_empty() {
            continue;
        }
        if any {
            let _ = writeln!(
                rules.output,
                "\tmeta nfproto {nf} tcp dport {} accept",
                up.port
            );
        } else {
            set_block(&mut rules.sets, set, ty, elems);
            let _ = writeln!(
                rules.output,
                "\t{ip} daddr @{set} tcp dport {} accept",
                up.port
            );
        }
    }
    if up.host.parse::<IpAddr>().is_err() {
        let _ = writeln!(
            rules.output,
            "\t# the upstream is a host name ({}): DNS lookups",
            comment_safe(&up.host)
        );
        rules
            .output
            .push_str("\tudp dport 53 accept\n\ttcp dport 53 accept\n");
    } else {
        let _ = writeln!(
            rules.output,
            "\t# the upstream is an address: no DNS is needed, none is allowed"
        );
    }
}

/// `audit query --network` (issue 14): out to the other sites' peer APIs, their port only.
fn peer_egress_rules(rules: &mut Rules, cfg: &Config) {
    let Some(network) = &cfg.network else {
        return;
    };
    for s in network.sites.iter().filter(|s| s.id != cfg.site.id) {
        let what = format!(
            "the peer API of site {} (audit query --network)",
            comment_safe(&s.id)
        );
        egress_to(rules, &what, &s.peer_host, s.peer_port);
    }
}

/// The regional registry (issue 13): out to every etcd member's client port.
fn registry_egress_rules(rules: &mut Rules, cfg: &Config) {
    let crate::site::config::RegistryBackend::Etcd(e) = &cfg.registry.backend else {
        return;
    };
    for ep in &e.endpoints {
        let Some((host, port)) = ep
            .strip_prefix("https://")
            .and_then(|a| a.rsplit_once(':'))
            .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
        else {
            continue;
        };
        let what = format!("the regional registry member {} (etcd)", comment_safe(ep));
        egress_to(rules, &what, host, port);
    }
}

/// One egress rule: TCP to `host`:`port` (an address), or DNS and the port when `host` is a
/// name.
fn egress_to(rules: &mut Rules, what: &str, host: &str, port: u16) {
    let _ = writeln!(rules.output, "\t# {what}");
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => {
            let _ = writeln!(rules.output, "\tip daddr {ip} tcp dport {port} accept");
        }
        Ok(IpAddr::V6(ip)) => {
            let _ = writeln!(rules.output, "\tip6 daddr {ip} tcp dport {port} accept");
        }
        Err(_) => {
            let _ = writeln!(
                rules.output,
                "\t# {} is a host name: DNS lookups, and its port to any address\n\tudp dport 53 accept\n\ttcp dport 53 accept\n\ttcp dport {port} accept",
                comment_safe(host)
            );
        }
    }
}

/// The whole file: header, the table with its sets and the three base chains.
fn assemble(cfg: &Config, rules: &Rules) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "#!/usr/sbin/nft -f\n\
         # nftables ruleset for seibo-gate site {:?}, derived from {}\n\
         # by `seibo-gate firewall` (art 12.4, 12.5). Load: nft -f FILE. Check: nft -c -f FILE.\n\
         #\n\
         # Every chain's policy is drop. NOT opened here: remote management (SSH), NTP, DHCP.\n\
         # If the host needs them, add rules to the chains below before loading: a packet\n\
         # dropped by this table is dropped, whatever other tables accept.\n",
        comment_safe(&cfg.site.id),
        comment_safe(&cfg.path.display().to_string()),
    );
    // Create-then-delete makes a reload replace the table atomically, first load included.
    let _ = writeln!(out, "table inet {TABLE}\ndelete table inet {TABLE}\n");
    let _ = writeln!(out, "table inet {TABLE} {{");
    out.push_str(&rules.sets);
    out.push_str(
        "\tchain input {\n\
         \t\ttype filter hook input priority filter; policy drop;\n\
         \t\tct state established,related accept\n\
         \t\tct state invalid drop\n\
         \t\tiif \"lo\" accept\n\
         \t\t# IPv6 cannot work without neighbour discovery\n\
         \t\ticmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert } ip6 hoplimit 255 accept\n\
         \t\ticmpv6 type mld-listener-query ip6 saddr fe80::/10 accept\n",
    );
    for line in rules.input.lines() {
        let _ = writeln!(out, "\t{line}");
    }
    out.push_str(
        "\t\tlimit rate 10/minute burst 5 packets log prefix \"seibo_gate input drop: \" level info\n\
         \t\tcounter\n\
         \t}\n\n",
    );
    out.push_str(
        "\tchain forward {\n\
         \t\t# the gateway is a proxy, never a router\n\
         \t\ttype filter hook forward priority filter; policy drop;\n\
         \t}\n\n",
    );
    out.push_str(
        "\tchain output {\n\
         \t\ttype filter hook output priority filter; policy drop;\n\
         \t\tct state established,related accept\n\
         \t\tct state invalid drop\n\
         \t\toif \"lo\" accept\n\
         \t\ticmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, mld-listener-report, mld2-listener-report } accept\n",
    );
    for line in rules.output.lines() {
        let _ = writeln!(out, "\t{line}");
    }
    out.push_str(
        "\t\tlimit rate 10/minute burst 5 packets log prefix \"seibo_gate output drop: \" level info\n\
         \t\tcounter\n\
         \t}\n\
         }\n",
    );
    out
}

#[cfg(test)]
mod tests;
