//! Audit chain heads witnessed by the network (issue 14): every gateway publishes the head of
//! its own audit log (`seq` and chain hash) to the regional registry, tree `audit_heads`,
//! key = its site id. `audit verify` then checks its log still contains the head the network
//! holds, so a log rewritten on one machine (chain, anchor and index recomputed) is detected.

use serde::{Deserialize, Serialize};

use super::{decode, encode, Store, StoreError};

/// One gateway's audit chain head as the network holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedHead {
    /// Line number of the last durable record.
    pub seq: u64,
    /// Its chain hash (64 hex digits).
    pub hash: String,
    /// When it was published (RFC 3339, Japan time).
    pub at: String,
}

impl Store {
    /// Publishes this site's audit head; it only moves forward (a lower `seq` than the one the
    /// network holds is not written). True when written.
    pub async fn publish_audit_head(
        &self,
        site: &str,
        head: &PublishedHead,
    ) -> Result<bool, StoreError> {
        let mut wrote = false;
        let new = encode(head);
        self.audit_heads
            .update(site.as_bytes(), |old| {
                wrote = false;
                if let Some(old) = old {
                    if let Ok(o) = serde_json::from_slice::<PublishedHead>(old) {
                        if o.seq >= head.seq {
                            return Some(old.to_vec());
                        }
                    }
                }
                wrote = true;
                Some(new.clone())
            })
            .await?;
        Ok(wrote)
    }

    /// The audit head the network holds for `site`.
    pub fn audit_head(&self, site: &str) -> Result<Option<PublishedHead>, StoreError> {
        self.audit_heads
            .get(site.as_bytes())?
            .map(|v| decode("audit_heads", site.as_bytes(), &v))
            .transpose()
    }

    /// Every site's published audit head.
    pub fn audit_heads(&self) -> Result<Vec<(String, PublishedHead)>, StoreError> {
        self.audit_heads
            .entries()?
            .iter()
            .map(|(k, v)| {
                Ok((
                    String::from_utf8_lossy(k).into_owned(),
                    decode("audit_heads", k, v)?,
                ))
            })
            .collect()
    }

    /// True when audit heads are witnessed by other machines (the regional registry; an
    /// embedded sled registry lives on the same disk as the log and witnesses nothing).
    pub fn witnesses_audit(&self) -> bool {
        self.backend.is_regional()
    }
}
