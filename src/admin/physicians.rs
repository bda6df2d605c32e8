//! Physician requests that change the registry (art 3, 4, 6.3, 7).

use super::{Admin, AdminError, AdminReply, AdminResponse};
use crate::ops::clock;
use crate::registry::model::{Physician, SuspendReason};

impl Admin {
    pub(super) async fn physician_add(
        &self,
        id: String,
        name: String,
        site: Option<String>,
        password_hash: Option<String>,
    ) -> Result<AdminResponse, AdminError> {
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
        self.store.add_physician(&p).await?;
        Ok(AdminResponse::ok(
            format!("physician {} registered", p.id),
            AdminReply::Physician(p),
        ))
    }

    /// A new one-time password; the physician's sessions end.
    pub(super) async fn physician_passwd(
        &self,
        id: &str,
        password_hash: String,
    ) -> Result<AdminResponse, AdminError> {
        let p = self
            .store
            .update_physician(id, |p| {
                p.password_hash = Some(password_hash.clone());
                p.must_change_password = true;
                p.failed_logins = 0;
                p.locked_until = None;
            })
            .await?;
        let ended = self.end_sessions(|x| x.physician == id);
        Ok(AdminResponse::ok(
            format!("password of physician {id} reset; {ended} session(s) ended"),
            AdminReply::PhysicianId(p.id),
        ))
    }

    pub(super) async fn physician_suspend(
        &self,
        id: &str,
        reason: SuspendReason,
    ) -> Result<AdminResponse, AdminError> {
        let p = self.store.suspend_physician(id, reason).await?;
        self.end_sessions(|x| x.physician == id);
        Ok(AdminResponse::ok(
            format!("physician {id} suspended ({})", reason.as_str()),
            AdminReply::Physician(p),
        ))
    }

    pub(super) async fn physician_resume(&self, id: &str) -> Result<AdminResponse, AdminError> {
        let p = self.store.resume_physician(id).await?;
        Ok(AdminResponse::ok(
            format!("physician {id} resumed"),
            AdminReply::Physician(p),
        ))
    }

    /// Deregistration (art 7): the physician's terminals go too, and their sessions end.
    pub(super) async fn physician_delete(&self, id: &str) -> Result<AdminResponse, AdminError> {
        let terminals = self.store.delete_physician(id).await?;
        self.end_sessions(|x| x.physician == id);
        Ok(AdminResponse::ok(
            format!(
                "physician {id} deregistered with {} terminal(s)",
                terminals.len()
            ),
            AdminReply::Names(terminals),
        ))
    }
}
