//! `check-config`: the config validates, and (unless `--no-files`) the service user can use
//! every file it names.

use std::path::Path;
use std::process::ExitCode;

use crate::ops::exit::{ConfigProblem, UsageError};
use crate::site::config::Config;
use crate::site::filecheck::{self, Principal, PrincipalError};

/// `check-config [--as USER] [--no-files]` of the config at `path`.
pub async fn run(path: &Path, as_user: Option<&str>, no_files: bool) -> anyhow::Result<ExitCode> {
    let c = super::load(path)?;
    if !no_files {
        check_files(&c, as_user)?;
        if let crate::site::config::RegistryBackend::Etcd(e) = &c.registry.backend {
            match crate::registry::backend::etcd::probe(e).await {
                Ok(rev) => println!(
                    "regional registry: reached {} (revision {rev})",
                    e.endpoints.join(", ")
                ),
                Err(err) => {
                    eprintln!(
                        "regional registry: cannot be reached at {}: {err}\n  (the gateway would start but refuse sign-ins and consent-gated requests with 503 until it is)",
                        e.endpoints.join(", ")
                    );
                    return Ok(ExitCode::from(crate::ops::exit::UNAVAILABLE));
                }
            }
        }
    }
    println!(
        "{}: ok (site {}, {} listener(s), {} route(s), upstream {})",
        path.display(),
        c.site.id,
        c.listeners.len(),
        c.routes.len(),
        c.upstream.authority
    );
    Ok(ExitCode::SUCCESS)
}

/// What `serve` checks before it starts, done by `check-config` (which the unit runs first):
/// the user the service runs as (`as_user`, else the caller) can read every file the config
/// names and owns the state, private keys are not open to others, and every certificate and
/// key loads.
pub fn check_files(c: &Config, as_user: Option<&str>) -> anyhow::Result<()> {
    let who = match as_user {
        Some(u) => Principal::named(u).map_err(|e| match e {
            PrincipalError::UnknownUser(_) => anyhow::Error::new(UsageError(e.to_string())),
            e => e.into(),
        })?,
        None => Principal::current()?,
    };
    filecheck::check(c, &who)?;
    crate::ops::server::check_key_modes_for(c, Some(&who))?;
    for l in &c.listeners {
        crate::ingress::tls::server_config(&l.cert, &l.key, &c.ca.cert)
            .map_err(|e| ConfigProblem(format!("listener {}: {e}", l.name)))?;
    }
    if let Some(wg) = &c.wireguard {
        crate::ingress::tls::server_config(&wg.cert, &wg.key, &c.ca.cert)
            .map_err(|e| ConfigProblem(format!("wireguard (in-tunnel TLS): {e}")))?;
        let key_problem = |e: &dyn std::fmt::Display| {
            ConfigProblem(format!(
                "wireguard.private_key {}: {e}",
                wg.private_key.display()
            ))
        };
        let key = std::fs::read_to_string(&wg.private_key).map_err(|e| key_problem(&e))?;
        crate::ingress::wireguard::key_from_base64(key.trim()).map_err(|e| key_problem(&e))?;
    }
    Ok(())
}
