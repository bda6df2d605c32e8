//! A patient's record of views (art 12.8 and a patient's disclosure request): every request
//! that named the patient, from the audit query — when, who, which terminal, which site,
//! which category, allowed or refused — as a page printable on A4 and as CSV for the office;
//! and the usage review: views per physician per day with the patients each viewed.
//!
//! With `[network]` and `[peer]` the patient's report asks every site (issue 14's `audit query
//! --network`, [`crate::cli::audit_network::collect`]) and names the sites that did not
//! answer; otherwise it reads this site's audit log.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use http::StatusCode;
use minijinja::context;

use super::forms::{self, Fields};
use super::listener::StaffPeer;
use super::render;
use super::router::{note, Ctx, Fail, PageResult};
use super::Console;
use crate::audit::{Decision, Ingress, QueryFilter, QueryRow};

/// Longest usage review.
const MAX_USAGE_DAYS: i64 = 366;
/// Views by one physician in one day from which the review marks the row.
const MANY_VIEWS_A_DAY: usize = 30;

/// The physicians' requests (never the admin surface's records) matching `filter`.
async fn rows(console: &Console, filter: QueryFilter) -> Result<Vec<QueryRow>, Fail> {
    let dir = console.audit_dir.clone();
    let rows = tokio::task::spawn_blocking(move || crate::audit::query(&dir, &filter))
        .await
        .map_err(|e| Fail::Unavailable(e.to_string()))?
        .map_err(|e| Fail::Unavailable(format!("the audit log cannot be read: {e}")))?;
    Ok(rows
        .into_iter()
        .filter(|r| r.request.ingress != Ingress::Admin)
        .collect())
}

fn jst(t: &str) -> String {
    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
        .ok()
        .and_then(|t| {
            t.to_offset(crate::ops::clock::JST)
                .format(time::macros::format_description!(
                    "[year]-[month]-[day] [hour]:[minute]:[second]"
                ))
                .ok()
        })
        .unwrap_or_else(|| t.to_string())
}

/// One line of the report.
struct Line {
    time: String,
    physician: String,
    terminal: String,
    site: String,
    category: String,
    result: String,
}

fn lines(console: &Console, rows: &[QueryRow]) -> Vec<Line> {
    let names: HashMap<String, String> = console
        .admin
        .store
        .physicians()
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p.id, p.name))
        .collect();
    rows.iter()
        .map(|r| {
            let q = &r.request;
            let physician = q.physician.clone().unwrap_or_else(|| "—".into());
            let physician = match names.get(&physician) {
                Some(n) => format!("{n}（{physician}）"),
                None => physician,
            };
            Line {
                time: jst(&q.time),
                physician,
                terminal: q.terminal.clone().unwrap_or_else(|| "—".into()),
                site: q.site.clone(),
                category: q.category.map_or_else(|| "—".into(), |c| c.to_string()),
                result: match q.decision {
                    Decision::Allow => format!(
                        "閲覧 / viewed ({})",
                        r.status.map_or("-".into(), |s| s.to_string())
                    ),
                    Decision::Deny => format!("拒否 / refused ({})", q.reason),
                },
            }
        })
        .collect()
}

/// The patient's rows, and the sites whose rows are missing (network-wide query only).
async fn patient_rows(
    console: &Console,
    peer: &StaffPeer,
    ctx: &Ctx,
    q: &Fields,
    what: &str,
) -> Result<(String, Vec<Line>, Vec<String>), Fail> {
    let patient = forms::patient_id(q.required("patient", "患者ID", "Patient ID")?)?;
    // Opening a patient's record of views is itself recorded.
    note(
        console,
        peer,
        Some(&ctx.staff.id),
        what,
        Some(&patient),
        Decision::Allow,
        "disclosure",
        200,
    )
    .await;
    if console.config.network.is_some() && console.config.peer.is_some() {
        return network_rows(console, q, patient).await;
    }
    let filter = QueryFilter {
        patient: Some(patient.clone()),
        ..QueryFilter::default()
    };
    let rows = rows(console, filter).await?;
    Ok((patient, lines(console, &rows), Vec::new()))
}

/// Issue 14's network-wide query (`audit query --network`): every site asked over the peer
/// API for its id of the patient (this site's from the form, the others' from `links`), the
/// rows merged by time with their site; a site that did not answer, or was not asked, is
/// named on the report — never silently left out.
async fn network_rows(
    console: &Console,
    q: &Fields,
    patient: String,
) -> Result<(String, Vec<Line>, Vec<String>), Fail> {
    let links = forms::links(q.get("links"), &console.site.id)?;
    let mut patients = vec![format!("{}:{patient}", console.site.id)];
    patients.extend(links.iter().map(|(s, i)| format!("{s}:{i}")));
    let query = crate::cli::audit_network::NetworkQuery {
        patients,
        ..Default::default()
    };
    let got = crate::cli::audit_network::collect(&console.config, &query)
        .await
        .map_err(|e| Fail::Unavailable(format!("the network-wide audit query failed: {e:#}")))?;
    let names: HashMap<String, String> = console
        .admin
        .store
        .physicians()
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p.id, p.name))
        .collect();
    let lines = got
        .rows
        .iter()
        .filter(|(_, _, v)| v["ingress"] != "admin" && v["ingress"] != "peer")
        .map(|(_, site, v)| {
            let s = |k: &str| v[k].as_str().unwrap_or("—").to_string();
            let physician = s("physician");
            Line {
                time: jst(&s("time")),
                physician: match names.get(&physician) {
                    Some(n) => format!("{n}（{physician}）"),
                    None => physician,
                },
                terminal: s("terminal"),
                site: site.clone(),
                category: s("category"),
                result: if v["decision"] == "allow" {
                    format!(
                        "閲覧 / viewed ({})",
                        v["status"].as_u64().map_or("-".into(), |n| n.to_string())
                    )
                } else {
                    format!("拒否 / refused ({})", s("reason"))
                },
            }
        })
        .collect();
    let mut gaps: Vec<String> = got
        .missing
        .iter()
        .map(|(site, why)| {
            format!(
                "施設 {}（{}）から回答がありません。その施設の記録はこの報告に含まれていません / site {} did not answer; its rows are missing: {why}",
                site.id, site.name, site.id
            )
        })
        .collect();
    gaps.extend(got.not_asked.iter().map(|s| {
        format!(
            "施設 {s} には問い合わせていません（その施設の患者IDが未入力） / site {s} not asked: no patient id given for it (links)"
        )
    }));
    Ok((patient, lines, gaps))
}

/// `GET /office/views[?patient=ID]`: the disclosure report (A4 when printed).
pub async fn report(console: &Console, peer: &StaffPeer, ctx: &Ctx, q: &Fields) -> PageResult {
    let base = ctx.base(console, "views");
    if q.get("patient").is_empty() {
        return Ok(console.templates.page(
            StatusCode::OK,
            "views.html",
            context! { ..base, ..context! { patient => "", rows => Vec::<()>::new() } },
        ));
    }
    let (patient, lines, gaps) =
        patient_rows(console, peer, ctx, q, "office-disclosure-report").await?;
    let rows: Vec<_> = lines
        .into_iter()
        .map(|l| context! { time => l.time, physician => l.physician, terminal => l.terminal, site => l.site, category => l.category, result => l.result })
        .collect();
    Ok(console.templates.page(
        StatusCode::OK,
        "views.html",
        context! { ..base, ..context! {
            patient, rows,
            made => jst(&crate::ops::clock::rfc3339(console.gate.clock.now())),
            scope => if console.config.network.is_some() && console.config.peer.is_some() {
                format!("対象: ネットワークの全施設の監査記録（{}） / Scope: the audit logs of every site of the network", console.config.network.as_ref().map(|n| n.id.clone()).unwrap_or_default())
            } else {
                format!("対象: {} の監査記録（この施設のゲートウェイ） / Scope: the audit log of this site's gateway ({})", console.site.name, console.site.id)
            },
            gaps, links => q.get("links"),
            csv => format!(
                "/office/views.csv?{}",
                form_urlencoded::Serializer::new(String::new())
                    .append_pair("patient", q.get("patient"))
                    .append_pair("links", q.get("links"))
                    .finish()
            ),
        } },
    ))
}

/// Quotes a CSV field (RFC 4180), and defuses spreadsheet formulas.
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `GET /office/views.csv?patient=ID`.
pub async fn csv(console: &Console, peer: &StaffPeer, ctx: &Ctx, q: &Fields) -> PageResult {
    let (patient, lines, gaps) =
        patient_rows(console, peer, ctx, q, "office-disclosure-csv").await?;
    let mut out = String::from("\u{feff}time_jst,physician,terminal,site,category,result\r\n");
    for g in gaps {
        out.push_str(&format!("# {}\r\n", g.replace(['\r', '\n'], " ")));
    }
    for l in lines {
        out.push_str(
            &[
                &l.time,
                &l.physician,
                &l.terminal,
                &l.site,
                &l.category,
                &l.result,
            ]
            .map(|f| csv_field(f))
            .join(","),
        );
        out.push_str("\r\n");
    }
    Ok(render::download(
        "text/csv; charset=utf-8",
        &format!("views-{patient}.csv"),
        out.into_bytes(),
    ))
}

/// `GET /office/usage[?days=N]`: views per physician per day, and the patients each viewed.
pub async fn usage(console: &Console, ctx: &Ctx, q: &Fields) -> PageResult {
    let days = match q.get("days") {
        "" => 30,
        d => d
            .parse::<i64>()
            .ok()
            .filter(|d| (1..=MAX_USAGE_DAYS).contains(d))
            .ok_or_else(|| {
                forms::bad(
                    format!("日数は1〜{MAX_USAGE_DAYS}で入力してください。"),
                    format!("Days must be 1-{MAX_USAGE_DAYS}."),
                )
            })?,
    };
    let since = (console.gate.clock.today() - time::Duration::days(days - 1))
        .midnight()
        .assume_offset(crate::ops::clock::JST);
    let rows = rows(
        console,
        QueryFilter {
            since: Some(since),
            ..QueryFilter::default()
        },
    )
    .await?;
    let mut per: BTreeMap<(String, String), (usize, BTreeSet<String>)> = BTreeMap::new();
    for r in rows
        .iter()
        .filter(|r| r.request.decision == Decision::Allow && r.request.patient.is_some())
    {
        let q = &r.request;
        let day = jst(&q.time).chars().take(10).collect::<String>();
        let e = per
            .entry((day, q.physician.clone().unwrap_or_default()))
            .or_default();
        e.0 += 1;
        if let Some(p) = &q.patient {
            e.1.insert(p.clone());
        }
    }
    let usage: Vec<_> = per
        .into_iter()
        .rev()
        .map(|((date, physician), (views, patients))| {
            context! { date, physician, views, many => views >= MANY_VIEWS_A_DAY, patients => patients.into_iter().collect::<Vec<_>>() }
        })
        .collect();
    Ok(console.templates.page(
        StatusCode::OK,
        "usage.html",
        context! { ..ctx.base(console, "usage"), ..context! { usage, days } },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        assert_eq!(csv_field("a\"b"), "\"a\"\"b\"");
        assert_eq!(csv_field("=HYPERLINK(1)"), "\"'=HYPERLINK(1)\"");
        assert_eq!(csv_field("西予"), "\"西予\"");
    }
}
