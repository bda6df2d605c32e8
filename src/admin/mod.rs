//! The admin surface: typed requests that change the registries, executed by the running
//! gateway on its Unix socket (sled allows one process), or directly on the store when no
//! gateway runs. One JSON request line in, one JSON response line out.
//!
//! Every change is written to the audit log too (ingress `admin`), so the legal record shows
//! who was registered, suspended, consented or withdrawn, and when.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use time::Date;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::audit::{AuditError, AuditLog, Outcome, RequestRecord};
use crate::clock::{self, SharedClock};
use crate::ids::{PatientId, PhysicianId};
use crate::metrics::Metrics;
use crate::model::{Consent, ConsentBy, Physician, SuspendReason, Terminal};
use crate::session::Sessions;
use crate::shutdown::Shutdown;
use crate::store::{Store, StoreError};

/// Longest request line accepted on the socket.
pub const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum AdminRequest {
    PhysicianAdd {
        id: String,
        name: String,
        site: Option<String>,
        /// Argon2id hash of the initial password (hashed by the CLI; never sent in clear).
        #[serde(default)]
        password_hash: Option<String>,
    },
    /// Resets the password to a new one-time one and ends the physician's sessions.
    PhysicianPasswd {
        id: String,
        password_hash: String,
    },
    PhysicianGet {
        id: String,
    },
    PhysicianSuspend {
        id: String,
        reason: SuspendReason,
    },
    PhysicianResume {
        id: String,
    },
    PhysicianDelete {
        id: String,
    },
    PhysicianList {},
    TerminalRegister {
        terminal: Terminal,
    },
    TerminalRevoke {
        name: String,
    },
    TerminalList {},
    ConsentGrant {
        patient: String,
        by: ConsentBy,
        #[serde(with = "crate::model::ymd")]
        published: Date,
        no_extension: bool,
        form_ref: String,
    },
    ConsentWithdraw {
        patient: String,
        form_ref: String,
    },
    ConsentShow {
        patient: String,
    },
    PatientDelete {
        patient: String,
        form_ref: String,
    },
    Purge {},
}

impl AdminRequest {
    fn op(&self) -> &'static str {
        match self {
            AdminRequest::PhysicianAdd { .. } => "physician-add",
            AdminRequest::PhysicianGet { .. } => "physician-get",
            AdminRequest::PhysicianPasswd { .. } => "physician-passwd",
            AdminRequest::PhysicianSuspend { .. } => "physician-suspend",
            AdminRequest::PhysicianResume { .. } => "physician-resume",
            AdminRequest::PhysicianDelete { .. } => "physician-delete",
            AdminRequest::PhysicianList {} => "physician-list",
            AdminRequest::TerminalRegister { .. } => "terminal-register",
            AdminRequest::TerminalRevoke { .. } => "terminal-revoke",
            AdminRequest::TerminalList {} => "terminal-list",
            AdminRequest::ConsentGrant { .. } => "consent-grant",
            AdminRequest::ConsentWithdraw { .. } => "consent-withdraw",
            AdminRequest::ConsentShow { .. } => "consent-show",
            AdminRequest::PatientDelete { .. } => "patient-delete",
            AdminRequest::Purge {} => "purge",
        }
    }

    /// True for requests that change the registry (audited before the change).
    pub fn mutates(&self) -> bool {
        !matches!(
            self,
            AdminRequest::PhysicianGet { .. }
                | AdminRequest::PhysicianList {}
                | AdminRequest::TerminalList {}
                | AdminRequest::ConsentShow { .. }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminResponse {
    pub ok: bool,
    pub message: String,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl AdminResponse {
    fn ok(message: impl Into<String>, data: serde_json::Value) -> AdminResponse {
        AdminResponse {
            ok: true,
            message: message.into(),
            data,
        }
    }

    fn err(message: impl Into<String>) -> AdminResponse {
        AdminResponse {
            ok: false,
            message: message.into(),
            data: serde_json::Value::Null,
        }
    }
}

/// What admin requests act on.
#[derive(Clone, Debug)]
pub struct Admin {
    pub store: Store,
    pub audit: AuditLog,
    pub site: String,
    pub clock: SharedClock,
    pub metrics: Option<Metrics>,
    /// Where the request came from, for the audit (`admin-socket` or `cli`).
    pub origin: &'static str,
    /// The running gateway's sign-in sessions, ended by suspension, revocation and resets.
    pub sessions: Option<Arc<Sessions>>,
    /// Woken when terminals change, so the WireGuard ingress reloads its peers at once.
    pub terminals_changed: Option<Arc<tokio::sync::Notify>>,
}

fn json<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// Why an admin request was refused or failed; its status goes to the audit's outcome line.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The request itself is not acceptable (checked before anything is written).
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Store(StoreError),
    /// A record could not be written: nothing more is changed (fail closed).
    #[error("audit record could not be written (fail closed): {0}")]
    Audit(#[from] AuditError),
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => AdminError::NotFound(m),
            StoreError::Conflict(m) => AdminError::Conflict(m),
            other => AdminError::Store(other),
        }
    }
}

impl AdminError {
    /// The HTTP-like status written as the outcome of the request's audit record.
    pub fn status(&self) -> u16 {
        match self {
            AdminError::Invalid(_) => 400,
            AdminError::NotFound(_) => 404,
            AdminError::Conflict(_) => 409,
            AdminError::Store(_) => 500,
            AdminError::Audit(_) => 503,
        }
    }

    /// A short, stable word for the audit's `reason`.
    pub fn kind(&self) -> &'static str {
        match self {
            AdminError::Invalid(_) => "invalid-input",
            AdminError::NotFound(_) => "not-found",
            AdminError::Conflict(_) => "conflict",
            AdminError::Store(_) => "store-error",
            AdminError::Audit(_) => "audit-unavailable",
        }
    }
}

/// Longest admin error message kept in an audit record.
const AUDIT_MESSAGE_MAX: usize = 240;

fn capped(msg: &str) -> String {
    match msg.char_indices().nth(AUDIT_MESSAGE_MAX) {
        Some((at, _)) => format!("{}…", &msg[..at]),
        None => msg.to_string(),
    }
}

impl Admin {
    /// Executes one request, audited (art 12.8):
    ///
    /// * a request that changes the registry is recorded *before* the change (decision
    ///   `allow`: admitted and about to be applied), durably; if that record cannot be written
    ///   nothing is changed and the request fails (fail closed). The change's result follows
    ///   as the record's outcome line (200 applied, 404, 409, 500), also durable before the
    ///   answer;
    /// * a request refused for its input (checked before anything is written), and a read
    ///   that is refused (an unknown physician or patient), is recorded with decision `deny`,
    ///   the reason and its outcome status;
    /// * a read that succeeds changes nothing and is not recorded.
    pub async fn execute(&self, req: AdminRequest) -> AdminResponse {
        let op = req.op();
        let mutates = req.mutates();
        let started = std::time::Instant::now();
        let (physician, patient, note) = subject(&req);
        if let Err(e) = validate(&req) {
            return self.refused(op, physician, patient, &e, started).await;
        }
        let touches_terminals = matches!(
            req,
            AdminRequest::TerminalRegister { .. }
                | AdminRequest::TerminalRevoke { .. }
                | AdminRequest::PhysicianDelete { .. }
        );
        let rid = if mutates {
            let rec = self.record(op, "allow", physician.clone(), patient.clone(), note);
            match self.audit.record(rec).await {
                Ok(rid) => Some(rid),
                Err(e) => {
                    return AdminResponse::err(format!(
                        "{op} refused and not applied: its audit record could not be written (fail closed): {e}"
                    ))
                }
            }
        } else {
            None
        };
        // Never let a password hash reach the audit or a log.
        let result = self.apply(req).await;
        if touches_terminals && result.is_ok() {
            if let Some(n) = &self.terminals_changed {
                n.notify_one();
            }
        }
        match rid {
            Some(rid) => {
                let status = result.as_ref().map_or_else(AdminError::status, |_| 200);
                let outcome = self
                    .audit
                    .outcome_synced(rid, outcome(status, started))
                    .await;
                let mut resp = result.unwrap_or_else(|e| AdminResponse::err(e.to_string()));
                if let Err(e) = outcome {
                    resp.ok = false;
                    resp.message = format!(
                        "{} — but the outcome line of its audit record (seq {rid}) could not be written: {e}",
                        resp.message
                    );
                }
                resp
            }
            None => match result {
                Ok(r) => r,
                Err(e) => self.refused(op, physician, patient, &e, started).await,
            },
        }
    }

    /// The audit record of an admin request (ingress `admin`). Ids that are not valid are
    /// left out of the physician and patient fields (the reason says what was asked).
    fn record(
        &self,
        op: &str,
        decision: &str,
        physician: Option<String>,
        patient: Option<String>,
        reason: String,
    ) -> RequestRecord {
        RequestRecord {
            time: clock::rfc3339(self.clock.now()),
            site: self.site.clone(),
            ingress: "admin".into(),
            client: self.origin.into(),
            terminal: None,
            physician: physician.filter(|p| PhysicianId::is_valid(p)),
            method: "ADMIN".into(),
            path: op.into(),
            patient: patient.filter(|p| PatientId::is_valid(p)),
            category: None,
            decision: decision.into(),
            reason,
            serial: None,
            cn: None,
        }
    }

    /// Records a refused request (decision `deny`, the error's kind and message, its status
    /// as the outcome) and answers with the error.
    async fn refused(
        &self,
        op: &str,
        physician: Option<String>,
        patient: Option<String>,
        e: &AdminError,
        started: std::time::Instant,
    ) -> AdminResponse {
        let reason = format!("{}: {}", e.kind(), capped(&e.to_string()));
        let rec = self.record(op, "deny", physician, patient, reason);
        let written = match self.audit.record(rec).await {
            Ok(rid) => self
                .audit
                .outcome_synced(rid, outcome(e.status(), started))
                .await
                .map(|_| ()),
            Err(err) => Err(err),
        };
        match written {
            Ok(()) => AdminResponse::err(e.to_string()),
            Err(err) => AdminResponse::err(format!(
                "{e} (and the refusal's audit record could not be written: {err})"
            )),
        }
    }

    fn end_sessions(&self, pred: impl Fn(&crate::session::Session) -> bool) -> usize {
        self.sessions
            .as_ref()
            .map(|s| s.end_where(pred))
            .unwrap_or(0)
    }

    fn count(&self, kind: &str, n: u64) {
        if let Some(m) = &self.metrics {
            m.consent_events.with_label_values(&[kind]).inc_by(n);
        }
    }

    async fn apply(&self, req: AdminRequest) -> Result<AdminResponse, AdminError> {
        let s = &self.store;
        let today = self.clock.today();
        Ok(match req {
            AdminRequest::PhysicianAdd {
                id,
                name,
                site,
                password_hash,
            } => {
                let p = Physician {
                    id,
                    name,
                    site: site.unwrap_or_else(|| self.site.clone()),
                    suspended: None,
                    registered: clock::rfc3339(self.clock.now()),
                    must_change_password: password_hash.is_some(),
                    password_hash,
                    failed_logins: 0,
                    locked_until: None,
                };
                s.add_physician(&p)?;
                AdminResponse::ok(format!("physician {} registered", p.id), json(&p))
            }
            AdminRequest::PhysicianGet { id } => match s.physician(&id)? {
                Some(p) => AdminResponse::ok(format!("physician {id}"), json(&p)),
                None => return Err(AdminError::NotFound(format!("no physician {id:?}"))),
            },
            AdminRequest::PhysicianPasswd { id, password_hash } => {
                let p = s.update_physician(&id, |p| {
                    p.password_hash = Some(password_hash.clone());
                    p.must_change_password = true;
                    p.failed_logins = 0;
                    p.locked_until = None;
                })?;
                let ended = self.end_sessions(|x| x.physician == id);
                AdminResponse::ok(
                    format!("password of physician {id} reset; {ended} session(s) ended"),
                    json(&p.id),
                )
            }
            AdminRequest::PhysicianSuspend { id, reason } => {
                let p = s.suspend_physician(&id, reason)?;
                self.end_sessions(|x| x.physician == id);
                AdminResponse::ok(
                    format!("physician {id} suspended ({})", reason.as_str()),
                    json(&p),
                )
            }
            AdminRequest::PhysicianResume { id } => {
                let p = s.resume_physician(&id)?;
                AdminResponse::ok(format!("physician {id} resumed"), json(&p))
            }
            AdminRequest::PhysicianDelete { id } => {
                let terminals = s.delete_physician(&id)?;
                self.end_sessions(|x| x.physician == id);
                AdminResponse::ok(
                    format!(
                        "physician {id} deregistered with {} terminal(s)",
                        terminals.len()
                    ),
                    json(&terminals),
                )
            }
            AdminRequest::PhysicianList {} => {
                let list = s.physicians()?;
                AdminResponse::ok(format!("{} physician(s)", list.len()), json(&list))
            }
            AdminRequest::TerminalRegister { terminal } => {
                s.add_terminal(&terminal)?;
                AdminResponse::ok(
                    format!(
                        "terminal {} registered to physician {}",
                        terminal.name, terminal.physician
                    ),
                    json(&terminal),
                )
            }
            AdminRequest::TerminalRevoke { name } => {
                let t = s.revoke_terminal(&name)?;
                let fp = t.fingerprint.clone();
                self.end_sessions(|x| x.terminal == fp);
                AdminResponse::ok(format!("terminal {name} revoked"), json(&t))
            }
            AdminRequest::TerminalList {} => {
                let list = s.terminals()?;
                AdminResponse::ok(format!("{} terminal(s)", list.len()), json(&list))
            }
            AdminRequest::ConsentGrant {
                patient,
                by,
                published,
                no_extension,
                form_ref,
            } => {
                let c = Consent {
                    patient,
                    by,
                    site: self.site.clone(),
                    form_ref,
                    published,
                    no_extension,
                    last_view: None,
                    withdrawn: None,
                };
                s.grant_consent(&c)?;
                self.count("grant", 1);
                let w = crate::consent::access_until(&c);
                AdminResponse::ok(
                    format!(
                        "consent for patient {} registered: records from {}, access until {} (extended by each view{})",
                        c.patient,
                        crate::consent::records_from(c.published),
                        w,
                        if c.no_extension { " — declined" } else { "" }
                    ),
                    json(&c),
                )
            }
            AdminRequest::ConsentWithdraw { patient, form_ref } => {
                let c = s.withdraw_consent(&patient, &form_ref, today)?;
                self.count("withdraw", 1);
                AdminResponse::ok(
                    format!(
                        "consent of patient {patient} withdrawn: access stops now, and the registration is deleted (art 11; the withdrawal stays in the audit log)"
                    ),
                    json(&c),
                )
            }
            AdminRequest::ConsentShow { patient } => match s.consent(&patient)? {
                Some(c) => {
                    let mut v = json(&c);
                    if let serde_json::Value::Object(m) = &mut v {
                        m.insert(
                            "records_from".into(),
                            json(&crate::consent::records_from(c.published).to_string()),
                        );
                        m.insert(
                            "access_until".into(),
                            json(&crate::consent::access_until(&c).to_string()),
                        );
                        m.insert(
                            "allowed_today".into(),
                            json(&crate::consent::evaluate(&c, today).is_ok()),
                        );
                    }
                    AdminResponse::ok(format!("consent of patient {patient}"), v)
                }
                None => {
                    return Err(AdminError::NotFound(format!(
                        "no consent for patient {patient:?}"
                    )))
                }
            },
            AdminRequest::PatientDelete { patient, .. } => {
                if !s.delete_consent(&patient)? {
                    return Err(AdminError::NotFound(format!(
                        "no consent for patient {patient:?}"
                    )));
                }
                self.count("delete", 1);
                AdminResponse::ok(
                    format!("patient {patient}'s registered data deleted (audit history kept)"),
                    serde_json::Value::Null,
                )
            }
            AdminRequest::Purge {} => {
                let purged = self.purge(today).await?;
                AdminResponse::ok(format!("{} patient(s) purged", purged.len()), json(&purged))
            }
        })
    }

    /// Art 11: every consent due is deleted, each after its own audit record (op
    /// `patient-purge`, the patient, why it is due) is durable; a record that cannot be
    /// written stops the purge there (fail closed).
    async fn purge(&self, today: Date) -> Result<Vec<String>, AdminError> {
        let mut purged = Vec::new();
        for c in self.store.purge_due(today)? {
            let why = match &c.withdrawn {
                Some(w) => format!("art 11: consent withdrawn (form {})", w.form_ref),
                None => format!(
                    "art 11: access ended on {} (999 days after the last view or the publication)",
                    crate::consent::access_until(&c)
                ),
            };
            let started = std::time::Instant::now();
            let rec = self.record("patient-purge", "allow", None, Some(c.patient.clone()), why);
            let rid = self.audit.record(rec).await?;
            let done = self.store.purge_if_due(&c.patient, today);
            let status = match &done {
                Ok(true) => 200,
                // Viewed or granted anew since it was read: kept.
                Ok(false) => 409,
                Err(_) => 500,
            };
            self.audit
                .outcome_synced(rid, outcome(status, started))
                .await?;
            if done? {
                purged.push(c.patient);
            }
        }
        if !purged.is_empty() {
            self.count("purge", purged.len() as u64);
        }
        Ok(purged)
    }
}

fn outcome(status: u16, started: std::time::Instant) -> Outcome {
    Outcome {
        status,
        bytes: 0,
        duration_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
    }
}

/// Longest form reference (form 6, 7 or 8 number) accepted.
const FORM_REF_MAX: usize = 128;

/// Checks what a request says before anything is written or changed: ids, names, form
/// references, the relation of a consenting relative (art 8.1).
pub fn validate(req: &AdminRequest) -> Result<(), AdminError> {
    let physician_id = |v: &str| {
        PhysicianId::parse(v)
            .map(drop)
            .map_err(|e| AdminError::Invalid(e.to_string()))
    };
    let patient_id = |v: &str| {
        PatientId::parse(v)
            .map(drop)
            .map_err(|e| AdminError::Invalid(e.to_string()))
    };
    let name = |v: &str| {
        if crate::ids::TerminalName::is_valid(v) {
            Ok(())
        } else {
            Err(AdminError::Invalid(format!(
                "terminal name {v:?}: use letters, digits, '.', '_' or '-'"
            )))
        }
    };
    let form = |v: &str| {
        if v.trim().is_empty()
            || v.chars().count() > FORM_REF_MAX
            || v.chars().any(char::is_control)
        {
            Err(AdminError::Invalid(format!(
                "form reference {v:?}: 1-{FORM_REF_MAX} characters, no control characters"
            )))
        } else {
            Ok(())
        }
    };
    match req {
        AdminRequest::PhysicianAdd { id: p, name: n, .. } => {
            physician_id(p)?;
            if n.trim().is_empty() || n.chars().count() > 200 || n.chars().any(char::is_control) {
                return Err(AdminError::Invalid(format!(
                    "physician name {n:?}: 1-200 characters, no control characters"
                )));
            }
            Ok(())
        }
        AdminRequest::PhysicianPasswd { id: p, .. }
        | AdminRequest::PhysicianGet { id: p }
        | AdminRequest::PhysicianSuspend { id: p, .. }
        | AdminRequest::PhysicianResume { id: p }
        | AdminRequest::PhysicianDelete { id: p } => physician_id(p),
        AdminRequest::TerminalRegister { terminal } => {
            name(&terminal.name)?;
            if terminal.kind == crate::model::TerminalKind::Terminal {
                physician_id(&terminal.physician)?;
            }
            Ok(())
        }
        AdminRequest::TerminalRevoke { name: n } => name(n),
        AdminRequest::ConsentGrant {
            patient,
            by,
            form_ref,
            ..
        } => {
            patient_id(patient)?;
            form(form_ref)?;
            if let ConsentBy::Relative(rel) = by {
                if rel.trim().is_empty()
                    || rel.chars().count() > 100
                    || rel.chars().any(char::is_control)
                {
                    return Err(AdminError::Invalid(
                        "--relation is required when a relative consents (art 8.1), at most 100 characters".into(),
                    ));
                }
            }
            Ok(())
        }
        AdminRequest::ConsentWithdraw { patient, form_ref }
        | AdminRequest::PatientDelete { patient, form_ref } => {
            patient_id(patient)?;
            form(form_ref)
        }
        AdminRequest::ConsentShow { patient } => patient_id(patient),
        AdminRequest::PhysicianList {} | AdminRequest::TerminalList {} | AdminRequest::Purge {} => {
            Ok(())
        }
    }
}

/// The physician and patient an admin request is about, and a note for the audit.
fn subject(req: &AdminRequest) -> (Option<String>, Option<String>, String) {
    match req {
        AdminRequest::PhysicianAdd { id, .. }
        | AdminRequest::PhysicianPasswd { id, .. }
        | AdminRequest::PhysicianResume { id }
        | AdminRequest::PhysicianDelete { id }
        | AdminRequest::PhysicianGet { id } => (Some(id.clone()), None, String::new()),
        AdminRequest::PhysicianSuspend { id, reason } => {
            (Some(id.clone()), None, reason.as_str().to_string())
        }
        AdminRequest::TerminalRegister { terminal } => (
            Some(terminal.physician.clone()),
            None,
            format!("terminal {}", capped(&terminal.name)),
        ),
        AdminRequest::TerminalRevoke { name } => (None, None, format!("terminal {}", capped(name))),
        AdminRequest::ConsentGrant {
            patient,
            by,
            form_ref,
            ..
        } => (
            None,
            Some(patient.clone()),
            format!("form {} by {}", capped(form_ref), consent_by(by)),
        ),
        AdminRequest::ConsentWithdraw { patient, form_ref }
        | AdminRequest::PatientDelete { patient, form_ref } => (
            None,
            Some(patient.clone()),
            format!("form {}", capped(form_ref)),
        ),
        AdminRequest::ConsentShow { patient } => (None, Some(patient.clone()), String::new()),
        AdminRequest::PhysicianList {} | AdminRequest::TerminalList {} | AdminRequest::Purge {} => {
            (None, None, String::new())
        }
    }
}

/// Who consented, as the audit says it (art 8.1): `patient`, `guardian`, `relative (spouse)`.
fn consent_by(by: &ConsentBy) -> String {
    match by {
        ConsentBy::Patient => "patient".into(),
        ConsentBy::Guardian => "guardian".into(),
        ConsentBy::Relative(r) => format!("relative ({})", capped(r)),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdminSocketError {
    #[error("admin socket {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("admin socket: bad response: {0}")]
    Protocol(String),
}

/// Binds the admin socket with mode 0600 (a stale socket file from a crash is replaced).
pub fn bind(path: &Path) -> Result<UnixListener, AdminSocketError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |source| AdminSocketError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    if path.exists() {
        std::fs::remove_file(path).map_err(io)?;
    }
    // Bind with a restrictive umask-equivalent: set the mode immediately after binding; the
    // directory (state dir, 0700) already keeps others out in between.
    let l = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(l)
}

/// Serves admin requests until shutdown.
pub async fn serve(listener: UnixListener, admin: Arc<Admin>, mut shutdown: Shutdown) {
    loop {
        let stream = tokio::select! {
            s = listener.accept() => s,
            _ = shutdown.recv() => return,
        };
        let Ok((stream, _)) = stream else { continue };
        let admin = admin.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_one(stream, &admin).await {
                tracing::warn!(error = %e, "admin connection failed");
            }
        });
    }
}

async fn serve_one(stream: UnixStream, admin: &Admin) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = Vec::new();
    let n = BufReader::new(r.take(MAX_REQUEST as u64 + 1))
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        // A connection that only probed the socket (readiness checks): nothing to answer.
        return Ok(());
    }
    let resp = if n > MAX_REQUEST {
        AdminResponse::err("request too long")
    } else {
        match serde_json::from_slice::<AdminRequest>(&line) {
            Ok(req) => admin.execute(req).await,
            Err(e) => AdminResponse::err(format!("bad admin request: {e}")),
        }
    };
    let mut out = serde_json::to_vec(&resp).unwrap_or_default();
    out.push(b'\n');
    w.write_all(&out).await?;
    w.shutdown().await
}

/// Sends one request to a running gateway. `Ok(None)` when no gateway listens on the socket.
pub async fn call(
    path: &Path,
    req: &AdminRequest,
) -> Result<Option<AdminResponse>, AdminSocketError> {
    let io = |source| AdminSocketError::Io {
        path: path.display().to_string(),
        source,
    };
    let stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(io(e)),
    };
    let (r, mut w) = stream.into_split();
    let mut line =
        serde_json::to_vec(req).map_err(|e| AdminSocketError::Protocol(e.to_string()))?;
    line.push(b'\n');
    w.write_all(&line).await.map_err(io)?;
    w.shutdown().await.map_err(io)?;
    let mut resp = Vec::new();
    BufReader::new(r.take(16 * 1024 * 1024))
        .read_until(b'\n', &mut resp)
        .await
        .map_err(io)?;
    serde_json::from_slice(&resp)
        .map(Some)
        .map_err(|e| AdminSocketError::Protocol(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire format is stable JSON: scripts may speak it.
    #[test]
    fn admin_request_wire_format() {
        let r: AdminRequest =
            serde_json::from_str(r#"{"op":"physician-suspend","id":"d1","reason":"retirement"}"#)
                .unwrap();
        assert_eq!(
            r,
            AdminRequest::PhysicianSuspend {
                id: "d1".into(),
                reason: SuspendReason::Retirement
            }
        );
        assert!(serde_json::from_str::<AdminRequest>(r#"{"op":"drop-tables"}"#).is_err());
        assert!(serde_json::from_str::<AdminRequest>(r#"{"op":"purge","extra":1}"#).is_err());
    }
}
