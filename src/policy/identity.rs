//! Step 2 of the request path: who is asking. The peer's credential (certificate fingerprint)
//! → registered terminal → its physician. Checked on every request, so that a revocation or a
//! suspension takes effect at an open connection's next request (art 4, 7, 12.7).

use std::sync::{Arc, Mutex, PoisonError};

use time::OffsetDateTime;

use crate::registry::model::{Physician, Terminal, TerminalKind};
use crate::registry::store::{Store, StoreError};

/// A registered terminal in the hands of an active physician.
#[derive(Debug, Clone)]
pub struct Who {
    pub terminal: Terminal,
    pub physician: Physician,
}

/// Why the peer is not an active registered terminal of an active physician.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdentityRefusal {
    #[error("the terminal is not registered")]
    UnknownTerminal,
    #[error("the terminal was revoked")]
    TerminalRevoked,
    #[error("the terminal's certificate has expired")]
    TerminalExpired,
    #[error("the physician is not registered")]
    UnknownPhysician,
    #[error("the physician is suspended")]
    PhysicianSuspended,
}

impl IdentityRefusal {
    pub fn reason(self) -> &'static str {
        match self {
            IdentityRefusal::UnknownTerminal => "terminal-unknown",
            IdentityRefusal::TerminalRevoked => "terminal-revoked",
            IdentityRefusal::TerminalExpired => "terminal-expired",
            IdentityRefusal::UnknownPhysician => "physician-unknown",
            IdentityRefusal::PhysicianSuspended => "physician-suspended",
        }
    }
}

/// Why a site system's request is refused (art 6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SiteSystemRefusal {
    /// The certificate is not a registered (or is a revoked) site system.
    #[error("not a registered site system")]
    Unknown,
    /// The request names no (valid) physician.
    #[error("no physician named")]
    PhysicianMissing,
    /// The named physician is registered and suspended.
    #[error("the physician is suspended")]
    PhysicianSuspended,
}

impl SiteSystemRefusal {
    pub fn reason(self) -> &'static str {
        match self {
            SiteSystemRefusal::Unknown => "site-system-unknown",
            SiteSystemRefusal::PhysicianMissing => "site-physician-missing",
            SiteSystemRefusal::PhysicianSuspended => "physician-suspended",
        }
    }
}

/// Resolves a terminal fingerprint to an active terminal and physician.
pub fn resolve(
    store: &Store,
    fingerprint: &str,
    now: OffsetDateTime,
) -> Result<Result<Who, IdentityRefusal>, StoreError> {
    Ok(resolve_until(store, fingerprint, now)?.map(|(who, _)| who))
}

/// [`resolve`], with the instant the terminal's certificate expires.
fn resolve_until(
    store: &Store,
    fingerprint: &str,
    now: OffsetDateTime,
) -> Result<Result<(Who, OffsetDateTime), IdentityRefusal>, StoreError> {
    let Some(terminal) = store.terminal_by_fingerprint(fingerprint)? else {
        return Ok(Err(IdentityRefusal::UnknownTerminal));
    };
    if terminal.kind != TerminalKind::Terminal {
        // A site system's certificate is no terminal: it asserts physicians only on the
        // in-hospital listener.
        return Ok(Err(IdentityRefusal::UnknownTerminal));
    }
    if terminal.revoked {
        return Ok(Err(IdentityRefusal::TerminalRevoked));
    }
    let not_after = terminal.not_after;
    if not_after < now {
        return Ok(Err(IdentityRefusal::TerminalExpired));
    }
    let Some(physician) = store.physician(&terminal.physician)? else {
        return Ok(Err(IdentityRefusal::UnknownPhysician));
    };
    if physician.suspended.is_some() {
        return Ok(Err(IdentityRefusal::PhysicianSuspended));
    }
    Ok(Ok((
        Who {
            terminal,
            physician,
        },
        not_after,
    )))
}

/// One connection's resolved identity, reused for its next requests while the registry has not
/// changed since it was read ([`Store::generation`]): a revocation, suspension or any other
/// registry change is seen at the connection's next request, as with no cache; the
/// certificate's expiry is checked against the clock on every request.
#[derive(Debug, Default)]
pub struct ConnIdentity {
    cached: Mutex<Option<Cached>>,
}

#[derive(Debug)]
struct Cached {
    generation: u64,
    who: Arc<Who>,
    not_after: OffsetDateTime,
}

impl ConnIdentity {
    /// [`resolve`] for this connection's credential.
    pub fn resolve(
        &self,
        store: &Store,
        fingerprint: &str,
        now: OffsetDateTime,
    ) -> Result<Result<Arc<Who>, IdentityRefusal>, StoreError> {
        // Read before the registry: a change made while resolving leaves the entry stale.
        let generation = store.generation();
        {
            let cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(c) = cached.as_ref() {
                if c.generation == generation && c.not_after >= now {
                    return Ok(Ok(c.who.clone()));
                }
            }
        }
        let (who, not_after) = match resolve_until(store, fingerprint, now)? {
            Ok(x) => x,
            Err(r) => {
                *self.cached.lock().unwrap_or_else(PoisonError::into_inner) = None;
                return Ok(Err(r));
            }
        };
        let who = Arc::new(who);
        *self.cached.lock().unwrap_or_else(PoisonError::into_inner) = Some(Cached {
            generation,
            who: who.clone(),
            not_after,
        });
        Ok(Ok(who))
    }
}

/// For the audit of a refused request: the terminal registered under this fingerprint and its
/// physician id, when there is one (a revoked terminal, a suspended physician).
pub fn describe(store: &Store, fingerprint: &str) -> (Option<String>, Option<String>) {
    match store.terminal_by_fingerprint(fingerprint) {
        Ok(Some(t)) => {
            let physician = (!t.physician.is_empty()).then_some(t.physician);
            (Some(t.name), physician)
        }
        _ => (None, None),
    }
}

/// Header in which a trusted site system names the physician (art 6.1). It is stripped from
/// every other client's requests (see `site::config::strip`, the default strip list).
pub const SITE_PHYSICIAN_HEADER: &str = "x-seibo-site-physician";

/// Art 6.1: a registered site system (the hospital's own EMR network) asserts the physician;
/// no terminal or physician registration is needed, but a registered physician who is
/// suspended stays refused.
pub fn resolve_site_system(
    store: &Store,
    fingerprint: &str,
    asserted: Option<&str>,
    site: &str,
) -> Result<Result<Who, SiteSystemRefusal>, StoreError> {
    let Some(terminal) = store.terminal_by_fingerprint(fingerprint)? else {
        return Ok(Err(SiteSystemRefusal::Unknown));
    };
    if terminal.kind != TerminalKind::SiteSystem || terminal.revoked {
        return Ok(Err(SiteSystemRefusal::Unknown));
    }
    let Some(id) = asserted.filter(|id| crate::registry::ids::PhysicianId::is_valid(id)) else {
        return Ok(Err(SiteSystemRefusal::PhysicianMissing));
    };
    let physician = match store.physician(id)? {
        Some(p) if p.suspended.is_some() => return Ok(Err(SiteSystemRefusal::PhysicianSuspended)),
        Some(p) => p,
        None => Physician {
            id: id.to_string(),
            name: id.to_string(),
            site: site.to_string(),
            suspended: None,
            registered: String::new(),
            password_hash: None,
            must_change_password: false,
            failed_logins: 0,
            locked_until: None,
        },
    };
    Ok(Ok(Who {
        terminal,
        physician,
    }))
}
