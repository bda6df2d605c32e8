//! Open connections per terminal credential (`[limits] max_connections_per_terminal`), across
//! every listener and the WireGuard tunnel: one terminal cannot hold all the connections.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// The count of open connections per terminal credential (registry key).
#[derive(Debug, Default)]
pub struct TerminalConns {
    open: Mutex<HashMap<String, usize>>,
}

/// One open connection of a terminal; dropping it gives the place back.
#[derive(Debug)]
pub struct TerminalSlot {
    conns: Arc<TerminalConns>,
    fingerprint: String,
}

impl TerminalConns {
    /// Counts a new connection of `fingerprint`, or `None` when it already has `max` open.
    pub fn try_open(self: &Arc<Self>, fingerprint: &str, max: usize) -> Option<TerminalSlot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(fingerprint.to_string()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(TerminalSlot {
            conns: self.clone(),
            fingerprint: fingerprint.to_string(),
        })
    }
}

impl Drop for TerminalSlot {
    fn drop(&mut self) {
        let mut open = self
            .conns
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.fingerprint) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.fingerprint);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_terminal_gets_at_most_max_and_a_dropped_slot_comes_back() {
        let conns = Arc::new(TerminalConns::default());
        let a = conns.try_open("fp", 2);
        let b = conns.try_open("fp", 2);
        assert!(a.is_some() && b.is_some());
        assert!(conns.try_open("fp", 2).is_none());
        assert!(conns.try_open("other", 2).is_some());
        drop(a);
        assert!(conns.try_open("fp", 2).is_some());
    }
}
