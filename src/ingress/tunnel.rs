//! The WireGuard ingress (art 12.2), beside mutual TLS: registered terminals' tunnel streams
//! → server-authenticated TLS inside the tunnel → the one request service, with the peer's
//! registered key as the connection's identity (checked per request like a certificate).
//!
//! The packet work (boringtun, smoltcp, filtering) is in [`crate::ingress::wireguard`]; this file
//! turns the registry into peers, serves the streams, and reports the tunnel's figures.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio_rustls::TlsAcceptor;

use crate::gate::Gate;
use crate::ingress::connection::{budgeted, refused_connection, serve_peer, Budgeted};
use crate::ingress::peer::{Credential, Ingress, Peer};
use crate::ingress::wireguard::{self, WgConfig, WgHandle, WgPeer, WgStats, WgStream};
use crate::ops::metrics::Metrics;
use crate::ops::shutdown::Shutdown;
use crate::registry::model::TerminalKind;
use crate::registry::store::{Store, StoreError};
use crate::site::config::{Limits, WireGuard};

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("wireguard.private_key {path}: {message}")]
    Key { path: String, message: String },
    #[error("wireguard: {0}")]
    Start(#[from] wireguard::WgError),
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// The registry's active WireGuard terminals as tunnel peers.
pub fn peers(store: &Store) -> Result<Vec<WgPeer>, StoreError> {
    Ok(store
        .terminals()?
        .into_iter()
        .filter(|t| t.kind == TerminalKind::Terminal && !t.revoked)
        .filter_map(|t| {
            let key = t.wireguard_key()?;
            let public_key = wireguard::key_from_base64(key).ok()?;
            Some(WgPeer {
                public_key,
                tunnel_ip: t.tunnel_ip?,
                name: t.name,
            })
        })
        .collect())
}

/// Reads the gateway's key and starts the tunnel with the registry's peers.
pub async fn start(
    cfg: &WireGuard,
    store: &Store,
) -> Result<(WgHandle, mpsc::Receiver<WgStream>), TunnelError> {
    let key_err = |message: String| TunnelError::Key {
        path: cfg.private_key.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(&cfg.private_key).map_err(|e| key_err(e.to_string()))?;
    let private_key =
        wireguard::key_from_base64(text.trim()).map_err(|e| key_err(e.to_string()))?;
    let mut ports = vec![cfg.https_port];
    if cfg.http {
        ports.push(80);
    }
    let wg = WgConfig {
        listen: cfg.listen,
        private_key,
        address: cfg.address,
        ports,
    };
    Ok(wireguard::start(wg, peers(store)?).await?)
}

/// Serves the tunnel's streams until shutdown. Like the mutual-TLS listeners, a stream's TLS
/// handshake holds a place in the handshake budget, and only a completed handshake takes one of
/// the `slots` shared with them (issue 11 item 7).
pub async fn serve(
    mut streams: mpsc::Receiver<WgStream>,
    tls: Arc<arc_swap::ArcSwap<rustls::ServerConfig>>,
    https_port: u16,
    gate: Arc<Gate>,
    limits: Limits,
    slots: Arc<tokio::sync::Semaphore>,
    mut shutdown: Shutdown,
) {
    let tunnel = Arc::new(Tunnel {
        gate,
        limits,
        slots,
        https_port,
    });
    loop {
        let stream = tokio::select! {
            s = streams.recv() => s,
            _ = shutdown.recv() => return,
        };
        let Some(stream) = stream else { return };
        let acceptor = TlsAcceptor::from(tls.load_full());
        tokio::spawn(
            tunnel
                .clone()
                .connection(stream, acceptor, shutdown.clone()),
        );
    }
}

/// What every stream of the tunnel is served with.
struct Tunnel {
    gate: Arc<Gate>,
    limits: Limits,
    /// Connection slots shared with the mutual-TLS listeners.
    slots: Arc<tokio::sync::Semaphore>,
    /// The in-tunnel HTTPS port; the other (plain HTTP, port 80) only redirects.
    https_port: u16,
}

impl Tunnel {
    /// One stream from a registered peer: TLS on the HTTPS port (within the handshake budget),
    /// plain HTTP on the other; then served as a connection of that peer.
    async fn connection(
        self: Arc<Self>,
        stream: WgStream,
        acceptor: TlsAcceptor,
        shutdown: Shutdown,
    ) {
        let peer = Peer {
            ingress: Ingress::WireGuard,
            addr: stream.remote(),
            credential: Credential::wireguard(&stream.peer_key(), stream.peer_name()),
        };
        let ticket = self.gate.handshakes.admit(peer.addr.ip());
        if stream.local_port() != self.https_port {
            drop(ticket);
            let Some(_slot) = self.slot(&peer) else {
                return;
            };
            serve_peer(
                self.gate.clone(),
                peer,
                stream,
                false,
                &self.limits,
                "wireguard",
                shutdown,
            )
            .await;
            return;
        }
        let timeout = self.limits.handshake_timeout;
        let tls = match budgeted(&self.gate, ticket, timeout, acceptor.accept(stream)).await {
            Budgeted::Done(Ok(tls)) => tls,
            Budgeted::Done(Err(e)) => {
                tracing::debug!(client = %peer.addr, error = %e, "TLS handshake in the tunnel failed");
                return self.refused(&peer, "protocol");
            }
            Budgeted::TimedOut => return self.refused(&peer, "timeout"),
            Budgeted::Evicted => return self.refused(&peer, "evicted"),
        };
        self.count_handshake("ok");
        let Some(_slot) = self.slot(&peer) else {
            return;
        };
        let http2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        serve_peer(
            self.gate.clone(),
            peer,
            tls,
            http2,
            &self.limits,
            "wireguard",
            shutdown,
        )
        .await;
    }

    /// A connection slot, or `None` after the refusal is counted and audited.
    fn slot(&self, peer: &Peer) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let slot = self.slots.clone().try_acquire_owned().ok();
        if slot.is_none() {
            self.refuse(peer, "connection-limit");
        }
        slot
    }

    fn count_handshake(&self, result: &str) {
        self.gate
            .metrics
            .tls_handshakes
            .with_label_values(&["wireguard", result])
            .inc();
    }

    /// A failed in-tunnel handshake: counted, then refused.
    fn refused(&self, peer: &Peer, reason: &'static str) {
        self.count_handshake(reason);
        self.refuse(peer, reason);
    }

    fn refuse(&self, peer: &Peer, reason: &'static str) {
        refused_connection(
            &self.gate,
            Ingress::WireGuard,
            "wireguard",
            peer.addr,
            reason,
            Some(&peer.credential),
        );
    }
}

/// Reloads the peers when terminals change (a revocation drops the tunnel at once), and
/// exports the tunnel's figures.
pub async fn maintain(
    handle: WgHandle,
    store: Store,
    changed: Arc<Notify>,
    metrics: Metrics,
    mut shutdown: Shutdown,
) {
    let mut last = WgStats::default();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = changed.notified() => match peers(&store) {
                Ok(p) => {
                    tracing::info!(peers = p.len(), "wireguard peers reloaded");
                    handle.set_peers(p);
                }
                Err(e) => tracing::error!(error = %e, "wireguard peers could not be read"),
            },
            _ = tick.tick() => {
                let now = handle.stats();
                metrics.observe_wireguard(&last, &now);
                last = now;
            }
            _ = shutdown.recv() => return,
        }
    }
}
