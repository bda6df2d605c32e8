//! The "Today" page: views today per site, sign-in failures and locks, consents whose window
//! ends within 30 days, terminal certificates expiring within 60 days, and the registry's
//! health.

use std::collections::BTreeMap;

use http::StatusCode;
use minijinja::context;

use super::router::{Ctx, Fail, PageResult};
use super::terminals::EXPIRY_WARNING_DAYS;
use super::Console;
use crate::audit::{Decision, Ingress, QueryFilter};
use crate::policy::{auth, consent};

/// Consents whose window ends within this many days are listed.
pub const CONSENT_WARNING_DAYS: i64 = 30;

/// `GET /office/`.
pub async fn page(console: &Console, ctx: &Ctx) -> PageResult {
    let store = &console.admin.store;
    let now = console.gate.clock.now();
    let today = console.gate.clock.today();
    let unavailable = |e: crate::registry::store::StoreError| Fail::Unavailable(e.to_string());

    let dir = console.audit_dir.clone();
    let filter = QueryFilter {
        since: Some(today.midnight().assume_offset(crate::ops::clock::JST)),
        ..QueryFilter::default()
    };
    let rows = tokio::task::spawn_blocking(move || crate::audit::query(&dir, &filter))
        .await
        .map_err(|e| Fail::Unavailable(e.to_string()))?;
    let (rows, audit_ok) = match rows {
        Ok(r) => (r, true),
        Err(e) => {
            tracing::warn!(error = %e, "office: audit query failed");
            (Vec::new(), false)
        }
    };
    let mut per_site: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut failed_today = 0u64;
    for r in &rows {
        let q = &r.request;
        // Physicians' wrong passwords (`login-failed`, `login-locked-now`) and the staff's
        // on the console (`office-signin`, `wrong-password…`).
        if matches!(q.reason.as_str(), "login-failed" | "login-locked-now")
            || (q.path == "office-signin" && q.reason.starts_with("wrong-password"))
        {
            failed_today += 1;
        }
        if q.ingress == Ingress::Admin {
            continue;
        }
        if q.patient.is_none() {
            continue;
        }
        let e = per_site.entry(q.site.clone()).or_default();
        match q.decision {
            Decision::Allow => e.0 += 1,
            Decision::Deny => e.1 += 1,
        }
    }
    let views: Vec<_> = per_site
        .into_iter()
        .map(|(site, (allowed, refused))| context! { site, allowed, refused })
        .collect();

    let mut locks = Vec::new();
    for p in store.physicians().map_err(unavailable)? {
        let until = auth::locked_until(&p, now);
        if p.failed_logins > 0 || until.is_some() {
            locks.push(context! {
                who => format!("利用医 / physician {}", p.id),
                failures => p.failed_logins,
                until => until.map(crate::ops::clock::rfc3339).unwrap_or_default(),
            });
        }
    }
    for s in store.staff_list().map_err(unavailable)? {
        let until = auth::locked_until(&s, now);
        if s.failed_logins > 0 || until.is_some() {
            locks.push(context! {
                who => format!("職員 / staff {}", s.id),
                failures => s.failed_logins,
                until => until.map(crate::ops::clock::rfc3339).unwrap_or_default(),
            });
        }
    }

    // The consents due for deletion 30 days from now are those whose window ends by then.
    let horizon = today + time::Duration::days(CONSENT_WARNING_DAYS);
    let ending: Vec<_> = store
        .purge_due(horizon)
        .map_err(unavailable)?
        .into_iter()
        .filter(|c| c.withdrawn.is_none())
        .map(|c| {
            context! {
                until => consent::access_until(&c).to_string(),
                published => c.published.to_string(),
                last_view => c.last_view.map(|d| d.to_string()).unwrap_or_else(|| "—".into()),
                patient => c.patient,
            }
        })
        .collect();

    let soon = now + time::Duration::days(EXPIRY_WARNING_DAYS);
    let terminals = store.terminals().map_err(unavailable)?;
    let expiring: Vec<_> = terminals
        .iter()
        .filter(|t| !t.revoked && t.not_after < soon)
        .map(|t| {
            context! {
                name => t.name.clone(), physician => t.physician.clone(),
                not_after => t.not_after.to_offset(crate::ops::clock::JST).date().to_string(),
            }
        })
        .collect();

    let registry = match store.health() {
        crate::registry::RegistryHealth::Embedded => (
            "この施設の登録簿（sled）: 常に最新 / this site's embedded registry (sled): always current".to_string(),
            true,
        ),
        h @ crate::registry::RegistryHealth::Regional {
            max_stale,
            revision,
            ..
        } => (
            format!(
                "地域の登録簿（etcd）: {:.1} 秒前に最新を確認（上限 {} 秒）、リビジョン {revision} / regional registry (etcd): confirmed current {:.1} s ago (limit {} s), revision {revision}",
                h.stale_seconds(),
                max_stale.as_secs(),
                h.stale_seconds(),
                max_stale.as_secs()
            ),
            h.usable(),
        ),
    };
    let health = vec![
        ("登録簿 / registry".to_string(), registry.0, registry.1),
        (
            "登録数 / registered".to_string(),
            format!(
                "利用医 {} 名・端末 {} 台 / {} physicians, {} terminals",
                store.physicians().map(|p| p.len()).unwrap_or(0),
                terminals.len(),
                store.physicians().map(|p| p.len()).unwrap_or(0),
                terminals.len()
            ),
            true,
        ),
        (
            "監査ログ / audit log".to_string(),
            if console.admin.audit.failed() || !audit_ok {
                "書き込みまたは読み出しに失敗しています / failing: see the gateway's log"
                    .to_string()
            } else {
                format!(
                    "正常 / writing ({} records this run)",
                    console.admin.audit.written()
                )
            },
            !console.admin.audit.failed() && audit_ok,
        ),
    ];
    Ok(console.templates.page(
        StatusCode::OK,
        "today.html",
        context! { ..ctx.base(console, "today"), ..context! {
            today => today.to_string(), views, locks, failed_today, ending, expiring, health,
        } },
    ))
}
