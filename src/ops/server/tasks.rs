//! The gateway's background tasks beside the accept loops: the metrics endpoint, the daily
//! purge, systemd's watchdog, the refusal summaries, the session sweep and the periodic audit
//! verification. Each runs until shutdown.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::admin::{self, Admin};
use crate::gate::Gate;
use crate::ingress::backoff::{accept_backoff, AcceptBackoff};
use crate::ops::metrics::Metrics;
use crate::ops::shutdown::Shutdown;
use crate::pages;

/// The Prometheus scrape endpoint (plain HTTP; bind it to loopback or a scrape network).
pub(super) async fn serve_metrics(socket: TcpListener, metrics: Metrics, mut shutdown: Shutdown) {
    let mut backoff = AcceptBackoff::new();
    loop {
        let accepted = tokio::select! {
            a = socket.accept() => a,
            _ = shutdown.recv() => return,
        };
        let Some((stream, _)) = accept_backoff(&mut backoff, accepted).await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move {
                    let resp = match req.uri().path() {
                        "/metrics" => pages::plain(
                            http::StatusCode::OK,
                            "text/plain; version=0.0.4; charset=utf-8",
                            metrics.render(),
                        ),
                        "/healthz" => pages::plain(http::StatusCode::OK, "text/plain", "ok\n"),
                        _ => pages::plain(http::StatusCode::NOT_FOUND, "text/plain", "not found\n"),
                    };
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Art 11: the purge runs once per Japan calendar day (checked every `interval`).
pub(super) async fn purge_daily(admin: Arc<Admin>, interval: Duration, mut shutdown: Shutdown) {
    let mut last_day = None;
    loop {
        let today = admin.clock.today();
        // The regional registry's copy loads in the background at start: a purge over a copy
        // not yet loaded (or stale) would find nothing due and count the day as done.
        if last_day != Some(today) && !admin.store.health().usable() {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                _ = shutdown.recv() => return,
            }
        }
        if last_day != Some(today) {
            let r = admin.execute(admin::AdminRequest::Purge {}).await;
            if r.ok {
                tracing::info!(result = %r.message, "daily purge (art 11)");
                last_day = Some(today);
            } else {
                tracing::error!(error = %r.message, "daily purge failed");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.recv() => return,
        }
    }
}

/// Tells systemd (Type=notify) about the service state; a no-op outside systemd.
pub(super) fn notify_systemd(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Pets systemd's watchdog at half its interval while the runtime is responsive.
pub(super) async fn watchdog(mut shutdown: Shutdown) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let mut tick = tokio::time::interval(period / 2);
    loop {
        tokio::select! {
            _ = tick.tick() => notify_systemd(&[sd_notify::NotifyState::Watchdog]),
            _ = shutdown.recv() => return,
        }
    }
}

/// Writes the suppression summaries every `interval` (issue 11 items 8, 11).
pub(super) async fn summarise_refusals(
    gate: Arc<Gate>,
    interval: Duration,
    mut shutdown: Shutdown,
) {
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = tick.tick() => write_refusal_summaries(&gate),
            _ = shutdown.recv() => return,
        }
    }
}

/// One `suppressed` audit record for each (kind, ingress, source, terminal, reason) whose
/// refusals were counted instead of written since the last call; each is logged at INFO.
pub(super) fn write_refusal_summaries(gate: &Gate) {
    let site = gate.live().site.id.clone();
    for s in gate.refusals.drain(&site, gate.clock.now()) {
        tracing::info!(
            of = %s.of,
            ingress = %s.ingress,
            source = %s.source,
            terminal = s.terminal.as_deref().unwrap_or("-"),
            reason = %s.reason,
            count = s.count,
            "refusals beyond the audit rate, summarised"
        );
        gate.audit.suppressed(&s);
        gate.metrics.flood.suppression_summaries.inc();
    }
}

/// Exports the registry's staleness and watch restarts every second (etcd; constant for
/// sled), and logs each change between usable and stale.
pub(super) async fn registry_health(gate: Arc<Gate>, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut restarts_seen = 0u64;
    let mut was_usable = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let h = gate.store.health();
                let m = &gate.metrics.flood;
                m.registry_stale_seconds.set(h.stale_seconds());
                if let crate::registry::RegistryHealth::Regional { max_stale, watch_restarts, .. } = h {
                    m.registry_max_stale_seconds.set(i64::try_from(max_stale.as_secs()).unwrap_or(i64::MAX));
                    m.registry_watch_restarts.inc_by(watch_restarts.saturating_sub(restarts_seen));
                    restarts_seen = restarts_seen.max(watch_restarts);
                }
                let usable = h.usable();
                if was_usable != Some(usable) {
                    if usable {
                        tracing::info!(stale_seconds = h.stale_seconds(), "registry current: serving");
                    } else {
                        tracing::warn!(stale_seconds = h.stale_seconds(), "regional registry not confirmed within max_stale_secs: refusing sign-ins and consent-gated requests (503)");
                    }
                    was_usable = Some(usable);
                }
            }
            _ = shutdown.recv() => return,
        }
    }
}

/// Drops ended sessions and reports how many are open.
pub(super) async fn sweep_sessions(gate: Arc<Gate>, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(Duration::from_secs(15));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let open = gate.sessions.sweep();
                gate.metrics.sessions.set(i64::try_from(open).unwrap_or(i64::MAX));
            }
            _ = shutdown.recv() => return,
        }
    }
}

/// Verifies the audit log's hash chain at start and then periodically (art 12.8), off the
/// runtime, and exports the result so that an alert fires on tampering.
pub(super) async fn verify_audit(
    dir: std::path::PathBuf,
    metrics: Metrics,
    interval: Duration,
    mut shutdown: Shutdown,
) {
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.recv() => return,
        }
        let d = dir.clone();
        match tokio::task::spawn_blocking(move || crate::audit::verify(&d)).await {
            Ok(Ok(report)) => {
                metrics.audit_chain_intact.set(1);
                metrics.audit_index_intact.set(1);
                metrics
                    .audit_chain_records
                    .set(i64::try_from(report.records).unwrap_or(i64::MAX));
                metrics
                    .audit_verifications
                    .with_label_values(&["intact"])
                    .inc();
            }
            // The chain verified; only the derived index disagrees with it (altered, or a lying
            // disk): queries fall back to scanning the log, and the next start rebuilds it.
            Ok(Err(e @ crate::audit::VerifyError::Index(_))) => {
                tracing::error!(error = %e, "audit index disagrees with the log");
                metrics.audit_chain_intact.set(1);
                metrics.audit_index_intact.set(0);
                metrics
                    .audit_verifications
                    .with_label_values(&["index-wrong"])
                    .inc();
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "audit chain verification FAILED");
                metrics.audit_chain_intact.set(0);
                metrics
                    .audit_verifications
                    .with_label_values(&["broken"])
                    .inc();
            }
            Err(e) => tracing::error!(error = %e, "audit verification task failed"),
        }
    }
}

/// How often a gateway publishes its audit chain head to the regional registry (issue 14).
pub(super) const AUDIT_HEAD_PUBLISH_INTERVAL: Duration = Duration::from_secs(2);

/// Issue 14: publishes this gateway's audit chain head (from the anchor file) to the regional
/// registry, key = the site id, whenever it moved, checked every `interval`. Before the first
/// publication the log must still contain the head the network already holds: a log
/// rewritten while the gateway was stopped is never vouched for (the old head stays, and
/// `audit verify` names the mismatch).
pub(super) async fn publish_audit_head(
    gate: Arc<Gate>,
    dir: std::path::PathBuf,
    interval: Duration,
    mut shutdown: Shutdown,
) {
    let store = gate.store.clone();
    if !store.witnesses_audit() {
        return;
    }
    let Some(site) = store.site().map(str::to_string) else {
        return;
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut checked = false;
    let mut last: Option<(u64, String)> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.recv() => return,
        }
        if !store.health().usable() {
            continue;
        }
        if !checked {
            let held = match store.audit_head(&site) {
                Ok(h) => h,
                Err(e) => {
                    tracing::error!(error = %e, "the audit head the network holds is unreadable");
                    continue;
                }
            };
            if let Some(h) = held {
                let want = match format!("{}:{}", h.seq, h.hash).parse() {
                    Ok(w) => w,
                    Err(e) => {
                        tracing::error!(error = %e, "the audit head the network holds is malformed");
                        return;
                    }
                };
                let d = dir.clone();
                let opts = crate::audit::VerifyOptions {
                    index_optional: true,
                    head: Some(want),
                };
                match tokio::task::spawn_blocking(move || crate::audit::verify_with(&d, &opts))
                    .await
                {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, site = %site, "audit log does not contain the head the network holds: not publishing (audit verify names the mismatch)");
                        gate.metrics.audit_chain_intact.set(0);
                        return;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "audit head check failed");
                        continue;
                    }
                }
            }
            checked = true;
        }
        let d = dir.clone();
        let head = match tokio::task::spawn_blocking(move || crate::audit::anchored_head(&d)).await
        {
            Ok(Ok(Some(h))) => h,
            Ok(Ok(None)) => continue,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "audit head unreadable: not published");
                continue;
            }
            Err(_) => continue,
        };
        if last.as_ref() == Some(&head) {
            continue;
        }
        let published = crate::registry::store::PublishedHead {
            seq: head.0,
            hash: head.1.clone(),
            at: crate::ops::clock::rfc3339(time::OffsetDateTime::now_utc()),
        };
        match store.publish_audit_head(&site, &published).await {
            Ok(_) => last = Some(head),
            Err(e) => tracing::warn!(error = %e, "audit head not published (retried)"),
        }
    }
}
