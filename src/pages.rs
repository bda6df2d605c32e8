//! Every page the gateway itself answers with, built in one place: a refused physician gets
//! a clear page, Japanese first and English second, saying what happened and whom to contact,
//! with the right status. Consent refusals share one text, so that a page never tells whether
//! a patient id exists (the audit keeps the precise reason).

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::policy::decision::Refusal;
use crate::policy::identity::IdentityRefusal;
use crate::policy::route::RouteError;
use crate::site::config::Site;

/// The body type of every response the gateway sends.
pub type Body = http_body_util::combinators::BoxBody<Bytes, BodyError>;
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// Escapes text for HTML.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

struct Text {
    title_ja: &'static str,
    title_en: &'static str,
    body_ja: &'static str,
    body_en: &'static str,
    extra: &'static str,
}

/// What a printed page says instead of the record (art 13.2: no printing of displayed
/// records; issue 11 item 25): Japanese, then English.
pub const PRINT_NOTICE_JA: &str = "印刷はできません（せい坊ネット運用規程 第13条第2項）";
pub const PRINT_NOTICE_EN: &str = "Printing is not permitted (Seibo Net rules, article 13.2)";

/// Appended to the EMR's HTML pages (art 13.2): when printed, the body is not rendered and the
/// root element's `::before` shows the notice instead. A `<style>` applies wherever it stands
/// and needs no element of the EMR's markup; the notice is CSS escapes (ASCII only), so it
/// reads the same whatever the EMR page's charset (Shift_JIS, EUC-JP, UTF-8). A page's own
/// CSP may forbid inline styles; see the README. `print_guard_spells_the_notice` checks the
/// escapes against [`PRINT_NOTICE_JA`] and [`PRINT_NOTICE_EN`].
pub const PRINT_GUARD: &[u8] = br#"<style media="print">body,frameset{display:none!important}html::before{content:"\005370\005237\00306F\003067\00304D\00307E\00305B\003093\00FF08\00305B\003044\00574A\0030CD\0030C3\0030C8\00904B\007528\00898F\007A0B\000020\007B2C13\006761\007B2C2\009805\00FF09\00000APrinting is not permitted (Seibo Net rules, article 13.2)"!important;display:block!important;visibility:visible!important;white-space:pre-line!important;margin:2cm!important;color:#000!important;font:16pt/1.8 sans-serif!important}</style>"#;

const SIGN_IN_LINK: &str = r#"<p><a href="/.seibo/login">サインイン / Sign in</a></p>"#;

/// The words for a target or a request head the gateway will not pass on.
const MALFORMED: Text = Text {
    title_ja: "要求の形式が正しくありません",
    title_en: "The request is malformed",
    body_ja: "アドレス（URL）に使用できない文字や形式が含まれています。ブラウザのアドレス欄を確認してください。",
    body_en: "The address (URL) contains characters or a form that cannot be used. Please check the address.",
    extra: "",
};

/// The words for a refused terminal or physician (art 12.7, 4).
fn identity_text(i: &IdentityRefusal) -> Text {
    use IdentityRefusal::*;
    match i {
        UnknownTerminal | TerminalRevoked | TerminalExpired => Text {
            title_ja: "この端末からは利用できません",
            title_en: "This terminal cannot use Seibo Net",
            body_ja: "この端末は登録されていないか、登録が取り消されたか、証明書の有効期限が切れています。端末の登録（様式3）について下記の窓口にお問い合わせください。",
            body_en: "This terminal is not registered, its registration was revoked, or its certificate has expired. Please contact the office below about registering the terminal (form 3).",
            extra: "",
        },
        UnknownPhysician | PhysicianSuspended => Text {
            title_ja: "利用医の登録が有効ではありません",
            title_en: "Your user registration is not active",
            body_ja: "この端末に登録された利用医の利用が停止されているか、登録が抹消されています。下記の窓口にお問い合わせください。",
            body_en: "The physician registered to this terminal is suspended or deregistered. Please contact the office below.",
            extra: "",
        },
    }
}

fn text(r: &Refusal) -> Text {
    match r {
        Refusal::Identity(i) => identity_text(i),
        Refusal::Consent(_) => Text {
            title_ja: "この患者さんの診療情報は閲覧できません",
            title_en: "This patient's records cannot be viewed",
            body_ja: "この患者さんについては、閲覧に必要な同意が登録されていないか、同意が撤回されたか、閲覧期間が終了しています。同意書（様式6）の手続きについて下記の窓口にお問い合わせください。",
            body_en: "For this patient, no consent is registered, the consent was withdrawn, or the viewing period has ended. Please contact the office below about the consent form (form 6).",
            extra: "",
        },
        Refusal::Route(RouteError::NoRoute) => Text {
            title_ja: "このページはせい坊ネットの閲覧範囲外です",
            title_en: "This page is not part of what Seibo Net shares",
            body_ja: "要求されたページは、せい坊ネットで閲覧できる診療情報（基本情報、病名、処方歴、検査歴、医師記録、経過表、サマリ、レポート・画像、他職種記録）に該当しません。",
            body_en: "The page you asked for is not one of the record kinds Seibo Net shares (basic information, diagnoses, prescriptions, tests, physician notes, flowsheets, summaries, reports and images, other professions' records).",
            extra: "",
        },
        Refusal::Route(RouteError::MethodNotAllowed) => Text {
            title_ja: "この操作はできません",
            title_en: "This action is not allowed",
            body_ja: "せい坊ネットでは診療情報の閲覧のみができます。",
            body_en: "Seibo Net allows viewing records only.",
            extra: "",
        },
        Refusal::Route(_) | Refusal::BadRequest(_) | Refusal::ClientClosed => MALFORMED,
        Refusal::RegistryUnavailable => Text {
            title_ja: "地域の共有登録に接続できません",
            title_en: "The regional registry cannot be reached",
            body_ja: "せい坊ネットの共有登録（医師・端末・同意の登録）に接続できないため、撤回された同意を見落とさないよう、サインインと同意に基づく閲覧を一時的に停止しています。接続が戻ると自動的に再開します。続く場合は下記の窓口にご連絡ください。",
            body_en: "The regional registry of Seibo Net (physicians, terminals and consents) cannot be reached, so sign-ins and consent-based viewing are stopped for now rather than risk missing a withdrawn consent. Service resumes by itself when the registry is back; if this continues, contact the office below.",
            extra: "",
        },
        Refusal::StoreUnavailable | Refusal::AuditUnavailable => Text {
            title_ja: "ただいま利用できません",
            title_en: "Seibo Net is temporarily unavailable",
            body_ja: "閲覧記録を安全に保存できないため、一時的に閲覧を停止しています。しばらくしてから再度お試しください。続く場合は下記の窓口にご連絡ください。",
            body_en: "Access records cannot be stored safely, so viewing is stopped for now. Please try again later; if this continues, contact the office below.",
            extra: "",
        },
        Refusal::UpstreamUnreachable => Text {
            title_ja: "電子カルテに接続できません",
            title_en: "The EMR cannot be reached",
            body_ja: "電子カルテシステムが応答していません。しばらくしてから再度お試しください。続く場合は下記の窓口にご連絡ください。",
            body_en: "The EMR system is not responding. Please try again later; if this continues, contact the office below.",
            extra: "",
        },
        Refusal::Session(_) => Text {
            title_ja: "サインインが必要です",
            title_en: "Please sign in",
            body_ja: "せい坊ネットを利用するには、IDとパスワードでサインインしてください。一定時間操作がない場合は自動的にサインアウトされます。",
            body_en: "Please sign in with your ID and password to use Seibo Net. You are signed out automatically after a period without activity.",
            extra: SIGN_IN_LINK,
        },
        Refusal::PasswordChangeRequired => Text {
            title_ja: "パスワードの変更が必要です",
            title_en: "Please change your password",
            body_ja: "初回のパスワード（または再発行されたパスワード）は、利用前に変更してください。",
            body_en: "The initial (or reset) password must be changed before use.",
            extra: r#"<p><a href="/.seibo/password">パスワード変更 / Change password</a></p>"#,
        },
        Refusal::DownloadBlocked => Text {
            title_ja: "ファイルの保存はできません",
            title_en: "Files cannot be downloaded",
            body_ja: "せい坊ネットの運用規程により、表示した診療情報を保存することはできません（第13条）。",
            body_en: "Under the Seibo Net rules, viewed records must not be saved (article 13).",
            extra: "",
        },
        Refusal::SiteSystem(_) => Text {
            title_ja: "院内システムからの要求を受け付けられません",
            title_en: "The in-hospital system's request was refused",
            body_ja: "院内の電子カルテシステムが登録されていないか、利用医の指定がありません。システム管理者にご連絡ください。",
            body_en: "The in-hospital EMR system is not registered, or it did not name the physician. Please contact the system administrator.",
            extra: "",
        },
        Refusal::BodyTooLarge => Text {
            title_ja: "送信するデータが大きすぎます",
            title_en: "The request is too large",
            body_ja: "送信しようとしたデータが、このページで受け付けられる大きさを超えています。",
            body_en: "The data you tried to send is larger than this page accepts.",
            extra: "",
        },
        Refusal::HeadersTooLarge => Text {
            title_ja: "要求のヘッダーが多すぎます",
            title_en: "The request has too many headers",
            body_ja: "ブラウザが送信したヘッダー（Cookie など）が多すぎるか大きすぎます。ブラウザを再起動するか、下記の窓口にお問い合わせください。",
            body_en: "Your browser sent too many or too large headers (cookies, for instance). Please restart the browser, or contact the office below.",
            extra: "",
        },
        Refusal::TooManyConnections => Text {
            title_ja: "この端末からの接続が多すぎます",
            title_en: "Too many connections from this terminal",
            body_ja: "この端末から同時に開かれている接続が上限を超えています。不要なタブやウィンドウを閉じて、しばらくしてから再度お試しください。",
            body_en: "This terminal has more connections open at once than allowed. Please close unneeded tabs or windows and try again shortly.",
            extra: "",
        },
        Refusal::UpstreamTimeout => Text {
            title_ja: "電子カルテの応答がありません",
            title_en: "The EMR did not answer in time",
            body_ja: "電子カルテシステムの応答が時間内にありませんでした。しばらくしてから再度お試しください。",
            body_en: "The EMR system did not answer in time. Please try again later.",
            extra: "",
        },
    }
}

/// Headers every response of the gateway carries (art 13.2.5: nothing stored or cached).
pub fn protect(headers: &mut http::HeaderMap) {
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache, must-revalidate, private"),
    );
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    headers.insert(header::EXPIRES, HeaderValue::from_static("0"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
}

/// A page of the gateway's own: Japanese first, English second, no external assets; printed,
/// it shows only the print notice (art 13.2). `body_ja` and `body_en` are HTML (callers escape what they interpolate).
pub struct Page<'a> {
    pub status: StatusCode,
    pub title_ja: &'a str,
    pub title_en: &'a str,
    pub body_ja: &'a str,
    pub body_en: &'a str,
    /// Extra HTML after the texts (forms, links); already escaped.
    pub extra: &'a str,
    /// Reason code shown small at the bottom (refusals), or empty.
    pub reason: &'a str,
}

/// Renders a page with the site's contact.
pub fn page(p: &Page<'_>, site: &Site) -> Response<Body> {
    let status_line = if p.status.is_success() || p.status.is_redirection() {
        String::new()
    } else {
        format!("<p class=\"status\">{}</p>\n", p.status.as_u16())
    };
    let reason = if p.reason.is_empty() {
        String::new()
    } else {
        format!(" ・ 理由 / reason: {}", escape(p.reason))
    };
    let html = format!(
        r#"<!DOCTYPE html>
<html lang="ja">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title_ja} / {title_en}</title>
<style>
body {{ font-family: system-ui, "Hiragino Sans", "Yu Gothic", "Meiryo", sans-serif; margin: 0; background: #f4f6f8; color: #1d2733; }}
main {{ max-width: 40rem; margin: 3rem auto; background: #fff; border-radius: 8px; padding: 2rem; box-shadow: 0 1px 4px rgba(0,0,0,.12); }}
h1 {{ font-size: 1.35rem; margin: 0 0 .3rem; }}
h2 {{ font-size: 1.05rem; margin: 1.6rem 0 .3rem; color: #44525f; }}
.status {{ color: #8a1c1c; font-weight: bold; }}
.contact {{ margin-top: 1.6rem; padding: 1rem; background: #eef3f8; border-radius: 6px; }}
label {{ display: block; margin: .8rem 0 .2rem; }}
input[type=text], input[type=password] {{ width: 100%; box-sizing: border-box; padding: .5rem; font-size: 1rem; }}
button {{ margin-top: 1rem; padding: .5rem 1.4rem; font-size: 1rem; }}
table {{ border-collapse: collapse; }} th, td {{ text-align: left; padding: .2rem .8rem .2rem 0; }}
small {{ color: #66737f; }}
.print-notice {{ display: none; }}
@media print {{ main {{ display: none !important; }} .print-notice {{ display: block !important; margin: 2cm; font-size: 16pt; line-height: 1.8; }} }}
</style>
</head>
<body>
<p class="print-notice">{print_ja}<br><span lang="en">{print_en}</span></p>
<main>
{status_line}<h1>{title_ja}</h1>
<p>{body_ja}</p>
<h2 lang="en">{title_en}</h2>
<p lang="en">{body_en}</p>
{extra}
<div class="contact">
<p>お問い合わせ / Contact: {contact}</p>
<p><small>{site} ・ せい坊ネット / Seibo Net{reason}</small></p>
</div>
</main>
</body>
</html>
"#,
        title_ja = p.title_ja,
        title_en = p.title_en,
        body_ja = p.body_ja,
        body_en = p.body_en,
        extra = p.extra,
        contact = escape(&site.contact),
        site = escape(&site.name),
        print_ja = PRINT_NOTICE_JA,
        print_en = PRINT_NOTICE_EN,
    );
    let mut resp = Response::new(full(html));
    *resp.status_mut() = p.status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    protect(h);
    resp
}

/// The reason code a refusal page shows. Every consent refusal shows the same one, so that the
/// page never tells whether the patient has a consent record (the audit keeps the precise one).
fn page_reason(r: &Refusal) -> &'static str {
    match r {
        Refusal::Consent(_) => "consent",
        _ => r.reason(),
    }
}

/// The page for a refusal, with its status.
pub fn refusal(r: &Refusal, site: &Site) -> Response<Body> {
    let t = text(r);
    page(
        &Page {
            status: r.status(),
            title_ja: t.title_ja,
            title_en: t.title_en,
            body_ja: t.body_ja,
            body_en: t.body_en,
            extra: t.extra,
            reason: page_reason(r),
        },
        site,
    )
}

/// A redirect of the gateway's own (303 See Other), marked no-store.
pub fn redirect(location: &str) -> Response<Body> {
    let mut resp = Response::new(full(""));
    *resp.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    protect(resp.headers_mut());
    resp
}

/// A plain-text response (metrics, health).
pub fn plain(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::consent::ConsentRefusal;

    fn site() -> Site {
        Site {
            id: "s".into(),
            name: "西予市民病院".into(),
            contact: "地域連携室 <内線 123>".into(),
            home: "/.seibo/whoami".into(),
        }
    }

    /// Art 9.2 / privacy: every consent refusal shows the same text, so a page never tells
    /// whether a patient exists.
    #[test]
    fn consent_refusals_do_not_leak_whether_the_patient_exists() {
        let body = |r: ConsentRefusal| {
            let t = text(&Refusal::Consent(r));
            (t.title_ja, t.body_ja, t.body_en)
        };
        assert_eq!(
            body(ConsentRefusal::NoConsent),
            body(ConsentRefusal::Withdrawn)
        );
        assert_eq!(
            body(ConsentRefusal::NoConsent),
            body(ConsentRefusal::Expired)
        );
    }

    #[test]
    fn refusal_page_is_japanese_first_and_escapes_the_contact() {
        let r = refusal(&Refusal::Consent(ConsentRefusal::NoConsent), &site());
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert!(r
            .headers()
            .get(header::CACHE_CONTROL)
            .is_some_and(|v| v.as_bytes().starts_with(b"no-store")));
        let t = text(&Refusal::Consent(ConsentRefusal::NoConsent));
        assert!(t.title_ja.contains("閲覧できません"));
        assert_eq!(escape(&site().contact), "地域連携室 &lt;内線 123&gt;");
    }

    /// Decodes the CSS escapes of a `content` string (`\XXXXXX` and one following space).
    fn css_unescape(s: &str) -> String {
        let mut out = String::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            let mut hex = String::new();
            while hex.len() < 6 && chars.peek().is_some_and(|c| c.is_ascii_hexdigit()) {
                hex.extend(chars.next());
            }
            if chars.peek() == Some(&' ') {
                chars.next();
            }
            out.extend(u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32));
        }
        out
    }

    /// Art 13.2 (issue 11 item 25): the EMR page's print guard hides the body and spells the
    /// notice, in ASCII only, so that it reads the same in any page charset.
    #[test]
    fn art_13_2_print_guard_spells_the_notice() {
        let guard = std::str::from_utf8(PRINT_GUARD).expect("ascii");
        assert!(guard.is_ascii(), "{guard}");
        assert!(guard.starts_with("<style media=\"print\">") && guard.ends_with("</style>"));
        assert!(guard.contains("body,frameset{display:none!important}"));
        let content = guard
            .split_once("content:\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(c, _)| c)
            .expect("content string");
        assert_eq!(
            css_unescape(content),
            format!("{PRINT_NOTICE_JA}\n{PRINT_NOTICE_EN}")
        );
    }

    /// Art 13.2: the gateway's own pages print the notice and not their text.
    #[test]
    fn art_13_2_own_pages_print_the_notice() {
        let body = futures_body(refusal(&Refusal::DownloadBlocked, &site()));
        let body = String::from_utf8(body).expect("utf-8");
        assert!(body.contains(&format!("<p class=\"print-notice\">{PRINT_NOTICE_JA}")));
        assert!(body.contains("@media print { main { display: none !important; }"));
    }

    fn futures_body(r: Response<Body>) -> Vec<u8> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            r.into_body()
                .collect()
                .await
                .map(|c| c.to_bytes().to_vec())
                .unwrap_or_default()
        })
    }

    /// Issue 11 item 26: the footer shows the site's name, not its id.
    #[test]
    fn footer_shows_the_site_name() {
        let body = futures_body(refusal(&Refusal::DownloadBlocked, &site()));
        let body = String::from_utf8(body).expect("utf-8");
        assert!(
            body.contains("<small>西予市民病院 ・ せい坊ネット"),
            "{body}"
        );
    }
}
