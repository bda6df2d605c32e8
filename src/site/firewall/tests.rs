use super::*;
use std::path::Path;

fn config(listeners: &str, upstream: &str, private: &str, metrics: Option<&str>) -> Config {
    let metrics = metrics
        .map(|m| format!("[metrics]\nlisten = \"{m}\"\n"))
        .unwrap_or_default();
    let text = format!(
        r#"
[site]
id = "test-site"

[ca]
cert = "ca.crt"
key = "ca.key"

{listeners}

[upstream]
url = "{upstream}"
private = [{private}]

{metrics}

[[route]]
path = "/patients/{{patient}}/{{category}}/**"
"#
    );
    match Config::parse(Path::new("/etc/seibo-gate/gate.toml"), &text) {
        Ok(c) => c,
        Err(e) => panic!("test config invalid: {e}\n{text}"),
    }
}

fn listener(name: &str, listen: &str, allow: &[&str]) -> String {
    let allow = allow
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
            "[[listener]]\nname = {name:?}\nlisten = {listen:?}\nallow = [{allow}]\ncert = \"s.crt\"\nkey = \"s.key\"\n"
        )
}

fn rules(c: &Config) -> String {
    match ruleset(c) {
        Ok(r) => r,
        Err(e) => panic!("ruleset: {e}"),
    }
}

/// Art 12.4: each listener's port is open to its own allow-list only, IPv4 and IPv6 in
/// separate sets, on the listener's own address.
#[test]
fn listener_port_open_to_its_allow_list_only() {
    let c = config(
        &listener(
            "internet",
            "[::]:443",
            &["198.51.100.0/24", "203.0.113.7/32", "2001:db8:10::/48"],
        ),
        "http://10.20.0.5:8080",
        "\"10.20.0.0/24\"",
        None,
    );
    let r = rules(&c);
    assert!(r.contains("set listener0_v4 {"), "{r}");
    assert!(
        r.contains("elements = { 198.51.100.0/24, 203.0.113.7/32 }"),
        "{r}"
    );
    assert!(r.contains("set listener0_v6 {"), "{r}");
    assert!(r.contains("elements = { 2001:db8:10::/48 }"), "{r}");
    assert!(
        r.contains("ip saddr @listener0_v4 tcp dport 443 accept"),
        "{r}"
    );
    assert!(
        r.contains("ip6 saddr @listener0_v6 tcp dport 443 accept"),
        "{r}"
    );
    assert!(r.contains("policy drop;"));
    assert_eq!(r.matches("policy drop;").count(), 3, "{r}");
    assert!(r.contains("ct state established,related accept"));
    assert!(r.contains("iif \"lo\" accept"));
    assert!(r.contains("oif \"lo\" accept"));
}

/// Art 12.4: a listener bound to one IPv4 address is opened on that address, for IPv4 only.
#[test]
fn listener_on_one_address_opens_that_address_and_family_only() {
    let c = config(
        &listener("clinics", "192.0.2.10:8443", &["198.51.100.0/24", "::/0"]),
        "http://10.20.0.5:8080",
        "\"10.20.0.0/24\"",
        None,
    );
    let r = rules(&c);
    assert!(
        r.contains("ip daddr 192.0.2.10 ip saddr @listener0_v4 tcp dport 8443 accept"),
        "{r}"
    );
    assert!(!r.contains("listener0_v6"), "{r}");
    assert!(!r.contains("ip6 saddr @listener"), "{r}");
}

/// Art 12.4: allow-all is written without a set; overlapping and host-bit networks are
/// normalised so nftables accepts the set.
#[test]
fn allow_all_and_overlapping_networks() {
    let c = config(
        &format!(
            "{}\n{}",
            listener("open", "0.0.0.0:443", &["0.0.0.0/0"]),
            listener(
                "narrow",
                "0.0.0.0:8443",
                &["10.1.2.3/8", "10.9.0.0/16", "::ffff:192.0.2.0/120"]
            )
        ),
        "http://10.20.0.5:8080",
        "\"10.20.0.0/24\"",
        None,
    );
    let r = rules(&c);
    assert!(r.contains("meta nfproto ipv4 tcp dport 443 accept"), "{r}");
    assert!(!r.contains("listener0_v4"), "{r}");
    assert!(r.contains("elements = { 10.0.0.0/8, 192.0.2.0/24 }"), "{r}");
    assert!(
        r.contains("ip saddr @listener1_v4 tcp dport 8443 accept"),
        "{r}"
    );
}

/// Art 12.4: a listener with only IPv4 sources stays closed to IPv6.
#[test]
fn family_without_sources_stays_closed() {
    let c = config(
        &listener("v4only", "[::]:443", &["198.51.100.0/24"]),
        "http://10.20.0.5:8080",
        "\"10.20.0.0/24\"",
        None,
    );
    let r = rules(&c);
    assert!(r.contains("no IPv6 source is allowed"), "{r}");
    assert!(!r.contains("ip6 saddr @listener"), "{r}");
}

/// Art 12.4: the metrics port is open from loopback only when bound to loopback, else from
/// its own /24 (or /64); an unspecified address is refused.
#[test]
fn metrics_scrape_network() {
    let l = listener("internet", "0.0.0.0:443", &["0.0.0.0/0"]);
    let lo = rules(&config(
        &l,
        "http://10.20.0.5:8080",
        "\"10.20.0.0/24\"",
        Some("127.0.0.1:9464"),
    ));
    assert!(!lo.contains("dport 9464"), "{lo}");
    assert!(lo.contains("metrics on 127.0.0.1:9464 (loopback)"), "{lo}");

    let v4 = rules(&config(
        &l,
        "http://10.20.0.5:8080",
        "\"10.20.0.0/24\"",
        Some("10.30.0.2:9464"),
    ));
    assert!(
        v4.contains("ip daddr 10.30.0.2 ip saddr 10.30.0.0/24 tcp dport 9464 accept"),
        "{v4}"
    );

    let v6 = rules(&config(
        &l,
        "http://10.20.0.5:8080",
        "\"10.20.0.0/24\"",
        Some("[2001:db8:30::2]:9464"),
    ));
    assert!(
        v6.contains("ip6 daddr 2001:db8:30::2 ip6 saddr 2001:db8:30::/64 tcp dport 9464 accept"),
        "{v6}"
    );

    let any = config(
        &l,
        "http://10.20.0.5:8080",
        "\"10.20.0.0/24\"",
        Some("0.0.0.0:9464"),
    );
    assert!(matches!(
        ruleset(&any),
        Err(FirewallError::MetricsUnspecified(_))
    ));
}

/// Art 12.5, 12.6: egress only to the private segment on the upstream port; DNS only for a
/// named upstream.
#[test]
fn egress_to_the_private_segment_and_dns_only_when_named() {
    let l = listener("internet", "0.0.0.0:443", &["0.0.0.0/0"]);
    let by_ip = rules(&config(
        &l,
        "http://10.20.0.5:8080",
        "\"10.20.0.0/24\", \"fd00:20::/64\"",
        None,
    ));
    assert!(by_ip.contains("set upstream_v4 {"), "{by_ip}");
    assert!(by_ip.contains("elements = { 10.20.0.0/24 }"), "{by_ip}");
    assert!(
        by_ip.contains("ip daddr @upstream_v4 tcp dport 8080 accept"),
        "{by_ip}"
    );
    assert!(
        by_ip.contains("ip6 daddr @upstream_v6 tcp dport 8080 accept"),
        "{by_ip}"
    );
    assert!(!by_ip.contains("dport 53"), "{by_ip}");

    let named = rules(&config(
        &l,
        "http://emr.seiyo.internal",
        "\"10.20.0.0/24\"",
        None,
    ));
    assert!(
        named.contains("ip daddr @upstream_v4 tcp dport 80 accept"),
        "{named}"
    );
    assert!(named.contains("udp dport 53 accept"), "{named}");
    assert!(named.contains("tcp dport 53 accept"), "{named}");
}

/// Names from the config cannot break out of a comment and add a rule.
#[test]
fn names_cannot_inject_rules() {
    let c = config(
        &listener(
            "x\ntcp dport 22 accept\n#",
            "0.0.0.0:443",
            &["198.51.100.0/24"],
        ),
        "http://10.20.0.5:8080",
        "\"10.20.0.0/24\"",
        None,
    );
    let r = rules(&c);
    assert!(!r.lines().any(|l| l.trim() == "tcp dport 22 accept"), "{r}");
}

/// Loading twice replaces the table: the ruleset deletes its own table first.
#[test]
fn reload_replaces_only_its_own_table() {
    let c = config(
        &listener("internet", "0.0.0.0:443", &["0.0.0.0/0"]),
        "http://10.20.0.5:8080",
        "\"10.20.0.0/24\"",
        None,
    );
    let r = rules(&c);
    assert!(r.contains("table inet seibo_gate\ndelete table inet seibo_gate\n"));
    assert!(!r.contains("flush ruleset"));
}

/// Art 12.2: the WireGuard UDP port is opened on its address (the gateway itself answers
/// registered keys only); on loopback nothing is added.
#[test]
fn art_12_2_wireguard_udp_port_is_opened() {
    let wg = |listen: &str| {
        format!(
                "{}\n[wireguard]\nlisten = \"{listen}\"\nprivate_key = \"wg.key\"\naddress = \"10.77.0.1\"\npool = \"10.77.0.0/24\"\nendpoint = \"gw.example.jp:51820\"\ncert = \"t.crt\"\nkey = \"t.key\"\n",
                listener("internet", "0.0.0.0:443", &["0.0.0.0/0"])
            )
    };
    let r = rules(&config(
        &wg("192.0.2.10:51820"),
        "http://10.20.0.5:8080",
        "\"10.20.0.0/24\"",
        None,
    ));
    assert!(
        r.contains("ip daddr 192.0.2.10 udp dport 51820 accept"),
        "{r}"
    );
    let r = rules(&config(
        &wg("[::]:51820"),
        "http://10.20.0.5:8080",
        "\"10.20.0.0/24\"",
        None,
    ));
    assert!(
        r.contains("meta nfproto ipv4 udp dport 51820 accept"),
        "{r}"
    );
    assert!(
        r.contains("meta nfproto ipv6 udp dport 51820 accept"),
        "{r}"
    );
    let r = rules(&config(
        &wg("127.0.0.1:51820"),
        "http://10.20.0.5:8080",
        "\"10.20.0.0/24\"",
        None,
    ));
    assert!(!r.contains("udp dport 51820"), "{r}");
}

/// Issue 15 (art 12.4): the liaison office's console port is open to the office LAN only.
#[test]
fn art_12_4_office_console_port_open_to_the_office_lan_only() {
    let l = format!(
        "{}\n[office]\nlisten = \"10.20.5.2:9443\"\nallow = [\"10.20.5.0/24\"]\n",
        listener("internet", "0.0.0.0:443", &["0.0.0.0/0"])
    );
    let c = config(&l, "http://10.20.0.5:8080", "\"10.20.0.0/16\"", None);
    let r = rules(&c);
    let line = r
        .lines()
        .find(|x| x.contains("tcp dport 9443"))
        .unwrap_or_else(|| panic!("no rule for the console port:\n{r}"));
    assert!(
        line.contains("ip daddr 10.20.5.2")
            && line.contains("ip saddr @listener2_v4")
            && line.ends_with("accept"),
        "{line}"
    );
    assert!(r.contains("listener \"office\" on 10.20.5.2:9443"), "{r}");
    let set = r
        .split("set listener2_v4")
        .nth(1)
        .and_then(|x| x.split('}').next())
        .unwrap_or_else(|| panic!("no set listener2_v4:\n{r}"));
    assert!(
        set.contains("10.20.5.0/24") && !set.contains("0.0.0.0/0"),
        "{set}"
    );
}

/// Art 12.5 (issue 13): with the regional registry, egress is opened to each etcd member's
/// client port only (an address: that address; a name: DNS and the port).
#[test]
fn registry_egress_to_each_etcd_member_only() {
    let mut c = config(
        &listener("clinics", "0.0.0.0:8443", &["10.30.0.0/24"]),
        "http://10.20.0.5:8080",
        "\"10.20.0.0/24\"",
        None,
    );
    assert!(!rules(&c).contains("regional registry"));
    c.registry.backend =
        crate::site::config::RegistryBackend::Etcd(crate::site::config::EtcdConfig {
            endpoints: vec![
                "https://10.20.0.7:2379".into(),
                "https://[fd00::7]:2379".into(),
                "https://etcd.seibo.example:2379".into(),
            ],
            prefix: "/seibo-net/".into(),
            ca: "ca".into(),
            cert: "c".into(),
            key: "k".into(),
        });
    let r = rules(&c);
    assert!(
        r.contains("ip daddr 10.20.0.7 tcp dport 2379 accept"),
        "{r}"
    );
    assert!(r.contains("ip6 daddr fd00::7 tcp dport 2379 accept"), "{r}");
    assert!(r.contains("etcd.seibo.example is a host name"), "{r}");
}
