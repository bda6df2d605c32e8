//! Keeping the in-memory copy current: load every key under the prefix at one revision (in
//! pages), then one prefix watch from the next revision. A broken watch resumes from the
//! last applied revision; a compacted one reloads everything. Heartbeats prove freshness: a
//! linearizable read (needs a quorum) at revision R, then the copy is current as of that
//! read once the watch has applied R (a progress request makes etcd confirm it).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{EventType, GetOptions, WatchOptions};

use super::mirror::{split, Mirror};
use super::Regional;
use crate::registry::backend::KvError;

/// Keys per page of the initial load. etcd 3.4 counts the whole remaining range for every
/// page, so few large pages load a large registry much faster than many small ones
/// (measured: 2,100,000 keys took 164 s in pages of 5,000; bench/README.md).
const PAGE: i64 = 50_000;
/// Largest page accepted (50,000 records of a few hundred bytes each, with room).
const MAX_PAGE_BYTES: usize = 256 * 1024 * 1024;

/// Why a watch ended.
enum Ended {
    /// The revision to resume from is gone: reload everything.
    Compacted,
    /// The stream broke (member down, network): resume from the applied revision.
    Broken(String),
}

pub(super) async fn run(reg: Arc<Regional>) {
    let mut loaded = false;
    let mut progress = Load::default();
    let mut backoff = Duration::from_millis(100);
    loop {
        if !loaded {
            match load(&reg, &mut progress).await {
                Ok(n) => {
                    loaded = true;
                    progress = Load::default();
                    backoff = Duration::from_millis(100);
                    tracing::info!(
                        keys = n,
                        revision = *reg.applied.borrow(),
                        "regional registry loaded"
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, keys_so_far = progress.fresh.len(), "regional registry: load interrupted; resuming");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            }
        }
        let ended = watch(&reg).await;
        reg.watch_restarts.fetch_add(1, Ordering::Relaxed);
        match ended {
            Ended::Compacted => {
                tracing::warn!("regional registry: watch revision compacted; reloading");
                loaded = false;
            }
            Ended::Broken(e) => {
                tracing::warn!(error = %e, "regional registry: watch lost; resuming");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// A load in progress: the copy so far, the next key to read and the revision read at. An
/// interrupted load resumes from `from` at `at` (while etcd still has that revision).
#[derive(Default)]
struct Load {
    fresh: Mirror,
    from: Option<Vec<u8>>,
    at: i64,
}

/// Loads every key under the prefix at one revision, in pages, replacing the copy. Returns
/// the count.
async fn load(reg: &Regional, p: &mut Load) -> Result<usize, KvError> {
    let mut kv = reg
        .loader
        .kv_client()
        .max_decoding_message_size(MAX_PAGE_BYTES);
    let prefix = reg.prefix.as_bytes().to_vec();
    let end = prefix_end(&prefix);
    let started = Instant::now();
    loop {
        let mut opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        if p.at > 0 {
            opts = opts.with_revision(p.at);
        }
        let from = p.from.clone().unwrap_or_else(|| prefix.clone());
        let resp = match kv.get(from, Some(opts)).await {
            Ok(r) => r,
            Err(e) => {
                if e.to_string().contains("compacted") {
                    // The revision read at is gone: start over at the current one.
                    *p = Load::default();
                }
                return Err(e.into());
            }
        };
        if p.at == 0 {
            p.at = resp.header().map_or(0, |h| h.revision());
        }
        for kv in resp.kvs() {
            if let Some((tree, key)) = split(&reg.prefix, kv.key()) {
                p.fresh.put(tree, key, kv.value(), kv.mod_revision());
            }
        }
        match resp.kvs().last() {
            Some(last) if resp.more() => {
                let mut next = last.key().to_vec();
                next.push(0);
                p.from = Some(next);
            }
            _ => break,
        }
    }
    let fresh = std::mem::take(&mut p.fresh);
    let n = fresh.len();
    tracing::debug!(
        keys = n,
        bytes = fresh.bytes(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "registry copy loaded"
    );
    *reg.write() = fresh;
    reg.applied.send_replace(p.at);
    reg.generation.bump();
    Ok(n)
}

/// The first key after every key with this prefix (etcd's range end for a prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Heartbeat period: often enough that `max_stale_secs` is judged to about a quarter of it.
fn heartbeat(reg: &Regional) -> Duration {
    (reg.max_stale / 4).clamp(Duration::from_millis(200), Duration::from_secs(1))
}

async fn watch(reg: &Regional) -> Ended {
    let start = *reg.applied.borrow() + 1;
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(start)
        .with_progress_notify();
    let mut stream = match reg
        .client
        .watch_client()
        .watch(reg.prefix.as_bytes(), Some(opts))
        .await
    {
        Ok(s) => s,
        Err(e) => return Ended::Broken(e.to_string()),
    };
    let mut kv = reg.client.kv_client();
    let mut tick = tokio::time::interval(heartbeat(reg));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A linearizable read's revision, and when it was made, waiting for the watch to reach it.
    let mut pending: Option<(i64, Instant)> = None;
    loop {
        tokio::select! {
            msg = stream.message() => {
                let resp = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => return Ended::Broken("watch stream closed".into()),
                    Err(e) => return Ended::Broken(e.to_string()),
                };
                if resp.compact_revision() > 0 {
                    return Ended::Compacted;
                }
                if resp.canceled() {
                    return Ended::Broken(format!("watch canceled: {}", resp.cancel_reason()));
                }
                if resp.created() {
                    continue;
                }
                apply(reg, &resp);
                if let Some((rev, at)) = pending {
                    if *reg.applied.borrow() >= rev {
                        set_fresh(reg, at);
                        pending = None;
                    }
                }
            }
            _ = tick.tick() => {
                let at = Instant::now();
                let read = kv.get(
                    reg.prefix.as_bytes(),
                    Some(GetOptions::new().with_prefix().with_count_only()),
                );
                match tokio::time::timeout(heartbeat(reg), read).await {
                    Ok(Ok(r)) => {
                        let rev = r.header().map_or(0, |h| h.revision());
                        if *reg.applied.borrow() >= rev {
                            set_fresh(reg, at);
                            pending = None;
                        } else {
                            pending = Some((rev, at));
                            if let Err(e) = stream.request_progress().await {
                                return Ended::Broken(e.to_string());
                            }
                        }
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "registry heartbeat failed"),
                    Err(_) => tracing::debug!("registry heartbeat timed out"),
                }
            }
        }
    }
}

fn set_fresh(reg: &Regional, at: Instant) {
    reg.set_fresh(at);
}

/// Applies one watch response to the copy and moves the applied revision and the generation.
fn apply(reg: &Regional, resp: &etcd_client::WatchResponse) {
    let events = resp.events();
    if events.is_empty() {
        // A progress notification: every change up to the header's revision has been sent.
        if let Some(h) = resp.header() {
            reg.applied.send_if_modified(|a| {
                let moved = h.revision() > *a;
                *a = (*a).max(h.revision());
                moved
            });
        }
        return;
    }
    let mut top = 0;
    {
        let mut m = reg.write();
        for ev in events {
            let Some(kv) = ev.kv() else { continue };
            top = top.max(kv.mod_revision());
            let Some((tree, key)) = split(&reg.prefix, kv.key()) else {
                continue;
            };
            match ev.event_type() {
                EventType::Put => m.put(tree, key, kv.value(), kv.mod_revision()),
                EventType::Delete => m.delete(tree, key),
            }
        }
    }
    // After the copy changed: a reader that sees the new generation sees the change.
    reg.generation.bump();
    reg.applied.send_if_modified(|a| {
        let moved = top > *a;
        *a = (*a).max(top);
        moved
    });
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn the_range_end_of_a_prefix_is_its_successor() {
        assert_eq!(prefix_end(b"/seibo-net/"), b"/seibo-net0".to_vec());
        assert_eq!(prefix_end(&[b'a', 0xff]), b"b".to_vec());
    }
}
