//! Domain types shared by every layer: ids, keys, data keys, jobs, audit events.
//!
//! Over 600 lines because it holds every domain type with its validation.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A caller's value that breaks a rule of the model (an id's form, a name, an ARN, a limit).
/// Use cases answer it as [`crate::error::CoreError::InvalidRequest`] through `From`, so the
/// model depends on no error of theirs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidValue {
    pub message: String,
    /// The request field at fault, when the value came from one (`name`, `role_arn`, ...).
    pub field: Option<&'static str>,
}

impl InvalidValue {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            field: None,
        }
    }

    pub(crate) fn of(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            field: Some(field),
        }
    }
}

/// The current time at the precision every store keeps (microseconds), so a record reads back
/// equal to what was written.
pub fn now() -> DateTime<Utc> {
    use chrono::SubsecRound;
    Utc::now().trunc_subsecs(6)
}

/// Id of the service-managed key, which every org has and which can never be disabled.
pub const SERVICE_KEY_ID: &str = "service";

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Wraps a string that is already known to be valid (read back from storage).
            pub fn from_trusted(s: impl Into<String>) -> Self {
                Self(s.into())
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_id!(
    /// An organization (tenant). Lowercase letters, digits, `-` and `_`, 1 to 64 characters.
    OrgId
);
string_id!(
    /// A key-encryption key of an org: `service` or a generated id.
    KeyId
);
string_id!(
    /// A data key. Generated as a UUIDv7, so ids sort by creation time.
    DataKeyId
);
string_id!(
    /// A re-encryption job.
    JobId
);

fn is_id_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'
}

/// Checks an id that came from a caller (path or body): short, ASCII, no separators.
fn parse_id(kind: &str, s: &str, max: usize) -> Result<String, InvalidValue> {
    if s.is_empty() || s.len() > max || !s.chars().all(is_id_char) {
        return Err(InvalidValue::new(format!(
            "{kind} must be 1 to {max} characters of lowercase letters, digits, '-' or '_'"
        )));
    }
    Ok(s.to_owned())
}

impl OrgId {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        parse_id("org", s, 64).map(Self)
    }
}

impl KeyId {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        parse_id("key id", s, 64).map(Self)
    }
    pub fn service() -> Self {
        Self(SERVICE_KEY_ID.to_owned())
    }
    pub fn is_service(&self) -> bool {
        self.0 == SERVICE_KEY_ID
    }
    pub fn generate() -> Self {
        Self(format!("key_{}", uuid::Uuid::new_v4().simple()))
    }
}

impl DataKeyId {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        parse_id("data key id", s, 64).map(Self)
    }
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }
}

impl JobId {
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }
}

/// Who may do what inside one org.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Member,
    Service,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Service => "service",
        }
    }
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub org: OrgId,
    pub role: Role,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyType {
    #[serde(rename = "service-managed")]
    ServiceManaged,
    #[serde(rename = "aws-kms")]
    AwsKms,
    #[serde(rename = "local")]
    Local,
    #[serde(rename = "vault-transit")]
    VaultTransit,
}

impl KeyType {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::ServiceManaged => "service-managed",
            KeyType::AwsKms => "aws-kms",
            KeyType::Local => "local",
            KeyType::VaultTransit => "vault-transit",
        }
    }
}

/// How a customer's role trusts the service ([`crate::oidc`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrustMode {
    /// `sts:AssumeRoleWithWebIdentity` with a token of the service's OIDC issuer whose audience
    /// and subject name the org: no shared secret.
    Oidc,
    /// `sts:AssumeRole` with the org's external id.
    #[default]
    ExternalId,
}

impl TrustMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TrustMode::Oidc => "oidc",
            TrustMode::ExternalId => "external_id",
        }
    }
}

/// Where a key-encryption key lives and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum KeySpec {
    /// The operator's own key.
    ServiceManaged,
    /// A key in the customer's AWS account, reached by assuming `role_arn`.
    AwsKms {
        role_arn: String,
        key_arn: String,
        /// The key ARN that actually encrypted (an alias resolves to it).
        resolved_key_arn: Option<String>,
        /// How the role trusts the service. Keys stored before trust modes existed use
        /// external ids.
        #[serde(default)]
        trust: TrustMode,
    },
    /// A key held by the local key provider in the data directory (local runs only).
    Local,
    /// A key of a customer's Vault or OpenBao transit engine ([`crate::vault`]).
    VaultTransit(crate::vault::VaultTransitKey),
}

impl KeySpec {
    pub fn key_type(&self) -> KeyType {
        match self {
            KeySpec::ServiceManaged => KeyType::ServiceManaged,
            KeySpec::AwsKms { .. } => KeyType::AwsKms,
            KeySpec::Local => KeyType::Local,
            KeySpec::VaultTransit(_) => KeyType::VaultTransit,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    Active,
    Reencrypting,
    Disabled,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::Reencrypting => "reencrypting",
            KeyState::Disabled => "disabled",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(KeyState::Active),
            "reencrypting" => Some(KeyState::Reencrypting),
            "disabled" => Some(KeyState::Disabled),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Ok,
    AccessDenied,
    KeyDisabled,
    KeyNotFound,
    InvalidKeyState,
    Throttled,
    /// The key's provider did not answer (unreachable, timed out, a sealed Vault): nothing is
    /// known to be wrong with the key itself.
    Unavailable,
    Unknown,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Ok => "ok",
            HealthStatus::AccessDenied => "access_denied",
            HealthStatus::KeyDisabled => "key_disabled",
            HealthStatus::KeyNotFound => "key_not_found",
            HealthStatus::InvalidKeyState => "invalid_key_state",
            HealthStatus::Throttled => "throttled",
            HealthStatus::Unavailable => "unavailable",
            HealthStatus::Unknown => "unknown",
        }
    }
}

/// What the last use or check of a key found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: HealthStatus,
    /// When the key was last used or checked; `None`: never.
    pub checked_at: Option<DateTime<Utc>>,
    /// Why the key cannot be used, while it cannot.
    pub message: Option<String>,
    /// The most recent failure, kept after the key works again, so an admin sees what went
    /// wrong and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<HealthFailure>,
}

/// A failed use or check of a key, as [`Health::last_failure`] keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthFailure {
    pub status: HealthStatus,
    pub at: DateTime<Utc>,
    pub message: Option<String>,
}

impl Health {
    pub fn unknown() -> Self {
        Self {
            status: HealthStatus::Unknown,
            checked_at: None,
            message: None,
            last_failure: None,
        }
    }
    pub fn ok(at: DateTime<Utc>) -> Self {
        Self {
            status: HealthStatus::Ok,
            checked_at: Some(at),
            message: None,
            last_failure: None,
        }
    }
    /// An observed failure: `status` at `at`, with why.
    pub fn failed(status: HealthStatus, at: DateTime<Utc>, message: impl Into<String>) -> Self {
        Self {
            status,
            checked_at: Some(at),
            message: Some(message.into()),
            last_failure: None,
        }
    }

    /// The key was used or checked and it did not work.
    pub fn is_failure(&self) -> bool {
        self.status != HealthStatus::Ok && self.checked_at.is_some()
    }

    /// This observation as it is recorded after `previous`: a failure becomes the last failure;
    /// a success keeps the previous one.
    pub fn following(mut self, previous: &Health) -> Health {
        self.last_failure = match self.checked_at {
            Some(at) if self.is_failure() => Some(HealthFailure {
                status: self.status,
                at,
                message: self.message.clone(),
            }),
            _ => previous.last_failure.clone().or_else(|| {
                previous
                    .checked_at
                    .filter(|_| previous.is_failure())
                    .map(|at| HealthFailure {
                        status: previous.status,
                        at,
                        message: previous.message.clone(),
                    })
            }),
        };
        self
    }
}

/// A customer managed key as stored. The service-managed key has no record; see [`Key`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: KeyId,
    pub name: String,
    pub spec: KeySpec,
    pub state: KeyState,
    pub health: Health,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    /// KMS requests per second a re-encryption may spend on this key, summed over every
    /// worker ([`REWRAP_RATE_LIMITS`]); `None`: no limit (the service-managed and `local` keys).
    /// The data plane is never limited by it.
    #[serde(default)]
    pub rewrap_rate_limit: Option<u32>,
}

/// The re-encryption rate limit of a new `aws-kms` key, in KMS requests per second.
pub const DEFAULT_REWRAP_RATE_LIMIT: u32 = 250;
/// The rate limits an admin may set.
pub const REWRAP_RATE_LIMITS: std::ops::RangeInclusive<u32> = 1..=10_000;

/// Checks a rate limit an admin asked for.
pub fn validate_rewrap_rate_limit(limit: u32) -> Result<u32, InvalidValue> {
    if REWRAP_RATE_LIMITS.contains(&limit) {
        Ok(limit)
    } else {
        Err(InvalidValue::of(
            "rewrap_rate_limit",
            format!(
                "rewrap_rate_limit must be from {} to {} provider requests per second",
                REWRAP_RATE_LIMITS.start(),
                REWRAP_RATE_LIMITS.end()
            ),
        ))
    }
}

/// A key as the admin sees it: the record plus what derives from the org's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key {
    pub record: KeyRecord,
    pub default: bool,
    pub busy: bool,
    pub data_keys: u64,
}

/// A wrapped data key as stored. `version` grows with every rewrap; moves are conditional on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataKeyRecord {
    pub id: DataKeyId,
    pub key_id: KeyId,
    pub wrapped: Vec<u8>,
    pub version: u64,
    pub created_at: DateTime<Utc>,
    /// Where the store that read this record keeps it (SQLite's rowid), so that a move finds
    /// it without a search by id; `None` from other stores and in new records. Only a hint: a
    /// move is still conditional on the org, id, key and version.
    pub row_hint: Option<i64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Adopt,
    Disable,
    DisableAll,
    /// Re-wraps every data key of one key with its latest version (after the customer rotated
    /// a `vault-transit` key): source and target are the same key, which stays active.
    Rotate,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Adopt => "adopt",
            JobKind::Disable => "disable",
            JobKind::DisableAll => "disable_all",
            JobKind::Rotate => "rotate",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "adopt" => Some(JobKind::Adopt),
            "disable" => Some(JobKind::Disable),
            "disable_all" => Some(JobKind::DisableAll),
            "rotate" => Some(JobKind::Rotate),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "running" => Some(JobState::Running),
            "completed" => Some(JobState::Completed),
            "failed" => Some(JobState::Failed),
            "cancelled" => Some(JobState::Cancelled),
            _ => None,
        }
    }
    /// `running` and `failed` jobs are unfinished: they keep their keys busy.
    pub fn is_unfinished(self) -> bool {
        matches!(self, JobState::Running | JobState::Failed)
    }
}

/// Why one data key could not be moved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    pub data_key_id: DataKeyId,
    /// The key whose use failed.
    pub key_id: KeyId,
    pub reason: HealthStatus,
    pub message: String,
}

/// A re-encryption job. `done` and `failed` are counted exactly once per data key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub id: JobId,
    pub kind: JobKind,
    pub state: JobState,
    pub source_key_ids: Vec<KeyId>,
    pub target_key_id: KeyId,
    pub total: u64,
    pub done: u64,
    pub failed: u64,
    /// The first errors of the current attempt (bounded).
    pub errors: Vec<JobError>,
    /// Grows with every retry; messages of an earlier attempt are ignored.
    pub generation: u32,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub started_by: String,
    /// While KMS throttles the re-encryption: the rate (requests per second, per worker) it
    /// adapted down to. `None` when it runs at its keys' limits.
    pub throttled_rate: Option<u32>,
}

/// One audit record: every admin action and every job transition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub id: String,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub key_id: Option<KeyId>,
    pub job_id: Option<JobId>,
    pub outcome: String,
    pub detail: Option<String>,
}

/// What an audit event records: one of a fixed set, stored and shown as its dotted name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditAction {
    KeyAdded,
    KeyCheck,
    KeyDefaultSet,
    KeyHealthChanged,
    KeyDisableRequested,
    KeyDisabled,
    KeyRewrapRequested,
    KeyRateLimitSet,
    KeysDisableAllRequested,
    ReencryptionStarted,
    ReencryptionCompleted,
    ReencryptionFailed,
    ReencryptionRetried,
    ReencryptionCancelled,
}

impl AuditAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::KeyAdded => "key.added",
            AuditAction::KeyCheck => "key.check",
            AuditAction::KeyDefaultSet => "key.default_set",
            AuditAction::KeyHealthChanged => "key.health_changed",
            AuditAction::KeyDisableRequested => "key.disable_requested",
            AuditAction::KeyDisabled => "key.disabled",
            AuditAction::KeyRewrapRequested => "key.rewrap_requested",
            AuditAction::KeyRateLimitSet => "key.rate_limit_set",
            AuditAction::KeysDisableAllRequested => "keys.disable_all_requested",
            AuditAction::ReencryptionStarted => "reencryption.started",
            AuditAction::ReencryptionCompleted => "reencryption.completed",
            AuditAction::ReencryptionFailed => "reencryption.failed",
            AuditAction::ReencryptionRetried => "reencryption.retried",
            AuditAction::ReencryptionCancelled => "reencryption.cancelled",
        }
    }
}

impl AuditEvent {
    pub fn new(actor: &str, action: AuditAction) -> Self {
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            at: now(),
            actor: actor.to_owned(),
            action: action.as_str().to_owned(),
            key_id: None,
            job_id: None,
            outcome: "success".to_owned(),
            detail: None,
        }
    }
    pub fn key(mut self, key: &KeyId) -> Self {
        self.key_id = Some(key.clone());
        self
    }
    pub fn job(mut self, job: &JobId) -> Self {
        self.job_id = Some(job.clone());
        self
    }
    pub fn outcome(mut self, outcome: &str) -> Self {
        self.outcome = outcome.to_owned();
        self
    }
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

/// Authenticated data bound to a wrapped data key or a ciphertext.
pub type EncryptionContext = BTreeMap<String, String>;

/// The context every wrap and unwrap of a data key carries: it binds the org and the data key id.
pub fn data_key_context(org: &OrgId, id: &DataKeyId) -> EncryptionContext {
    let mut ctx = EncryptionContext::new();
    ctx.insert("org".to_owned(), org.to_string());
    ctx.insert("data_key_id".to_owned(), id.to_string());
    ctx
}

/// Validates a key name: trimmed, 1 to 64 printable characters.
pub fn validate_key_name(name: &str) -> Result<String, InvalidValue> {
    let trimmed = name.trim();
    if trimmed.is_empty() || trimmed.chars().count() > 64 {
        return Err(InvalidValue::of("name", "name must be 1 to 64 characters"));
    }
    if trimmed
        .chars()
        .any(|c| !(c.is_alphanumeric() || " -_.:/()".contains(c)))
    {
        return Err(InvalidValue::of(
            "name",
            "name may hold letters, digits, spaces and - _ . : / ( ) only",
        ));
    }
    Ok(trimmed.to_owned())
}

fn valid_account(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

fn valid_partition(s: &str) -> bool {
    s == "aws" || s == "aws-cn" || s == "aws-us-gov"
}

/// Validates an IAM role ARN: `arn:<partition>:iam::<12 digits>:role/<path/name>`.
pub fn validate_role_arn(arn: &str) -> Result<(), InvalidValue> {
    let bad = || {
        InvalidValue::of(
            "role_arn",
            format!("role_arn {arn:?} is not an IAM role ARN (arn:aws:iam::<account>:role/<name>)"),
        )
    };
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    if parts.len() != 6 || parts[0] != "arn" || !valid_partition(parts[1]) || parts[2] != "iam" {
        return Err(bad());
    }
    if !parts[3].is_empty() || !valid_account(parts[4]) {
        return Err(bad());
    }
    let Some(name) = parts[5].strip_prefix("role/") else {
        return Err(bad());
    };
    let ok = !name.is_empty()
        && name.len() <= 512
        && !name.ends_with('/')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-/".contains(c));
    if ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// Validates a KMS key ARN or alias ARN: `arn:<partition>:kms:<region>:<account>:key/<id>` or
/// `…:alias/<name>`.
pub fn validate_kms_key_arn(arn: &str) -> Result<(), InvalidValue> {
    let bad = || {
        InvalidValue::of(
            "key_arn",
            format!(
            "key_arn {arn:?} is not a KMS key or alias ARN (arn:aws:kms:<region>:<account>:key/<id> or …:alias/<name>)"
        ),
        )
    };
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    if parts.len() != 6 || parts[0] != "arn" || !valid_partition(parts[1]) || parts[2] != "kms" {
        return Err(bad());
    }
    let region_ok = !parts[3].is_empty()
        && parts[3]
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !region_ok || !valid_account(parts[4]) {
        return Err(bad());
    }
    let resource = parts[5];
    let ok = if let Some(id) = resource.strip_prefix("key/") {
        !id.is_empty()
            && id.len() <= 64
            && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    } else if let Some(alias) = resource.strip_prefix("alias/") {
        !alias.is_empty()
            && alias.len() <= 250
            && !alias.starts_with("aws/")
            && alias
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/_-".contains(c))
    } else {
        false
    };
    if ok {
        Ok(())
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_health_keeps_the_last_failure_after_the_key_works_again() {
        let t = |s: i64| DateTime::<Utc>::from_timestamp(s, 0).expect("time");
        let denied = Health::failed(HealthStatus::AccessDenied, t(10), "revoked")
            .following(&Health::ok(t(0)));
        let last = denied
            .last_failure
            .clone()
            .expect("a failure is its own last failure");
        assert_eq!((last.status, last.at), (HealthStatus::AccessDenied, t(10)));
        assert_eq!(last.message.as_deref(), Some("revoked"));

        let ok = Health::ok(t(20)).following(&denied);
        assert_eq!(ok.status, HealthStatus::Ok);
        assert_eq!(ok.message, None);
        assert_eq!(ok.last_failure, denied.last_failure, "kept after recovery");
        assert_eq!(
            Health::ok(t(30)).following(&ok).last_failure,
            denied.last_failure,
            "and after more successes"
        );

        let throttled = Health::failed(HealthStatus::Throttled, t(40), "slow down").following(&ok);
        assert_eq!(
            throttled.last_failure.map(|f| f.status),
            Some(HealthStatus::Throttled),
            "a newer failure replaces it"
        );

        let recorded_before_last_failures_existed = Health {
            last_failure: None,
            ..Health::failed(HealthStatus::KeyDisabled, t(50), "disabled")
        };
        assert_eq!(
            Health::ok(t(60))
                .following(&recorded_before_last_failures_existed)
                .last_failure
                .map(|f| (f.status, f.at)),
            Some((HealthStatus::KeyDisabled, t(50))),
            "a failure recorded without one still counts"
        );
        assert_eq!(
            Health::ok(t(0)).following(&Health::unknown()).last_failure,
            None
        );
        assert!(
            !Health::unknown().is_failure(),
            "never checked is not a failure"
        );
    }

    #[test]
    fn refusals_name_the_field_at_fault() {
        let field = |r: Result<(), InvalidValue>| r.expect_err("refused").field;
        assert_eq!(field(validate_role_arn("x")), Some("role_arn"));
        assert_eq!(field(validate_kms_key_arn("x")), Some("key_arn"));
        assert_eq!(field(validate_key_name("").map(|_| ())), Some("name"));
        assert_eq!(
            field(validate_rewrap_rate_limit(0).map(|_| ())),
            Some("rewrap_rate_limit")
        );
        assert_eq!(
            field(OrgId::parse("A B").map(|_| ())),
            None,
            "a path segment"
        );
    }

    #[test]
    fn role_arns() {
        assert!(validate_role_arn("arn:aws:iam::111122223333:role/cmk").is_ok());
        assert!(validate_role_arn("arn:aws:iam::111122223333:role/path/to/cmk-role").is_ok());
        for bad in [
            "",
            "arn:aws:iam::1111:role/cmk",
            "arn:aws:iam::111122223333:user/cmk",
            "arn:aws:iam:us-east-1:111122223333:role/cmk",
            "arn:aws:sts::111122223333:role/cmk",
            "arn:aws:iam::111122223333:role/",
            "arn:aws:iam::111122223333:role/a b",
        ] {
            assert!(validate_role_arn(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn key_arns() {
        assert!(validate_kms_key_arn(
            "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
        )
        .is_ok());
        assert!(validate_kms_key_arn("arn:aws:kms:eu-west-1:111122223333:alias/cmk").is_ok());
        for bad in [
            "alias/cmk",
            "arn:aws:kms:us-east-1:111122223333:alias/aws/ebs",
            "arn:aws:kms::111122223333:key/abc",
            "arn:aws:kms:us-east-1:111122223333:secret/abc",
            "arn:aws:kms:us-east-1:1111:key/abc",
        ] {
            assert!(validate_kms_key_arn(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_and_ids() {
        assert_eq!(validate_key_name("  prod ").unwrap_or_default(), "prod");
        assert!(validate_key_name("").is_err());
        assert!(validate_key_name(&"x".repeat(65)).is_err());
        assert!(validate_key_name("bad<script>").is_err());
        assert!(OrgId::parse("acme").is_ok());
        assert!(OrgId::parse("Acme").is_err());
        assert!(OrgId::parse("a/b").is_err());
    }
}
