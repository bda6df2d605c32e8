//! The terminals' page (art 6.2, 12.7): every terminal with its certificate's expiry, a new
//! certificate for a registered physician (downloadable once), and revocation after a
//! confirmation step.

use http::StatusCode;
use minijinja::context;

use super::forms::{self, Fields};
use super::issue;
use super::router::{Ctx, Fail, PageResult};
use super::Console;
use crate::admin::AdminRequest;
use crate::registry::model::TerminalKind;

/// Certificates expiring within this many days are marked.
pub const EXPIRY_WARNING_DAYS: i64 = 60;

fn jst_date(t: time::OffsetDateTime) -> String {
    t.to_offset(crate::ops::clock::JST).date().to_string()
}

/// `GET /office/terminals`.
pub fn list(console: &Console, ctx: &Ctx) -> PageResult {
    let now = console.gate.clock.now();
    let soon = now + time::Duration::days(EXPIRY_WARNING_DAYS);
    let terminals: Vec<_> = console
        .admin
        .store
        .terminals()
        .map_err(|e| Fail::Unavailable(e.to_string()))?
        .into_iter()
        .map(|t| {
            context! {
                soon => t.not_after < soon,
                not_after => jst_date(t.not_after),
                kind => match (t.kind, t.wireguard_key().is_some()) {
                    (TerminalKind::SiteSystem, _) => "院内システム / site system",
                    (_, true) => "WireGuard",
                    _ => "証明書 / certificate",
                },
                name => t.name, physician => t.physician, revoked => t.revoked,
            }
        })
        .collect();
    Ok(console.templates.page(
        StatusCode::OK,
        "terminals.html",
        context! { ..ctx.base(console, "terminals"), ..context! {
            terminals, wireguard => console.wireguard.is_some(),
        } },
    ))
}

/// `POST /office/terminals/issue`: a certificate for a registered physician's terminal.
pub async fn issue(console: &Console, ctx: &Ctx, f: &Fields) -> PageResult {
    let physician = forms::physician_id(f.get("physician"))?;
    let name = forms::terminal_name(f.required("terminal", "端末名", "Terminal name")?)?;
    let p = console
        .admin
        .store
        .physician(&physician)
        .map_err(|e| Fail::Unavailable(e.to_string()))?
        .ok_or_else(|| {
            forms::bad(
                format!("医師ID「{physician}」は登録されていません。"),
                format!("No physician {physician:?} is registered."),
            )
        })?;
    let issued = match f.get("kind") {
        "" | "certificate" => {
            issue::certificate(
                console,
                ctx,
                &p.id,
                &p.name,
                &name,
                "terminal issued on the console",
            )
            .await?
        }
        "wireguard" => issue::wireguard_conf(console, ctx, &p.id, &name).await?,
        other => {
            return Err(forms::bad(
                format!("端末の種類「{other}」は選べません（証明書・WireGuard）。"),
                format!("Terminal kind {other:?} is not one of: certificate, wireguard."),
            )
            .into())
        }
    };
    Ok(console.templates.page(
        StatusCode::OK,
        "issued.html",
        context! { ..ctx.base(console, "terminals"), ..context! {
            title_ja => "端末証明書を発行しました", title_en => "Terminal certificate issued",
            message => format!("{}（{}）の端末 {name}", p.name, p.id),
            download => issued, back => "/office/terminals",
        } },
    ))
}

/// `POST /office/terminals/revoke`, after a confirmation step.
pub async fn revoke(console: &Console, ctx: &Ctx, f: &Fields) -> PageResult {
    let name = forms::terminal_name(f.get("name"))?;
    if !forms::confirmed(f) {
        return Ok(console.templates.page(
            StatusCode::OK,
            "confirm.html",
            context! { ..ctx.base(console, "terminals"), ..context! {
                text_ja => format!("端末 {name} を失効させます。次の要求から使えなくなります。"),
                text_en => format!("Terminal {name} is revoked: refused from its next request on."),
                shown => vec![("端末 / terminal", name.clone())],
                fields => vec![("name", name)],
                action => "/office/terminals/revoke",
                button => "失効させる / Revoke", back => "/office/terminals",
            } },
        ));
    }
    let r = ctx
        .admin(
            console,
            AdminRequest::TerminalRevoke { name },
            String::new(),
        )
        .await?;
    Ok(console.templates.page(
        StatusCode::OK,
        "done.html",
        context! { ..ctx.base(console, "terminals"), ..context! {
            title_ja => "端末を失効させました", title_en => "Terminal revoked",
            message => r.message, back => "/office/terminals",
        } },
    ))
}
