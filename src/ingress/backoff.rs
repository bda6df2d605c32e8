//! Backing off after a failed `accept`: when the process runs out of file descriptors
//! (`EMFILE`, `ENFILE`) or the kernel of buffers (`ENOBUFS`, `ENOMEM`), `accept` fails at once
//! and keeps failing until connections close. An accept loop that retries at once spins a core
//! and floods the log; one that waits a fixed time either spins or recovers slowly.
//! [`AcceptBackoff`] waits 5 ms after the first failure, doubles the wait after each further
//! one up to 1 s, and starts again at 5 ms after the next success.
//!
//! ```ignore
//! let mut backoff = AcceptBackoff::new();
//! loop {
//!     match socket.accept().await {
//!         Ok(conn) => { backoff.succeeded(); /* serve conn */ }
//!         Err(e) => {
//!             tracing::warn!(error = %e, "accept failed");
//!             backoff.failed().await;
//!         }
//!     }
//! }
//! ```

use std::time::Duration;

/// The first wait after a failed accept.
pub const FIRST: Duration = Duration::from_millis(5);
/// The longest wait between two accepts.
pub const MAX: Duration = Duration::from_secs(1);

/// Exponential backoff of one accept loop: [`FIRST`] doubling up to [`MAX`], reset by a
/// success.
#[derive(Debug, Clone)]
pub struct AcceptBackoff {
    next: Duration,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        AcceptBackoff::new()
    }
}

impl AcceptBackoff {
    pub const fn new() -> AcceptBackoff {
        AcceptBackoff { next: FIRST }
    }

    /// An accept succeeded: the next failure waits [`FIRST`] again.
    pub fn succeeded(&mut self) {
        self.next = FIRST;
    }

    /// An accept failed: how long to wait now (and the next wait doubles, up to [`MAX`]).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(MAX);
        d
    }

    /// An accept failed: waits [`AcceptBackoff::next_delay`].
    pub async fn failed(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }
}

/// The wait after an accept error, for loops that keep the state beside their socket:
/// `Ok` resets `backoff`, `Err` sleeps (see [`AcceptBackoff`]). Gives back the accepted value.
pub async fn accept_backoff<T, E: std::fmt::Display>(
    backoff: &mut AcceptBackoff,
    accepted: Result<T, E>,
) -> Option<T> {
    match accepted {
        Ok(v) => {
            backoff.succeeded();
            Some(v)
        }
        Err(e) => {
            tracing::warn!(error = %e, "accept failed");
            backoff.failed().await;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_5ms_to_1s_and_resets_on_success() {
        let mut b = AcceptBackoff::new();
        let waits: Vec<u64> = (0..10)
            .map(|_| u64::try_from(b.next_delay().as_millis()).unwrap_or(u64::MAX))
            .collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.succeeded();
        assert_eq!(b.next_delay(), FIRST);
        assert_eq!(b.next_delay(), Duration::from_millis(10));
    }

    #[tokio::test]
    async fn accept_backoff_sleeps_on_errors_only() {
        let mut b = AcceptBackoff::new();
        let start = tokio::time::Instant::now();
        assert_eq!(accept_backoff(&mut b, Ok::<_, String>(7)).await, Some(7));
        assert!(start.elapsed() < FIRST, "no wait after a success");
        for _ in 0..3 {
            assert_eq!(accept_backoff(&mut b, Err::<u8, _>("EMFILE")).await, None);
        }
        // 5 + 10 + 20 ms
        assert!(start.elapsed() >= Duration::from_millis(35));
        assert_eq!(accept_backoff(&mut b, Ok::<_, String>(1)).await, Some(1));
        assert_eq!(b.next_delay(), FIRST);
    }
}
