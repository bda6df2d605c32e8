//! The registries (physicians, terminals, consents) in sled. Only this module touches sled;
//! everything else sees typed functions. The store carries a schema version.
//!
//! Trees:
//! * `physicians`: physician id → [`Physician`] (JSON)
//! * `terminals`: terminal name → [`Terminal`] (JSON)
//! * `fingerprints`: SPKI SHA-256 (hex) → terminal name
//! * `consents`: patient id → [`Consent`] (JSON)
//! * `staff`: staff id → [`Staff`] (JSON): the liaison office's console accounts (issue 15)
//! * `meta`: `schema` → version
//!
//! Administrative changes are flushed before they are acknowledged. The `last_view` update of
//! an allowed view is not flushed on the request path: sled's own background flush
//! (`flush_every_ms`, every 200 ms, set in [`Store::open`]) makes it durable within that
//! interval, and the gateway calls [`Store::flush`] once more at shutdown. A crash loses at
//! most the last 200 ms of `last_view` updates: a view's extension of the consent (art 8.3),
//! never an identity or a consent change.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{de::DeserializeOwned, Serialize};
use time::Date;

use crate::policy::auth;
use crate::policy::consent;
use crate::registry::model::{
    Consent, Physician, Staff, SuspendReason, Terminal, TerminalKind, Withdrawal,
};

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    #[error("store record {key:?} in {tree} is unreadable: {source}")]
    Decode {
        tree: &'static str,
        key: String,
        source: serde_json::Error,
    },
    #[error(
        "store schema version {found} is not {SCHEMA_VERSION}: this seibo-gate cannot read it"
    )]
    Schema { found: u32 },
    #[error("{0}")]
    Conflict(Conflict),
    #[error("{0}")]
    NotFound(Missing),
}

/// A record that is not in the registry: which kind, and its id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Missing {
    #[error("no physician {0:?}")]
    Physician(String),
    #[error("no terminal {0:?}")]
    Terminal(String),
    #[error("no consent for patient {0:?}")]
    Consent(String),
    #[error("no staff member {0:?}")]
    Staff(String),
}

/// A change that contradicts what is registered: which record, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    #[error("physician {0:?} is already registered")]
    PhysicianRegistered(String),
    #[error("staff member {0:?} is already registered")]
    StaffRegistered(String),
    #[error("terminal {0:?} is already registered")]
    TerminalRegistered(String),
    /// Another terminal has this certificate key (or WireGuard key).
    #[error("a terminal with this key is already registered")]
    KeyRegistered { fingerprint: String },
    #[error("tunnel address {0} is already given to another terminal")]
    TunnelAddressTaken(std::net::Ipv4Addr),
    #[error("patient {patient:?} already has a consent (form {form_ref}); withdraw it first")]
    ConsentRegistered { patient: String, form_ref: String },
    /// A purge gave up on a consent that changed under each of its tries.
    #[error("consent of patient {0:?} kept changing during the purge")]
    ConsentChanging(String),
}

/// A handle on the registries. Cheap to clone; all methods are safe to call concurrently.
#[derive(Clone, Debug)]
pub struct Store {
    db: sled::Db,
    /// Moves on every registry change (see [`Store::generation`]).
    generation: Arc<AtomicU64>,
    physicians: sled::Tree,
    terminals: sled::Tree,
    fingerprints: sled::Tree,
    consents: sled::Tree,
    staff: sled::Tree,
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Serialising these plain structs to JSON cannot fail (no maps with non-string keys).
    serde_json::to_vec(v).unwrap_or_default()
}

fn decode<T: DeserializeOwned>(tree: &'static str, key: &[u8], v: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(|source| StoreError::Decode {
        tree,
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })
}

impl Store {
    /// Opens (creating) the store in `dir`. Only one process may hold it.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(Some(200))
            .open()?;
        if db.was_recovered() {
            tracing::debug!(dir = %dir.display(), "store opened");
        }
        let meta = db.open_tree("meta")?;
        match meta.get("schema")? {
            Some(v) => {
                let found = std::str::from_utf8(&v)
                    .ok()
                    .and_then(|s| s.parse::<u32>().ok())
                    .unwrap_or(0);
                if found != SCHEMA_VERSION {
                    return Err(StoreError::Schema { found });
                }
            }
            None => {
                meta.insert("schema", SCHEMA_VERSION.to_string().as_bytes())?;
            }
        }
        Ok(Store {
            physicians: db.open_tree("physicians")?,
            terminals: db.open_tree("terminals")?,
            fingerprints: db.open_tree("fingerprints")?,
            consents: db.open_tree("consents")?,
            staff: db.open_tree("staff")?,
            db,
            generation: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Makes every change so far durable, and moves the [`generation`](Store::generation).
    ///
    /// Every administrative change ends here before it is acknowledged (the request path's
    /// `last_view` update is the only write that does not, and it changes no identity).
    pub fn flush(&self) -> Result<(), StoreError> {
        // First: the change is already visible to readers, so a reader that sees the new
        // generation also sees the change; a failed flush still invalidates.
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.db.flush()?;
        Ok(())
    }

    /// A number that changes whenever a registry change is acknowledged. A value derived from
    /// the registry (a connection's resolved identity) may be reused while the generation it
    /// was read under is still current (read the generation *before* the registry).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    // ---- physicians (art 3, 4, 6.3, 7) ----

    pub fn physician(&self, id: &str) -> Result<Option<Physician>, StoreError> {
        self.physicians
            .get(id)?
            .map(|v| decode("physicians", id.as_bytes(), &v))
            .transpose()
    }

    pub fn add_physician(&self, p: &Physician) -> Result<(), StoreError> {
        let res =
            self.physicians
                .compare_and_swap(&p.id, None as Option<&[u8]>, Some(encode(p)))?;
        if res.is_err() {
            return Err(StoreError::Conflict(Conflict::PhysicianRegistered(
                p.id.clone(),
            )));
        }
        self.flush()
    }

    /// Applies `f` to a physician atomically and flushes.
    pub fn update_physician(
        &self,
        id: &str,
        f: impl Fn(&mut Physician),
    ) -> Result<Physician, StoreError> {
        let ((), p) = self
            .modify_physician(id, f)?
            .ok_or_else(|| StoreError::NotFound(Missing::Physician(id.to_string())))?;
        self.flush()?;
        Ok(p)
    }

    /// Applies `f` to physician `id` in one atomic read-modify-write, not flushed. sled may run
    /// the closure more than once (when the record changed meanwhile): the last run's result
    /// is the one stored and returned. `None` when there is no such physician.
    fn modify_physician<R>(
        &self,
        id: &str,
        f: impl Fn(&mut Physician) -> R,
    ) -> Result<Option<(R, Physician)>, StoreError> {
        let mut out = None;
        let mut err = None;
        self.physicians.fetch_and_update(id, |old| {
            out = None;
            err = None;
            let old = old?;
            match decode::<Physician>("physicians", id.as_bytes(), old) {
                Ok(mut p) => {
                    let r = f(&mut p);
                    let v = encode(&p);
                    out = Some((r, p));
                    Some(v)
                }
                Err(e) => {
                    err = Some(e);
                    Some(old.to_vec())
                }
            }
        })?;
        match err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Reserves one password try of physician `id` (art 13.1, issue 11 item 1): the lock test
    /// and the failure count are one atomic read-modify-write of the stored record
    /// ([`auth::reserve_attempt`] inside sled's compare-and-swap loop; the closure may run
    /// more than once and does no I/O), flushed before the password is checked. Returns the
    /// decision and the physician as stored by it (check the password against *its* hash).
    pub fn reserve_signin_attempt(
        &self,
        id: &str,
        now: time::OffsetDateTime,
        max_failures: u32,
        lockout: time::Duration,
    ) -> Result<(auth::Attempt, Physician), StoreError> {
        // A locked account is answered from a read: a flood of refused tries writes nothing.
        let p = self
            .physician(id)?
            .ok_or_else(|| StoreError::NotFound(Missing::Physician(id.to_string())))?;
        if let Some(until) = auth::locked_until(&p, now) {
            return Ok((auth::Attempt::Locked { until }, p));
        }
        let (attempt, p) = self
            .modify_physician(id, |p| auth::reserve_attempt(p, now, max_failures, lockout))?
            .ok_or_else(|| StoreError::NotFound(Missing::Physician(id.to_string())))?;
        if let auth::Attempt::Counted { .. } = attempt {
            self.flush()?;
        }
        Ok((attempt, p))
    }

    /// A password try proved right: the count and any lock are cleared (art 13.1).
    pub fn signin_succeeded(&self, id: &str) -> Result<Physician, StoreError> {
        self.update_physician(id, auth::record_success)
    }

    pub fn suspend_physician(
        &self,
        id: &str,
        reason: SuspendReason,
    ) -> Result<Physician, StoreError> {
        self.update_physician(id, |p| p.suspended = Some(reason))
    }

    pub fn resume_physician(&self, id: &str) -> Result<Physician, StoreError> {
        self.update_physician(id, |p| p.suspended = None)
    }

    /// Deregistration (art 7): the physician and all their terminals are removed. A later
    /// `add` with the same id is a new registration with no terminals.
    pub fn delete_physician(&self, id: &str) -> Result<Vec<String>, StoreError> {
        if self.physicians.remove(id)?.is_none() {
            return Err(StoreError::NotFound(Missing::Physician(id.to_string())));
        }
        let mut removed = Vec::new();
        for t in self.terminals()? {
            if t.physician == id {
                self.terminals.remove(&t.name)?;
                self.fingerprints.remove(&t.fingerprint)?;
                removed.push(t.name);
            }
        }
        self.flush()?;
        Ok(removed)
    }

    pub fn physicians(&self) -> Result<Vec<Physician>, StoreError> {
        self.physicians
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode("physicians", &k, &v)
            })
            .collect()
    }

    // ---- terminals (art 6.2, 12.7) ----

    pub fn add_terminal(&self, t: &Terminal) -> Result<(), StoreError> {
        if t.kind == TerminalKind::Terminal && self.physician(&t.physician)?.is_none() {
            return Err(StoreError::NotFound(Missing::Physician(
                t.physician.clone(),
            )));
        }
        if let Some(ip) = t.tunnel_ip {
            if self.terminals()?.iter().any(|x| x.tunnel_ip == Some(ip)) {
                return Err(StoreError::Conflict(Conflict::TunnelAddressTaken(ip)));
            }
        }
        if self
            .terminals
            .compare_and_swap(&t.name, None as Option<&[u8]>, Some(encode(t)))?
            .is_err()
        {
            return Err(StoreError::Conflict(Conflict::TerminalRegistered(
                t.name.clone(),
            )));
        }
        if self
            .fingerprints
            .compare_and_swap(
                &t.fingerprint,
                None as Option<&[u8]>,
                Some(t.name.as_bytes()),
            )?
            .is_err()
        {
            self.terminals.remove(&t.name)?;
            return Err(StoreError::Conflict(Conflict::KeyRegistered {
                fingerprint: t.fingerprint.clone(),
            }));
        }
        self.flush()
    }

    pub fn terminal(&self, name: &str) -> Result<Option<Terminal>, StoreError> {
        self.terminals
            .get(name)?
            .map(|v| decode("terminals", name.as_bytes(), &v))
            .transpose()
    }

    /// The terminal whose certificate key has this fingerprint.
    pub fn terminal_by_fingerprint(&self, fp: &str) -> Result<Option<Terminal>, StoreError> {
        match self.fingerprints.get(fp)? {
            Some(name) => {
                let name = String::from_utf8_lossy(&name);
                self.terminal(&name)
            }
            None => Ok(None),
        }
    }

    /// Revocation: kept in the registry (for the record) but refused from the next request on.
    pub fn revoke_terminal(&self, name: &str) -> Result<Terminal, StoreError> {
        let mut t = self
            .terminal(name)?
            .ok_or_else(|| StoreError::NotFound(Missing::Terminal(name.to_string())))?;
        t.revoked = true;
        self.terminals.insert(name, encode(&t))?;
        self.flush()?;
        Ok(t)
    }

    pub fn terminals(&self) -> Result<Vec<Terminal>, StoreError> {
        self.terminals
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode("terminals", &k, &v)
            })
            .collect()
    }

    // ---- consents (art 8, 9, 11) ----

    pub fn consent(&self, patient: &str) -> Result<Option<Consent>, StoreError> {
        self.consents
            .get(patient)?
            .map(|v| decode("consents", patient.as_bytes(), &v))
            .transpose()
    }

    /// Registers (or renews, after a withdrawal) a patient's consent.
    pub fn grant_consent(&self, c: &Consent) -> Result<(), StoreError> {
        if let Some(old) = self.consent(&c.patient)? {
            if old.withdrawn.is_none() {
                return Err(StoreError::Conflict(Conflict::ConsentRegistered {
                    patient: c.patient.clone(),
                    form_ref: old.form_ref,
                }));
            }
        }
        self.consents.insert(&c.patient, encode(c))?;
        self.flush()
    }

    /// Withdrawal (art 9.2, form 7; art 11.2 (1)): from the next request on, access is refused,
    /// and the patient's registration is deleted at once (art 11 asks for deletion on
    /// withdrawal, not at the next purge). Returns the deleted consent, marked withdrawn, for
    /// the admin's answer; the withdrawal itself is kept in the audit log (the admin request's
    /// record, with the form 7 reference), never in the registry.
    ///
    /// Atomic against a concurrent view: [`Store::touch_consent`] never re-creates a removed key.
    pub fn withdraw_consent(
        &self,
        patient: &str,
        form_ref: &str,
        today: Date,
    ) -> Result<Consent, StoreError> {
        let old = self
            .consents
            .remove(patient)?
            .ok_or_else(|| StoreError::NotFound(Missing::Consent(patient.to_string())))?;
        self.flush()?;
        let mut c: Consent = decode("consents", patient.as_bytes(), &old)?;
        c.withdrawn = Some(Withdrawal {
            form_ref: form_ref.to_string(),
            date: today,
        });
        c.last_view = None;
        Ok(c)
    }

    /// Deletes a patient's registered data (art 11: form 8, or purge). Audit history stays.
    pub fn delete_consent(&self, patient: &str) -> Result<bool, StoreError> {
        let existed = self.consents.remove(patient)?.is_some();
        self.flush()?;
        Ok(existed)
    }

    /// Records an allowed view: `last_view` becomes `today` (art 8.3 extension). Atomic against
    /// a concurrent withdrawal or deletion: a removed consent stays removed.
    pub fn touch_consent(&self, patient: &str, today: Date) -> Result<(), StoreError> {
        // Most views are not the first of the day: a read is enough for them (no write, no
        // contention on the key).
        if let Some(c) = self.consent(patient)? {
            if c.last_view == Some(today) || c.withdrawn.is_some() {
                return Ok(());
            }
        }
        self.consents.fetch_and_update(patient, |old| {
            let old = old?;
            match serde_json::from_slice::<Consent>(old) {
                Ok(mut c) if c.withdrawn.is_none() && c.last_view != Some(today) => {
                    c.last_view = Some(today);
                    Some(encode(&c))
                }
                _ => Some(old.to_vec()),
            }
        })?;
        Ok(())
    }

    /// Art 11: the consents due for deletion today: access ended (999 days after the last view,
    /// or after publication), or withdrawn (a registry written before withdrawals deleted at
    /// once). Read only: [`Store::purge_if_due`] deletes them one by one.
    pub fn purge_due(&self, today: Date) -> Result<Vec<Consent>, StoreError> {
        let mut due = Vec::new();
        for kv in self.consents.iter() {
            let (k, v) = kv?;
            let c: Consent = decode("consents", &k, &v)?;
            if c.withdrawn.is_some() || consent::purgeable(&c, today) {
                due.push(c);
            }
        }
        Ok(due)
    }

    /// Deletes one patient's consent if it is still due today (a view or a new grant since
    /// [`Store::purge_due`] read it keeps it). True when deleted.
    pub fn purge_if_due(&self, patient: &str, today: Date) -> Result<bool, StoreError> {
        // Bounded retries: each failed swap means the record changed under us.
        for _ in 0..16 {
            let Some(old) = self.consents.get(patient)? else {
                return Ok(false);
            };
            let c: Consent = decode("consents", patient.as_bytes(), &old)?;
            if c.withdrawn.is_none() && !consent::purgeable(&c, today) {
                return Ok(false);
            }
            if self
                .consents
                .compare_and_swap(patient, Some(old), None as Option<&[u8]>)?
                .is_ok()
            {
                self.flush()?;
                return Ok(true);
            }
        }
        Err(StoreError::Conflict(Conflict::ConsentChanging(
            patient.to_string(),
        )))
    }

    // ---- staff of the liaison office (issue 15) ----

    pub fn staff(&self, id: &str) -> Result<Option<Staff>, StoreError> {
        self.staff
            .get(id)?
            .map(|v| decode("staff", id.as_bytes(), &v))
            .transpose()
    }

    pub fn staff_list(&self) -> Result<Vec<Staff>, StoreError> {
        self.staff
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode("staff", &k, &v)
            })
            .collect()
    }

    /// The staff member whose certificate key has this fingerprint (a few accounts: a scan).
    pub fn staff_by_fingerprint(&self, fp: &str) -> Result<Option<Staff>, StoreError> {
        Ok(self.staff_list()?.into_iter().find(|s| s.fingerprint == fp))
    }

    pub async fn add_staff(&self, s: &Staff) -> Result<(), StoreError> {
        if self
            .staff
            .compare_and_swap(&s.id, None as Option<&[u8]>, Some(encode(s)))?
            .is_err()
        {
            return Err(StoreError::Conflict(Conflict::StaffRegistered(
                s.id.clone(),
            )));
        }
        self.flush()
    }

    /// Applies `f` to staff member `id` atomically (sled may run it more than once) and
    /// flushes when `f` answers true (changed). Returns `f`'s last answer and the record.
    pub async fn update_staff(
        &self,
        id: &str,
        f: impl Fn(&mut Staff) -> bool,
    ) -> Result<Staff, StoreError> {
        let mut out = None;
        let mut err = None;
        let mut changed = false;
        self.staff.fetch_and_update(id, |old| {
            out = None;
            err = None;
            let old = old?;
            match decode::<Staff>("staff", id.as_bytes(), old) {
                Ok(mut s) => {
                    changed = f(&mut s);
                    let v = encode(&s);
                    out = Some(s);
                    Some(v)
                }
                Err(e) => {
                    err = Some(e);
                    Some(old.to_vec())
                }
            }
        })?;
        if let Some(e) = err {
            return Err(e);
        }
        let s = out.ok_or_else(|| StoreError::NotFound(Missing::Staff(id.to_string())))?;
        if changed {
            self.flush()?;
        }
        Ok(s)
    }

    /// Art 11: deletes every consent due ([`Store::purge_due`]). Returns the patients purged.
    pub fn purge(&self, today: Date) -> Result<Vec<String>, StoreError> {
        let mut purged = Vec::new();
        for c in self.purge_due(today)? {
            if self.purge_if_due(&c.patient, today)? {
                purged.push(c.patient);
            }
        }
        Ok(purged)
    }
}

#[cfg(test)]
mod tests;
