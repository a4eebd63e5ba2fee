//! The SQLite [`Store`]. Every invariant is enforced inside one `BEGIN IMMEDIATE` transaction:
//! org commits are conditional on the org's version, data-key moves on the data key's source
//! and version, and progress counters change in the same transaction as the moves they count.
//!
//! Over 600 lines because each part of the port keeps its SQL beside it, so that a transaction
//! reads with the schema it relies on; the parts are separate `impl` blocks.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use cmk_core::error::StoreError;
use cmk_core::model::{
    AuditEvent, DataKeyId, DataKeyRecord, Health, HealthStatus, Job, JobError, JobId, JobKind,
    JobState, KeyId, KeyRecord, KeyState, OrgId, SERVICE_KEY_ID,
};
use cmk_core::ports::{
    AuditLog, BatchCommit, DataKeyStore, JobChange, JobProgress, OrgCommit, OrgSnapshot, OrgStore,
    RewrapProgress,
};
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use crate::data_keys;
use crate::db::Database;
use crate::names::Names;
use crate::unavailable::unavailable;

/// How many errors of a job are returned with it.
const ERRORS_SHOWN: usize = 100;

#[derive(Clone, Debug)]
pub struct SqliteStore {
    db: Arc<Database>,
}

impl SqliteStore {
    pub fn new(db: Arc<Database>) -> Self {
        Self { db }
    }

    pub fn database(&self) -> &Arc<Database> {
        &self.db
    }
}

fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_ts(s: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("timestamp {s:?}: {e}")))
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_owned())
}

fn json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn immediate(conn: &mut Connection) -> Result<Transaction<'_>, StoreError> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(unavailable)
}

/// A UNIQUE or CHECK violation means the caller's view was stale: report a conflict.
fn write_err(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(f, msg)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::Conflict(msg.unwrap_or_else(|| "constraint violated".into()))
        }
        other => unavailable(other),
    }
}

struct OrgRow {
    version: u64,
    external_id: String,
    default_key_id: String,
    current_job_id: Option<String>,
}

fn org_row(conn: &Connection, org: &str) -> Result<Option<OrgRow>, StoreError> {
    conn.query_row(
        "SELECT version, external_id, default_key_id, current_job_id FROM orgs WHERE org = ?1",
        [org],
        |r| {
            Ok(OrgRow {
                version: r.get::<_, i64>(0)? as u64,
                external_id: r.get(1)?,
                default_key_id: r.get(2)?,
                current_job_id: r.get(3)?,
            })
        },
    )
    .optional()
    .map_err(unavailable)
}

fn read_keys(conn: &Connection, org: &str) -> Result<Vec<KeyRecord>, StoreError> {
    let keys = query_keys(conn, "WHERE org = ?1 ORDER BY seq", params![org])?;
    Ok(keys.into_iter().map(|(_, k)| k).collect())
}

/// Keys and their orgs: `SELECT org, <every key column> FROM keys` and then `rest`.
fn query_keys(
    conn: &Connection,
    rest: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<(String, KeyRecord)>, StoreError> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT org, id, name, spec, state, health, created_at, created_by, rewrap_rate_limit
             FROM keys {rest}"
        ))
        .map_err(unavailable)?;
    let rows = stmt
        .query_map(params, |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, String>(7)?,
                r.get::<_, Option<i64>>(8)?,
            ))
        })
        .map_err(unavailable)?;
    let mut keys = Vec::new();
    for row in rows {
        let (org, id, name, spec, state, health, created_at, created_by, rate_limit) =
            row.map_err(unavailable)?;
        keys.push((
            org,
            KeyRecord {
                id: KeyId::from_trusted(id),
                name,
                spec: from_json(&spec)?,
                state: KeyState::parse(&state).ok_or_else(|| corrupt("key state"))?,
                health: from_json(&health)?,
                created_at: parse_ts(&created_at)?,
                created_by,
                rewrap_rate_limit: rate_limit.map(|n| n as u32),
            },
        ));
    }
    Ok(keys)
}

/// The `checked_at` column: a key's last check in microseconds, indexed for the health checks'
/// work list (the same instant is in the `health` JSON).
fn checked_at_micros(health: &Health) -> Option<i64> {
    health.checked_at.map(|t| t.timestamp_micros())
}

fn read_key(conn: &Connection, org: &str, id: &str) -> Result<Option<KeyRecord>, StoreError> {
    Ok(read_keys(conn, org)?
        .into_iter()
        .find(|k| k.id.as_str() == id))
}

fn read_job(conn: &Connection, org: &str, id: &str) -> Result<Option<Job>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT kind, state, sources, target, total, done, failed, generation, started_at,
                    updated_at, finished_at, started_by, throttled_rate
             FROM jobs WHERE org = ?1 AND id = ?2",
        )
        .map_err(unavailable)?
        .query_row([org, id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, i64>(7)?,
                r.get::<_, String>(8)?,
                r.get::<_, String>(9)?,
                r.get::<_, Option<String>>(10)?,
                r.get::<_, String>(11)?,
                r.get::<_, Option<i64>>(12)?,
            ))
        })
        .optional()
        .map_err(unavailable)?;
    let Some((
        kind,
        state,
        sources,
        target,
        total,
        done,
        failed,
        generation,
        started_at,
        updated_at,
        finished_at,
        started_by,
        throttled_rate,
    )) = row
    else {
        return Ok(None);
    };
    let mut stmt = conn
        .prepare_cached(
            "SELECT data_key_id, key_id, reason, message FROM job_failures
             WHERE org = ?1 AND job_id = ?2 ORDER BY data_key_id LIMIT ?3",
        )
        .map_err(unavailable)?;
    let errors = stmt
        .query_map(params![org, id, ERRORS_SHOWN as i64], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })
        .map_err(unavailable)?
        .map(|row| {
            let (dk, key, reason, message) = row.map_err(unavailable)?;
            Ok(JobError {
                data_key_id: DataKeyId::from_trusted(dk),
                key_id: KeyId::from_trusted(key),
                reason: from_json::<HealthStatus>(&format!("\"{reason}\""))?,
                message,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(Some(Job {
        id: JobId::from_trusted(id),
        kind: JobKind::parse(&kind).ok_or_else(|| corrupt("job kind"))?,
        state: JobState::parse(&state).ok_or_else(|| corrupt("job state"))?,
        source_key_ids: from_json(&sources)?,
        target_key_id: KeyId::from_trusted(target),
        total: total as u64,
        done: done as u64,
        failed: failed as u64,
        errors,
        generation: generation as u32,
        started_at: parse_ts(&started_at)?,
        updated_at: parse_ts(&updated_at)?,
        finished_at: finished_at.as_deref().map(parse_ts).transpose()?,
        started_by,
        throttled_rate: throttled_rate.map(|n| n as u32),
    }))
}

fn read_counts(conn: &Connection, org: &str) -> Result<HashMap<KeyId, u64>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT key_id, n FROM key_counts WHERE org = ?1")
        .map_err(unavailable)?;
    let rows = stmt
        .query_map([org], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .map_err(unavailable)?;
    let mut counts = HashMap::new();
    for row in rows {
        let (k, n) = row.map_err(unavailable)?;
        counts.insert(KeyId::from_trusted(k), n as u64);
    }
    Ok(counts)
}

fn add_count(tx: &Transaction<'_>, org: &str, key: &str, delta: i64) -> Result<(), StoreError> {
    if delta == 0 {
        return Ok(());
    }
    if delta < 0 {
        // An upsert would check `n >= 0` on the inserted row before resolving the conflict.
        tx.prepare_cached("UPDATE key_counts SET n = n + ?3 WHERE org = ?1 AND key_id = ?2")
            .map_err(unavailable)?
            .execute(params![org, key, delta])
            .map_err(write_err)?;
        return Ok(());
    }
    tx.prepare_cached(
        "INSERT INTO key_counts (org, key_id, n) VALUES (?1, ?2, ?3)
         ON CONFLICT (org, key_id) DO UPDATE SET n = n + excluded.n",
    )
    .map_err(unavailable)?
    .execute(params![org, key, delta])
    .map_err(write_err)?;
    Ok(())
}

fn insert_events(tx: &Transaction<'_>, org: &str, events: &[AuditEvent]) -> Result<(), StoreError> {
    let mut stmt = tx
        .prepare_cached(
            "INSERT INTO audit (org, id, at, actor, action, key_id, job_id, outcome, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .map_err(unavailable)?;
    for e in events {
        stmt.execute(params![
            org,
            e.id,
            ts(&e.at),
            e.actor,
            e.action,
            e.key_id.as_ref().map(|k| k.as_str()),
            e.job_id.as_ref().map(|j| j.as_str()),
            e.outcome,
            e.detail,
        ])
        .map_err(write_err)?;
    }
    Ok(())
}

fn commit_tx(tx: Transaction<'_>) -> Result<(), StoreError> {
    tx.commit().map_err(unavailable)
}

fn apply_commit(conn: &mut Connection, org: &str, c: OrgCommit) -> Result<Option<Job>, StoreError> {
    let tx = immediate(conn)?;
    let row = org_row(&tx, org)?;
    let version = row.as_ref().map_or(0, |r| r.version);
    if version != c.expected_version {
        return Err(StoreError::Conflict(format!(
            "org version is {version}, expected {}",
            c.expected_version
        )));
    }
    let now = Utc::now();
    if row.is_none() {
        tx.execute(
            "INSERT INTO orgs (org, version, external_id, default_key_id) VALUES (?1, 0, ?2, ?3)",
            params![
                org,
                format!("cmk-{}", uuid::Uuid::new_v4().simple()),
                SERVICE_KEY_ID
            ],
        )
        .map_err(write_err)?;
    }
    tx.execute(
        "UPDATE orgs SET version = version + 1, default_key_id = ?2 WHERE org = ?1",
        params![org, c.default_key_id.as_str()],
    )
    .map_err(write_err)?;
    for k in &c.upsert_keys {
        tx.prepare_cached(
            "INSERT INTO keys (org, id, seq, name, name_folded, spec, state, health, created_at, created_by,
                               rewrap_rate_limit, checked_at)
             VALUES (?1, ?2, (SELECT COALESCE(MAX(seq), 0) + 1 FROM keys WHERE org = ?1), ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT (org, id) DO UPDATE SET name = excluded.name, name_folded = excluded.name_folded,
                 spec = excluded.spec, state = excluded.state, health = excluded.health,
                 rewrap_rate_limit = excluded.rewrap_rate_limit, checked_at = excluded.checked_at",
        )
        .map_err(unavailable)?
        .execute(params![
            org,
            k.id.as_str(),
            k.name,
            k.name.to_lowercase(),
            json(&k.spec)?,
            k.state.as_str(),
            json(&k.health)?,
            ts(&k.created_at),
            k.created_by,
            k.rewrap_rate_limit,
            checked_at_micros(&k.health),
        ])
        .map_err(write_err)?;
    }
    let job_id = match &c.job {
        None => None,
        Some(JobChange::Start(job)) => {
            let mut total: i64 = 0;
            for src in &job.source_key_ids {
                total += tx
                    .query_row(
                        "SELECT COALESCE(SUM(n), 0) FROM key_counts WHERE org = ?1 AND key_id = ?2",
                        params![org, src.as_str()],
                        |r| r.get::<_, i64>(0),
                    )
                    .map_err(unavailable)?;
            }
            tx.execute(
                "INSERT INTO jobs (org, id, kind, state, sources, target, total, done, failed,
                                   generation, started_at, updated_at, finished_at, started_by)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, 0, ?8, ?9, ?9, NULL, ?10)",
                params![
                    org,
                    job.id.as_str(),
                    job.kind.as_str(),
                    job.state.as_str(),
                    json(&job.source_key_ids)?,
                    job.target_key_id.as_str(),
                    total,
                    job.generation,
                    ts(&now),
                    job.started_by,
                ],
            )
            .map_err(write_err)?;
            tx.execute(
                "UPDATE orgs SET current_job_id = ?2 WHERE org = ?1",
                params![org, job.id.as_str()],
            )
            .map_err(write_err)?;
            Some(job.id.clone())
        }
        Some(JobChange::Update(u)) => {
            let changed = tx
                .execute(
                    "UPDATE jobs SET state = ?5, generation = ?6, updated_at = ?7,
                         finished_at = CASE WHEN ?8 THEN ?7 ELSE NULL END,
                         total = COALESCE(?9, total),
                         failed = CASE WHEN ?10 THEN 0 ELSE failed END,
                         throttled_rate = NULL
                     WHERE org = ?1 AND id = ?2 AND state = ?3 AND generation = ?4",
                    params![
                        org,
                        u.job_id.as_str(),
                        u.expected_state.as_str(),
                        u.expected_generation,
                        u.state.as_str(),
                        u.generation,
                        ts(&now),
                        u.finished,
                        u.total.map(|t| t as i64),
                        u.reset_failures,
                    ],
                )
                .map_err(write_err)?;
            if changed != 1 {
                return Err(StoreError::Conflict("the job changed".into()));
            }
            if u.reset_failures {
                tx.execute(
                    "DELETE FROM job_failures WHERE org = ?1 AND job_id = ?2",
                    params![org, u.job_id.as_str()],
                )
                .map_err(write_err)?;
            }
            Some(u.job_id.clone())
        }
    };
    insert_events(&tx, org, &c.events)?;
    let job = match &job_id {
        Some(id) => read_job(&tx, org, id.as_str())?,
        None => None,
    };
    commit_tx(tx)?;
    Ok(job)
}

/// A key that moves of a batch go to.
struct Target<'a> {
    key_id: &'a str,
    number: i64,
    applied: i64,
}

fn apply_batch(
    conn: &mut Connection,
    names: &Names,
    org: &str,
    b: BatchCommit,
) -> Result<JobProgress, StoreError> {
    // Numbers for the data_keys table, interned before the transaction (see names.rs). An org
    // or source never interned has no data key: nothing can move.
    let org_n = names.find(conn, org)?.unwrap_or(-1);
    let source_n = names.find(conn, b.source.as_str())?.unwrap_or(-1);
    // The keys the moves go to (one in practice), with their numbers and the moves applied:
    // a short list scanned per move, cheaper than hashing a key id per move.
    let mut targets: Vec<Target<'_>> = Vec::new();
    for m in &b.moves {
        let to = m.to_key_id.as_str();
        if !targets.iter().any(|t| t.key_id == to) {
            targets.push(Target {
                key_id: to,
                number: names.intern(conn, to)?,
                applied: 0,
            });
        }
    }
    // A move within one key marks its data key with the job; any other move clears the mark
    // (NULL, as rows are made, so an ordinary move keeps the row's size and SQLite updates it
    // in place). See `DataKeyStore::list_data_keys`.
    let job_n: Option<i64> = if b.moves.iter().any(|m| m.to_key_id == b.source) {
        Some(names.intern(conn, b.job_id.as_str())?)
    } else {
        None
    };
    let tx = immediate(conn)?;
    let row: Option<(String, i64, i64, i64, i64)> = tx
        .prepare_cached(
            "SELECT state, generation, total, done, failed FROM jobs WHERE org = ?1 AND id = ?2",
        )
        .map_err(unavailable)?
        .query_row(params![org, b.job_id.as_str()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .optional()
        .map_err(unavailable)?;
    let Some((state, generation, total, done, failed)) = row else {
        return Err(StoreError::Conflict(format!("job {} not found", b.job_id)));
    };
    let state = JobState::parse(&state).ok_or_else(|| corrupt("job state"))?;
    let progress = |done: i64, failed: i64, applied: u64| JobProgress {
        state,
        generation: generation as u32,
        total: total as u64,
        done: done as u64,
        failed: failed as u64,
        applied,
    };
    if state != JobState::Running || generation as u32 != b.generation {
        // A stale message: the job moved on. Nothing changes.
        return Ok(progress(done, failed, 0));
    }
    let mut cleared = 0i64;
    {
        let mut mv = tx
            .prepare_cached(
                "UPDATE data_keys SET key_id = ?3, wrapped = ?4, version = version + 1, moved_by = ?7
                 WHERE org = ?1 AND id = ?2 AND key_id = ?5 AND version = ?6",
            )
            .map_err(unavailable)?;
        // The same move, finding the row by the rowid the listing read (see data_keys.rs).
        let mut mv_at = tx
            .prepare_cached(
                "UPDATE data_keys SET key_id = ?3, wrapped = ?4, version = version + 1, moved_by = ?8
                 WHERE n = ?7 AND org = ?1 AND id = ?2 AND key_id = ?5 AND version = ?6",
            )
            .map_err(unavailable)?;
        let mut clear = tx
            .prepare_cached(
                "DELETE FROM job_failures WHERE org = ?1 AND job_id = ?2 AND data_key_id = ?3",
            )
            .map_err(unavailable)?;
        for m in &b.moves {
            if m.from_key_id != b.source {
                return Err(StoreError::Conflict("a move names another source".into()));
            }
            let target = targets
                .iter_mut()
                .find(|t| t.key_id == m.to_key_id.as_str())
                .ok_or_else(|| corrupt("a move to a key not interned"))?;
            let n = match data_keys::id_bytes(m.id.as_str()) {
                Some(id) => {
                    let (id, version) = (&id[..], m.from_version as i64);
                    let at = match m.row_hint {
                        Some(row) => mv_at
                            .execute(params![
                                org_n,
                                id,
                                target.number,
                                m.wrapped,
                                source_n,
                                version,
                                row,
                                job_n
                            ])
                            .map_err(write_err)?,
                        None => 0,
                    };
                    // No hint, or one that did not match: the search by id decides.
                    if at == 1 {
                        1
                    } else {
                        mv.execute(params![
                            org_n,
                            id,
                            target.number,
                            m.wrapped,
                            source_n,
                            version,
                            job_n
                        ])
                        .map_err(write_err)?
                    }
                }
                None => 0, // no data key is stored under such an id
            };
            target.applied += n as i64;
            // Only a job with failures can have one to clear (the common case skips the work).
            if n == 1 && failed > 0 {
                cleared += clear
                    .execute(params![org, b.job_id.as_str(), m.id.as_str()])
                    .map_err(write_err)? as i64;
            }
        }
    }
    let moved: i64 = targets.iter().map(|t| t.applied).sum();
    for t in targets.iter().filter(|t| t.applied > 0) {
        add_count(&tx, org, t.key_id, t.applied)?;
    }
    add_count(&tx, org, b.source.as_str(), -moved)?;
    let mut recorded = 0i64;
    {
        let mut fail = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO job_failures (org, job_id, data_key_id, key_id, reason, message)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6
                 WHERE EXISTS (SELECT 1 FROM data_keys WHERE org = ?8 AND id = ?9 AND key_id = ?7)",
            )
            .map_err(unavailable)?;
        // A recorded failure bumps the data key's version, as on DynamoDB: a move prepared from
        // the version read before it (a duplicate of the batch) no longer applies.
        let mut bump = tx
            .prepare_cached(
                "UPDATE data_keys SET version = version + 1 WHERE org = ?1 AND id = ?2 AND key_id = ?3",
            )
            .map_err(unavailable)?;
        for f in &b.failures {
            let Some(id) = data_keys::id_bytes(f.data_key_id.as_str()) else {
                continue; // no data key is stored under such an id
            };
            let n = fail
                .execute(params![
                    org,
                    b.job_id.as_str(),
                    f.data_key_id.as_str(),
                    f.key_id.as_str(),
                    f.reason.as_str(),
                    f.message,
                    source_n,
                    org_n,
                    &id[..],
                ])
                .map_err(write_err)?;
            if n == 1 {
                bump.execute(params![org_n, &id[..], source_n])
                    .map_err(write_err)?;
            }
            recorded += n as i64;
        }
    }
    let (done, failed) = (done + moved, failed - cleared + recorded);
    tx.prepare_cached(
        "UPDATE jobs SET done = ?3, failed = ?4, updated_at = ?5 WHERE org = ?1 AND id = ?2",
    )
    .map_err(unavailable)?
    .execute(params![
        org,
        b.job_id.as_str(),
        done,
        failed,
        ts(&Utc::now())
    ])
    .map_err(write_err)?;
    commit_tx(tx)?;
    Ok(progress(done, failed, moved as u64))
}

/// Inserts data keys all wrapped by one key, only if that key is the org's default.
pub(crate) fn insert_data_keys_tx(
    conn: &mut Connection,
    names: &Names,
    org: &str,
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
    let ids = keys
        .iter()
        .map(|k| data_keys::stored_id(&k.id))
        .collect::<Result<Vec<_>, _>>()?;
    // Interned before the transaction (see names.rs).
    let (org_n, key_n) = (
        names.intern(conn, org)?,
        names.intern(conn, first.key_id.as_str())?,
    );
    let tx = immediate(conn)?;
    let default =
        org_row(&tx, org)?.map_or_else(|| SERVICE_KEY_ID.to_owned(), |r| r.default_key_id);
    if default != first.key_id.as_str() {
        return Err(StoreError::Conflict(format!(
            "key {} is no longer the default",
            first.key_id
        )));
    }
    {
        let mut stmt = tx
            .prepare_cached(
                "INSERT INTO data_keys (org, id, key_id, wrapped, version, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(unavailable)?;
        for (k, id) in keys.iter().zip(&ids) {
            stmt.execute(params![
                org_n,
                &id[..],
                key_n,
                k.wrapped,
                k.version as i64,
                data_keys::micros(&k.created_at),
            ])
            .map_err(write_err)?;
        }
    }
    add_count(&tx, org, first.key_id.as_str(), keys.len() as i64)?;
    commit_tx(tx)
}

#[async_trait]
impl OrgStore for SqliteStore {
    async fn ensure_org(&self, org: &OrgId, new_external_id: &str) -> Result<String, StoreError> {
        let (org, ext) = (org.to_string(), new_external_id.to_owned());
        self.db
            .write(move |conn| {
                conn.execute(
                    "INSERT OR IGNORE INTO orgs (org, version, external_id, default_key_id)
                     VALUES (?1, 0, ?2, ?3)",
                    params![org, ext, SERVICE_KEY_ID],
                )
                .map_err(write_err)?;
                conn.query_row("SELECT external_id FROM orgs WHERE org = ?1", [&org], |r| {
                    r.get(0)
                })
                .map_err(unavailable)
            })
            .await
    }

    async fn load_org(&self, org: &OrgId) -> Result<OrgSnapshot, StoreError> {
        let org = org.clone();
        self.db
            .read(move |conn| {
                // One read transaction: every part of the snapshot is from the same moment.
                let tx = conn.transaction().map_err(unavailable)?;
                let row = org_row(&tx, org.as_str())?;
                let keys = read_keys(&tx, org.as_str())?;
                let data_key_counts = read_counts(&tx, org.as_str())?;
                let job = match row.as_ref().and_then(|r| r.current_job_id.as_deref()) {
                    Some(id) => read_job(&tx, org.as_str(), id)?,
                    None => None,
                };
                drop(tx);
                Ok(OrgSnapshot {
                    version: row.as_ref().map_or(0, |r| r.version),
                    external_id: row.as_ref().map(|r| r.external_id.clone()),
                    default_key_id: KeyId::from_trusted(
                        row.map_or_else(|| SERVICE_KEY_ID.to_owned(), |r| r.default_key_id),
                    ),
                    org,
                    keys,
                    data_key_counts,
                    job,
                })
            })
            .await
    }

    async fn commit(&self, org: &OrgId, commit: OrgCommit) -> Result<Option<Job>, StoreError> {
        let org = org.to_string();
        self.db
            .write(move |conn| apply_commit(conn, &org, commit))
            .await
    }

    async fn get_key(&self, org: &OrgId, key: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        let (org, key) = (org.to_string(), key.to_string());
        self.db.read(move |conn| read_key(conn, &org, &key)).await
    }

    async fn set_key_health(
        &self,
        org: &OrgId,
        key: &KeyId,
        health: &Health,
    ) -> Result<Option<Health>, StoreError> {
        let (org, key) = (org.to_string(), key.to_string());
        let (checked_at, health) = (checked_at_micros(health), json(health)?);
        self.db
            .write(move |conn| {
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(write_err)?;
                let previous: Option<String> = tx
                    .query_row(
                        "SELECT health FROM keys WHERE org = ?1 AND id = ?2",
                        params![org, key],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(unavailable)?;
                let Some(previous) = previous else {
                    return Ok(None);
                };
                tx.execute(
                    "UPDATE keys SET health = ?3, checked_at = ?4 WHERE org = ?1 AND id = ?2",
                    params![org, key, health, checked_at],
                )
                .map_err(write_err)?;
                tx.commit().map_err(write_err)?;
                from_json(&previous).map(Some)
            })
            .await
    }

    async fn keys_due_for_check(
        &self,
        checked_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(OrgId, KeyRecord)>, StoreError> {
        let before = checked_before.timestamp_micros();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let keys = self
            .db
            .read(move |conn| {
                // `keys_due` is a partial index on exactly this condition, in this order.
                query_keys(
                    conn,
                    "INDEXED BY keys_due
                     WHERE state != 'disabled' AND (checked_at IS NULL OR checked_at < ?1)
                     ORDER BY checked_at LIMIT ?2",
                    params![before, limit],
                )
            })
            .await?;
        Ok(keys
            .into_iter()
            .map(|(org, k)| (OrgId::from_trusted(org), k))
            .collect())
    }
}

#[async_trait]
impl DataKeyStore for SqliteStore {
    async fn insert_data_keys(
        &self,
        org: &OrgId,
        keys: &[DataKeyRecord],
    ) -> Result<(), StoreError> {
        let (db, org, keys) = (Arc::clone(&self.db), org.to_string(), keys.to_vec());
        self.db
            .write(move |conn| insert_data_keys_tx(conn, db.names(), &org, &keys))
            .await
    }

    async fn get_data_key(
        &self,
        org: &OrgId,
        id: &DataKeyId,
    ) -> Result<Option<DataKeyRecord>, StoreError> {
        let (db, org, id) = (Arc::clone(&self.db), org.to_string(), id.clone());
        self.db
            .read(move |conn| data_keys::get(conn, db.names(), &org, &id))
            .await
    }

    async fn get_data_keys(
        &self,
        org: &OrgId,
        ids: &[DataKeyId],
    ) -> Result<Vec<DataKeyRecord>, StoreError> {
        let (db, org, ids) = (Arc::clone(&self.db), org.to_string(), ids.to_vec());
        self.db
            .read(move |conn| data_keys::get_many(conn, db.names(), &org, &ids))
            .await
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
        if partition != 0 {
            return Ok(Vec::new()); // one partition: SQLite's index serves any range
        }
        let db = Arc::clone(&self.db);
        let (org, key) = (org.to_string(), key.clone());
        let (after, until) = (after.cloned(), until.cloned());
        let job = not_moved_by.map(|j| j.to_string());
        self.db
            .read(move |conn| {
                data_keys::list(
                    conn,
                    db.names(),
                    &org,
                    &key,
                    after.as_ref(),
                    until.as_ref(),
                    limit,
                    job.as_deref(),
                )
            })
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
        if partition != 0 {
            return Ok(Vec::new());
        }
        let db = Arc::clone(&self.db);
        let (org, key, after) = (org.to_string(), key.clone(), after.cloned());
        self.db
            .read(move |conn| {
                data_keys::list_ids(conn, db.names(), &org, &key, after.as_ref(), limit)
            })
            .await
    }
}

#[async_trait]
impl RewrapProgress for SqliteStore {
    async fn get_job(&self, org: &OrgId, job: &JobId) -> Result<Option<Job>, StoreError> {
        let (org, job) = (org.to_string(), job.to_string());
        self.db.read(move |conn| read_job(conn, &org, &job)).await
    }

    async fn running_jobs(&self) -> Result<Vec<(OrgId, Job)>, StoreError> {
        self.db
            .read(move |conn| {
                let ids: Vec<(String, String)> = conn
                    .prepare("SELECT org, id FROM jobs WHERE state = 'running'")
                    .map_err(unavailable)?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                    .map_err(unavailable)?
                    .collect::<Result<_, _>>()
                    .map_err(unavailable)?;
                let mut jobs = Vec::new();
                for (org, id) in ids {
                    if let Some(job) = read_job(conn, &org, &id)? {
                        jobs.push((OrgId::from_trusted(org), job));
                    }
                }
                Ok(jobs)
            })
            .await
    }

    async fn claim_replan(
        &self,
        org: &OrgId,
        job: &JobId,
        generation: u32,
        idle_before: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let (org, job) = (org.to_string(), job.to_string());
        self.db
            .write(move |conn| {
                // Timestamps are fixed-width RFC 3339 (microseconds, `Z`): text order is time order.
                let n = conn
                    .execute(
                        "UPDATE jobs SET updated_at = ?5
                         WHERE org = ?1 AND id = ?2 AND state = 'running' AND generation = ?3
                           AND updated_at < ?4",
                        params![org, job, generation, ts(&idle_before), ts(&Utc::now())],
                    )
                    .map_err(write_err)?;
                Ok(n == 1)
            })
            .await
    }

    async fn set_job_throttle(
        &self,
        org: &OrgId,
        job: &JobId,
        generation: u32,
        rate: Option<u32>,
    ) -> Result<(), StoreError> {
        let (org, job) = (org.to_string(), job.to_string());
        self.db
            .write(move |conn| {
                conn.execute(
                    "UPDATE jobs SET throttled_rate = ?4
                     WHERE org = ?1 AND id = ?2 AND generation = ?3 AND state = 'running'",
                    params![org, job, generation, rate],
                )
                .map_err(write_err)?;
                Ok(())
            })
            .await
    }

    async fn commit_batch(
        &self,
        org: &OrgId,
        batch: BatchCommit,
    ) -> Result<JobProgress, StoreError> {
        let (db, org) = (Arc::clone(&self.db), org.to_string());
        self.db
            .write(move |conn| apply_batch(conn, db.names(), &org, batch))
            .await
    }
}

#[async_trait]
impl AuditLog for SqliteStore {
    async fn append_audit(&self, org: &OrgId, events: &[AuditEvent]) -> Result<(), StoreError> {
        let (org, events) = (org.to_string(), events.to_vec());
        self.db
            .write(move |conn| {
                let tx = immediate(conn)?;
                insert_events(&tx, &org, &events)?;
                commit_tx(tx)
            })
            .await
    }

    async fn list_audit(
        &self,
        org: &OrgId,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<(Vec<AuditEvent>, Option<String>), StoreError> {
        let org = org.to_string();
        let cursor = cursor.map(str::to_owned);
        self.db
            .read(move |conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT id, at, actor, action, key_id, job_id, outcome, detail FROM audit
                         WHERE org = ?1 AND (?2 IS NULL OR id < ?2) ORDER BY id DESC LIMIT ?3",
                    )
                    .map_err(unavailable)?;
                let rows = stmt
                    .query_map(params![org, cursor, (limit + 1) as i64], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, Option<String>>(4)?,
                            r.get::<_, Option<String>>(5)?,
                            r.get::<_, String>(6)?,
                            r.get::<_, Option<String>>(7)?,
                        ))
                    })
                    .map_err(unavailable)?;
                let mut events = Vec::new();
                for row in rows {
                    let (id, at, actor, action, key_id, job_id, outcome, detail) =
                        row.map_err(unavailable)?;
                    events.push(AuditEvent {
                        id,
                        at: parse_ts(&at)?,
                        actor,
                        action,
                        key_id: key_id.map(KeyId::from_trusted),
                        job_id: job_id.map(JobId::from_trusted),
                        outcome,
                        detail,
                    });
                }
                let next = if events.len() > limit {
                    events.truncate(limit);
                    events.last().map(|e| e.id.clone())
                } else {
                    None
                };
                Ok((events, next))
            })
            .await
    }
}
