//! One TCP connection through the tunnel, with the identity of the peer it came from.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use smoltcp::iface::SocketHandle;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::stack::{lock, StackShared};

/// An accepted TCP connection from a registered peer. Reads and writes go straight to the
/// connection's socket buffers in the tunnel's TCP stack.
///
/// Dropping it closes the connection (FIN), or resets it if unread data remains.
pub struct WgStream {
    stack: Arc<StackShared>,
    handle: SocketHandle,
    peer_key: [u8; 32],
    peer_name: String,
    remote: SocketAddr,
    local_port: u16,
    reset_on_drop: bool,
}

impl std::fmt::Debug for WgStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgStream")
            .field("peer", &self.peer_name)
            .field("remote", &self.remote)
            .field("local_port", &self.local_port)
            .finish()
    }
}

impl WgStream {
    pub(crate) fn new(
        stack: Arc<StackShared>,
        handle: SocketHandle,
        peer_key: [u8; 32],
        peer_name: String,
        remote: SocketAddr,
        local_port: u16,
    ) -> Self {
        Self {
            stack,
            handle,
            peer_key,
            peer_name,
            remote,
            local_port,
            reset_on_drop: false,
        }
    }

    /// The static public key of the peer this connection came through.
    pub fn peer_key(&self) -> [u8; 32] {
        self.peer_key
    }

    /// The registered name of that peer.
    pub fn peer_name(&self) -> &str {
        &self.peer_name
    }

    /// The client's tunnel address and port.
    pub fn remote(&self) -> SocketAddr {
        self.remote
    }

    /// The port it connected to (one of `WgConfig::ports`).
    pub fn local_port(&self) -> u16 {
        self.local_port
    }

    /// Drops the connection with an RST rather than a FIN.
    pub fn reset_on_drop(mut self) {
        self.reset_on_drop = true;
    }

    fn woke_stack<T>(&self, r: &Poll<std::io::Result<T>>) {
        if matches!(r, Poll::Ready(Ok(_))) {
            // A read opened the window, a write queued data: the stack has segments to send.
            self.stack.wake.notify_one();
        }
    }
}

impl AsyncRead for WgStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let r = lock(&self.stack.inner).read(self.handle, cx, buf);
        self.woke_stack(&r);
        r.map_ok(|_| ())
    }
}

impl AsyncWrite for WgStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = lock(&self.stack.inner).write(self.handle, cx, data);
        self.woke_stack(&r);
        r
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        lock(&self.stack.inner).flush(self.handle)
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        lock(&self.stack.inner).shutdown(self.handle);
        self.stack.wake.notify_one();
        Poll::Ready(Ok(()))
    }
}

impl Drop for WgStream {
    fn drop(&mut self) {
        lock(&self.stack.inner).release(self.handle, self.reset_on_drop);
        self.stack.wake.notify_one();
    }
}
