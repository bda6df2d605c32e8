//! The gateway's own pages under `/.seibo/`: sign-in, password change, sign-out and "who am
//! I" (art 6.3, 13.1). The terminal's credential is the first factor (checked before any of
//! this runs); the physician's ID and password are the second. The physician must be the one
//! the terminal is registered to. Every attempt is audited by the request path.

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use time::OffsetDateTime;

use crate::gate::{Gate, Live};
use crate::ingress::peer::Peer;
use crate::ops::clock;
use crate::pages::{self, escape, Body, Page};
use crate::policy::auth;
use crate::policy::decision::{Refusal, Verdict};
use crate::policy::hashing;
use crate::policy::identity::Who;
use crate::policy::own_paths::{
    is_own_path, login_url, OwnPage, LOGIN_PATH, LOGOUT_PATH, PASSWORD_PATH, WHOAMI_PATH,
};
use crate::policy::route::RouteError;
use crate::policy::session::{self, SessionRefusal};

/// Largest form body accepted.
const MAX_FORM: usize = 8 * 1024;

/// A local path to return to after sign-in (an EMR page, or "who am I"); anything else
/// becomes the site's start page `home` (issue 11 item 24).
fn safe_next(next: Option<&str>, home: &str) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.starts_with("/\\")
                && (!is_own_path(n) || n == WHOAMI_PATH)
                && !n.chars().any(|c| c.is_control()) =>
        {
            n.to_string()
        }
        _ => home.to_string(),
    }
}

/// Checks the request's session: present, of this terminal, of this physician, and not
/// waiting for a password change.
pub fn check_session(
    gate: &Gate,
    who: &Who,
    peer: &Peer,
    headers: &http::HeaderMap,
) -> Result<session::Session, Refusal> {
    let token =
        session::token_from_cookies(headers).ok_or(Refusal::Session(SessionRefusal::Missing))?;
    let s = gate
        .sessions
        .check(&token, peer.credential.fingerprint())
        .map_err(Refusal::Session)?;
    if s.physician != who.physician.id {
        gate.sessions.end(&token);
        return Err(Refusal::Session(SessionRefusal::Missing));
    }
    if s.must_change_password {
        return Err(Refusal::PasswordChangeRequired);
    }
    Ok(s)
}

fn query_param(raw_target: &str, key: &str) -> Option<String> {
    let q = raw_target.split_once('?')?.1;
    form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

async fn read_form(req: Request<Incoming>) -> Option<Vec<(String, String)>> {
    let body = Limited::new(req.into_body(), MAX_FORM)
        .collect()
        .await
        .ok()?;
    let bytes: Bytes = body.to_bytes();
    Some(
        form_urlencoded::parse(&bytes)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
    )
}

fn field<'a>(form: &'a [(String, String)], key: &str) -> Option<&'a str> {
    form.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// A cross-site POST carries another Origin: refuse it (the cookie is SameSite=Strict too).
/// Browsers send `Origin: null` for the gateway's own forms, because its pages are
/// `Referrer-Policy: no-referrer`; their Fetch metadata (`Sec-Fetch-Site: same-origin`) is what
/// tells such a post from a cross-site one. Clients without either (curl) are not browsers.
fn same_origin<B>(req: &Request<B>) -> bool {
    let fetch_site = req
        .headers()
        .get("sec-fetch-site")
        .map(|v| v.as_bytes() == b"same-origin");
    if fetch_site == Some(false) {
        return false;
    }
    let Some(origin) = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
    else {
        return true;
    };
    if origin == "null" {
        return fetch_site == Some(true);
    }
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        });
    host.is_some_and(|h| origin.eq_ignore_ascii_case(&format!("https://{h}")))
}

fn own(verdict: Verdict, reason: &'static str, response: Response<Body>) -> OwnPage {
    OwnPage {
        verdict,
        reason,
        response,
    }
}

fn allow(reason: &'static str, response: Response<Body>) -> OwnPage {
    own(Verdict::Allow, reason, response)
}

fn deny(r: Refusal, reason: &'static str, response: Response<Body>) -> OwnPage {
    own(Verdict::Deny(r), reason, response)
}

/// A malformed or cross-site form: 400 with the malformed-request page.
fn bad_request(live: &Live, reason: &'static str) -> OwnPage {
    let r = Refusal::Route(RouteError::BadTarget(reason));
    let page = pages::refusal(&r, &live.site);
    deny(r, reason, page)
}

fn with_cookie(mut resp: Response<Body>, cookie: &str) -> Response<Body> {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

fn login_form(
    live: &Live,
    status: StatusCode,
    notice_ja: &str,
    notice_en: &str,
    next: &str,
) -> Response<Body> {
    let extra = format!(
        r#"<form method="post" action="{LOGIN_PATH}" autocomplete="off">
<input type="hidden" name="next" value="{next}">
<label for="id">利用者ID / ID</label><input type="text" id="id" name="id" required autofocus>
<label for="password">パスワード / Password</label><input type="password" id="password" name="password" required>
<button type="submit">サインイン / Sign in</button>
</form>"#,
        next = escape(next)
    );
    pages::page(
        &Page {
            status,
            title_ja: "せい坊ネット サインイン",
            title_en: "Seibo Net sign-in",
            body_ja: notice_ja,
            body_en: notice_en,
            extra: &extra,
            reason: "",
        },
        &live.site,
    )
}

fn password_form(
    live: &Live,
    status: StatusCode,
    notice_ja: &str,
    notice_en: &str,
) -> Response<Body> {
    let extra = format!(
        r#"<form method="post" action="{PASSWORD_PATH}" autocomplete="off">
<label for="current">現在のパスワード / Current password</label><input type="password" id="current" name="current" required autofocus>
<label for="new">新しいパスワード / New password</label><input type="password" id="new" name="new" required minlength="10">
<button type="submit">変更する / Change</button>
</form>"#
    );
    pages::page(
        &Page {
            status,
            title_ja: "パスワードの変更",
            title_en: "Change your password",
            body_ja: notice_ja,
            body_en: notice_en,
            extra: &extra,
            reason: "",
        },
        &live.site,
    )
}

/// Serves a `/.seibo/` request for an identified terminal.
pub async fn handle(
    gate: &Gate,
    live: &Live,
    peer: &Peer,
    who: &Who,
    req: Request<Incoming>,
    raw_target: &str,
    now: OffsetDateTime,
) -> OwnPage {
    let path = raw_target.split('?').next().unwrap_or(raw_target);
    let method = req.method().clone();
    if method == Method::POST && !same_origin(&req) {
        return bad_request(live, "cross-origin-form");
    }
    match (method, path) {
        (Method::GET, LOGIN_PATH) => {
            let next = safe_next(query_param(raw_target, "next").as_deref(), &live.site.home);
            let (ja, en) = if query_param(raw_target, "signed_out").is_some() {
                ("サインアウトしました。", "You have signed out.")
            } else {
                (
                    "登録された端末から、利用者IDとパスワードでサインインしてください。",
                    "Sign in with your user ID and password, from your registered terminal.",
                )
            };
            allow("signin-page", login_form(live, StatusCode::OK, ja, en, &next))
        }
        (Method::POST, LOGIN_PATH) => login(gate, live, peer, who, req, now).await,
        (Method::GET, PASSWORD_PATH) => match session_token(gate, peer, who, req.headers()) {
            Some(_) => allow(
                "password-page",
                password_form(
                    live,
                    StatusCode::OK,
                    "10文字以上で、英小文字・英大文字・数字・記号のうち2種類以上を含めてください。",
                    "At least 10 characters, mixing two or more of lower case, upper case, digits and symbols.",
                ),
            ),
            None => deny(
                Refusal::Session(SessionRefusal::Missing),
                "no-session",
                pages::redirect(&login_url(PASSWORD_PATH)),
            ),
        },
        (Method::POST, PASSWORD_PATH) => change_password(gate, live, peer, who, req, now).await,
        (Method::POST, LOGOUT_PATH) => {
            if let Some(t) = session::token_from_cookies(req.headers()) {
                gate.sessions.end(&t);
            }
            allow(
                "signout",
                with_cookie(
                    pages::redirect(&format!("{LOGIN_PATH}?signed_out=1")),
                    &session::clear_cookie(),
                ),
            )
        }
        _ => deny(
            Refusal::Route(RouteError::NoRoute),
            "no-route",
            pages::refusal(&Refusal::Route(RouteError::NoRoute), &live.site),
        ),
    }
}

/// The session token, if it is a valid session of this terminal and physician (a pending
/// password change is fine here).
fn session_token(gate: &Gate, peer: &Peer, who: &Who, headers: &http::HeaderMap) -> Option<String> {
    let token = session::token_from_cookies(headers)?;
    let s = gate
        .sessions
        .check(&token, peer.credential.fingerprint())
        .ok()?;
    (s.physician == who.physician.id).then_some(token)
}

/// Why a password try was refused before its form was read or any hash ran (429).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Throttle {
    /// The terminal's `[auth] signin_attempts_per_minute` is used up.
    Rate,
    /// Every Argon2 slot of the gateway is taken.
    Busy,
}

/// The 429 page for a throttled password try (Japanese first, then English), with
/// `Retry-After`. Nothing was counted towards the lockout.
fn throttled(gate: &Gate, live: &Live, which: Throttle) -> OwnPage {
    let (label, reason, retry, title_ja, title_en, body_ja, body_en) = match which {
        Throttle::Rate => (
            "rate-limited",
            "signin-rate-limited",
            live.signin_rate.retry_after_secs(),
            "この端末からのサインインの試行が多すぎます",
            "Too many sign-in attempts from this terminal",
            "短い時間に多くのサインイン（またはパスワード変更）が試みられたため、この端末からの受け付けを一時的に止めています。1分ほど待ってから、もう一度お試しください。続く場合は下記の窓口にご連絡ください。",
            "Too many sign-in (or password change) attempts were made from this terminal in a short time, so they are paused for now. Please wait a minute and try again; if this continues, contact the office below.",
        ),
        Throttle::Busy => (
            "busy",
            "signin-busy",
            2,
            "ただいまサインインが混み合っています",
            "Sign-in is busy right now",
            "多くのサインインを同時に処理しているため、この試行は受け付けられませんでした。パスワードは確認しておらず、誤りとしても数えていません。数秒待ってから、もう一度お試しください。",
            "Many sign-ins are being processed at once, so this attempt was not taken. The password was not checked and was not counted as wrong. Please wait a few seconds and try again.",
        ),
    };
    gate.metrics.signins.with_label_values(&[label]).inc();
    let mut resp = pages::page(
        &Page {
            status: StatusCode::TOO_MANY_REQUESTS,
            title_ja,
            title_en,
            body_ja,
            body_en,
            extra: "",
            reason,
        },
        &live.site,
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry));
    deny(Refusal::Session(SessionRefusal::Missing), reason, resp)
}

/// The sign-in form saying the account is locked (403).
fn locked_form(live: &Live, until: OffsetDateTime, next: &str) -> Response<Body> {
    let msg_ja = format!(
        "パスワードの誤りが続いたため、このアカウントは {} までロックされています。",
        escape(&clock::rfc3339(until))
    );
    let msg_en = "This account is locked after repeated wrong passwords. Please wait, or contact the office below.";
    login_form(live, StatusCode::FORBIDDEN, &msg_ja, msg_en, next)
}

/// The store could not count the try: refuse (fail closed) without checking the password.
fn store_unavailable(live: &Live, e: &crate::registry::store::StoreError) -> OwnPage {
    tracing::error!(error = %e, "could not count a password try");
    let r = Refusal::StoreUnavailable;
    let page = pages::refusal(&r, &live.site);
    deny(r, "store-unavailable", page)
}

/// Checks `password` against the physician's stored hash in a hashing slot.
async fn check_password(slot: &hashing::Slot, password: String, hash: Option<String>) -> bool {
    match hash {
        Some(hash) => slot.verify(password, hash).await,
        None => false,
    }
}

/// A wrong password counted in the metrics (`locked-now` when it locked the account).
fn count_wrong_password(metrics: &crate::ops::metrics::Metrics, locks: bool) {
    metrics
        .signins
        .with_label_values(&[if locks { "locked-now" } else { "failed" }])
        .inc();
    if locks {
        metrics.lockouts.inc();
    }
}

/// One password try, before its password is checked: a hashing slot (429 page without one),
/// then the try counted atomically with the lock test (art 13.1). Gives the slot, whether a
/// wrong password now locks the account, and the physician as stored; or the page to answer
/// (busy, locked, registry unavailable) with `locked_reason` in the audit.
async fn reserve_try(
    gate: &Gate,
    live: &Live,
    who: &Who,
    now: OffsetDateTime,
    locked_reason: &'static str,
    return_to: &str,
) -> Result<(hashing::Slot, bool, crate::registry::model::Physician), Box<OwnPage>> {
    let Ok(slot) = gate.hasher.try_slot() else {
        return Err(Box::new(throttled(gate, live, Throttle::Busy)));
    };
    let reserved = gate.store.reserve_signin_attempt(
        &who.physician.id,
        now,
        live.auth.max_failures,
        lockout(live),
    );
    let reserved = reserved.await;
    let (attempt, p) = reserved.map_err(|e| Box::new(store_unavailable(live, &e)))?;
    match attempt {
        auth::Attempt::Locked { until } => {
            gate.metrics.signins.with_label_values(&["locked"]).inc();
            Err(Box::new(deny(
                Refusal::Session(SessionRefusal::Missing),
                locked_reason,
                locked_form(live, until, return_to),
            )))
        }
        auth::Attempt::Counted { locks } => Ok((slot, locks, p)),
    }
}

fn lockout(live: &Live) -> time::Duration {
    time::Duration::try_from(live.auth.lockout).unwrap_or(time::Duration::MINUTE)
}

/// `POST /.seibo/login`. In order: the terminal's try rate (429), the form, a hashing slot
/// (429), then the try is counted atomically with the lock test ([`Store::reserve_signin_attempt`],
/// 403 when locked), and only then is the password checked; a right one clears the count.
///
/// [`Store::reserve_signin_attempt`]: crate::registry::store::Store::reserve_signin_attempt
async fn login(
    gate: &Gate,
    live: &Live,
    peer: &Peer,
    who: &Who,
    req: Request<Incoming>,
    now: OffsetDateTime,
) -> OwnPage {
    let metrics = &gate.metrics;
    if !live.auth.password_required {
        return allow("signin-not-required", pages::redirect(&live.site.home));
    }
    if !live.signin_rate.allow(peer.credential.fingerprint()) {
        return throttled(gate, live, Throttle::Rate);
    }
    let Some(form) = read_form(req).await else {
        return bad_request(live, "bad-form");
    };
    let next = safe_next(field(&form, "next"), &live.site.home);
    let id = field(&form, "id").unwrap_or("").trim().to_string();
    let password = field(&form, "password").unwrap_or("").to_string();
    let (slot, locks, p) = match reserve_try(gate, live, who, now, "login-locked", &next).await {
        Ok(t) => t,
        Err(page) => return *page,
    };
    // The physician signing in must be the one the terminal is registered to.
    let ok = id == p.id && check_password(&slot, password, p.password_hash.clone()).await;
    drop(slot);
    if !ok {
        count_wrong_password(metrics, locks);
        return deny(
            Refusal::Session(SessionRefusal::Missing),
            if locks { "login-locked-now" } else { "login-failed" },
            login_form(
                live,
                StatusCode::UNAUTHORIZED,
                "利用者IDまたはパスワードが正しくありません。5回続けて誤るとしばらくロックされます。",
                "The user ID or password is wrong. After 5 wrong attempts in a row the account is locked for a while.",
                &next,
            ),
        );
    }
    if let Err(e) = gate.store.signin_succeeded(&p.id).await {
        tracing::error!(error = %e, "could not reset the failure count");
    }
    metrics.signins.with_label_values(&["ok"]).inc();
    let (token, s) =
        gate.sessions
            .create(&p.id, peer.credential.fingerprint(), p.must_change_password);
    if let Err(e) = gate.sessions.publish(&token).await {
        // Not shared with the other gateways: no half session (fail closed).
        gate.sessions.end(&token);
        return store_unavailable(live, &e);
    }
    let to = if s.must_change_password {
        // Back to the page first asked for once the password is changed.
        gate.sessions.remember_return(&token, &next);
        PASSWORD_PATH.to_string()
    } else {
        next
    };
    allow(
        "login-ok",
        with_cookie(pages::redirect(&to), &session::set_cookie(&token)),
    )
}

/// `POST /.seibo/password`. The current password is a password try like a sign-in: the same
/// rate, slot, atomic count and lock. A wrong current password that locks the account also
/// ends the session that sent it.
async fn change_password(
    gate: &Gate,
    live: &Live,
    peer: &Peer,
    who: &Who,
    req: Request<Incoming>,
    now: OffsetDateTime,
) -> OwnPage {
    let metrics = &gate.metrics;
    let Some(token) = session_token(gate, peer, who, req.headers()) else {
        return deny(
            Refusal::Session(SessionRefusal::Missing),
            "no-session",
            pages::redirect(&login_url(PASSWORD_PATH)),
        );
    };
    if !live.signin_rate.allow(peer.credential.fingerprint()) {
        return throttled(gate, live, Throttle::Rate);
    }
    let Some(form) = read_form(req).await else {
        return bad_request(live, "bad-form");
    };
    let current = field(&form, "current").unwrap_or("").to_string();
    let new = field(&form, "new").unwrap_or("").to_string();
    let (slot, locks, p) = match reserve_try(
        gate,
        live,
        who,
        now,
        "password-change-locked",
        PASSWORD_PATH,
    )
    .await
    {
        Ok(t) => t,
        Err(page) => return *page,
    };
    if !check_password(&slot, current.clone(), p.password_hash.clone()).await {
        count_wrong_password(metrics, locks);
        if locks {
            gate.sessions.end(&token);
            let until = auth::locked_until(&p, now).unwrap_or(now + lockout(live));
            return deny(
                Refusal::Session(SessionRefusal::Missing),
                "password-change-locked-now",
                with_cookie(
                    locked_form(live, until, PASSWORD_PATH),
                    &session::clear_cookie(),
                ),
            );
        }
        return password_change_failed(
            live,
            "現在のパスワードが正しくありません。5回続けて誤るとしばらくロックされます。",
            "The current password is wrong. After 5 wrong attempts in a row the account is locked for a while.",
        );
    }
    if let Err(e) = gate.store.signin_succeeded(&p.id).await {
        tracing::error!(error = %e, "could not reset the failure count");
    }
    set_password(gate, live, slot, &p.id, &current, new, &token).await
}

/// The new password, once the current one was right: checked against the policy, hashed on
/// the slot already held, stored; the session continues to the page first asked for.
async fn set_password(
    gate: &Gate,
    live: &Live,
    slot: hashing::Slot,
    id: &str,
    current: &str,
    new: String,
    token: &str,
) -> OwnPage {
    if let Err(why) = auth::password_policy(id, current, &new) {
        return password_change_failed(live, "新しいパスワードが条件を満たしていません。", why);
    }
    let hash = match slot.hash(new).await {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "could not hash a new password");
            return password_change_failed(
                live,
                "パスワードを保存できませんでした。",
                "The password could not be stored.",
            );
        }
    };
    drop(slot);
    let saved = gate.store.update_physician(id, |x| {
        x.password_hash = Some(hash.clone());
        x.must_change_password = false;
    });
    let saved = saved.await;
    if let Err(e) = saved {
        tracing::error!(error = %e, "could not store a new password");
        return password_change_failed(
            live,
            "パスワードを保存できませんでした。",
            "The password could not be stored.",
        );
    }
    let back = gate
        .sessions
        .password_changed(token)
        .unwrap_or_else(|| live.site.home.clone());
    allow("password-changed", pages::redirect(&back))
}

/// The password form again, with why the change failed.
fn password_change_failed(live: &Live, ja: &str, en: &str) -> OwnPage {
    deny(
        Refusal::PasswordChangeRequired,
        "password-change-failed",
        password_form(live, StatusCode::BAD_REQUEST, ja, &escape(en)),
    )
}

#[cfg(test)]
mod tests;
