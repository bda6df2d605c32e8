//! `physician add | passwd | suspend | resume | delete | list` (art 3, 4, 6.3, 7).

use std::process::ExitCode;

use super::{admin_call, report};
use crate::admin::AdminRequest;
use crate::ops::exit::DataError;
use crate::site::config::Config;

/// `physician add`: registers the physician with a one-time initial password, shown once
/// unless read from standard input.
pub async fn add(
    c: &Config,
    id: String,
    name: String,
    site: Option<String>,
    password_stdin: bool,
    form_ref: Option<String>,
) -> anyhow::Result<ExitCode> {
    let (password, shown) = initial_password(password_stdin)?;
    let r = admin_call(
        c,
        AdminRequest::PhysicianAdd {
            id,
            name,
            site,
            password_hash: Some(crate::policy::auth::hash_password(&password)?),
            form_ref,
        },
    )
    .await?;
    if r.ok && shown {
        println!("{}", r.message);
        println!("initial password (shown once; to be changed at first sign-in): {password}");
        return Ok(ExitCode::SUCCESS);
    }
    Ok(report(r, false))
}

/// `physician passwd`: a new one-time password, shown once unless read from standard input.
pub async fn passwd(c: &Config, id: String, password_stdin: bool) -> anyhow::Result<ExitCode> {
    let (password, shown) = initial_password(password_stdin)?;
    let r = admin_call(
        c,
        AdminRequest::PhysicianPasswd {
            id,
            password_hash: crate::policy::auth::hash_password(&password)?,
        },
    )
    .await?;
    if r.ok && shown {
        println!("{}", r.message);
        println!("new one-time password (shown once): {password}");
        return Ok(ExitCode::SUCCESS);
    }
    Ok(report(r, false))
}

/// `physician list [--json]`: a table, or one JSON array.
pub async fn list(c: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let r = admin_call(c, AdminRequest::PhysicianList {}).await?;
    if !json && r.ok {
        print_physicians(r.reply()?);
        return Ok(ExitCode::SUCCESS);
    }
    Ok(report(r, json))
}

fn print_physicians(list: Vec<crate::registry::model::Physician>) {
    for p in list {
        println!(
            "{:<20} {:<24} {:<16} {}",
            p.id,
            p.name,
            p.site,
            p.suspended
                .map(|r| format!("suspended ({})", r.as_str()))
                .unwrap_or_else(|| "active".into())
        );
    }
}

/// The initial password: generated and shown, or read from standard input.
fn initial_password(from_stdin: bool) -> anyhow::Result<(String, bool)> {
    if !from_stdin {
        return Ok((crate::policy::auth::generate_password(), true));
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let p = line.trim_end_matches(['\r', '\n']).to_string();
    if p.chars().count() < 10 {
        return Err(DataError(
            "the password read from standard input is shorter than 10 characters".into(),
        )
        .into());
    }
    Ok((p, false))
}
