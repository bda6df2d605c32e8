//! Request confusion (issue 11 items 2-5 and 10), through the real binary on loopback: bodies
//! on methods that carry none, header aliases, Unicode look-alikes, patient query keys, and
//! what the audit records of framing refusals.
//!
//! The EMR here is deliberately naive, as many are: it reads a request head, ignores the body of
//! a GET or HEAD, and answers on the same keep-alive connection with its own `Server` and
//! `X-Powered-By` banners. It records every request head it parses, so a body the gateway
//! forwarded behind a GET shows up as a second, smuggled request.

mod common;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body::Frame;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

// ---------------------------------------------------------------------------------------------
// The naive EMR

/// One request head as the naive EMR parsed it.
#[derive(Debug, Clone)]
struct Head {
    method: String,
    target: String,
    /// Lower-case names as they arrived.
    headers: Vec<(String, String)>,
}

impl Head {
    fn has(&self, name: &str) -> bool {
        self.headers.iter().any(|(k, _)| k == name)
    }
}

struct NaiveEmr {
    port: u16,
    seen: Arc<Mutex<Vec<Head>>>,
    task: tokio::task::JoinHandle<()>,
}

impl NaiveEmr {
    async fn start() -> NaiveEmr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind EMR");
        let port = l.local_addr().expect("addr").port();
        let seen: Arc<Mutex<Vec<Head>>> = Arc::default();
        let seen2 = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                tokio::spawn(serve_naively(s, seen2.clone()));
            }
        });
        NaiveEmr { port, seen, task }
    }

    fn seen(&self) -> Vec<Head> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn clear(&self) {
        if let Ok(mut s) = self.seen.lock() {
            s.clear();
        }
    }
}

impl Drop for NaiveEmr {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Keep-alive HTTP/1.1 as a naive EMR speaks it: a GET or HEAD body is never read, so its bytes
/// are parsed as the next request. Bounded: 1 MiB buffered, 30 s without a byte ends it.
async fn serve_naively(mut s: tokio::net::TcpStream, seen: Arc<Mutex<Vec<Head>>>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            if buf.len() > 1 << 20 {
                return;
            }
            match tokio::time::timeout(Duration::from_secs(30), s.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        };
        let head_text = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        let mut lines = head_text.split("\r\n");
        let line = lines.next().unwrap_or("");
        let mut parts = line.split(' ');
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        if method != "GET" && method != "HEAD" {
            while buf.len() < length {
                match tokio::time::timeout(Duration::from_secs(30), s.read(&mut chunk)).await {
                    Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                    _ => return,
                }
            }
            buf.drain(..length);
        }
        if let Ok(mut v) = seen.lock() {
            v.push(Head {
                method: method.clone(),
                target: target.clone(),
                headers,
            });
        }
        let body = format!("naive EMR saw {method} {target}\n");
        let mut reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nServer: Apache/2.2.3 (CentOS) NaiveEMR/1.0\r\nX-Powered-By: PHP/5.1.6\r\nX-AspNet-Version: 2.0.50727\r\n\r\n",
            body.len()
        );
        if method != "HEAD" {
            reply.push_str(&body);
        }
        if s.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The site

struct Site {
    gate: Gate,
    pc1: Terminal,
}

/// A site in front of `emr_port` (terminal credential only, so requests reach the EMR without
/// the sign-in), with `upstream_extra` lines added to `[upstream]` and `tail` appended;
/// physician `dr1` on terminal `pc1`, consent for P001 only.
fn site(emr_port: u16, upstream_extra: &str, tail: &str) -> Site {
    let mut gate = Gate::init(emr_port);
    gate.terminal_credential_only();
    // The tests count refusal rows: each refusal is written (not the rate limit under test).
    gate.audit_every_refusal();
    let text = std::fs::read_to_string(&gate.config).expect("read gate.toml");
    let text = if upstream_extra.is_empty() {
        text
    } else {
        text.replacen(
            "[upstream]\n",
            &format!("[upstream]\n{upstream_extra}\n"),
            1,
        )
    };
    std::fs::write(&gate.config, format!("{text}\n{tail}\n")).expect("write gate.toml");
    let out = gate.cli(&["check-config"]);
    assert!(out.status.success(), "config: {}", show(&out));
    gate.start();
    gate.add_physician("dr1");
    let pc1 = gate.add_terminal("dr1", "pc1");
    gate.grant("P001", today_jst());
    Site { gate, pc1 }
}

async fn raw(gate: &Gate, t: &Terminal, req: &str) -> (u16, String) {
    raw_request(gate.port, gate.client(t), req.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("raw request {req:?}: {e:#}"))
}

/// A request body of unknown length: HTTP/2 sends it as DATA frames without `content-length`.
struct Unsized(Option<Bytes>);

impl http_body::Body for Unsized {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
    }
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Sends one request over HTTP/2 (mutual TLS, ALPN h2); status and body.
async fn h2_request(gate: &Gate, t: &Terminal, req: http::Request<BoxBody>) -> (u16, String) {
    let mut cfg = (*gate.client(t)).clone();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tls = tls_connect(gate.port, Arc::new(cfg))
        .await
        .unwrap_or_else(|e| panic!("TLS: {e:#}"));
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "the gateway negotiates HTTP/2"
    );
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap_or_else(|e| panic!("h2 handshake: {e}"));
    let driver = tokio::spawn(conn);
    let resp = tokio::time::timeout(REQUEST_LIMIT, sender.send_request(req))
        .await
        .unwrap_or_else(|_| panic!("h2 response timed out"))
        .unwrap_or_else(|e| panic!("h2 request: {e}"));
    let status = resp.status().as_u16();
    let body = tokio::time::timeout(REQUEST_LIMIT, resp.into_body().collect())
        .await
        .unwrap_or_else(|_| panic!("h2 body timed out"))
        .map(|c| String::from_utf8_lossy(&c.to_bytes()).into_owned())
        .unwrap_or_default();
    driver.abort();
    (status, body)
}

fn h2_get(gate: &Gate, path: &str, body: BoxBody) -> http::Request<BoxBody> {
    http::Request::get(format!("https://localhost:{}{path}", gate.port))
        .body(body)
        .expect("request")
}

const SMUGGLED: &str =
    "GET /patients/P002/labs HTTP/1.1\r\nHost: localhost\r\nX-Seibo-Patient: P002\r\n\r\n";

// ---------------------------------------------------------------------------------------------
// Item 2: bodies on GET/HEAD

/// Art 12.8 (issue 11 item 2): a body on GET, HEAD, DELETE or OPTIONS — by `Content-Length`,
/// by chunked `Transfer-Encoding`, as HTTP/2 DATA frames with or without a length — is refused
/// with the 400 page and never reaches the EMR, so a second request hidden in it (for a patient
/// without consent) is never parsed by the EMR: after all of them, and one ordinary view, the
/// naive EMR has seen exactly one request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn art_12_8_body_on_get_or_head_never_reaches_the_emr_as_a_request() {
    let emr = NaiveEmr::start().await;
    let s = site(emr.port, "", "");
    let n = SMUGGLED.len();
    for req in [
        format!("GET /patients/P001/labs HTTP/1.1\r\nHost: localhost\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n{SMUGGLED}"),
        format!("HEAD /patients/P001/labs HTTP/1.1\r\nHost: localhost\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n{SMUGGLED}"),
        format!("DELETE /patients/P001/labs HTTP/1.1\r\nHost: localhost\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n{SMUGGLED}"),
        format!("OPTIONS /patients/P001/labs HTTP/1.1\r\nHost: localhost\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n{SMUGGLED}"),
        format!("GET /patients/P001/labs HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{n:x}\r\n{SMUGGLED}\r\n0\r\n\r\n"),
        format!("GET /patients/P001/labs HTTP/1.0\r\nContent-Length: {n}\r\n\r\n{SMUGGLED}"),
    ] {
        let (status, text) = raw(&s.gate, &s.pc1, &req).await;
        assert_eq!(status, 400, "{req:?}: {text}");
        assert_eq!(text.matches("HTTP/1.").count(), 1, "one answer only: {text}");
    }
    // HTTP/2: DATA frames without a length, and with one.
    let (status, body) = h2_request(
        &s.gate,
        &s.pc1,
        h2_get(
            &s.gate,
            "/patients/P001/labs",
            Unsized(Some(Bytes::from(SMUGGLED))).boxed(),
        ),
    )
    .await;
    assert_eq!(status, 400, "h2 DATA without content-length: {body}");
    let (status, body) = h2_request(
        &s.gate,
        &s.pc1,
        h2_get(
            &s.gate,
            "/patients/P001/labs",
            Full::new(Bytes::from(SMUGGLED)).boxed(),
        ),
    )
    .await;
    assert_eq!(status, 400, "h2 DATA with content-length: {body}");
    assert!(
        emr.seen().is_empty(),
        "no byte of a refused request reached the EMR: {:?}",
        emr.seen()
    );

    // An ordinary view, HTTP/1.1 and HTTP/2, and an empty HTTP/2 stream, still pass.
    let (status, text) = raw(
        &s.gate,
        &s.pc1,
        "GET /patients/P001/labs HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let seen = emr.seen();
    assert_eq!(
        seen.len(),
        1,
        "exactly one request reached the EMR: {seen:?}"
    );
    assert_eq!(
        (seen[0].method.as_str(), seen[0].target.as_str()),
        ("GET", "/patients/P001/labs")
    );
    assert!(!seen[0].has("content-length"), "{seen:?}");
    let (status, body) = h2_request(
        &s.gate,
        &s.pc1,
        h2_get(&s.gate, "/patients/P001/labs", Unsized(None).boxed()),
    )
    .await;
    assert_eq!(status, 200, "empty h2 stream: {body}");
    let (status, body) = h2_request(
        &s.gate,
        &s.pc1,
        h2_get(&s.gate, "/patients/P001/labs", Empty::new().boxed()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let seen = emr.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(
        seen.iter().all(|h| h.target == "/patients/P001/labs"),
        "never P002: {seen:?}"
    );

    let rows = s.gate.request_rows_settled(11);
    let refused: Vec<_> = rows
        .iter()
        .filter(|r| r["reason"] == "body-on-bodyless-method" || r["reason"] == "transfer-encoding")
        .collect();
    assert!(refused.len() >= 6, "{rows:#?}");
    assert!(
        rows.iter().all(|r| r["patient"] != "P002"),
        "the smuggled request was never audited as a request: {rows:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Item 3: header aliases

/// Art 12.7 (issue 11 item 3): identity, address, certificate, URL and method headers never
/// reach the EMR in any spelling (`_` or `.` for `-`, any case), nor do the site's own names
/// from `[upstream] strip_headers`; the gateway's own identity headers arrive once, with its
/// values; the EMR's `Server` and `X-Powered-By` banners never reach the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn art_12_7_header_aliases_and_site_strip_headers_never_reach_the_emr() {
    let emr = NaiveEmr::start().await;
    let s = site(
        emr.port,
        "strip_headers = [\"X-EMR-User\", \"x-emr-context-*\"]",
        "",
    );
    let spoofed = [
        "X_Seibo_Patient: P002",
        "x_seibo_physician: dr-evil",
        "X.Seibo.Category: notes",
        "X_SEIBO_SITE_PHYSICIAN: dr-evil",
        "X_Forwarded_For: 10.0.0.66",
        "X_Forwarded_Proto: http",
        "X-Forwarded-Host: evil.example",
        "Forwarded: for=10.0.0.66",
        "X-Original-URL: /patients/P002/labs",
        "X_Original_URL: /patients/P002/labs",
        "X-Rewrite-URL: /patients/P002/labs",
        "X-Original-URI: /patients/P002/labs",
        "X-HTTP-Method-Override: DELETE",
        "X_HTTP_Method: DELETE",
        "X-Method-Override: DELETE",
        "Remote-User: dr-evil",
        "REMOTE_USER: dr-evil",
        "X-Remote-User: dr-evil",
        "True-Client-IP: 10.0.0.66",
        "CF-Connecting-IP: 10.0.0.66",
        "X-Real-IP: 10.0.0.66",
        "X_Client_IP: 10.0.0.66",
        "X-SSL-Client-Cert: forged",
        "X-SSL-Client-S-DN: CN=dr-evil",
        "SSL_CLIENT_S_DN: CN=dr-evil",
        "X-Client-Cert: forged",
        "X-Auth-Request-User: dr-evil",
        "X-User: dr-evil",
        "Auth-User: dr-evil",
        "Proxy: http://10.0.0.66:3128",
        "Content_Length: 999",
        "Transfer_Encoding: chunked",
        "X-EMR-User: dr-evil",
        "X_EMR_User: dr-evil",
        "X-EMR-Context-Patient: P002",
    ];
    let req = format!(
        "GET /patients/P001/labs HTTP/1.1\r\nHost: localhost\r\nAccept: text/plain\r\nX-Harmless: kept\r\n{}\r\nConnection: close\r\n\r\n",
        spoofed.join("\r\n")
    );
    let (status, text) = raw(&s.gate, &s.pc1, &req).await;
    assert_eq!(status, 200, "{text}");
    let seen = emr.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let h = &seen[0];
    for line in spoofed {
        let name = line
            .split_once(':')
            .map(|(k, _)| k.to_ascii_lowercase())
            .unwrap_or_default();
        assert!(!h.has(&name), "{name} reached the EMR: {:?}", h.headers);
    }
    let values = |n: &str| -> Vec<&str> {
        h.headers
            .iter()
            .filter(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(values("x-seibo-patient"), vec!["P001"], "{:?}", h.headers);
    assert_eq!(values("x-seibo-physician"), vec!["dr1"]);
    assert_eq!(values("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(values("x-forwarded-proto"), vec!["https"]);
    assert_eq!(values("x-harmless"), vec!["kept"], "ordinary headers pass");
    // Nothing of the EMR's banner reaches the client.
    let (head, _) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let head = head.to_ascii_lowercase();
    for banner in [
        "server:",
        "x-powered-by:",
        "x-aspnet-version:",
        "apache",
        "php",
    ] {
        assert!(!head.contains(banner), "{banner} in {head}");
    }
    assert!(
        text.contains("naive EMR saw GET /patients/P001/labs"),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// Items 4 and 5: Unicode look-alikes and patient query keys

/// Art 8.2 (issue 11 items 4, 5): paths with compatibility forms of `.` `..` `/` `;`, dot
/// segments followed by non-ASCII spaces or invisible characters, best-fit punctuation, and
/// query keys that fold to `patient`, are refused with 400; a patient query parameter must be
/// the route's patient and is refused on a route without one (also a site's own key from
/// `[routes] patient_query_keys`). None of these reach the EMR; the matching views do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn art_8_2_unicode_lookalikes_and_patient_query_keys_refused_through_the_gateway() {
    let emr = NaiveEmr::start().await;
    let s = site(
        emr.port,
        "",
        "[routes]\npatient_query_keys = [\"patient\", \"patient_id\", \"pid\", \"kanja\"]\n",
    );
    let refused: &[(&str, &str)] = &[
        // Item 4: look-alikes in the path.
        (
            "/patients/P001/labs/%EF%B8%99/P002/labs",
            "unicode-lookalike",
        ), // U+FE19 ︙
        (
            "/patients/P001/labs/%EF%B8%B0/%EF%B8%B0/P002/labs",
            "unicode-lookalike",
        ), // U+FE30 ︰
        (
            "/patients/P001/labs/%E2%80%A4%E2%80%A4/x",
            "unicode-lookalike",
        ), // U+2024 ․
        (
            "/patients/P001/labs/%EF%BC%8E%EF%BC%8E/x",
            "unicode-lookalike",
        ), // U+FF0E ．
        ("/patients/P001/labs/x%EF%B8%94y", "unicode-lookalike"), // U+FE14 ︔
        (
            "/patients/P001/labs/..%C2%A0/..%C2%A0/P002/labs",
            "unicode-invisible",
        ), // NBSP
        ("/patients/P001/labs/..%E3%80%80/x", "unicode-invisible"), // U+3000
        ("/patients/P001/labs/..%E2%80%8B/x", "unicode-invisible"), // ZWSP
        ("/patients/P001/labs/..%CC%81/x", "dot-segment-lookalike"), // combining mark
        (
            "/patients/P001/labs/a%C2%A5..%C2%A5P002",
            "unicode-punctuation",
        ), // ¥ (CP932 '\')
        ("/static/%E2%84%AAey", "unicode-lookalike"),             // Kelvin sign
        // Item 4: query keys that fold to a patient key.
        (
            "/patients/P001/labs?%EF%BD%90atient=P002",
            "non-ascii-query-key",
        ), // ｐatient
        (
            "/patients/P001/labs?pat%C4%B1ent=P002",
            "non-ascii-query-key",
        ), // patıent
        ("/patients/P001/labs?%C5%BFid=P002", "non-ascii-query-key"), // ſid
        // Item 5: patient query parameters.
        (
            "/patients/P001/labs?patient=P002",
            "patient-parameter-mismatch",
        ),
        (
            "/patients/P001/labs?page=1&Patient_Id=P002",
            "patient-parameter-mismatch",
        ),
        ("/patients/P001/labs?pid=P002", "patient-parameter-mismatch"),
        (
            "/patients/P001/labs?KANJA=P002",
            "patient-parameter-mismatch",
        ),
        (
            "/patients/P001/labs?patient=P001&patient=P002",
            "patient-parameter-mismatch",
        ),
        (
            "/static/x?patient=P002",
            "patient-parameter-on-no-patient-route",
        ),
        (
            "/static/x?patient_id=P001",
            "patient-parameter-on-no-patient-route",
        ),
        (
            "/static/app.js?kanja=P002",
            "patient-parameter-on-no-patient-route",
        ),
    ];
    for (path, reason) in refused {
        let c = s.gate.curl(Some(&s.pc1), path, &["--http1.1"]);
        assert_eq!(c.status, Some(400), "{path}: {c:?}");
        assert!(
            c.body.contains(reason),
            "{path}: reason {reason} not in {}",
            c.body
        );
    }
    assert!(
        emr.seen().is_empty(),
        "nothing refused reached the EMR: {:?}",
        emr.seen()
    );
    let rows = s.gate.request_rows_settled(refused.len());
    for (path, reason) in refused {
        assert!(
            rows.iter().any(|r| r["reason"] == *reason
                && r["decision"] == "deny"
                && r["path"]
                    .as_str()
                    .is_some_and(|p| p.contains(path.split('?').next().unwrap_or("")))),
            "{path} audited as {reason}: {rows:#?}"
        );
    }

    for (path, want) in [
        (
            "/patients/P001/labs?patient=P001&page=2",
            "/patients/P001/labs?patient=P001&page=2",
        ),
        (
            "/patients/P001/labs/%E6%A4%9C%E6%9F%BB",
            "/patients/P001/labs/%E6%A4%9C%E6%9F%BB",
        ),
        ("/static/app.js?v=3", "/static/app.js?v=3"),
    ] {
        let c = s.gate.curl(Some(&s.pc1), path, &["--http1.1"]);
        assert_eq!(c.status, Some(200), "{path}: {c:?}");
        assert!(c.body.contains(want), "{path}: {}", c.body);
    }
    assert_eq!(emr.seen().len(), 3, "{:?}", emr.seen());
    emr.clear();
}

// ---------------------------------------------------------------------------------------------
// Item 10: what the audit records of framing refusals

/// Art 12.8 (issue 11 item 10): requests refused for their framing or target form before the
/// identity is resolved — absolute-form, `Transfer-Encoding`, a body on GET, authority-form,
/// asterisk-form — are audited with the terminal and physician the certificate is registered
/// to, and with the target as sent (escaped, capped), not as `/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn art_12_8_framing_refusals_audited_with_identity_and_raw_target() {
    let emr = NaiveEmr::start().await;
    let s = site(emr.port, "", "");
    let long = format!("/patients/P001/labs/{}", "a".repeat(5000));
    let cases: Vec<(String, &str, String)> = vec![
        (
            "GET http://evil.example/patients/P002/labs HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".into(),
            "absolute-form",
            "http://evil.example/patients/P002/labs".into(),
        ),
        (
            "POST /patients/P001/labs HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n".into(),
            "transfer-encoding",
            "/patients/P001/labs".into(),
        ),
        (
            "GET /patients/P001/labs HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc".into(),
            "body-on-bodyless-method",
            "/patients/P001/labs".into(),
        ),
        (
            "CONNECT emr.internal:8080 HTTP/1.1\r\nHost: emr.internal:8080\r\nConnection: close\r\n\r\n".into(),
            "not-origin-form",
            "emr.internal:8080".into(),
        ),
        (
            "OPTIONS * HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".into(),
            "not-origin-form",
            "*".into(),
        ),
        (
            format!("GET {long} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
            "too-long",
            long[..1000].to_string(),
        ),
    ];
    for (req, reason, _) in &cases {
        let (status, text) = raw(&s.gate, &s.pc1, req).await;
        assert_eq!(status, 400, "{reason}: {text}");
    }
    assert!(emr.seen().is_empty(), "{:?}", emr.seen());
    let rows = s.gate.request_rows_settled(cases.len());
    for (_, reason, target) in &cases {
        let row = rows
            .iter()
            .find(|r| {
                r["reason"] == *reason
                    && r["path"]
                        .as_str()
                        .is_some_and(|p| p.starts_with(target.as_str()))
            })
            .unwrap_or_else(|| panic!("no {reason} row for {target:?}: {rows:#?}"));
        assert_eq!(row["terminal"], "pc1", "{row}");
        assert_eq!(row["physician"], "dr1", "{row}");
        assert_eq!(row["decision"], "deny", "{row}");
        assert!(
            row["path"].as_str().is_some_and(|p| p.len() <= 2100),
            "capped: {row}"
        );
    }
}
