//! What the `seibo-gate` subcommands do, behind the binary's argument parsing (`main.rs`):
//! each function takes the parsed arguments, talks to the running gateway over its admin
//! socket (or opens the registries itself when none runs), prints what the command prints and
//! gives its exit status. Errors are `anyhow` chains of typed errors; [`crate::ops::exit::code_for`]
//! maps them to the exit status.
//!
//! * [`physician`], [`terminal`], [`consent`]: the registries (art 3–9, 12.7);
//! * [`audit`]: `audit verify`, `audit head`, `audit query` (art 12.8); [`audit_network`]:
//!   `audit query --network`, every site of the network asked over the peer API;
//! * [`network`]: `network init`, `site add`, `init --join` (issue 14);
//! * [`check`]: the `check-config` command;
//! * here: loading the config, admin calls and their report, `init`, `serve`, `patient
//!   delete`, `purge`, `firewall`.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

use crate::admin::{self, Admin, AdminRequest, AdminResponse};
use crate::audit::AuditLog;
use crate::ops::clock::{SharedClock, SystemClock};
use crate::registry::store::Store;
use crate::site::config::{Config, ConfigError};
use crate::site::init::InitOptions;

pub mod audit;
pub mod audit_network;
pub mod check;
pub mod consent;
pub mod network;
pub mod physician;
pub mod registry;
pub mod staff;
pub mod terminal;

/// The config every command but `init` and `demo` reads when none is named.
pub const DEFAULT_CONFIG: &str = "/etc/seibo-gate/gate.toml";

/// A config that cannot be read, with how to point at the right one.
#[derive(Debug, thiserror::Error)]
#[error("{source}\n  {hint}")]
pub struct ConfigNotRead {
    #[source]
    source: ConfigError,
    hint: String,
}

/// Loads the site's config; one that cannot be read says how to name the right one.
pub fn load(path: &Path) -> anyhow::Result<Config> {
    Config::load(path).map_err(|e| match &e {
        ConfigError::Read { source, .. } => {
            let hint = if source.kind() == std::io::ErrorKind::PermissionDenied {
                "the config must be readable by whoever runs this: root for admin commands, the \
                 service's group for serve and check-config (chgrp seibo-gate FILE && chmod 0640 FILE)"
                    .to_string()
            } else {
                format!(
                    "which site? name its config with --config PATH or SEIBO_GATE_CONFIG=PATH \
                     (default {DEFAULT_CONFIG}); `seibo-gate init --dir DIR` creates a new site"
                )
            };
            anyhow::Error::new(ConfigNotRead { source: e, hint })
        }
        _ => e.into(),
    })
}

/// Prints an admin response; exit 1 when refused.
pub fn report(r: AdminResponse, json: bool) -> ExitCode {
    if json {
        println!("{}", serde_json::to_string(&r.data).unwrap_or_default());
    } else if r.ok {
        println!("{}", r.message);
    }
    if r.ok {
        ExitCode::SUCCESS
    } else {
        eprintln!("seibo-gate: {}", r.message);
        ExitCode::FAILURE
    }
}

/// Sends a request to the running gateway, or executes it directly when none runs.
pub async fn admin_call(cfg: &Config, req: AdminRequest) -> anyhow::Result<AdminResponse> {
    if let Some(r) = admin::call(&cfg.admin_socket, &req).await? {
        return Ok(r);
    }
    let store = Store::open_configured(cfg).await.with_context(|| {
        format!(
            "no gateway answers on {} and the store cannot be opened",
            cfg.admin_socket.display()
        )
    })?;
    store
        .ready(std::time::Duration::from_secs(10))
        .await
        .with_context(|| format!("no gateway answers on {}", cfg.admin_socket.display()))?;
    crate::ops::server::prepare_state_dir(&cfg.state_dir)?;
    let audit = AuditLog::open(&cfg.state_dir.join("audit"))?;
    let clock: SharedClock = Arc::new(SystemClock);
    let a = Admin {
        store: store.clone(),
        audit: audit.clone(),
        site: cfg.site.id.clone(),
        clock,
        metrics: None,
        origin: "cli",
        sessions: None,
        terminals_changed: None,
    };
    let r = a.execute(req).await;
    audit.close().await?;
    store.flush()?;
    Ok(r)
}

/// [`admin_call`], then [`report`] (no JSON).
pub async fn call_and_report(cfg: &Config, req: AdminRequest) -> anyhow::Result<ExitCode> {
    Ok(report(admin_call(cfg, req).await?, false))
}

/// `init`: a new site's files.
pub fn init(o: &InitOptions) -> anyhow::Result<ExitCode> {
    let p = crate::site::init::init(o)?;
    println!("site created: {}", p.display());
    println!("next: seibo-gate serve --config {}", p.display());
    Ok(ExitCode::SUCCESS)
}

/// `serve`: the gateway until SIGINT or SIGTERM; `test_clock` as `serve --test-clock`
/// ([`crate::ops::clock::serve_clock`]).
pub async fn serve(c: Config, test_clock: Option<&str>) -> anyhow::Result<ExitCode> {
    let clock = crate::ops::clock::serve_clock(test_clock, |k| std::env::var(k).ok())?;
    let (trigger, _) = crate::ops::shutdown::channel();
    let serve = crate::ops::server::run(c, clock, &trigger, |_| {});
    tokio::pin!(serve);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = &mut serve => r?,
        _ = tokio::signal::ctrl_c() => { trigger.fire(); serve.await? }
        _ = term.recv() => { trigger.fire(); serve.await? }
    }
    Ok(ExitCode::SUCCESS)
}

/// `firewall`: the nftables ruleset on standard output.
pub fn firewall(c: &Config) -> anyhow::Result<ExitCode> {
    print!("{}", crate::site::firewall::ruleset(c)?);
    Ok(ExitCode::SUCCESS)
}
