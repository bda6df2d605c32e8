//! `seibo-gate serve`, in two steps (as mini-redis's `run(listener, shutdown)`):
//!
//! * [`bind`]: what the binary does from the config: checks the key modes and the state
//!   directory, opens the registries and the audit log, binds every listener, the metrics
//!   endpoint, the admin socket and the WireGuard socket: a [`Bound`] gateway;
//! * [`serve`]: runs a [`Bound`] gateway on a [`SharedClock`] until a [`Shutdown`] signal:
//!   the accept loops, the admin socket, the metrics endpoint and the background tasks; on
//!   shutdown, open connections finish their requests (bounded wait).
//!
//! A test binds listeners on port 0 (`listen = "127.0.0.1:0"` in the config), reads the
//! addresses from [`Bound::ready`] and serves on a fixed clock in-process (`tests/inprocess.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, Notify, Semaphore};

use crate::admin::{self, Admin};
use crate::audit::{AuditError, AuditLog};
use crate::gate::Gate;
use crate::ingress::listener::MtlsListener;
use crate::ingress::peer_api::{self, BoundPeerApi};
use crate::ingress::tls::{self, TlsError};
use crate::ingress::tunnel;
use crate::ingress::wireguard::{WgHandle, WgStream};
use crate::ops::clock::SharedClock;
use crate::ops::metrics::Metrics;
use crate::ops::shutdown::{Shutdown, Trigger};
use crate::registry::store::{Store, StoreError};
use crate::site::config::{self, Config};

mod reload;
mod state;
mod tasks;

pub use state::{check_key_modes, check_key_modes_for, prepare_state_dir};

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
    Tunnel(#[from] crate::ingress::tunnel::TunnelError),
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
    /// The liaison office's console (`[office]`), when enabled.
    pub office: Option<SocketAddr>,
    /// The read-only peer API (`[peer]`), when configured.
    pub peer: Option<SocketAddr>,
}

/// A listener's TLS configuration, swapped by `SIGHUP` for new connections.
type SharedTls = Arc<ArcSwap<rustls::ServerConfig>>;

/// One bound mutual-TLS listener.
struct BoundListener {
    socket: TcpListener,
    config: config::Listener,
    tls: SharedTls,
}

/// The bound WireGuard ingress.
struct BoundTunnel {
    handle: WgHandle,
    streams: mpsc::Receiver<WgStream>,
    tls: SharedTls,
    https_port: u16,
}

/// A gateway with everything opened and bound, not serving yet: made by [`bind`] from the
/// config, run by [`serve`].
pub struct Bound {
    cfg: Config,
    store: Store,
    audit: AuditLog,
    metrics: Metrics,
    listeners: Vec<BoundListener>,
    metrics_socket: Option<TcpListener>,
    admin_socket: UnixListener,
    tunnel: Option<BoundTunnel>,
    office: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
    peer_api: Option<BoundPeerApi>,
}

impl Bound {
    /// The addresses bound (a port 0 in the config is the port the kernel gave).
    pub fn ready(&self) -> Ready {
        Ready {
            listeners: self
                .listeners
                .iter()
                .filter_map(|l| l.socket.local_addr().ok())
                .collect(),
            metrics: self
                .metrics_socket
                .as_ref()
                .and_then(|s| s.local_addr().ok()),
            wireguard: self.tunnel.as_ref().map(|t| t.handle.local_addr()),
            office: self.office.as_ref().and_then(|(s, _)| s.local_addr().ok()),
            peer: self
                .peer_api
                .as_ref()
                .and_then(|p| p.socket.local_addr().ok()),
        }
    }

    /// The configuration the gateway was bound from.
    pub fn config(&self) -> &Config {
        &self.cfg
    }
}

/// How long `bind` waits for the regional registry's copy before opening the ports anyway.
const REGISTRY_START_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens the registries and the audit log and binds every socket the config names: a bad
/// address, key or certificate fails here, before anything is served.
pub async fn bind(cfg: Config) -> Result<Bound, ServeError> {
    crate::site::fsmode::restrict_umask();
    check_key_modes(&cfg)?;
    prepare_state_dir(&cfg.state_dir)?;
    let store = Store::open_configured(&cfg).await?;
    // The regional registry: give the copy a moment to load and be confirmed before the
    // ports open, so a gateway that just started does not answer its first requests with the
    // fail-closed 503 it would send while etcd is unreachable. Bounded: with etcd down (or a
    // registry too large to load in that time) the gateway starts anyway and refuses (503)
    // until the copy is current.
    if let Err(e) = store.ready(REGISTRY_START_WAIT).await {
        tracing::warn!(error = %e, "starting before the regional registry is current: requests get 503 until it is");
    }
    let audit = AuditLog::open(&cfg.state_dir.join("audit"))?;
    let metrics = Metrics::new()?;
    // `AuditLog::open` has just checked the whole chain and its anchor and brought the index in
    // line with the log (it refuses to open otherwise): both start as verified, instead of
    // reading 0, which fires the alerts, until the first periodic check completes.
    metrics.audit_chain_intact.set(1);
    metrics.audit_index_intact.set(1);

    let mut listeners = Vec::new();
    for l in &cfg.listeners {
        listeners.push(bind_listener(l, &cfg, &metrics).await?);
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
            Some(BoundTunnel {
                handle,
                streams,
                tls: Arc::new(ArcSwap::new(tls)),
                https_port: wg.https_port,
            })
        }
        None => None,
    };
    // The liaison office's console (issue 15): its own listener, never a physician's.
    let office = match &cfg.office {
        Some(o) => {
            let tls = crate::office::listener::server_config(&o.cert, &o.key, &cfg.ca.cert)
                .map_err(|source| ServeError::Tls {
                    name: "office".into(),
                    source,
                })?;
            let socket = TcpListener::bind(o.listen)
                .await
                .map_err(|source| ServeError::Bind {
                    addr: o.listen,
                    source,
                })?;
            Some((socket, tls))
        }
        None => None,
    };
    let peer_api = match &cfg.peer {
        Some(p) => Some(bind_peer_api(p, &cfg).await?),
        None => None,
    };
    Ok(Bound {
        cfg,
        store,
        audit,
        metrics,
        listeners,
        metrics_socket,
        admin_socket,
        tunnel,
        office,
        peer_api,
    })
}

/// Binds the read-only peer API (`[peer]`): its site-gateway certificate, clients only site
/// gateways of the regional CA (`[ca] cert`).
async fn bind_peer_api(p: &config::PeerApi, cfg: &Config) -> Result<BoundPeerApi, ServeError> {
    let tls = peer_api::verify::server_config(&p.cert, &p.key, &cfg.ca.cert).map_err(|source| {
        ServeError::Tls {
            name: "peer".into(),
            source,
        }
    })?;
    let socket = TcpListener::bind(p.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: p.listen,
            source,
        })?;
    Ok(BoundPeerApi {
        socket,
        tls: Arc::new(ArcSwap::new(tls)),
        allow: p.allow.clone(),
    })
}

/// Binds one mutual-TLS listener with its certificate.
async fn bind_listener(
    l: &config::Listener,
    cfg: &Config,
    metrics: &Metrics,
) -> Result<BoundListener, ServeError> {
    let tls =
        tls::server_config(&l.cert, &l.key, &cfg.ca.cert).map_err(|source| ServeError::Tls {
            name: l.name.clone(),
            source,
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
    Ok(BoundListener {
        socket,
        config: l.clone(),
        tls: Arc::new(ArcSwap::new(tls)),
    })
}

/// The binary's `serve`: [`bind`] from the config, `on_ready` with the bound addresses, then
/// [`serve`] until `trigger` fires.
pub async fn run(
    cfg: Config,
    clock: SharedClock,
    trigger: &Trigger,
    on_ready: impl FnOnce(&Ready),
) -> Result<(), ServeError> {
    let bound = bind(cfg).await?;
    let ready = bound.ready();
    serve_with(bound, clock, trigger.subscribe(), |_| on_ready(&ready)).await
}

/// Runs a bound gateway on `clock` until `shutdown` fires; then open connections finish their
/// requests (10 s at most), the audit log is closed and the registries flushed.
pub async fn serve(bound: Bound, clock: SharedClock, shutdown: Shutdown) -> Result<(), ServeError> {
    serve_with(bound, clock, shutdown, |_| {}).await
}

/// [`serve`], calling `on_ready` once every task runs (before systemd is told).
async fn serve_with(
    bound: Bound,
    clock: SharedClock,
    shutdown: Shutdown,
    on_ready: impl FnOnce(&Ready),
) -> Result<(), ServeError> {
    let ready = bound.ready();
    let Bound {
        cfg,
        store,
        audit,
        metrics,
        listeners,
        metrics_socket,
        admin_socket,
        tunnel,
        office,
        peer_api,
    } = bound;
    let gate = Arc::new(Gate::new(
        &cfg,
        store.clone(),
        audit.clone(),
        metrics.clone(),
        clock.clone(),
    ));
    let terminals_changed = Arc::new(Notify::new());
    let admin = Arc::new(Admin {
        store: store.clone(),
        audit: audit.clone(),
        site: cfg.site.id.clone(),
        clock,
        metrics: Some(metrics.clone()),
        origin: "admin-socket",
        sessions: Some(gate.sessions.clone()),
        terminals_changed: Some(terminals_changed.clone()),
    });
    let tls_configs: Vec<(config::Listener, SharedTls)> = listeners
        .iter()
        .map(|l| (l.config.clone(), l.tls.clone()))
        .collect();
    let slots = Arc::new(Semaphore::new(cfg.limits.max_connections));
    let running = Running {
        cfg: &cfg,
        gate: &gate,
        admin: &admin,
        slots: &slots,
        terminals_changed: &terminals_changed,
        shutdown: &shutdown,
    };
    let mut tasks = running.spawn_ingress(listeners, tunnel, metrics_socket, admin_socket);
    if let (Some((socket, tls)), Some(o)) = (office, &cfg.office) {
        let console = Arc::new(crate::office::Console::new(
            &cfg,
            o,
            admin.clone(),
            gate.clone(),
        ));
        tasks.spawn(crate::office::listener::run(
            socket,
            tls,
            console,
            shutdown.clone(),
        ));
    }
    let peer_tls = peer_api.as_ref().map(|p| p.tls.clone());
    if let Some(p) = peer_api {
        let svc = Arc::new(peer_api::PeerService {
            site: cfg.site.id.clone(),
            audit_dir: cfg.state_dir.join("audit"),
            audit: audit.clone(),
            clock: admin.clock.clone(),
        });
        tasks.spawn(peer_api::serve(
            p,
            svc,
            cfg.limits.handshake_timeout,
            shutdown.clone(),
        ));
    }
    running.spawn_background(&mut tasks);

    metrics.up.set(1);
    tracing::info!(
        site = %cfg.site.id,
        listeners = ?ready.listeners,
        office = ?ready.office,
        metrics = ?ready.metrics,
        peer = ?ready.peer,
        upstream = %cfg.upstream.authority,
        routes = cfg.routes.len(),
        "seibo-gate ready"
    );
    on_ready(&ready);
    tasks::notify_systemd(&[sd_notify::NotifyState::Ready]);
    tasks.spawn(tasks::watchdog(shutdown.clone()));

    wait_for_shutdown(&cfg, &gate, &tls_configs, peer_tls.as_ref(), shutdown).await?;
    tasks::notify_systemd(&[sd_notify::NotifyState::Stopping]);
    tracing::info!("shutting down: finishing open requests");
    metrics.up.set(0);
    while tasks.join_next().await.is_some() {}
    drain(&cfg, &slots).await;
    // Refusals counted since the last summary are not lost at shutdown.
    tasks::write_refusal_summaries(&gate);
    audit.close().await?;
    store.flush()?;
    tracing::info!("stopped");
    Ok(())
}

/// What the tasks of a serving gateway share.
struct Running<'a> {
    cfg: &'a Config,
    gate: &'a Arc<Gate>,
    admin: &'a Arc<Admin>,
    slots: &'a Arc<Semaphore>,
    terminals_changed: &'a Arc<Notify>,
    shutdown: &'a Shutdown,
}

impl Running<'_> {
    /// The accept loops: every mutual-TLS listener, the WireGuard tunnel, the metrics
    /// endpoint and the admin socket.
    fn spawn_ingress(
        &self,
        listeners: Vec<BoundListener>,
        tunnel: Option<BoundTunnel>,
        metrics_socket: Option<TcpListener>,
        admin_socket: UnixListener,
    ) -> tokio::task::JoinSet<()> {
        let mut tasks = tokio::task::JoinSet::new();
        for l in listeners {
            let l = MtlsListener {
                socket: l.socket,
                config: l.config,
                tls: l.tls,
                limits: self.cfg.limits.clone(),
                slots: self.slots.clone(),
            };
            tasks.spawn(l.run(self.gate.clone(), self.shutdown.clone()));
        }
        if let Some(socket) = metrics_socket {
            tasks.spawn(tasks::serve_metrics(
                socket,
                self.gate.metrics.clone(),
                self.shutdown.clone(),
            ));
        }
        tasks.spawn(admin::serve(
            admin_socket,
            self.admin.clone(),
            self.shutdown.clone(),
        ));
        if let Some(t) = tunnel {
            tasks.spawn(tunnel::serve(
                t.streams,
                t.tls,
                t.https_port,
                self.gate.clone(),
                self.cfg.limits.clone(),
                self.slots.clone(),
                self.shutdown.clone(),
            ));
            tasks.spawn(tunnel::maintain(
                t.handle,
                self.admin.store.clone(),
                self.terminals_changed.clone(),
                self.gate.metrics.clone(),
                self.shutdown.clone(),
            ));
        }
        tasks
    }

    /// The periodic tasks: session sweep, refusal summaries, audit verification, daily purge.
    fn spawn_background(&self, tasks: &mut tokio::task::JoinSet<()>) {
        let cfg = self.cfg;
        tasks.spawn(tasks::sweep_sessions(
            self.gate.clone(),
            self.shutdown.clone(),
        ));
        tasks.spawn(tasks::registry_health(
            self.gate.clone(),
            self.shutdown.clone(),
        ));
        tasks.spawn(tasks::summarise_refusals(
            self.gate.clone(),
            cfg.limits.flood.refusal_summary_interval,
            self.shutdown.clone(),
        ));
        tasks.spawn(tasks::verify_audit(
            cfg.state_dir.join("audit"),
            self.gate.metrics.clone(),
            cfg.audit_verify_interval,
            self.shutdown.clone(),
        ));
        tasks.spawn(tasks::publish_audit_head(
            self.gate.clone(),
            cfg.state_dir.join("audit"),
            tasks::AUDIT_HEAD_PUBLISH_INTERVAL,
            self.shutdown.clone(),
        ));
        tasks.spawn(tasks::purge_daily(
            self.admin.clone(),
            cfg.purge_interval,
            self.shutdown.clone(),
        ));
    }
}

/// Serves `SIGHUP` (a reload) until `shutdown` fires.
async fn wait_for_shutdown(
    cfg: &Config,
    gate: &Gate,
    tls_configs: &[(config::Listener, SharedTls)],
    peer_tls: Option<&SharedTls>,
    mut shutdown: Shutdown,
) -> Result<(), ServeError> {
    let mut hup = signal(SignalKind::hangup()).map_err(|source| ServeError::StateDir {
        path: "SIGHUP handler".into(),
        source,
    })?;
    loop {
        tokio::select! {
            _ = shutdown.recv() => return Ok(()),
            _ = hup.recv() => {
                tasks::notify_systemd(&[sd_notify::NotifyState::Reloading]);
                reload::reload(cfg, gate, tls_configs, peer_tls);
                tasks::notify_systemd(&[sd_notify::NotifyState::Ready]);
            }
        }
    }
}

/// Waits (10 s at most) until every open connection has ended, then removes the admin socket.
async fn drain(cfg: &Config, slots: &Semaphore) {
    // Every open connection holds a slot; all slots back means all connections are done.
    let all = u32::try_from(cfg.limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(Duration::from_secs(10), slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("some connections did not finish within 10 s");
    }
    let _ = std::fs::remove_file(&cfg.admin_socket);
}
