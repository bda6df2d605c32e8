//! The families [`Metrics::new`](super::Metrics::new) is made of: each registers its metrics
//! and exports its known label sets at zero (listener-labelled ones: `init_listener`,
//! `init_wireguard`).

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use super::labels;

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

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
pub(super) struct Traffic {
    pub(super) requests: IntCounterVec,
    pub(super) gateway_seconds: HistogramVec,
    pub(super) upstream_seconds: Histogram,
    pub(super) upstream_errors: IntCounterVec,
}

impl Traffic {
    pub(super) fn new(registry: &Registry) -> Result<Traffic, prometheus::Error> {
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
pub(super) struct Conns {
    pub(super) tls_handshakes: IntCounterVec,
    pub(super) refused_connections: IntCounterVec,
    pub(super) connections: IntGaugeVec,
}

impl Conns {
    pub(super) fn new(registry: &Registry) -> Result<Conns, prometheus::Error> {
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
pub(super) struct AuditFamily {
    pub(super) audit_records: IntCounter,
    pub(super) audit_failures: IntCounter,
    pub(super) audit_write_seconds: Histogram,
    pub(super) audit_chain_intact: IntGauge,
    pub(super) audit_index_intact: IntGauge,
    pub(super) audit_chain_records: IntGauge,
    pub(super) audit_verifications: IntCounterVec,
}

impl AuditFamily {
    pub(super) fn new(registry: &Registry) -> Result<AuditFamily, prometheus::Error> {
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
pub(super) struct SignIn {
    pub(super) signins: IntCounterVec,
    pub(super) lockouts: IntCounter,
    pub(super) sessions: IntGauge,
}

impl SignIn {
    pub(super) fn new(registry: &Registry) -> Result<SignIn, prometheus::Error> {
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
pub(super) struct Wireguard {
    pub(super) wg_handshakes: IntCounter,
    pub(super) wg_peers: IntGauge,
    pub(super) wg_peers_up: IntGauge,
    pub(super) wg_rx_bytes: IntCounter,
    pub(super) wg_tx_bytes: IntCounter,
    pub(super) wg_dropped: IntCounterVec,
}

impl Wireguard {
    pub(super) fn new(registry: &Registry) -> Result<Wireguard, prometheus::Error> {
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
pub(super) struct Site {
    pub(super) consent_events: IntCounterVec,
    pub(super) cert_expiry: IntGaugeVec,
    pub(super) build_info: IntGaugeVec,
    pub(super) reloads: IntCounterVec,
    pub(super) up: IntGauge,
}

impl Site {
    pub(super) fn new(registry: &Registry) -> Result<Site, prometheus::Error> {
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
