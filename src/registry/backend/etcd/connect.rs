//! Connecting to the regional registry: TLS with etcd's CA and this gateway's client
//! certificate (rustls with ring, like the rest of the gateway), then the initial load and
//! the watch in the background.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use super::{new_regional, watch, Regional};
use crate::registry::backend::{Generation, KvError};
use crate::site::config::EtcdConfig;

fn read(what: &str, p: &std::path::Path) -> Result<Vec<u8>, KvError> {
    std::fs::read(p)
        .map_err(|e| KvError::Setup(format!("registry.{what}: cannot read {}: {e}", p.display())))
}

/// TLS with etcd's CA and this gateway's client certificate; short connect and request
/// timeouts; requests fail at once without a leader (no quorum) instead of waiting.
fn options(cfg: &EtcdConfig) -> Result<ConnectOptions, KvError> {
    let ca = read("ca", &cfg.ca)?;
    let cert = read("cert", &cfg.cert)?;
    let key = read("key", &cfg.key)?;
    let tls = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key));
    Ok(ConnectOptions::new()
        .with_tls(tls)
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(3))
        .with_require_leader(true))
}

/// Connects and starts the watch. Returns at once: when etcd cannot be reached the gateway
/// starts with an empty, unconfirmed copy and refuses sign-ins and consent-gated requests
/// (503) until the watch has loaded the registry. Fails only on local problems (files).
pub(crate) async fn connect(
    cfg: &EtcdConfig,
    max_stale: Duration,
    generation: Generation,
) -> Result<Arc<Regional>, KvError> {
    let opts = options(cfg)?
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
        .with_keep_alive_while_idle(true)
        .with_require_leader(true);
    let client = Client::connect(&cfg.endpoints, Some(opts)).await?;
    // The load reads pages of up to `watch::PAGE` keys; etcd 3.4 counts the whole remaining
    // range for each, so a page of a large registry can take seconds.
    let loader = Client::connect(
        &cfg.endpoints,
        Some(options(cfg)?.with_timeout(Duration::from_secs(60))),
    )
    .await?;
    let reg = new_regional(client, loader, cfg, max_stale, generation);
    tokio::spawn(watch::run(reg.clone()));
    Ok(reg)
}

/// `check-config`: can this gateway reach the regional registry with its credentials? A
/// linearizable read of the prefix (it needs a quorum), with a bounded wait.
pub(crate) async fn probe(cfg: &EtcdConfig) -> Result<i64, KvError> {
    let opts = options(cfg)?;
    let attempt = async {
        let mut client = Client::connect(&cfg.endpoints, Some(opts)).await?;
        let resp = client
            .get(
                cfg.prefix.as_bytes(),
                Some(
                    etcd_client::GetOptions::new()
                        .with_prefix()
                        .with_count_only(),
                ),
            )
            .await?;
        Ok::<i64, etcd_client::Error>(resp.header().map_or(0, |h| h.revision()))
    };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(KvError::Unavailable(format!(
            "no answer from {} within 5 s",
            cfg.endpoints.join(", ")
        ))),
    }
}
