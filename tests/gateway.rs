//! Issue 2 acceptance tests: the real `seibo-gate` binary serving a site made by `init`, a real
//! EMR behind it, real certificates, driven by curl and by a rustls client. Each test is named
//! after the article of the Seibo Net rules (docs/rules.md) it proves.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;

/// The text every consent refusal shows (Japanese first, then English).
const CONSENT_JA: &str = "この患者さんの診療情報は閲覧できません";
const CONSENT_EN: &str = "This patient's records cannot be viewed";

/// A serving site with physician dr1, terminal pc1, and P001 consented (published today), in
/// test-bench mode: the terminal credential alone, no sign-in (that is tests/signin.rs).
struct Fixture {
    gate: Gate,
    pc1: Terminal,
}

fn site(emr_port: u16) -> Fixture {
    let mut gate = Gate::init(emr_port);
    gate.terminal_credential_only();
    gate.start();
    gate.add_physician("dr1");
    let pc1 = gate.add_terminal("dr1", "pc1");
    gate.grant("P001", today_jst());
    Fixture { gate, pc1 }
}

fn assert_no_store(cache_control: Option<&str>) {
    let cc = cache_control.unwrap_or_default();
    assert!(
        cc.split(',').any(|d| d.trim() == "no-store"),
        "cache-control {cc:?} must contain no-store (art 13.2)"
    );
}

/// Art 8.1, 8.3, 12.1, 13.2: a registered terminal of an active physician views a consented
/// patient: 200 with the EMR's page, `no-store`, and the viewing window (records from
/// published − 2 years, access until published + 999 days) passed to the EMR. Via curl (which
/// negotiates HTTP/2) and via the rustls client (HTTP/1.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn art_8_allowed_view_of_consented_patient() {
    let emr = SampleEmr::start();
    let f = site(emr.port);
    let today = today_jst();
    let records_from = ymd(today.replace_year(today.year() - 2).unwrap_or(today));
    let access_until = ymd(today + time::Duration::days(999));
    let expect_window = |body: &str| {
        assert!(
            body.contains("patient <b>P001</b>, category <b>labs</b>"),
            "{body}"
        );
        assert!(
            body.contains(&format!(
                "<th>x-seibo-records-from</th><td>{records_from}</td>"
            )),
            "records-from {records_from} not passed to the EMR: {body}"
        );
        assert!(
            body.contains(&format!(
                "<th>x-seibo-access-until</th><td>{access_until}</td>"
            )),
            "access-until {access_until} not passed to the EMR: {body}"
        );
        assert!(
            body.contains("<th>x-seibo-physician</th><td>dr1</td>"),
            "{body}"
        );
        assert!(
            body.contains("<th>x-seibo-terminal</th><td>pc1</td>"),
            "{body}"
        );
    };

    let c = f.gate.curl(Some(&f.pc1), "/patients/P001/labs", &[]);
    assert_eq!(c.status, Some(200), "curl: {c:?}");
    assert!(
        c.headers.contains("cache-control: no-store"),
        "{}",
        c.headers
    );
    expect_window(&c.body);

    let r = get_once(f.gate.port, f.gate.client(&f.pc1), "/patients/P001/labs")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_no_store(r.header("cache-control"));
    expect_window(&r.body);
}

/// Art 12.1: a client certificate from another CA (a second site made by `init`) is refused
/// at the TLS handshake, as is a connection without any client certificate: no HTTP
/// response at all, and no audit record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn art_12_1_unknown_ca_and_missing_cert_are_refused_at_handshake() {
    let emr = SampleEmr::start();
    let f = site(emr.port);
    // Another site, never served: its admin commands run directly on its own store.
    let other = Gate::init_site("other-site", emr.port);
    other.add_physician("dr1");
    let foreign = other.add_terminal("dr1", "pc1");

    // Trusting our server, presenting a certificate of the other site's CA.
    let cfg = client_config(&f.gate.ca(), Some(&foreign));
    let alert = refusal_at_handshake(f.gate.port, cfg.clone(), REQUEST_LIMIT)
        .await
        .unwrap();
    assert!(
        alert.contains("received fatal alert: UnknownCA"),
        "unexpected failure for a foreign certificate: {alert}"
    );
    let err = get_once(f.gate.port, cfg, "/patients/P001/labs").await;
    assert!(
        err.is_err(),
        "a foreign certificate got a response: {err:?}"
    );

    let cfg = client_config(&f.gate.ca(), None);
    let alert = refusal_at_handshake(f.gate.port, cfg.clone(), REQUEST_LIMIT)
        .await
        .unwrap();
    assert!(
        alert.contains("received fatal alert: CertificateRequired"),
        "unexpected failure without a certificate: {alert}"
    );
    let err = get_once(f.gate.port, cfg, "/patients/P001/labs").await;
    assert!(err.is_err(), "no certificate got a response: {err:?}");

    // Our own terminal passes the same probe: the connection stays open, waiting for a request.
    let own =
        refusal_at_handshake(f.gate.port, f.gate.client(&f.pc1), Duration::from_secs(1)).await;
    assert!(own.is_err(), "own terminal refused: {own:?}");

    // The same with curl.
    let c = curl(
        f.gate.port,
        &f.gate.ca(),
        Some(&foreign),
        "/patients/P001/labs",
        &[],
    );
    assert!(
        c.exit != 0 && c.status.is_none(),
        "curl with foreign cert: {c:?}"
    );
    let c = f.gate.curl(None, "/patients/P001/labs", &[]);
    assert!(
        c.exit != 0 && c.status.is_none(),
        "curl without cert: {c:?}"
    );

    // The gateway still serves its own terminal, and nothing reached the request audit.
    let c = f.gate.curl(Some(&f.pc1), "/patients/P001/labs", &[]);
    assert_eq!(c.status, Some(200), "{c:?}");
    let rows = f.gate.request_rows_settled(1);
    assert_eq!(rows.len(), 1, "only the good request is audited: {rows:#?}");
}

/// Art 12.7, 7: a terminal revoked while its keep-alive connection is open is refused at that
/// connection's next request (403, terminal page), and on a new connection too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn art_12_7_revoked_terminal_refused_on_open_keepalive_connection() {
    let emr = SampleEmr::start();
    let f = site(emr.port);
    let mut conn = Conn::open(f.gate.port, f.gate.client(&f.pc1))
        .await
        .unwrap();
    let r = conn.get("/patients/P001/labs").await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");

    f.gate.ok(&["terminal", "revoke", "--name", "pc1"]);

    let r = conn
        .get("/patients/P001/labs")
        .await
        .expect("the same keep-alive connection answers");
    assert_eq!(r.status, 403, "{r:?}");
    assert!(
        r.body.contains("この端末からは利用できません"),
        "{}",
        r.body
    );
    assert!(
        r.body.contains("This terminal cannot use Seibo Net"),
        "{}",
        r.body
    );
    assert_no_store(r.header("cache-control"));

    let r = get_once(f.gate.port, f.gate.client(&f.pc1), "/patients/P001/labs")
        .await
        .unwrap();
    assert_eq!(r.status, 403, "{r:?}");

    let rows = f.gate.request_rows_settled(3);
    assert_eq!(rows[1]["reason"], "terminal-revoked", "{rows:#?}");
    assert_eq!(rows[1]["decision"], "deny");
    // The refused request still names the revoked terminal and its physician.
    assert_eq!(rows[1]["terminal"], "pc1", "{rows:#?}");
    assert!(rows[1]["physician"].is_string(), "{rows:#?}");
}

/// Art 4: a suspended physician is refused at the next request, also on an open connection;
/// after `resume` the same connection is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn art_4_suspended_physician_refused_then_resumed() {
    let emr = SampleEmr::start();
    let f = site(emr.port);
    let mut conn = Conn::open(f.gate.port, f.gate.client(&f.pc1))
        .await
        .unwrap();
    assert_eq!(conn.get("/patients/P001/basic").await.unwrap().status, 200);

    f.gate.ok(&[
        "physician",
        "suspend",
        "--id",
        "dr1",
        "--reason",
        "violation",
    ]);

    let r = conn.get("/patients/P001/basic").await.unwrap();
    assert_eq!(r.status, 403, "{r:?}");
    assert!(
        r.body.contains("利用医の登録が有効ではありません"),
        "{}",
        r.body
    );
    assert!(
        r.body.contains("Your user registration is not active"),
        "{}",
        r.body
    );
    let r = get_once(f.gate.port, f.gate.client(&f.pc1), "/patients/P001/basic")
        .await
        .unwrap();
    assert_eq!(r.status, 403, "new connection: {r:?}");

    let list = f.gate.ok(&["physician", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list[0]["suspended"], "violation", "{list}");

    f.gate.ok(&["physician", "resume", "--id", "dr1"]);
    let r = conn.get("/patients/P001/basic").await.unwrap();
    assert_eq!(r.status, 200, "after resume, same connection: {r:?}");

    let rows = f.gate.request_rows_settled(4);
    let reasons: Vec<&str> = rows.iter().map(|r| r["reason"].as_str().unwrap()).collect();
    assert_eq!(
        reasons,
        [
            "allowed",
            "physician-suspended",
            "physician-suspended",
            "allowed"
        ]
    );
}

/// Art 8.1, 9.2: no consent → 403 with the Japanese-first page; a withdrawn consent shows
/// exactly the same page, so the page never tells whether a patient has a consent record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn art_8_1_no_consent_refused_with_same_page_as_withdrawn() {
    let emr = SampleEmr::start();
    let f = site(emr.port);
    f.gate.grant("P003", today_jst());
    f.gate.withdraw("P003");

    let none = get_once(f.gate.port, f.gate.client(&f.pc1), "/patients/P002/labs")
        .await
        .unwrap();
    assert_eq!(none.status, 403, "{none:?}");
    assert!(none.body.contains("閲覧できません"), "{}", none.body);
    assert!(none.body.contains(CONSENT_JA) && none.body.contains(CONSENT_EN));
    let ja = none.body.find(CONSENT_JA).unwrap();
    let en = none.body.find(CONSENT_EN).unwrap();
    assert!(ja < en, "Japanese comes first");
    assert!(!none.body.contains("Saiyo") && !none.body.contains("Nomura"));
    assert_no_store(none.header("cache-control"));

    let withdrawn = get_once(f.gate.port, f.gate.client(&f.pc1), "/patients/P003/labs")
        .await
        .unwrap();
    assert_eq!(withdrawn.status, 403, "{withdrawn:?}");
    assert_eq!(
        none.body, withdrawn.body,
        "the page for a withdrawn consent must not differ from the one for no consent"
    );

    // The withdrawal deleted the registration at once (art 11, issue 11 item 14): the request
    // finds no consent; the withdrawal itself is the admin record before it.
    let rows = f.gate.request_rows_settled(2);
    assert_eq!(rows[0]["reason"], "no-consent");
    assert_eq!(rows[1]["reason"], "no-consent");
    let withdrawal = f
        .gate
        .audit_rows()
        .into_iter()
        .find(|r| r["path"] == "consent-withdraw" && r["patient"] == "P003")
        .expect("the withdrawal is in the audit");
    assert_eq!(withdrawal["reason"], "form F7-P003");
}

/// Art 9.2: a consent withdrawn while the gateway serves stops access at the next request,
/// also on an open connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn art_9_2_withdrawal_stops_access_at_next_request() {
    let emr = SampleEmr::start();
    let f = site(emr.port);
    let mut conn = Conn::open(f.gate.port, f.gate.client(&f.pc1))
        .await
        .unwrap();
    assert_eq!(conn.get("/patients/P001/notes").await.unwrap().status, 200);

    f.gate.withdraw("P001");

    let r = conn.get("/patients/P001/notes").await.unwrap();
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.body.contains(CONSENT_JA), "{}", r.body);
    let c = f.gate.curl(Some(&f.pc1), "/patients/P001/notes", &[]);
    assert_eq!(c.status, Some(403), "{c:?}");
}

/// Art 8.3: access lasts 999 days from publication: published today − 999 days (Japan) is
/// still viewable, published today − 1000 days is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn art_8_3_day_999_allowed_day_1000_refused() {
    let emr = SampleEmr::start();
    let f = site(emr.port);
    let today = today_jst();
    f.gate.grant("P002", today - time::Duration::days(999));
    f.gate.grant("P003", today - time::Duration::days(1000));

    let cfg = f.gate.client(&f.pc1);
    let r = get_once(f.gate.port, cfg.clone(), "/patients/P002/summaries")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "day 999: {r:?}");
    assert!(
        r.body.contains(&format!(
            "<th>x-seibo-access-until</th><td>{}</td>",
            ymd(today)
        )),
        "{}",
        r.body
    );
    let r = get_once(f.gate.port, cfg, "/patients/P003/summaries")
        .await
        .unwrap();
    assert_eq!(r.status, 403, "day 1000: {r:?}");
    assert!(r.body.contains(CONSENT_JA), "{}", r.body);

    let rows = f.gate.request_rows_settled(2);
    assert_eq!(rows[1]["reason"], "viewing-period-ended", "{rows:#?}");
}

/// Art 8.2: anything outside the route table is refused (404, default deny); malformed
/// targets (encoded slash, NUL) are refused with 400 and never forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn art_8_2_unmapped_route_404_and_bad_target_400() {
    let emr = RecordingEmr::start();
    let f = site(emr.port);
    let cfg = f.gate.client(&f.pc1);

    for path in [
        "/admin/users",
        "/patients/P001/secret-notes",
        "/patients/P001",
    ] {
        let r = get_once(f.gate.port, cfg.clone(), path).await.unwrap();
        assert_eq!(r.status, 404, "{path}: {r:?}");
        assert!(r.body.contains("閲覧範囲外"), "{path}: {}", r.body);
    }
    // `/` leads to the start page, never to the EMR (issue 11 item 24; tests/start_page.rs).
    let r = get_once(f.gate.port, cfg.clone(), "/").await.unwrap();
    assert_eq!(r.status, 303, "/: {r:?}");
    assert_eq!(r.header("location"), Some("/.seibo/whoami"));
    let c = f.gate.curl(Some(&f.pc1), "/admin/users", &[]);
    assert_eq!(c.status, Some(404), "{c:?}");

    for path in [
        "/patients/P001%2fx/labs",
        "/patients/P001%2Fx/labs",
        "/patients/P001/labs%00",
        "/patients/P001%00/labs",
    ] {
        let r = get_once(f.gate.port, cfg.clone(), path).await.unwrap();
        assert_eq!(r.status, 400, "{path}: {r:?}");
        let c = f.gate.curl(Some(&f.pc1), path, &[]);
        assert_eq!(c.status, Some(400), "curl {path}: {c:?}");
    }
    // A raw NUL byte in the request line.
    let (status, text) = raw_request(
        f.gate.port,
        cfg.clone(),
        b"GET /patients/P001/labs\0 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(status, 400, "{text}");

    assert!(
        emr.seen().is_empty(),
        "nothing reaches the EMR: {:?}",
        emr.seen()
    );
}

/// Art 8.1, 8.2: path traversal, plain or percent-encoded, from a consented patient's path to
/// a patient without consent never returns that patient's data; the EMR receives only the
/// normalised path, never a dot segment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn art_8_2_traversal_cannot_reach_non_consented_patient() {
    let emr = RecordingEmr::start();
    let f = site(emr.port);
    let cfg = f.gate.client(&f.pc1);

    let attacks = [
        "/patients/P001/../P002/labs",
        "/patients/P001/%2e%2e/P002/labs",
        "/patients/P001/%2E%2E/P002/labs",
        "/patients/P001/.%2e/P002/labs",
        "/patients/P001/labs/../../P002/labs",
        "/patients/P001/./../P002/./labs",
    ];
    for path in attacks {
        let r = get_once(f.gate.port, cfg.clone(), path).await.unwrap();
        assert_ne!(r.status, 200, "{path}: {r:?}");
        assert!(!r.body.contains("recording EMR"), "{path}: {}", r.body);
        let c = f.gate.curl(Some(&f.pc1), path, &[]);
        assert_ne!(c.status, Some(200), "curl {path}: {c:?}");
        assert!(c.status.is_some(), "curl {path}: {c:?}");
        let raw = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let (status, text) = raw_request(f.gate.port, cfg.clone(), raw.as_bytes())
            .await
            .unwrap();
        assert_ne!(status, 200, "raw {path}: {text}");
    }
    assert!(
        emr.seen().is_empty(),
        "nothing reached the EMR: {:?}",
        emr.seen()
    );
    let rows = f.gate.request_rows_settled(attacks.len() * 3);
    for r in &rows {
        assert_eq!(r["decision"], "deny", "{r}");
        assert_eq!(
            r["patient"], "P002",
            "the decision is on the normalised patient: {r}"
        );
    }

    // A traversal that normalises to the consented patient is allowed, and the EMR gets the
    // normalised target.
    for path in [
        "/patients/P002/../P001/labs",
        "/patients/P003/%2e%2e/P001/./labs",
        "/patients//P001/labs",
    ] {
        emr.clear();
        let c = f.gate.curl(Some(&f.pc1), path, &[]);
        assert_eq!(c.status, Some(200), "curl {path}: {c:?}");
        let seen = emr.seen();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].target, "/patients/P001/labs", "{path}");
        assert_eq!(seen[0].one("x-seibo-patient"), "P001");
    }
}

/// Art 12.6 / art 1: with the EMR down the physician gets the gateway's 502 page (Japanese
/// first), never a hang or a raw error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn art_12_6_upstream_down_gives_502_page() {
    let mut emr = SampleEmr::start();
    let f = site(emr.port);
    let cfg = f.gate.client(&f.pc1);
    assert_eq!(
        get_once(f.gate.port, cfg.clone(), "/patients/P001/labs")
            .await
            .unwrap()
            .status,
        200
    );
    emr.stop();
    let r = get_once(f.gate.port, cfg, "/patients/P001/labs")
        .await
        .unwrap();
    assert_eq!(r.status, 502, "{r:?}");
    assert!(r.body.contains("電子カルテに接続できません"), "{}", r.body);
    assert!(r.body.contains("The EMR cannot be reached"), "{}", r.body);
    assert_no_store(r.header("cache-control"));
    // The decision was to allow; the outcome records what the physician got.
    let rows = f.gate.request_rows_settled(2);
    assert_eq!(rows[1]["decision"], "allow", "{rows:#?}");
    assert_eq!(rows[1]["status"], 502, "{rows:#?}");
}

/// Art 12.8: every request is audited (one record per request with time, decision, reason,
/// physician, terminal, patient, category, path, status); `audit verify` passes; one byte
/// changed in a middle record is detected and the line named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn art_12_8_every_request_audited_and_tampering_detected() {
    let emr = SampleEmr::start();
    let mut f = site(emr.port);
    let cfg = f.gate.client(&f.pc1);
    let requests: [(&str, u16); 6] = [
        ("/patients/P001/labs", 200),
        ("/patients/P001/images/blob/1000", 200),
        ("/patients/P002/labs", 403),
        ("/nowhere", 404),
        ("/patients/P001%2fx/labs", 400),
        ("/patients/P001/notes?page=2", 200),
    ];
    let mut conn = Conn::open(f.gate.port, cfg).await.unwrap();
    for (path, status) in requests {
        let r = conn.get(path).await.unwrap();
        assert_eq!(r.status, status, "{path}: {r:?}");
    }

    let rows = f.gate.request_rows_settled(requests.len());
    assert_eq!(
        rows.len(),
        requests.len(),
        "one record per request: {rows:#?}"
    );
    for key in [
        "time",
        "decision",
        "reason",
        "physician",
        "terminal",
        "patient",
        "category",
        "path",
        "status",
    ] {
        for r in &rows {
            assert!(r.get(key).is_some(), "audit row lacks {key}: {r}");
        }
    }
    for (r, (_, status)) in rows.iter().zip(requests) {
        assert_eq!(r["status"], status, "{r}");
        assert_eq!(r["physician"], "dr1", "{r}");
        assert_eq!(r["terminal"], "pc1", "{r}");
        assert!(r["time"].as_str().unwrap().ends_with("+09:00"), "{r}");
    }
    let first = &rows[0];
    assert_eq!(first["decision"], "allow");
    assert_eq!(first["reason"], "allowed");
    assert_eq!(first["patient"], "P001");
    assert_eq!(first["category"], "labs");
    assert_eq!(first["path"], "/patients/P001/labs");
    assert_eq!(rows[1]["bytes"], 1000);
    assert_eq!(rows[2]["reason"], "no-consent");
    assert_eq!(rows[3]["reason"], "no-route");
    assert_eq!(rows[4]["reason"], "encoded-slash");
    assert_eq!(rows[5]["path"], "/patients/P001/notes?page=2");

    let v = f.gate.cli(&["audit", "verify"]);
    assert!(v.status.success(), "verify while serving: {}", show(&v));

    // Stop the gateway, change one byte inside a middle record.
    assert!(f.gate.stop(), "graceful stop:\n{}", f.gate.log());
    let v = f.gate.cli(&["audit", "verify"]);
    assert!(v.status.success(), "verify after stop: {}", show(&v));
    let log_path = f.gate.audit_dir().join("audit.log");
    let mut bytes = read_bytes(&log_path);
    let lines: Vec<(usize, usize)> = {
        let mut v = Vec::new();
        let mut start = 0;
        for (i, b) in bytes.iter().enumerate() {
            if *b == b'\n' {
                v.push((start, i));
                start = i + 1;
            }
        }
        v
    };
    assert!(lines.len() >= 5, "{} lines", lines.len());
    let middle = lines.len() / 2; // 0-based
    let (s, e) = lines[middle];
    let line = &bytes[s..e];
    let kind = find(line, b"\"kind\"").unwrap();
    let hash = find(line, b",\"hash\":").unwrap();
    let at = (kind..hash)
        .find(|&i| line[i].is_ascii_digit())
        .expect("a digit in the record's content");
    bytes[s + at] = if line[at] == b'9' { b'0' } else { line[at] + 1 };
    std::fs::write(&log_path, &bytes).unwrap();

    let v = f.gate.cli(&["audit", "verify"]);
    assert!(!v.status.success(), "verify must fail: {}", show(&v));
    let err = String::from_utf8_lossy(&v.stderr);
    let line_no = middle + 1;
    assert!(
        err.contains(&format!("line {line_no}")),
        "verify must name line {line_no}: {err}"
    );

    // A gateway does not start on a tampered log.
    f.gate.spawn();
    let status = f.gate.wait_exit(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| !s.success()),
        "serve must refuse a tampered audit log ({status:?}):\n{}",
        f.gate.log()
    );
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Art 2, 6.2, 12.8: admin commands work while the gateway serves, over the admin socket
/// (mode 0600), and are audited as admin changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn art_6_2_admin_commands_while_serving_over_0600_socket() {
    let emr = SampleEmr::start();
    let f = site(emr.port);
    let meta = std::fs::metadata(f.gate.admin_socket()).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "admin socket mode"
    );
    let state = std::fs::metadata(f.gate.path("state")).unwrap();
    assert_eq!(state.permissions().mode() & 0o777, 0o700, "state dir mode");

    f.gate.add_physician("dr2");
    let pc2 = f.gate.add_terminal("dr2", "pc2");
    f.gate.grant("P002", today_jst());
    let list: serde_json::Value =
        serde_json::from_str(&f.gate.ok(&["physician", "list", "--json"])).unwrap();
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["dr1", "dr2"], "{list}");
    let terms: serde_json::Value =
        serde_json::from_str(&f.gate.ok(&["terminal", "list", "--json"])).unwrap();
    assert_eq!(terms.as_array().unwrap().len(), 2, "{terms}");
    let consent: serde_json::Value =
        serde_json::from_str(
            &f.gate
                .ok(&["consent", "show", "--patient", "P002", "--json"]),
        )
        .unwrap();
    assert_eq!(consent["allowed_today"], true, "{consent}");

    // The new terminal works at once, and a refused admin request exits non-zero.
    let r = get_once(f.gate.port, f.gate.client(&pc2), "/patients/P002/labs")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let dup = f
        .gate
        .cli(&["physician", "add", "--id", "dr2", "--name", "again"]);
    assert_eq!(dup.status.code(), Some(1), "{}", show(&dup));

    let admin: Vec<serde_json::Value> = f
        .gate
        .audit_rows()
        .into_iter()
        .filter(|r| r["ingress"] == "admin")
        .collect();
    let ops: Vec<&str> = admin.iter().map(|r| r["path"].as_str().unwrap()).collect();
    assert!(
        ops.contains(&"physician-add")
            && ops.contains(&"terminal-register")
            && ops.contains(&"consent-grant"),
        "{ops:?}"
    );
    assert!(
        admin.iter().all(|r| r["client"] == "admin-socket"),
        "every change while serving went over the socket: {admin:#?}"
    );
}

/// Art 12.7, 12.8: identity headers sent by a client (`X-Seibo-Physician: evil`,
/// `X-Forwarded-For`, `Forwarded`, `X-Real-IP`) are stripped; the EMR sees only the
/// gateway's values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn art_12_7_spoofed_identity_headers_are_stripped() {
    let emr = RecordingEmr::start();
    let f = site(emr.port);
    let mut conn = Conn::open(f.gate.port, f.gate.client(&f.pc1))
        .await
        .unwrap();
    let r = conn
        .get_with(
            "/patients/P001/prescriptions",
            &[
                ("X-Seibo-Physician", "evil"),
                ("X-Seibo-Patient", "P002"),
                ("X-Seibo-Records-From", "1900-01-01"),
                ("X-Seibo-Access-Until", "9999-12-31"),
                ("X-Forwarded-For", "203.0.113.66"),
                ("X-Forwarded-Host", "evil.example"),
                ("Forwarded", "for=203.0.113.66"),
                ("X-Real-IP", "203.0.113.66"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let c = f.gate.curl(
        Some(&f.pc1),
        "/patients/P001/prescriptions",
        &[
            "-H",
            "X-Seibo-Physician: evil",
            "-H",
            "X-Forwarded-For: 203.0.113.66",
        ],
    );
    assert_eq!(c.status, Some(200), "{c:?}");

    let seen = emr.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let today = today_jst();
    for s in &seen {
        assert_eq!(s.target, "/patients/P001/prescriptions");
        assert_eq!(s.one("x-seibo-physician"), "dr1", "{s:?}");
        assert_eq!(s.one("x-seibo-terminal"), "pc1", "{s:?}");
        assert_eq!(s.one("x-seibo-patient"), "P001", "{s:?}");
        assert_eq!(s.one("x-seibo-category"), "prescriptions", "{s:?}");
        assert_eq!(s.one("x-seibo-site"), "test-site", "{s:?}");
        assert_eq!(
            s.one("x-seibo-access-until"),
            ymd(today + time::Duration::days(999))
        );
        assert_ne!(s.one("x-seibo-records-from"), "1900-01-01");
        assert_eq!(s.one("x-forwarded-for"), "127.0.0.1", "{s:?}");
        assert!(s.all("forwarded").is_empty(), "{s:?}");
        assert!(s.all("x-real-ip").is_empty(), "{s:?}");
        assert!(s.all("x-forwarded-host").is_empty(), "{s:?}");
        let joined = format!("{:?}", s.headers);
        assert!(
            !joined.contains("evil") && !joined.contains("203.0.113.66"),
            "{joined}"
        );
    }
}

/// Art 12.4–12.6 (configuration): `check-config` on a broken config exits 78 (EX_CONFIG) and
/// names the key; on the valid one it exits 0.
#[test]
fn art_12_check_config_names_bad_key_and_exits_78() {
    let g = Gate::init(free_port());
    let out = g.cli(&["check-config"]);
    assert!(out.status.success(), "{}", show(&out));
    let good = std::fs::read_to_string(&g.config).unwrap();

    let cases: [(&str, &str, &str); 4] = [
        (
            "terminal_days = 825",
            "terminal_days = 0",
            "ca.terminal_days",
        ),
        (
            "private = [\"127.0.0.0/8\"]",
            "private = [\"not-a-network\"]",
            "upstream.private[0]",
        ),
        ("[site]\n", "[site]\ncolour = \"blue\"\n", "colour"),
        (
            "handshake_timeout_ms = 10000",
            "handshake_timeout_ms = 0",
            "limits.handshake_timeout_ms",
        ),
    ];
    for (from, to, key) in cases {
        assert!(good.contains(from), "gate.toml lacks {from:?}");
        std::fs::write(&g.config, good.replacen(from, to, 1)).unwrap();
        let out = g.cli(&["check-config"]);
        assert_eq!(out.status.code(), Some(78), "{to:?}: {}", show(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{to:?}: stderr must name {key}: {err}");
    }
    std::fs::write(&g.config, good).unwrap();
}
