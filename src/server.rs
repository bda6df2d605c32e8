//! `seibo-gate serve`: opens the registries and the audit log, binds every listener, then
//! runs the accept loops, the admin socket, the metrics endpoint and the daily purge until a
//! shutdown signal; on shutdown, open connections finish their requests (bounded wait).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Semaphore;

use crate::admin::{self, Admin};
use crate::audit::{AuditError, AuditLog};
use crate::clock::SharedClock;
use crate::config::Config;
use crate::gate::Gate;
use crate::listener::MtlsListener;
use crate::metrics::Metrics;
use crate::pages;
use crate::shutdown::{Shutdown, Trigger};
use crate::store::{Store, StoreError};
use crate::tls::{self, TlsError};
use crate::tunnel;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("audit log: {0}")]
    Audit(#[from] AuditError),
    #[error("listener {name}: {source}")]
    Tls { name: String, source: TlsError },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Admin(#[from] admin::AdminSocketError),
    #[error("{0}")]
    Tunnel(#[from] crate::tunnel::TunnelError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// A private key file others may read: `serve` refuses to start.
    #[error("{0}")]
    KeyMode(String),
    #[error("state directory {path}: {source}")]
    StateDir {
        path: String,
        source: std::io::Error,
    },
}

/// What `serve` bound, reported once it is ready (tests and the demo read the addresses).
#[derive(Debug, Clone)]
pub struct Ready {
    pub listeners: Vec<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    /// The WireGuard UDP socket, when enabled.
    pub wireguard: Option<SocketAddr>,
}

/// Creates the state directory with mode 0700 (and tightens an existing one).
pub fn prepare_state_dir(dir: &std::path::Path) -> Result<(), ServeError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let err = |source| ServeError::StateDir {
        path: dir.display().to_string(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    // Issue 11 item 17: what an older version left open to group or others is closed too.
    let t = crate::fsmode::tighten_tree(dir);
    if t.changed > 0 {
        tracing::warn!(dir = %dir.display(), entries = t.changed, "state files were open to group or others: closed (0600/0700)");
    }
    for (path, e) in &t.failed {
        tracing::warn!(path = %path.display(), error = %e, "could not close a state file to group and others");
    }
    Ok(())
}

/// Private key files must not be open to others. A listener key may be group-readable (the
/// README's `chgrp seibo-gate` + `chmod 0640`, for a root-owned key the service reads through
/// its group): that is logged as a warning unless the group is one of the service's own (the
/// process's group or a supplementary group). World bits, or group write, refuse the start. The
/// terminal CA key is `terminal add`'s alone (root): any group or world bit refuses the start;
/// a CA key kept offline (absent) or unreadable to this user is fine.
pub fn check_key_modes(cfg: &Config) -> Result<(), ServeError> {
    check_key_modes_for(cfg, crate::filecheck::Principal::current().ok().as_ref())
}

/// [`check_key_modes`] for the service user `me` (`check-config --as USER`): a key readable
/// through one of `me`'s groups is as intended.
pub fn check_key_modes_for(
    cfg: &Config,
    me: Option<&crate::filecheck::Principal>,
) -> Result<(), ServeError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut problems = Vec::new();
    let mut keys: Vec<(String, &std::path::Path)> = cfg
        .listeners
        .iter()
        .map(|l| (format!("listener {}", l.name), l.key.as_path()))
        .collect();
    if let Some(wg) = &cfg.wireguard {
        keys.push(("wireguard".into(), wg.private_key.as_path()));
        keys.push(("wireguard (in-tunnel TLS)".into(), wg.key.as_path()));
    }
    for (name, key) in keys {
        // A missing key is reported by the TLS setup with its own message.
        let Ok(m) = std::fs::metadata(key) else {
            continue;
        };
        let mode = m.permissions().mode() & 0o777;
        if mode & 0o027 != 0 {
            problems.push(format!(
                "{name}: private key {} has mode {mode:04o}: others may read or change it; chmod 0600 (or 0640 with group seibo-gate)",
                key.display()
            ));
        } else if mode & 0o040 != 0 && !me.is_some_and(|p| p.in_group(m.gid())) {
            tracing::warn!(owner = %name, key = %key.display(), mode = format!("{mode:04o}"), "private key is group-readable: make sure the group is the service's own");
        }
    }
    if let Ok(m) = std::fs::metadata(&cfg.ca.key) {
        let mode = m.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            problems.push(format!(
                "terminal CA private key {} has mode {mode:04o}: it must be readable by root alone; chmod 0600",
                cfg.ca.key.display()
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ServeError::KeyMode(format!(
            "refusing to start: {}",
            problems.join("; ")
        )))
    }
}

/// Runs the gateway until `shutdown` fires. `on_ready` is called once every socket is bound.
pub async fn serve(
    cfg: Config,
    clock: SharedClock,
    trigger: &Trigger,
    on_ready: impl FnOnce(&Ready),
) -> Result<(), ServeError> {
    crate::fsmode::restrict_umask();
    check_key_modes(&cfg)?;
    prepare_state_dir(&cfg.state_dir)?;
    let store = Store::open(&cfg.state_dir.join("registry"))?;
    let audit = AuditLog::open(&cfg.state_dir.join("audit"))?;
    let metrics = Metrics::new()?;
    // `AuditLog::open` has just checked the whole chain and its anchor and brought the index in
    // line with the log (it refuses to open otherwise): both start as verified, instead of
    // reading 0, which fires the alerts, until the first periodic check completes.
    metrics.audit_chain_intact.set(1);
    metrics.audit_index_intact.set(1);

    // Bind everything before serving anything, so a bad address fails the start.
    let mut bound = Vec::new();
    for l in &cfg.listeners {
        let tls = tls::server_config(&l.cert, &l.key, &cfg.ca.cert).map_err(|source| {
            ServeError::Tls {
                name: l.name.clone(),
                source,
            }
        })?;
        let socket = TcpListener::bind(l.listen)
            .await
            .map_err(|source| ServeError::Bind {
                addr: l.listen,
                source,
            })?;
        if let Err(e) = metrics.set_cert_expiry(&l.name, &l.cert) {
            tracing::warn!(listener = %l.name, error = %e, "certificate expiry unknown");
        }
        metrics.init_listener(&l.name);
        bound.push((socket, l.clone(), Arc::new(ArcSwap::new(tls))));
    }
    let metrics_socket = match cfg.metrics {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind { addr, source })?,
        ),
        None => None,
    };
    let admin_socket = admin::bind(&cfg.admin_socket)?;

    let gate = Arc::new(Gate::new(
        &cfg,
        store.clone(),
        audit.clone(),
        metrics.clone(),
        clock.clone(),
    ));
    let terminals_changed = Arc::new(tokio::sync::Notify::new());

    // The WireGuard ingress (art 12.2): bound before ready, like every other socket.
    let tunnel = match &cfg.wireguard {
        Some(wg) => {
            let tls =
                tls::tunnel_server_config(&wg.cert, &wg.key).map_err(|source| ServeError::Tls {
                    name: "wireguard".into(),
                    source,
                })?;
            let (handle, streams) = tunnel::start(wg, &store).await?;
            metrics.init_wireguard();
            Some((handle, streams, Arc::new(ArcSwap::new(tls)), wg.https_port))
        }
        None => None,
    };
    let admin = Arc::new(Admin {
        store: store.clone(),
        audit: audit.clone(),
        site: cfg.site.id.clone(),
        clock: clock.clone(),
        metrics: Some(metrics.clone()),
        origin: "admin-socket",
        sessions: Some(gate.sessions.clone()),
        terminals_changed: Some(terminals_changed.clone()),
    });

    let ready = Ready {
        listeners: bound
            .iter()
            .filter_map(|(s, _, _)| s.local_addr().ok())
            .collect(),
        metrics: metrics_socket.as_ref().and_then(|s| s.local_addr().ok()),
        wireguard: tunnel.as_ref().map(|(h, _, _, _)| h.local_addr()),
    };

    let slots = Arc::new(Semaphore::new(cfg.limits.max_connections));
    let mut tasks = tokio::task::JoinSet::new();
    let tls_configs: Vec<(crate::config::Listener, Arc<ArcSwap<rustls::ServerConfig>>)> = bound
        .iter()
        .map(|(_, l, t)| (l.clone(), t.clone()))
        .collect();
    for (socket, config, tls) in bound {
        let l = MtlsListener {
            socket,
            config,
            tls,
            limits: cfg.limits.clone(),
            slots: slots.clone(),
        };
        tasks.spawn(l.run(gate.clone(), trigger.subscribe()));
    }
    if let Some(socket) = metrics_socket {
        tasks.spawn(serve_metrics(socket, metrics.clone(), trigger.subscribe()));
    }
    tasks.spawn(admin::serve(
        admin_socket,
        admin.clone(),
        trigger.subscribe(),
    ));
    if let Some((handle, streams, tls, https_port)) = tunnel {
        tasks.spawn(tunnel::serve(
            streams,
            tls,
            https_port,
            gate.clone(),
            cfg.limits.clone(),
            slots.clone(),
            trigger.subscribe(),
        ));
        tasks.spawn(tunnel::maintain(
            handle,
            store.clone(),
            terminals_changed.clone(),
            metrics.clone(),
            trigger.subscribe(),
        ));
    }
    tasks.spawn(sweep_sessions(gate.clone(), trigger.subscribe()));
    tasks.spawn(summarise_refusals(
        gate.clone(),
        cfg.limits.flood.refusal_summary_interval,
        trigger.subscribe(),
    ));
    tasks.spawn(verify_audit(
        cfg.state_dir.join("audit"),
        metrics.clone(),
        cfg.audit_verify_interval,
        trigger.subscribe(),
    ));
    tasks.spawn(purge_daily(
        admin.clone(),
        cfg.purge_interval,
        trigger.subscribe(),
    ));

    metrics.up.set(1);
    tracing::info!(
        site = %cfg.site.id,
        listeners = ?ready.listeners,
        metrics = ?ready.metrics,
        upstream = %cfg.upstream.authority,
        routes = cfg.routes.len(),
        "seibo-gate ready"
    );
    on_ready(&ready);
    notify_systemd(&[sd_notify::NotifyState::Ready]);
    tasks.spawn(watchdog(trigger.subscribe()));

    let mut shutdown = trigger.subscribe();
    let mut hup = signal(SignalKind::hangup()).map_err(|source| ServeError::StateDir {
        path: "SIGHUP handler".into(),
        source,
    })?;
    loop {
        tokio::select! {
            _ = shutdown.recv() => break,
            _ = hup.recv() => {
                notify_systemd(&[sd_notify::NotifyState::Reloading]);
                reload(&cfg, &gate, &tls_configs);
                notify_systemd(&[sd_notify::NotifyState::Ready]);
            }
        }
    }
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    tracing::info!("shutting down: finishing open requests");
    metrics.up.set(0);
    while tasks.join_next().await.is_some() {}
    // Every open connection holds a slot; all slots back means all connections are done.
    let all = u32::try_from(cfg.limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(Duration::from_secs(10), slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("some connections did not finish within 10 s");
    }
    let _ = std::fs::remove_file(&cfg.admin_socket);
    // Refusals counted since the last summary are not lost at shutdown.
    write_refusal_summaries(&gate);
    audit.close().await?;
    store.flush()?;
    tracing::info!("stopped");
    Ok(())
}

/// The Prometheus scrape endpoint (plain HTTP; bind it to loopback or a scrape network).
async fn serve_metrics(socket: TcpListener, metrics: Metrics, mut shutdown: Shutdown) {
    loop {
        let accepted = tokio::select! {
            a = socket.accept() => a,
            _ = shutdown.recv() => return,
        };
        let Ok((stream, _)) = accepted else { continue };
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
async fn purge_daily(admin: Arc<Admin>, interval: Duration, mut shutdown: Shutdown) {
    let mut last_day = None;
    loop {
        let today = admin.clock.today();
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

/// `SIGHUP`: re-reads the config file; routes, upstream, site texts and every listener's
/// certificate are swapped for new connections and requests, open connections continue.
/// A config that does not validate is refused and the running one kept. Listener addresses
/// and the state directory need a restart.
fn reload(
    cfg: &Config,
    gate: &Gate,
    tls_configs: &[(crate::config::Listener, Arc<ArcSwap<rustls::ServerConfig>>)],
) {
    let new = match Config::load(&cfg.path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "reload refused: the running configuration stays");
            gate.metrics.reloads.with_label_values(&["failed"]).inc();
            return;
        }
    };
    // Build every certificate first, so that a reload is all or nothing.
    let mut swaps = Vec::new();
    for (old, slot) in tls_configs {
        let Some(l) = new.listeners.iter().find(|l| l.listen == old.listen) else {
            tracing::warn!(listen = %old.listen, "listener removed from the config: it keeps running until restart");
            continue;
        };
        if l.allow != old.allow {
            tracing::warn!(listen = %old.listen, "allow-list changes need a restart");
        }
        match tls::server_config(&l.cert, &l.key, &new.ca.cert) {
            Ok(t) => swaps.push((slot.clone(), t, l)),
            Err(e) => {
                tracing::error!(listener = %l.name, error = %e, "reload refused: certificate unusable");
                gate.metrics.reloads.with_label_values(&["failed"]).inc();
                return;
            }
        }
    }
    for l in &new.listeners {
        if !tls_configs.iter().any(|(o, _)| o.listen == l.listen) {
            tracing::warn!(listen = %l.listen, "new listener needs a restart");
        }
    }
    for (slot, t, l) in swaps {
        slot.store(t);
        if let Err(e) = gate.metrics.set_cert_expiry(&l.name, &l.cert) {
            tracing::warn!(listener = %l.name, error = %e, "certificate expiry unknown");
        }
    }
    gate.reload(&new);
    gate.metrics.reloads.with_label_values(&["ok"]).inc();
    tracing::info!(routes = new.routes.len(), upstream = %new.upstream.authority, "configuration reloaded");
}

/// Tells systemd (Type=notify) about the service state; a no-op outside systemd.
fn notify_systemd(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Pets systemd's watchdog at half its interval while the runtime is responsive.
async fn watchdog(mut shutdown: Shutdown) {
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
async fn summarise_refusals(gate: Arc<Gate>, interval: Duration, mut shutdown: Shutdown) {
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
fn write_refusal_summaries(gate: &Gate) {
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

/// Drops ended sessions and reports how many are open.
async fn sweep_sessions(gate: Arc<Gate>, mut shutdown: Shutdown) {
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
async fn verify_audit(
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
