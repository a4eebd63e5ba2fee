//! The re-encryption engine: what a worker does with one queue message. The same code runs in the
//! local worker ([`crate::worker`]) and in the SQS-triggered worker Lambda (`cmk-lambda`).
//!
//! A job is planned into batch messages, one per page of a source key's data keys, each naming a
//! stable id range. A batch rewraps what the source still wraps in its range and commits moves
//! and progress in one conditional write, so duplicates and redeliveries change nothing twice.
//!
//! Re-planning a running job (the sweep, an admin's retry) is what recovers a lost message, and
//! also what would multiply queued work if done freely. The job's `updated_at` is the later of
//! its last plan and its last committed batch; a re-plan happens only when that is older than
//! the stall interval, and it is claimed by a conditional write that moves `updated_at` to now
//! ([`crate::ports::Store::claim_replan`]), so one claimer per interval wins across every
//! instance. Duplicated plans would still be harmless (invariant 2: every move is conditional),
//! only wasteful.
//!
//! Over 600 lines: planning, a batch and its retry layers are one protocol, read top to bottom.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{self, StreamExt};

use crate::error::{CoreError, KeyError, KeyErrorKind};
use crate::model::{
    data_key_context, DataKeyId, DataKeyRecord, EncryptionContext, Job, JobError, JobId, JobState,
    KeyId, OrgId,
};
use crate::ports::{
    BatchCommit, DataKeyMove, Kek, KeyFailure, PlanCursor, RewrapItem, RewrapMessage, Wrapped,
};
use crate::ratelimit::{Limiter, RateLimits};
use crate::rules::{self, Finish};
use crate::service::{Cmk, Decision};

/// Tuning of the engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Data keys per batch message.
    pub batch_size: usize,
    /// Key-provider calls in flight within one batch.
    pub concurrency: usize,
    /// Attempts per data key when the provider throttles or fails transiently.
    pub max_attempts: u32,
    /// First backoff after a throttled call; doubles per attempt.
    pub retry_backoff: Duration,
    /// Batch messages one plan delivery enqueues before it hands the rest to a continuation.
    pub plan_segment: usize,
    /// How many worker instances at most spend one key's re-encryption rate limit at once;
    /// each takes this share of it (see [`crate::ratelimit`]). 1 for the one local worker.
    pub rate_share: u32,
    /// The most time one batch message may take. A batch that a rate limit slows down commits
    /// what it moved and hands the rest of its range to a new message when this runs out, so
    /// no delivery outlives the queue's visibility timeout or the worker Lambda's timeout.
    pub message_budget: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            batch_size: crate::defaults::BATCH_SIZE,
            concurrency: 16,
            max_attempts: 5,
            retry_backoff: Duration::from_millis(50),
            // 100,000 data keys at the default batch size: seconds of enumeration.
            plan_segment: 200,
            rate_share: 1,
            message_budget: Duration::from_secs(20),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RewrapEngine {
    cmk: Cmk,
    config: EngineConfig,
    /// This worker's re-encryption rate limiters, shared by every batch it runs.
    limits: Arc<RateLimits>,
}

/// The pace of one batch: its source's and target's limiters (`None`: not limited), and the
/// end of its message's time budget.
#[derive(Clone, Debug)]
struct BatchLimits {
    from: Option<Arc<Limiter>>,
    to: Option<Arc<Limiter>>,
    deadline: tokio::time::Instant,
}

impl BatchLimits {
    /// A slot of `limiter` before `deadline`, or [`Failure::Deferred`].
    async fn acquire(
        limiter: &Option<Arc<Limiter>>,
        deadline: tokio::time::Instant,
    ) -> Result<(), Failure> {
        match limiter {
            Some(l) if !l.acquire_before(deadline).await => Err(Failure::Deferred),
            _ => Ok(()),
        }
    }

    fn throttled(limiter: &Option<Arc<Limiter>>, e: &KeyError) {
        if let (Some(l), KeyErrorKind::Throttled) = (limiter, e.kind) {
            l.throttled();
        }
    }

    /// The slowest throttled rate of the two, in whole requests per second.
    fn throttled_rate(&self) -> Option<u32> {
        [&self.from, &self.to]
            .into_iter()
            .flatten()
            .filter_map(|l| l.throttled_rate())
            .reduce(f64::min)
            .map(|r| r.round().max(1.0) as u32)
    }
}

/// The data keys one batch message names.
#[derive(Clone, Copy, Debug)]
struct Range<'a> {
    source: &'a KeyId,
    partition: u32,
    after: Option<&'a DataKeyId>,
    until: &'a DataKeyId,
}

/// Why a data key did not move in this delivery.
#[derive(Clone, Debug)]
enum Failure {
    /// Using this key failed, for this reason.
    Key { key_id: KeyId, error: KeyError },
    /// The message's time budget ran out first: the data key waits for the next delivery.
    Deferred,
}

impl From<KeyFailure> for Failure {
    fn from(f: KeyFailure) -> Self {
        Failure::Key {
            key_id: f.key_id,
            error: f.error,
        }
    }
}

/// The rewrapped key, or why it did not move.
type RewrapResult = Result<Wrapped, Failure>;

/// How many batch-endpoint calls one batch message has in flight at once.
const CHUNKS_IN_FLIGHT: usize = 4;

/// How many planned batch messages are sent at once.
const SEND_CHUNK: usize = 100;

impl RewrapEngine {
    pub fn new(cmk: Cmk, config: EngineConfig) -> Self {
        let limits = Arc::new(RateLimits::new(config.rate_share));
        Self {
            cmk,
            config,
            limits,
        }
    }

    /// A key's limiter, with its limit as stored now (an admin may change it mid-job).
    async fn limiter(&self, org: &OrgId, key: &KeyId) -> Result<Option<Arc<Limiter>>, CoreError> {
        if key.is_service() {
            return Ok(None);
        }
        let limit = self
            .cmk
            .orgs()
            .get_key(org, key)
            .await?
            .and_then(|r| r.rewrap_rate_limit);
        Ok(self.limits.limiter(org, key, limit))
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The service whose ports the engine works through.
    pub fn cmk(&self) -> &Cmk {
        &self.cmk
    }

    /// Handles one message body. `Err` means: do not acknowledge; let the queue redeliver.
    pub async fn handle(&self, body: &str) -> Result<(), CoreError> {
        let message: RewrapMessage = match serde_json::from_str(body) {
            Ok(m) => m,
            Err(e) => {
                // A poison message must not block the queue; it can never succeed.
                tracing::error!(error = %e, "dropping an unreadable rewrap message");
                return Ok(());
            }
        };
        match message {
            RewrapMessage::Plan {
                org,
                job_id,
                generation,
                resume,
            } => self.plan(&org, &job_id, generation, resume).await?,
            RewrapMessage::Batch {
                org,
                job_id,
                generation,
                source,
                partition,
                after,
                until,
            } => {
                let range = Range {
                    source: &source,
                    partition,
                    after: after.as_ref(),
                    until: &until,
                };
                self.batch(&org, &job_id, generation, range).await?
            }
        }
        Ok(())
    }

    /// The job, if it is running at this generation; else the message is stale.
    async fn live_job(
        &self,
        org: &OrgId,
        job_id: &JobId,
        generation: u32,
    ) -> Result<Option<Job>, CoreError> {
        let job = self.cmk.progress().get_job(org, job_id).await?;
        Ok(job.filter(|j| j.state == JobState::Running && j.generation == generation))
    }

    /// Enumerates the sources page by page from `resume` on, and enqueues one batch per page.
    /// After [`EngineConfig::plan_segment`] batches it enqueues a plan that continues where it
    /// stopped, and returns. A redelivered segment enqueues its batches and its continuation
    /// again, and so does a re-plan from the start (the sweep, a final check) while a chain
    /// still runs: the rest of the plan is then done twice. That costs work, never
    /// correctness, because every move is conditional; both are rare.
    pub async fn plan(
        &self,
        org: &OrgId,
        job_id: &JobId,
        generation: u32,
        resume: Option<PlanCursor>,
    ) -> Result<(), CoreError> {
        let Some(job) = self.live_job(org, job_id, generation).await? else {
            return Ok(());
        };
        let partitions = self.cmk.data_keys().data_key_partitions();
        let segment = self.config.plan_segment.max(1);
        let mut positions: Vec<(&KeyId, u32)> = job
            .source_key_ids
            .iter()
            .flat_map(|s| (0..partitions).map(move |p| (s, p)))
            .collect();
        let mut after: Option<DataKeyId> = None;
        if let Some(cursor) = resume {
            if let Some(at) = positions
                .iter()
                .position(|(s, p)| **s == cursor.source && *p == cursor.partition)
            {
                positions.drain(..at);
                after = cursor.after;
            }
        }
        let mut pending = Vec::new();
        let mut planned = 0usize;
        for (source, partition) in positions {
            loop {
                if planned + pending.len() >= segment {
                    pending.push(RewrapMessage::Plan {
                        org: org.clone(),
                        job_id: job_id.clone(),
                        generation,
                        resume: Some(PlanCursor {
                            source: source.clone(),
                            partition,
                            after: after.clone(),
                        }),
                    });
                    self.cmk.queue().send(&pending).await?;
                    tracing::info!(%org, job = %job_id, batches = planned + pending.len() - 1, "planned a segment of a re-encryption; continuing in another delivery");
                    return Ok(());
                }
                let ids = self
                    .cmk
                    .data_keys()
                    .list_data_key_ids(
                        org,
                        source,
                        partition,
                        after.as_ref(),
                        self.config.batch_size,
                    )
                    .await?;
                let Some(last) = ids.last().cloned() else {
                    break;
                };
                pending.push(RewrapMessage::Batch {
                    org: org.clone(),
                    job_id: job_id.clone(),
                    generation,
                    source: source.clone(),
                    partition,
                    after: after.clone(),
                    until: last.clone(),
                });
                if pending.len() >= SEND_CHUNK {
                    self.cmk.queue().send(&pending).await?;
                    planned += pending.len();
                    pending.clear();
                }
                if ids.len() < self.config.batch_size {
                    break;
                }
                after = Some(last);
            }
            after = None;
        }
        if !pending.is_empty() {
            self.cmk.queue().send(&pending).await?;
            planned += pending.len();
        }
        tracing::info!(%org, job = %job_id, batches = planned, "planned re-encryption");
        // Nothing left to enqueue: if no batch is outstanding either (an empty job, or a last
        // segment with nothing in it), only the final check remains. It is a no-op otherwise.
        if planned == 0 {
            self.finish(org, job_id).await?;
        }
        Ok(())
    }

    async fn batch(
        &self,
        org: &OrgId,
        job_id: &JobId,
        generation: u32,
        range: Range<'_>,
    ) -> Result<(), CoreError> {
        let Range {
            source,
            partition,
            after,
            until,
        } = range;
        let Some(job) = self.live_job(org, job_id, generation).await? else {
            return Ok(());
        };
        let from = self.cmk.kek(org, source).await?;
        let to = self.cmk.kek(org, &job.target_key_id).await?;
        let deadline = tokio::time::Instant::now() + self.config.message_budget;
        let limits = BatchLimits {
            from: self.limiter(org, source).await?,
            to: self.limiter(org, &job.target_key_id).await?,
            deadline,
        };
        let mut after = after.cloned();
        loop {
            let started = std::time::Instant::now();
            // Only what the source still wraps and this job has not moved: a redelivered range
            // costs no provider call for the data keys that already moved (a `rotate` job's
            // stay with their key, so only the job's mark on them tells).
            let records = self
                .cmk
                .data_keys()
                .list_data_keys(
                    org,
                    source,
                    partition,
                    after.as_ref(),
                    Some(until),
                    self.config.batch_size,
                    Some(job_id),
                )
                .await?;
            let Some(last) = records.last().map(|r| r.id.clone()) else {
                break;
            };
            // The range is exhausted when the page was short or reached its upper bound.
            let more = records.len() >= self.config.batch_size && last < *until;
            let deferred = self
                .rewrap_and_commit(org, &job, &from, &to, &limits, records)
                .await?;
            crate::metrics::batch_seconds(started.elapsed().as_secs_f64());
            if deferred || (more && tokio::time::Instant::now() >= limits.deadline) {
                // Out of time: what moved is committed; a new message takes the rest of the
                // range from this page on (what moved is no longer listed there).
                self.cmk
                    .queue()
                    .send(&[RewrapMessage::Batch {
                        org: org.clone(),
                        job_id: job_id.clone(),
                        generation,
                        source: source.clone(),
                        partition,
                        after: after.clone(),
                        until: until.clone(),
                    }])
                    .await?;
                tracing::info!(%org, job = %job_id, "a batch ran out of its time budget; the rest of its range continues in another message");
                return Ok(());
            }
            if !more {
                return Ok(());
            }
            after = Some(last);
        }
        // Nothing left in this range: a redelivery after a crash between the last batch's commit
        // and the job's completion. Finish the job if that is what remained.
        if let Some(job) = self.live_job(org, job_id, generation).await? {
            if job.done + job.failed >= job.total {
                self.finish(org, job_id).await?;
            }
        }
        Ok(())
    }

    /// Rewraps a page of data keys and commits
    /// the moves and failures in one batch; returns whether some were deferred to a new message.
    async fn rewrap_and_commit(
        &self,
        org: &OrgId,
        job: &Job,
        from: &Kek,
        to: &Kek,
        limits: &BatchLimits,
        records: Vec<DataKeyRecord>,
    ) -> Result<bool, CoreError> {
        // Keys with no network call and no rate limit are rewrapped a page at a time; the
        // others one data key per provider call.
        let keys = self.cmk.key_provider();
        let local = limits.from.is_none() && limits.to.is_none() && keys.rewraps_locally(from, to);
        // Keys with batch endpoints: a page in a few calls of many data keys each.
        let chunk = [keys.batch_limit(from), keys.batch_limit(to)]
            .into_iter()
            .flatten()
            .min();
        let results = if local {
            self.rewrap_page_locally(org, from, to, records).await?
        } else if let Some(chunk) = chunk {
            self.rewrap_page_in_chunks(org, from, to, limits, records, chunk.max(1))
                .await
        } else {
            self.rewrap_page_by_calls(org, from, to, limits, records)
                .await
        };

        let mut batch = BatchCommit {
            job_id: job.id.clone(),
            generation: job.generation,
            source: from.key_id.clone(),
            moves: Vec::with_capacity(results.len()),
            failures: Vec::new(),
        };
        let mut failed_key: Option<(KeyId, KeyError)> = None;
        let mut deferred = false;
        for (record, result) in results {
            match result {
                Ok(wrapped) => batch.moves.push(DataKeyMove {
                    id: record.id,
                    from_key_id: from.key_id.clone(),
                    from_version: record.version,
                    to_key_id: to.key_id.clone(),
                    wrapped: wrapped.blob,
                    row_hint: record.row_hint,
                }),
                Err(Failure::Deferred) => deferred = true,
                Err(Failure::Key { key_id, error }) => {
                    batch.failures.push(JobError {
                        data_key_id: record.id,
                        key_id: key_id.clone(),
                        reason: error.kind.health(),
                        message: error.message.clone(),
                    });
                    // A key's health says what is wrong with the key, not with one data key.
                    if !error.kind.is_data_key_own() {
                        failed_key = Some((key_id, error));
                    }
                }
            }
        }
        let moved: Vec<DataKeyId> = batch.moves.iter().map(|m| m.id.clone()).collect();
        // One atomic write; if it fails the message is redelivered and the batch redone.
        let failures = batch.failures.len() as u64;
        let progress = self.cmk.progress().commit_batch(org, batch).await?;
        crate::metrics::data_keys_moved(progress.applied);
        crate::metrics::data_keys_failed(failures);
        self.cmk.moved(org, &moved);
        self.show_throttling(org, job, limits).await;
        if let Some((key_id, error)) = failed_key {
            self.record_health(org, &key_id, &error).await;
        }
        if progress.state == JobState::Running && progress.all_processed() {
            self.finish(org, &job.id).await?;
        }
        Ok(deferred)
    }

    /// A page of local keys in one go on a blocking thread: no network call to wait for and no
    /// rate limit to honour, so scheduling each data key on its own would only cost time, and
    /// the crypto leaves the async workers to serve requests meanwhile.
    async fn rewrap_page_locally(
        &self,
        org: &OrgId,
        from: &Kek,
        to: &Kek,
        mut records: Vec<DataKeyRecord>,
    ) -> Result<Vec<(DataKeyRecord, RewrapResult)>, CoreError> {
        let keys = Arc::clone(self.cmk.key_provider());
        let (org, from, to) = (org.clone(), from.clone(), to.clone());
        tokio::task::spawn_blocking(move || {
            let items: Vec<RewrapItem> = records
                .iter_mut()
                .map(|r| RewrapItem {
                    ctx: data_key_context(&org, &r.id),
                    // The old wrapping is not needed once rewrapped: moved, not copied.
                    wrapped: std::mem::take(&mut r.wrapped),
                })
                .collect();
            let results = keys.rewrap_locally(&from, &to, &items);
            if results.len() != records.len() {
                return Err(CoreError::Internal(format!(
                    "the key provider answered {} results for {} data keys",
                    results.len(),
                    records.len()
                )));
            }
            Ok(records
                .into_iter()
                .zip(results.into_iter().map(|r| r.map_err(Failure::from)))
                .collect())
        })
        .await
        .map_err(|e| CoreError::Internal(format!("the rewrap thread failed: {e}")))?
    }

    /// A page through the provider's calls, up to [`EngineConfig::concurrency`] data keys at
    /// once, each taking its slots of the keys' rate limits.
    async fn rewrap_page_by_calls(
        &self,
        org: &OrgId,
        from: &Kek,
        to: &Kek,
        limits: &BatchLimits,
        records: Vec<DataKeyRecord>,
    ) -> Vec<(DataKeyRecord, RewrapResult)> {
        // Once a key fails (access denied, disabled, deleted, or throttled past every retry),
        // the rest of the batch fails fast with the same reason instead of calling the
        // provider again: a batch stays short even while KMS throttles. Only a failure of one
        // data key's own bytes (a bad ciphertext) stays that data key's.
        let broken: Mutex<Option<Failure>> = Mutex::new(None);
        stream::iter(records)
            .map(|record| {
                let broken = &broken;
                async move {
                    let known = broken.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    let result = match known {
                        Some(failure) => Err(failure),
                        None => {
                            let r = self
                                .rewrap_with_retries(org, from, to, limits, &record)
                                .await;
                            if let Err(f @ Failure::Key { error: e, .. }) = &r {
                                if !e.kind.is_data_key_own() {
                                    *broken.lock().unwrap_or_else(|e| e.into_inner()) =
                                        Some(f.clone());
                                }
                            }
                            r
                        }
                    };
                    (record, result)
                }
            })
            .buffer_unordered(self.config.concurrency.max(1))
            .collect()
            .await
    }

    /// A page through the providers' batch endpoints, in chunks of `chunk` data keys, up to
    /// [`CHUNKS_IN_FLIGHT`] at once. Each call takes one slot of its key's rate limit: the
    /// limit counts requests, and a batch is one request. Once a key fails, the remaining
    /// chunks fail fast with the same reason, as in [`Self::rewrap_page_by_calls`].
    async fn rewrap_page_in_chunks(
        &self,
        org: &OrgId,
        from: &Kek,
        to: &Kek,
        limits: &BatchLimits,
        mut records: Vec<DataKeyRecord>,
        chunk: usize,
    ) -> Vec<(DataKeyRecord, RewrapResult)> {
        let mut chunks = Vec::with_capacity(records.len().div_ceil(chunk));
        while !records.is_empty() {
            let rest = records.split_off(records.len().min(chunk));
            chunks.push(std::mem::replace(&mut records, rest));
        }
        let broken: Mutex<Option<Failure>> = Mutex::new(None);
        let done: Vec<Vec<(DataKeyRecord, RewrapResult)>> = stream::iter(chunks)
            .map(|records| {
                let broken = &broken;
                async move {
                    let known = broken.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    let results = match known {
                        Some(failure) => vec![Err(failure); records.len()],
                        None => {
                            let items: Vec<RewrapItem> = records
                                .iter()
                                .map(|r| RewrapItem {
                                    ctx: data_key_context(org, &r.id),
                                    wrapped: r.wrapped.clone(),
                                })
                                .collect();
                            let results = match self
                                .rewrap_chunk_with_retries(from, to, limits, &items)
                                .await
                            {
                                Ok(results) => results,
                                Err(failure) => vec![Err(failure); items.len()],
                            };
                            let key_failure = results.iter().find_map(|r| match r {
                                Err(f @ Failure::Key { error, .. })
                                    if !error.kind.is_data_key_own() =>
                                {
                                    Some(f.clone())
                                }
                                _ => None,
                            });
                            if key_failure.is_some() {
                                *broken.lock().unwrap_or_else(|e| e.into_inner()) = key_failure;
                            }
                            results
                        }
                    };
                    records.into_iter().zip(results).collect()
                }
            })
            .buffer_unordered(CHUNKS_IN_FLIGHT)
            .collect()
            .await;
        done.into_iter().flatten().collect()
    }

    /// One chunk, retrying a call that was throttled or failed transiently as a whole, with
    /// backoff within the message's budget.
    async fn rewrap_chunk_with_retries(
        &self,
        from: &Kek,
        to: &Kek,
        limits: &BatchLimits,
        items: &[RewrapItem],
    ) -> Result<Vec<RewrapResult>, Failure> {
        let mut attempt = 0;
        loop {
            match self.rewrap_chunk_once(from, to, limits, items).await {
                Err(Failure::Key { ref error, .. })
                    if error.kind.is_retryable() && attempt + 1 < self.config.max_attempts =>
                {
                    let delay = self.config.retry_backoff * 2u32.saturating_pow(attempt);
                    if tokio::time::Instant::now() + delay > limits.deadline {
                        return Err(Failure::Deferred);
                    }
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// One try at a chunk: a one-call rewrap where the provider has one (the plaintext stays
    /// in the provider), else a batch unwrap from `from` and a batch wrap to `to`.
    async fn rewrap_chunk_once(
        &self,
        from: &Kek,
        to: &Kek,
        limits: &BatchLimits,
        items: &[RewrapItem],
    ) -> Result<Vec<RewrapResult>, Failure> {
        let keys = self.cmk.key_provider();
        let failed = |kek: &Kek, limiter: &Option<Arc<Limiter>>, error: KeyError| {
            BatchLimits::throttled(limiter, &error);
            Failure::Key {
                key_id: kek.key_id.clone(),
                error,
            }
        };
        let answered = |n: usize, kek: &Kek| {
            failed(
                kek,
                &None,
                KeyError::new(
                    KeyErrorKind::Transient,
                    format!(
                        "the key provider answered {n} results for {} data keys",
                        items.len()
                    ),
                ),
            )
        };
        BatchLimits::acquire(&limits.from, limits.deadline).await?;
        let same_key = from.key_id == to.key_id;
        if !same_key {
            BatchLimits::acquire(&limits.to, limits.deadline).await?;
        }
        match keys.rewrap_batch(from, to, items).await {
            Ok(Some(results)) if results.len() == items.len() => {
                return Ok(results
                    .into_iter()
                    .map(|r| r.map_err(|e| failed(from, &None, e)))
                    .collect())
            }
            Ok(Some(results)) => return Err(answered(results.len(), from)),
            Ok(None) => {}
            Err(e) => {
                BatchLimits::throttled(&limits.to, &e);
                return Err(failed(from, &limits.from, e));
            }
        }
        let plain = keys
            .unwrap_batch(from, items)
            .await
            .map_err(|e| failed(from, &limits.from, e))?;
        if plain.len() != items.len() {
            return Err(answered(plain.len(), from));
        }
        let mut out: Vec<Option<RewrapResult>> = Vec::with_capacity(items.len());
        let (mut to_wrap, mut slots) = (Vec::new(), Vec::new());
        for (i, r) in plain.into_iter().enumerate() {
            match r {
                Ok(key) => {
                    to_wrap.push((items[i].ctx.clone(), key));
                    slots.push(i);
                    out.push(None);
                }
                Err(e) => out.push(Some(Err(failed(from, &None, e)))),
            }
        }
        if !to_wrap.is_empty() {
            let wrapped = keys
                .wrap_batch(to, &to_wrap)
                .await
                .map_err(|e| failed(to, &limits.to, e))?;
            if wrapped.len() != to_wrap.len() {
                return Err(answered(wrapped.len(), to));
            }
            for (i, r) in slots.into_iter().zip(wrapped) {
                out[i] = Some(r.map_err(|e| failed(to, &None, e)));
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// Shows on the job whether KMS throttling slowed it, and to what rate: written only when
    /// that changes (throttled or not, or the rate by a quarter), so at most once per batch.
    async fn show_throttling(&self, org: &OrgId, job: &Job, limits: &BatchLimits) {
        let now = limits.throttled_rate();
        let changed = match (job.throttled_rate, now) {
            (None, None) => false,
            (Some(a), Some(b)) => a.abs_diff(b) * 4 > a,
            _ => true,
        };
        if changed {
            if let Err(e) = self
                .cmk
                .progress()
                .set_job_throttle(org, &job.id, job.generation, now)
                .await
            {
                tracing::warn!(error = %e, "could not record the job's throttling");
            }
        }
    }

    /// Records a key's health after a failure, at most once per key per interval; wipes the
    /// key's cached data keys when the customer took it away.
    async fn record_health(&self, org: &OrgId, key: &KeyId, error: &KeyError) {
        if !self.cmk.key_failed(org, key, error) {
            return;
        }
        let health = crate::service::failure_health(error);
        self.cmk.record_failure(org, key, health).await;
    }

    /// Rewraps one data key from `from` to `to`, retrying throttled and transient failures
    /// with backoff within the message's budget. On failure, names the key whose use failed.
    async fn rewrap_with_retries(
        &self,
        org: &OrgId,
        from: &Kek,
        to: &Kek,
        limits: &BatchLimits,
        record: &DataKeyRecord,
    ) -> RewrapResult {
        let ctx = data_key_context(org, &record.id);
        let mut attempt = 0;
        loop {
            match self
                .rewrap_once(from, to, limits, &ctx, &record.wrapped)
                .await
            {
                Err(Failure::Key { error: ref e, .. })
                    if e.kind.is_retryable() && attempt + 1 < self.config.max_attempts =>
                {
                    let delay = self.config.retry_backoff * 2u32.saturating_pow(attempt);
                    if tokio::time::Instant::now() + delay > limits.deadline {
                        return Err(Failure::Deferred);
                    }
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(Failure::Key { key_id, mut error }) if error.kind.is_retryable() => {
                    error.message =
                        format!("{} (gave up after {} attempts)", error.message, attempt + 1);
                    return Err(Failure::Key { key_id, error });
                }
                other => return other,
            }
        }
    }

    /// One try at moving a wrapped data key. A one-call rewrap (KMS `ReEncrypt`) is tried first
    /// where the provider has one. If it is refused, unwrap then wrap is tried: that still moves
    /// the key when only the one-call permission is missing, and otherwise tells which of the
    /// two keys failed (a refused `ReEncrypt` does not say whether the source or the target did).
    ///
    /// Every provider call first takes a slot of the rate limit of each key it uses, and a
    /// throttled call halves that limiter's rate.
    async fn rewrap_once(
        &self,
        from: &Kek,
        to: &Kek,
        limits: &BatchLimits,
        ctx: &EncryptionContext,
        wrapped: &[u8],
    ) -> RewrapResult {
        let keys = self.cmk.key_provider();
        if keys.rewraps_in_one_call(from, to) {
            BatchLimits::acquire(&limits.from, limits.deadline).await?;
            BatchLimits::acquire(&limits.to, limits.deadline).await?;
            match keys.rewrap(from, to, ctx, wrapped).await {
                Ok(Some(w)) => return Ok(w),
                Err(e) if e.kind.is_retryable() => {
                    // One call on both keys: either may have been throttled.
                    BatchLimits::throttled(&limits.from, &e);
                    BatchLimits::throttled(&limits.to, &e);
                    return Err(Failure::Key {
                        key_id: from.key_id.clone(),
                        error: e,
                    });
                }
                Err(e) => {
                    tracing::debug!(error = %e.message, "one-call rewrap refused; trying unwrap then wrap");
                }
                Ok(None) => {}
            }
        }
        BatchLimits::acquire(&limits.from, limits.deadline).await?;
        let plaintext = keys.unwrap(from, ctx, wrapped).await.map_err(|e| {
            BatchLimits::throttled(&limits.from, &e);
            Failure::Key {
                key_id: from.key_id.clone(),
                error: e,
            }
        })?;
        BatchLimits::acquire(&limits.to, limits.deadline).await?;
        keys.wrap(to, ctx, &plaintext).await.map_err(|e| {
            BatchLimits::throttled(&limits.to, &e);
            Failure::Key {
                key_id: to.key_id.clone(),
                error: e,
            }
        })
    }

    /// Completes, fails or re-plans a job whose data keys have all been processed.
    pub async fn finish(&self, org: &OrgId, job_id: &JobId) -> Result<(), CoreError> {
        let (_, replan, job) = self
            .cmk
            .decide_and_commit(org, |s| {
                Ok(match rules::finish(s, job_id) {
                    Finish::NotReady => Decision::Answer(false),
                    Finish::Commit(c) => Decision::Commit(c, false),
                    Finish::Replan(c) => Decision::Commit(c, true),
                })
            })
            .await?;
        if let Some(job) = job {
            tracing::info!(%org, job = %job.id, state = job.state.as_str(), done = job.done, total = job.total, "re-encryption job transition");
            if replan {
                tracing::warn!(%org, job = %job_id, "final check found data keys left; planning again");
                self.cmk.enqueue_plan(org, &job, job.generation).await;
            }
        }
        Ok(())
    }

    /// Re-plans running jobs that were neither planned nor advanced for `stalled_after` (a lost
    /// plan message, a message that went to a dead-letter queue), each at most once per
    /// interval whoever else sweeps or retries: see [`Cmk::replan_if_stalled`].
    pub async fn sweep(&self, stalled_after: Duration) -> Result<usize, CoreError> {
        let mut replanned = 0;
        for (org, job) in self.cmk.progress().running_jobs().await? {
            if self
                .cmk
                .replan_if_stalled(&org, &job, stalled_after)
                .await?
            {
                let idle_s = (crate::model::now() - job.updated_at).num_seconds();
                tracing::warn!(%org, job = %job.id, idle_s, "re-planned a stalled re-encryption job");
                replanned += 1;
            }
        }
        Ok(replanned)
    }
}
