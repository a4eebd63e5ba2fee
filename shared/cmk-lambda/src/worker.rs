//! The `rewrap-worker` function: the SQS-triggered re-encryption worker, and the scheduled sweep
//! that re-plans stalled jobs.
//!
//! Each SQS record is parsed on its own and handed to [`RewrapEngine::handle`]; records are
//! handled concurrently, each in a span with its message id. The answer is an
//! [`SqsBatchResponse`] that names only the messages whose handling failed, so SQS deletes the
//! others and redelivers those (after `maxReceiveCount` deliveries they go to the dead-letter
//! queue, and the sweep re-plans their job). This needs `ReportBatchItemFailures` on the event
//! source mapping; without it Lambda ignores the answer.
//!
//! An EventBridge scheduled event (`source` = `aws.events`) runs [`RewrapEngine::sweep`]
//! instead: it re-plans running jobs that made no progress, e.g. because a message was lost.
//! Then it runs the continuous key health checks ([`cmk_core::health`]) for the keys that are
//! due.

use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsMessage};
use cmk_core::engine::{EngineConfig, RewrapEngine};
use cmk_core::health::HealthCheckConfig;
use futures::stream::{self, StreamExt};
use lambda_runtime::{Error, LambdaEvent};
use serde_json::Value;
use tracing::Instrument;

use crate::config::WorkerSettings;

/// The worker's binary (`[[bin]]` of `functions/rewrap-worker`, `Binary` in the template).
pub const BINARY: &str = "cmk-rewrap-worker";

/// What went wrong with one record.
#[derive(Debug)]
enum RecordError {
    /// Cannot be attributed to a message id: the whole batch must fail.
    Unattributable(String),
    /// This message must be redelivered.
    Failed(String),
}

/// The worker's handler, built once per cold start.
#[derive(Clone, Debug)]
pub struct Worker {
    engine: RewrapEngine,
    concurrency: usize,
    stalled_after: Duration,
    /// The key health checks the scheduled sweep runs; `None`: turned off.
    health_checks: Option<HealthCheckConfig>,
}

impl Worker {
    pub fn new(engine: RewrapEngine, concurrency: usize, stalled_after: Duration) -> Self {
        Self {
            engine,
            concurrency: concurrency.max(1),
            stalled_after,
            health_checks: None,
        }
    }

    /// Runs these key health checks after each scheduled sweep.
    pub fn with_health_checks(mut self, config: Option<HealthCheckConfig>) -> Self {
        self.health_checks = config;
        self
    }

    /// Handles one invocation: an SQS batch, or a scheduled sweep.
    pub async fn handle(&self, event: LambdaEvent<Value>) -> Result<SqsBatchResponse, Error> {
        let payload = event.payload;
        if let Some(records) = payload.get("Records") {
            let records = records
                .as_array()
                .ok_or("the SQS event's Records is not a list")?;
            return self.batch(records).await;
        }
        if payload.get("source").and_then(Value::as_str) == Some("aws.events") {
            let replanned = self.engine.sweep(self.stalled_after).await;
            if let Ok(replanned) = replanned {
                tracing::info!(replanned, "stalled-job sweep done");
            }
            if let Some(config) = &self.health_checks {
                let run = self.engine.cmk().check_due_keys(config).await?;
                tracing::info!(
                    checked = run.checked,
                    changed = run.changed,
                    skipped = run.skipped,
                    "key health checks done"
                );
            }
            replanned?;
            return Ok(SqsBatchResponse::default());
        }
        Err("expected an SQS event or an EventBridge scheduled event".into())
    }

    async fn batch(&self, records: &[Value]) -> Result<SqsBatchResponse, Error> {
        let results: Vec<Result<(), RecordError>> = stream::iter(records)
            .map(|record| self.record(record))
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        let mut response = SqsBatchResponse::default();
        for result in results {
            match result {
                Ok(()) => {}
                Err(RecordError::Failed(id)) => response.add_failure(id),
                Err(RecordError::Unattributable(why)) => {
                    // Lambda retries the whole batch; handling a message twice is harmless.
                    return Err(format!("failing the whole batch: {why}").into());
                }
            }
        }
        if !response.batch_item_failures.is_empty() {
            tracing::warn!(
                failed = response.batch_item_failures.len(),
                of = records.len(),
                "some rewrap messages failed; SQS will redeliver them"
            );
        }
        Ok(response)
    }

    async fn record(&self, record: &Value) -> Result<(), RecordError> {
        let id = record
            .get("messageId")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
            .map(str::to_owned);
        let span = tracing::info_span!(
            "rewrap_message",
            message_id = id.as_deref().unwrap_or("<none>")
        );
        let failed = |why: String| match &id {
            Some(id) => RecordError::Failed(id.clone()),
            None => RecordError::Unattributable(format!("a record without a message id: {why}")),
        };
        async {
            let message: SqsMessage = match serde_json::from_value(record.clone()) {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(error = %e, "an SQS record that cannot be read");
                    return Err(failed(e.to_string()));
                }
            };
            let Some(body) = message.body.as_deref() else {
                // Nothing could ever make it succeed: acknowledge it (SQS never sends this).
                tracing::error!("dropping an SQS message without a body");
                return Ok(());
            };
            let receive_count = message
                .attributes
                .get("ApproximateReceiveCount")
                .map_or("?", String::as_str);
            match self.engine.handle(body).await {
                Ok(()) => Ok(()),
                Err(e) => {
                    tracing::warn!(error = %e, receive_count, "rewrap message failed");
                    Err(failed(e.to_string()))
                }
            }
        }
        .instrument(span)
        .await
    }
}

/// The engine of the worker, from its settings.
pub fn engine(cmk: cmk_core::Cmk, settings: &WorkerSettings) -> RewrapEngine {
    RewrapEngine::new(
        cmk,
        EngineConfig {
            batch_size: settings.batch_size,
            rate_share: settings.max_instances,
            ..EngineConfig::default()
        },
    )
}

/// The `main` of the worker: configuration, SDK clients (once per cold start, no AWS call),
/// then the Lambda runtime.
pub async fn run() -> Result<(), Error> {
    crate::init_tracing();
    let settings = WorkerSettings::from_env().map_err(|e| {
        tracing::error!(error = %e, "invalid configuration; the function cannot start");
        e.to_string()
    })?;
    let config = cmk_aws::backend::sdk_config(settings.aws.endpoint_url.as_deref()).await;
    let backend = cmk_aws::backend::build(&config, &settings.aws);
    let worker = Worker::new(
        engine(backend.cmk, &settings),
        settings.concurrency,
        settings.stalled_after,
    )
    .with_health_checks(settings.health_checks.clone());
    tracing::info!(table = %settings.aws.table, queue = %settings.aws.queue_url, "starting");
    let worker = &worker;
    crate::emf::install("rewrap-worker");
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: LambdaEvent<Value>| async move {
            let orgs = orgs_of_batch(&event.payload);
            let answer = worker.handle(event).await;
            crate::emf::flush(&orgs); // the batch's metrics, as EMF lines
            answer
        },
    ))
    .await
}

/// The orgs an SQS batch's messages name, sorted and once each: the EMF documents' `org`
/// property. Empty for a scheduled sweep.
fn orgs_of_batch(payload: &Value) -> Vec<String> {
    let mut orgs: Vec<String> = payload
        .get("Records")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| r.get("body").and_then(Value::as_str))
        .filter_map(|body| serde_json::from_str::<Value>(body).ok())
        .filter_map(|m| m.get("org").and_then(Value::as_str).map(str::to_owned))
        .collect();
    orgs.sort();
    orgs.dedup();
    orgs
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn a_batch_names_each_org_of_its_messages_once() {
        let body = |org: &str| {
            json!({"type": "plan", "org": org, "job_id": "j", "generation": 1}).to_string()
        };
        let batch = json!({"Records": [
            {"messageId": "1", "body": body("globex")},
            {"messageId": "2", "body": body("acme")},
            {"messageId": "3", "body": body("acme")},
            {"messageId": "4", "body": "not json"},
        ]});
        assert_eq!(super::orgs_of_batch(&batch), ["acme", "globex"]);
        assert!(super::orgs_of_batch(&json!({"source": "aws.events"})).is_empty());
    }
}
