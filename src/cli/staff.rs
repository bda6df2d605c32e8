//! `staff add | suspend | list` (issue 15): the liaison office's console accounts. `staff add`
//! issues the staff certificate from the site CA (OU `liaison-office-staff`; NAME.crt, NAME.key,
//! NAME.p12 as `terminal add` writes them, the `.p12` password printed once), hashes a
//! one-time password (printed once, changed at the first sign-in on the console) and registers
//! the account over the admin socket. Files of an account the registry refuses are removed.

use std::path::Path;
use std::process::ExitCode;

use super::{admin_call, report};
use crate::admin::{AdminRequest, StaffView};
use crate::registry::model::StaffRole;
use crate::site::config::Config;
use crate::site::pki::{Ca, ClientKind};

/// `staff add`.
pub async fn add(
    cfg: &Config,
    id: String,
    name: String,
    role: StaffRole,
    out: &Path,
) -> anyhow::Result<ExitCode> {
    if !crate::registry::ids::PhysicianId::is_valid(&id) {
        return Err(crate::ops::exit::UsageError(format!(
            "--id {id:?}: use 1-64 characters A-Z a-z 0-9 - _, starting with a letter or digit"
        ))
        .into());
    }
    let ca = Ca::load(&cfg.ca.cert, &cfg.ca.key)?;
    let file = format!("staff-{id}");
    let issued = ca.issue_client(
        ClientKind::Staff,
        &format!("{name} (liaison office)"),
        &file,
        out,
        cfg.ca.terminal_days,
    )?;
    let password = crate::policy::auth::generate_password();
    let req = AdminRequest::StaffAdd {
        id,
        name,
        role,
        password_hash: crate::policy::auth::hash_password(&password)?,
        fingerprint: issued.info.fingerprint.clone(),
        serial: issued.info.serial.clone(),
        not_after: issued.info.not_after.to_offset(crate::ops::clock::JST),
    };
    let r = admin_call(cfg, req).await?;
    if !r.ok {
        for p in [&issued.cert_path, &issued.key_path, &issued.p12_path] {
            let _ = std::fs::remove_file(p);
        }
        eprintln!("seibo-gate: {}", r.message);
        return Ok(ExitCode::FAILURE);
    }
    println!("{}", r.message);
    println!("certificate: {}", issued.cert_path.display());
    println!("private key: {}", issued.key_path.display());
    println!("PKCS#12:     {}", issued.p12_path.display());
    println!("PKCS#12 password (shown once): {}", issued.p12_password);
    println!("one-time password (shown once; changed at the first sign-in): {password}");
    Ok(ExitCode::SUCCESS)
}

/// `staff list [--json]`.
pub async fn list(c: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let r = admin_call(c, AdminRequest::StaffList {}).await?;
    if !json && r.ok {
        let list: Vec<StaffView> = r.reply()?;
        for s in list {
            println!(
                "{:<20} {:<24} {:<6} {} {}",
                s.id,
                s.name,
                s.role.as_str(),
                crate::ops::clock::rfc3339(s.not_after),
                if s.suspended { "suspended" } else { "active" }
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    Ok(report(r, json))
}
