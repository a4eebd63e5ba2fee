//! Typed errors. `cmk-http` maps [`CoreError`] to status codes and problem codes in one place.

use crate::model::{HealthStatus, InvalidValue, KeyId};

/// What a use case can answer besides success. Each variant is one problem code of API.md.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("{0}")]
    InvalidRequest(String),
    /// `invalid_request` about one field of the request body, named so a form can point at it.
    #[error("{message}")]
    InvalidField {
        field: &'static str,
        message: String,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("a key named {0:?} already exists in this organization")]
    NameTaken(String),
    #[error(
        "this organization already has {0} customer managed keys that are not disabled, the most it may have; disable one first"
    )]
    KeyLimitReached(usize),
    #[error("key {0} is the default key; set another key as default first")]
    KeyIsDefault(KeyId),
    #[error("key {0} is being re-encrypted; wait until the re-encryption ends")]
    KeyBusy(KeyId),
    #[error("{0}")]
    KeyNotActive(String),
    #[error("the service-managed key cannot be disabled")]
    ServiceKeyLocked,
    #[error(
        "a re-encryption is already in progress (job {0}); wait for it, retry it or cancel it"
    )]
    ReencryptionInProgress(String),
    #[error("{0}")]
    NoReencryption(String),
    #[error("the key check failed ({}): {message}", reason.as_str())]
    KeyCheckFailed {
        reason: HealthStatus,
        message: String,
    },
    #[error("key {key_id} cannot be used now ({}): {message}", reason.as_str())]
    KeyUnavailable {
        key_id: KeyId,
        reason: HealthStatus,
        message: String,
    },
    #[error("the ciphertext could not be decrypted: {0}")]
    DecryptFailed(String),
    #[error("the state changed under a concurrent request; try again")]
    Contention,
    #[error("storage failure: {0}")]
    Store(#[from] StoreError),
    #[error("queue failure: {0}")]
    Queue(#[from] QueueError),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Failures of the [`crate::ports::Store`] port.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A conditional write lost: the state is not what the caller read. Re-read and retry.
    #[error("conditional write failed: {0}")]
    Conflict(String),
    /// The backend is unreachable or failed; the operation may be retried.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Stored data could not be read back.
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

/// Failures of the [`crate::ports::RewrapQueue`] port.
#[derive(Debug, thiserror::Error)]
#[error("queue unavailable: {0}")]
pub struct QueueError(pub String);

/// Kinds of key-provider failure; callers match on the kind, never on strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyErrorKind {
    AccessDenied,
    KeyDisabled,
    KeyNotFound,
    InvalidKeyState,
    Throttled,
    Transient,
    /// The wrapped bytes are not a valid ciphertext for this key and context.
    InvalidCiphertext,
    /// This provider cannot serve keys of this type.
    Unsupported,
}

impl KeyErrorKind {
    /// Retrying the same call later may succeed without anyone acting.
    pub fn is_retryable(self) -> bool {
        matches!(self, KeyErrorKind::Throttled | KeyErrorKind::Transient)
    }

    /// Whether the failure belongs to one data key (its wrapped bytes are bad), not to the key
    /// that wraps it: every other data key may still succeed.
    pub fn is_data_key_own(self) -> bool {
        self == KeyErrorKind::InvalidCiphertext
    }

    /// The customer took the key away (revoked access, disabled, deleted or scheduled it for
    /// deletion): what it wrapped must stop being served from memory at once.
    pub fn is_revocation(self) -> bool {
        matches!(
            self,
            KeyErrorKind::AccessDenied
                | KeyErrorKind::KeyDisabled
                | KeyErrorKind::KeyNotFound
                | KeyErrorKind::InvalidKeyState
        )
    }

    pub fn health(self) -> HealthStatus {
        match self {
            KeyErrorKind::AccessDenied => HealthStatus::AccessDenied,
            KeyErrorKind::KeyDisabled => HealthStatus::KeyDisabled,
            KeyErrorKind::KeyNotFound => HealthStatus::KeyNotFound,
            KeyErrorKind::InvalidKeyState => HealthStatus::InvalidKeyState,
            KeyErrorKind::Throttled => HealthStatus::Throttled,
            KeyErrorKind::Transient => HealthStatus::Unavailable,
            KeyErrorKind::InvalidCiphertext | KeyErrorKind::Unsupported => HealthStatus::Unknown,
        }
    }
}

/// A failure of the [`crate::ports::KeyProvider`] port. The message is safe to show an admin.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct KeyError {
    pub kind: KeyErrorKind,
    pub message: String,
}

impl KeyError {
    pub fn new(kind: KeyErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// An event that was not published (see [`crate::ports::EventPublisher`]).
#[derive(Debug, thiserror::Error)]
#[error("events not published: {0}")]
pub struct EventError(pub String);

/// Failures of the [`crate::ports::Authenticator`] port.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token expired")]
    Expired,
}

impl From<InvalidValue> for CoreError {
    fn from(e: InvalidValue) -> Self {
        match e.field {
            Some(field) => CoreError::InvalidField {
                field,
                message: e.message,
            },
            None => CoreError::InvalidRequest(e.message),
        }
    }
}
