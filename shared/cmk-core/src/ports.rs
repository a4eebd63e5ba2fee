//! The ports: what the core needs from the outside world. Adapters implement these and nothing
//! else; every adapter passes the contract suites in [`crate::testsuite`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::crypto::DataKey;
use crate::error::{AuthError, EventError, KeyError, QueueError, StoreError};
use crate::events::ServiceEvent;
use crate::model::{
    AuditEvent, DataKeyId, DataKeyRecord, EncryptionContext, Health, Job, JobError, JobId,
    JobState, KeyId, KeyRecord, KeySpec, OrgId, Principal,
};

/// Everything the key rules read about one org, read consistently.
#[derive(Clone, Debug)]
pub struct OrgSnapshot {
    pub org: OrgId,
    /// Optimistic-concurrency token: every [`Store::commit`] is conditional on it.
    pub version: u64,
    pub external_id: Option<String>,
    pub default_key_id: KeyId,
    /// Customer managed keys, in creation order (the service key has no record).
    pub keys: Vec<KeyRecord>,
    /// How many data keys each key wraps; a key that wraps none may be absent.
    pub data_key_counts: HashMap<KeyId, u64>,
    /// The unfinished job, else the last one.
    pub job: Option<Job>,
}

impl OrgSnapshot {
    pub fn count(&self, key: &KeyId) -> u64 {
        self.data_key_counts.get(key).copied().unwrap_or(0)
    }
    pub fn key(&self, key: &KeyId) -> Option<&KeyRecord> {
        self.keys.iter().find(|k| &k.id == key)
    }
    pub fn unfinished_job(&self) -> Option<&Job> {
        self.job.as_ref().filter(|j| j.state.is_unfinished())
    }
}

/// A change to a job's lifecycle fields. Progress counters are never overwritten by it.
#[derive(Clone, Debug)]
pub struct JobUpdate {
    pub job_id: JobId,
    /// The write applies only if the job is still in this state and generation.
    pub expected_state: JobState,
    pub expected_generation: u32,
    pub state: JobState,
    pub generation: u32,
    pub finished: bool,
    /// Replaces `total` (used when a final check finds work the count missed).
    pub total: Option<u64>,
    /// Forget the failures of earlier attempts (`failed` back to 0).
    pub reset_failures: bool,
}

#[derive(Clone, Debug)]
pub enum JobChange {
    /// Creates the job. The store sets `total` to the number of data keys its sources wrap, in
    /// the same atomic write as the key state changes.
    Start(Job),
    Update(JobUpdate),
}

/// One atomic write of an org's key state, conditional on the snapshot's version.
#[derive(Clone, Debug)]
pub struct OrgCommit {
    pub expected_version: u64,
    pub default_key_id: KeyId,
    /// Inserted or replaced whole.
    pub upsert_keys: Vec<KeyRecord>,
    pub job: Option<JobChange>,
    pub events: Vec<AuditEvent>,
}

/// Moves one data key from `from_key_id` to `to_key_id`, only if it is still wrapped by the
/// source at the version read.
#[derive(Clone, Debug)]
pub struct DataKeyMove {
    pub id: DataKeyId,
    pub from_key_id: KeyId,
    pub from_version: u64,
    pub to_key_id: KeyId,
    pub wrapped: Vec<u8>,
    /// The listed record's [`DataKeyRecord::row_hint`](crate::model::DataKeyRecord).
    pub row_hint: Option<i64>,
}

/// The result of one batch of a job, committed atomically with the progress counters. An
/// applied move within one key marks its data key with `job_id` (see
/// [`DataKeyStore::list_data_keys`]).
#[derive(Clone, Debug)]
pub struct BatchCommit {
    pub job_id: JobId,
    pub generation: u32,
    /// The source key every move and failure of the batch is about.
    pub source: KeyId,
    pub moves: Vec<DataKeyMove>,
    /// Recorded only for data keys still wrapped by `source`.
    pub failures: Vec<JobError>,
}

/// Progress after a batch commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobProgress {
    pub state: JobState,
    pub generation: u32,
    pub total: u64,
    pub done: u64,
    pub failed: u64,
    /// Data keys moved by this commit (0 for a duplicate or stale batch).
    pub applied: u64,
}

impl JobProgress {
    /// Every data key of the job has been moved or has failed.
    pub fn all_processed(&self) -> bool {
        self.done + self.failed >= self.total
    }
}

/// All the state of the service: orgs and their keys, data keys, job progress and the audit
/// trail. Each use case needs only some of it, and each adapter implements the four parts; a
/// store is anything that has all four.
pub trait Store: OrgStore + DataKeyStore + RewrapProgress + AuditLog {}

impl<T: OrgStore + DataKeyStore + RewrapProgress + AuditLog + ?Sized> Store for T {}

/// The store as the use cases hold it: one handle per part, so each use case reaches only the
/// part it needs (`orgs`, `data_keys`, `progress`, `audit`), and a test double, a fault injector
/// or a stub, implements only the part it changes and takes the real store for the others.
#[derive(Clone)]
pub struct StoreParts {
    pub orgs: Arc<dyn OrgStore>,
    pub data_keys: Arc<dyn DataKeyStore>,
    pub progress: Arc<dyn RewrapProgress>,
    pub audit: Arc<dyn AuditLog>,
}

impl std::fmt::Debug for StoreParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreParts").finish_non_exhaustive()
    }
}

impl From<Arc<dyn Store>> for StoreParts {
    /// Every part from one store that has them all, as every adapter does.
    fn from(store: Arc<dyn Store>) -> Self {
        Self {
            orgs: store.clone(),
            data_keys: store.clone(),
            progress: store.clone(),
            audit: store,
        }
    }
}

impl<S: Store> From<Arc<S>> for StoreParts {
    fn from(store: Arc<S>) -> Self {
        Self::from(store as Arc<dyn Store>)
    }
}

/// Orgs and their keys: the snapshot every key rule reads, and its one conditional commit.
#[async_trait]
pub trait OrgStore: Send + Sync + 'static {
    /// Creates the org record if absent, with `new_external_id`; returns the org's external id.
    async fn ensure_org(&self, org: &OrgId, new_external_id: &str) -> Result<String, StoreError>;

    /// A consistent snapshot; an unknown org reads as a fresh one (version 0, service default).
    async fn load_org(&self, org: &OrgId) -> Result<OrgSnapshot, StoreError>;

    /// Applies `commit` atomically if the org's version is still `expected_version`, else
    /// [`StoreError::Conflict`]. Returns the started or updated job.
    async fn commit(&self, org: &OrgId, commit: OrgCommit) -> Result<Option<Job>, StoreError>;

    async fn get_key(&self, org: &OrgId, key: &KeyId) -> Result<Option<KeyRecord>, StoreError>;

    /// Records a key's health (not versioned: health is an observation, not a rule input).
    /// Returns the health it replaced, read in the same atomic write, so that of two
    /// observers recording the same change only one sees it as a change; `None` when the key
    /// does not exist (nothing is written).
    async fn set_key_health(
        &self,
        org: &OrgId,
        key: &KeyId,
        health: &Health,
    ) -> Result<Option<Health>, StoreError>;

    /// Customer managed keys that are not disabled and were last checked before
    /// `checked_before` (or never), across orgs, least recently checked first, at most `limit`:
    /// the continuous health checks' work list.
    async fn keys_due_for_check(
        &self,
        checked_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(OrgId, KeyRecord)>, StoreError>;
}

/// Data keys: inserted under the default key, read one by one, and enumerated per wrapping
/// key and partition for re-encryption.
#[async_trait]
pub trait DataKeyStore: Send + Sync + 'static {
    /// Inserts data keys all wrapped by one key, only if that key is the org's default (else
    /// [`StoreError::Conflict`]): a data key never lands under a key that is being drained.
    async fn insert_data_keys(&self, org: &OrgId, keys: &[DataKeyRecord])
        -> Result<(), StoreError>;

    async fn get_data_key(
        &self,
        org: &OrgId,
        id: &DataKeyId,
    ) -> Result<Option<DataKeyRecord>, StoreError>;

    /// The data keys of `ids` that exist in the org, in any order: one call for many (a store
    /// with a cheaper batch read overrides it; the default reads them one by one).
    async fn get_data_keys(
        &self,
        org: &OrgId,
        ids: &[DataKeyId],
    ) -> Result<Vec<DataKeyRecord>, StoreError> {
        let mut found = Vec::with_capacity(ids.len());
        for id in ids {
            found.extend(self.get_data_key(org, id).await?);
        }
        Ok(found)
    }

    /// How many partitions the data keys of one wrapping key are spread over. Enumeration is
    /// per partition, so re-encrypting a large org does not funnel through one partition.
    fn data_key_partitions(&self) -> u32 {
        1
    }

    /// Data keys wrapped by `key` in `partition`, with ids in `(after, until]`, in id order, at
    /// most `limit`; with `not_moved_by`, only those that job has moved within their key. A
    /// move that leaves its data key with the same key (a `rotate` job's) marks it with the
    /// batch's job, which is how such a job knows what it already moved when a batch is
    /// delivered again; a move to another key clears the mark (the key filter suffices there,
    /// and an unmarked row keeps its size, which keeps SQLite's update in place).
    /// A short page means the range is exhausted, whatever was skipped.
    #[allow(clippy::too_many_arguments)] // one listing's range, page size and job filter
    async fn list_data_keys(
        &self,
        org: &OrgId,
        key: &KeyId,
        partition: u32,
        after: Option<&DataKeyId>,
        until: Option<&DataKeyId>,
        limit: usize,
        not_moved_by: Option<&JobId>,
    ) -> Result<Vec<DataKeyRecord>, StoreError>;

    /// Ids only, for planning: like [`DataKeyStore::list_data_keys`] without an upper bound.
    async fn list_data_key_ids(
        &self,
        org: &OrgId,
        key: &KeyId,
        partition: u32,
        after: Option<&DataKeyId>,
        limit: usize,
    ) -> Result<Vec<DataKeyId>, StoreError>;
}

/// Re-encryption jobs as the workers see them: batch commits, progress, throttling, recovery.
#[async_trait]
pub trait RewrapProgress: Send + Sync + 'static {
    async fn get_job(&self, org: &OrgId, job: &JobId) -> Result<Option<Job>, StoreError>;

    /// Jobs in state `running`, across orgs (for the worker's recovery sweep).
    async fn running_jobs(&self) -> Result<Vec<(OrgId, Job)>, StoreError>;

    /// Records the rate a running job's re-encryption adapted down to while KMS throttles it
    /// (`None`: back at its keys' limits), if the job still runs at `generation`.
    async fn set_job_throttle(
        &self,
        org: &OrgId,
        job: &JobId,
        generation: u32,
        rate: Option<u32>,
    ) -> Result<(), StoreError>;

    /// Claims the right to plan a running job again: sets its `updated_at` to now, only if it
    /// is running at `generation` and its `updated_at` (the later of its last plan and its last
    /// committed batch) is before `idle_before`. `true` for the one caller that won; every
    /// other concurrent or later claimer within the interval gets `false`.
    async fn claim_replan(
        &self,
        org: &OrgId,
        job: &JobId,
        generation: u32,
        idle_before: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Applies a batch's moves and failures with the progress counters, atomically, only while
    /// the job is `running` at `generation` (otherwise nothing changes). Exactly once per data
    /// key: a move that no longer matches changes nothing; a successful move clears an earlier
    /// failure of the same data key.
    async fn commit_batch(
        &self,
        org: &OrgId,
        batch: BatchCommit,
    ) -> Result<JobProgress, StoreError>;
}

/// The audit trail of each org.
#[async_trait]
pub trait AuditLog: Send + Sync + 'static {
    async fn append_audit(&self, org: &OrgId, events: &[AuditEvent]) -> Result<(), StoreError>;

    /// Newest first; `cursor` is an opaque value from a previous page.
    async fn list_audit(
        &self,
        org: &OrgId,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<(Vec<AuditEvent>, Option<String>), StoreError>;
}

/// Work for the rewrap workers. Small whatever the job size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RewrapMessage {
    /// Enumerate the job's source keys and enqueue one batch per page, from `resume` on (the
    /// start when absent). A large job is planned in bounded segments, each ending with the
    /// message that continues it, so no delivery outlives the queue's visibility timeout.
    Plan {
        org: OrgId,
        job_id: JobId,
        generation: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<PlanCursor>,
    },
    /// Move the data keys wrapped by `source` in `partition` with ids in `(after, until]`.
    Batch {
        org: OrgId,
        job_id: JobId,
        generation: u32,
        source: KeyId,
        #[serde(default)]
        partition: u32,
        after: Option<DataKeyId>,
        until: DataKeyId,
    },
}

/// Where a segmented plan continues: data keys wrapped by `source` in `partition` with ids
/// after `after`, then the following partitions and sources in the job's order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanCursor {
    pub source: KeyId,
    pub partition: u32,
    pub after: Option<DataKeyId>,
}

/// A received message; `receipt` acknowledges this delivery only.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub receipt: String,
    pub body: String,
    pub receive_count: u32,
}

/// At-least-once queue of rewrap work: a message may arrive twice, or be redelivered when a
/// worker dies before acknowledging it.
#[async_trait]
pub trait RewrapQueue: Send + Sync + 'static {
    async fn send(&self, messages: &[RewrapMessage]) -> Result<(), QueueError>;
    /// Up to `max` visible messages, waiting up to `wait` for one to arrive (long polling).
    /// Each stays invisible for the queue's visibility timeout, then is delivered again unless
    /// acknowledged.
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError>;
    async fn ack(&self, receipt: &str) -> Result<(), QueueError>;
}

/// A key-encryption key as a provider needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kek {
    pub org: OrgId,
    pub key_id: KeyId,
    pub spec: KeySpec,
    /// The org's external id, for assuming a customer's role.
    pub external_id: Option<String>,
}

/// A data key wrapped by a provider.
#[derive(Clone, Debug)]
pub struct Wrapped {
    pub blob: Vec<u8>,
    /// The concrete key that encrypted (an alias resolves to a key ARN), when the provider knows.
    pub resolved_key: Option<String>,
}

/// One data key of a page rewrapped in one go ([`KeyProvider::rewrap_locally`]).
#[derive(Clone, Debug)]
pub struct RewrapItem {
    pub ctx: EncryptionContext,
    pub wrapped: Vec<u8>,
}

/// Why one data key of a page did not move: using this key failed.
#[derive(Clone, Debug)]
pub struct KeyFailure {
    pub key_id: KeyId,
    pub error: KeyError,
}

/// Wraps and unwraps data keys under key-encryption keys, with an encryption context.
#[async_trait]
pub trait KeyProvider: Send + Sync + 'static {
    /// Makes a new key usable (a local key creates its material). Called once, before the
    /// add-time check.
    async fn prepare(&self, kek: &Kek) -> Result<(), KeyError> {
        let _ = kek;
        Ok(())
    }

    /// Forgets a key that was prepared but is certainly not stored: its check failed, or the
    /// commit that would have added it was refused. Never called when the commit's outcome is
    /// unknown. Best effort: the key was never used for data.
    async fn discard(&self, kek: &Kek) {
        let _ = kek;
    }

    async fn wrap(
        &self,
        kek: &Kek,
        ctx: &EncryptionContext,
        plaintext: &DataKey,
    ) -> Result<Wrapped, KeyError>;

    async fn unwrap(
        &self,
        kek: &Kek,
        ctx: &EncryptionContext,
        wrapped: &[u8],
    ) -> Result<DataKey, KeyError>;

    /// Whether [`KeyProvider::rewrap`] moves a data key from `from` to `to` in one call (so a
    /// re-encryption spends one request of each key's rate limit on it, not an unwrap and a
    /// wrap).
    fn rewraps_in_one_call(&self, from: &Kek, to: &Kek) -> bool {
        let _ = (from, to);
        false
    }

    /// Re-wraps without exposing the plaintext when one principal can use both keys; `None`
    /// when not supported, and the caller unwraps then wraps.
    async fn rewrap(
        &self,
        from: &Kek,
        to: &Kek,
        ctx: &EncryptionContext,
        wrapped: &[u8],
    ) -> Result<Option<Wrapped>, KeyError> {
        let _ = (from, to, ctx, wrapped);
        Ok(None)
    }

    /// Whether this provider rewraps from `from` to `to` in this process, with no network call
    /// and no per-call cost (local keys): the engine then hands it a whole page at once through
    /// [`KeyProvider::rewrap_locally`], on a blocking thread, instead of one call per data key.
    fn rewraps_locally(&self, from: &Kek, to: &Kek) -> bool {
        let _ = (from, to);
        false
    }

    /// Rewraps a page of data keys from `from` to `to`: one result per item, in order. Called
    /// only where [`KeyProvider::rewraps_locally`] said yes; CPU work only, never blocks on I/O
    /// for long. The default unwraps and wraps each item through the async calls.
    fn rewrap_locally(
        &self,
        from: &Kek,
        to: &Kek,
        items: &[RewrapItem],
    ) -> Vec<Result<Wrapped, KeyFailure>> {
        items
            .iter()
            .map(|item| {
                let plain =
                    futures::executor::block_on(self.unwrap(from, &item.ctx, &item.wrapped))
                        .map_err(|error| KeyFailure {
                            key_id: from.key_id.clone(),
                            error,
                        })?;
                futures::executor::block_on(self.wrap(to, &item.ctx, &plain)).map_err(|error| {
                    KeyFailure {
                        key_id: to.key_id.clone(),
                        error,
                    }
                })
            })
            .collect()
    }

    /// How many data keys one call of `kek`'s batch endpoints takes (Vault transit's
    /// `batch_input`), within the server's request limits; `None` when each data key is one
    /// call. Where either key of a re-encryption batches, the engine moves a page in chunks of
    /// this size through [`KeyProvider::rewrap_batch`] or the two calls below.
    fn batch_limit(&self, kek: &Kek) -> Option<usize> {
        let _ = kek;
        None
    }

    /// Wraps a chunk of data keys: one result per item, in order. `Err` when the call as a
    /// whole failed (a failure of the key, not of one data key). The default wraps one by one.
    async fn wrap_batch(
        &self,
        kek: &Kek,
        items: &[(EncryptionContext, DataKey)],
    ) -> Result<Vec<Result<Wrapped, KeyError>>, KeyError> {
        let mut out = Vec::with_capacity(items.len());
        for (ctx, key) in items {
            out.push(self.wrap(kek, ctx, key).await);
        }
        Ok(out)
    }

    /// Unwraps a chunk of data keys, like [`KeyProvider::wrap_batch`].
    async fn unwrap_batch(
        &self,
        kek: &Kek,
        items: &[RewrapItem],
    ) -> Result<Vec<Result<DataKey, KeyError>>, KeyError> {
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            out.push(self.unwrap(kek, &item.ctx, &item.wrapped).await);
        }
        Ok(out)
    }

    /// Moves a chunk from `from` to `to` in one call with the plaintext never leaving the
    /// provider (transit `rewrap` between versions of one key); `None` when not supported, and
    /// the engine unwraps then wraps the chunk.
    async fn rewrap_batch(
        &self,
        from: &Kek,
        to: &Kek,
        items: &[RewrapItem],
    ) -> Result<Option<Vec<Result<Wrapped, KeyError>>>, KeyError> {
        let _ = (from, to, items);
        Ok(None)
    }

    /// A real round trip (encrypt and decrypt a test value). Returns the resolved key, if any.
    async fn check(&self, kek: &Kek) -> Result<Option<String>, KeyError>;
}

/// Who is calling.
#[async_trait]
pub trait Authenticator: Send + Sync + 'static {
    async fn authenticate(&self, bearer_token: &str) -> Result<Principal, AuthError>;
}

/// Where [`ServiceEvent`]s go: EventBridge on AWS, a webhook locally. Best effort: the caller
/// logs an error and carries on; the adapter counts each event's outcome
/// ([`crate::metrics::events`]), since only it knows when delivery is final.
#[async_trait]
pub trait EventPublisher: Send + Sync + 'static {
    async fn publish(&self, events: &[ServiceEvent]) -> Result<(), EventError>;
}
