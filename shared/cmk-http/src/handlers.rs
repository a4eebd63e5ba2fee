//! Route handlers: extract, call one use case of [`cmk_core::Cmk`], convert. No rules here.
//!
//! Every handler takes its auth extractor first, so a caller without a valid token gets 401
//! before the path or the body is looked at.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use cmk_core::model::{EncryptionContext, KeyId, TrustMode};
use cmk_core::service::{NewKeySpec, Rewrap};
use cmk_core::CoreError;
use zeroize::Zeroizing;

use crate::auth::{Admin, ServiceCaller};
use crate::dto::{
    AddKeyRequest, AddKeyResponse, AuditQuery, AuditResponse, Context, DataKeyResponse,
    DecryptRequest, DecryptResponse, DisableRequest, EmptyObject, EncryptRequest, EncryptResponse,
    HealthzResponse, JobResponse, KeyResponse, KeysResponse, NewKeyType,
    ReencryptionStatusResponse, RewrapResponse, SetupKitQuery, SetupQuery, SetupResponse,
    UpdateKeyRequest,
};
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiQuery, DataKeyPath, Empty, JsonOrEmpty, KeyPath};
use crate::AppState;

type ApiResult<T> = Result<T, ApiError>;

/// Most entries of an encryption context.
pub const MAX_CONTEXT_ENTRIES: usize = 32;
/// Longest key or value of an encryption context, in characters.
pub const MAX_CONTEXT_LEN: usize = 256;
/// Default and largest page of the audit route.
pub const AUDIT_DEFAULT_LIMIT: usize = 50;
pub const AUDIT_MAX_LIMIT: usize = 500;

/// `{org}` (documentation of the path parameter).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub(crate) struct OrgParams {
    /// The organization; must be the token's.
    org: String,
}

/// `{org}` and `{key_id}`.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub(crate) struct KeyParams {
    /// The organization; must be the token's.
    org: String,
    /// A key id of the org (`service` is the service-managed key).
    key_id: String,
}

/// `{org}` and `{id}` of a data key.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub(crate) struct DataKeyParams {
    /// The organization; must be the token's.
    org: String,
    /// A data key id of the org.
    id: String,
}

// ---- other ----

/// Liveness: answers without touching any backend.
#[utoipa::path(get, path = "/healthz", tag = "other",
    responses((status = 200, description = "The process serves requests", body = HealthzResponse)))]
pub async fn healthz() -> Json<HealthzResponse> {
    Json(HealthzResponse {
        status: "ok".into(),
    })
}

// ---- admin reads ----

/// Every key of the org, the default key and the current re-encryption job.
#[utoipa::path(get, path = "/v1/orgs/{org}/keys", tag = "keys", params(OrgParams),
    responses((status = 200, description = "The org's keys", body = KeysResponse)))]
pub async fn list_keys(admin: Admin, State(s): State<AppState>) -> ApiResult<Json<KeysResponse>> {
    Ok(Json(s.cmk.list_keys(&admin.org).await?.into()))
}

/// What to put in the customer's role trust policy and key policy, and, where the service
/// accepts `vault-transit` keys, the Vault policy for the named transit key.
#[utoipa::path(get, path = "/v1/orgs/{org}/keys/setup", tag = "keys",
    params(OrgParams, SetupQuery),
    responses(
        (status = 200, description = "Setup values", body = SetupResponse),
        (status = 400, description = "A bad vault_mount or vault_key_name", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn setup(
    admin: Admin,
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<SetupQuery>,
) -> ApiResult<Json<SetupResponse>> {
    let vault = s
        .cmk
        .vault_setup(q.vault_mount.as_deref(), q.vault_key_name.as_deref())?;
    let mut setup: SetupResponse = s.cmk.setup(&admin.org).await?.into();
    setup.vault = vault.map(Into::into);
    Ok(Json(setup))
}

/// The setup kit: a CloudFormation template for the customer's account that creates the role
/// (and the IAM OIDC provider in `oidc` mode) and a new KMS key, or a policy for an existing
/// one (`create_key=false`, the default: the template then takes `KeyArn`). Its outputs
/// `RoleArn` and `KeyArn` are what `POST keys` takes.
#[utoipa::path(get, path = "/v1/orgs/{org}/keys/setup/cloudformation", tag = "keys",
    params(OrgParams, SetupKitQuery),
    responses(
        (status = 200, description = "The template (YAML)", content_type = "application/yaml", body = String),
        (status = 400, description = "Unknown trust mode, bad create_key, or `oidc` without an issuer", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn setup_cloudformation(
    admin: Admin,
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<SetupKitQuery>,
) -> ApiResult<Response> {
    let trust = match q.trust.as_deref() {
        None | Some("") => None,
        Some("oidc") => Some(TrustMode::Oidc),
        Some("external_id") => Some(TrustMode::ExternalId),
        Some(other) => {
            return Err(ApiError::invalid_request(format!(
                "trust {other:?} is not a trust mode: use oidc or external_id"
            )))
        }
    };
    let create_key = match q.create_key.as_deref() {
        None | Some("") | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::invalid_request(format!(
                "create_key {other:?} must be true or false"
            )))
        }
    };
    let template = s
        .cmk
        .setup_cloudformation(&admin.org, trust, create_key)
        .await?;
    let yaml = serde_yaml::to_string(&template)
        .map_err(|e| ApiError::from(CoreError::Internal(e.to_string())))?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/yaml".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"cmk-access-{}.yaml\"", admin.org),
            ),
        ],
        yaml,
    )
        .into_response())
}

/// The unfinished re-encryption job, else the last one.
#[utoipa::path(get, path = "/v1/orgs/{org}/reencryption", tag = "reencryption", params(OrgParams),
    responses((status = 200, description = "The job, or null", body = ReencryptionStatusResponse)))]
pub async fn reencryption(
    admin: Admin,
    State(s): State<AppState>,
) -> ApiResult<Json<ReencryptionStatusResponse>> {
    let job = s.cmk.reencryption(&admin.org).await?;
    Ok(Json(ReencryptionStatusResponse {
        reencryption: job.map(Into::into),
    }))
}

/// The org's audit trail, newest first.
#[utoipa::path(get, path = "/v1/orgs/{org}/audit", tag = "audit", params(OrgParams, AuditQuery),
    responses(
        (status = 200, description = "A page of events", body = AuditResponse),
        (status = 400, description = "Bad limit or cursor", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn audit(
    admin: Admin,
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Json<AuditResponse>> {
    let limit = match q.limit.as_deref().filter(|l| !l.is_empty()) {
        None => AUDIT_DEFAULT_LIMIT,
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=AUDIT_MAX_LIMIT).contains(l))
            .ok_or_else(|| {
                ApiError::invalid_request(format!(
                    "limit must be an integer from 1 to {AUDIT_MAX_LIMIT}"
                ))
            })?,
    };
    let cursor = q.cursor.as_deref().filter(|c| !c.is_empty());
    let (events, next_cursor) = s.cmk.audit(&admin.org, limit, cursor).await?;
    Ok(Json(AuditResponse {
        events: events.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}

// ---- admin writes ----

/// Adds a key after a real round trip through it; nothing is stored when the check fails.
/// The org's first active customer managed key becomes the default and starts an `adopt` job.
#[utoipa::path(post, path = "/v1/orgs/{org}/keys", tag = "keys", params(OrgParams),
    request_body = AddKeyRequest,
    responses(
        (status = 201, description = "The key was added", body = AddKeyResponse),
        (status = 400, description = "Bad name, type or ARN", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`name_taken`, `key_limit_reached` (with `limit`), `reencryption_in_progress`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`key_check_failed`: the round trip failed; `reason` says why", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn add_key(
    admin: Admin,
    State(s): State<AppState>,
    ApiJson(body): ApiJson<AddKeyRequest>,
) -> ApiResult<(StatusCode, Json<AddKeyResponse>)> {
    let vault_fields = body.address.is_some()
        || body.mount.is_some()
        || body.key_name.is_some()
        || body.namespace.is_some()
        || body.auth.is_some();
    if vault_fields && body.key_type != NewKeyType::VaultTransit {
        return Err(ApiError::invalid_request(
            "address, mount, key_name, namespace and auth are for vault-transit keys",
        ));
    }
    let spec = match (body.key_type, body.role_arn, body.key_arn) {
        (NewKeyType::AwsKms, Some(role_arn), Some(key_arn)) => NewKeySpec::AwsKms {
            role_arn,
            key_arn,
            rewrap_rate_limit: body.rewrap_rate_limit,
            trust: body.trust.map(Into::into),
        },
        (NewKeyType::AwsKms, _, _) => {
            return Err(ApiError::invalid_request(
                "type aws-kms needs role_arn and key_arn",
            ))
        }
        (NewKeyType::VaultTransit, None, None) if body.trust.is_some() => {
            return Err(ApiError::invalid_request(
                "type vault-transit has no trust mode (trust is for aws-kms keys)",
            ))
        }
        (NewKeyType::VaultTransit, None, None) => match (body.address, body.key_name, body.auth) {
            (Some(address), Some(key_name), Some(auth)) => NewKeySpec::VaultTransit {
                address,
                mount: body.mount,
                key_name,
                namespace: body.namespace,
                credential: auth.into(),
                rewrap_rate_limit: body.rewrap_rate_limit,
            },
            _ => {
                return Err(ApiError::invalid_request(
                    "type vault-transit needs address, key_name and auth",
                ))
            }
        },
        (NewKeyType::VaultTransit, _, _) => {
            return Err(ApiError::invalid_request(
                "type vault-transit takes no role_arn or key_arn",
            ))
        }
        (NewKeyType::Local, None, None) if body.trust.is_some() => {
            return Err(ApiError::invalid_request(
                "type local has no trust mode (trust is for aws-kms keys)",
            ))
        }
        (NewKeyType::Local, None, None) if body.rewrap_rate_limit.is_some() => {
            return Err(ApiError::invalid_request(
                "type local has no re-encryption rate limit (rewrap_rate_limit)",
            ))
        }
        (NewKeyType::Local, None, None) => NewKeySpec::Local,
        (NewKeyType::Local, _, _) => {
            return Err(ApiError::invalid_request(
                "type local takes no role_arn or key_arn",
            ))
        }
    };
    let (key, job) = s
        .cmk
        .add_key(&admin.principal.subject, &admin.org, &body.name, spec)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(AddKeyResponse {
            key: key.into(),
            reencryption: job.map(Into::into),
        }),
    ))
}

/// Changes a key's settings: the re-encryption rate limit of an `aws-kms` key.
#[utoipa::path(patch, path = "/v1/orgs/{org}/keys/{key_id}", tag = "keys", params(KeyParams),
    request_body = UpdateKeyRequest,
    responses(
        (status = 200, description = "The key with its new settings", body = KeyResponse),
        (status = 400, description = "A limit out of range, or a key type without one", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown key", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`key_is_service_managed`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn update_key(
    admin: Admin,
    KeyPath(key): KeyPath,
    State(s): State<AppState>,
    ApiJson(body): ApiJson<UpdateKeyRequest>,
) -> ApiResult<Json<KeyResponse>> {
    let key = s
        .cmk
        .set_rate_limit(
            &admin.principal.subject,
            &admin.org,
            &key,
            body.rewrap_rate_limit,
        )
        .await?;
    Ok(Json(KeyResponse { key: key.into() }))
}

/// Makes an active, non-busy key the default: it wraps every new data key.
#[utoipa::path(post, path = "/v1/orgs/{org}/keys/{key_id}/default", tag = "keys", params(KeyParams),
    request_body(content = Option<EmptyObject>, description = "Empty, or `{}`"),
    responses(
        (status = 200, description = "The key is the default", body = KeyResponse),
        (status = 404, description = "Unknown key", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`key_busy`, `key_not_active`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn set_default(
    admin: Admin,
    KeyPath(key): KeyPath,
    State(s): State<AppState>,
    JsonOrEmpty(Empty {}): JsonOrEmpty<Empty>,
) -> ApiResult<Json<KeyResponse>> {
    let key = s
        .cmk
        .set_default(&admin.principal.subject, &admin.org, &key)
        .await?;
    Ok(Json(KeyResponse { key: key.into() }))
}

/// Starts disabling a key: its data keys move to `reencrypt_to`, then it becomes `disabled`.
#[utoipa::path(post, path = "/v1/orgs/{org}/keys/{key_id}/disable", tag = "keys", params(KeyParams),
    request_body = DisableRequest,
    responses(
        (status = 202, description = "The re-encryption job started", body = JobResponse),
        (status = 404, description = "Unknown key", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`key_is_default`, `key_busy`, `key_not_active`, `key_is_service_managed`, `reencryption_in_progress`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn disable(
    admin: Admin,
    KeyPath(key): KeyPath,
    State(s): State<AppState>,
    ApiJson(body): ApiJson<DisableRequest>,
) -> ApiResult<(StatusCode, Json<JobResponse>)> {
    let target = KeyId::parse(&body.reencrypt_to)?;
    let job = s
        .cmk
        .disable(&admin.principal.subject, &admin.org, &key, &target)
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(JobResponse {
            reencryption: job.into(),
        }),
    ))
}

/// Re-wraps every data key of a `vault-transit` key with the key's latest version, after the
/// customer rotated it: a `rotate` job (202). The customer may then raise the key's
/// `min_decryption_version`. For an `aws-kms` key, 200 with why nothing needs doing.
#[utoipa::path(post, path = "/v1/orgs/{org}/keys/{key_id}/rewrap", tag = "keys", params(KeyParams),
    request_body(content = Option<EmptyObject>, description = "Empty, or `{}`"),
    responses(
        (status = 202, description = "The rotate job started", body = RewrapResponse),
        (status = 200, description = "An `aws-kms` key: nothing to do (`explanation`)", body = RewrapResponse),
        (status = 400, description = "A key type without versions (`local`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown key", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`key_not_active`, `key_is_service_managed`, `reencryption_in_progress`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn rewrap_key(
    admin: Admin,
    KeyPath(key): KeyPath,
    State(s): State<AppState>,
    JsonOrEmpty(Empty {}): JsonOrEmpty<Empty>,
) -> ApiResult<(StatusCode, Json<RewrapResponse>)> {
    let done = s
        .cmk
        .rewrap_key(&admin.principal.subject, &admin.org, &key)
        .await?;
    Ok(match done {
        Rewrap::Started(job) => (
            StatusCode::ACCEPTED,
            Json(RewrapResponse {
                reencryption: Some(job.into()),
                explanation: None,
            }),
        ),
        Rewrap::Automatic(why) => (
            StatusCode::OK,
            Json(RewrapResponse {
                reencryption: None,
                explanation: Some(why),
            }),
        ),
    })
}

/// The service-managed key becomes the default; every active customer key is drained to it.
#[utoipa::path(post, path = "/v1/orgs/{org}/keys/disable-all", tag = "keys", params(OrgParams),
    request_body(content = Option<EmptyObject>, description = "Empty, or `{}`"),
    responses(
        (status = 202, description = "The re-encryption job started", body = JobResponse),
        (status = 409, description = "`reencryption_in_progress`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn disable_all(
    admin: Admin,
    State(s): State<AppState>,
    JsonOrEmpty(Empty {}): JsonOrEmpty<Empty>,
) -> ApiResult<(StatusCode, Json<JobResponse>)> {
    let job = s
        .cmk
        .disable_all(&admin.principal.subject, &admin.org)
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(JobResponse {
            reencryption: job.into(),
        }),
    ))
}

/// Refreshes a key's health by a real round trip through it.
#[utoipa::path(post, path = "/v1/orgs/{org}/keys/{key_id}/check", tag = "keys", params(KeyParams),
    request_body(content = Option<EmptyObject>, description = "Empty, or `{}`"),
    responses(
        (status = 200, description = "The key with its fresh health", body = KeyResponse),
        (status = 404, description = "Unknown key", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn check_key(
    admin: Admin,
    KeyPath(key): KeyPath,
    State(s): State<AppState>,
    JsonOrEmpty(Empty {}): JsonOrEmpty<Empty>,
) -> ApiResult<Json<KeyResponse>> {
    let key = s
        .cmk
        .check_key(&admin.principal.subject, &admin.org, &key)
        .await?;
    Ok(Json(KeyResponse { key: key.into() }))
}

/// Puts a `failed` job back to `running` for the data keys that failed or remain.
#[utoipa::path(post, path = "/v1/orgs/{org}/reencryption/retry", tag = "reencryption", params(OrgParams),
    request_body(content = Option<EmptyObject>, description = "Empty, or `{}`"),
    responses(
        (status = 202, description = "The job runs again", body = JobResponse),
        (status = 409, description = "`no_reencryption`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn retry(
    admin: Admin,
    State(s): State<AppState>,
    JsonOrEmpty(Empty {}): JsonOrEmpty<Empty>,
) -> ApiResult<(StatusCode, Json<JobResponse>)> {
    let job = s.cmk.retry(&admin.principal.subject, &admin.org).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(JobResponse {
            reencryption: job.into(),
        }),
    ))
}

/// Ends the unfinished job as `cancelled`; every data key stays decryptable.
#[utoipa::path(post, path = "/v1/orgs/{org}/reencryption/cancel", tag = "reencryption", params(OrgParams),
    request_body(content = Option<EmptyObject>, description = "Empty, or `{}`"),
    responses(
        (status = 200, description = "The cancelled job", body = JobResponse),
        (status = 409, description = "`no_reencryption`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn cancel(
    admin: Admin,
    State(s): State<AppState>,
    JsonOrEmpty(Empty {}): JsonOrEmpty<Empty>,
) -> ApiResult<Json<JobResponse>> {
    let job = s.cmk.cancel(&admin.principal.subject, &admin.org).await?;
    Ok(Json(JobResponse {
        reencryption: job.into(),
    }))
}

// ---- data plane ----

/// Checks the caller's encryption context; `None` is the empty context.
fn context(ctx: Option<Context>) -> ApiResult<EncryptionContext> {
    let ctx = ctx.unwrap_or_default();
    if ctx.len() > MAX_CONTEXT_ENTRIES {
        return Err(ApiError::invalid_request(format!(
            "context may hold at most {MAX_CONTEXT_ENTRIES} entries"
        )));
    }
    for (k, v) in &ctx {
        if k.is_empty()
            || k.chars().count() > MAX_CONTEXT_LEN
            || v.chars().count() > MAX_CONTEXT_LEN
        {
            return Err(ApiError::invalid_request(format!(
                "context keys must be 1 to {MAX_CONTEXT_LEN} characters and values at most {MAX_CONTEXT_LEN}"
            )));
        }
    }
    Ok(ctx)
}

/// Creates a data key wrapped by the org's default key.
#[utoipa::path(post, path = "/v1/orgs/{org}/data-keys", tag = "data plane", params(OrgParams),
    request_body(content = Option<EmptyObject>, description = "`{}` (or empty)"),
    responses(
        (status = 201, description = "The new data key", body = DataKeyResponse),
        (status = 424, description = "`key_unavailable`: the default key cannot be used", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`key_unavailable` (throttled); retry after `Retry-After`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_data_key(
    svc: ServiceCaller,
    State(s): State<AppState>,
    JsonOrEmpty(Empty {}): JsonOrEmpty<Empty>,
) -> ApiResult<(StatusCode, Json<DataKeyResponse>)> {
    let record = s.cmk.create_data_key(&svc.org).await?;
    Ok((
        StatusCode::CREATED,
        Json(DataKeyResponse {
            data_key: record.into(),
        }),
    ))
}

/// Encrypts under a data key; the context is authenticated and must be given again to decrypt.
#[utoipa::path(post, path = "/v1/orgs/{org}/data-keys/{id}/encrypt", tag = "data plane", params(DataKeyParams),
    request_body = EncryptRequest,
    responses(
        (status = 200, description = "The ciphertext", body = EncryptResponse),
        (status = 400, description = "Bad base64 or context", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown data key", body = Problem, content_type = "application/problem+json"),
        (status = 424, description = "`key_unavailable`: the data key's wrapping key cannot be used", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`key_unavailable` (throttled); retry after `Retry-After`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn encrypt(
    svc: ServiceCaller,
    DataKeyPath(id): DataKeyPath,
    State(s): State<AppState>,
    ApiJson(body): ApiJson<EncryptRequest>,
) -> ApiResult<Json<EncryptResponse>> {
    let plaintext = Zeroizing::new(
        STANDARD
            .decode(body.plaintext.as_bytes())
            .map_err(|_| ApiError::invalid_request("plaintext must be standard base64"))?,
    );
    let ctx = context(body.context)?;
    let ciphertext = s.cmk.encrypt(&svc.org, &id, &plaintext, &ctx).await?;
    Ok(Json(EncryptResponse { ciphertext }))
}

/// Decrypts a ciphertext of this org with the context it was encrypted with.
#[utoipa::path(post, path = "/v1/orgs/{org}/decrypt", tag = "data plane", params(OrgParams),
    request_body = DecryptRequest,
    responses(
        (status = 200, description = "The plaintext", body = DecryptResponse),
        (status = 400, description = "`invalid_request` (malformed ciphertext), `decrypt_failed` (wrong org, context or data)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown data key", body = Problem, content_type = "application/problem+json"),
        (status = 424, description = "`key_unavailable`: the data key's wrapping key cannot be used", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`key_unavailable` (throttled); retry after `Retry-After`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn decrypt(
    svc: ServiceCaller,
    State(s): State<AppState>,
    ApiJson(body): ApiJson<DecryptRequest>,
) -> ApiResult<Json<DecryptResponse>> {
    let ctx = context(body.context)?;
    let plaintext = s.cmk.decrypt(&svc.org, &body.ciphertext, &ctx).await?;
    Ok(Json(DecryptResponse {
        plaintext: STANDARD.encode(plaintext.as_slice()),
    }))
}

// ---- fallbacks ----

/// Unknown path.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no route matches this path")
}

/// Known path, wrong method (axum adds the `Allow` header).
pub async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_limits() {
        assert!(context(None).expect("ok").is_empty());
        let mut ok = Context::new();
        ok.insert("k".repeat(256), "v".repeat(256));
        assert!(context(Some(ok)).is_ok());

        let mut long = Context::new();
        long.insert("k".repeat(257), "v".into());
        assert!(context(Some(long)).is_err());
        let mut long = Context::new();
        long.insert("k".into(), "v".repeat(257));
        assert!(context(Some(long)).is_err());
        let mut empty_key = Context::new();
        empty_key.insert(String::new(), "v".into());
        assert!(context(Some(empty_key)).is_err());

        let many: Context = (0..33).map(|i| (format!("k{i}"), "v".into())).collect();
        assert!(context(Some(many)).is_err());
        let max: Context = (0..32).map(|i| (format!("k{i}"), "v".into())).collect();
        assert!(context(Some(max)).is_ok());
    }
}
