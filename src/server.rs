//! `seibo-gate serve`: opens the registries and the audit log, binds every listener, then
//! runs the accept loops, the admin socket, the metrics endpoint and the daily purge until a
//! shutdown signal; on shutdown, open connections finish their requests (bounded wait).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::admin::{self, Admin};
use crate::audit::{AuditError, AuditLog};
use crate::clock::SharedClock;
use crate::config::Config;
use crate::listener::MtlsListener;
use crate::metrics::Metrics;
use crate::pages;
use crate::service::Gate;
use crate::shutdown::{Shutdown, Trigger};
use crate::store::{Store, StoreError};
use crate::tls::{self, TlsError};

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
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
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
    Ok(())
}

/// Runs the gateway until `shutdown` fires. `on_ready` is called once every socket is bound.
pub async fn serve(
    cfg: Config,
    clock: SharedClock,
    trigger: &Trigger,
    on_ready: impl FnOnce(&Ready),
) -> Result<(), ServeError> {
    prepare_state_dir(&cfg.state_dir)?;
    let store = Store::open(&cfg.state_dir.join("registry"))?;
    let audit = AuditLog::open(&cfg.state_dir.join("audit"))?;
    let metrics = Metrics::new()?;

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
        bound.push((socket, l.clone(), TlsAcceptor::from(tls)));
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
        cfg.site.clone(),
        store.clone(),
        cfg.routes.clone(),
        &cfg.upstream,
        audit.clone(),
        metrics.clone(),
        clock.clone(),
    ));
    let admin = Arc::new(Admin {
        store: store.clone(),
        audit: audit.clone(),
        site: cfg.site.id.clone(),
        clock: clock.clone(),
        metrics: Some(metrics.clone()),
        origin: "admin-socket",
    });

    let ready = Ready {
        listeners: bound
            .iter()
            .filter_map(|(s, _, _)| s.local_addr().ok())
            .collect(),
        metrics: metrics_socket.as_ref().and_then(|s| s.local_addr().ok()),
    };

    let slots = Arc::new(Semaphore::new(cfg.limits.max_connections));
    let mut tasks = tokio::task::JoinSet::new();
    for (socket, config, acceptor) in bound {
        let l = MtlsListener {
            socket,
            config,
            acceptor,
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

    let mut shutdown = trigger.subscribe();
    shutdown.recv().await;
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
