//! The harness of the suites that cross crates (`tests/tests/`): the real router on a loopback
//! port, on real SQLite adapters in a temporary directory, with a worker, plus fault-injecting
//! wrappers at the ports. A library, so that it is compiled once, not once per suite.

#![allow(
    missing_debug_implementations,
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::type_complexity
)]

pub mod faults;

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use cmk_core::cache::DataKeyCache;
use cmk_core::engine::{EngineConfig, RewrapEngine};
use cmk_core::model::Role;
use cmk_core::ports::{DataKeyStore, KeyProvider, OrgStore, RewrapQueue, StoreParts};
use cmk_core::service::ServiceConfig;
use cmk_core::worker::{run_worker, WorkerConfig};
use cmk_core::Cmk;
use cmk_embedded::{Database, LocalKeyProvider, QueueConfig, SqliteQueue, SqliteStore};
use cmk_http::auth::{issue_token, Hs256Authenticator};
use cmk_http::AppState;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub const SECRET: &[u8] = b"test-secret-for-hs256-signing-000";

/// Options for [`TestApp::start`].
pub struct Options {
    pub worker: bool,
    pub batch_size: usize,
    pub visibility: Duration,
    pub cache_ttl: Duration,
    /// The service's stall interval (retries re-plan a running job only after it).
    pub stalled_after: Duration,
    /// Whether `aws-kms` keys may be added (with a provider that serves them).
    pub allow_aws_keys: bool,
    /// Wraps the store (e.g. with faults) before the service uses it.
    pub wrap_store: Box<dyn FnOnce(StoreParts) -> StoreParts + Send>,
    pub wrap_keys: Box<dyn FnOnce(Arc<dyn KeyProvider>) -> Arc<dyn KeyProvider> + Send>,
    pub engine: EngineConfig,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            worker: true,
            batch_size: 50,
            visibility: Duration::from_millis(500),
            cache_ttl: Duration::ZERO,
            stalled_after: Duration::from_secs(60),
            allow_aws_keys: false,
            wrap_store: Box::new(|s| s),
            wrap_keys: Box::new(|k| k),
            engine: EngineConfig {
                batch_size: 50,
                concurrency: 8,
                max_attempts: 3,
                retry_backoff: Duration::from_millis(5),
                // Small segments: every job of these tests is planned in several deliveries.
                plan_segment: 2,
                rate_share: 1,
                message_budget: Duration::from_secs(20),
            },
        }
    }
}

pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub cmk: Cmk,
    pub sqlite: Arc<SqliteStore>,
    pub queue: Arc<SqliteQueue>,
    pub keys: Arc<LocalKeyProvider>,
    pub engine: Arc<RewrapEngine>,
    pub dir: tempfile::TempDir,
    stop: watch::Sender<bool>,
    worker: Option<JoinHandle<()>>,
    server: JoinHandle<()>,
}

pub fn token(org: &str, role: Role) -> String {
    issue_token(SECRET, "tester", org, role, Duration::from_secs(600))
}

impl TestApp {
    pub async fn start() -> Self {
        Self::with(Options::default()).await
    }

    pub async fn with(mut opts: Options) -> Self {
        opts.engine.batch_size = opts.batch_size;
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::open(&dir.path().join("cmk.db")).expect("db");
        let sqlite = Arc::new(SqliteStore::new(Arc::clone(&db)));
        let queue = Arc::new(SqliteQueue::new(
            db,
            QueueConfig {
                visibility_timeout: opts.visibility,
                max_receives: 50,
            },
        ));
        let keys = Arc::new(LocalKeyProvider::open(&dir.path().join("keys")).expect("keys"));
        let store = (opts.wrap_store)(StoreParts::from(sqlite.clone()));
        let provider = (opts.wrap_keys)(keys.clone());
        let cmk = Cmk::new(
            store,
            queue.clone() as Arc<dyn RewrapQueue>,
            provider,
            DataKeyCache::new(opts.cache_ttl, 1000),
            ServiceConfig {
                stalled_after: opts.stalled_after,
                allow_aws_keys: opts.allow_aws_keys,
                ..ServiceConfig::default()
            },
        );
        let engine = Arc::new(RewrapEngine::new(cmk.clone(), opts.engine.clone()));
        let (stop, _) = watch::channel(false);
        let app = cmk_http::router(AppState {
            cmk: cmk.clone(),
            auth: Arc::new(Hs256Authenticator::new(SECRET).expect("a 32-byte secret")),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        });
        let mut me = Self {
            base,
            http: reqwest::Client::new(),
            cmk,
            sqlite,
            queue,
            keys,
            engine,
            dir,
            stop,
            worker: None,
            server,
        };
        if opts.worker {
            me.start_worker();
        }
        me
    }

    pub fn start_worker(&mut self) {
        let mut rx = self.stop.subscribe();
        let _ = self.stop.send(false);
        self.worker = Some(tokio::spawn(run_worker(
            Arc::clone(&self.engine),
            WorkerConfig {
                concurrency: 4,
                poll_wait: Duration::from_millis(50),
                sweep_every: Duration::from_millis(500),
                stalled_after: Duration::from_secs(3),
            },
            async move {
                let _ = rx.wait_for(|s| *s).await;
            },
        )));
    }

    /// Kills the worker at once, like a crash: in-flight messages are never acknowledged.
    pub fn kill_worker(&mut self) {
        if let Some(w) = self.worker.take() {
            w.abort();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A request as `role` of `org`; returns status and JSON body (Null when empty).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        org: &str,
        role: Role,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method.parse().expect("method"), self.url(path))
            .bearer_auth(token(org, role));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    pub async fn admin(
        &self,
        method: &str,
        path: &str,
        org: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.call(method, path, org, Role::Admin, body).await
    }

    pub async fn service(
        &self,
        method: &str,
        path: &str,
        org: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.call(method, path, org, Role::Service, body).await
    }

    /// Adds a local key; returns its id.
    pub async fn add_local_key(&self, org: &str, name: &str) -> String {
        let (status, body) = self
            .admin(
                "POST",
                &format!("/v1/orgs/{org}/keys"),
                org,
                Some(json!({"name": name, "type": "local"})),
            )
            .await;
        assert_eq!(status, 201, "add key: {body}");
        body["key"]["id"].as_str().expect("key id").to_owned()
    }

    /// Creates `n` data keys, each with a sample ciphertext: (ciphertext, plaintext).
    pub async fn data_with_samples(&self, org: &str, n: usize) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let (status, body) = self
                .service(
                    "POST",
                    &format!("/v1/orgs/{org}/data-keys"),
                    org,
                    Some(json!({})),
                )
                .await;
            assert_eq!(status, 201, "create data key: {body}");
            let id = body["data_key"]["id"].as_str().expect("id").to_owned();
            let plaintext = format!("secret #{i} of {org}").into_bytes();
            let (status, body) = self
                .service(
                    "POST",
                    &format!("/v1/orgs/{org}/data-keys/{id}/encrypt"),
                    org,
                    Some(json!({"plaintext": B64.encode(&plaintext), "context": {"env": "prod"}})),
                )
                .await;
            assert_eq!(status, 200, "encrypt: {body}");
            out.push((
                body["ciphertext"].as_str().expect("ct").to_owned(),
                plaintext,
            ));
        }
        out
    }

    /// Asserts every sample decrypts to its bytes through the API.
    pub async fn assert_decrypts(&self, org: &str, samples: &[(String, Vec<u8>)]) {
        for (ct, pt) in samples {
            let (status, body) = self
                .service(
                    "POST",
                    &format!("/v1/orgs/{org}/decrypt"),
                    org,
                    Some(json!({"ciphertext": ct, "context": {"env": "prod"}})),
                )
                .await;
            assert_eq!(status, 200, "decrypt: {body}");
            assert_eq!(
                B64.decode(body["plaintext"].as_str().expect("pt"))
                    .expect("b64"),
                *pt,
                "a ciphertext decrypts to the same bytes"
            );
        }
    }

    pub async fn keys(&self, org: &str) -> Value {
        let (status, body) = self
            .admin("GET", &format!("/v1/orgs/{org}/keys"), org, None)
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Waits until the org's job is no longer running; returns it.
    pub async fn wait_job(&self, org: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = self
                .admin("GET", &format!("/v1/orgs/{org}/reencryption"), org, None)
                .await;
            assert_eq!(status, 200, "{body}");
            let job = body["reencryption"].clone();
            if job.is_null() || job["state"] != "running" {
                return job;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job still running: {job}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Checks the invariants that must hold at rest: one default (active), at most one
    /// unfinished job, no disabled key wrapping a data key, counts matching the rows.
    pub async fn assert_invariants(&self, org: &str) {
        let listing = self.keys(org).await;
        let keys = listing["keys"].as_array().expect("keys");
        let defaults: Vec<&Value> = keys.iter().filter(|k| k["default"] == true).collect();
        assert_eq!(defaults.len(), 1, "exactly one default: {listing}");
        assert_eq!(defaults[0]["state"], "active", "the default is active");
        assert_eq!(defaults[0]["id"], listing["default_key_id"]);
        for k in keys {
            if k["state"] == "disabled" {
                assert_eq!(k["data_keys"], 0, "a disabled key wraps no data key: {k}");
            }
        }
        let org_id = cmk_core::model::OrgId::from_trusted(org);
        let snapshot = self.sqlite.load_org(&org_id).await.expect("snapshot");
        for (key, count) in &snapshot.data_key_counts {
            let mut rows = Vec::new();
            for partition in 0..self.sqlite.data_key_partitions() {
                rows.extend(
                    self.sqlite
                        .list_data_keys(&org_id, key, partition, None, None, 1_000_000, None)
                        .await
                        .expect("rows"),
                );
            }
            assert_eq!(
                rows.len() as u64,
                *count,
                "the count of {key} matches its rows"
            );
            let state = keys
                .iter()
                .find(|k| k["id"] == key.as_str())
                .map(|k| k["state"].clone());
            if *count > 0 {
                assert!(
                    matches!(
                        state.as_ref().and_then(|s| s.as_str()),
                        Some("active" | "reencrypting")
                    ),
                    "every data key is wrapped by an active or reencrypting key ({key}: {state:?})"
                );
            }
        }
        if let Some(job) = &snapshot.job {
            assert!(job.done <= job.total, "done never exceeds total");
            if job.state == cmk_core::model::JobState::Completed {
                assert_eq!(job.done, job.total, "done equals total when complete");
            }
        }
    }
}

/// An answer read without any assumption: status, headers, and the body as JSON (a JSON string
/// holding the text when the body is not JSON; Null when empty).
#[derive(Debug)]
pub struct Raw {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Raw {
    /// The `content-type` header, or "".
    pub fn content_type(&self) -> &str {
        self.headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// Asserts a problem+json answer with this status and code; `what` names the request.
    pub fn assert_problem(&self, status: u16, code: &str, what: &str) {
        assert!(
            self.status < 500,
            "{what}: never a 5xx, got {} {}",
            self.status,
            self.body
        );
        assert_eq!(
            (self.status, self.body["code"].as_str()),
            (status, Some(code)),
            "{what}: expected {status} {code}, got {}",
            self.body
        );
        assert!(
            self.content_type().starts_with("application/problem+json"),
            "{what}: the body is application/problem+json, got {:?}",
            self.content_type()
        );
        assert_eq!(
            self.body["status"],
            u64::from(status),
            "{what}: the problem's status is the HTTP status: {}",
            self.body
        );
    }
}

impl TestApp {
    /// Sends any request: `token` goes in `Authorization: Bearer` when given, `content_type` in
    /// the header when given, `body` as raw bytes.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Raw {
        let mut req = self
            .http
            .request(method.parse().expect("method"), self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(ct) = content_type {
            req = req.header(reqwest::header::CONTENT_TYPE, ct);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Raw {
            status,
            headers,
            body,
        }
    }

    /// What an admin can observe of an org: its keys listing (states, default, counts of data
    /// keys, job) and its audit trail. A refused request must leave it identical.
    pub async fn observe(&self, org: &str) -> Value {
        let keys = self.keys(org).await;
        let (status, audit) = self
            .admin("GET", &format!("/v1/orgs/{org}/audit?limit=500"), org, None)
            .await;
        assert_eq!(status, 200, "{audit}");
        json!({"keys": keys, "audit": audit})
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(w) = self.worker.take() {
            w.abort();
        }
        self.server.abort();
    }
}
