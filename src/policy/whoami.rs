//! `/.seibo/whoami`: who is signed in, on which terminal, how the terminal came in, and when
//! the session ends — written for the physician (issue 11 item 26): the end in Japan time to
//! the minute with the minutes left, the ingress in words, and a link to the site's start page.

use http::{Request, StatusCode};
use time::OffsetDateTime;

use crate::gate::{Gate, Live};
use crate::ingress::peer::{Ingress, Peer};
use crate::ops::clock;
use crate::pages::{self, escape, Page};
use crate::policy::decision::{Refusal, Verdict};
use crate::policy::identity::Who;
use crate::policy::own_paths::{login_url, OwnPage, LOGOUT_PATH, PASSWORD_PATH, WHOAMI_PATH};
use crate::policy::signin;

/// How the terminal reached the gateway, in words: (Japanese, English).
pub fn ingress_words(i: Ingress) -> (&'static str, &'static str) {
    match i {
        Ingress::Mtls => ("端末証明書", "terminal certificate (mutual TLS)"),
        Ingress::WireGuard => ("WireGuard トンネル", "WireGuard tunnel"),
        Ingress::Site => ("院内の電子カルテシステム", "the site's own EMR system"),
    }
}

/// The session end as the page shows it: `2026-11-27 15:04 (JST)（あと 719 分 / 719 min left）`.
pub fn session_end(expires_at: OffsetDateTime, now: OffsetDateTime) -> String {
    let left = (expires_at - now).whole_minutes().max(0);
    format!(
        "{}（あと {left} 分 / {left} min left）",
        clock::local_minutes(expires_at)
    )
}

/// Serves `GET /.seibo/whoami`.
pub fn page<B>(
    gate: &Gate,
    live: &Live,
    peer: &Peer,
    who: &Who,
    req: &Request<B>,
    now: OffsetDateTime,
) -> OwnPage {
    let session = if live.auth.password_required {
        match signin::check_session(gate, who, peer, req.headers()) {
            Ok(s) => Some(s),
            Err(r) => {
                let response = match r {
                    Refusal::PasswordChangeRequired => pages::redirect(PASSWORD_PATH),
                    _ => pages::redirect(&login_url(WHOAMI_PATH)),
                };
                let reason = r.reason();
                return OwnPage {
                    verdict: Verdict::Deny(r),
                    reason,
                    response,
                };
            }
        }
    } else {
        None
    };
    let ends = session
        .as_ref()
        .map(|s| session_end(s.expires_at, now))
        .unwrap_or_else(|| "—".into());
    let idle = live.auth.idle_timeout.as_secs() / 60;
    let (ingress_ja, ingress_en) = ingress_words(peer.ingress);
    let home = if live.site.home == WHOAMI_PATH {
        String::new()
    } else {
        format!(
            r#"<p><a href="{home}">スタートページへ / Go to the start page</a></p>
"#,
            home = escape(&live.site.home)
        )
    };
    let extra = format!(
        r#"<table>
<tr><th>利用医 / Physician</th><td>{name} ({id})</td></tr>
<tr><th>端末 / Terminal</th><td>{terminal}</td></tr>
<tr><th>接続 / Connection</th><td>{ingress_ja} / <span lang="en">{ingress_en}</span></td></tr>
<tr><th>セッション終了 / Session ends</th><td>{ends}<br><small>{idle}分間操作がない場合はその時点で終了 / or after {idle} min without activity</small></td></tr>
</table>
{home}<form method="post" action="{logout}"><button type="submit">サインアウト / Sign out</button></form>"#,
        name = escape(&who.physician.name),
        id = escape(&who.physician.id),
        terminal = escape(&who.terminal.name),
        ends = escape(&ends),
        logout = LOGOUT_PATH,
    );
    OwnPage {
        verdict: Verdict::Allow,
        reason: "whoami",
        response: pages::page(
            &Page {
                status: StatusCode::OK,
                title_ja: "サインイン中です",
                title_en: "You are signed in",
                body_ja: "表示した診療情報の印刷・保存はできません（運用規程 第13条）。",
                body_en: "Viewed records must not be printed or saved (rules, article 13).",
                extra: &extra,
                reason: "",
            },
            &live.site,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn session_end_is_local_time_with_minutes_left() {
        let now = datetime!(2026-11-27 03:04:30 UTC);
        let end = datetime!(2026-11-27 15:04:30.987654321 UTC);
        assert_eq!(
            session_end(end, now),
            "2026-11-28 00:04 (JST)（あと 720 分 / 720 min left）"
        );
        assert_eq!(
            session_end(now, end),
            "2026-11-27 12:04 (JST)（あと 0 分 / 0 min left）"
        );
    }

    #[test]
    fn every_ingress_has_words_in_both_languages() {
        for i in [Ingress::Mtls, Ingress::WireGuard, Ingress::Site] {
            let (ja, en) = ingress_words(i);
            assert!(!ja.is_empty() && !en.is_empty());
            assert_ne!(en, i.as_str(), "not the audit code");
        }
    }
}
