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

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeValue, ConditionCheck, KeysAndAttributes, Put, TransactWriteItem, Update,
};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, SecondsFormat, Utc};
use cmk_core::error::StoreError;
use cmk_core::model::{
    AuditEvent, DataKeyId, DataKeyRecord, Health, HealthStatus, Job, JobError, JobId, JobKind,
    JobState, KeyId, KeyRecord, KeyState, OrgId, SERVICE_KEY_ID,
};
use cmk_core::ports::{
    BatchCommit, DataKeyMove, JobChange, JobProgress, JobUpdate, OrgCommit, OrgSnapshot, Store,
};
use rand::Rng;

use crate::describe;

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
const HEAD: &str = "#HEAD";
const ERRORS_SHOWN: i32 = 100;
/// Tries of a transaction that collides with concurrent ones on the same items.
const TRANSACTION_ATTEMPTS: u32 = 8;

type Item = HashMap<String, AttributeValue>;

/// The DynamoDB store over one table.
#[derive(Clone, Debug)]
pub struct DynamoStore {
    client: Client,
    table: String,
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn org_pk(org: &OrgId) -> String {
    format!("ORG#{org}")
}

fn dk_pk(org: &OrgId, id: &DataKeyId) -> String {
    format!("DK#{org}#{id}")
}

/// The sort key of a data key item (its partition key names it).
const DK_SK: &str = "DK";

fn job_sk(job: &JobId) -> String {
    format!("JOB#{job}")
}

fn key_sk(key: &KeyId) -> String {
    format!("KEY#{key}")
}

/// The sort key of one progress shard of a job.
fn progress_sk(job: &JobId, shard: u32) -> String {
    format!("{}{shard:02}", progress_prefix(job))
}

fn progress_prefix(job: &JobId) -> String {
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

fn gsi1pk(org: &OrgId, key: &KeyId, partition: u32) -> String {
    format!("{org}#{key}#{partition}")
}

fn random_shard() -> u32 {
    rand::thread_rng().gen_range(0..COUNT_SHARDS)
}

/// A counter item's key, for one shard.
fn count_sk(key: &KeyId, shard: u32) -> String {
    format!("COUNT#{key}#{shard}")
}

/// The counter shard that a job's moves write beside progress shard `shard`: apart from the
/// shards inserts write, so moves and inserts never collide, and a job's start needs to check
/// only the insert shards (no job runs then, so nothing moves).
fn move_count_sk(key: &KeyId, shard: u32) -> String {
    count_sk(key, COUNT_SHARDS + shard)
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_owned())
}

fn sdk_err<E>(e: SdkError<E>) -> StoreError
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    match crate::error_code(&e) {
        Some("ConditionalCheckFailedException" | "TransactionCanceledException") => {
            StoreError::Conflict(describe(&e))
        }
        _ => StoreError::Unavailable(describe(&e)),
    }
}

fn json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(v: &str) -> Result<T, StoreError> {
    serde_json::from_str(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn get_s<'a>(item: &'a Item, name: &str) -> Result<&'a str, StoreError> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Ok(v),
        _ => Err(corrupt(name)),
    }
}

fn opt_s(item: &Item, name: &str) -> Option<String> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Some(v.clone()),
        _ => None,
    }
}

fn get_n(item: &Item, name: &str) -> Result<i64, StoreError> {
    match item.get(name) {
        Some(AttributeValue::N(v)) => v.parse().map_err(|_| corrupt(name)),
        _ => Err(corrupt(name)),
    }
}

fn parse_ts(v: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| corrupt("timestamp"))
}

/// A request builder's refusal (a required field left out): our bug, not corrupt data.
fn build<T, E: std::fmt::Display>(r: Result<T, E>) -> Result<T, StoreError> {
    r.map_err(|e| StoreError::Unavailable(format!("cannot build a DynamoDB request: {e}")))
}

/// A number attribute that counts from zero when absent.
fn opt_n(item: &Item, name: &str) -> Result<i64, StoreError> {
    match item.get(name) {
        None => Ok(0),
        Some(_) => get_n(item, name),
    }
}

/// An optional number attribute (absent on items written before it existed).
fn opt_u32(item: &Item, name: &str) -> Result<Option<u32>, StoreError> {
    match item.get(name) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(AttributeValue::N(v)) => v.parse().map(Some).map_err(|_| corrupt(name)),
        Some(_) => Err(corrupt(name)),
    }
}

fn key_item(org: &OrgId, k: &KeyRecord, seq: i64) -> Result<Item, StoreError> {
    let mut item = HashMap::from([
        ("pk".into(), s(org_pk(org))),
        ("sk".into(), s(key_sk(&k.id))),
        ("seq".into(), n(seq)),
        ("name".into(), s(&k.name)),
        ("spec".into(), s(json(&k.spec)?)),
        ("state".into(), s(k.state.as_str())),
        ("health".into(), s(json(&k.health)?)),
        ("created_at".into(), s(ts(&k.created_at))),
        ("created_by".into(), s(&k.created_by)),
    ]);
    if let Some(limit) = k.rewrap_rate_limit {
        item.insert("rewrap_rate_limit".into(), n(limit));
    }
    Ok(item)
}

fn key_from(item: &Item) -> Result<(i64, KeyRecord), StoreError> {
    let sk = get_s(item, "sk")?;
    let id = sk.strip_prefix("KEY#").ok_or_else(|| corrupt("key sk"))?;
    Ok((
        get_n(item, "seq")?,
        KeyRecord {
            id: KeyId::from_trusted(id),
            name: get_s(item, "name")?.to_owned(),
            spec: from_json(get_s(item, "spec")?)?,
            state: KeyState::parse(get_s(item, "state")?).ok_or_else(|| corrupt("state"))?,
            health: from_json(get_s(item, "health")?)?,
            created_at: parse_ts(get_s(item, "created_at")?)?,
            created_by: get_s(item, "created_by")?.to_owned(),
            rewrap_rate_limit: opt_u32(item, "rewrap_rate_limit")?,
        },
    ))
}

/// Data keys per wrapping key, from all of an org's counter items. Shards may go negative one
/// by one (a move decrements a random shard); their sum is the count.
fn count_sums(counters: &[Item]) -> Result<HashMap<KeyId, u64>, StoreError> {
    let mut sums: HashMap<KeyId, i64> = HashMap::new();
    for item in counters {
        let sk = get_s(item, "sk")?;
        let key = sk
            .strip_prefix("COUNT#")
            .and_then(|r| r.rsplit_once('#'))
            .map(|(k, _)| k)
            .ok_or_else(|| corrupt("count sk"))?;
        *sums.entry(KeyId::from_trusted(key)).or_default() += get_n(item, "n")?;
    }
    Ok(sums
        .into_iter()
        .map(|(k, v)| (k, v.max(0) as u64))
        .collect())
}

/// A new job's item, with `total` as counted at its start.
fn job_item(org: &OrgId, job: &Job, total: u64) -> Result<Item, StoreError> {
    let now = ts(&cmk_core::model::now());
    let mut item = HashMap::from([
        ("pk".into(), s(org_pk(org))),
        ("sk".into(), s(job_sk(&job.id))),
        ("kind".into(), s(job.kind.as_str())),
        ("state".into(), s(job.state.as_str())),
        ("sources".into(), s(json(&job.source_key_ids)?)),
        ("target".into(), s(job.target_key_id.as_str())),
        ("total".into(), n(total)),
        ("done".into(), n(0)),
        ("failed".into(), n(0)),
        ("generation".into(), n(job.generation)),
        ("progress_shards".into(), n(PROGRESS_SHARDS)),
        ("started_at".into(), s(now.clone())),
        ("updated_at".into(), s(now)),
        ("started_by".into(), s(&job.started_by)),
    ]);
    if job.state == JobState::Running {
        item.insert("gsi2pk".into(), s("RUNNING"));
        item.insert("gsi2sk".into(), s(format!("{org}#{}", job.id)));
    }
    Ok(item)
}

/// What a job's progress shards add up to (see [`PROGRESS_SHARDS`]).
#[derive(Debug, Default)]
struct Tally {
    done: i64,
    failed: i64,
    /// The latest batch commit's time (fixed-width RFC 3339: string order is time order).
    last_commit: Option<String>,
}

impl Tally {
    fn of(shards: &[Item]) -> Result<Self, StoreError> {
        let mut tally = Self::default();
        for shard in shards {
            tally.done += opt_n(shard, "done")?;
            tally.failed += opt_n(shard, "failed")?;
            if let Some(at) = opt_s(shard, "updated_at") {
                if tally.last_commit.as_ref().is_none_or(|last| at > *last) {
                    tally.last_commit = Some(at);
                }
            }
        }
        Ok(tally)
    }
}

/// A job from its item and its progress shards. Jobs started before the shards existed
/// counted on the job item itself; both are summed.
fn job_from(item: &Item, tally: &Tally, errors: Vec<JobError>) -> Result<Job, StoreError> {
    let sk = get_s(item, "sk")?;
    let updated_at = match &tally.last_commit {
        Some(last) if last.as_str() > get_s(item, "updated_at")? => last.as_str(),
        _ => get_s(item, "updated_at")?,
    };
    Ok(Job {
        id: JobId::from_trusted(sk.strip_prefix("JOB#").ok_or_else(|| corrupt("job sk"))?),
        kind: JobKind::parse(get_s(item, "kind")?).ok_or_else(|| corrupt("kind"))?,
        state: JobState::parse(get_s(item, "state")?).ok_or_else(|| corrupt("job state"))?,
        source_key_ids: from_json(get_s(item, "sources")?)?,
        target_key_id: KeyId::from_trusted(get_s(item, "target")?),
        total: get_n(item, "total")? as u64,
        done: (get_n(item, "done")? + tally.done).max(0) as u64,
        failed: (get_n(item, "failed")? + tally.failed).max(0) as u64,
        errors,
        generation: get_n(item, "generation")? as u32,
        started_at: parse_ts(get_s(item, "started_at")?)?,
        updated_at: parse_ts(updated_at)?,
        finished_at: opt_s(item, "finished_at")
            .as_deref()
            .map(parse_ts)
            .transpose()?,
        started_by: get_s(item, "started_by")?.to_owned(),
        throttled_rate: opt_u32(item, "throttled_rate")?,
    })
}

fn data_key_from(item: &Item) -> Result<DataKeyRecord, StoreError> {
    let wrapped = match item.get("wrapped") {
        Some(AttributeValue::B(b)) => b.as_ref().to_vec(),
        _ => return Err(corrupt("wrapped")),
    };
    Ok(DataKeyRecord {
        id: DataKeyId::from_trusted(get_s(item, "id")?),
        key_id: KeyId::from_trusted(get_s(item, "key_id")?),
        wrapped,
        version: get_n(item, "version")? as u64,
        created_at: parse_ts(get_s(item, "created_at")?)?,
    })
}

fn event_item(org: &OrgId, e: &AuditEvent) -> Item {
    let mut item = HashMap::from([
        ("pk".into(), s(format!("AUDIT#{org}"))),
        ("sk".into(), s(&e.id)),
        ("at".into(), s(ts(&e.at))),
        ("actor".into(), s(&e.actor)),
        ("action".into(), s(&e.action)),
        ("outcome".into(), s(&e.outcome)),
    ]);
    if let Some(k) = &e.key_id {
        item.insert("key_id".into(), s(k.as_str()));
    }
    if let Some(j) = &e.job_id {
        item.insert("job_id".into(), s(j.as_str()));
    }
    if let Some(d) = &e.detail {
        item.insert("detail".into(), s(d));
    }
    item
}

fn event_from(item: &Item) -> Result<AuditEvent, StoreError> {
    Ok(AuditEvent {
        id: get_s(item, "sk")?.to_owned(),
        at: parse_ts(get_s(item, "at")?)?,
        actor: get_s(item, "actor")?.to_owned(),
        action: get_s(item, "action")?.to_owned(),
        key_id: opt_s(item, "key_id").map(KeyId::from_trusted),
        job_id: opt_s(item, "job_id").map(JobId::from_trusted),
        outcome: get_s(item, "outcome")?.to_owned(),
        detail: opt_s(item, "detail"),
    })
}

/// The item recording that a data key failed in a job's generation.
fn fail_sk(batch: &BatchCommit, data_key: &DataKeyId) -> String {
    format!("FAIL#{}#{:08}#{}", batch.job_id, batch.generation, data_key)
}

/// Which items of a cancelled transaction failed their condition.
fn failed_conditions(e: &SdkError<TransactWriteItemsError>) -> Option<Vec<bool>> {
    let SdkError::ServiceError(se) = e else {
        return None;
    };
    let TransactWriteItemsError::TransactionCanceledException(tc) = se.err() else {
        return None;
    };
    let reasons = tc.cancellation_reasons();
    if reasons.is_empty() {
        return None;
    }
    Some(
        reasons
            .iter()
            .map(|r| r.code() == Some("ConditionalCheckFailed"))
            .collect(),
    )
}

/// Whether a transaction was cancelled because a concurrent one held one of its items.
fn collided(e: &SdkError<TransactWriteItemsError>) -> bool {
    let SdkError::ServiceError(se) = e else {
        return false;
    };
    let TransactWriteItemsError::TransactionCanceledException(tc) = se.err() else {
        return false;
    };
    tc.cancellation_reasons()
        .iter()
        .any(|r| r.code() == Some("TransactionConflict"))
}

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

    async fn counts(&self, org: &OrgId) -> Result<HashMap<KeyId, u64>, StoreError> {
        count_sums(&self.query_prefix(org_pk(org), "COUNT#").await?)
    }

    async fn job_errors(
        &self,
        org: &OrgId,
        job: &JobId,
        generation: u32,
    ) -> Result<Vec<JobError>, StoreError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :p)")
            .expression_attribute_values(":pk", s(org_pk(org)))
            .expression_attribute_values(":p", s(format!("FAIL#{job}#{generation:08}#")))
            .consistent_read(true)
            .limit(ERRORS_SHOWN)
            .send()
            .await
            .map_err(sdk_err)?;
        out.items
            .unwrap_or_default()
            .iter()
            .map(|item| {
                Ok(JobError {
                    data_key_id: DataKeyId::from_trusted(get_s(item, "data_key_id")?),
                    key_id: KeyId::from_trusted(get_s(item, "key_id")?),
                    reason: from_json::<HealthStatus>(&format!("\"{}\"", get_s(item, "reason")?))?,
                    message: get_s(item, "message")?.to_owned(),
                })
            })
            .collect()
    }

    async fn read_job(&self, org: &OrgId, job: &JobId) -> Result<Option<Job>, StoreError> {
        let Some(item) = self.get(org_pk(org), &job_sk(job)).await? else {
            return Ok(None);
        };
        let tally = self.tally(org, job).await?;
        let generation = get_n(&item, "generation")? as u32;
        let errors = self.job_errors(org, job, generation).await?;
        job_from(&item, &tally, errors).map(Some)
    }

    /// A job's progress shards, summed (one query; each shard's counts only grow between a
    /// job's state changes, except `failed` when a failure is cleared).
    async fn tally(&self, org: &OrgId, job: &JobId) -> Result<Tally, StoreError> {
        Tally::of(
            &self
                .query_prefix(org_pk(org), &progress_prefix(job))
                .await?,
        )
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

    /// Moves one chunk; returns how many moved (`None`: the job moved on). Drops moves whose
    /// condition failed and tries the rest again; a transaction that collided with another
    /// (`TransactionConflict`) is tried again on another progress shard after a short backoff.
    async fn commit_moves(
        &self,
        org: &OrgId,
        batch: &BatchCommit,
        counting: Counting,
        mut moves: Vec<&DataKeyMove>,
    ) -> Result<Option<u64>, StoreError> {
        let mut collisions = 0u32;
        loop {
            if moves.is_empty() {
                return Ok(Some(0));
            }
            let count = moves.len() as i64;
            let (progress, shard) = counting.pick(&batch.job_id);
            let mut items = Vec::with_capacity(moves.len() + 3);
            items.push(self.progress_update(org, batch, progress, "done", count)?);
            // All moves of a batch go from one source to one target.
            let to = moves[0].to_key_id.clone();
            items.push(self.counter_update(org, move_count_sk(&batch.source, shard), -count)?);
            items.push(self.counter_update(org, move_count_sk(&to, shard), count)?);
            for m in &moves {
                items.push(self.move_update(org, m)?);
            }
            let Err(e) = self.transact(items).await else {
                return Ok(Some(count as u64));
            };
            let Some(failed) = failed_conditions(&e) else {
                return Err(sdk_err(e));
            };
            if failed.first().copied().unwrap_or(false) {
                return Ok(None); // the job moved on: a stale message
            }
            // Index 0 is the progress item, 1-2 the counters, then the moves.
            let before = moves.len();
            moves = moves
                .into_iter()
                .enumerate()
                .filter(|(i, _)| !failed.get(i + 3).copied().unwrap_or(false))
                .map(|(_, m)| m)
                .collect();
            if moves.len() == before {
                // Cancelled by a concurrent transaction on one of its items.
                collisions += 1;
                if !collided(&e) || collisions >= TRANSACTION_ATTEMPTS {
                    return Err(sdk_err(e));
                }
                collision_backoff(collisions).await;
            }
        }
    }

    /// `ADD {counter} :n` on a progress item, only while the job runs in the batch's
    /// generation; the item records the time of the batch's commit.
    fn progress_update(
        &self,
        org: &OrgId,
        batch: &BatchCommit,
        progress_sk: String,
        counter: &str,
        delta: i64,
    ) -> Result<TransactWriteItem, StoreError> {
        Ok(TransactWriteItem::builder()
            .update(build(
                Update::builder()
                    .table_name(&self.table)
                    .key("pk", s(org_pk(org)))
                    .key("sk", s(progress_sk))
                    .condition_expression("#st = :running AND #gen = :g")
                    .update_expression("ADD #c :n SET #upd = :now")
                    .expression_attribute_names("#st", "state")
                    .expression_attribute_names("#gen", "generation")
                    .expression_attribute_names("#c", counter)
                    .expression_attribute_names("#upd", "updated_at")
                    .expression_attribute_values(":running", s(JobState::Running.as_str()))
                    .expression_attribute_values(":g", n(batch.generation))
                    .expression_attribute_values(":n", n(delta))
                    .expression_attribute_values(":now", s(ts(&cmk_core::model::now())))
                    .build(),
            )?)
            .build())
    }

    /// A job's state change on one of its progress shards. Unconditional: it is written in the
    /// transaction that changes the job item, whose condition decides. On a job started before
    /// shards existed it creates the shard, which then carries no counts.
    fn progress_shard_update(
        &self,
        org: &OrgId,
        u: &JobUpdate,
        shard: u32,
    ) -> Result<TransactWriteItem, StoreError> {
        let mut expr = "SET #st = :st, #gen = :g".to_owned();
        let mut update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(org_pk(org)))
            .key("sk", s(progress_sk(&u.job_id, shard)))
            .expression_attribute_names("#st", "state")
            .expression_attribute_names("#gen", "generation")
            .expression_attribute_values(":st", s(u.state.as_str()))
            .expression_attribute_values(":g", n(u.generation));
        if u.reset_failures {
            expr.push_str(", #failed = :zero");
            update = update
                .expression_attribute_names("#failed", "failed")
                .expression_attribute_values(":zero", n(0));
        }
        Ok(TransactWriteItem::builder()
            .update(build(update.update_expression(expr).build())?)
            .build())
    }

    /// Moves one data key to its new wrapping, only if still at the source and version read.
    fn move_update(&self, org: &OrgId, m: &DataKeyMove) -> Result<TransactWriteItem, StoreError> {
        Ok(TransactWriteItem::builder()
            .update(build(
                Update::builder()
                    .table_name(&self.table)
                    .key("pk", s(dk_pk(org, &m.id)))
                    .key("sk", s(DK_SK))
                    .condition_expression("#kid = :from AND #ver = :v")
                    .update_expression("SET #kid = :to, #w = :w, #ver = :v1, #g1 = :g1")
                    .expression_attribute_names("#kid", "key_id")
                    .expression_attribute_names("#ver", "version")
                    .expression_attribute_names("#w", "wrapped")
                    .expression_attribute_names("#g1", "gsi1pk")
                    .expression_attribute_values(":from", s(m.from_key_id.as_str()))
                    .expression_attribute_values(":v", n(m.from_version))
                    .expression_attribute_values(":to", s(m.to_key_id.as_str()))
                    .expression_attribute_values(
                        ":w",
                        AttributeValue::B(Blob::new(m.wrapped.clone())),
                    )
                    .expression_attribute_values(":v1", n(m.from_version + 1))
                    .expression_attribute_values(
                        ":g1",
                        s(gsi1pk(org, &m.to_key_id, partition_of(&m.id))),
                    )
                    .build(),
            )?)
            .build())
    }

    /// Records failures of data keys still wrapped by the source, counted once each. Recording
    /// bumps the data key's version, so a concurrent duplicate of the batch that did move it
    /// (read at the old version) loses its condition: a data key is never both done and failed.
    async fn record_failures(
        &self,
        org: &OrgId,
        batch: &BatchCommit,
        counting: Counting,
    ) -> Result<(), StoreError> {
        let pk = org_pk(org);
        for f in &batch.failures {
            let items = vec![
                TransactWriteItem::builder()
                    .update(build(
                        Update::builder()
                            .table_name(&self.table)
                            .key("pk", s(dk_pk(org, &f.data_key_id)))
                            .key("sk", s(DK_SK))
                            .condition_expression("#kid = :src")
                            .update_expression("ADD #ver :one")
                            .expression_attribute_names("#kid", "key_id")
                            .expression_attribute_names("#ver", "version")
                            .expression_attribute_values(":src", s(batch.source.as_str()))
                            .expression_attribute_values(":one", n(1))
                            .build(),
                    )?)
                    .build(),
                TransactWriteItem::builder()
                    .put(build(
                        Put::builder()
                            .table_name(&self.table)
                            .set_item(Some(HashMap::from([
                                ("pk".into(), s(pk.clone())),
                                ("sk".into(), s(fail_sk(batch, &f.data_key_id))),
                                ("data_key_id".into(), s(f.data_key_id.as_str())),
                                ("key_id".into(), s(f.key_id.as_str())),
                                ("reason".into(), s(f.reason.as_str())),
                                ("message".into(), s(&f.message)),
                            ])))
                            .condition_expression("attribute_not_exists(pk)")
                            .build(),
                    )?)
                    .build(),
                self.progress_update(org, batch, counting.pick(&batch.job_id).0, "failed", 1)?,
            ];
            // Lost conditions: already recorded, moved meanwhile, or the job moved on.
            self.transact_unless_outdated(items).await?;
        }
        Ok(())
    }

    /// Clears earlier failures (this generation) of data keys this batch is about to move. It
    /// runs before the moves: a crash in between leaves the data key pending, not both failed
    /// and done, and the redelivered batch moves it (or records its failure) again.
    async fn clear_failures(
        &self,
        org: &OrgId,
        batch: &BatchCommit,
        counting: Counting,
    ) -> Result<(), StoreError> {
        let pk = org_pk(org);
        for m in &batch.moves {
            let items = vec![
                // Only for a move that can still apply: a stale one must not forget a failure.
                TransactWriteItem::builder()
                    .condition_check(build(
                        ConditionCheck::builder()
                            .table_name(&self.table)
                            .key("pk", s(dk_pk(org, &m.id)))
                            .key("sk", s(DK_SK))
                            .condition_expression("#kid = :from AND #ver = :v")
                            .expression_attribute_names("#kid", "key_id")
                            .expression_attribute_names("#ver", "version")
                            .expression_attribute_values(":from", s(m.from_key_id.as_str()))
                            .expression_attribute_values(":v", n(m.from_version))
                            .build(),
                    )?)
                    .build(),
                TransactWriteItem::builder()
                    .delete(build(
                        aws_sdk_dynamodb::types::Delete::builder()
                            .table_name(&self.table)
                            .key("pk", s(pk.clone()))
                            .key("sk", s(fail_sk(batch, &m.id)))
                            .condition_expression("attribute_exists(pk)")
                            .build(),
                    )?)
                    .build(),
                self.progress_update(org, batch, counting.pick(&batch.job_id).0, "failed", -1)?,
            ];
            // Lost conditions: no such failure, a stale move, or the job moved on.
            self.transact_unless_outdated(items).await?;
        }
        Ok(())
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

    /// A batch's view of its job: its progress, and where this batch counts it.
    async fn progress(
        &self,
        org: &OrgId,
        job: &JobId,
        applied: u64,
    ) -> Result<(JobProgress, Counting), StoreError> {
        let item = self
            .get(org_pk(org), &job_sk(job))
            .await?
            .ok_or_else(|| StoreError::Conflict(format!("job {job} not found")))?;
        let tally = self.tally(org, job).await?;
        let counting = match opt_u32(&item, "progress_shards")? {
            Some(shards) if shards > 0 => Counting::Shards(shards),
            _ => Counting::JobItem,
        };
        let progress = JobProgress {
            state: JobState::parse(get_s(&item, "state")?).ok_or_else(|| corrupt("job state"))?,
            generation: get_n(&item, "generation")? as u32,
            total: get_n(&item, "total")? as u64,
            done: (get_n(&item, "done")? + tally.done).max(0) as u64,
            failed: (get_n(&item, "failed")? + tally.failed).max(0) as u64,
            applied,
        };
        Ok((progress, counting))
    }
}

/// Where the batches of a job count their progress.
#[derive(Clone, Copy, Debug)]
enum Counting {
    /// On the job item (jobs started before progress shards existed).
    JobItem,
    /// On one of this many progress shards, picked at random per transaction.
    Shards(u32),
}

impl Counting {
    /// The progress item one transaction writes, and the move-counter shard beside it.
    fn pick(self, job: &JobId) -> (String, u32) {
        match self {
            Counting::JobItem => (
                job_sk(job),
                rand::thread_rng().gen_range(0..PROGRESS_SHARDS),
            ),
            Counting::Shards(shards) => {
                let shard = rand::thread_rng().gen_range(0..shards);
                (progress_sk(job, shard), shard)
            }
        }
    }
}

#[async_trait]
impl Store for DynamoStore {
    async fn ensure_org(&self, org: &OrgId, new_external_id: &str) -> Result<String, StoreError> {
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(org_pk(org)))
            .item("sk", s(HEAD))
            .item("version", n(0))
            .item("external_id", s(new_external_id))
            .item("default_key_id", s(SERVICE_KEY_ID))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match put {
            Ok(_) => return Ok(new_external_id.to_owned()),
            Err(e) if crate::error_code(&e) == Some("ConditionalCheckFailedException") => {}
            Err(e) => return Err(sdk_err(e)),
        }
        let head = self
            .get(org_pk(org), HEAD)
            .await?
            .ok_or_else(|| corrupt("org head vanished"))?;
        match opt_s(&head, "external_id") {
            Some(ext) => Ok(ext),
            None => {
                // A head written by a commit before any setup: give it its external id once.
                let out = self
                    .client
                    .update_item()
                    .table_name(&self.table)
                    .key("pk", s(org_pk(org)))
                    .key("sk", s(HEAD))
                    .update_expression("SET #ext = if_not_exists(#ext, :e)")
                    .expression_attribute_names("#ext", "external_id")
                    .expression_attribute_values(":e", s(new_external_id))
                    .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew)
                    .send()
                    .await
                    .map_err(sdk_err)?;
                out.attributes
                    .as_ref()
                    .and_then(|a| opt_s(a, "external_id"))
                    .ok_or_else(|| corrupt("external id"))
            }
        }
    }

    async fn load_org(&self, org: &OrgId) -> Result<OrgSnapshot, StoreError> {
        // The head first: whatever is read after it is at least as new, and every commit is
        // conditional on the head's version, so a stale mix can never be committed.
        let head = self.get(org_pk(org), HEAD).await?;
        // The job before the data key counts: while a job runs, batches move data keys (done
        // up, counts down) without touching the head. Read in this order, `done + left` can
        // only fall short of the truth. A total re-planned from it too small is corrected by
        // the next final check that finds data keys left, or by the completing commit; read
        // the other way it could exceed the truth, and the job would never reach its total.
        let job = match head.as_ref().and_then(|h| opt_s(h, "current_job_id")) {
            Some(id) => self.read_job(org, &JobId::from_trusted(id)).await?,
            None => None,
        };
        let mut keys: Vec<(i64, KeyRecord)> = self
            .query_prefix(org_pk(org), "KEY#")
            .await?
            .iter()
            .map(key_from)
            .collect::<Result<_, _>>()?;
        keys.sort_by_key(|(seq, _)| *seq);
        let data_key_counts = self.counts(org).await?;
        Ok(OrgSnapshot {
            org: org.clone(),
            version: head
                .as_ref()
                .map(|h| get_n(h, "version"))
                .transpose()?
                .unwrap_or(0) as u64,
            external_id: head.as_ref().and_then(|h| opt_s(h, "external_id")),
            default_key_id: KeyId::from_trusted(
                head.as_ref()
                    .and_then(|h| opt_s(h, "default_key_id"))
                    .unwrap_or_else(|| SERVICE_KEY_ID.to_owned()),
            ),
            keys: keys.into_iter().map(|(_, k)| k).collect(),
            data_key_counts,
            job,
        })
    }

    async fn commit(&self, org: &OrgId, c: OrgCommit) -> Result<Option<Job>, StoreError> {
        let pk = org_pk(org);
        let mut items = Vec::new();
        let mut head_update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(pk.clone()))
            .key("sk", s(HEAD))
            .condition_expression("attribute_not_exists(pk) OR #ver = :v")
            .expression_attribute_names("#ver", "version")
            .expression_attribute_names("#def", "default_key_id")
            .expression_attribute_values(":v", n(c.expected_version))
            .expression_attribute_values(":v1", n(c.expected_version + 1))
            .expression_attribute_values(":d", s(c.default_key_id.as_str()));
        let mut head_expr = "SET #ver = :v1, #def = :d".to_owned();

        // Keys keep their creation order: new keys get the next sequence number.
        let existing: HashMap<String, i64> = self
            .query_prefix(pk.clone(), "KEY#")
            .await?
            .iter()
            .map(key_from)
            .map(|r| r.map(|(seq, k)| (k.id.to_string(), seq)))
            .collect::<Result<_, _>>()?;
        let mut next_seq = existing.values().copied().max().unwrap_or(0) + 1;
        for k in &c.upsert_keys {
            let seq = match existing.get(k.id.as_str()) {
                Some(seq) => *seq,
                None => {
                    next_seq += 1;
                    next_seq - 1
                }
            };
            items.push(
                TransactWriteItem::builder()
                    .put(build(
                        Put::builder()
                            .table_name(&self.table)
                            .set_item(Some(key_item(org, k, seq)?))
                            .build(),
                    )?)
                    .build(),
            );
            items.push(
                TransactWriteItem::builder()
                    .put(build(
                        Put::builder()
                            .table_name(&self.table)
                            .item("pk", s(pk.clone()))
                            .item("sk", s(format!("NAME#{}", k.name.to_lowercase())))
                            .item("key_id", s(k.id.as_str()))
                            .condition_expression("attribute_not_exists(pk) OR #kid = :id")
                            .expression_attribute_names("#kid", "key_id")
                            .expression_attribute_values(":id", s(k.id.as_str()))
                            .build(),
                    )?)
                    .build(),
            );
        }

        let mut job_id = None;
        match &c.job {
            None => {}
            Some(JobChange::Start(job)) => {
                // Count the sources now, and make the commit conditional on every insert shard
                // of every source still holding what was read (or still being absent): a data
                // key inserted meanwhile cancels the commit, so `total` is exact. The shards
                // that moves write need no check: no job runs (the head's version says so).
                let counters = self.query_prefix(pk.clone(), "COUNT#").await?;
                let mut shards: HashMap<String, i64> = HashMap::new();
                for item in &counters {
                    shards.insert(get_s(item, "sk")?.to_owned(), get_n(item, "n")?);
                }
                let counts = count_sums(&counters)?;
                let total: u64 = job
                    .source_key_ids
                    .iter()
                    .map(|source| counts.get(source).copied().unwrap_or(0))
                    .sum();
                for source in &job.source_key_ids {
                    for shard in 0..COUNT_SHARDS {
                        let sk = count_sk(source, shard);
                        let check = ConditionCheck::builder()
                            .table_name(&self.table)
                            .key("pk", s(pk.clone()))
                            .key("sk", s(sk.clone()));
                        let check = match shards.get(&sk) {
                            Some(v) => check
                                .condition_expression("#n = :n")
                                .expression_attribute_names("#n", "n")
                                .expression_attribute_values(":n", n(*v)),
                            None => check.condition_expression("attribute_not_exists(pk)"),
                        };
                        items.push(
                            TransactWriteItem::builder()
                                .condition_check(build(check.build())?)
                                .build(),
                        );
                    }
                }
                items.push(
                    TransactWriteItem::builder()
                        .put(build(
                            Put::builder()
                                .table_name(&self.table)
                                .set_item(Some(job_item(org, job, total)?))
                                .condition_expression("attribute_not_exists(pk)")
                                .build(),
                        )?)
                        .build(),
                );
                for shard in 0..PROGRESS_SHARDS {
                    items.push(
                        TransactWriteItem::builder()
                            .put(build(
                                Put::builder()
                                    .table_name(&self.table)
                                    .item("pk", s(pk.clone()))
                                    .item("sk", s(progress_sk(&job.id, shard)))
                                    .item("state", s(job.state.as_str()))
                                    .item("generation", n(job.generation))
                                    .item("done", n(0))
                                    .item("failed", n(0))
                                    .condition_expression("attribute_not_exists(pk)")
                                    .build(),
                            )?)
                            .build(),
                    );
                }
                head_expr.push_str(", #job = :job");
                head_update = head_update
                    .expression_attribute_names("#job", "current_job_id")
                    .expression_attribute_values(":job", s(job.id.as_str()));
                job_id = Some(job.id.clone());
            }
            Some(JobChange::Update(u)) => {
                let now = ts(&cmk_core::model::now());
                let mut expr = "SET #st = :st, #gen = :g, #upd = :now".to_owned();
                let mut update = Update::builder()
                    .table_name(&self.table)
                    .key("pk", s(pk.clone()))
                    .key("sk", s(job_sk(&u.job_id)))
                    .condition_expression("#st = :est AND #gen = :eg")
                    .expression_attribute_names("#st", "state")
                    .expression_attribute_names("#gen", "generation")
                    .expression_attribute_names("#upd", "updated_at")
                    .expression_attribute_values(":est", s(u.expected_state.as_str()))
                    .expression_attribute_values(":eg", n(u.expected_generation))
                    .expression_attribute_values(":st", s(u.state.as_str()))
                    .expression_attribute_values(":g", n(u.generation))
                    .expression_attribute_values(":now", s(now));
                if u.finished {
                    expr.push_str(", #fin = :now");
                    update = update.expression_attribute_names("#fin", "finished_at");
                }
                if let Some(total) = u.total {
                    expr.push_str(", #total = :total");
                    update = update
                        .expression_attribute_names("#total", "total")
                        .expression_attribute_values(":total", n(total));
                }
                if u.reset_failures {
                    expr.push_str(", #failed = :zero");
                    update = update
                        .expression_attribute_names("#failed", "failed")
                        .expression_attribute_values(":zero", n(0));
                }
                // Every change of state or generation starts unthrottled.
                if u.state == JobState::Running {
                    expr.push_str(", gsi2pk = :running, gsi2sk = :g2 REMOVE throttled_rate");
                    update = update
                        .expression_attribute_values(":running", s("RUNNING"))
                        .expression_attribute_values(":g2", s(format!("{org}#{}", u.job_id)));
                } else {
                    expr.push_str(" REMOVE gsi2pk, gsi2sk, throttled_rate");
                }
                items.push(
                    TransactWriteItem::builder()
                        .update(build(update.update_expression(expr).build())?)
                        .build(),
                );
                // The progress shards carry the state and generation that batches check, so
                // a stale batch is refused by the shard it writes, never by the job item.
                for shard in 0..PROGRESS_SHARDS {
                    items.push(self.progress_shard_update(org, u, shard)?);
                }
                job_id = Some(u.job_id.clone());
            }
        }
        items.insert(
            0,
            TransactWriteItem::builder()
                .update(build(head_update.update_expression(head_expr).build())?)
                .build(),
        );
        for e in &c.events {
            items.push(
                TransactWriteItem::builder()
                    .put(build(
                        Put::builder()
                            .table_name(&self.table)
                            .set_item(Some(event_item(org, e)))
                            .build(),
                    )?)
                    .build(),
            );
        }
        if items.len() > 100 {
            return Err(StoreError::Unavailable(format!(
                "a commit of {} items exceeds one transaction",
                items.len()
            )));
        }
        self.transact(items)
            .await
            .map_err(|e| match failed_conditions(&e) {
                Some(_) => StoreError::Conflict(describe(&e)),
                None => sdk_err(e),
            })?;
        match job_id {
            Some(id) => self.read_job(org, &id).await,
            None => Ok(None),
        }
    }

    async fn get_key(&self, org: &OrgId, key: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.get(org_pk(org), &key_sk(key))
            .await?
            .map(|i| key_from(&i).map(|(_, k)| k))
            .transpose()
    }

    async fn set_key_health(
        &self,
        org: &OrgId,
        key: &KeyId,
        health: &Health,
    ) -> Result<(), StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(org_pk(org)))
            .key("sk", s(key_sk(key)))
            .update_expression("SET #h = :h")
            .expression_attribute_names("#h", "health")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":h", s(json(health)?))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if crate::error_code(&e) == Some("ConditionalCheckFailedException") => Ok(()),
            Err(e) => Err(sdk_err(e)),
        }
    }

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
        let update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(org_pk(org)))
            .key("sk", s(job_sk(job)))
            .condition_expression("#st = :running AND #gen = :g")
            .expression_attribute_names("#st", "state")
            .expression_attribute_names("#gen", "generation")
            .expression_attribute_names("#rate", "throttled_rate")
            .expression_attribute_values(":running", s(JobState::Running.as_str()))
            .expression_attribute_values(":g", n(generation));
        let update = match rate {
            Some(r) => update
                .update_expression("SET #rate = :rate")
                .expression_attribute_values(":rate", n(r)),
            None => update.update_expression("REMOVE #rate"),
        };
        match update.send().await {
            Ok(_) => Ok(()),
            // The job moved on: nothing to show on it any more.
            Err(e) if crate::error_code(&e) == Some("ConditionalCheckFailedException") => Ok(()),
            Err(e) => Err(sdk_err(e)),
        }
    }

    async fn claim_replan(
        &self,
        org: &OrgId,
        job: &JobId,
        generation: u32,
        idle_before: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        // `updated_at` is fixed-width RFC 3339 (microseconds, `Z`): string order is time order.
        // Batches record their commits on the progress shards, the job item keeps the last
        // plan: the shards are read first (a batch committing after that read only makes one
        // re-plan more, which is harmless), then the claim is a conditional write of the item.
        let before = ts(&idle_before);
        if let Some(last) = self.tally(org, job).await?.last_commit {
            if last >= before {
                return Ok(false);
            }
        }
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(org_pk(org)))
            .key("sk", s(job_sk(job)))
            .update_expression("SET #upd = :now")
            .condition_expression("#st = :running AND #gen = :g AND #upd < :before")
            .expression_attribute_names("#upd", "updated_at")
            .expression_attribute_names("#st", "state")
            .expression_attribute_names("#gen", "generation")
            .expression_attribute_values(":now", s(ts(&cmk_core::model::now())))
            .expression_attribute_values(":running", s(JobState::Running.as_str()))
            .expression_attribute_values(":g", n(generation))
            .expression_attribute_values(":before", s(before))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if crate::error_code(&e) == Some("ConditionalCheckFailedException") => Ok(false),
            Err(e) => Err(sdk_err(e)),
        }
    }

    async fn running_jobs(&self) -> Result<Vec<(OrgId, Job)>, StoreError> {
        let mut jobs = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(RUNNING_JOBS)
                .key_condition_expression("gsi2pk = :r")
                .expression_attribute_values(":r", s("RUNNING"))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(sdk_err)?;
            for item in out.items.unwrap_or_default() {
                let sk = get_s(&item, "gsi2sk")?;
                let (org, job) = sk.split_once('#').ok_or_else(|| corrupt("gsi2sk"))?;
                let org = OrgId::from_trusted(org);
                if let Some(job) = self.read_job(&org, &JobId::from_trusted(job)).await? {
                    if job.state == JobState::Running {
                        jobs.push((org, job));
                    }
                }
            }
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(jobs),
            }
        }
    }

    async fn insert_data_keys(
        &self,
        org: &OrgId,
        keys: &[DataKeyRecord],
    ) -> Result<(), StoreError> {
        let Some(first) = keys.first() else {
            return Ok(());
        };
        if keys.iter().any(|k| k.key_id != first.key_id) {
            return Err(StoreError::Conflict(
                "data keys of one insert must share their wrapping key".into(),
            ));
        }
        for chunk in keys.chunks(MOVES_PER_TRANSACTION) {
            // The wrapping key must still be the default (an org without a head defaults to the
            // service key).
            let mut check = ConditionCheck::builder()
                .table_name(&self.table)
                .key("pk", s(org_pk(org)))
                .key("sk", s(HEAD))
                .expression_attribute_values(":k", s(first.key_id.as_str()));
            check = if first.key_id.is_service() {
                check.condition_expression("attribute_not_exists(pk) OR #def = :k")
            } else {
                check.condition_expression("#def = :k")
            };
            check = check.expression_attribute_names("#def", "default_key_id");
            let mut items = vec![
                TransactWriteItem::builder()
                    .condition_check(build(check.build())?)
                    .build(),
                self.counter_update(
                    org,
                    count_sk(&first.key_id, random_shard()),
                    chunk.len() as i64,
                )?,
            ];
            for k in chunk {
                items.push(
                    TransactWriteItem::builder()
                        .put(build(
                            Put::builder()
                                .table_name(&self.table)
                                .item("pk", s(dk_pk(org, &k.id)))
                                .item("sk", s(DK_SK))
                                .item("org", s(org.as_str()))
                                .item("id", s(k.id.as_str()))
                                .item("key_id", s(k.key_id.as_str()))
                                .item("wrapped", AttributeValue::B(Blob::new(k.wrapped.clone())))
                                .item("version", n(k.version))
                                .item("created_at", s(ts(&k.created_at)))
                                .item("gsi1pk", s(gsi1pk(org, &k.key_id, partition_of(&k.id))))
                                .item("gsi1sk", s(k.id.as_str()))
                                .condition_expression("attribute_not_exists(pk)")
                                .build(),
                        )?)
                        .build(),
                );
            }
            self.transact(items)
                .await
                .map_err(|e| match failed_conditions(&e) {
                    Some(_) => StoreError::Conflict(format!(
                        "key {} is no longer the default",
                        first.key_id
                    )),
                    None => sdk_err(e),
                })?;
        }
        Ok(())
    }

    async fn get_data_key(
        &self,
        org: &OrgId,
        id: &DataKeyId,
    ) -> Result<Option<DataKeyRecord>, StoreError> {
        self.get(dk_pk(org, id), DK_SK)
            .await?
            .map(|i| data_key_from(&i))
            .transpose()
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
        // The index names candidates (eventually consistent); the table says what is true now.
        let ids = self
            .index_ids(org, key, partition, after, until, limit)
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(100) {
            let mut request = KeysAndAttributes::builder().consistent_read(true);
            for id in chunk {
                request = request.keys(HashMap::from([
                    ("pk".to_owned(), s(dk_pk(org, id))),
                    ("sk".to_owned(), s(DK_SK)),
                ]));
            }
            let mut pending = Some(HashMap::from([(
                self.table.clone(),
                build(request.build())?,
            )]));
            while let Some(req) = pending.take().filter(|r| !r.is_empty()) {
                let resp = self
                    .client
                    .batch_get_item()
                    .set_request_items(Some(req))
                    .send()
                    .await
                    .map_err(sdk_err)?;
                for item in resp
                    .responses
                    .unwrap_or_default()
                    .remove(&self.table)
                    .unwrap_or_default()
                {
                    let record = data_key_from(&item)?;
                    if &record.key_id == key {
                        out.push(record);
                    }
                }
                pending = resp.unprocessed_keys;
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn list_data_key_ids(
        &self,
        org: &OrgId,
        key: &KeyId,
        partition: u32,
        after: Option<&DataKeyId>,
        limit: usize,
    ) -> Result<Vec<DataKeyId>, StoreError> {
        self.index_ids(org, key, partition, after, None, limit)
            .await
    }

    fn data_key_partitions(&self) -> u32 {
        PARTITIONS
    }

    async fn commit_batch(
        &self,
        org: &OrgId,
        batch: BatchCommit,
    ) -> Result<JobProgress, StoreError> {
        let (job, counting) = self.progress(org, &batch.job_id, 0).await?;
        if job.state != JobState::Running || job.generation != batch.generation {
            return Ok(job);
        }
        // A failure recorded after `job` was read bumped its data key's version, so the
        // moves below cannot apply to it: reading `failed` before them is enough.
        if job.failed > 0 && !batch.moves.is_empty() {
            self.clear_failures(org, &batch, counting).await?;
        }
        let mut applied = 0;
        for chunk in batch.moves.chunks(MOVES_PER_TRANSACTION) {
            match self
                .commit_moves(org, &batch, counting, chunk.iter().collect())
                .await?
            {
                Some(moved) => applied += moved,
                None => return Ok(self.progress(org, &batch.job_id, applied).await?.0),
            }
        }
        if !batch.failures.is_empty() {
            self.record_failures(org, &batch, counting).await?;
        }
        Ok(self.progress(org, &batch.job_id, applied).await?.0)
    }

    async fn append_audit(&self, org: &OrgId, events: &[AuditEvent]) -> Result<(), StoreError> {
        for e in events {
            self.client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(event_item(org, e)))
                .send()
                .await
                .map_err(sdk_err)?;
        }
        Ok(())
    }

    async fn list_audit(
        &self,
        org: &OrgId,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<(Vec<AuditEvent>, Option<String>), StoreError> {
        let mut query = self
            .client
            .query()
            .table_name(&self.table)
            .expression_attribute_values(":pk", s(format!("AUDIT#{org}")))
            .scan_index_forward(false)
            .limit(limit as i32 + 1);
        query = match cursor {
            Some(c) => query
                .key_condition_expression("pk = :pk AND sk < :c")
                .expression_attribute_values(":c", s(c)),
            None => query.key_condition_expression("pk = :pk"),
        };
        let out = query.send().await.map_err(sdk_err)?;
        let mut events: Vec<AuditEvent> = out
            .items
            .unwrap_or_default()
            .iter()
            .map(event_from)
            .collect::<Result<_, _>>()?;
        let next = if events.len() > limit {
            events.truncate(limit);
            events.last().map(|e| e.id.clone())
        } else {
            None
        };
        Ok((events, next))
    }
}

impl DynamoStore {
    /// Data key ids of one index partition in `(after, until]`, in id order.
    async fn index_ids(
        &self,
        org: &OrgId,
        key: &KeyId,
        partition: u32,
        after: Option<&DataKeyId>,
        until: Option<&DataKeyId>,
        limit: usize,
    ) -> Result<Vec<DataKeyId>, StoreError> {
        let mut ids = Vec::new();
        let mut start = None;
        let after_s = after.map(|a| a.to_string());
        loop {
            let mut q = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(BY_WRAPPING_KEY)
                .expression_attribute_values(":pk", s(gsi1pk(org, key, partition)))
                .limit((limit - ids.len()).min(1000) as i32 + 1)
                .set_exclusive_start_key(start);
            // Key values cannot be empty strings, so each bound is added only when present.
            q = match (&after_s, until) {
                (Some(a), Some(u)) => q
                    .key_condition_expression("gsi1pk = :pk AND gsi1sk BETWEEN :a AND :u")
                    .expression_attribute_values(":a", s(a.clone()))
                    .expression_attribute_values(":u", s(u.as_str())),
                (Some(a), None) => q
                    .key_condition_expression("gsi1pk = :pk AND gsi1sk > :a")
                    .expression_attribute_values(":a", s(a.clone())),
                (None, Some(u)) => q
                    .key_condition_expression("gsi1pk = :pk AND gsi1sk <= :u")
                    .expression_attribute_values(":u", s(u.as_str())),
                (None, None) => q.key_condition_expression("gsi1pk = :pk"),
            };
            let out = q.send().await.map_err(sdk_err)?;
            for item in out.items.unwrap_or_default() {
                let id = get_s(&item, "gsi1sk")?;
                if Some(id) != after_s.as_deref() && ids.len() < limit {
                    ids.push(DataKeyId::from_trusted(id));
                }
            }
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() && ids.len() < limit => start = Some(k),
                _ => return Ok(ids),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn key_items_round_trip() {
        let record = KeyRecord {
            id: KeyId::from_trusted("key_1"),
            name: "prod".into(),
            spec: cmk_core::model::KeySpec::AwsKms {
                role_arn: "arn:aws:iam::111122223333:role/r".into(),
                key_arn: "arn:aws:kms:eu-west-1:111122223333:key/k".into(),
                resolved_key_arn: Some("arn:aws:kms:eu-west-1:111122223333:key/k".into()),
            },
            state: KeyState::Reencrypting,
            health: Health::unknown(),
            created_at: DateTime::parse_from_rfc3339("2026-11-30T10:00:00.123456Z")
                .expect("time")
                .with_timezone(&Utc),
            created_by: "alice".into(),
            rewrap_rate_limit: Some(300),
        };
        let item = key_item(&OrgId::from_trusted("acme"), &record, 7).expect("item");
        assert_eq!(get_s(&item, "sk").expect("sk"), "KEY#key_1");
        assert_eq!(key_from(&item).expect("record"), (7, record.clone()));
        let mut unlimited = record;
        unlimited.rewrap_rate_limit = None;
        let item = key_item(&OrgId::from_trusted("acme"), &unlimited, 7).expect("item");
        assert!(!item.contains_key("rewrap_rate_limit"));
        assert_eq!(key_from(&item).expect("record").1, unlimited);
    }

    /// A job's counts are its item's (jobs from before progress shards) plus its shards';
    /// its `updated_at` is the later of its last plan and its last batch.
    #[test]
    fn jobs_sum_their_progress_shards() {
        let job = Job {
            id: JobId::from_trusted("j1"),
            kind: JobKind::Disable,
            state: JobState::Running,
            source_key_ids: vec![KeyId::from_trusted("key_a")],
            target_key_id: KeyId::from_trusted("key_b"),
            total: 100,
            done: 0,
            failed: 0,
            errors: vec![],
            generation: 2,
            started_at: cmk_core::model::now(),
            updated_at: cmk_core::model::now(),
            finished_at: None,
            started_by: "alice".into(),
            throttled_rate: None,
        };
        let org = OrgId::from_trusted("acme");
        let mut item = job_item(&org, &job, 100).expect("item");
        item.insert("done".into(), n(5)); // counted on the item before shards existed
        let later = "2099-01-01T00:00:00.000000Z";
        let shard = |done: i64, failed: i64, at: Option<&str>| {
            let mut shard = HashMap::from([
                ("sk".to_owned(), s(progress_sk(&job.id, 0))),
                ("done".to_owned(), n(done)),
                ("failed".to_owned(), n(failed)),
            ]);
            if let Some(at) = at {
                shard.insert("updated_at".into(), s(at));
            }
            shard
        };
        let tally = Tally::of(&[
            shard(10, 2, None),
            shard(7, -1, Some(later)),
            shard(0, 0, None),
        ])
        .expect("tally");
        let read = job_from(&item, &tally, vec![]).expect("job");
        assert_eq!((read.done, read.failed, read.total), (22, 1, 100));
        assert_eq!(ts(&read.updated_at), later);
        assert_eq!(get_n(&item, "progress_shards").expect("shards"), 16);
        let idle = job_from(&item, &Tally::default(), vec![]).expect("job");
        assert_eq!(
            idle.updated_at,
            parse_ts(get_s(&item, "updated_at").expect("plan time")).expect("time")
        );
    }
}
