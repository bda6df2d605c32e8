//! The request path, in one place:
//!
//! ```text
//! listener (TLS, allow-list) → peer identity → [own pages /.seibo/] → session
//!   → decision (route, consent) → audit (durable before forwarding)
//!   → forward (private EMR) → response policy → outcome audit
//! ```
//!
//! Every request ends in exactly one `request` audit line and, once its response body is done
//! (or abandoned), one `outcome` line. Refusals are pages built by [`crate::pages`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use arc_swap::ArcSwap;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::audit::{AuditLog, Outcome, RequestRecord, CLIENT_CLOSED, CLIENT_CLOSED_STATUS};
use crate::clock::{self, SharedClock};
use crate::config::{Auth, Config, Limits, Policy, Site};
use crate::decision::{self, Decision, Refusal, Verdict};
use crate::forward::{ForwardError, Forwarded, Forwarder};
use crate::identity::{self, ConnIdentity, Who};
use crate::metrics::Metrics;
use crate::pages::{self, Body, BodyError};
use crate::pki::CertInfo;
use crate::route::{RouteError, RouteTable};
use crate::session::Sessions;
use crate::signin;
use crate::store::Store;

/// How a request reached the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingress {
    /// Mutual TLS from a registered terminal.
    Mtls,
    /// A registered terminal's WireGuard tunnel.
    WireGuard,
    /// The site's own in-hospital EMR system (art 6.1).
    Site,
}

impl Ingress {
    pub fn as_str(self) -> &'static str {
        match self {
            Ingress::Mtls => "mtls",
            Ingress::WireGuard => "wireguard",
            Ingress::Site => "site",
        }
    }
}

/// One client connection's identity, fixed at the handshake.
#[derive(Debug, Clone)]
pub struct Peer {
    pub ingress: Ingress,
    pub addr: SocketAddr,
    pub credential: Credential,
}

/// The terminal credential a connection presented: what the registry is keyed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// Registry key: the certificate's SPKI SHA-256 (hex), or `wg:` + the WireGuard public key
    /// (base64) for a tunnel peer.
    pub fingerprint: String,
    /// Certificate serial, or none for a WireGuard key (kept for the audit).
    pub serial: Option<String>,
    /// Certificate subject CN, or none.
    pub cn: Option<String>,
}

impl From<CertInfo> for Credential {
    fn from(c: CertInfo) -> Credential {
        Credential {
            fingerprint: c.fingerprint,
            serial: Some(c.serial),
            cn: c.subject_cn,
        }
    }
}

/// Everything a request needs, shared by all connections.
#[derive(Debug)]
pub struct Gate {
    pub store: Store,
    /// Sign-in sessions (art 6.3, 13.1).
    pub sessions: Arc<Sessions>,
    pub audit: AuditLog,
    pub metrics: Metrics,
    pub clock: SharedClock,
    /// Open connections per terminal credential (`[limits] max_connections_per_terminal`).
    pub terminal_conns: Arc<crate::listener::TerminalConns>,
    /// Handshakes in progress (`[limits] max_handshakes`), apart from connection slots.
    pub handshakes: Arc<crate::handshake::HandshakeBudget>,
    /// Refusals audited at a bounded rate per terminal and source, the rest summarised.
    pub refusals: Arc<crate::refusals::RefusalLimiter>,
    /// Argon2 on a fixed pool with bounded slots and memory (issue 11 item 6).
    pub hasher: crate::hashing::Hasher,
    /// What `SIGHUP` reloads: swapped atomically, read once per request.
    live: ArcSwap<Live>,
}

/// The reloadable part of the configuration.
#[derive(Debug)]
pub struct Live {
    pub site: Site,
    pub routes: RouteTable,
    pub forwarder: Forwarder,
    pub auth: Auth,
    pub policy: Policy,
    /// Request limits checked per request (header count, body size).
    pub limits: Limits,
    /// Password tries per terminal (`[auth] signin_attempts_per_minute`; a reload starts the
    /// counts afresh).
    pub signin_rate: crate::signin_rate::SigninRate,
}

impl Live {
    pub fn new(cfg: &Config) -> Live {
        Live {
            site: cfg.site.clone(),
            routes: cfg.routes.clone(),
            forwarder: Forwarder::new(&cfg.upstream, cfg.policy.blank_print),
            auth: cfg.auth.clone(),
            policy: cfg.policy.clone(),
            limits: cfg.limits.clone(),
            signin_rate: crate::signin_rate::SigninRate::per_minute(
                cfg.auth.signin_attempts_per_minute,
            ),
        }
    }
}

impl Gate {
    pub fn new(
        cfg: &Config,
        store: Store,
        audit: AuditLog,
        metrics: Metrics,
        clock: SharedClock,
    ) -> Gate {
        Gate {
            store,
            sessions: Arc::new(Sessions::new(
                cfg.auth.idle_timeout,
                cfg.auth.session_lifetime,
            )),
            audit,
            metrics,
            clock,
            terminal_conns: Default::default(),
            handshakes: Arc::new(crate::handshake::HandshakeBudget::new(
                cfg.limits.flood.max_handshakes,
                cfg.limits.flood.max_handshakes_per_source,
            )),
            refusals: Arc::new(crate::refusals::RefusalLimiter::new(&cfg.limits.flood)),
            hasher: crate::hashing::Hasher::for_this_machine(),
            live: ArcSwap::from_pointee(Live::new(cfg)),
        }
    }

    /// The current routes, upstream and site.
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// Replaces routes, upstream and site for the next requests (requests in flight finish
    /// with what they started with).
    pub fn reload(&self, cfg: &Config) {
        self.live.store(Arc::new(Live::new(cfg)));
    }
}

/// What the request path decided to do, and everything learnt on the way.
struct Step {
    decision: Decision,
    /// Audit reason when it is not the verdict's own (the gateway's pages: sign-in results).
    reason: Option<&'static str>,
    action: Action,
}

enum Action {
    /// Forward the checked request to the EMR.
    Forward(Request<Incoming>),
    /// Answer with the gateway's own page.
    Respond(Response<Body>),
    /// Answer with the refusal page of the verdict.
    Refuse,
}

impl Step {
    /// A page of the gateway's own for an identified terminal.
    fn own(verdict: Verdict, reason: &'static str, resp: Response<Body>, who: Arc<Who>) -> Step {
        Step {
            decision: Decision {
                verdict,
                who: Some(who),
                target: None,
                window: None,
                first_view_today: false,
            },
            reason: Some(reason),
            action: Action::Respond(resp),
        }
    }

    fn refuse(r: Refusal, who: Option<Arc<Who>>) -> Step {
        Step {
            decision: Decision::deny(r, who, None),
            reason: None,
            action: Action::Refuse,
        }
    }
}

/// Serves one request. Never fails: every problem becomes a page.
pub async fn handle(
    gate: Arc<Gate>,
    peer: Arc<Peer>,
    identity: Arc<ConnIdentity>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let now = gate.clock.now();
    let live = gate.live();
    let method = req.method().clone();
    // An authority-form target (`CONNECT host:443`) has no path: it is routed (and refused,
    // `not-origin-form`) as written, never as `/`.
    let raw_target = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| req.uri().to_string());
    // What the audit names when the target is refused before routing (issue 11 item 10).
    let received = received_target(req.version(), req.uri());
    let wants_html = accepts_html(req.headers());

    // The stages that hold large futures (sign-in, the EMR call) are boxed: hyper keeps a slot
    // the size of this future for every open connection, idle or not (issue 6).
    let step = Box::pin(plan(&gate, &live, &peer, &identity, req, &raw_target, now)).await;
    let d = &step.decision;
    let reason = step.reason.unwrap_or(match &d.verdict {
        Verdict::Allow => "allowed",
        Verdict::Deny(r) => r.reason(),
    });
    // A refused request is still named in the audit as far as the registry knows its
    // credential: refused identities, and requests refused before the identity was resolved
    // (framing, absolute-form: issue 11 item 10).
    let (terminal, physician) = match (&d.who, &d.verdict) {
        (Some(w), _) => (Some(w.terminal.name.clone()), Some(w.physician.id.clone())),
        // A site system asserts physicians; the certificate's registered owner is not one.
        (None, Verdict::Deny(Refusal::SiteSystem(_))) => (
            identity::describe(&gate.store, &peer.credential.fingerprint).0,
            None,
        ),
        (None, _) => identity::describe(&gate.store, &peer.credential.fingerprint),
    };
    let record = RequestRecord {
        time: clock::rfc3339(now),
        site: live.site.id.clone(),
        ingress: peer.ingress.as_str().to_string(),
        client: peer.addr.to_string(),
        terminal,
        physician,
        method: method.as_str().to_string(),
        path: d
            .target
            .as_ref()
            .map(|t| t.path_and_query())
            .unwrap_or(received),
        patient: d.target.as_ref().and_then(|t| t.patient.clone()),
        category: d
            .target
            .as_ref()
            .and_then(|t| t.category.map(|c| c.as_str().to_string())),
        decision: match &d.verdict {
            Verdict::Allow => "allow",
            Verdict::Deny(_) => "deny",
        }
        .to_string(),
        reason: reason.to_string(),
        serial: peer.credential.serial.clone(),
        cn: peer.credential.cn.clone(),
    };

    // Refusals beyond the terminal's and the source's audit rate are counted into a summary
    // record instead of written one by one (issue 11 item 8; `crate::refusals`).
    if let Verdict::Deny(r) = &d.verdict {
        let who = crate::refusals::Subject {
            ingress: peer.ingress.as_str(),
            source: peer.addr.ip(),
            fingerprint: Some(&peer.credential.fingerprint),
            terminal: record.terminal.as_deref(),
            cn: peer.credential.cn.as_deref(),
        };
        if !gate
            .refusals
            .admit(crate::refusals::Kind::Request, &who, reason, now)
        {
            gate.metrics
                .flood
                .refusals_suppressed
                .with_label_values(&["request"])
                .inc();
            let resp = refusal_response(r, &live, wants_html, &method, &raw_target);
            let resp = match step.action {
                Action::Respond(page) => page,
                _ => resp,
            };
            // Not logged one by one either: the summary is (`crate::server`).
            return Ok(close_if_identity(
                r,
                count_and_time(&gate, &peer, started, "deny", reason, resp),
            ));
        }
    }

    // The record is on disk before anything is forwarded; no record, no access (fail closed).
    let audit_started = Instant::now();
    let rid = match record_abandonable(&gate.audit, record, started).await {
        Ok(rid) => rid,
        Err(e) => {
            tracing::error!(error = %e, "audit write failed: refusing the request");
            gate.metrics.audit_failures.inc();
            let resp = pages::refusal(&Refusal::AuditUnavailable, &live.site);
            return Ok(finish(
                &gate,
                &peer,
                None,
                started,
                "deny",
                "audit-unavailable",
                resp,
            ));
        }
    };
    gate.metrics.audit_records.inc();
    gate.metrics
        .audit_write_seconds
        .observe(audit_started.elapsed().as_secs_f64());
    // From here every way out writes the outcome: `finish`, the response body, or this guard
    // when the client goes away while the EMR is still answering (issue 11 item 9).
    let guard = ClientClosedGuard {
        audit: gate.audit.clone(),
        rid: Some(rid),
        started,
    };

    let Step {
        decision, action, ..
    } = step;
    let resp = match (action, &decision.verdict) {
        (Action::Respond(resp), Verdict::Allow) => {
            guard.disarm();
            return Ok(finish(
                &gate,
                &peer,
                Some(rid),
                started,
                "allow",
                reason,
                resp,
            ));
        }
        (Action::Respond(resp), Verdict::Deny(_)) => resp,
        (Action::Forward(req), Verdict::Allow) => {
            let forwarded =
                Box::pin(forward(&gate, &live, &peer, req, &decision, rid, started)).await;
            // The response body (or `finish`) writes the outcome from here.
            guard.disarm();
            match forwarded {
                Ok(resp) => return Ok(resp),
                // The client went away mid-body: its outcome says so (issue 11 item 9).
                Err(Refusal::BadRequest(CLIENT_CLOSED)) => {
                    let resp = pages::refusal(&Refusal::BadRequest(CLIENT_CLOSED), &live.site);
                    let resp = count_and_time(&gate, &peer, started, "deny", CLIENT_CLOSED, resp);
                    ClientClosedGuard {
                        audit: gate.audit.clone(),
                        rid: Some(rid),
                        started,
                    }
                    .write(CLIENT_CLOSED_STATUS, 0);
                    return Ok(resp);
                }
                Err(r) => {
                    let resp = pages::refusal(&r, &live.site);
                    return Ok(finish(
                        &gate,
                        &peer,
                        Some(rid),
                        started,
                        "deny",
                        r.reason(),
                        resp,
                    ));
                }
            }
        }
        (_, Verdict::Deny(r)) => refusal_response(r, &live, wants_html, &method, &raw_target),
        // Refuse with an Allow verdict cannot be built; answer as a store failure if it were.
        (Action::Refuse, Verdict::Allow) => pages::refusal(&Refusal::StoreUnavailable, &live.site),
    };
    guard.disarm();
    let resp = finish(&gate, &peer, Some(rid), started, "deny", reason, resp);
    Ok(match &decision.verdict {
        Verdict::Deny(r) => close_if_identity(r, resp),
        Verdict::Allow => resp,
    })
}

/// Marks a response after which the connection is closed (HTTP/1: no keep-alive; HTTP/2:
/// GOAWAY): a revoked, expired or unknown terminal gets its refusal and no connection to repeat
/// it on
/// (issue 11 item 8). The listener acts on it (`crate::listener::serve_peer`).
#[derive(Debug, Clone, Copy)]
pub struct CloseConnection;

fn close_if_identity(r: &Refusal, mut resp: Response<Body>) -> Response<Body> {
    use crate::identity::IdentityRefusal as I;
    // The terminal itself is refused: no keep-alive. A suspended physician's terminal keeps its
    // connection (refused per request until the physician is resumed, art 4).
    if matches!(
        r,
        Refusal::Identity(I::UnknownTerminal | I::TerminalRevoked | I::TerminalExpired)
    ) {
        resp.extensions_mut().insert(CloseConnection);
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// [`AuditLog::record`] that survives its caller: when the client goes away while the line is
/// being written (the request future is dropped), the line is written all the same and gets its
/// `client-closed` outcome (issue 11 item 9).
async fn record_abandonable(
    audit: &AuditLog,
    record: RequestRecord,
    started: Instant,
) -> Result<u64, crate::audit::AuditError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let log = audit.clone();
    tokio::spawn(async move {
        let r = log.record(record).await;
        if let Err(Ok(rid)) = tx.send(r) {
            ClientClosedGuard {
                audit: log,
                rid: Some(rid),
                started,
            }
            .write(CLIENT_CLOSED_STATUS, 0);
        }
    });
    rx.await.unwrap_or(Err(crate::audit::AuditError::Closed))
}

/// Writes the `client-closed` outcome of request `rid` when dropped armed: the request's
/// future was dropped (the client went away) before anything else wrote its outcome.
struct ClientClosedGuard {
    audit: AuditLog,
    rid: Option<u64>,
    started: Instant,
}

impl ClientClosedGuard {
    fn disarm(mut self) {
        self.rid = None;
    }

    fn write(&mut self, status: u16, bytes: u64) {
        if let Some(rid) = self.rid.take() {
            self.audit.outcome_end(
                rid,
                Outcome {
                    status,
                    bytes,
                    duration_us: self.started.elapsed().as_micros() as u64,
                },
                Some(CLIENT_CLOSED),
            );
        }
    }
}

impl Drop for ClientClosedGuard {
    fn drop(&mut self) {
        self.write(CLIENT_CLOSED_STATUS, 0);
    }
}

/// Identity, the gateway's own pages, the session, then route and consent.
async fn plan(
    gate: &Gate,
    live: &Live,
    peer: &Peer,
    identity: &ConnIdentity,
    req: Request<Incoming>,
    raw_target: &str,
    now: time::OffsetDateTime,
) -> Step {
    // HTTP/1 absolute-form (`GET http://other/...`) is refused: the check and the forward must
    // see one and the same origin-form target. HTTP/2 always carries :authority; it is ignored.
    if req.version() < http::Version::HTTP_2 && req.uri().scheme().is_some() {
        return Step::refuse(Refusal::Route(RouteError::BadTarget("absolute-form")), None);
    }
    if let Some(r) = framing_refusal(&req, &live.limits) {
        return Step::refuse(r, None);
    }
    let who = match peer.ingress {
        Ingress::Site => {
            let asserted = req
                .headers()
                .get(identity::SITE_PHYSICIAN_HEADER)
                .and_then(|v| v.to_str().ok());
            match identity::resolve_site_system(
                &gate.store,
                &peer.credential.fingerprint,
                asserted,
                &live.site.id,
            ) {
                Ok(Ok(who)) => Arc::new(who),
                Ok(Err(r)) => return Step::refuse(Refusal::SiteSystem(r), None),
                Err(e) => {
                    tracing::error!(error = %e, "registry read failed");
                    return Step::refuse(Refusal::StoreUnavailable, None);
                }
            }
        }
        Ingress::Mtls | Ingress::WireGuard => {
            match decision::identify_cached(
                identity,
                &gate.store,
                &peer.credential.fingerprint,
                now,
            ) {
                Ok(who) => who,
                Err(r) => return Step::refuse(r, None),
            }
        }
    };

    // `/` leads to the site's start page (issue 11 item 24).
    if let Some(resp) = crate::start::root_redirect(&live.site.home, req.method(), raw_target) {
        return Step::own(Verdict::Allow, "start-page", resp, who);
    }
    if signin::is_own_path(raw_target) {
        let page = signin::handle(gate, live, peer, &who, req, raw_target, now).await;
        return Step {
            decision: Decision {
                verdict: page.verdict,
                who: Some(who),
                target: None,
                window: None,
                first_view_today: false,
            },
            reason: Some(page.reason),
            action: Action::Respond(page.response),
        };
    }

    if live.auth.password_required && peer.ingress != Ingress::Site {
        if let Err(r) = signin::check_session(gate, &who, peer, req.headers()) {
            return Step::refuse(r, Some(who));
        }
    }

    let decision = decision::authorize(
        &gate.store,
        &live.routes,
        who,
        req.method(),
        raw_target,
        now,
    );
    if let (Verdict::Allow, Some(t)) = (&decision.verdict, &decision.target) {
        let limit = t.max_body_bytes.unwrap_or(live.limits.max_body_bytes);
        if content_length(req.headers()).is_some_and(|n| n > limit) {
            return Step {
                decision: Decision::deny(Refusal::BodyTooLarge, decision.who, decision.target),
                reason: None,
                action: Action::Refuse,
            };
        }
    }
    let action = match decision.verdict {
        Verdict::Allow => Action::Forward(req),
        Verdict::Deny(_) => Action::Refuse,
    };
    Step {
        decision,
        reason: None,
        action,
    }
}

/// Requests whose framing or head the gateway will not pass on, whatever their target.
///
/// HTTP/1 `Transfer-Encoding` from a client is refused: hyper accepts `Content-Length` together
/// with `Transfer-Encoding: chunked` (dropping the length), and a viewing gateway has no need
/// for chunked uploads (browsers send a length), so no request whose framing two parsers
/// could read differently is ever forwarded. Header count is checked here for HTTP/2 (hyper
/// enforces it for HTTP/1 while parsing).
fn framing_refusal(req: &Request<Incoming>, limits: &Limits) -> Option<Refusal> {
    if req.version() < http::Version::HTTP_2
        && req.headers().contains_key(header::TRANSFER_ENCODING)
    {
        return Some(Refusal::BadRequest("transfer-encoding"));
    }
    if req.headers().len() > limits.max_headers {
        return Some(Refusal::HeadersTooLarge);
    }
    if crate::forward::carries_no_body(req.method())
        && content_length(req.headers()).is_some_and(|n| n > 0)
    {
        return Some(Refusal::BadRequest(BODY_ON_BODYLESS_METHOD));
    }
    None
}

/// Audit reason of a request body on a method that carries none (issue 11 item 2).
pub const BODY_ON_BODYLESS_METHOD: &str = "body-on-bodyless-method";

/// The request-target as the client sent it, for the audit of a request refused before
/// routing: HTTP/1's absolute-form and authority-form whole (`path_and_query` would make them
/// `/`), HTTP/2's `:path`; bytes outside printable ASCII percent-encoded; at most 2048 bytes.
fn received_target(version: http::Version, uri: &http::Uri) -> String {
    let text = match (version < http::Version::HTTP_2, uri.path_and_query()) {
        (false, Some(pq)) => pq.as_str().to_string(),
        _ => uri.to_string(),
    };
    const ESCAPE: &percent_encoding::AsciiSet =
        &percent_encoding::CONTROLS.add(b' ').add(b'"').add(b'\\');
    truncate(
        &percent_encoding::utf8_percent_encode(&text, ESCAPE).to_string(),
        2048,
    )
}

/// The request's declared body length (hyper has already refused conflicting values).
fn content_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// True when the client asks for a page (a browser), not data.
fn accepts_html(h: &http::HeaderMap) -> bool {
    h.get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"))
}

/// A refusal's response: a browser without a session is sent to the sign-in page.
fn refusal_response(
    r: &Refusal,
    live: &Live,
    wants_html: bool,
    method: &http::Method,
    raw_target: &str,
) -> Response<Body> {
    match r {
        Refusal::Session(_) if wants_html && method == http::Method::GET => {
            pages::redirect(&signin::login_url(raw_target))
        }
        Refusal::PasswordChangeRequired if wants_html && method == http::Method::GET => {
            pages::redirect(signin::PASSWORD_PATH)
        }
        _ => pages::refusal(r, &live.site),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Counts and audits the outcome of a response the gateway answers itself.
fn finish(
    gate: &Gate,
    peer: &Peer,
    rid: Option<u64>,
    started: Instant,
    decision: &str,
    reason: &str,
    resp: Response<Body>,
) -> Response<Body> {
    let resp = count_and_time(gate, peer, started, decision, reason, resp);
    if let Some(rid) = rid {
        gate.audit.outcome(
            rid,
            Outcome {
                status: resp.status().as_u16(),
                bytes: 0,
                duration_us: started.elapsed().as_micros() as u64,
            },
        );
    }
    if decision == "deny" {
        tracing::info!(client = %peer.addr, reason, status = resp.status().as_u16(), "refused");
    }
    resp
}

/// The metrics of a response the gateway answers itself.
fn count_and_time(
    gate: &Gate,
    peer: &Peer,
    started: Instant,
    decision: &str,
    reason: &str,
    resp: Response<Body>,
) -> Response<Body> {
    let ingress = peer.ingress.as_str();
    gate.metrics
        .requests
        .with_label_values(&[ingress, decision, reason])
        .inc();
    let elapsed = started.elapsed();
    gate.metrics
        .gateway_seconds
        .with_label_values(&[ingress])
        .observe(elapsed.as_secs_f64());
    resp
}

async fn forward(
    gate: &Arc<Gate>,
    live: &Live,
    peer: &Peer,
    req: Request<Incoming>,
    d: &Decision,
    rid: u64,
    started: Instant,
) -> Result<Response<Body>, Refusal> {
    let (Some(who), Some(target)) = (&d.who, &d.target) else {
        return Err(Refusal::StoreUnavailable);
    };
    if let (Some(patient), true) = (&target.patient, d.first_view_today) {
        // Art 8.3: an allowed view moves last_view to today (the decision read the consent:
        // later views of the day need no write).
        if let Err(e) = gate.store.touch_consent(patient, gate.clock.today()) {
            tracing::error!(error = %e, "consent update failed");
            return Err(Refusal::StoreUnavailable);
        }
    }
    let ingress = peer.ingress.as_str();
    gate.metrics
        .gateway_seconds
        .with_label_values(&[ingress])
        .observe(started.elapsed().as_secs_f64());
    let fwd = Forwarded {
        site: &live.site.id,
        physician: &who.physician.id,
        terminal: &who.terminal.name,
        patient: target.patient.as_deref(),
        category: target.category.map(|c| c.as_str()),
        records_from: d.window.map(|w| w.records_from.to_string()),
        access_until: d.window.map(|w| w.access_until.to_string()),
        client_ip: peer.addr.ip().to_string(),
    };
    let upstream_started = Instant::now();
    let resp = live
        .forwarder
        .forward(
            req,
            &target.path_and_query(),
            &fwd,
            target.max_body_bytes.unwrap_or(live.limits.max_body_bytes),
        )
        .await;
    gate.metrics
        .upstream_seconds
        .observe(upstream_started.elapsed().as_secs_f64());
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            if !matches!(e, ForwardError::ClientBody(_)) {
                tracing::warn!(error = %e, "upstream failed");
            }
            let (kind, refusal) = match e {
                // The client's streamed body outgrew the route's limit: not the EMR's fault.
                ForwardError::BodyTooLarge => return Err(Refusal::BodyTooLarge),
                ForwardError::BodyNotAllowed => {
                    return Err(Refusal::BadRequest(BODY_ON_BODYLESS_METHOD))
                }
                ForwardError::ClientBody(_) => return Err(Refusal::BadRequest(CLIENT_CLOSED)),
                ForwardError::Timeout(_) => ("timeout", Refusal::UpstreamTimeout),
                ForwardError::Connect(_) | ForwardError::Request(_) => {
                    ("connect", Refusal::UpstreamUnreachable)
                }
            };
            gate.metrics
                .upstream_errors
                .with_label_values(&[kind])
                .inc();
            return Err(refusal);
        }
    };
    // Art 13.2.5: no saving of displayed records.
    if live.policy.block_downloads && is_attachment(resp.headers()) {
        return Err(Refusal::DownloadBlocked);
    }
    let print_guard = live.policy.blank_print && is_plain_html(resp.headers());
    gate.metrics
        .requests
        .with_label_values(&[ingress, "allow", "allowed"])
        .inc();
    let status = resp.status().as_u16();
    let (mut parts, body) = resp.into_parts();
    if print_guard {
        // The length grows by the guard's: stated exactly when the EMR stated one (the body
        // then needs no chunked framing, which costs a TLS record per chunk line), else hyper
        // frames the body.
        let declared = content_length(&parts.headers);
        match declared.and_then(|n| n.checked_add(PRINT_GUARD.len() as u64)) {
            Some(n) => {
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
            None => {
                parts.headers.remove(header::CONTENT_LENGTH);
            }
        }
    }
    let body = AuditedBody {
        inner: body,
        audit: gate.audit.clone(),
        rid,
        status,
        bytes: 0,
        started,
        trailer: print_guard.then_some(PRINT_GUARD),
        ended: false,
    };
    Ok(Response::from_parts(parts, body.boxed()))
}

/// Appended to HTML pages: printed, they show only the print notice (art 13.2.5; see
/// [`pages::PRINT_GUARD`]).
pub const PRINT_GUARD: &[u8] = pages::PRINT_GUARD;

fn is_attachment(h: &http::HeaderMap) -> bool {
    h.get(header::CONTENT_DISPOSITION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("attachment")
        })
}

/// HTML that is not compressed (appending to a compressed stream would corrupt it).
fn is_plain_html(h: &http::HeaderMap) -> bool {
    let html = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("text/html"));
    let encoded = h
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v != HeaderValue::from_static("identity"));
    html && !encoded
}

/// The EMR's response body, counted; its outcome line is written when it ends or is dropped.
struct AuditedBody {
    inner: Incoming,
    audit: AuditLog,
    rid: u64,
    status: u16,
    bytes: u64,
    started: Instant,
    /// Bytes appended after the EMR's body (the print guard), sent once.
    trailer: Option<&'static [u8]>,
    /// The body ended (its end was polled, or the EMR's body failed): not a client close.
    ended: bool,
}

impl HttpBody for AuditedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.bytes += d.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.ended = true;
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(None) => match this.trailer.take() {
                Some(t) => {
                    this.bytes += t.len() as u64;
                    Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(t)))))
                }
                None => {
                    this.ended = true;
                    Poll::Ready(None)
                }
            },
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.trailer.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let Some(trailer) = self.trailer else {
            return inner;
        };
        let extra = trailer.len() as u64;
        let mut hint = SizeHint::new();
        if let Some(upper) = inner.upper().and_then(|u| u.checked_add(extra)) {
            hint.set_upper(upper);
        }
        hint.set_lower(
            inner
                .lower()
                .saturating_add(extra)
                .min(hint.upper().unwrap_or(u64::MAX)),
        );
        hint
    }
}

impl Drop for AuditedBody {
    /// Dropped before its end (and not for the EMR's fault): the client went away mid-body;
    /// the outcome says so, with the bytes sent so far (issue 11 item 9).
    fn drop(&mut self) {
        let complete = self.ended || self.is_end_stream();
        self.audit.outcome_end(
            self.rid,
            Outcome {
                status: self.status,
                bytes: self.bytes,
                duration_us: self.started.elapsed().as_micros() as u64,
            },
            (!complete).then_some(CLIENT_CLOSED),
        );
    }
}
