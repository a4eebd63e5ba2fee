//! Counts AWS calls at the SDK (an interceptor on each client), for the efficiency figures of
//! `cmk bench rewrap --backend aws`: calls per operation, and items per DynamoDB write.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents, SharedInterceptor};
use aws_sdk_dynamodb::error::BoxError;

/// Calls seen, by `Service.Operation`, plus DynamoDB items written.
#[derive(Debug, Default)]
pub struct CallCounter {
    inner: Mutex<Counts>,
}

/// A snapshot of the counts.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    pub calls: BTreeMap<String, u64>,
    /// Items written by DynamoDB write calls (a transaction counts each of its items).
    pub dynamodb_items_written: u64,
}

impl Counts {
    pub fn get(&self, op: &str) -> u64 {
        self.calls.get(op).copied().unwrap_or(0)
    }

    /// Calls of one service.
    pub fn service(&self, service: &str) -> u64 {
        self.calls
            .iter()
            .filter(|(k, _)| k.split('.').next() == Some(service))
            .map(|(_, v)| v)
            .sum()
    }

    /// DynamoDB write requests (API calls that write).
    pub fn dynamodb_writes(&self) -> u64 {
        [
            "TransactWriteItems",
            "PutItem",
            "UpdateItem",
            "DeleteItem",
            "BatchWriteItem",
        ]
        .iter()
        .map(|op| self.get(&format!("DynamoDB.{op}")))
        .sum()
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Counts) -> Counts {
        Counts {
            calls: self
                .calls
                .iter()
                .map(|(k, v)| (k.clone(), v - earlier.get(k)))
                .collect(),
            dynamodb_items_written: self.dynamodb_items_written - earlier.dynamodb_items_written,
        }
    }
}

impl CallCounter {
    pub fn snapshot(&self) -> Counts {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// An interceptor that counts the calls of one client as `service`.
    pub fn interceptor(self: &Arc<Self>, service: &'static str) -> SharedInterceptor {
        SharedInterceptor::new(Counting {
            service,
            counter: Arc::clone(self),
        })
    }
}

#[derive(Debug)]
struct Counting {
    service: &'static str,
    counter: Arc<CallCounter>,
}

/// Items a DynamoDB write request writes, from its JSON body.
fn items_written(operation: &str, body: Option<&[u8]>) -> u64 {
    let Some(body) = body else { return 0 };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return 0;
    };
    match operation {
        "TransactWriteItems" => v["TransactItems"].as_array().map_or(0, |items| {
            items
                .iter()
                .filter(|i| i.get("ConditionCheck").is_none())
                .count() as u64
        }),
        "BatchWriteItem" => v["RequestItems"].as_object().map_or(0, |t| {
            t.values()
                .filter_map(|r| r.as_array())
                .map(|r| r.len() as u64)
                .sum()
        }),
        "PutItem" | "UpdateItem" | "DeleteItem" => 1,
        _ => 0,
    }
}

impl Intercept for Counting {
    fn name(&self) -> &'static str {
        "cmk-call-counter"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let request = context.request();
        // JSON protocols name the operation in X-Amz-Target (`DynamoDB_20120810.PutItem`).
        let operation = request
            .headers()
            .get("x-amz-target")
            .and_then(|t| t.rsplit('.').next())
            .unwrap_or("call")
            .to_owned();
        let written = if self.service == "DynamoDB" {
            items_written(&operation, request.body().bytes())
        } else {
            0
        };
        let mut counts = self.counter.inner.lock().unwrap_or_else(|e| e.into_inner());
        *counts
            .calls
            .entry(format!("{}.{operation}", self.service))
            .or_default() += 1;
        counts.dynamodb_items_written += written;
        Ok(())
    }
}
