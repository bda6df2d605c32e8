//! The handshake budget (issue 11 item 7): connections that have not yet proved who they are
//! get their own, smaller budget, apart from the `max_connections` slots that only a completed,
//! verified handshake takes.
//!
//! A budget that simply refused new connections when full would be the old lock-out again,
//! only smaller: a flood of idle or stalled connections would fill it and keep registered
//! terminals out. So the budget never refuses the newcomer: when it is full, the **oldest**
//! pending handshake is dropped to make room, and when one source address (an IPv6 /64 counts
//! as one) already has `max_handshakes_per_source` pending, that source's own oldest is dropped.
//! An honest handshake lasts milliseconds; to push it out an attacker must open
//! `max_handshakes` connections (from `max_handshakes / max_handshakes_per_source` sources)
//! within those milliseconds. The handshake timeout still ends every pending handshake.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

/// The source a handshake is counted under: the IPv4 address, or the IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceKey(IpAddr);

impl SourceKey {
    pub fn of(ip: IpAddr) -> SourceKey {
        match crate::site::config::canonical_ip(ip) {
            IpAddr::V6(v6) => {
                let s = v6.segments();
                SourceKey(IpAddr::V6(std::net::Ipv6Addr::new(
                    s[0], s[1], s[2], s[3], 0, 0, 0, 0,
                )))
            }
            v4 => SourceKey(v4),
        }
    }

    pub fn ip(self) -> IpAddr {
        self.0
    }
}

/// Handshakes in progress across all listeners and the WireGuard tunnel.
#[derive(Debug)]
pub struct HandshakeBudget {
    max: usize,
    per_source: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    /// Pending handshakes, oldest first (ids only grow).
    pending: BTreeMap<u64, Pending>,
    /// Each source's pending ids, oldest first.
    by_source: HashMap<SourceKey, VecDeque<u64>>,
}

#[derive(Debug)]
struct Pending {
    source: SourceKey,
    evict: oneshot::Sender<()>,
}

/// One pending handshake's place in the budget; dropping it (handshake done or failed) gives
/// the place back. [`Ticket::evicted`] resolves when the budget took the place for a newer one.
#[derive(Debug)]
pub struct Ticket {
    budget: Arc<HandshakeBudget>,
    id: u64,
    evicted: oneshot::Receiver<()>,
}

impl HandshakeBudget {
    pub fn new(max: usize, per_source: usize) -> HandshakeBudget {
        HandshakeBudget {
            max: max.max(1),
            per_source: per_source.max(1),
            state: Mutex::default(),
        }
    }

    /// Takes a place for a new connection from `source`, dropping the source's oldest
    /// pending handshake, else the oldest of all, when there is no room. Never refuses.
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Ticket {
        let source = SourceKey::of(source);
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let own = st.by_source.get(&source).map_or(0, VecDeque::len);
        if own >= self.per_source {
            if let Some(oldest) = st.by_source.get(&source).and_then(|q| q.front().copied()) {
                st.evict(oldest);
            }
        }
        while st.pending.len() >= self.max {
            let Some(oldest) = st.pending.keys().next().copied() else {
                break;
            };
            st.evict(oldest);
        }
        let id = st.next_id;
        st.next_id += 1;
        let (tx, rx) = oneshot::channel();
        st.pending.insert(id, Pending { source, evict: tx });
        st.by_source.entry(source).or_default().push_back(id);
        Ticket {
            budget: self.clone(),
            id,
            evicted: rx,
        }
    }

    /// Handshakes pending now.
    pub fn pending(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pending
            .len()
    }
}

impl State {
    /// Removes `id` from the budget; `signal`: tell its task it was dropped for a newer one.
    fn remove(&mut self, id: u64) -> Option<Pending> {
        let p = self.pending.remove(&id)?;
        if let Some(q) = self.by_source.get_mut(&p.source) {
            q.retain(|&x| x != id);
            if q.is_empty() {
                self.by_source.remove(&p.source);
            }
        }
        Some(p)
    }

    fn evict(&mut self, id: u64) {
        if let Some(p) = self.remove(id) {
            // Its task may be finishing at this very moment; then there is no one to tell.
            let _ = p.evict.send(());
        }
    }
}

impl Ticket {
    /// Resolves when this handshake was dropped from the budget for a newer connection.
    pub async fn evicted(&mut self) {
        // A dropped sender also means the place is gone (it is only dropped by eviction).
        let _ = (&mut self.evicted).await;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut st = self
            .budget
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        st.remove(self.id);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    async fn is_evicted(t: &mut Ticket) -> bool {
        tokio::time::timeout(Duration::from_millis(20), t.evicted())
            .await
            .is_ok()
    }

    /// Item 7: a full budget drops its oldest pending handshake, never the newcomer.
    #[tokio::test]
    async fn full_budget_drops_the_oldest_pending_handshake() {
        let b = Arc::new(HandshakeBudget::new(3, 3));
        let mut t: Vec<Ticket> = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
            .iter()
            .map(|s| b.admit(ip(s)))
            .collect();
        assert_eq!(b.pending(), 3);
        let mut newest = b.admit(ip("10.0.0.4"));
        assert!(is_evicted(&mut t[0]).await, "the oldest is dropped");
        assert!(!is_evicted(&mut t[1]).await);
        assert!(!is_evicted(&mut t[2]).await);
        assert!(
            !is_evicted(&mut newest).await,
            "the newcomer keeps its place"
        );
        assert_eq!(b.pending(), 3);
        drop(t);
        assert_eq!(b.pending(), 1, "finished handshakes give their place back");
    }

    /// Item 7: one source cannot hold more than its share; beyond it, its own oldest goes
    /// (not another source's).
    #[tokio::test]
    async fn a_source_beyond_its_share_drops_its_own_oldest() {
        let b = Arc::new(HandshakeBudget::new(10, 2));
        let mut other = b.admit(ip("10.0.0.9"));
        let mut a1 = b.admit(ip("2001:db8::1"));
        let mut a2 = b.admit(ip("2001:db8::2")); // same /64
        let mut a3 = b.admit(ip("2001:db8::3"));
        assert!(is_evicted(&mut a1).await);
        assert!(!is_evicted(&mut a2).await);
        assert!(!is_evicted(&mut a3).await);
        assert!(
            !is_evicted(&mut other).await,
            "another source is not touched"
        );
        assert_eq!(b.pending(), 3);
    }
}
