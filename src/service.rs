//! The request path, in one place:
//!
//! ```text
//! connection (TLS or WireGuard, identity fixed) → policy::check (framing, identity, start
//!   page and own pages, session, route and consent, body size) → audit record, and at the
//!   same time forward (private EMR) → response check → [held until the record is durable]
//!   → response → outcome audit
//! ```
//!
//! The guarantee (docs/security.md, "Audit durability"): every response a client receives —
//! the EMR's or the gateway's own page — has its request record on disk first; no byte of it
//! is sent before. An allowed request without a body is forwarded while its record is being
//! synced; a request with a body, and every request while the audit is failing, is forwarded
//! only once its record is durable.
//!
//! Every request ends in exactly one `request` audit line and, once its response body is done
//! (or abandoned), one `outcome` line ([`crate::outcome`]). Refusals are pages built by
//! [`crate::pages`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::{header, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::audit::{Decision, RequestRecord, CLIENT_CLOSED, CLIENT_CLOSED_STATUS};
use crate::egress::forward::{ForwardError, Forwarded};
use crate::exchange::Exchange;
use crate::gate::Gate;
use crate::ingress::peer::Peer;
use crate::ops::clock;
use crate::outcome::{
    close_if_identity, count_and_time, finish, record_abandonable, refusal_response, AuditedBody,
    ClientClosedGuard,
};
use crate::pages::{self, Body};
use crate::policy::decision::{Allowed, Denied, Refusal, Verdict};
use crate::policy::identity::{self, ConnIdentity, Who};
use crate::policy::own_paths::WHOAMI_PATH;
use crate::policy::route::Target;
use crate::policy::{self, Plan, BODY_ON_BODYLESS_METHOD};

/// What the request path does, once the policy has spoken and the gateway's own pages have
/// answered: the audit record is written from it. Built once per request and moved into the
/// stage that acts on it, never stored: its size costs nothing (no boxing of the request).
#[allow(clippy::large_enum_variant)]
enum Step {
    /// Allowed: forward to the EMR.
    Forward(Allowed, Request<Incoming>),
    /// A page of the gateway's own (sign-in, start page, "who am I"), with its audit reason.
    Answer {
        who: Arc<Who>,
        verdict: Verdict,
        reason: &'static str,
        response: Response<Body>,
    },
    /// Refused: the refusal's page.
    Refuse(Denied),
}

impl Step {
    fn decision(&self) -> Decision {
        match self {
            Step::Forward(..)
            | Step::Answer {
                verdict: Verdict::Allow,
                ..
            } => Decision::Allow,
            Step::Answer { .. } | Step::Refuse(_) => Decision::Deny,
        }
    }

    fn refusal(&self) -> Option<&Refusal> {
        match self {
            Step::Forward(..) => None,
            Step::Answer { verdict, .. } => match verdict {
                Verdict::Allow => None,
                Verdict::Deny(r) => Some(r),
            },
            Step::Refuse(d) => Some(&d.refusal),
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Step::Forward(..) => "allowed",
            Step::Answer { reason, .. } => reason,
            Step::Refuse(d) => d.refusal.reason(),
        }
    }

    fn who(&self) -> Option<&Arc<Who>> {
        match self {
            Step::Forward(a, _) => Some(&a.who),
            Step::Answer { who, .. } => Some(who),
            Step::Refuse(d) => d.who.as_ref(),
        }
    }

    fn target(&self) -> Option<&Target> {
        match self {
            Step::Forward(a, _) => Some(&a.target),
            Step::Answer { .. } => None,
            Step::Refuse(d) => d.target.as_ref(),
        }
    }
}

/// True for a refusal that this gateway's copy of the regional registry may have made only
/// because it lags etcd by a few milliseconds: a session cookie not (yet) known here, or a
/// forced password change already done through another gateway.
fn lagging_copy_may_refuse(gate: &Gate, plan: &Plan, req: &Request<Incoming>) -> bool {
    use crate::policy::session::SessionRefusal;
    let Plan::Refuse(d) = plan else {
        return false;
    };
    gate.store.shares_sessions()
        && matches!(
            d.refusal,
            Refusal::Session(SessionRefusal::Missing) | Refusal::PasswordChangeRequired
        )
        && crate::policy::session::token_from_cookies(req.headers()).is_some()
}

/// Serves one request. Never fails: every problem becomes a page.
pub async fn handle(
    gate: Arc<Gate>,
    peer: Arc<Peer>,
    identity: Arc<ConnIdentity>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let ex = Exchange::new(&gate, peer, &req);
    let mut plan = policy::check(
        &gate, &ex.live, &ex.peer, &identity, &req, &ex.target, ex.now,
    );
    if lagging_copy_may_refuse(&gate, &plan, &req) && Box::pin(gate.store.catch_up()).await {
        // A session opened (or a password changed) through another gateway moments ago:
        // decide again on the copy brought up to date.
        plan = policy::check(
            &gate, &ex.live, &ex.peer, &identity, &req, &ex.target, ex.now,
        );
    }
    // The stages that hold large futures (sign-in, the EMR call) are boxed: hyper keeps a slot
    // the size of this future for every open connection, idle or not (issue 6).
    let step = match plan {
        Plan::Forward(a) => Step::Forward(a, req),
        Plan::Refuse(d) => Step::Refuse(d),
        Plan::StartPage(who, response) => Step::Answer {
            who,
            verdict: Verdict::Allow,
            reason: "start-page",
            response,
        },
        Plan::OwnPage(who) => Box::pin(own_page(&gate, &ex, who, req)).await,
    };
    let record = audit_record(&gate, &ex, &step);

    // Refusals beyond the terminal's and the source's audit rate are counted into a summary
    // record instead of written one by one (issue 11 item 8; `crate::audit::limiter`).
    if let Some(refusal) = step.refusal().cloned() {
        let reason = step.reason();
        if !admit_refusal(&gate, &ex, &record, reason) {
            let resp = match step {
                Step::Answer { response, .. } => response,
                _ => refusal_response(&refusal, &ex),
            };
            // Not logged one by one either: the summary is (`crate::ops::server`).
            let resp = count_and_time(&gate, &ex, Decision::Deny, reason, resp);
            return Ok(close_if_identity(&refusal, resp));
        }
    }

    // No byte of a response reaches the client before its record is on disk; no record, no
    // response (fail closed). An allowed request without a body is sent to the EMR while its
    // record is being synced (the flush overlaps the EMR's work, issue 16); anything else, and
    // everything while the audit is failing, waits for the record before it is forwarded.
    let audit_started = Instant::now();
    let overlap = match &step {
        Step::Forward(_, req) => !gate.audit.failed() && http_body::Body::is_end_stream(req.body()),
        _ => false,
    };
    let recorded = record_abandonable(&gate.audit, record, ex.started);
    let step = match step {
        Step::Forward(allowed, req) if overlap => {
            let resp = forward_while_recording(&gate, &ex, &allowed, req, recorded, audit_started);
            return Ok(Box::pin(resp).await);
        }
        step => step,
    };
    let rid = match recorded.await {
        Ok(rid) => rid,
        Err(e) => return Ok(audit_unavailable(&gate, &ex, &e)),
    };
    audited(&gate, audit_started);
    // From here every way out writes the outcome: `finish`, the response body, or this guard
    // when the client goes away while the EMR is still answering (issue 11 item 9).
    let guard = ClientClosedGuard::armed(gate.audit.clone(), rid, ex.started);
    let reason = step.reason();
    Ok(match step {
        Step::Forward(allowed, req) => {
            let forwarded = Box::pin(forward(&gate, &ex, &allowed, req, rid)).await;
            // The response body (or `finish`) writes the outcome from here.
            guard.disarm();
            match forwarded {
                Ok(resp) => resp,
                Err(r) => forward_refused(&gate, &ex, rid, &r),
            }
        }
        Step::Answer {
            verdict, response, ..
        } => {
            guard.disarm();
            match verdict {
                Verdict::Allow => finish(&gate, &ex, Some(rid), Decision::Allow, reason, response),
                Verdict::Deny(r) => close_if_identity(
                    &r,
                    finish(&gate, &ex, Some(rid), Decision::Deny, reason, response),
                ),
            }
        }
        Step::Refuse(d) => {
            guard.disarm();
            let resp = refusal_response(&d.refusal, &ex);
            close_if_identity(
                &d.refusal,
                finish(&gate, &ex, Some(rid), Decision::Deny, reason, resp),
            )
        }
    })
}

/// The gateway's own pages under `/.seibo/`: "who am I", or sign-in, password change and
/// sign-out ([`crate::policy::signin`]).
async fn own_page(gate: &Gate, ex: &Exchange, who: Arc<Who>, req: Request<Incoming>) -> Step {
    let path = ex.target.split('?').next().unwrap_or(&ex.target);
    let page = if ex.method == http::Method::GET && path == WHOAMI_PATH {
        crate::policy::whoami::page(gate, &ex.live, &ex.peer, &who, &req, ex.now)
    } else {
        crate::policy::signin::handle(gate, &ex.live, &ex.peer, &who, req, &ex.target, ex.now).await
    };
    Step::Answer {
        who,
        verdict: page.verdict,
        reason: page.reason,
        response: page.response,
    }
}

/// The request's audit record: as much as is known of who and what, also for a refusal.
fn audit_record(gate: &Gate, ex: &Exchange, step: &Step) -> RequestRecord {
    let credential = &ex.peer.credential;
    // A refused request is still named as far as the registry knows its credential: refused
    // identities, and requests refused before the identity was resolved (issue 11 item 10).
    let (terminal, physician) = match (step.who(), step.refusal()) {
        (Some(w), _) => (Some(w.terminal.name.clone()), Some(w.physician.id.clone())),
        // A site system asserts physicians; the certificate's registered owner is not one.
        (None, Some(Refusal::SiteSystem(_))) => (
            identity::describe(&gate.store, credential.fingerprint()).0,
            None,
        ),
        (None, _) => identity::describe(&gate.store, credential.fingerprint()),
    };
    let target = step.target();
    RequestRecord {
        time: clock::rfc3339(ex.now),
        site: ex.live.site.id.clone(),
        ingress: ex.peer.ingress.into(),
        client: ex.peer.addr.to_string(),
        terminal,
        physician,
        method: ex.method.as_str().to_string(),
        path: target
            .map(|t| t.path_and_query())
            .unwrap_or_else(|| ex.received()),
        patient: target.and_then(|t| t.patient.clone()),
        category: target.and_then(|t| t.category),
        decision: step.decision(),
        reason: step.reason().to_string(),
        serial: credential.serial().map(str::to_string),
        cn: credential.cn().map(str::to_string),
        staff: None,
    }
}

/// True when this refusal is written to the audit; false when it is beyond the terminal's or
/// the source's audit rate and only counted into the next summary.
fn admit_refusal(gate: &Gate, ex: &Exchange, record: &RequestRecord, reason: &str) -> bool {
    let who = crate::audit::limiter::Subject {
        ingress: ex.peer.ingress.as_str(),
        source: ex.peer.addr.ip(),
        fingerprint: Some(ex.peer.credential.fingerprint()),
        terminal: record.terminal.as_deref(),
        cn: ex.peer.credential.cn(),
    };
    let admitted = gate
        .refusals
        .admit(crate::audit::limiter::Kind::Request, &who, reason, ex.now);
    if !admitted {
        gate.metrics
            .flood
            .refusals_suppressed
            .with_label_values(&["request"])
            .inc();
    }
    admitted
}

/// The answer to an allowed request the forward stage refused (EMR down, download blocked,
/// body too large, or the client gone mid-body).
fn forward_refused(gate: &Gate, ex: &Exchange, rid: u64, r: &Refusal) -> Response<Body> {
    let resp = pages::refusal(r, &ex.live.site);
    if *r == Refusal::ClientClosed {
        // The client went away mid-body: its outcome says so (issue 11 item 9).
        let resp = count_and_time(gate, ex, Decision::Deny, CLIENT_CLOSED, resp);
        ClientClosedGuard::armed(gate.audit.clone(), rid, ex.started)
            .write(CLIENT_CLOSED_STATUS, 0);
        return resp;
    }
    finish(gate, ex, Some(rid), Decision::Deny, r.reason(), resp)
}

/// Art 8.3: an allowed view moves the patient's `last_view` to today (the decision read the
/// consent: later views of the day need no write). The write runs beside the request and
/// never delays it (on the regional registry it is an etcd transaction); it only moves
/// `last_view` forward, and a failure loses one day's extension, never a refusal.
fn record_view(gate: &Gate, a: &Allowed) {
    if let (Some(patient), true) = (&a.target.patient, a.first_view_today) {
        let store = gate.store.clone();
        let patient = patient.clone();
        let today = gate.clock.today();
        tokio::spawn(async move {
            if let Err(e) = store.touch_consent(&patient, today).await {
                tracing::error!(error = %e, "last_view update failed");
            }
        });
    }
}

/// The forward stage once the request's record is durable: the view recorded, the request
/// sent to the EMR in the private segment, its response checked and streamed back
/// ([`respond`]).
async fn forward(
    gate: &Gate,
    ex: &Exchange,
    a: &Allowed,
    req: Request<Incoming>,
    rid: u64,
) -> Result<Response<Body>, Refusal> {
    record_view(gate, a);
    let resp = send(gate, ex, a, req).await;
    respond(gate, ex, resp, rid)
}

/// The forward stage of a request without a body, sent to the EMR while its record
/// (`recorded`) is being made durable. The EMR's response is held — no byte of it, not even
/// its status line, reaches the client — until the record is on disk; when it cannot be
/// written the client gets the 503 page and the EMR's response (or the exchange still in
/// flight) is dropped. The view is recorded (art 8.3) only once the record is durable.
async fn forward_while_recording(
    gate: &Gate,
    ex: &Exchange,
    a: &Allowed,
    req: Request<Incoming>,
    recorded: impl std::future::Future<Output = Result<u64, crate::audit::AuditError>>,
    audit_started: Instant,
) -> Response<Body> {
    let emr = send(gate, ex, a, req);
    tokio::pin!(emr);
    tokio::pin!(recorded);
    let mut early = None;
    let recorded = loop {
        tokio::select! {
            biased;
            r = &mut recorded => break r,
            r = &mut emr, if early.is_none() => early = Some(r),
        }
    };
    let rid = match recorded {
        Ok(rid) => rid,
        Err(e) => return audit_unavailable(gate, ex, &e),
    };
    audited(gate, audit_started);
    // From here every way out writes the outcome, as in `handle`.
    let guard = ClientClosedGuard::armed(gate.audit.clone(), rid, ex.started);
    record_view(gate, a);
    let resp = match early {
        Some(resp) => resp,
        None => emr.await,
    };
    guard.disarm();
    respond(gate, ex, resp, rid).unwrap_or_else(|r| forward_refused(gate, ex, rid, &r))
}

/// The answer when the request's record could not be made durable: the 503 page (fail
/// closed), counted and logged.
fn audit_unavailable(gate: &Gate, ex: &Exchange, e: &crate::audit::AuditError) -> Response<Body> {
    tracing::error!(error = %e, "audit write failed: refusing the request");
    gate.metrics.audit_failures.inc();
    let resp = pages::refusal(&Refusal::AuditUnavailable, &ex.live.site);
    finish(gate, ex, None, Decision::Deny, "audit-unavailable", resp)
}

/// Counts a durable request record and the time it took.
fn audited(gate: &Gate, audit_started: Instant) {
    gate.metrics.audit_records.inc();
    gate.metrics
        .audit_write_seconds
        .observe(audit_started.elapsed().as_secs_f64());
}

/// The EMR exchange: the request with the gateway's identity headers sent to the EMR in the
/// private segment, its response's headers made safe ([`crate::egress::forward`]).
async fn send(
    gate: &Gate,
    ex: &Exchange,
    a: &Allowed,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, ForwardError> {
    let live = &ex.live;
    let ingress = ex.peer.ingress.as_str();
    gate.metrics
        .gateway_seconds
        .with_label_values(&[ingress])
        .observe(ex.started.elapsed().as_secs_f64());
    let fwd = Forwarded {
        site: &live.site.id,
        physician: &a.who.physician.id,
        terminal: &a.who.terminal.name,
        patient: a.target.patient.as_deref(),
        category: a.target.category.map(|c| c.as_str()),
        records_from: a.window.map(|w| w.records_from.to_string()),
        access_until: a.window.map(|w| w.access_until.to_string()),
        client_ip: ex.peer.addr.ip().to_string(),
    };
    let upstream_started = Instant::now();
    let limit = a
        .target
        .max_body_bytes
        .unwrap_or(live.limits.max_body_bytes);
    let resp = live
        .forwarder
        .forward(req, &a.target.path_and_query(), &fwd, limit)
        .await;
    gate.metrics
        .upstream_seconds
        .observe(upstream_started.elapsed().as_secs_f64());
    resp
}

/// The EMR's response for the client: checked ([`policy::check_response`]) and streamed back
/// through an [`AuditedBody`] that writes the outcome of request `rid` (with the print guard
/// on plain HTML pages, art 13.2).
fn respond(
    gate: &Gate,
    ex: &Exchange,
    resp: Result<Response<Incoming>, ForwardError>,
    rid: u64,
) -> Result<Response<Body>, Refusal> {
    let live = &ex.live;
    let ingress = ex.peer.ingress.as_str();
    let resp = resp.map_err(|e| upstream_refusal(gate, e))?;
    policy::check_response(&live.policy, resp.headers())?;
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
        let declared = policy::content_length(&parts.headers);
        match declared.and_then(|n| n.checked_add(pages::PRINT_GUARD.len() as u64)) {
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
    let trailer = print_guard.then_some(pages::PRINT_GUARD);
    let body = AuditedBody::new(body, gate.audit.clone(), rid, status, ex.started, trailer);
    Ok(Response::from_parts(parts, body.boxed()))
}

/// A failed forward as a refusal, counted as an upstream error when it is the EMR's.
fn upstream_refusal(gate: &Gate, e: ForwardError) -> Refusal {
    if !matches!(e, ForwardError::ClientBody(_)) {
        tracing::warn!(error = %crate::ops::errors::chain(&e), "upstream failed");
    }
    let (kind, refusal) = match e {
        // The client's streamed body outgrew the route's limit: not the EMR's fault.
        ForwardError::BodyTooLarge => return Refusal::BodyTooLarge,
        ForwardError::BodyNotAllowed => return Refusal::BadRequest(BODY_ON_BODYLESS_METHOD),
        ForwardError::ClientBody(_) => return Refusal::ClientClosed,
        ForwardError::Timeout(_) => ("timeout", Refusal::UpstreamTimeout),
        ForwardError::Connect(_) | ForwardError::Target(_) | ForwardError::BodyTimeout => {
            ("connect", Refusal::UpstreamUnreachable)
        }
    };
    gate.metrics
        .upstream_errors
        .with_label_values(&[kind])
        .inc();
    refusal
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
