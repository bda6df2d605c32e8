//! `terminal add [--wireguard] | revoke | list` and `site-system add` (art 6.1, 6.2, 12.2,
//! 12.7): the credential is issued by [`crate::admin::terminal_issue`], then registered; files of a
//! terminal the registry refuses are removed.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::ExitCode;

use super::{admin_call, report};
use crate::admin::terminal_issue::{self, Request};
use crate::admin::AdminRequest;
use crate::ops::clock::{Clock, SystemClock};
use crate::ops::exit::{ConfigProblem, UsageError};
use crate::registry::model::{Terminal, TerminalKind};
use crate::site::config::Config;
use crate::site::pki::Ca;

/// The physician's name when registered; otherwise says why on stderr and gives `None`
/// (a credential is issued only to a registered physician).
async fn registered_physician(cfg: &Config, id: &str) -> anyhow::Result<Option<String>> {
    let r = admin_call(cfg, AdminRequest::PhysicianGet { id: id.to_string() }).await?;
    if !r.ok {
        eprintln!("seibo-gate: {}", r.message);
        return Ok(None);
    }
    let p: crate::registry::model::Physician = r.reply()?;
    Ok(Some(p.name))
}

/// Registers `terminal`; on refusal says why, calls `remove_files` and exits 1.
async fn register(
    cfg: &Config,
    terminal: Terminal,
    remove_files: impl FnOnce(),
) -> anyhow::Result<Option<String>> {
    let r = admin_call(cfg, AdminRequest::TerminalRegister { terminal }).await?;
    if !r.ok {
        // Not registered: the files must not be mistaken for a working credential.
        remove_files();
        eprintln!("seibo-gate: {}", r.message);
        return Ok(None);
    }
    Ok(Some(r.message))
}

/// `terminal add` (a physician's terminal) or `site-system add` (`physician` empty): a
/// client certificate, registered.
pub async fn add(
    cfg: &Config,
    kind: TerminalKind,
    physician: &str,
    name: &str,
    out: &Path,
) -> anyhow::Result<ExitCode> {
    let cn = match kind {
        TerminalKind::Terminal => {
            let Some(physician_name) = registered_physician(cfg, physician).await? else {
                return Ok(ExitCode::FAILURE);
            };
            physician_name
        }
        TerminalKind::SiteSystem => format!("{name} (site system)"),
    };
    let ca = Ca::load(&cfg.ca.cert, &cfg.ca.key)?;
    let req = Request {
        physician,
        name,
        out,
        days: cfg.ca.terminal_days,
        now: SystemClock.now(),
    };
    let issued = terminal_issue::certificate(&ca, kind, &cn, &req)?;
    let files = &issued.files;
    let Some(message) = register(cfg, issued.terminal.clone(), || issued.remove_files()).await?
    else {
        return Ok(ExitCode::FAILURE);
    };
    println!("{message}");
    println!("certificate: {}", files.cert_path.display());
    println!("private key: {}", files.key_path.display());
    println!("PKCS#12:     {}", files.p12_path.display());
    println!("PKCS#12 password (shown once): {}", files.p12_password);
    println!("fingerprint: {}", files.info.fingerprint);
    Ok(ExitCode::SUCCESS)
}

/// `terminal add --wireguard`: a key pair, a tunnel address from the pool, and a wg-quick
/// configuration that the official WireGuard clients import as is (art 12.2).
pub async fn add_wireguard(
    cfg: &Config,
    physician: &str,
    name: &str,
    out: &Path,
) -> anyhow::Result<ExitCode> {
    let wg = cfg.wireguard.as_ref().ok_or_else(|| {
        ConfigProblem("the WireGuard ingress is not enabled: add a [wireguard] section (seibo-gate init --wireguard ADDR:PORT writes one)".into())
    })?;
    if !crate::registry::ids::TerminalName::is_valid(name) {
        return Err(UsageError(format!(
            "terminal name {name:?}: use letters, digits, '.', '_' or '-' (it names the .conf file)"
        ))
        .into());
    }
    if registered_physician(cfg, physician).await?.is_none() {
        return Ok(ExitCode::FAILURE);
    }
    let r = admin_call(cfg, AdminRequest::TerminalList {}).await?;
    let terminals: Vec<Terminal> = r.reply()?;
    // Terminals' addresses, and every site gateway's of the network (issue 14).
    let used: HashSet<Ipv4Addr> = terminals
        .iter()
        .filter_map(|t| t.tunnel_ip)
        .chain(
            cfg.network
                .iter()
                .flat_map(|n| n.sites.iter())
                .filter_map(|s| s.wireguard.as_ref().map(|w| w.address)),
        )
        .collect();
    let ip = crate::ingress::wireguard::conf::free_address(wg.pool, wg.address, &used).ok_or_else(
        || {
            ConfigProblem(format!(
                "wireguard.pool {} has no free address left",
                wg.pool
            ))
        },
    )?;
    let req = Request {
        physician,
        name,
        out,
        days: cfg.ca.terminal_days,
        now: SystemClock.now(),
    };
    let issued = terminal_issue::wireguard(wg, &cfg.site.id, cfg.network.as_ref(), ip, &req)?;
    let Some(message) = register(cfg, issued.terminal.clone(), || issued.remove_files()).await?
    else {
        return Ok(ExitCode::FAILURE);
    };
    println!("{message}");
    println!("WireGuard configuration: {}", issued.conf_path.display());
    println!(
        "tunnel address: {ip}; the physician opens https://{}/",
        wg.address
    );
    for s in cfg.network.iter().flat_map(|n| n.sites.iter()) {
        if let (Some(w), true) = (&s.wireguard, s.id != cfg.site.id) {
            println!("  and https://{}/ for {} ({})", w.address, s.name, s.id);
        }
    }
    println!("public key: {}", issued.public_key);
    Ok(ExitCode::SUCCESS)
}

/// `terminal list [--json]`: a table, or one JSON array.
pub async fn list(c: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let r = admin_call(c, AdminRequest::TerminalList {}).await?;
    if !json && r.ok {
        print_terminals(r.reply()?);
        return Ok(ExitCode::SUCCESS);
    }
    Ok(report(r, json))
}

fn print_terminals(list: Vec<Terminal>) {
    for t in list {
        println!(
            "{:<20} {:<20} {} {}",
            t.name,
            t.physician,
            t.not_after_rfc3339(),
            if t.revoked { "revoked" } else { "active" }
        );
    }
}
