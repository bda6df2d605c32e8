//! The console's listener: accept, refuse a source outside `[office] allow` before the
//! handshake (audited as a `connection` record with ingress `office`, at the rate the refusal
//! limiter allows), mutual TLS within the handshake timeout (client certificates chaining to
//! the site CA; whether it is a *staff* certificate is the router's first question), then
//! HTTP/1.1 with a header-read timeout.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::Console;
use crate::audit::limiter::{Kind, Subject};
use crate::audit::ConnectionRecord;
use crate::ingress::tls::{self, TlsError};
use crate::ops::shutdown::Shutdown;
use crate::site::config::in_networks;
use crate::site::pki::CertInfo;

/// The ingress name of the console in the audit, the logs and the metrics.
pub const INGRESS: &str = "office";

/// The console's TLS: the site CA's client certificates required, HTTP/1.1 only.
pub fn server_config(
    cert: &std::path::Path,
    key: &std::path::Path,
    client_ca: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let cfg = tls::server_config(cert, key, client_ca)?;
    let mut cfg = Arc::unwrap_or_clone(cfg);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// One connection's identity: where from, and the certificate it presented.
#[derive(Debug, Clone)]
pub struct StaffPeer {
    pub addr: SocketAddr,
    pub cert: CertInfo,
}

/// Accepts until shutdown.
pub async fn run(
    socket: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    console: Arc<Console>,
    mut shutdown: Shutdown,
) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let accepted = tokio::select! {
            a = socket.accept() => a,
            _ = shutdown.recv() => return,
        };
        let (stream, addr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "office: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        if !in_networks(&console.office.allow, addr.ip()) {
            drop(stream);
            refused(&console, addr, "source-not-allowed");
            continue;
        }
        let acceptor = acceptor.clone();
        let console = console.clone();
        tokio::spawn(async move {
            let timeout = console.gate.live().limits.handshake_timeout;
            let tls = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(client = %addr, error = %e, "office: TLS handshake failed");
                    refused(&console, addr, "handshake-failed");
                    return;
                }
                Err(_) => {
                    refused(&console, addr, "timeout");
                    return;
                }
            };
            let Some(cert) = tls::peer_identity(tls.get_ref().1.peer_certificates()) else {
                refused(&console, addr, "no-client-certificate");
                return;
            };
            let peer = Arc::new(StaffPeer { addr, cert });
            let svc_console = console.clone();
            let svc = service_fn(move |req| {
                let console = svc_console.clone();
                let peer = peer.clone();
                async move { Ok::<_, Infallible>(super::router::handle(&console, &peer, req).await) }
            });
            let limits = console.gate.live().limits.clone();
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(limits.max_header_bytes.max(8192))
                .serve_connection(TokioIo::new(tls), svc);
            if let Err(e) = conn.await {
                tracing::debug!(client = %addr, error = %e, "office: connection ended");
            }
        });
    }
}

/// A connection refused before any request: logged and written to the audit (ingress
/// `office`) at the rate the refusal limiter allows.
fn refused(console: &Console, client: SocketAddr, reason: &'static str) {
    let gate = &console.gate;
    let now = gate.clock.now();
    let who = Subject {
        ingress: INGRESS,
        source: client.ip(),
        fingerprint: None,
        terminal: None,
        cn: None,
    };
    if !gate.refusals.admit(Kind::Connection, &who, reason, now) {
        return;
    }
    tracing::info!(%client, reason, "office: connection refused");
    gate.audit.connection(&ConnectionRecord {
        time: crate::ops::clock::rfc3339(now),
        site: console.site.id.clone(),
        ingress: INGRESS.to_string(),
        listener: INGRESS.to_string(),
        client: client.to_string(),
        reason: reason.to_string(),
        terminal: None,
        cn: None,
        serial: None,
    });
}
