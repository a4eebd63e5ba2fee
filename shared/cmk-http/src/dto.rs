//! The wire shapes of API.md. Core types are converted here so that the core's internal fields
//! never reach a response by accident, and so that the OpenAPI schemas come from the same code.
//! Responses also deserialize: the `cmk` admin CLI reads the API through these same types.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use cmk_core::model::{
    AuditEvent, DataKeyRecord, HealthStatus, Job, JobError, JobKind, JobState, Key, KeySpec,
    KeyState, KeyType, TrustMode,
};
use cmk_core::service::{KeyListing, Setup};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

// ---- enums (mirrored so the schemas list their values; conversions are exhaustive) ----

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = KeyType)]
pub enum KeyTypeDto {
    #[serde(rename = "service-managed")]
    ServiceManaged,
    #[serde(rename = "aws-kms")]
    AwsKms,
    #[serde(rename = "local")]
    Local,
    #[serde(rename = "vault-transit")]
    VaultTransit,
}

impl From<KeyType> for KeyTypeDto {
    fn from(t: KeyType) -> Self {
        match t {
            KeyType::ServiceManaged => Self::ServiceManaged,
            KeyType::AwsKms => Self::AwsKms,
            KeyType::Local => Self::Local,
            KeyType::VaultTransit => Self::VaultTransit,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = KeyState)]
pub enum KeyStateDto {
    Active,
    Reencrypting,
    Disabled,
}

impl From<KeyState> for KeyStateDto {
    fn from(s: KeyState) -> Self {
        match s {
            KeyState::Active => Self::Active,
            KeyState::Reencrypting => Self::Reencrypting,
            KeyState::Disabled => Self::Disabled,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = HealthStatus)]
pub enum HealthStatusDto {
    Ok,
    AccessDenied,
    KeyDisabled,
    KeyNotFound,
    InvalidKeyState,
    Throttled,
    /// The provider did not answer (unreachable, timed out, sealed).
    Unavailable,
    Unknown,
}

impl From<HealthStatus> for HealthStatusDto {
    fn from(s: HealthStatus) -> Self {
        match s {
            HealthStatus::Ok => Self::Ok,
            HealthStatus::AccessDenied => Self::AccessDenied,
            HealthStatus::KeyDisabled => Self::KeyDisabled,
            HealthStatus::KeyNotFound => Self::KeyNotFound,
            HealthStatus::InvalidKeyState => Self::InvalidKeyState,
            HealthStatus::Throttled => Self::Throttled,
            HealthStatus::Unavailable => Self::Unavailable,
            HealthStatus::Unknown => Self::Unknown,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = JobKind)]
pub enum JobKindDto {
    /// The first customer managed key was added: data keys move off the service key.
    Adopt,
    Disable,
    DisableAll,
    /// `keys/{id}/rewrap`: a `vault-transit` key's data keys move to its latest version.
    Rotate,
}

impl From<JobKind> for JobKindDto {
    fn from(k: JobKind) -> Self {
        match k {
            JobKind::Adopt => Self::Adopt,
            JobKind::Disable => Self::Disable,
            JobKind::DisableAll => Self::DisableAll,
            JobKind::Rotate => Self::Rotate,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = JobState)]
pub enum JobStateDto {
    Running,
    Completed,
    /// Work remains that failed; retry or cancel.
    Failed,
    Cancelled,
}

impl From<JobState> for JobStateDto {
    fn from(s: JobState) -> Self {
        match s {
            JobState::Running => Self::Running,
            JobState::Completed => Self::Completed,
            JobState::Failed => Self::Failed,
            JobState::Cancelled => Self::Cancelled,
        }
    }
}

// ---- keys ----

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = KeyHealth)]
pub struct HealthDto {
    pub status: HealthStatusDto,
    /// When the key was last used or checked: by an admin, by a failed use, or by the
    /// continuous health checks (at most every `CMK_HEALTH_CHECK_INTERVAL`). `null`: never.
    #[schema(required = true)]
    pub checked_at: Option<DateTime<Utc>>,
    /// Why the key cannot be used, while it cannot.
    #[schema(required = true)]
    pub message: Option<String>,
    /// The key's most recent failure, kept after it works again; `null` if it never failed.
    #[schema(required = true)]
    pub last_failure: Option<HealthFailureDto>,
}

/// A failed use or check of a key.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = KeyHealthFailure)]
pub struct HealthFailureDto {
    pub status: HealthStatusDto,
    pub at: DateTime<Utc>,
    #[schema(required = true)]
    pub message: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = AwsKey)]
pub struct AwsKeyDto {
    pub role_arn: String,
    /// As given: a key ARN or an alias ARN.
    pub key_arn: String,
    /// The key ARN that actually encrypts (an alias resolves to it).
    #[schema(required = true)]
    pub resolved_key_arn: Option<String>,
    /// How the role trusts the service.
    pub trust: TrustModeDto,
}

/// Where a `vault-transit` key is and how the service logs in; the credential itself is
/// never returned.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = VaultKey)]
pub struct VaultKeyDto {
    pub address: String,
    pub mount: String,
    pub key_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub auth: VaultAuthDto,
}

/// The login method and a fingerprint of the credential (the first 8 bytes of its SHA-256).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = VaultAuth)]
pub struct VaultAuthDto {
    /// `approle` or `token`.
    pub method: String,
    pub fingerprint: String,
}

/// A key-encryption key of the org.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = Key)]
pub struct KeyDto {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub key_type: KeyTypeDto,
    /// Whether this key wraps every new data key.
    pub default: bool,
    pub state: KeyStateDto,
    /// Source or target of the org's unfinished re-encryption job.
    pub busy: bool,
    /// Number of data keys this key wraps.
    pub data_keys: u64,
    pub health: HealthDto,
    /// Set for `aws-kms` keys only.
    #[schema(required = true)]
    pub aws: Option<AwsKeyDto>,
    /// Set for `vault-transit` keys only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<VaultKeyDto>,
    /// Provider requests per second a re-encryption may spend on this key (`aws-kms` and
    /// `vault-transit` keys; `null` for the service-managed and `local` keys, and for transit
    /// keys nobody limited).
    #[schema(required = true)]
    pub rewrap_rate_limit: Option<u32>,
    /// When an admin added the key. Absent for the service-managed key, which every org has
    /// from its start and which nobody added.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
    pub created_by: String,
}

impl From<Key> for KeyDto {
    fn from(k: Key) -> Self {
        let r = k.record;
        let key_type = r.spec.key_type().into();
        let vault = match &r.spec {
            KeySpec::VaultTransit(v) => Some(VaultKeyDto {
                address: v.address.clone(),
                mount: v.mount.clone(),
                key_name: v.key_name.clone(),
                namespace: v.namespace.clone(),
                auth: VaultAuthDto {
                    method: v.auth.method.as_str().to_owned(),
                    fingerprint: v.auth.fingerprint.clone(),
                },
            }),
            _ => None,
        };
        let aws = match r.spec {
            KeySpec::AwsKms {
                role_arn,
                key_arn,
                resolved_key_arn,
                trust,
            } => Some(AwsKeyDto {
                role_arn,
                key_arn,
                resolved_key_arn,
                trust: trust.into(),
            }),
            KeySpec::ServiceManaged | KeySpec::Local | KeySpec::VaultTransit(_) => None,
        };
        Self {
            id: r.id.to_string(),
            name: r.name,
            key_type,
            default: k.default,
            state: r.state.into(),
            busy: k.busy,
            data_keys: k.data_keys,
            health: HealthDto {
                status: r.health.status.into(),
                checked_at: r.health.checked_at,
                message: r.health.message,
                last_failure: r.health.last_failure.map(|f| HealthFailureDto {
                    status: f.status.into(),
                    at: f.at,
                    message: f.message,
                }),
            },
            aws,
            vault,
            rewrap_rate_limit: r.rewrap_rate_limit,
            created_at: (!r.id.is_service()).then_some(r.created_at),
            created_by: r.created_by,
        }
    }
}

// ---- jobs ----

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = JobError)]
pub struct JobErrorDto {
    pub data_key_id: String,
    /// The key whose use failed.
    pub key_id: String,
    pub reason: HealthStatusDto,
    pub message: String,
}

impl From<JobError> for JobErrorDto {
    fn from(e: JobError) -> Self {
        Self {
            data_key_id: e.data_key_id.to_string(),
            key_id: e.key_id.to_string(),
            reason: e.reason.into(),
            message: e.message,
        }
    }
}

/// A re-encryption job.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = Job)]
pub struct JobDto {
    pub id: String,
    pub kind: JobKindDto,
    pub state: JobStateDto,
    pub source_key_ids: Vec<String>,
    pub target_key_id: String,
    pub total: u64,
    pub done: u64,
    pub failed: u64,
    /// The first errors of the current attempt (bounded).
    pub errors: Vec<JobErrorDto>,
    pub started_at: DateTime<Utc>,
    #[schema(required = true)]
    pub finished_at: Option<DateTime<Utc>>,
    pub started_by: String,
    /// Grows with every retry.
    pub generation: u32,
    pub updated_at: DateTime<Utc>,
    /// Whether KMS is throttling the re-encryption, which then runs slower than its keys'
    /// rate limits allow.
    pub throttled: bool,
    /// While throttled: the KMS requests per second (per worker) it adapted down to.
    #[schema(required = true)]
    pub throttled_rate: Option<u32>,
}

impl From<Job> for JobDto {
    fn from(j: Job) -> Self {
        // Only a running job can be slowed down by throttling.
        let running_throttle = j
            .throttled_rate
            .filter(|_| j.state == cmk_core::model::JobState::Running);
        Self {
            id: j.id.to_string(),
            kind: j.kind.into(),
            state: j.state.into(),
            source_key_ids: j.source_key_ids.iter().map(ToString::to_string).collect(),
            target_key_id: j.target_key_id.to_string(),
            total: j.total,
            done: j.done,
            failed: j.failed,
            errors: j.errors.into_iter().map(Into::into).collect(),
            started_at: j.started_at,
            finished_at: j.finished_at,
            started_by: j.started_by,
            generation: j.generation,
            updated_at: j.updated_at,
            throttled: running_throttle.is_some(),
            throttled_rate: running_throttle,
        }
    }
}

// ---- audit ----

/// One audit record.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = Event)]
pub struct EventDto {
    pub id: String,
    pub at: DateTime<Utc>,
    pub actor: String,
    /// For example `key.added`, `reencryption.completed`.
    pub action: String,
    #[schema(required = true)]
    pub key_id: Option<String>,
    #[schema(required = true)]
    pub job_id: Option<String>,
    /// `success` or `failure`.
    pub outcome: String,
    #[schema(required = true)]
    pub detail: Option<String>,
}

impl From<AuditEvent> for EventDto {
    fn from(e: AuditEvent) -> Self {
        Self {
            id: e.id,
            at: e.at,
            actor: e.actor,
            action: e.action,
            key_id: e.key_id.map(|k| k.to_string()),
            job_id: e.job_id.map(|j| j.to_string()),
            outcome: e.outcome,
            detail: e.detail,
        }
    }
}

// ---- responses ----

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeysResponse {
    pub keys: Vec<KeyDto>,
    pub default_key_id: String,
    /// The unfinished job, else the last one.
    #[schema(required = true)]
    pub reencryption: Option<JobDto>,
}

impl From<KeyListing> for KeysResponse {
    fn from(l: KeyListing) -> Self {
        Self {
            keys: l.keys.into_iter().map(Into::into).collect(),
            default_key_id: l.default_key_id.to_string(),
            reencryption: l.job.map(Into::into),
        }
    }
}

/// What an admin needs to set up a role and a key in their AWS account.
#[derive(Debug, Serialize, ToSchema)]
pub struct SetupResponse {
    /// The trust mode a new `aws-kms` key gets when `POST keys` names none.
    pub default_trust: TrustModeDto,
    /// Put this in the role's trust policy (`sts:ExternalId`); generated by the service.
    pub external_id: String,
    pub service_principal: String,
    /// The role's trust policy in `external_id` mode.
    #[schema(value_type = Object)]
    pub trust_policy: Value,
    #[schema(value_type = Object)]
    pub key_policy_statement: Value,
    /// The `oidc` mode; `null` where the service is not an OIDC issuer.
    #[schema(required = true)]
    pub oidc: Option<OidcSetupDto>,
    /// For `vault-transit` keys, where the service accepts them: the policy and commands for
    /// the key named by `vault_key_name` at `vault_mount`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vault: Option<VaultSetupDto>,
}

/// What a customer sets up in Vault or OpenBao for a `vault-transit` key.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = VaultSetup)]
pub struct VaultSetupDto {
    pub mount: String,
    pub key_name: String,
    /// Why the key must be created with `derived=true`.
    pub requirement: String,
    /// The policy to grant the service (HCL): encrypt, decrypt and rewrap on this key only.
    pub policy: String,
    /// Commands that create the key, the policy and an AppRole for the service.
    pub commands: String,
}

impl From<cmk_core::vault::VaultSetup> for VaultSetupDto {
    fn from(v: cmk_core::vault::VaultSetup) -> Self {
        Self {
            mount: v.mount,
            key_name: v.key_name,
            requirement: v.requirement.to_owned(),
            policy: v.policy,
            commands: v.commands,
        }
    }
}

/// What the customer's account needs to trust the service's OIDC issuer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = OidcSetup)]
pub struct OidcSetupDto {
    /// The URL of the IAM OIDC identity provider to create (the issuer).
    pub provider_url: String,
    /// The provider's audience (client id): `aws:<org>`.
    pub audience: String,
    /// The subject of the org's tokens: `cmk:org:<org>`.
    pub subject: String,
    /// The role's trust policy in `oidc` mode (fill in your account id).
    #[schema(value_type = Object)]
    pub trust_policy: Value,
}

impl From<Setup> for SetupResponse {
    fn from(s: Setup) -> Self {
        Self {
            default_trust: s.default_trust.into(),
            external_id: s.external_id,
            service_principal: s.service_principal,
            trust_policy: s.trust_policy,
            key_policy_statement: s.key_policy_statement,
            oidc: s.oidc.map(|o| OidcSetupDto {
                provider_url: o.provider_url,
                audience: o.audience,
                subject: o.subject,
                trust_policy: o.trust_policy,
            }),
            vault: None,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AddKeyResponse {
    pub key: KeyDto,
    /// The `adopt` job when this is the org's first active customer managed key.
    #[schema(required = true)]
    pub reencryption: Option<JobDto>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyResponse {
    pub key: KeyDto,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobResponse {
    pub reencryption: JobDto,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReencryptionStatusResponse {
    /// The unfinished job, else the last one, else null.
    #[schema(required = true)]
    pub reencryption: Option<JobDto>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditResponse {
    /// Newest first.
    pub events: Vec<EventDto>,
    /// Pass as `cursor` to read the next page; null on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = DataKey)]
pub struct DataKeyDto {
    pub id: String,
    /// The key that wraps it now.
    pub key_id: String,
    pub created_at: DateTime<Utc>,
}

impl From<DataKeyRecord> for DataKeyDto {
    fn from(d: DataKeyRecord) -> Self {
        Self {
            id: d.id.to_string(),
            key_id: d.key_id.to_string(),
            created_at: d.created_at,
        }
    }
}

/// What `keys/{id}/rewrap` did: the `rotate` job it started, or why none is needed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RewrapResponse {
    #[schema(required = true)]
    pub reencryption: Option<JobDto>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explanation: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DataKeyResponse {
    pub data_key: DataKeyDto,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EncryptResponse {
    /// Self-describing, versioned; names its data key.
    pub ciphertext: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DecryptResponse {
    /// Standard base64.
    pub plaintext: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthzResponse {
    /// Always `ok`.
    pub status: String,
}

// ---- requests ----

/// Key types an admin may add.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, ToSchema)]
pub enum NewKeyType {
    #[serde(rename = "aws-kms")]
    AwsKms,
    /// Local runs only.
    #[serde(rename = "local")]
    Local,
    /// A derived key of a Vault or OpenBao transit engine.
    #[serde(rename = "vault-transit")]
    VaultTransit,
}

/// How the service logs in to Vault: an AppRole or a token. Stored sealed under the
/// service-managed key and never returned (keys show the method and a fingerprint).
#[derive(Deserialize, ToSchema)]
#[serde(tag = "method", rename_all = "lowercase", deny_unknown_fields)]
#[schema(as = VaultCredential)]
pub enum VaultCredentialDto {
    AppRole { role_id: String, secret_id: String },
    Token { token: String },
}

impl std::fmt::Debug for VaultCredentialDto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VaultCredential(<redacted>)")
    }
}

impl From<VaultCredentialDto> for cmk_core::vault::VaultCredential {
    fn from(c: VaultCredentialDto) -> Self {
        match c {
            VaultCredentialDto::AppRole { role_id, secret_id } => {
                Self::AppRole { role_id, secret_id }
            }
            VaultCredentialDto::Token { token } => Self::Token { token },
        }
    }
}

/// `aws-kms` needs `role_arn` and `key_arn`; `vault-transit` needs `address`, `key_name` and
/// `auth`; `local` takes none of them.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "name": "prod",
    "type": "aws-kms",
    "role_arn": "arn:aws:iam::111122223333:role/cmk",
    "key_arn": "arn:aws:kms:us-east-1:111122223333:alias/cmk"
}))]
pub struct AddKeyRequest {
    pub name: String,
    #[serde(rename = "type")]
    pub key_type: NewKeyType,
    #[serde(default)]
    pub role_arn: Option<String>,
    #[serde(default)]
    pub key_arn: Option<String>,
    /// `aws-kms` and `vault-transit`: provider requests per second a re-encryption may spend
    /// on the key, 1 to 10,000 (default 250 for `aws-kms`, no limit for `vault-transit`).
    #[serde(default)]
    pub rewrap_rate_limit: Option<u32>,
    /// `aws-kms` only: how the role trusts the service. Default: `oidc` where the service is
    /// an OIDC issuer (`keys/setup` says so in `default_trust`), else `external_id`.
    #[serde(default)]
    pub trust: Option<TrustModeDto>,
    /// `vault-transit` only: the server's URL (https, or http to a loopback address).
    #[serde(default)]
    pub address: Option<String>,
    /// `vault-transit` only: the transit engine's mount path (default `transit`).
    #[serde(default)]
    pub mount: Option<String>,
    /// `vault-transit` only: the transit key, created with `derived=true`.
    #[serde(default)]
    pub key_name: Option<String>,
    /// `vault-transit` only: the Vault Enterprise or OpenBao namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// `vault-transit` only: how the service logs in.
    #[serde(default)]
    pub auth: Option<VaultCredentialDto>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = TrustMode)]
pub enum TrustModeDto {
    /// `sts:AssumeRoleWithWebIdentity` with a token of the service's OIDC issuer.
    Oidc,
    /// `sts:AssumeRole` with the org's external id.
    ExternalId,
}

impl From<TrustMode> for TrustModeDto {
    fn from(t: TrustMode) -> Self {
        match t {
            TrustMode::Oidc => Self::Oidc,
            TrustMode::ExternalId => Self::ExternalId,
        }
    }
}

impl From<TrustModeDto> for TrustMode {
    fn from(t: TrustModeDto) -> Self {
        match t {
            TrustModeDto::Oidc => Self::Oidc,
            TrustModeDto::ExternalId => Self::ExternalId,
        }
    }
}

/// The settings of a key an admin may change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKeyRequest {
    /// KMS requests per second a re-encryption may spend on this `aws-kms` key, 1 to 10,000.
    pub rewrap_rate_limit: u32,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DisableRequest {
    /// The active key that takes over this key's data keys.
    pub reencrypt_to: String,
}

/// Authenticated context: at most 32 entries, keys and values up to 256 characters.
pub type Context = BTreeMap<String, String>;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EncryptRequest {
    /// Standard base64.
    pub plaintext: String,
    /// Authenticated, not encrypted; must be given again, identical, to decrypt. At most 32
    /// entries; keys 1 to 256 characters, values up to 256.
    #[serde(default)]
    pub context: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecryptRequest {
    pub ciphertext: String,
    /// The context given to encrypt.
    #[serde(default)]
    pub context: Option<BTreeMap<String, String>>,
}

/// The `{}` body of routes that take no input (documentation only; see `extract::Empty`).
#[derive(Debug, Serialize, ToSchema)]
pub struct EmptyObject {}

/// `?trust=&create_key=` of the setup kit.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SetupKitQuery {
    /// `oidc` or `external_id`; default: the trust mode new keys get (`keys/setup`'s
    /// `default_trust`).
    pub trust: Option<String>,
    /// `true`: the template creates a new KMS key; `false` (default): it takes `KeyArn`.
    #[param(value_type = Option<bool>)]
    pub create_key: Option<String>,
}

/// `?vault_mount=&vault_key_name=` of `keys/setup`: the transit key its Vault policy names.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SetupQuery {
    /// The transit engine's mount path (default `transit`).
    pub vault_mount: Option<String>,
    /// The transit key's name (default `cmk`).
    pub vault_key_name: Option<String>,
}

/// `?limit=&cursor=` of the audit route.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// 1 to 500, default 50.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}
