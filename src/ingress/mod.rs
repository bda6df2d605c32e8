//! Step 1 of the request path: the connection layer. Both ingresses — mutual TLS on the
//! site's listeners and TLS inside a registered terminal's WireGuard tunnel — end in one
//! identified connection ([`peer::Peer`]) served by the request service, with the same
//! handshake budget, connection slots, refusal audit and shutdown drain.
//!
//! * [`listener`]: the mutual-TLS accept loop and handshake (allow-list, handshake budget).
//! * [`wireguard`] and [`tunnel`]: the WireGuard ingress (boringtun + smoltcp) and the TLS
//!   inside it.
//! * [`connection`]: what both share: handshakes within the budget, connection refusals,
//!   serving an identified connection with HTTP/1.1 or HTTP/2.
//! * [`tls`]: the mutual-TLS server configuration and the peer certificate's identity.
//! * [`peer`]: the connection's identity (ingress, address, credential).
//! * [`peer_api`]: the read-only peer API other site gateways ask for audit rows (issue 14).
//! * [`handshake`], [`slots`], [`backoff`]: the handshake budget, connections per terminal,
//!   the accept loops' backoff.

pub(crate) mod backoff;
pub(crate) mod connection;
pub(crate) mod handshake;
pub(crate) mod listener;
pub(crate) mod peer;
pub mod peer_api;
pub(crate) mod slots;
pub(crate) mod tls;
pub(crate) mod tunnel;
pub mod wireguard;
