//! The key rules of ARCHITECTURE.md as pure functions: a snapshot in, a conditional commit (or a
//! typed refusal) out. The store applies the commit atomically only if nothing changed since the
//! snapshot, so two admins racing can never both win against a stale view.
//!
//! A third of the file is the tests beside the rules.

use chrono::{DateTime, Utc};

use crate::error::CoreError;
use crate::model::{
    AuditAction, AuditEvent, Health, Job, JobId, JobKind, JobState, Key, KeyId, KeyRecord, KeySpec,
    KeyState,
};
use crate::ports::{JobChange, JobUpdate, OrgCommit, OrgSnapshot};

/// The most customer managed keys an org may have that are not disabled. Every rule commits in
/// one atomic write, and disabling all keys writes a few items per key: on DynamoDB, whose
/// transactions hold at most 100 items, about six per key (see `cmk-aws`'s table design). The
/// limit keeps the largest commit inside one transaction, with room to spare, on every backend.
pub const MAX_KEYS_IN_USE: usize = 10;

/// Display name of the service-managed key.
pub const SERVICE_KEY_NAME: &str = "Service-managed key";

fn service_record() -> KeyRecord {
    KeyRecord {
        id: KeyId::service(),
        name: SERVICE_KEY_NAME.to_owned(),
        spec: KeySpec::ServiceManaged,
        state: KeyState::Active,
        health: Health {
            checked_at: None,
            ..Health::ok(DateTime::<Utc>::UNIX_EPOCH)
        },
        created_at: DateTime::<Utc>::UNIX_EPOCH,
        created_by: "system".to_owned(),
        rewrap_rate_limit: None,
    }
}

/// A key is busy while it is a source or the target of the org's unfinished job.
pub fn is_busy(s: &OrgSnapshot, key: &KeyId) -> bool {
    s.unfinished_job()
        .is_some_and(|j| &j.target_key_id == key || j.source_key_ids.contains(key))
}

/// The record of any key of the org, the service key included.
pub fn find_key(s: &OrgSnapshot, key: &KeyId) -> Option<KeyRecord> {
    if key.is_service() {
        Some(service_record())
    } else {
        s.key(key).cloned()
    }
}

fn view(s: &OrgSnapshot, record: KeyRecord) -> Key {
    Key {
        default: record.id == s.default_key_id,
        busy: is_busy(s, &record.id),
        data_keys: s.count(&record.id),
        record,
    }
}

/// Every key of the org as an admin sees it, the service key first.
pub fn key_views(s: &OrgSnapshot) -> Vec<Key> {
    std::iter::once(service_record())
        .chain(s.keys.iter().cloned())
        .map(|r| view(s, r))
        .collect()
}

pub fn key_view(s: &OrgSnapshot, key: &KeyId) -> Result<Key, CoreError> {
    find_key(s, key)
        .map(|r| view(s, r))
        .ok_or_else(|| not_found(key))
}

fn not_found(key: &KeyId) -> CoreError {
    CoreError::NotFound(format!("key {key} not found in this organization"))
}

fn base_commit(s: &OrgSnapshot) -> OrgCommit {
    OrgCommit {
        expected_version: s.version,
        default_key_id: s.default_key_id.clone(),
        upsert_keys: Vec::new(),
        job: None,
        events: Vec::new(),
    }
}

fn new_job(kind: JobKind, sources: Vec<KeyId>, target: KeyId, actor: &str) -> Job {
    let now = crate::model::now();
    Job {
        id: JobId::generate(),
        kind,
        state: JobState::Running,
        source_key_ids: sources,
        target_key_id: target,
        total: 0,
        done: 0,
        failed: 0,
        errors: Vec::new(),
        generation: 0,
        started_at: now,
        updated_at: now,
        finished_at: None,
        started_by: actor.to_owned(),
        throttled_rate: None,
    }
}

fn started_event(actor: &str, job: &Job) -> AuditEvent {
    let sources: Vec<&str> = job.source_key_ids.iter().map(|k| k.as_str()).collect();
    AuditEvent::new(actor, AuditAction::ReencryptionStarted)
        .job(&job.id)
        .key(&job.target_key_id)
        .detail(format!(
            "{} from [{}] to {}",
            job.kind.as_str(),
            sources.join(", "),
            job.target_key_id
        ))
}

fn has_active_cmk(s: &OrgSnapshot) -> bool {
    s.keys.iter().any(|k| k.state == KeyState::Active)
}

/// Key names are unique in an org regardless of case. Folded with Unicode lowercase, as the
/// stores fold them for their uniqueness constraint (an ASCII-only fold let `CLÉ` past this rule
/// into the store's constraint, which answered a retryable `conflict` instead of `name_taken`).
fn same_name(a: &str, b: &str) -> bool {
    a.to_lowercase() == b.to_lowercase()
}

/// Checks what can be checked before the (slow) key round trip of an add.
pub fn precheck_add(s: &OrgSnapshot, name: &str) -> Result<(), CoreError> {
    // The service-managed key is listed among the org's keys under its name: it is taken too.
    if same_name(SERVICE_KEY_NAME, name) || s.keys.iter().any(|k| same_name(&k.name, name)) {
        return Err(CoreError::NameTaken(name.to_owned()));
    }
    let in_use = s
        .keys
        .iter()
        .filter(|k| !k.id.is_service() && k.state != KeyState::Disabled)
        .count();
    if in_use >= MAX_KEYS_IN_USE {
        return Err(CoreError::KeyLimitReached(MAX_KEYS_IN_USE));
    }
    if !has_active_cmk(s) {
        if let Some(job) = s.unfinished_job() {
            return Err(CoreError::ReencryptionInProgress(job.id.to_string()));
        }
    }
    Ok(())
}

/// Add a key. The first active CMK becomes the default, and a job adopts every data key the
/// service key wraps.
pub fn add_key(s: &OrgSnapshot, actor: &str, record: KeyRecord) -> Result<OrgCommit, CoreError> {
    precheck_add(s, &record.name)?;
    let mut c = base_commit(s);
    c.events.push(
        AuditEvent::new(actor, AuditAction::KeyAdded)
            .key(&record.id)
            .detail(format!(
                "{} key {:?}",
                record.spec.key_type().as_str(),
                record.name
            )),
    );
    if !has_active_cmk(s) {
        c.default_key_id = record.id.clone();
        let job = new_job(
            JobKind::Adopt,
            vec![KeyId::service()],
            record.id.clone(),
            actor,
        );
        c.events
            .push(AuditEvent::new(actor, AuditAction::KeyDefaultSet).key(&record.id));
        c.events.push(started_event(actor, &job));
        c.job = Some(JobChange::Start(job));
    }
    c.upsert_keys.push(record);
    Ok(c)
}

/// Set a key's re-encryption rate limit: only a customer's `aws-kms` key has one (the
/// service-managed key is the operator's, and `local` keys have no KMS quota to protect). Any
/// state: a running job picks the new limit up at its next batch.
pub fn set_rate_limit(
    s: &OrgSnapshot,
    actor: &str,
    key: &KeyId,
    limit: u32,
) -> Result<OrgCommit, CoreError> {
    if key.is_service() {
        return Err(CoreError::ServiceKeyLocked);
    }
    let limit = crate::model::validate_rewrap_rate_limit(limit)?;
    let mut record = find_key(s, key).ok_or_else(|| not_found(key))?;
    if !matches!(
        record.spec,
        KeySpec::AwsKms { .. } | KeySpec::VaultTransit(_)
    ) {
        return Err(CoreError::InvalidRequest(format!(
            "key {key} is a {} key, which has no re-encryption rate limit",
            record.spec.key_type().as_str()
        )));
    }
    let before = record.rewrap_rate_limit;
    record.rewrap_rate_limit = Some(limit);
    let mut c = base_commit(s);
    c.events.push(
        AuditEvent::new(actor, AuditAction::KeyRateLimitSet)
            .key(key)
            .detail(match before {
                Some(b) => format!("{b} to {limit} requests per second"),
                None => format!("{limit} requests per second"),
            }),
    );
    c.upsert_keys.push(record);
    Ok(c)
}

/// Set as default: only an active, non-default, non-busy key.
pub fn set_default(s: &OrgSnapshot, actor: &str, key: &KeyId) -> Result<OrgCommit, CoreError> {
    let record = find_key(s, key).ok_or_else(|| not_found(key))?;
    if s.default_key_id == *key {
        return Err(CoreError::KeyIsDefault(key.clone()));
    }
    if is_busy(s, key) {
        return Err(CoreError::KeyBusy(key.clone()));
    }
    if record.state != KeyState::Active {
        return Err(CoreError::KeyNotActive(format!(
            "key {key} is {}; only an active key can be the default",
            record.state.as_str()
        )));
    }
    let mut c = base_commit(s);
    c.default_key_id = key.clone();
    c.events.push(
        AuditEvent::new(actor, AuditAction::KeyDefaultSet)
            .key(key)
            .detail(format!("previous default {}", s.default_key_id)),
    );
    Ok(c)
}

/// Disable a key, moving its data keys to `target`.
pub fn disable(
    s: &OrgSnapshot,
    actor: &str,
    key: &KeyId,
    target: &KeyId,
) -> Result<OrgCommit, CoreError> {
    if key.is_service() {
        return Err(CoreError::ServiceKeyLocked);
    }
    let mut record = find_key(s, key).ok_or_else(|| not_found(key))?;
    if is_busy(s, key) {
        return Err(CoreError::KeyBusy(key.clone()));
    }
    if record.state != KeyState::Active {
        return Err(CoreError::KeyNotActive(format!(
            "key {key} is already {}",
            record.state.as_str()
        )));
    }
    if s.default_key_id == *key {
        return Err(CoreError::KeyIsDefault(key.clone()));
    }
    if let Some(job) = s.unfinished_job() {
        return Err(CoreError::ReencryptionInProgress(job.id.to_string()));
    }
    if target == key {
        return Err(CoreError::InvalidRequest(
            "reencrypt_to must name another key than the one being disabled".into(),
        ));
    }
    let target_record = find_key(s, target).ok_or_else(|| {
        CoreError::NotFound(format!(
            "re-encryption key {target} not found in this organization"
        ))
    })?;
    if target_record.state != KeyState::Active {
        return Err(CoreError::KeyNotActive(format!(
            "re-encryption key {target} is {}; choose an active key",
            target_record.state.as_str()
        )));
    }
    let mut c = base_commit(s);
    record.state = KeyState::Reencrypting;
    let job = new_job(JobKind::Disable, vec![key.clone()], target.clone(), actor);
    c.events.push(
        AuditEvent::new(actor, AuditAction::KeyDisableRequested)
            .key(key)
            .job(&job.id)
            .detail(format!("re-encrypt to {target}")),
    );
    c.events.push(started_event(actor, &job));
    c.upsert_keys.push(record);
    c.job = Some(JobChange::Start(job));
    Ok(c)
}

/// Re-wrap every data key of `key` with the key's latest version, after the customer rotated
/// it: a `rotate` job whose source and target are the key, which stays active (and may stay
/// the default). Only `vault-transit` keys have versions the service moves data keys between:
/// AWS KMS rotates its key material transparently, and local keys have one version.
pub fn rotate(s: &OrgSnapshot, actor: &str, key: &KeyId) -> Result<OrgCommit, CoreError> {
    if key.is_service() {
        return Err(CoreError::ServiceKeyLocked);
    }
    let record = find_key(s, key).ok_or_else(|| not_found(key))?;
    if !matches!(record.spec, KeySpec::VaultTransit(_)) {
        return Err(CoreError::InvalidRequest(format!(
            "key {key} is a {} key: only vault-transit keys are re-wrapped to a new version",
            record.spec.key_type().as_str()
        )));
    }
    if record.state != KeyState::Active {
        return Err(CoreError::KeyNotActive(format!(
            "key {key} is {}; only an active key is re-wrapped",
            record.state.as_str()
        )));
    }
    if let Some(job) = s.unfinished_job() {
        return Err(CoreError::ReencryptionInProgress(job.id.to_string()));
    }
    let mut c = base_commit(s);
    let job = new_job(JobKind::Rotate, vec![key.clone()], key.clone(), actor);
    c.events.push(
        AuditEvent::new(actor, AuditAction::KeyRewrapRequested)
            .key(key)
            .job(&job.id)
            .detail("re-wrap every data key with the key's latest version"),
    );
    c.events.push(started_event(actor, &job));
    c.job = Some(JobChange::Start(job));
    Ok(c)
}

/// Disable every CMK: the service key becomes the default at once and adopts all data keys.
pub fn disable_all(s: &OrgSnapshot, actor: &str) -> Result<OrgCommit, CoreError> {
    if let Some(job) = s.unfinished_job() {
        return Err(CoreError::ReencryptionInProgress(job.id.to_string()));
    }
    let sources: Vec<KeyRecord> = s
        .keys
        .iter()
        .filter(|k| k.state == KeyState::Active)
        .cloned()
        .collect();
    if sources.is_empty() {
        return Err(CoreError::KeyNotActive(
            "there is no active customer managed key to disable".into(),
        ));
    }
    let mut c = base_commit(s);
    c.default_key_id = KeyId::service();
    let job = new_job(
        JobKind::DisableAll,
        sources.iter().map(|k| k.id.clone()).collect(),
        KeyId::service(),
        actor,
    );
    c.events
        .push(AuditEvent::new(actor, AuditAction::KeysDisableAllRequested).job(&job.id));
    c.events.push(started_event(actor, &job));
    for mut k in sources {
        k.state = KeyState::Reencrypting;
        c.upsert_keys.push(k);
    }
    c.job = Some(JobChange::Start(job));
    Ok(c)
}

/// What a job still has to move. A `rotate` job's data keys stay with their key, so its count
/// says nothing: what is left is what it has not moved of the data keys it started with
/// (the store marks each data key a job moved, and a batch lists only the others). Data keys
/// made meanwhile are wrapped by the latest version already and are not part of it.
fn data_keys_left(s: &OrgSnapshot, job: &Job) -> u64 {
    if job.kind == JobKind::Rotate {
        return job.total.saturating_sub(job.done);
    }
    job.source_key_ids.iter().map(|k| s.count(k)).sum()
}

fn update(job: &Job, state: JobState) -> JobUpdate {
    JobUpdate {
        job_id: job.id.clone(),
        expected_state: job.state,
        expected_generation: job.generation,
        state,
        generation: job.generation,
        finished: !state.is_unfinished(),
        total: None,
        reset_failures: false,
    }
}

/// What a retry does.
#[derive(Debug)]
pub enum Retry {
    /// A failed job runs again: commit, then plan it at its new generation.
    Restart { commit: OrgCommit, generation: u32 },
    /// A running job is planned again (idempotent), e.g. after a lost message.
    Replan(Job),
}

/// Retry puts a failed job back to running for the data keys that failed or remain; on a running
/// job it re-plans the remaining work, which is safe because every move is conditional.
pub fn retry(s: &OrgSnapshot, actor: &str) -> Result<Retry, CoreError> {
    let job = s.unfinished_job().ok_or_else(|| {
        CoreError::NoReencryption("there is no failed or running re-encryption to retry".into())
    })?;
    if job.state == JobState::Running {
        return Ok(Retry::Replan(job.clone()));
    }
    let mut c = base_commit(s);
    let mut u = update(job, JobState::Running);
    u.generation = job.generation + 1;
    u.reset_failures = true;
    // Recount: what remains is exactly what the sources still wrap.
    u.total = Some(job.done + data_keys_left(s, job));
    let generation = u.generation;
    c.job = Some(JobChange::Update(u));
    c.events.push(
        AuditEvent::new(actor, AuditAction::ReencryptionRetried)
            .job(&job.id)
            .detail(format!(
                "{} data keys failed in the previous attempt",
                job.failed
            )),
    );
    Ok(Retry::Restart {
        commit: c,
        generation,
    })
}

/// Cancel ends a running or failed job. Moved data keys stay with the target; sources that
/// still wrap data keys become active again, drained ones become disabled.
pub fn cancel(s: &OrgSnapshot, actor: &str) -> Result<OrgCommit, CoreError> {
    let job = s.unfinished_job().ok_or_else(|| {
        CoreError::NoReencryption("there is no failed or running re-encryption to cancel".into())
    })?;
    let mut c = base_commit(s);
    c.job = Some(JobChange::Update(update(job, JobState::Cancelled)));
    if matches!(job.kind, JobKind::Disable | JobKind::DisableAll) {
        for src in &job.source_key_ids {
            if let Some(mut k) = s.key(src).cloned() {
                if k.state == KeyState::Reencrypting {
                    if s.count(src) > 0 {
                        k.state = KeyState::Active;
                    } else {
                        k.state = KeyState::Disabled;
                        c.events.push(
                            AuditEvent::new(actor, AuditAction::KeyDisabled)
                                .key(src)
                                .job(&job.id),
                        );
                    }
                    c.upsert_keys.push(k);
                }
            }
        }
    }
    c.events.push(
        AuditEvent::new(actor, AuditAction::ReencryptionCancelled)
            .job(&job.id)
            .detail(format!(
                "{} of {} data keys moved; {} remain with their source",
                job.done,
                job.total,
                data_keys_left(s, job)
            )),
    );
    Ok(c)
}

/// What finishing a job does.
#[derive(Debug)]
pub enum Finish {
    /// Not the running job, or work remains: nothing to do.
    NotReady,
    /// Commit this; the job completes or fails.
    Commit(OrgCommit),
    /// The final check found data keys the count missed: commit the new total, then plan again.
    Replan(OrgCommit),
}

/// Called when every data key of a job has been processed. A key becomes `disabled` only after
/// this final check finds no data key still wrapped by it.
pub fn finish(s: &OrgSnapshot, job_id: &JobId) -> Finish {
    const ACTOR: &str = "system";
    let Some(job) = s
        .unfinished_job()
        .filter(|j| &j.id == job_id && j.state == JobState::Running)
    else {
        return Finish::NotReady;
    };
    if job.done + job.failed < job.total {
        return Finish::NotReady;
    }
    let left = data_keys_left(s, job);
    let mut c = base_commit(s);
    if left == 0 {
        let mut u = update(job, JobState::Completed);
        // A total re-planned from a snapshot can fall short of the truth (never above it): the
        // completed job shows every data key it moved.
        if job.done > job.total {
            u.total = Some(job.done);
        }
        c.job = Some(JobChange::Update(u));
        if matches!(job.kind, JobKind::Disable | JobKind::DisableAll) {
            for src in &job.source_key_ids {
                if let Some(mut k) = s.key(src).cloned() {
                    k.state = KeyState::Disabled;
                    c.upsert_keys.push(k);
                    c.events.push(
                        AuditEvent::new(ACTOR, AuditAction::KeyDisabled)
                            .key(src)
                            .job(&job.id),
                    );
                }
            }
        }
        c.events.push(
            AuditEvent::new(ACTOR, AuditAction::ReencryptionCompleted)
                .job(&job.id)
                .key(&job.target_key_id)
                .detail(format!("{} data keys re-encrypted", job.done)),
        );
        Finish::Commit(c)
    } else if job.failed > 0 {
        c.job = Some(JobChange::Update(update(job, JobState::Failed)));
        c.events.push(
            AuditEvent::new(ACTOR, AuditAction::ReencryptionFailed)
                .job(&job.id)
                .outcome("failure")
                .detail(format!(
                    "{} data keys could not be re-encrypted; fix access and retry, or cancel",
                    job.failed
                )),
        );
        Finish::Commit(c)
    } else {
        let mut u = update(job, JobState::Running);
        u.total = Some(job.done + left);
        c.job = Some(JobChange::Update(u));
        Finish::Replan(c)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::model::OrgId;

    fn snapshot() -> OrgSnapshot {
        OrgSnapshot {
            org: OrgId::from_trusted("acme"),
            version: 1,
            external_id: Some("ext".into()),
            default_key_id: KeyId::service(),
            keys: vec![],
            data_key_counts: HashMap::new(),
            job: None,
        }
    }

    fn record(id: &str, name: &str, state: KeyState) -> KeyRecord {
        KeyRecord {
            id: KeyId::from_trusted(id),
            name: name.into(),
            spec: KeySpec::Local,
            state,
            health: Health::unknown(),
            created_at: crate::model::now(),
            created_by: "t".into(),
            rewrap_rate_limit: None,
        }
    }

    fn job_of(c: &OrgCommit) -> Job {
        match &c.job {
            Some(JobChange::Start(j)) => j.clone(),
            other => panic!("expected a started job, got {other:?}"),
        }
    }

    #[test]
    fn first_key_becomes_default_and_adopts() {
        let s = snapshot();
        let c = add_key(&s, "alice", record("k1", "prod", KeyState::Active)).expect("add");
        assert_eq!(c.default_key_id.as_str(), "k1");
        let job = job_of(&c);
        assert_eq!(job.kind, JobKind::Adopt);
        assert_eq!(job.source_key_ids, vec![KeyId::service()]);
        assert_eq!(job.target_key_id.as_str(), "k1");
    }

    #[test]
    fn second_key_is_plain_add() {
        let mut s = snapshot();
        s.keys.push(record("k1", "prod", KeyState::Active));
        s.default_key_id = KeyId::from_trusted("k1");
        let c = add_key(&s, "alice", record("k2", "stage", KeyState::Active)).expect("add");
        assert!(c.job.is_none());
        assert_eq!(c.default_key_id.as_str(), "k1");
        assert!(matches!(
            add_key(&s, "alice", record("k3", "PROD", KeyState::Active)),
            Err(CoreError::NameTaken(_))
        ));
        s.keys.push(record("k4", "clé", KeyState::Disabled));
        for taken in ["CLÉ", "service-managed KEY"] {
            assert!(
                matches!(
                    add_key(&s, "alice", record("k5", taken, KeyState::Active)),
                    Err(CoreError::NameTaken(_))
                ),
                "{taken}"
            );
        }
    }

    #[test]
    fn only_an_aws_kms_key_has_a_rate_limit_within_bounds() {
        let mut s = snapshot();
        let mut aws = record("k1", "prod", KeyState::Active);
        aws.spec = KeySpec::AwsKms {
            role_arn: "arn:aws:iam::111122223333:role/r".into(),
            key_arn: "arn:aws:kms:us-east-1:111122223333:key/k".into(),
            resolved_key_arn: None,
            trust: crate::model::TrustMode::ExternalId,
        };
        aws.rewrap_rate_limit = Some(250);
        s.keys.push(aws);
        s.keys.push(record("k2", "local", KeyState::Active));
        let c = set_rate_limit(&s, "alice", &KeyId::from_trusted("k1"), 500).expect("set");
        assert_eq!(c.upsert_keys[0].rewrap_rate_limit, Some(500));
        assert_eq!(c.events[0].action, "key.rate_limit_set");
        assert_eq!(
            c.events[0].detail.as_deref(),
            Some("250 to 500 requests per second")
        );
        for bad in [0, 10_001] {
            assert!(matches!(
                set_rate_limit(&s, "alice", &KeyId::from_trusted("k1"), bad),
                Err(CoreError::InvalidField {
                    field: "rewrap_rate_limit",
                    ..
                })
            ));
        }
        assert!(matches!(
            set_rate_limit(&s, "alice", &KeyId::from_trusted("k2"), 10),
            Err(CoreError::InvalidRequest(_))
        ));
        assert!(matches!(
            set_rate_limit(&s, "alice", &KeyId::service(), 10),
            Err(CoreError::ServiceKeyLocked)
        ));
        assert!(matches!(
            set_rate_limit(&s, "alice", &KeyId::from_trusted("nope"), 10),
            Err(CoreError::NotFound(_))
        ));
    }

    #[test]
    fn disable_rules() {
        let mut s = snapshot();
        s.keys.push(record("k1", "a", KeyState::Active));
        s.keys.push(record("k2", "b", KeyState::Active));
        s.keys.push(record("k3", "c", KeyState::Disabled));
        s.default_key_id = KeyId::from_trusted("k1");
        let k = KeyId::from_trusted;
        assert!(matches!(
            disable(&s, "a", &k("k1"), &k("k2")),
            Err(CoreError::KeyIsDefault(_))
        ));
        assert!(matches!(
            disable(&s, "a", &KeyId::service(), &k("k2")),
            Err(CoreError::ServiceKeyLocked)
        ));
        assert!(matches!(
            disable(&s, "a", &k("k2"), &k("k3")),
            Err(CoreError::KeyNotActive(_))
        ));
        assert!(matches!(
            disable(&s, "a", &k("k2"), &k("k2")),
            Err(CoreError::InvalidRequest(_))
        ));
        assert!(matches!(
            disable(&s, "a", &k("k2"), &k("nope")),
            Err(CoreError::NotFound(_))
        ));
        assert!(matches!(
            disable(&s, "a", &k("nope"), &k("k1")),
            Err(CoreError::NotFound(_))
        ));
        let c = disable(&s, "a", &k("k2"), &KeyId::service()).expect("disable");
        assert_eq!(c.upsert_keys[0].state, KeyState::Reencrypting);
        let job = job_of(&c);
        s.job = Some(job);
        s.keys[1].state = KeyState::Reencrypting;
        assert!(matches!(
            set_default(&s, "a", &k("k2")),
            Err(CoreError::KeyBusy(_))
        ));
        assert!(matches!(
            disable(&s, "a", &k("k2"), &k("k1")),
            Err(CoreError::KeyBusy(_))
        ));
        assert!(matches!(
            disable_all(&s),
            Err(CoreError::ReencryptionInProgress(_))
        ));
    }

    fn disable_all(s: &OrgSnapshot) -> Result<OrgCommit, CoreError> {
        super::disable_all(s, "a")
    }

    #[test]
    fn finish_disables_only_when_drained() {
        let mut s = snapshot();
        s.keys.push(record("k1", "a", KeyState::Reencrypting));
        let mut job = new_job(
            JobKind::Disable,
            vec![KeyId::from_trusted("k1")],
            KeyId::service(),
            "a",
        );
        job.total = 2;
        job.done = 2;
        s.job = Some(job.clone());
        s.data_key_counts.insert(KeyId::from_trusted("k1"), 1);
        assert!(matches!(finish(&s, &job.id), Finish::Replan(_)));
        s.data_key_counts.clear();
        match finish(&s, &job.id) {
            Finish::Commit(c) => assert_eq!(c.upsert_keys[0].state, KeyState::Disabled),
            other => panic!("{other:?}"),
        }
        job.done = 1;
        s.job = Some(job.clone());
        assert!(matches!(finish(&s, &job.id), Finish::NotReady));

        // A total that fell short (re-planned from a snapshot) is raised by the completion.
        job.done = 3;
        s.job = Some(job.clone());
        match finish(&s, &job.id) {
            Finish::Commit(c) => match c.job {
                Some(JobChange::Update(u)) => {
                    assert_eq!((u.state, u.total), (JobState::Completed, Some(3)))
                }
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }

    fn transit(id: &str, name: &str) -> KeyRecord {
        let mut k = record(id, name, KeyState::Active);
        k.spec = KeySpec::VaultTransit(crate::vault::VaultTransitKey {
            address: "https://vault.example.com".into(),
            mount: "transit".into(),
            key_name: name.into(),
            namespace: None,
            auth: crate::vault::VaultAuth {
                method: crate::vault::VaultAuthMethod::AppRole,
                fingerprint: "00".into(),
                sealed: crate::credentials::SealedSecret {
                    wrapped_key: vec![],
                    ciphertext: vec![],
                },
            },
        });
        k
    }

    #[test]
    fn only_an_active_transit_key_is_rewrapped_and_it_stays_active() {
        let mut s = snapshot();
        s.keys.push(transit("k1", "orders"));
        s.keys.push(record("k2", "disk", KeyState::Active));
        s.default_key_id = KeyId::from_trusted("k1");
        let k1 = KeyId::from_trusted("k1");
        let c = rotate(&s, "alice", &k1).expect("rotate");
        let job = job_of(&c);
        assert_eq!(job.kind, JobKind::Rotate);
        assert_eq!(
            (job.source_key_ids.clone(), job.target_key_id.clone()),
            (vec![k1.clone()], k1.clone())
        );
        assert!(c.upsert_keys.is_empty(), "the key stays active");
        assert_eq!(c.default_key_id, k1, "and stays the default");
        assert!(matches!(
            rotate(&s, "alice", &KeyId::from_trusted("k2")),
            Err(CoreError::InvalidRequest(_))
        ));
        assert!(matches!(
            rotate(&s, "alice", &KeyId::service()),
            Err(CoreError::ServiceKeyLocked)
        ));
        s.job = Some(job);
        assert!(matches!(
            rotate(&s, "alice", &k1),
            Err(CoreError::ReencryptionInProgress(_))
        ));
        s.job = None;
        s.keys[0].state = KeyState::Disabled;
        assert!(matches!(
            rotate(&s, "alice", &k1),
            Err(CoreError::KeyNotActive(_))
        ));
    }

    /// What is left of a rotate job is what it has not moved: its key's count (which data
    /// keys made meanwhile raise) decides nothing, and finishing disables no key.
    #[test]
    fn a_rotate_job_finishes_on_its_own_counts() {
        let mut s = snapshot();
        s.keys.push(transit("k1", "orders"));
        let k1 = KeyId::from_trusted("k1");
        s.default_key_id = k1.clone();
        let mut job = new_job(JobKind::Rotate, vec![k1.clone()], k1.clone(), "a");
        job.total = 3;
        job.done = 3;
        s.job = Some(job.clone());
        s.data_key_counts.insert(k1.clone(), 5);
        match finish(&s, &job.id) {
            Finish::Commit(c) => {
                assert!(c.upsert_keys.is_empty(), "no key changes state");
                assert!(
                    matches!(c.job, Some(JobChange::Update(ref u)) if u.state == JobState::Completed)
                );
            }
            other => panic!("{other:?}"),
        }
        job.done = 2;
        job.failed = 1;
        s.job = Some(job.clone());
        assert!(matches!(finish(&s, &job.id), Finish::Commit(ref c)
            if matches!(c.job, Some(JobChange::Update(ref u)) if u.state == JobState::Failed)));
        job.state = JobState::Failed;
        s.job = Some(job.clone());
        match retry(&s, "a").expect("retry") {
            Retry::Restart { commit, .. } => match commit.job {
                Some(JobChange::Update(u)) => {
                    assert_eq!(u.total, Some(3), "the failed one is left")
                }
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
        let c = cancel(&s, "a").expect("cancel");
        assert!(
            c.upsert_keys.is_empty(),
            "a cancelled rotation leaves the key as it was"
        );
    }
}
