//! `registry status | export --out FILE | import FILE`: the registry backend as an admin sees
//! it, and moving a site's registrations between sled and the regional registry (etcd)
//! without re-registering anyone.
//!
//! The export is JSON lines, one record a line, physicians first, then terminals, then
//! consents: `{"kind":"physician","record":{…}}`. Import checks every line first (it parses
//! as its kind, ids are valid, terminals name a physician of the file or the registry) and
//! writes nothing when one is wrong; then it adds each record through the same store
//! operations as the admin commands (a record already registered is reported, not
//! overwritten).

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::admin::AdminRequest;
use crate::ops::exit::UsageError;
use crate::registry::ids::{PatientId, PhysicianId};
use crate::registry::model::{Consent, Physician, Terminal};
use crate::registry::store::{Store, StoreError};
use crate::registry::RegistryStatus;
use crate::site::config::Config;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", content = "record", rename_all = "kebab-case")]
enum Line {
    Physician(Physician),
    Terminal(Terminal),
    Consent(Consent),
}

/// `registry status`: asks the running gateway (its own copy's revision and staleness), or
/// opens the registry directly when none runs.
pub async fn status(cfg: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let r = super::admin_call(cfg, AdminRequest::RegistryStatus {}).await?;
    if !r.ok {
        eprintln!("{}", r.message);
        return Ok(ExitCode::FAILURE);
    }
    let s: RegistryStatus = r.reply()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        println!("backend         {}", s.backend);
        if let Some(p) = &s.prefix {
            println!("prefix          {p}");
        }
        println!("revision        {}", s.revision);
        match s.stale_seconds {
            Some(x) => println!("stale           {x:.1} s (limit {} s)", s.max_stale_seconds),
            None => println!(
                "stale           never confirmed since start (limit {} s)",
                s.max_stale_seconds
            ),
        }
        println!(
            "serving         {}",
            if s.usable {
                "yes"
            } else {
                "NO: sign-ins and consent-gated requests get 503"
            }
        );
        println!("watch restarts  {}", s.watch_restarts);
        for m in &s.members {
            println!("member          {m}");
        }
    }
    Ok(if s.usable {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::ops::exit::UNAVAILABLE)
    })
}

/// Opens the configured registry directly (a sled registry only while no gateway holds it).
async fn open(cfg: &Config) -> anyhow::Result<Store> {
    let store = Store::open_configured(cfg).await.with_context(|| {
        "cannot open the registry (a sled registry is held by a running gateway: stop it first)"
    })?;
    store
        .ready(std::time::Duration::from_secs(15))
        .await
        .context("the registry is not usable")?;
    Ok(store)
}

/// `registry export --out FILE`: every record, as JSON lines (mode 0600: it holds password
/// hashes).
pub async fn export(cfg: &Config, out: &Path) -> anyhow::Result<ExitCode> {
    let store = open(cfg).await?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let file = opts
        .open(out)
        .with_context(|| format!("cannot create {} (never overwritten)", out.display()))?;
    let mut w = std::io::BufWriter::new(file);
    let (mut np, mut nt, mut nc) = (0, 0, 0);
    for p in store.physicians()? {
        serde_json::to_writer(&mut w, &Line::Physician(p))?;
        w.write_all(b"\n")?;
        np += 1;
    }
    for t in store.terminals()? {
        serde_json::to_writer(&mut w, &Line::Terminal(t))?;
        w.write_all(b"\n")?;
        nt += 1;
    }
    for c in store.consents()? {
        serde_json::to_writer(&mut w, &Line::Consent(c))?;
        w.write_all(b"\n")?;
        nc += 1;
    }
    w.flush()?;
    w.get_ref().sync_all()?;
    println!(
        "exported {np} physician(s), {nt} terminal(s), {nc} consent(s) to {}",
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Parses and checks every line; the records in file order, or every problem found.
fn check(path: &Path) -> anyhow::Result<Vec<Line>> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut lines = Vec::new();
    let mut problems = Vec::new();
    let mut physicians = std::collections::HashSet::new();
    for (i, l) in std::io::BufReader::new(f).lines().enumerate() {
        let n = i + 1;
        let l = l.with_context(|| format!("{}: line {n} unreadable", path.display()))?;
        if l.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Line>(&l) {
            Ok(rec) => {
                let bad = match &rec {
                    Line::Physician(p) => {
                        physicians.insert(p.id.clone());
                        (!PhysicianId::is_valid(&p.id)).then(|| format!("physician id {:?}", p.id))
                    }
                    Line::Terminal(t) => (t.fingerprint.len() != 64
                        || !t.fingerprint.bytes().all(|b| b.is_ascii_hexdigit()))
                    .then(|| format!("terminal {:?}: fingerprint", t.name)),
                    Line::Consent(c) => (!PatientId::is_valid(&c.patient))
                        .then(|| format!("patient id {:?}", c.patient)),
                };
                if let Some(b) = bad {
                    problems.push(format!("line {n}: invalid {b}"));
                }
                lines.push(rec);
            }
            Err(e) => problems.push(format!("line {n}: {e}")),
        }
    }
    if !problems.is_empty() {
        return Err(UsageError(format!(
            "{}: {} problem(s), nothing imported:\n  - {}",
            path.display(),
            problems.len(),
            problems.join("\n  - ")
        ))
        .into());
    }
    Ok(lines)
}

/// `registry import FILE`: checks the whole file, then adds every record.
pub async fn import(cfg: &Config, path: &Path) -> anyhow::Result<ExitCode> {
    let lines = check(path)?;
    let store = open(cfg).await?;
    let (mut added, mut refused) = (0usize, Vec::new());
    // Physicians before the terminals that name them, whatever the file's order.
    let rank = |l: &Line| match l {
        Line::Physician(_) => 0,
        Line::Terminal(_) => 1,
        Line::Consent(_) => 2,
    };
    let mut lines = lines;
    lines.sort_by_key(rank);
    for l in &lines {
        let (what, r) = match l {
            Line::Physician(p) => (format!("physician {}", p.id), store.add_physician(p).await),
            Line::Terminal(t) => (format!("terminal {}", t.name), store.add_terminal(t).await),
            Line::Consent(c) => (
                format!("consent of {}", c.patient),
                store.grant_consent(c).await,
            ),
        };
        match r {
            Ok(()) => added += 1,
            Err(e @ (StoreError::Conflict(_) | StoreError::NotFound(_))) => {
                refused.push(format!("{what}: {e}"))
            }
            Err(e) => return Err(e).with_context(|| format!("import stopped at {what}")),
        }
    }
    println!("imported {added} record(s) from {}", path.display());
    for r in &refused {
        println!("not imported: {r}");
    }
    Ok(if refused.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::ops::exit::REFUSED)
    })
}
