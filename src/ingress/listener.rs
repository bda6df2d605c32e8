//! Step 1 of the request path: accept, check the source address against the listener's
//! allow-list (art 12.4: anything else is closed before the handshake), complete the mutual-TLS
//! handshake (art 12.1, 12.3) within a time limit, and serve HTTP/1.1 or HTTP/2 on it with the
//! one request service, the peer's certificate as the connection's identity.
//!
//! Limits applied here (all from `[limits]`): the handshake timeout and the handshake budget
//! (`max_handshakes`, see [`crate::ingress::handshake`]), the request-head size and field count and the
//! HTTP/1 head read timeout (slowloris) via hyper, the idle timeout (no byte moved for
//! `idle_timeout`: closed gracefully), connections in total (a slot taken only once the
//! handshake is verified; closed without one) and per terminal credential (answered with a
//! 429 page, then closed).
//!
//! Every connection refused before a request (allow-list, handshake failure, timeout or
//! eviction, connection limits) is counted, logged at INFO and written to the audit as a
//! `connection` record, at the rate [`crate::audit::limiter`] allows (the rest summarised).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::gate::Gate;
use crate::ingress::backoff::{accept_backoff, AcceptBackoff};
use crate::ingress::connection::{
    budgeted, count_handshake, handshake_failure, refused_connection, serve_peer, Budgeted,
};
use crate::ingress::handshake::Ticket;
use crate::ingress::peer::{Ingress, Peer};
use crate::ingress::tls;
use crate::ops::shutdown::Shutdown;
use crate::site::config::{in_networks, Limits, Listener, ListenerKind};

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
        let mut backoff = AcceptBackoff::new();
        loop {
            let accepted = tokio::select! {
                a = self.socket.accept() => a,
                _ = shutdown.recv() => return,
            };
            // EMFILE and friends: back off (5 ms doubling to 1 s) instead of spinning.
            let Some((stream, addr)) = accept_backoff(&mut backoff, accepted).await else {
                continue;
            };
            let ingress = match self.config.kind {
                ListenerKind::Terminal => Ingress::Mtls,
                ListenerKind::SiteSystem => Ingress::Site,
            };
            if !in_networks(&self.config.allow, addr.ip()) {
                drop(stream);
                refused_connection(&gate, ingress, &name, addr, "source-not-allowed", None);
                continue;
            }
            // Only a verified handshake takes a connection slot (below); until then the
            // connection holds a place in the handshake budget, which never refuses a newcomer
            // but drops the oldest pending handshake (issue 11 item 7).
            let ticket = gate.handshakes.admit(addr.ip());
            let slots = self.slots.clone();
            let _ = stream.set_nodelay(true);
            let acceptor = TlsAcceptor::from(self.tls.load_full());
            let gate = gate.clone();
            let conn_shutdown = shutdown.clone();
            let name = name.clone();
            let handshake_timeout = self.limits.handshake_timeout;
            let gate_limits = self.limits.clone();
            let kind = self.config.kind;
            // An idle connection's memory (issue 6): the task holds only what is live now.
            // The handshake runs boxed, its locals end before the connection is served, and
            // the serving state is boxed per protocol (see `serve_peer`).
            tokio::spawn(async move {
                let (slot, serving) = {
                    let handshake = Box::pin(handshake(
                        acceptor,
                        stream,
                        addr,
                        kind,
                        &gate,
                        &name,
                        handshake_timeout,
                        ticket,
                    ));
                    let Some((peer, tls, http2)) = handshake.await else {
                        return;
                    };
                    let Ok(slot) = slots.try_acquire_owned() else {
                        refused_connection(
                            &gate,
                            peer.ingress,
                            &name,
                            addr,
                            "connection-limit",
                            Some(&peer.credential),
                        );
                        return;
                    };
                    let serving =
                        serve_peer(gate, peer, tls, http2, &gate_limits, &name, conn_shutdown);
                    (slot, serving)
                };
                serving.await;
                drop(slot);
            });
        }
    }
}

/// The mutual-TLS handshake within its time limit and its place in the handshake budget, and
/// the identity it proves; `None` (counted, logged and audited) when it fails.
#[allow(clippy::too_many_arguments)]
async fn handshake(
    acceptor: TlsAcceptor,
    stream: tokio::net::TcpStream,
    addr: std::net::SocketAddr,
    kind: ListenerKind,
    gate: &Gate,
    listener: &str,
    timeout: Duration,
    ticket: Ticket,
) -> Option<(
    Peer,
    tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    bool,
)> {
    let ingress = match kind {
        ListenerKind::Terminal => Ingress::Mtls,
        ListenerKind::SiteSystem => Ingress::Site,
    };
    let accepted = budgeted(gate, ticket, timeout, acceptor.accept(stream)).await;
    let refused = |reason: &'static str| {
        count_handshake(gate, listener, reason);
        refused_connection(gate, ingress, listener, addr, reason, None);
        None
    };
    let tls = match accepted {
        Budgeted::Evicted => return refused("evicted"),
        Budgeted::TimedOut => return refused("timeout"),
        Budgeted::Done(Err(e)) => {
            tracing::debug!(client = %addr, error = %e, "TLS handshake failed");
            return refused(handshake_failure(&e));
        }
        Budgeted::Done(Ok(s)) => s,
    };
    let Some(cert) = tls::peer_identity(tls.get_ref().1.peer_certificates()) else {
        return refused("no-client-certificate");
    };
    count_handshake(gate, listener, "ok");
    let peer = Peer {
        ingress,
        addr,
        credential: cert.into(),
    };
    let http2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    Some((peer, tls, http2))
}
