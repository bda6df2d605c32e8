//! Terminal requests that change the registry (art 6.2, 12.7).

use super::{Admin, AdminError, AdminReply, AdminResponse};
use crate::registry::model::Terminal;

impl Admin {
    pub(super) async fn terminal_register(
        &self,
        terminal: Terminal,
    ) -> Result<AdminResponse, AdminError> {
        self.store.add_terminal(&terminal).await?;
        Ok(AdminResponse::ok(
            format!(
                "terminal {} registered to physician {}",
                terminal.name, terminal.physician
            ),
            AdminReply::Terminal(terminal),
        ))
    }

    /// Revocation: refused from the next request on; the terminal's sessions end.
    pub(super) async fn terminal_revoke(&self, name: &str) -> Result<AdminResponse, AdminError> {
        let t = self.store.revoke_terminal(name).await?;
        let fp = t.fingerprint.clone();
        self.end_sessions(|x| x.terminal == fp);
        Ok(AdminResponse::ok(
            format!("terminal {name} revoked"),
            AdminReply::Terminal(t),
        ))
    }
}
