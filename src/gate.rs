//! What every request needs, shared by all connections: the registry, sessions, the audit
//! log, metrics, the clock and the budgets ([`Gate`]); and the part of the configuration that
//! `SIGHUP` reloads ([`Live`]), read once per request.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::audit::limiter::RefusalLimiter;
use crate::audit::AuditLog;
use crate::egress::forward::Forwarder;
use crate::ingress::handshake::HandshakeBudget;
use crate::ingress::slots::TerminalConns;
use crate::ops::clock::SharedClock;
use crate::ops::metrics::Metrics;
use crate::policy::hashing::Hasher;
use crate::policy::route::RouteTable;
use crate::policy::session::Sessions;
use crate::policy::signin_rate::SigninRate;
use crate::registry::store::Store;
use crate::site::config::{Auth, Config, Limits, Policy, Site};

/// Everything a request needs, shared by all connections.
#[derive(Debug)]
pub struct Gate {
    pub store: Store,
    /// Sign-in sessions (art 6.3, 13.1).
    pub sessions: Arc<Sessions>,
    pub audit: AuditLog,
    pub metrics: Metrics,
    pub clock: SharedClock,
    /// Open connections per terminal credential (`[limits] max_connections_per_terminal`).
    pub terminal_conns: Arc<TerminalConns>,
    /// Handshakes in progress (`[limits] max_handshakes`), apart from connection slots.
    pub handshakes: Arc<HandshakeBudget>,
    /// Refusals audited at a bounded rate per terminal and source, the rest summarised.
    pub refusals: Arc<RefusalLimiter>,
    /// Argon2 on a fixed pool with bounded slots and memory (issue 11 item 6).
    pub hasher: Hasher,
    /// What `SIGHUP` reloads: swapped atomically, read once per request.
    live: ArcSwap<Live>,
}

/// The reloadable part of the configuration.
#[derive(Debug)]
pub struct Live {
    pub site: Site,
    pub routes: RouteTable,
    pub forwarder: Forwarder,
    pub auth: Auth,
    pub policy: Policy,
    /// Request limits checked per request (header count, body size).
    pub limits: Limits,
    /// Password tries per terminal (`[auth] signin_attempts_per_minute`; a reload starts the
    /// counts afresh).
    pub signin_rate: SigninRate,
}

impl Live {
    pub fn new(cfg: &Config) -> Live {
        Live {
            site: cfg.site.clone(),
            routes: cfg.routes.clone(),
            forwarder: Forwarder::new(&cfg.upstream, cfg.policy.blank_print),
            auth: cfg.auth.clone(),
            policy: cfg.policy.clone(),
            limits: cfg.limits.clone(),
            signin_rate: SigninRate::per_minute(cfg.auth.signin_attempts_per_minute),
        }
    }
}

impl Gate {
    pub fn new(
        cfg: &Config,
        store: Store,
        audit: AuditLog,
        metrics: Metrics,
        clock: SharedClock,
    ) -> Gate {
        Gate {
            sessions: Arc::new(
                Sessions::new(cfg.auth.idle_timeout, cfg.auth.session_lifetime)
                    .shared_through(&store),
            ),
            store,
            audit,
            metrics,
            clock,
            terminal_conns: Default::default(),
            handshakes: Arc::new(HandshakeBudget::new(
                cfg.limits.flood.max_handshakes,
                cfg.limits.flood.max_handshakes_per_source,
            )),
            refusals: Arc::new(RefusalLimiter::new(&cfg.limits.flood)),
            hasher: Hasher::for_this_machine(),
            live: ArcSwap::from_pointee(Live::new(cfg)),
        }
    }

    /// The current routes, upstream and site.
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// Replaces routes, upstream and site for the next requests (requests in flight finish
    /// with what they started with).
    pub fn reload(&self, cfg: &Config) {
        self.live.store(Arc::new(Live::new(cfg)));
    }
}
