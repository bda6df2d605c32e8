//! The one registry interface under [`Store`](super::store::Store): named trees of byte keys
//! and byte values, with two backends behind them.
//!
//! * `sled`: embedded in the state directory (one gateway, the default);
//! * `etcd`: the regional registry shared by every gateway of the network. Reads come from an
//!   in-memory copy kept current by one prefix watch (no etcd round trip on the request path);
//!   writes are etcd transactions that compare the revision they read, and return only once
//!   this gateway has applied the revision they wrote (read-your-writes).
//!
//! Nothing above [`Tree`] knows which backend runs: [`Store`](super::store::Store)'s record
//! logic (compare-and-swap, read-modify-write) is written once against these operations.

pub(crate) mod etcd;
mod sled_tree;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use etcd::{RegistryHealth, RegistryStatus};

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("registry (sled): {0}")]
    Sled(#[from] sled::Error),
    #[error("regional registry (etcd): {0}")]
    Etcd(#[from] etcd_client::Error),
    /// The regional registry cannot be reached, or a write did not come back in time.
    #[error("regional registry unavailable: {0}")]
    Unavailable(String),
    /// The change is in etcd, but this gateway's copy has not caught up with it in time.
    #[error(
        "the change was written to the regional registry (revision {revision}) but this gateway has not applied it within {waited:?}: its watch is behind or lost"
    )]
    NotApplied { revision: i64, waited: Duration },
    /// A read-modify-write that kept losing to concurrent writers.
    #[error("record {0:?} kept changing under {1} tries")]
    Contended(String, u32),
    #[error("regional registry setup: {0}")]
    Setup(String),
}

/// Which backend holds the registries.
#[derive(Clone, Debug)]
pub(crate) enum Backend {
    Sled(sled::Db),
    Etcd(Arc<etcd::Regional>),
}

/// A tree's (key, value) pairs, in key order.
pub(crate) type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// One named tree of the registry.
#[derive(Clone, Debug)]
pub(crate) struct Tree {
    imp: TreeImpl,
}

#[derive(Clone, Debug)]
enum TreeImpl {
    Sled(sled::Tree),
    Etcd {
        reg: Arc<etcd::Regional>,
        name: &'static str,
    },
}

impl Backend {
    pub(crate) fn tree(&self, name: &'static str) -> Result<Tree, KvError> {
        Ok(Tree {
            imp: match self {
                Backend::Sled(db) => TreeImpl::Sled(db.open_tree(name)?),
                Backend::Etcd(reg) => TreeImpl::Etcd {
                    reg: reg.clone(),
                    name,
                },
            },
        })
    }

    /// Makes every change so far durable: sled flushes; an etcd write is durable (on a quorum)
    /// when acknowledged, so there is nothing left to do.
    pub(crate) fn flush(&self) -> Result<(), KvError> {
        match self {
            Backend::Sled(db) => {
                db.flush()?;
                Ok(())
            }
            Backend::Etcd(_) => Ok(()),
        }
    }

    /// How the registry is doing: always fresh for sled; for etcd, how long since this
    /// gateway's copy was last confirmed current.
    pub(crate) fn health(&self) -> RegistryHealth {
        match self {
            Backend::Sled(_) => RegistryHealth::Embedded,
            Backend::Etcd(reg) => reg.health(),
        }
    }

    /// True while the registry can be trusted (sled always; etcd: confirmed current within
    /// `max_stale_secs`), without building the whole [`RegistryHealth`].
    pub(crate) fn usable(&self) -> bool {
        match self {
            Backend::Sled(_) => true,
            Backend::Etcd(reg) => reg.usable(),
        }
    }

    pub(crate) fn is_regional(&self) -> bool {
        matches!(self, Backend::Etcd(_))
    }

    pub(crate) fn etcd(&self) -> Option<&Arc<etcd::Regional>> {
        match self {
            Backend::Sled(_) => None,
            Backend::Etcd(r) => Some(r),
        }
    }
}

impl Tree {
    /// The value of `key` (etcd: from this gateway's in-memory copy).
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        match &self.imp {
            TreeImpl::Sled(t) => Ok(t.get(key)?.map(|v| v.to_vec())),
            TreeImpl::Etcd { reg, name } => Ok(reg.get(name, key)),
        }
    }

    /// Every entry, in key order.
    pub(crate) fn entries(&self) -> Result<Entries, KvError> {
        match &self.imp {
            TreeImpl::Sled(t) => t
                .iter()
                .map(|kv| {
                    let (k, v) = kv?;
                    Ok((k.to_vec(), v.to_vec()))
                })
                .collect(),
            TreeImpl::Etcd { reg, name } => Ok(reg.entries(name)),
        }
    }

    /// Sets `key` to `value` whatever it was.
    #[allow(dead_code)] // kept for record families that overwrite (not used by every build)
    pub(crate) async fn insert(&self, key: &[u8], value: Vec<u8>) -> Result<(), KvError> {
        match &self.imp {
            TreeImpl::Sled(t) => {
                t.insert(key, value)?;
                Ok(())
            }
            TreeImpl::Etcd { reg, name } => reg.update(name, key, |_| Some(value.clone())).await,
        }
    }

    /// Removes `key`; the value it had.
    pub(crate) async fn remove(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        match &self.imp {
            TreeImpl::Sled(t) => Ok(t.remove(key)?.map(|v| v.to_vec())),
            TreeImpl::Etcd { reg, name } => {
                let mut old = None;
                reg.update(name, key, |cur| {
                    old = cur.map(<[u8]>::to_vec);
                    None
                })
                .await?;
                Ok(old)
            }
        }
    }

    /// Sets `key` to `new` (`None`: removes it) only if its value is `expected` (`None`:
    /// absent). True when swapped.
    pub(crate) async fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<Vec<u8>>,
    ) -> Result<bool, KvError> {
        match &self.imp {
            TreeImpl::Sled(t) => Ok(t.compare_and_swap(key, expected, new)?.is_ok()),
            TreeImpl::Etcd { reg, name } => {
                let mut swapped = false;
                reg.update(name, key, |cur| {
                    swapped = cur == expected;
                    if swapped {
                        new.clone()
                    } else {
                        cur.map(<[u8]>::to_vec)
                    }
                })
                .await?;
                Ok(swapped)
            }
        }
    }

    /// One atomic read-modify-write: `f` gets the current value and returns the new one
    /// (`None` removes). `f` may run more than once (when the record changed meanwhile); the
    /// last run is the one stored. It must do no I/O.
    pub(crate) async fn update(
        &self,
        key: &[u8],
        f: impl FnMut(Option<&[u8]>) -> Option<Vec<u8>>,
    ) -> Result<(), KvError> {
        match &self.imp {
            TreeImpl::Sled(t) => {
                t.fetch_and_update(key, f)?;
                Ok(())
            }
            TreeImpl::Etcd { reg, name } => reg.update(name, key, f).await,
        }
    }
}

/// The generation counter shared by the store and the etcd watch (every applied change moves
/// it, so a cached identity is re-read).
#[derive(Clone, Debug, Default)]
pub(crate) struct Generation(Arc<AtomicU64>);

impl Generation {
    pub(crate) fn bump(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

pub(crate) use sled_tree::open_sled;
