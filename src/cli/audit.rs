//! `audit verify | head | query` (art 12.8).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use crate::audit::{self, QueryFilter, QueryRow, RecordedHead, VerifyError, VerifyOptions};
use crate::ops::clock::{Clock, SystemClock};
use crate::ops::exit::UsageError;
use crate::site::config::Config;
use time::OffsetDateTime;

/// `audit query`'s arguments as typed.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub patient: Option<String>,
    pub physician: Option<String>,
    /// RFC 3339 time or `YYYY-MM-DD` (Japan).
    pub since: Option<String>,
    pub until: Option<String>,
    pub json: bool,
    pub full_scan: bool,
}

/// `audit verify [--rebuild-index] [--head SEQ:HASH]`.
pub fn verify(
    c: &Config,
    rebuild_index: bool,
    head: Option<RecordedHead>,
) -> anyhow::Result<ExitCode> {
    let dir = c.state_dir.join("audit");
    if rebuild_index && !rebuild(c, &dir) {
        return Ok(ExitCode::FAILURE);
    }
    let opts = VerifyOptions {
        index_optional: false,
        head,
    };
    match audit::verify_with(&dir, &opts) {
        Ok(r) => {
            let witnessed = head
                .map(|h| format!("; contains the recorded head {h}"))
                .unwrap_or_default();
            println!(
                "audit log intact: {} records, head {}:{}{witnessed}",
                r.records, r.records, r.head
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ VerifyError::Index(_)) => {
            eprintln!("audit index WRONG (the log is the record; `audit verify --rebuild-index` with the gateway stopped, or its next start, derives the index again): {e}");
            Ok(ExitCode::FAILURE)
        }
        Err(e @ VerifyError::HeadMismatch(_)) => {
            eprintln!("audit log REWRITTEN: {e}");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => {
            eprintln!("audit log BROKEN: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `audit verify` on a site of the network (issue 14): the local checks of [`verify`], then
/// the log must still contain the head this site published to the regional registry (the
/// other machines' witness). With the embedded sled registry, the local checks alone.
pub async fn verify_witnessed(
    c: &Config,
    rebuild_index: bool,
    head: Option<RecordedHead>,
) -> anyhow::Result<ExitCode> {
    let local = verify(c, rebuild_index, head)?;
    if !matches!(
        c.registry.backend,
        crate::site::config::RegistryBackend::Etcd(_)
    ) {
        return Ok(local);
    }
    let witnessed = network_head_check(c).await;
    if local != ExitCode::SUCCESS {
        return Ok(local);
    }
    Ok(witnessed)
}

/// The head the network holds for this site, checked against the log.
async fn network_head_check(c: &Config) -> ExitCode {
    let not_witnessed = |why: String| {
        eprintln!("audit log NOT WITNESSED: {why}");
        ExitCode::FAILURE
    };
    let store = match crate::registry::store::Store::open_configured(c).await {
        Ok(s) => s,
        Err(e) => return not_witnessed(format!("the regional registry cannot be reached: {e}")),
    };
    if let Err(e) = store.ready(std::time::Duration::from_secs(10)).await {
        return not_witnessed(format!("the regional registry cannot be reached: {e}"));
    }
    let held = match store.audit_head(&c.site.id) {
        Ok(Some(h)) => h,
        Ok(None) => {
            // A site new to the regional registry: nothing to compare yet (not a failure; the
            // gateway publishes its head every few seconds while it runs).
            eprintln!(
                "audit log not yet witnessed: the regional registry holds no audit head for site {} yet",
                c.site.id
            );
            return ExitCode::SUCCESS;
        }
        Err(e) => return not_witnessed(format!("the published head is unreadable: {e}")),
    };
    let want: RecordedHead = match format!("{}:{}", held.seq, held.hash).parse() {
        Ok(w) => w,
        Err(e) => return not_witnessed(format!("the published head is malformed: {e}")),
    };
    let opts = VerifyOptions {
        index_optional: true,
        head: Some(want),
    };
    match audit::verify_with(&c.state_dir.join("audit"), &opts) {
        Ok(_) => {
            println!(
                "witnessed by the network: the log contains the head {want} that site {} published at {}",
                c.site.id, held.at
            );
            ExitCode::SUCCESS
        }
        Err(e @ VerifyError::HeadMismatch(_)) => {
            eprintln!(
                "audit log REWRITTEN: it does not match the head the network holds for site {} (published at {}): {e}",
                c.site.id, held.at
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("audit log BROKEN: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--rebuild-index`, refused while a gateway runs; false (said why) when not rebuilt.
fn rebuild(c: &Config, dir: &Path) -> bool {
    if std::os::unix::net::UnixStream::connect(&c.admin_socket).is_ok() {
        eprintln!(
            "seibo-gate: a gateway is running (it answers on {}): it keeps the index itself and rebuilds it at every start; stop it before --rebuild-index",
            c.admin_socket.display()
        );
        return false;
    }
    match audit::rebuild_index(dir) {
        Ok(n) => {
            println!("audit index rebuilt from the log: {n} lines");
            true
        }
        Err(e) => {
            eprintln!("audit index NOT rebuilt: {e}");
            false
        }
    }
}

/// `audit head`: `SEQ:HASH` of the last record, to keep elsewhere.
pub fn head(c: &Config) -> ExitCode {
    let opts = VerifyOptions {
        index_optional: true,
        head: None,
    };
    match audit::verify_with(&c.state_dir.join("audit"), &opts) {
        Ok(r) => {
            println!("{}:{}", r.records, r.head);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("audit log BROKEN (no head to record): {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--since` and `--until` parsed, and checked to hold a record (exit 64 otherwise).
pub(crate) fn time_range(
    c: &Config,
    since: Option<&str>,
    until: Option<&str>,
) -> anyhow::Result<(Option<OffsetDateTime>, Option<OffsetDateTime>)> {
    let parse = |s: Option<&str>, key: &str| -> anyhow::Result<_> {
        s.map(|s| audit::parse_time_arg(s).map_err(|e| UsageError(format!("--{key}: {e}"))))
            .transpose()
            .map_err(Into::into)
    };
    let (since, until) = (parse(since, "since")?, parse(until, "until")?);
    crate::ops::dates::query_range(since, until, SystemClock.now(), c.future_grace_days)
        .map_err(UsageError)?;
    Ok((since, until))
}

/// `audit query`: records oldest first, a line each or JSON lines.
pub fn query(c: &Config, q: Query) -> anyhow::Result<ExitCode> {
    let dir = c.state_dir.join("audit");
    let (since, until) = time_range(c, q.since.as_deref(), q.until.as_deref())?;
    let filter = QueryFilter {
        patient: q.patient,
        physician: q.physician,
        since,
        until,
    };
    let rows = if q.full_scan {
        audit::query_full_scan(&dir, &filter)?
    } else {
        audit::query(&dir, &filter)?
    };
    let mut out = std::io::stdout().lock();
    for r in &rows {
        if q.json {
            serde_json::to_writer(&mut out, r)?;
            writeln!(out)?;
        } else {
            write_row(&mut out, r)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One record as a line of text.
fn write_row(out: &mut impl Write, r: &QueryRow) -> std::io::Result<()> {
    let q = &r.request;
    writeln!(
        out,
        "{} {:<5} {:<26} {:<7} phys={} term={} patient={} {} {} → {}",
        q.time,
        q.decision,
        q.reason,
        q.ingress,
        q.physician.as_deref().unwrap_or("-"),
        q.terminal.as_deref().unwrap_or("-"),
        q.patient.as_deref().unwrap_or("-"),
        q.method,
        q.path,
        r.status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "-".into())
    )
}
