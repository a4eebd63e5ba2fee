//! Embedded adapters of the CMK ports, so the whole service runs as one local process with no
//! cloud account: a SQLite store and durable queue sharing one database, and a local key
//! provider keeping keys in the data directory.

pub mod data_keys;
mod db;
mod keys;
mod names;
mod oidc_keys;
mod queue;
mod samples;
pub mod secret_file;
mod simulated_kms;
mod store;
mod unavailable;

pub use db::{Database, SCHEMA_VERSION};
pub use keys::LocalKeyProvider;
pub use oidc_keys::LocalOidcKeys;
pub use queue::{QueueConfig, SqliteQueue};
pub use samples::{Sample, SampleStore};
pub use simulated_kms::{Request as SimulatedRequest, SimulatedKms, SimulatedKmsConfig};
pub use store::SqliteStore;

use std::path::Path;
use std::sync::Arc;

use cmk_core::error::StoreError;

/// The file name of the database inside a data directory.
pub const DATABASE_FILE: &str = "cmk.db";

/// Opens the embedded backends of a data directory (creating what is missing).
pub fn open(
    data_dir: &Path,
    queue: QueueConfig,
) -> Result<(SqliteStore, SqliteQueue, LocalKeyProvider), StoreError> {
    std::fs::create_dir_all(data_dir).map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let db = Database::open(&data_dir.join(DATABASE_FILE))?;
    let keys = LocalKeyProvider::open(&data_dir.join("keys"))
        .map_err(|e| StoreError::Unavailable(format!("key directory: {e}")))?;
    Ok((
        SqliteStore::new(Arc::clone(&db)),
        SqliteQueue::new(db, queue),
        keys,
    ))
}
