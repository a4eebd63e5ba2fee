//! The table's keys: every partition and sort key is built here, and nowhere else.

use chrono::{DateTime, Utc};
use cmk_core::model::{DataKeyId, JobId, KeyId, OrgId};
use cmk_core::ports::BatchCommit;
use rand::Rng;

/// Index partitions of a wrapping key's data keys.
pub const PARTITIONS: u32 = 16;

/// Shards of each data-key counter that data-key inserts write (and a job's start checks).
pub const COUNT_SHARDS: u32 = 4;

/// Shards of a job's progress, and of each data-key counter that the job's moves write: the
/// batches of one job spread their commits over this many items instead of colliding on one.
pub const PROGRESS_SHARDS: u32 = 16;

/// Data-key moves per transaction (100 items at most, minus a progress shard and two counters).
pub const MOVES_PER_TRANSACTION: usize = 96;

/// Index names.
pub const BY_WRAPPING_KEY: &str = "by_wrapping_key";

pub const RUNNING_JOBS: &str = "running_jobs";

/// The health checks' work list: every key that is not disabled, by last check.
pub const KEYS_BY_CHECK: &str = "keys_by_check";

/// The one partition of [`KEYS_BY_CHECK`].
pub(super) const CHECKED_KEYS: &str = "KEYS";

/// A key's sort key in [`KEYS_BY_CHECK`]: its last check in microseconds since the epoch,
/// zero-padded so that text order is time order; a key never checked sorts first.
pub(super) fn gsi3sk(checked_at: Option<&DateTime<Utc>>) -> String {
    format!(
        "{:020}",
        checked_at.map_or(0, |t| t.timestamp_micros().max(0))
    )
}

pub(super) const HEAD: &str = "#HEAD";

pub(super) fn org_pk(org: &OrgId) -> String {
    format!("{ORG_PREFIX}{org}")
}

const ORG_PREFIX: &str = "ORG#";

/// The org an org item's partition key names.
pub(super) fn org_of_pk(pk: &str) -> Option<OrgId> {
    pk.strip_prefix(ORG_PREFIX).map(OrgId::from_trusted)
}

pub(super) fn dk_pk(org: &OrgId, id: &DataKeyId) -> String {
    format!("DK#{org}#{id}")
}

/// The sort key of a data key item (its partition key names it).
pub(super) const DK_SK: &str = "DK";
/// The data-key attribute naming the job that last moved it (every move sets it).
pub(super) const MOVED_BY: &str = "moved_by";

pub(super) fn job_sk(job: &JobId) -> String {
    format!("JOB#{job}")
}

/// The sort-key prefix of an org's keys.
pub(super) const KEY_PREFIX: &str = "KEY#";

pub(super) fn key_sk(key: &KeyId) -> String {
    format!("{KEY_PREFIX}{key}")
}

/// The uniqueness guard of a key name (names are unique regardless of case).
pub(super) fn name_sk(name: &str) -> String {
    format!("NAME#{}", name.to_lowercase())
}

/// The partition of an org's audit events.
pub(super) fn audit_pk(org: &OrgId) -> String {
    format!("AUDIT#{org}")
}

/// The sort key of one progress shard of a job.
pub(super) fn progress_sk(job: &JobId, shard: u32) -> String {
    format!("{}{shard:02}", progress_prefix(job))
}

pub(super) fn progress_prefix(job: &JobId) -> String {
    format!("PROG#{job}#")
}

/// A stable hash (FNV-1a) of a data key id, for its index partition.
pub fn partition_of(id: &DataKeyId) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in id.as_str().bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % PARTITIONS
}

pub(super) fn gsi1pk(org: &OrgId, key: &KeyId, partition: u32) -> String {
    format!("{org}#{key}#{partition}")
}

pub(super) fn random_shard() -> u32 {
    rand::thread_rng().gen_range(0..COUNT_SHARDS)
}

/// A counter item's key, for one shard.
pub(super) fn count_sk(key: &KeyId, shard: u32) -> String {
    format!("{COUNT_PREFIX}{key}#{shard}")
}

/// The sort-key prefix of an org's counter shards.
pub(super) const COUNT_PREFIX: &str = "COUNT#";

/// The counter shard that a job's moves write beside progress shard `shard`: apart from the
/// shards inserts write, so moves and inserts never collide, and a job's start needs to check
/// only the insert shards (no job runs then, so nothing moves).
pub(super) fn move_count_sk(key: &KeyId, shard: u32) -> String {
    count_sk(key, COUNT_SHARDS + shard)
}

/// The item recording that a data key failed in a job's generation.
pub(super) fn fail_sk(batch: &BatchCommit, data_key: &DataKeyId) -> String {
    format!("{}{data_key}", fail_prefix(&batch.job_id, batch.generation))
}

/// The sort-key prefix of a job's failures in one generation.
pub(super) fn fail_prefix(job: &JobId, generation: u32) -> String {
    format!("FAIL#{job}#{generation:08}#")
}

#[cfg(test)]
mod tests {
    use super::*;
    use cmk_core::model::DataKeyId;

    /// `partition_of` is persisted in every data key's index entry: changing its values would
    /// silently orphan them. These are the values the table holds.
    #[test]
    fn partition_of_keeps_its_values() {
        const PINNED: [(&str, u32); 4] = [
            ("00000000-0000-7000-8000-000000000000", 14),
            ("0192f3a4-5b6c-7d8e-9f00-112233445566", 0),
            ("01939a1e-7c2a-7b1c-a3f4-deadbeefcafe", 13),
            ("x", 7),
        ];
        for (id, partition) in PINNED {
            assert_eq!(
                partition_of(&DataKeyId::from_trusted(id)),
                partition,
                "{id}"
            );
        }
    }
}
