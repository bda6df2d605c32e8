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

use crate::audit::{AuditLog, RequestRecord};
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

impl Admin {
    /// Executes one request.
    pub async fn execute(&self, req: AdminRequest) -> AdminResponse {
        let op = req.op();
        let mutates = !matches!(
            req,
            AdminRequest::PhysicianGet { .. }
                | AdminRequest::PhysicianList {}
                | AdminRequest::TerminalList {}
                | AdminRequest::ConsentShow { .. }
        );
        let (physician, patient, note) = subject(&req);
        let touches_terminals = matches!(
            req,
            AdminRequest::TerminalRegister { .. }
                | AdminRequest::TerminalRevoke { .. }
                | AdminRequest::PhysicianDelete { .. }
        );
        // Never let a password hash reach the audit or a log.
        let resp = match self.apply(req) {
            Ok(r) => r,
            Err(e) => AdminResponse::err(e.to_string()),
        };
        if touches_terminals && resp.ok {
            if let Some(n) = &self.terminals_changed {
                n.notify_one();
            }
        }
        if mutates && resp.ok {
            let now = self.clock.now();
            let rec = RequestRecord {
                time: clock::rfc3339(now),
                site: self.site.clone(),
                ingress: "admin".into(),
                client: self.origin.into(),
                terminal: None,
                physician,
                method: "ADMIN".into(),
                path: op.into(),
                patient,
                category: None,
                decision: "allow".into(),
                reason: note,
                serial: None,
                cn: None,
            };
            if let Err(e) = self.audit.record(rec).await {
                return AdminResponse::err(format!(
                    "{} — but its audit record could not be written: {e}",
                    resp.message
                ));
            }
        }
        resp
    }

    fn end_sessions(&self, pred: impl Fn(&crate::session::Session) -> bool) -> usize {
        self.sessions
            .as_ref()
            .map(|s| s.end_where(pred))
            .unwrap_or(0)
    }

    fn apply(&self, req: AdminRequest) -> Result<AdminResponse, StoreError> {
        let s = &self.store;
        let today = self.clock.today();
        let count = |kind: &str, n: u64| {
            if let Some(m) = &self.metrics {
                m.consent_events.with_label_values(&[kind]).inc_by(n);
            }
        };
        Ok(match req {
            AdminRequest::PhysicianAdd {
                id,
                name,
                site,
                password_hash,
            } => {
                if let Err(e) = PhysicianId::parse(&id) {
                    return Ok(AdminResponse::err(e.to_string()));
                }
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
                None => AdminResponse::err(format!("no physician {id:?}")),
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
                if let Err(e) = PatientId::parse(&patient) {
                    return Ok(AdminResponse::err(e.to_string()));
                }
                if let ConsentBy::Relative(rel) = &by {
                    if rel.trim().is_empty() {
                        return Ok(AdminResponse::err(
                            "--relation is required when a relative consents (art 8.1)",
                        ));
                    }
                }
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
                count("grant", 1);
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
                count("withdraw", 1);
                AdminResponse::ok(
                    format!("consent of patient {patient} withdrawn: access stops now"),
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
                None => AdminResponse::err(format!("no consent for patient {patient:?}")),
            },
            AdminRequest::PatientDelete { patient, .. } => {
                if s.delete_consent(&patient)? {
                    count("delete", 1);
                    AdminResponse::ok(
                        format!("patient {patient}'s registered data deleted (audit history kept)"),
                        serde_json::Value::Null,
                    )
                } else {
                    AdminResponse::err(format!("no consent for patient {patient:?}"))
                }
            }
            AdminRequest::Purge {} => {
                let purged = s.purge(today)?;
                count("purge", purged.len() as u64);
                AdminResponse::ok(format!("{} patient(s) purged", purged.len()), json(&purged))
            }
        })
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
            format!("terminal {}", terminal.name),
        ),
        AdminRequest::TerminalRevoke { name } => (None, None, format!("terminal {name}")),
        AdminRequest::ConsentGrant {
            patient, form_ref, ..
        }
        | AdminRequest::ConsentWithdraw { patient, form_ref }
        | AdminRequest::PatientDelete { patient, form_ref } => {
            (None, Some(patient.clone()), format!("form {form_ref}"))
        }
        AdminRequest::ConsentShow { patient } => (None, Some(patient.clone()), String::new()),
        AdminRequest::PhysicianList {} | AdminRequest::TerminalList {} | AdminRequest::Purge {} => {
            (None, None, String::new())
        }
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
