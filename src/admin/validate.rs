//! Checks of an admin request's input before anything is written, and what its audit record
//! says about it.

use super::{AdminError, AdminRequest};
use crate::registry::ids::{PatientId, PhysicianId};
use crate::registry::model::ConsentBy;

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
    let site_link = |v: &str| {
        match v.split_once(':') {
        Some((site, id))
            if crate::registry::ids::SiteId::is_valid(site) && PatientId::is_valid(id) =>
        {
            Ok(())
        }
        _ => Err(AdminError::Invalid(format!(
            "--link {v:?}: use SITE:ID, a site id and that site's EMR patient id (e.g. nomura-clinic:N-778)"
        ))),
    }
    };
    let name = |v: &str| {
        if crate::registry::ids::TerminalName::is_valid(v) {
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
        AdminRequest::PhysicianAdd {
            id: p,
            name: n,
            form_ref: f,
            ..
        } => {
            physician_id(p)?;
            f.as_deref().map(form).transpose()?;
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
        | AdminRequest::PhysicianDelete { id: p, .. } => physician_id(p),
        AdminRequest::TerminalRegister { terminal } => {
            name(&terminal.name)?;
            if terminal.kind == crate::registry::model::TerminalKind::Terminal {
                physician_id(&terminal.physician)?;
            }
            Ok(())
        }
        AdminRequest::TerminalRevoke { name: n } => name(n),
        AdminRequest::ConsentGrant {
            patient,
            by,
            form_ref,
            links,
            explanation,
            ..
        } => {
            patient_id(patient)?;
            form(form_ref)?;
            if let ConsentBy::Relative(rel) = by {
                crate::registry::relation::Relation::parse(rel)
                    .map_err(|e| AdminError::Invalid(e.to_string()))?;
            }
            if let Some(x) = explanation {
                form(&x.form_ref)?;
                physician_id(&x.physician)?;
            }
            links.iter().try_for_each(|l| site_link(l))
        }
        AdminRequest::ConsentNoExtension { patient, form_ref } => {
            patient_id(patient)?;
            form(form_ref)
        }
        AdminRequest::PatientLink { patient, link } => {
            patient_id(patient)?;
            site_link(link)
        }
        AdminRequest::ConsentWithdraw {
            patient,
            form_ref,
            by,
        } => {
            patient_id(patient)?;
            if let Some(ConsentBy::Relative(rel)) = by {
                crate::registry::relation::Relation::parse(rel)
                    .map_err(|e| AdminError::Invalid(e.to_string()))?;
            }
            form(form_ref)
        }
        AdminRequest::PatientDelete { patient, form_ref } => {
            patient_id(patient)?;
            form(form_ref)
        }
        AdminRequest::ConsentShow { patient } => patient_id(patient),
        AdminRequest::StaffAdd { id: s, name: n, .. } => {
            staff_id(s)?;
            if n.trim().is_empty() || n.chars().count() > 200 || n.chars().any(char::is_control) {
                return Err(AdminError::Invalid(format!(
                    "staff name {n:?}: 1-200 characters, no control characters"
                )));
            }
            Ok(())
        }
        AdminRequest::StaffSuspend { id } => staff_id(id),
        AdminRequest::PhysicianList {}
        | AdminRequest::TerminalList {}
        | AdminRequest::RegistryStatus {}
        | AdminRequest::Purge {}
        | AdminRequest::StaffList {} => Ok(()),
    }
}

/// A staff id has the shape of a physician id (letters, digits, '.', '_', '-').
fn staff_id(v: &str) -> Result<(), AdminError> {
    PhysicianId::parse(v)
        .map(drop)
        .map_err(|e| AdminError::Invalid(format!("staff {e}")))
}

/// The physician and patient an admin request is about, and a note for the audit.
pub(super) fn subject(req: &AdminRequest) -> (Option<String>, Option<String>, String) {
    match req {
        AdminRequest::PhysicianAdd {
            id,
            form_ref: Some(f),
            ..
        } => (Some(id.clone()), None, format!("form 3 {}", capped(f))),
        AdminRequest::PhysicianDelete {
            id,
            form_ref: Some(f),
        } => (Some(id.clone()), None, format!("form 9 {}", capped(f))),
        AdminRequest::PhysicianAdd { id, .. }
        | AdminRequest::PhysicianPasswd { id, .. }
        | AdminRequest::PhysicianResume { id }
        | AdminRequest::PhysicianDelete { id, .. }
        | AdminRequest::PhysicianGet { id } => (Some(id.clone()), None, String::new()),
        AdminRequest::PhysicianSuspend {
            id,
            reason,
            form_ref,
        } => (
            Some(id.clone()),
            None,
            match form_ref {
                Some(f) => format!("{} (form 9 {})", reason.as_str(), capped(f)),
                None => reason.as_str().to_string(),
            },
        ),
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
            links,
            explanation,
            ..
        } => (None, Some(patient.clone()), {
            let mut note = format!("form {} by {}", capped(form_ref), consent_by(by));
            if let Some(x) = explanation {
                note.push_str(&format!(
                    ", explained by {} (form 5 {})",
                    capped(&x.physician),
                    capped(&x.form_ref)
                ));
            }
            if !links.is_empty() {
                let l: Vec<String> = links.iter().map(|l| capped(l)).collect();
                note.push_str(&format!(", linked {}", l.join(", ")));
            }
            note
        }),
        AdminRequest::PatientLink { patient, link } => (
            None,
            Some(patient.clone()),
            format!("link {}", capped(link)),
        ),
        AdminRequest::ConsentWithdraw {
            patient,
            form_ref,
            by,
        } => (
            None,
            Some(patient.clone()),
            match by {
                Some(by) => format!("form 7 {} by {}", capped(form_ref), consent_by(by)),
                None => format!("form {}", capped(form_ref)),
            },
        ),
        AdminRequest::PatientDelete { patient, form_ref } => (
            None,
            Some(patient.clone()),
            format!("form {}", capped(form_ref)),
        ),
        AdminRequest::ConsentNoExtension { patient, form_ref } => (
            None,
            Some(patient.clone()),
            format!("do not extend (art 8.3), form {}", capped(form_ref)),
        ),
        AdminRequest::ConsentShow { patient } => (None, Some(patient.clone()), String::new()),
        AdminRequest::StaffAdd { id, role, .. } => (
            None,
            None,
            format!("staff {} ({})", capped(id), role.as_str()),
        ),
        AdminRequest::StaffSuspend { id } => (None, None, format!("staff {}", capped(id))),
        AdminRequest::PhysicianList {}
        | AdminRequest::TerminalList {}
        | AdminRequest::RegistryStatus {}
        | AdminRequest::Purge {}
        | AdminRequest::StaffList {} => (None, None, String::new()),
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

/// Longest admin error message kept in an audit record.
const AUDIT_MESSAGE_MAX: usize = 240;

pub(super) fn capped(msg: &str) -> String {
    match msg.char_indices().nth(AUDIT_MESSAGE_MAX) {
        Some((at, _)) => format!("{}…", &msg[..at]),
        None => msg.to_string(),
    }
}
