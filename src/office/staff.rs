//! Staff accounts on the console (role `admin` only; the router refuses a clerk): the list
//! and suspension. Accounts are added with `seibo-gate staff add` on the gateway host, which
//! issues the staff certificate.

use http::StatusCode;
use minijinja::context;

use super::forms::{self, Fields};
use super::router::{Ctx, Fail, PageResult};
use super::Console;
use crate::admin::AdminRequest;

/// `GET /office/staff`.
pub fn list(console: &Console, ctx: &Ctx) -> PageResult {
    let list: Vec<_> = console
        .admin
        .store
        .staff_list()
        .map_err(|e| Fail::Unavailable(e.to_string()))?
        .into_iter()
        .map(|s| {
            context! {
                not_after => s.not_after.to_offset(crate::ops::clock::JST).date().to_string(),
                role => s.role.as_str(), id => s.id, name => s.name, suspended => s.suspended,
            }
        })
        .collect();
    Ok(console.templates.page(
        StatusCode::OK,
        "staff.html",
        context! { ..ctx.base(console, "staff"), ..context! { list } },
    ))
}

/// `POST /office/staff/suspend`.
pub async fn suspend(console: &Console, ctx: &Ctx, f: &Fields) -> PageResult {
    let id = forms::physician_id(f.get("id"))?;
    let r = ctx
        .admin(console, AdminRequest::StaffSuspend { id }, String::new())
        .await?;
    Ok(console.templates.page(
        StatusCode::OK,
        "done.html",
        context! { ..ctx.base(console, "staff"), ..context! {
            title_ja => "職員アカウントを停止しました", title_en => "Staff account suspended",
            message => r.message, back => "/office/staff",
        } },
    ))
}
