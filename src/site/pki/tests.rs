#![allow(clippy::unwrap_used)]

use super::*;
use p12_keystore::KeyStore;
use rcgen::{KeyPair, PublicKeyData};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    ca_cert: PathBuf,
    ca: Ca,
}

fn setup(cn: &str) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let ca_cert = root.join("ca.crt");
    let ca_key = root.join("ca.key");
    create_ca(cn, &ca_cert, &ca_key).unwrap();
    let ca = Ca::load(&ca_cert, &ca_key).unwrap();
    Setup {
        _tmp: tmp,
        root,
        ca_cert,
        ca,
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn ca_properties_and_modes() {
    let s = setup("Seibo Test CA");
    assert_eq!(mode(&s.ca_cert), 0o644);
    assert_eq!(mode(&s.root.join("ca.key")), 0o600);
    let der = load_certs(&s.ca_cert).unwrap();
    assert_eq!(der.len(), 1);
    assert_eq!(der[0].as_ref(), s.ca.cert_der().as_ref());
    let (_, cert) = X509Certificate::from_der(&der[0]).unwrap();
    let bc = cert.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca);
    assert_eq!(bc.path_len_constraint, Some(0));
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
    cert.verify_signature(None).unwrap();
    let info = cert_info(&der[0]).unwrap();
    assert_eq!(info.subject_cn.as_deref(), Some("Seibo Test CA"));
    assert_eq!(info.kind, None);
    let days = (info.not_after - info.not_before).whole_days();
    assert!((3650..=3653).contains(&days), "{days}");
    assert_eq!(s.ca.cert_pem(), fs::read_to_string(&s.ca_cert).unwrap());
    assert!(format!("{:?}", s.ca).contains("Seibo Test CA"));

    // Refuses to overwrite, and leaves the existing files untouched.
    let before = fs::read(&s.ca_cert).unwrap();
    let err = create_ca("Other", &s.ca_cert, &s.root.join("new.key")).unwrap_err();
    assert!(matches!(err, PkiError::AlreadyExists { .. }), "{err}");
    assert!(!s.root.join("new.key").exists());
    let err = create_ca("Other", &s.root.join("new.crt"), &s.root.join("ca.key")).unwrap_err();
    assert!(matches!(err, PkiError::AlreadyExists { .. }), "{err}");
    assert!(!s.root.join("new.crt").exists());
    assert_eq!(before, fs::read(&s.ca_cert).unwrap());
}

#[test]
fn load_rejects_mismatched_key_and_non_ca() {
    let a = setup("CA A");
    let b = setup("CA B");
    let err = Ca::load(&a.ca_cert, &b.root.join("ca.key")).unwrap_err();
    assert!(matches!(err, PkiError::Invalid(_)), "{err}");
    let srv = a.root.join("srv.crt");
    let srv_key = a.root.join("srv.key");
    a.ca.issue_server(&["localhost".into()], &srv, &srv_key)
        .unwrap();
    let err = Ca::load(&srv, &srv_key).unwrap_err();
    assert!(matches!(err, PkiError::Invalid(_)), "{err}");
    let err = Ca::load(&a.root.join("missing.crt"), &srv_key).unwrap_err();
    assert!(matches!(err, PkiError::Io { .. }), "{err}");
}

#[test]
fn server_certificate() {
    let s = setup("Seibo Test CA");
    let cert_path = s.root.join("gw.crt");
    let key_path = s.root.join("gw.key");
    let sans = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".into(),
    ];
    let info = s.ca.issue_server(&sans, &cert_path, &key_path).unwrap();
    assert_eq!(mode(&key_path), 0o600);
    assert_eq!(mode(&cert_path), 0o644);
    let chain = load_certs(&cert_path).unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[1].as_ref(), s.ca.cert_der().as_ref());
    assert_eq!(cert_info(&chain[0]).unwrap(), info);
    let days = (info.not_after - info.not_before).whole_days();
    assert_eq!(days, 825);
    assert_eq!(info.serial.len(), 32);

    let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
    let (_, ca) = X509Certificate::from_der(&chain[1]).unwrap();
    leaf.verify_signature(Some(ca.public_key())).unwrap();
    let san = leaf.subject_alternative_name().unwrap().unwrap().value;
    use x509_parser::extensions::GeneralName;
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    for g in &san.general_names {
        match g {
            GeneralName::DNSName(d) => dns.push(d.to_string()),
            GeneralName::IPAddress(ip) => ips.push(ip.to_vec()),
            other => panic!("unexpected SAN {other:?}"),
        }
    }
    assert_eq!(dns, ["localhost"]);
    let v6: Vec<u8> = "::1"
        .parse::<std::net::Ipv6Addr>()
        .unwrap()
        .octets()
        .to_vec();
    assert_eq!(ips, [vec![127, 0, 0, 1], v6]);
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth);
    assert!(load_key(&key_path).is_ok());

    let err = s.ca.issue_server(&sans, &cert_path, &key_path).unwrap_err();
    assert!(matches!(err, PkiError::AlreadyExists { .. }), "{err}");
    let err =
        s.ca.issue_server(
            &["bad name!".into()],
            &s.root.join("x.crt"),
            &s.root.join("x.key"),
        )
        .unwrap_err();
    assert!(matches!(err, PkiError::Invalid(_)), "{err}");
    assert!(s
        .ca
        .issue_server(&[], &s.root.join("x.crt"), &s.root.join("x.key"))
        .is_err());
    assert!(!s.root.join("x.key").exists());
}

#[test]
fn client_certificate_identity() {
    let s = setup("Seibo Test CA");
    let dir = s.root.join("terminals").join("ward3");
    let issued =
        s.ca.issue_client(
            ClientKind::Terminal,
            "田中 一郎 (内科)",
            "dr-tanaka.pc01",
            &dir,
            365,
        )
        .unwrap();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(issued.cert_path, dir.join("dr-tanaka.pc01.crt"));
    assert_eq!(issued.key_path, dir.join("dr-tanaka.pc01.key"));
    assert_eq!(issued.p12_path, dir.join("dr-tanaka.pc01.p12"));
    assert_eq!(mode(&issued.key_path), 0o600);
    assert_eq!(mode(&issued.p12_path), 0o600);
    assert_eq!(mode(&issued.cert_path), 0o644);

    let chain = load_certs(&issued.cert_path).unwrap();
    assert_eq!(chain.len(), 2);
    let info = cert_info(&chain[0]).unwrap();
    assert_eq!(info, issued.info);
    let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
    let expected = hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        leaf.tbs_certificate.subject_pki.raw,
    ));
    assert_eq!(info.fingerprint, expected);
    assert_eq!(info.fingerprint.len(), 64);
    assert_eq!(info.kind, Some(ClientKind::Terminal));
    assert_eq!(info.subject_cn.as_deref(), Some("田中 一郎 (内科)"));
    assert_eq!(info.serial, hex::encode(leaf.raw_serial()));
    assert_eq!(info.serial.len(), 32);
    let validity = info.not_after - info.not_before;
    assert!(
        validity >= Duration::days(365) && validity <= Duration::days(365) + Duration::hours(1),
        "{validity}"
    );
    let now = OffsetDateTime::now_utc();
    assert!(info.not_before <= now && info.not_after > now + Duration::days(364));

    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth && eku.other.is_empty());
    let ku = leaf.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_cert_sign());
    let (_, ca) = X509Certificate::from_der(&chain[1]).unwrap();
    leaf.verify_signature(Some(ca.public_key())).unwrap();

    // The key file holds the certificate's key.
    let key_pem = fs::read_to_string(&issued.key_path).unwrap();
    let kp = KeyPair::from_pem(&key_pem).unwrap();
    assert_eq!(
        kp.subject_public_key_info(),
        leaf.tbs_certificate.subject_pki.raw
    );

    // Site-system marker.
    let site =
        s.ca.issue_client(ClientKind::SiteSystem, "lab-system", "lab", &dir, 30)
            .unwrap();
    assert_eq!(site.info.kind, Some(ClientKind::SiteSystem));
    assert_ne!(site.info.fingerprint, info.fingerprint);
    assert_ne!(site.info.serial, info.serial);
    assert_ne!(site.p12_password, issued.p12_password);
}

#[test]
fn client_refusals() {
    let s = setup("Seibo Test CA");
    let dir = s.root.join("t");
    let first =
        s.ca.issue_client(ClientKind::Terminal, "Dr A", "pc1", &dir, 30)
            .unwrap();
    let before = fs::read(&first.p12_path).unwrap();
    let err =
        s.ca.issue_client(ClientKind::Terminal, "Dr A", "pc1", &dir, 30)
            .unwrap_err();
    assert!(matches!(err, PkiError::AlreadyExists { .. }), "{err}");
    assert_eq!(before, fs::read(&first.p12_path).unwrap());

    // Only one of the three files present: still refused, nothing else written.
    fs::write(dir.join("pc2.p12"), b"x").unwrap();
    let err =
        s.ca.issue_client(ClientKind::Terminal, "Dr B", "pc2", &dir, 30)
            .unwrap_err();
    assert!(matches!(err, PkiError::AlreadyExists { .. }), "{err}");
    assert!(!dir.join("pc2.key").exists() && !dir.join("pc2.crt").exists());

    let other = s.root.join("other");
    for bad in ["../evil", "a/b", "", ".x", "a..b", "x y"] {
        let err =
            s.ca.issue_client(ClientKind::Terminal, "Dr", bad, &other, 30)
                .unwrap_err();
        assert!(matches!(err, PkiError::InvalidName(_)), "{bad:?}: {err}");
    }
    assert!(!other.exists(), "nothing written for invalid names");
    assert!(!s.root.join("evil.key").exists());

    for days in [0, MAX_CLIENT_DAYS + 1] {
        let err =
            s.ca.issue_client(ClientKind::Terminal, "Dr", "pc3", &other, days)
                .unwrap_err();
        assert!(matches!(err, PkiError::Invalid(_)), "{err}");
    }
    for cn in ["", "  ", "a\nb", &"x".repeat(65)] {
        let err =
            s.ca.issue_client(ClientKind::Terminal, cn, "pc3", &other, 30)
                .unwrap_err();
        assert!(matches!(err, PkiError::Invalid(_)), "{cn:?}: {err}");
    }
    assert!(!other.exists());
}

#[test]
fn write_new_file_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("secret");
    write_new_file(&p, b"s3cret", 0o600).unwrap();
    assert_eq!(mode(&p), 0o600);
    assert_eq!(fs::read(&p).unwrap(), b"s3cret");
    let err = write_new_file(&p, b"other", 0o600).unwrap_err();
    assert!(matches!(err, PkiError::AlreadyExists { .. }), "{err}");
    assert_eq!(fs::read(&p).unwrap(), b"s3cret");
    // A symlink at the target is not followed.
    let target = tmp.path().join("target");
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    assert!(write_new_file(&link, b"x", 0o600).is_err());
    assert!(!target.exists());
    let err = write_new_file(&tmp.path().join("no/such/dir"), b"x", 0o600).unwrap_err();
    assert!(matches!(err, PkiError::Io { .. }), "{err}");
}

#[test]
fn p12_round_trip_and_openssl() {
    let s = setup("Seibo Test CA");
    let dir = s.root.join("out");
    let issued =
        s.ca.issue_client(ClientKind::Terminal, "Dr Suzuki", "suzuki-pc", &dir, 90)
            .unwrap();
    let pw = &issued.p12_password;
    assert_eq!(pw.len(), 20);
    assert!(
        pw.bytes().all(|b| P12_PASSWORD_ALPHABET.contains(&b)),
        "{pw}"
    );
    for c in ['0', 'O', 'o', '1', 'l', 'I', 'i'] {
        assert!(!pw.contains(c));
    }

    let data = fs::read(&issued.p12_path).unwrap();
    let store = KeyStore::from_pkcs12(&data, pw, p12_keystore::Pkcs12ImportPolicy::Strict).unwrap();
    let (alias, chain) = store.private_key_chain().unwrap();
    assert_eq!(alias, "suzuki-pc");
    let pem_chain = load_certs(&issued.cert_path).unwrap();
    assert_eq!(chain.certs().len(), 2);
    assert_eq!(chain.certs()[0].as_der(), pem_chain[0].as_ref());
    assert_eq!(chain.certs()[1].as_der(), s.ca.cert_der().as_ref());
    let key = load_key(&issued.key_path).unwrap();
    assert_eq!(chain.key().as_der(), key.secret_der());

    assert!(KeyStore::from_pkcs12(
        &data,
        "WrongPassword234567x",
        p12_keystore::Pkcs12ImportPolicy::Strict
    )
    .is_err());

    // OpenSSL must be present on this machine: the check is not optional.
    let openssl = |args: &[&str]| {
        std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl must be on PATH")
    };
    let p12 = issued.p12_path.to_str().unwrap();
    let out = openssl(&[
        "pkcs12",
        "-in",
        p12,
        "-passin",
        &format!("pass:{pw}"),
        "-info",
        "-nokeys",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "openssl failed: {stderr}");
    assert!(stderr.contains("MAC: sha256"), "{stderr}");
    assert!(stderr.contains("PBES2, PBKDF2, AES-256-CBC"), "{stderr}");
    assert!(
        !stderr.contains("RC2") && !stderr.contains("3DES"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("BEGIN CERTIFICATE").count(), 2, "{stdout}");

    // The key decrypts with OpenSSL too and has the friendly name NAME.
    let out = openssl(&[
        "pkcs12",
        "-in",
        p12,
        "-passin",
        &format!("pass:{pw}"),
        "-nocerts",
        "-nodes",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("friendlyName: suzuki-pc"), "{stdout}");
    assert!(stdout.contains("PRIVATE KEY"), "{stdout}");

    let out = openssl(&[
        "pkcs12",
        "-in",
        p12,
        "-passin",
        "pass:WrongPassword234567x",
        "-noout",
    ]);
    assert!(!out.status.success());
}

// ---- in-memory rustls handshake ----

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config(
    s: &Setup,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ServerConfig> {
    let srv_cert = s.root.join("gw.crt");
    let srv_key = s.root.join("gw.key");
    if !srv_cert.exists() {
        s.ca.issue_server(
            &["localhost".into(), "127.0.0.1".into()],
            &srv_cert,
            &srv_key,
        )
        .unwrap();
    }
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(&s.ca_cert).unwrap() {
        roots.add(c).unwrap();
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .unwrap();
    Arc::new(
        rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(load_certs(&srv_cert).unwrap(), load_key(&srv_key).unwrap())
            .unwrap(),
    )
}

fn client_config(
    trusted_ca: &Path,
    client_cert: &Path,
    client_key: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(trusted_ca).unwrap() {
        roots.add(c).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                load_certs(client_cert).unwrap(),
                load_key(client_key).unwrap(),
            )
            .unwrap(),
    )
}

/// Runs the handshake plus one application-data exchange; returns the server connection
/// or the first TLS error from either side.
fn handshake(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    host: &str,
) -> Result<rustls::ServerConnection, rustls::Error> {
    use std::io::Read;
    let name = rustls_pki_types::ServerName::try_from(host.to_owned()).unwrap();
    let mut cli = rustls::ClientConnection::new(client, name).unwrap();
    let mut srv = rustls::ServerConnection::new(server).unwrap();
    cli.writer().write_all(b"ping").unwrap();
    let mut got = Vec::new();
    for _ in 0..20 {
        let mut buf = Vec::new();
        while cli.wants_write() {
            cli.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            srv.read_tls(&mut buf.as_slice()).unwrap();
            srv.process_new_packets()?;
        }
        let mut buf = Vec::new();
        while srv.wants_write() {
            srv.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            cli.read_tls(&mut buf.as_slice()).unwrap();
            cli.process_new_packets()?;
        }
        let mut chunk = [0u8; 16];
        if let Ok(n) = srv.reader().read(&mut chunk) {
            got.extend_from_slice(&chunk[..n]);
        }
        if !srv.is_handshaking() && !cli.is_handshaking() && got == b"ping" {
            return Ok(srv);
        }
    }
    panic!("handshake did not finish");
}

#[test]
fn rustls_mutual_tls() {
    let s = setup("Seibo Test CA");
    let dir = s.root.join("terminals");
    let good =
        s.ca.issue_client(ClientKind::Terminal, "Dr Sato", "sato-pc", &dir, 30)
            .unwrap();
    let other = setup("Rogue CA");
    let bad = other
        .ca
        .issue_client(ClientKind::Terminal, "Dr Sato", "sato-pc", &other.root, 30)
        .unwrap();

    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        let server = server_config(&s, versions);
        for host in ["localhost", "127.0.0.1"] {
            let cfg = client_config(&s.ca_cert, &good.cert_path, &good.key_path, versions);
            let conn = handshake(server.clone(), cfg, host).unwrap();
            let peer = conn.peer_certificates().unwrap();
            let info = cert_info(&peer[0]).unwrap();
            assert_eq!(info.fingerprint, good.info.fingerprint);
            assert_eq!(info.kind, Some(ClientKind::Terminal));
        }

        let cfg = client_config(&s.ca_cert, &bad.cert_path, &bad.key_path, versions);
        let err = handshake(server.clone(), cfg, "localhost").unwrap_err();
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
                    | rustls::Error::AlertReceived(_)
            ),
            "{err:?}"
        );

        // The client refuses a server whose CA it does not trust.
        let cfg = client_config(&other.ca_cert, &good.cert_path, &good.key_path, versions);
        assert!(handshake(server.clone(), cfg, "localhost").is_err());
    }
}

#[test]
fn load_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("empty.pem");
    fs::write(&p, "nothing here\n").unwrap();
    assert!(matches!(load_certs(&p), Err(PkiError::Parse(_))));
    assert!(matches!(load_key(&p), Err(PkiError::Parse(_))));
    assert!(matches!(
        load_certs(&tmp.path().join("missing")),
        Err(PkiError::Io { .. })
    ));
    assert!(matches!(cert_info(b"\x30\x03abc"), Err(PkiError::Parse(_))));
}
