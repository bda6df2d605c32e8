//! Issue 13's scale simulation, driven by `bench/registry` (see bench/README.md, "Regional
//! registry"). Talks to a real etcd cluster with TLS client certificates through `etcd-client`.
//!
//! ```text
//! registry_sim load    PHYSICIANS TERMINALS CONSENTS   # writes records shaped like
//!                                                      # src/registry/model.rs under PREFIX
//! registry_sim watch   WATCHERS CHANGES                # WATCHERS prefix watches; CHANGES puts;
//!                                                      # prints put-ack → event delay p50/p99
//! ```
//!
//! Environment: `ETCD_ENDPOINTS` (comma-separated), `ETCD_CA`, `ETCD_CERT`, `ETCD_KEY` (PEM
//! files), `PREFIX` (e.g. `/seibo-scale/`). Keys are `{PREFIX}{tree}/{key}` as the gateway's
//! etcd backend writes them (trees `physicians`, `terminals`, `fingerprints`, `consents`).
//! Every wait is bounded; errors end the run with a message, never a panic.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use etcd_client::{Client, ConnectOptions, Identity, TlsOptions, Txn, TxnOp, WatchOptions};
use tokio::sync::mpsc;

/// Puts per transaction (etcd's default `--max-txn-ops` is 128).
const TXN_OPS: usize = 128;
/// Transactions in flight at once.
const IN_FLIGHT: usize = 8;

fn env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("{name} is not set"))
}

async fn connect() -> anyhow::Result<Client> {
    let endpoints: Vec<String> = env("ETCD_ENDPOINTS")?
        .split(',')
        .map(str::to_string)
        .collect();
    let read = |v: &str| -> anyhow::Result<Vec<u8>> {
        let p = env(v)?;
        std::fs::read(&p).with_context(|| format!("read {p}"))
    };
    let opts = ConnectOptions::new()
        .with_tls(
            TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(read("ETCD_CA")?))
                .identity(Identity::from_pem(read("ETCD_CERT")?, read("ETCD_KEY")?)),
        )
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(30));
    Client::connect(endpoints, Some(opts))
        .await
        .context("connect to etcd")
}

fn physician(i: usize) -> (String, String) {
    let id = format!("dr-{i:05}");
    let v = serde_json::json!({
        "id": id,
        "name": format!("Physician {i}"),
        "site": format!("site-{:03}", i % 200),
        "suspended": null,
        "registered": "2026-04-01T09:30:15.123456789+09:00",
        // An Argon2id PHC string of the usual length (the gateway stores one per physician).
        "password_hash": format!("$argon2id$v=19$m=19456,t=2,p=1${:022}${:043}", i, i),
        "must_change_password": false,
        "failed_logins": 0,
        "locked_until": null
    });
    (id, v.to_string())
}

fn terminal(i: usize, physicians: usize) -> (String, String, String) {
    let name = format!("pc-{i:06}");
    let fp = format!(
        "{:064x}",
        (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
    );
    let v = serde_json::json!({
        "name": name,
        "physician": format!("dr-{:05}", i % physicians.max(1)),
        "fingerprint": fp,
        "serial": format!("{:032x}", i),
        "not_after": "2028-07-05T09:00:00+09:00",
        "revoked": false,
        "registered": "2026-04-01T09:30:15.123456789+09:00",
        "kind": "terminal",
        "tunnel_ip": null
    });
    (name, fp, v.to_string())
}

fn consent(i: usize) -> (String, String) {
    let patient = format!("S{i:09}");
    let v = serde_json::json!({
        "patient": patient,
        "by": {"kind": "patient"},
        "site": format!("site-{:03}", i % 200),
        "form_ref": format!("F6-{i:09}"),
        "published": "2026-04-01",
        "no_extension": false,
        "last_view": "2026-11-20",
        "withdrawn": null
    });
    (patient, v.to_string())
}

/// Writes `ops` in transactions of [`TXN_OPS`], [`IN_FLIGHT`] at a time.
async fn write_all(client: &Client, ops: Vec<(String, String)>) -> anyhow::Result<()> {
    let mut batches = ops
        .chunks(TXN_OPS)
        .map(|c| c.to_vec())
        .collect::<Vec<_>>()
        .into_iter();
    let mut running = tokio::task::JoinSet::new();
    loop {
        while running.len() < IN_FLIGHT {
            let Some(batch) = batches.next() else { break };
            let mut kv = client.kv_client();
            running.spawn(async move {
                let puts: Vec<TxnOp> = batch
                    .into_iter()
                    .map(|(k, v)| TxnOp::put(k, v, None))
                    .collect();
                kv.txn(Txn::new().and_then(puts)).await
            });
        }
        match running.join_next().await {
            None => return Ok(()),
            Some(r) => {
                r.context("writer task")?.context("etcd txn")?;
            }
        }
    }
}

async fn load(prefix: &str, np: usize, nt: usize, nc: usize) -> anyhow::Result<()> {
    let client = connect().await?;
    let start = Instant::now();
    let mut ops = Vec::with_capacity(np);
    for i in 0..np {
        let (id, v) = physician(i);
        ops.push((format!("{prefix}physicians/{id}"), v));
    }
    write_all(&client, ops).await?;
    let mut ops = Vec::with_capacity(nt * 2);
    for i in 0..nt {
        let (name, fp, v) = terminal(i, np);
        ops.push((format!("{prefix}fingerprints/{fp}"), name.clone()));
        ops.push((format!("{prefix}terminals/{name}"), v));
    }
    write_all(&client, ops).await?;
    let t0 = Instant::now();
    let chunk = 100_000;
    let mut done = 0;
    while done < nc {
        let n = chunk.min(nc - done);
        let ops = (done..done + n)
            .map(|i| {
                let (p, v) = consent(i);
                (format!("{prefix}consents/{p}"), v)
            })
            .collect();
        write_all(&client, ops).await?;
        done += n;
        eprintln!(
            "  consents {done}/{nc} ({:.0}/s)",
            done as f64 / t0.elapsed().as_secs_f64()
        );
    }
    let total = np + 2 * nt + nc;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "load keys={total} physicians={np} terminals={nt} consents={nc} secs={secs:.1} keys_per_sec={:.0}",
        total as f64 / secs
    );
    Ok(())
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `watchers` clients, each with one prefix watch (like a gateway); `changes` puts of one
/// consent key, one at a time; each delay is from the put's acknowledgement to a watcher's
/// event with that revision.
async fn watch(prefix: &str, watchers: usize, changes: usize) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, i64, Instant)>();
    let mut streams = Vec::new();
    for w in 0..watchers {
        // One client (one gRPC connection) per simulated gateway.
        let mut c = connect().await?;
        let mut stream = c
            .watch(prefix, Some(WatchOptions::new().with_prefix()))
            .await
            .context("watch")?;
        let tx = tx.clone();
        streams.push(tokio::spawn(async move {
            let _keep = c;
            while let Ok(Some(resp)) = stream.message().await {
                let now = Instant::now();
                for e in resp.events() {
                    if let Some(kv) = e.kv() {
                        let _ = tx.send((w, kv.mod_revision(), now));
                    }
                }
            }
        }));
    }
    drop(tx);
    let client = connect().await?;
    let mut kv = client.kv_client();
    let key = format!("{prefix}consents/S-watch-probe");
    let mut delays = Vec::with_capacity(watchers * changes);
    let mut missed = 0usize;
    for i in 0..changes {
        let (_, v) = consent(i);
        let resp = kv.put(key.as_str(), v, None).await.context("put")?;
        let acked = Instant::now();
        let rev = resp.header().map_or(0, |h| h.revision());
        let mut seen = vec![false; watchers];
        let mut n = 0;
        let deadline = acked + Duration::from_secs(5);
        while n < watchers {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, rx.recv()).await {
                Ok(Some((w, r, at))) if r == rev && !seen[w] => {
                    seen[w] = true;
                    n += 1;
                    delays.push(at.saturating_duration_since(acked).as_secs_f64() * 1000.0);
                }
                Ok(Some(_)) => {}
                Ok(None) => bail!("every watch ended"),
                Err(_) => {
                    missed += watchers - n;
                    break;
                }
            }
        }
    }
    for s in streams {
        s.abort();
    }
    delays.sort_by(f64::total_cmp);
    println!(
        "watch watchers={watchers} changes={changes} events={} missed={missed} p50_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        delays.len(),
        pct(&delays, 50.0),
        pct(&delays, 99.0),
        delays.last().copied().unwrap_or(f64::NAN)
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let prefix = env("PREFIX")?;
    let num = |i: usize| -> anyhow::Result<usize> {
        args.get(i)
            .with_context(|| format!("argument {i} missing"))?
            .parse()
            .with_context(|| format!("argument {i}: a number"))
    };
    match args.first().map(String::as_str) {
        Some("load") => load(&prefix, num(1)?, num(2)?, num(3)?).await,
        Some("watch") => watch(&prefix, num(1)?, num(2)?).await,
        _ => {
            bail!("usage: registry_sim load PHYSICIANS TERMINALS CONSENTS | watch WATCHERS CHANGES")
        }
    }
}
