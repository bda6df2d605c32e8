//! The admin surface: typed requests that change the registries, executed by the running
//! gateway on its Unix socket (sled allows one process), or directly on the store when no
//! gateway runs. One JSON request line in, one JSON response line out.
//!
//! Every change is written to the audit log too (ingress `admin`), so the legal record shows
//! who was registered, suspended, consented or withdrawn, and when.
//!
//! * this file: the requests, the replies, the errors, and [`Admin::execute`] (audit first);
//! * [`validate`](validate()): the checks of a request's input before anything is written;
//! * `physicians`, `terminals`, `consents`, `reads`: the handlers, one family each;
//! * `socket`: the Unix socket ([`bind`], [`serve`], [`call`]).

mod consents;
mod physicians;
mod reads;
mod reply;
mod socket;
mod staff;
pub(crate) mod terminal_issue;
mod terminals;
mod validate;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use time::Date;

use crate::audit::{AuditError, AuditLog, Decision, Ingress, Outcome, RequestRecord};
use crate::ops::clock::{self, SharedClock};
use crate::ops::metrics::Metrics;
use crate::policy::session::Sessions;
use crate::registry::ids::{PatientId, PhysicianId};
use crate::registry::model::{ConsentBy, StaffRole, SuspendReason, Terminal};
use crate::registry::store::{Store, StoreError};

pub use reply::{AdminReply, AdminResponse, ConsentView, StaffView};
pub use socket::{bind, call, serve, AdminSocketError};
pub use validate::validate;

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
        /// The registration application (form 3), recorded in the audit.
        #[serde(default)]
        form_ref: Option<String>,
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
        /// The suspension notice (form 9), recorded in the audit.
        #[serde(default)]
        form_ref: Option<String>,
    },
    PhysicianResume {
        id: String,
    },
    PhysicianDelete {
        id: String,
        /// The deregistration notice (form 9), recorded in the audit.
        #[serde(default)]
        form_ref: Option<String>,
    },
    PhysicianList {},
    TerminalRegister {
        terminal: Terminal,
    },
    TerminalRevoke {
        name: String,
    },
    TerminalList {},
    /// `registry status`: backend, revision, staleness, members (a read).
    RegistryStatus {},
    ConsentGrant {
        patient: String,
        by: ConsentBy,
        #[serde(with = "crate::registry::model::ymd")]
        published: Date,
        no_extension: bool,
        form_ref: String,
        /// Other sites' EMR ids of the patient (`SITE:ID`, issue 14).
        #[serde(default)]
        links: Vec<String>,
        /// The explanation (form 5) and the physician who explained.
        #[serde(default)]
        explanation: Option<crate::registry::model::Explanation>,
    },
    /// A later "do not extend" request (art 8.3) on an existing consent.
    ConsentNoExtension {
        patient: String,
        form_ref: String,
    },
    /// `patient link`: adds another site's EMR id to this site's patient's consent.
    PatientLink {
        patient: String,
        link: String,
    },
    ConsentWithdraw {
        patient: String,
        form_ref: String,
        /// Who withdrew (form 7): patient, relative (with the relation) or guardian.
        #[serde(default)]
        by: Option<ConsentBy>,
    },
    ConsentShow {
        patient: String,
    },
    PatientDelete {
        patient: String,
        form_ref: String,
    },
    Purge {},
    /// A liaison-office staff account with its staff certificate (issued by the CLI).
    StaffAdd {
        id: String,
        name: String,
        role: StaffRole,
        /// Argon2id hash of the one-time password (hashed by the CLI).
        password_hash: String,
        fingerprint: String,
        serial: String,
        #[serde(with = "time::serde::rfc3339")]
        not_after: time::OffsetDateTime,
    },
    StaffSuspend {
        id: String,
    },
    StaffList {},
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
            AdminRequest::RegistryStatus {} => "registry-status",
            AdminRequest::ConsentGrant { .. } => "consent-grant",
            AdminRequest::ConsentWithdraw { .. } => "consent-withdraw",
            AdminRequest::PatientLink { .. } => "patient-link",
            AdminRequest::ConsentNoExtension { .. } => "consent-no-extension",
            AdminRequest::ConsentShow { .. } => "consent-show",
            AdminRequest::PatientDelete { .. } => "patient-delete",
            AdminRequest::Purge {} => "purge",
            AdminRequest::StaffAdd { .. } => "staff-add",
            AdminRequest::StaffSuspend { .. } => "staff-suspend",
            AdminRequest::StaffList {} => "staff-list",
        }
    }

    /// True for requests that change the registry (audited before the change).
    pub fn mutates(&self) -> bool {
        !matches!(
            self,
            AdminRequest::PhysicianGet { .. }
                | AdminRequest::PhysicianList {}
                | AdminRequest::TerminalList {}
                | AdminRequest::RegistryStatus {}
                | AdminRequest::ConsentShow { .. }
                | AdminRequest::StaffList {}
        )
    }

    /// True for requests that change which terminals are registered (the WireGuard ingress
    /// reloads its peers after them).
    fn touches_terminals(&self) -> bool {
        matches!(
            self,
            AdminRequest::TerminalRegister { .. }
                | AdminRequest::TerminalRevoke { .. }
                | AdminRequest::PhysicianDelete { .. }
        )
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

/// Who asked for a request made on the liaison office's console (issue 15), written into
/// its audit record: the staff member (`staff`), the console's connection (`client`), and
/// what the form says beyond the request (form 5, the explaining physician, the site links,
/// who withdrew), appended to the record's reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub staff: String,
    pub client: String,
    pub note: String,
}

/// Why an admin request was refused or failed; its status goes to the audit's outcome line.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The request itself is not acceptable (checked before anything is written).
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(crate::registry::store::Missing),
    #[error("{0}")]
    Conflict(crate::registry::store::Conflict),
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
            StoreError::Conflict(c) => AdminError::Conflict(c),
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
        self.execute_by(req, None).await
    }

    /// [`Admin::execute`] for a staff member on the office console: the same checks and the
    /// same audit first, with the [`Actor`] in the record.
    pub async fn execute_by(&self, req: AdminRequest, actor: Option<&Actor>) -> AdminResponse {
        let op = req.op();
        let started = std::time::Instant::now();
        let (physician, patient, note) = validate::subject(&req);
        let who = Who {
            op,
            physician,
            patient,
            actor,
        };
        if let Err(e) = validate(&req) {
            return self.refused(&who, &e, started).await;
        }
        if !req.mutates() {
            return match self.apply(req).await {
                Ok(r) => r,
                Err(e) => self.refused(&who, &e, started).await,
            };
        }
        let touches_terminals = req.touches_terminals();
        let rec = self.record_by(&who, Decision::Allow, note);
        let rid = match self.audit.record(rec).await {
            Ok(rid) => rid,
            Err(e) => {
                return AdminResponse::err(format!(
                    "{op} refused and not applied: its audit record could not be written (fail closed): {e}"
                ))
            }
        };
        // Never let a password hash reach the audit or a log.
        let result = self.apply(req).await;
        if touches_terminals && result.is_ok() {
            if let Some(n) = &self.terminals_changed {
                n.notify_one();
            }
        }
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

    /// Applies an admitted request: each family's handler answers its own requests.
    async fn apply(&self, req: AdminRequest) -> Result<AdminResponse, AdminError> {
        match req {
            AdminRequest::PhysicianAdd {
                id,
                name,
                site,
                password_hash,
                ..
            } => self.physician_add(id, name, site, password_hash).await,
            AdminRequest::PhysicianPasswd { id, password_hash } => {
                self.physician_passwd(&id, password_hash).await
            }
            AdminRequest::PhysicianSuspend { id, reason, .. } => {
                self.physician_suspend(&id, reason).await
            }
            AdminRequest::PhysicianResume { id } => self.physician_resume(&id).await,
            AdminRequest::PhysicianDelete { id, .. } => self.physician_delete(&id).await,
            AdminRequest::TerminalRegister { terminal } => self.terminal_register(terminal).await,
            AdminRequest::TerminalRevoke { name } => self.terminal_revoke(&name).await,
            AdminRequest::ConsentGrant {
                patient,
                by,
                published,
                no_extension,
                form_ref,
                links,
                explanation,
            } => {
                let paper = consents::Paper {
                    form_ref,
                    links,
                    explanation,
                };
                self.consent_grant(patient, by, published, no_extension, paper)
                    .await
            }
            AdminRequest::ConsentNoExtension { patient, .. } => {
                self.consent_no_extension(&patient).await
            }
            AdminRequest::PatientLink { patient, link } => self.patient_link(&patient, &link).await,
            AdminRequest::ConsentWithdraw {
                patient, form_ref, ..
            } => self.consent_withdraw(&patient, &form_ref).await,
            AdminRequest::PatientDelete { patient, .. } => self.patient_delete(&patient).await,
            AdminRequest::Purge {} => self.purge_due().await,
            AdminRequest::PhysicianGet { id } => self.physician_get(&id),
            AdminRequest::PhysicianList {} => self.physician_list(),
            AdminRequest::TerminalList {} => self.terminal_list(),
            AdminRequest::RegistryStatus {} => Ok(AdminResponse::ok(
                "registry status".to_string(),
                AdminReply::Registry(self.store.status().await),
            )),
            AdminRequest::ConsentShow { patient } => self.consent_show(&patient),
            AdminRequest::StaffAdd {
                id,
                name,
                role,
                password_hash,
                fingerprint,
                serial,
                not_after,
            } => {
                self.staff_add(crate::registry::model::Staff {
                    id,
                    name,
                    role,
                    suspended: false,
                    registered: clock::rfc3339(self.clock.now()),
                    password_hash,
                    must_change_password: true,
                    failed_logins: 0,
                    locked_until: None,
                    fingerprint,
                    serial,
                    not_after,
                })
                .await
            }
            AdminRequest::StaffSuspend { id } => self.staff_suspend(&id).await,
            AdminRequest::StaffList {} => self.staff_list(),
        }
    }

    /// The audit record of an admin request (ingress `admin`). Ids that are not valid are
    /// left out of the physician and patient fields (the reason says what was asked).
    fn record(
        &self,
        op: &str,
        decision: Decision,
        physician: Option<String>,
        patient: Option<String>,
        reason: String,
    ) -> RequestRecord {
        RequestRecord {
            time: clock::rfc3339(self.clock.now()),
            site: self.site.clone(),
            ingress: Ingress::Admin,
            client: self.origin.into(),
            terminal: None,
            physician: physician.filter(|p| PhysicianId::is_valid(p)),
            method: "ADMIN".into(),
            path: op.into(),
            patient: patient.filter(|p| PatientId::is_valid(p)),
            category: None,
            decision,
            reason,
            serial: None,
            cn: None,
            staff: None,
        }
    }

    /// [`Admin::record`] of a request by `who`: a staff member's id, connection and note
    /// go into the record.
    fn record_by(&self, who: &Who<'_>, decision: Decision, reason: String) -> RequestRecord {
        let mut rec = self.record(
            who.op,
            decision,
            who.physician.clone(),
            who.patient.clone(),
            reason,
        );
        if let Some(a) = who.actor {
            rec.staff = Some(a.staff.clone());
            rec.client = a.client.clone();
            if !a.note.is_empty() {
                rec.reason = if rec.reason.is_empty() {
                    validate::capped(&a.note)
                } else {
                    format!("{}; {}", rec.reason, validate::capped(&a.note))
                };
            }
        }
        rec
    }

    /// Records a refused request (decision `deny`, the error's kind and message, its status
    /// as the outcome) and answers with the error.
    async fn refused(
        &self,
        who: &Who<'_>,
        e: &AdminError,
        started: std::time::Instant,
    ) -> AdminResponse {
        let reason = format!("{}: {}", e.kind(), validate::capped(&e.to_string()));
        let rec = self.record_by(who, Decision::Deny, reason);
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

    /// Ends the running gateway's sign-in sessions that `pred` picks; how many.
    fn end_sessions(&self, pred: impl Fn(&crate::policy::session::Session) -> bool) -> usize {
        self.sessions
            .as_ref()
            .map(|s| s.end_where(pred))
            .unwrap_or(0)
    }
}

/// What the audit record of one request names.
struct Who<'a> {
    op: &'static str,
    physician: Option<String>,
    patient: Option<String>,
    actor: Option<&'a Actor>,
}

fn outcome(status: u16, started: std::time::Instant) -> Outcome {
    Outcome {
        status,
        bytes: 0,
        duration_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
    }
}
