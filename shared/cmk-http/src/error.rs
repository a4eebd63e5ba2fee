//! The one place where failures become HTTP: [`ApiError`] renders `application/problem+json`
//! (RFC 9457) with the problem codes of API.md, and `From<CoreError>` is the whole mapping table.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use cmk_core::error::AuthError;
use cmk_core::model::HealthStatus;
use cmk_core::CoreError;
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// Prefix of a problem's `type` URI; the code follows it.
pub const PROBLEM_TYPE_BASE: &str = "https://cmk.dev/problems/";
/// Media type of every error body.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// The problem codes of API.md. A client matches on the code, never on the detail text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProblemCode {
    InvalidRequest,
    Unauthenticated,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    NameTaken,
    KeyIsDefault,
    KeyBusy,
    KeyNotActive,
    KeyIsServiceManaged,
    KeyLimitReached,
    ReencryptionInProgress,
    NoReencryption,
    Conflict,
    KeyCheckFailed,
    KeyUnavailable,
    DecryptFailed,
    Internal,
}

impl ProblemCode {
    /// Every code, for documentation and tests.
    pub const ALL: [ProblemCode; 18] = [
        ProblemCode::InvalidRequest,
        ProblemCode::Unauthenticated,
        ProblemCode::Forbidden,
        ProblemCode::NotFound,
        ProblemCode::MethodNotAllowed,
        ProblemCode::NameTaken,
        ProblemCode::KeyIsDefault,
        ProblemCode::KeyBusy,
        ProblemCode::KeyNotActive,
        ProblemCode::KeyIsServiceManaged,
        ProblemCode::KeyLimitReached,
        ProblemCode::ReencryptionInProgress,
        ProblemCode::NoReencryption,
        ProblemCode::Conflict,
        ProblemCode::KeyCheckFailed,
        ProblemCode::KeyUnavailable,
        ProblemCode::DecryptFailed,
        ProblemCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProblemCode::InvalidRequest => "invalid_request",
            ProblemCode::Unauthenticated => "unauthenticated",
            ProblemCode::Forbidden => "forbidden",
            ProblemCode::NotFound => "not_found",
            ProblemCode::MethodNotAllowed => "method_not_allowed",
            ProblemCode::NameTaken => "name_taken",
            ProblemCode::KeyIsDefault => "key_is_default",
            ProblemCode::KeyBusy => "key_busy",
            ProblemCode::KeyNotActive => "key_not_active",
            ProblemCode::KeyIsServiceManaged => "key_is_service_managed",
            ProblemCode::KeyLimitReached => "key_limit_reached",
            ProblemCode::ReencryptionInProgress => "reencryption_in_progress",
            ProblemCode::NoReencryption => "no_reencryption",
            ProblemCode::Conflict => "conflict",
            ProblemCode::KeyCheckFailed => "key_check_failed",
            ProblemCode::KeyUnavailable => "key_unavailable",
            ProblemCode::DecryptFailed => "decrypt_failed",
            ProblemCode::Internal => "internal",
        }
    }

    /// A short, fixed, human summary (the problem's `title`).
    pub fn title(self) -> &'static str {
        match self {
            ProblemCode::InvalidRequest => "Invalid request",
            ProblemCode::Unauthenticated => "Unauthenticated",
            ProblemCode::Forbidden => "Forbidden",
            ProblemCode::NotFound => "Not found",
            ProblemCode::MethodNotAllowed => "Method not allowed",
            ProblemCode::NameTaken => "Name already taken",
            ProblemCode::KeyIsDefault => "Key is the default key",
            ProblemCode::KeyBusy => "Key is busy",
            ProblemCode::KeyNotActive => "Key is not active",
            ProblemCode::KeyIsServiceManaged => "Key is service-managed",
            ProblemCode::KeyLimitReached => "Too many keys in use",
            ProblemCode::ReencryptionInProgress => "Re-encryption in progress",
            ProblemCode::NoReencryption => "No re-encryption",
            ProblemCode::Conflict => "Conflict",
            ProblemCode::KeyCheckFailed => "Key check failed",
            ProblemCode::KeyUnavailable => "Key unavailable",
            ProblemCode::DecryptFailed => "Decryption failed",
            ProblemCode::Internal => "Internal error",
        }
    }

    /// The usual status of the code. `key_unavailable` is 424, or 429 when throttled (see
    /// [`ApiError::from`]).
    pub fn status(self) -> StatusCode {
        match self {
            ProblemCode::InvalidRequest | ProblemCode::DecryptFailed => StatusCode::BAD_REQUEST,
            ProblemCode::Unauthenticated => StatusCode::UNAUTHORIZED,
            ProblemCode::Forbidden => StatusCode::FORBIDDEN,
            ProblemCode::NotFound => StatusCode::NOT_FOUND,
            ProblemCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProblemCode::NameTaken
            | ProblemCode::KeyIsDefault
            | ProblemCode::KeyBusy
            | ProblemCode::KeyNotActive
            | ProblemCode::KeyIsServiceManaged
            | ProblemCode::KeyLimitReached
            | ProblemCode::ReencryptionInProgress
            | ProblemCode::NoReencryption
            | ProblemCode::Conflict => StatusCode::CONFLICT,
            ProblemCode::KeyCheckFailed => StatusCode::UNPROCESSABLE_ENTITY,
            ProblemCode::KeyUnavailable => StatusCode::FAILED_DEPENDENCY,
            ProblemCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The body of every error response (documentation schema; [`ApiError`] renders it).
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "type": "https://cmk.dev/problems/key_busy",
    "title": "Key is busy",
    "status": 409,
    "detail": "key key_0123 is being re-encrypted; wait until the re-encryption ends",
    "code": "key_busy"
}))]
pub struct Problem {
    /// `https://cmk.dev/problems/<code>`.
    #[serde(rename = "type")]
    pub type_: String,
    pub title: String,
    pub status: u16,
    /// What went wrong for this request, safe to show a user.
    pub detail: String,
    /// The stable problem code clients match on.
    pub code: String,
    /// `key_unavailable`: the key that cannot be used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// `key_unavailable` and `key_check_failed`: why (a `health.status` value).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `conflict`: the same request may simply be sent again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
    /// `invalid_request` about one field of the request body: its name (`name`, `role_arn`,
    /// `key_arn`, `rewrap_rate_limit`), so a form can point at it without reading `detail`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// An error answer of the API. Built from a [`CoreError`], an [`AuthError`] or directly by the
/// extractors; rendered in [`IntoResponse`] only.
#[derive(Debug)]
pub struct ApiError {
    code: ProblemCode,
    status: StatusCode,
    detail: String,
    extra: Map<String, Value>,
    retry_after_secs: Option<u32>,
}

impl ApiError {
    pub fn new(code: ProblemCode, detail: impl Into<String>) -> Self {
        Self {
            code,
            status: code.status(),
            detail: detail.into(),
            extra: Map::new(),
            retry_after_secs: None,
        }
    }

    pub fn invalid_request(detail: impl Into<String>) -> Self {
        Self::new(ProblemCode::InvalidRequest, detail)
    }

    pub fn unauthenticated(detail: impl Into<String>) -> Self {
        Self::new(ProblemCode::Unauthenticated, detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(ProblemCode::Forbidden, detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(ProblemCode::NotFound, detail)
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            ProblemCode::MethodNotAllowed,
            "this method is not allowed on this path; see the Allow header",
        )
    }

    /// A 500 whose detail reveals nothing; the caller logs the real cause.
    pub fn internal() -> Self {
        Self::new(
            ProblemCode::Internal,
            "an internal error occurred; it has been logged",
        )
    }

    fn with(mut self, field: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(field.to_owned(), value.into());
        self
    }

    pub fn code(&self) -> ProblemCode {
        self.code
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// Extra members of the problem body (`key_id`, `reason`, `retryable`).
    pub fn extra(&self) -> &Map<String, Value> {
        &self.extra
    }

    /// Seconds in the `Retry-After` header, if any.
    pub fn retry_after(&self) -> Option<u32> {
        self.retry_after_secs
    }

    /// The problem body as JSON.
    pub fn body(&self) -> Value {
        let mut body = Map::new();
        body.insert(
            "type".into(),
            format!("{PROBLEM_TYPE_BASE}{}", self.code.as_str()).into(),
        );
        body.insert("title".into(), self.code.title().into());
        body.insert("status".into(), self.status.as_u16().into());
        body.insert("detail".into(), self.detail.clone().into());
        body.insert("code".into(), self.code.as_str().into());
        for (k, v) in &self.extra {
            body.insert(k.clone(), v.clone());
        }
        Value::Object(body)
    }
}

/// A caller's value the model refuses: `invalid_request`, like every other input error.
impl From<cmk_core::model::InvalidValue> for ApiError {
    fn from(e: cmk_core::model::InvalidValue) -> Self {
        CoreError::from(e).into()
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        let detail = e.to_string();
        match e {
            CoreError::InvalidRequest(_) => ApiError::new(ProblemCode::InvalidRequest, detail),
            CoreError::InvalidField { field, .. } => {
                ApiError::new(ProblemCode::InvalidRequest, detail).with("field", field)
            }
            CoreError::NotFound(_) => ApiError::new(ProblemCode::NotFound, detail),
            CoreError::Forbidden(_) => ApiError::new(ProblemCode::Forbidden, detail),
            CoreError::NameTaken(_) => ApiError::new(ProblemCode::NameTaken, detail),
            CoreError::KeyLimitReached(max) => {
                ApiError::new(ProblemCode::KeyLimitReached, detail).with("limit", max)
            }
            CoreError::KeyIsDefault(_) => ApiError::new(ProblemCode::KeyIsDefault, detail),
            CoreError::KeyBusy(_) => ApiError::new(ProblemCode::KeyBusy, detail),
            CoreError::KeyNotActive(_) => ApiError::new(ProblemCode::KeyNotActive, detail),
            CoreError::ServiceKeyLocked => ApiError::new(ProblemCode::KeyIsServiceManaged, detail),
            CoreError::ReencryptionInProgress(_) => {
                ApiError::new(ProblemCode::ReencryptionInProgress, detail)
            }
            CoreError::NoReencryption(_) => ApiError::new(ProblemCode::NoReencryption, detail),
            CoreError::Contention => {
                ApiError::new(ProblemCode::Conflict, detail).with("retryable", true)
            }
            CoreError::KeyCheckFailed { reason, .. } => {
                ApiError::new(ProblemCode::KeyCheckFailed, detail).with("reason", reason.as_str())
            }
            CoreError::KeyUnavailable { key_id, reason, .. } => {
                let mut err = ApiError::new(ProblemCode::KeyUnavailable, detail)
                    .with("key_id", key_id.as_str())
                    .with("reason", reason.as_str());
                // Throttling passes by itself: tell the caller to come back, not to fix a key
                // (429 keeps the code's 4xx class of API.md and is what clients retry on).
                if reason == HealthStatus::Throttled {
                    err.status = StatusCode::TOO_MANY_REQUESTS;
                    err.retry_after_secs = Some(1);
                }
                err
            }
            CoreError::DecryptFailed(_) => ApiError::new(ProblemCode::DecryptFailed, detail),
            CoreError::Store(_) | CoreError::Queue(_) | CoreError::Internal(_) => {
                // The real cause may name tables, queues or hosts: log it, never return it.
                tracing::error!(error = %e, "internal error while serving a request");
                ApiError::internal()
            }
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        ApiError::unauthenticated(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.body().to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
        );
        if self.code == ProblemCode::Unauthenticated {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cmk_core::error::{QueueError, StoreError};
    use cmk_core::model::KeyId;

    fn check(e: CoreError, status: u16, code: &str) -> ApiError {
        let api = ApiError::from(e);
        assert_eq!(api.status().as_u16(), status, "{api:?}");
        assert_eq!(api.code().as_str(), code, "{api:?}");
        api
    }

    #[test]
    fn core_errors_map_to_status_and_code() {
        let k = || KeyId::from_trusted("key_1");
        check(
            CoreError::InvalidRequest("x".into()),
            400,
            "invalid_request",
        );
        check(CoreError::NotFound("x".into()), 404, "not_found");
        check(CoreError::Forbidden("x".into()), 403, "forbidden");
        check(CoreError::NameTaken("prod".into()), 409, "name_taken");
        check(CoreError::KeyLimitReached(10), 409, "key_limit_reached");
        check(CoreError::KeyIsDefault(k()), 409, "key_is_default");
        check(CoreError::KeyBusy(k()), 409, "key_busy");
        check(CoreError::KeyNotActive("x".into()), 409, "key_not_active");
        check(CoreError::ServiceKeyLocked, 409, "key_is_service_managed");
        check(
            CoreError::ReencryptionInProgress("j".into()),
            409,
            "reencryption_in_progress",
        );
        check(
            CoreError::NoReencryption("x".into()),
            409,
            "no_reencryption",
        );
        let c = check(CoreError::Contention, 409, "conflict");
        assert_eq!(c.extra().get("retryable"), Some(&Value::Bool(true)));
        check(CoreError::DecryptFailed("x".into()), 400, "decrypt_failed");
    }

    #[test]
    fn key_failures_carry_reason_and_key() {
        let e = check(
            CoreError::KeyCheckFailed {
                reason: HealthStatus::AccessDenied,
                message: "no".into(),
            },
            422,
            "key_check_failed",
        );
        assert_eq!(e.body()["reason"], "access_denied");

        for reason in [
            HealthStatus::AccessDenied,
            HealthStatus::KeyDisabled,
            HealthStatus::KeyNotFound,
            HealthStatus::InvalidKeyState,
            HealthStatus::Unavailable,
            HealthStatus::Unknown,
        ] {
            let e = check(
                CoreError::KeyUnavailable {
                    key_id: KeyId::from_trusted("key_1"),
                    reason,
                    message: "m".into(),
                },
                424,
                "key_unavailable",
            );
            assert_eq!(e.body()["key_id"], "key_1");
            assert_eq!(e.body()["reason"], reason.as_str());
            assert_eq!(e.retry_after(), None);
        }

        let throttled = check(
            CoreError::KeyUnavailable {
                key_id: KeyId::from_trusted("key_1"),
                reason: HealthStatus::Throttled,
                message: "slow down".into(),
            },
            429,
            "key_unavailable",
        );
        assert_eq!(throttled.retry_after(), Some(1));
        let response = throttled.into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn internal_errors_do_not_leak() {
        for e in [
            CoreError::Store(StoreError::Unavailable("db at 10.0.0.7 is down".into())),
            CoreError::Queue(QueueError("queue https://sqs/secret".into())),
            CoreError::Internal("boom".into()),
        ] {
            let api = check(e, 500, "internal");
            let body = api.body().to_string();
            assert!(!body.contains("10.0.0.7") && !body.contains("sqs") && !body.contains("boom"));
        }
    }

    #[test]
    fn problem_body_and_headers() {
        let e = ApiError::from(AuthError::Expired);
        let body = e.body();
        assert_eq!(body["type"], "https://cmk.dev/problems/unauthenticated");
        assert_eq!(body["title"], "Unauthenticated");
        assert_eq!(body["status"], 401);
        assert_eq!(body["code"], "unauthenticated");
        assert_eq!(body["detail"], "token expired");
        let response = e.into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            PROBLEM_CONTENT_TYPE
        );
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }

    #[test]
    fn codes_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for code in ProblemCode::ALL {
            assert!(seen.insert(code.as_str()), "{code:?}");
        }
    }
}
