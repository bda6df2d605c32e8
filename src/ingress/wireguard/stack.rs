//! The TCP side: a smoltcp interface on a packet-queue device, a backlog of listening sockets,
//! and the task that polls it.
//!
//! The stack sits behind one mutex shared with the [`WgStream`]s, which read and write socket
//! buffers directly (one copy each way). The task never sends a packet or hands out a stream
//! while holding it: it collects them under the lock and acts after releasing it.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration as SmolDuration, Instant};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};
use tokio::io::ReadBuf;
use tokio::sync::Notify;

use super::WgPeer;
use super::WgStream;

/// What the stack needs to know of the registered peers: who owns a tunnel address. The
/// packet loop's peer table answers it; the stack knows nothing else of the tunnel.
pub(crate) trait PeerLookup {
    fn peer_at(&self, ip: Ipv4Addr) -> Option<WgPeer>;
}

/// WireGuard's usual tunnel MTU; MSS 1380.
const MTU: usize = 1420;
/// Listening sockets kept ready per port: a SYN that finds none is reset.
const BACKLOG: usize = 16;
/// All TCP sockets, listening ones included: beyond this, new SYNs are reset.
const MAX_SOCKETS: usize = 1024;
/// Connections one peer may hold open at once.
const MAX_CONNECTIONS_PER_PEER: usize = 256;
/// Per-socket buffers. The receive buffer is sized for a LAN/WAN link (bandwidth × delay:
/// 256 KiB ≈ 100 Mbit/s at 20 ms); smoltcp scales the advertised window to it.
const RX_BUFFER: usize = 256 << 10;
/// The send buffer bounds what one connection has in flight. smoltcp sends a whole window in
/// one burst (no pacing), and a burst larger than the client's UDP receive buffer (wireguard-go:
/// ~208 KiB by default) is dropped there, after which smoltcp's 1 s minimum RTO stalls the
/// transfer. Measured with bench/tunnel (50 MiB download, wireguard-go client, 2 rounds, load
/// 4–6): 256 KiB 12 MiB/s with ~100 client drops; 128 KiB 17–25 MiB/s with drops; 64 KiB
/// 48–52 MiB/s and 32 KiB 48–55 MiB/s, both without drops. 64 KiB keeps ~26 Mbit/s per
/// connection at 20 ms RTT.
const TX_BUFFER: usize = 64 << 10;
/// What all of one peer's connections may hold unacknowledged or unsent, together. The client's
/// UDP receive buffer does not grow with the number of its connections: four downloads with
/// TX_BUFFER each burst four times what one does into it, and the datagrams it drops cost
/// smoltcp a 1 s retransmission timeout each. Measured with bench/tunnel, four 25 MiB downloads
/// at once (wireguard-go client, load 6–7): ~120 client drops per run and 25–27 MiB/s together,
/// against 55–98 MiB/s for one download alone. Writers beyond the budget wait until
/// acknowledgements free room.
const PEER_SEND_BUDGET: usize = TX_BUFFER;
/// What one connection may always hold, whatever its peer's other connections hold: a stalled
/// connection (a client that stopped reading) cannot starve the peer's others.
const CONN_SEND_FLOOR: usize = 16 << 10;
/// An idle connection is probed every 20 s and aborted after 60 s of silence (dead peer).
const KEEP_ALIVE: SmolDuration = SmolDuration::from_secs(20);
const TIMEOUT: SmolDuration = SmolDuration::from_secs(60);
/// A connection whose stream is gone but whose peer never finishes closing is reset after this.
const ORPHAN_LINGER: SmolDuration = SmolDuration::from_secs(30);
/// Closed sockets kept (with their buffers) for reuse.
const SPARE: usize = 32;
/// Packets produced per poll before the packet loop encrypts and sends them.
const TX_BATCH: usize = 256;
/// Longest sleep of the poll loop (housekeeping of orphans).
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// A poisoned lock only means another task panicked mid-update; the data is still usable
/// (counters, tables replaced whole), so carry on rather than cascade the panic.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The stack and the signal that it has work (a stream read, wrote or closed).
pub(crate) struct StackShared {
    pub(crate) inner: Mutex<Stack>,
    pub(crate) wake: Notify,
}

impl StackShared {
    pub(crate) fn new(address: Ipv4Addr, ports: &[u16]) -> Self {
        Self {
            inner: Mutex::new(Stack::new(address, ports)),
            wake: Notify::new(),
        }
    }
}

/// An accepted connection.
pub(crate) struct Conn {
    peer_key: [u8; 32],
    peer_ip: Ipv4Addr,
    /// Reset by us (peer removed): the stream reports `ConnectionReset`.
    reset: bool,
    /// When the stream was dropped; the socket is then finishing its close.
    released_at: Option<Instant>,
}

pub(crate) struct Stack {
    iface: Interface,
    sockets: SocketSet<'static>,
    device: QueueDevice,
    address: Ipv4Addr,
    ports: Vec<u16>,
    /// Sockets in LISTEN, by port.
    listeners: Vec<(u16, SocketHandle)>,
    /// Sockets that left LISTEN (a SYN arrived) and are not established yet.
    pending: Vec<SocketHandle>,
    conns: HashMap<SocketHandle, Conn>,
    /// Streams waiting for their peer's send budget (see PEER_SEND_BUDGET), by peer address.
    budget_waiters: HashMap<SocketHandle, (Ipv4Addr, Waker)>,
    /// Closed sockets ready to listen again.
    spare: Vec<SocketHandle>,
}

/// What one poll produced, to act on after the lock is released.
pub(crate) struct Outcome {
    pub(crate) tx: Vec<Vec<u8>>,
    pub(crate) accepted: Vec<WgStream>,
    /// When to poll again at the latest.
    pub(crate) delay: Duration,
}

impl Stack {
    fn new(address: Ipv4Addr, ports: &[u16]) -> Self {
        let mut device = QueueDevice::default();
        let mut config = Config::new(HardwareAddress::Ip);
        // Initial sequence numbers and ports come from this seed: never the default 0.
        config.random_seed = rand::random();
        let mut iface = Interface::new(config, &mut device, Instant::now());
        iface.update_ip_addrs(|addrs| {
            // One address cannot overflow the address list.
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(address), 32));
        });
        // Every peer is "reachable" through the device; the packet loop routes by address.
        let _ = iface.routes_mut().add_default_ipv4_route(address);
        let mut stack = Self {
            iface,
            sockets: SocketSet::new(Vec::new()),
            device,
            address,
            ports: ports.to_vec(),
            listeners: Vec::new(),
            pending: Vec::new(),
            conns: HashMap::new(),
            budget_waiters: HashMap::new(),
            spare: Vec::new(),
        };
        stack.refill_backlog();
        stack
    }

    pub(crate) fn open_connections(&self) -> usize {
        self.conns
            .values()
            .filter(|c| c.released_at.is_none())
            .count()
    }

    /// Aborts (RST) the connections whose peer `removed(key, ip)` says is gone.
    pub(crate) fn reset_connections(&mut self, removed: impl Fn(&[u8; 32], Ipv4Addr) -> bool) {
        for (handle, conn) in &mut self.conns {
            if conn.released_at.is_none() && !conn.reset && removed(&conn.peer_key, conn.peer_ip) {
                conn.reset = true;
                self.sockets.get_mut::<tcp::Socket>(*handle).abort();
                // A writer waiting for send room learns of the reset now.
                if let Some((_, waker)) = self.budget_waiters.remove(handle) {
                    waker.wake();
                }
            }
        }
    }

    /// Runs the stack over `inbound` (drained), then egress and housekeeping.
    pub(crate) fn poll(
        &mut self,
        inbound: &mut Vec<Vec<u8>>,
        stack: &Arc<StackShared>,
        table: &dyn PeerLookup,
        dropped_connections: &AtomicU64,
    ) -> Outcome {
        let now = Instant::now();
        self.device.rx.extend(inbound.drain(..));
        while !self.device.rx.is_empty() {
            self.iface
                .poll_ingress_single(now, &mut self.device, &mut self.sockets);
            // A listener that took a SYN is no longer listening: keep the backlog full so the
            // next SYN (possibly in this very batch) finds one.
            self.refill_backlog();
        }
        let accepted = self.promote(stack, table, dropped_connections);
        while self.device.tx.len() < TX_BATCH {
            if let smoltcp::iface::PollResult::None =
                self.iface
                    .poll_egress(now, &mut self.device, &mut self.sockets)
            {
                break;
            }
        }
        self.housekeeping(now);
        self.wake_budget_waiters();
        self.refill_backlog();
        let delay = if self.device.tx.len() >= TX_BATCH {
            Duration::ZERO
        } else {
            self.iface
                .poll_delay(now, &self.sockets)
                .map(|d| Duration::from_micros(d.total_micros()))
                .unwrap_or(MAX_SLEEP)
                .min(MAX_SLEEP)
        };
        Outcome {
            tx: std::mem::take(&mut self.device.tx),
            accepted,
            delay,
        }
    }

    /// Bytes in the send buffers of `peer`'s open connections (unsent or unacknowledged).
    fn peer_queued(&self, peer: Ipv4Addr) -> usize {
        self.conns
            .iter()
            .filter(|(_, c)| c.peer_ip == peer && c.released_at.is_none())
            .map(|(h, _)| self.sockets.get::<tcp::Socket>(*h).send_queue())
            .sum()
    }

    /// How many more bytes `handle` may queue now: its peer's remaining budget, or its own
    /// floor, whichever is larger.
    fn send_room(&self, handle: SocketHandle, peer_queued: usize) -> usize {
        let own = self.sockets.get::<tcp::Socket>(handle).send_queue();
        PEER_SEND_BUDGET
            .saturating_sub(peer_queued)
            .max(CONN_SEND_FLOOR.saturating_sub(own))
    }

    /// Wakes the streams that have send room again (acknowledgements came in, or a connection
    /// of their peer went away).
    fn wake_budget_waiters(&mut self) {
        if self.budget_waiters.is_empty() {
            return;
        }
        let mut queued: HashMap<Ipv4Addr, usize> = HashMap::new();
        for (handle, (peer, waker)) in std::mem::take(&mut self.budget_waiters) {
            let q = *queued.entry(peer).or_insert_with(|| self.peer_queued(peer));
            if !self.conns.contains_key(&handle) || self.send_room(handle, q) > 0 {
                waker.wake();
            } else {
                self.budget_waiters.insert(handle, (peer, waker));
            }
        }
    }

    fn refill_backlog(&mut self) {
        let sockets = &self.sockets;
        let pending = &mut self.pending;
        self.listeners.retain(|(_, h)| {
            let listening = sockets.get::<tcp::Socket>(*h).is_listening();
            if !listening {
                pending.push(*h);
            }
            listening
        });
        for i in 0..self.ports.len() {
            let port = self.ports[i];
            let mut have = self.listeners.iter().filter(|(p, _)| *p == port).count();
            while have < BACKLOG {
                let in_use = self.sockets.iter().count() - self.spare.len();
                let handle = match self.spare.pop() {
                    Some(h) => h,
                    None if in_use < MAX_SOCKETS => self.sockets.add(new_socket()),
                    None => return, // full: SYNs beyond this are reset
                };
                let socket = self.sockets.get_mut::<tcp::Socket>(handle);
                if socket
                    .listen((IpAddress::Ipv4(self.address), port))
                    .is_err()
                {
                    // Cannot happen for a closed socket and a non-zero port; drop it anyway.
                    self.sockets.remove(handle);
                    return;
                }
                self.listeners.push((port, handle));
                have += 1;
            }
        }
    }

    /// Pending sockets that completed the handshake become streams; failed ones are recycled.
    fn promote(
        &mut self,
        stack: &Arc<StackShared>,
        table: &dyn PeerLookup,
        dropped_connections: &AtomicU64,
    ) -> Vec<WgStream> {
        let mut accepted = Vec::new();
        let mut i = 0;
        while i < self.pending.len() {
            let handle = self.pending[i];
            let socket = self.sockets.get_mut::<tcp::Socket>(handle);
            match socket.state() {
                // Handshake in progress, or an abort whose RST is still to go out.
                tcp::State::SynReceived => {
                    i += 1;
                    continue;
                }
                tcp::State::Closed if socket.remote_endpoint().is_some() => {
                    i += 1;
                    continue;
                }
                // An RST during the handshake returns a passive socket to LISTEN.
                tcp::State::Listen => {
                    let port = socket.listen_endpoint().port;
                    self.pending.swap_remove(i);
                    self.listeners.push((port, handle));
                    continue;
                }
                tcp::State::Closed | tcp::State::TimeWait => {
                    self.pending.swap_remove(i);
                    self.recycle(handle);
                    continue;
                }
                _ => {}
            }
            self.pending.swap_remove(i);
            let (Some(remote), Some(local)) = (socket.remote_endpoint(), socket.local_endpoint())
            else {
                socket.abort();
                self.pending.push(handle); // recycled once the RST is out
                continue;
            };
            let IpAddress::Ipv4(remote_ip) = remote.addr;
            let peer = table.peer_at(remote_ip);
            let held = self
                .conns
                .values()
                .filter(|c| c.peer_ip == remote_ip && c.released_at.is_none())
                .count();
            let Some(peer) = peer.filter(|_| held < MAX_CONNECTIONS_PER_PEER) else {
                // The peer was removed meanwhile, or holds too many connections.
                dropped_connections.fetch_add(1, Ordering::Relaxed);
                socket.abort();
                self.pending.push(handle);
                continue;
            };
            socket.set_nagle_enabled(false);
            self.conns.insert(
                handle,
                Conn {
                    peer_key: peer.public_key,
                    peer_ip: remote_ip,
                    reset: false,
                    released_at: None,
                },
            );
            accepted.push(WgStream::new(
                stack.clone(),
                handle,
                peer.public_key,
                peer.name,
                SocketAddr::from((remote_ip, remote.port)),
                local.port,
            ));
        }
        accepted
    }

    /// Frees the sockets of released streams once they are closed, and resets orphans.
    fn housekeeping(&mut self, now: Instant) {
        let mut done = Vec::new();
        for (handle, conn) in &self.conns {
            let Some(released) = conn.released_at else {
                continue;
            };
            let socket = self.sockets.get_mut::<tcp::Socket>(*handle);
            match socket.state() {
                // TIME-WAIT would hold 512 KiB of buffers for 10 s per connection; our sequence
                // numbers are random, so skip it.
                tcp::State::TimeWait => done.push(*handle),
                tcp::State::Closed if socket.remote_endpoint().is_none() => done.push(*handle),
                tcp::State::Closed => {} // RST still to go out
                _ if now - released > ORPHAN_LINGER => socket.abort(),
                _ => {}
            }
        }
        for handle in done {
            self.conns.remove(&handle);
            self.recycle(handle);
        }
    }

    fn recycle(&mut self, handle: SocketHandle) {
        if self.spare.len() < SPARE {
            self.spare.push(handle);
        } else {
            self.sockets.remove(handle);
        }
    }

    // --- used by WgStream, under the lock ---

    pub(crate) fn read(
        &mut self,
        handle: SocketHandle,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<usize>> {
        if self.conns.get(&handle).is_none_or(|c| c.reset) {
            return Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into()));
        }
        let socket = self.sockets.get_mut::<tcp::Socket>(handle);
        let mut total = 0;
        // The receive buffer is a ring: at most two contiguous pieces.
        while buf.remaining() > 0 {
            let got = socket.recv(|data| {
                let n = data.len().min(buf.remaining());
                buf.put_slice(&data[..n]);
                (n, n)
            });
            match got {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(tcp::RecvError::Finished) => return Poll::Ready(Ok(total)),
                Err(tcp::RecvError::InvalidState) if total > 0 => break,
                Err(tcp::RecvError::InvalidState) => {
                    return Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into()))
                }
            }
        }
        if total > 0 || buf.remaining() == 0 {
            Poll::Ready(Ok(total))
        } else {
            socket.register_recv_waker(cx.waker());
            Poll::Pending
        }
    }

    pub(crate) fn write(
        &mut self,
        handle: SocketHandle,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let peer = match self.conns.get(&handle) {
            Some(c) if !c.reset => c.peer_ip,
            _ => return Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into())),
        };
        let room = self.send_room(handle, self.peer_queued(peer));
        if room == 0 && !data.is_empty() {
            self.budget_waiters
                .insert(handle, (peer, cx.waker().clone()));
            return Poll::Pending;
        }
        let data = &data[..data.len().min(room)];
        let socket = self.sockets.get_mut::<tcp::Socket>(handle);
        match socket.send_slice(data) {
            Ok(0) if !data.is_empty() => {
                if !socket.may_send() {
                    return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
                }
                socket.register_send_waker(cx.waker());
                Poll::Pending
            }
            Ok(n) => Poll::Ready(Ok(n)),
            Err(tcp::SendError::InvalidState) => {
                let kind = if socket.state() == tcp::State::Closed {
                    std::io::ErrorKind::ConnectionReset
                } else {
                    std::io::ErrorKind::BrokenPipe
                };
                Poll::Ready(Err(kind.into()))
            }
        }
    }

    /// Written data is in the socket's buffer, owned by the stack, as with a kernel socket:
    /// nothing to wait for (waiting for acknowledgements would stall every response).
    pub(crate) fn flush(&mut self, handle: SocketHandle) -> Poll<std::io::Result<()>> {
        if self.conns.get(&handle).is_none_or(|c| c.reset) {
            return Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into()));
        }
        Poll::Ready(Ok(()))
    }

    pub(crate) fn shutdown(&mut self, handle: SocketHandle) {
        if self.conns.contains_key(&handle) {
            self.sockets.get_mut::<tcp::Socket>(handle).close();
        }
    }

    /// The stream is gone: close gracefully, or reset if unread data remains (as TCP stacks do)
    /// or `reset` is asked.
    pub(crate) fn release(&mut self, handle: SocketHandle, reset: bool) {
        let Some(conn) = self.conns.get_mut(&handle) else {
            return;
        };
        conn.released_at = Some(Instant::now());
        self.budget_waiters.remove(&handle);
        let socket = self.sockets.get_mut::<tcp::Socket>(handle);
        if reset || socket.recv_queue() > 0 {
            socket.abort();
        } else {
            socket.close();
        }
    }
}

fn new_socket() -> tcp::Socket<'static> {
    let mut socket = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0u8; RX_BUFFER]),
        tcp::SocketBuffer::new(vec![0u8; TX_BUFFER]),
    );
    // These survive `listen()`'s reset, so a recycled socket keeps them.
    socket.set_congestion_control(tcp::CongestionControl::Cubic);
    socket.set_keep_alive(Some(KEEP_ALIVE));
    socket.set_timeout(Some(TIMEOUT));
    socket.set_nagle_enabled(false);
    socket
}

/// A smoltcp device over two packet queues: inbound packets decrypted by the packet loop,
/// outbound packets for it to encrypt.
#[derive(Default)]
struct QueueDevice {
    rx: VecDeque<Vec<u8>>,
    tx: Vec<Vec<u8>>,
}

impl Device for QueueDevice {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let packet = self.rx.pop_front()?;
        Some((RxToken(packet), TxToken(&mut self.tx)))
    }

    fn transmit(&mut self, _: Instant) -> Option<Self::TxToken<'_>> {
        // A full batch pushes back on smoltcp, which retries at the next poll.
        (self.tx.len() < TX_BATCH).then_some(TxToken(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = MTU;
        caps
    }
}

struct RxToken(Vec<u8>);

impl smoltcp::phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

struct TxToken<'a>(&'a mut Vec<Vec<u8>>);

impl smoltcp::phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut packet = vec![0u8; len];
        let r = f(&mut packet);
        self.0.push(packet);
        r
    }
}
