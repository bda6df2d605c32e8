//! The physicians' page (art 3, 4, 6.2, 6.3, 7): register from form 3 (a one-time password
//! shown once, a terminal certificate downloadable once, the handover rules printed),
//! suspend with the reason of form 9, resume, deregister (form 9, with a confirmation step),
//! and a new one-time password.

use http::StatusCode;
use minijinja::context;

use super::forms::{self, Fields};
use super::issue;
use super::router::{Ctx, Fail, PageResult};
use super::Console;
use crate::admin::AdminRequest;
use crate::policy::auth;
use crate::registry::model::SuspendReason;

/// `GET /office/physicians`.
pub fn list(console: &Console, ctx: &Ctx) -> PageResult {
    let now = console.gate.clock.now();
    let physicians: Vec<_> = console
        .admin
        .store
        .physicians()
        .map_err(|e| Fail::Unavailable(e.to_string()))?
        .into_iter()
        .map(|p| {
            context! {
                locked => auth::locked_until(&p, now).is_some(),
                suspended => p.suspended.map(SuspendReason::as_str),
                id => p.id, name => p.name, site => p.site,
            }
        })
        .collect();
    Ok(console.templates.page(
        StatusCode::OK,
        "physicians.html",
        context! { ..ctx.base(console, "physicians"), ..context! { physicians } },
    ))
}

/// A one-time password and its hash (on the bounded pool).
async fn one_time_password(console: &Console) -> Result<(String, String), Fail> {
    let slot =
        console.gate.hasher.try_slot().map_err(|_| {
            Fail::Unavailable("the password hashing slots are busy; try again".into())
        })?;
    let password = auth::generate_password();
    let hash = slot
        .hash(password.clone())
        .await
        .map_err(|e| Fail::Unavailable(e.to_string()))?;
    Ok((password, hash))
}

/// `POST /office/physicians/register`: form 3.
pub async fn register(console: &Console, ctx: &Ctx, f: &Fields) -> PageResult {
    let form3 = forms::form_ref(f.get("form3"), 3)?;
    let id = forms::physician_id(f.required("id", "医師ID", "Physician ID")?)?;
    let name = forms::person_name(f.get("name"))?;
    let terminal = forms::terminal_name(f.required("terminal", "端末名", "Terminal name")?)?;
    let (password, hash) = one_time_password(console).await?;
    ctx.admin(
        console,
        AdminRequest::PhysicianAdd {
            id: id.clone(),
            name: name.clone(),
            site: None,
            password_hash: Some(hash),
            form_ref: Some(form3.clone()),
        },
        format!("form 3 {form3}"),
    )
    .await?;
    let issued = issue::certificate(
        console,
        ctx,
        &id,
        &name,
        &terminal,
        &format!("form 3 {form3}"),
    )
    .await;
    let (download, message) = match issued {
        Ok(i) => (Some(i), format!("{name}（{id}）を登録し、端末 {terminal} の証明書を発行しました。 / Physician {id} registered, terminal {terminal} issued.")),
        Err(Fail::Unavailable(m) | Fail::Refused(m)) => (None, format!("{name}（{id}）を登録しました。端末証明書は発行できませんでした: {m} / Registered; the terminal certificate could not be issued: {m}")),
        Err(e) => return Err(e),
    };
    Ok(console.templates.page(
        StatusCode::OK,
        "issued.html",
        context! { ..ctx.base(console, "physicians"), ..context! {
            title_ja => "利用医を登録しました", title_en => "Physician registered",
            message, password, download, back => "/office/physicians",
        } },
    ))
}

fn done(console: &Console, ctx: &Ctx, ja: &str, en: &str, message: String) -> PageResult {
    Ok(console.templates.page(
        StatusCode::OK,
        "done.html",
        context! { ..ctx.base(console, "physicians"), ..context! {
            title_ja => ja, title_en => en, message, back => "/office/physicians",
        } },
    ))
}

/// `POST /office/physicians/suspend`: art 4 with its reason (form 9).
pub async fn suspend(console: &Console, ctx: &Ctx, f: &Fields) -> PageResult {
    let id = forms::physician_id(f.get("id"))?;
    let reason: SuspendReason = f.get("reason").parse().map_err(|e: String| {
        forms::bad(
            "停止の理由を選んでください（退職・本人の申出・規約違反）。",
            e,
        )
    })?;
    let form9 = forms::form_ref(f.get("form9"), 9)?;
    let r = ctx
        .admin(
            console,
            AdminRequest::PhysicianSuspend {
                id,
                reason,
                form_ref: Some(form9.clone()),
            },
            format!("form 9 {form9}"),
        )
        .await?;
    done(console, ctx, "利用を停止しました", "Suspended", r.message)
}

/// `POST /office/physicians/resume`.
pub async fn resume(console: &Console, ctx: &Ctx, f: &Fields) -> PageResult {
    let id = forms::physician_id(f.get("id"))?;
    let r = ctx
        .admin(console, AdminRequest::PhysicianResume { id }, String::new())
        .await?;
    done(console, ctx, "利用を再開しました", "Resumed", r.message)
}

/// `POST /office/physicians/passwd`: a new one-time password, shown once.
pub async fn passwd(console: &Console, ctx: &Ctx, f: &Fields) -> PageResult {
    let id = forms::physician_id(f.get("id"))?;
    let (password, hash) = one_time_password(console).await?;
    let r = ctx
        .admin(
            console,
            AdminRequest::PhysicianPasswd {
                id,
                password_hash: hash,
            },
            String::new(),
        )
        .await?;
    Ok(console.templates.page(
        StatusCode::OK,
        "issued.html",
        context! { ..ctx.base(console, "physicians"), ..context! {
            title_ja => "初回パスワードを再発行しました", title_en => "New one-time password",
            message => r.message, password, back => "/office/physicians",
        } },
    ))
}

/// `POST /office/physicians/deregister`: art 7 (form 9), after a confirmation step.
pub async fn deregister(console: &Console, ctx: &Ctx, f: &Fields) -> PageResult {
    let id = forms::physician_id(f.get("id"))?;
    let form9 = forms::form_ref(f.get("form9"), 9)?;
    if !forms::confirmed(f) {
        return Ok(console.templates.page(
            StatusCode::OK,
            "confirm.html",
            context! { ..ctx.base(console, "physicians"), ..context! {
                text_ja => format!("利用医 {id} の登録を抹消します。端末もすべて削除され、元に戻せません。"),
                text_en => format!("Physician {id} is deregistered with all their terminals. This cannot be undone."),
                shown => vec![("医師ID / physician", id.clone()), ("様式9 / form 9", form9.clone())],
                fields => vec![("id", id), ("form9", form9)],
                action => "/office/physicians/deregister",
                button => "抹消する / Deregister", back => "/office/physicians",
            } },
        ));
    }
    let r = ctx
        .admin(
            console,
            AdminRequest::PhysicianDelete {
                id,
                form_ref: Some(form9.clone()),
            },
            format!("form 9 {form9}"),
        )
        .await?;
    done(
        console,
        ctx,
        "登録を抹消しました",
        "Deregistered",
        r.message,
    )
}
