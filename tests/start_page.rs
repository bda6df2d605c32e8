//! Where a physician stumbles (issue 11 items 24 and 26), with the real binary on loopback:
//! `seibo-gate init` + `serve`, certificates made at test time by `terminal add`, a recording
//! EMR, and a rustls client (ring only) over mutual TLS that keeps the session cookie.
//!
//! * Item 24: the site's start page (`[site] home`): `/` leads there (303), sign-in and the
//!   forced password change return to the page first asked for, the start page defaults to
//!   the EMR's root when routed (else "who am I"), and a start page the route table does not
//!   route is a config error naming `site.home`.
//! * Item 26: "who am I" shows the session end in Japan time to the minute with the minutes
//!   left, the ingress in words and a link to the start page; page footers show the site's
//!   name, not its id (also in the demo).
//!
//! Rules: art 6.3 (ID and password after the terminal credential), 13.1 (sessions). Every wait
//! is bounded; all traffic goes to 127.0.0.1.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use common::{show, tls_connect, Gate, RecordingEmr, Reply, Terminal, REQUEST_LIMIT};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;

const COOKIE: &str = "__Host-seibo_session";
const HTML: (&str, &str) = ("accept", "text/html,application/xhtml+xml");
const HOME: &str = "/portal/menu";
const SITE_NAME: &str = "西予テスト病院 / Seiyo Test Hospital";

/// A client speaking for one terminal, keeping the session cookie like a browser.
struct Client {
    port: u16,
    cfg: Arc<ClientConfig>,
    cookie: Option<String>,
}

impl Client {
    fn new(gate: &Gate, t: &Terminal) -> Client {
        Client {
            port: gate.port,
            cfg: gate.client(t),
            cookie: None,
        }
    }

    /// One request on a new connection, as a browser sends it (asks for HTML); the session
    /// cookie is sent and updated.
    async fn send(&mut self, method: &str, target: &str, form: Option<&[(&str, &str)]>) -> Reply {
        let r = self
            .try_send(method, target, form)
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
        form: Option<&[(&str, &str)]>,
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
            .header("host", format!("localhost:{}", self.port))
            .header(HTML.0, HTML.1);
        if let Some(c) = &self.cookie {
            b = b.header("cookie", format!("{COOKIE}={c}"));
        }
        let body = match form {
            Some(pairs) => {
                b = b.header("content-type", "application/x-www-form-urlencoded");
                form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(pairs)
                    .finish()
            }
            None => String::new(),
        };
        let req = b.body(Full::new(Bytes::from(body)))?;
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
        self.send("GET", target, None).await
    }

    async fn post(&mut self, target: &str, form: &[(&str, &str)]) -> Reply {
        self.send("POST", target, Some(form)).await
    }
}

fn location(r: &Reply) -> &str {
    r.header("location").unwrap_or("")
}

/// Rewrites the `init`-written gate.toml: `[site] home` and `name` after the contact line,
/// and extra routes at the end.
fn configure(gate: &Gate, site_lines: &str, routes: &str) {
    let text = std::fs::read_to_string(&gate.config).expect("read gate.toml");
    let contact = "contact = \"地域連携室 / Liaison office\"\n";
    assert!(text.contains(contact), "{text}");
    let text = text.replacen(contact, &format!("{contact}{site_lines}"), 1);
    std::fs::write(&gate.config, format!("{text}\n{routes}")).expect("write gate.toml");
}

/// The EMR's portal: pages without patient data, the start page among them.
const PORTAL_ROUTE: &str = "[[route]]\npath = \"/portal/**\"\nno_patient = true\n";

/// A physician with a one-time password, and their terminal.
fn physician(gate: &Gate, id: &str, password: &str, terminal: &str) -> Terminal {
    gate.add_physician_with_password(id, &format!("Dr {id}"), password);
    gate.add_terminal(id, terminal)
}

/// Issue 11 item 24, art 6.3: a physician who opens `/` is led to the start page (`[site]
/// home`), signs in from there, is made to change the one-time password, and lands back on
/// the start page — not on "who am I", not on the 404 "outside the viewing range" page. `/`
/// however written leads there once signed in too; the EMR never sees `/`; the audit names
/// the redirect `start-page`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn art_6_3_slash_leads_to_the_start_page_and_signin_returns_there() {
    let emr = RecordingEmr::start();
    let mut gate = Gate::init(emr.port);
    configure(&gate, &format!("home = \"{HOME}\"\n"), PORTAL_ROUTE);
    gate.start();
    let id = "dr-home";
    let (initial, chosen) = ("Ozu-Castle-1617", "Uchiko-Za-1916!");
    let t = physician(&gate, id, initial, "pc-home");
    let mut c = Client::new(&gate, &t);

    // Not signed in: `/` → the start page → the sign-in page, which returns there.
    let r = c.get("/").await;
    assert_eq!((r.status, location(&r)), (303, HOME), "{}", r.body);
    let r = c.get(HOME).await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(location(&r), "/.seibo/login?next=%2Fportal%2Fmenu");
    let r = c.get("/.seibo/login").await;
    assert_eq!(r.status, 200);
    assert!(
        r.body.contains(&format!("name=\"next\" value=\"{HOME}\"")),
        "the sign-in page without next returns to the start page: {}",
        r.body
    );

    // The one-time password: the change first, then back to the page first asked for.
    let r = c
        .post(
            "/.seibo/login",
            &[("id", id), ("password", initial), ("next", HOME)],
        )
        .await;
    assert_eq!(
        (r.status, location(&r)),
        (303, "/.seibo/password"),
        "{}",
        r.body
    );
    assert!(c.cookie.is_some());
    let r = c
        .post("/.seibo/password", &[("current", initial), ("new", chosen)])
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(
        location(&r),
        HOME,
        "after the forced change, back to the start page"
    );
    let r = c.get(HOME).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, format!("recording EMR saw {HOME}\n"));

    // Signed in: `/` in every spelling leads to the start page; other methods are not
    // redirected (`/` is not routed: 404, default deny).
    for root in ["/", "/?from=bookmark", "//", "/./", "/%2e/"] {
        let r = c.get(root).await;
        assert_eq!((r.status, location(&r)), (303, HOME), "{root}: {}", r.body);
    }
    let r = c.post("/", &[("x", "1")]).await;
    assert_eq!(r.status, 404, "{}", r.body);
    let r = c.get("/admin").await;
    assert_eq!(r.status, 404, "other unrouted pages stay refused");

    // A later sign-in from the start page (password already changed) goes straight there.
    let mut again = Client::new(&gate, &t);
    let r = again
        .post(
            "/.seibo/login",
            &[("id", id), ("password", chosen), ("next", HOME)],
        )
        .await;
    assert_eq!((r.status, location(&r)), (303, HOME), "{}", r.body);
    // ... and one from the sign-in page alone (no next) too.
    let r = again
        .post("/.seibo/login", &[("id", id), ("password", chosen)])
        .await;
    assert_eq!((r.status, location(&r)), (303, HOME), "{}", r.body);

    assert!(
        emr.seen().iter().all(|s| s.target.starts_with("/portal/")),
        "the EMR saw only the portal: {:?}",
        emr.seen()
    );
    let rows = gate.audit_rows();
    let start: Vec<_> = rows
        .iter()
        .filter(|r| r["reason"] == "start-page")
        .collect();
    assert!(start.len() >= 6, "{rows:#?}");
    assert!(start.iter().all(|r| r["decision"] == "allow"
        && r["method"] == "GET"
        && r["terminal"] == "pc-home"
        && r["physician"] == id));
}

/// Issue 11 item 24: with no `[site] home`, the start page is "who am I" while the EMR's root
/// is not routed — `/` leads there instead of the 404 — and the EMR's root once a route allows
/// it (after `systemctl reload`): `/` is then forwarded, and sign-in without a page returns
/// to `/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn art_6_3_start_page_defaults_to_whoami_then_the_emr_root_when_routed() {
    let emr = RecordingEmr::start();
    let mut gate = Gate::init(emr.port);
    gate.start();
    let id = "dr-default";
    let (initial, chosen) = ("Saijo-Water-2026", "Uwajima-Pearl-77");
    let t = physician(&gate, id, initial, "pc-default");
    let mut c = Client::new(&gate, &t);

    let r = c.get("/").await;
    assert_eq!(
        (r.status, location(&r)),
        (303, "/.seibo/whoami"),
        "{}",
        r.body
    );
    let r = c.get("/.seibo/whoami").await;
    assert_eq!(location(&r), "/.seibo/login?next=%2F.seibo%2Fwhoami");
    let r = c.get("/.seibo/login?next=%2F.seibo%2Fwhoami").await;
    assert!(
        r.body.contains("name=\"next\" value=\"/.seibo/whoami\""),
        "{}",
        r.body
    );
    let r = c
        .post(
            "/.seibo/login",
            &[
                ("id", id),
                ("password", initial),
                ("next", "/.seibo/whoami"),
            ],
        )
        .await;
    assert_eq!(location(&r), "/.seibo/password", "{}", r.body);
    let r = c
        .post("/.seibo/password", &[("current", initial), ("new", chosen)])
        .await;
    assert_eq!(
        (r.status, location(&r)),
        (303, "/.seibo/whoami"),
        "{}",
        r.body
    );
    let r = c.get("/").await;
    assert_eq!((r.status, location(&r)), (303, "/.seibo/whoami"));
    let r = c.get("/.seibo/whoami").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        !r.body.contains("スタートページへ"),
        "no link from the start page to itself: {}",
        r.body
    );

    // The EMR's root becomes routed: it is the start page, forwarded like any page.
    configure(
        &gate,
        "",
        "[[route]]\n# The EMR's root (its menu).\npath = \"/\"\nno_patient = true\n",
    );
    let out = gate.cli(&["check-config"]);
    assert!(out.status.success(), "{}", show(&out));
    let pid = gate.pid().expect("running");
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill -HUP");
    assert!(hup.success());
    let started = Instant::now();
    let r = loop {
        let r = c.get("/").await;
        if r.status == 200 || started.elapsed() > Duration::from_secs(10) {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        r.status,
        200,
        "/ after the reload: {}\n{}",
        r.body,
        gate.log()
    );
    assert_eq!(r.body, "recording EMR saw /\n");
    let mut again = Client::new(&gate, &t);
    let r = again
        .post("/.seibo/login", &[("id", id), ("password", chosen)])
        .await;
    assert_eq!((r.status, location(&r)), (303, "/"), "{}", r.body);
    let r = c.get("/.seibo/whoami").await;
    assert!(
        r.body.contains("<a href=\"/\">スタートページへ"),
        "{}",
        r.body
    );
}

/// Issue 11 item 24: a start page the route table does not allow, or one that names a patient,
/// or one not written as forwarded, is refused by `check-config` (exit 78) naming `site.home`
/// — and `serve` does not start with it.
#[test]
fn start_page_outside_the_route_table_is_a_config_error() {
    let emr = RecordingEmr::start();
    let mut gate = Gate::init(emr.port);
    let original = std::fs::read_to_string(&gate.config).expect("read gate.toml");
    for (home, why) in [
        ("/admin", "is not an EMR page the route table allows"),
        ("/patients/P001/basic", "names a patient"),
        (
            "/static/../static/app.css",
            "is forwarded as \"/static/app.css\"",
        ),
        ("/.seibo/logout", "is a page of the gateway's own"),
        ("https://evil.example/", "must be a path on this gateway"),
    ] {
        std::fs::write(&gate.config, &original).expect("write gate.toml");
        configure(&gate, &format!("home = {home:?}\n"), "");
        let out = gate.cli(&["check-config"]);
        assert_eq!(out.status.code(), Some(78), "{home}: {}", show(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("site.home: ") && stderr.contains(why),
            "{home}: {stderr}"
        );
    }
    // `serve` does not start with the last one either.
    gate.spawn();
    let status = gate.wait_exit(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.code() == Some(78)),
        "serve must refuse the config: {status:?}\n{}",
        gate.log()
    );
    assert!(gate.log().contains("site.home"), "{}", gate.log());
    // A page without patient data that a route allows is a start page.
    std::fs::write(&gate.config, &original).expect("write gate.toml");
    configure(&gate, "home = \"/static/app.css\"\n", "");
    let out = gate.cli(&["check-config"]);
    assert!(out.status.success(), "{}", show(&out));
}

/// The session end shown by "who am I": `YYYY-MM-DD HH:MM (JST)` and the minutes left.
fn shown_end(body: &str) -> (String, i64) {
    let at = body
        .find(" (JST)（あと ")
        .expect("the session end in Japan time");
    let when = body[..at]
        .get(at.saturating_sub(16)..)
        .expect("date and time")
        .to_string();
    let rest = &body[at + " (JST)（あと ".len()..];
    let minutes = rest
        .split(' ')
        .next()
        .and_then(|m| m.parse().ok())
        .expect("minutes left");
    (when, minutes)
}

/// Issue 11 item 26, art 13.1: "who am I" shows when the session ends as Japan time to the
/// minute (no RFC 3339 with nanoseconds) with the minutes left, how the terminal came in, in
/// words (not the audit code `mtls`), a link to the start page; every page's footer shows the
/// site's name, not its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn art_13_1_whoami_reads_as_a_physician_reads_and_footers_name_the_site() {
    let emr = RecordingEmr::start();
    let mut gate = Gate::init(emr.port);
    let text = std::fs::read_to_string(&gate.config).expect("read gate.toml");
    assert!(text.contains("\nname = \"test-site\"\n"), "{text}");
    std::fs::write(
        &gate.config,
        text.replace(
            "\nname = \"test-site\"\n",
            &format!("\nname = {SITE_NAME:?}\n"),
        ),
    )
    .expect("write gate.toml");
    configure(&gate, &format!("home = \"{HOME}\"\n"), PORTAL_ROUTE);
    gate.start();
    let id = "dr-who";
    let (initial, chosen) = ("Yawatahama-Port-3", "Mikan-Orchard-10!");
    let t = physician(&gate, id, initial, "pc-who");
    let mut c = Client::new(&gate, &t);

    let r = c.get("/.seibo/login").await;
    let footer = format!("<small>{SITE_NAME} ・ せい坊ネット / Seibo Net");
    assert!(r.body.contains(&footer), "sign-in page footer: {}", r.body);
    c.post("/.seibo/login", &[("id", id), ("password", initial)])
        .await;
    let signed_in = time::OffsetDateTime::now_utc();
    let r = c
        .post("/.seibo/password", &[("current", initial), ("new", chosen)])
        .await;
    assert_eq!((r.status, location(&r)), (303, HOME), "{}", r.body);

    let r = c.get("/.seibo/whoami").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let body = &r.body;
    // 12 hours (init's session_lifetime_secs = 43200) from the sign-in, in Japan time.
    let (when, left) = shown_end(body);
    let jst = time::UtcOffset::from_hms(9, 0, 0).expect("+09:00");
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]");
    let expected: Vec<String> = [-1i64, 0, 1]
        .iter()
        .map(|m| {
            (signed_in + time::Duration::hours(12) + time::Duration::minutes(*m))
                .to_offset(jst)
                .format(&fmt)
                .expect("format")
        })
        .collect();
    assert!(
        expected.contains(&when),
        "{when} not in {expected:?}: {body}"
    );
    assert!((715..=720).contains(&left), "{left} minutes left: {body}");
    assert!(body.contains(&format!("{left} min left")), "{body}");
    assert!(
        !body.contains("+09:00") && !body.contains("T0") && !body.contains("T1"),
        "no RFC 3339 timestamp: {body}"
    );
    assert!(body.contains("15分間操作がない場合"), "{body}");
    // The ingress in words, both languages.
    assert!(
        body.contains("端末証明書 / <span lang=\"en\">terminal certificate (mutual TLS)</span>"),
        "{body}"
    );
    assert!(!body.contains("<td>mtls</td>"), "{body}");
    assert!(body.contains(&format!(
        "<a href=\"{HOME}\">スタートページへ / Go to the start page</a>"
    )));
    assert!(body.contains(&footer), "whoami footer: {body}");
    assert!(!body.contains("test-site ・"), "{body}");

    // A refusal page's footer too.
    let r = c.get("/admin").await;
    assert_eq!(r.status, 404);
    assert!(r.body.contains(&footer), "refusal footer: {}", r.body);
}

/// Issue 11 item 26: the demo's pages name the site ("せい坊ネット デモ病院"), not its id
/// `demo-site`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_pages_show_the_sites_name_not_its_id() {
    let dir = tempfile::Builder::new()
        .prefix("seibo-demo-name-")
        .tempdir()
        .expect("tempdir");
    // The EMR address is only written into the config here; nothing connects to it.
    let site = seibo_gate::ops::demo::setup(dir.path(), "127.0.0.1:9".parse().expect("addr"))
        .await
        .expect("demo setup");
    assert_eq!(site.config.site.id, "demo-site");
    assert_ne!(site.config.site.name, site.config.site.id);
    let page = seibo_gate::pages::refusal(
        &seibo_gate::policy::decision::Refusal::DownloadBlocked,
        &site.config.site,
    );
    let body = page.into_body().collect().await.expect("body").to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("<small>せい坊ネット デモ病院 / Seibo Net demo hospital ・ せい坊ネット"),
        "{body}"
    );
    assert!(!body.contains("demo-site"), "{body}");
}
