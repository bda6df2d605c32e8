//! The physician's second factor (art 6.3, 13.1; MHLW guideline: something the physician has —
//! the terminal's credential — and something they know — the password).
//!
//! Passwords are stored as Argon2id hashes (PHC strings). A one-time initial password is
//! generated for `physician add` and `physician passwd` and must be changed at first sign-in.
//! Wrong passwords are counted; after `max_failures` in a row the account is locked for a while.
//! Each try is counted before its password is checked ([`reserve_attempt`]), so concurrent
//! tries cannot share one count.

use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::Argon2;
use rand::Rng;
use time::{Duration, OffsetDateTime};

use crate::registry::model::{Physician, Staff};

/// An account whose wrong passwords are counted and locked (art 13.1): a physician, and a
/// liaison-office staff member (issue 15: "the same lockout counting as physicians").
pub trait Lockable {
    fn counts(&mut self) -> (&mut u32, &mut Option<String>);
    fn lock_text(&self) -> Option<&str>;
}

impl Lockable for Physician {
    fn counts(&mut self) -> (&mut u32, &mut Option<String>) {
        (&mut self.failed_logins, &mut self.locked_until)
    }
    fn lock_text(&self) -> Option<&str> {
        self.locked_until.as_deref()
    }
}

impl Lockable for Staff {
    fn counts(&mut self) -> (&mut u32, &mut Option<String>) {
        (&mut self.failed_logins, &mut self.locked_until)
    }
    fn lock_text(&self) -> Option<&str> {
        self.locked_until.as_deref()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// Hashes a password with Argon2id (the crate's defaults: m = 19 MiB, t = 2, p = 1).
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    let salt = SaltString::encode_b64(&rand::rng().random::<[u8; 16]>())
        .map_err(|e| AuthError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

/// True when `password` matches the stored hash; a malformed hash never matches. For tests:
/// the request path checks passwords on the bounded pool ([`crate::policy::hashing`]).
#[cfg(test)]
pub(crate) fn verify_password(password: &str, hash: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    match PasswordHash::new(hash) {
        Ok(h) => Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

/// A one-time password: 16 characters from an alphabet without look-alikes.
pub fn generate_password() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghjkmnpqrstuvwxyz23456789";
    let mut rng = rand::rng();
    (0..16)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Why a new password is not accepted.
pub fn password_policy(id: &str, current: &str, new: &str) -> Result<(), &'static str> {
    let chars = new.chars().count();
    if chars < 10 {
        return Err("at least 10 characters / 10文字以上にしてください");
    }
    if chars > 128 {
        return Err("at most 128 characters / 128文字以内にしてください");
    }
    if new == current {
        return Err(
            "must differ from the current password / 現在のパスワードと異なるものにしてください",
        );
    }
    if new.to_lowercase().contains(&id.to_lowercase()) {
        return Err("must not contain your ID / IDを含めないでください");
    }
    let classes = [
        new.chars().any(|c| c.is_ascii_lowercase()),
        new.chars().any(|c| c.is_ascii_uppercase()),
        new.chars().any(|c| c.is_ascii_digit()),
        new.chars().any(|c| !c.is_ascii_alphanumeric()),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if classes < 2 {
        return Err("mix at least two of: lower case, upper case, digits, symbols / 英小文字・英大文字・数字・記号のうち2種類以上を含めてください");
    }
    Ok(())
}

/// The lockout in force, if any.
pub fn locked_until(p: &impl Lockable, now: OffsetDateTime) -> Option<OffsetDateTime> {
    let until = OffsetDateTime::parse(
        p.lock_text()?,
        &time::format_description::well_known::Rfc3339,
    )
    .ok()?;
    (until > now).then_some(until)
}

/// What [`reserve_attempt`] decided about one password try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Locked: refuse without checking the password.
    Locked { until: OffsetDateTime },
    /// Counted: check the password. `locks` when this try used the last one allowed, so the
    /// account is locked from now on unless this very try gives the right password.
    Counted { locks: bool },
}

/// Reserves one password try (art 13.1, issue 11 item 1).
///
/// Every try is counted as a failure **before** its password is checked, in the same atomic
/// read-modify-write of the stored physician that tests the lock (the store runs this inside
/// its compare-and-swap loop, see `Store::reserve_signin_attempt`). So N concurrent tries can
/// never see the same count: the `max_failures`-th try locks the account as it is counted, and
/// every try after it is refused without a hash being computed. A try that then proves right
/// calls [`record_success`], which clears the count and the lock. A crash between the two
/// leaves the try counted: the safe direction.
pub fn reserve_attempt(
    p: &mut impl Lockable,
    now: OffsetDateTime,
    max_failures: u32,
    lockout: Duration,
) -> Attempt {
    if let Some(until) = locked_until(p, now) {
        return Attempt::Locked { until };
    }
    let (failed_logins, locked) = p.counts();
    if locked.is_some() {
        // The lock has run out: a fresh count.
        *locked = None;
        *failed_logins = 0;
    }
    *failed_logins = failed_logins.saturating_add(1);
    if *failed_logins >= max_failures {
        *locked = Some(crate::ops::clock::rfc3339(now + lockout));
        *failed_logins = 0;
        return Attempt::Counted { locks: true };
    }
    Attempt::Counted { locks: false }
}

/// Records a successful sign-in.
pub fn record_success(p: &mut impl Lockable) {
    let (failed_logins, locked) = p.counts();
    *failed_logins = 0;
    *locked = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn physician() -> Physician {
        Physician {
            id: "dr1".into(),
            name: "n".into(),
            site: "s".into(),
            suspended: None,
            registered: String::new(),
            password_hash: None,
            must_change_password: true,
            failed_logins: 0,
            locked_until: None,
        }
    }

    #[test]
    fn art_6_3_passwords_are_argon2id_hashes() {
        let h = hash_password("correct horse 1").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password("correct horse 1", &h));
        assert!(!verify_password("correct horse 2", &h));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn generated_passwords_are_random_and_long() {
        let a = generate_password();
        assert_eq!(a.len(), 16);
        assert_ne!(a, generate_password());
    }

    /// Art 13.1 (MHLW guideline): lockout after 5 wrong passwords in a row.
    #[test]
    fn art_13_1_lockout_after_five_failures() {
        let now = datetime!(2026-11-26 10:00 +9);
        let lockout = Duration::minutes(15);
        let mut p = physician();
        for _ in 0..4 {
            assert_eq!(
                reserve_attempt(&mut p, now, 5, lockout),
                Attempt::Counted { locks: false }
            );
        }
        assert!(locked_until(&p, now).is_none());
        assert_eq!(
            reserve_attempt(&mut p, now, 5, lockout),
            Attempt::Counted { locks: true }
        );
        let until = datetime!(2026-11-26 10:15 +9);
        assert_eq!(locked_until(&p, now + Duration::minutes(14)), Some(until));
        // Locked: the next try is refused before any password is checked, and changes nothing.
        let before = p.clone();
        assert_eq!(
            reserve_attempt(&mut p, now + Duration::minutes(14), 5, lockout),
            Attempt::Locked { until }
        );
        assert_eq!(p, before);
        // After the lockout, a fresh count.
        let later = now + Duration::minutes(15);
        assert!(locked_until(&p, later).is_none());
        assert_eq!(
            reserve_attempt(&mut p, later, 5, lockout),
            Attempt::Counted { locks: false }
        );
        assert_eq!((p.failed_logins, p.locked_until.is_none()), (1, true));
        record_success(&mut p);
        assert_eq!(p.failed_logins, 0);
    }

    /// Art 13.1: the right password on the last try allowed still signs in (the try that
    /// locks is undone by its own success); counted tries are failures until proven right.
    #[test]
    fn art_13_1_right_password_on_the_fifth_try_clears_the_count() {
        let now = datetime!(2026-11-26 10:00 +9);
        let mut p = physician();
        for _ in 0..4 {
            reserve_attempt(&mut p, now, 5, Duration::minutes(15));
        }
        assert_eq!(
            reserve_attempt(&mut p, now, 5, Duration::minutes(15)),
            Attempt::Counted { locks: true }
        );
        record_success(&mut p);
        assert!(locked_until(&p, now).is_none());
        assert_eq!(p.failed_logins, 0);
    }

    #[test]
    fn password_policy_rules() {
        assert!(password_policy("dr1", "old", "short").is_err());
        assert!(password_policy("dr1", "old", "alllowercaseletters").is_err());
        assert!(password_policy("dr1", "old", "xxDR1-password").is_err());
        assert!(password_policy("dr1", "Tanuki-2026!", "Tanuki-2026!").is_err());
        assert!(password_policy("dr1", "old", "Tanuki-2026!").is_ok());
    }
}
