//! Physician sign-in (issue 4) with the real binary on loopback: `seibo-gate init` + `serve`,
//! certificates made at test time by `terminal add` / `site-system add`, and a rustls client
//! (ring only) that speaks HTTP/1.1 over mutual TLS, one connection per request.
//!
//! Rules: art 4 (suspension), 6.1 (the site's own EMR system), 6.3 (ID and password), 13.1
//! (MHLW guideline: two factors, lockout, sessions bound to the terminal), 13.2.5 (no printing,
//! no saving).
//!
//! Every wait is bounded; all traffic goes to 127.0.0.1.

mod common;

use std::convert::Infallible;
use std::process::Command;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use common::{
    free_port, show, tls_connect, today_jst, wait_for_tcp, Gate, RecordingEmr, Reply, SampleEmr,
    Terminal, BIN, REQUEST_LIMIT, START_LIMIT,
};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;

const COOKIE: &str = "__Host-seibo_session";
const HTML: (&str, &str) = ("accept", "text/html,application/xhtml+xml");

// ---------------------------------------------------------------------------------------------
// Helpers

/// `physician add` with the initial password on standard input.
fn add_physician_with(gate: &Gate, id: &str, password: &str) {
    gate.add_physician_with_password(id, &format!("Dr {id}"), password);
}

/// The value after `marker` on the line that has it (`...: VALUE`).
fn printed(stdout: &str, marker: &str) -> String {
    stdout
        .lines()
        .find(|l| l.contains(marker))
        .and_then(|l| l.rsplit_once(": "))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {marker:?} in {stdout}"))
}

/// `physician add` without a password: the generated one-time password it printed.
fn add_physician_generated(gate: &Gate, id: &str) -> String {
    let out = gate.ok(&[
        "physician",
        "add",
        "--id",
        id,
        "--name",
        &format!("Dr {id}"),
    ]);
    let pw = printed(&out, "initial password (shown once");
    assert_eq!(pw.len(), 16, "{out}");
    pw
}

/// A client speaking for one terminal, keeping the session cookie like a browser.
struct Client {
    port: u16,
    cfg: Arc<ClientConfig>,
    cookie: Option<String>,
}

impl Client {
    fn new(gate: &Gate, t: &Terminal) -> Client {
        Client::on(gate.port, gate.client(t))
    }

    fn on(port: u16, cfg: Arc<ClientConfig>) -> Client {
        Client {
            port,
            cfg,
            cookie: None,
        }
    }

    /// One request on a new connection; the session cookie is sent and updated.
    async fn send(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> Reply {
        let r = self
            .try_send(method, target, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {target}: {e:#}"));
        if let Some(sc) = r.header("set-cookie") {
            let value = sc
                .split(';')
                .next()
                .and_then(|kv| kv.trim().strip_prefix(&format!("{COOKIE}=")))
                .unwrap_or("");
            self.cookie = (!value.is_empty()).then(|| value.to_string());
        }
        r
    }

    async fn try_send(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> anyhow::Result<Reply> {
        let tls = tls_connect(self.port, self.cfg.clone()).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .context("HTTP/1.1 handshake")?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut b = http::Request::builder()
            .method(method)
            .uri(target)
            .header("host", format!("localhost:{}", self.port));
        if let Some(c) = &self.cookie {
            b = b.header("cookie", format!("{COOKIE}={c}"));
        }
        if body.is_some() {
            b = b.header("content-type", "application/x-www-form-urlencoded");
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
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

    async fn get(&mut self, target: &str) -> Reply {
        self.send("GET", target, &[], None).await
    }

    /// A GET as a browser sends it (asks for HTML).
    async fn get_html(&mut self, target: &str) -> Reply {
        self.send("GET", target, &[HTML], None).await
    }

    async fn post_form(&mut self, target: &str, form: &[(&str, &str)]) -> Reply {
        self.post_form_with(target, form, &[]).await
    }

    async fn post_form_with(
        &mut self,
        target: &str,
        form: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> Reply {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        self.send("POST", target, headers, Some(body)).await
    }

    async fn sign_in(&mut self, id: &str, password: &str, next: &str) -> Reply {
        self.post_form(
            "/.seibo/login",
            &[("id", id), ("password", password), ("next", next)],
        )
        .await
    }

    async fn change_password(&mut self, current: &str, new: &str) -> Reply {
        self.post_form("/.seibo/password", &[("current", current), ("new", new)])
            .await
    }

    /// Sign-in with the one-time password, then the forced change: a working session.
    async fn sign_in_first_time(&mut self, id: &str, initial: &str, new: &str) {
        let r = self.sign_in(id, initial, "/patients/P001/basic").await;
        assert_eq!(r.status, 303, "sign-in: {}", r.body);
        assert_eq!(r.header("location"), Some("/.seibo/password"));
        let r = self.change_password(initial, new).await;
        assert_eq!(r.status, 303, "password change: {}", r.body);
        // Back to the page first asked for (issue 11 item 24).
        assert_eq!(r.header("location"), Some("/patients/P001/basic"));
    }
}

fn location(r: &Reply) -> &str {
    r.header("location").unwrap_or("")
}

/// The audit's reasons for requests to `path` by `physician`, oldest first.
fn reasons(gate: &Gate, physician: &str, method: &str, path: &str) -> Vec<String> {
    gate.audit_rows()
        .into_iter()
        .filter(|r| r["physician"] == physician && r["method"] == method && r["path"] == path)
        .map(|r| r["reason"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Every audit reason of `physician`'s requests, oldest first.
fn all_reasons(gate: &Gate, physician: &str) -> Vec<String> {
    gate.audit_rows()
        .into_iter()
        .filter(|r| r["physician"] == physician && r["method"].is_string())
        .map(|r| r["reason"].as_str().unwrap_or("").to_string())
        .collect()
}

/// A site on the sample EMR with consent for P001 (not P002).
fn sample_site() -> (SampleEmr, Gate) {
    let emr = SampleEmr::start();
    let mut gate = Gate::init(emr.port);
    gate.start();
    gate.grant("P001", today_jst());
    (emr, gate)
}

// ---------------------------------------------------------------------------------------------
// Art 13.1: lockout

/// Art 13.1 (MHLW guideline): after 5 wrong passwords in a row the account is locked — even
/// the right password is then refused — and every attempt is in the audit log. The
/// administrator's `physician passwd` is the way out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn art_13_1_lockout_after_five_failures() {
    let (_emr, gate) = sample_site();
    let id = "dr-lock";
    let initial = "Ishizuchi-1982";
    add_physician_with(&gate, id, initial);
    let t = gate.add_terminal(id, "pc-lock");
    let mut c = Client::new(&gate, &t);

    for n in 1..=5 {
        let r = c.sign_in(id, &format!("wrong-{n}-password"), "/").await;
        assert_eq!(r.status, 401, "wrong password {n}: {}", r.body);
        assert!(r.header("set-cookie").is_none(), "no session for a failure");
        assert!(r.body.contains("正しくありません"), "{}", r.body);
    }
    // The right password no longer opens a session.
    let r = c.sign_in(id, initial, "/patients/P001/basic").await;
    assert_eq!(r.status, 403, "locked: {}", r.body);
    assert!(r.header("set-cookie").is_none());
    assert!(c.cookie.is_none());
    assert!(r.body.contains("ロックされています"), "{}", r.body);
    // Nor does a wrong one reset anything; EMR pages stay closed.
    let r = c.sign_in(id, "wrong-again-password", "/").await;
    assert_eq!(r.status, 403);
    assert_eq!(c.get("/patients/P001/basic").await.status, 401);

    // Every attempt is audited, with its outcome.
    assert_eq!(
        reasons(&gate, id, "POST", "/.seibo/login"),
        [
            "login-failed",
            "login-failed",
            "login-failed",
            "login-failed",
            "login-locked-now",
            "login-locked",
            "login-locked",
        ]
    );
    let rows = gate.audit_rows();
    let login_rows: Vec<_> = rows
        .iter()
        .filter(|r| r["path"] == "/.seibo/login" && r["physician"] == id)
        .collect();
    assert!(login_rows
        .iter()
        .all(|r| r["decision"] == "deny" && r["terminal"] == "pc-lock"));

    // `physician passwd` lifts the lock with a new one-time password.
    let out = gate.ok(&["physician", "passwd", "--id", id]);
    let one_time = printed(&out, "new one-time password (shown once)");
    let r = c.sign_in(id, initial, "/").await;
    assert_eq!(r.status, 401, "the old password is gone");
    let r = c.sign_in(id, &one_time, "/").await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(location(&r), "/.seibo/password");
}

// ---------------------------------------------------------------------------------------------
// Art 13.1: the session is bound to the terminal

/// Art 13.1: a session cookie works only from the terminal that signed in. The same cookie
/// sent from another terminal of the same physician is refused, and the stolen cookie is
/// burnt for the original terminal too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn art_13_1_cookie_replay_from_another_terminal_is_refused() {
    let (_emr, gate) = sample_site();
    let id = "dr-a";
    add_physician_with(&gate, id, "Uwajima-Port-1");
    let ta = gate.add_terminal(id, "pc-a");
    let tb = gate.add_terminal(id, "pc-b");
    let mut a = Client::new(&gate, &ta);
    a.sign_in_first_time(id, "Uwajima-Port-1", "Shimanto-River-2")
        .await;
    let r = a.get("/patients/P001/basic").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let token = a.cookie.clone().expect("session cookie");
    assert_eq!(token.len(), 64, "256-bit token");

    // Terminal B replays A's cookie: a browser is sent to sign in.
    let mut b = Client::new(&gate, &tb);
    b.cookie = Some(token.clone());
    let r = b.get_html("/patients/P001/basic").await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(
        location(&r),
        "/.seibo/login?next=%2Fpatients%2FP001%2Fbasic"
    );
    // The cookie is burnt: A is signed out too, and B's next try fails the same way.
    let r = a.get("/patients/P001/basic").await;
    assert_eq!(r.status, 401, "burnt cookie on terminal A: {}", r.body);
    let r = b.get("/patients/P001/basic").await;
    assert_eq!(r.status, 401);
    let r = a.get_html("/.seibo/whoami").await;
    assert_eq!(r.status, 303);
    assert!(location(&r).starts_with("/.seibo/login"));

    let rs = reasons(&gate, id, "GET", "/patients/P001/basic");
    assert_eq!(
        rs[..4],
        [
            "allowed",
            "session-wrong-terminal",
            "no-session",
            "no-session"
        ]
    );
    let rows = gate.audit_rows();
    let replay = rows
        .iter()
        .find(|r| r["reason"] == "session-wrong-terminal")
        .expect("replay audited");
    assert_eq!(replay["terminal"], "pc-b");
    assert_eq!(replay["decision"], "deny");

    // Each terminal signs in for itself; the sessions stay apart.
    let r = a.sign_in(id, "Shimanto-River-2", "/").await;
    assert_eq!(r.status, 303);
    let r = b.sign_in(id, "Shimanto-River-2", "/").await;
    assert_eq!(r.status, 303);
    assert_ne!(a.cookie, b.cookie);
    assert_eq!(a.get("/patients/P001/basic").await.status, 200);
    assert_eq!(b.get("/patients/P001/basic").await.status, 200);
}

// ---------------------------------------------------------------------------------------------
// Art 4: suspension

/// Art 4: suspending the physician ends their session at once; after `resume` they must sign
/// in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn art_4_suspension_ends_the_session() {
    let (_emr, gate) = sample_site();
    let id = "dr-s";
    add_physician_with(&gate, id, "Nomura-Dam-33");
    let t = gate.add_terminal(id, "pc-s");
    let mut c = Client::new(&gate, &t);
    c.sign_in_first_time(id, "Nomura-Dam-33", "Akehama-Sea-44")
        .await;
    assert_eq!(c.get("/patients/P001/basic").await.status, 200);

    gate.ok(&["physician", "suspend", "--id", id, "--reason", "request"]);
    let r = c.get_html("/patients/P001/basic").await;
    assert_eq!(r.status, 403, "{}", r.body);
    // Signing in is refused too while suspended.
    let r = c.sign_in(id, "Akehama-Sea-44", "/").await;
    assert_eq!(r.status, 403, "{}", r.body);

    gate.ok(&["physician", "resume", "--id", id]);
    let r = c.get("/patients/P001/basic").await;
    assert_eq!(r.status, 401, "the old session is gone: {}", r.body);
    let r = c.get_html("/patients/P001/basic").await;
    assert_eq!(r.status, 303);
    assert!(location(&r).starts_with("/.seibo/login?next="));
    let r = c
        .sign_in(id, "Akehama-Sea-44", "/patients/P001/basic")
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(location(&r), "/patients/P001/basic");
    assert_eq!(c.get("/patients/P001/basic").await.status, 200);

    // (An identity refusal names the certificate, not the physician: select by path.)
    let rs: Vec<_> = gate
        .audit_rows()
        .into_iter()
        .filter(|r| r["method"] == "GET" && r["path"] == "/patients/P001/basic")
        .map(|r| r["reason"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        rs,
        [
            "allowed",
            "physician-suspended",
            "no-session",
            "no-session",
            "allowed"
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Art 6.3: the initial password

/// Art 6.3: the one-time password printed by `physician add` opens only the password-change
/// page; EMR pages are refused until the password is changed (to one that meets the policy);
/// `physician passwd` issues a new one-time password and ends the physician's sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn art_6_3_initial_password_must_be_changed() {
    let (_emr, gate) = sample_site();
    let id = "dr-init";
    let initial = add_physician_generated(&gate, id);
    let t = gate.add_terminal(id, "pc-init");
    let mut c = Client::new(&gate, &t);

    // No session: a browser is sent to the sign-in page, anything else gets 401.
    let r = c.get_html("/patients/P001/basic").await;
    assert_eq!(r.status, 303);
    assert_eq!(
        location(&r),
        "/.seibo/login?next=%2Fpatients%2FP001%2Fbasic"
    );
    assert_eq!(c.get("/patients/P001/basic").await.status, 401);
    let r = c.get("/.seibo/login?next=%2Fpatients%2FP001%2Fbasic").await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("name=\"password\""), "{}", r.body);
    assert!(r.body.contains("value=\"/patients/P001/basic\""));

    // A form posted from another site is refused; the browser's own form (Origin: null
    // under no-referrer, Sec-Fetch-Site: same-origin) is accepted.
    let form = [
        ("id", id),
        ("password", initial.as_str()),
        ("next", "/patients/P001/basic"),
    ];
    let r = c
        .post_form_with(
            "/.seibo/login",
            &form,
            &[
                ("origin", "https://evil.example"),
                ("sec-fetch-site", "cross-site"),
            ],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(c.cookie.is_none());
    let r = c
        .post_form_with(
            "/.seibo/login",
            &form,
            &[("origin", "null"), ("sec-fetch-site", "same-origin")],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(location(&r), "/.seibo/password", "must change first");
    let sc = r.header("set-cookie").expect("cookie").to_string();
    for attr in ["Path=/", "Secure", "HttpOnly", "SameSite=Strict"] {
        assert!(sc.contains(attr), "{attr} in {sc}");
    }

    // Until changed: EMR pages and "who am I" lead to the change.
    let r = c.get_html("/patients/P001/basic").await;
    assert_eq!(r.status, 303);
    assert_eq!(location(&r), "/.seibo/password");
    let r = c.get("/patients/P001/basic").await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = c.get_html("/.seibo/whoami").await;
    assert_eq!(location(&r), "/.seibo/password");
    let r = c.get("/.seibo/password").await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("name=\"current\"") && r.body.contains("name=\"new\""));

    // The policy: ≥ 10 characters, 2 classes, not the ID, not the current one.
    for (current, new, why) in [
        (
            "not-the-password",
            "Kawauso-2026!",
            "wrong current password",
        ),
        (initial.as_str(), "Short-1", "too short"),
        (initial.as_str(), "onlylowercaseletters", "one class"),
        (initial.as_str(), "My-dr-init-pass-1", "contains the ID"),
        (initial.as_str(), initial.as_str(), "unchanged"),
    ] {
        let r = c.change_password(current, new).await;
        assert_eq!(r.status, 400, "{why}: {}", r.body);
    }
    assert_eq!(c.get("/patients/P001/basic").await.status, 403);

    let r = c.change_password(&initial, "Kawauso-2026!").await;
    assert_eq!(r.status, 303, "{}", r.body);
    // Back to the page first asked for at sign-in (issue 11 item 24).
    assert_eq!(location(&r), "/patients/P001/basic");
    let r = c.get("/patients/P001/basic").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = c.get("/.seibo/whoami").await;
    assert_eq!(r.status, 200);
    assert!(
        r.body.contains(id) && r.body.contains("pc-init"),
        "{}",
        r.body
    );

    // The one-time password is spent; the new one works from now on.
    let mut again = Client::new(&gate, &t);
    assert_eq!(again.sign_in(id, &initial, "/").await.status, 401);
    let r = again
        .sign_in(id, "Kawauso-2026!", "/patients/P001/basic")
        .await;
    assert_eq!(location(&r), "/patients/P001/basic");

    // `physician passwd`: a new one-time password, and both sessions end.
    let out = gate.ok(&["physician", "passwd", "--id", id]);
    assert!(out.contains("2 session(s) ended"), "{out}");
    let one_time = printed(&out, "new one-time password (shown once)");
    assert_eq!(c.get("/patients/P001/basic").await.status, 401);
    assert_eq!(again.get("/patients/P001/basic").await.status, 401);
    assert_eq!(c.sign_in(id, "Kawauso-2026!", "/").await.status, 401);
    let r = c.sign_in(id, &one_time, "/patients/P001/basic").await;
    assert_eq!(location(&r), "/.seibo/password");
    assert_eq!(c.get("/patients/P001/basic").await.status, 403);

    let rs = all_reasons(&gate, id);
    for want in [
        "login-ok",
        "password-change-required",
        "password-change-failed",
        "password-changed",
        "login-failed",
        "cross-origin-form",
    ] {
        assert!(rs.iter().any(|r| r == want), "{want} in {rs:?}");
    }
}

/// Art 13.1: signing out ends the session on the server (the cookie is useless afterwards).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn art_13_1_sign_out_ends_the_session() {
    let (_emr, gate) = sample_site();
    let id = "dr-out";
    add_physician_with(&gate, id, "Hijikawa-Fog-5");
    let t = gate.add_terminal(id, "pc-out");
    let mut c = Client::new(&gate, &t);
    c.sign_in_first_time(id, "Hijikawa-Fog-5", "Ozu-Castle-66")
        .await;
    assert_eq!(c.get("/patients/P001/basic").await.status, 200);
    let token = c.cookie.clone().expect("cookie");
    let r = c.post_form("/.seibo/logout", &[]).await;
    assert_eq!(r.status, 303);
    assert_eq!(location(&r), "/.seibo/login?signed_out=1");
    assert!(r
        .header("set-cookie")
        .is_some_and(|v| v.contains("Max-Age=0")));
    assert!(c.cookie.is_none());
    c.cookie = Some(token);
    assert_eq!(c.get("/patients/P001/basic").await.status, 401);
}

// ---------------------------------------------------------------------------------------------
// Art 6.1: the site system

/// Appends an in-hospital listener (art 6.1) on a free loopback port; returns the port.
fn add_site_listener(gate: &Gate) -> u16 {
    let port = free_port();
    let mut text = std::fs::read_to_string(&gate.config).expect("read gate.toml");
    text.push_str(&format!(
        "\n[[listener]]\nname = \"in-hospital\"\nkind = \"site-system\"\n\
         listen = \"127.0.0.1:{port}\"\nallow = [\"127.0.0.0/8\"]\n\
         cert = \"tls/server.crt\"\nkey = \"tls/server.key\"\n"
    ));
    std::fs::write(&gate.config, text).expect("write gate.toml");
    let out = Command::new(BIN)
        .arg("check-config")
        .arg("--config")
        .arg(&gate.config)
        .output()
        .expect("check-config");
    assert!(out.status.success(), "check-config: {}", show(&out));
    port
}

/// `site-system add` into D/site; the files it wrote.
fn add_site_system(gate: &Gate, name: &str) -> Terminal {
    let dir = gate.path("site");
    gate.ok(&[
        "site-system",
        "add",
        "--name",
        name,
        "--out",
        dir.to_str().expect("utf-8"),
    ]);
    let t = Terminal {
        name: name.to_string(),
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    assert!(t.cert.exists() && t.key.exists() && dir.join(format!("{name}.p12")).exists());
    t
}

/// Art 6.1: only the site's own registered EMR system, on the in-hospital listener, may name
/// the physician in `X-Seibo-Site-Physician`. From a terminal the header is ignored and
/// stripped (the EMR sees the terminal's physician); on the site listener the asserted
/// physician needs no password, consent still applies, a missing header and a terminal
/// certificate are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn art_6_1_site_system_header_is_stripped_from_ordinary_clients() {
    let emr = RecordingEmr::start();
    let mut gate = Gate::init(emr.port);
    let site_port = add_site_listener(&gate);
    gate.start();
    assert!(
        wait_for_tcp(site_port, START_LIMIT),
        "site listener: {}",
        gate.log()
    );
    gate.grant("P001", today_jst());
    let id = "dr-t";
    add_physician_with(&gate, id, "Sadamisaki-7x");
    let t = gate.add_terminal(id, "pc-t");
    let sys = add_site_system(&gate, "hospital-emr");

    // A terminal asserting someone else: the EMR sees the terminal's physician only.
    let mut c = Client::new(&gate, &t);
    c.sign_in_first_time(id, "Sadamisaki-7x", "Misaki-Light-8")
        .await;
    emr.clear();
    let r = c
        .send(
            "GET",
            "/patients/P001/basic",
            &[("x-seibo-site-physician", "someone-else")],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = emr.seen();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(seen[0].one("x-seibo-physician"), id);
    assert_eq!(seen[0].one("x-seibo-terminal"), "pc-t");
    assert!(
        seen[0].all("x-seibo-site-physician").is_empty(),
        "{seen:#?}"
    );
    assert!(
        !seen[0]
            .headers
            .iter()
            .any(|(_, v)| v.contains("someone-else")),
        "{seen:#?}"
    );
    assert!(
        !seen[0].headers.iter().any(|(_, v)| v.contains(COOKIE)),
        "the session cookie is the gateway's: {seen:#?}"
    );
    // Without a session the header opens nothing.
    let mut anon = Client::new(&gate, &t);
    let r = anon
        .send(
            "GET",
            "/patients/P001/basic",
            &[("x-seibo-site-physician", id)],
            None,
        )
        .await;
    assert_eq!(r.status, 401);

    // The site system on its listener: the asserted physician, no password.
    let mut site = Client::on(site_port, gate.client(&sys));
    emr.clear();
    let r = site
        .send(
            "GET",
            "/patients/P001/basic",
            &[("x-seibo-site-physician", "dr-x")],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = emr.seen();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(seen[0].one("x-seibo-physician"), "dr-x");
    assert!(seen[0].all("x-seibo-site-physician").is_empty());
    // Consent applies as on every path.
    let r = site
        .send(
            "GET",
            "/patients/P002/basic",
            &[("x-seibo-site-physician", "dr-x")],
            None,
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("閲覧できません"));
    // No header: refused.
    let r = site.get("/patients/P001/basic").await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("site-physician-missing"), "{}", r.body);
    // A terminal's certificate on the site listener is no site system.
    let mut wrong = Client::on(site_port, gate.client(&t));
    let r = wrong
        .send(
            "GET",
            "/patients/P001/basic",
            &[("x-seibo-site-physician", "dr-x")],
            None,
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("site-system-unknown"), "{}", r.body);
    // And the site system's certificate on the terminal listener is no terminal.
    let mut misplaced = Client::on(gate.port, gate.client(&sys));
    let r = misplaced
        .send(
            "GET",
            "/patients/P001/basic",
            &[("x-seibo-site-physician", "dr-x")],
            None,
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    // A suspended physician stays refused on the site path.
    gate.ok(&["physician", "suspend", "--id", id, "--reason", "request"]);
    let r = site
        .send(
            "GET",
            "/patients/P001/basic",
            &[("x-seibo-site-physician", id)],
            None,
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(emr.seen().len(), 1, "nothing refused reached the EMR");

    // Audited like every other path, with the site ingress.
    let rows = gate.audit_rows();
    let site_rows: Vec<_> = rows.iter().filter(|r| r["ingress"] == "site").collect();
    let got: Vec<(&str, &str)> = site_rows
        .iter()
        .map(|r| {
            (
                r["physician"].as_str().unwrap_or("-"),
                r["reason"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("dr-x", "allowed"),
            ("dr-x", "no-consent"),
            ("-", "site-physician-missing"),
            ("-", "site-system-unknown"),
            ("-", "physician-suspended"),
        ]
    );
    assert!(site_rows[0]["terminal"] == "hospital-emr");
}

// ---------------------------------------------------------------------------------------------
// Art 13.2.5: no printing, no saving

/// An EMR for the art 13.2.5 test: an HTML page, a JSON document, an inline PDF and a PDF
/// sent as a download.
struct DownloadEmr {
    port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl DownloadEmr {
    async fn start() -> DownloadEmr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind EMR");
        let port = listener.local_addr().expect("addr").port();
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = &mut rx => return,
                };
                let Ok((stream, _)) = accepted else { continue };
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|req: hyper::Request<_>| async move {
                        Ok::<_, Infallible>(Self::page(req.uri().path()))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        DownloadEmr {
            port,
            stop: Some(tx),
        }
    }

    fn page(path: &str) -> hyper::Response<Full<Bytes>> {
        let (ct, disposition, body): (&str, Option<&str>, &str) = match path {
            "/patients/P001/basic" => (
                "text/html; charset=utf-8",
                None,
                "<!DOCTYPE html><html><body><h1>EMR record</h1></body></html>",
            ),
            "/patients/P001/labs" => ("application/json", None, "{\"hb\":13.2}"),
            "/patients/P001/reports/inline.pdf" => (
                "application/pdf",
                Some("inline; filename=\"inline.pdf\""),
                "%PDF-1.4 inline",
            ),
            "/patients/P001/reports/scan.pdf" => (
                "application/pdf",
                Some("Attachment; filename=\"scan.pdf\""),
                "%PDF-1.4 secret",
            ),
            _ => ("text/plain", None, "not found"),
        };
        let mut b = hyper::Response::builder()
            .header("content-type", ct)
            .header("cache-control", "public, max-age=3600");
        if let Some(d) = disposition {
            b = b.header("content-disposition", d);
        }
        b.body(Full::new(Bytes::from_static(body.as_bytes())))
            .expect("response")
    }
}

impl Drop for DownloadEmr {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

const PRINT_GUARD: &str = "<style media=\"print\">";

fn assert_no_store(r: &Reply, what: &str) {
    let cc = r.header("cache-control").unwrap_or("");
    assert!(cc.starts_with("no-store"), "{what}: cache-control {cc:?}");
}

/// Art 13.2.5: the EMR's HTML pages carry the print guard (a `<style media="print">` that
/// blanks the page) and `no-store`; the gateway's own pages too; an EMR response that would
/// save a file (`Content-Disposition: attachment`) is refused with a page, and never reaches
/// the browser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn art_13_2_5_print_guard_and_downloads_refused() {
    let emr = DownloadEmr::start().await;
    let mut gate = Gate::init(emr.port);
    gate.start();
    gate.grant("P001", today_jst());
    let id = "dr-print";
    add_physician_with(&gate, id, "Yawatahama-9x");
    let t = gate.add_terminal(id, "pc-print");
    let mut c = Client::new(&gate, &t);

    let r = c.get("/.seibo/login").await;
    assert!(r.body.contains("@media print"), "{}", r.body);
    assert_no_store(&r, "sign-in page");
    c.sign_in_first_time(id, "Yawatahama-9x", "Mikan-Orchard-10")
        .await;

    let r = c.get_html("/patients/P001/basic").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.starts_with("<!DOCTYPE html>"), "{}", r.body);
    assert!(r.body.contains("EMR record"));
    assert!(r.body.contains(PRINT_GUARD), "print guard: {}", r.body);
    assert!(r.body.trim_end().ends_with("</style>"), "{}", r.body);
    // The EMR stated its length: the gateway states the length with the guard, exactly.
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str()),
        "content-length of the guarded page"
    );
    assert_no_store(&r, "EMR HTML");

    let r = c.get("/patients/P001/labs").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "{\"hb\":13.2}", "JSON is left as it is");
    assert_no_store(&r, "EMR JSON");

    let r = c.get("/patients/P001/reports/inline.pdf").await;
    assert_eq!(r.status, 200, "an inline document is shown: {}", r.body);
    assert_eq!(r.body, "%PDF-1.4 inline");

    let r = c.get_html("/patients/P001/reports/scan.pdf").await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.header("content-disposition").is_none());
    assert!(r
        .header("content-type")
        .is_some_and(|v| v.starts_with("text/html")));
    assert!(!r.body.contains("secret"), "{}", r.body);
    assert!(r.body.contains("保存することはできません"), "{}", r.body);
    assert!(r.body.contains("download-blocked"));
    assert_no_store(&r, "refusal page");

    // The request was allowed by route and consent; its outcome is the refusal.
    let rows = gate.audit_rows();
    let blocked: Vec<_> = rows
        .iter()
        .filter(|r| r["path"] == "/patients/P001/reports/scan.pdf")
        .collect();
    assert_eq!(blocked.len(), 1, "{rows:#?}");
    common::eventually(std::time::Duration::from_secs(10), "outcome 403", || {
        gate.audit_rows()
            .iter()
            .any(|r| r["path"] == "/patients/P001/reports/scan.pdf" && r["status"] == 403)
    })
    .expect("the blocked download's outcome is audited");
    drop(gate);
    drop(emr);
}
