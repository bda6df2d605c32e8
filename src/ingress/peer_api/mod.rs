//! The read-only peer API (`[peer]`, issue 14, art 12.8): the other site gateways of the
//! network ask this site for its audit rows of a patient or a physician, so that `audit
//! query --network` can answer "who viewed this patient" for the whole network. Mutual TLS
//! accepting only site-gateway certificates of the regional CA ([`verify`]); one query and
//! nothing else ([`handler`]); bounded: an allow-list checked before the handshake, a
//! handshake timeout, at most [`MAX_CONNECTIONS`] connections, one request per connection.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use ipnetwork::IpNetwork;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::ops::shutdown::Shutdown;
use crate::site::config::in_networks;

pub mod handler;
pub mod verify;

pub use handler::{Asker, PeerService, AUDIT_PATH};

/// Peer connections served at once (a network has a handful of sites).
pub const MAX_CONNECTIONS: usize = 32;
/// The longest a peer connection may last, handshake to answer.
const CONNECTION_LIMIT: Duration = Duration::from_secs(120);

/// The bound peer API.
pub struct BoundPeerApi {
    pub socket: TcpListener,
    /// Swapped by `SIGHUP` (a renewed certificate) for new connections.
    pub tls: Arc<arc_swap::ArcSwap<rustls::ServerConfig>>,
    pub allow: Vec<IpNetwork>,
}

/// Accepts peer connections until `shutdown`.
pub async fn serve(
    b: BoundPeerApi,
    svc: Arc<PeerService>,
    handshake_timeout: Duration,
    mut shutdown: Shutdown,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, addr) = tokio::select! {
            _ = shutdown.recv() => return,
            r = b.socket.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "peer API: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        if !in_networks(&b.allow, addr.ip()) {
            tracing::warn!(%addr, "peer API: source outside [peer] allow; closed");
            continue;
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%addr, "peer API: {MAX_CONNECTIONS} connections open; closed");
            continue;
        };
        let acceptor = TlsAcceptor::from(b.tls.load_full());
        let svc = svc.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let served = tokio::time::timeout(CONNECTION_LIMIT, async {
                let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::warn!(%addr, error = %e, "peer API: handshake refused");
                        return;
                    }
                    Err(_) => return,
                };
                let asker = {
                    let (_, conn) = tls.get_ref();
                    let leaf = conn.peer_certificates().and_then(|c| c.first());
                    let site = leaf.and_then(verify::site_gateway_of);
                    let serial = leaf
                        .and_then(|c| crate::site::pki::cert_info(c.as_ref()).ok())
                        .map(|i| i.serial);
                    match (site, serial) {
                        (Some(site), Some(serial)) => Asker { site, serial, addr },
                        // The verifier accepts site gateways only; nothing else gets here.
                        _ => return,
                    }
                };
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let svc = svc.clone();
                    let asker = asker.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            svc.answer(req.method(), req.uri(), &asker).await,
                        )
                    }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .keep_alive(false)
                    .max_buf_size(16 * 1024)
                    .serve_connection(TokioIo::new(tls), service);
                if let Err(e) = conn.await {
                    tracing::debug!(%addr, error = %e, "peer API: connection ended");
                }
            })
            .await;
            if served.is_err() {
                tracing::warn!(%addr, "peer API: connection took longer than {CONNECTION_LIMIT:?}; closed");
            }
        });
    }
}
