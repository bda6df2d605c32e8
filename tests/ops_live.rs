//! Operations against the running gateway (issue 5): reload with SIGHUP under traffic, and a
//! live Prometheus scrape after traffic of every kind, checked with promtool.

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

fn metrics_addr(g: &Gate) -> std::net::SocketAddr {
    seibo_gate::site::config::Config::load(&g.config)
        .expect("config")
        .metrics
        .expect("metrics listener configured")
}

/// Art 12.8 (administrators monitor usage) and issue 5: `systemctl reload` sends SIGHUP; the
/// gateway re-reads routes without dropping a request, and the new route takes effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn art_12_8_sighup_during_traffic_loses_no_request_and_a_new_route_takes_effect() {
    let emr = RecordingEmr::start();
    let mut g = Gate::init(emr.port);
    g.terminal_credential_only();
    g.start();
    g.add_physician("dr1");
    let t = g.add_terminal("dr1", "pc1");
    g.grant("P001", today_jst());
    let cfg = g.client(&t);

    let mut probe = Conn::open(g.port, cfg.clone()).await.expect("connect");
    let before = probe.get("/records/P001").await.expect("request");
    assert_eq!(before.status, 404, "the new route does not exist yet");

    // Bounded load: 3 keep-alive clients, at most 8 s and 3000 requests in all.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for _ in 0..3 {
        let (stop, ok, failed, cfg) = (stop.clone(), ok.clone(), failed.clone(), cfg.clone());
        let port = g.port;
        load.push(tokio::spawn(async move {
            let started = Instant::now();
            let mut conn = Conn::open(port, cfg).await.expect("connect");
            while !stop.load(Ordering::Relaxed)
                && started.elapsed() < Duration::from_secs(8)
                && ok.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < 3000
            {
                match conn.get("/patients/P001/labs").await {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let text = std::fs::read_to_string(&g.config).expect("gate.toml");
    std::fs::write(
        &g.config,
        format!("{text}\n[[route]]\npath = \"/records/{{patient}}\"\ncategory = \"summaries\"\n"),
    )
    .expect("write gate.toml");
    let pid = g.pid().expect("running");
    let hup = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill -HUP");
    assert!(hup.success());

    // The new route answers within a bounded time, on the connection opened before the reload.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut after = 0;
    while Instant::now() < deadline {
        after = probe.get("/records/P001").await.expect("request").status;
        if after == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(after, 200, "new route after SIGHUP:\n{}", g.log());
    assert!(
        emr.seen().iter().any(|s| s.target == "/records/P001"),
        "the EMR received the newly routed request"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.expect("load task");
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(ok > 0, "the load ran");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed across the reload",
        ok + failed
    );
    assert!(g.log().contains("configuration reloaded"), "{}", g.log());

    // A broken config is refused on SIGHUP and the running one stays.
    std::fs::write(&g.config, "this is not toml").expect("write");
    let _ = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        probe.get("/records/P001").await.expect("request").status,
        200
    );
    assert!(g.log().contains("reload refused"), "{}", g.log());
}

fn curl_signin(
    g: &Gate,
    t: &Terminal,
    jar: &std::path::Path,
    path: &str,
    form: &[(&str, &str)],
) -> CurlReply {
    let mut extra: Vec<String> = vec![
        "-b".into(),
        jar.display().to_string(),
        "-c".into(),
        jar.display().to_string(),
    ];
    for (k, v) in form {
        extra.push("--data-urlencode".into());
        extra.push(format!("{k}={v}"));
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    g.curl(Some(t), path, &extra)
}

/// Art 12.8 and issue 5: a live scrape after traffic of every kind (allowed, refused for each
/// stage, sign-in failures and success, a failed handshake, consent events) passes
/// `promtool check metrics`, and carries no physician or patient identifier.
#[test]
fn art_12_8_live_scrape_after_every_kind_of_traffic_passes_promtool() {
    let emr = SampleEmr::start();
    let mut g = Gate::init(emr.port);
    g.start();
    let out = g.ok(&["physician", "add", "--id", "dr-live", "--name", "Dr Live"]);
    let initial = out
        .lines()
        .find_map(|l| l.split_once("initial password").map(|(_, r)| r))
        .and_then(|r| r.rsplit(": ").next())
        .expect("initial password printed")
        .trim()
        .to_string();
    let t = g.add_terminal("dr-live", "pc-live");
    g.grant("P001", today_jst());
    let jar = g.path("jar.txt");

    // No session → 401; wrong password → 401; the one-time password → forced change.
    assert_eq!(
        g.curl(Some(&t), "/patients/P001/labs", &[]).status,
        Some(401)
    );
    let wrong = curl_signin(
        &g,
        &t,
        &jar,
        "/.seibo/login",
        &[("id", "dr-live"), ("password", "wrong-one")],
    );
    assert_eq!(wrong.status, Some(401), "{wrong:?}");
    let first = curl_signin(
        &g,
        &t,
        &jar,
        "/.seibo/login",
        &[("id", "dr-live"), ("password", &initial)],
    );
    assert_eq!(first.status, Some(303), "{first:?}");
    assert!(
        first.headers.contains("location: /.seibo/password"),
        "{}",
        first.headers
    );
    let changed = curl_signin(
        &g,
        &t,
        &jar,
        "/.seibo/password",
        &[("current", &initial), ("new", "Tanuki-Seiyo-2026")],
    );
    assert_eq!(changed.status, Some(303), "{changed:?}");

    let cookie = ["-b", jar.to_str().expect("utf-8")];
    assert_eq!(
        g.curl(Some(&t), "/patients/P001/labs", &cookie).status,
        Some(200)
    );
    assert_eq!(
        g.curl(Some(&t), "/patients/P002/labs", &cookie).status,
        Some(403)
    );
    assert_eq!(g.curl(Some(&t), "/nowhere", &cookie).status, Some(404));
    assert_eq!(
        g.curl(Some(&t), "/patients/P001%2fx/labs", &cookie).status,
        Some(400)
    );
    assert!(
        g.curl(None, "/patients/P001/labs", &[]).status.is_none(),
        "no certificate, no response"
    );
    g.withdraw("P001");
    assert_eq!(
        g.curl(Some(&t), "/patients/P001/labs", &cookie).status,
        Some(403)
    );

    let addr = metrics_addr(&g);
    let scrape = Command::new("curl")
        .args(["-sS", "--max-time", "10", &format!("http://{addr}/metrics")])
        .output()
        .expect("curl metrics");
    assert!(scrape.status.success());
    let text = String::from_utf8(scrape.stdout).expect("utf-8");
    for needle in [
        "seibo_gate_requests_total{decision=\"allow\"",
        "reason=\"no-consent\"",
        "reason=\"no-route\"",
        "reason=\"no-session\"",
        "seibo_gate_signin_attempts_total{result=\"failed\"}",
        "seibo_gate_tls_handshakes_total",
        "seibo_gate_consent_events_total{kind=\"withdraw\"}",
        "seibo_gate_audit_write_duration_seconds_bucket",
        "seibo_gate_certificate_expiry_timestamp_seconds",
        "seibo_gate_audit_chain_intact 1",
        "seibo_gate_audit_verifications_total{result=\"intact\"}",
    ] {
        assert!(
            text.contains(needle),
            "{needle} missing in the scrape:\n{text}"
        );
    }
    for id in ["dr-live", "pc-live", "P001", "P002"] {
        assert!(!text.contains(id), "identifier {id} in a metric label");
    }

    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool must be installed (scripts/install-test-tools)");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(text.as_bytes()).expect("write scrape");
    }
    let out = child.wait_with_output().expect("promtool");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool: {report}"
    );
}

/// Art 12.8: the gateway verifies its own audit chain periodically; an altered index entry
/// turns `seibo_gate_audit_index_intact` to 0 with the chain still intact, and a record edited
/// on disk while it runs turns `seibo_gate_audit_chain_intact` to 0 (the alerts' inputs).
#[test]
fn art_12_8_tampering_while_serving_is_seen_by_the_periodic_chain_check() {
    let emr = SampleEmr::start();
    let mut g = Gate::init(emr.port);
    g.terminal_credential_only();
    let text = std::fs::read_to_string(&g.config).expect("gate.toml");
    std::fs::write(
        &g.config,
        text.replacen("[state]\n", "[state]\naudit_verify_interval_secs = 1\n", 1),
    )
    .expect("write gate.toml");
    g.start();
    g.add_physician("dr1");
    let t = g.add_terminal("dr1", "pc1");
    g.grant("P001", today_jst());
    for _ in 0..3 {
        assert_eq!(
            g.curl(Some(&t), "/patients/P001/labs", &[]).status,
            Some(200)
        );
    }
    let addr = metrics_addr(&g);
    let scrape = || -> String {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", &format!("http://{addr}/metrics")])
            .output()
            .expect("curl metrics");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let wait_for = |needle: &str| -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if scrape().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    };
    assert!(wait_for("seibo_gate_audit_chain_intact 1"), "{}", scrape());
    assert!(wait_for("seibo_gate_audit_index_intact 1"), "{}", scrape());

    // The per-patient index altered (the offset of its first trusted entry): the chain still
    // verifies, the index check says it disagrees (its own alert's input).
    let idx = g.audit_dir().join("audit.idx");
    let deadline = Instant::now() + Duration::from_secs(10);
    let covered = loop {
        let header = std::fs::read(&idx).expect("audit.idx");
        let covered = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        if covered >= 1 || Instant::now() > deadline {
            break covered;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(covered >= 1, "the index covers no line yet");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&idx)
            .expect("open audit.idx");
        // Entry 1 (after the 128-byte header): key (8 bytes), then the line's offset.
        f.seek(SeekFrom::Start(128 + 8)).expect("seek");
        f.write_all(&7u64.to_le_bytes()).expect("write");
    }
    assert!(
        wait_for("seibo_gate_audit_index_intact 0"),
        "the periodic check did not see the altered index:\n{}",
        scrape()
    );
    assert!(scrape().contains("seibo_gate_audit_chain_intact 1"));
    assert!(scrape().contains("seibo_gate_audit_verifications_total{result=\"index-wrong\"}"));

    // Edit one byte of the second record in place (same length: the writer's appends go on).
    let log = g.audit_dir().join("audit.log");
    let mut bytes = std::fs::read(&log).expect("audit.log");
    let second = bytes
        .iter()
        .position(|b| *b == b'\n')
        .expect("a first line")
        + 1;
    let at = bytes[second..]
        .windows(6)
        .position(|w| w == b"\"site\"")
        .expect("a site field")
        + second
        + 9;
    bytes[at] = if bytes[at] == b'x' { b'y' } else { b'x' };
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&log)
            .expect("open audit.log");
        f.seek(SeekFrom::Start(at as u64)).expect("seek");
        f.write_all(&bytes[at..at + 1]).expect("write");
    }
    assert!(
        wait_for("seibo_gate_audit_chain_intact 0"),
        "the periodic check did not see the edit:\n{}",
        scrape()
    );
    assert!(scrape().contains("seibo_gate_audit_verifications_total{result=\"broken\"}"));
    assert!(
        g.log().contains("audit chain verification FAILED"),
        "{}",
        g.log()
    );
}
