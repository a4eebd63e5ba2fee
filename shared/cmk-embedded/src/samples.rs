//! Sample ciphertexts written by `cmk seed` and checked by `cmk verify`: proof that data
//! encrypted before any number of re-encryptions still decrypts to the same bytes. A local tool's
//! table, not a port.

use std::sync::Arc;

use cmk_core::error::StoreError;
use cmk_core::model::{DataKeyId, OrgId};
use rusqlite::{params, TransactionBehavior};

use crate::db::Database;
use crate::unavailable::unavailable;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS samples (
    org TEXT NOT NULL,
    data_key_id TEXT NOT NULL,
    ciphertext TEXT NOT NULL,
    plaintext BLOB NOT NULL,
    PRIMARY KEY (org, data_key_id)
) WITHOUT ROWID;";

/// One sample: a ciphertext and the bytes it must decrypt to.
#[derive(Clone, Debug)]
pub struct Sample {
    pub data_key_id: DataKeyId,
    pub ciphertext: String,
    pub plaintext: Vec<u8>,
}

#[derive(Clone, Debug)]
pub struct SampleStore {
    db: Arc<Database>,
}

impl SampleStore {
    pub fn open(db: Arc<Database>) -> Result<Self, StoreError> {
        db.with_writer(|conn| conn.execute_batch(SCHEMA))
            .map_err(unavailable)?;
        Ok(Self { db })
    }

    pub async fn insert(&self, org: &OrgId, samples: Vec<Sample>) -> Result<(), StoreError> {
        let org = org.to_string();
        self.db
            .write(move |conn| {
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(unavailable)?;
                {
                    let mut stmt = tx
                        .prepare_cached(
                            "INSERT OR REPLACE INTO samples (org, data_key_id, ciphertext, plaintext)
                             VALUES (?1, ?2, ?3, ?4)",
                        )
                        .map_err(unavailable)?;
                    for s in &samples {
                        stmt.execute(params![org, s.data_key_id.as_str(), s.ciphertext, s.plaintext])
                            .map_err(unavailable)?;
                    }
                }
                tx.commit().map_err(unavailable)
            })
            .await
    }

    /// Samples in data key id order after `after`.
    pub async fn page(
        &self,
        org: &OrgId,
        after: Option<&DataKeyId>,
        limit: usize,
    ) -> Result<Vec<Sample>, StoreError> {
        let org = org.to_string();
        let after = after.map(|a| a.to_string()).unwrap_or_default();
        self.db
            .read(move |conn| {
                conn.prepare_cached(
                    "SELECT data_key_id, ciphertext, plaintext FROM samples
                     WHERE org = ?1 AND data_key_id > ?2 ORDER BY data_key_id LIMIT ?3",
                )
                .map_err(unavailable)?
                .query_map(params![org, after, limit as i64], |r| {
                    Ok(Sample {
                        data_key_id: DataKeyId::from_trusted(r.get::<_, String>(0)?),
                        ciphertext: r.get(1)?,
                        plaintext: r.get(2)?,
                    })
                })
                .map_err(unavailable)?
                .collect::<Result<_, _>>()
                .map_err(unavailable)
            })
            .await
    }

    pub async fn count(&self, org: &OrgId) -> Result<u64, StoreError> {
        let org = org.to_string();
        self.db
            .read(move |conn| {
                conn.query_row("SELECT COUNT(*) FROM samples WHERE org = ?1", [org], |r| {
                    r.get::<_, i64>(0)
                })
                .map(|n| n as u64)
                .map_err(unavailable)
            })
            .await
    }
}
