//! The last stage of the request path: every request's `outcome` audit line and its metrics,
//! however it ends — answered by the gateway ([`finish`]), streamed from the EMR
//! ([`AuditedBody`]), or abandoned by the client ([`ClientClosedGuard`], issue 11 item 9) —
//! and the response a refusal gets ([`refusal_response`]).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderValue, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;

use crate::audit::{
    AuditError, AuditLog, Decision, Outcome, PendingRecord, RequestRecord, CLIENT_CLOSED,
    CLIENT_CLOSED_STATUS,
};
use crate::exchange::Exchange;
use crate::gate::Gate;
use crate::pages::{self, Body, BodyError};
use crate::policy::decision::Refusal;
use crate::policy::identity::IdentityRefusal;
use crate::policy::own_paths::{login_url, PASSWORD_PATH};

/// Counts, audits and logs the outcome of a response the gateway answers itself.
pub fn finish(
    gate: &Gate,
    ex: &Exchange,
    rid: Option<u64>,
    decision: Decision,
    reason: &str,
    resp: Response<Body>,
) -> Response<Body> {
    let resp = count_and_time(gate, ex, decision, reason, resp);
    if let Some(rid) = rid {
        gate.audit.outcome(
            rid,
            Outcome {
                status: resp.status().as_u16(),
                bytes: 0,
                duration_us: ex.started.elapsed().as_micros() as u64,
            },
        );
    }
    if decision == Decision::Deny {
        tracing::info!(client = %ex.peer.addr, reason, status = resp.status().as_u16(), "refused");
    }
    resp
}

/// The metrics of a response the gateway answers itself.
pub fn count_and_time(
    gate: &Gate,
    ex: &Exchange,
    decision: Decision,
    reason: &str,
    resp: Response<Body>,
) -> Response<Body> {
    let ingress = ex.peer.ingress.as_str();
    gate.metrics
        .requests
        .with_label_values(&[ingress, decision.as_str(), reason])
        .inc();
    gate.metrics
        .gateway_seconds
        .with_label_values(&[ingress])
        .observe(ex.started.elapsed().as_secs_f64());
    resp
}

/// A refusal's response: a browser without a session is sent to the sign-in page, one whose
/// password must change to the password page; anything else gets the refusal page.
pub fn refusal_response(r: &Refusal, ex: &Exchange) -> Response<Body> {
    let browser_get = ex.wants_html && ex.method == http::Method::GET;
    match r {
        Refusal::Session(_) if browser_get => pages::redirect(&login_url(&ex.target)),
        Refusal::PasswordChangeRequired if browser_get => pages::redirect(PASSWORD_PATH),
        _ => pages::refusal(r, &ex.live.site),
    }
}

/// Marks a response after which the connection is closed (HTTP/1: no keep-alive; HTTP/2:
/// GOAWAY): a revoked, expired or unknown terminal gets its refusal and no connection to repeat
/// it on (issue 11 item 8). The connection layer acts on it (`crate::ingress::connection::serve_peer`).
#[derive(Debug, Clone, Copy)]
pub struct CloseConnection;

/// [`CloseConnection`] on the response when the terminal itself is refused. A suspended
/// physician's terminal keeps its connection (refused per request until the physician is
/// resumed, art 4).
pub fn close_if_identity(r: &Refusal, mut resp: Response<Body>) -> Response<Body> {
    use IdentityRefusal as I;
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

/// [`AuditLog::record`] that survives its caller: the line is handed to the writer at once
/// (before the first poll: the sync runs while the caller forwards the request, issue 16);
/// when the client goes away while it is being written (this future is dropped), the line is
/// written all the same and gets its `client-closed` outcome (issue 11 item 9).
pub fn record_abandonable(audit: &AuditLog, record: RequestRecord, started: Instant) -> Recording {
    Recording {
        state: Some(audit.record_now(&record)),
        audit: audit.clone(),
        started,
    }
}

/// A request line being made durable ([`record_abandonable`]).
pub struct Recording {
    state: Option<Result<PendingRecord, AuditError>>,
    audit: AuditLog,
    started: Instant,
}

impl std::future::Future for Recording {
    type Output = Result<u64, AuditError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.state.take() {
            Some(Ok(mut pending)) => match Pin::new(&mut pending).poll(cx) {
                Poll::Ready(r) => Poll::Ready(r),
                Poll::Pending => {
                    self.state = Some(Ok(pending));
                    Poll::Pending
                }
            },
            Some(Err(e)) => Poll::Ready(Err(e)),
            // Polled again after it resolved.
            None => Poll::Ready(Err(AuditError::Closed)),
        }
    }
}

impl Drop for Recording {
    /// Dropped before the line was synced: the client went away. The line is written anyway;
    /// a task waits for it and writes its `client-closed` outcome.
    fn drop(&mut self) {
        let Some(Ok(pending)) = self.state.take() else {
            return;
        };
        let (log, started) = (self.audit.clone(), self.started);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if let Ok(rid) = pending.await {
                        ClientClosedGuard::armed(log, rid, started).write(CLIENT_CLOSED_STATUS, 0);
                    }
                });
            }
            // No runtime: the process is stopping; the writer flushes what it has.
            Err(_) => tracing::warn!("audit: request line abandoned at shutdown, no outcome"),
        }
    }
}

/// Writes the `client-closed` outcome of request `rid` when dropped armed: the request's
/// future was dropped (the client went away) before anything else wrote its outcome.
pub struct ClientClosedGuard {
    audit: AuditLog,
    rid: Option<u64>,
    started: Instant,
}

impl ClientClosedGuard {
    pub fn armed(audit: AuditLog, rid: u64, started: Instant) -> ClientClosedGuard {
        ClientClosedGuard {
            audit,
            rid: Some(rid),
            started,
        }
    }

    /// Something else writes the outcome from here.
    pub fn disarm(mut self) {
        self.rid = None;
    }

    /// Writes the `client-closed` outcome now (once).
    pub fn write(&mut self, status: u16, bytes: u64) {
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

/// The EMR's response body, counted; its outcome line is written when it ends or is dropped.
pub struct AuditedBody {
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

impl AuditedBody {
    pub fn new(
        inner: Incoming,
        audit: AuditLog,
        rid: u64,
        status: u16,
        started: Instant,
        trailer: Option<&'static [u8]>,
    ) -> AuditedBody {
        AuditedBody {
            inner,
            audit,
            rid,
            status,
            bytes: 0,
            started,
            trailer,
            ended: false,
        }
    }
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
