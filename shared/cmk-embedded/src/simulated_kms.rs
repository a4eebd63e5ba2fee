//! A stand-in for AWS KMS, for benchmarks and tests of what the AWS emulator cannot show: a
//! latency per request, and a per-key quota above which requests are throttled, as KMS
//! throttles an account. It serves `aws-kms` keys with AES keys held in memory (one per key,
//! made on first use) and passes every other key to an inner provider. Every request it
//! receives for an `aws-kms` key is timed, throttled or not, so a caller can check the rate it
//! was sent at.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cmk_core::crypto::{self, context_bytes, DataKey};
use cmk_core::error::{KeyError, KeyErrorKind};
use cmk_core::model::{EncryptionContext, KeyId, KeySpec};
use cmk_core::ports::{Kek, KeyProvider, Wrapped};

/// How the stand-in behaves.
#[derive(Clone, Copy, Debug)]
pub struct SimulatedKmsConfig {
    /// Added to every request (KMS answers in a few milliseconds).
    pub latency: Duration,
    /// Requests per second per key above which requests are throttled (`None`: never).
    pub quota: Option<u32>,
}

/// One request the stand-in received.
#[derive(Clone, Debug)]
pub struct Request {
    pub at: Instant,
    /// The `data_key_id` of its encryption context, if any.
    pub data_key_id: Option<String>,
}

/// The stand-in; see the module docs.
pub struct SimulatedKms {
    inner: Arc<dyn KeyProvider>,
    config: SimulatedKmsConfig,
    keys: Mutex<HashMap<KeyId, DataKey>>,
    /// When each request for each key arrived, with the data key it was for (the quota counts
    /// the requests of the last second).
    requests: Mutex<HashMap<KeyId, Vec<Request>>>,
    throttled: AtomicU64,
}

impl std::fmt::Debug for SimulatedKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedKms")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl SimulatedKms {
    pub fn new(inner: Arc<dyn KeyProvider>, config: SimulatedKmsConfig) -> Self {
        Self {
            inner,
            config,
            keys: Mutex::new(HashMap::new()),
            requests: Mutex::new(HashMap::new()),
            throttled: AtomicU64::new(0),
        }
    }

    /// Every request for `key`, in order of arrival.
    pub fn requests(&self, key: &KeyId) -> Vec<Request> {
        lock(&self.requests).get(key).cloned().unwrap_or_default()
    }

    /// How many requests were throttled.
    pub fn throttled(&self) -> u64 {
        self.throttled.load(Ordering::Relaxed)
    }

    /// One request for `kek`: its latency, then its answer from the quota.
    async fn request(&self, kek: &Kek, ctx: &EncryptionContext) -> Result<[u8; 32], KeyError> {
        let now = Instant::now();
        let over_quota = {
            let mut requests = lock(&self.requests);
            let seen = requests.entry(kek.key_id.clone()).or_default();
            seen.push(Request {
                at: now,
                data_key_id: ctx.get("data_key_id").cloned(),
            });
            let second_ago = now.checked_sub(Duration::from_secs(1));
            let last_second = seen
                .iter()
                .rev()
                .take_while(|r| second_ago.is_none_or(|s| r.at > s))
                .count();
            self.config.quota.is_some_and(|q| last_second > q as usize)
        };
        tokio::time::sleep(self.config.latency).await;
        if over_quota {
            self.throttled.fetch_add(1, Ordering::Relaxed);
            return Err(KeyError::new(
                KeyErrorKind::Throttled,
                "ThrottlingException: rate exceeded (simulated KMS)",
            ));
        }
        let mut keys = lock(&self.keys);
        let material = keys
            .entry(kek.key_id.clone())
            .or_insert_with(DataKey::generate);
        Ok(*material.expose())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn aad(kek: &Kek, ctx: &EncryptionContext) -> Vec<u8> {
    let mut aad = b"cmk-simulated-kms-v1".to_vec();
    aad.extend_from_slice(kek.key_id.as_str().as_bytes());
    aad.push(0);
    context_bytes(ctx, &mut aad);
    aad
}

fn is_kms(kek: &Kek) -> bool {
    matches!(kek.spec, KeySpec::AwsKms { .. })
}

#[async_trait]
impl KeyProvider for SimulatedKms {
    async fn prepare(&self, kek: &Kek) -> Result<(), KeyError> {
        if is_kms(kek) {
            return Ok(());
        }
        self.inner.prepare(kek).await
    }

    async fn discard(&self, kek: &Kek) {
        if !is_kms(kek) {
            self.inner.discard(kek).await;
        }
    }

    async fn wrap(
        &self,
        kek: &Kek,
        ctx: &EncryptionContext,
        plaintext: &DataKey,
    ) -> Result<Wrapped, KeyError> {
        if !is_kms(kek) {
            return self.inner.wrap(kek, ctx, plaintext).await;
        }
        let key = zeroize::Zeroizing::new(self.request(kek, ctx).await?);
        Ok(Wrapped {
            blob: crypto::seal(&key, &aad(kek, ctx), plaintext.expose()),
            resolved_key: None,
        })
    }

    async fn unwrap(
        &self,
        kek: &Kek,
        ctx: &EncryptionContext,
        wrapped: &[u8],
    ) -> Result<DataKey, KeyError> {
        if !is_kms(kek) {
            return self.inner.unwrap(kek, ctx, wrapped).await;
        }
        let key = zeroize::Zeroizing::new(self.request(kek, ctx).await?);
        crypto::open(&key, &aad(kek, ctx), wrapped)
            .and_then(|p| DataKey::from_slice(&p))
            .ok_or_else(|| {
                KeyError::new(
                    KeyErrorKind::InvalidCiphertext,
                    "InvalidCiphertextException (simulated KMS)",
                )
            })
    }

    async fn check(&self, kek: &Kek) -> Result<Option<String>, KeyError> {
        if !is_kms(kek) {
            return self.inner.check(kek).await;
        }
        let mut ctx = EncryptionContext::new();
        ctx.insert("purpose".into(), "key-check".into());
        let probe = DataKey::generate();
        let wrapped = self.wrap(kek, &ctx, &probe).await?;
        let back = self.unwrap(kek, &ctx, &wrapped.blob).await?;
        if back.expose() == probe.expose() {
            Ok(None)
        } else {
            Err(KeyError::new(
                KeyErrorKind::Transient,
                "round trip mismatch",
            ))
        }
    }
}
