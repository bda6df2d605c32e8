//! The WireGuard side: the UDP socket, the registered peers (one boringtun `Tunn` each), the
//! packet loop (identify, decrypt, filter → TCP stack → route, encrypt, send) and the timer task.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::filter::{self, Verdict};
use super::stack::{lock, PeerLookup, StackShared};
use super::udp::{Batch, Sender};
use super::{WgConfig, WgError, WgPeer, WgStats, WgStream};

/// Handshake initiations accepted per second before boringtun asks for cookies (each initiation
/// is counted twice: once by our check before the key lookup, once inside `decapsulate`).
const HANDSHAKE_RATE_LIMIT: u64 = 200;
/// Kernel buffers of the UDP socket: a dropped datagram costs smoltcp a 1 s retransmission
/// timeout, so let bursts queue (capped by `net.core.rmem_max` / `wmem_max`).
const UDP_BUFFER: usize = 4 << 20;
/// Largest datagram we read; WireGuard over a 1420-byte MTU needs 1452 bytes.
const MAX_DATAGRAM: usize = 65535;
/// Datagrams read per turn of the packet loop (the rest wait in the kernel's socket buffer).
const RX_DRAIN: usize = 64;
/// Accepted streams waiting for the application.
const ACCEPT_QUEUE: usize = 256;
/// How long a removed peer's session is kept, only to carry the RSTs of its connections.
const RETIRE_FOR: Duration = Duration::from_secs(5);
/// WireGuard's reject-after time: a peer with an older session is not "up".
const SESSION_LIFETIME: Duration = Duration::from_secs(180);

/// A registered peer and its tunnel state.
pub(crate) struct PeerSlot {
    pub(crate) peer: WgPeer,
    /// Our 24-bit index for this peer; the top 24 bits of every receiver index sent to us.
    index: u32,
    /// Shared with the slot that replaces this one when only the peer's name changes.
    tunn: Arc<Mutex<Tunn>>,
    /// Where the peer last sent an authenticated datagram from (WireGuard roaming).
    endpoint: Arc<Mutex<Option<SocketAddr>>>,
}

/// The current peers, looked up three ways; replaced whole by `set_peers`.
#[derive(Default)]
pub(crate) struct PeerTable {
    by_key: HashMap<[u8; 32], Arc<PeerSlot>>,
    by_index: HashMap<u32, Arc<PeerSlot>>,
    pub(crate) by_ip: HashMap<Ipv4Addr, Arc<PeerSlot>>,
}

impl PeerLookup for PeerTable {
    fn peer_at(&self, ip: Ipv4Addr) -> Option<WgPeer> {
        self.by_ip.get(&ip).map(|s| s.peer.clone())
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    handshakes: AtomicU64,
    rx_bytes: AtomicU64,
    tx_bytes: AtomicU64,
    pub(crate) connections_accepted: AtomicU64,
    dropped_unknown_key: AtomicU64,
    dropped_unknown_index: AtomicU64,
    dropped_wrong_source: AtomicU64,
    dropped_wrong_destination: AtomicU64,
    dropped_invalid: AtomicU64,
    pub(crate) dropped_connections: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// State shared by the tasks and the handle.
pub(crate) struct Shared {
    secret: StaticSecret,
    pub(crate) public: PublicKey,
    pub(crate) local_addr: SocketAddr,
    address: Ipv4Addr,
    ports: Vec<u16>,
    udp: Arc<UdpSocket>,
    /// One limiter for every peer: handshake initiations are counted before we know the peer.
    rate_limiter: Arc<RateLimiter>,
    peers: RwLock<Arc<PeerTable>>,
    /// Removed peers whose sessions still carry their connections' RSTs, with the removal time.
    retiring: Mutex<Vec<(Instant, Arc<PeerSlot>)>>,
    pub(crate) stack: Arc<StackShared>,
    pub(crate) counters: Counters,
}

impl Shared {
    pub(crate) fn peers(&self) -> Arc<PeerTable> {
        read(&self.peers).clone()
    }
}

/// The tunnel's tasks, aborted when the last handle goes.
pub(crate) struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn start(
    cfg: WgConfig,
    peers: Vec<WgPeer>,
) -> Result<(Arc<Shared>, Tasks, mpsc::Receiver<WgStream>), WgError> {
    if cfg.ports.is_empty() {
        return Err(WgError::NoPorts);
    }
    let udp = bind_udp(cfg.listen).map_err(|source| WgError::Bind {
        addr: cfg.listen,
        source,
    })?;
    let local_addr = udp.local_addr().map_err(|source| WgError::Bind {
        addr: cfg.listen,
        source,
    })?;
    let secret = StaticSecret::from(cfg.private_key);
    let public = PublicKey::from(&secret);
    let (accept_tx, accept_rx) = mpsc::channel(ACCEPT_QUEUE);
    let shared = Arc::new(Shared {
        rate_limiter: Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
        secret,
        public,
        local_addr,
        address: cfg.address,
        ports: cfg.ports.clone(),
        udp: Arc::new(udp),
        peers: RwLock::new(Arc::new(PeerTable::default())),
        retiring: Mutex::new(Vec::new()),
        stack: Arc::new(StackShared::new(cfg.address, &cfg.ports)),
        counters: Counters::default(),
    });
    set_peers(&shared, peers);
    tracing::info!(listen = %local_addr, address = %cfg.address, ports = ?cfg.ports, "WireGuard ingress up");
    let tasks = Tasks(vec![
        tokio::spawn(net_task(shared.clone(), accept_tx)),
        tokio::spawn(timer_task(shared.clone())),
    ]);
    Ok((shared, tasks, accept_rx))
}

fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: the kernel caps these at rmem_max / wmem_max.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    tracing::debug!(
        recv_buffer = socket.recv_buffer_size().unwrap_or(0),
        send_buffer = socket.send_buffer_size().unwrap_or(0),
        "WireGuard UDP socket buffers"
    );
    UdpSocket::from_std(socket.into())
}

/// Installs a new peer set; see [`super::WgHandle::set_peers`].
pub(crate) fn set_peers(shared: &Shared, peers: Vec<WgPeer>) {
    // The stack's lock is held across the swap, so no connection can be accepted under an
    // identity that is being removed (the stack reads the table under the same lock).
    let mut stack = lock(&shared.stack.inner);
    let old = shared.peers();
    let mut table = PeerTable::default();
    for peer in peers {
        if table.by_key.contains_key(&peer.public_key) || table.by_ip.contains_key(&peer.tunnel_ip)
        {
            tracing::warn!(peer = %peer.name, "WireGuard peer repeats a key or tunnel address; ignored");
            continue;
        }
        // A peer kept with the same key and address keeps its session and index.
        let slot = match old.by_key.get(&peer.public_key) {
            Some(slot) if slot.peer == peer => slot.clone(),
            Some(slot) if slot.peer.tunnel_ip == peer.tunnel_ip => Arc::new(PeerSlot {
                peer,
                index: slot.index,
                tunn: slot.tunn.clone(),
                endpoint: slot.endpoint.clone(),
            }),
            _ => {
                let index = fresh_index(&old, &table);
                Arc::new(PeerSlot {
                    tunn: Arc::new(Mutex::new(new_tunn(shared, &peer.public_key, index))),
                    peer,
                    index,
                    endpoint: Arc::new(Mutex::new(None)),
                })
            }
        };
        table.by_key.insert(slot.peer.public_key, slot.clone());
        table.by_index.insert(slot.index, slot.clone());
        table.by_ip.insert(slot.peer.tunnel_ip, slot);
    }
    let kept: HashSet<([u8; 32], Ipv4Addr)> = table
        .by_key
        .values()
        .map(|s| (s.peer.public_key, s.peer.tunnel_ip))
        .collect();
    let removed: Vec<Arc<PeerSlot>> = old
        .by_key
        .values()
        .filter(|s| !kept.contains(&(s.peer.public_key, s.peer.tunnel_ip)))
        .cloned()
        .collect();
    *write(&shared.peers) = Arc::new(table);
    if !removed.is_empty() {
        let now = Instant::now();
        let mut retiring = lock(&shared.retiring);
        retiring.retain(|(at, _)| now.duration_since(*at) < RETIRE_FOR);
        retiring.extend(removed.iter().map(|s| (now, s.clone())));
        for slot in &removed {
            tracing::info!(peer = %slot.peer.name, "WireGuard peer removed; its connections are reset");
        }
        stack.reset_connections(|key, ip| !kept.contains(&(*key, ip)));
    }
    drop(stack);
    shared.stack.wake.notify_one();
}

fn new_tunn(shared: &Shared, peer_key: &[u8; 32], index: u32) -> Tunn {
    Tunn::new(
        shared.secret.clone(),
        PublicKey::from(*peer_key),
        None,
        None,
        index,
        Some(shared.rate_limiter.clone()),
    )
}

/// A 24-bit index used by no current or retiring peer.
fn fresh_index(old: &PeerTable, new: &PeerTable) -> u32 {
    loop {
        let candidate = rand::random::<u32>() & 0x00ff_ffff;
        if !old.by_index.contains_key(&candidate) && !new.by_index.contains_key(&candidate) {
            return candidate;
        }
    }
}

pub(crate) fn stats(shared: &Shared) -> WgStats {
    let c = &shared.counters;
    let table = shared.peers();
    let peers_up = table
        .by_key
        .values()
        .filter(|s| matches!(lock(&s.tunn).stats().0, Some(age) if age < SESSION_LIFETIME))
        .count();
    WgStats {
        handshakes: c.handshakes.load(Ordering::Relaxed),
        peers: table.by_key.len(),
        peers_up,
        rx_bytes: c.rx_bytes.load(Ordering::Relaxed),
        tx_bytes: c.tx_bytes.load(Ordering::Relaxed),
        connections_accepted: c.connections_accepted.load(Ordering::Relaxed),
        connections_open: lock(&shared.stack.inner).open_connections(),
        dropped_unknown_key: c.dropped_unknown_key.load(Ordering::Relaxed),
        dropped_unknown_index: c.dropped_unknown_index.load(Ordering::Relaxed),
        dropped_wrong_source: c.dropped_wrong_source.load(Ordering::Relaxed),
        dropped_wrong_destination: c.dropped_wrong_destination.load(Ordering::Relaxed),
        dropped_invalid: c.dropped_invalid.load(Ordering::Relaxed),
        dropped_connections: c.dropped_connections.load(Ordering::Relaxed),
    }
}

/// The tunnel's one packet loop: read what the socket holds, decrypt and filter it, run the TCP
/// stack over it (under the stack's lock), then encrypt what the stack produced and send it in
/// GSO runs, and hand out accepted streams (after the lock is released). Woken by the socket, by
/// streams that read, wrote or closed, and by the stack's own timers.
///
/// One task, not a receive, a stack and an egress task joined by queues: every packet then
/// crossed two task hand-offs (wake-ups, channel sends, a `Vec` of packets per batch); merged,
/// the gateway's CPU per MiB through the tunnel fell by about a tenth (bench/tunnel). The
/// kernel's socket buffer is the only inbound queue: while the loop is busy, datagrams wait
/// there.
async fn net_task(shared: Arc<Shared>, accept: mpsc::Sender<WgStream>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut packets: Vec<Vec<u8>> = Vec::with_capacity(RX_DRAIN);
    let mut out = Batch::default();
    let sender = Sender::new();
    let mut sleep = Duration::ZERO;
    loop {
        tokio::select! {
            ready = shared.udp.readable() => {
                if let Err(e) = ready {
                    tracing::debug!(error = %e, "WireGuard UDP socket not readable");
                }
            }
            _ = shared.stack.wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
        // Drain what the kernel holds, up to RX_DRAIN datagrams; handshake replies go to `out`.
        for _ in 0..RX_DRAIN {
            match shared.udp.try_recv_from(&mut buf) {
                Ok((n, from)) => {
                    if let Some(packet) = handle_datagram(&shared, &buf[..n], from, &mut out) {
                        packets.push(packet);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // ICMP errors from earlier sends surface here on some systems; never fatal.
                Err(e) => tracing::debug!(error = %e, "WireGuard UDP receive error"),
            }
        }
        let table = shared.peers();
        let outcome = lock(&shared.stack.inner).poll(
            &mut packets,
            &shared.stack,
            table.as_ref(),
            &shared.counters.dropped_connections,
        );
        sleep = outcome.delay;
        for packet in &outcome.tx {
            encrypt(&shared, &table, packet, &mut out);
        }
        if !out.is_empty() {
            send(&shared, &sender, &out).await;
            out.clear();
        }
        hand_out(&shared, outcome.accepted, &accept);
    }
}

/// Hands accepted streams to the application; a full queue refuses (resets) them.
pub(crate) fn hand_out(shared: &Shared, accepted: Vec<WgStream>, accept: &mpsc::Sender<WgStream>) {
    for stream in accepted {
        match accept.try_send(stream) {
            Ok(()) => {
                shared
                    .counters
                    .connections_accepted
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                // The application is not keeping up (or is gone): refuse, don't queue.
                shared
                    .counters
                    .dropped_connections
                    .fetch_add(1, Ordering::Relaxed);
                e.into_inner().reset_on_drop();
            }
        }
    }
}

/// Encrypts one packet of the stack for the peer it is addressed to, at the end of `out`.
fn encrypt(shared: &Shared, table: &PeerTable, packet: &[u8], out: &mut Batch) {
    let Some(slot) = route(shared, table, packet) else {
        return;
    };
    let Some(to) = *lock(&slot.endpoint) else {
        return;
    };
    let mut tunn = lock(&slot.tunn);
    // boringtun's rule: room for the packet + 32 bytes, at least 148; it writes its output at
    // the start of the slice it is given.
    out.push_with(to, (packet.len() + 32).max(148), |dst| {
        match tunn.encapsulate(packet, dst) {
            TunnResult::WriteToNetwork(d) => Some(d.len()),
            TunnResult::Err(e) => {
                tracing::debug!(peer = %slot.peer.name, error = ?e, "WireGuard encapsulate failed");
                None
            }
            _ => None,
        }
    });
}

async fn send(shared: &Shared, sender: &Sender, batch: &Batch) {
    let n = sender.send(&shared.udp, batch).await;
    shared.counters.tx_bytes.fetch_add(n, Ordering::Relaxed);
}

/// One datagram: returns the decrypted packet for the stack, if any, and puts replies in `out`.
fn handle_datagram(
    shared: &Shared,
    datagram: &[u8],
    from: SocketAddr,
    out: &mut Batch,
) -> Option<Vec<u8>> {
    let c = &shared.counters;
    let table = shared.peers();
    let slot = match Tunn::parse_incoming_packet(datagram) {
        Err(_) => {
            bump(&c.dropped_invalid);
            return None;
        }
        Ok(Packet::HandshakeInit(_)) => {
            let mut cookie = [0u8; 64];
            let init =
                match shared
                    .rate_limiter
                    .verify_packet(Some(from.ip()), datagram, &mut cookie)
                {
                    Ok(Packet::HandshakeInit(init)) => init,
                    Err(TunnResult::WriteToNetwork(reply)) => {
                        // Under load: a cookie reply, as WireGuard does, before any key lookup.
                        out.push(from, reply);
                        return None;
                    }
                    _ => {
                        bump(&c.dropped_invalid);
                        return None;
                    }
                };
            let key = match parse_handshake_anon(&shared.secret, &shared.public, &init) {
                Ok(half) => half.peer_static_public,
                Err(_) => {
                    bump(&c.dropped_invalid);
                    return None;
                }
            };
            match table.by_key.get(&key) {
                Some(slot) => slot.clone(),
                None => {
                    bump(&c.dropped_unknown_key);
                    tracing::debug!(%from, "WireGuard handshake from an unregistered key dropped");
                    return None;
                }
            }
        }
        Ok(packet) => {
            let receiver = match packet {
                Packet::HandshakeResponse(p) => p.receiver_idx,
                Packet::PacketCookieReply(p) => p.receiver_idx,
                Packet::PacketData(p) => p.receiver_idx,
                Packet::HandshakeInit(_) => return None,
            };
            match table.by_index.get(&(receiver >> 8)) {
                Some(slot) => slot.clone(),
                None => {
                    bump(&c.dropped_unknown_index);
                    return None;
                }
            }
        }
    };
    decapsulate(shared, &slot, datagram, from, out)
}

/// Runs one authenticated-so-far datagram through the peer's `Tunn`.
fn decapsulate(
    shared: &Shared,
    slot: &PeerSlot,
    datagram: &[u8],
    from: SocketAddr,
    replies: &mut Batch,
) -> Option<Vec<u8>> {
    let c = &shared.counters;
    // boringtun's rule: dst ≥ src + 32 and ≥ 148 bytes, or it panics.
    let mut out = vec![0u8; (datagram.len() + 32).max(148)];
    let is_init = datagram.first() == Some(&1);
    let mut tunn = lock(&slot.tunn);
    let delivered = match tunn.decapsulate(Some(from.ip()), datagram, &mut out) {
        TunnResult::Done => None,
        TunnResult::Err(e) => {
            match e {
                // Replays and stale sessions happen on any real network.
                WireGuardError::DuplicateCounter | WireGuardError::NoCurrentSession => {}
                _ => {
                    tracing::debug!(peer = %slot.peer.name, error = ?e, "WireGuard datagram refused")
                }
            }
            bump(&c.dropped_invalid);
            return None;
        }
        TunnResult::WriteToNetwork(reply) => {
            replies.push(from, reply);
            // Flush packets queued while the handshake was in progress.
            let mut flush = vec![0u8; MAX_DATAGRAM + 32];
            while let TunnResult::WriteToNetwork(queued) = tunn.decapsulate(None, &[], &mut flush) {
                replies.push(from, queued);
            }
            if is_init {
                bump(&c.handshakes);
                tracing::debug!(peer = %slot.peer.name, %from, "WireGuard handshake");
            }
            None
        }
        TunnResult::WriteToTunnelV4(packet, _) => {
            let len = packet.len();
            match filter::inspect(packet, slot.peer.tunnel_ip, shared.address, &shared.ports) {
                Verdict::Deliver => {
                    out.truncate(len);
                    Some(out)
                }
                Verdict::DropWrongSource => {
                    bump(&c.dropped_wrong_source);
                    None
                }
                Verdict::DropWrongDestination => {
                    bump(&c.dropped_wrong_destination);
                    None
                }
                Verdict::DropMalformed => {
                    bump(&c.dropped_invalid);
                    None
                }
            }
        }
        TunnResult::WriteToTunnelV6(..) => {
            bump(&c.dropped_wrong_destination);
            None
        }
    };
    drop(tunn);
    // Only a datagram that authenticated reaches here: follow the peer if it roamed.
    *lock(&slot.endpoint) = Some(from);
    c.rx_bytes
        .fetch_add(datagram.len() as u64, Ordering::Relaxed);
    delivered
}

/// The peer an outgoing packet goes to: a current peer by tunnel address, else a removed one
/// (whose connections' RSTs are still leaving).
fn route(shared: &Shared, table: &PeerTable, packet: &[u8]) -> Option<Arc<PeerSlot>> {
    let dst = filter::destination(packet)?;
    if let Some(slot) = table.by_ip.get(&dst) {
        return Some(slot.clone());
    }
    lock(&shared.retiring)
        .iter()
        .rev()
        .find(|(_, s)| s.peer.tunnel_ip == dst)
        .map(|(_, s)| s.clone())
}

/// WireGuard's timers (rekey, keepalive, expiry) every 250 ms; the rate limiter every second.
async fn timer_task(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut out = vec![0u8; MAX_DATAGRAM + 32];
    let mut last_reset = Instant::now();
    let sender = Sender::new();
    let mut batch = Batch::default();
    loop {
        tick.tick().await;
        if last_reset.elapsed() >= Duration::from_secs(1) {
            shared.rate_limiter.reset_count();
            last_reset = Instant::now();
            let now = Instant::now();
            lock(&shared.retiring).retain(|(at, _)| now.duration_since(*at) < RETIRE_FOR);
        }
        let table = shared.peers();
        for slot in table.by_key.values() {
            let mut tunn = lock(&slot.tunn);
            match tunn.update_timers(&mut out) {
                TunnResult::WriteToNetwork(d) => {
                    if let Some(to) = *lock(&slot.endpoint) {
                        batch.push(to, d);
                    }
                }
                // Normal on a server: the peer went quiet and its session expired.
                TunnResult::Err(WireGuardError::ConnectionExpired) => {}
                TunnResult::Err(e) => {
                    tracing::debug!(peer = %slot.peer.name, error = ?e, "WireGuard timer error")
                }
                _ => {}
            }
        }
        if !batch.is_empty() {
            send(&shared, &sender, &batch).await;
            batch.clear();
        }
    }
}
