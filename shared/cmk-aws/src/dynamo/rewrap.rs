//! The re-encryption batch protocol (see "Exactly-once progress" in the module docs), and the
//! job reads and writes beside it.

use rand::Rng;
use std::collections::HashMap;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Put, TransactWriteItem, Update};
use chrono::{DateTime, Utc};
use cmk_core::error::StoreError;
use cmk_core::model::{DataKeyId, HealthStatus, Job, JobError, JobId, JobState, KeyId, OrgId};
use cmk_core::ports::{BatchCommit, DataKeyMove, JobProgress};

use super::codec::{from_json, get_n, get_s, job_from, n, opt_u32, s, ts, Tally};
use super::error::{build, collided, corrupt, failed_conditions, sdk_err};
use super::schema::{
    dk_pk, fail_prefix, fail_sk, gsi1pk, job_sk, move_count_sk, org_pk, partition_of,
    progress_prefix, progress_sk, DK_SK, MOVED_BY, MOVES_PER_TRANSACTION, PROGRESS_SHARDS,
    RUNNING_JOBS,
};
use super::store::{collision_backoff, DynamoStore, TRANSACTION_ATTEMPTS};

pub(super) const ERRORS_SHOWN: i32 = 100;

/// Where the batches of a job count their progress.
#[derive(Clone, Copy, Debug)]
pub(super) enum Counting {
    /// On the job item (jobs started before progress shards existed).
    JobItem,
    /// On one of this many progress shards, picked at random per transaction.
    Shards(u32),
}

impl Counting {
    /// The progress item one transaction writes, and the move-counter shard beside it.
    pub(super) fn pick(self, job: &JobId) -> (String, u32) {
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

impl DynamoStore {
    pub(super) async fn job_errors(
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
            .expression_attribute_values(":p", s(fail_prefix(job, generation)))
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

    pub(super) async fn read_job(
        &self,
        org: &OrgId,
        job: &JobId,
    ) -> Result<Option<Job>, StoreError> {
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
    pub(super) async fn tally(&self, org: &OrgId, job: &JobId) -> Result<Tally, StoreError> {
        Tally::of(
            &self
                .query_prefix(org_pk(org), &progress_prefix(job))
                .await?,
        )
    }

    /// Moves one chunk; returns how many moved (`None`: the job moved on). Drops moves whose
    /// condition failed and tries the rest again; a transaction that collided with another
    /// (`TransactionConflict`) is tried again on another progress shard after a short backoff.
    pub(super) async fn commit_moves(
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
            // All moves of a batch go from one source to one target. A `rotate` job's moves
            // stay with their key: no count changes (and one item may not be written twice in
            // a transaction).
            let to = moves[0].to_key_id.clone();
            if to != batch.source {
                items.push(self.counter_update(
                    org,
                    move_count_sk(&batch.source, shard),
                    -count,
                )?);
                items.push(self.counter_update(org, move_count_sk(&to, shard), count)?);
            }
            let header = items.len();
            for m in &moves {
                items.push(self.move_update(org, &batch.job_id, m)?);
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
            // Index 0 is the progress item, then the counters (if any), then the moves.
            let before = moves.len();
            moves = moves
                .into_iter()
                .enumerate()
                .filter(|(i, _)| !failed.get(i + header).copied().unwrap_or(false))
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
    pub(super) fn progress_update(
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

    /// Moves one data key to its new wrapping, only if still at the source and version read.
    /// A move within one key marks the data key with its job, any other clears the mark (see
    /// `DataKeyStore::list_data_keys`).
    pub(super) fn move_update(
        &self,
        org: &OrgId,
        job: &JobId,
        m: &DataKeyMove,
    ) -> Result<TransactWriteItem, StoreError> {
        let mut update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(dk_pk(org, &m.id)))
            .key("sk", s(DK_SK))
            .condition_expression("#kid = :from AND #ver = :v")
            .expression_attribute_names("#kid", "key_id")
            .expression_attribute_names("#mb", MOVED_BY)
            .expression_attribute_names("#ver", "version")
            .expression_attribute_names("#w", "wrapped")
            .expression_attribute_names("#g1", "gsi1pk")
            .expression_attribute_values(":from", s(m.from_key_id.as_str()))
            .expression_attribute_values(":v", n(m.from_version))
            .expression_attribute_values(":to", s(m.to_key_id.as_str()))
            .expression_attribute_values(":w", AttributeValue::B(Blob::new(m.wrapped.clone())))
            .expression_attribute_values(":v1", n(m.from_version + 1))
            .expression_attribute_values(":g1", s(gsi1pk(org, &m.to_key_id, partition_of(&m.id))));
        update = if m.to_key_id == m.from_key_id {
            update
                .update_expression("SET #kid = :to, #w = :w, #ver = :v1, #g1 = :g1, #mb = :job")
                .expression_attribute_values(":job", s(job.as_str()))
        } else {
            update.update_expression("SET #kid = :to, #w = :w, #ver = :v1, #g1 = :g1 REMOVE #mb")
        };
        Ok(TransactWriteItem::builder()
            .update(build(update.build())?)
            .build())
    }

    /// Records failures of data keys still wrapped by the source, counted once each. Recording
    /// bumps the data key's version, so a concurrent duplicate of the batch that did move it
    /// (read at the old version) loses its condition: a data key is never both done and failed.
    pub(super) async fn record_failures(
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
    pub(super) async fn clear_failures(
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

    /// A batch's view of its job: its progress, and where this batch counts it.
    pub(super) async fn progress(
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

    pub(super) async fn write_job_throttle(
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

    pub(super) async fn claim_job_replan(
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

    pub(super) async fn query_running_jobs(&self) -> Result<Vec<(OrgId, Job)>, StoreError> {
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

    pub(super) async fn commit_rewrap_batch(
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
}
