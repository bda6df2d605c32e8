//! The regional registry on etcd v3: an in-memory copy of every tree under the network's
//! prefix, loaded at a revision and kept current by one prefix watch from that revision
//! (`watch`), and writes as transactions that compare the revision they read (`Regional::update`).
//!
//! Keys: `{prefix}{tree}/{key}`; values: the store's JSON, as in sled.
//!
//! Freshness is proven, not assumed: every heartbeat makes a linearizable read (it fails
//! without a quorum) and the copy counts as current as of that read once the watch has applied
//! its revision. [`RegistryHealth`] says how long ago that was; the gateway refuses sign-ins
//! and consent-gated requests once it exceeds `[registry] max_stale_secs` (fail closed).

mod connect;
mod mirror;
mod watch;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use serde::Serialize;

use super::{Generation, KvError};
use crate::site::config::EtcdConfig;

pub(crate) use connect::{connect, probe};
use mirror::Mirror;

/// How long a write waits for this gateway's watch to apply it (read-your-writes).
const APPLY_WAIT: Duration = Duration::from_secs(5);
/// Concurrent [`Regional::catch_up`] reads.
const CATCH_UP_SLOTS: usize = 4;
/// gRPC status code UNAVAILABLE.
const GRPC_UNAVAILABLE: i32 = 14;
/// gRPC status codes CANCELLED and DEADLINE_EXCEEDED (a request timed out on its way: its
/// outcome is unknown).
const GRPC_CANCELLED: i32 = 1;
const GRPC_DEADLINE_EXCEEDED: i32 = 4;
/// How many times a read-modify-write retries against concurrent writers.
const MAX_TRIES: u32 = 64;

/// The regional registry as this gateway sees it.
pub(crate) struct Regional {
    client: Client,
    /// The same cluster with a long request timeout, for the initial load's large pages.
    loader: Client,
    prefix: String,
    endpoints: Vec<String>,
    mirror: std::sync::RwLock<Mirror>,
    /// The revision up to which the copy has applied every change (watched by writers).
    applied: tokio::sync::watch::Sender<i64>,
    /// When the copy was last proven current (a linearizable read it has caught up with), as
    /// milliseconds since `born` plus one (0: never). An atomic: every request reads it.
    fresh_at: AtomicU64,
    born: Instant,
    max_stale: Duration,
    generation: Generation,
    watch_restarts: AtomicU64,
    catch_up_slots: tokio::sync::Semaphore,
}

impl std::fmt::Debug for Regional {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Regional")
            .field("prefix", &self.prefix)
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

/// The registry's health as the gateway acts on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegistryHealth {
    /// sled: in this process, always current.
    Embedded,
    /// etcd: `stale_for` since the copy was last proven current (`None`: never, since start).
    Regional {
        stale_for: Option<Duration>,
        max_stale: Duration,
        revision: i64,
        watch_restarts: u64,
    },
}

impl RegistryHealth {
    /// False once the copy has gone unconfirmed for longer than `max_stale_secs`: sign-ins and
    /// consent-gated requests are then refused (503).
    pub fn usable(&self) -> bool {
        match self {
            RegistryHealth::Embedded => true,
            RegistryHealth::Regional {
                stale_for,
                max_stale,
                ..
            } => stale_for.is_some_and(|d| d <= *max_stale),
        }
    }

    /// Seconds since the copy was last proven current (0 for sled; `max_stale` + 1 when it
    /// never was, so a dashboard shows the breach).
    pub fn stale_seconds(&self) -> f64 {
        match self {
            RegistryHealth::Embedded => 0.0,
            RegistryHealth::Regional {
                stale_for,
                max_stale,
                ..
            } => stale_for.map_or(max_stale.as_secs_f64() + 1.0, |d| d.as_secs_f64()),
        }
    }
}

/// `registry status`: what a running gateway reports about its registry.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct RegistryStatus {
    pub backend: String,
    /// The etcd revision this gateway's copy has applied (0 for sled).
    pub revision: i64,
    /// Seconds since the copy was last proven current (null when it never was).
    pub stale_seconds: Option<f64>,
    pub max_stale_seconds: u64,
    pub usable: bool,
    pub watch_restarts: u64,
    /// `name url` of every etcd member, or what went wrong asking.
    pub members: Vec<String>,
    pub prefix: Option<String>,
}

impl Regional {
    fn key(&self, tree: &str, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + tree.len() + 1 + key.len());
        k.extend_from_slice(self.prefix.as_bytes());
        k.extend_from_slice(tree.as_bytes());
        k.push(b'/');
        k.extend_from_slice(key);
        k
    }

    pub(crate) fn get(&self, tree: &str, key: &[u8]) -> Option<Vec<u8>> {
        self.read().get(tree, key).map(|(v, _)| v.to_vec())
    }

    pub(crate) fn entries(&self, tree: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.read().entries(tree)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Mirror> {
        self.mirror
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Mirror> {
        self.mirror
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// [`RegistryHealth::usable`] from the one atomic it depends on (every request asks).
    pub(crate) fn usable(&self) -> bool {
        let at = self.fresh_at.load(Ordering::Acquire);
        at > 0
            && self
                .born
                .elapsed()
                .saturating_sub(Duration::from_millis(at - 1))
                <= self.max_stale
    }

    pub(crate) fn health(&self) -> RegistryHealth {
        let at = self.fresh_at.load(Ordering::Acquire);
        let stale_for = (at > 0).then(|| {
            self.born
                .elapsed()
                .saturating_sub(Duration::from_millis(at - 1))
        });
        RegistryHealth::Regional {
            stale_for,
            max_stale: self.max_stale,
            revision: *self.applied.borrow(),
            watch_restarts: self.watch_restarts.load(Ordering::Relaxed),
        }
    }

    /// Puts `value` under a new lease of `ttl`: the key disappears (everywhere) when the lease
    /// is not kept alive. Returns the lease, after this gateway has applied the put.
    pub(crate) async fn put_leased(
        &self,
        tree: &str,
        key: &[u8],
        value: impl FnOnce(i64) -> Vec<u8>,
        ttl: Duration,
    ) -> Result<i64, KvError> {
        let secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let lc = self.client.lease_client();
        let lease = retry_unavailable(|| {
            let mut lc = lc.clone();
            async move { lc.grant(secs, None).await }
        })
        .await?
        .id();
        let value = value(lease);
        let (kv, full) = (self.client.kv_client(), self.key(tree, key));
        let resp = retry_unavailable(|| {
            let (mut kv, full, value) = (kv.clone(), full.clone(), value.clone());
            async move {
                kv.put(
                    full,
                    value,
                    Some(etcd_client::PutOptions::new().with_lease(lease)),
                )
                .await
            }
        })
        .await?;
        let rev = resp.header().map_or(0, |h| h.revision());
        self.wait_applied(rev).await?;
        Ok(lease)
    }

    /// Renews a lease for its whole TTL (one keep-alive round trip).
    pub(crate) async fn keep_alive(&self, lease: i64) -> Result<(), KvError> {
        let (mut keeper, mut stream) = self.client.lease_client().keep_alive(lease).await?;
        keeper.keep_alive().await?;
        match tokio::time::timeout(Duration::from_secs(3), stream.message()).await {
            Ok(Ok(Some(r))) if r.ttl() > 0 => Ok(()),
            Ok(Ok(_)) => Err(KvError::Unavailable(format!("lease {lease:x} has expired"))),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(KvError::Unavailable(
                "lease keep-alive: no answer within 3 s".into(),
            )),
        }
    }

    /// One read-modify-write as an etcd transaction: `f` sees the value at a mod revision, and
    /// the result is written only if the key still has that mod revision; otherwise `f` runs
    /// again on the value the transaction read back. A decision to change nothing is confirmed
    /// the same way (the value it saw is still current), so a refusal is never based on a
    /// stale copy.
    pub(crate) async fn update(
        &self,
        tree: &str,
        key: &[u8],
        mut f: impl FnMut(Option<&[u8]>) -> Option<Vec<u8>>,
    ) -> Result<(), KvError> {
        let full = self.key(tree, key);
        let mut cur: (Option<Vec<u8>>, i64) = match self.read().get(tree, key) {
            Some((v, rev)) => (Some(v.to_vec()), rev),
            None => (None, 0),
        };
        let kv = self.client.kv_client();
        for _ in 0..MAX_TRIES {
            let new = f(cur.0.as_deref());
            let ops = if new == cur.0 {
                vec![]
            } else {
                match &new {
                    Some(v) => vec![TxnOp::put(full.clone(), v.clone(), None)],
                    None => vec![TxnOp::delete(full.clone(), None)],
                }
            };
            let wrote = !ops.is_empty();
            let txn = Txn::new()
                .when([Compare::mod_revision(full.clone(), CompareOp::Equal, cur.1)])
                .and_then(ops)
                .or_else([TxnOp::get(full.clone(), None)]);
            let sent = retry_unavailable(|| {
                let mut kv = kv.clone();
                let txn = txn.clone();
                async move { kv.txn(txn).await }
            })
            .await;
            let resp = match sent {
                Ok(r) => r,
                // Sent to a member that died under it: the outcome is unknown. Read the key
                // back (linearizable, through the members still up) and decide.
                Err(etcd_client::Error::GRpcStatus(st))
                    if matches!(
                        i32::from(st.code()),
                        GRPC_CANCELLED | GRPC_DEADLINE_EXCEEDED
                    ) =>
                {
                    match self.read_back(&full).await? {
                        // Unchanged since we read it: not applied; send it again.
                        (_, rev, _) if rev == cur.1 && cur.1 != 0 => continue,
                        (v, rev, header) if v == new => {
                            // Ours (or the same value written meanwhile): applied.
                            if wrote {
                                self.wait_applied(header.max(rev)).await?;
                            }
                            return Ok(());
                        }
                        (None, _, _) if cur.1 == 0 => continue,
                        (v, rev, _) => {
                            cur = (v, rev);
                            continue;
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            };
            if resp.succeeded() {
                if wrote {
                    let rev = resp.header().map_or(0, |h| h.revision());
                    self.wait_applied(rev).await?;
                }
                return Ok(());
            }
            cur = (None, 0);
            for op in resp.op_responses() {
                if let TxnOpResponse::Get(g) = op {
                    if let Some(kv) = g.kvs().first() {
                        cur = (Some(kv.value().to_vec()), kv.mod_revision());
                    }
                }
            }
        }
        Err(KvError::Contended(
            String::from_utf8_lossy(&full).into_owned(),
            MAX_TRIES,
        ))
    }

    /// One key read back from etcd after a write of unknown outcome: its value, its
    /// modification revision (0 when absent) and the cluster's revision of the read.
    async fn read_back(&self, full: &[u8]) -> Result<(Option<Vec<u8>>, i64, i64), KvError> {
        let kv = self.client.kv_client();
        let resp = retry_unavailable(|| {
            let mut kv = kv.clone();
            let key = full.to_vec();
            async move { kv.get(key, None).await }
        })
        .await?;
        let header = resp.header().map_or(0, |h| h.revision());
        Ok(match resp.kvs().first() {
            Some(kv) => (Some(kv.value().to_vec()), kv.mod_revision(), header),
            None => (None, 0, header),
        })
    }

    /// Brings this gateway's copy up to etcd's current revision (a linearizable read, then
    /// waiting for the watch to apply it), for a request that a lagging copy may have refused
    /// (a session opened through another gateway a few milliseconds ago). At most
    /// `CATCH_UP_SLOTS` at once, each bounded to a second: a flood of bogus cookies cannot turn
    /// into a flood of etcd reads. False when it could not.
    pub(crate) async fn catch_up(&self) -> bool {
        let Ok(_slot) = self.catch_up_slots.try_acquire() else {
            return false;
        };
        let read = async {
            let resp = self
                .client
                .kv_client()
                .get(
                    self.prefix.as_bytes(),
                    Some(
                        etcd_client::GetOptions::new()
                            .with_prefix()
                            .with_count_only(),
                    ),
                )
                .await
                .ok()?;
            let rev = resp.header().map_or(0, |h| h.revision());
            let mut rx = self.applied.subscribe();
            rx.wait_for(|a| *a >= rev).await.ok().map(|_| ())
        };
        tokio::time::timeout(Duration::from_secs(1), read)
            .await
            .ok()
            .flatten()
            .is_some()
    }

    /// Waits until this gateway's copy has applied revision `rev` (read-your-writes).
    async fn wait_applied(&self, rev: i64) -> Result<(), KvError> {
        let mut rx = self.applied.subscribe();
        let reached = tokio::time::timeout(APPLY_WAIT, rx.wait_for(|a| *a >= rev))
            .await
            .is_ok_and(|r| r.is_ok());
        if reached {
            Ok(())
        } else {
            Err(KvError::NotApplied {
                revision: rev,
                waited: APPLY_WAIT,
            })
        }
    }

    /// Backend, revision, staleness and the etcd members (asked of the cluster now).
    pub(crate) async fn status(&self) -> RegistryStatus {
        let health = self.health();
        let members = match tokio::time::timeout(
            Duration::from_secs(3),
            self.client.cluster_client().member_list(),
        )
        .await
        {
            Ok(Ok(m)) => m
                .members()
                .iter()
                .map(|m| format!("{} {}", m.name(), m.client_urls().join(",")))
                .collect(),
            Ok(Err(e)) => vec![format!("(members unknown: {e})")],
            Err(_) => vec!["(members unknown: no answer within 3 s)".into()],
        };
        let (stale_for, revision, watch_restarts) = match health {
            RegistryHealth::Regional {
                stale_for,
                revision,
                watch_restarts,
                ..
            } => (stale_for, revision, watch_restarts),
            RegistryHealth::Embedded => (None, 0, 0),
        };
        RegistryStatus {
            backend: "etcd".into(),
            revision,
            stale_seconds: stale_for.map(|d| d.as_secs_f64()),
            max_stale_seconds: self.max_stale.as_secs(),
            usable: health.usable(),
            watch_restarts,
            members,
            prefix: Some(self.prefix.clone()),
        }
    }

    /// Marks the copy current as of `at` (never moves backwards).
    fn set_fresh(&self, at: Instant) {
        let ms = u64::try_from(at.saturating_duration_since(self.born).as_millis())
            .unwrap_or(u64::MAX - 1)
            + 1;
        self.fresh_at.fetch_max(ms, Ordering::AcqRel);
    }
}

/// Runs an etcd call again when it was refused as `UNAVAILABLE` (gRPC code 14: the client
/// picked a member that is down; the balanced channel keeps offering it). Such a call never
/// reached etcd, so sending it again is safe; a few tries, 50 ms apart.
async fn retry_unavailable<T, F, Fut>(mut call: F) -> Result<T, etcd_client::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let mut tries = 0;
    loop {
        match call().await {
            Err(etcd_client::Error::GRpcStatus(s))
                if i32::from(s.code()) == GRPC_UNAVAILABLE && tries < 6 =>
            {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

pub(crate) fn new_regional(
    client: Client,
    loader: Client,
    cfg: &EtcdConfig,
    max_stale: Duration,
    generation: Generation,
) -> Arc<Regional> {
    Arc::new(Regional {
        client,
        loader,
        prefix: cfg.prefix.clone(),
        endpoints: cfg.endpoints.clone(),
        mirror: std::sync::RwLock::new(Mirror::default()),
        applied: tokio::sync::watch::channel(0).0,
        fresh_at: AtomicU64::new(0),
        born: Instant::now(),
        max_stale,
        generation,
        watch_restarts: AtomicU64::new(0),
        catch_up_slots: tokio::sync::Semaphore::new(CATCH_UP_SLOTS),
    })
}
