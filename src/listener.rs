//! Step 1 of the request path: accept, check the source address against the listener's
//! allow-list (art 12.4: anything else is closed before the handshake), complete the mutual-TLS
//! handshake (art 12.1, 12.3) within a time limit, and serve HTTP/1.1 or HTTP/2 on it with the
//! one request service, the peer's certificate as the connection's identity.

use std::sync::Arc;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::config::{in_networks, Limits, Listener, ListenerKind};
use crate::service::{self, Gate, Ingress, Peer};
use crate::shutdown::Shutdown;
use crate::tls;

/// One mutual-TLS listener's accept loop.
pub struct MtlsListener {
    /// The bound socket (the caller binds it, so tests can use port 0).
    pub socket: TcpListener,
    /// Its configuration: name (for metrics) and allow-list.
    pub config: Listener,
    /// The TLS configuration; `SIGHUP` swaps it for new connections.
    pub tls: Arc<ArcSwap<rustls::ServerConfig>>,
    pub limits: Limits,
    /// Caps open connections across all listeners.
    pub slots: Arc<Semaphore>,
}

impl MtlsListener {
    /// Accepts until shutdown; on shutdown, each open connection finishes its request in
    /// flight and closes (its slot is released when it ends, which `serve` waits for).
    pub async fn run(self, gate: Arc<Gate>, mut shutdown: Shutdown) {
        let name: Arc<str> = Arc::from(self.config.name.as_str());
        loop {
            let accepted = tokio::select! {
                a = self.socket.accept() => a,
                _ = shutdown.recv() => return,
            };
            let (stream, addr) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            if !in_networks(&self.config.allow, addr.ip()) {
                gate.metrics
                    .refused_connections
                    .with_label_values(&[&name, "source-not-allowed"])
                    .inc();
                tracing::info!(client = %addr, listener = %name, "source address not allowed: closed before the handshake");
                drop(stream);
                continue;
            }
            let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                gate.metrics
                    .refused_connections
                    .with_label_values(&[&name, "connection-limit"])
                    .inc();
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let acceptor = TlsAcceptor::from(self.tls.load_full());
            let gate = gate.clone();
            let mut conn_shutdown = shutdown.clone();
            let name = name.clone();
            let handshake_timeout = self.limits.handshake_timeout;
            let header_timeout = self.limits.header_read_timeout;
            let kind = self.config.kind;
            tokio::spawn(async move {
                let _slot = slot;
                let tls =
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Err(_) => {
                            count_handshake(&gate, &name, "timeout");
                            return;
                        }
                        Ok(Err(e)) => {
                            count_handshake(&gate, &name, handshake_failure(&e));
                            tracing::debug!(client = %addr, error = %e, "TLS handshake failed");
                            return;
                        }
                        Ok(Ok(s)) => s,
                    };
                let Some(cert) = tls::peer_identity(tls.get_ref().1.peer_certificates()) else {
                    count_handshake(&gate, &name, "no-client-certificate");
                    return;
                };
                count_handshake(&gate, &name, "ok");
                let ingress = match kind {
                    ListenerKind::Terminal => Ingress::Mtls,
                    ListenerKind::SiteSystem => Ingress::Site,
                };
                let peer = Arc::new(Peer {
                    ingress,
                    addr,
                    credential: cert.into(),
                });
                let conns = gate
                    .metrics
                    .connections
                    .with_label_values(&[ingress.as_str()]);
                conns.inc();
                let svc_gate = gate.clone();
                let svc =
                    service_fn(move |req| service::handle(svc_gate.clone(), peer.clone(), req));
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .max_buf_size(64 * 1024);
                builder
                    .http2()
                    .timer(TokioTimer::new())
                    .max_concurrent_streams(100)
                    .max_header_list_size(64 * 1024);
                let conn = builder.serve_connection(TokioIo::new(tls), svc);
                tokio::pin!(conn);
                let result = tokio::select! {
                    r = conn.as_mut() => r,
                    _ = conn_shutdown.recv() => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(client = %addr, error = %e, "connection ended with an error");
                }
                conns.dec();
            });
        }
    }
}

fn count_handshake(gate: &Gate, listener: &str, result: &str) {
    gate.metrics
        .tls_handshakes
        .with_label_values(&[listener, result])
        .inc();
}

/// A metrics label for why a handshake failed.
fn handshake_failure(e: &std::io::Error) -> &'static str {
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
