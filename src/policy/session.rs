//! Sign-in sessions: a random 256-bit token in a `Secure; HttpOnly; SameSite=Strict` cookie,
//! kept server-side (in memory, sharded so that no one lock serialises requests), bound to the
//! terminal that signed in, with an idle timeout and an absolute lifetime. A restart signs
//! everyone out, which is the safe direction.
//!
//! On the regional registry (etcd) sessions are shared: a sign-in is published under a lease
//! whose TTL is the idle timeout ([`Sessions::publish`]), so a physician signed in through one
//! gateway continues through another; the lease is the idle clock (each gateway renews it
//! while the session is used there), and a session ended anywhere (sign-out, password reset,
//! lease expiry) ends everywhere at the next request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::Rng;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::registry::store::Store;

/// Cookie name (the `__Host-` prefix makes browsers insist on Secure, Path=/ and no Domain).
pub const COOKIE: &str = "__Host-seibo_session";

const SHARDS: usize = 32;

/// One signed-in physician on one terminal.
#[derive(Debug, Clone)]
pub struct Session {
    pub physician: String,
    /// The terminal credential (fingerprint) that signed in; the cookie works nowhere else.
    pub terminal: String,
    pub created: Instant,
    pub last_seen: Instant,
    /// Wall-clock end of the absolute lifetime (shown to the physician).
    pub expires_at: OffsetDateTime,
    /// True until a one-time password has been changed.
    pub must_change_password: bool,
    /// The page first asked for, kept across the forced password change (a local path
    /// already checked by the sign-in).
    pub return_to: Option<String>,
    /// Shared sessions: the lease that carries the idle clock, and when this gateway last
    /// renewed it.
    pub lease: Option<i64>,
    pub renewed: Instant,
}

/// A session as published in the regional registry (tree `sessions`, key: the token's
/// SHA-256 in hex; never the token itself).
#[derive(Debug, Serialize, Deserialize)]
struct SharedSession {
    physician: String,
    terminal: String,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
    lease: i64,
}

/// Why a cookie does not open a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionRefusal {
    #[error("not signed in")]
    Missing,
    #[error("the session has ended")]
    Expired,
    #[error("the session belongs to another terminal")]
    WrongTerminal,
}

impl SessionRefusal {
    pub fn reason(self) -> &'static str {
        match self {
            SessionRefusal::Missing => "no-session",
            SessionRefusal::Expired => "session-expired",
            SessionRefusal::WrongTerminal => "session-wrong-terminal",
        }
    }
}

/// The server-side session table.
#[derive(Debug)]
pub struct Sessions {
    shards: Vec<Mutex<HashMap<[u8; 32], Session>>>,
    pub idle: Duration,
    pub lifetime: Duration,
    /// The regional registry, when sessions are shared by every gateway.
    shared: Option<Store>,
    /// Shared sessions ended here (sign-out, replay, expiry) whose removal from the registry
    /// is still on its way: never adopted again meanwhile.
    burnt: Mutex<std::collections::HashSet<[u8; 32]>>,
}

/// Tokens are stored by their SHA-256, so a memory dump does not hand out live cookies.
fn key(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut k = [0u8; 32];
    k.copy_from_slice(d.as_ref());
    k
}

impl Sessions {
    pub fn new(idle: Duration, lifetime: Duration) -> Sessions {
        Sessions {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            idle,
            lifetime,
            shared: None,
            burnt: Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// Sessions shared through `store` when it is the regional registry.
    pub fn shared_through(mut self, store: &Store) -> Sessions {
        if store.shares_sessions() {
            self.shared = Some(store.clone());
        }
        self
    }

    /// Publishes a new session to every gateway (regional registry; nothing for sled).
    /// Awaited before the cookie is handed out, so the next request may reach any gateway.
    pub async fn publish(&self, token: &str) -> Result<(), crate::registry::store::StoreError> {
        let Some(store) = &self.shared else {
            return Ok(());
        };
        let k = key(token);
        let Some(s) = self.with_shard(&k, |m| m.get(&k).cloned()) else {
            return Ok(());
        };
        let lease = store
            .session_put(
                &hex::encode(k),
                |lease| {
                    serde_json::to_vec(&SharedSession {
                        physician: s.physician.clone(),
                        terminal: s.terminal.clone(),
                        expires_at: s.expires_at,
                        lease,
                    })
                    .unwrap_or_default()
                },
                self.idle,
            )
            .await?;
        self.with_shard(&k, |m| {
            if let Some(s) = m.get_mut(&k) {
                s.lease = lease;
            }
        });
        Ok(())
    }

    /// A session published by another gateway, made local (or `None`).
    fn adopt(&self, store: &Store, k: &[u8; 32]) -> Option<Session> {
        let raw = store.session_get(&hex::encode(k))?;
        let shared: SharedSession = serde_json::from_slice(&raw).ok()?;
        // The forced password change is the physician's state in the registry, not this
        // gateway's: a change made through another gateway counts here.
        let must_change_password = store
            .physician(&shared.physician)
            .ok()
            .flatten()
            .is_none_or(|p| p.must_change_password);
        let now = Instant::now();
        Some(Session {
            physician: shared.physician,
            terminal: shared.terminal,
            created: now,
            last_seen: now,
            expires_at: shared.expires_at,
            must_change_password,
            return_to: None,
            lease: Some(shared.lease),
            renewed: now,
        })
    }

    fn shard(&self, k: &[u8; 32]) -> &Mutex<HashMap<[u8; 32], Session>> {
        &self.shards[k[0] as usize % SHARDS]
    }

    fn with_shard<R>(
        &self,
        k: &[u8; 32],
        f: impl FnOnce(&mut HashMap<[u8; 32], Session>) -> R,
    ) -> R {
        let mut guard = match self.shard(k).lock() {
            Ok(g) => g,
            // A panic while holding the lock cannot leave a half-written session behind
            // (inserts and removes are single operations): keep going.
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// Opens a session and returns its token (64 hex characters = 256 bits).
    pub fn create(
        &self,
        physician: &str,
        terminal: &str,
        must_change_password: bool,
    ) -> (String, Session) {
        let token = hex::encode(rand::rng().random::<[u8; 32]>());
        let now = Instant::now();
        let s = Session {
            physician: physician.to_string(),
            terminal: terminal.to_string(),
            created: now,
            last_seen: now,
            expires_at: OffsetDateTime::now_utc()
                + time::Duration::try_from(self.lifetime).unwrap_or(time::Duration::HOUR),
            must_change_password,
            return_to: None,
            lease: None,
            renewed: now,
        };
        let k = key(&token);
        self.with_shard(&k, |m| m.insert(k, s.clone()));
        (token, s)
    }

    /// Checks a token presented by `terminal` and refreshes its idle timer.
    pub fn check(&self, token: &str, terminal: &str) -> Result<Session, SessionRefusal> {
        let k = key(token);
        if let Some(store) = &self.shared {
            return self.check_shared(store, &k, terminal);
        }
        let (idle, lifetime) = (self.idle, self.lifetime);
        self.with_shard(&k, |m| {
            let Some(s) = m.get_mut(&k) else {
                return Err(SessionRefusal::Missing);
            };
            let now = Instant::now();
            if now.duration_since(s.last_seen) > idle || now.duration_since(s.created) > lifetime {
                m.remove(&k);
                return Err(SessionRefusal::Expired);
            }
            if s.terminal != terminal {
                // Replayed from another terminal: the stolen cookie is burnt for both.
                m.remove(&k);
                return Err(SessionRefusal::WrongTerminal);
            }
            s.last_seen = now;
            Ok(s.clone())
        })
    }

    /// [`Sessions::check`] on the regional registry: the session must still be published (its
    /// lease alive: used within the idle timeout at some gateway, not ended anywhere); this
    /// gateway renews the lease, at most every third of the idle timeout, beside the request.
    fn check_shared(
        &self,
        store: &Store,
        k: &[u8; 32],
        terminal: &str,
    ) -> Result<Session, SessionRefusal> {
        if self
            .burnt
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(k)
        {
            return Err(SessionRefusal::Missing);
        }
        let published = store.session_get(&hex::encode(k)).is_some();
        let local = self.with_shard(k, |m| m.get(k).cloned());
        let mut s = match (local, published) {
            (Some(mut s), true) => {
                // A forced password change done through another gateway counts here too.
                if s.must_change_password
                    && store
                        .physician(&s.physician)
                        .ok()
                        .flatten()
                        .is_some_and(|p| !p.must_change_password)
                {
                    s.must_change_password = false;
                    self.with_shard(k, |m| {
                        if let Some(x) = m.get_mut(k) {
                            x.must_change_password = false;
                        }
                    });
                }
                s
            }
            (Some(_), false) => {
                self.with_shard(k, |m| m.remove(k));
                return Err(SessionRefusal::Expired);
            }
            (None, true) => self.adopt(store, k).ok_or(SessionRefusal::Missing)?,
            (None, false) => return Err(SessionRefusal::Missing),
        };
        if OffsetDateTime::now_utc() > s.expires_at {
            self.with_shard(k, |m| m.remove(k));
            self.unpublish(k);
            return Err(SessionRefusal::Expired);
        }
        if s.terminal != terminal {
            // Replayed from another terminal: the stolen cookie is burnt everywhere.
            self.with_shard(k, |m| m.remove(k));
            self.unpublish(k);
            return Err(SessionRefusal::WrongTerminal);
        }
        let now = Instant::now();
        s.last_seen = now;
        if let Some(lease) = s
            .lease
            .filter(|_| now.duration_since(s.renewed) >= self.idle / 3)
        {
            s.renewed = now;
            let store = store.clone();
            tokio::spawn(async move {
                if let Err(e) = store.session_refresh(lease).await {
                    tracing::warn!(error = %e, "could not renew a shared session");
                }
            });
        }
        Ok(self.with_shard(k, |m| {
            // Keep the local flags (return page, password changed here) of a known session.
            let entry = m.entry(*k).or_insert_with(|| s.clone());
            entry.last_seen = s.last_seen;
            entry.renewed = s.renewed;
            entry.clone()
        }))
    }

    /// Removes a session from the regional registry (beside the request).
    fn unpublish(&self, k: &[u8; 32]) {
        if let Some(store) = &self.shared {
            self.burnt
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(*k);
            let store = store.clone();
            let key = hex::encode(k);
            tokio::spawn(async move {
                if let Err(e) = store.session_remove(&key).await {
                    tracing::warn!(error = %e, "could not end a shared session");
                }
            });
        }
    }

    /// Keeps the page to return to after the forced password change.
    pub fn remember_return(&self, token: &str, to: &str) {
        let k = key(token);
        self.with_shard(&k, |m| {
            if let Some(s) = m.get_mut(&k) {
                s.return_to = Some(to.to_string());
            }
        });
    }

    /// The password was changed: the session is usable; returns the page to go back to.
    pub fn password_changed(&self, token: &str) -> Option<String> {
        let k = key(token);
        self.with_shard(&k, |m| {
            let s = m.get_mut(&k)?;
            s.must_change_password = false;
            // The change is the physician's activity until it completes (hashing the new
            // password can take a while on a busy machine): the idle clock starts again now.
            s.last_seen = Instant::now();
            s.return_to.take()
        })
    }

    pub fn end(&self, token: &str) {
        let k = key(token);
        self.with_shard(&k, |m| m.remove(&k));
        self.unpublish(&k);
    }

    /// Ends every session matching `pred` (suspension, revocation, password reset).
    pub fn end_where(&self, pred: impl Fn(&Session) -> bool) -> usize {
        let mut n = 0;
        let mut ended_here = std::collections::HashSet::new();
        for shard in &self.shards {
            let mut g = match shard.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            let before = g.len();
            g.retain(|k, s| {
                let end = pred(s);
                if end {
                    self.unpublish(k);
                    ended_here.insert(hex::encode(k));
                }
                !end
            });
            n += before - g.len();
        }
        // Sessions opened through other gateways and not used here yet.
        if let Some(store) = &self.shared {
            for (k, raw) in store.shared_sessions() {
                if ended_here.contains(&k) {
                    continue;
                }
                let Ok(s) = serde_json::from_slice::<SharedSession>(&raw) else {
                    continue;
                };
                let probe = Session {
                    physician: s.physician,
                    terminal: s.terminal,
                    created: Instant::now(),
                    last_seen: Instant::now(),
                    expires_at: OffsetDateTime::now_utc(),
                    must_change_password: false,
                    return_to: None,
                    lease: None,
                    renewed: Instant::now(),
                };
                if pred(&probe) {
                    if let Ok(bytes) = <[u8; 32]>::try_from(hex::decode(&k).unwrap_or_default()) {
                        self.burnt
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .insert(bytes);
                    }
                    let store = store.clone();
                    tokio::spawn(async move {
                        let _ = store.session_remove(&k).await;
                    });
                    n += 1;
                }
            }
        }
        n
    }

    /// Drops expired sessions (called periodically) and returns how many are open.
    pub fn sweep(&self) -> usize {
        if let Some(store) = &self.shared {
            // A burnt session is forgotten once the registry has dropped it too.
            self.burnt
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .retain(|k| store.session_get(&hex::encode(k)).is_some());
        }
        let now = Instant::now();
        let (idle, lifetime) = (self.idle, self.lifetime);
        let mut open = 0;
        for shard in &self.shards {
            let mut g = match shard.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            match &self.shared {
                // An ended session is kept for one more idle period, refused as expired: a
                // physician coming back to it is told the session ended (and the audit says
                // `session-expired`), whether or not a sweep ran in between.
                None => {
                    g.retain(|_, s| {
                        now.duration_since(s.last_seen) <= idle * 2
                            && now.duration_since(s.created) <= lifetime + idle
                    });
                    open += g
                        .values()
                        .filter(|s| {
                            now.duration_since(s.last_seen) <= idle
                                && now.duration_since(s.created) <= lifetime
                        })
                        .count();
                    continue;
                }
                // Shared: a session lives while its lease does (renewed at any gateway).
                Some(store) => g.retain(|k, s| {
                    store.session_get(&hex::encode(k)).is_some()
                        && OffsetDateTime::now_utc() <= s.expires_at
                }),
            }
            open += g.len();
        }
        open
    }
}

/// The session token from a `Cookie` header, if any.
pub fn token_from_cookies(headers: &http::HeaderMap) -> Option<String> {
    token_in_cookie(headers, COOKIE)
}

/// `Set-Cookie` for a new session.
pub fn set_cookie(token: &str) -> String {
    set_named_cookie(COOKIE, token)
}

/// `Set-Cookie` that removes the session cookie.
pub fn clear_cookie() -> String {
    clear_named_cookie(COOKIE)
}

/// The token in session cookie `name` (the gateway's or the console's), if well-formed: 64
/// hex digits.
pub fn token_in_cookie(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `Set-Cookie` for session cookie `name` (`__Host-`: secure, whole site, script-proof).
pub fn set_named_cookie(name: &str, token: &str) -> String {
    format!("{name}={token}; Path=/; Secure; HttpOnly; SameSite=Strict")
}

/// `Set-Cookie` that removes session cookie `name`.
pub fn clear_named_cookie(name: &str) -> String {
    format!("{name}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn art_13_1_session_is_bound_to_its_terminal() {
        let s = Sessions::new(Duration::from_secs(60), Duration::from_secs(3600));
        let (t, _) = s.create("dr1", "fp-a", false);
        assert_eq!(t.len(), 64);
        assert!(s.check(&t, "fp-a").is_ok());
        assert_eq!(
            s.check(&t, "fp-b").unwrap_err(),
            SessionRefusal::WrongTerminal
        );
        // The replayed cookie is burnt for the original terminal too.
        assert_eq!(s.check(&t, "fp-a").unwrap_err(), SessionRefusal::Missing);
    }

    #[test]
    fn art_13_1_idle_timeout_ends_the_session() {
        let s = Sessions::new(Duration::from_millis(30), Duration::from_secs(3600));
        let (t, _) = s.create("dr1", "fp", false);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(s.check(&t, "fp").unwrap_err(), SessionRefusal::Expired);
    }

    /// Art 13.1: a completed password change is activity: the idle clock starts again then,
    /// however long the change took (a slow hash on a busy machine must not sign the physician
    /// out on the way back to the page first asked for).
    #[test]
    fn art_13_1_a_password_change_restarts_the_idle_clock() {
        let s = Sessions::new(Duration::from_millis(200), Duration::from_secs(3600));
        let (t, _) = s.create("dr1", "fp", true);
        std::thread::sleep(Duration::from_millis(150));
        s.password_changed(&t);
        std::thread::sleep(Duration::from_millis(150));
        // 300 ms since the sign-in, 150 ms since the change: still signed in.
        assert!(s.check(&t, "fp").is_ok());
    }

    #[test]
    fn end_where_ends_a_physicians_sessions() {
        let s = Sessions::new(Duration::from_secs(60), Duration::from_secs(3600));
        let (a, _) = s.create("dr1", "fp1", false);
        let (b, _) = s.create("dr2", "fp2", false);
        assert_eq!(s.end_where(|x| x.physician == "dr1"), 1);
        assert!(s.check(&a, "fp1").is_err());
        assert!(s.check(&b, "fp2").is_ok());
        assert_eq!(s.sweep(), 1);
    }

    /// A session that ended by idleness is refused as expired even after a sweep ran (the
    /// sweep keeps it one more idle period), and it no longer counts as open.
    #[test]
    fn art_13_1_an_idle_session_is_expired_not_unknown_after_a_sweep() {
        let s = Sessions::new(Duration::from_millis(100), Duration::from_secs(3600));
        let (t, _) = s.create("dr1", "fp", false);
        std::thread::sleep(Duration::from_millis(130));
        assert_eq!(s.sweep(), 0, "an idle session is not open");
        assert_eq!(s.check(&t, "fp").unwrap_err(), SessionRefusal::Expired);
        assert_eq!(s.check(&t, "fp").unwrap_err(), SessionRefusal::Missing);
    }

    #[test]
    fn cookie_parsing_takes_only_our_well_formed_token() {
        let mut h = http::HeaderMap::new();
        let tok = "a".repeat(64);
        h.insert(
            http::header::COOKIE,
            format!("x=1; {COOKIE}={tok}; y=2").parse().unwrap(),
        );
        assert_eq!(token_from_cookies(&h), Some(tok));
        h.insert(
            http::header::COOKIE,
            format!("{COOKIE}=zz").parse().unwrap(),
        );
        assert_eq!(token_from_cookies(&h), None);
    }
}
