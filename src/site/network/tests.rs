//! The network's files: `network init`, `site add` and `init --join` in a temporary directory.

use std::str::FromStr;

use super::*;
use crate::site::config::Config;
use crate::site::init::InitOptions;
use crate::site::pki::Permit;

fn init_options(dir: &Path) -> NetworkInitOptions {
    let mut site = InitOptions::new(dir);
    site.site = "seiyo-hospital".into();
    site.name = Some("西予市民病院 / Seiyo City Hospital".into());
    site.metrics = None;
    site.wireguard = Some("127.0.0.1:51820".parse().expect("addr"));
    NetworkInitOptions {
        site,
        network: "seibo-net".into(),
        hosts: vec!["gate.seiyo-hospital.example.jp".into()],
        peer_listen: "0.0.0.0:8843".parse().expect("addr"),
        etcd: vec!["https://10.20.0.7:2379".into()],
        permit: vec!["example.jp".into(), "203.0.113.0/24".into()],
    }
}

fn add_options(out: &Path, site: &str, host: &str) -> SiteAddOptions {
    SiteAddOptions {
        site: site.into(),
        name: Some("野村診療所 / Nomura Clinic".into()),
        hosts: vec![host.into()],
        peer_listen: "0.0.0.0:8843".parse().expect("addr"),
        wireguard: Some("0.0.0.0:51820".parse().expect("addr")),
        out: out.to_path_buf(),
    }
}

#[test]
fn permits_hold_their_subtree_only() {
    let d = Permit::from_str("example.jp").expect("dns");
    assert!(d.permits("example.jp") && d.permits("gate.nomura.example.jp"));
    assert!(!d.permits("badexample.jp") && !d.permits("example.com") && !d.permits("10.0.0.1"));
    let n = Permit::from_str("203.0.113.0/24").expect("ip");
    assert!(n.permits("203.0.113.9") && !n.permits("203.0.114.1") && !n.permits("example.jp"));
    assert_eq!(
        Permit::for_host("198.51.100.7").expect("host"),
        Permit::from_str("198.51.100.7/32").expect("ip")
    );
    assert!(Permit::from_str("not a name!").is_err());
}

#[test]
fn art_6_2_network_init_then_site_add_then_join() {
    let home = tempfile::tempdir().expect("tempdir");
    let cfg = network_init(&init_options(home.path())).expect("network init");
    let c = Config::load(&cfg).expect("the home's config loads");
    let n = c.network.as_ref().expect("[network]");
    assert_eq!(n.sites.len(), 1);
    assert!(c.peer.is_some());
    assert!(
        std::fs::read_to_string(&cfg)
            .expect("read")
            .contains("[registry]\n# The regional registry"),
        "an etcd [registry]"
    );
    let ca = Ca::load(&home.path().join(CA_CERT), &home.path().join(CA_KEY)).expect("CA");
    let permits = pki::permitted_subtrees(ca.cert_der())
        .expect("parse")
        .expect("name constraints");
    assert_eq!(
        permits,
        vec![
            Permit::from_str("example.jp").expect("p"),
            Permit::from_str("203.0.113.0/24").expect("p"),
            Permit::from_str(TUNNEL_NETWORK).expect("p"),
        ]
    );

    let bundles = tempfile::tempdir().expect("tempdir");
    let out = bundles.path().join("nomura");
    let added = add_site(
        &c,
        &add_options(&out, "nomura-clinic", "gate.nomura.example.jp"),
    )
    .expect("site add");
    assert_eq!(added.site.tunnel_address.as_deref(), Some("10.77.0.254"));
    assert!(!out.join(CA_KEY).exists(), "never the regional CA's key");
    assert!(out.join(CA_CERT).exists() && out.join("peer/site.key").exists());
    let nf = NetworkFile::read(&home.path().join(NETWORK_FILE)).expect("list");
    assert_eq!(nf.sites.len(), 2);
    let c = Config::load(&cfg).expect("the home's config still loads");
    assert_eq!(c.network.as_ref().map(|n| n.sites.len()), Some(2));

    // Twice, outside the constraints, into a non-empty directory: refused.
    let again = add_site(
        &c,
        &add_options(&bundles.path().join("x"), "nomura-clinic", "a.example.jp"),
    );
    assert!(matches!(again, Err(NetworkError::Invalid(_))), "{again:?}");
    let outside = add_site(
        &c,
        &add_options(&bundles.path().join("y"), "uwa", "www.example.com"),
    );
    assert!(
        matches!(outside, Err(NetworkError::Invalid(_))),
        "{outside:?}"
    );
    let busy = add_site(&c, &add_options(&out, "uwa", "gate.uwa.example.jp"));
    assert!(matches!(busy, Err(NetworkError::Exists(_))), "{busy:?}");

    let clinic = tempfile::tempdir().expect("tempdir");
    let mut o = InitOptions::new(clinic.path());
    o.metrics = None;
    o.upstream = "http://10.30.0.5:8080".into();
    let joined = join(&out, &o).expect("init --join");
    let jc = Config::load(&joined).expect("the clinic's config loads");
    assert_eq!(jc.site.id, "nomura-clinic");
    assert_eq!(jc.site.name, "野村診療所 / Nomura Clinic");
    assert_eq!(
        jc.wireguard.as_ref().map(|w| w.address.to_string()),
        Some("10.77.0.254".into())
    );
    assert_eq!(jc.network.as_ref().map(|n| n.sites.len()), Some(2));
    assert!(!clinic.path().join(CA_KEY).exists());
}
