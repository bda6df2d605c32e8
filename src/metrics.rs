//! Prometheus metrics, held in one registry owned by the gateway (no global statics). No
//! physician or patient identifier ever becomes a label: per-person usage is in the audit.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric the gateway exports, prefixed `seibo_gate_`.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Requests by ingress, decision (allow/deny) and reason.
    pub requests: IntCounterVec,
    /// Time spent in the gateway itself (identity, route, consent, audit), by ingress.
    pub gateway_seconds: HistogramVec,
    /// Time to the upstream EMR's response headers.
    pub upstream_seconds: Histogram,
    /// TLS handshakes by result (ok, or the failure's cause).
    pub tls_handshakes: IntCounterVec,
    /// Connections refused by cause: source not allowed or total limit (before the handshake),
    /// per-terminal limit (after it, with a 429 page).
    pub refused_connections: IntCounterVec,
    /// Open client connections by ingress.
    pub connections: IntGaugeVec,
    /// Audit records written, and failures to write (fail closed).
    pub audit_records: IntCounter,
    pub audit_failures: IntCounter,
    pub audit_write_seconds: Histogram,
    /// The hash chain as last verified by the gateway itself: 1 intact, 0 broken.
    pub audit_chain_intact: IntGauge,
    /// 1 when the per-patient audit index agreed with the log at the last check.
    pub audit_index_intact: IntGauge,
    /// Records covered by the last verification, and verifications by result.
    pub audit_chain_records: IntGauge,
    pub audit_verifications: IntCounterVec,
    /// Upstream failures by kind (connect, timeout).
    pub upstream_errors: IntCounterVec,
    /// Consent events by kind (grant, withdraw, delete, purge).
    pub consent_events: IntCounterVec,
    /// Expiry (not after, Unix seconds) of each listener's server certificate, so an alert
    /// can fire 30 days ahead. Set at start and on every reload ([`Metrics::set_cert_expiry`]).
    pub cert_expiry: IntGaugeVec,
    pub build_info: IntGaugeVec,
    /// Sign-in attempts by result (ok, failed, locked, locked-now).
    pub signins: IntCounterVec,
    /// Accounts locked after repeated wrong passwords.
    pub lockouts: IntCounter,
    /// Open sign-in sessions.
    pub sessions: IntGauge,
    /// WireGuard ingress (art 12.2): completed handshakes, peers, bytes, dropped packets.
    pub wg_handshakes: IntCounter,
    pub wg_peers: IntGauge,
    pub wg_peers_up: IntGauge,
    pub wg_rx_bytes: IntCounter,
    pub wg_tx_bytes: IntCounter,
    pub wg_dropped: IntCounterVec,
    /// Configuration reloads (SIGHUP) by result.
    pub reloads: IntCounterVec,
    pub up: IntGauge,
    /// Issue 11 items 7, 8, 11: see [`FloodMetrics`].
    pub flood: FloodMetrics,
}

/// Refusals counted into summaries instead of written one by one, and the handshake budget.
#[derive(Clone)]
pub struct FloodMetrics {
    /// Refusals not written one by one (kind: request, connection); each is in a summary.
    pub refusals_suppressed: IntCounterVec,
    /// Suppression summary records written.
    pub suppression_summaries: IntCounter,
    /// Handshakes in progress (the `max_handshakes` budget).
    pub handshakes_pending: IntGauge,
}

impl FloodMetrics {
    fn new(registry: &Registry) -> Result<FloodMetrics, prometheus::Error> {
        let refusals_suppressed = IntCounterVec::new(
            Opts::new(
                "audit_refusals_suppressed_total",
                "Refusals beyond the per-terminal and per-source audit rate, counted into a summary record instead of written one by one.",
            ),
            &["kind"],
        )?;
        let suppression_summaries = IntCounter::new(
            "audit_suppression_summaries_total",
            "Summary records of suppressed refusals written to the audit.",
        )?;
        let handshakes_pending = IntGauge::new(
            "handshakes_pending",
            "TLS handshakes in progress (bounded by limits.max_handshakes).",
        )?;
        registry.register(Box::new(refusals_suppressed.clone()))?;
        registry.register(Box::new(suppression_summaries.clone()))?;
        registry.register(Box::new(handshakes_pending.clone()))?;
        for kind in ["request", "connection"] {
            refusals_suppressed.with_label_values(&[kind]);
        }
        Ok(FloodMetrics {
            refusals_suppressed,
            suppression_summaries,
            handshakes_pending,
        })
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Every label value a labelled counter can take, exported at 0 from the start (a series
/// that appears only at its first event shows "No data" on a dashboard, and `absent()` or
/// `rate()` alerts misfire). A new label value at a call site belongs in these lists too.
pub mod labels {
    /// `refused_connections_total{cause}` on a TLS listener.
    pub const REFUSED_CAUSES: &[&str] = &[
        "source-not-allowed",
        "connection-limit",
        "terminal-connection-limit",
    ];
    /// `refused_connections_total{cause}` on the WireGuard ingress.
    pub const WIREGUARD_REFUSED_CAUSES: &[&str] =
        &["connection-limit", "terminal-connection-limit"];
    /// `tls_handshakes_total{result}` on a TLS listener (see `listener::handshake_failure`).
    pub const HANDSHAKE_RESULTS: &[&str] = &[
        "ok",
        "timeout",
        "no-client-certificate",
        "expired",
        "not-yet-valid",
        "revoked",
        "unknown-ca",
        "wrong-usage",
        "bad-certificate",
        "incompatible",
        "protocol",
        "io",
        "evicted",
    ];
    /// `tls_handshakes_total{result}` inside the WireGuard tunnel.
    pub const WIREGUARD_HANDSHAKE_RESULTS: &[&str] = &["ok", "protocol", "timeout", "evicted"];
    /// `connections{ingress}`.
    pub const INGRESSES: &[&str] = &["mtls", "wireguard", "site"];
    /// `upstream_errors_total{kind}`.
    pub const UPSTREAM_ERROR_KINDS: &[&str] = &["connect", "timeout"];
    /// `signin_attempts_total{result}`.
    pub const SIGNIN_RESULTS: &[&str] = &[
        "ok",
        "failed",
        "locked",
        "locked-now",
        "rate-limited",
        "busy",
    ];
    /// `config_reloads_total{result}`.
    pub const RELOAD_RESULTS: &[&str] = &["ok", "failed"];
    /// `wireguard_dropped_packets_total{cause}` (see `Metrics::observe_wireguard`).
    pub const WIREGUARD_DROP_CAUSES: &[&str] = &[
        "unknown-key",
        "unknown-index",
        "wrong-source",
        "wrong-destination",
        "invalid",
        "connection-refused",
    ];
    /// `consent_events_total{kind}`.
    pub const CONSENT_EVENT_KINDS: &[&str] = &["grant", "withdraw", "delete", "purge"];
    /// `audit_verifications_total{result}`.
    pub const VERIFICATION_RESULTS: &[&str] = &["intact", "index-wrong", "broken"];
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new_custom(Some("seibo_gate".into()), None)?;
        let Traffic {
            requests,
            gateway_seconds,
            upstream_seconds,
            upstream_errors,
        } = Traffic::new(&registry)?;
        let Conns {
            tls_handshakes,
            refused_connections,
            connections,
        } = Conns::new(&registry)?;
        let AuditFamily {
            audit_records,
            audit_failures,
            audit_write_seconds,
            audit_chain_intact,
            audit_index_intact,
            audit_chain_records,
            audit_verifications,
        } = AuditFamily::new(&registry)?;
        let SignIn {
            signins,
            lockouts,
            sessions,
        } = SignIn::new(&registry)?;
        let Wireguard {
            wg_handshakes,
            wg_peers,
            wg_peers_up,
            wg_rx_bytes,
            wg_tx_bytes,
            wg_dropped,
        } = Wireguard::new(&registry)?;
        let Site {
            consent_events,
            cert_expiry,
            build_info,
            reloads,
            up,
        } = Site::new(&registry)?;
        let flood = FloodMetrics::new(&registry)?;
        Ok(Metrics {
            registry,
            requests,
            gateway_seconds,
            upstream_seconds,
            tls_handshakes,
            refused_connections,
            connections,
            audit_records,
            audit_failures,
            audit_write_seconds,
            audit_chain_intact,
            audit_index_intact,
            audit_chain_records,
            audit_verifications,
            upstream_errors,
            consent_events,
            cert_expiry,
            build_info,
            reloads,
            signins,
            lockouts,
            sessions,
            wg_handshakes,
            wg_peers,
            wg_peers_up,
            wg_rx_bytes,
            wg_tx_bytes,
            wg_dropped,
            up,
            flood,
        })
    }

    /// Exports a TLS listener's handshake results and refusal causes at zero.
    pub fn init_listener(&self, listener: &str) {
        for result in labels::HANDSHAKE_RESULTS {
            self.tls_handshakes
                .with_label_values(&[listener, result])
                .inc_by(0);
        }
        for cause in labels::REFUSED_CAUSES {
            self.refused_connections
                .with_label_values(&[listener, cause])
                .inc_by(0);
        }
    }

    /// Exports the WireGuard ingress's handshake results and refusal causes at zero (its
    /// listener label is `wireguard`).
    pub fn init_wireguard(&self) {
        for result in labels::WIREGUARD_HANDSHAKE_RESULTS {
            self.tls_handshakes
                .with_label_values(&["wireguard", result])
                .inc_by(0);
        }
        for cause in labels::WIREGUARD_REFUSED_CAUSES {
            self.refused_connections
                .with_label_values(&["wireguard", cause])
                .inc_by(0);
        }
    }

    /// Records the expiry of `listener`'s server certificate, read from the first (leaf)
    /// certificate of the PEM chain at `cert_path`. Call it at start and after every reload.
    pub fn set_cert_expiry(
        &self,
        listener: &str,
        cert_path: &std::path::Path,
    ) -> Result<(), crate::pki::PkiError> {
        let chain = crate::pki::load_certs(cert_path)?;
        let leaf = chain.first().ok_or_else(|| {
            crate::pki::PkiError::Invalid(format!("{}: no certificate", cert_path.display()))
        })?;
        let info = crate::pki::cert_info(leaf)?;
        self.cert_expiry
            .with_label_values(&[listener])
            .set(info.not_after.unix_timestamp());
        Ok(())
    }

    /// Exports the tunnel's figures: counters advance by what changed since `last`.
    pub fn observe_wireguard(
        &self,
        last: &crate::wireguard::WgStats,
        now: &crate::wireguard::WgStats,
    ) {
        let delta = |a: u64, b: u64| b.saturating_sub(a);
        self.wg_handshakes
            .inc_by(delta(last.handshakes, now.handshakes));
        self.wg_rx_bytes.inc_by(delta(last.rx_bytes, now.rx_bytes));
        self.wg_tx_bytes.inc_by(delta(last.tx_bytes, now.tx_bytes));
        self.wg_peers
            .set(i64::try_from(now.peers).unwrap_or(i64::MAX));
        self.wg_peers_up
            .set(i64::try_from(now.peers_up).unwrap_or(i64::MAX));
        for (cause, a, b) in [
            (
                "unknown-key",
                last.dropped_unknown_key,
                now.dropped_unknown_key,
            ),
            (
                "unknown-index",
                last.dropped_unknown_index,
                now.dropped_unknown_index,
            ),
            (
                "wrong-source",
                last.dropped_wrong_source,
                now.dropped_wrong_source,
            ),
            (
                "wrong-destination",
                last.dropped_wrong_destination,
                now.dropped_wrong_destination,
            ),
            ("invalid", last.dropped_invalid, now.dropped_invalid),
            (
                "connection-refused",
                last.dropped_connections,
                now.dropped_connections,
            ),
        ] {
            self.wg_dropped
                .with_label_values(&[cause])
                .inc_by(delta(a, b));
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let enc = TextEncoder::new();
        if let Err(e) = enc.encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

// ---- the families [`Metrics::new`] is made of: each registers its metrics and exports its
// known label sets at zero (listener-labelled ones: `init_listener`, `init_wireguard`).

/// Registers `c` in `registry` and gives it back.
fn registered<C>(registry: &Registry, c: C) -> Result<C, prometheus::Error>
where
    C: prometheus::core::Collector + Clone + 'static,
{
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

/// A registered counter with one label, every value in `values` exported at zero.
fn counter_vec(
    registry: &Registry,
    opts: Opts,
    label: &str,
    values: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    let vec = registered(registry, IntCounterVec::new(opts, &[label])?)?;
    for v in values {
        vec.with_label_values(&[v]).inc_by(0);
    }
    Ok(vec)
}

fn latency(name: &str, help: &str) -> HistogramOpts {
    HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec())
}

/// Requests and the upstream.
struct Traffic {
    requests: IntCounterVec,
    gateway_seconds: HistogramVec,
    upstream_seconds: Histogram,
    upstream_errors: IntCounterVec,
}

impl Traffic {
    fn new(registry: &Registry) -> Result<Traffic, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "requests_total",
                "Requests by ingress, decision and reason.",
            ),
            &["ingress", "decision", "reason"],
        )?;
        let gateway_seconds = HistogramVec::new(
            latency(
                "gateway_duration_seconds",
                "Time spent in the gateway per request (identity, route, consent, audit), excluding the upstream.",
            ),
            &["ingress"],
        )?;
        let upstream_seconds = Histogram::with_opts(latency(
            "upstream_duration_seconds",
            "Time from forwarding to the upstream EMR's response headers.",
        ))?;
        let upstream_errors = counter_vec(
            registry,
            Opts::new("upstream_errors_total", "Upstream EMR failures by kind."),
            "kind",
            labels::UPSTREAM_ERROR_KINDS,
        )?;
        let requests = registered(registry, requests)?;
        for ingress in labels::INGRESSES {
            // The rate of allowed views is what dashboards divide by.
            requests
                .with_label_values(&[ingress, "allow", "allowed"])
                .inc_by(0);
        }
        Ok(Traffic {
            requests,
            gateway_seconds: registered(registry, gateway_seconds)?,
            upstream_seconds: registered(registry, upstream_seconds)?,
            upstream_errors,
        })
    }
}

/// Connections and TLS handshakes.
struct Conns {
    tls_handshakes: IntCounterVec,
    refused_connections: IntCounterVec,
    connections: IntGaugeVec,
}

impl Conns {
    fn new(registry: &Registry) -> Result<Conns, prometheus::Error> {
        let tls_handshakes = IntCounterVec::new(
            Opts::new("tls_handshakes_total", "TLS handshakes by result."),
            &["listener", "result"],
        )?;
        let refused_connections = IntCounterVec::new(
            Opts::new(
                "refused_connections_total",
                "Connections refused: source not allowed or connection limit (before the handshake), or the terminal's connection limit (after it).",
            ),
            &["listener", "cause"],
        )?;
        let connections = registered(
            registry,
            IntGaugeVec::new(
                Opts::new("connections", "Open client connections."),
                &["ingress"],
            )?,
        )?;
        for ingress in labels::INGRESSES {
            connections.with_label_values(&[ingress]).set(0);
        }
        Ok(Conns {
            tls_handshakes: registered(registry, tls_handshakes)?,
            refused_connections: registered(registry, refused_connections)?,
            connections,
        })
    }
}

/// The audit log: records, failures, durability time, verification.
struct AuditFamily {
    audit_records: IntCounter,
    audit_failures: IntCounter,
    audit_write_seconds: Histogram,
    audit_chain_intact: IntGauge,
    audit_index_intact: IntGauge,
    audit_chain_records: IntGauge,
    audit_verifications: IntCounterVec,
}

impl AuditFamily {
    fn new(registry: &Registry) -> Result<AuditFamily, prometheus::Error> {
        let audit_records = IntCounter::new(
            "audit_records_total",
            "Audit records appended (request and outcome lines).",
        )?;
        let audit_failures = IntCounter::new(
            "audit_failures_total",
            "Requests refused because their audit record could not be written.",
        )?;
        let audit_write_seconds = Histogram::with_opts(latency(
            "audit_write_duration_seconds",
            "Time until a request's audit record is durable on disk.",
        ))?;
        let audit_chain_intact = IntGauge::new(
            "audit_chain_intact",
            "1 when the audit log's hash chain verified at the last check, 0 when broken.",
        )?;
        let audit_index_intact = IntGauge::new(
            "audit_index_intact",
            "1 when the audit index agreed with the log at the last check, 0 when it disagrees \
             (per-patient queries then scan the whole log; rebuilt at the next start).",
        )?;
        let audit_chain_records = IntGauge::new(
            "audit_chain_records",
            "Records covered by the last audit chain verification.",
        )?;
        Ok(AuditFamily {
            audit_records: registered(registry, audit_records)?,
            audit_failures: registered(registry, audit_failures)?,
            audit_write_seconds: registered(registry, audit_write_seconds)?,
            audit_chain_intact: registered(registry, audit_chain_intact)?,
            audit_index_intact: registered(registry, audit_index_intact)?,
            audit_chain_records: registered(registry, audit_chain_records)?,
            audit_verifications: counter_vec(
                registry,
                Opts::new(
                    "audit_verifications_total",
                    "Audit chain verifications run by the gateway, by result.",
                ),
                "result",
                labels::VERIFICATION_RESULTS,
            )?,
        })
    }
}

/// Sign-in: attempts, lockouts, sessions.
struct SignIn {
    signins: IntCounterVec,
    lockouts: IntCounter,
    sessions: IntGauge,
}

impl SignIn {
    fn new(registry: &Registry) -> Result<SignIn, prometheus::Error> {
        let lockouts = IntCounter::new(
            "signin_lockouts_total",
            "Accounts locked after repeated wrong passwords.",
        )?;
        let sessions = IntGauge::new("sessions", "Open sign-in sessions.")?;
        Ok(SignIn {
            signins: counter_vec(
                registry,
                Opts::new("signin_attempts_total", "Sign-in attempts by result."),
                "result",
                labels::SIGNIN_RESULTS,
            )?,
            lockouts: registered(registry, lockouts)?,
            sessions: registered(registry, sessions)?,
        })
    }
}

/// The WireGuard ingress (art 12.2).
struct Wireguard {
    wg_handshakes: IntCounter,
    wg_peers: IntGauge,
    wg_peers_up: IntGauge,
    wg_rx_bytes: IntCounter,
    wg_tx_bytes: IntCounter,
    wg_dropped: IntCounterVec,
}

impl Wireguard {
    fn new(registry: &Registry) -> Result<Wireguard, prometheus::Error> {
        let wg_handshakes = IntCounter::new(
            "wireguard_handshakes_total",
            "WireGuard handshakes completed with registered peers.",
        )?;
        let wg_peers = IntGauge::new("wireguard_peers", "Registered WireGuard peers.")?;
        let wg_peers_up =
            IntGauge::new("wireguard_peers_up", "WireGuard peers with a live session.")?;
        let wg_rx_bytes = IntCounter::new(
            "wireguard_received_bytes_total",
            "Bytes received on the WireGuard UDP socket.",
        )?;
        let wg_tx_bytes = IntCounter::new(
            "wireguard_sent_bytes_total",
            "Bytes sent on the WireGuard UDP socket.",
        )?;
        Ok(Wireguard {
            wg_handshakes: registered(registry, wg_handshakes)?,
            wg_peers: registered(registry, wg_peers)?,
            wg_peers_up: registered(registry, wg_peers_up)?,
            wg_rx_bytes: registered(registry, wg_rx_bytes)?,
            wg_tx_bytes: registered(registry, wg_tx_bytes)?,
            wg_dropped: counter_vec(
                registry,
                Opts::new(
                    "wireguard_dropped_packets_total",
                    "WireGuard packets dropped, by cause (unknown key, wrong source or destination, ...).",
                ),
                "cause",
                labels::WIREGUARD_DROP_CAUSES,
            )?,
        })
    }
}

/// The site's own figures: consent events, certificates, build, reloads, up.
struct Site {
    consent_events: IntCounterVec,
    cert_expiry: IntGaugeVec,
    build_info: IntGaugeVec,
    reloads: IntCounterVec,
    up: IntGauge,
}

impl Site {
    fn new(registry: &Registry) -> Result<Site, prometheus::Error> {
        let cert_expiry = IntGaugeVec::new(
            Opts::new(
                "certificate_expiry_timestamp_seconds",
                "Expiry (notAfter) of the listener's server certificate, in Unix seconds.",
            ),
            &["listener"],
        )?;
        let build_info = registered(
            registry,
            IntGaugeVec::new(
                Opts::new("build_info", "Build information; the value is always 1."),
                &["version"],
            )?,
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let up = IntGauge::new("up", "1 while the gateway is serving.")?;
        Ok(Site {
            consent_events: counter_vec(
                registry,
                Opts::new("consent_events_total", "Consent registry events by kind."),
                "kind",
                labels::CONSENT_EVENT_KINDS,
            )?,
            cert_expiry: registered(registry, cert_expiry)?,
            build_info,
            reloads: counter_vec(
                registry,
                Opts::new(
                    "config_reloads_total",
                    "Configuration reloads (SIGHUP) by result.",
                ),
                "result",
                labels::RELOAD_RESULTS,
            )?,
            up: registered(registry, up)?,
        })
    }
}
