//! Issue 13: the regional registry on etcd. Two gateways of one site share a real
//! three-member etcd cluster with TLS and client certificates (tests/common/etcd.rs), each
//! with its in-memory copy kept by a watch. Nothing is mocked: the real binary, real etcd,
//! real TLS clients on loopback.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use common::etcd::EtcdCluster;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;

const COOKIE: &str = "__Host-seibo_session";

/// Two gateways (`a`, `b`) of one site on one etcd cluster, under a prefix of their own.
struct Pair {
    _emr: SampleEmr,
    a: Gate,
    b: Gate,
    cluster: EtcdCluster,
}

fn pair(max_stale_secs: u64, passwords: bool) -> Pair {
    let cluster = EtcdCluster::start(3);
    let emr = SampleEmr::start();
    let mut a = Gate::init(emr.port);
    if !passwords {
        a.terminal_credential_only();
    }
    let mut b = a.twin();
    let registry = cluster.registry_toml("/seibo-net-test/", max_stale_secs);
    for g in [&a, &b] {
        cluster.write_credentials(g.dir.path());
        g.append_config(&registry);
        let out = g.cli(&["check-config"]);
        assert!(out.status.success(), "check-config: {}", show(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("regional registry: reached"),
            "{}",
            show(&out)
        );
    }
    a.start();
    b.start();
    Pair {
        _emr: emr,
        a,
        b,
        cluster,
    }
}

/// Polls `f` (bounded by `limit`, no fixed sleep) until it returns true.
async fn until(limit: Duration, what: &str, mut f: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f().await {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: not within {limit:?}");
}

/// Art 6.2, 9.2, 9.4, 12.7: a registration made through gateway A is served by gateway B;
/// a revocation, a suspension and a withdrawal made through A refuse at B at the next
/// request on B's already-open keep-alive connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn art_9_2_and_12_7_changes_at_gateway_a_refuse_at_gateway_b_on_an_open_connection() {
    let p = pair(15, false);
    p.a.add_physician("dr1");
    let pc1 = p.a.add_terminal("dr1", "pc1");
    p.a.grant("P001", today_jst());
    p.a.grant("P002", today_jst());

    // Registered once, through A: B serves it (its copy follows the watch).
    let mut conn = Conn::open(p.b.port, p.b.client(&pc1)).await.unwrap();
    let r = conn.get("/patients/P001/labs").await.unwrap();
    assert_eq!(r.status, 200, "{r:?}\n{}", p.b.log());

    // Withdrawal through A: B refuses P001 on the same connection, P002 still open.
    p.a.withdraw("P001");
    let r = conn.get("/patients/P001/labs").await.unwrap();
    assert_eq!(r.status, 403, "art 9.2: refused at the next request: {r:?}");
    let r = conn.get("/patients/P002/labs").await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");

    // Suspension through A, then resumption.
    p.a.ok(&["physician", "suspend", "--id", "dr1", "--reason", "request"]);
    let r = conn.get("/patients/P002/labs").await.unwrap();
    assert_eq!(r.status, 403, "art 4: suspended at B: {r:?}");
    p.a.ok(&["physician", "resume", "--id", "dr1"]);
    let r = conn.get("/patients/P002/labs").await.unwrap();
    assert_eq!(r.status, 200, "resumed at B: {r:?}");

    // Revocation through A.
    p.a.ok(&["terminal", "revoke", "--name", "pc1"]);
    let r = conn.get("/patients/P002/labs").await.unwrap();
    assert_eq!(r.status, 403, "art 12.7: revoked at B: {r:?}");

    // The registry says so at both gateways.
    for g in [&p.a, &p.b] {
        let s = g.ok(&["registry", "status"]);
        assert!(s.contains("backend         etcd"), "{s}");
        assert!(s.contains("serving         yes"), "{s}");
        assert_eq!(s.matches("member ").count(), 3, "{s}");
    }
}

/// A minimal browser: one TLS connection per request, the session cookie kept.
struct Browser {
    cfg: Arc<ClientConfig>,
    cookie: Option<String>,
}

struct Page {
    status: u16,
    location: String,
    body: String,
}

impl Browser {
    /// `POST /.seibo/login` with `id` and `password` at `port`.
    async fn login(&mut self, port: u16, id: &str, password: &str, next: &str) -> Page {
        self.send(
            port,
            "POST",
            "/.seibo/login",
            &[("id", id), ("password", password), ("next", next)],
        )
        .await
    }

    async fn send(&mut self, port: u16, method: &str, target: &str, form: &[(&str, &str)]) -> Page {
        self.try_send(port, method, target, form)
            .await
            .unwrap_or_else(|e| panic!("{method} {target} on {port}: {e:#}"))
    }

    async fn try_send(
        &mut self,
        port: u16,
        method: &str,
        target: &str,
        form: &[(&str, &str)],
    ) -> anyhow::Result<Page> {
        let tls = tls_connect(port, self.cfg.clone()).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .context("handshake")?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let mut b = http::Request::builder()
            .method(method)
            .uri(target)
            .header("host", format!("localhost:{port}"));
        if let Some(c) = &self.cookie {
            b = b.header("cookie", format!("{COOKIE}={c}"));
        }
        if method == "POST" {
            b = b.header("content-type", "application/x-www-form-urlencoded");
        }
        let req = b.body(Full::new(Bytes::from(if method == "POST" {
            body
        } else {
            String::new()
        })))?;
        let resp = tokio::time::timeout(Duration::from_secs(20), sender.send_request(req))
            .await
            .context("response timed out")??;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        driver.abort();
        for v in parts.headers.get_all("set-cookie") {
            let v = v.to_str().unwrap_or("");
            if let Some(rest) = v.strip_prefix(&format!("{COOKIE}=")) {
                let value = rest.split(';').next().unwrap_or("");
                self.cookie = (!value.is_empty()).then(|| value.to_string());
            }
        }
        Ok(Page {
            status: parts.status.as_u16(),
            location: parts
                .headers
                .get("location")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string(),
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// Art 6.3, 13.1: sessions and lockouts are shared. A physician signed in through gateway A
/// continues through gateway B with the same cookie; signing out through B ends it at A;
/// wrong passwords spread over both gateways lock the account at the fifth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn art_13_1_sessions_and_lockouts_hold_across_gateways() {
    let p = pair(15, true);
    p.a.grant("P001", today_jst());
    p.a.add_physician_with_password("dr-two", "Dr Two", "initial-pass-123");
    let pc = p.a.add_terminal("dr-two", "pc-two");
    let mut br = Browser {
        cfg: p.a.client(&pc),
        cookie: None,
    };
    // First sign-in through A with the one-time password, the forced change through A.
    let r = br
        .login(
            p.a.port,
            "dr-two",
            "initial-pass-123",
            "/patients/P001/labs",
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let r = br
        .send(
            p.a.port,
            "POST",
            "/.seibo/password",
            &[
                ("current", "initial-pass-123"),
                ("new", "a-new-long-passphrase-42"),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    // The session continues through B.
    let r = br.send(p.a.port, "GET", "/patients/P001/labs", &[]).await;
    assert_eq!(r.status, 200, "through A: {}", r.body);
    let r = br.send(p.b.port, "GET", "/patients/P001/labs", &[]).await;
    assert_eq!(
        r.status, 200,
        "the same session through B: {} {}",
        r.location, r.body
    );
    // Signed out through B: A refuses the cookie at its next request.
    let saved = br.cookie.clone();
    let r = br.send(p.b.port, "POST", "/.seibo/logout", &[]).await;
    assert!(
        r.status == 303 || r.status == 200,
        "logout: {} {}",
        r.status,
        r.body
    );
    br.cookie = saved;
    let a_port = p.a.port;
    until(Duration::from_secs(5), "A sees the sign-out", async || {
        br.send(a_port, "GET", "/patients/P001/labs", &[])
            .await
            .status
            != 200
    })
    .await;

    // Wrong passwords alternating between A and B: the fifth locks; then the right one is
    // refused at both.
    br.cookie = None;
    for i in 0..5 {
        let port = if i % 2 == 0 { p.a.port } else { p.b.port };
        let r = br.login(port, "dr-two", "wrong-password", "/").await;
        assert_ne!(r.status, 303, "try {i}: {}", r.body);
    }
    for port in [p.a.port, p.b.port] {
        let r = br
            .login(port, "dr-two", "a-new-long-passphrase-42", "/")
            .await;
        assert_ne!(r.status, 303, "locked at both gateways: {}", r.body);
    }
    let shown = p.b.ok(&["physician", "list", "--json"]);
    assert!(shown.contains("locked_until"), "{shown}");
}

/// Art 9.2 fail closed: with two of three etcd members stopped (no quorum) both gateways keep
/// serving from memory for at most `max_stale_secs`, then answer 503 with the regional
/// registry page; when the members come back, service resumes by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn art_9_2_no_quorum_refuses_after_max_stale_then_resumes_by_itself() {
    let mut p = pair(2, false);
    p.a.add_physician("dr1");
    let pc1 = p.a.add_terminal("dr1", "pc1");
    p.a.grant("P001", today_jst());
    for g in [&p.a, &p.b] {
        let r = get_once(g.port, g.client(&pc1), "/patients/P001/labs")
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
    }
    p.cluster.stop_member(1);
    p.cluster.stop_member(2);
    for g in [&p.a, &p.b] {
        let (port, cfg) = (g.port, g.client(&pc1));
        until(
            Duration::from_secs(20),
            "503 after max_stale_secs",
            async || {
                get_once(port, cfg.clone(), "/patients/P001/labs")
                    .await
                    .is_ok_and(|r| r.status == 503)
            },
        )
        .await;
        let r = get_once(port, cfg.clone(), "/patients/P001/labs")
            .await
            .unwrap();
        assert!(
            r.body.contains("地域の共有登録に接続できません"),
            "{}",
            r.body
        );
        assert!(
            r.body.contains("The regional registry cannot be reached"),
            "{}",
            r.body
        );
    }
    p.cluster.restart_member(1);
    p.cluster.restart_member(2);
    for g in [&p.a, &p.b] {
        let (port, cfg) = (g.port, g.client(&pc1));
        until(Duration::from_secs(30), "service resumes", async || {
            get_once(port, cfg.clone(), "/patients/P001/labs")
                .await
                .is_ok_and(|r| r.status == 200)
        })
        .await;
    }
}

/// Moving a site: export from sled, import into etcd; the same physician, terminal and
/// consent work through the etcd-backed gateway (art 6.2: nobody registers again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn art_6_2_export_from_sled_import_into_etcd_keeps_every_registration() {
    let cluster = EtcdCluster::start(3);
    let emr = SampleEmr::start();
    let mut g = Gate::init(emr.port);
    g.terminal_credential_only();
    g.start();
    g.add_physician("dr1");
    let pc1 = g.add_terminal("dr1", "pc1");
    g.grant("P001", today_jst());
    assert!(g.stop(), "sled gateway stops");
    let file = g.path("registry.jsonl");
    let out = g.ok(&["registry", "export", "--out", file.to_str().unwrap()]);
    assert!(
        out.contains("1 physician(s), 1 terminal(s), 1 consent(s)"),
        "{out}"
    );

    cluster.write_credentials(g.dir.path());
    g.append_config(&cluster.registry_toml("/seibo-net-move/", 15));
    // The etcd client key is checked like every other private key.
    let key = g.path("registry/gateway.key");
    let mode = |m| {
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(m)).unwrap()
    };
    mode(0o644);
    let out = g.cli(&["check-config"]);
    assert_eq!(out.status.code(), Some(78), "{}", show(&out));
    assert!(
        show(&out).contains("registry (etcd client)"),
        "{}",
        show(&out)
    );
    mode(0o600);
    let out = g.ok(&["registry", "import", file.to_str().unwrap()]);
    assert!(out.contains("imported 3 record(s)"), "{out}");
    // A second import refuses, record by record, and changes nothing.
    let again = g.cli(&["registry", "import", file.to_str().unwrap()]);
    assert!(!again.status.success(), "{}", show(&again));
    // A broken file is refused whole, naming the line.
    let bad = g.path("bad.jsonl");
    std::fs::write(&bad, "{\"kind\":\"physician\",\"record\":{}}\n").unwrap();
    let out = g.cli(&["registry", "import", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(show(&out).contains("line 1"), "{}", show(&out));

    g.start();
    let r = get_once(g.port, g.client(&pc1), "/patients/P001/labs")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}\n{}", g.log());
    let r = get_once(g.port, g.client(&pc1), "/patients/P002/labs")
        .await
        .unwrap();
    assert_eq!(r.status, 403, "{r:?}");
}

/// The audit reasons of `physician`'s sign-in tries at gateway `g`.
fn login_reasons(g: &Gate, physician: &str) -> Vec<String> {
    g.audit_rows()
        .into_iter()
        .filter(|r| r["physician"] == physician && r["path"] == "/.seibo/login")
        .map(|r| r["reason"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Art 6.3, 13.1: two gateways of one site behind HAProxy in TCP mode (mutual TLS end to end,
/// round robin per connection). A sign-in through the front continues on whichever gateway
/// the next connections reach; 24 wrong passwords sent at once through the front, spread over
/// both gateways, get at most five password checks in all, and the account is then locked at
/// both (the count and the lock are one etcd transaction).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn art_13_1_behind_haproxy_one_session_and_at_most_five_checks_across_gateways() {
    let p = pair(15, true);
    p.a.grant("P001", today_jst());
    let front = common::haproxy::Haproxy::tcp_front(&[p.a.port, p.b.port]);
    let id = "dr-ha";
    p.a.add_physician_with_password(id, "Dr HA", "initial-pass-123");
    let pc = p.a.add_terminal(id, "pc-ha");
    let mut br = Browser {
        cfg: p.a.client(&pc),
        cookie: None,
    };
    let port = front.port();
    let r = br
        .login(port, id, "initial-pass-123", "/patients/P001/labs")
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let r = br
        .send(
            port,
            "POST",
            "/.seibo/password",
            &[
                ("current", "initial-pass-123"),
                ("new", "a-new-long-passphrase-42"),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    // Four more connections through the front: round robin puts two on each gateway.
    for i in 0..4 {
        let r = br.send(port, "GET", "/patients/P001/labs", &[]).await;
        assert_eq!(r.status, 200, "request {i} through the front: {}", r.body);
    }
    let served = |g: &Gate| {
        g.request_rows()
            .iter()
            .filter(|r| r["path"] == "/patients/P001/labs" && r["decision"] == "allow")
            .count()
    };
    assert!(
        served(&p.a) >= 1 && served(&p.b) >= 1,
        "both gateways served the one session: A {} B {}",
        served(&p.a),
        served(&p.b)
    );

    // 24 wrong passwords at once through the front.
    let cfg = p.a.client(&pc);
    let tries: Vec<_> = (0..24)
        .map(|_| {
            let cfg = cfg.clone();
            tokio::spawn(async move {
                let mut b = Browser { cfg, cookie: None };
                b.try_send(
                    port,
                    "POST",
                    "/.seibo/login",
                    &[
                        ("id", "dr-ha"),
                        ("password", "wrong-password-1"),
                        ("next", "/"),
                    ],
                )
                .await
                .map(|p| p.status)
            })
        })
        .collect();
    for t in tries {
        let status = t.await.unwrap().expect("a refused try still gets a page");
        assert_ne!(status, 303, "a wrong password never signs in");
    }
    for g in [&p.a, &p.b] {
        let r = br.login(g.port, id, "a-new-long-passphrase-42", "/").await;
        assert_ne!(r.status, 303, "locked at both gateways: {}", r.body);
    }
    let all: Vec<String> = login_reasons(&p.a, id)
        .into_iter()
        .chain(login_reasons(&p.b, id))
        .collect();
    let checked = all
        .iter()
        .filter(|r| *r == "login-failed" || *r == "login-locked-now")
        .count();
    assert!(
        (1..=5).contains(&checked),
        "at most five checks across both gateways, got {checked}: {all:?}"
    );
}

/// Art 12.7: one etcd member killed while both gateways serve a bounded keep-alive load
/// (400 requests, 60 s at most): not one request fails, because the request path reads
/// memory only and the watch resumes on another member; an admin change made after the kill
/// still reaches the other gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn art_12_7_killing_one_etcd_member_under_load_fails_no_request() {
    let mut p = pair(15, false);
    p.a.add_physician("dr1");
    let pc1 = p.a.add_terminal("dr1", "pc1");
    p.a.grant("P001", today_jst());
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut loads = Vec::new();
    for g in [&p.a, &p.b] {
        let (port, cfg) = (g.port, g.client(&pc1));
        loads.push(tokio::spawn(async move {
            let mut conn = Conn::open(port, cfg).await.unwrap();
            let mut statuses = Vec::new();
            for _ in 0..200 {
                if Instant::now() > deadline {
                    break;
                }
                statuses.push(conn.get("/patients/P001/labs").await.map(|r| r.status));
            }
            statuses
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let victim = p.cluster.leader().unwrap_or(0);
    p.cluster.kill_member(victim);
    for l in loads {
        let statuses = l.await.unwrap();
        assert!(statuses.len() >= 50, "load ran: {}", statuses.len());
        let failed: Vec<_> = statuses.iter().filter(|s| !matches!(s, Ok(200))).collect();
        assert!(
            failed.is_empty(),
            "requests failed after the kill: {failed:?}"
        );
    }
    // Writes still work with two members, and reach the other gateway.
    p.a.withdraw("P001");
    let (port, cfg) = (p.b.port, p.b.client(&pc1));
    until(
        Duration::from_secs(10),
        "withdrawal seen at B",
        async || {
            get_once(port, cfg.clone(), "/patients/P001/labs")
                .await
                .is_ok_and(|r| r.status == 403)
        },
    )
    .await;
}

/// Art 9.2, 12.8: `kill -9` of gateway A during a burst of consent grants made through its
/// admin command: every acknowledged grant is in etcd and served by B — those acknowledged by
/// the gateway before the kill, and those the command then wrote to the regional registry
/// itself (no gateway answering on the socket).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn art_9_2_kill_9_during_admin_writes_loses_no_acknowledged_change() {
    let mut p = pair(15, false);
    p.a.add_physician("dr1");
    let pc1 = p.a.add_terminal("dr1", "pc1");
    let config = p.a.config.clone();
    let today = ymd(today_jst());
    let burst = std::thread::spawn(move || {
        let mut acked = Vec::new();
        for i in 0..40 {
            let patient = format!("K{i:03}");
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_seibo-gate"))
                .args(["consent", "grant", "--patient", &patient, "--by", "patient"])
                .args(["--published", &today, "--form-ref", &format!("F6-{i}")])
                .arg("--config")
                .arg(&config)
                .output()
                .expect("consent grant");
            if out.status.success() {
                acked.push(patient);
            }
        }
        acked
    });
    // Kill once some grants are acknowledged (bounded wait).
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        let n = p.cluster.etcdctl(&[
            "get",
            "/seibo-net-test/consents/",
            "--prefix",
            "--keys-only",
        ]);
        let keys = String::from_utf8_lossy(&n.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .count();
        if keys >= 5 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!burst.is_finished(), "the kill falls inside the burst");
    p.a.kill9();
    let acked = burst.join().unwrap();
    assert!(!acked.is_empty(), "grants acknowledged before the kill");
    let out = p.cluster.etcdctl(&[
        "get",
        "/seibo-net-test/consents/",
        "--prefix",
        "--keys-only",
    ]);
    let keys = String::from_utf8_lossy(&out.stdout).into_owned();
    for patient in &acked {
        assert!(
            // A consent is keyed by the granting site's `SITE:ID` (issue 14: patients linked).
            keys.contains(&format!("/seibo-net-test/consents/test-site:{patient}")),
            "acknowledged grant of {patient} is not in etcd: {keys}"
        );
    }
    // And gateway B lets the last acknowledged one through to the EMR (the sample EMR has no
    // record for this made-up patient and answers its own 404 page: the gateway allowed it).
    let last = acked.last().unwrap();
    let path = format!("/patients/{last}/labs");
    let r = get_once(p.b.port, p.b.client(&pc1), &path).await.unwrap();
    assert!(r.body.contains("no such patient"), "reached the EMR: {r:?}");
    let rows = p.b.request_rows_settled(1);
    let row = rows
        .iter()
        .rev()
        .find(|r| r["path"] == path.as_str())
        .unwrap();
    assert_eq!(row["decision"], "allow", "{row:#}");
}

/// Art 9.2 fail closed at start: a gateway started while etcd has no member answering starts
/// (so that it serves as soon as the registry is back), refuses with 503 meanwhile, and serves
/// once the members are back — no restart of the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn art_9_2_a_gateway_started_without_etcd_refuses_until_the_registry_is_back() {
    let mut p = pair(15, false);
    p.a.add_physician("dr1");
    let pc1 = p.a.add_terminal("dr1", "pc1");
    p.a.grant("P001", today_jst());
    assert!(p.b.stop(), "gateway B stops");
    for i in 0..3 {
        p.cluster.stop_member(i);
    }
    let out = p.b.cli(&["check-config"]);
    assert_eq!(out.status.code(), Some(69), "{}", show(&out));
    assert!(show(&out).contains("cannot be reached"), "{}", show(&out));
    p.b.start();
    let r = get_once(p.b.port, p.b.client(&pc1), "/patients/P001/labs")
        .await
        .unwrap();
    assert_eq!(r.status, 503, "{r:?}");
    assert!(
        r.body.contains("The regional registry cannot be reached"),
        "{}",
        r.body
    );
    for i in 0..3 {
        p.cluster.restart_member(i);
    }
    let (port, cfg) = (p.b.port, p.b.client(&pc1));
    until(
        Duration::from_secs(30),
        "B serves once etcd is back",
        async || {
            get_once(port, cfg.clone(), "/patients/P001/labs")
                .await
                .is_ok_and(|r| r.status == 200)
        },
    )
    .await;
}
