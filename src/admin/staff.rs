//! Staff accounts of the liaison office's console (issue 15): added with their staff
//! certificate by `seibo-gate staff add`, suspended, listed. A suspended account is refused
//! by the console from its next request on (the console reads the account every request).

use super::{Admin, AdminError, AdminReply, AdminResponse, StaffView};
use crate::registry::model::Staff;

impl Admin {
    pub(super) async fn staff_add(&self, s: Staff) -> Result<AdminResponse, AdminError> {
        if self
            .store
            .terminal_by_fingerprint(&s.fingerprint)?
            .is_some()
        {
            return Err(AdminError::Invalid(
                "this certificate is a physician's terminal: a staff account needs its own staff certificate".into(),
            ));
        }
        self.store.add_staff(&s).await?;
        Ok(AdminResponse::ok(
            format!("staff member {} registered ({})", s.id, s.role.as_str()),
            AdminReply::Staff(StaffView::from(&s)),
        ))
    }

    pub(super) async fn staff_suspend(&self, id: &str) -> Result<AdminResponse, AdminError> {
        let s = self
            .store
            .update_staff(id, |s| {
                let changed = !s.suspended;
                s.suspended = true;
                changed
            })
            .await?;
        Ok(AdminResponse::ok(
            format!("staff member {id} suspended"),
            AdminReply::Staff(StaffView::from(&s)),
        ))
    }

    pub(super) fn staff_list(&self) -> Result<AdminResponse, AdminError> {
        let list: Vec<StaffView> = self
            .store
            .staff_list()?
            .iter()
            .map(StaffView::from)
            .collect();
        Ok(AdminResponse::ok(
            format!("{} staff member(s)", list.len()),
            AdminReply::StaffList(list),
        ))
    }
}
