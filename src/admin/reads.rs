//! Requests that only read the registry (a read that succeeds is not audited).

use super::{Admin, AdminError, AdminReply, AdminResponse, ConsentView};
use crate::policy::consent;
use crate::registry::store::Missing;

impl Admin {
    pub(super) fn physician_get(&self, id: &str) -> Result<AdminResponse, AdminError> {
        let p = self
            .store
            .physician(id)?
            .ok_or_else(|| AdminError::NotFound(Missing::Physician(id.to_string())))?;
        Ok(AdminResponse::ok(
            format!("physician {id}"),
            AdminReply::Physician(p),
        ))
    }

    pub(super) fn physician_list(&self) -> Result<AdminResponse, AdminError> {
        let list = self.store.physicians()?;
        Ok(AdminResponse::ok(
            format!("{} physician(s)", list.len()),
            AdminReply::Physicians(list),
        ))
    }

    pub(super) fn terminal_list(&self) -> Result<AdminResponse, AdminError> {
        let list = self.store.terminals()?;
        Ok(AdminResponse::ok(
            format!("{} terminal(s)", list.len()),
            AdminReply::Terminals(list),
        ))
    }

    /// A patient's consent, with the records it opens and until when (today's view).
    pub(super) fn consent_show(&self, patient: &str) -> Result<AdminResponse, AdminError> {
        let c = self
            .store
            .consent(patient)?
            .ok_or_else(|| AdminError::NotFound(Missing::Consent(patient.to_string())))?;
        let view = ConsentView {
            records_from: consent::records_from(c.published),
            access_until: consent::access_until(&c),
            allowed_today: consent::evaluate(&c, self.clock.today()).is_ok(),
            consent: c,
        };
        Ok(AdminResponse::ok(
            format!("consent of patient {patient}"),
            AdminReply::ConsentView(view),
        ))
    }
}
