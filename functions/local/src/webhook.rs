//! The local [`EventPublisher`]: each [`ServiceEvent`] is POSTed, as JSON in EventBridge's
//! envelope, to the `--webhook-url` of `cmk serve`.
//!
//! - **Signed.** `Cmk-Signature: sha256=<hex>` is the HMAC-SHA256 of the exact body, keyed with
//!   the text of `webhook.secret` in the data directory (made on first use, owner-only). A
//!   receiver recomputes it over the raw body and compares in constant time; the body's `id`
//!   tells a redelivery from a new event.
//! - **Queued, bounded.** Publishing only queues (up to [`WebhookConfig::capacity`] events): a
//!   slow or absent receiver never slows a request or a job. When the queue is full the event
//!   is dropped, logged and counted (`cmk_events_total{outcome="dropped"}`).
//! - **Retried.** One delivery at a time, in order. A connection failure, a timeout, a 5xx,
//!   408 or 429 is retried with exponential backoff (from [`WebhookConfig::first_backoff`],
//!   doubling, with jitter) up to [`WebhookConfig::attempts`] times; any other 4xx is final.
//!   An event given up on is logged and counted as `failed`.
//! - **https** except to a loopback address: events name orgs and keys.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use async_trait::async_trait;
use cmk_core::error::EventError;
use cmk_core::events::ServiceEvent;
use cmk_core::metrics;
use cmk_core::ports::EventPublisher;
use hmac::{Hmac, KeyInit, Mac};
use rand::Rng;
use sha2::Sha256;
use tokio::sync::mpsc;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "cmk-signature";

/// Settings of the webhook.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// Events queued at most; more are dropped.
    pub capacity: usize,
    /// Tries per event.
    pub attempts: u32,
    /// The wait after the first failed try; doubles per try, up to 30 s.
    pub first_backoff: Duration,
    /// How long one try may take.
    pub timeout: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            capacity: 1_000,
            attempts: 6,
            first_backoff: Duration::from_millis(500),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Posts events to one URL; see the module docs.
#[derive(Debug)]
pub struct Webhook {
    queue: mpsc::Sender<ServiceEvent>,
    /// Events queued or being delivered.
    pending: Arc<AtomicUsize>,
}

impl Webhook {
    /// Checks `url` and starts the delivery task (on the current Tokio runtime).
    pub fn start(url: &str, secret: Vec<u8>, config: WebhookConfig) -> Result<Arc<Self>> {
        let url = checked_url(url)?;
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .user_agent(concat!("cmk-webhook/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("the webhook's HTTP client")?;
        let (tx, rx) = mpsc::channel(config.capacity.max(1));
        let pending = Arc::new(AtomicUsize::new(0));
        let delivery = Delivery {
            client,
            url,
            secret,
            config,
        };
        tokio::spawn(deliver_all(rx, delivery, Arc::clone(&pending)));
        Ok(Arc::new(Self { queue: tx, pending }))
    }

    /// Waits until every queued event was delivered or given up on, at most `limit`; returns
    /// how many are left (lost if the process ends now).
    pub async fn drain(&self, limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = self.pending.load(Ordering::SeqCst);
            if left == 0 || tokio::time::Instant::now() >= deadline {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The webhook URL, refused unless it is https or http to a loopback address.
fn checked_url(url: &str) -> Result<reqwest::Url> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("--webhook-url {url:?}"))?;
    let host = parsed.host_str().unwrap_or_default();
    let loopback = cmk_core::vault::is_loopback_host(host);
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if loopback => Ok(parsed),
        "http" => bail!(
            "--webhook-url {url}: use https (plain http only to a loopback address): events name \
             orgs and keys"
        ),
        other => bail!("--webhook-url {url}: the scheme must be https, not {other}"),
    }
}

#[async_trait]
impl EventPublisher for Webhook {
    async fn publish(&self, events: &[ServiceEvent]) -> Result<(), EventError> {
        let mut dropped = 0u64;
        for event in events {
            self.pending.fetch_add(1, Ordering::SeqCst);
            if self.queue.try_send(event.clone()).is_err() {
                self.pending.fetch_sub(1, Ordering::SeqCst);
                dropped += 1;
            }
        }
        if dropped == 0 {
            return Ok(());
        }
        metrics::events("dropped", dropped);
        Err(EventError(format!(
            "{dropped} event(s) dropped: the webhook's queue is full (its receiver is slow or down)"
        )))
    }
}

/// What one delivery task needs.
struct Delivery {
    client: reqwest::Client,
    url: reqwest::Url,
    secret: Vec<u8>,
    config: WebhookConfig,
}

/// Delivers queued events one by one until every sender is gone.
async fn deliver_all(
    mut queue: mpsc::Receiver<ServiceEvent>,
    d: Delivery,
    pending: Arc<AtomicUsize>,
) {
    while let Some(event) = queue.recv().await {
        match d.deliver(&event).await {
            Ok(()) => metrics::events("sent", 1),
            Err(why) => {
                metrics::events("failed", 1);
                tracing::warn!(event = %event.id, detail_type = event.detail_type, %why, "webhook delivery given up");
            }
        }
        pending.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The `Cmk-Signature` value of `body`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length: this never fails.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("an HMAC key");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

impl Delivery {
    async fn deliver(&self, event: &ServiceEvent) -> Result<(), String> {
        let body = event.envelope().to_string();
        let signature = signature(&self.secret, body.as_bytes());
        let mut backoff = self.config.first_backoff;
        let mut last = String::new();
        for attempt in 1..=self.config.attempts.max(1) {
            let sent = self
                .client
                .post(self.url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(SIGNATURE_HEADER, &signature)
                .header("cmk-event-id", &event.id)
                .header("cmk-event-type", event.detail_type)
                .body(body.clone())
                .send()
                .await;
            let retry = match sent {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => {
                    let status = r.status();
                    last = format!("the receiver answered {status}");
                    status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429
                }
                Err(e) => {
                    last = format!("the receiver could not be reached: {e}");
                    true
                }
            };
            if !retry {
                break;
            }
            if attempt < self.config.attempts {
                let jitter = rand::thread_rng().gen_range(0.8..1.2);
                tokio::time::sleep(backoff.mul_f64(jitter)).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_or_loopback_http_is_accepted() {
        for ok in [
            "https://hooks.example.com/cmk",
            "http://127.0.0.1:9000/events",
            "http://[::1]:9000/",
            "http://localhost:8080/x",
        ] {
            assert!(checked_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://hooks.example.com/cmk",
            "ftp://127.0.0.1/",
            "not a url",
        ] {
            assert!(checked_url(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_events_and_says_so() {
        // Nothing listens on port 9 of loopback; each try fails, then waits a minute.
        let hook = Webhook::start(
            "http://127.0.0.1:9/",
            b"secret".to_vec(),
            WebhookConfig {
                capacity: 1,
                attempts: 2,
                first_backoff: Duration::from_secs(60),
                timeout: Duration::from_secs(1),
            },
        )
        .expect("a webhook");
        let event = || {
            cmk_core::events::ServiceEvent::job_changed(
                "started",
                &cmk_core::ports::OrgSnapshot {
                    org: cmk_core::model::OrgId::from_trusted("acme"),
                    version: 0,
                    external_id: None,
                    default_key_id: cmk_core::model::KeyId::service(),
                    keys: Vec::new(),
                    data_key_counts: Default::default(),
                    job: None,
                },
                &test_job(),
            )
            .expect("an event")
        };
        let events: Vec<ServiceEvent> = (0..3).map(|_| event()).collect();
        let refused = hook.publish(&events).await.expect_err("some dropped");
        assert!(refused.to_string().contains("queue is full"), "{refused}");
        assert!(hook.pending.load(Ordering::SeqCst) <= 2, "the bound holds");
    }

    fn test_job() -> cmk_core::model::Job {
        let now = cmk_core::model::now();
        cmk_core::model::Job {
            id: cmk_core::model::JobId::generate(),
            kind: cmk_core::model::JobKind::Adopt,
            state: cmk_core::model::JobState::Running,
            source_key_ids: vec![cmk_core::model::KeyId::service()],
            target_key_id: cmk_core::model::KeyId::from_trusted("key_1"),
            total: 1,
            done: 0,
            failed: 0,
            errors: Vec::new(),
            generation: 1,
            started_at: now,
            updated_at: now,
            finished_at: None,
            started_by: "alice".into(),
            throttled_rate: None,
        }
    }

    #[test]
    fn the_signature_is_the_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
