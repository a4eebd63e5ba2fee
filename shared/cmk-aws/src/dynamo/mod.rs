//! The DynamoDB [`Store`]: one table, every invariant enforced by conditional writes and
//! `TransactWriteItems`.
//!
//! # Table design
//!
//! Keys `pk` (S) and `sk` (S); on-demand capacity.
//!
//! | item | pk | sk | attributes |
//! | --- | --- | --- | --- |
//! | org head | `ORG#{org}` | `#HEAD` | `version` (N), `external_id`, `default_key_id`, `current_job_id` |
//! | key | `ORG#{org}` | `KEY#{key}` | `seq`, `name`, `spec` (JSON), `state`, `health` (JSON), `created_at`, `created_by` |
//! | key name | `ORG#{org}` | `NAME#{lowercased name}` | `key_id` (uniqueness guard) |
//! | data-key count | `ORG#{org}` | `COUNT#{key}#{shard}` | `n` (N) — sharded, summed on read |
//! | job | `ORG#{org}` | `JOB#{job}` | `kind`, `state`, `sources`, `target`, `total`, `done`, `failed`, `generation`, `progress_shards`, times; `gsi2pk` = `RUNNING` while running |
//! | job progress | `ORG#{org}` | `PROG#{job}#{shard:02}` | `state`, `generation` (copies of the job's), `done`, `failed`, `updated_at` (last batch) — summed on read |
//! | job failure | `ORG#{org}` | `FAIL#{job}#{generation:08}#{data key}` | `key_id`, `reason`, `message` |
//! | audit event | `AUDIT#{org}` | `{event id}` (UUIDv7, sorts by time) | the event |
//! | data key | `DK#{org}#{id}` | `DK` | `key_id`, `wrapped` (B), `version`, `created_at`, `gsi1pk` = `{org}#{key}#{partition}`, `gsi1sk` = id |
//!
//! Indexes: `by_wrapping_key` (`gsi1pk`, `gsi1sk`) enumerates a key's data keys per partition;
//! `running_jobs` (`gsi2pk`, `gsi2sk`) is sparse and lists running jobs for the sweep.
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
//! A failure is one transaction per data key: the `FAIL#` item (only if absent), `failed += 1`
//! on a progress shard (job running at the generation) and a version bump of the data key (only if still at the
//! source), so a concurrent duplicate that moved it at the old version loses, and no data key is
//! both done and failed. A batch that later moves a failed data key clears its failure first
//! (`FAIL#` deleted, `failed -= 1`, only while the data key is still at the move's source and
//! version), so a crash between the two leaves it merely pending.
//!
//! Every transaction carries a `ClientRequestToken` ([`request_token`]): when one succeeded but
//! its answer was lost, the SDK's retry is recognised by DynamoDB as the same transaction and
//! answers success, instead of failing its own conditions and reading as a lost race.
//!
//! # Layout
//!
//! [`DynamoStore`] and its plumbing (reads, queries, transactions) are here; each part of the
//! [`Store`] port is implemented in the module of its concern, and this file only routes to
//! them: `schema` (every key and constant), `codec` (items to and from the model), `error`
//! (SDK errors and cancellation reasons), `org_commit` (the snapshot and its commit), `rewrap`
//! (the batch protocol and job progress), `data_keys`, `audit`.

mod audit;
mod codec;
mod data_keys;
mod error;
mod org_commit;
mod rewrap;
mod schema;

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem, Update};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};
use cmk_core::error::StoreError;
use cmk_core::model::{
    AuditEvent, DataKeyId, DataKeyRecord, Health, Job, JobId, KeyId, KeyRecord, OrgId,
};
use cmk_core::ports::{
    AuditLog, BatchCommit, DataKeyStore, JobProgress, OrgCommit, OrgSnapshot, OrgStore,
    RewrapProgress,
};
use rand::Rng;

use codec::{n, s};
use error::{build, failed_conditions, sdk_err};
use schema::org_pk;

pub use schema::{
    partition_of, BY_WRAPPING_KEY, COUNT_SHARDS, MOVES_PER_TRANSACTION, PARTITIONS,
    PROGRESS_SHARDS, RUNNING_JOBS,
};

type Item = HashMap<String, AttributeValue>;

/// Tries of a transaction that collides with concurrent ones on the same items.
const TRANSACTION_ATTEMPTS: u32 = 8;

/// The pause before trying again a transaction that collided for the `attempt`-th time:
/// exponential from 20 ms, with jitter so that the colliding callers spread out.
async fn collision_backoff(attempt: u32) {
    let jitter = rand::thread_rng().gen_range(0..20u64);
    tokio::time::sleep(Duration::from_millis((10 << attempt.min(6)) + jitter)).await;
}

/// The `ClientRequestToken` of one transaction: a hash of its items, then a nonce of this call.
/// The SDK sends the same input on each of its retries, so when a transaction succeeded but its
/// answer was lost, DynamoDB recognises the retry (for 10 minutes) and answers success, instead
/// of the retry failing its own conditions and reading as a lost race (an `add` answering 409
/// `name_taken` for the admin's own new key). Our own retries, which follow a definite failure,
/// are new calls with new tokens.
pub fn request_token(items: &[TransactWriteItem]) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    format!("{items:?}").hash(&mut hasher);
    format!("{:016x}{:016x}", hasher.finish(), rand::random::<u64>())
}

/// The DynamoDB store over one table.
#[derive(Clone, Debug)]
pub struct DynamoStore {
    client: Client,
    table: String,
}

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    async fn get(&self, pk: String, sk: &str) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk_err)?;
        Ok(out.item)
    }

    /// Every item of `pk` whose sort key starts with `prefix` (consistent, all pages).
    async fn query_prefix(&self, pk: String, prefix: &str) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :p)")
                .expression_attribute_values(":pk", s(pk.clone()))
                .expression_attribute_values(":p", s(prefix))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(sdk_err)?;
            items.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(items),
            }
        }
    }

    async fn transact(
        &self,
        items: Vec<TransactWriteItem>,
    ) -> Result<(), SdkError<TransactWriteItemsError>> {
        let token = request_token(&items);
        self.client
            .transact_write_items()
            .client_request_token(token)
            .set_transact_items(Some(items))
            .send()
            .await
            .map(|_| ())
    }

    /// `n += delta` on one counter shard.
    fn counter_update(
        &self,
        org: &OrgId,
        count_sk: String,
        delta: i64,
    ) -> Result<TransactWriteItem, StoreError> {
        Ok(TransactWriteItem::builder()
            .update(build(
                Update::builder()
                    .table_name(&self.table)
                    .key("pk", s(org_pk(org)))
                    .key("sk", s(count_sk))
                    .update_expression("ADD #n :d")
                    .expression_attribute_names("#n", "n")
                    .expression_attribute_values(":d", n(delta))
                    .build(),
            )?)
            .build())
    }

    /// Runs a small transaction whose lost conditions mean "nothing to do". Transactions that
    /// collide with a concurrent one on the same items are tried again; only a condition that
    /// failed is taken as an answer, never a conflict or throttling.
    async fn transact_unless_outdated(
        &self,
        items: Vec<TransactWriteItem>,
    ) -> Result<(), StoreError> {
        let mut attempt = 0u32;
        loop {
            let Err(e) = self.transact(items.clone()).await else {
                return Ok(());
            };
            match failed_conditions(&e) {
                Some(failed) if failed.contains(&true) => return Ok(()),
                Some(_) if attempt + 1 < TRANSACTION_ATTEMPTS => {
                    attempt += 1;
                    collision_backoff(attempt).await;
                }
                _ => return Err(sdk_err(e)),
            }
        }
    }
}

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
    ) -> Result<(), StoreError> {
        self.write_key_health(org, key, health).await
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
    ) -> Result<Vec<DataKeyRecord>, StoreError> {
        self.query_data_keys(org, key, partition, after, until, limit)
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
