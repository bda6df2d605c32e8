//! The console's second factor: the staff member's password, checked on the gateway's bounded
//! Argon2 pool, each try counted before it is checked with the physicians' lockout rule
//! ([`crate::policy::auth::reserve_attempt`], `[auth] max_failures` and `lockout_secs`), and
//! the one-time password from `staff add` changed at the first sign-in.

use std::sync::Mutex;

use http::{Response, StatusCode};
use minijinja::context;

use super::forms::Fields;
use super::listener::StaffPeer;
use super::render;
use super::router::{anonymous, note, Ctx};
use super::session::{login_binding, set_cookie};
use super::Console;
use crate::audit::Decision;
use crate::pages::Body;
use crate::policy::auth::{self, Attempt};
use crate::registry::model::Staff;

fn login_page(
    console: &Console,
    peer: &StaffPeer,
    status: StatusCode,
    message: &str,
) -> Response<Body> {
    let csrf = console
        .sessions
        .csrf(&login_binding(&peer.cert.fingerprint));
    console.templates.page(
        status,
        "login.html",
        context! {
            ..anonymous(console),
            ..context! {
                csrf => csrf,
                cn => peer.cert.subject_cn.clone().unwrap_or_default(),
                message => message,
            }
        },
    )
}

fn lockout(console: &Console) -> time::Duration {
    time::Duration::try_from(console.auth.lockout).unwrap_or(time::Duration::minutes(15))
}

/// `GET` and `POST /office/login`.
pub async fn login(
    console: &Console,
    peer: &StaffPeer,
    staff: &Staff,
    post: bool,
    form: &Fields,
) -> Response<Body> {
    if !post {
        return login_page(console, peer, StatusCode::OK, "");
    }
    if !console
        .sessions
        .csrf_ok(&login_binding(&peer.cert.fingerprint), form.get("csrf"))
    {
        note(
            console,
            peer,
            Some(&staff.id),
            "office-signin",
            None,
            Decision::Deny,
            "csrf-token-wrong",
            403,
        )
        .await;
        return login_page(
            console,
            peer,
            StatusCode::FORBIDDEN,
            "フォームの確認コードが一致しません。もう一度入力してください。 / The form's verification code does not match: please try again.",
        );
    }
    let now = console.gate.clock.now();
    if let Some(until) = auth::locked_until(staff, now) {
        note(
            console,
            peer,
            Some(&staff.id),
            "office-signin",
            None,
            Decision::Deny,
            "locked",
            403,
        )
        .await;
        return locked(console, peer, until);
    }
    let Ok(slot) = console.gate.hasher.try_slot() else {
        return login_page(
            console,
            peer,
            StatusCode::SERVICE_UNAVAILABLE,
            "混み合っています。少し待ってからもう一度お試しください。 / Busy: please try again in a moment.",
        );
    };
    // Counted before the check (the physicians' rule), in one atomic update of the account.
    let decided: Mutex<Option<Attempt>> = Mutex::new(None);
    let max = console.auth.max_failures;
    let lock = lockout(console);
    let counted = console
        .admin
        .store
        .update_staff(&staff.id, |s| {
            let a = auth::reserve_attempt(s, now, max, lock);
            *decided.lock().unwrap_or_else(|p| p.into_inner()) = Some(a);
            matches!(a, Attempt::Counted { .. })
        })
        .await;
    let stored = match counted {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "office: staff record could not be updated");
            return login_page(
                console,
                peer,
                StatusCode::SERVICE_UNAVAILABLE,
                "登録簿に書き込めません。管理者に連絡してください。 / The registry cannot be written: please tell the administrator.",
            );
        }
    };
    let locks = match *decided.lock().unwrap_or_else(|p| p.into_inner()) {
        Some(Attempt::Counted { locks }) => locks,
        Some(Attempt::Locked { until }) => return locked(console, peer, until),
        None => false,
    };
    let id_ok = form.get("id") == staff.id;
    let right = slot
        .verify(
            form.get("password").to_string(),
            stored.password_hash.clone(),
        )
        .await
        && id_ok;
    if !right {
        let reason = if locks {
            "wrong-password-locked"
        } else {
            "wrong-password"
        };
        note(
            console,
            peer,
            Some(&staff.id),
            "office-signin",
            None,
            Decision::Deny,
            reason,
            401,
        )
        .await;
        if locks {
            return locked(console, peer, now + lock);
        }
        return login_page(
            console,
            peer,
            StatusCode::UNAUTHORIZED,
            "職員IDまたはパスワードが違います。 / The staff ID or password is wrong.",
        );
    }
    if let Err(e) = console
        .admin
        .store
        .update_staff(&staff.id, |s| {
            auth::record_success(s);
            true
        })
        .await
    {
        tracing::error!(error = %e, "office: staff record could not be updated");
    }
    let (token, _) = console.sessions.table.create(
        &staff.id,
        &peer.cert.fingerprint,
        stored.must_change_password,
    );
    note(
        console,
        peer,
        Some(&staff.id),
        "office-signin",
        None,
        Decision::Allow,
        "signin-ok",
        303,
    )
    .await;
    let next = if stored.must_change_password {
        "/office/password"
    } else {
        "/office/"
    };
    render::with_cookie(render::redirect(next), &set_cookie(&token))
}

fn locked(console: &Console, peer: &StaffPeer, until: time::OffsetDateTime) -> Response<Body> {
    let at = until
        .to_offset(crate::ops::clock::JST)
        .format(time::macros::format_description!("[hour]:[minute]"))
        .unwrap_or_default();
    login_page(
        console,
        peer,
        StatusCode::FORBIDDEN,
        &format!("パスワードを続けて間違えたため、{at}（日本時間）までロックされています。 / Locked after too many wrong passwords until {at} (Japan time)."),
    )
}

/// `GET` and `POST /office/password`: the forced change of the one-time password (and a
/// voluntary change). The current password counts as a try, as for physicians.
pub async fn password(
    console: &Console,
    peer: &StaffPeer,
    ctx: &Ctx,
    post: bool,
    form: &Fields,
) -> Response<Body> {
    let page = |status: StatusCode, message: &str| {
        console.templates.page(
            status,
            "password.html",
            context! { ..ctx.base(console, ""), ..context! { message => message } },
        )
    };
    if !post {
        return page(StatusCode::OK, "");
    }
    let current = form.get("current").to_string();
    let new = form.get("new").to_string();
    if let Err(why) = auth::password_policy(&ctx.staff.id, &current, &new) {
        return page(StatusCode::BAD_REQUEST, why);
    }
    let Ok(slot) = console.gate.hasher.try_slot() else {
        return page(
            StatusCode::SERVICE_UNAVAILABLE,
            "混み合っています。 / Busy: please try again.",
        );
    };
    let now = console.gate.clock.now();
    let decided: Mutex<Option<Attempt>> = Mutex::new(None);
    let (max, lock) = (console.auth.max_failures, lockout(console));
    let stored = match console
        .admin
        .store
        .update_staff(&ctx.staff.id, |s| {
            let a = auth::reserve_attempt(s, now, max, lock);
            *decided.lock().unwrap_or_else(|p| p.into_inner()) = Some(a);
            matches!(a, Attempt::Counted { .. })
        })
        .await
    {
        Ok(s) => s,
        Err(_) => {
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                "登録簿に書き込めません。 / The registry cannot be written.",
            )
        }
    };
    if let Some(Attempt::Locked { .. }) = *decided.lock().unwrap_or_else(|p| p.into_inner()) {
        console.sessions.table.end(&ctx.token);
        return locked(console, peer, now + lock);
    }
    if !slot.verify(current, stored.password_hash.clone()).await {
        note(
            console,
            peer,
            Some(&ctx.staff.id),
            "office-password",
            None,
            Decision::Deny,
            "wrong-password",
            401,
        )
        .await;
        return page(
            StatusCode::UNAUTHORIZED,
            "現在のパスワードが違います。 / The current password is wrong.",
        );
    }
    let hash = match slot.hash(new).await {
        Ok(h) => h,
        Err(_) => {
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                "パスワードを保存できません。 / The password could not be stored.",
            )
        }
    };
    let saved = console
        .admin
        .store
        .update_staff(&ctx.staff.id, |s| {
            auth::record_success(s);
            s.password_hash = hash.clone();
            s.must_change_password = false;
            true
        })
        .await;
    if saved.is_err() {
        return page(
            StatusCode::SERVICE_UNAVAILABLE,
            "パスワードを保存できません。 / The password could not be stored.",
        );
    }
    console.sessions.table.password_changed(&ctx.token);
    note(
        console,
        peer,
        Some(&ctx.staff.id),
        "office-password",
        None,
        Decision::Allow,
        "password-changed",
        303,
    )
    .await;
    render::redirect("/office/")
}
