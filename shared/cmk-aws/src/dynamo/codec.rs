//! Items to and from the model: attribute helpers and one codec per item type.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, SecondsFormat, Utc};
use cmk_core::error::StoreError;
use cmk_core::model::{
    AuditEvent, DataKeyId, DataKeyRecord, Job, JobError, JobId, JobKind, JobState, KeyId,
    KeyRecord, KeyState, OrgId,
};

use super::error::corrupt;
use super::schema::{
    audit_pk, gsi3sk, job_sk, key_sk, org_pk, CHECKED_KEYS, COUNT_PREFIX, KEY_PREFIX,
    PROGRESS_SHARDS,
};

/// A DynamoDB item as the SDK gives and takes it.
pub(super) type Item = HashMap<String, AttributeValue>;

pub(super) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(super) fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub(super) fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

pub(super) fn json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn from_json<T: serde::de::DeserializeOwned>(v: &str) -> Result<T, StoreError> {
    serde_json::from_str(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn get_s<'a>(item: &'a Item, name: &str) -> Result<&'a str, StoreError> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Ok(v),
        _ => Err(corrupt(name)),
    }
}

pub(super) fn opt_s(item: &Item, name: &str) -> Option<String> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Some(v.clone()),
        _ => None,
    }
}

pub(super) fn get_n(item: &Item, name: &str) -> Result<i64, StoreError> {
    match item.get(name) {
        Some(AttributeValue::N(v)) => v.parse().map_err(|_| corrupt(name)),
        _ => Err(corrupt(name)),
    }
}

pub(super) fn parse_ts(v: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| corrupt("timestamp"))
}

/// A number attribute that counts from zero when absent.
pub(super) fn opt_n(item: &Item, name: &str) -> Result<i64, StoreError> {
    match item.get(name) {
        None => Ok(0),
        Some(_) => get_n(item, name),
    }
}

/// An optional number attribute (absent on items written before it existed).
pub(super) fn opt_u32(item: &Item, name: &str) -> Result<Option<u32>, StoreError> {
    match item.get(name) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(AttributeValue::N(v)) => v.parse().map(Some).map_err(|_| corrupt(name)),
        Some(_) => Err(corrupt(name)),
    }
}

pub(super) fn key_item(org: &OrgId, k: &KeyRecord, seq: i64) -> Result<Item, StoreError> {
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
    // A disabled key leaves the health checks' index: its item is replaced without these.
    if k.state != KeyState::Disabled {
        item.insert("gsi3pk".into(), s(CHECKED_KEYS));
        item.insert("gsi3sk".into(), s(gsi3sk(k.health.checked_at.as_ref())));
    }
    Ok(item)
}

pub(super) fn key_from(item: &Item) -> Result<(i64, KeyRecord), StoreError> {
    let sk = get_s(item, "sk")?;
    let id = sk
        .strip_prefix(KEY_PREFIX)
        .ok_or_else(|| corrupt("key sk"))?;
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
pub(super) fn count_sums(counters: &[Item]) -> Result<HashMap<KeyId, u64>, StoreError> {
    let mut sums: HashMap<KeyId, i64> = HashMap::new();
    for item in counters {
        let sk = get_s(item, "sk")?;
        let key = sk
            .strip_prefix(COUNT_PREFIX)
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
pub(super) fn job_item(org: &OrgId, job: &Job, total: u64) -> Result<Item, StoreError> {
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
pub(super) struct Tally {
    pub(super) done: i64,
    pub(super) failed: i64,
    /// The latest batch commit's time (fixed-width RFC 3339: string order is time order).
    pub(super) last_commit: Option<String>,
}

impl Tally {
    pub(super) fn of(shards: &[Item]) -> Result<Self, StoreError> {
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
pub(super) fn job_from(
    item: &Item,
    tally: &Tally,
    errors: Vec<JobError>,
) -> Result<Job, StoreError> {
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

pub(super) fn data_key_from(item: &Item) -> Result<DataKeyRecord, StoreError> {
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
        row_hint: None,
    })
}

pub(super) fn event_item(org: &OrgId, e: &AuditEvent) -> Item {
    let mut item = HashMap::from([
        ("pk".into(), s(audit_pk(org))),
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

pub(super) fn event_from(item: &Item) -> Result<AuditEvent, StoreError> {
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

#[cfg(test)]
mod tests {
    use super::super::schema::progress_sk;
    use super::*;
    use cmk_core::model::Health;

    #[test]
    fn key_items_round_trip() {
        let record = KeyRecord {
            id: KeyId::from_trusted("key_1"),
            name: "prod".into(),
            spec: cmk_core::model::KeySpec::AwsKms {
                role_arn: "arn:aws:iam::111122223333:role/r".into(),
                key_arn: "arn:aws:kms:eu-west-1:111122223333:key/k".into(),
                resolved_key_arn: Some("arn:aws:kms:eu-west-1:111122223333:key/k".into()),
                trust: cmk_core::model::TrustMode::ExternalId,
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
