//! The gateway in-process: `server::bind` on 127.0.0.1:0 (no guessed port), `server::serve` on
//! a `FixedClock` with a shutdown signal of the test's own; a site made at test time (CA,
//! server and terminal certificates), the sample EMR as the real upstream, and real mutual-TLS
//! requests from a rustls client. Art 8.3 at a fixed date: a consent published 999 days before
//! the clock's day is viewable, one published 1000 days before is not. Then the shutdown
//! signal: `serve` returns once open connections are done, and the audit is closed intact.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{client_config, Conn, Terminal, REQUEST_LIMIT, START_LIMIT};
use seibo_gate::admin::{self, AdminRequest};
use seibo_gate::audit::{self, QueryFilter};
use seibo_gate::ops::clock::{FixedClock, SharedClock};
use seibo_gate::registry::model::ConsentBy;

/// The audit's rows as `audit query --json` prints them.
fn audit_rows(dir: &std::path::Path) -> Vec<serde_json::Value> {
    let filter = QueryFilter {
        patient: None,
        physician: None,
        since: None,
        until: None,
    };
    audit::query(dir, &filter)
        .expect("audit query")
        .iter()
        .map(|r| serde_json::to_value(r).expect("row as JSON"))
        .collect()
}

/// Waits (bounded) until the audit holds a row for which `pred` holds.
async fn audit_has(dir: &std::path::Path, what: &str, pred: impl Fn(&serde_json::Value) -> bool) {
    let start = std::time::Instant::now();
    loop {
        let rows = audit_rows(dir);
        if rows.iter().any(&pred) {
            return;
        }
        assert!(
            start.elapsed() < START_LIMIT,
            "no audit row for {what} within {START_LIMIT:?}: {rows:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_gateway_on_port_0_fixed_clock_consent_window_and_drain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (trigger, shutdown) = seibo_gate::ops::shutdown::channel();

    // The upstream: the sample EMR, in-process on a port the kernel chose.
    let emr_socket = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the EMR");
    let emr = emr_socket.local_addr().expect("EMR address");
    let emr_task = tokio::spawn(seibo_gate::ops::demo::serve_sample_emr(
        emr_socket,
        shutdown.clone(),
    ));

    // A site made now: `init`, physician dr-saiyo, terminal demo-pc (certificate issued now).
    let site = seibo_gate::ops::demo::setup(dir.path(), emr)
        .await
        .expect("demo site");
    let mut cfg = site.config.clone();
    for l in &mut cfg.listeners {
        l.listen = "127.0.0.1:0".parse().expect("addr");
    }
    cfg.metrics = None;
    // Test-bench mode: the terminal's certificate alone, no sign-in (as the binary tests do).
    cfg.auth.password_required = false;
    let audit_dir = cfg.state_dir.join("audit");
    let admin_socket = cfg.admin_socket.clone();

    // The clock stands still at one instant; P002 is at day 999 of its consent on that day.
    let now = time::OffsetDateTime::now_utc();
    let clock: SharedClock = Arc::new(FixedClock(now));
    let today = clock.today();

    let bound = seibo_gate::ops::server::bind(cfg).await.expect("bind");
    let ready = bound.ready();
    assert_eq!(ready.listeners.len(), 1, "{ready:?}");
    let addr = ready.listeners[0];
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
    assert_eq!(ready.metrics, None);
    let gateway = tokio::spawn(seibo_gate::ops::server::serve(
        bound,
        clock.clone(),
        shutdown.clone(),
    ));

    // The daily purge runs first thing (art 11) and would delete a consent whose access has
    // ended: wait until it has finished, then grant through the running gateway's admin socket.
    audit_has(&audit_dir, "the start-up purge", |r| {
        r["path"] == "purge" && r["status"].is_u64()
    })
    .await;
    for (patient, days) in [("P002", 999), ("P003", 1000)] {
        let req = AdminRequest::ConsentGrant {
            patient: patient.into(),
            by: ConsentBy::Patient,
            published: today - time::Duration::days(days),
            no_extension: false,
            form_ref: format!("様式6-inprocess-{patient}"),
            links: Vec::new(),
            explanation: None,
        };
        let r = admin::call(&admin_socket, &req)
            .await
            .expect("admin socket")
            .expect("the gateway answers on its admin socket");
        assert!(r.ok, "grant {patient}: {r:?}");
    }

    // Real mutual TLS from a rustls client, on one keep-alive connection.
    let terminal = Terminal {
        name: "demo-pc".into(),
        cert: site.terminals.join("demo-pc.crt"),
        key: site.terminals.join("demo-pc.key"),
    };
    let tls = client_config(&site.config.ca.cert, Some(&terminal));
    let mut conn = tokio::time::timeout(REQUEST_LIMIT, Conn::open(addr.port(), tls))
        .await
        .expect("connect in time")
        .expect("mutual-TLS connection");

    let r = conn.get("/patients/P002/summaries").await.expect("day 999");
    assert_eq!(r.status, 200, "day 999: {r:?}");
    let until = format!(
        "<th>x-seibo-access-until</th><td>{:04}-{:02}-{:02}</td>",
        today.year(),
        u8::from(today.month()),
        today.day()
    );
    assert!(
        r.body.contains(&until),
        "access until the clock's day: {}",
        r.body
    );

    let r = conn
        .get("/patients/P003/summaries")
        .await
        .expect("day 1000");
    assert_eq!(r.status, 403, "day 1000: {r:?}");

    // Both requests are in the audit, at the fixed clock's time.
    audit_has(&audit_dir, "the refusal at day 1000", |r| {
        r["patient"] == "P003" && r["reason"] == "viewing-period-ended"
    })
    .await;
    let rows = audit_rows(&audit_dir);
    let allowed = rows
        .iter()
        .find(|r| r["patient"] == "P002" && r["method"] == "GET")
        .expect("the day-999 view is audited");
    assert_eq!(allowed["decision"], "allow", "{allowed:#?}");
    assert_eq!(
        allowed["time"],
        seibo_gate::ops::clock::rfc3339(now),
        "the record carries the fixed clock's time"
    );

    // Shutdown with the keep-alive connection still open: `serve` drains it and returns.
    trigger.fire();
    let served = tokio::time::timeout(Duration::from_secs(15), gateway)
        .await
        .expect("serve returns after the shutdown signal (drained within 10 s)")
        .expect("serve task");
    served.expect("serve ends cleanly");
    assert!(
        conn.get("/patients/P002/summaries").await.is_err(),
        "the drained connection is closed"
    );
    assert!(!admin_socket.exists(), "the admin socket is removed");
    let report = audit::verify(&audit_dir).expect("the audit log is closed intact");
    assert!(report.records >= 4, "{report:?}");
    let _ = emr_task.await;
}

/// The binary told to bind port 0 reports the bound address in its "seibo-gate ready" log
/// line; the harness reads it there instead of guessing a free port, at every start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_on_port_0_reports_its_listener() {
    let emr = common::SampleEmr::start();
    let mut gate = common::Gate::init(emr.port);
    gate.terminal_credential_only();
    gate.listen_on_port_0();
    assert_eq!(gate.port, 0);
    gate.add_physician("dr-nomura");
    let pc1 = gate.add_terminal("dr-nomura", "pc-1");
    gate.grant("P001", common::today_jst());
    for _ in 0..2 {
        gate.start();
        assert_ne!(gate.port, 0, "{}", gate.log());
        assert_eq!(
            gate.bound_listeners(),
            [std::net::SocketAddr::from(([127, 0, 0, 1], gate.port))]
        );
        let r = common::get_once(gate.port, gate.client(&pc1), "/patients/P001/labs")
            .await
            .expect("request");
        assert_eq!(r.status, 200, "{r:?}");
        assert!(gate.stop(), "stops on SIGTERM:\n{}", gate.log());
    }
}
