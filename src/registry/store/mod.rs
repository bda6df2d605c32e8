//! The registries (physicians, terminals, consents) as typed records over the registry
//! backend ([`crate::registry::backend`]: sled, or the regional registry on etcd). Only this
//! module knows the trees; everything else sees typed functions. Reads are synchronous (sled,
//! or the etcd backend's in-memory copy); writes are `async` (an etcd write is a transaction
//! that returns once this gateway has applied it). The store carries a schema version.
//!
//! Trees:
//! * `physicians`: physician id → [`Physician`] (JSON)
//! * `terminals`: terminal name → [`Terminal`] (JSON)
//! * `fingerprints`: SPKI SHA-256 (hex) → terminal name
//! * `consents`: regional key (`SITE:ID` of the granting site; the bare patient id for a
//!   consent registered before links) → [`Consent`] (JSON)
//! * `links`: `SITE:ID` (a site's EMR patient id) → regional key of the consent
//! * `audit_heads`: site id → that gateway's last published audit chain head (JSON)
//! * `staff`: staff id → [`Staff`] (JSON): the liaison office's console accounts (issue 15)
//! * `meta`: `schema` → version
//!
//! Administrative changes are flushed before they are acknowledged (sled; an etcd write is on
//! a quorum when acknowledged). The `last_view` update of an allowed view is not flushed on the
//! request path: sled's own background flush
//! (`flush_every_ms`, every 200 ms, set in [`Store::open`]) makes it durable within that
//! interval, and the gateway calls [`Store::flush`] once more at shutdown. A crash loses at
//! most the last 200 ms of `last_view` updates: a view's extension of the consent (art 8.3),
//! never an identity or a consent change.

use std::path::Path;

use serde::{de::DeserializeOwned, Serialize};
use time::Date;

use crate::policy::auth;
use crate::policy::consent;
use crate::registry::backend::{self, Backend, Generation, KvError, RegistryHealth, Tree};
use crate::registry::model::{
    link, Consent, Physician, Staff, SuspendReason, Terminal, TerminalKind, Withdrawal,
};

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Backend(#[from] KvError),
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
    /// A link `SITE:ID` that is not a site id and a patient id.
    #[error("link {0:?} is not SITE:ID (a site id and that site's EMR patient id)")]
    BadLink(String),
    /// A link already names another patient's consent (one-to-one per site).
    #[error("link {link} already names another patient (registered as {patient}); a site's id links to one patient only")]
    LinkTaken { link: String, patient: String },
    /// A patient linked twice at one site.
    #[error(
        "the patient is already linked at site {site} as {linked}, not {asked}: one id per site"
    )]
    SiteLinkedTwice {
        site: String,
        linked: String,
        asked: String,
    },
    /// Links need the site id of this gateway (`[site] id`).
    #[error("patient links need this gateway's site id")]
    NoSite,
    /// A purge gave up on a consent that changed under each of its tries.
    #[error("consent of patient {0:?} kept changing during the purge")]
    ConsentChanging(String),
}

/// A handle on the registries. Cheap to clone; all methods are safe to call concurrently.
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
    /// Moves on every registry change (see [`Store::generation`]).
    generation: Generation,
    physicians: Tree,
    terminals: Tree,
    fingerprints: Tree,
    consents: Tree,
    staff: Tree,
    /// Shared sign-in sessions (regional registry only; sled sessions stay in memory).
    sessions: Tree,
    /// `SITE:ID` (a site's EMR patient id) → the regional key of the patient's consent.
    links: Tree,
    /// Audit chain heads published by every gateway of the network: site id → head (JSON).
    audit_heads: Tree,
    /// This gateway's site id (`[site] id`): the site whose EMR ids `consent(ID)` means.
    site: Option<String>,
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Backend(KvError::Sled(e))
    }
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

/// Applies `f` to the record under `key` in `tree` (named `name` in errors) in one atomic
/// read-modify-write, not flushed. The backend may run the closure more than once (when the
/// record changed meanwhile): the last run's result is the one stored and returned. `None`
/// when there is no such record; a record that does not decode is left as it is and its error
/// returned.
async fn modify_record<T: Serialize + DeserializeOwned, R>(
    tree: &Tree,
    name: &'static str,
    key: &[u8],
    mut f: impl FnMut(&mut T) -> R,
) -> Result<Option<(R, T)>, StoreError> {
    let mut out = None;
    let mut err = None;
    tree.update(key, |old| {
        out = None;
        err = None;
        let old = old?;
        match decode::<T>(name, key, old) {
            Ok(mut v) => {
                let r = f(&mut v);
                let bytes = encode(&v);
                out = Some((r, v));
                Some(bytes)
            }
            Err(e) => {
                err = Some(e);
                Some(old.to_vec())
            }
        }
    })
    .await?;
    match err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

impl Store {
    /// Opens (creating) the embedded sled store in `dir`. Only one process may hold it.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let db = backend::open_sled(dir)?;
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
        Store::over(Backend::Sled(db), Generation::default())
    }

    /// Connects to the regional registry on etcd (`[registry] backend = "etcd"`): returns at
    /// once with the copy loading in the background; until it is loaded and confirmed the
    /// store reports itself not [`usable`](RegistryHealth::usable).
    pub async fn connect_etcd(
        cfg: &crate::site::config::EtcdConfig,
        max_stale: std::time::Duration,
    ) -> Result<Store, StoreError> {
        let generation = Generation::default();
        let reg = backend::etcd::connect(cfg, max_stale, generation.clone()).await?;
        Store::over(Backend::Etcd(reg), generation)
    }

    /// The store a site's config names: sled in `state_dir/registry`, or etcd.
    pub async fn open_configured(cfg: &crate::site::config::Config) -> Result<Store, StoreError> {
        let s = match &cfg.registry.backend {
            crate::site::config::RegistryBackend::Sled => {
                Store::open(&cfg.state_dir.join("registry"))
            }
            crate::site::config::RegistryBackend::Etcd(e) => {
                Store::connect_etcd(e, cfg.registry.max_stale).await
            }
        }?;
        Ok(s.at_site(&cfg.site.id))
    }

    /// This store as seen from site `site`: patient ids mean that site's EMR ids (issue 14).
    pub fn at_site(mut self, site: &str) -> Store {
        self.site = Some(site.to_string());
        self
    }

    /// The site this store serves, if set.
    pub fn site(&self) -> Option<&str> {
        self.site.as_deref()
    }

    fn over(backend: Backend, generation: Generation) -> Result<Store, StoreError> {
        Ok(Store {
            physicians: backend.tree("physicians")?,
            terminals: backend.tree("terminals")?,
            fingerprints: backend.tree("fingerprints")?,
            consents: backend.tree("consents")?,
            staff: backend.tree("staff")?,
            sessions: backend.tree("sessions")?,
            links: backend.tree("links")?,
            audit_heads: backend.tree("audit_heads")?,
            site: None,
            backend,
            generation,
        })
    }

    /// Makes every change so far durable, and moves the [`generation`](Store::generation).
    ///
    /// Every administrative change ends here before it is acknowledged (the request path's
    /// `last_view` update is the only write that does not, and it changes no identity).
    pub fn flush(&self) -> Result<(), StoreError> {
        // First: the change is already visible to readers, so a reader that sees the new
        // generation also sees the change; a failed flush still invalidates.
        self.generation.bump();
        self.backend.flush()?;
        Ok(())
    }

    /// A number that changes whenever a registry change is acknowledged or (etcd) applied
    /// from the watch. A value derived from the registry (a connection's resolved identity)
    /// may be reused while the generation it was read under is still current (read the
    /// generation *before* the registry).
    pub fn generation(&self) -> u64 {
        self.generation.get()
    }

    /// Whether the registry can be trusted now (etcd: confirmed current within
    /// `max_stale_secs`), and how stale it is.
    pub fn health(&self) -> RegistryHealth {
        self.backend.health()
    }

    /// The request path's check: [`RegistryHealth::usable`] from one atomic read.
    pub fn usable(&self) -> bool {
        self.backend.usable()
    }

    /// Waits (bounded) until the registry is [`usable`](RegistryHealth::usable): at once for
    /// sled; for etcd, until the copy is loaded and confirmed current.
    pub async fn ready(&self, within: std::time::Duration) -> Result<(), StoreError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let h = self.health();
            if h.usable() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::Backend(KvError::Unavailable(format!(
                    "the regional registry was not loaded and confirmed within {within:?} (stale for {:.1} s)",
                    h.stale_seconds()
                ))));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Regional registry: brings this gateway's copy up to etcd's current revision (bounded;
    /// see `Regional::catch_up`). Sled is always current: true at once.
    pub async fn catch_up(&self) -> bool {
        match self.backend.etcd() {
            Some(reg) => reg.catch_up().await,
            None => true,
        }
    }

    /// True when sign-in sessions are shared by every gateway (the regional registry).
    pub fn shares_sessions(&self) -> bool {
        self.backend.is_regional()
    }

    /// Publishes a sign-in session to every gateway, under a lease of `idle` (the idle
    /// timeout: a session nobody uses anywhere disappears). The lease id; `None` for sled.
    pub async fn session_put(
        &self,
        key: &str,
        value: impl FnOnce(i64) -> Vec<u8>,
        idle: std::time::Duration,
    ) -> Result<Option<i64>, StoreError> {
        match self.backend.etcd() {
            Some(reg) => Ok(Some(
                reg.put_leased("sessions", key.as_bytes(), value, idle)
                    .await?,
            )),
            None => Ok(None),
        }
    }

    /// A shared session as published (from the in-memory copy).
    pub fn session_get(&self, key: &str) -> Option<Vec<u8>> {
        if !self.backend.is_regional() {
            return None;
        }
        self.sessions.get(key.as_bytes()).ok().flatten()
    }

    /// Every shared session (key, value) in the in-memory copy (empty for sled).
    pub fn shared_sessions(&self) -> Vec<(String, Vec<u8>)> {
        if !self.backend.is_regional() {
            return Vec::new();
        }
        self.sessions
            .entries()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v))
            .collect()
    }

    /// Ends a shared session at every gateway.
    pub async fn session_remove(&self, key: &str) -> Result<(), StoreError> {
        if self.backend.is_regional() {
            self.sessions.remove(key.as_bytes()).await?;
        }
        Ok(())
    }

    /// Restarts a shared session's idle clock (its lease) at every gateway.
    pub async fn session_refresh(&self, lease: i64) -> Result<(), StoreError> {
        if let Some(reg) = self.backend.etcd() {
            reg.keep_alive(lease).await?;
        }
        Ok(())
    }

    /// `registry status`: backend, revision, staleness, members.
    pub async fn status(&self) -> crate::registry::RegistryStatus {
        match self.backend.etcd() {
            Some(reg) => reg.status().await,
            None => crate::registry::RegistryStatus {
                backend: "sled".into(),
                revision: 0,
                stale_seconds: Some(0.0),
                max_stale_seconds: 0,
                usable: true,
                watch_restarts: 0,
                members: vec!["(embedded: this gateway only)".into()],
                prefix: None,
            },
        }
    }

    // ---- physicians (art 3, 4, 6.3, 7) ----

    pub fn physician(&self, id: &str) -> Result<Option<Physician>, StoreError> {
        self.physicians
            .get(id.as_bytes())?
            .map(|v| decode("physicians", id.as_bytes(), &v))
            .transpose()
    }

    pub async fn add_physician(&self, p: &Physician) -> Result<(), StoreError> {
        if !self
            .physicians
            .compare_and_swap(p.id.as_bytes(), None, Some(encode(p)))
            .await?
        {
            return Err(StoreError::Conflict(Conflict::PhysicianRegistered(
                p.id.clone(),
            )));
        }
        self.flush()
    }

    /// Applies `f` to a physician atomically and flushes.
    pub async fn update_physician(
        &self,
        id: &str,
        f: impl Fn(&mut Physician),
    ) -> Result<Physician, StoreError> {
        let ((), p) = self
            .modify_physician(id, f)
            .await?
            .ok_or_else(|| StoreError::NotFound(Missing::Physician(id.to_string())))?;
        self.flush()?;
        Ok(p)
    }

    /// Applies `f` to physician `id` in one atomic read-modify-write, not flushed. The backend
    /// may run the closure more than once (when the record changed meanwhile): the last run's
    /// result is the one stored and returned. `None` when there is no such physician.
    async fn modify_physician<R>(
        &self,
        id: &str,
        f: impl Fn(&mut Physician) -> R,
    ) -> Result<Option<(R, Physician)>, StoreError> {
        modify_record(&self.physicians, "physicians", id.as_bytes(), f).await
    }

    /// Reserves one password try of physician `id` (art 13.1, issue 11 item 1): the lock test
    /// and the failure count are one atomic read-modify-write of the stored record
    /// ([`auth::reserve_attempt`] inside the backend's compare-and-swap loop — one etcd
    /// transaction on the regional registry, so the count holds across gateways; the closure
    /// may run more than once and does no I/O), made durable before the password is checked.
    /// Returns the decision and the physician as stored by it (check the password against
    /// *its* hash).
    pub async fn reserve_signin_attempt(
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
            .modify_physician(id, |p| auth::reserve_attempt(p, now, max_failures, lockout))
            .await?
            .ok_or_else(|| StoreError::NotFound(Missing::Physician(id.to_string())))?;
        if let auth::Attempt::Counted { .. } = attempt {
            self.flush()?;
        }
        Ok((attempt, p))
    }

    /// A password try proved right: the count and any lock are cleared (art 13.1).
    pub async fn signin_succeeded(&self, id: &str) -> Result<Physician, StoreError> {
        self.update_physician(id, auth::record_success).await
    }

    pub async fn suspend_physician(
        &self,
        id: &str,
        reason: SuspendReason,
    ) -> Result<Physician, StoreError> {
        self.update_physician(id, |p| p.suspended = Some(reason))
            .await
    }

    pub async fn resume_physician(&self, id: &str) -> Result<Physician, StoreError> {
        self.update_physician(id, |p| p.suspended = None).await
    }

    /// Deregistration (art 7): the physician and all their terminals are removed. A later
    /// `add` with the same id is a new registration with no terminals.
    pub async fn delete_physician(&self, id: &str) -> Result<Vec<String>, StoreError> {
        if self.physicians.remove(id.as_bytes()).await?.is_none() {
            return Err(StoreError::NotFound(Missing::Physician(id.to_string())));
        }
        let mut removed = Vec::new();
        for t in self.terminals()? {
            if t.physician == id {
                self.terminals.remove(t.name.as_bytes()).await?;
                self.fingerprints.remove(t.fingerprint.as_bytes()).await?;
                removed.push(t.name);
            }
        }
        self.flush()?;
        Ok(removed)
    }

    pub fn physicians(&self) -> Result<Vec<Physician>, StoreError> {
        self.physicians
            .entries()?
            .iter()
            .map(|(k, v)| decode("physicians", k, v))
            .collect()
    }

    // ---- terminals (art 6.2, 12.7) ----

    pub async fn add_terminal(&self, t: &Terminal) -> Result<(), StoreError> {
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
        if !self
            .terminals
            .compare_and_swap(t.name.as_bytes(), None, Some(encode(t)))
            .await?
        {
            return Err(StoreError::Conflict(Conflict::TerminalRegistered(
                t.name.clone(),
            )));
        }
        if !self
            .fingerprints
            .compare_and_swap(
                t.fingerprint.as_bytes(),
                None,
                Some(t.name.as_bytes().to_vec()),
            )
            .await?
        {
            self.terminals.remove(t.name.as_bytes()).await?;
            return Err(StoreError::Conflict(Conflict::KeyRegistered {
                fingerprint: t.fingerprint.clone(),
            }));
        }
        self.flush()
    }

    pub fn terminal(&self, name: &str) -> Result<Option<Terminal>, StoreError> {
        self.terminals
            .get(name.as_bytes())?
            .map(|v| decode("terminals", name.as_bytes(), &v))
            .transpose()
    }

    /// The terminal whose certificate key has this fingerprint.
    pub fn terminal_by_fingerprint(&self, fp: &str) -> Result<Option<Terminal>, StoreError> {
        match self.fingerprints.get(fp.as_bytes())? {
            Some(name) => {
                let name = String::from_utf8_lossy(&name);
                self.terminal(&name)
            }
            None => Ok(None),
        }
    }

    /// Revocation: kept in the registry (for the record) but refused from the next request on.
    pub async fn revoke_terminal(&self, name: &str) -> Result<Terminal, StoreError> {
        let ((), t) = modify_record(
            &self.terminals,
            "terminals",
            name.as_bytes(),
            |t: &mut Terminal| {
                t.revoked = true;
            },
        )
        .await?
        .ok_or_else(|| StoreError::NotFound(Missing::Terminal(name.to_string())))?;
        self.flush()?;
        Ok(t)
    }

    pub fn terminals(&self) -> Result<Vec<Terminal>, StoreError> {
        self.terminals
            .entries()?
            .iter()
            .map(|(k, v)| decode("terminals", k, v))
            .collect()
    }

    // ---- consents (art 8, 9, 11), patients linked across EMRs (issue 14) ----
    //
    // A consent is one regional record, keyed by the granting site's `SITE:ID` (see
    // [`Consent::regional_key`]); the `links` tree maps every linked site id (`SITE:ID`) to that
    // key, so each gateway finds it through its own site's id from the URL: two memory reads
    // on the etcd backend. A consent registered before links (a single-site registry) is keyed
    // by the bare patient id and has no links: it is still found by that id at the site that
    // granted it (fallback, no migration; a `patient link` on it moves it to the linked form).

    /// The registry key of the consent that this site's patient id `patient` names, and
    /// whether it came through a link (false: the pre-link fallback, the bare id).
    fn consent_key(&self, patient: &str) -> Result<(Vec<u8>, bool), StoreError> {
        if let Some(site) = &self.site {
            if let Some(k) = self.links.get(link(site, patient).as_bytes())? {
                return Ok((k, true));
            }
        }
        Ok((patient.as_bytes().to_vec(), false))
    }

    fn consent_at(&self, key: &[u8]) -> Result<Option<Consent>, StoreError> {
        self.consents
            .get(key)?
            .map(|v| decode("consents", key, &v))
            .transpose()
    }

    /// The consent of the patient this site's EMR calls `patient` (a memory read on the
    /// regional registry).
    pub fn consent(&self, patient: &str) -> Result<Option<Consent>, StoreError> {
        let (key, linked) = self.consent_key(patient)?;
        let c = self.consent_at(&key)?;
        if linked {
            return Ok(c);
        }
        // The bare-id fallback: only a pre-link consent granted at this very site (another
        // site's EMR numbers its patients differently).
        Ok(c.filter(|c| c.links.is_empty() && self.site.as_deref().is_none_or(|s| s == c.site)))
    }

    /// The consent a link (`SITE:ID`) names, whichever site asks.
    pub fn consent_by_link(&self, l: &str) -> Result<Option<Consent>, StoreError> {
        match self.links.get(l.as_bytes())? {
            Some(k) => self.consent_at(&k),
            None => Ok(None),
        }
    }

    /// Checks a consent's links: each `SITE:ID` well formed, one per site.
    fn check_links(links: &[String]) -> Result<(), StoreError> {
        let mut sites = std::collections::BTreeMap::new();
        for l in links {
            let Some((site, id)) = l.split_once(':') else {
                return Err(StoreError::Conflict(Conflict::BadLink(l.clone())));
            };
            if !crate::registry::ids::SiteId::is_valid(site)
                || !crate::registry::ids::PatientId::is_valid(id)
            {
                return Err(StoreError::Conflict(Conflict::BadLink(l.clone())));
            }
            if let Some(other) = sites.insert(site.to_string(), id.to_string()) {
                if other != id {
                    return Err(StoreError::Conflict(Conflict::SiteLinkedTwice {
                        site: site.to_string(),
                        linked: other,
                        asked: id.to_string(),
                    }));
                }
            }
        }
        Ok(())
    }

    /// Points link `l` at consent `key`: refused when it names another patient's live consent.
    /// Returns the value it replaced (a stale link of a deleted consent), for a rollback.
    async fn claim_link(&self, l: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        for _ in 0..8 {
            let old = self.links.get(l.as_bytes())?;
            if let Some(o) = &old {
                if o.as_slice() == key {
                    return Ok(old);
                }
                if let Some(other) = self.consent_at(o)? {
                    return Err(StoreError::Conflict(Conflict::LinkTaken {
                        link: l.to_string(),
                        patient: other.regional_key(),
                    }));
                }
            }
            if self
                .links
                .compare_and_swap(l.as_bytes(), old.as_deref(), Some(key.to_vec()))
                .await?
            {
                return Ok(old);
            }
        }
        Err(StoreError::Backend(KvError::Contended(l.to_string(), 8)))
    }

    /// Undoes [`Store::claim_link`]s after a refused grant (best effort: a link left pointing
    /// at a key with no consent is harmless and is taken over by the next claim).
    async fn release_links(&self, claimed: &[(String, Option<Vec<u8>>)], key: &[u8]) {
        for (l, old) in claimed {
            if old.as_deref() == Some(key) {
                continue;
            }
            let _ = self
                .links
                .compare_and_swap(l.as_bytes(), Some(key), old.clone())
                .await;
        }
    }

    /// Removes the links of a deleted consent (those still pointing at its key). Best effort:
    /// the consent is already gone (access refused at every site), and a link left pointing at
    /// no consent finds nothing, is taken over by the next claim, and is removed by the next
    /// purge ([`Store::purge`] sweeps orphan links).
    async fn drop_links(&self, c: &Consent, key: &[u8]) -> Result<(), StoreError> {
        for l in &c.links {
            if let Err(e) = self
                .links
                .compare_and_swap(l.as_bytes(), Some(key), None)
                .await
            {
                tracing::warn!(link = %l, error = %e, "link of a deleted consent not removed yet (the next purge removes it)");
            }
        }
        Ok(())
    }

    /// Removes links that point at no consent (left by a deletion whose link removal failed).
    pub async fn sweep_orphan_links(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        for (l, key) in self.links.entries()? {
            if self.consents.get(&key)?.is_none()
                && self.links.compare_and_swap(&l, Some(&key), None).await?
            {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Registers (or renews, after a withdrawal) a patient's consent, with its links (the
    /// granting site's own first; each link one-to-one per site, a link already naming another
    /// patient's consent is refused with [`Conflict::LinkTaken`]). Atomic per record: two
    /// offices granting the same patient at once register one consent and refuse the other.
    pub async fn grant_consent(&self, c: &Consent) -> Result<(), StoreError> {
        Self::check_links(&c.links)?;
        if self.site.as_deref() == Some(c.site.as_str()) {
            if let Some(o) = self.consent(&c.patient)? {
                if o.withdrawn.is_none() && o.regional_key() != c.regional_key() {
                    return Err(StoreError::Conflict(Conflict::ConsentRegistered {
                        patient: c.patient.clone(),
                        form_ref: o.form_ref,
                    }));
                }
            }
        }
        let key = c.regional_key().into_bytes();
        let mut claimed = Vec::new();
        for l in &c.links {
            match self.claim_link(l, &key).await {
                Ok(old) => claimed.push((l.clone(), old)),
                Err(e) => {
                    self.release_links(&claimed, &key).await;
                    return Err(e);
                }
            }
        }
        let mut refused = None;
        let new = encode(c);
        self.consents
            .update(&key, |old| {
                refused = None;
                if let Some(old) = old {
                    if let Ok(o) = serde_json::from_slice::<Consent>(old) {
                        if o.withdrawn.is_none() {
                            refused = Some(o.form_ref);
                            return Some(old.to_vec());
                        }
                    }
                }
                Some(new.clone())
            })
            .await?;
        if let Some(form_ref) = refused {
            self.release_links(&claimed, &key).await;
            return Err(StoreError::Conflict(Conflict::ConsentRegistered {
                patient: c.patient.clone(),
                form_ref,
            }));
        }
        self.flush()
    }

    /// `patient link`: adds another site's id (`SITE:ID`) to the consent of this site's
    /// patient `patient`. One-to-one per site: a site already linked to another id, or a link
    /// already naming another patient, is refused ([`Conflict`]). A consent registered before
    /// links is moved to the linked form (re-keyed by this site's `SITE:ID`).
    pub async fn link_patient(&self, patient: &str, l: &str) -> Result<Consent, StoreError> {
        let Some(site) = self.site.clone() else {
            return Err(StoreError::Conflict(Conflict::NoSite));
        };
        let mut c = self
            .consent(patient)?
            .ok_or_else(|| StoreError::NotFound(Missing::Consent(patient.to_string())))?;
        let (old_key, _) = self.consent_key(patient)?;
        if c.links.is_empty() {
            // Pre-link consent: it becomes a linked one under this site's own id.
            c.links.push(link(&site, patient));
        }
        let mut links = c.links.clone();
        if !links.iter().any(|x| x == l) {
            links.push(l.to_string());
        }
        Self::check_links(&links)?;
        let key = c.regional_key().into_bytes();
        let mut claimed = Vec::new();
        for x in &links {
            match self.claim_link(x, &key).await {
                Ok(old) => claimed.push((x.clone(), old)),
                Err(e) => {
                    self.release_links(&claimed, &key).await;
                    return Err(e);
                }
            }
        }
        let mut out = None;
        let mut gone = false;
        let links2 = links.clone();
        if old_key == key {
            self.consents
                .update(&key, |old| {
                    out = None;
                    gone = old.is_none();
                    let old = old?;
                    match serde_json::from_slice::<Consent>(old) {
                        Ok(mut c) => {
                            c.links = links2.clone();
                            let v = encode(&c);
                            out = Some(c);
                            Some(v)
                        }
                        Err(_) => Some(old.to_vec()),
                    }
                })
                .await?;
        } else {
            // Re-keying a pre-link consent: written under its new key, then the old removed.
            c.links = links.clone();
            if !self
                .consents
                .compare_and_swap(&key, None, Some(encode(&c)))
                .await?
            {
                self.release_links(&claimed, &key).await;
                return Err(StoreError::Conflict(Conflict::LinkTaken {
                    link: link(&site, patient),
                    patient: c.regional_key(),
                }));
            }
            self.consents.remove(&old_key).await?;
            out = Some(c);
        }
        if gone {
            self.release_links(&claimed, &key).await;
            return Err(StoreError::NotFound(Missing::Consent(patient.to_string())));
        }
        let c = out.ok_or_else(|| StoreError::NotFound(Missing::Consent(patient.to_string())))?;
        self.flush()?;
        Ok(c)
    }

    /// Withdrawal (art 9.2, form 7; art 11.2 (1)): from the next request on, access is refused
    /// at every site the patient is linked at, and the patient's registration is deleted at
    /// once (art 11 asks for deletion on withdrawal, not at the next purge). Returns the
    /// deleted consent, marked withdrawn, for the admin's answer; the withdrawal itself is kept
    /// in the audit log (the admin request's record, with the form 7 reference), never in the
    /// registry.
    ///
    /// Atomic against a concurrent view: [`Store::touch_consent`] never re-creates a removed key.
    pub async fn withdraw_consent(
        &self,
        patient: &str,
        form_ref: &str,
        today: Date,
    ) -> Result<Consent, StoreError> {
        let (key, linked) = self.consent_key(patient)?;
        if !linked && self.consent(patient)?.is_none() {
            return Err(StoreError::NotFound(Missing::Consent(patient.to_string())));
        }
        let old = self
            .consents
            .remove(&key)
            .await?
            .ok_or_else(|| StoreError::NotFound(Missing::Consent(patient.to_string())))?;
        let mut c: Consent = decode("consents", &key, &old)?;
        self.drop_links(&c, &key).await?;
        self.flush()?;
        c.withdrawn = Some(Withdrawal {
            form_ref: form_ref.to_string(),
            date: today,
        });
        c.last_view = None;
        Ok(c)
    }

    /// Deletes a patient's registered data (art 11: form 8, or purge), at every linked site.
    /// The deleted consent (its links name the patient at each site, for the audit record);
    /// `None` when there was none. Audit history stays.
    pub async fn delete_consent(&self, patient: &str) -> Result<Option<Consent>, StoreError> {
        let (key, linked) = self.consent_key(patient)?;
        if !linked && self.consent(patient)?.is_none() {
            return Ok(None);
        }
        let Some(old) = self.consents.remove(&key).await? else {
            return Ok(None);
        };
        let c: Consent = decode("consents", &key, &old)?;
        self.drop_links(&c, &key).await?;
        self.flush()?;
        Ok(Some(c))
    }

    /// A later "do not extend" request (art 8.3) on this site's patient's consent.
    pub async fn set_no_extension(&self, patient: &str) -> Result<Consent, StoreError> {
        if self.consent(patient)?.is_none() {
            return Err(StoreError::NotFound(Missing::Consent(patient.to_string())));
        }
        let (key, _) = self.consent_key(patient)?;
        let mut out = None;
        self.consents
            .update(&key, |old| {
                out = None;
                let old = old?;
                match serde_json::from_slice::<Consent>(old) {
                    Ok(mut c) => {
                        c.no_extension = true;
                        let v = encode(&c);
                        out = Some(c);
                        Some(v)
                    }
                    Err(_) => Some(old.to_vec()),
                }
            })
            .await?;
        let c = out.ok_or_else(|| StoreError::NotFound(Missing::Consent(patient.to_string())))?;
        self.flush()?;
        Ok(c)
    }

    /// True when an allowed view today would move the patient's `last_view` (the day's first
    /// view): a read, so the request path only writes — and only spawns — when it must.
    pub fn view_moves_last_view(&self, patient: &str, today: Date) -> bool {
        match self.consent(patient) {
            Ok(Some(c)) => c.withdrawn.is_none() && c.last_view.is_none_or(|d| d < today),
            _ => false,
        }
    }

    /// Records an allowed view: `last_view` becomes `today` (art 8.3 extension), and only ever
    /// moves forward (a view recorded at another gateway with a later date is kept). The
    /// consent is one regional record, so `last_view` is the latest view at any site. Atomic
    /// against a concurrent withdrawal or deletion: a removed consent stays removed.
    pub async fn touch_consent(&self, patient: &str, today: Date) -> Result<(), StoreError> {
        // Most views are not the first of the day: a read is enough for them (no write, no
        // contention on the key).
        if !self.view_moves_last_view(patient, today) {
            return Ok(());
        }
        let (key, _) = self.consent_key(patient)?;
        self.consents
            .update(&key, |old| {
                let old = old?;
                match serde_json::from_slice::<Consent>(old) {
                    Ok(mut c) if c.withdrawn.is_none() && c.last_view.is_none_or(|d| d < today) => {
                        c.last_view = Some(today);
                        Some(encode(&c))
                    }
                    _ => Some(old.to_vec()),
                }
            })
            .await?;
        Ok(())
    }

    /// Every registered consent (for `registry export`).
    pub fn consents(&self) -> Result<Vec<Consent>, StoreError> {
        self.consents
            .entries()?
            .iter()
            .map(|(k, v)| decode("consents", k, v))
            .collect()
    }

    /// Art 11: the consents due for deletion today: access ended (999 days after the last view,
    /// or after publication), or withdrawn (a registry written before withdrawals deleted at
    /// once). Read only: [`Store::purge_if_due`] deletes them one by one.
    pub fn purge_due(&self, today: Date) -> Result<Vec<Consent>, StoreError> {
        let mut due = Vec::new();
        for (k, v) in self.consents.entries()? {
            let c: Consent = decode("consents", &k, &v)?;
            if c.withdrawn.is_some() || consent::purgeable(&c, today) {
                due.push(c);
            }
        }
        Ok(due)
    }

    /// Deletes one consent (by its [`regional key`](Consent::regional_key)) if it is still
    /// due today (a view or a new grant since [`Store::purge_due`] read it keeps it), and its
    /// links. True when deleted.
    pub async fn purge_if_due(&self, key: &str, today: Date) -> Result<bool, StoreError> {
        let patient = key;
        let mut deleted = None;
        let mut err = None;
        self.consents
            .update(patient.as_bytes(), |old| {
                deleted = None;
                err = None;
                let old = old?;
                match decode::<Consent>("consents", patient.as_bytes(), old) {
                    Ok(c) if c.withdrawn.is_some() || consent::purgeable(&c, today) => {
                        deleted = Some(c);
                        None
                    }
                    Ok(_) => Some(old.to_vec()),
                    Err(e) => {
                        err = Some(e);
                        Some(old.to_vec())
                    }
                }
            })
            .await
            .map_err(|e| match e {
                KvError::Contended(..) => {
                    StoreError::Conflict(Conflict::ConsentChanging(patient.to_string()))
                }
                e => StoreError::Backend(e),
            })?;
        if let Some(e) = err {
            return Err(e);
        }
        match deleted {
            Some(c) => {
                self.drop_links(&c, key.as_bytes()).await?;
                self.flush()?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    // ---- staff of the liaison office (issue 15) ----

    pub fn staff(&self, id: &str) -> Result<Option<Staff>, StoreError> {
        self.staff
            .get(id.as_bytes())?
            .map(|v| decode("staff", id.as_bytes(), &v))
            .transpose()
    }

    pub fn staff_list(&self) -> Result<Vec<Staff>, StoreError> {
        self.staff
            .entries()?
            .into_iter()
            .map(|(k, v)| decode("staff", &k, &v))
            .collect()
    }

    /// The staff member whose certificate key has this fingerprint (a few accounts: a scan).
    pub fn staff_by_fingerprint(&self, fp: &str) -> Result<Option<Staff>, StoreError> {
        Ok(self.staff_list()?.into_iter().find(|s| s.fingerprint == fp))
    }

    pub async fn add_staff(&self, s: &Staff) -> Result<(), StoreError> {
        if !self
            .staff
            .compare_and_swap(s.id.as_bytes(), None, Some(encode(s)))
            .await?
        {
            return Err(StoreError::Conflict(Conflict::StaffRegistered(
                s.id.clone(),
            )));
        }
        self.flush()
    }

    /// Applies `f` to staff member `id` in one atomic read-modify-write (the backend may run
    /// it more than once; the last run is stored) and flushes when `f` answers true (changed).
    pub async fn update_staff(
        &self,
        id: &str,
        f: impl Fn(&mut Staff) -> bool,
    ) -> Result<Staff, StoreError> {
        let (changed, s) = modify_record(&self.staff, "staff", id.as_bytes(), f)
            .await?
            .ok_or_else(|| StoreError::NotFound(Missing::Staff(id.to_string())))?;
        if changed {
            self.flush()?;
        }
        Ok(s)
    }

    /// Art 11: deletes every consent due ([`Store::purge_due`]). Returns the patients purged.
    pub async fn purge(&self, today: Date) -> Result<Vec<String>, StoreError> {
        let mut purged = Vec::new();
        for c in self.purge_due(today)? {
            if self.purge_if_due(&c.regional_key(), today).await? {
                purged.push(c.patient);
            }
        }
        self.sweep_orphan_links().await?;
        Ok(purged)
    }
}

mod heads;
pub use heads::PublishedHead;

/// Tests: runs a store write (async: the etcd backend awaits its transaction) to completion.
#[cfg(test)]
pub(crate) fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

#[cfg(test)]
mod tests;
