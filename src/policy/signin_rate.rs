//! Sign-in attempts per terminal (issue 11 item 6): each terminal credential may try a
//! password (`POST /.seibo/login`, the current password on `POST /.seibo/password`) at most
//! `[auth] signin_attempts_per_minute` times a minute, with a burst of as many. Beyond that the
//! attempt gets the 429 page before its form is read or any hash runs, and it does not count
//! towards the account's lockout (a flood from one terminal can neither burn the CPU nor the
//! memory of Argon2, nor another terminal's attempts).
//!
//! The limiter is governor's keyed GCRA. Only registered terminals reach the sign-in pages, so
//! the keys are bounded by the registry; the state is in memory and starts afresh on restart
//! and on reload.

use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// The default of `[auth] signin_attempts_per_minute`.
pub const DEFAULT_PER_MINUTE: u32 = 20;
/// The largest value `check-config` accepts.
pub const MAX_PER_MINUTE: u32 = 6000;

/// The per-terminal limiter.
#[derive(Debug)]
pub struct SigninRate {
    limiter: DefaultKeyedRateLimiter<String>,
    per_minute: NonZeroU32,
}

impl SigninRate {
    /// `per_minute` attempts a minute per terminal, with a burst of as many (0 is read as 1:
    /// `check-config` refuses it).
    pub fn per_minute(per_minute: u32) -> SigninRate {
        let per_minute = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        SigninRate {
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute)),
            per_minute,
        }
    }

    /// True when the terminal `fingerprint` may try a password now (and counts the try).
    pub fn allow(&self, fingerprint: &str) -> bool {
        let key = fingerprint.to_string();
        let ok = self.limiter.check_key(&key).is_ok();
        // Forget terminals whose bucket is full again, now and then (bounded memory).
        if self.limiter.len() > 1024 {
            self.limiter.retain_recent();
        }
        ok
    }

    /// Seconds until a refused terminal may expect its next try (for `Retry-After`).
    pub fn retry_after_secs(&self) -> u64 {
        60u64.div_ceil(u64::from(self.per_minute.get())).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_refusals_per_terminal() {
        let r = SigninRate::per_minute(3);
        assert!((0..3).all(|_| r.allow("aa")));
        assert!(!r.allow("aa"), "the fourth try within the minute");
        assert!(r.allow("bb"), "another terminal has its own budget");
        assert_eq!(r.retry_after_secs(), 20);
        assert_eq!(SigninRate::per_minute(6000).retry_after_secs(), 1);
    }
}
