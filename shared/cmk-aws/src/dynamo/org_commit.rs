//! An org's head, keys and job state: the snapshot and its one conditional commit.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{ConditionCheck, Put, ReturnValue, TransactWriteItem, Update};
use chrono::{DateTime, Utc};
use cmk_core::error::StoreError;
use cmk_core::model::{Health, Job, JobId, JobState, KeyId, KeyRecord, OrgId, SERVICE_KEY_ID};
use cmk_core::ports::{JobChange, JobUpdate, OrgCommit, OrgSnapshot};

use super::codec::{
    count_sums, event_item, from_json, get_n, get_s, job_item, json, key_from, key_item, n, opt_s,
    s, ts,
};
use super::error::{build, corrupt, failed_conditions, sdk_err};
use super::schema::{
    count_sk, gsi3sk, job_sk, key_sk, name_sk, org_of_pk, org_pk, progress_sk, CHECKED_KEYS,
    COUNT_PREFIX, COUNT_SHARDS, HEAD, KEYS_BY_CHECK, KEY_PREFIX, PROGRESS_SHARDS,
};
use super::store::DynamoStore;
use crate::describe;

impl DynamoStore {
    pub(super) async fn put_org_head(
        &self,
        org: &OrgId,
        new_external_id: &str,
    ) -> Result<String, StoreError> {
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

    pub(super) async fn read_org(&self, org: &OrgId) -> Result<OrgSnapshot, StoreError> {
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
            .query_prefix(org_pk(org), KEY_PREFIX)
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

    /// One transaction: the head (conditional on the snapshot's version), the keys, the job's
    /// change and the audit events. A lost condition is a [`StoreError::Conflict`]: the caller
    /// reads a new snapshot and applies its rule again.
    pub(super) async fn commit_org(
        &self,
        org: &OrgId,
        c: OrgCommit,
    ) -> Result<Option<Job>, StoreError> {
        let mut head_update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(org_pk(org)))
            .key("sk", s(HEAD))
            .condition_expression("attribute_not_exists(pk) OR #ver = :v")
            .expression_attribute_names("#ver", "version")
            .expression_attribute_names("#def", "default_key_id")
            .expression_attribute_values(":v", n(c.expected_version))
            .expression_attribute_values(":v1", n(c.expected_version + 1))
            .expression_attribute_values(":d", s(c.default_key_id.as_str()));
        let mut head_expr = "SET #ver = :v1, #def = :d".to_owned();
        let mut items = self.key_upserts(org, &c.upsert_keys).await?;
        let job_id = match &c.job {
            None => None,
            Some(JobChange::Start(job)) => {
                items.extend(self.job_start(org, job).await?);
                head_expr.push_str(", #job = :job");
                head_update = head_update
                    .expression_attribute_names("#job", "current_job_id")
                    .expression_attribute_values(":job", s(job.id.as_str()));
                Some(job.id.clone())
            }
            Some(JobChange::Update(u)) => {
                items.extend(self.job_update(org, u)?);
                Some(u.job_id.clone())
            }
        };
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

    /// Each key's item and its name's uniqueness guard. Keys keep their creation order: new
    /// keys get the next sequence number.
    async fn key_upserts(
        &self,
        org: &OrgId,
        keys: &[KeyRecord],
    ) -> Result<Vec<TransactWriteItem>, StoreError> {
        let pk = org_pk(org);
        let mut items = Vec::new();
        let existing: HashMap<String, i64> = self
            .query_prefix(pk.clone(), KEY_PREFIX)
            .await?
            .iter()
            .map(key_from)
            .map(|r| r.map(|(seq, k)| (k.id.to_string(), seq)))
            .collect::<Result<_, _>>()?;
        let mut next_seq = existing.values().copied().max().unwrap_or(0) + 1;
        for k in keys {
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
                            .item("sk", s(name_sk(&k.name)))
                            .item("key_id", s(k.id.as_str()))
                            .condition_expression("attribute_not_exists(pk) OR #kid = :id")
                            .expression_attribute_names("#kid", "key_id")
                            .expression_attribute_values(":id", s(k.id.as_str()))
                            .build(),
                    )?)
                    .build(),
            );
        }

        Ok(items)
    }

    /// A new job: its item with `total` counted now, its progress shards, and the checks that
    /// keep `total` exact.
    async fn job_start(
        &self,
        org: &OrgId,
        job: &Job,
    ) -> Result<Vec<TransactWriteItem>, StoreError> {
        let pk = org_pk(org);
        let mut items = Vec::new();
        // Count the sources now, and make the commit conditional on every insert shard
        // of every source still holding what was read (or still being absent): a data
        // key inserted meanwhile cancels the commit, so `total` is exact. The shards
        // that moves write need no check: no job runs (the head's version says so).
        let counters = self.query_prefix(pk.clone(), COUNT_PREFIX).await?;
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
        Ok(items)
    }

    /// A job's change of state: its item, conditional on the state and generation read, and
    /// every progress shard.
    fn job_update(&self, org: &OrgId, u: &JobUpdate) -> Result<Vec<TransactWriteItem>, StoreError> {
        let pk = org_pk(org);
        let mut items = Vec::new();
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
        Ok(items)
    }

    pub(super) async fn read_key(
        &self,
        org: &OrgId,
        key: &KeyId,
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.get(org_pk(org), &key_sk(key))
            .await?
            .map(|i| key_from(&i).map(|(_, k)| k))
            .transpose()
    }

    /// Writes a key's health and its place in the health checks' index; returns the health it
    /// replaced (`UPDATED_OLD`), `None` for a key that does not exist.
    pub(super) async fn write_key_health(
        &self,
        org: &OrgId,
        key: &KeyId,
        health: &Health,
    ) -> Result<Option<Health>, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(org_pk(org)))
            .key("sk", s(key_sk(key)))
            .update_expression("SET #h = :h, gsi3sk = :c")
            .expression_attribute_names("#h", "health")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":h", s(json(health)?))
            .expression_attribute_values(":c", s(gsi3sk(health.checked_at.as_ref())))
            .return_values(ReturnValue::UpdatedOld)
            .send()
            .await;
        match result {
            Ok(out) => {
                let old = out.attributes.unwrap_or_default();
                Ok(Some(from_json(get_s(&old, "health")?)?))
            }
            Err(e) if crate::error_code(&e) == Some("ConditionalCheckFailedException") => Ok(None),
            Err(e) => Err(sdk_err(e)),
        }
    }

    /// Keys not disabled, last checked before `before`, least recently checked first.
    pub(super) async fn query_keys_due(
        &self,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(OrgId, KeyRecord)>, StoreError> {
        let mut keys = Vec::new();
        let mut start = None;
        while keys.len() < limit {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(KEYS_BY_CHECK)
                .key_condition_expression("gsi3pk = :k AND gsi3sk < :before")
                .expression_attribute_values(":k", s(CHECKED_KEYS))
                .expression_attribute_values(":before", s(gsi3sk(Some(&before))))
                .limit(i32::try_from(limit - keys.len()).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(sdk_err)?;
            for item in out.items.unwrap_or_default() {
                let org = org_of_pk(get_s(&item, "pk")?).ok_or_else(|| corrupt("key pk"))?;
                keys.push((org, key_from(&item)?.1));
            }
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        Ok(keys)
    }

    /// A job's state change on one of its progress shards. Unconditional: it is written in the
    /// transaction that changes the job item, whose condition decides. On a job started before
    /// shards existed it creates the shard, which then carries no counts.
    pub(super) fn progress_shard_update(
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
}
