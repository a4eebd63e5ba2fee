//! Events the service tells the outside world about: a customer key's health changed, a
//! re-encryption job started, completed, failed, was cancelled or retried. On AWS they go to
//! the default EventBridge bus (source [`SOURCE`]); locally to an optional webhook. Each event
//! is published once, after the change it describes was committed.
//!
//! Publishing is best effort by design: a failed put is logged and counted
//! ([`crate::metrics::EVENTS`]) by the adapter, and never fails the request or the job that
//! caused it. The audit trail, written in the same commit as the change, stays the record.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::model::{Health, HealthStatus, Job, KeyId, KeyRecord, OrgId};
use crate::ports::OrgSnapshot;
use crate::rules::SERVICE_KEY_NAME;

/// The `source` of every event.
pub const SOURCE: &str = "cmk";

/// The detail types, as EventBridge rules match them.
pub const KEY_HEALTH_CHANGED: &str = "Key Health Changed";
pub const REENCRYPTION_STARTED: &str = "Re-encryption Started";
pub const REENCRYPTION_COMPLETED: &str = "Re-encryption Completed";
pub const REENCRYPTION_FAILED: &str = "Re-encryption Failed";
pub const REENCRYPTION_CANCELLED: &str = "Re-encryption Cancelled";
pub const REENCRYPTION_RETRIED: &str = "Re-encryption Retried";

/// Every detail type, for documentation and tests.
pub const DETAIL_TYPES: [&str; 6] = [
    KEY_HEALTH_CHANGED,
    REENCRYPTION_STARTED,
    REENCRYPTION_COMPLETED,
    REENCRYPTION_FAILED,
    REENCRYPTION_CANCELLED,
    REENCRYPTION_RETRIED,
];

/// Most job errors an event carries (the job's own page has them all).
const ERRORS_IN_EVENT: usize = 5;

/// One event, as every sink sends it.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceEvent {
    /// Unique per event (a UUIDv7): a receiver that gets one twice can tell.
    pub id: String,
    pub time: DateTime<Utc>,
    pub detail_type: &'static str,
    /// Names and ids only: never key material, a wrapped key or a credential.
    pub detail: Value,
}

impl ServiceEvent {
    fn new(detail_type: &'static str, detail: Value) -> Self {
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            time: crate::model::now(),
            detail_type,
            detail,
        }
    }

    /// A customer key's health status changed from `previous` to `health`.
    pub fn key_health_changed(
        org: &OrgId,
        key: &KeyRecord,
        previous: HealthStatus,
        health: &Health,
    ) -> Self {
        Self::new(
            KEY_HEALTH_CHANGED,
            json!({
                "org": org.as_str(),
                "key_id": key.id.as_str(),
                "key_name": key.name,
                "key_type": key.spec.key_type().as_str(),
                "previous_status": previous.as_str(),
                "status": health.status.as_str(),
                "reason": health.message.as_deref().filter(|_| health.is_failure()),
                "checked_at": health.checked_at,
            }),
        )
    }

    /// A committed job transition (`started`, `completed`, `failed`, `cancelled`, `retried`);
    /// key names come from `snapshot` (the one the change was decided on).
    pub fn job_changed(transition: &str, snapshot: &OrgSnapshot, job: &Job) -> Option<Self> {
        let detail_type = match transition {
            "started" => REENCRYPTION_STARTED,
            "completed" => REENCRYPTION_COMPLETED,
            "failed" => REENCRYPTION_FAILED,
            "cancelled" => REENCRYPTION_CANCELLED,
            "retried" => REENCRYPTION_RETRIED,
            _ => return None,
        };
        let names: HashMap<&KeyId, &str> = snapshot
            .keys
            .iter()
            .map(|k| (&k.id, k.name.as_str()))
            .collect();
        let key = |id: &KeyId| {
            let name = if id.is_service() {
                Some(SERVICE_KEY_NAME)
            } else {
                names.get(id).copied()
            };
            json!({"id": id.as_str(), "name": name})
        };
        let errors: Vec<Value> = job
            .errors
            .iter()
            .take(ERRORS_IN_EVENT)
            .map(|e| {
                json!({
                    "data_key_id": e.data_key_id.as_str(),
                    "key_id": e.key_id.as_str(),
                    "reason": e.reason.as_str(),
                    "message": e.message,
                })
            })
            .collect();
        Some(Self::new(
            detail_type,
            json!({
                "org": snapshot.org.as_str(),
                "job_id": job.id.as_str(),
                "kind": job.kind.as_str(),
                "state": job.state.as_str(),
                "source_keys": job.source_key_ids.iter().map(key).collect::<Vec<_>>(),
                "target_key": key(&job.target_key_id),
                "total": job.total,
                "done": job.done,
                "failed": job.failed,
                "reason": job.errors.first().map(|e| e.reason.as_str()),
                "errors": errors,
                "started_by": job.started_by,
            }),
        ))
    }

    /// The event as one JSON document, in EventBridge's envelope (what the webhook posts, and
    /// what an EventBridge rule's target receives).
    pub fn envelope(&self) -> Value {
        json!({
            "version": "0",
            "id": self.id,
            "detail-type": self.detail_type,
            "source": SOURCE,
            "time": self.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "detail": self.detail,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DataKeyId, JobError, JobKind, JobState, KeySpec, KeyState};

    fn record(id: &str, name: &str) -> KeyRecord {
        KeyRecord {
            id: KeyId::from_trusted(id),
            name: name.into(),
            spec: KeySpec::Local,
            state: KeyState::Active,
            health: Health::unknown(),
            created_at: crate::model::now(),
            created_by: "alice".into(),
            rewrap_rate_limit: None,
        }
    }

    #[test]
    fn a_health_change_names_the_org_the_key_and_both_statuses() {
        let org = OrgId::from_trusted("acme");
        let health = Health::failed(HealthStatus::AccessDenied, crate::model::now(), "revoked");
        let e = ServiceEvent::key_health_changed(
            &org,
            &record("key_1", "prod"),
            HealthStatus::Ok,
            &health,
        );
        assert_eq!(e.detail_type, KEY_HEALTH_CHANGED);
        let d = &e.envelope()["detail"];
        assert_eq!(
            (
                d["org"].as_str(),
                d["key_id"].as_str(),
                d["key_name"].as_str()
            ),
            (Some("acme"), Some("key_1"), Some("prod"))
        );
        assert_eq!(d["previous_status"], "ok");
        assert_eq!(d["status"], "access_denied");
        assert_eq!(d["reason"], "revoked");
        assert_eq!(e.envelope()["source"], SOURCE);

        let ok = Health::ok(crate::model::now());
        let back = ServiceEvent::key_health_changed(
            &org,
            &record("key_1", "prod"),
            HealthStatus::AccessDenied,
            &ok,
        );
        assert_eq!(
            back.detail["reason"],
            Value::Null,
            "no reason once it works"
        );
    }

    #[test]
    fn a_job_event_names_its_keys_counts_and_first_reason() {
        let snapshot = OrgSnapshot {
            org: OrgId::from_trusted("acme"),
            version: 3,
            external_id: None,
            default_key_id: KeyId::service(),
            keys: vec![record("key_1", "prod")],
            data_key_counts: HashMap::new(),
            job: None,
        };
        let now = crate::model::now();
        let job = Job {
            id: crate::model::JobId::generate(),
            kind: JobKind::DisableAll,
            state: JobState::Failed,
            source_key_ids: vec![KeyId::from_trusted("key_1")],
            target_key_id: KeyId::service(),
            total: 10,
            done: 7,
            failed: 3,
            errors: vec![JobError {
                data_key_id: DataKeyId::generate(),
                key_id: KeyId::from_trusted("key_1"),
                reason: HealthStatus::AccessDenied,
                message: "revoked".into(),
            }],
            generation: 1,
            started_at: now,
            updated_at: now,
            finished_at: Some(now),
            started_by: "alice".into(),
            throttled_rate: None,
        };
        let e = ServiceEvent::job_changed("failed", &snapshot, &job).expect("an event");
        assert_eq!(e.detail_type, REENCRYPTION_FAILED);
        let d = &e.detail;
        assert_eq!(d["source_keys"][0]["name"], "prod");
        assert_eq!(d["target_key"]["name"], SERVICE_KEY_NAME);
        assert_eq!(
            (d["total"].as_u64(), d["done"].as_u64()),
            (Some(10), Some(7))
        );
        assert_eq!(d["failed"], 3);
        assert_eq!(d["reason"], "access_denied");
        assert_eq!(d["errors"][0]["message"], "revoked");
        assert!(ServiceEvent::job_changed("paused", &snapshot, &job).is_none());
    }
}
