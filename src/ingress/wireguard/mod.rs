//! WireGuard ingress: terminals reach the gateway through a userspace WireGuard tunnel.
//!
//! No kernel module, no TUN device, no root: one UDP socket, one boringtun [`Tunn`] per
//! registered peer, and a smoltcp TCP/IP stack that turns the decrypted packets into TCP
//! connections, handed out as [`WgStream`]s that carry the peer's identity.
//!
//! ## Packet path
//!
//! ```text
//!            ┌──────────── tunnel.rs ─────────────┐       ┌──── stack.rs ────┐
//! UDP in ──▶ │ which peer? (handshake: static key,│ IPv4  │ smoltcp: backlog │ accept ──▶ WgStream
//!            │ else receiver index) → decapsulate │ ────▶ │ of listeners,    │           (stream.rs)
//!            │ → source = peer's tunnel IP?       │       │ TCP state, cubic │
//!            │ → destination = our address:port?  │       │                  │
//! UDP out ◀──│ encapsulate ◀── route by dest. IP  │ ◀──── │ egress segments  │
//!            └────────────────────────────────────┘       └──────────────────┘
//! ```
//!
//! One packet loop (`tunnel.rs`, `net_task`) does all of it in turns: drain up to 64 datagrams
//! from the socket, decrypt and filter them, run smoltcp over them under the stack's mutex (which
//! streams also take for their reads and writes), then encrypt what the stack produced and send
//! it in GSO runs, one `sendmsg` per run of datagrams to one peer (`udp.rs`). A timer task drives
//! WireGuard's timers. Nothing sends UDP or hands a stream out while holding the stack's lock.
//! The only inbound queue is the (large) kernel socket buffer: while the loop is busy, datagrams
//! wait there.
//!
//! The gateway is not a router: a decrypted packet is delivered only if its source is the peer's
//! own tunnel address and its destination is TCP to [`WgConfig::address`] on one of
//! [`WgConfig::ports`]. Everything else is dropped and counted in [`WgStats`].

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use base64::Engine as _;
use boringtun::x25519::{PublicKey, StaticSecret};

pub(crate) mod conf;
mod filter;
mod stack;
mod stream;
mod tunnel;
mod udp;

pub use stream::WgStream;

/// The tunnel's configuration, fixed for the tunnel's life.
#[derive(Clone)]
pub struct WgConfig {
    /// Where the UDP socket binds.
    pub listen: SocketAddr,
    /// The gateway's static private key.
    pub private_key: [u8; 32],
    /// The gateway's own address inside the tunnel, e.g. `10.77.0.1`.
    pub address: Ipv4Addr,
    /// TCP ports that answer on [`WgConfig::address`], e.g. `[443]`.
    pub ports: Vec<u16>,
}

impl std::fmt::Debug for WgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgConfig")
            .field("listen", &self.listen)
            .field("private_key", &"MASKED")
            .field("address", &self.address)
            .field("ports", &self.ports)
            .finish()
    }
}

/// A registered terminal: its static public key, and the one tunnel address it may speak from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WgPeer {
    pub public_key: [u8; 32],
    pub tunnel_ip: Ipv4Addr,
    pub name: String,
}

/// Counters since start; `peers`, `peers_up` and `connections_open` are current values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WgStats {
    /// Handshakes completed (initiations from registered peers answered).
    pub handshakes: u64,
    /// Registered peers.
    pub peers: usize,
    /// Peers with a session younger than WireGuard's reject-after time (180 s).
    pub peers_up: usize,
    /// Bytes of authenticated datagrams received from peers.
    pub rx_bytes: u64,
    /// Bytes of datagrams sent to peers.
    pub tx_bytes: u64,
    /// TCP connections handed out.
    pub connections_accepted: u64,
    /// TCP connections currently open (handed out and not yet closed).
    pub connections_open: usize,
    /// Handshake initiations from a key that is not registered (dropped silently).
    pub dropped_unknown_key: u64,
    /// Datagrams naming a receiver index of no current peer (e.g. a revoked one).
    pub dropped_unknown_index: u64,
    /// Decrypted packets whose source is not the peer's own tunnel address.
    pub dropped_wrong_source: u64,
    /// Decrypted packets for anything other than TCP to our address and ports.
    pub dropped_wrong_destination: u64,
    /// Datagrams or packets that failed to parse, authenticate or decrypt.
    pub dropped_invalid: u64,
    /// Connections reset because the accept queue was full or the peer had too many.
    pub dropped_connections: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum WgError {
    #[error("cannot bind the WireGuard UDP socket on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid WireGuard key: {0}")]
    InvalidKey(&'static str),
    #[error("the tunnel serves no TCP port")]
    NoPorts,
}

/// Controls a running tunnel. Dropping the last handle stops the tunnel's tasks (open streams
/// then fail).
#[derive(Clone)]
pub struct WgHandle {
    shared: Arc<tunnel::Shared>,
    _tasks: Arc<tunnel::Tasks>,
}

impl WgHandle {
    /// Replaces the peer set (e.g. after a terminal is added or revoked).
    ///
    /// Peers kept with the same key and tunnel address keep their session. A removed peer's tunnel
    /// state is dropped at once (its next datagram is ignored), its open TCP connections are reset
    /// (an RST goes out through its old session) and their [`WgStream`]s return errors.
    /// A peer whose key or tunnel address repeats an earlier entry is ignored (logged).
    pub fn set_peers(&self, peers: Vec<WgPeer>) {
        tunnel::set_peers(&self.shared, peers);
    }

    /// The tunnel's counters.
    pub fn stats(&self) -> WgStats {
        tunnel::stats(&self.shared)
    }

    /// The gateway's public key (for a terminal's configuration).
    pub fn public_key(&self) -> [u8; 32] {
        self.shared.public.to_bytes()
    }

    /// The bound UDP address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }
}

/// Binds the UDP socket and starts the tasks; returns the handle and a receiver of accepted TCP
/// connections. Must be called inside a tokio runtime.
pub async fn start(
    cfg: WgConfig,
    peers: Vec<WgPeer>,
) -> Result<(WgHandle, tokio::sync::mpsc::Receiver<WgStream>), WgError> {
    let (shared, tasks, accepted) = tunnel::start(cfg, peers)?;
    Ok((
        WgHandle {
            shared,
            _tasks: Arc::new(tasks),
        },
        accepted,
    ))
}

/// A fresh key pair, clamped like `wg genkey`.
pub fn generate_keypair() -> ([u8; 32], [u8; 32]) {
    let mut private: [u8; 32] = rand::random();
    private[0] &= 248;
    private[31] &= 127;
    private[31] |= 64;
    let public = PublicKey::from(&StaticSecret::from(private)).to_bytes();
    (private, public)
}

/// The public key belonging to a private key.
pub fn public_key_of(private: &[u8; 32]) -> [u8; 32] {
    PublicKey::from(&StaticSecret::from(*private)).to_bytes()
}

/// Standard base64 with padding, as `wg` prints keys.
pub fn key_to_base64(k: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(k)
}

pub fn key_from_base64(s: &str) -> Result<[u8; 32], WgError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|_| WgError::InvalidKey("not base64"))?;
    bytes
        .try_into()
        .map_err(|_| WgError::InvalidKey("not 32 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_base64() {
        let (private, public) = generate_keypair();
        assert_eq!(
            key_from_base64(&key_to_base64(&private)).ok(),
            Some(private)
        );
        assert_eq!(key_to_base64(&public).len(), 44);
        assert_eq!(public_key_of(&private), public);
        assert!(key_from_base64("AAAA").is_err());
        assert!(key_from_base64("not base64!").is_err());
    }

    #[test]
    fn a_known_key_pair_matches_wg_pubkey() {
        // `echo yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk= | wg pubkey`
        let private = key_from_base64("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=").ok();
        let public = private.map(|p| key_to_base64(&public_key_of(&p)));
        assert_eq!(
            public.as_deref(),
            Some("HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=")
        );
    }
}

#[cfg(test)]
mod loopback_tests {
    //! The UDP side in process, with boringtun as the client: no root, no namespaces.
    use super::*;
    use boringtun::noise::{Tunn, TunnResult};
    use std::time::Duration;
    use tokio::net::UdpSocket;

    async fn server(peers: Vec<WgPeer>) -> (WgHandle, [u8; 32]) {
        let (private, public) = generate_keypair();
        let cfg = WgConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            private_key: private,
            address: Ipv4Addr::new(10, 77, 0, 1),
            ports: vec![443],
        };
        let (handle, _accepted) = start(cfg, peers).await.expect("start");
        (handle, public)
    }

    fn initiation(client_private: [u8; 32], server_public: [u8; 32]) -> Vec<u8> {
        let mut tunn = Tunn::new(
            StaticSecret::from(client_private),
            PublicKey::from(server_public),
            None,
            None,
            7,
            None,
        );
        let mut out = vec![0u8; 2048];
        match tunn.format_handshake_initiation(&mut out, false) {
            TunnResult::WriteToNetwork(p) => p.to_vec(),
            _ => panic!("no initiation"),
        }
    }

    async fn reply(sock: &UdpSocket) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 2048];
        match tokio::time::timeout(Duration::from_millis(500), sock.recv(&mut buf)).await {
            Ok(Ok(n)) => Some(buf[..n].to_vec()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn registered_keys_get_a_handshake_and_unknown_keys_get_silence() {
        let (alice_private, alice_public) = generate_keypair();
        let alice = WgPeer {
            public_key: alice_public,
            tunnel_ip: Ipv4Addr::new(10, 77, 0, 2),
            name: "alice".into(),
        };
        let (handle, server_public) = server(vec![alice]).await;
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        sock.connect(handle.local_addr()).await.expect("connect");

        let (stranger_private, _) = generate_keypair();
        sock.send(&initiation(stranger_private, server_public))
            .await
            .expect("send");
        assert_eq!(reply(&sock).await, None, "an unknown key got an answer");
        assert_eq!(handle.stats().dropped_unknown_key, 1);

        sock.send(&initiation(alice_private, server_public))
            .await
            .expect("send");
        let response = reply(&sock).await.expect("no handshake response");
        assert_eq!((response.len(), response[0]), (92, 2));
        assert_eq!(handle.stats().handshakes, 1);

        // Revoked: the same key now gets silence.
        handle.set_peers(Vec::new());
        sock.send(&initiation(alice_private, server_public))
            .await
            .expect("send");
        assert_eq!(reply(&sock).await, None, "a removed key got an answer");
        assert_eq!(handle.stats().peers, 0);
    }

    #[tokio::test]
    async fn garbage_datagrams_are_dropped_without_harm() {
        let (_, peer_public) = generate_keypair();
        let peer = WgPeer {
            public_key: peer_public,
            tunnel_ip: Ipv4Addr::new(10, 77, 0, 2),
            name: "p".into(),
        };
        let (handle, _) = server(vec![peer]).await;
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        sock.connect(handle.local_addr()).await.expect("connect");
        for i in 0..2000usize {
            let len = [0, 1, 3, 4, 31, 32, 33, 64, 92, 147, 148, 149, 1500][i % 13];
            let mut d: Vec<u8> = (0..len).map(|_| rand::random()).collect();
            if let Some(first) = d.first_mut() {
                *first = (i % 5) as u8; // message types 0..=4, reserved bytes random
            }
            if d.len() >= 4 && i % 2 == 0 {
                d[1..4].fill(0);
            }
            sock.send(&d).await.expect("send");
        }
        assert_eq!(reply(&sock).await, None);
        let stats = handle.stats();
        assert!(
            stats.dropped_invalid + stats.dropped_unknown_index > 1000,
            "{stats:?}"
        );
        assert_eq!(stats.handshakes, 0);
    }
}
