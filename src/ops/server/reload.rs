//! `SIGHUP`: the configuration reloaded while serving.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::gate::Gate;
use crate::ingress::tls;
use crate::site::config::Config;

/// `SIGHUP`: re-reads the config file; routes, upstream, site texts and every listener's
/// certificate (the peer API's too) are swapped for new connections and requests, open
/// connections continue.
/// A config that does not validate is refused and the running one kept. Listener addresses
/// and the state directory need a restart.
pub(super) fn reload(
    cfg: &Config,
    gate: &Gate,
    tls_configs: &[(
        crate::site::config::Listener,
        Arc<ArcSwap<rustls::ServerConfig>>,
    )],
    peer_tls: Option<&Arc<ArcSwap<rustls::ServerConfig>>>,
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
    let peer_swap = match (peer_tls, &new.peer) {
        (Some(slot), Some(p)) => {
            match crate::ingress::peer_api::verify::server_config(&p.cert, &p.key, &new.ca.cert) {
                Ok(t) => Some((slot.clone(), t)),
                Err(e) => {
                    tracing::error!(error = %e, "reload refused: the peer API's certificate is unusable");
                    gate.metrics.reloads.with_label_values(&["failed"]).inc();
                    return;
                }
            }
        }
        (None, Some(_)) | (Some(_), None) => {
            tracing::warn!("adding or removing [peer] needs a restart");
            None
        }
        (None, None) => None,
    };
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
    if let Some((slot, t)) = peer_swap {
        slot.store(t);
    }
    gate.reload(&new);
    gate.metrics.reloads.with_label_values(&["ok"]).inc();
    tracing::info!(routes = new.routes.len(), upstream = %new.upstream.authority, "configuration reloaded");
}
