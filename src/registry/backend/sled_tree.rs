//! The embedded backend: sled in the state directory.

use std::path::Path;

use super::KvError;

/// Opens (creating) the sled database in `dir`. Only one process may hold it.
pub(crate) fn open_sled(dir: &Path) -> Result<sled::Db, KvError> {
    let db = sled::Config::new()
        .path(dir)
        .flush_every_ms(Some(200))
        .open()?;
    if db.was_recovered() {
        tracing::debug!(dir = %dir.display(), "store opened");
    }
    Ok(db)
}
