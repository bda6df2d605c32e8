//! Prometheus metrics, held in one registry owned by the gateway (no global statics). No
//! physician or patient identifier ever becomes a label: per-person usage is in the audit.

mod families;

use families::{AuditFamily, Conns, SignIn, Site, Traffic, Wireguard};
use prometheus::{
    Encoder, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
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
    /// Seconds since the registry copy was last proven current (0 for sled; etcd: the
    /// gateway refuses sign-ins and consent-gated requests beyond `max_stale_secs`).
    pub registry_stale_seconds: prometheus::Gauge,
    /// `max_stale_secs` itself, so an alert compares the two.
    pub registry_max_stale_seconds: IntGauge,
    /// Times the regional registry's watch was restarted (lost, resumed or reloaded).
    pub registry_watch_restarts: IntCounter,
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
        let registry_stale_seconds = prometheus::Gauge::new(
            "registry_stale_seconds",
            "Seconds since this gateway's copy of the registry was last proven current (0 for the embedded sled registry).",
        )?;
        let registry_max_stale_seconds = IntGauge::new(
            "registry_max_stale_seconds",
            "[registry] max_stale_secs: beyond it sign-ins and consent-gated requests are refused (503).",
        )?;
        let registry_watch_restarts = IntCounter::new(
            "registry_watch_restarts_total",
            "Restarts of the regional registry's watch (lost connection, no quorum, compaction).",
        )?;
        registry.register(Box::new(registry_stale_seconds.clone()))?;
        registry.register(Box::new(registry_max_stale_seconds.clone()))?;
        registry.register(Box::new(registry_watch_restarts.clone()))?;
        for kind in ["request", "connection"] {
            refusals_suppressed.with_label_values(&[kind]);
        }
        Ok(FloodMetrics {
            refusals_suppressed,
            suppression_summaries,
            handshakes_pending,
            registry_stale_seconds,
            registry_max_stale_seconds,
            registry_watch_restarts,
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
    ) -> Result<(), crate::site::pki::PkiError> {
        let chain = crate::site::pki::load_certs(cert_path)?;
        let leaf = chain.first().ok_or_else(|| {
            crate::site::pki::PkiError::Invalid(format!("{}: no certificate", cert_path.display()))
        })?;
        let info = crate::site::pki::cert_info(leaf)?;
        self.cert_expiry
            .with_label_values(&[listener])
            .set(info.not_after.unix_timestamp());
        Ok(())
    }

    /// Exports the tunnel's figures: counters advance by what changed since `last`.
    pub fn observe_wireguard(
        &self,
        last: &crate::ingress::wireguard::WgStats,
        now: &crate::ingress::wireguard::WgStats,
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
