//! `init`: a valid site, never overwritten; its name, start page and WireGuard section.

use super::*;

#[test]
fn init_writes_a_valid_site_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let o = InitOptions::new(&dir.path().join("site"));
    let p = init(&o).unwrap();
    let cfg = Config::load(&p).unwrap();
    assert_eq!(cfg.site.id, "seiyo-hospital");
    assert_eq!(
        cfg.site.name, "seiyo-hospital",
        "the name defaults to the id"
    );
    assert_eq!(
        cfg.site.home, "/.seibo/whoami",
        "the EMR's root is not routed"
    );
    assert_eq!(cfg.routes.len(), 2);
    assert!(cfg.ca.key.exists());
    assert!(matches!(init(&o), Err(InitError::Exists(_))));
}

/// Issue 11 item 26: `init --name` is the name physicians see; the commented start page
/// is valid once uncommented (the root is then refused until a route allows it).
#[test]
fn init_writes_the_sites_name_and_a_commented_start_page() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = InitOptions::new(&dir.path().join("site"));
    o.name = Some("西予市民病院 / Seiyo \"City\" Hospital".into());
    let p = init(&o).unwrap();
    let cfg = Config::load(&p).unwrap();
    assert_eq!(cfg.site.name, "西予市民病院 / Seiyo \"City\" Hospital");
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains("\n# home = \"/\"\n"), "{text}");
    let home = text.replace("\n# home = \"/\"\n", "\nhome = \"/\"\n");
    let err = Config::parse(&p, &home).unwrap_err().to_string();
    assert!(err.contains("site.home: \"/\" is not an EMR page"), "{err}");
    let routed = format!("{home}\n[[route]]\npath = \"/\"\nno_patient = true\n");
    assert_eq!(Config::parse(&p, &routed).unwrap().site.home, "/");
}

/// Art 12.2: `init --wireguard` writes an enabled, valid section with a fresh key.
#[test]
fn art_12_2_init_with_wireguard_writes_key_and_section() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = InitOptions::new(&dir.path().join("site"));
    o.wireguard = Some("127.0.0.1:51820".parse().unwrap());
    let cfg = Config::load(&init(&o).unwrap()).unwrap();
    let wg = cfg.wireguard.expect("wireguard enabled");
    assert_eq!(wg.address.to_string(), TUNNEL_ADDRESS);
    assert_eq!(wg.endpoint, "127.0.0.1:51820");
    let key = std::fs::read_to_string(&wg.private_key).unwrap();
    assert!(crate::ingress::wireguard::key_from_base64(key.trim()).is_ok());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&wg.private_key)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn init_needs_private_segment_for_a_named_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = InitOptions::new(dir.path());
    o.upstream = "http://emr.internal:8080".into();
    assert!(matches!(init(&o), Err(InitError::Invalid(_))));
}
