//! Staff sessions on the console: the physicians' session table ([`Sessions`]: a random
//! 256-bit token kept by its hash, bound to the certificate that signed in, idle timeout and
//! lifetime), a cookie of its own (`__Host-seibo_office`, `Secure; HttpOnly; SameSite=Strict`,
//! path `/office/`... as `__Host-` demands, `Path=/`), and a CSRF token for every form.
//!
//! The CSRF token is an HMAC of the session token under a key made at start (so it is
//! per session and needs no storage), compared in constant time. The sign-in form, before a
//! session exists, carries an HMAC of the staff certificate's fingerprint.

use std::time::Duration;

use crate::policy::session::Sessions;

/// The console's cookie (the `__Host-` prefix: Secure, Path=/, no Domain, enforced by browsers).
pub const COOKIE: &str = "__Host-seibo_office";

/// The console's sessions and CSRF key.
#[derive(Debug)]
pub struct StaffSessions {
    pub table: Sessions,
    key: ring::hmac::Key,
}

impl StaffSessions {
    pub fn new(idle: Duration, lifetime: Duration) -> StaffSessions {
        let rng = ring::rand::SystemRandom::new();
        // A key the process alone knows; on failure of the system RNG, fall back to rand's.
        let key = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng).unwrap_or_else(|_| {
            use rand::Rng;
            ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &rand::rng().random::<[u8; 32]>())
        });
        StaffSessions {
            table: Sessions::new(idle, lifetime),
            key,
        }
    }

    /// The CSRF token of a session (or, `login:` + fingerprint, of the sign-in form).
    pub fn csrf(&self, bound_to: &str) -> String {
        hex::encode(ring::hmac::sign(&self.key, bound_to.as_bytes()).as_ref())
    }

    /// True when `token` is the CSRF token of `bound_to` (constant-time comparison).
    pub fn csrf_ok(&self, bound_to: &str, token: &str) -> bool {
        let Ok(raw) = hex::decode(token) else {
            return false;
        };
        ring::hmac::verify(&self.key, bound_to.as_bytes(), &raw).is_ok()
    }
}

/// What a sign-in form's CSRF token is bound to: the staff certificate.
pub fn login_binding(fingerprint: &str) -> String {
    format!("login:{fingerprint}")
}

/// The session token from the console's cookie, if well-formed.
pub fn token_from_cookies(headers: &http::HeaderMap) -> Option<String> {
    crate::policy::session::token_in_cookie(headers, COOKIE)
}

pub fn set_cookie(token: &str) -> String {
    crate::policy::session::set_named_cookie(COOKIE, token)
}

pub fn clear_cookie() -> String {
    crate::policy::session::clear_named_cookie(COOKIE)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Art 13.1 for the console: a CSRF token belongs to one session, is checked in full, and
    /// a session is bound to the staff certificate that signed in.
    #[test]
    fn art_13_1_csrf_token_is_per_session_and_session_per_certificate() {
        let s = StaffSessions::new(Duration::from_secs(60), Duration::from_secs(3600));
        let (a, _) = s.table.create("clerk-1", "fp-a", false);
        let (b, _) = s.table.create("clerk-2", "fp-b", false);
        let ta = s.csrf(&a);
        assert!(s.csrf_ok(&a, &ta));
        assert!(!s.csrf_ok(&b, &ta));
        assert!(!s.csrf_ok(&a, &ta[..62]));
        assert!(!s.csrf_ok(&a, ""));
        assert!(!s.csrf_ok(&a, "zz"));
        let other = StaffSessions::new(Duration::from_secs(60), Duration::from_secs(3600));
        assert!(!other.csrf_ok(&a, &ta), "another process's key");
        assert!(s.table.check(&a, "fp-b").is_err());
        assert!(s.table.check(&a, "fp-a").is_err(), "burnt by the replay");
        assert!(s.table.check(&b, "fp-b").is_ok());
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            http::HeaderValue::from_str(&format!("x=1; {COOKIE}={b}")).unwrap(),
        );
        assert_eq!(token_from_cookies(&h), Some(b));
        assert!(
            set_cookie("t").contains("SameSite=Strict; ")
                || set_cookie("t").ends_with("SameSite=Strict")
        );
    }
}
