//! Shared setup of the function tests: the `events/` fixtures, calls through the real handlers,
//! and the AWS backend, either offline (an endpoint where nothing listens, so any AWS call fails
//! fast) or on the AWS emulator.
//!
//! The emulator's endpoint comes from `CMK_TEST_AWS_ENDPOINT` (the test command starts it). Without
//! it the emulator tests skip with a message, unless `CMK_REQUIRE_AWS_TESTS` is set.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_lambda_events::event::sqs::SqsBatchResponse;
use axum::http::StatusCode;
use axum::Router;
use base64::Engine as _;
use cmk_aws::{AwsBackend, AwsSettings};
use cmk_lambda::{app, ClaimNames, HttpFunction, Worker};
use lambda_runtime::{Context, LambdaEvent};
use serde_json::{json, Value};
use tower::ServiceExt;

/// Never reach for real credentials or the instance-metadata address; route like the template.
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        std::env::set_var("AWS_REGION", "us-east-1");
        // As template.yaml sets it for every function.
        std::env::set_var("AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH", "true");
    });
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn events_dir() -> PathBuf {
    repo_root().join("events")
}

/// A fixture of `events/`, e.g. `keys-read/list-keys.json`.
pub fn fixture(name: &str) -> Value {
    let path = events_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// The fixtures of one function's directory, by file name.
pub fn fixtures_of(function: &str) -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = std::fs::read_dir(events_dir().join(function))
        .expect("events directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let name = format!(
                "{function}/{}",
                p.file_name().expect("name").to_string_lossy()
            );
            let v = fixture(&name);
            (name, v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// An HTTP API event for `method` and concrete `path`, built from a fixture's shape.
pub fn event_for(method: &str, path: &str) -> Value {
    let mut ev = fixture("keys-read/healthz.json");
    set_route(&mut ev, method, path);
    ev
}

/// Points an event at another method and concrete path.
pub fn set_route(ev: &mut Value, method: &str, path: &str) {
    ev["rawPath"] = path.into();
    ev["requestContext"]["http"]["path"] = path.into();
    ev["requestContext"]["http"]["method"] = method.into();
}

/// Replaces an event's JSON body.
pub fn set_body(ev: &mut Value, body: &Value) {
    let text = body.to_string();
    ev["body"] = text.clone().into();
    ev["headers"]["content-length"] = text.len().to_string().into();
}

/// A response, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The problem code of an error answer.
    pub fn code(&self) -> String {
        assert!(
            self.content_type.starts_with("application/problem+json"),
            "{} {}: {}",
            self.status,
            self.content_type,
            String::from_utf8_lossy(&self.body)
        );
        self.json()["code"].as_str().unwrap_or_default().to_owned()
    }
}

/// Feeds an event through a function's handler, as `lambda_http::run` would: the event becomes
/// a request (`lambda_http::request::from_str`, which also puts the request context in its
/// extensions) and goes to the function's router.
pub async fn call(app: &Router, event: &Value) -> Answer {
    let request = lambda_http::request::from_str(&event.to_string()).expect("an HTTP API event");
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body")
        .to_vec();
    Answer {
        status,
        content_type,
        body,
    }
}

fn settings(table: &str, queue_url: &str, service_key: &str, endpoint: &str) -> AwsSettings {
    AwsSettings {
        table: table.to_owned(),
        queue_url: queue_url.to_owned(),
        service_key_id: service_key.to_owned(),
        service_principal: "arn:aws:iam::123456789012:root".to_owned(),
        endpoint_url: Some(endpoint.to_owned()),
        data_key_cache_ttl: Duration::from_secs(300),
        data_key_cache_size: 1_000,
        failure_memory: std::time::Duration::from_secs(10),
        stalled_after: std::time::Duration::from_secs(60),
        service_account_id: None,
        allow_same_account_roles: true,
        event_bus: None,
        oidc_issuer: None,
        oidc_signing_keys: Vec::new(),
    }
}

/// Where nothing listens: every AWS call fails at once (no retries).
const OFFLINE: &str = "http://127.0.0.1:9";

/// The AWS backend pointed at an endpoint that refuses connections: routing and authorization
/// are exercised for real, and whatever reaches DynamoDB, SQS or KMS fails.
pub async fn offline_backend() -> AwsBackend {
    init();
    let config = aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(OFFLINE)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "static"))
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(2))
                .operation_timeout(Duration::from_secs(5))
                .build(),
        )
        .load()
        .await;
    cmk_aws::backend::build(
        &config,
        &AwsSettings {
            // An issuer, so keys-read serves its documents (its keys are unreachable here).
            oidc_issuer: Some("https://cmk.example.com/oidc".into()),
            oidc_signing_keys: vec!["alias/cmk-oidc".into()],
            ..settings(
                "cmk-offline",
                &format!("{OFFLINE}/123456789012/cmk-offline"),
                "alias/cmk-offline",
                OFFLINE,
            )
        },
    )
}

/// The emulator's endpoint, or `None` (skip) when the test command did not start one.
pub fn emulator_endpoint() -> Option<String> {
    init();
    cmk_aws::emulator::shared_endpoint()
}

/// An SDK configuration for the emulator with static credentials.
pub async fn emulator_config(endpoint: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "static"))
        .load()
        .await
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// The service's resources on the emulator, created from the code's definitions, and the
/// backend over them.
#[derive(Debug)]
pub struct Emulated {
    pub config: SdkConfig,
    pub settings: AwsSettings,
    pub backend: AwsBackend,
    pub table: String,
    pub queue_url: String,
    pub service_key_arn: String,
}

pub async fn emulated(endpoint: &str) -> Emulated {
    let config = emulator_config(endpoint).await;
    let table = unique("cmk-lambda");
    cmk_aws::resources::ensure_table(&aws_sdk_dynamodb::Client::new(&config), &table)
        .await
        .expect("table");
    let queue_url =
        cmk_aws::resources::ensure_queues(&aws_sdk_sqs::Client::new(&config), &unique("rewrap"))
            .await
            .expect("queues");
    let service_key_arn = aws_sdk_kms::Client::new(&config)
        .create_key()
        .description("service key")
        .send()
        .await
        .expect("service key")
        .key_metadata
        .and_then(|m| m.arn)
        .expect("key arn");
    let settings = settings(&table, &queue_url, &service_key_arn, endpoint);
    let backend = cmk_aws::backend::build(&config, &settings);
    Emulated {
        config,
        settings,
        backend,
        table,
        queue_url,
        service_key_arn,
    }
}

// ------------------------------------------------------------------ flows through the functions

/// The JWT claims of an admin event.
pub fn claims(ev: &mut Value) -> &mut Value {
    &mut ev["requestContext"]["authorizer"]["jwt"]["claims"]
}

pub fn assert_problem(a: &Answer, status: StatusCode, code: &str) {
    assert_eq!(a.status, status, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.code(), code);
}

/// A fixture of `events/` for `org` instead of `acme` (path, path parameters and claims).
pub fn org_event(name: &str, org: &str) -> Value {
    let mut ev = fixture(name);
    let path =
        ev["rawPath"]
            .as_str()
            .expect("path")
            .replacen("/orgs/acme", &format!("/orgs/{org}"), 1);
    let method = ev["requestContext"]["http"]["method"]
        .as_str()
        .expect("method")
        .to_owned();
    set_route(&mut ev, &method, &path);
    ev["pathParameters"]["org"] = org.into();
    if !ev["requestContext"]["authorizer"]["jwt"].is_null() {
        claims(&mut ev)["org"] = org.into();
    }
    ev
}

/// An SQS record shaped like the fixture's, with another id and body (either may be absent).
pub fn sqs_record(id: Option<&str>, body: Option<&str>) -> Value {
    let mut r = fixture("rewrap-worker/sqs-rewrap.json")["Records"][0].clone();
    let o = r.as_object_mut().expect("record");
    match id {
        Some(id) => o.insert("messageId".into(), id.into()),
        None => o.remove("messageId"),
    };
    match body {
        Some(b) => o.insert("body".into(), b.into()),
        None => o.remove("body"),
    };
    r
}

pub fn failures(r: &SqsBatchResponse) -> HashSet<String> {
    r.batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect()
}

/// The four functions, each over its own backend (as on AWS: one process each).
#[derive(Debug)]
pub struct Functions {
    pub read: Router,
    pub write: Router,
    pub data: Router,
    pub worker: Worker,
}

impl Functions {
    pub fn new(config: &SdkConfig, settings: &AwsSettings) -> Self {
        Self::with_configs([config, config, config, config], settings)
    }

    /// Each function with its own SDK configuration (its own credentials): keys-read,
    /// keys-write, data-keys, rewrap-worker.
    pub fn with_configs(configs: [&SdkConfig; 4], settings: &AwsSettings) -> Self {
        let backend = |config: &SdkConfig| cmk_aws::backend::build(config, settings);
        let cmk = |config: &SdkConfig| backend(config).cmk;
        let names = ClaimNames::default();
        let read = backend(configs[0]);
        Self {
            read: app(HttpFunction::KeysRead, read.cmk, &names, read.oidc),
            write: app(HttpFunction::KeysWrite, cmk(configs[1]), &names, None),
            data: app(HttpFunction::DataKeys, cmk(configs[2]), &names, None),
            worker: Worker::new(
                cmk_core::engine::RewrapEngine::new(
                    cmk(configs[3]),
                    cmk_core::engine::EngineConfig {
                        batch_size: 2,
                        ..Default::default()
                    },
                ),
                4,
                Duration::from_secs(900),
            ),
        }
    }
}

pub async fn create_data_key(f: &Functions, org: &str) -> String {
    let a = call(&f.data, &org_event("data-keys/create-data-key.json", org)).await;
    assert_eq!(
        a.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    a.json()["data_key"]["id"].as_str().expect("id").to_owned()
}

pub async fn encrypt(f: &Functions, org: &str, dk: &str, plaintext: &[u8]) -> String {
    let mut ev = org_event("data-keys/encrypt.json", org);
    let path = format!("/v1/orgs/{org}/data-keys/{dk}/encrypt");
    set_route(&mut ev, "POST", &path);
    ev["pathParameters"]["id"] = dk.into();
    set_body(
        &mut ev,
        &json!({"plaintext": base64::engine::general_purpose::STANDARD.encode(plaintext),
                "context": {"env": "prod"}}),
    );
    let a = call(&f.data, &ev).await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    a.json()["ciphertext"]
        .as_str()
        .expect("ciphertext")
        .to_owned()
}

pub async fn decrypt(data: &Router, org: &str, ciphertext: &str) -> Vec<u8> {
    let mut ev = org_event("data-keys/decrypt.json", org);
    set_body(
        &mut ev,
        &json!({"ciphertext": ciphertext, "context": {"env": "prod"}}),
    );
    let a = call(data, &ev).await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    base64::engine::general_purpose::STANDARD
        .decode(a.json()["plaintext"].as_str().expect("plaintext"))
        .expect("base64")
}

/// Plays the SQS event source mapping until `org`'s job is no longer running: receives up to 10
/// messages, invokes the worker with them as an SQS event (plus `extra` records on the first
/// invocation), and deletes the received messages the answer did not name. Returns the failures
/// each invocation reported.
pub async fn run_queue(
    worker: &Worker,
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    read: &Router,
    org: &str,
    mut extra: Vec<Value>,
) -> Vec<HashSet<String>> {
    let template = fixture("rewrap-worker/sqs-rewrap.json")["Records"][0].clone();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut answers = Vec::new();
    loop {
        assert!(Instant::now() < deadline, "the job did not end");
        let received = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .expect("receive")
            .messages
            .unwrap_or_default();
        if received.is_empty() {
            let job = call(read, &org_event("keys-read/reencryption.json", org)).await;
            assert_eq!(
                job.status,
                StatusCode::OK,
                "{}",
                String::from_utf8_lossy(&job.body)
            );
            if job.json()["reencryption"]["state"] != "running" {
                return answers;
            }
            continue;
        }
        let mut records: Vec<Value> = received
            .iter()
            .map(|m| {
                let mut r = template.clone();
                r["messageId"] = m.message_id().expect("id").into();
                r["receiptHandle"] = m.receipt_handle().expect("receipt").into();
                r["body"] = m.body().expect("body").into();
                r["md5OfBody"] = m.md5_of_body().unwrap_or_default().into();
                r
            })
            .collect();
        records.append(&mut extra);
        let response = worker
            .handle(LambdaEvent::new(
                json!({ "Records": records }),
                Context::default(),
            ))
            .await
            .expect("a batch answer");
        let failed = failures(&response);
        for m in &received {
            if !failed.contains(m.message_id().unwrap_or_default()) {
                sqs.delete_message()
                    .queue_url(queue_url)
                    .receipt_handle(m.receipt_handle().unwrap_or_default())
                    .send()
                    .await
                    .expect("delete");
            }
        }
        answers.push(failed);
    }
}
