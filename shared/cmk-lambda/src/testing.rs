//! For tests that run a function's real binary as Lambda runs it (feature `testing`): a stand-in
//! for the Lambda Runtime API on loopback hands the binary one event at a time and records its
//! answer, and the `events/` fixtures are at hand.

#![allow(clippy::expect_used)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;
use tokio::sync::Notify;

/// The function binary a test runs: the one cargo built for the test (`built`), or, when
/// `CMK_BOOTSTRAP_DIR` is set, the packaged `<dir>/<bin>/bootstrap` (what `scripts/package`
/// builds with cargo-lambda, as Lambda will run it).
pub fn function_binary(built: &str, bin: &str) -> String {
    match std::env::var_os("CMK_BOOTSTRAP_DIR") {
        Some(dir) => std::path::Path::new(&dir)
            .join(bin)
            .join("bootstrap")
            .display()
            .to_string(),
        None => built.to_owned(),
    }
}

/// A fixture of the repository's `events/` directory, e.g. `keys-read/page.json`.
pub fn fixture(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../events")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// What the function answered to one event.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// `POST /runtime/invocation/{id}/response`
    Response(Value),
    /// `POST /runtime/invocation/{id}/error`
    Error(Value),
}

#[derive(Default)]
struct Shared {
    pending: Mutex<VecDeque<(String, Value)>>,
    ready: Notify,
    answers: Mutex<HashMap<String, Outcome>>,
    answered: Notify,
}

/// The Runtime API stand-in, and the function process it serves (killed when dropped).
pub struct FakeRuntime {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
    child: Option<Child>,
    next_id: u64,
}

impl std::fmt::Debug for FakeRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeRuntime")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for FakeRuntime {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.server.abort();
    }
}

async fn next(State(shared): State<Arc<Shared>>) -> Response {
    loop {
        let item = shared.pending.lock().expect("lock").pop_front();
        if let Some((id, event)) = item {
            let deadline = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis()
                + 60_000;
            let mut headers = HeaderMap::new();
            let mut set = |name: &'static str, value: String| {
                headers.insert(name, HeaderValue::from_str(&value).expect("header"));
            };
            set("lambda-runtime-aws-request-id", id);
            set("lambda-runtime-deadline-ms", deadline.to_string());
            set(
                "lambda-runtime-invoked-function-arn",
                "arn:aws:lambda:us-east-1:123456789012:function:cmk-test".into(),
            );
            set(
                "lambda-runtime-trace-id",
                "Root=1-67d1d9ae-000000000000000000000001;Parent=0000000000000001;Sampled=0".into(),
            );
            return (StatusCode::OK, headers, Json(event)).into_response();
        }
        shared.ready.notified().await;
    }
}

/// The body the function posted (the runtime client may send no content type).
fn body_json(body: &Bytes) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

fn answer(shared: &Shared, id: String, outcome: Outcome) -> StatusCode {
    shared.answers.lock().expect("lock").insert(id, outcome);
    shared.answered.notify_waiters();
    StatusCode::ACCEPTED
}

async fn respond(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> StatusCode {
    answer(&shared, id, Outcome::Response(body_json(&body)))
}

async fn fail(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> StatusCode {
    answer(&shared, id, Outcome::Error(body_json(&body)))
}

impl FakeRuntime {
    /// Listens on a free loopback port.
    pub async fn start() -> Self {
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(respond),
            )
            .route("/2018-06-01/runtime/invocation/{id}/error", post(fail))
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            shared,
            server,
            child: None,
            next_id: 0,
        }
    }

    /// The environment Lambda gives a function, pointed at this Runtime API, with the service's
    /// variables set to an AWS endpoint where nothing listens (any AWS call fails at once).
    pub fn function_env(&self) -> Vec<(String, String)> {
        [
            ("AWS_LAMBDA_RUNTIME_API", self.addr.to_string()),
            ("AWS_LAMBDA_FUNCTION_NAME", "cmk-test".into()),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256".into()),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
            ("AWS_LAMBDA_LOG_FORMAT", "JSON".into()),
            ("AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH", "true".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ("AWS_MAX_ATTEMPTS", "1".into()),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9".into()),
            ("CMK_TABLE", "cmk-offline".into()),
            (
                "CMK_QUEUE_URL",
                "http://127.0.0.1:9/123456789012/cmk-offline".into(),
            ),
            (
                "CMK_SERVICE_KEY_ID",
                "arn:aws:kms:us-east-1:123456789012:key/cmk-offline".into(),
            ),
            (
                "CMK_SERVICE_PRINCIPAL",
                "arn:aws:iam::123456789012:root".into(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Starts `binary` with exactly `env` (plus `PATH`), as its Lambda would.
    pub fn spawn(&mut self, binary: &str, env: &[(String, String)]) {
        let child = Command::new(binary)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the function");
        self.child = Some(child);
    }

    /// Hands the function `event` and waits for its answer.
    pub async fn invoke(&mut self, event: Value) -> Outcome {
        self.next_id += 1;
        let id = format!("00000000-0000-4000-8000-{:012}", self.next_id);
        self.shared
            .pending
            .lock()
            .expect("lock")
            .push_back((id.clone(), event));
        self.shared.ready.notify_one();
        let wait = async {
            loop {
                let answered = self.shared.answered.notified();
                if let Some(outcome) = self.shared.answers.lock().expect("lock").remove(&id) {
                    return outcome;
                }
                answered.await;
            }
        };
        match tokio::time::timeout(Duration::from_secs(30), wait).await {
            Ok(outcome) => outcome,
            Err(_) => {
                let exited = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                panic!("the function did not answer in 30 s (exited: {exited:?})")
            }
        }
    }
}
