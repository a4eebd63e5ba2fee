//! Contract suites: one per port, run against every adapter: the SQLite store and queue and the
//! local key provider (`cmk-embedded/tests/contract.rs`), and the DynamoDB store, the SQS queue
//! and the KMS key provider against the AWS emulator
//! (`cmk-aws/tests/integration/contract.rs`). Each function panics with a message naming the
//! broken promise.
//!
//! It is long because each promise is spelled out step by step; the suites follow the parts of the
//! port (see [`store_contract`]).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use crate::crypto::DataKey;
use crate::error::{KeyErrorKind, StoreError};
use crate::model::{
    data_key_context, AuditAction, AuditEvent, DataKeyId, DataKeyRecord, EncryptionContext, Health,
    HealthStatus, Job, JobError, JobId, JobKind, JobState, KeyId, KeyRecord, KeySpec, KeyState,
    OrgId,
};
use crate::ports::{
    BatchCommit, DataKeyMove, JobChange, JobUpdate, Kek, KeyProvider, OrgCommit, RewrapItem,
    RewrapMessage, RewrapQueue, Store,
};

fn unique_org(prefix: &str) -> OrgId {
    OrgId::from_trusted(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()))
}

fn key_record(id: &str, name: &str) -> KeyRecord {
    KeyRecord {
        id: KeyId::from_trusted(id),
        name: name.to_owned(),
        spec: KeySpec::Local,
        state: KeyState::Active,
        health: Health::unknown(),
        created_at: crate::model::now(),
        created_by: "contract".into(),
        rewrap_rate_limit: None,
    }
}

fn data_keys(key: &KeyId, n: usize) -> Vec<DataKeyRecord> {
    (0..n)
        .map(|i| DataKeyRecord {
            id: DataKeyId::generate(),
            key_id: key.clone(),
            wrapped: vec![1, 2, 3, i as u8],
            version: 0,
            created_at: crate::model::now(),
            row_hint: None,
        })
        .collect()
}

fn job(kind: JobKind, sources: Vec<KeyId>, target: KeyId) -> Job {
    Job {
        id: crate::model::JobId::generate(),
        kind,
        state: JobState::Running,
        source_key_ids: sources,
        target_key_id: target,
        total: 0,
        done: 0,
        failed: 0,
        errors: vec![],
        generation: 0,
        started_at: crate::model::now(),
        updated_at: crate::model::now(),
        finished_at: None,
        started_by: "contract".into(),
        throttled_rate: None,
    }
}

fn commit(version: u64, default: &KeyId) -> OrgCommit {
    OrgCommit {
        expected_version: version,
        default_key_id: default.clone(),
        upsert_keys: vec![],
        job: None,
        events: vec![],
    }
}

fn moves(records: &[DataKeyRecord], to: &KeyId) -> Vec<DataKeyMove> {
    records
        .iter()
        .map(|r| DataKeyMove {
            id: r.id.clone(),
            from_key_id: r.key_id.clone(),
            from_version: r.version,
            to_key_id: to.clone(),
            wrapped: vec![9, 9],
            row_hint: r.row_hint,
        })
        .collect()
}

/// Runs every promise of the [`Store`] port, part by part.
pub async fn store_contract(store: &dyn Store) {
    org_store_contract(store).await;
    data_key_store_contract(store).await;
    rewrap_progress_contract(store).await;
    audit_log_contract(store).await;
    orgs_are_isolated(store).await;
}

/// [`crate::ports::OrgStore`]: versions, unique names, key settings (and the job throttling
/// they cause), commits as large as the rules make.
pub async fn org_store_contract(store: &dyn Store) {
    fresh_org_and_versions(store).await;
    names_are_unique(store).await;
    the_largest_commits_fit(store).await;
    rate_limits_and_throttling_are_kept(store).await;
    keys_fall_due_for_health_checks(store).await;
}

/// [`crate::ports::DataKeyStore`]: inserts only under the default key; many read in one call.
pub async fn data_key_store_contract(store: &dyn Store) {
    data_keys_only_under_the_default(store).await;
    many_data_keys_are_read_in_one_call(store).await;
}

/// [`crate::ports::RewrapProgress`]: exact totals and progress, failures and retries, one
/// re-plan claim per idle interval. (Jobs start through an org commit, so it needs the rest.)
pub async fn rewrap_progress_contract(store: &dyn Store) {
    job_total_and_exact_progress(store).await;
    failures_and_retries(store).await;
    one_replan_claim_per_idle_interval(store).await;
    row_hints_never_move_the_wrong_data_key(store).await;
    a_rotate_job_marks_what_it_moved(store).await;
}

/// [`crate::ports::AuditLog`]: pages newest first.
pub async fn audit_log_contract(store: &dyn Store) {
    audit_pages(store).await;
}

/// A new org with three data keys under the service key, and `key` added as its first key:
/// the adopt job running.
async fn adopting(store: &dyn Store, prefix: &str, key: &KeyRecord) -> (OrgId, Job) {
    let org = unique_org(prefix);
    let svc = KeyId::service();
    store
        .insert_data_keys(&org, &data_keys(&svc, 3))
        .await
        .unwrap();
    let mut c = commit(0, &key.id);
    c.upsert_keys.push(key.clone());
    c.job = Some(JobChange::Start(job(
        JobKind::Adopt,
        vec![svc],
        key.id.clone(),
    )));
    let job = store.commit(&org, c).await.unwrap().expect("the job");
    (org, job)
}

async fn rate_limits_and_throttling_are_kept(store: &dyn Store) {
    let mut k = key_record("k", "k");
    k.rewrap_rate_limit = Some(300);
    let (org, job) = adopting(store, "rates", &k).await;
    assert_eq!(job.throttled_rate, None, "a new job is not throttled");
    let s = store.load_org(&org).await.unwrap();
    assert_eq!(
        s.keys[0].rewrap_rate_limit,
        Some(300),
        "a key keeps its rate limit"
    );
    k.rewrap_rate_limit = Some(500);
    let mut c = commit(s.version, &k.id);
    c.upsert_keys.push(k.clone());
    store.commit(&org, c).await.unwrap();
    let got = store.get_key(&org, &k.id).await.unwrap().unwrap();
    assert_eq!(
        got.rewrap_rate_limit,
        Some(500),
        "an update changes the limit"
    );

    store
        .set_job_throttle(&org, &job.id, job.generation, Some(42))
        .await
        .unwrap();
    let throttled_rate = || async {
        let job = store.get_job(&org, &job.id).await.unwrap();
        job.expect("the job").throttled_rate
    };
    assert_eq!(throttled_rate().await, Some(42));
    store
        .set_job_throttle(&org, &job.id, job.generation + 1, Some(7))
        .await
        .unwrap();
    assert_eq!(
        throttled_rate().await,
        Some(42),
        "another generation changes nothing"
    );
    store
        .set_job_throttle(&org, &job.id, job.generation, None)
        .await
        .unwrap();
    assert_eq!(throttled_rate().await, None, "back at its limits");
    // A change of state starts unthrottled (a completed job is never shown throttled).
    store
        .set_job_throttle(&org, &job.id, job.generation, Some(9))
        .await
        .unwrap();
    let s = store.load_org(&org).await.unwrap();
    let mut c = commit(s.version, &k.id);
    c.job = Some(JobChange::Update(JobUpdate {
        job_id: job.id.clone(),
        expected_state: JobState::Running,
        expected_generation: job.generation,
        state: JobState::Cancelled,
        generation: job.generation,
        finished: true,
        total: None,
        reset_failures: false,
    }));
    store.commit(&org, c).await.unwrap();
    assert_eq!(
        throttled_rate().await,
        None,
        "a change of state clears the throttled rate"
    );
}

async fn one_replan_claim_per_idle_interval(store: &dyn Store) {
    let (org, job) = adopting(store, "replan", &key_record("k", "k")).await;
    let planned_at = job.updated_at;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        !store
            .claim_replan(&org, &job.id, job.generation, planned_at)
            .await
            .unwrap(),
        "a job planned at the idle bound is not claimed"
    );
    // Idle since its plan: a claimer whose stall interval ended just after it.
    let idle_before = planned_at + chrono::Duration::milliseconds(5);
    assert!(
        !store
            .claim_replan(&org, &job.id, job.generation + 1, idle_before)
            .await
            .unwrap(),
        "another generation is not claimed"
    );
    let wins = futures::future::join_all(
        (0..8).map(|_| store.claim_replan(&org, &job.id, job.generation, idle_before)),
    )
    .await
    .into_iter()
    .filter(|r| *r.as_ref().unwrap())
    .count();
    assert_eq!(wins, 1, "exactly one of concurrent claimers wins");
    let claimed = store.get_job(&org, &job.id).await.unwrap().unwrap();
    assert!(
        claimed.updated_at > planned_at,
        "a claim marks the job planned"
    );
    assert!(
        !store
            .claim_replan(&org, &job.id, job.generation, idle_before)
            .await
            .unwrap(),
        "a claimed job is not claimed again within the interval"
    );
}

async fn fresh_org_and_versions(store: &dyn Store) {
    let org = unique_org("fresh");
    let s = store.load_org(&org).await.unwrap();
    assert_eq!(s.version, 0, "an unknown org reads at version 0");
    assert!(
        s.default_key_id.is_service(),
        "the service key is the first default"
    );
    assert!(s.keys.is_empty() && s.job.is_none());

    let ext = store.ensure_org(&org, "ext-1").await.unwrap();
    assert_eq!(ext, "ext-1");
    assert_eq!(
        store.ensure_org(&org, "ext-2").await.unwrap(),
        "ext-1",
        "the external id never changes once set"
    );

    let k1 = key_record("k1", "one");
    let mut c = commit(5, &k1.id);
    c.upsert_keys.push(k1.clone());
    assert!(
        matches!(store.commit(&org, c).await, Err(StoreError::Conflict(_))),
        "a commit at a stale version is refused"
    );
    assert!(
        store.load_org(&org).await.unwrap().keys.is_empty(),
        "and changes nothing"
    );

    let mut c = commit(0, &k1.id);
    c.upsert_keys.push(k1.clone());
    c.events
        .push(AuditEvent::new("alice", AuditAction::KeyAdded).key(&k1.id));
    store.commit(&org, c).await.unwrap();
    let s = store.load_org(&org).await.unwrap();
    assert_eq!(s.version, 1);
    assert_eq!(s.default_key_id, k1.id);
    assert_eq!(s.keys, vec![k1.clone()]);
    assert_eq!(s.external_id.as_deref(), Some("ext-1"));

    let health = Health::failed(HealthStatus::AccessDenied, crate::model::now(), "revoked");
    store.set_key_health(&org, &k1.id, &health).await.unwrap();
    let got = store.get_key(&org, &k1.id).await.unwrap().unwrap();
    assert_eq!(got.health.status, HealthStatus::AccessDenied);
    assert_eq!(
        store.load_org(&org).await.unwrap().version,
        1,
        "health is an observation: it does not bump the version"
    );
}

/// Health writes return what they replaced; the keys due for a check are the ones not
/// disabled, last checked before the time asked (or never), least recently checked first.
async fn keys_fall_due_for_health_checks(store: &dyn Store) {
    let org = unique_org("health");
    // Checks in 2001, before anything another suite writes, so that only never-checked keys
    // of other orgs sort before these.
    let at = |s: i64| chrono::DateTime::from_timestamp(978_307_200 + s, 123_456_000).unwrap();
    let checked = |id: &str, s: i64| KeyRecord {
        health: Health::ok(at(s)),
        ..key_record(id, id)
    };
    let mut disabled = checked("k4", 1);
    disabled.state = KeyState::Disabled;
    let mut c = commit(0, &KeyId::service());
    c.upsert_keys = vec![
        checked("k1", 5),
        checked("k3", 2),
        disabled,
        checked("k5", 20),
    ];
    store.commit(&org, c).await.unwrap();
    let mine = |due: Vec<(OrgId, KeyRecord)>| -> Vec<String> {
        due.into_iter()
            .filter(|(o, _)| *o == org)
            .map(|(_, k)| k.id.to_string())
            .collect()
    };

    let due = store.keys_due_for_check(at(10), 10_000).await.unwrap();
    assert_eq!(
        mine(due),
        ["k3", "k1"],
        "due: not disabled, checked before the time asked, least recently checked first"
    );
    assert_eq!(
        store.keys_due_for_check(at(10), 1).await.unwrap().len(),
        1,
        "at most the limit"
    );

    let denied = Health {
        last_failure: Some(crate::model::HealthFailure {
            status: HealthStatus::AccessDenied,
            at: at(30),
            message: Some("revoked".into()),
        }),
        ..Health::failed(HealthStatus::AccessDenied, at(30), "revoked")
    };
    let k3 = KeyId::from_trusted("k3");
    let replaced = store.set_key_health(&org, &k3, &denied).await.unwrap();
    assert_eq!(
        replaced,
        Some(Health::ok(at(2))),
        "a health write returns the health it replaced"
    );
    assert_eq!(
        store.get_key(&org, &k3).await.unwrap().unwrap().health,
        denied,
        "and stores all of it, the last failure too"
    );
    assert_eq!(
        mine(store.keys_due_for_check(at(10), 10_000).await.unwrap()),
        ["k1"],
        "a key checked since is no longer due"
    );
    assert_eq!(
        mine(store.keys_due_for_check(at(31), 10_000).await.unwrap()),
        ["k1", "k5", "k3"],
        "and falls due again in the order of its last check"
    );

    let missing = KeyId::from_trusted("k9");
    assert_eq!(
        store.set_key_health(&org, &missing, &denied).await.unwrap(),
        None,
        "the health of a key that does not exist is not written"
    );
    assert!(store.get_key(&org, &missing).await.unwrap().is_none());

    let mut k1 = checked("k1", 5);
    k1.state = KeyState::Disabled;
    let mut c = commit(1, &KeyId::service());
    c.upsert_keys = vec![k1];
    store.commit(&org, c).await.unwrap();
    assert_eq!(
        mine(store.keys_due_for_check(at(31), 10_000).await.unwrap()),
        ["k5", "k3"],
        "a key disabled since is never due"
    );
}

async fn names_are_unique(store: &dyn Store) {
    let org = unique_org("names");
    let mut c = commit(0, &KeyId::service());
    c.upsert_keys.push(key_record("a", "prod"));
    store.commit(&org, c).await.unwrap();
    let mut c = commit(1, &KeyId::service());
    c.upsert_keys.push(key_record("b", "PROD"));
    assert!(
        matches!(store.commit(&org, c).await, Err(StoreError::Conflict(_))),
        "two keys of one org never share a name (case-insensitive)"
    );
    let other = unique_org("names");
    let mut c = commit(0, &KeyId::service());
    c.upsert_keys.push(key_record("a", "prod"));
    store
        .commit(&other, c)
        .await
        .expect("another org may reuse the name");
}

async fn data_keys_only_under_the_default(store: &dyn Store) {
    let org = unique_org("default");
    let svc = KeyId::service();
    store
        .insert_data_keys(&org, &data_keys(&svc, 3))
        .await
        .unwrap();
    let k = key_record("k", "k");
    let mut c = commit(0, &k.id);
    c.upsert_keys.push(k.clone());
    store.commit(&org, c).await.unwrap();
    assert!(
        matches!(
            store.insert_data_keys(&org, &data_keys(&svc, 1)).await,
            Err(StoreError::Conflict(_))
        ),
        "a data key is never inserted under a key that is not the default"
    );
    store
        .insert_data_keys(&org, &data_keys(&k.id, 2))
        .await
        .unwrap();
    let s = store.load_org(&org).await.unwrap();
    assert_eq!(s.count(&svc), 3);
    assert_eq!(s.count(&k.id), 2);
}

async fn job_total_and_exact_progress(store: &dyn Store) {
    let org = unique_org("progress");
    let svc = KeyId::service();
    let records = data_keys(&svc, 10);
    store.insert_data_keys(&org, &records).await.unwrap();
    let k = key_record("k", "k");
    let mut c = commit(0, &k.id);
    c.upsert_keys.push(k.clone());
    c.job = Some(JobChange::Start(job(
        JobKind::Adopt,
        vec![svc.clone()],
        k.id.clone(),
    )));
    let started = store.commit(&org, c).await.unwrap().expect("the job");
    assert_eq!(
        started.total, 10,
        "total counts the sources' data keys in the same write"
    );
    assert_eq!(started.state, JobState::Running);

    // Every data key is enumerated exactly once across the partitions, in id order within each.
    let mut all = Vec::new();
    let mut widest: Vec<DataKeyId> = Vec::new();
    for partition in 0..store.data_key_partitions() {
        let ids = store
            .list_data_key_ids(&org, &svc, partition, None, 100)
            .await
            .unwrap();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids come in order");
        if ids.len() > widest.len() {
            widest = ids.clone();
        }
        all.extend(ids);
    }
    all.sort();
    let mut expected: Vec<DataKeyId> = records.iter().map(|r| r.id.clone()).collect();
    expected.sort();
    assert_eq!(all, expected, "enumeration finds every data key once");

    // Ranges are (after, until] within a partition, and paging resumes after the last id.
    let partition = (0..store.data_key_partitions())
        .find(|p| {
            futures::executor::block_on(store.list_data_key_ids(&org, &svc, *p, None, 100))
                .map(|ids| ids == widest)
                .unwrap_or(false)
        })
        .unwrap();
    if widest.len() >= 3 {
        let page = store
            .list_data_keys(
                &org,
                &svc,
                partition,
                Some(&widest[0]),
                Some(&widest[2]),
                100,
                None,
            )
            .await
            .unwrap();
        assert_eq!(
            page.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
            widest[1..3].to_vec(),
            "ranges are (after, until] in id order"
        );
        let rest = store
            .list_data_key_ids(&org, &svc, partition, Some(&widest[0]), 1)
            .await
            .unwrap();
        assert_eq!(rest, widest[1..2].to_vec(), "a page starts after `after`");
    }

    let batch = BatchCommit {
        job_id: started.id.clone(),
        generation: 0,
        source: svc.clone(),
        moves: moves(&records[..6], &k.id),
        failures: vec![],
    };
    let p = store.commit_batch(&org, batch.clone()).await.unwrap();
    assert_eq!((p.done, p.applied), (6, 6));
    let p = store.commit_batch(&org, batch).await.unwrap();
    assert_eq!(
        (p.done, p.applied),
        (6, 0),
        "a duplicate batch counts nothing"
    );

    // A stale generation changes nothing.
    let stale = BatchCommit {
        job_id: started.id.clone(),
        generation: 7,
        source: svc.clone(),
        moves: moves(&records[6..], &k.id),
        failures: vec![],
    };
    assert_eq!(store.commit_batch(&org, stale).await.unwrap().applied, 0);

    let moved = store
        .get_data_key(&org, &records[0].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(moved.key_id, k.id);
    assert_eq!(moved.version, 1);
    assert_eq!(moved.wrapped, vec![9, 9]);

    let rest = BatchCommit {
        job_id: started.id.clone(),
        generation: 0,
        source: svc.clone(),
        moves: moves(&records[6..], &k.id),
        failures: vec![],
    };
    let p = store.commit_batch(&org, rest).await.unwrap();
    assert_eq!((p.done, p.total), (10, 10));
    assert!(p.all_processed());
    let s = store.load_org(&org).await.unwrap();
    assert_eq!(s.count(&svc), 0);
    assert_eq!(s.count(&k.id), 10);

    // Completing is conditional on the state read.
    let done = |expected_state| JobUpdate {
        job_id: started.id.clone(),
        expected_state,
        expected_generation: 0,
        state: JobState::Completed,
        generation: 0,
        finished: true,
        total: None,
        reset_failures: false,
    };
    let mut c = commit(s.version, &k.id);
    c.job = Some(JobChange::Update(done(JobState::Failed)));
    assert!(matches!(
        store.commit(&org, c).await,
        Err(StoreError::Conflict(_))
    ));
    let mut c = commit(s.version, &k.id);
    c.job = Some(JobChange::Update(done(JobState::Running)));
    let finished = store.commit(&org, c).await.unwrap().unwrap();
    assert_eq!(finished.state, JobState::Completed);
    assert!(finished.finished_at.is_some());
    assert!(store
        .running_jobs()
        .await
        .unwrap()
        .iter()
        .all(|(o, _)| o != &org));

    // The next job's total counts what moves brought to its source, not only what was
    // inserted under it.
    let s = store.load_org(&org).await.unwrap();
    let mut c = commit(s.version, &svc);
    c.job = Some(JobChange::Start(job(
        JobKind::DisableAll,
        vec![k.id.clone()],
        svc.clone(),
    )));
    let next = store.commit(&org, c).await.unwrap().expect("the next job");
    assert_eq!(
        (next.total, next.done),
        (10, 0),
        "the moved data keys are counted"
    );
}

async fn failures_and_retries(store: &dyn Store) {
    let org = unique_org("failures");
    let svc = KeyId::service();
    let records = data_keys(&svc, 3);
    store.insert_data_keys(&org, &records).await.unwrap();
    let k = key_record("k", "k");
    let mut c = commit(0, &k.id);
    c.upsert_keys.push(k.clone());
    c.job = Some(JobChange::Start(job(
        JobKind::Adopt,
        vec![svc.clone()],
        k.id.clone(),
    )));
    let started = store.commit(&org, c).await.unwrap().unwrap();
    assert!(store
        .running_jobs()
        .await
        .unwrap()
        .iter()
        .any(|(o, j)| o == &org && j.id == started.id));

    let failure = |r: &DataKeyRecord| JobError {
        data_key_id: r.id.clone(),
        key_id: k.id.clone(),
        reason: HealthStatus::AccessDenied,
        message: "denied".into(),
    };
    let batch = BatchCommit {
        job_id: started.id.clone(),
        generation: 0,
        source: svc.clone(),
        moves: moves(&records[..1], &k.id),
        failures: records[1..].iter().map(failure).collect(),
    };
    let p = store.commit_batch(&org, batch.clone()).await.unwrap();
    assert_eq!((p.done, p.failed), (1, 2));
    let p = store.commit_batch(&org, batch).await.unwrap();
    assert_eq!(
        (p.done, p.failed),
        (1, 2),
        "a failure is counted once per data key"
    );
    let job_now = store.get_job(&org, &started.id).await.unwrap().unwrap();
    assert_eq!(job_now.errors.len(), 2);
    assert_eq!(job_now.errors[0].reason, HealthStatus::AccessDenied);

    // A duplicate that moved a data key from the version read before its failure was recorded
    // changes nothing: no data key is both done and failed.
    let stale = BatchCommit {
        job_id: started.id.clone(),
        generation: 0,
        source: svc.clone(),
        moves: moves(&records[1..2], &k.id),
        failures: vec![],
    };
    let p = store.commit_batch(&org, stale).await.unwrap();
    assert_eq!((p.done, p.failed, p.applied), (1, 2, 0));

    // A late success of a failed data key, read again, replaces its failure.
    let reread = store
        .get_data_key(&org, &records[1].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reread.key_id, svc, "still wrapped by the source");
    let late = BatchCommit {
        job_id: started.id.clone(),
        generation: 0,
        source: svc.clone(),
        moves: moves(&[reread], &k.id),
        failures: vec![failure(&records[0])],
    };
    let p = store.commit_batch(&org, late).await.unwrap();
    assert_eq!(
        (p.done, p.failed),
        (2, 1),
        "a moved data key is no longer failed, and a failure of an already moved one is not recorded"
    );

    // Fail the job, then retry with a new generation: failures are forgotten.
    let s = store.load_org(&org).await.unwrap();
    let mut c = commit(s.version, &k.id);
    c.job = Some(JobChange::Update(JobUpdate {
        job_id: started.id.clone(),
        expected_state: JobState::Running,
        expected_generation: 0,
        state: JobState::Failed,
        generation: 0,
        finished: false,
        total: None,
        reset_failures: false,
    }));
    store.commit(&org, c).await.unwrap();
    let s = store.load_org(&org).await.unwrap();
    let mut c = commit(s.version, &k.id);
    c.job = Some(JobChange::Update(JobUpdate {
        job_id: started.id.clone(),
        expected_state: JobState::Failed,
        expected_generation: 0,
        state: JobState::Running,
        generation: 1,
        finished: false,
        total: Some(3),
        reset_failures: true,
    }));
    let retried = store.commit(&org, c).await.unwrap().unwrap();
    assert_eq!(
        (retried.state, retried.generation, retried.failed),
        (JobState::Running, 1, 0)
    );
    assert!(retried.errors.is_empty());
    let old = BatchCommit {
        job_id: started.id.clone(),
        generation: 0,
        source: svc.clone(),
        moves: moves(&records[2..], &k.id),
        failures: vec![],
    };
    assert_eq!(
        store.commit_batch(&org, old).await.unwrap().applied,
        0,
        "a message of an earlier attempt changes nothing"
    );
}

/// A move's row hint is only a hint: one that names another data key's row moves the right
/// data key (found by id) and leaves the other alone; a listed record's hint finds its own.
async fn row_hints_never_move_the_wrong_data_key(store: &dyn Store) {
    let k = key_record("k-hint", "hint");
    let (org, job) = adopting(store, "hint", &k).await;
    let svc = KeyId::service();
    let mut listed = Vec::new();
    for partition in 0..store.data_key_partitions() {
        listed.extend(
            store
                .list_data_keys(&org, &svc, partition, None, None, 10, None)
                .await
                .unwrap(),
        );
    }
    assert_eq!(listed.len(), 3);
    let mut wrong = moves(&listed[..1], &k.id);
    wrong[0].row_hint = listed[1].row_hint.or(Some(i64::MAX));
    let batch = |moves| BatchCommit {
        job_id: job.id.clone(),
        generation: 0,
        source: svc.clone(),
        moves,
        failures: vec![],
    };
    let p = store.commit_batch(&org, batch(wrong)).await.unwrap();
    assert_eq!(p.applied, 1, "the named data key moved");
    let first = store
        .get_data_key(&org, &listed[0].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.key_id, k.id);
    let second = store
        .get_data_key(&org, &listed[1].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (&second.key_id, second.version),
        (&svc, listed[1].version),
        "the data key whose row the hint named is untouched"
    );
    let p = store
        .commit_batch(&org, batch(moves(&listed[1..], &k.id)))
        .await
        .unwrap();
    assert_eq!(p.applied, 2, "listed hints find their own rows");
}

/// A `rotate` job moves data keys from a key to itself: counts do not change, each move
/// marks the data key with the job, and a listing for the job skips what it moved, filling
/// its pages past them (a short page means the range is done).
async fn a_rotate_job_marks_what_it_moved(store: &dyn Store) {
    let org = unique_org("rotate");
    let k = key_record("k-rot", "rot");
    let mut c = commit(0, &k.id);
    c.upsert_keys.push(k.clone());
    store.commit(&org, c).await.unwrap();
    store
        .insert_data_keys(&org, &data_keys(&k.id, 40))
        .await
        .unwrap();
    let mut c = commit(1, &k.id);
    c.job = Some(JobChange::Start(job(
        JobKind::Rotate,
        vec![k.id.clone()],
        k.id.clone(),
    )));
    let rotate = store.commit(&org, c).await.unwrap().expect("the job");
    assert_eq!(rotate.total, 40, "the total counts the key's data keys");

    // In each partition, move all but the last data key (in id order).
    let list = |partition, limit, by: Option<JobId>| {
        let k = k.id.clone();
        let org = org.clone();
        async move {
            store
                .list_data_keys(&org, &k, partition, None, None, limit, by.as_ref())
                .await
                .unwrap()
        }
    };
    let mut moved = Vec::new();
    let mut kept = Vec::new();
    for partition in 0..store.data_key_partitions() {
        let mut records = list(partition, 100, Some(rotate.id.clone())).await;
        if let Some(last) = records.pop() {
            kept.push((partition, last.id));
        }
        moved.extend(records);
    }
    assert!(!moved.is_empty(), "some partition holds several data keys");
    let batch = |moves| BatchCommit {
        job_id: rotate.id.clone(),
        generation: 0,
        source: k.id.clone(),
        moves,
        failures: vec![],
    };
    let p = store
        .commit_batch(&org, batch(moves(&moved, &k.id)))
        .await
        .unwrap();
    assert_eq!(p.applied, moved.len() as u64);
    assert_eq!(p.done, moved.len() as u64);
    let again = store
        .commit_batch(&org, batch(moves(&moved, &k.id)))
        .await
        .unwrap();
    assert_eq!(again.applied, 0, "a redelivered batch counts nothing twice");
    assert_eq!(
        store.load_org(&org).await.unwrap().count(&k.id),
        40,
        "the data keys stay with their key"
    );
    let moved_one = store
        .get_data_key(&org, &moved[0].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            &moved_one.key_id,
            moved_one.version,
            moved_one.wrapped.as_slice()
        ),
        (&k.id, moved[0].version + 1, &[9u8, 9][..])
    );

    let mut all = 0;
    for partition in 0..store.data_key_partitions() {
        // The first page for the job is its one unmoved data key, found past the moved ones.
        let page = list(partition, 1, Some(rotate.id.clone())).await;
        let want: Vec<&DataKeyId> = kept
            .iter()
            .filter(|(p, _)| *p == partition)
            .map(|(_, id)| id)
            .collect();
        assert_eq!(page.iter().map(|r| &r.id).collect::<Vec<_>>(), want);
        all += list(partition, 100, None).await.len();
        let other = list(partition, 100, Some(JobId::generate())).await;
        assert_eq!(
            other.len(),
            list(partition, 100, None).await.len(),
            "another job's listing skips nothing"
        );
    }
    assert_eq!(
        all, 40,
        "without a job, every data key of the key is listed"
    );
}

async fn many_data_keys_are_read_in_one_call(store: &dyn Store) {
    let org = unique_org("many");
    let records = data_keys(&KeyId::service(), 5);
    store.insert_data_keys(&org, &records).await.unwrap();
    let mut ids: Vec<DataKeyId> = records.iter().map(|r| r.id.clone()).collect();
    ids.push(DataKeyId::generate()); // unknown: left out
    ids.push(DataKeyId::from_trusted("not-a-uuid".to_owned())); // never stored: left out
    let mut found = store.get_data_keys(&org, &ids).await.unwrap();
    found.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
    let mut expected = records.clone();
    expected.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
    assert_eq!(found.len(), expected.len());
    for (f, e) in found.iter().zip(&expected) {
        assert_eq!(
            (&f.id, &f.key_id, &f.wrapped, f.version),
            (&e.id, &e.key_id, &e.wrapped, e.version)
        );
    }
    assert!(store.get_data_keys(&org, &[]).await.unwrap().is_empty());
}

async fn orgs_are_isolated(store: &dyn Store) {
    let a = unique_org("iso");
    let b = unique_org("iso");
    let records = data_keys(&KeyId::service(), 1);
    store.insert_data_keys(&a, &records).await.unwrap();
    assert!(store
        .get_data_key(&b, &records[0].id)
        .await
        .unwrap()
        .is_none());
    assert!(store
        .get_data_keys(&b, &[records[0].id.clone()])
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .get_data_key(&a, &records[0].id)
        .await
        .unwrap()
        .is_some());
    assert!(store
        .list_data_keys(&b, &KeyId::service(), 0, None, None, 10, None)
        .await
        .unwrap()
        .is_empty());
}

async fn audit_pages(store: &dyn Store) {
    let org = unique_org("audit");
    let events: Vec<AuditEvent> = (0..5)
        .map(|i| AuditEvent::new("alice", AuditAction::KeyCheck).detail(format!("#{i}")))
        .collect();
    store.append_audit(&org, &events).await.unwrap();
    let (first, cursor) = store.list_audit(&org, 3, None).await.unwrap();
    assert_eq!(first.len(), 3);
    assert_eq!(first[0].detail.as_deref(), Some("#4"), "newest first");
    let (second, end) = store.list_audit(&org, 3, cursor.as_deref()).await.unwrap();
    assert_eq!(second.len(), 2);
    assert_eq!(second[1].detail.as_deref(), Some("#0"));
    assert!(end.is_none());
    assert!(store
        .list_audit(&unique_org("audit"), 3, None)
        .await
        .unwrap()
        .0
        .is_empty());
}

/// The rules' largest commits, disabling all of the most keys an org may have in use and then
/// finishing that job, apply in one atomic write (a DynamoDB transaction holds 100 items).
async fn the_largest_commits_fit(store: &dyn Store) {
    use crate::rules::{self, Finish, MAX_KEYS_IN_USE};
    async fn finish(store: &dyn Store, org: &OrgId, job: &JobId) {
        match rules::finish(&store.load_org(org).await.unwrap(), job) {
            Finish::Commit(c) => store.commit(org, c).await.unwrap(),
            other => panic!("the job can finish: {other:?}"),
        };
    }
    let org = unique_org("largest");
    for i in 0..MAX_KEYS_IN_USE {
        let record = key_record(&format!("k{i}"), &format!("key {i}"));
        let c = rules::add_key(&store.load_org(&org).await.unwrap(), "alice", record).unwrap();
        if let Some(adopt) = store.commit(&org, c).await.unwrap() {
            finish(store, &org, &adopt.id).await;
        }
    }
    let c = rules::disable_all(&store.load_org(&org).await.unwrap(), "alice").unwrap();
    let job = store
        .commit(&org, c)
        .await
        .expect("disabling all of the most keys in use is one commit")
        .expect("the job");
    assert_eq!(job.source_key_ids.len(), MAX_KEYS_IN_USE);
    finish(store, &org, &job.id).await;
    let s = store.load_org(&org).await.unwrap();
    assert_eq!(s.job.as_ref().map(|j| j.state), Some(JobState::Completed));
    assert!(s.keys.iter().all(|k| k.state == KeyState::Disabled));
}

/// Runs every promise of the [`RewrapQueue`] port. `visibility` is the adapter's timeout.
pub async fn queue_contract(queue: &dyn RewrapQueue, visibility: Duration) {
    let msg = |n: u32| RewrapMessage::Plan {
        org: OrgId::from_trusted("q"),
        job_id: crate::model::JobId::from_trusted(format!("job-{n}")),
        generation: n,
        resume: None,
    };
    // Drain anything left by another test sharing the queue.
    while !queue.receive(10, Duration::ZERO).await.unwrap().is_empty() {}

    assert!(queue
        .receive(10, Duration::from_millis(50))
        .await
        .unwrap()
        .is_empty());
    queue.send(&[msg(1), msg(2)]).await.unwrap();
    let got = queue.receive(10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(got.len(), 2);
    let bodies: Vec<RewrapMessage> = got
        .iter()
        .map(|d| serde_json::from_str(&d.body).unwrap())
        .collect();
    assert!(bodies.contains(&msg(1)) && bodies.contains(&msg(2)));
    assert!(
        queue.receive(10, Duration::ZERO).await.unwrap().is_empty(),
        "a received message is invisible"
    );
    let acked = got.iter().find(|d| d.body.contains("job-1")).unwrap();
    let unacked = got.iter().find(|d| d.body.contains("job-2")).unwrap();
    queue.ack(&acked.receipt).await.unwrap();

    tokio::time::sleep(visibility + Duration::from_millis(100)).await;
    let again = queue.receive(10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(
        again.len(),
        1,
        "an unacknowledged message comes back, an acknowledged one does not"
    );
    assert!(again[0].body.contains("job-2"));
    assert_eq!(again[0].receive_count, 2);
    // (Acknowledging with the receipt of an earlier delivery is adapter-specific: SQS may or may
    // not delete then. The engine does not rely on either: every batch is idempotent.)
    let _ = unacked;
    queue.ack(&again[0].receipt).await.unwrap();
    tokio::time::sleep(visibility + Duration::from_millis(100)).await;
    assert!(queue.receive(10, Duration::ZERO).await.unwrap().is_empty());
}

/// Runs every promise of the [`KeyProvider`] port for two usable keys of one org.
pub async fn key_provider_contract(provider: &dyn KeyProvider, a: &Kek, b: &Kek) {
    provider.prepare(a).await.unwrap();
    provider.prepare(b).await.unwrap();
    provider
        .check(a)
        .await
        .expect("a usable key passes its check");
    let id = DataKeyId::generate();
    let ctx = data_key_context(&a.org, &id);
    let dk = DataKey::generate();
    let wrapped = provider.wrap(a, &ctx, &dk).await.unwrap();
    assert_ne!(
        wrapped.blob.as_slice(),
        dk.expose().as_slice(),
        "wrapping hides the key"
    );
    let back = provider.unwrap(a, &ctx, &wrapped.blob).await.unwrap();
    assert_eq!(back.expose(), dk.expose());

    let other_ctx = data_key_context(&a.org, &DataKeyId::generate());
    let err = provider
        .unwrap(a, &other_ctx, &wrapped.blob)
        .await
        .unwrap_err();
    assert_eq!(
        err.kind,
        KeyErrorKind::InvalidCiphertext,
        "the context is authenticated"
    );
    assert!(
        provider.unwrap(b, &ctx, &wrapped.blob).await.is_err(),
        "another key cannot unwrap"
    );

    // Rewrap, natively or by unwrap + wrap, yields a blob the target opens.
    let moved = match provider.rewrap(a, b, &ctx, &wrapped.blob).await.unwrap() {
        Some(w) => w,
        None => provider.wrap(b, &ctx, &back).await.unwrap(),
    };
    assert_eq!(
        provider
            .unwrap(b, &ctx, &moved.blob)
            .await
            .unwrap()
            .expose(),
        dk.expose()
    );

    batch_promises(provider, a, b).await;
}

/// Batches answer one result per item, in order; a bad item fails alone; a one-call batch
/// rewrap, where offered, yields blobs the target opens.
async fn batch_promises(provider: &dyn KeyProvider, a: &Kek, b: &Kek) {
    let keys: Vec<(EncryptionContext, DataKey)> = (0..5)
        .map(|_| {
            (
                data_key_context(&a.org, &DataKeyId::generate()),
                DataKey::generate(),
            )
        })
        .collect();
    let wrapped = provider.wrap_batch(a, &keys).await.unwrap();
    assert_eq!(wrapped.len(), keys.len(), "one result per item");
    let mut items: Vec<RewrapItem> = keys
        .iter()
        .zip(&wrapped)
        .map(|((ctx, _), w)| RewrapItem {
            ctx: ctx.clone(),
            wrapped: w.as_ref().expect("wrapped").blob.clone(),
        })
        .collect();
    let good = items.clone();
    items[2].ctx = data_key_context(&a.org, &DataKeyId::generate());
    let back = provider.unwrap_batch(a, &items).await.unwrap();
    assert_eq!(back.len(), items.len());
    for (i, r) in back.iter().enumerate() {
        match r {
            Err(e) if i == 2 => assert_eq!(e.kind, KeyErrorKind::InvalidCiphertext),
            Ok(k) if i != 2 => assert_eq!(k.expose(), keys[i].1.expose(), "item {i} in order"),
            other => panic!("item {i}: {:?}", other.as_ref().map(|_| "a key")),
        }
    }
    for (from, to) in [(a, a), (a, b)] {
        if let Some(moved) = provider.rewrap_batch(from, to, &good).await.unwrap() {
            assert_eq!(moved.len(), good.len());
            for ((ctx, dk), m) in keys.iter().zip(moved) {
                let m = m.expect("moved");
                assert_eq!(
                    provider.unwrap(to, ctx, &m.blob).await.unwrap().expose(),
                    dk.expose()
                );
            }
        }
    }
}
