//! What several benchmarks share: seeding data keys, and the peak memory of the process.

use anyhow::{anyhow, Result};
use cmk_core::crypto::DataKey;
use cmk_core::model::{data_key_context, DataKeyId, DataKeyRecord, OrgId};
use cmk_core::ports::{Kek, KeyProvider, Store};
use cmk_embedded::LocalKeyProvider;

/// Peak resident memory of this process, from /proc (Linux).
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Inserts `n` data keys wrapped by `kek`, 10,000 per store call.
pub async fn seed(
    store: &dyn Store,
    keys: &LocalKeyProvider,
    org: &OrgId,
    kek: &Kek,
    n: u64,
) -> Result<()> {
    let mut left = n;
    while left > 0 {
        let count = left.min(10_000) as usize;
        let mut records = Vec::with_capacity(count);
        for _ in 0..count {
            let id = DataKeyId::generate();
            let wrapped = keys
                .wrap(kek, &data_key_context(org, &id), &DataKey::generate())
                .await
                .map_err(|e| anyhow!("{e}"))?;
            records.push(DataKeyRecord {
                id,
                key_id: kek.key_id.clone(),
                wrapped: wrapped.blob,
                version: 0,
                created_at: cmk_core::model::now(),
            });
        }
        store.insert_data_keys(org, &records).await?;
        left -= count as u64;
    }
    Ok(())
}
