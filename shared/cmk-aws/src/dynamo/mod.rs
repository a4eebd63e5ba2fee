//! The DynamoDB [`Store`](cmk_core::ports::Store): one table, every invariant enforced by
//! conditional writes and `TransactWriteItems`.
//!
//! # Table design
//!
//! Keys `pk` (S) and `sk` (S); on-demand capacity.
//!
//! | item | pk | sk | attributes |
//! | --- | --- | --- | --- |
//! | org head | `ORG#{org}` | `#HEAD` | `version` (N), `external_id`, `default_key_id`, `current_job_id` |
//! | key | `ORG#{org}` | `KEY#{key}` | `seq`, `name`, `spec` (JSON), `state`, `health` (JSON), `created_at`, `created_by`; unless disabled, `gsi3pk` = `KEYS` and `gsi3sk` = last check (µs, zero-padded) |
//! | key name | `ORG#{org}` | `NAME#{lowercased name}` | `key_id` (uniqueness guard) |
//! | data-key count | `ORG#{org}` | `COUNT#{key}#{shard}` | `n` (N) — sharded, summed on read |
//! | job | `ORG#{org}` | `JOB#{job}` | `kind`, `state`, `sources`, `target`, `total`, `done`, `failed`, `generation`, `progress_shards`, times; `gsi2pk` = `RUNNING` while running |
//! | job progress | `ORG#{org}` | `PROG#{job}#{shard:02}` | `state`, `generation` (copies of the job's), `done`, `failed`, `updated_at` (last batch) — summed on read |
//! | job failure | `ORG#{org}` | `FAIL#{job}#{generation:08}#{data key}` | `key_id`, `reason`, `message` |
//! | audit event | `AUDIT#{org}` | `{event id}` (UUIDv7, sorts by time) | the event |
//! | data key | `DK#{org}#{id}` | `DK` | `key_id`, `wrapped` (B), `version`, `created_at`, `gsi1pk` = `{org}#{key}#{partition}`, `gsi1sk` = id; `moved_by` = the job that last moved it |
//!
//! Indexes: `by_wrapping_key` (`gsi1pk`, `gsi1sk`) enumerates a key's data keys per partition;
//! `running_jobs` (`gsi2pk`, `gsi2sk`) is sparse and lists running jobs for the sweep;
//! `keys_by_check` (`gsi3pk`, `gsi3sk`) is sparse and lists the keys that are not disabled,
//! least recently checked first, for the continuous health checks. Its one partition takes
//! one write per key per health check (every 15 minutes by default): about 110 writes/s for
//! 100,000 keys, a tenth of what one index partition takes. A key item written before this
//! index existed has no `gsi3pk` and is not checked until its item is rewritten (an admin
//! change to that key); no deployment predates it.
//!
//! # Capacity
//!
//! Every data key is its own partition key, so data-key reads and rewrites spread over the whole
//! table. A data key's partition in `by_wrapping_key` is a hash of its id modulo
//! [`PARTITIONS`], so the index writes of a large org's rewrap (each move changes `gsi1pk`)
//! spread over `PARTITIONS` index partitions per key instead of one (each index partition takes
//! about 1,000 writes/s), and workers enumerate the partitions in parallel. Counters are
//! sharded for the same reason: data-key inserts pick one of [`COUNT_SHARDS`], a job's moves
//! one of [`PROGRESS_SHARDS`] others. The org head is written only by admin actions, never per
//! data key.
//!
//! DynamoDB cancels a transaction that touches an item another transaction is writing
//! (`TransactionConflict`), so an item that every batch of a job wrote would let one batch
//! commit at a time, a few thousand data keys per second at most. No item is on every batch's
//! path: each batch transaction writes one progress shard of its job and the move-counter
//! shards beside it, all picked at random per transaction, and the job item is written only by
//! the job's state changes. The shards carry the job's state and generation (every state change
//! writes all of them in the same transaction as the job item), so a batch's condition needs
//! only the shard it writes. A transaction that still collides is tried again on another shard.
//!
//! # Exactly-once progress
//!
//! A batch commit is one `TransactWriteItems` of up to [`MOVES_PER_TRANSACTION`] conditional
//! moves (each: still wrapped by the source at the version read), a `done` increment on a
//! progress shard (conditional on the job still running at the batch's generation) and the
//! counter updates. A
//! duplicate or stale move cancels the transaction; the adapter drops the moves whose condition
//! failed (the cancellation reasons say which) and commits the rest, so each data key is counted
//! once. About 1.03 item writes per moved data key.
//!
//! A failure is one transaction per data key: the `FAIL#` item (only if absent), `failed += 1` on
//! a progress shard (job running at the generation) and a version bump of the data key (only if
//! still at the source), so a concurrent duplicate that moved it at the old version loses, and no
//! data key is both done and failed. A batch that later moves a failed data key clears its failure
//! first (`FAIL#` deleted, `failed -= 1`, only while the data key is still at the move's source
//! and version), so a crash between the two leaves it merely pending.
//!
//! Every transaction carries a `ClientRequestToken` ([`request_token`]): when one succeeded but
//! its answer was lost, the SDK's retry is recognised by DynamoDB as the same transaction and
//! answers success, instead of failing its own conditions and reading as a lost race.
//!
//! # Layout
//!
//! This file only routes each part of the [`Store`](cmk_core::ports::Store) port to the module of
//! its concern, and imports from them, never the other way round: `store` ([`DynamoStore`] and its
//! plumbing: reads, queries, transactions), `schema` (every key and constant), `codec` (items to
//! and from the model), `error` (SDK errors and cancellation reasons), `org_commit` (the snapshot
//! and its commit), `rewrap` (the batch protocol and job progress), `data_keys`, `audit`.

mod audit;
mod codec;
mod data_keys;
mod error;
mod org_commit;
mod rewrap;
mod schema;
mod store;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cmk_core::error::StoreError;
use cmk_core::model::{
    AuditEvent, DataKeyId, DataKeyRecord, Health, Job, JobId, KeyId, KeyRecord, OrgId,
};
use cmk_core::ports::{
    AuditLog, BatchCommit, DataKeyStore, JobProgress, OrgCommit, OrgSnapshot, OrgStore,
    RewrapProgress,
};

pub use schema::{
    partition_of, BY_WRAPPING_KEY, COUNT_SHARDS, KEYS_BY_CHECK, MOVES_PER_TRANSACTION, PARTITIONS,
    PROGRESS_SHARDS, RUNNING_JOBS,
};
pub use store::{request_token, DynamoStore};

/// The port, by concern: each method is implemented in the module of its concern.

#[async_trait]
impl OrgStore for DynamoStore {
    async fn ensure_org(&self, org: &OrgId, new_external_id: &str) -> Result<String, StoreError> {
        self.put_org_head(org, new_external_id).await
    }

    async fn load_org(&self, org: &OrgId) -> Result<OrgSnapshot, StoreError> {
        self.read_org(org).await
    }

    async fn commit(&self, org: &OrgId, c: OrgCommit) -> Result<Option<Job>, StoreError> {
        self.commit_org(org, c).await
    }

    async fn get_key(&self, org: &OrgId, key: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.read_key(org, key).await
    }

    async fn set_key_health(
        &self,
        org: &OrgId,
        key: &KeyId,
        health: &Health,
    ) -> Result<Option<Health>, StoreError> {
        self.write_key_health(org, key, health).await
    }

    async fn keys_due_for_check(
        &self,
        checked_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(OrgId, KeyRecord)>, StoreError> {
        self.query_keys_due(checked_before, limit).await
    }
}

#[async_trait]
impl DataKeyStore for DynamoStore {
    async fn insert_data_keys(
        &self,
        org: &OrgId,
        keys: &[DataKeyRecord],
    ) -> Result<(), StoreError> {
        self.put_data_keys(org, keys).await
    }

    async fn get_data_key(
        &self,
        org: &OrgId,
        id: &DataKeyId,
    ) -> Result<Option<DataKeyRecord>, StoreError> {
        self.read_data_key(org, id).await
    }

    async fn list_data_keys(
        &self,
        org: &OrgId,
        key: &KeyId,
        partition: u32,
        after: Option<&DataKeyId>,
        until: Option<&DataKeyId>,
        limit: usize,
        not_moved_by: Option<&JobId>,
    ) -> Result<Vec<DataKeyRecord>, StoreError> {
        self.query_data_keys(org, key, partition, after, until, limit, not_moved_by)
            .await
    }

    async fn list_data_key_ids(
        &self,
        org: &OrgId,
        key: &KeyId,
        partition: u32,
        after: Option<&DataKeyId>,
        limit: usize,
    ) -> Result<Vec<DataKeyId>, StoreError> {
        self.query_data_key_ids(org, key, partition, after, limit)
            .await
    }

    fn data_key_partitions(&self) -> u32 {
        PARTITIONS
    }
}

#[async_trait]
impl RewrapProgress for DynamoStore {
    async fn get_job(&self, org: &OrgId, job: &JobId) -> Result<Option<Job>, StoreError> {
        self.read_job(org, job).await
    }

    async fn set_job_throttle(
        &self,
        org: &OrgId,
        job: &JobId,
        generation: u32,
        rate: Option<u32>,
    ) -> Result<(), StoreError> {
        self.write_job_throttle(org, job, generation, rate).await
    }

    async fn claim_replan(
        &self,
        org: &OrgId,
        job: &JobId,
        generation: u32,
        idle_before: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.claim_job_replan(org, job, generation, idle_before)
            .await
    }

    async fn running_jobs(&self) -> Result<Vec<(OrgId, Job)>, StoreError> {
        self.query_running_jobs().await
    }

    async fn commit_batch(
        &self,
        org: &OrgId,
        batch: BatchCommit,
    ) -> Result<JobProgress, StoreError> {
        self.commit_rewrap_batch(org, batch).await
    }
}

#[async_trait]
impl AuditLog for DynamoStore {
    async fn append_audit(&self, org: &OrgId, events: &[AuditEvent]) -> Result<(), StoreError> {
        self.put_audit_events(org, events).await
    }

    async fn list_audit(
        &self,
        org: &OrgId,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<(Vec<AuditEvent>, Option<String>), StoreError> {
        self.query_audit(org, limit, cursor).await
    }
}
