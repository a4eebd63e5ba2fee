//! Router-level checks that need no real backend: auth order, roles, fallbacks, body handling and
//! the problem+json rendering. The ports are stubs that answer a fresh org and fail otherwise;
//! the behaviour of the use cases is tested against real adapters in the workspace's `tests/`.
//!
//! It is long because its stubs implement every port: one small stub per part of the store.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::{to_bytes, Body};
use axum::http::{header, Method, Request, StatusCode};
use axum::response::Response;
use axum::Router;
use chrono::{DateTime, Utc};
use cmk_core::cache::DataKeyCache;
use cmk_core::crypto::DataKey;
use cmk_core::error::{KeyError, KeyErrorKind, QueueError, StoreError};
use cmk_core::model::{
    AuditEvent, DataKeyId, DataKeyRecord, EncryptionContext, Health, Job, JobId, KeyId, KeyRecord,
    OrgId, Role,
};
use cmk_core::ports::{
    AuditLog, BatchCommit, DataKeyStore, Delivery, JobProgress, Kek, KeyProvider, OrgCommit,
    OrgSnapshot, OrgStore, RewrapMessage, RewrapProgress, RewrapQueue, StoreParts, Wrapped,
};
use cmk_core::service::ServiceConfig;
use cmk_core::Cmk;
use cmk_http::auth::{issue_token, Hs256Authenticator};
use cmk_http::{router, AppState};
use serde_json::{json, Value};
use tower::ServiceExt;

const SECRET: &[u8] = b"test-secret-test-secret-test-sec";

fn down<T>() -> Result<T, StoreError> {
    Err(StoreError::Unavailable("stub store at 10.1.2.3".into()))
}

/// Every org is fresh; writes fail as if the database were down.
struct FreshOrgs;

#[async_trait]
impl OrgStore for FreshOrgs {
    async fn ensure_org(&self, _: &OrgId, _: &str) -> Result<String, StoreError> {
        Ok("cmk-external".into())
    }

    async fn load_org(&self, org: &OrgId) -> Result<OrgSnapshot, StoreError> {
        Ok(OrgSnapshot {
            org: org.clone(),
            version: 0,
            external_id: None,
            default_key_id: KeyId::service(),
            keys: Vec::new(),
            data_key_counts: Default::default(),
            job: None,
        })
    }

    async fn commit(&self, _: &OrgId, _: OrgCommit) -> Result<Option<Job>, StoreError> {
        down()
    }

    async fn get_key(&self, _: &OrgId, _: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        down()
    }

    async fn set_key_health(
        &self,
        _: &OrgId,
        _: &KeyId,
        _: &Health,
    ) -> Result<Option<Health>, StoreError> {
        down()
    }

    async fn keys_due_for_check(
        &self,
        _: DateTime<Utc>,
        _: usize,
    ) -> Result<Vec<(OrgId, KeyRecord)>, StoreError> {
        Ok(Vec::new())
    }
}

/// No data key exists; writes fail as if the database were down.
struct NoDataKeys;

#[async_trait]
impl DataKeyStore for NoDataKeys {
    async fn insert_data_keys(&self, _: &OrgId, _: &[DataKeyRecord]) -> Result<(), StoreError> {
        down()
    }

    async fn get_data_key(
        &self,
        _: &OrgId,
        _: &DataKeyId,
    ) -> Result<Option<DataKeyRecord>, StoreError> {
        Ok(None)
    }

    async fn list_data_keys(
        &self,
        _: &OrgId,
        _: &KeyId,
        _: u32,
        _: Option<&DataKeyId>,
        _: Option<&DataKeyId>,
        _: usize,
        _: Option<&JobId>,
    ) -> Result<Vec<DataKeyRecord>, StoreError> {
        down()
    }

    async fn list_data_key_ids(
        &self,
        _: &OrgId,
        _: &KeyId,
        _: u32,
        _: Option<&DataKeyId>,
        _: usize,
    ) -> Result<Vec<DataKeyId>, StoreError> {
        down()
    }
}

/// The database is down.
struct DownProgress;

#[async_trait]
impl RewrapProgress for DownProgress {
    async fn get_job(&self, _: &OrgId, _: &JobId) -> Result<Option<Job>, StoreError> {
        down()
    }

    async fn running_jobs(&self) -> Result<Vec<(OrgId, Job)>, StoreError> {
        down()
    }

    async fn set_job_throttle(
        &self,
        _: &OrgId,
        _: &JobId,
        _: u32,
        _: Option<u32>,
    ) -> Result<(), StoreError> {
        down()
    }

    async fn claim_replan(
        &self,
        _: &OrgId,
        _: &JobId,
        _: u32,
        _: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, StoreError> {
        down()
    }

    async fn commit_batch(&self, _: &OrgId, _: BatchCommit) -> Result<JobProgress, StoreError> {
        down()
    }
}

/// The trail is empty; appends fail as if the database were down.
struct EmptyAudit;

#[async_trait]
impl AuditLog for EmptyAudit {
    async fn append_audit(&self, _: &OrgId, _: &[AuditEvent]) -> Result<(), StoreError> {
        down()
    }

    async fn list_audit(
        &self,
        _: &OrgId,
        _: usize,
        _: Option<&str>,
    ) -> Result<(Vec<AuditEvent>, Option<String>), StoreError> {
        Ok((Vec::new(), None))
    }
}

struct StubQueue;

#[async_trait]
impl RewrapQueue for StubQueue {
    async fn send(&self, _: &[RewrapMessage]) -> Result<(), QueueError> {
        Err(QueueError("stub".into()))
    }
    async fn receive(&self, _: usize, _: Duration) -> Result<Vec<Delivery>, QueueError> {
        Err(QueueError("stub".into()))
    }
    async fn ack(&self, _: &str) -> Result<(), QueueError> {
        Err(QueueError("stub".into()))
    }
}

/// Wrapping is throttled; the add-time check is denied.
struct StubKeys;

#[async_trait]
impl KeyProvider for StubKeys {
    async fn wrap(&self, _: &Kek, _: &EncryptionContext, _: &DataKey) -> Result<Wrapped, KeyError> {
        Err(KeyError::new(KeyErrorKind::Throttled, "slow down"))
    }
    async fn unwrap(&self, _: &Kek, _: &EncryptionContext, _: &[u8]) -> Result<DataKey, KeyError> {
        Err(KeyError::new(KeyErrorKind::AccessDenied, "denied"))
    }
    async fn check(&self, _: &Kek) -> Result<Option<String>, KeyError> {
        Err(KeyError::new(
            KeyErrorKind::AccessDenied,
            "the role cannot be assumed",
        ))
    }
}

fn app() -> Router {
    let store = StoreParts {
        orgs: Arc::new(FreshOrgs),
        data_keys: Arc::new(NoDataKeys),
        progress: Arc::new(DownProgress),
        audit: Arc::new(EmptyAudit),
    };
    let cmk = Cmk::new(
        store,
        Arc::new(StubQueue),
        Arc::new(StubKeys),
        DataKeyCache::disabled(),
        ServiceConfig::default(),
    );
    router(AppState {
        cmk,
        auth: Arc::new(Hs256Authenticator::new(SECRET).expect("a 32-byte secret")),
    })
}

fn token(org: &str, role: Role) -> String {
    issue_token(SECRET, "alice", org, role, Duration::from_secs(300))
}

async fn send(
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, Response, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let body = match body {
        Some(b) => {
            req = req.header(header::CONTENT_TYPE, "application/json");
            Body::from(b.to_owned())
        }
        None => Body::empty(),
    };
    let response = app()
        .oneshot(req.body(body).expect("request"))
        .await
        .expect("infallible");
    let status = response.status();
    let (parts, body) = response.into_parts();
    let bytes = to_bytes(body, usize::MAX).await.expect("body");
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, Response::from_parts(parts, Body::empty()), json)
}

fn assert_problem(response: &Response, json: &Value, status: u16, code: &str) {
    assert_eq!(response.status().as_u16(), status, "{json}");
    assert_eq!(json["code"], code, "{json}");
    assert_eq!(json["status"], status, "{json}");
    assert_eq!(json["type"], format!("https://cmk.dev/problems/{code}"));
    assert!(json["title"].is_string() && json["detail"].is_string());
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
}

#[tokio::test]
async fn healthz_and_openapi_need_no_token() {
    let (status, _, json) = send(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json, json!({"status": "ok"}));
    let (status, _, json) = send(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(json["paths"]["/v1/orgs/{org}/keys"].is_object());
}

#[tokio::test]
async fn fallbacks_are_problems() {
    let (_, r, json) = send(Method::GET, "/nope", None, None).await;
    assert_problem(&r, &json, 404, "not_found");
    let (_, r, json) = send(Method::DELETE, "/v1/orgs/acme/keys", None, None).await;
    assert_problem(&r, &json, 405, "method_not_allowed");
    let allow = r.headers()[header::ALLOW].to_str().expect("ascii");
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
}

#[tokio::test]
async fn unauthenticated_before_anything_else() {
    // No token and a bad body: 401, not 400.
    let (_, r, json) = send(Method::POST, "/v1/orgs/acme/keys", None, Some("{nope")).await;
    assert_problem(&r, &json, 401, "unauthenticated");
    assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer");
    let (_, r, json) = send(Method::GET, "/v1/orgs/acme/keys", Some("garbage"), None).await;
    assert_problem(&r, &json, 401, "unauthenticated");
    let other = issue_token(
        b"another secret, as long as the real one",
        "a",
        "acme",
        Role::Admin,
        Duration::from_secs(60),
    );
    let (_, r, json) = send(Method::GET, "/v1/orgs/acme/keys", Some(&other), None).await;
    assert_problem(&r, &json, 401, "unauthenticated");
    let (_, r, json) = send(Method::POST, "/v1/orgs/acme/decrypt", None, None).await;
    assert_problem(&r, &json, 401, "unauthenticated");
}

#[tokio::test]
async fn roles_and_orgs() {
    let member = token("acme", Role::Member);
    let service = token("acme", Role::Service);
    let admin = token("acme", Role::Admin);
    let other_admin = token("other", Role::Admin);
    for (uri, method) in [
        ("/v1/orgs/acme/keys", Method::GET),
        ("/v1/orgs/acme/audit", Method::GET),
        ("/v1/orgs/acme/keys/disable-all", Method::POST),
        ("/v1/orgs/acme/data-keys", Method::POST),
        ("/v1/orgs/acme/decrypt", Method::POST),
    ] {
        let (_, r, json) = send(method.clone(), uri, Some(&member), None).await;
        assert_problem(&r, &json, 403, "forbidden");
    }
    let (_, r, json) = send(Method::GET, "/v1/orgs/acme/keys", Some(&service), None).await;
    assert_problem(&r, &json, 403, "forbidden");
    let (_, r, json) = send(Method::POST, "/v1/orgs/acme/data-keys", Some(&admin), None).await;
    assert_problem(&r, &json, 403, "forbidden");
    let (_, r, json) = send(Method::GET, "/v1/orgs/acme/keys", Some(&other_admin), None).await;
    assert_problem(&r, &json, 403, "forbidden");
    let (_, r, json) = send(Method::GET, "/v1/orgs/BAD!/keys", Some(&admin), None).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{json}");
}

#[tokio::test]
async fn admin_reads_of_a_fresh_org() {
    let admin = token("acme", Role::Admin);
    let (status, _, json) = send(Method::GET, "/v1/orgs/acme/keys", Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["default_key_id"], "service");
    assert_eq!(json["reencryption"], Value::Null);
    let key = &json["keys"][0];
    assert_eq!(key["id"], "service");
    assert_eq!(key["type"], "service-managed");
    assert_eq!(key["default"], true);
    assert_eq!(key["state"], "active");
    assert_eq!(key["aws"], Value::Null);
    assert!(key["health"]["status"].is_string());
    assert!(
        key.get("created_at").is_none(),
        "the service-managed key was never added: no created_at (not 1970-01-01): {key}"
    );

    let (status, _, json) = send(Method::GET, "/v1/orgs/acme/keys/setup", Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["external_id"], "cmk-external");
    assert!(json["trust_policy"].is_object());

    let (status, _, json) = send(
        Method::GET,
        "/v1/orgs/acme/reencryption",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json, json!({"reencryption": null}));

    let (status, _, json) = send(
        Method::GET,
        "/v1/orgs/acme/audit?limit=&cursor=",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json, json!({"events": [], "next_cursor": null}));
    for bad in ["0", "501", "x", "-1"] {
        let uri = format!("/v1/orgs/acme/audit?limit={bad}");
        let (_, r, json) = send(Method::GET, &uri, Some(&admin), None).await;
        assert_problem(&r, &json, 400, "invalid_request");
    }
}

#[tokio::test]
async fn add_key_bodies() {
    let admin = token("acme", Role::Admin);
    let uri = "/v1/orgs/acme/keys";
    for body in [
        r#"{"name":"a","type":"local","role_arn":"arn:aws:iam::111122223333:role/x"}"#,
        r#"{"name":"a","type":"aws-kms","role_arn":"arn:aws:iam::111122223333:role/x"}"#,
        r#"{"name":"a","type":"service-managed"}"#,
        r#"{"name":"a","type":"local","extra":1}"#,
        r#"{"name":5,"type":"local"}"#,
        r#"{"type":"local"}"#,
        r#"[]"#,
        r#"{"#,
    ] {
        let (_, r, json) = send(Method::POST, uri, Some(&admin), Some(body)).await;
        assert_problem(&r, &json, 400, "invalid_request");
    }
    // Missing content type.
    let req = Request::post(uri)
        .header(header::AUTHORIZATION, format!("Bearer {admin}"))
        .body(Body::from(r#"{"name":"a","type":"local"}"#))
        .expect("request");
    let r = app().oneshot(req).await.expect("infallible");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // A well-formed local key reaches the provider, whose check is denied here.
    let (_, r, json) = send(
        Method::POST,
        uri,
        Some(&admin),
        Some(r#"{"name":"prod","type":"local"}"#),
    )
    .await;
    assert_problem(&r, &json, 422, "key_check_failed");
    assert_eq!(json["reason"], "access_denied");
}

#[tokio::test]
async fn bodies_of_routes_that_take_none() {
    let admin = token("acme", Role::Admin);
    // Empty bodies and `{}` are accepted; anything else is a 400.
    let (_, r, json) = send(
        Method::POST,
        "/v1/orgs/acme/keys/key_1/default",
        Some(&admin),
        None,
    )
    .await;
    assert_problem(&r, &json, 404, "not_found");
    let (_, r, json) = send(
        Method::POST,
        "/v1/orgs/acme/keys/disable-all",
        Some(&admin),
        Some("{}"),
    )
    .await;
    assert_problem(&r, &json, 409, "key_not_active");
    // The check writes an audit event to the stub store, which is down: a generic 500.
    let (_, r, json) = send(
        Method::POST,
        "/v1/orgs/acme/keys/service/check",
        Some(&admin),
        None,
    )
    .await;
    assert_problem(&r, &json, 500, "internal");
    assert!(!json.to_string().contains("10.1.2.3"));
    let (_, r, json) = send(
        Method::POST,
        "/v1/orgs/acme/keys/disable-all",
        Some(&admin),
        Some("[1]"),
    )
    .await;
    assert_problem(&r, &json, 400, "invalid_request");
    let (_, r, json) = send(
        Method::POST,
        "/v1/orgs/acme/keys/disable-all",
        Some(&admin),
        Some(r#"{"x":1}"#),
    )
    .await;
    assert_problem(&r, &json, 400, "invalid_request");
    let (_, r, json) = send(
        Method::POST,
        "/v1/orgs/acme/reencryption/cancel",
        Some(&admin),
        None,
    )
    .await;
    assert_problem(&r, &json, 409, "no_reencryption");
    let (_, r, json) = send(
        Method::POST,
        "/v1/orgs/acme/keys/service/disable",
        Some(&admin),
        Some(r#"{"reencrypt_to":"key_x"}"#),
    )
    .await;
    assert_problem(&r, &json, 409, "key_is_service_managed");
    let (_, r, json) = send(
        Method::POST,
        "/v1/orgs/acme/keys/Bad%20Id/check",
        Some(&admin),
        None,
    )
    .await;
    assert_problem(&r, &json, 400, "invalid_request");
}

#[tokio::test]
async fn body_limit_is_a_400_problem() {
    let admin = token("acme", Role::Admin);
    let big = format!(r#"{{"name":"{}","type":"local"}}"#, "x".repeat(70 * 1024));
    let (_, r, json) = send(Method::POST, "/v1/orgs/acme/keys", Some(&admin), Some(&big)).await;
    assert_problem(&r, &json, 400, "invalid_request");
    assert!(json["detail"].as_str().expect("detail").contains("64 KiB"));
}

#[tokio::test]
async fn data_plane() {
    let svc = token("acme", Role::Service);
    // The stub provider is throttled: 429 with Retry-After, code key_unavailable.
    let (_, r, json) = send(
        Method::POST,
        "/v1/orgs/acme/data-keys",
        Some(&svc),
        Some("{}"),
    )
    .await;
    assert_problem(&r, &json, 429, "key_unavailable");
    assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    assert_eq!(json["key_id"], "service");
    assert_eq!(json["reason"], "throttled");

    let uri = "/v1/orgs/acme/data-keys/0190b6c4-0000-7000-8000-000000000000/encrypt";
    let (_, r, json) = send(
        Method::POST,
        uri,
        Some(&svc),
        Some(r#"{"plaintext":"%%%"}"#),
    )
    .await;
    assert_problem(&r, &json, 400, "invalid_request");
    let (_, r, json) = send(
        Method::POST,
        uri,
        Some(&svc),
        Some(r#"{"plaintext":"aGk=","context":{"k":1}}"#),
    )
    .await;
    assert_problem(&r, &json, 400, "invalid_request");
    let (_, r, json) = send(
        Method::POST,
        uri,
        Some(&svc),
        Some(r#"{"plaintext":"aGk=","context":{"k":"v"}}"#),
    )
    .await;
    assert_problem(&r, &json, 404, "not_found");

    let (_, r, json) = send(
        Method::POST,
        "/v1/orgs/acme/decrypt",
        Some(&svc),
        Some(r#"{"ciphertext":"not a ciphertext"}"#),
    )
    .await;
    assert_problem(&r, &json, 400, "invalid_request");
}

#[tokio::test]
async fn request_id_is_set_and_propagated() {
    let (_, r, _) = send(Method::GET, "/healthz", None, None).await;
    assert!(r.headers().contains_key("x-request-id"));
    let req = Request::get("/healthz")
        .header("x-request-id", "abc-123")
        .body(Body::empty())
        .expect("request");
    let r = app().oneshot(req).await.expect("infallible");
    assert_eq!(r.headers()["x-request-id"], "abc-123");
}

#[tokio::test]
async fn principal_from_the_gateway_is_used_without_a_token() {
    use cmk_core::model::Principal;
    let mut req = Request::get("/v1/orgs/acme/keys")
        .body(Body::empty())
        .expect("request");
    req.extensions_mut().insert(Principal {
        subject: "gateway-user".into(),
        org: OrgId::parse("acme").expect("org"),
        role: Role::Admin,
    });
    let r = app().oneshot(req).await.expect("infallible");
    assert_eq!(r.status(), StatusCode::OK);
}

/// GET on the page's paths: status, headers and body text.
async fn get_page(uri: &str) -> (StatusCode, axum::http::HeaderMap, String) {
    let response = app()
        .oneshot(
            Request::builder()
                .uri(uri)
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    let (parts, body) = response.into_parts();
    let bytes = to_bytes(body, usize::MAX).await.expect("body");
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

#[tokio::test]
async fn the_admin_page_is_served_without_a_token_under_a_strict_policy() {
    let (status, headers, html) = get_page("/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
    let csp = headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .expect("ascii");
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert_eq!(headers[header::REFERRER_POLICY], "no-referrer");
    // The key types this service accepts (the default config: local only).
    assert!(html.contains(r#"data-key-types="local""#), "{html}");
    assert!(html.contains(r#"<script type="module" src="/assets/app.js">"#));

    for (asset, content_type) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("api.js", "text/javascript; charset=utf-8"),
        ("words.js", "text/javascript; charset=utf-8"),
        ("app.css", "text/css; charset=utf-8"),
        ("icon.svg", "image/svg+xml"),
    ] {
        let (status, headers, body) = get_page(&format!("/assets/{asset}")).await;
        assert_eq!(status, StatusCode::OK, "{asset}");
        assert_eq!(headers[header::CONTENT_TYPE], content_type, "{asset}");
        assert!(headers.contains_key(header::CONTENT_SECURITY_POLICY));
        assert!(!body.is_empty());
    }
    let (_, r, json) = send(Method::GET, "/assets/nope.js", None, None).await;
    assert_problem(&r, &json, 404, "not_found");
    let (_, r, json) = send(Method::GET, "/assets/../Cargo.toml", None, None).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "{json}");
    let (_, r, json) = send(Method::POST, "/", None, None).await;
    assert_problem(&r, &json, 405, "method_not_allowed");
}
