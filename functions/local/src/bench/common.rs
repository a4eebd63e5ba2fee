//! What several benchmarks share: seeding data keys, the rate-limited key their jobs move data
//! keys to, and the peak memory of the process.

use anyhow::{anyhow, Context, Result};
use cmk_core::crypto::DataKey;
use cmk_core::model::{data_key_context, DataKeyId, DataKeyRecord, Job, Key, OrgId};
use cmk_core::ports::{Kek, KeyProvider, Store};
use cmk_core::service::NewKeySpec;
use cmk_core::Cmk;
use cmk_embedded::LocalKeyProvider;

/// Peak resident memory of this process, from /proc (Linux).
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// CPU time this process has used (user and system), from `/proc/self/stat` on Linux.
pub fn cpu_time() -> Option<std::time::Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces), closed by the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // Linux reports CPU time in clock ticks of 1/100 s (USER_HZ) on every platform we run.
    Some(std::time::Duration::from_millis(ticks * 10))
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
                row_hint: None,
            });
        }
        store.insert_data_keys(org, &records).await?;
        left -= count as u64;
    }
    Ok(())
}

/// Adds the org's first key, an `aws-kms` key (served by the KMS stand-in) with `limit` as its
/// re-encryption rate limit: it becomes the default, and the adopt job it starts is returned.
pub async fn add_limited_key(cmk: &Cmk, org: &OrgId, limit: u32) -> Result<(Key, Job)> {
    let (key, job) = cmk
        .add_key(
            "bench",
            org,
            "limited",
            NewKeySpec::AwsKms {
                role_arn: "arn:aws:iam::111122223333:role/cmk".into(),
                key_arn:
                    "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
                        .into(),
                rewrap_rate_limit: Some(limit),
                trust: Some(cmk_core::model::TrustMode::ExternalId),
            },
        )
        .await?;
    Ok((key, job.context("adding the first key started no job")?))
}
