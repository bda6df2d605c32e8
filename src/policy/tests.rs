//! The policy as a table (issue 12): identity × session × route × consent × method × framing,
//! each row one request and the plan it must get. Every refusal reason [`check`] can give is a
//! row (checked at the end); the refusals that need the EMR or the disk (upstream, download,
//! audit) are proven by the integration tests, and the route table's own bad-target reasons
//! (one per normalisation rule) by its table in `route`'s tests.
#![allow(clippy::unwrap_used)]

use crate::registry::store::block;
use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::json;
use time::macros::datetime;
use time::{Date, Duration, OffsetDateTime};

use super::*;
use crate::audit::AuditLog;
use crate::ingress::peer::Credential;
use crate::ops::clock::{FixedClock, JST};
use crate::ops::metrics::Metrics;
use crate::policy::session;
use crate::registry::model::{Consent, Physician, Terminal};
use crate::registry::store::Store;
use crate::site::config::Config;

/// The table's "now": consents are dated from it.
const NOW: OffsetDateTime = datetime!(2026-11-27 10:00 +09:00);

const CONFIG: &str = r#"
[site]
id = "test-site"

[ca]
cert = "ca/terminal-ca.crt"
key = "ca/terminal-ca.key"

[[listener]]
listen = "127.0.0.1:8443"
allow = ["127.0.0.0/8"]
cert = "tls/server.crt"
key = "tls/server.key"

[upstream]
url = "http://10.20.0.5:8080"
private = ["10.20.0.0/16"]

[limits]
max_headers = 20

[[route]]
path = "/patients/{patient}/{category}/**"

[[route]]
path = "/orders/{patient}/notes"
category = "notes"
methods = ["GET", "POST"]
max_body_bytes = 100

[[route]]
path = "/static/**"
no_patient = true
"#;

/// Physicians, terminals and consents the rows refer to.
struct World {
    _dir: tempfile::TempDir,
    gate: Gate,
    /// Session cookie of each physician on its own terminal.
    cookies: std::collections::HashMap<&'static str, String>,
}

fn fp(name: &str) -> String {
    format!("{:0>64}", hex::encode(name))
}

fn physician(id: &str, suspended: bool) -> Physician {
    serde_json::from_value(json!({
        "id": id, "name": id, "site": "test-site",
        "suspended": if suspended { json!("violation") } else { json!(null) },
        "registered": "2026-01-01T09:00:00+09:00",
    }))
    .unwrap()
}

fn terminal(name: &str, physician: &str, kind: &str, revoked: bool, not_after: &str) -> Terminal {
    serde_json::from_value(json!({
        "name": name, "physician": physician, "fingerprint": fp(name), "serial": "01",
        "not_after": not_after, "revoked": revoked,
        "registered": "2026-01-01T09:00:00+09:00", "kind": kind,
    }))
    .unwrap()
}

fn consent(patient: &str, published: Date, withdrawn: bool) -> Consent {
    serde_json::from_value(json!({
        "patient": patient, "by": {"kind": "patient"}, "site": "test-site", "form_ref": "F6-1",
        "published": published.to_string(), "no_extension": true, "last_view": null,
        "withdrawn": if withdrawn {
            json!({"form_ref": "F7-1", "date": published.to_string()})
        } else { json!(null) },
    }))
    .unwrap()
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::parse(&dir.path().join("gate.toml"), CONFIG).unwrap();
    let store = Store::open(&dir.path().join("registry")).unwrap();
    let audit = AuditLog::open(&dir.path().join("audit")).unwrap();
    let clock = Arc::new(FixedClock(NOW));
    let gate = Gate::new(&cfg, store, audit, Metrics::new().unwrap(), clock);
    let s = &gate.store;
    let valid = "2030-01-01T00:00:00+09:00";
    for (id, suspended) in [("dr-a", false), ("dr-b", false), ("dr-susp", true)] {
        block(s.add_physician(&physician(id, suspended))).unwrap();
    }
    let mut must_change = physician("dr-new", false);
    must_change.must_change_password = true;
    block(s.add_physician(&must_change)).unwrap();
    for t in [
        terminal("pc-a", "dr-a", "terminal", false, valid),
        terminal("pc-b", "dr-b", "terminal", false, valid),
        terminal("pc-susp", "dr-susp", "terminal", false, valid),
        terminal("pc-new", "dr-new", "terminal", false, valid),
        terminal("pc-revoked", "dr-a", "terminal", true, valid),
        terminal(
            "pc-expired",
            "dr-a",
            "terminal",
            false,
            "2026-01-01T00:00:00+09:00",
        ),
        terminal("emr-system", "dr-a", "site-system", false, valid),
    ] {
        block(s.add_terminal(&t)).unwrap();
    }
    let today = NOW.to_offset(JST).date();
    block(s.grant_consent(&consent("P001", today, false))).unwrap();
    block(s.grant_consent(&consent("P003", today, true))).unwrap();
    block(s.grant_consent(&consent("P004", today - Duration::days(1000), false))).unwrap();
    block(s.grant_consent(&consent("P005", today + Duration::days(1), false))).unwrap();
    let mut cookies = std::collections::HashMap::new();
    for (who, pc, must) in [
        ("dr-a", "pc-a", false),
        ("dr-b", "pc-b", false),
        ("dr-new", "pc-new", true),
    ] {
        let (token, _) = gate.sessions.create(who, &fp(pc), must);
        let cookie = session::set_cookie(&token);
        let pair = cookie.split(';').next().unwrap().to_string();
        cookies.insert(who, pair);
    }
    World {
        _dir: dir,
        gate,
        cookies,
    }
}

/// One request of the table.
struct Row {
    ingress: Ingress,
    terminal: &'static str,
    /// Whose session cookie the request carries, if any.
    cookie: Option<&'static str>,
    method: &'static str,
    target: &'static str,
    headers: &'static [(&'static str, &'static str)],
    http2: bool,
    /// The plan: "forward", "own-page", "start-page", or the refusal's reason.
    want: &'static str,
}

const fn row(
    terminal: &'static str,
    cookie: Option<&'static str>,
    target: &'static str,
    want: &'static str,
) -> Row {
    Row {
        ingress: Ingress::Mtls,
        terminal,
        cookie,
        method: "GET",
        target,
        headers: &[],
        http2: false,
        want,
    }
}

fn table() -> Vec<Row> {
    let a = Some("dr-a");
    vec![
        // Identity (art 12.7, 4): the terminal, then its physician.
        row("pc-a", a, "/patients/P001/labs", "forward"),
        row("pc-unknown", a, "/patients/P001/labs", "terminal-unknown"),
        row("pc-revoked", a, "/patients/P001/labs", "terminal-revoked"),
        row("pc-expired", a, "/patients/P001/labs", "terminal-expired"),
        row(
            "pc-susp",
            None,
            "/patients/P001/labs",
            "physician-suspended",
        ),
        // Session (art 6.3, 13.1): signed in, on this terminal, password changed.
        row("pc-a", None, "/patients/P001/labs", "no-session"),
        row(
            "pc-a",
            Some("dr-b"),
            "/patients/P001/labs",
            "session-wrong-terminal",
        ),
        row(
            "pc-new",
            Some("dr-new"),
            "/patients/P001/labs",
            "password-change-required",
        ),
        // The gateway's own pages and the start page need no session.
        row("pc-a", None, "/.seibo/login", "own-page"),
        row("pc-a", None, "/.seibo/whoami", "own-page"),
        row("pc-a", None, "/", "start-page"),
        // A refused terminal learns nothing of the own pages either.
        row("pc-revoked", None, "/.seibo/login", "terminal-revoked"),
        // Route (art 8.2): unmapped, bad targets, patient named twice.
        row("pc-a", a, "/admin", "no-route"),
        row("pc-a", a, "/patients/P001/secrets", "no-route"),
        row("pc-a", a, "/patients/P001%2fP002/labs", "encoded-slash"),
        row(
            "pc-a",
            a,
            "/patients/P001;jsessionid=1/labs",
            "matrix-parameter",
        ),
        row("pc-a", a, "/patients/%2e%2e/P002/labs", "no-route"),
        row(
            "pc-a",
            a,
            "/patients/P001/labs?patient=P002",
            "patient-parameter-mismatch",
        ),
        row(
            "pc-a",
            a,
            "/static/app.css?pid=P002",
            "patient-parameter-on-no-patient-route",
        ),
        row("pc-a", a, "/static/app.css", "forward"),
        // Consent (art 8.1, 8.3, 9.2): none, withdrawn, ended, not yet published.
        row("pc-a", a, "/patients/P002/labs", "no-consent"),
        row("pc-a", a, "/patients/P003/labs", "consent-withdrawn"),
        row("pc-a", a, "/patients/P004/labs", "viewing-period-ended"),
        row(
            "pc-a",
            a,
            "/patients/P005/labs",
            "consent-not-yet-published",
        ),
        // Methods and bodies.
        Row {
            method: "POST",
            ..row("pc-a", a, "/patients/P001/labs", "method-not-allowed")
        },
        Row {
            method: "POST",
            headers: &[("content-length", "50")],
            ..row("pc-a", a, "/orders/P001/notes", "forward")
        },
        Row {
            method: "POST",
            headers: &[("content-length", "101")],
            ..row("pc-a", a, "/orders/P001/notes", "body-too-large")
        },
        Row {
            headers: &[("content-length", "5")],
            ..row("pc-a", a, "/patients/P001/labs", "body-on-bodyless-method")
        },
        Row {
            method: "HEAD",
            headers: &[("content-length", "0")],
            ..row("pc-a", a, "/patients/P001/labs", "forward")
        },
        // Framing: before the identity is even looked at.
        row(
            "pc-unknown",
            a,
            "http://other.example/patients/P001/labs",
            "absolute-form",
        ),
        Row {
            headers: &[("transfer-encoding", "chunked")],
            ..row("pc-a", a, "/patients/P001/labs", "transfer-encoding")
        },
        Row {
            headers: &[("transfer-encoding", "chunked")],
            http2: true,
            ..row("pc-a", a, "/patients/P001/labs", "forward")
        },
        Row {
            headers: &MANY_HEADERS,
            ..row("pc-a", a, "/patients/P001/labs", "headers-too-large")
        },
        // A site system (art 6.1) names the physician; no session is needed.
        Row {
            ingress: Ingress::Site,
            headers: &[("x-seibo-site-physician", "dr-a")],
            ..row("emr-system", None, "/patients/P001/labs", "forward")
        },
        Row {
            ingress: Ingress::Site,
            ..row(
                "emr-system",
                None,
                "/patients/P001/labs",
                "site-physician-missing",
            )
        },
        Row {
            ingress: Ingress::Site,
            headers: &[("x-seibo-site-physician", "dr-susp")],
            ..row(
                "emr-system",
                None,
                "/patients/P001/labs",
                "physician-suspended",
            )
        },
        Row {
            ingress: Ingress::Site,
            headers: &[("x-seibo-site-physician", "dr-a")],
            ..row("pc-a", None, "/patients/P001/labs", "site-system-unknown")
        },
        Row {
            ingress: Ingress::Site,
            headers: &[("x-seibo-site-physician", "dr-a")],
            ..row("emr-system", None, "/patients/P002/labs", "no-consent")
        },
    ]
}

const MANY_HEADERS: [(&str, &str); 21] = [("x-h", "1"); 21];

fn request(r: &Row, w: &World) -> http::Request<()> {
    let mut b = http::Request::builder().method(r.method).uri(r.target);
    if r.http2 {
        b = b.version(http::Version::HTTP_2);
    }
    for (k, v) in r.headers {
        b = b.header(*k, *v);
    }
    if let Some(who) = r.cookie {
        b = b.header("cookie", w.cookies[who].as_str());
    }
    b.body(()).unwrap()
}

fn outcome(p: &Plan) -> String {
    match p {
        Plan::Forward(_) => "forward".into(),
        Plan::OwnPage(_) => "own-page".into(),
        Plan::StartPage(..) => "start-page".into(),
        Plan::Refuse(d) => d.refusal.reason().into(),
    }
}

/// Art 4, 6.1, 6.3, 8.1–8.3, 9.2, 12.7 and 13.1: each row of the table gets its plan, and every
/// refusal reason of the policy has a row.
#[test]
fn policy_table_every_row_gets_its_plan() {
    let w = world();
    let live = w.gate.live();
    let mut seen = BTreeSet::new();
    let mut wrong = Vec::new();
    for r in table() {
        let peer = Peer {
            ingress: r.ingress,
            addr: "127.0.0.1:40000".parse().unwrap(),
            credential: Credential::Certificate {
                fingerprint: fp(r.terminal),
                serial: "01".into(),
                cn: None,
            },
        };
        let req = request(&r, &w);
        let target = req.uri().path_and_query().map(|p| p.as_str().to_string());
        let target = target.unwrap_or_else(|| req.uri().to_string());
        let conn = ConnIdentity::default();
        let plan = check(&w.gate, &live, &peer, &conn, &req, &target, NOW);
        let got = outcome(&plan);
        if got != r.want {
            wrong.push(format!(
                "{} {} from {} ({:?}, cookie {:?}): got {got}, want {}",
                r.method, r.target, r.terminal, r.ingress, r.cookie, r.want
            ));
        }
        // What an allowed request carries is what the audit and the EMR see.
        if let Plan::Forward(a) = &plan {
            assert_eq!(a.who.terminal.name, r.terminal);
            if a.target.patient.is_some() {
                assert!(
                    a.window.is_some(),
                    "{}: a patient view has its window",
                    r.target
                );
            }
        }
        seen.insert(got);
    }
    assert!(
        wrong.is_empty(),
        "rows with another plan:\n{}",
        wrong.join("\n")
    );
    // Every refusal reason the policy gives is a row of the table.
    let reasons: BTreeSet<String> = [
        "terminal-unknown",
        "terminal-revoked",
        "terminal-expired",
        "physician-suspended",
        "no-session",
        "session-wrong-terminal",
        "password-change-required",
        "no-route",
        "encoded-slash",
        "matrix-parameter",
        "patient-parameter-mismatch",
        "patient-parameter-on-no-patient-route",
        "no-consent",
        "consent-withdrawn",
        "viewing-period-ended",
        "consent-not-yet-published",
        "method-not-allowed",
        "body-too-large",
        "body-on-bodyless-method",
        "absolute-form",
        "transfer-encoding",
        "headers-too-large",
        "site-physician-missing",
        "site-system-unknown",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let missing: Vec<_> = reasons.difference(&seen).collect();
    assert!(missing.is_empty(), "reasons without a row: {missing:?}");
}

/// Art 13.2: a response that would save a file is refused when downloads are blocked.
#[test]
fn art_13_2_attachments_are_refused_when_downloads_are_blocked() {
    let w = world();
    let live = w.gate.live();
    let mut h = http::HeaderMap::new();
    h.insert(
        "content-disposition",
        "attachment; filename=x.pdf".parse().unwrap(),
    );
    assert_eq!(
        check_response(&live.policy, &h).map_err(|r| r.reason()),
        Err("download-blocked")
    );
    h.insert("content-disposition", "inline".parse().unwrap());
    assert!(check_response(&live.policy, &h).is_ok());
}
