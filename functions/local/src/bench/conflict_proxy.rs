//! A loopback proxy in front of an AWS emulator that makes DynamoDB's transaction conflicts
//! happen. Real DynamoDB cancels a `TransactWriteItems` that touches an item another
//! transaction is writing (reason `TransactionConflict`), and refuses a single-item write to
//! such an item (`TransactionConflictException`). The emulator runs one operation at a time
//! and never does either, so a design whose transactions all write one item looks fine on it.
//!
//! The proxy holds every item of a transaction from the request's arrival until its answer
//! (after `hold`, DynamoDB's own time to commit, and the emulator's), and answers a request
//! that touches a held item as DynamoDB would. With conflicts off it still counts the
//! transactions that would have collided, so a run can be compared with and without them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// DynamoDB's JSON protocol content type.
const AMZ_JSON: &str = "application/x-amz-json-1.0";
/// The largest request or answer the proxy passes (DynamoDB's own limit is 16 MB).
const MAX_BODY: usize = 32 << 20;

/// What the proxy saw, since it started or since [`ConflictProxy::reset`].
#[derive(Clone, Debug, Default)]
pub struct ProxyStats {
    /// Transactions passed to the emulator.
    pub transactions: u64,
    /// Transactions that touched an item another one held (cancelled when conflicts are on).
    pub collisions: u64,
    /// Single-item writes refused because a transaction held their item.
    pub refused_writes: u64,
    /// The sum of every passed transaction's time in flight (its items held).
    pub busy: Duration,
    /// The item most collided on, and how often.
    pub hottest: Option<(String, u64)>,
}

#[derive(Debug)]
struct Shared {
    upstream: String,
    client: reqwest::Client,
    hold: Duration,
    conflicts: AtomicBool,
    /// Batch commits still to cancel as if their first item (the progress shard) were held.
    forced: AtomicU64,
    /// Items held by transactions in flight: (table, key as JSON) → holders.
    held: Mutex<HashMap<(String, String), u32>>,
    transactions: AtomicU64,
    collisions: AtomicU64,
    refused_writes: AtomicU64,
    busy_micros: AtomicU64,
    /// Collisions per item (its key).
    collided_on: Mutex<HashMap<String, u64>>,
}

/// The running proxy; it stops when dropped.
#[derive(Debug)]
pub struct ConflictProxy {
    pub url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ConflictProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ConflictProxy {
    /// Starts a proxy to `upstream` on a free loopback port.
    pub async fn start(upstream: &str, hold: Duration) -> Result<Self> {
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_owned(),
            client: reqwest::Client::new(),
            hold,
            conflicts: AtomicBool::new(true),
            forced: AtomicU64::new(0),
            held: Mutex::default(),
            transactions: AtomicU64::new(0),
            collisions: AtomicU64::new(0),
            refused_writes: AtomicU64::new(0),
            busy_micros: AtomicU64::new(0),
            collided_on: Mutex::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot bind the conflict proxy")?;
        let url = format!("http://{}", listener.local_addr()?);
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { url, shared, task })
    }

    /// Whether overlapping writes fail (on) or only get counted (off).
    pub fn set_conflicts(&self, on: bool) {
        self.shared.conflicts.store(on, Ordering::SeqCst);
    }

    /// Cancels the next `n` re-encryption batch commits (transactions that move data keys) with
    /// a `TransactionConflict` on their progress shard, whatever else is in flight: a collision
    /// on demand, for tests of what the store does with one.
    #[cfg(test)]
    pub fn force_batch_conflicts(&self, n: u64) {
        self.shared.forced.store(n, Ordering::SeqCst);
    }

    pub fn stats(&self) -> ProxyStats {
        let s = &self.shared;
        ProxyStats {
            transactions: s.transactions.load(Ordering::SeqCst),
            collisions: s.collisions.load(Ordering::SeqCst),
            refused_writes: s.refused_writes.load(Ordering::SeqCst),
            busy: Duration::from_micros(s.busy_micros.load(Ordering::SeqCst)),
            hottest: lock(&s.collided_on)
                .iter()
                .max_by_key(|(_, n)| **n)
                .map(|(item, n)| (item.clone(), *n)),
        }
    }

    pub fn reset(&self) {
        let s = &self.shared;
        for counter in [
            &s.transactions,
            &s.collisions,
            &s.refused_writes,
            &s.busy_micros,
        ] {
            counter.store(0, Ordering::SeqCst);
        }
        lock(&s.collided_on).clear();
    }
}

/// The (table, key) of every item a `TransactWriteItems` request writes or checks.
fn transaction_items(body: &Value) -> Vec<(String, String)> {
    let mut items = Vec::new();
    for entry in body["TransactItems"].as_array().into_iter().flatten() {
        let Some((op, spec)) = entry.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        let key = if op == "Put" {
            &spec["Item"]
        } else {
            &spec["Key"]
        };
        items.push((
            spec["TableName"].as_str().unwrap_or_default().to_owned(),
            key_of(key),
        ));
    }
    items
}

/// The (table, key) of a single-item write.
fn written_item(body: &Value) -> (String, String) {
    let key = body.get("Key").unwrap_or(&body["Item"]);
    (
        body["TableName"].as_str().unwrap_or_default().to_owned(),
        key_of(key),
    )
}

/// An item's identity from its key attributes (this service's table: `pk`, `sk`).
fn key_of(attributes: &Value) -> String {
    format!("{}\u{1f}{}", attributes["pk"], attributes["sk"])
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn dynamodb_error(kind: &str, body: Value) -> Response {
    let mut body = body;
    body["__type"] = json!(format!("com.amazonaws.dynamodb.v20120810#{kind}"));
    (
        StatusCode::BAD_REQUEST,
        [("content-type", AMZ_JSON)],
        body.to_string(),
    )
        .into_response()
}

impl Shared {
    /// Holds a transaction's items, or answers as DynamoDB does when another holds one of
    /// them (with conflicts on; off, the collision is only counted).
    fn take(&self, items: &[(String, String)], conflicts: bool) -> Option<Response> {
        let mut held = lock(&self.held);
        let batch_commit = items.iter().any(|(_, key)| key.contains("\"DK#"))
            && items.iter().any(|(_, key)| key.contains("\"PROG#"));
        let forced = batch_commit
            && self
                .forced
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        let is_held =
            |i: usize, item: &(String, String)| held.contains_key(item) || (forced && i == 0);
        let reasons: Vec<Value> = items
            .iter()
            .enumerate()
            .map(|(i, item)| match is_held(i, item) {
                true => json!({"Code": "TransactionConflict",
                    "Message": "Transaction is ongoing for the item"}),
                false => json!({"Code": "None"}),
            })
            .collect();
        let collided = reasons.iter().any(|r| r["Code"] == "TransactionConflict");
        if collided {
            self.collisions.fetch_add(1, Ordering::SeqCst);
            let mut collided_on = lock(&self.collided_on);
            for (_, item) in items
                .iter()
                .enumerate()
                .filter(|(i, item)| is_held(*i, item))
            {
                *collided_on.entry(item.1.clone()).or_default() += 1;
            }
        }
        if collided && (conflicts || forced) {
            let codes: Vec<&str> = reasons
                .iter()
                .map(|r| r["Code"].as_str().unwrap_or("None"))
                .collect();
            return Some(dynamodb_error(
                "TransactionCanceledException",
                json!({
                    "Message": format!(
                        "Transaction cancelled, please refer cancellation reasons for specific reasons [{}]",
                        codes.join(", ")
                    ),
                    "CancellationReasons": reasons,
                }),
            ));
        }
        for item in items {
            *held.entry(item.clone()).or_default() += 1;
        }
        None
    }
}

/// Releases a transaction's items when its answer is ready (or the request is dropped).
struct Holding<'a> {
    shared: &'a Shared,
    items: Vec<(String, String)>,
    since: Instant,
}

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        let mut held = lock(&self.shared.held);
        for item in &self.items {
            if let Some(n) = held.get_mut(item) {
                *n -= 1;
                if *n == 0 {
                    held.remove(item);
                }
            }
        }
        self.shared
            .busy_micros
            .fetch_add(self.since.elapsed().as_micros() as u64, Ordering::SeqCst);
    }
}

async fn forward(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = to_bytes(body, MAX_BODY).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|t| t.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let operation = target.rsplit('.').next().unwrap_or_default();
    let conflicts = shared.conflicts.load(Ordering::SeqCst);
    let mut holding = None;
    if target.starts_with("DynamoDB_") {
        let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        match operation {
            "TransactWriteItems" => {
                let items = transaction_items(&parsed);
                if let Some(refusal) = shared.take(&items, conflicts) {
                    return refusal;
                }
                shared.transactions.fetch_add(1, Ordering::SeqCst);
                holding = Some(Holding {
                    shared: &shared,
                    items,
                    since: Instant::now(),
                });
                tokio::time::sleep(shared.hold).await;
            }
            "PutItem" | "UpdateItem" | "DeleteItem" => {
                let item = written_item(&parsed);
                let busy = lock(&shared.held).contains_key(&item);
                if busy && conflicts {
                    shared.refused_writes.fetch_add(1, Ordering::SeqCst);
                    return dynamodb_error(
                        "TransactionConflictException",
                        json!({"message": "Transaction is ongoing for the item"}),
                    );
                }
            }
            _ => {}
        }
    }
    let url = format!(
        "{}{}",
        shared.upstream,
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut headers = HeaderMap::new();
    for (name, value) in &parts.headers {
        if !matches!(name.as_str(), "host" | "content-length" | "connection") {
            headers.insert(name.clone(), value.clone());
        }
    }
    let answer = shared
        .client
        .request(parts.method, url)
        .headers(headers)
        .body(body)
        .send()
        .await;
    let response = match answer {
        Ok(answer) => {
            let status = answer.status();
            let mut headers = HeaderMap::new();
            for (name, value) in answer.headers() {
                if !matches!(
                    name.as_str(),
                    "content-length" | "transfer-encoding" | "connection"
                ) {
                    headers.insert(name.clone(), value.clone());
                }
            }
            match answer.bytes().await {
                Ok(bytes) => (status, headers, Body::from(bytes)).into_response(),
                Err(_) => StatusCode::BAD_GATEWAY.into_response(),
            }
        }
        Err(_) => {
            let mut response = StatusCode::BAD_GATEWAY.into_response();
            response
                .headers_mut()
                .insert("content-type", HeaderValue::from_static("text/plain"));
            response
        }
    };
    drop(holding);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_items_name_every_key() {
        let body = json!({"TransactItems": [
            {"Update": {"TableName": "t", "Key": {"pk": {"S": "ORG#a"}, "sk": {"S": "JOB#1"}}}},
            {"Put": {"TableName": "t", "Item": {"pk": {"S": "DK#a#1"}, "sk": {"S": "DK"}, "v": {"N": "1"}}}},
            {"ConditionCheck": {"TableName": "t", "Key": {"pk": {"S": "ORG#a"}, "sk": {"S": "#HEAD"}}}},
        ]});
        let items = transaction_items(&body);
        assert_eq!(items.len(), 3);
        assert_eq!(
            items[1],
            (
                "t".to_owned(),
                key_of(&json!({"pk": {"S": "DK#a#1"}, "sk": {"S": "DK"}}))
            )
        );
        assert_eq!(
            written_item(
                &json!({"TableName": "t", "Key": {"pk": {"S": "ORG#a"}, "sk": {"S": "JOB#1"}}})
            ),
            items[0]
        );
    }
}
