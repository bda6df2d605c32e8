//! The connection layer both ingresses share (the mutual-TLS listeners and the TLS inside
//! WireGuard tunnels): handshakes within the budget, connection refusals counted and audited,
//! and one identified connection served with HTTP/1.1 or HTTP/2 by the request service — with
//! the idle timeout, the per-terminal connection limit and the graceful drain at shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::audit::limiter::{Kind, Subject};
use crate::audit::ConnectionRecord;
use crate::gate::Gate;
use crate::ingress::handshake::Ticket;
use crate::ingress::peer::{Credential, Ingress, Peer};
use crate::ops::shutdown::Shutdown;
use crate::outcome::CloseConnection;
use crate::pages;
use crate::policy::decision::Refusal;
use crate::policy::identity::ConnIdentity;
use crate::service;
use crate::site::config::Limits;

/// How a handshake within the budget ended.
pub enum Budgeted<T> {
    Done(T),
    TimedOut,
    /// Dropped from the handshake budget for a newer connection.
    Evicted,
}

/// Runs `handshake` holding `ticket` (its place in the budget, given back when this returns),
/// within `timeout`, unless the budget drops it first.
pub async fn budgeted<F: Future>(
    gate: &Gate,
    mut ticket: Ticket,
    timeout: Duration,
    handshake: F,
) -> Budgeted<F::Output> {
    gate.metrics
        .flood
        .handshakes_pending
        .set(i64::try_from(gate.handshakes.pending()).unwrap_or(i64::MAX));
    let r = tokio::select! {
        r = tokio::time::timeout(timeout, handshake) => match r {
            Ok(done) => Budgeted::Done(done),
            Err(_) => Budgeted::TimedOut,
        },
        _ = ticket.evicted() => Budgeted::Evicted,
    };
    drop(ticket);
    gate.metrics
        .flood
        .handshakes_pending
        .set(i64::try_from(gate.handshakes.pending()).unwrap_or(i64::MAX));
    r
}

/// A connection refused before any request: counted (`refused_connections_total` for the
/// causes that are not handshake results), then logged at INFO and written to the audit as a
/// `connection` record, or counted into the next suppression summary beyond the rate.
pub fn refused_connection(
    gate: &Gate,
    ingress: Ingress,
    listener: &str,
    client: std::net::SocketAddr,
    reason: &'static str,
    credential: Option<&Credential>,
) {
    if matches!(
        reason,
        "source-not-allowed" | "connection-limit" | "terminal-connection-limit"
    ) {
        gate.metrics
            .refused_connections
            .with_label_values(&[listener, reason])
            .inc();
    }
    let now = gate.clock.now();
    let terminal =
        credential.and_then(|c| crate::policy::identity::describe(&gate.store, c.fingerprint()).0);
    let who = Subject {
        ingress: ingress.as_str(),
        source: client.ip(),
        fingerprint: credential.map(|c| c.fingerprint()),
        terminal: terminal.as_deref(),
        cn: credential.and_then(|c| c.cn()),
    };
    if !gate.refusals.admit(Kind::Connection, &who, reason, now) {
        gate.metrics
            .flood
            .refusals_suppressed
            .with_label_values(&["connection"])
            .inc();
        return;
    }
    tracing::info!(%client, listener, reason, terminal = terminal.as_deref().unwrap_or("-"), "connection refused");
    gate.audit.connection(&ConnectionRecord {
        time: crate::ops::clock::rfc3339(now),
        site: gate.live().site.id.clone(),
        ingress: ingress.as_str().to_string(),
        listener: listener.to_string(),
        client: client.to_string(),
        reason: reason.to_string(),
        terminal,
        cn: credential.and_then(|c| c.cn().map(str::to_string)),
        serial: credential.and_then(|c| c.serial().map(str::to_string)),
    });
}

pub(crate) fn count_handshake(gate: &Gate, listener: &str, result: &str) {
    gate.metrics
        .tls_handshakes
        .with_label_values(&[listener, result])
        .inc();
}

/// A metrics label for why a handshake failed.
pub(crate) fn handshake_failure(e: &std::io::Error) -> &'static str {
    let Some(inner) = e.get_ref() else {
        return "io";
    };
    match inner.downcast_ref::<rustls::Error>() {
        Some(rustls::Error::InvalidCertificate(c)) => match c {
            rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. } => {
                "expired"
            }
            rustls::CertificateError::NotValidYet
            | rustls::CertificateError::NotValidYetContext { .. } => "not-yet-valid",
            rustls::CertificateError::Revoked => "revoked",
            rustls::CertificateError::UnknownIssuer => "unknown-ca",
            rustls::CertificateError::InvalidPurpose
            | rustls::CertificateError::InvalidPurposeContext { .. } => "wrong-usage",
            _ => "bad-certificate",
        },
        Some(rustls::Error::NoCertificatesPresented) => "no-client-certificate",
        Some(rustls::Error::PeerIncompatible(_)) => "incompatible",
        Some(_) => "protocol",
        None => "io",
    }
}

/// Serves one identified client connection (mutual TLS, or a WireGuard tunnel stream) with
/// the one request service: the per-terminal connection limit, the connection gauge, the
/// idle timeout and graceful shutdown are the same for every ingress.
pub fn serve_peer<'a, I>(
    gate: Arc<Gate>,
    peer: Peer,
    io: I,
    http2: bool,
    limits: &'a Limits,
    listener: &'a str,
    shutdown: Shutdown,
) -> impl Future<Output = ()> + Send + 'a
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Built synchronously and boxed, so that the future an idle connection keeps holds the
    // connection state once (an async fn would also keep its arguments and every local that
    // lives across an await: 9 KiB for an HTTP/1.1 connection before this).
    let addr = peer.addr;
    let Some(terminal_slot) = gate.terminal_conns.try_open(
        peer.credential.fingerprint(),
        limits.max_connections_per_terminal,
    ) else {
        refused_connection(
            &gate,
            peer.ingress,
            listener,
            addr,
            "terminal-connection-limit",
            Some(&peer.credential),
        );
        return Either::Left(Box::pin(refuse_connection(gate, io, limits)));
    };
    let conns = gate
        .metrics
        .connections
        .with_label_values(&[peer.ingress.as_str()]);
    conns.inc();
    let peer = Arc::new(peer);
    let identity = Arc::new(ConnIdentity::default());
    // A response marked `CloseConnection` (a revoked or unknown terminal) ends the connection
    // once it is sent (issue 11 item 8).
    let close = Arc::new(tokio::sync::Notify::new());
    let close_on = close.clone();
    let svc = service_fn(move |req| {
        handle_then_close(
            gate.clone(),
            peer.clone(),
            identity.clone(),
            req,
            close_on.clone(),
        )
    });
    let io = TokioIo::new(Tracked::new(io));
    let activity = io.inner().activity();
    let idle = limits.idle_timeout;
    // The protocol is known from ALPN: serve it directly (no version sniffing), each
    // protocol's connection state in its own box.
    let conn = if http2 {
        Either::Left(Box::pin(http2_builder(limits).serve_connection(io, svc)))
    } else {
        Either::Right(Box::pin(http1_builder(limits).serve_connection(io, svc)))
    };
    Either::Right(Box::pin(async move {
        let _terminal_slot = terminal_slot;
        let result = match conn {
            Either::Left(c) => drive(c, shutdown, &activity, idle, addr, &close).await,
            Either::Right(c) => drive(c, shutdown, &activity, idle, addr, &close).await,
        };
        if let Err(e) = result {
            tracing::debug!(client = %addr, error = %e, "connection ended with an error");
        }
        conns.dec();
    }))
}

/// The request service, then the connection's end when the answer asks for it.
async fn handle_then_close(
    gate: Arc<Gate>,
    peer: Arc<Peer>,
    identity: Arc<ConnIdentity>,
    req: hyper::Request<hyper::body::Incoming>,
    close: Arc<tokio::sync::Notify>,
) -> Result<hyper::Response<pages::Body>, Infallible> {
    let resp = service::handle(gate, peer, identity, req).await?;
    if resp.extensions().get::<CloseConnection>().is_some() {
        close.notify_one();
    }
    Ok(resp)
}

/// One of two futures (or values), without boxing them behind `dyn`.
enum Either<A, B> {
    Left(A),
    Right(B),
}

impl<A, B> Future for Either<A, B>
where
    A: Future<Output = ()> + Unpin,
    B: Future<Output = ()> + Unpin,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.get_mut() {
            Either::Left(a) => Pin::new(a).poll(cx),
            Either::Right(b) => Pin::new(b).poll(cx),
        }
    }
}

/// Runs a connection to its end: until the client closes it, shutdown (finish the request in
/// flight), or `idle` without a byte moved (graceful close, bounded).
async fn drive<C>(
    mut conn: Pin<Box<C>>,
    mut shutdown: Shutdown,
    activity: &Activity,
    idle: Duration,
    addr: std::net::SocketAddr,
    close: &tokio::sync::Notify,
) -> Result<(), C::Error>
where
    C: GracefulConnection,
{
    tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.recv() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        _ = close.notified() => {
            tracing::debug!(client = %addr, "refused terminal: connection closed after the answer");
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(Duration::from_secs(5), conn.as_mut()).await {
                Ok(r) => r,
                Err(_) => Ok(()),
            }
        }
        _ = activity.idle_for(idle) => {
            tracing::debug!(client = %addr, "idle connection closed");
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(idle, conn.as_mut()).await {
                Ok(r) => r,
                Err(_) => Ok(()),
            }
        }
    }
}

fn http1_builder(limits: &Limits) -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers);
    b
}

fn http2_builder(limits: &Limits) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_concurrent_streams(100)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    b
}

/// The HTTP/1.1 + HTTP/2 server settings every client connection gets.
fn http_builder(limits: &Limits, header_timeout: Duration) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(100)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// Answers every request of a connection beyond its terminal's limit with the 429 page and
/// closes it (after the first answer for HTTP/1, within the head read timeout in any case).
async fn refuse_connection<I>(gate: Arc<Gate>, io: I, limits: &Limits)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let site = gate.live().site.clone();
    let svc = service_fn(move |_req| {
        let mut resp = pages::refusal(&Refusal::TooManyConnections, &site);
        resp.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
        async move { Ok::<_, Infallible>(resp) }
    });
    let mut builder = http_builder(limits, limits.header_read_timeout);
    builder.http1().keep_alive(false);
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let bound = limits.header_read_timeout;
    if tokio::time::timeout(bound, conn.as_mut()).await.is_err() {
        conn.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
    }
}

/// When a connection last moved a byte either way.
#[derive(Debug, Clone)]
pub struct Activity {
    start: Instant,
    /// Milliseconds after `start`.
    last: Arc<AtomicU64>,
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        let now = self.start.elapsed();
        now.saturating_sub(Duration::from_millis(self.last.load(Ordering::Relaxed)))
    }

    /// Resolves once no byte has moved for `limit`.
    async fn idle_for(&self, limit: Duration) {
        let tick = (limit / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
        loop {
            let idle = self.idle();
            if idle >= limit {
                return;
            }
            tokio::time::sleep((limit - idle).min(tick)).await;
        }
    }
}

/// A stream that records its last read or write.
struct Tracked<T> {
    inner: T,
    activity: Activity,
}

impl<T> Tracked<T> {
    fn new(inner: T) -> Tracked<T> {
        Tracked {
            inner,
            activity: Activity {
                start: Instant::now(),
                last: Arc::new(AtomicU64::new(0)),
            },
        }
    }

    fn activity(&self) -> Activity {
        self.activity.clone()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
