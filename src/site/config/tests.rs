//! Config validation: valid and invalid fixtures, one by one; every error names its key.

use std::time::Duration;

use super::*;
use crate::policy::route::own::WHOAMI_PATH;
use crate::policy::route::{RouteSpec, RouteTable};

const VALID: &str = r#"
[site]
id = "seiyo-hospital"
contact = "地域連携室"

[ca]
cert = "ca/terminal-ca.crt"
key = "ca/terminal-ca.key"

[[listener]]
listen = "127.0.0.1:8443"
allow = ["192.0.2.0/24"]
cert = "tls/server.crt"
key = "tls/server.key"

[upstream]
url = "http://10.20.0.5:8080"
private = ["10.20.0.0/16"]

[[route]]
path = "/patients/{patient}/{category}/**"

[[route]]
path = "/static/**"
no_patient = true
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("/etc/seibo-gate/gate.toml"), text)
}

fn problems(text: &str) -> Vec<String> {
    match parse(text) {
        Err(ConfigError::Invalid { problems, .. }) => problems,
        Err(e) => vec![e.to_string()],
        Ok(_) => vec![],
    }
}

#[test]
fn valid_config_resolves_paths_beside_the_file() {
    let c = parse(VALID).unwrap();
    assert_eq!(
        c.ca.cert,
        PathBuf::from("/etc/seibo-gate/ca/terminal-ca.crt")
    );
    assert_eq!(c.state_dir, PathBuf::from("/etc/seibo-gate/state"));
    assert_eq!(
        c.admin_socket,
        PathBuf::from("/etc/seibo-gate/state/admin.sock")
    );
    assert_eq!(c.upstream.port, 8080);
    assert_eq!(c.routes.len(), 2);
    assert_eq!(c.path, PathBuf::from("/etc/seibo-gate/gate.toml"));
}

/// Art 12.6: an upstream outside the private segment is refused at load.
#[test]
fn art_12_6_upstream_outside_private_segment_is_refused() {
    let p = problems(&VALID.replace("10.20.0.5", "203.0.113.9"));
    assert!(
        p.iter()
            .any(|m| m.starts_with("upstream.url") && m.contains("art 12.6")),
        "{p:?}"
    );
}

#[test]
fn unknown_keys_are_refused_naming_them() {
    match parse(&VALID.replace("[upstream]", "[upstream]\nurll = \"x\"")) {
        Err(ConfigError::Syntax { message, .. }) => assert!(message.contains("urll"), "{message}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = VALID
        .replace("id = \"seiyo-hospital\"", "id = \"bad id!\"")
        .replace("127.0.0.1:8443", "not-an-address")
        .replace("192.0.2.0/24", "192.0.2.0/99")
        .replace("http://10.20.0.5:8080", "https://10.20.0.5/emr");
    let p = problems(&text);
    for key in [
        "site.id",
        "listener[0].listen",
        "listener[0].allow[0]",
        "upstream.url",
    ] {
        assert!(
            p.iter().any(|m| m.starts_with(key)),
            "{key} missing in {p:?}"
        );
    }
}

/// Art 8.2: a config without routes would refuse everything; it is an error, not a surprise.
#[test]
fn art_8_2_routes_are_required_and_validated() {
    let no_routes = VALID
        .split("[[route]]")
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(problems(&no_routes).iter().any(|m| m.starts_with("route:")));
    let bad = VALID.replace("{category}/**", "{category}/**/x");
    assert!(problems(&bad).iter().any(|m| m.starts_with("route:")));
}

#[test]
fn empty_private_segment_is_refused() {
    let p = problems(&VALID.replace("private = [\"10.20.0.0/16\"]", "private = []"));
    assert!(p.iter().any(|m| m.starts_with("upstream.private")), "{p:?}");
}

#[test]
fn mapped_ipv4_addresses_are_matched_as_ipv4() {
    let nets: Vec<IpNetwork> = vec!["192.0.2.0/24".parse().unwrap()];
    let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
    assert!(in_networks(&nets, mapped));
    assert!(!in_networks(&nets, "::ffff:198.51.100.1".parse().unwrap()));
}

/// Issue 11 items 3 and 5: `[upstream] strip_headers` and `[routes] patient_query_keys` are
/// validated at load, each bad entry named by its key and index; good ones take effect.
#[test]
fn art_12_7_strip_headers_and_art_8_2_patient_query_keys_are_validated() {
    let good = VALID.replace(
        "private = [\"10.20.0.0/16\"]\n",
        "private = [\"10.20.0.0/16\"]\nstrip_headers = [\"X-EMR-User\", \"x-emr-ctx-*\"]\n",
    ) + "\n[routes]\npatient_query_keys = [\"kanja_id\"]\n";
    let c = parse(&good).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.upstream.strip_headers.matches("X_EMR_USER"));
    assert!(c.upstream.strip_headers.matches("x-emr-ctx-patient"));
    assert!(c.upstream.strip_headers.matches("x-original-url"));
    assert_eq!(
        c.routes
            .resolve(&http::Method::GET, "/static/a?Kanja-ID=P1")
            .map_err(|e| e.reason()),
        Err("patient-parameter-on-no-patient-route")
    );
    assert!(c
        .routes
        .resolve(&http::Method::GET, "/static/a?pid=P1")
        .is_ok());

    let bad = VALID.replace(
        "private = [\"10.20.0.0/16\"]\n",
        "private = [\"10.20.0.0/16\"]\nstrip_headers = [\"ok\", \"*\"]\n",
    ) + "\n[routes]\npatient_query_keys = [\"pid\", \"p id\", \"PID\"]\n";
    let p = problems(&bad);
    assert!(
        p.iter()
            .any(|m| m.starts_with("upstream.strip_headers[1]:")),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|m| m.starts_with("routes.patient_query_keys[1]:")),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|m| m.starts_with("routes.patient_query_keys[2]:")),
        "{p:?}"
    );
    let unknown = VALID.to_string() + "\n[routes]\npatient_keys = [\"pid\"]\n";
    assert!(
        problems(&unknown)
            .iter()
            .any(|m| m.contains("patient_keys")),
        "{:?}",
        problems(&unknown)
    );
}

/// Issue 11 items 7, 8: the handshake budget and the refusal audit rate have defaults and are
/// validated, each problem naming its key.
#[test]
fn flood_limits_default_and_are_validated() {
    let c = parse(VALID).unwrap();
    assert_eq!(c.limits.flood, FloodLimits::default());
    let c = parse(&format!(
        "{VALID}\n[limits]\nmax_handshakes = 64\nmax_handshakes_per_source = 8\nrefusal_audit_rate = 0.5\nrefusal_audit_burst = 3\nrefusal_summary_interval_ms = 500\n"
    ))
    .unwrap();
    assert_eq!(c.limits.flood.max_handshakes, 64);
    assert_eq!(c.limits.flood.max_handshakes_per_source, 8);
    assert_eq!(c.limits.flood.refusal_audit_rate, 0.5);
    assert_eq!(c.limits.flood.refusal_audit_burst, 3);
    assert_eq!(
        c.limits.flood.refusal_summary_interval,
        Duration::from_millis(500)
    );
    let p = problems(&format!(
        "{VALID}\n[limits]\nmax_handshakes = 0\nmax_handshakes_per_source = 0\nrefusal_audit_rate = -1\nrefusal_audit_burst = 0\nrefusal_summary_interval_ms = 1\n"
    ));
    for key in [
        "limits.max_handshakes:",
        "limits.max_handshakes_per_source",
        "limits.refusal_audit_rate",
        "limits.refusal_audit_burst",
        "limits.refusal_summary_interval_ms",
    ] {
        assert!(
            p.iter().any(|m| m.starts_with(key)),
            "{key} missing in {p:?}"
        );
    }
    let p = problems(&format!(
        "{VALID}\n[limits]\nmax_handshakes = 10\nmax_handshakes_per_source = 11\n"
    ));
    assert!(
        p.iter()
            .any(|m| m.starts_with("limits.max_handshakes_per_source")),
        "{p:?}"
    );
}

/// Issue 11 item 6: `[auth] signin_attempts_per_minute` defaults to 20 and is checked at load,
/// the error naming the key.
#[test]
fn signin_attempts_per_minute_has_a_default_and_a_range() {
    assert_eq!(parse(VALID).unwrap().auth.signin_attempts_per_minute, 20);
    let with = |n: &str| format!("{VALID}\n[auth]\nsignin_attempts_per_minute = {n}\n");
    assert_eq!(
        parse(&with("30")).unwrap().auth.signin_attempts_per_minute,
        30
    );
    for bad in ["0", "6001"] {
        let p = problems(&with(bad));
        assert!(
            p.iter()
                .any(|m| m.starts_with("auth.signin_attempts_per_minute")),
            "{bad}: {p:?}"
        );
    }
}

fn table(specs: &[(&str, bool)]) -> RouteTable {
    let specs: Vec<RouteSpec> = specs
        .iter()
        .map(|(path, no_patient)| RouteSpec {
            path: path.to_string(),
            category: None,
            patient_query: None,
            no_patient: *no_patient,
            methods: None,
            max_body_bytes: None,
        })
        .collect();
    RouteTable::new(&specs).expect("valid routes")
}

fn emr() -> RouteTable {
    table(&[
        ("/patients/{patient}/{category}/**", false),
        ("/portal/**", true),
    ])
}

/// Issue 11 item 24: without `[site] home` the start page is the EMR's root when a route
/// allows it, else "who am I".
#[test]
fn home_defaults_to_the_emr_root_when_routed_else_whoami() {
    assert_eq!(resolve_home(&emr(), None).as_deref(), Ok(WHOAMI_PATH));
    let with_root = table(&[("/patients/{patient}/{category}/**", false), ("/", true)]);
    assert_eq!(resolve_home(&with_root, None).as_deref(), Ok("/"));
    assert_eq!(
        parse(VALID).map(|c| c.site.home).ok().as_deref(),
        Some(WHOAMI_PATH)
    );
}

/// Issue 11 item 24: a configured start page is a routed page without patient, written as
/// it is forwarded; every other one is a problem naming `site.home`.
#[test]
fn home_must_be_a_routed_page_without_patient() {
    let t = emr();
    for good in ["/portal/menu", "/portal/menu?tab=today", WHOAMI_PATH] {
        assert_eq!(resolve_home(&t, Some(good)).as_deref(), Ok(good));
    }
    for (bad, want) in [
        ("portal/menu", "NotAPath"),
        ("https://evil.example/", "NotAPath"),
        ("//evil.example/portal", "NotAPath"),
        ("/.seibo/logout", "OwnPage"),
        ("/.seibo/login", "OwnPage"),
        ("/admin", "NotRouted"),
        ("/", "NotRouted"),
        ("/patients/P001/basic", "NamesPatient"),
        ("/portal/../patients/P001/basic", "NamesPatient"),
        ("/portal/./menu", "NotCanonical"),
        ("/portal//menu", "NotCanonical"),
        ("/portal/%6Denu", "NotCanonical"),
        ("/portal/a%2Fb", "NotRouted"),
    ] {
        let err = resolve_home(&t, Some(bad)).expect_err(bad);
        assert!(
            format!("{err:?}").starts_with(want),
            "{bad}: {err:?} is not {want}"
        );
        assert!(err.to_string().starts_with("site.home: "), "{err}");
    }
    let p = problems(&VALID.replace("contact = ", "home = \"/static/./x\"\ncontact = "));
    assert!(
        p.iter()
            .any(|m| m.starts_with("site.home: \"/static/./x\" is forwarded as")),
        "{p:?}"
    );
}

/// Issue 15 (art 2, 12.4): the console is off unless `[office]` is given; then it has its own
/// address (never a physician listener's) and an allow-list that must name networks; the
/// certificate defaults to the first listener's.
#[test]
fn art_12_4_office_console_has_its_own_listener_and_allow_list() {
    assert!(parse(VALID).unwrap().office.is_none());
    let ok =
        format!("{VALID}\n[office]\nlisten = \"127.0.0.1:9443\"\nallow = [\"10.20.5.0/24\"]\n");
    let c = parse(&ok).unwrap();
    let o = c.office.expect("office");
    assert_eq!(o.listen.port(), 9443);
    assert_eq!(o.cert, PathBuf::from("/etc/seibo-gate/tls/server.crt"));
    assert_eq!(o.idle_timeout, Duration::from_secs(600));
    assert!(in_networks(&o.allow, "10.20.5.9".parse().unwrap()));
    assert!(!in_networks(&o.allow, "192.0.2.1".parse().unwrap()));
    let same =
        format!("{VALID}\n[office]\nlisten = \"127.0.0.1:8443\"\nallow = [\"10.20.5.0/24\"]\n");
    assert!(
        problems(&same)
            .iter()
            .any(|p| p.starts_with("office.listen")),
        "{:?}",
        problems(&same)
    );
    let empty = format!("{VALID}\n[office]\nlisten = \"127.0.0.1:9443\"\nallow = []\n");
    assert!(problems(&empty)
        .iter()
        .any(|p| p.starts_with("office.allow")));
    let missing = format!("{VALID}\n[office]\nlisten = \"127.0.0.1:9443\"\n");
    assert!(!problems(&missing).is_empty(), "allow is required");
    let bad = format!("{VALID}\n[office]\nlisten = \"127.0.0.1:9443\"\nallow = [\"office-lan\"]\n");
    assert!(problems(&bad).iter().any(|p| p.contains("office.allow[0]")));
    // A physician listener never serves /office/: no route may forward it.
    let routed = format!("{VALID}\n[[route]]\npath = \"/office/**\"\nno_patient = true\n");
    assert!(
        problems(&routed)
            .iter()
            .any(|p| p.contains("liaison office console's path")),
        "{:?}",
        problems(&routed)
    );
}

const NETWORK: &str = r#"
[peer]
listen = "0.0.0.0:8843"
cert = "peer/site.crt"
key = "peer/site.key"

[network]
id = "seibo-net"

[[network.sites]]
id = "seiyo-hospital"
name = "西予市民病院 / Seiyo City Hospital"
peer = "gate.seiyo-hospital.example.jp:8843"
wireguard_endpoint = "gate.seiyo-hospital.example.jp:51820"
wireguard_public_key = "ue8wpSau4xS6cSF/MUVds1aMmvsVoIXgVxxcb91VjH4="
tunnel_address = "10.77.0.1"

[[network.sites]]
id = "nomura-clinic"
name = "野村診療所 / Nomura Clinic"
peer = "[2001:db8::7]:8843"
"#;

#[test]
fn art_12_8_network_sites_and_peer_api_parse_into_typed_values() {
    let c = parse(&format!("{VALID}{NETWORK}")).expect("valid");
    let n = c.network.expect("[network]");
    assert_eq!(n.id, "seibo-net");
    let h = n.site("seiyo-hospital").expect("hospital");
    assert_eq!(
        (h.peer_host.as_str(), h.peer_port),
        ("gate.seiyo-hospital.example.jp", 8843)
    );
    assert_eq!(
        h.wireguard.as_ref().map(|w| w.address),
        Some(std::net::Ipv4Addr::new(10, 77, 0, 1))
    );
    let cl = n.site("nomura-clinic").expect("clinic");
    assert_eq!((cl.peer_host.as_str(), cl.peer_port), ("2001:db8::7", 8843));
    assert!(cl.wireguard.is_none());
    let p = c.peer.expect("[peer]");
    assert_eq!(p.cert, Path::new("/etc/seibo-gate/peer/site.crt"));
    assert_eq!(
        p.allow.len(),
        2,
        "default: any source, the certificate decides"
    );
}

#[test]
fn art_12_8_network_problems_are_named() {
    let bad = NETWORK
        .replace("id = \"nomura-clinic\"", "id = \"seiyo-hospital\"")
        .replace("peer = \"[2001:db8::7]:8843\"", "peer = \"no-port\"")
        .replace("tunnel_address = \"10.77.0.1\"", "");
    let p = problems(&format!("{VALID}{bad}"));
    for want in [
        "network.sites[1].id: \"seiyo-hospital\" is listed twice",
        "network.sites[1].peer: \"no-port\" must be HOST:PORT",
        "network.sites[0]: wireguard_endpoint, wireguard_public_key and tunnel_address go together",
    ] {
        assert!(p.iter().any(|x| x.contains(want)), "{want} in {p:#?}");
    }
    let other = NETWORK.replace("id = \"seiyo-hospital\"", "id = \"uwa-clinic\"");
    let p = problems(&format!("{VALID}{other}"));
    assert!(
        p.iter()
            .any(|x| x.contains("this site (\"seiyo-hospital\", [site] id) is not listed")),
        "{p:#?}"
    );
    let no_network = &NETWORK[..NETWORK.find("[network]").unwrap_or(0)];
    let p = problems(&format!("{VALID}{no_network}"));
    assert!(
        p.iter()
            .any(|x| x.contains("peer: the peer API answers the sites of [network]")),
        "{p:#?}"
    );
}
