//! Seibo Net as one network (issue 14, art 6.2–6.3, 12.8): `network init` at the hospital,
//! `site add` for the clinic, `init --join` at the clinic — two real gateways on loopback,
//! each with its sample EMR; one terminal certificate from the regional CA works at both;
//! `audit query --network` asks both over the peer API (real mutual TLS) and names a site
//! that does not answer; the peer API refuses a terminal's certificate; the regional CA
//! carries its name constraints.
//!
//! The registry backend is sled here (`[registry] backend = "sled"`): the regional registry
//! on etcd is issue 13's. The clinic starts from a copy of the hospital's registry (sled is
//! closed then), standing in for the shared one: the test is about the PKI, the bundle and
//! the peer API.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const HOSPITAL: &str = "seiyo-hospital";
const CLINIC: &str = "nomura-clinic";

/// Runs the binary with `args`; its output.
fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run seibo-gate")
}

fn run_ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(out.status.success(), "seibo-gate {args:?}: {}", show(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `[registry]` as `network init` wrote it (etcd), replaced by sled for this test.
fn registry_to_sled(config: &Path) {
    let text = std::fs::read_to_string(config).expect("read gate.toml");
    let start = text.find("\n[registry]\n").expect("a [registry] section");
    let end = start
        + text[start..]
            .find("max_stale_secs = 15\n")
            .expect("max_stale_secs in [registry]")
        + "max_stale_secs = 15\n".len();
    let section = &text[start..end];
    for key in [
        "backend = \"etcd\"",
        "prefix = \"/seibo-net/\"",
        "ca = \"registry/etcd-ca.crt\"",
        "cert = \"registry/gateway.crt\"",
        "key = \"registry/gateway.key\"",
    ] {
        assert!(section.contains(key), "[registry] lacks {key}: {section}");
    }
    let text = format!(
        "{}\n[registry]\nbackend = \"sled\"\n{}",
        &text[..start],
        &text[end..]
    );
    std::fs::write(config, text).expect("write gate.toml");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        let dst = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).expect("copy");
        }
    }
}

/// The two sites, serving.
struct Network {
    hospital: Gate,
    clinic: Gate,
    clinic_peer: u16,
    terminal: Terminal,
    _emrs: (SampleEmr, SampleEmr),
    _bundle: tempfile::TempDir,
}

/// `network init` for the hospital (its permitted names: `localhost` and 127.0.0.1, the
/// hosts given), `site add` for the clinic, `init --join` there.
fn create(
    emr: u16,
) -> (
    tempfile::TempDir,
    tempfile::TempDir,
    tempfile::TempDir,
    [u16; 4],
) {
    let hdir = tempfile::Builder::new()
        .prefix("seibo-net-hospital-")
        .tempdir()
        .expect("tempdir");
    let bundle = tempfile::Builder::new()
        .prefix("seibo-net-bundle-")
        .tempdir()
        .expect("tempdir");
    let cdir = tempfile::Builder::new()
        .prefix("seibo-net-clinic-")
        .tempdir()
        .expect("tempdir");
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let [hp, hpp, _, cpp] = ports;
    run_ok(&[
        "network",
        "init",
        "--dir",
        s(hdir.path()),
        "--network",
        "seibo-net",
        "--site",
        HOSPITAL,
        "--name",
        "西予市民病院 / Seiyo City Hospital",
        "--host",
        "localhost",
        "--host",
        "127.0.0.1",
        "--listen",
        &format!("127.0.0.1:{hp}"),
        "--peer-listen",
        &format!("127.0.0.1:{hpp}"),
        "--upstream",
        &format!("http://127.0.0.1:{emr}"),
        "--private",
        "127.0.0.0/8",
        "--metrics",
        "off",
        "--etcd",
        "https://127.0.0.1:2379",
    ]);
    let out = bundle.path().join("nomura");
    run_ok(&[
        "site",
        "add",
        "--config",
        s(&hdir.path().join("gate.toml")),
        "--site",
        CLINIC,
        "--name",
        "野村診療所 / Nomura Clinic",
        "--host",
        "localhost",
        "--host",
        "127.0.0.1",
        "--peer-listen",
        &format!("127.0.0.1:{cpp}"),
        "--out",
        s(&out),
    ]);
    (hdir, bundle, cdir, ports)
}

/// Both sites serving, each with its EMR; a physician and a terminal registered once at
/// the hospital; consent for the hospital's P001 and the clinic's P003.
fn network() -> Network {
    let emr_h = SampleEmr::start();
    let emr_c = SampleEmr::start();
    let (hdir, bundle, cdir, [hp, _, cp, cpp]) = create(emr_h.port);
    run_ok(&[
        "init",
        "--join",
        s(&bundle.path().join("nomura")),
        "--dir",
        s(cdir.path()),
        "--listen",
        &format!("127.0.0.1:{cp}"),
        "--upstream",
        &format!("http://127.0.0.1:{}", emr_c.port),
        "--private",
        "127.0.0.0/8",
        "--metrics",
        "off",
    ]);
    let mut hospital = Gate::from_site_dir(hdir, hp);
    let mut clinic = Gate::from_site_dir(cdir, cp);
    for g in [&hospital, &clinic] {
        registry_to_sled(&g.config);
        g.terminal_credential_only();
    }
    hospital.add_physician("dr-saiyo");
    let terminal = hospital.add_terminal("dr-saiyo", "saiyo-pc");
    hospital.grant("P001", today_jst());
    // The regional registry's stand-in (see the module doc).
    copy_dir(
        &hospital.path("state/registry"),
        &clinic.path("state/registry"),
    );
    clinic.grant("P003", today_jst());
    hospital.start();
    clinic.start();
    Network {
        hospital,
        clinic,
        clinic_peer: cpp,
        terminal,
        _emrs: (emr_h, emr_c),
        _bundle: bundle,
    }
}

/// Art 6.2: registered once at the liaison office — the clinic's site is made from the
/// hospital's bundle (no regional CA key in it), lists both sites, and the terminal
/// certificate issued at the hospital is accepted by both gateways under each one's policy.
#[test]
fn art_6_2_network_init_site_add_join_one_terminal_certificate_works_at_both_sites() {
    let n = network();
    // The bundle carries the regional CA certificate, never its key.
    assert!(n.hospital.path("ca/terminal-ca.key").exists());
    assert!(!n.clinic.path("ca/terminal-ca.key").exists());
    assert_eq!(
        read_bytes(&n.hospital.ca()),
        read_bytes(&n.clinic.ca()),
        "one regional CA is every gateway's client CA"
    );
    for f in [
        "tls/server.key",
        "peer/site.key",
        "registry/gateway.key",
        "registry/gateway.crt",
        "registry/etcd-ca.crt",
        "site.toml",
    ] {
        assert!(n.clinic.path(f).exists(), "the clinic's site lacks {f}");
    }
    let clinic_cfg = std::fs::read_to_string(&n.clinic.config).expect("read");
    assert!(clinic_cfg.contains("id = \"nomura-clinic\"\nname = \"野村診療所 / Nomura Clinic\""));
    for site in [HOSPITAL, CLINIC] {
        assert!(
            clinic_cfg.contains(&format!("[[network.sites]]\nid = \"{site}\"")),
            "{clinic_cfg}"
        );
        let hospital_cfg = std::fs::read_to_string(&n.hospital.config).expect("read");
        assert!(
            hospital_cfg.contains(&format!("[[network.sites]]\nid = \"{site}\"")),
            "site add appends the clinic at the home: {hospital_cfg}"
        );
    }

    let at_h = n
        .hospital
        .curl(Some(&n.terminal), "/patients/P001/labs", &[]);
    assert_eq!(at_h.status, Some(200), "{at_h:?}");
    let at_c = n.clinic.curl(Some(&n.terminal), "/patients/P003/labs", &[]);
    assert_eq!(at_c.status, Some(200), "{at_c:?}");
    assert!(
        at_c.body
            .contains("<th>x-seibo-site</th><td>nomura-clinic</td>"),
        "the clinic's gateway forwarded it: {at_c:?}"
    );
    // Each site's policy still applies: no consent at the clinic for P002.
    let refused = n.clinic.curl(Some(&n.terminal), "/patients/P002/labs", &[]);
    assert_eq!(refused.status, Some(403), "{refused:?}");
}

fn network_query(g: &Gate) -> Output {
    g.cli(&[
        "audit",
        "query",
        "--network",
        "--patient",
        "seiyo-hospital:P001",
        "--patient",
        "nomura-clinic:P003",
        "--json",
    ])
}

fn rows(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// Art 12.8: "who viewed this patient" for the whole network — the rows of both sites,
/// sorted by time, each naming its site; with the clinic stopped, the clinic is named as
/// not answering and the exit status is 69.
#[test]
fn art_12_8_audit_query_network_merges_both_sites_and_names_a_site_that_did_not_answer() {
    let mut n = network();
    for (g, path) in [
        (&n.hospital, "/patients/P001/labs"),
        (&n.clinic, "/patients/P003/labs"),
        (&n.hospital, "/patients/P001/basic"),
    ] {
        assert_eq!(g.curl(Some(&n.terminal), path, &[]).status, Some(200));
    }
    let out = network_query(&n.hospital);
    assert!(out.status.success(), "{}", show(&out));
    let rows = rows(&out);
    let views: Vec<(&str, &str, &str)> = rows
        .iter()
        .filter(|r| r["ingress"] == "mtls")
        .map(|r| {
            (
                r["site"].as_str().unwrap_or(""),
                r["patient"].as_str().unwrap_or(""),
                r["path"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        views,
        vec![
            (HOSPITAL, "P001", "/patients/P001/labs"),
            (CLINIC, "P003", "/patients/P003/labs"),
            (HOSPITAL, "P001", "/patients/P001/basic"),
        ],
        "both sites' views, merged by time: {rows:#?}"
    );
    let times: Vec<&str> = rows
        .iter()
        .map(|r| r["time"].as_str().unwrap_or(""))
        .collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted, "sorted by time (one offset, +09:00)");
    // The same from the clinic's side.
    let from_clinic = network_query(&n.clinic);
    assert!(from_clinic.status.success(), "{}", show(&from_clinic));
    assert_eq!(
        self::rows(&from_clinic)
            .iter()
            .filter(|r| r["ingress"] == "mtls")
            .count(),
        3
    );
    // Each site audited the other's query of its log (ingress "peer", the asker in "cn").
    let peer_rows: Vec<serde_json::Value> = n
        .clinic
        .audit_rows()
        .into_iter()
        .filter(|r| r["ingress"] == "peer")
        .collect();
    assert!(
        peer_rows
            .iter()
            .any(|r| r["cn"] == HOSPITAL && r["decision"] == "allow"),
        "{peer_rows:#?}"
    );

    assert!(n.clinic.stop(), "the clinic's gateway stops");
    let out = network_query(&n.hospital);
    assert_eq!(out.status.code(), Some(69), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("site nomura-clinic (野村診療所 / Nomura Clinic")
            && stderr.contains("DID NOT ANSWER")
            && stderr.contains("INCOMPLETE: 1 of 2 sites asked did not answer (nomura-clinic)"),
        "{stderr}"
    );
    let left = self::rows(&out);
    assert!(
        left.iter()
            .filter(|r| r["ingress"] == "mtls")
            .all(|r| r["site"] == HOSPITAL)
            && left.iter().filter(|r| r["ingress"] == "mtls").count() == 2,
        "the hospital's rows are still printed: {left:#?}"
    );
}

/// Art 12.8: the peer API is for site gateways only and answers audit queries only — a
/// terminal certificate of the same regional CA is refused at the handshake; the hospital's
/// site-gateway certificate gets the clinic's rows, and a patient page is not served.
#[test]
fn art_12_8_peer_api_refuses_a_terminal_certificate_and_serves_audit_queries_only() {
    let n = network();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let ca = n.hospital.ca();
        let terminal = client_config(&ca, Some(&n.terminal));
        let alert = refusal_at_handshake(n.clinic_peer, terminal.clone(), Duration::from_secs(5))
            .await
            .expect("a terminal's certificate is refused at the handshake");
        assert!(alert.contains("alert"), "refused with a TLS alert: {alert}");
        let r = get_once(n.clinic_peer, terminal, "/.seibo/peer/audit?patient=P003").await;
        assert!(
            r.is_err(),
            "a terminal's certificate must not reach the peer API: {r:?}"
        );
        let none = client_config(&ca, None);
        assert!(
            get_once(n.clinic_peer, none, "/.seibo/peer/audit?patient=P003")
                .await
                .is_err()
        );

        let site_gateway = Terminal {
            name: "seiyo-hospital gateway".into(),
            cert: n.hospital.path("peer/site.crt"),
            key: n.hospital.path("peer/site.key"),
        };
        let cfg: Arc<rustls::ClientConfig> = client_config(&ca, Some(&site_gateway));
        assert!(
            refusal_at_handshake(n.clinic_peer, cfg.clone(), Duration::from_millis(500))
                .await
                .is_err(),
            "a site gateway's certificate is accepted"
        );
        let ok = get_once(
            n.clinic_peer,
            cfg.clone(),
            "/.seibo/peer/audit?patient=P003",
        )
        .await
        .expect("the hospital's gateway asks the clinic");
        assert_eq!(ok.status, 200, "{ok:?}");
        let page = get_once(n.clinic_peer, cfg.clone(), "/patients/P003/labs")
            .await
            .expect("an answer");
        assert_eq!(page.status, 404, "{page:?}");
        let all = get_once(n.clinic_peer, cfg, "/.seibo/peer/audit")
            .await
            .expect("an answer");
        assert_eq!(
            all.status, 400,
            "the whole log is never handed out: {all:?}"
        );
    });
    let refusals: Vec<serde_json::Value> = n
        .clinic
        .audit_rows()
        .into_iter()
        .filter(|r| r["ingress"] == "peer" && r["decision"] == "deny")
        .collect();
    assert_eq!(refusals.len(), 2, "{refusals:#?}");

    // A renewed site-gateway certificate is served after SIGHUP, without a restart.
    let ca = seibo_gate::site::pki::Ca::load(
        &n.hospital.path("ca/terminal-ca.crt"),
        &n.hospital.path("ca/terminal-ca.key"),
    )
    .expect("the regional CA");
    for f in ["peer/site.crt", "peer/site.key"] {
        std::fs::rename(n.clinic.path(f), n.clinic.path(&format!("{f}.old"))).expect("move");
    }
    let renewed = ca
        .issue_site_gateway(
            CLINIC,
            &["localhost".into(), "127.0.0.1".into()],
            &n.clinic.path("peer/site.crt"),
            &n.clinic.path("peer/site.key"),
        )
        .expect("renew");
    let pid = n.clinic.pid().expect("running").to_string();
    run_ok_cmd("kill", &["-HUP", &pid]);
    let served_serial = || -> Option<String> {
        let cfg = client_config(&n.hospital.ca(), None);
        rt.block_on(async {
            let tls = tls_connect(n.clinic_peer, cfg).await.ok()?;
            let leaf = tls.get_ref().1.peer_certificates()?.first()?.clone();
            seibo_gate::site::pki::cert_info(leaf.as_ref())
                .ok()
                .map(|i| i.serial)
        })
    };
    let start = std::time::Instant::now();
    while served_serial().as_deref() != Some(renewed.serial.as_str()) {
        assert!(
            start.elapsed() < START_LIMIT,
            "the renewed certificate is not served after SIGHUP:\n{}",
            n.clinic.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run_ok_cmd(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect("run");
    assert!(out.status.success(), "{cmd} {args:?}: {}", show(&out));
}

/// Art 6.2: the regional CA that physicians install carries name constraints (read with
/// x509-parser): it vouches for the sites' names and the WireGuard network only; a server
/// certificate it signs for another web site fails verification, and `site add` refuses a
/// host outside them.
#[test]
fn art_6_2_regional_ca_carries_name_constraints_and_cannot_vouch_for_other_sites() {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::{FromDer, X509Certificate};

    let (hdir, bundle, _cdir, [.., cpp]) = create(1);
    let ca_path = hdir.path().join("ca/terminal-ca.crt");
    let der = seibo_gate::site::pki::load_certs(&ca_path).expect("CA");
    let (_, cert) = X509Certificate::from_der(der[0].as_ref()).expect("X.509");
    let ext = cert
        .extensions()
        .iter()
        .find(|e| matches!(e.parsed_extension(), ParsedExtension::NameConstraints(_)))
        .expect("the regional CA has a name constraints extension");
    assert!(ext.critical, "name constraints are critical");
    let ParsedExtension::NameConstraints(nc) = ext.parsed_extension() else {
        unreachable!("matched above")
    };
    let permitted: Vec<String> = nc
        .permitted_subtrees
        .iter()
        .flatten()
        .map(|s| match &s.base {
            GeneralName::DNSName(d) => format!("DNS:{d}"),
            GeneralName::IPAddress(b) => format!("IP:{b:?}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        permitted,
        vec![
            "DNS:localhost".to_string(),
            format!("IP:{:?}", [127u8, 0, 0, 1, 255, 255, 255, 255]),
            format!("IP:{:?}", [10u8, 77, 0, 0, 255, 255, 0, 0]),
        ]
    );
    assert!(nc.excluded_subtrees.is_none());

    // A certificate the CA signs for another web site is refused by a verifier trusting it.
    let ca = seibo_gate::site::pki::Ca::load(&ca_path, &hdir.path().join("ca/terminal-ca.key"))
        .expect("load CA");
    let scratch = tempfile::tempdir().expect("tempdir");
    let verify = |name: &str| {
        let (crt, key) = (
            scratch.path().join(format!("{name}.crt")),
            scratch.path().join(format!("{name}.key")),
        );
        ca.issue_server(&[name.to_string()], &crt, &key)
            .expect("the CA signs (the constraint binds the verifier)");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der[0].clone()).expect("root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let v =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("verifier");
        let chain = seibo_gate::site::pki::load_certs(&crt).expect("chain");
        use rustls::client::danger::ServerCertVerifier;
        v.verify_server_cert(
            &chain[0],
            &chain[1..],
            &rustls_pki_types::ServerName::try_from(name.to_string()).expect("name"),
            &[],
            rustls_pki_types::UnixTime::now(),
        )
        .map(|_| ())
    };
    assert!(verify("localhost").is_ok(), "inside the constraints");
    let outside = verify("www.example.com");
    assert!(
        matches!(outside, Err(rustls::Error::InvalidCertificate(_))),
        "outside the constraints: {outside:?}"
    );

    let out = run(&[
        "site",
        "add",
        "--config",
        s(&hdir.path().join("gate.toml")),
        "--site",
        "elsewhere",
        "--host",
        "www.example.com",
        "--peer-listen",
        &format!("127.0.0.1:{cpp}"),
        "--out",
        s(&bundle.path().join("elsewhere")),
    ]);
    assert_eq!(out.status.code(), Some(64), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("outside the regional CA's name constraints"),
        "{}",
        show(&out)
    );
    assert!(!bundle.path().join("elsewhere").exists());
}

/// The example configs tell the truth (issue 14): the two sites of Seibo Net by their names,
/// each listing both; every source network a hospital listener allows is the clinic's (or the
/// hospital's own LAN) — no clinic outside the network; the peer APIs allow each other only;
/// and nowhere in the repository's text is the hospital misnamed.
#[test]
fn art_6_2_example_configs_name_the_two_sites_and_allow_no_clinic_outside_the_network() {
    use seibo_gate::site::config::Config;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let load = |rel: &str| Config::load(&root.join(rel)).expect("example config loads");
    let h = load("config/seiyo-hospital.toml");
    let c = load("config/nomura-clinic.toml");
    assert_eq!(h.site.name, "西予市民病院 / Seiyo City Hospital");
    assert_eq!(c.site.name, "野村診療所 / Nomura Clinic");
    for cfg in [&h, &c] {
        let n = cfg.network.as_ref().expect("[network]");
        let ids: Vec<&str> = n.sites.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, [HOSPITAL, CLINIC]);
    }
    let site_addr = |cfg: &Config, id: &str| -> std::net::IpAddr {
        let n = cfg.network.as_ref().expect("[network]");
        n.site(id)
            .and_then(|s| s.peer_host.parse().ok())
            .expect("an address")
    };
    let clinic_addr = site_addr(&h, CLINIC);
    let hospital_lan: ipnetwork::IpNetwork = "10.10.0.0/16".parse().expect("net");
    for l in &h.listeners {
        for net in &l.allow {
            let clinic_range = net.contains(clinic_addr)
                || matches!(net, ipnetwork::IpNetwork::V6(v6) if v6.to_string() == "2001:db8:51::/48");
            assert!(
                clinic_range || *net == hospital_lan,
                "hospital listener {} allows {net}: neither the Nomura Clinic nor the hospital LAN",
                l.name
            );
        }
    }
    let hp = h.peer.as_ref().expect("[peer]");
    assert!(hp
        .allow
        .iter()
        .all(|n| n.contains(clinic_addr) || n.is_ipv6()));
    let cp = c.peer.as_ref().expect("[peer]");
    let hospital_addr = site_addr(&c, HOSPITAL);
    assert!(cp
        .allow
        .iter()
        .all(|n| n.contains(hospital_addr) || n.is_ipv6()));

    let mut texts = vec![root.join("README.md")];
    for dir in ["config", "docs", "certs"] {
        for e in std::fs::read_dir(root.join(dir)).expect("dir").flatten() {
            texts.push(e.path());
        }
    }
    for p in texts {
        let t = std::fs::read_to_string(&p).unwrap_or_default();
        assert!(!t.contains("西陽"), "{} misnames 西予市民病院", p.display());
        assert!(
            !t.contains("野村医院"),
            "{} misnames 野村診療所",
            p.display()
        );
    }
}

/// Art 12.8 and issue 15: the liaison office's disclosure report on the hospital's console asks
/// every site of the network (the patient's id at each: this site's, and `SITE:ID` links),
/// lists both sites' views with their site, and names a site that does not answer on the
/// report instead of leaving its rows out silently.
#[test]
fn art_12_8_office_disclosure_report_covers_every_site_and_names_a_silent_one() {
    let mut n = network();
    for (g, path) in [
        (&n.hospital, "/patients/P001/labs"),
        (&n.clinic, "/patients/P003/labs"),
    ] {
        assert_eq!(g.curl(Some(&n.terminal), path, &[]).status, Some(200));
    }
    // The console at the hospital, and a staff account made there.
    assert!(n.hospital.stop());
    let office = free_port();
    let mut text = std::fs::read_to_string(&n.hospital.config).expect("gate.toml");
    text.push_str(&format!(
        "\n[office]\nlisten = \"127.0.0.1:{office}\"\nallow = [\"127.0.0.0/8\"]\n"
    ));
    std::fs::write(&n.hospital.config, text).expect("gate.toml");
    n.hospital.start();
    assert!(wait_for_tcp(office, Duration::from_secs(20)));
    let dir = n.hospital.path("staff");
    let out = n.hospital.ok(&[
        "staff",
        "add",
        "--id",
        "renkei-1",
        "--name",
        "連携室",
        "--role",
        "clerk",
        "--out",
        s(&dir),
    ]);
    let value = |marker: &str| {
        out.lines()
            .find(|l| l.contains(marker))
            .and_then(|l| l.rsplit_once(": "))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| panic!("{marker} in {out}"))
    };
    let staff = Terminal {
        name: "renkei-1".into(),
        cert: value("certificate:").into(),
        key: value("private key:").into(),
    };
    let otp = value("one-time password");
    let jar = n.hospital.path("jar.txt");
    let get = |path: &str, extra: &[&str]| {
        let mut args = vec!["-c", s(&jar), "-b", s(&jar)];
        args.extend_from_slice(extra);
        curl(office, &n.hospital.ca(), Some(&staff), path, &args)
    };
    let csrf_of = |body: &str| {
        let at = body.find("name=\"csrf\" value=\"").expect("csrf field") + 19;
        body[at..at + 64].to_string()
    };
    let r = get("/office/login", &[]);
    let c = format!("csrf={}", csrf_of(&r.body));
    let pw = format!("password={otp}");
    let r = get(
        "/office/login",
        &[
            "--data-urlencode",
            "id=renkei-1",
            "--data-urlencode",
            &pw,
            "--data-urlencode",
            &c,
        ],
    );
    assert_eq!(r.status, Some(303), "{r:?}");
    let r = get("/office/password", &[]);
    let c = format!("csrf={}", csrf_of(&r.body));
    let cur = format!("current={otp}");
    let r = get(
        "/office/password",
        &[
            "--data-urlencode",
            &cur,
            "--data-urlencode",
            "new=Renkei-Shitsu-2026!",
            "--data-urlencode",
            &c,
        ],
    );
    assert_eq!(r.status, Some(303), "{r:?}");

    let report = "/office/views?patient=P001&links=nomura-clinic%3AP003";
    let r = get(report, &[]);
    assert_eq!(r.status, Some(200), "{r:?}");
    let table = r.body.split("id=\"views\"").nth(1).unwrap_or("");
    let rows: Vec<&str> = table.split("<tr>").skip(2).collect();
    assert!(
        rows.iter()
            .any(|x| x.contains(HOSPITAL) && x.contains("saiyo-pc") && x.contains("viewed (200)"))
            && rows.iter().any(|x| x.contains(CLINIC)
                && x.contains("saiyo-pc")
                && x.contains("viewed (200)")),
        "both sites' views on the report: {table}"
    );
    assert!(r.body.contains("ネットワークの全施設"), "{}", r.body);
    assert!(!r.body.contains("did not answer"), "{}", r.body);

    assert!(n.clinic.stop(), "the clinic's gateway stops");
    let r = get(report, &[]);
    assert_eq!(r.status, Some(200), "{r:?}");
    assert!(
        r.body
            .contains("site nomura-clinic did not answer; its rows are missing"),
        "{}",
        r.body
    );
    let csv = get(
        "/office/views.csv?patient=P001&links=nomura-clinic%3AP003",
        &[],
    );
    assert!(
        csv.body.contains("# ") && csv.body.contains("nomura-clinic did not answer"),
        "{}",
        csv.body
    );
}

/// `curl` with a cookie jar: a POST of `form` (or a GET when empty) on `port`.
fn curl_jar(port: u16, ca: &Path, t: &Terminal, jar: &Path, path: &str, form: &str) -> CurlReply {
    let jar = s(jar);
    let mut extra = vec!["-c", jar, "-b", jar];
    if !form.is_empty() {
        extra.extend(["--data", form]);
    }
    curl(port, ca, Some(t), path, &extra)
}

fn header<'a>(r: &'a CurlReply, name: &str) -> &'a str {
    r.headers
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or("")
        .trim()
}

/// Art 6.2–6.3: registered once at the hospital's liaison office — over the regional registry
/// (a real three-member etcd cluster whose CA is the network's etcd CA from `network init`, the
/// gateways using the etcd credentials `network init` and `site add` issued), the physician's
/// ID and password and the terminal's certificate, issued and set at the hospital, reach the
/// clinic's EMR; nothing was registered at the clinic.
#[test]
fn art_6_2_registered_once_at_the_hospital_the_terminal_and_password_reach_the_clinic() {
    let emr_h = SampleEmr::start();
    let emr_c = SampleEmr::start();
    let (hdir, bundle, cdir, [hp, _, cp, _]) = create(emr_h.port);
    let cluster = common::etcd::EtcdCluster::start_with_ca(
        3,
        &hdir.path().join("network/etcd-ca.crt"),
        &hdir.path().join("network/etcd-ca.key"),
    );
    run_ok(&[
        "init",
        "--join",
        s(&bundle.path().join("nomura")),
        "--dir",
        s(cdir.path()),
        "--listen",
        &format!("127.0.0.1:{cp}"),
        "--upstream",
        &format!("http://127.0.0.1:{}", emr_c.port),
        "--private",
        "127.0.0.0/8",
        "--metrics",
        "off",
    ]);
    let mut hospital = Gate::from_site_dir(hdir, hp);
    let mut clinic = Gate::from_site_dir(cdir, cp);
    let endpoints = cluster
        .endpoints()
        .iter()
        .map(|e| format!("{e:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    for g in [&hospital, &clinic] {
        let text = std::fs::read_to_string(&g.config).expect("read");
        let text = text.replace(
            "endpoints = [\"https://127.0.0.1:2379\"]",
            &format!("endpoints = [{endpoints}]"),
        );
        std::fs::write(&g.config, text).expect("write");
        let out = g.cli(&["check-config"]);
        assert!(
            out.status.success()
                && String::from_utf8_lossy(&out.stdout).contains("regional registry: reached"),
            "the site's own etcd credentials reach the cluster: {}",
            show(&out)
        );
    }
    hospital.start();
    clinic.start();

    // At the hospital only: the physician, the terminal, the first sign-in and its change.
    hospital.add_physician_with_password("dr-saiyo", "西予 医師", "initial-Pass-2026");
    let terminal = hospital.add_terminal("dr-saiyo", "saiyo-pc");
    hospital.grant("P001", today_jst());
    clinic.grant("P003", today_jst());
    let ca = hospital.ca();
    let jar_h = hospital.path("jar");
    let r = curl_jar(
        hp,
        &ca,
        &terminal,
        &jar_h,
        "/.seibo/login",
        "id=dr-saiyo&password=initial-Pass-2026&next=%2Fpatients%2FP001%2Flabs",
    );
    assert_eq!(
        (r.status, header(&r, "location")),
        (Some(303), "/.seibo/password"),
        "{r:?}"
    );
    let r = curl_jar(
        hp,
        &ca,
        &terminal,
        &jar_h,
        "/.seibo/password",
        "current=initial-Pass-2026&new=Saiyo-Net-Pass-2026",
    );
    assert_eq!(r.status, Some(303), "{r:?}");
    let r = curl_jar(hp, &ca, &terminal, &jar_h, "/patients/P001/labs", "");
    assert_eq!(r.status, Some(200), "{r:?}");

    // At the clinic: the same terminal and the password set at the hospital.
    let jar_c = clinic.path("jar");
    let r = curl_jar(
        cp,
        &ca,
        &terminal,
        &jar_c,
        "/.seibo/login",
        "id=dr-saiyo&password=Saiyo-Net-Pass-2026&next=%2Fpatients%2FP003%2Flabs",
    );
    assert_eq!(
        (r.status, header(&r, "location")),
        // curl's head, lower-cased by the harness.
        (Some(303), "/patients/p003/labs"),
        "{r:?}"
    );
    let r = curl_jar(cp, &ca, &terminal, &jar_c, "/patients/P003/labs", "");
    assert_eq!(r.status, Some(200), "{r:?}");
    assert!(
        r.body
            .contains("<th>x-seibo-site</th><td>nomura-clinic</td>"),
        "{r:?}"
    );
    let listed = clinic.ok(&["physician", "list"]);
    assert!(listed.contains("dr-saiyo"), "{listed}");
    drop(cluster);
}

/// Art 6.2 (the regional registry's PKI): `network etcd-member` certifies an etcd member from
/// the network's etcd CA; a real etcd started with those files (client-certificate
/// authentication on client and peer URLs) accepts the hospital's and the clinic's own etcd
/// credentials (`check-config` reaches it) and nothing from another CA.
#[test]
fn art_6_2_network_etcd_member_certifies_a_member_the_sites_credentials_reach() {
    let (hdir, bundle, cdir, _) = create(1);
    run_ok(&[
        "init",
        "--join",
        s(&bundle.path().join("nomura")),
        "--dir",
        s(cdir.path()),
        "--metrics",
        "off",
    ]);
    let home = hdir.path().join("gate.toml");
    let members = tempfile::tempdir().expect("tempdir");
    let out = run_ok(&[
        "network",
        "etcd-member",
        "--config",
        s(&home),
        "--name",
        "hospital-etcd",
        "--host",
        "127.0.0.1",
        "--out",
        s(members.path()),
    ]);
    assert!(out.contains("--client-cert-auth"), "{out}");
    let m = members.path();
    let (client, peer) = (free_port(), free_port());
    let client_url = format!("https://127.0.0.1:{client}");
    let peer_url = format!("https://127.0.0.1:{peer}");
    let log = std::fs::File::create(m.join("etcd.log")).expect("log");
    let mut etcd = Command::new("etcd")
        .args(["--name", "hospital-etcd", "--data-dir"])
        .arg(m.join("data"))
        .args([
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
        ])
        .args([
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
        ])
        .args(["--initial-cluster", &format!("hospital-etcd={peer_url}")])
        .args(["--cert-file", s(&m.join("hospital-etcd.crt"))])
        .args(["--key-file", s(&m.join("hospital-etcd.key"))])
        .args([
            "--client-cert-auth",
            "--trusted-ca-file",
            s(&m.join("etcd-ca.crt")),
        ])
        .args(["--peer-cert-file", s(&m.join("hospital-etcd.crt"))])
        .args(["--peer-key-file", s(&m.join("hospital-etcd.key"))])
        .args([
            "--peer-client-cert-auth",
            "--peer-trusted-ca-file",
            s(&m.join("etcd-ca.crt")),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("etcd must be installed (scripts/install-test-tools)");
    assert!(wait_for_tcp(client, START_LIMIT), "etcd did not listen");
    let reached = |config: &Path| -> bool {
        let text = std::fs::read_to_string(config).expect("read");
        std::fs::write(
            config,
            text.replace(
                "endpoints = [\"https://127.0.0.1:2379\"]",
                &format!("endpoints = [\"{client_url}\"]"),
            ),
        )
        .expect("write");
        // Bounded: etcd elects itself within a second or two.
        let start = std::time::Instant::now();
        loop {
            let out = run(&["check-config", "--config", s(config)]);
            if out.status.success()
                && String::from_utf8_lossy(&out.stdout).contains("regional registry: reached")
            {
                return true;
            }
            if start.elapsed() > START_LIMIT {
                eprintln!("{}", show(&out));
                return false;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let hospital_ok = reached(&home);
    let clinic_ok = reached(&cdir.path().join("gate.toml"));
    // A client certificate from another CA (the regional terminal CA's site-gateway one) is
    // refused by etcd.
    let foreign = {
        let cfg = cdir.path().join("gate.toml");
        let text = std::fs::read_to_string(&cfg).expect("read");
        std::fs::write(
            &cfg,
            text.replace(
                "cert = \"registry/gateway.crt\"",
                "cert = \"peer/site.crt\"",
            )
            .replace("key = \"registry/gateway.key\"", "key = \"peer/site.key\""),
        )
        .expect("write");
        run(&["check-config", "--config", s(&cfg)])
    };
    let _ = etcd.kill();
    let _ = etcd.wait();
    let log = std::fs::read_to_string(m.join("etcd.log")).unwrap_or_default();
    assert!(
        hospital_ok,
        "the hospital's credentials reach the member:\n{log}"
    );
    assert!(
        clinic_ok,
        "the clinic's credentials reach the member:\n{log}"
    );
    assert!(
        foreign.status.code() == Some(69)
            && String::from_utf8_lossy(&foreign.stderr)
                .contains("regional registry: cannot be reached"),
        "a certificate of another CA must not reach etcd: {}",
        show(&foreign)
    );
}

/// Art 12.2 with the network (issue 14): a WireGuard terminal issued at the hospital gets one
/// `.conf` with one `[Peer]` per site gateway — each site's public key, endpoint and its own
/// address inside the tunnel — and an address of its own that is no site's.
#[test]
fn art_12_2_a_wireguard_terminal_of_the_network_gets_one_peer_per_site() {
    let root = tempfile::tempdir().expect("tempdir");
    let (home, bundle) = (root.path().join("hospital"), root.path().join("bundle"));
    let (hp, hpp, cpp) = (free_port(), free_port(), free_port());
    run_ok(&[
        "network",
        "init",
        "--dir",
        s(&home),
        "--site",
        HOSPITAL,
        "--host",
        "127.0.0.1",
        "--listen",
        &format!("127.0.0.1:{hp}"),
        "--peer-listen",
        &format!("127.0.0.1:{hpp}"),
        "--upstream",
        "http://127.0.0.1:1",
        "--metrics",
        "off",
        "--wireguard",
        "127.0.0.1:51820",
        "--etcd",
        "https://127.0.0.1:2379",
    ]);
    run_ok(&[
        "site",
        "add",
        "--config",
        s(&home.join("gate.toml")),
        "--site",
        CLINIC,
        "--host",
        "127.0.0.1",
        "--peer-listen",
        &format!("127.0.0.1:{cpp}"),
        "--wireguard",
        "0.0.0.0:51821",
        "--out",
        s(&bundle),
    ]);
    let hospital = home.join("gate.toml");
    registry_to_sled(&hospital);
    let cfg = ["--config", s(&hospital)];
    run_ok(
        &[
            &["physician", "add", "--id", "dr-saiyo", "--name", "Dr Saiyo"][..],
            &cfg,
        ]
        .concat(),
    );
    let terms = root.path().join("terms");
    let out = run_ok(
        &[
            &[
                "terminal",
                "add",
                "--physician",
                "dr-saiyo",
                "--name",
                "saiyo-wg",
                "--wireguard",
            ][..],
            &["--out", s(&terms)],
            &cfg,
        ]
        .concat(),
    );
    assert!(
        out.contains("and https://10.77.0.254/ for nomura-clinic (nomura-clinic)"),
        "{out}"
    );
    let conf = std::fs::read_to_string(terms.join("saiyo-wg.conf")).expect("the .conf");
    assert_eq!(conf.matches("[Interface]").count(), 1, "{conf}");
    assert_eq!(conf.matches("[Peer]").count(), 2, "{conf}");
    let toml_value = |file: &Path, key: &str| -> Vec<String> {
        std::fs::read_to_string(file)
            .expect("read")
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("{key} = \"")))
            .map(|v| v.trim_end_matches('"').to_string())
            .collect()
    };
    let keys = toml_value(&hospital, "wireguard_public_key");
    assert_eq!(
        keys.len(),
        2,
        "both sites' keys in the home's [[network.sites]]"
    );
    for (key, address, endpoint) in [
        (&keys[0], "10.77.0.1", "127.0.0.1:51820"),
        (&keys[1], "10.77.0.254", "127.0.0.1:51821"),
    ] {
        assert!(
            conf.contains(&format!(
                "[Peer]\nPublicKey = {key}\nEndpoint = {endpoint}\nAllowedIPs = {address}/32\n"
            )),
            "a [Peer] for {address}: {conf}"
        );
    }
    let clinic_key = std::fs::read_to_string(bundle.join("wireguard/gateway.key")).expect("key");
    let clinic_secret = clinic_key.trim();
    assert!(
        !conf.contains(clinic_secret),
        "never a gateway's private key"
    );
    let address = conf
        .lines()
        .find_map(|l| l.strip_prefix("Address = "))
        .expect("Address");
    assert!(
        address.starts_with("10.77.0.") && !["10.77.0.1/32", "10.77.0.254/32"].contains(&address),
        "the terminal's own address: {address}"
    );
}
