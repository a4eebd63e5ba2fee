//! The local worker: polls the queue and hands each message to the [`RewrapEngine`], with a
//! periodic sweep for stalled jobs; and beside it the continuous key health checks
//! ([`run_health_checks`]). On AWS the worker Lambda does the same per SQS batch and per
//! scheduled sweep (`cmk-lambda`), with the same engine and checks.

use std::sync::Arc;
use std::time::Duration;

use crate::engine::RewrapEngine;
use crate::health::HealthCheckConfig;
use crate::Cmk;

/// Settings of [`run_worker`].
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Messages handled at once.
    pub concurrency: usize,
    /// How long one receive waits for a message.
    pub poll_wait: Duration,
    /// How often to look for stalled jobs.
    pub sweep_every: Duration,
    /// A running job with no progress for this long is re-planned.
    pub stalled_after: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 4,
            poll_wait: Duration::from_secs(1),
            sweep_every: Duration::from_secs(15),
            stalled_after: Duration::from_secs(60),
        }
    }
}

/// Polls the queue and handles messages until `shutdown` resolves, then finishes what is in
/// flight. A message is acknowledged only after it was handled; one that fails is left for the
/// queue to redeliver.
pub async fn run_worker(
    engine: Arc<RewrapEngine>,
    config: WorkerConfig,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let queue = Arc::clone(engine.cmk().queue());
    let semaphore = Arc::new(tokio::sync::Semaphore::new(config.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut last_sweep = tokio::time::Instant::now();
    tokio::pin!(shutdown);
    loop {
        let available = semaphore.available_permits();
        let receive = async {
            if available == 0 {
                // Wait for a slot instead of spinning.
                let permit = Arc::clone(&semaphore).acquire_owned().await;
                drop(permit);
                Ok(Vec::new())
            } else {
                queue.receive(available, config.poll_wait).await
            }
        };
        let deliveries = tokio::select! {
            _ = &mut shutdown => break,
            r = receive => r,
        };
        match deliveries {
            Ok(deliveries) => {
                for delivery in deliveries {
                    let Ok(permit) = Arc::clone(&semaphore).acquire_owned().await else {
                        break;
                    };
                    let engine = Arc::clone(&engine);
                    let queue = Arc::clone(&queue);
                    tasks.spawn(async move {
                        let _permit = permit;
                        match engine.handle(&delivery.body).await {
                            Ok(()) => {
                                if let Err(e) = queue.ack(&delivery.receipt).await {
                                    tracing::warn!(error = %e, "ack failed; the message will be redelivered");
                                }
                            }
                            Err(e) => tracing::warn!(
                                error = %e,
                                receive_count = delivery.receive_count,
                                "rewrap message failed; it will be redelivered"
                            ),
                        }
                    });
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "queue receive failed");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        while tasks.try_join_next().is_some() {}
        if last_sweep.elapsed() >= config.sweep_every {
            last_sweep = tokio::time::Instant::now();
            if let Err(e) = engine.sweep(config.stalled_after).await {
                tracing::warn!(error = %e, "stalled-job sweep failed");
            }
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// Runs a health-check run at start and then every `every` until `shutdown` resolves (a run in
/// progress is dropped then: each check records itself, and what was not checked stays due).
pub async fn run_health_checks(
    cmk: Cmk,
    config: HealthCheckConfig,
    every: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let runs = async {
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match cmk.check_due_keys(&config).await {
                Ok(run) if run.checked + run.skipped > 0 => tracing::info!(
                    checked = run.checked,
                    changed = run.changed,
                    skipped = run.skipped,
                    "key health checks done"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "key health checks failed"),
            }
        }
    };
    tokio::select! {
        _ = shutdown => {}
        () = runs => {}
    }
}
