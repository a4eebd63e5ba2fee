//! The [`KeyProvider`] of `vault-transit` keys.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use cmk_core::crypto::DataKey;
use cmk_core::error::{KeyError, KeyErrorKind};
use cmk_core::model::{DataKeyId, EncryptionContext, KeyId, KeySpec, OrgId};
use cmk_core::ports::{Kek, KeyProvider, RewrapItem, Wrapped};
use cmk_core::vault::{transit_context, VaultCredential, VaultTransitKey};
use zeroize::Zeroizing;

use crate::client::{ItemResult, Target, TransitClient, VaultError};
use crate::errors::{item_error, key_error};

/// Data keys per batch call. OpenBao refuses a JSON request of more than 1,000 strings ("high
/// complexity"); each item of a batch is 4 (two names, two values) and the body adds one, so
/// 249 items is its most. 200 leaves room for servers that count differently.
pub const BATCH_LIMIT: usize = 200;

/// A token is used for this share of its lifetime, then the service logs in again.
const TOKEN_USE_SHARE: f64 = 0.8;
/// How long a token that does not expire (or a customer's own token) is used before the
/// credential is opened again.
const TOKEN_REUSE: Duration = Duration::from_secs(3600);

#[derive(Clone, Debug)]
pub struct VaultSettings {
    /// The longest one call may take.
    pub timeout: Duration,
    /// Whether transit servers may be at loopback or private addresses (local runs, where the
    /// customer's Vault is on the same machine or network). Off by default: a hosted service
    /// must not let a customer's address reach into its own network.
    pub allow_private_addresses: bool,
}

impl Default for VaultSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            allow_private_addresses: false,
        }
    }
}

struct Token {
    value: Arc<Zeroizing<String>>,
    renew_at: Instant,
}

/// One slot per key: callers of a key wait for its one login; no lock is shared across keys.
type TokenSlot = Arc<tokio::sync::Mutex<Option<Token>>>;

/// Where an item of a chunk went: its index among the items sent, or why it was not sent.
type Slot = Result<usize, KeyError>;

/// Wraps data keys with a customer's transit key. Logs in with the key's credential, opened
/// from its sealed form through the provider of the service-managed key, and keeps the token
/// per key until most of its lifetime has passed.
pub struct VaultTransitProvider {
    client: TransitClient,
    /// Opens sealed credentials (the service-managed key's provider).
    credentials: Arc<dyn KeyProvider>,
    tokens: Mutex<HashMap<(OrgId, KeyId, String), TokenSlot>>,
}

impl std::fmt::Debug for VaultTransitProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultTransitProvider")
            .finish_non_exhaustive()
    }
}

fn spec(kek: &Kek) -> Result<&VaultTransitKey, KeyError> {
    match &kek.spec {
        KeySpec::VaultTransit(k) => Ok(k),
        other => Err(KeyError::new(
            KeyErrorKind::Unsupported,
            format!(
                "{} keys need another key provider",
                other.key_type().as_str()
            ),
        )),
    }
}

fn target(k: &VaultTransitKey) -> Target<'_> {
    Target {
        address: &k.address,
        namespace: k.namespace.as_deref(),
        mount: &k.mount,
        key_name: &k.key_name,
    }
}

/// Whether two keys are the same transit key (so `rewrap` moves between them).
fn same_transit_key(a: &VaultTransitKey, b: &VaultTransitKey) -> bool {
    a.address == b.address
        && a.namespace == b.namespace
        && a.mount == b.mount
        && a.key_name == b.key_name
}

fn blob(ciphertext: &str) -> Wrapped {
    Wrapped {
        blob: ciphertext.as_bytes().to_vec(),
        resolved_key: None,
    }
}

fn ciphertext(key: &VaultTransitKey, wrapped: &[u8]) -> Result<String, KeyError> {
    std::str::from_utf8(wrapped)
        .ok()
        .filter(|c| c.starts_with("vault:v"))
        .map(str::to_owned)
        .ok_or_else(|| {
            KeyError::new(
                KeyErrorKind::InvalidCiphertext,
                format!(
                    "transit key {}: the data key is not a transit ciphertext",
                    key.key_name
                ),
            )
        })
}

fn data_key(key: &VaultTransitKey, plaintext_b64: &str) -> Result<DataKey, KeyError> {
    let bytes = Zeroizing::new(B64.decode(plaintext_b64).unwrap_or_default());
    DataKey::from_slice(&bytes).ok_or_else(|| {
        KeyError::new(
            KeyErrorKind::InvalidCiphertext,
            format!(
                "transit key {}: the plaintext is not a data key",
                key.key_name
            ),
        )
    })
}

impl VaultTransitProvider {
    /// `credentials` opens the sealed credentials: the provider of the service-managed key.
    pub fn new(credentials: Arc<dyn KeyProvider>, settings: VaultSettings) -> Result<Self, String> {
        Ok(Self {
            client: TransitClient::new(settings.timeout, settings.allow_private_addresses)?,
            credentials,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// How many requests the provider has sent to transit servers, logins included.
    pub fn requests(&self) -> u64 {
        self.client.requests()
    }

    fn slot(&self, kek: &Kek, key: &VaultTransitKey) -> TokenSlot {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(
            tokens
                .entry((
                    kek.org.clone(),
                    kek.key_id.clone(),
                    key.auth.fingerprint.clone(),
                ))
                .or_default(),
        )
    }

    /// A token for `kek`: the one in use, or a new login when there is none, it is old, or
    /// `stale` is the one the server just refused.
    async fn token(
        &self,
        kek: &Kek,
        key: &VaultTransitKey,
        stale: Option<&Arc<Zeroizing<String>>>,
    ) -> Result<Arc<Zeroizing<String>>, KeyError> {
        let slot = self.slot(kek, key);
        let mut held = slot.lock().await;
        if let Some(t) = held.as_ref() {
            let refused = stale.is_some_and(|s| Arc::ptr_eq(s, &t.value));
            if !refused && Instant::now() < t.renew_at {
                return Ok(Arc::clone(&t.value));
            }
        }
        let secret = cmk_core::credentials::open(
            self.credentials.as_ref(),
            &kek.org,
            &kek.key_id,
            &key.auth.sealed,
        )
        .await
        .map_err(|e| {
            KeyError::new(
                KeyErrorKind::Transient,
                format!("the credential of key {} cannot be opened: {e}", kek.key_id),
            )
        })?;
        let credential: VaultCredential = serde_json::from_slice(&secret).map_err(|_| {
            KeyError::new(
                KeyErrorKind::InvalidKeyState,
                format!(
                    "the stored credential of key {} is not readable",
                    kek.key_id
                ),
            )
        })?;
        let (value, lifetime) = match &credential {
            VaultCredential::Token { token } => (Zeroizing::new(token.clone()), TOKEN_REUSE),
            VaultCredential::AppRole { role_id, secret_id } => {
                let login = self
                    .client
                    .login_approle(&key.address, key.namespace.as_deref(), role_id, secret_id)
                    .await
                    .map_err(|e| {
                        KeyError::new(
                            crate::errors::kind(e.status, &e.message),
                            format!("AppRole login for transit key {}: {e}", key.key_name),
                        )
                    })?;
                let lifetime = login
                    .ttl
                    .map_or(TOKEN_REUSE, |ttl| ttl.mul_f64(TOKEN_USE_SHARE));
                (login.token, lifetime)
            }
        };
        let value = Arc::new(value);
        *held = Some(Token {
            value: Arc::clone(&value),
            renew_at: Instant::now() + lifetime,
        });
        Ok(value)
    }

    /// Runs `call` with a token; a refusal (403) with a token that may have expired or been
    /// revoked is tried once more after a new login.
    async fn with_token<T, F, Fut>(
        &self,
        kek: &Kek,
        key: &VaultTransitKey,
        call: F,
    ) -> Result<T, KeyError>
    where
        F: Fn(Arc<Zeroizing<String>>) -> Fut,
        Fut: std::future::Future<Output = Result<T, VaultError>>,
    {
        let token = self.token(kek, key, None).await?;
        match call(Arc::clone(&token)).await {
            Err(e)
                if e.status == Some(403)
                    && key.auth.method == cmk_core::vault::VaultAuthMethod::AppRole =>
            {
                let fresh = self.token(kek, key, Some(&token)).await?;
                call(fresh).await.map_err(|e| key_error(&key.key_name, &e))
            }
            other => other.map_err(|e| key_error(&key.key_name, &e)),
        }
    }

    fn items_to_results<T>(
        key: &VaultTransitKey,
        results: Vec<ItemResult>,
        each: impl Fn(&str) -> Result<T, KeyError>,
    ) -> Vec<Result<T, KeyError>> {
        results
            .into_iter()
            .map(|r| match r {
                Ok(v) => each(&v),
                Err(message) => Err(item_error(&key.key_name, &message)),
            })
            .collect()
    }

    /// The ciphertexts and contexts of a chunk; an item that is not a transit ciphertext
    /// fails alone.
    fn ciphertexts(
        key: &VaultTransitKey,
        items: &[RewrapItem],
    ) -> (Vec<(String, String)>, Vec<Slot>) {
        let mut sendable = Vec::with_capacity(items.len());
        let mut slots = Vec::with_capacity(items.len());
        for item in items {
            match ciphertext(key, &item.wrapped) {
                Ok(c) => {
                    slots.push(Ok(sendable.len()));
                    sendable.push((c, transit_context(&item.ctx)));
                }
                Err(e) => slots.push(Err(e)),
            }
        }
        (sendable, slots)
    }

    /// Puts the answers for the sendable items back in the chunk's order.
    fn in_order<T>(
        slots: Vec<Slot>,
        answers: Vec<Result<T, KeyError>>,
    ) -> Vec<Result<T, KeyError>> {
        let mut answers: Vec<Option<Result<T, KeyError>>> = answers.into_iter().map(Some).collect();
        slots
            .into_iter()
            .map(|s| match s {
                Ok(i) => answers[i].take().unwrap_or_else(|| {
                    Err(KeyError::new(
                        KeyErrorKind::Transient,
                        "a batch answer is missing",
                    ))
                }),
                Err(e) => Err(e),
            })
            .collect()
    }
}

#[async_trait]
impl KeyProvider for VaultTransitProvider {
    async fn wrap(
        &self,
        kek: &Kek,
        ctx: &EncryptionContext,
        plaintext: &DataKey,
    ) -> Result<Wrapped, KeyError> {
        let key = spec(kek)?;
        let plain = Zeroizing::new(B64.encode(plaintext.expose()));
        let context = transit_context(ctx);
        let c = self
            .with_token(kek, key, |token| {
                let (plain, context) = (&plain, &context);
                async move {
                    self.client
                        .encrypt(target(key), &token, plain, context)
                        .await
                }
            })
            .await?;
        Ok(blob(&c))
    }

    async fn unwrap(
        &self,
        kek: &Kek,
        ctx: &EncryptionContext,
        wrapped: &[u8],
    ) -> Result<DataKey, KeyError> {
        let key = spec(kek)?;
        let c = ciphertext(key, wrapped)?;
        let context = transit_context(ctx);
        let plain = self
            .with_token(kek, key, |token| {
                let (c, context) = (&c, &context);
                async move { self.client.decrypt(target(key), &token, c, context).await }
            })
            .await?;
        data_key(key, &plain)
    }

    fn batch_limit(&self, kek: &Kek) -> Option<usize> {
        matches!(kek.spec, KeySpec::VaultTransit(_)).then_some(BATCH_LIMIT)
    }

    async fn wrap_batch(
        &self,
        kek: &Kek,
        items: &[(EncryptionContext, DataKey)],
    ) -> Result<Vec<Result<Wrapped, KeyError>>, KeyError> {
        let key = spec(kek)?;
        let input: Vec<(Zeroizing<String>, String)> = items
            .iter()
            .map(|(ctx, dk)| {
                (
                    Zeroizing::new(B64.encode(dk.expose())),
                    transit_context(ctx),
                )
            })
            .collect();
        let mut out = Vec::with_capacity(items.len());
        for chunk in input.chunks(BATCH_LIMIT) {
            let results = self
                .with_token(kek, key, |token| async move {
                    self.client.encrypt_batch(target(key), &token, chunk).await
                })
                .await?;
            out.extend(Self::items_to_results(key, results, |c| Ok(blob(c))));
        }
        Ok(out)
    }

    async fn unwrap_batch(
        &self,
        kek: &Kek,
        items: &[RewrapItem],
    ) -> Result<Vec<Result<DataKey, KeyError>>, KeyError> {
        let key = spec(kek)?;
        let mut out = Vec::with_capacity(items.len());
        for chunk in items.chunks(BATCH_LIMIT) {
            let (sendable, slots) = Self::ciphertexts(key, chunk);
            let answers = if sendable.is_empty() {
                Vec::new()
            } else {
                let results = self
                    .with_token(kek, key, |token| {
                        let sendable = &sendable;
                        async move {
                            self.client
                                .decrypt_batch(target(key), &token, sendable)
                                .await
                        }
                    })
                    .await?;
                Self::items_to_results(key, results, |p| data_key(key, p))
            };
            out.extend(Self::in_order(slots, answers));
        }
        Ok(out)
    }

    async fn rewrap_batch(
        &self,
        from: &Kek,
        to: &Kek,
        items: &[RewrapItem],
    ) -> Result<Option<Vec<Result<Wrapped, KeyError>>>, KeyError> {
        let (a, b) = (spec(from)?, spec(to)?);
        if !same_transit_key(a, b) {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(items.len());
        for chunk in items.chunks(BATCH_LIMIT) {
            let (sendable, slots) = Self::ciphertexts(a, chunk);
            let answers = if sendable.is_empty() {
                Vec::new()
            } else {
                let results = self
                    .with_token(from, a, |token| {
                        let sendable = &sendable;
                        async move { self.client.rewrap_batch(target(a), &token, sendable).await }
                    })
                    .await?;
                Self::items_to_results(a, results, |c| Ok(blob(c)))
            };
            out.extend(Self::in_order(slots, answers));
        }
        Ok(Some(out))
    }

    /// Encrypts and decrypts a test value, then proves the context is bound: the value must
    /// not decrypt under another context (a key without `derived=true` ignores contexts).
    async fn check(&self, kek: &Kek) -> Result<Option<String>, KeyError> {
        let key = spec(kek)?;
        let probe = DataKey::generate();
        let mut ctx = cmk_core::model::data_key_context(&kek.org, &DataKeyId::generate());
        ctx.insert("purpose".into(), "key-check".into());
        let wrapped = match self.wrap(kek, &ctx, &probe).await {
            Ok(w) => w,
            // Encrypting with a key that does not exist needs `create` (transit would make
            // it): the server says permission denied. A decrypt tells the two apart.
            Err(e) if e.kind == KeyErrorKind::AccessDenied => {
                return Err(self.missing_or_denied(kek, key, &ctx, e).await)
            }
            Err(e) => return Err(e),
        };
        let back = self.unwrap(kek, &ctx, &wrapped.blob).await?;
        if back.expose() != probe.expose() {
            return Err(KeyError::new(
                KeyErrorKind::InvalidKeyState,
                format!(
                    "transit key {}: the round trip gave another value",
                    key.key_name
                ),
            ));
        }
        let mut other = ctx.clone();
        other.insert("purpose".into(), "key-check-other".into());
        match self.unwrap(kek, &other, &wrapped.blob).await {
            Err(e) if e.kind == KeyErrorKind::InvalidCiphertext => Ok(None),
            Err(e) => Err(e),
            Ok(_) => Err(KeyError::new(
                KeyErrorKind::InvalidKeyState,
                format!(
                    "transit key {} ignores the encryption context: create it with \
                     derived=true (transit binds a context only to derived keys)",
                    key.key_name
                ),
            )),
        }
    }
}

impl VaultTransitProvider {
    async fn missing_or_denied(
        &self,
        kek: &Kek,
        key: &VaultTransitKey,
        ctx: &EncryptionContext,
        denied: KeyError,
    ) -> KeyError {
        let bogus = format!("vault:v1:{}", B64.encode([0u8; 48]));
        match self.unwrap(kek, ctx, bogus.as_bytes()).await {
            Err(e) if e.kind == KeyErrorKind::KeyNotFound => KeyError::new(
                KeyErrorKind::KeyNotFound,
                format!(
                    "transit key {} does not exist at {} (mount {})",
                    key.key_name, key.address, key.mount
                ),
            ),
            _ => denied,
        }
    }
}
