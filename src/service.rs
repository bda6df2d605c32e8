//! The request path, in one place:
//!
//! ```text
//! listener (TLS, allow-list) → peer identity → decision (identity, route, consent)
//!   → audit (durable before forwarding) → forward (private EMR) → outcome audit
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
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::audit::{AuditLog, Outcome, RequestRecord};
use crate::clock::{self, SharedClock};
use crate::config::{Config, Site};
use crate::decision::{self, Decision, Refusal, Verdict};
use crate::forward::{ForwardError, Forwarded, Forwarder};
use crate::metrics::Metrics;
use crate::pages::{self, Body, BodyError};
use crate::pki::CertInfo;
use crate::route::{RouteError, RouteTable};
use crate::store::Store;

/// How a request reached the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingress {
    Mtls,
    WireGuard,
}

impl Ingress {
    pub fn as_str(self) -> &'static str {
        match self {
            Ingress::Mtls => "mtls",
            Ingress::WireGuard => "wireguard",
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
    pub audit: AuditLog,
    pub metrics: Metrics,
    pub clock: SharedClock,
    /// What `SIGHUP` reloads: swapped atomically, read once per request.
    live: ArcSwap<Live>,
}

/// The reloadable part of the configuration.
#[derive(Debug)]
pub struct Live {
    pub site: Site,
    pub routes: RouteTable,
    pub forwarder: Forwarder,
}

impl Live {
    pub fn new(cfg: &Config) -> Live {
        Live {
            site: cfg.site.clone(),
            routes: cfg.routes.clone(),
            forwarder: Forwarder::new(&cfg.upstream),
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
            audit,
            metrics,
            clock,
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

/// Serves one request. Never fails: every problem becomes a page.
pub async fn handle(
    gate: Arc<Gate>,
    peer: Arc<Peer>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let now = gate.clock.now();
    let live = gate.live();
    let method = req.method().clone();
    let raw_target = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());

    // HTTP/1 absolute-form (`GET http://other/...`) is refused: the check and the forward must
    // see one and the same origin-form target. HTTP/2 always carries :authority; it is ignored.
    let decision = if req.version() < http::Version::HTTP_2 && req.uri().scheme().is_some() {
        Decision {
            verdict: Verdict::Deny(Refusal::Route(RouteError::BadTarget("absolute-form"))),
            who: None,
            target: None,
            window: None,
        }
    } else {
        decision::decide(
            &gate.store,
            &live.routes,
            &peer.credential.fingerprint,
            &method,
            &raw_target,
            now,
        )
    };

    let record = RequestRecord {
        time: clock::rfc3339(now),
        site: live.site.id.clone(),
        ingress: peer.ingress.as_str().to_string(),
        client: peer.addr.to_string(),
        terminal: decision.who.as_ref().map(|w| w.terminal.name.clone()),
        physician: decision.who.as_ref().map(|w| w.physician.id.clone()),
        method: method.as_str().to_string(),
        path: decision
            .target
            .as_ref()
            .map(|t| t.path_and_query())
            .unwrap_or_else(|| truncate(&raw_target, 2048)),
        patient: decision.target.as_ref().and_then(|t| t.patient.clone()),
        category: decision
            .target
            .as_ref()
            .and_then(|t| t.category.map(|c| c.as_str().to_string())),
        decision: match &decision.verdict {
            Verdict::Allow => "allow",
            Verdict::Deny(_) => "deny",
        }
        .to_string(),
        reason: match &decision.verdict {
            Verdict::Allow => "allowed",
            Verdict::Deny(r) => r.reason(),
        }
        .to_string(),
        serial: peer.credential.serial.clone(),
        cn: peer.credential.cn.clone(),
    };

    // The record is on disk before anything is forwarded; no record, no access (fail closed).
    let audit_started = Instant::now();
    let rid = match gate.audit.record(record).await {
        Ok(rid) => rid,
        Err(e) => {
            tracing::error!(error = %e, "audit write failed: refusing the request");
            gate.metrics.audit_failures.inc();
            return Ok(finish_refusal(
                &gate,
                &live,
                &peer,
                None,
                started,
                &Refusal::AuditUnavailable,
            ));
        }
    };
    gate.metrics.audit_records.inc();
    gate.metrics
        .audit_write_seconds
        .observe(audit_started.elapsed().as_secs_f64());

    let refusal = match decision.verdict {
        Verdict::Deny(r) => r,
        Verdict::Allow => match forward(&gate, &live, &peer, req, &decision, rid, started).await {
            Ok(resp) => return Ok(resp),
            Err(r) => r,
        },
    };
    Ok(finish_refusal(
        &gate,
        &live,
        &peer,
        Some(rid),
        started,
        &refusal,
    ))
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

fn finish_refusal(
    gate: &Gate,
    live: &Live,
    peer: &Peer,
    rid: Option<u64>,
    started: Instant,
    r: &Refusal,
) -> Response<Body> {
    let resp = pages::refusal(r, &live.site);
    let ingress = peer.ingress.as_str();
    gate.metrics
        .requests
        .with_label_values(&[ingress, "deny", r.reason()])
        .inc();
    let elapsed = started.elapsed();
    gate.metrics
        .gateway_seconds
        .with_label_values(&[ingress])
        .observe(elapsed.as_secs_f64());
    if let Some(rid) = rid {
        gate.audit.outcome(
            rid,
            Outcome {
                status: resp.status().as_u16(),
                bytes: 0,
                duration_us: elapsed.as_micros() as u64,
            },
        );
    }
    tracing::info!(client = %peer.addr, reason = r.reason(), status = resp.status().as_u16(), "refused");
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
    if let Some(patient) = &target.patient {
        // Art 8.3: an allowed view moves last_view to today.
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
        .forward(req, &target.path_and_query(), &fwd)
        .await;
    gate.metrics
        .upstream_seconds
        .observe(upstream_started.elapsed().as_secs_f64());
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "upstream failed");
            let (kind, refusal) = match e {
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
    gate.metrics
        .requests
        .with_label_values(&[ingress, "allow", "allowed"])
        .inc();
    let status = resp.status().as_u16();
    Ok(resp.map(|body| {
        AuditedBody {
            inner: body,
            audit: gate.audit.clone(),
            rid,
            status,
            bytes: 0,
            started,
        }
        .boxed()
    }))
}

/// The EMR's response body, counted; its outcome line is written when it ends or is dropped.
struct AuditedBody {
    inner: Incoming,
    audit: AuditLog,
    rid: u64,
    status: u16,
    bytes: u64,
    started: Instant,
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
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for AuditedBody {
    fn drop(&mut self) {
        self.audit.outcome(
            self.rid,
            Outcome {
                status: self.status,
                bytes: self.bytes,
                duration_us: self.started.elapsed().as_micros() as u64,
            },
        );
    }
}
