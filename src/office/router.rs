//! Who is asking, and which page answers. In order, for every request:
//!
//! 1. the path: the console serves `/office/` only (anything else: a 404 page; never the
//!    physicians' paths or the EMR);
//! 2. the certificate: it must be a registered, active **staff** certificate (a physician's
//!    terminal, a site system or an unknown certificate gets a 403 page, audited);
//! 3. a `POST` must come from the console's own pages (`Origin` / `Sec-Fetch-Site`) and carry
//!    the session's CSRF token (compared in constant time); otherwise 403, audited;
//! 4. the session (cookie bound to this certificate, idle timeout, lifetime), else the
//!    sign-in page; a one-time password must be changed first;
//! 5. the role: staff management is for `admin` only (a clerk gets a 403 page, audited).

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use minijinja::{context, Value};

use super::forms::{Fields, FormError};
use super::listener::StaffPeer;
use super::render;
use super::Console;
use crate::admin::{Actor, AdminRequest, AdminResponse};
use crate::audit::{Decision, Ingress, Outcome, RequestRecord};
use crate::pages::Body;
use crate::registry::model::{Staff, StaffRole};
use crate::site::pki::ClientKind;

/// Largest form body accepted.
const MAX_FORM: usize = 64 * 1024;

/// A signed-in staff member's request.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub staff: Staff,
    pub token: String,
    pub csrf: String,
    pub peer_client: String,
}

/// Why a page could not do what was asked: each becomes a clear page.
#[derive(Debug)]
pub enum Fail {
    /// The form was not acceptable (400).
    Form(FormError),
    /// The registry refused (unknown id, conflict, ...): the admin surface's message (409).
    Refused(String),
    /// Something the console needs is not available (503).
    Unavailable(String),
    /// Nothing here (404).
    NotFound,
}

impl From<FormError> for Fail {
    fn from(e: FormError) -> Fail {
        Fail::Form(e)
    }
}

pub type PageResult = Result<Response<Body>, Fail>;

impl Ctx {
    /// The context every page starts from.
    pub fn base(&self, console: &Console, nav: &str) -> Value {
        context! {
            site => context! { id => console.site.id.clone(), name => console.site.name.clone() },
            staff => context! {
                id => self.staff.id.clone(),
                name => self.staff.name.clone(),
                role => self.staff.role.as_str(),
            },
            csrf => self.csrf.clone(),
            nav => nav,
        }
    }

    /// Executes an admin request as this staff member: validated and audited (with the staff
    /// id, the console's connection and `note`) before it takes effect.
    pub async fn admin(
        &self,
        console: &Console,
        req: AdminRequest,
        note: String,
    ) -> Result<AdminResponse, Fail> {
        let actor = Actor {
            staff: self.staff.id.clone(),
            client: self.peer_client.clone(),
            note: format!("office; received at {}; {note}", console.site.id),
        };
        let r = console.admin.execute_by(req, Some(&actor)).await;
        if r.ok {
            Ok(r)
        } else {
            Err(Fail::Refused(r.message))
        }
    }
}

/// The console's connection as the audit names it.
pub fn client_of(peer: &StaffPeer) -> String {
    format!("office:{}", peer.addr)
}

/// The base context before a session (sign-in, refusals).
pub fn anonymous(console: &Console) -> Value {
    context! {
        site => context! { id => console.site.id.clone(), name => console.site.name.clone() },
    }
}

/// Writes a console event that is not an admin change (sign-in, refusal, a report opened)
/// to the audit: ingress `admin`, the console's connection as client, the staff member.
#[allow(clippy::too_many_arguments)]
pub async fn note(
    console: &Console,
    peer: &StaffPeer,
    staff: Option<&str>,
    what: &str,
    patient: Option<&str>,
    decision: Decision,
    reason: &str,
    status: u16,
) {
    let rec = RequestRecord {
        time: crate::ops::clock::rfc3339(console.gate.clock.now()),
        site: console.site.id.clone(),
        ingress: Ingress::Admin,
        client: client_of(peer),
        terminal: None,
        physician: None,
        method: "OFFICE".into(),
        path: what.to_string(),
        patient: patient
            .filter(|p| crate::registry::ids::PatientId::is_valid(p))
            .map(str::to_string),
        category: None,
        decision,
        reason: reason.to_string(),
        serial: Some(peer.cert.serial.clone()),
        cn: peer.cert.subject_cn.clone(),
        staff: staff.map(str::to_string),
    };
    match console.admin.audit.record(rec).await {
        Ok(rid) => console.admin.audit.outcome(
            rid,
            Outcome {
                status,
                bytes: 0,
                duration_us: 0,
            },
        ),
        Err(e) => tracing::error!(error = %e, what, "office: audit record could not be written"),
    }
}

/// A refusal page, audited.
#[allow(clippy::too_many_arguments)]
async fn refuse(
    console: &Console,
    peer: &StaffPeer,
    staff: Option<&str>,
    status: StatusCode,
    reason: &str,
    title: (&str, &str),
    text: (&str, &str),
    path: &str,
) -> Response<Body> {
    note(
        console,
        peer,
        staff,
        &format!("office-refused {path}"),
        None,
        Decision::Deny,
        reason,
        status.as_u16(),
    )
    .await;
    console
        .templates
        .error(anonymous(console), status, title, text, reason, "/office/")
}

/// One request to the console.
pub async fn handle(console: &Console, peer: &StaffPeer, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    if path == "/" || path == "/office" {
        return render::redirect("/office/");
    }
    if !path.starts_with("/office/") {
        return console.templates.error(
            anonymous(console),
            StatusCode::NOT_FOUND,
            ("このページはありません", "Not found"),
            (
                "地域連携室コンソールは /office/ のページだけを扱います。",
                "The liaison office console serves /office/ pages only.",
            ),
            "not-office",
            "/office/",
        );
    }
    let staff = match console
        .admin
        .store
        .staff_by_fingerprint(&peer.cert.fingerprint)
    {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "office: staff registry unreadable");
            return console.templates.error(
                anonymous(console),
                StatusCode::SERVICE_UNAVAILABLE,
                ("登録簿を読めません", "The registry cannot be read"),
                (
                    "しばらくしてから再度お試しください。続く場合は管理者に連絡してください。",
                    "Please try again later; if it persists, tell the administrator.",
                ),
                "store-unavailable",
                "",
            );
        }
    };
    let staff = match staff {
        Some(s) if peer.cert.kind == Some(ClientKind::Staff) && !s.suspended => s,
        Some(s) if s.suspended => {
            return refuse(
                console,
                peer,
                Some(&s.id),
                StatusCode::FORBIDDEN,
                "staff-suspended",
                (
                    "このアカウントは停止されています",
                    "This staff account is suspended",
                ),
                (
                    "地域連携室の管理者に連絡してください。",
                    "Please contact the liaison office's administrator.",
                ),
                &path,
            )
            .await;
        }
        _ => {
            return refuse(
                console,
                peer,
                None,
                StatusCode::FORBIDDEN,
                "not-a-staff-certificate",
                (
                    "職員端末の証明書ではありません",
                    "This is not a staff terminal's certificate",
                ),
                (
                    "地域連携室コンソールは、登録された職員端末の証明書でのみ開けます。医師の端末証明書では開けません。",
                    "The console opens only with a registered staff terminal's certificate; a physician's terminal certificate never opens it.",
                ),
                &path,
            )
            .await;
        }
    };
    let method = req.method().clone();
    if method != Method::GET && method != Method::HEAD && method != Method::POST {
        return console.templates.error(
            anonymous(console),
            StatusCode::METHOD_NOT_ALLOWED,
            ("この操作はできません", "Method not allowed"),
            (
                "ページのボタンから操作してください。",
                "Please use the page's buttons.",
            ),
            "method",
            "/office/",
        );
    }
    let query = Fields::parse(req.uri().query().unwrap_or("").as_bytes());
    let cookie = super::session::token_from_cookies(req.headers());
    let post = method == Method::POST;
    if post && !same_origin(&req) {
        return refuse(
            console,
            peer,
            Some(&staff.id),
            StatusCode::FORBIDDEN,
            "cross-site-post",
            (
                "別のサイトからの送信は受け付けません",
                "Cross-site form posts are refused",
            ),
            (
                "このコンソールのページから送信してください。",
                "Please submit the form from this console's own pages.",
            ),
            &path,
        )
        .await;
    }
    let form = if post {
        match Limited::new(req.into_body(), MAX_FORM).collect().await {
            Ok(b) => Fields::parse(&b.to_bytes()),
            Err(_) => {
                return console.templates.error(
                    anonymous(console),
                    StatusCode::PAYLOAD_TOO_LARGE,
                    ("送信内容が大きすぎます", "The form is too large"),
                    ("入力を短くしてください。", "Please shorten the input."),
                    "form-too-large",
                    "/office/",
                )
            }
        }
    } else {
        Fields::default()
    };
    if path == "/office/login" {
        return super::signin::login(console, peer, &staff, post, &form).await;
    }
    // The session: bound to this staff certificate, within its idle time and lifetime.
    let session = cookie.as_deref().and_then(|t| {
        console
            .sessions
            .table
            .check(t, &peer.cert.fingerprint)
            .ok()
            .filter(|s| s.physician == staff.id)
            .map(|s| (t.to_string(), s))
    });
    let Some((token, session)) = session else {
        return render::redirect("/office/login");
    };
    if post && !console.sessions.csrf_ok(&token, form.get("csrf")) {
        return refuse(
            console,
            peer,
            Some(&staff.id),
            StatusCode::FORBIDDEN,
            "csrf-token-wrong",
            (
                "フォームの確認コードが一致しません",
                "The form's verification code does not match",
            ),
            (
                "ページを開き直してから、もう一度送信してください。",
                "Please open the page again and submit once more.",
            ),
            &path,
        )
        .await;
    }
    let ctx = Ctx {
        csrf: console.sessions.csrf(&token),
        token,
        staff,
        peer_client: client_of(peer),
    };
    if path == "/office/logout" && post {
        console.sessions.table.end(&ctx.token);
        note(
            console,
            peer,
            Some(&ctx.staff.id),
            "office-signout",
            None,
            Decision::Allow,
            "signed out",
            303,
        )
        .await;
        return render::with_cookie(
            render::redirect("/office/login"),
            &super::session::clear_cookie(),
        );
    }
    if path == "/office/password" {
        return super::signin::password(console, peer, &ctx, post, &form).await;
    }
    if session.must_change_password {
        return render::redirect("/office/password");
    }
    if path.starts_with("/office/staff") && ctx.staff.role != StaffRole::Admin {
        return refuse(
            console,
            peer,
            Some(&ctx.staff.id),
            StatusCode::FORBIDDEN,
            "admin-only",
            (
                "管理者だけが開けるページです",
                "Only administrators may open this page",
            ),
            (
                "職員アカウントの管理は管理者（admin）の役割です。",
                "Staff accounts are managed by the admin role.",
            ),
            &path,
        )
        .await;
    }
    let result = route(console, peer, &ctx, &path, post, &query, &form).await;
    match result {
        Ok(r) => r,
        Err(fail) => fail_page(console, &ctx, fail),
    }
}

/// The page that answers `path`.
async fn route(
    console: &Console,
    peer: &StaffPeer,
    ctx: &Ctx,
    path: &str,
    post: bool,
    query: &Fields,
    form: &Fields,
) -> PageResult {
    use super::{consents, issue, physicians, staff, terminals, today, views};
    match (post, path) {
        (false, "/office/") => today::page(console, ctx).await,
        (false, "/office/physicians") => physicians::list(console, ctx),
        (true, "/office/physicians/register") => physicians::register(console, ctx, form).await,
        (true, "/office/physicians/suspend") => physicians::suspend(console, ctx, form).await,
        (true, "/office/physicians/resume") => physicians::resume(console, ctx, form).await,
        (true, "/office/physicians/passwd") => physicians::passwd(console, ctx, form).await,
        (true, "/office/physicians/deregister") => physicians::deregister(console, ctx, form).await,
        (false, "/office/terminals") => terminals::list(console, ctx),
        (true, "/office/terminals/issue") => terminals::issue(console, ctx, form).await,
        (true, "/office/terminals/revoke") => terminals::revoke(console, ctx, form).await,
        (false, "/office/consents") => consents::page(console, ctx, query),
        (true, "/office/consents/grant") => consents::grant(console, ctx, form).await,
        (true, "/office/consents/withdraw") => consents::withdraw(console, ctx, form).await,
        (true, "/office/consents/delete") => consents::delete(console, ctx, form).await,
        (true, "/office/consents/no-extension") => consents::no_extension(console, ctx, form).await,
        (false, "/office/views") => views::report(console, peer, ctx, query).await,
        (false, "/office/views.csv") => views::csv(console, peer, ctx, query).await,
        (false, "/office/usage") => views::usage(console, ctx, query).await,
        (false, "/office/staff") => staff::list(console, ctx),
        (true, "/office/staff/suspend") => staff::suspend(console, ctx, form).await,
        (false, p) if p.starts_with("/office/download/") => {
            issue::download(console, peer, ctx, &p["/office/download/".len()..]).await
        }
        _ => Err(Fail::NotFound),
    }
}

/// The page of a [`Fail`].
pub fn fail_page(console: &Console, ctx: &Ctx, fail: Fail) -> Response<Body> {
    let base = ctx.base(console, "");
    let t = &console.templates;
    match fail {
        Fail::Form(e) => t.error(
            base,
            StatusCode::BAD_REQUEST,
            ("入力を確認してください", "Please check the form"),
            (&e.ja, &e.en),
            "invalid-input",
            "/office/",
        ),
        Fail::Refused(msg) => t.error(
            base,
            StatusCode::CONFLICT,
            ("登録簿が受け付けませんでした", "The registry refused this"),
            (
                "次の理由で処理できませんでした（英語の原文）。内容を確認してください。",
                &msg,
            ),
            "refused",
            "/office/",
        ),
        Fail::Unavailable(msg) => t.error(
            base,
            StatusCode::SERVICE_UNAVAILABLE,
            ("いまは処理できません", "This cannot be done now"),
            (
                "しばらくしてから再度お試しください。続く場合は管理者に連絡してください。",
                &msg,
            ),
            "unavailable",
            "/office/",
        ),
        Fail::NotFound => t.error(
            base,
            StatusCode::NOT_FOUND,
            ("このページはありません", "Not found"),
            (
                "上のメニューから選んでください。",
                "Please choose from the menu above.",
            ),
            "not-found",
            "/office/",
        ),
    }
}

/// A form post from the console's own pages: `Sec-Fetch-Site` same-origin when the browser
/// sends it, and an `Origin`, when present, that is the console's (browsers send `null` under
/// `Referrer-Policy: no-referrer`; then Fetch metadata decides).
pub fn same_origin<B>(req: &Request<B>) -> bool {
    let headers = req.headers();
    let fetch_site = headers
        .get("sec-fetch-site")
        .map(|v| v.as_bytes() == b"same-origin");
    if fetch_site == Some(false) {
        return false;
    }
    let Some(origin) = headers
        .get(http::header::ORIGIN)
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
            headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        });
    host.is_some_and(|h| origin.eq_ignore_ascii_case(&format!("https://{h}")))
}
