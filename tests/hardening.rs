//! Issue 7: hardening, with the real binary on loopback. Limits and timeouts, request
//! confusion at the HTTP layer, faulty EMRs, a full or read-only audit disk, bad client
//! certificates and old TLS, key file modes, and secrets kept out of the logs.
//! `docs/security.md` names each attack class with the test here that proves its decision.
//!
//! Every wait and loop is bounded; all traffic goes to 127.0.0.1. Tools these tests need
//! (openssl, unshare, mount, curl) are asserted present: they never skip.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

// ---------------------------------------------------------------------------------------------
// Helpers

/// A serving bench site (terminal credential only) with dr1/pc1 and consent for P001.
/// `limits` lines are added to `[limits]`, `upstream` lines replace the timeouts, `routes` is
/// appended (more `[[route]]` tables).
struct Site {
    gate: Gate,
    pc1: Terminal,
}

fn edit_config(gate: &Gate, limits: &str, upstream: &str, routes: &str) {
    let text = std::fs::read_to_string(&gate.config).unwrap();
    // Keys given in `limits` replace init's lines of the same name.
    let keys: Vec<&str> = limits
        .lines()
        .filter_map(|l| l.split_once(" =").map(|(k, _)| k))
        .collect();
    let text: String = text
        .lines()
        .filter(|l| !l.split_once(" =").is_some_and(|(k, _)| keys.contains(&k)))
        .map(|l| format!("{l}\n"))
        .collect();
    let text = text.replacen("[limits]\n", &format!("[limits]\n{limits}\n"), 1);
    let text = if upstream.is_empty() {
        text
    } else {
        text.replacen(
            "connect_timeout_ms = 3000\nresponse_timeout_ms = 30000\n",
            &format!("{upstream}\n"),
            1,
        )
    };
    std::fs::write(&gate.config, format!("{text}\n{routes}\n")).unwrap();
    let out = gate.cli(&["check-config"]);
    assert!(out.status.success(), "config: {}", show(&out));
}

fn site(emr_port: u16, limits: &str, upstream: &str, routes: &str) -> Site {
    let mut gate = Gate::init(emr_port);
    gate.terminal_credential_only();
    edit_config(&gate, limits, upstream, routes);
    gate.start();
    gate.add_physician("dr1");
    let pc1 = gate.add_terminal("dr1", "pc1");
    gate.grant("P001", today_jst());
    Site { gate, pc1 }
}

/// The gateway's Prometheus text.
fn metrics(gate: &Gate) -> String {
    let cfg = seibo_gate::site::config::Config::load(&gate.config).unwrap();
    let addr = cfg.metrics.expect("metrics listener");
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut s, &mut text).unwrap();
    text
}

/// The value of one sample (`name{labels}`), 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == series).then(|| v.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

fn require(tool: &str, arg: &str) {
    let ok = Command::new(tool)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "{tool} must be installed to run these tests");
}

/// Sends `head` raw (it must ask `Connection: close`) and returns status and text.
async fn raw(gate: &Gate, t: &Terminal, head: &str) -> (u16, String) {
    raw_request(gate.port, gate.client(t), head.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("raw request {head:?}: {e:#}"))
}

// ---------------------------------------------------------------------------------------------
// A misbehaving EMR

/// An EMR speaking raw HTTP/1.1 that misbehaves by path: `/patients/P001/labs` answers 200;
/// `notes` is slow (5 s), `images` resets the connection, `reports` closes without answering,
/// `flowsheets` sends a 1 MiB header, `summaries` a malformed status line, `diagnoses`
/// conflicting lengths.
struct FaultEmr {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl FaultEmr {
    async fn start() -> FaultEmr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    // One request per connection; bounded head.
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await
                        {
                            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
                            _ => return,
                        }
                    }
                    let line = String::from_utf8_lossy(&head).into_owned();
                    let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
                    let reply: Vec<u8> = match target.as_str() {
                        "/patients/P001/notes" => {
                            tokio::time::sleep(Duration::from_secs(5)).await;
                            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 4\r\n\r\nslow".to_vec()
                        }
                        "/patients/P001/images" => {
                            #[allow(deprecated)]
                            let _ = s.set_linger(Some(Duration::ZERO));
                            return; // dropped with linger 0: RST
                        }
                        "/patients/P001/reports" => return,
                        "/patients/P001/flowsheets" => {
                            let mut r = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
                            r.extend(std::iter::repeat_n(b'a', 1 << 20));
                            r.extend_from_slice(b"\r\nContent-Length: 2\r\n\r\nok");
                            r
                        }
                        "/patients/P001/summaries" => b"HTTP/1.1 2x0 Nope\r\n\r\n".to_vec(),
                        "/patients/P001/diagnoses" => {
                            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 9\r\n\r\nhello"
                                .to_vec()
                        }
                        _ => b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 9\r\n\r\nfault-emr".to_vec(),
                    };
                    let _ = s.write_all(&reply).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        FaultEmr { port, task }
    }
}

impl Drop for FaultEmr {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// Upstream faults

/// Issue 7 (upstream faults), art 12.6: a slow EMR gives the 504 page within
/// `response_timeout`, a reset, a silent close, an oversized header block, a malformed status
/// line and conflicting lengths give the 502 page; after each, and after all of them at once,
/// the gateway still answers (no worker stuck), and `seibo_gate_upstream_errors_total` counts
/// them by kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_slow_reset_oversized_malformed_give_504_502_and_gateway_keeps_serving() {
    let emr = FaultEmr::start().await;
    let s = site(
        emr.port,
        "",
        "connect_timeout_ms = 1000\nresponse_timeout_ms = 1000",
        "",
    );
    let cfg = s.gate.client(&s.pc1);
    let ok = get_once(s.gate.port, cfg.clone(), "/patients/P001/labs")
        .await
        .unwrap();
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.body, "fault-emr");

    let started = Instant::now();
    let r = get_once(s.gate.port, cfg.clone(), "/patients/P001/notes")
        .await
        .unwrap();
    assert_eq!(r.status, 504, "{r:?}");
    assert!(
        r.body.contains("電子カルテの応答がありません"),
        "{}",
        r.body
    );
    assert!(
        started.elapsed() < Duration::from_millis(3000),
        "504 after {:?}, response_timeout is 1 s",
        started.elapsed()
    );

    for path in [
        "/patients/P001/images",
        "/patients/P001/reports",
        "/patients/P001/flowsheets",
        "/patients/P001/summaries",
        "/patients/P001/diagnoses",
    ] {
        let r = get_once(s.gate.port, cfg.clone(), path).await.unwrap();
        assert_eq!(r.status, 502, "{path}: {r:?}");
        assert!(
            r.body.contains("電子カルテに接続できません"),
            "{path}: {}",
            r.body
        );
        assert!(!r.body.contains("aaaa"), "{path}: EMR bytes leaked");
        let ok = get_once(s.gate.port, cfg.clone(), "/patients/P001/labs")
            .await
            .unwrap();
        assert_eq!(ok.status, 200, "after {path}: {ok:?}");
    }

    // All faults at once, twice over, then ordinary requests: every one is answered in time.
    let mut tasks = Vec::new();
    for _ in 0..2 {
        for path in [
            "/patients/P001/notes",
            "/patients/P001/images",
            "/patients/P001/reports",
            "/patients/P001/summaries",
        ] {
            let cfg = cfg.clone();
            let port = s.gate.port;
            tasks.push(tokio::spawn(async move {
                get_once(port, cfg, path).await.map(|r| r.status)
            }));
        }
    }
    for t in tasks {
        let status = tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("a faulty request was not answered within 10 s")
            .unwrap()
            .unwrap();
        assert!(status == 502 || status == 504, "{status}");
    }
    for _ in 0..5 {
        let ok = get_once(s.gate.port, cfg.clone(), "/patients/P001/labs")
            .await
            .unwrap();
        assert_eq!(ok.status, 200, "{ok:?}");
    }

    let m = metrics(&s.gate);
    assert!(
        sample(&m, "seibo_gate_upstream_errors_total{kind=\"timeout\"}") >= 3.0,
        "{m}"
    );
    assert!(
        sample(&m, "seibo_gate_upstream_errors_total{kind=\"connect\"}") >= 11.0,
        "{m}"
    );
    // The decision was to allow; the outcome records what the physician got.
    let rows = s.gate.request_rows_settled(20);
    assert!(
        rows.iter().filter(|r| r["status"] == 504).count() >= 3,
        "{rows:#?}"
    );
    assert!(
        rows.iter().filter(|r| r["status"] == 502).count() >= 11,
        "{rows:#?}"
    );
}

/// Issue 7 (upstream down, connect timeout), art 12.6: an EMR whose accept queue is full
/// (SYNs dropped) gives the 502 page within `connect_timeout`, well before the response
/// timeout; an EMR that is down gives 502 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connect_timeout_and_down_give_502() {
    // A listener with a backlog of 1 that never accepts; fill its queue.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = sock.local_addr().unwrap().port();
    let stuck = sock.listen(1).unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut fillers = Vec::new();
    for _ in 0..16 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(c) => fillers.push(c),
            Err(_) => break,
        }
    }
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err(),
        "the accept queue should be full"
    );
    let s = site(
        port,
        "",
        "connect_timeout_ms = 500\nresponse_timeout_ms = 10000",
        "",
    );
    let cfg = s.gate.client(&s.pc1);
    let started = Instant::now();
    let r = get_once(s.gate.port, cfg.clone(), "/patients/P001/labs")
        .await
        .unwrap();
    assert_eq!(r.status, 502, "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "502 after {:?}: the connect timeout is 0.5 s",
        started.elapsed()
    );
    drop(fillers);
    drop(stuck);

    // Down: nothing listens on the port any more.
    let started = Instant::now();
    let r = get_once(s.gate.port, cfg, "/patients/P001/labs")
        .await
        .unwrap();
    assert_eq!(r.status, 502, "{r:?}");
    assert!(r.body.contains("The EMR cannot be reached"), "{}", r.body);
    assert!(started.elapsed() < Duration::from_secs(4));
    let m = metrics(&s.gate);
    assert!(
        sample(&m, "seibo_gate_upstream_errors_total{kind=\"connect\"}") >= 2.0,
        "{m}"
    );
}

// ---------------------------------------------------------------------------------------------
// Audit disk full or read-only

/// Issue 7 (fail closed), art 12.8: the audit directory is a 256 KiB tmpfs of the gateway's
/// own mount namespace. Filled up, every request is refused with the 503 page and no EMR
/// response reaches the client; once the gateway knows its audit is failing nothing reaches the
/// EMR either (only the request whose write failed first may have been forwarded while its
/// record was being written: its response was dropped); the log says so and `seibo_gate_audit_failures_total` counts it. Space
/// back, requests are served again, and the chain verifies. An audit directory that cannot be
/// written at all (a read-only tmpfs) stops `serve` at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_disk_full_refuses_with_503_then_recovers_and_read_only_stops_start() {
    for tool in ["unshare", "mount"] {
        require(tool, "--version");
    }
    let emr = RecordingEmr::start();
    let mut gate = Gate::init(emr.port);
    gate.terminal_credential_only();
    let audit_dir = gate.audit_dir();
    std::fs::create_dir_all(&audit_dir).unwrap();

    // An unwritable audit directory at start: serve refuses to start, naming it.
    let ro = format!(
        "mount -t tmpfs -o ro,size=256k seibo-audit-ro '{dir}' && exec '{bin}' serve --config '{cfg}'",
        dir = audit_dir.display(),
        bin = BIN,
        cfg = gate.config.display()
    );
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "sh", "-c", &ro]);
    gate.spawn_command(c);
    let status = gate.wait_exit(START_LIMIT).expect("serve must exit");
    assert!(!status.success());
    assert!(
        gate.log().contains("audit") && gate.log().contains("Read-only file system"),
        "{}",
        gate.log()
    );

    let script = format!(
        "mount -t tmpfs -o size=256k,mode=0700 seibo-audit '{dir}' && exec '{bin}' serve --config '{cfg}'",
        dir = audit_dir.display(),
        bin = BIN,
        cfg = gate.config.display()
    );
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
    gate.start_command(c);
    let pid = gate.pid().unwrap();
    // The gateway's view of its audit directory.
    let inside = PathBuf::from(format!("/proc/{pid}/root{}", audit_dir.display()));
    assert!(
        inside.join("audit.log").exists(),
        "audit log on the tmpfs: {}",
        gate.log()
    );
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mounts")).unwrap();
    assert!(
        mounts.contains("seibo-audit"),
        "the tmpfs must be mounted in the gateway's namespace: {mounts}"
    );
    assert!(
        !std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .contains("seibo-audit"),
        "the tmpfs must not leak into the test's namespace"
    );
    gate.add_physician("dr1");
    let pc1 = gate.add_terminal("dr1", "pc1");
    gate.grant("P001", today_jst());
    let cfg = gate.client(&pc1);

    let r = get_once(gate.port, cfg.clone(), "/patients/P001/labs")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(emr.seen().len(), 1);

    // Fill the disk (bounded: the tmpfs is 256 KiB).
    let fill = inside.join("fill");
    {
        let mut f = std::fs::File::create(&fill).unwrap();
        let chunk = vec![0u8; 4096];
        let mut written = 0usize;
        while written < (1 << 20) {
            match f.write(&chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => written += n,
            }
        }
        assert!(written < (1 << 20), "the tmpfs never filled up");
        let _ = f.sync_all();
    }
    // The last page of the log may still take a line or two; then every request is refused.
    let mut refused_in_a_row = 0;
    let mut before = emr.seen().len();
    // The EMR's count after the first refusal: the request whose record failed first may have
    // been forwarded while the record was being written (issue 16); none after it.
    let mut after_first_refusal = None;
    for _ in 0..60 {
        let r = get_once(gate.port, cfg.clone(), "/patients/P001/labs")
            .await
            .unwrap();
        if r.status == 200 {
            assert_eq!(refused_in_a_row, 0, "served after a refusal on a full disk");
            before = emr.seen().len();
            continue;
        }
        assert_eq!(r.status, 503, "disk full must refuse: {r:?}");
        assert!(r.body.contains("ただいま利用できません"), "{}", r.body);
        assert!(r.body.contains("audit-unavailable"), "{}", r.body);
        assert!(
            !r.body.contains("recording EMR saw"),
            "no byte of the EMR's page without a record: {}",
            r.body
        );
        after_first_refusal.get_or_insert(emr.seen().len());
        refused_in_a_row += 1;
        if refused_in_a_row == 3 {
            break;
        }
    }
    assert_eq!(refused_in_a_row, 3, "a full disk must refuse requests");
    let after_first_refusal = after_first_refusal.unwrap();
    assert!(
        after_first_refusal <= before + 1,
        "only the request whose record failed first may have reached the EMR: {before} before, {after_first_refusal} after"
    );
    assert_eq!(
        emr.seen().len(),
        after_first_refusal,
        "nothing forwarded while the audit is known to fail"
    );
    let before = after_first_refusal;
    let m = metrics(&gate);
    assert!(
        sample(&m, "seibo_gate_audit_failures_total") >= 3.0,
        "audit failures counted: {m}"
    );
    assert!(
        gate.log().contains("audit write failed"),
        "the log says so: {}",
        gate.log()
    );

    // Space returns: served again.
    std::fs::remove_file(&fill).unwrap();
    let mut served = false;
    for _ in 0..40 {
        let r = get_once(gate.port, cfg.clone(), "/patients/P001/labs")
            .await
            .unwrap();
        if r.status == 200 {
            served = true;
            break;
        }
        assert_eq!(r.status, 503, "{r:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(served, "served again once space returns: {}", gate.log());
    assert_eq!(emr.seen().len(), before + 1);

    // Let the outcome lines and the anchor settle, then verify the chain where it lives.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let report = seibo_gate::audit::verify(&inside).unwrap();
    assert!(report.records >= 3, "{report:?}");
    let text = std::fs::read_to_string(inside.join("audit.log")).unwrap();
    assert!(
        !text.contains("audit-unavailable"),
        "a refusal for want of an audit record cannot itself be in the audit"
    );
}

// ---------------------------------------------------------------------------------------------
// Client certificates and TLS versions

/// A certificate made at test time; `issuer` None makes a foreign CA for it.
fn make_cert(
    dir: &Path,
    name: &str,
    issuer: Option<(&str, &str)>,
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
    usage: rcgen::ExtendedKeyUsagePurpose,
) -> Terminal {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let (issuer_cert, issuer_key) = match issuer {
        Some((c, k)) => (c.to_string(), KeyPair::from_pem(k).unwrap()),
        None => {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name
                .push(DnType::CommonName, "Foreign terminal CA");
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            (p.self_signed(&key).unwrap().pem(), key)
        }
    };
    let issuer = Issuer::from_ca_cert_pem(&issuer_cert, issuer_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec![name.to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.not_before = not_before;
    p.not_after = not_after;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![usage];
    let cert = p.signed_by(&key, &issuer).unwrap();
    let t = Terminal {
        name: name.to_string(),
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    std::fs::write(&t.cert, cert.pem()).unwrap();
    std::fs::write(&t.key, key.serialize_pem()).unwrap();
    std::fs::set_permissions(&t.key, std::fs::Permissions::from_mode(0o600)).unwrap();
    t
}

/// Issue 7, art 12.1: client certificates that are expired, not yet valid, for server
/// authentication only, or from a foreign CA are refused at the TLS handshake (no HTTP
/// response), each counted under its reason; a certificate made the same way but valid and
/// for client authentication completes the handshake (the control).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_not_yet_valid_wrong_usage_and_foreign_ca_certificates_refused_at_handshake() {
    use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    let emr = RecordingEmr::start();
    let s = site(emr.port, "", "", "");
    let ca_pem = std::fs::read_to_string(s.gate.path("ca/terminal-ca.crt")).unwrap();
    let ca_key = std::fs::read_to_string(s.gate.path("ca/terminal-ca.key")).unwrap();
    // The site's CA can be loaded as the issuer of the test certificates.
    seibo_gate::site::pki::Ca::load(
        &s.gate.path("ca/terminal-ca.crt"),
        &s.gate.path("ca/terminal-ca.key"),
    )
    .unwrap();
    let site_ca = Some((ca_pem.as_str(), ca_key.as_str()));
    let dir = s.gate.path("made");
    std::fs::create_dir_all(&dir).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let day = time::Duration::days(1);

    let cases = [
        (
            "expired",
            make_cert(
                &dir,
                "expired",
                site_ca,
                now - 30 * day,
                now - day,
                ClientAuth,
            ),
        ),
        (
            "not-yet-valid",
            make_cert(
                &dir,
                "future",
                site_ca,
                now + day,
                now + 30 * day,
                ClientAuth,
            ),
        ),
        (
            "wrong-usage",
            make_cert(
                &dir,
                "server-only",
                site_ca,
                now - day,
                now + 30 * day,
                ServerAuth,
            ),
        ),
        (
            "unknown-ca",
            make_cert(&dir, "foreign", None, now - day, now + 30 * day, ClientAuth),
        ),
    ];
    for (reason, t) in &cases {
        let cfg = client_config(&s.gate.ca(), Some(t));
        let why = refusal_at_handshake(s.gate.port, cfg.clone(), Duration::from_secs(3))
            .await
            .unwrap_or_else(|e| panic!("{reason}: {e:#}"));
        assert!(!why.is_empty(), "{reason}");
        let c = s.gate.curl(Some(t), "/patients/P001/labs", &[]);
        assert_eq!(c.status, None, "{reason}: no HTTP answer: {c:?}");
    }
    let control = make_cert(
        &dir,
        "valid",
        site_ca,
        now - day,
        now + 30 * day,
        ClientAuth,
    );
    let cfg = client_config(&s.gate.ca(), Some(&control));
    assert!(
        refusal_at_handshake(s.gate.port, cfg, Duration::from_millis(800))
            .await
            .is_err(),
        "a valid client certificate of the site's CA completes the handshake"
    );

    let m = metrics(&s.gate);
    for (reason, _) in &cases {
        let series =
            format!("seibo_gate_tls_handshakes_total{{listener=\"internet\",result=\"{reason}\"}}");
        assert!(sample(&m, &series) >= 1.0, "{series} in {m}");
    }
    assert!(emr.seen().is_empty(), "nothing forwarded: {:?}", emr.seen());
    assert!(
        s.gate.request_rows().is_empty(),
        "no request reached HTTP: {:?}",
        s.gate.request_rows()
    );
}

/// `openssl s_client` against the gateway with extra arguments; (success, output).
fn s_client(gate: &Gate, t: &Terminal, args: &[&str]) -> (bool, String) {
    let out = Command::new("timeout")
        .args(["20", "openssl", "s_client"])
        .args(["-connect", &format!("127.0.0.1:{}", gate.port)])
        .args(["-servername", "localhost"])
        .arg("-CAfile")
        .arg(gate.ca())
        .arg("-cert")
        .arg(&t.cert)
        .arg("-key")
        .arg(&t.key)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Issue 7, art 12.3: TLS 1.0 and 1.1, and TLS 1.2 with weak suites (CBC, RSA key exchange,
/// 3DES, RC4, NULL), are refused; TLS 1.2 with an AEAD ECDHE suite and TLS 1.3 are accepted
/// (the control). Checked with `openssl s_client`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_0_1_1_and_weak_ciphers_refused_by_openssl() {
    require("openssl", "version");
    let emr = RecordingEmr::start();
    let s = site(emr.port, "", "", "");

    let (ok, text) = s_client(&s.gate, &s.pc1, &["-tls1_3"]);
    assert!(ok && text.contains("TLSv1.3"), "TLS 1.3 control: {text}");
    let (ok, text) = s_client(&s.gate, &s.pc1, &["-tls1_2"]);
    assert!(
        ok && text.contains("TLSv1.2") && (text.contains("GCM") || text.contains("CHACHA20")),
        "TLS 1.2 control: {text}"
    );

    for (what, args) in [
        ("TLS 1.0", vec!["-tls1", "-cipher", "DEFAULT:@SECLEVEL=0"]),
        ("TLS 1.1", vec!["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"]),
        (
            "TLS 1.2 CBC, RSA key exchange, 3DES, RC4, NULL",
            vec![
                "-tls1_2",
                "-cipher",
                "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384:AES128-SHA:AES256-GCM-SHA384:DES-CBC3-SHA:RC4-SHA:NULL-SHA256:@SECLEVEL=0",
            ],
        ),
    ] {
        let (ok, text) = s_client(&s.gate, &s.pc1, &args);
        assert!(!ok, "{what} must be refused: {text}");
        assert!(
            text.contains("Cipher is (NONE)")
                || text.contains("alert")
                || text.contains("no protocols available")
                || text.contains("handshake failure"),
            "{what}: {text}"
        );
    }
    assert!(emr.seen().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Request head: slowloris, idle, header count and size

/// Issue 7 (slowloris): a request head dribbled one header every 300 ms is cut off at
/// `header_read_timeout` (1 s): the connection is closed, with at most a 408, never
/// forwarded. And a kept-alive connection left idle past `idle_timeout` is closed, while one
/// in use stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_head_cut_off_and_idle_connection_closed() {
    let emr = RecordingEmr::start();
    let s = site(
        emr.port,
        "handshake_timeout_ms = 1000\nheader_read_timeout_ms = 1000\nidle_timeout_ms = 1500",
        "",
        "",
    );
    let cfg = s.gate.client(&s.pc1);

    // A TCP connection that never starts the TLS handshake is closed at handshake_timeout.
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", s.gate.port))
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("a silent connection must be closed within handshake_timeout (1 s)");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert!(started.elapsed() < Duration::from_millis(3000));

    let mut tls = tls_connect(s.gate.port, cfg.clone()).await.unwrap();
    tls.write_all(b"GET /patients/P001/labs HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut closed = false;
    let mut answer = Vec::new();
    for i in 0..30 {
        let line = format!("X-Dribble-{i}: a\r\n");
        if tls.write_all(line.as_bytes()).await.is_err() || tls.flush().await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(300), tls.read(&mut buf)).await {
            Err(_) => {} // nothing yet: keep dribbling
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
        }
    }
    let elapsed = started.elapsed();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(
        closed,
        "a dribbled head must be cut off (got {answer:?} in {elapsed:?})"
    );
    assert!(
        elapsed < Duration::from_millis(3500),
        "cut off after {elapsed:?}; header_read_timeout is 1 s"
    );
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    assert!(emr.seen().is_empty(), "never forwarded: {:?}", emr.seen());

    // Idle: an HTTP/2 connection (which the HTTP/1 head timeout does not cover) used every
    // 500 ms stays open; left alone past idle_timeout it is closed.
    let mut h2 = (*cfg).clone();
    h2.alpn_protocols = vec![b"h2".to_vec()];
    let tls = tls_connect(s.gate.port, Arc::new(h2)).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .unwrap();
    let driver = tokio::spawn(conn);
    let get =
        |sender: &mut hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>| {
            let req = http::Request::get(format!(
                "https://localhost:{}/patients/P001/labs",
                s.gate.port
            ))
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
            let fut = sender.send_request(req);
            async move {
                let resp = tokio::time::timeout(REQUEST_LIMIT, fut).await??;
                Ok::<u16, anyhow::Error>(resp.status().as_u16())
            }
        };
    for _ in 0..5 {
        assert_eq!(get(&mut sender).await.unwrap(), 200);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let closed = tokio::time::timeout(Duration::from_secs(5), driver).await;
    assert!(
        closed.is_ok(),
        "an idle HTTP/2 connection must be closed within idle_timeout (1.5 s)"
    );
    assert!(get(&mut sender).await.is_err());
}

/// Issue 7 (header limits): more header fields than `max_headers` (HTTP/1 via hyper, HTTP/2
/// via curl through the service check) and a head larger than `max_header_bytes` are
/// refused with 431 and never forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_or_too_large_headers_give_431() {
    let emr = RecordingEmr::start();
    let s = site(
        emr.port,
        "max_headers = 20\nmax_header_bytes = 8192",
        "",
        "",
    );
    let many: String = (0..30).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (status, text) = raw(
        &s.gate,
        &s.pc1,
        &format!("GET /patients/P001/labs HTTP/1.1\r\nHost: localhost\r\n{many}Connection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 431, "{text}");
    let big = "b".repeat(10_000);
    let (status, text) = raw(
        &s.gate,
        &s.pc1,
        &format!("GET /patients/P001/labs HTTP/1.1\r\nHost: localhost\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 431, "{text}");

    let mut args = vec!["--http2".to_string()];
    for i in 0..30 {
        args.push("-H".into());
        args.push(format!("X-H{i}: v"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let c = s.gate.curl(Some(&s.pc1), "/patients/P001/labs", &args);
    assert_eq!(c.status, Some(431), "HTTP/2: {c:?}");
    assert!(c.headers.starts_with("http/2"), "{}", c.headers);
    assert!(c.body.contains("headers-too-large"), "{}", c.body);

    // Under the limits: served.
    let c = s
        .gate
        .curl(Some(&s.pc1), "/patients/P001/labs", &["-H", "X-One: 1"]);
    assert_eq!(c.status, Some(200), "{c:?}");
    assert_eq!(emr.seen().len(), 1, "only the last one: {:?}", emr.seen());
}

// ---------------------------------------------------------------------------------------------
// Request body and framing

const NOTES_ROUTE: &str = r#"
[[route]]
path = "/orders/{patient}/notes"
category = "notes"
methods = ["POST"]
max_body_bytes = 1024
"#;

/// Issue 7 (body limits): a body larger than its route's `max_body_bytes` is refused with the
/// 413 page before anything is forwarded (declared by Content-Length, HTTP/1.1 and HTTP/2)
/// and when streamed without a length over HTTP/2; a body within the limit is forwarded.
/// Routes without their own limit use `[limits] max_body_bytes`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_route_limit_gives_413() {
    let emr = RecordingEmr::start();
    let s = site(
        emr.port,
        "max_body_bytes = 2048",
        "",
        &format!(
            "{NOTES_ROUTE}\n[[route]]\npath = \"/forms/{{patient}}\"\ncategory = \"notes\"\nmethods = [\"POST\"]\n"
        ),
    );
    let post = |path: &str, n: usize, extra: &[&str]| {
        let file = s.gate.path(&format!("body-{n}"));
        std::fs::write(&file, "x".repeat(n)).unwrap();
        let data = format!("@{}", file.display());
        let mut args = vec!["-X", "POST", "--data-binary", data.as_str()];
        args.extend_from_slice(extra);
        s.gate.curl(Some(&s.pc1), path, &args)
    };
    let c = post("/orders/P001/notes", 2000, &["--http1.1"]);
    assert_eq!(c.status, Some(413), "{c:?}");
    assert!(
        c.body.contains("送信するデータが大きすぎます"),
        "{}",
        c.body
    );
    let c = post("/orders/P001/notes", 2000, &["--http2"]);
    assert_eq!(c.status, Some(413), "{c:?}");
    // Streamed over HTTP/2 without a length: cut off at the limit.
    let c = post(
        "/orders/P001/notes",
        5000,
        &["--http2", "-H", "Content-Length:"],
    );
    assert_eq!(c.status, Some(413), "streamed: {c:?}");
    // The default limit applies to a route without its own.
    let c = post("/forms/P001", 3000, &["--http1.1"]);
    assert_eq!(c.status, Some(413), "{c:?}");
    assert!(emr.seen().is_empty(), "nothing forwarded: {:?}", emr.seen());

    let c = post("/orders/P001/notes", 500, &["--http1.1"]);
    assert_eq!(c.status, Some(200), "{c:?}");
    let c = post("/forms/P001", 1500, &["--http1.1"]);
    assert_eq!(c.status, Some(200), "{c:?}");
    assert_eq!(emr.seen().len(), 2);
    let rows = s.gate.request_rows_settled(6);
    // Declared lengths are refused before the audit's decision; a streamed body is found too
    // large after it (decision allow, outcome 413).
    assert_eq!(
        rows.iter()
            .filter(|r| r["reason"] == "body-too-large")
            .count(),
        3,
        "{rows:#?}"
    );
    assert_eq!(
        rows.iter().filter(|r| r["status"] == 413).count(),
        4,
        "{rows:#?}"
    );
}

/// Issue 7 (request smuggling): `Content-Length` together with `Transfer-Encoding`, any
/// `Transfer-Encoding` on HTTP/1, conflicting `Content-Length`s, and an HTTP/1.0 request
/// with `Transfer-Encoding` are refused with 400 and never forwarded (nor is anything
/// smuggled after them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_content_length_and_transfer_encoding_refused_never_forwarded() {
    let emr = RecordingEmr::start();
    let s = site(emr.port, "", "", NOTES_ROUTE);
    let smuggled = "GET /patients/P002/labs HTTP/1.1\r\nHost: localhost\r\n\r\n";
    for head in [
        format!("POST /orders/P001/notes HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("POST /orders/P001/notes HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 60\r\nConnection: close\r\n\r\n0\r\n\r\n{smuggled}"),
        "POST /orders/P001/notes HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_string(),
        "POST /orders/P001/notes HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n0\r\n\r\n".to_string(),
        "POST /orders/P001/notes HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked, identity\r\nConnection: close\r\n\r\n0\r\n\r\n".to_string(),
        format!("POST /orders/P001/notes HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\nContent-Length: 40\r\nConnection: close\r\n\r\nabc{smuggled}"),
        "POST /orders/P001/notes HTTP/1.0\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_string(),
    ] {
        let (status, text) = raw(&s.gate, &s.pc1, &head).await;
        assert_eq!(status, 400, "{head:?}: {text}");
        assert_eq!(
            text.matches("HTTP/1.").count(),
            1,
            "one answer only, nothing smuggled: {text}"
        );
    }
    assert!(emr.seen().is_empty(), "never forwarded: {:?}", emr.seen());
    // A plain length is fine.
    let (status, text) = raw(
        &s.gate,
        &s.pc1,
        "POST /orders/P001/notes HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(emr.seen().len(), 1);
    assert_eq!(emr.seen()[0].one("content-length"), "3");
    assert!(emr.seen()[0].all("transfer-encoding").is_empty());
}

/// Issue 7 (target forms, HTTP versions, Host): an absolute-form target is refused with 400
/// (`absolute-form`), also when it names the gateway; a target over 4096 bytes with 400
/// (`too-long`), one beyond the head limit with 431; HTTP/1.0 is served like HTTP/1.1 and
/// forwarded as HTTP/1.1 with the EMR's own Host; a client's Host never reaches the EMR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_long_path_http_1_0_and_host_header() {
    let emr = RecordingEmr::start();
    let s = site(emr.port, "", "", "");
    for target in [
        "https://localhost/patients/P001/labs",
        "http://127.0.0.1/patients/P001/labs",
        "http://evil.example/patients/P001/labs",
    ] {
        let (status, text) = raw(
            &s.gate,
            &s.pc1,
            &format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(status, 400, "{target}: {text}");
        assert!(text.contains("absolute-form"), "{text}");
    }
    let long = format!("/patients/P001/labs/{}", "a".repeat(5000));
    let (status, text) = raw(
        &s.gate,
        &s.pc1,
        &format!("GET {long} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("too-long"), "{text}");
    let huge = format!("/patients/P001/labs/{}", "a".repeat(80_000));
    let (status, _) = raw(
        &s.gate,
        &s.pc1,
        &format!("GET {huge} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(status == 431 || status == 414, "{status}");
    assert!(emr.seen().is_empty(), "{:?}", emr.seen());
    let rows = s.gate.request_rows_settled(4);
    assert!(rows.iter().any(|r| r["reason"] == "too-long"), "{rows:#?}");
    assert!(
        rows.iter()
            .all(|r| r["path"].as_str().unwrap_or("").len() < 2100),
        "audit paths are truncated"
    );

    // HTTP/1.0, with and without Host; a spoofed Host.
    for head in [
        "GET /patients/P001/labs HTTP/1.0\r\n\r\n",
        "GET /patients/P001/labs HTTP/1.0\r\nHost: evil.example\r\n\r\n",
        "GET /patients/P001/labs HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    ] {
        emr.clear();
        let (status, text) = raw(&s.gate, &s.pc1, head).await;
        assert_eq!(status, 200, "{head:?}: {text}");
        let seen = emr.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].target, "/patients/P001/labs");
        assert_eq!(seen[0].one("host"), format!("127.0.0.1:{}", emr.port));
    }
}

// ---------------------------------------------------------------------------------------------
// Connections per terminal

/// Issue 7 (connections per terminal): with `max_connections_per_terminal = 2`, a third
/// simultaneous connection of the same terminal gets the 429 page and is closed, another
/// terminal is unaffected, and closing one connection frees a slot; with `max_connections =
/// 3`, a fourth connection in all is closed at accept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_terminal_capped_with_429() {
    let emr = RecordingEmr::start();
    let s = site(
        emr.port,
        "max_connections_per_terminal = 2\nmax_connections = 3",
        "",
        "",
    );
    s.gate.add_physician("dr2");
    let pc2 = s.gate.add_terminal("dr2", "pc2");
    let cfg = s.gate.client(&s.pc1);
    let mut a = Conn::open(s.gate.port, cfg.clone()).await.unwrap();
    let mut b = Conn::open(s.gate.port, cfg.clone()).await.unwrap();
    assert_eq!(a.get("/patients/P001/labs").await.unwrap().status, 200);
    assert_eq!(b.get("/patients/P001/labs").await.unwrap().status, 200);
    let r = get_once(s.gate.port, cfg.clone(), "/patients/P001/labs")
        .await
        .unwrap();
    assert_eq!(r.status, 429, "{r:?}");
    assert!(
        r.body.contains("この端末からの接続が多すぎます"),
        "{}",
        r.body
    );
    assert_eq!(r.header("connection"), Some("close"));
    let r = get_once(s.gate.port, s.gate.client(&pc2), "/patients/P001/labs")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "another terminal: {r:?}");
    drop(a);
    let mut freed = false;
    for _ in 0..40 {
        // Until the closed connections are gone, a new one may still meet the total limit
        // (closed at accept) or the terminal's (429): both mean "not freed yet".
        let r = get_once(s.gate.port, cfg.clone(), "/patients/P001/labs").await;
        if r.is_ok_and(|r| r.status == 200) {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(freed, "a closed connection frees its slot");
    assert_eq!(b.get("/patients/P001/labs").await.unwrap().status, 200);

    // Three connections in all (b and two of pc2's): a fourth is closed at accept.
    let cfg2 = s.gate.client(&pc2);
    let mut held = Vec::new();
    for _ in 0..40 {
        if held.len() == 2 {
            break;
        }
        if let Ok(mut c) = Conn::open(s.gate.port, cfg2.clone()).await {
            if c.get("/patients/P001/labs")
                .await
                .is_ok_and(|r| r.status == 200)
            {
                held.push(c);
                continue;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        held.len(),
        2,
        "two more connections fit under max_connections"
    );
    let why = refusal_at_handshake(s.gate.port, cfg2.clone(), Duration::from_secs(3))
        .await
        .expect("a fourth connection must be closed");
    assert!(!why.is_empty());
    let m = metrics(&s.gate);
    assert!(
        sample(
            &m,
            "seibo_gate_refused_connections_total{cause=\"connection-limit\",listener=\"internet\"}"
        ) >= 1.0,
        "{m}"
    );
    assert!(
        sample(
            &m,
            "seibo_gate_refused_connections_total{cause=\"terminal-connection-limit\",listener=\"internet\"}"
        ) >= 1.0,
        "{m}"
    );
}

// ---------------------------------------------------------------------------------------------
// Secrets

/// Issue 7 (secrets at start): `serve` refuses to start when the server key is world-readable
/// or the terminal CA key is group-readable, naming the file; a server key readable by a group
/// that is not the service's own (0640) starts with a warning. The state directory is made
/// 0700 (also when it was looser), the audit log and the admin socket 0600.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_keys_open_to_others_and_keeps_state_private() {
    let emr = RecordingEmr::start();
    let mut gate = Gate::init(emr.port);
    gate.terminal_credential_only();
    let root = gate.dir.path().to_path_buf();
    let chmod = |p: &str, mode: u32| {
        std::fs::set_permissions(root.join(p), std::fs::Permissions::from_mode(mode)).unwrap()
    };
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;

    chmod("tls/server.key", 0o644);
    gate.spawn();
    let status = gate.wait_exit(START_LIMIT).expect("serve must exit");
    assert!(!status.success());
    let log = gate.log();
    assert!(
        log.contains("server.key") && log.contains("0644") && log.contains("refusing to start"),
        "{log}"
    );

    chmod("tls/server.key", 0o600);
    chmod("ca/terminal-ca.key", 0o640);
    gate.spawn();
    let status = gate.wait_exit(START_LIMIT).expect("serve must exit");
    assert!(!status.success());
    assert!(gate.log().contains("terminal-ca.key"), "{}", gate.log());

    chmod("ca/terminal-ca.key", 0o600);
    chmod("tls/server.key", 0o640);
    // A group that is not the service's own (65534, nogroup): the key is readable by others'
    // group, a warning. (Group-readable by the service's own group is the README's deployment:
    // no warning, `cli::art_12_2_check_config_as_service_user_…`.)
    std::os::unix::fs::chown(root.join("tls/server.key"), None, Some(65534)).unwrap();
    chmod("state", 0o755);
    gate.start();
    assert!(
        gate.log().contains("group-readable"),
        "a warning for 0640 with another group: {}",
        gate.log()
    );
    assert_eq!(mode(&gate.path("state")), 0o700);
    assert_eq!(mode(&gate.audit_dir()), 0o700);
    assert_eq!(mode(&gate.audit_dir().join("audit.log")), 0o600);
    assert_eq!(mode(&gate.admin_socket()), 0o600);
    gate.add_physician("dr1");
    let pc1 = gate.add_terminal("dr1", "pc1");
    assert_eq!(mode(&pc1.key), 0o600);
}

/// Issue 7 (secrets in logs): after a whole sign-in (one-time password, forced change, a
/// view with the session cookie, a wrong password), neither password, nor the session
/// token, nor any private key appears in the serve log or the audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_session_token_or_private_key_in_logs_or_audit() {
    let emr = SampleEmr::start();
    let mut gate = Gate::init(emr.port);
    gate.start();
    gate.grant("P001", today_jst());
    let initial = "Initial-Pw-7fq2x9";
    let chosen = "Chosen-Pw-k3m8v4z1";
    let wrong = "Wrong-Pw-q9w8e7r6";
    gate.add_physician_with_password("dr1", "Dr 1", initial);
    let pc1 = gate.add_terminal("dr1", "pc1");
    let cfg = gate.client(&pc1);

    let r = form(
        &gate,
        &cfg,
        "/.seibo/login",
        None,
        &[("id", "dr1"), ("password", wrong), ("next", "/")],
    )
    .await;
    assert_ne!(r.status, 303, "{r:?}");
    let r = form(
        &gate,
        &cfg,
        "/.seibo/login",
        None,
        &[
            ("id", "dr1"),
            ("password", initial),
            ("next", "/patients/P001/labs"),
        ],
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let cookie = session_cookie(&r).expect("session cookie");
    let r = form(
        &gate,
        &cfg,
        "/.seibo/password",
        Some(&cookie),
        &[("current", initial), ("new", chosen)],
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let cookie = session_cookie(&r).unwrap_or(cookie);
    let r = send(
        &gate,
        &cfg,
        "GET",
        "/patients/P001/labs",
        Some(&cookie),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(cookie.len() >= 16, "{cookie}");

    // The outcome lines settle, then everything written is searched.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut haystack = gate.log();
    haystack.push_str(&std::fs::read_to_string(gate.audit_dir().join("audit.log")).unwrap());
    haystack.push_str(&gate.ok(&["audit", "query", "--json"]));
    for (what, secret) in [
        ("initial password", initial),
        ("chosen password", chosen),
        ("wrong password", wrong),
        ("session token", cookie.as_str()),
    ] {
        assert!(!haystack.contains(secret), "{what} leaked into the logs");
    }
    for key in [
        gate.path("tls/server.key"),
        gate.path("ca/terminal-ca.key"),
        pc1.key.clone(),
    ] {
        let pem = std::fs::read_to_string(&key).unwrap();
        for line in pem
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() > 20)
        {
            assert!(!haystack.contains(line), "{} leaked", key.display());
        }
    }
    assert!(!haystack.contains("PRIVATE KEY"));
    assert!(haystack.contains("dr1"), "the log is not empty: {haystack}");
}

fn session_cookie(r: &Reply) -> Option<String> {
    r.headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            v.split(';')
                .next()
                .and_then(|kv| kv.trim().strip_prefix("__Host-seibo_session="))
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        })
}

async fn form(
    gate: &Gate,
    cfg: &Arc<ClientConfig>,
    target: &str,
    cookie: Option<&str>,
    fields: &[(&str, &str)],
) -> Reply {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    send(gate, cfg, "POST", target, cookie, Some(body))
        .await
        .unwrap()
}

/// One request on a new connection.
async fn send(
    gate: &Gate,
    cfg: &Arc<ClientConfig>,
    method: &str,
    target: &str,
    cookie: Option<&str>,
    body: Option<String>,
) -> anyhow::Result<Reply> {
    let tls = tls_connect(gate.port, cfg.clone()).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .context("HTTP/1.1 handshake")?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut b = http::Request::builder()
        .method(method)
        .uri(target)
        .header("host", format!("localhost:{}", gate.port));
    if let Some(c) = cookie {
        b = b.header("cookie", format!("__Host-seibo_session={c}"));
    }
    if body.is_some() {
        b = b.header("content-type", "application/x-www-form-urlencoded");
    }
    let req = b.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let resp = tokio::time::timeout(REQUEST_LIMIT, sender.send_request(req))
        .await
        .context("response timed out")??;
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(REQUEST_LIMIT, body.collect())
        .await
        .context("body timed out")??
        .to_bytes();
    driver.abort();
    Ok(Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
