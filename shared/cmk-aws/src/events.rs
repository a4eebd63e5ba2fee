//! The EventBridge [`EventPublisher`]: `PutEvents` on one bus (the default bus in the
//! template), source `cmk`, up to 10 entries per call. One attempt plus the SDK's own retries:
//! an event that still fails is logged and counted (`cmk_events_total{outcome="failed"}`), and
//! the change it describes stands (the audit trail has it).

use async_trait::async_trait;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use aws_sdk_eventbridge::Client;
use cmk_core::error::EventError;
use cmk_core::events::{ServiceEvent, SOURCE};
use cmk_core::metrics;
use cmk_core::ports::EventPublisher;

use crate::describe;

/// Entries per `PutEvents` call (the API's limit).
const ENTRIES_PER_CALL: usize = 10;

#[derive(Clone, Debug)]
pub struct EventBridgePublisher {
    client: Client,
    bus: String,
}

impl EventBridgePublisher {
    pub fn new(client: Client, bus: impl Into<String>) -> Self {
        Self {
            client,
            bus: bus.into(),
        }
    }
}

#[async_trait]
impl EventPublisher for EventBridgePublisher {
    async fn publish(&self, events: &[ServiceEvent]) -> Result<(), EventError> {
        let mut failures = Vec::new();
        for chunk in events.chunks(ENTRIES_PER_CALL) {
            let entries = chunk
                .iter()
                .map(|e| {
                    PutEventsRequestEntry::builder()
                        .event_bus_name(&self.bus)
                        .source(SOURCE)
                        .detail_type(e.detail_type)
                        .detail(e.detail.to_string())
                        .time(aws_sdk_eventbridge::primitives::DateTime::from_millis(
                            e.time.timestamp_millis(),
                        ))
                        .build()
                })
                .collect();
            let n = chunk.len() as u64;
            match self
                .client
                .put_events()
                .set_entries(Some(entries))
                .send()
                .await
            {
                Ok(out) => {
                    let failed = u64::try_from(out.failed_entry_count()).unwrap_or(0).min(n);
                    metrics::events("sent", n - failed);
                    if failed > 0 {
                        metrics::events("failed", failed);
                        let codes: Vec<&str> = out
                            .entries()
                            .iter()
                            .filter_map(|e| e.error_code())
                            .collect();
                        failures.push(format!("{failed} of {n} refused ({})", codes.join(", ")));
                    }
                }
                Err(e) => {
                    metrics::events("failed", n);
                    failures.push(describe(&e));
                }
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(EventError(format!(
                "EventBridge bus {}: {}",
                self.bus,
                failures.join("; ")
            )))
        }
    }
}
