//! The AWS KMS [`KeyProvider`].
//!
//! - The service-managed key is a KMS key of the operator's account, used with the function's
//!   own credentials.
//! - A customer key is used through `AssumeRole` into the customer's role with the org's
//!   external id and a session name naming the service and the org. Credentials are cached per
//!   (role, external id) and refreshed before they expire: STS is never called per data key.
//! - No org can slow another: sessions are created single-flight per (role, external id), the
//!   map of sessions is locked only to find an entry (never across a network call), and a
//!   refused `AssumeRole` (denied, not found) is remembered for
//!   [`KmsSettings::failure_memory`], so a customer who revoked the role costs one STS call per
//!   interval, not one per request. An explicit key check ignores that memory and asks STS
//!   again; a throttled or failed STS call is never remembered, and a session whose early
//!   refresh fails is used until it expires.
//! - Every call carries the encryption context (`org`, `data_key_id`).
//! - KMS keys are regional: a key ARN (or alias ARN) of another region than the service's is
//!   called in that region, with a client per (session, region) built once and reused, and
//!   `ReEncrypt` is used only between keys of one region.
//! - `ReEncrypt` is used when one principal reaches both keys, so the plaintext never leaves
//!   KMS; otherwise Decrypt then Encrypt.
//! - KMS and STS errors map to the typed failures of the port, in the customer's terms.
//!
//! Over 600 lines because the session cache, the regional clients and the error mapping are
//! the one state every call goes through; they stay beside the calls that use them.
//!
//! Over 600 lines: the session cache, the error mapping and the provider belong together, with
//! their tests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_credential_types::Credentials;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::Client as KmsClient;
use aws_sdk_sts::Client as StsClient;
use cmk_core::crypto::DataKey;
use cmk_core::error::{KeyError, KeyErrorKind};
use cmk_core::model::{EncryptionContext, KeySpec, OrgId, TrustMode};
use cmk_core::oidc::OidcIssuer;
use cmk_core::ports::{Kek, KeyProvider, Wrapped};
use tokio::sync::Mutex;

use crate::describe;

/// Settings of the KMS provider.
#[derive(Clone, Debug)]
pub struct KmsSettings {
    /// The service-managed key (key id, key ARN or alias).
    pub service_key_id: String,
    /// How long an assumed session lasts (role chaining from Lambda allows at most one hour).
    pub session_duration: Duration,
    /// Credentials are refreshed this long before they expire.
    pub refresh_margin: Duration,
    /// How long a failed `AssumeRole` is answered from memory instead of asking STS again.
    pub failure_memory: Duration,
}

impl KmsSettings {
    pub fn new(service_key_id: impl Into<String>) -> Self {
        Self {
            service_key_id: service_key_id.into(),
            session_duration: Duration::from_secs(3600),
            refresh_margin: Duration::from_secs(300),
            failure_memory: Duration::from_secs(10),
        }
    }
}

/// An assumed role's credentials, and a KMS client per region its keys live in.
struct Session {
    credentials: Credentials,
    expires: SystemTime,
    clients: std::sync::Mutex<HashMap<Option<String>, KmsClient>>,
}

/// The region a KMS key ARN or alias ARN names (`arn:<partition>:kms:<region>:…`); `None` for a
/// bare key id or alias name, which the configured region serves.
pub fn arn_region(key: &str) -> Option<&str> {
    let mut parts = key.splitn(6, ':');
    if parts.next()? != "arn" {
        return None;
    }
    let region = parts.nth(2)?;
    (!region.is_empty()).then_some(region)
}

/// The longest one `AssumeRole` may take while its callers wait on it.
const ASSUME_ROLE_TIMEOUT: Duration = Duration::from_secs(10);

/// What is known of one (role, external id).
enum SessionState {
    Empty,
    Ready(Arc<Session>),
    /// The last `AssumeRole` failed; answered from memory until `until`.
    Failed {
        error: KeyError,
        until: Instant,
    },
}

/// One (role, external id): its state, and a gate that makes its refresh single-flight.
struct SessionSlot {
    state: std::sync::Mutex<SessionState>,
    refresh: Mutex<()>,
}

/// What a slot's state says a caller should do.
enum Lookup {
    Use(Arc<Session>),
    Fail(KeyError),
    /// Still valid but due for a refresh: refresh if nobody else is, else use this one.
    Refresh(Arc<Session>),
    Create,
}

impl SessionSlot {
    fn lookup(&self, margin: Duration, fresh_check: bool) -> Lookup {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = SystemTime::now();
        match &*state {
            SessionState::Ready(s) if s.expires > now + margin => Lookup::Use(Arc::clone(s)),
            SessionState::Ready(s) if s.expires > now + Duration::from_secs(10) => {
                Lookup::Refresh(Arc::clone(s))
            }
            SessionState::Failed { error, until } if !fresh_check && *until > Instant::now() => {
                Lookup::Fail(error.clone())
            }
            _ => Lookup::Create,
        }
    }

    fn set(&self, state: SessionState) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
    }
}

/// Calls made, for the efficiency figures of the benchmark.
#[derive(Debug, Default)]
pub struct KmsCounters {
    pub kms_calls: AtomicU64,
    pub sts_calls: AtomicU64,
}

pub struct KmsKeyProvider {
    config: SdkConfig,
    kms: KmsClient,
    sts: StsClient,
    settings: KmsSettings,
    /// Locked only to find or add a slot: never across a network call.
    sessions: std::sync::Mutex<HashMap<(String, String), Arc<SessionSlot>>>,
    /// The service's own KMS clients for regions other than the configured one.
    service_regions: std::sync::Mutex<HashMap<String, KmsClient>>,
    counters: KmsCounters,
    /// Added to the KMS clients of assumed sessions too (call counting).
    interceptor: Option<aws_sdk_kms::config::SharedInterceptor>,
    /// The service's OIDC issuer, for keys whose role trusts it
    /// ([`KmsKeyProvider::use_web_identity`]).
    web_identity: OnceLock<OidcIssuer>,
}

impl std::fmt::Debug for KmsKeyProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmsKeyProvider")
            .field("service_key_id", &self.settings.service_key_id)
            .finish_non_exhaustive()
    }
}

/// Maps an AWS error code (and HTTP status) to the port's failure kinds.
pub fn kind_of(code: Option<&str>, status: Option<u16>) -> KeyErrorKind {
    match code {
        Some("AccessDeniedException" | "AccessDenied" | "UnauthorizedOperation") => {
            KeyErrorKind::AccessDenied
        }
        Some("DisabledException") => KeyErrorKind::KeyDisabled,
        Some("NotFoundException") => KeyErrorKind::KeyNotFound,
        Some("KMSInvalidStateException" | "InvalidKeyUsageException") => {
            KeyErrorKind::InvalidKeyState
        }
        Some(
            "ThrottlingException"
            | "Throttling"
            | "LimitExceededException"
            | "RequestLimitExceeded"
            | "TooManyRequestsException",
        ) => KeyErrorKind::Throttled,
        Some("InvalidCiphertextException" | "IncorrectKeyException") => {
            KeyErrorKind::InvalidCiphertext
        }
        Some("KMSInternalException" | "DependencyTimeoutException" | "KeyUnavailableException") => {
            KeyErrorKind::Transient
        }
        // Some emulators answer a denied call with a 403 whose body names no KMS error code.
        _ if status == Some(403) => KeyErrorKind::AccessDenied,
        _ if status == Some(429) => KeyErrorKind::Throttled,
        Some(_) => KeyErrorKind::Transient,
        None => KeyErrorKind::Transient,
    }
}

fn key_error<E>(e: SdkError<E>, what: &str) -> KeyError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = e.raw_response().map(|r| r.status().as_u16());
    let kind = kind_of(e.code(), status);
    let why = match kind {
        KeyErrorKind::AccessDenied => "access denied",
        KeyErrorKind::KeyDisabled => "the key is disabled",
        KeyErrorKind::KeyNotFound => "the key does not exist",
        KeyErrorKind::InvalidKeyState => {
            "the key is not in a usable state (pending deletion or import?)"
        }
        KeyErrorKind::Throttled => "AWS throttled the request",
        KeyErrorKind::InvalidCiphertext => "the ciphertext does not belong to this key and context",
        _ => "AWS could not serve the request",
    };
    KeyError::new(kind, format!("{what}: {why} ({})", describe(&e)))
}

/// Counts a call's outcome (`ok`, `throttled`, `access_denied` or `other`) with `record`.
fn counted<T>(r: Result<T, KeyError>, record: fn(&'static str)) -> Result<T, KeyError> {
    record(match &r {
        Ok(_) => "ok",
        Err(e) if e.kind == KeyErrorKind::Throttled => "throttled",
        Err(e) if e.kind == KeyErrorKind::AccessDenied => "access_denied",
        Err(_) => "other",
    });
    r
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How the service assumes a customer's role.
enum Via {
    /// `AssumeRole` with the org's external id.
    ExternalId(String),
    /// `AssumeRoleWithWebIdentity` with a token of the service's issuer for the org.
    WebIdentity,
}

impl Via {
    /// Sessions are cached per role and this (tokens name one org each).
    fn cache_key(&self, org: &OrgId) -> String {
        match self {
            Via::ExternalId(id) => format!("external_id:{id}"),
            Via::WebIdentity => format!("oidc:{org}"),
        }
    }
}

/// An access-denied error says what the customer's trust policy must allow.
fn refused(mut err: KeyError, advice: impl FnOnce() -> String) -> KeyError {
    if err.kind == KeyErrorKind::AccessDenied {
        err.message = format!("{} ({})", advice(), err.message);
    }
    err
}

/// A session name naming the service and the org (at most 64 characters).
fn session_name(org: &str) -> String {
    let mut name = format!("cmk-service-{org}");
    name.truncate(64);
    name
}

impl KmsKeyProvider {
    /// Builds clients from a loaded SDK configuration; makes no AWS call.
    pub fn new(config: &SdkConfig, settings: KmsSettings) -> Self {
        Self {
            kms: KmsClient::new(config),
            sts: StsClient::new(config),
            config: config.clone(),
            settings,
            sessions: std::sync::Mutex::new(HashMap::new()),
            service_regions: std::sync::Mutex::new(HashMap::new()),
            counters: KmsCounters::default(),
            interceptor: None,
            web_identity: OnceLock::new(),
        }
    }

    /// Uses the given clients (e.g. with interceptors); customer sessions are built from `config`.
    pub fn from_clients(
        config: &SdkConfig,
        kms: KmsClient,
        sts: StsClient,
        settings: KmsSettings,
    ) -> Self {
        Self {
            kms,
            sts,
            config: config.clone(),
            settings,
            sessions: std::sync::Mutex::new(HashMap::new()),
            service_regions: std::sync::Mutex::new(HashMap::new()),
            counters: KmsCounters::default(),
            interceptor: None,
            web_identity: OnceLock::new(),
        }
    }

    /// Reaches the roles of keys in `oidc` trust mode with `AssumeRoleWithWebIdentity` and a
    /// token of `issuer`, minted per org. Set once; a second call changes nothing.
    pub fn use_web_identity(&self, issuer: OidcIssuer) {
        let _ = self.web_identity.set(issuer);
    }

    /// Adds an interceptor to every KMS client this provider uses, assumed sessions included.
    pub fn with_interceptor(mut self, interceptor: aws_sdk_kms::config::SharedInterceptor) -> Self {
        self.kms = KmsClient::from_conf(
            aws_sdk_kms::config::Builder::from(&self.config)
                .interceptor(interceptor.clone())
                .build(),
        );
        self.interceptor = Some(interceptor);
        self
    }

    pub fn counters(&self) -> &KmsCounters {
        &self.counters
    }

    /// The client and key id to use for `kek`, in every direction. A customer key named by an
    /// alias is pinned to the key ARN its add-time check resolved: wrapping through the alias
    /// while unwrapping by key ARN would strand the data keys wrapped after the customer
    /// re-points the alias (KMS refuses a Decrypt that names another key).
    async fn client_for(&self, kek: &Kek) -> Result<(KmsClient, String), KeyError> {
        self.client_for_use(kek, false).await
    }

    /// [`Self::client_for`]; `fresh_check` ignores a remembered `AssumeRole` failure.
    async fn client_for_use(
        &self,
        kek: &Kek,
        fresh_check: bool,
    ) -> Result<(KmsClient, String), KeyError> {
        match &kek.spec {
            KeySpec::ServiceManaged => {
                let key = self.settings.service_key_id.clone();
                let client = match self.other_region(arn_region(&key)) {
                    None => self.kms.clone(),
                    Some(region) => {
                        let mut clients = lock(&self.service_regions);
                        clients
                            .entry(region.to_owned())
                            .or_insert_with(|| self.kms_client(None, Some(region)))
                            .clone()
                    }
                };
                Ok((client, key))
            }
            KeySpec::AwsKms {
                role_arn,
                key_arn,
                resolved_key_arn,
                trust,
            } => {
                let via = match trust {
                    TrustMode::ExternalId => {
                        Via::ExternalId(kek.external_id.clone().unwrap_or_default())
                    }
                    TrustMode::Oidc => Via::WebIdentity,
                };
                let session = self.session(role_arn, &via, &kek.org, fresh_check).await?;
                let key = resolved_key_arn.as_ref().unwrap_or(key_arn).clone();
                let region = self.other_region(arn_region(&key));
                let client = lock(&session.clients)
                    .entry(region.map(str::to_owned))
                    .or_insert_with(|| self.kms_client(Some(&session.credentials), region))
                    .clone();
                Ok((client, key))
            }
            KeySpec::Local => Err(KeyError::new(
                KeyErrorKind::Unsupported,
                "local keys exist only when the service runs locally",
            )),
            KeySpec::VaultTransit(_) => Err(KeyError::new(
                KeyErrorKind::Unsupported,
                "vault-transit keys need the transit key provider",
            )),
        }
    }

    /// `region` when it is not the one the provider was configured with (KMS keys are
    /// regional: a call for a key ARN of another region must be signed for and sent there).
    fn other_region<'a>(&self, region: Option<&'a str>) -> Option<&'a str> {
        let configured = self.config.region().map(|r| r.as_ref());
        region.filter(|r| Some(*r) != configured)
    }

    /// A KMS client of the provider's configuration, with other credentials or another region.
    fn kms_client(&self, credentials: Option<&Credentials>, region: Option<&str>) -> KmsClient {
        let mut conf = aws_sdk_kms::config::Builder::from(&self.config);
        if let Some(c) = credentials {
            conf = conf.credentials_provider(c.clone());
        }
        if let Some(r) = region {
            conf = conf.region(aws_config::Region::new(r.to_owned()));
        }
        if let Some(i) = &self.interceptor {
            conf = conf.interceptor(i.clone());
        }
        KmsClient::from_conf(conf.build())
    }

    /// A KMS client acting as the customer's role: from cache, from the memory of a recent
    /// failure, or from one `AssumeRole` that concurrent callers of the same role wait for.
    async fn session(
        &self,
        role_arn: &str,
        via: &Via,
        org: &OrgId,
        fresh_check: bool,
    ) -> Result<Arc<Session>, KeyError> {
        let slot = {
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(
                sessions
                    .entry((role_arn.to_owned(), via.cache_key(org)))
                    .or_insert_with(|| {
                        Arc::new(SessionSlot {
                            state: std::sync::Mutex::new(SessionState::Empty),
                            refresh: Mutex::new(()),
                        })
                    }),
            )
        };
        let margin = self.settings.refresh_margin;
        let mut still_valid = None;
        let _gate = match slot.lookup(margin, fresh_check) {
            Lookup::Use(client) => return Ok(client),
            Lookup::Fail(error) => return Err(error),
            Lookup::Refresh(session) => match slot.refresh.try_lock() {
                Ok(gate) => {
                    still_valid = Some(session);
                    gate
                }
                // Another caller is refreshing: the current session is still valid.
                Err(_) => return Ok(session),
            },
            Lookup::Create => {
                let gate = slot.refresh.lock().await;
                // Whoever held the gate may have settled it: a session, or a failure to share
                // (an explicit check asks again only if the failure predates its wait).
                match slot.lookup(margin, false) {
                    Lookup::Use(client) => return Ok(client),
                    Lookup::Fail(error) if !fresh_check => return Err(error),
                    _ => gate,
                }
            }
        };
        let assumed =
            tokio::time::timeout(ASSUME_ROLE_TIMEOUT, self.assume_role(role_arn, via, org))
                .await
                .unwrap_or_else(|_| {
                    Err(KeyError::new(
                        KeyErrorKind::Transient,
                        format!("assuming role {role_arn}: STS did not answer in time"),
                    ))
                });
        match assumed {
            Ok(session) => {
                let session = Arc::new(session);
                slot.set(SessionState::Ready(Arc::clone(&session)));
                Ok(session)
            }
            // An early refresh that failed: the session still works until it expires.
            Err(_) if still_valid.is_some() => still_valid.ok_or_else(|| {
                KeyError::new(KeyErrorKind::Transient, "no session to fall back on")
            }),
            Err(error) => {
                // Only a lasting refusal is remembered: a throttled or failed STS call is
                // asked again by the next caller, or one burst would cost every org seconds.
                if !error.kind.is_retryable() {
                    slot.set(SessionState::Failed {
                        error: error.clone(),
                        until: Instant::now() + self.settings.failure_memory,
                    });
                }
                Err(error)
            }
        }
    }

    /// One `AssumeRole` (or `AssumeRoleWithWebIdentity`) into the customer's role.
    async fn assume_role(
        &self,
        role_arn: &str,
        via: &Via,
        org: &OrgId,
    ) -> Result<Session, KeyError> {
        self.counters.sts_calls.fetch_add(1, Ordering::Relaxed);
        let duration = self.settings.session_duration.as_secs() as i32;
        let creds = match via {
            Via::ExternalId(external_id) => {
                let out = self
                    .sts
                    .assume_role()
                    .role_arn(role_arn)
                    .role_session_name(session_name(org.as_str()))
                    .external_id(external_id)
                    .duration_seconds(duration)
                    .send()
                    .await
                    .map_err(|e| {
                        refused(
                            key_error(e, &format!("assuming role {role_arn}")),
                            || format!("the service cannot assume role {role_arn}: check its trust policy allows the service principal with this organization's external id"),
                        )
                    });
                counted(out, cmk_core::metrics::sts_session)?.credentials
            }
            Via::WebIdentity => {
                let issuer = self.web_identity.get().ok_or_else(|| {
                    KeyError::new(
                        KeyErrorKind::Unsupported,
                        "this key trusts the service's OIDC issuer, which is not configured here",
                    )
                })?;
                let token = issuer.mint(org).await?;
                let out = self
                    .sts
                    .assume_role_with_web_identity()
                    .role_arn(role_arn)
                    .role_session_name(session_name(org.as_str()))
                    .web_identity_token(token)
                    .duration_seconds(duration)
                    .send()
                    .await
                    .map_err(|e| {
                        refused(
                            key_error(e, &format!("assuming role {role_arn} with web identity")),
                            || format!(
                                "the service cannot assume role {role_arn}: check its trust policy allows the OIDC provider {} with audience {} and subject {}",
                                cmk_core::oidc::provider_name(issuer.issuer()),
                                cmk_core::oidc::audience(org),
                                cmk_core::oidc::subject(org),
                            ),
                        )
                    });
                counted(out, cmk_core::metrics::sts_session)?.credentials
            }
        };
        let creds = creds
            .ok_or_else(|| KeyError::new(KeyErrorKind::Transient, "STS returned no credentials"))?;
        let expires = SystemTime::try_from(*creds.expiration())
            .unwrap_or_else(|_| SystemTime::now() + self.settings.session_duration);
        let credentials = Credentials::new(
            creds.access_key_id(),
            creds.secret_access_key(),
            Some(creds.session_token().to_owned()),
            Some(expires),
            "cmk-assumed-role",
        );
        Ok(Session {
            credentials,
            expires,
            clients: std::sync::Mutex::new(HashMap::new()),
        })
    }

    fn count(&self) {
        self.counters.kms_calls.fetch_add(1, Ordering::Relaxed);
    }

    async fn encrypt(
        &self,
        kek: &Kek,
        ctx: &EncryptionContext,
        plaintext: &[u8],
        fresh_check: bool,
    ) -> Result<Wrapped, KeyError> {
        let (client, key_id) = self.client_for_use(kek, fresh_check).await?;
        self.count();
        // The SDK owns (and drops, unwiped) the copy it serializes; it offers no way to wipe it.
        let out = client
            .encrypt()
            .key_id(&key_id)
            .plaintext(Blob::new(plaintext.to_vec()))
            .set_encryption_context(Some(ctx.clone().into_iter().collect()))
            .send()
            .await
            .map_err(|e| key_error(e, &format!("encrypting with KMS key {key_id}")));
        let out = counted(out, cmk_core::metrics::kms_call)?;
        wrapped_from(out.ciphertext_blob(), out.key_id())
    }

    /// Whether one `ReEncrypt` can move a data key from `a` to `b`: one principal reaches both
    /// keys, and both are in one region (KMS keys are regional).
    fn same_principal(&self, a: &Kek, b: &Kek) -> bool {
        let same_caller = match (&a.spec, &b.spec) {
            (KeySpec::ServiceManaged, KeySpec::ServiceManaged) => true,
            (KeySpec::AwsKms { role_arn: ra, .. }, KeySpec::AwsKms { role_arn: rb, .. }) => {
                ra == rb && a.external_id == b.external_id
            }
            _ => false,
        };
        same_caller && self.region_of(a) == self.region_of(b)
    }

    /// The region a key's calls go to (`None`: the configured one).
    fn region_of<'a>(&self, kek: &'a Kek) -> Option<&'a str> {
        let key = match &kek.spec {
            KeySpec::AwsKms {
                key_arn,
                resolved_key_arn,
                ..
            } => resolved_key_arn.as_deref().unwrap_or(key_arn),
            // The service key has one region; local and transit keys never reach this provider.
            KeySpec::ServiceManaged | KeySpec::Local | KeySpec::VaultTransit(_) => return None,
        };
        self.other_region(arn_region(key))
    }
}

/// A KMS answer's ciphertext and the key ARN that produced it (Encrypt and ReEncrypt alike).
fn wrapped_from(blob: Option<&Blob>, key_id: Option<&str>) -> Result<Wrapped, KeyError> {
    Ok(Wrapped {
        blob: blob
            .map(|b| b.as_ref().to_vec())
            .ok_or_else(|| KeyError::new(KeyErrorKind::Transient, "KMS returned no ciphertext"))?,
        resolved_key: key_id.map(str::to_owned),
    })
}

#[async_trait]
impl KeyProvider for KmsKeyProvider {
    fn rewraps_in_one_call(&self, from: &Kek, to: &Kek) -> bool {
        self.same_principal(from, to)
    }

    async fn wrap(
        &self,
        kek: &Kek,
        ctx: &EncryptionContext,
        plaintext: &DataKey,
    ) -> Result<Wrapped, KeyError> {
        self.encrypt(kek, ctx, plaintext.expose(), false).await
    }

    async fn unwrap(
        &self,
        kek: &Kek,
        ctx: &EncryptionContext,
        wrapped: &[u8],
    ) -> Result<DataKey, KeyError> {
        let (client, key_id) = self.client_for(kek).await?;
        self.count();
        let out = client
            .decrypt()
            .key_id(&key_id)
            .ciphertext_blob(Blob::new(wrapped.to_vec()))
            .set_encryption_context(Some(ctx.clone().into_iter().collect()))
            .send()
            .await
            .map_err(|e| key_error(e, &format!("decrypting with KMS key {key_id}")));
        let out = counted(out, cmk_core::metrics::kms_call)?;
        // Take the SDK's plaintext buffer and wipe it once copied into the data key.
        out.plaintext
            .map(|p| zeroize::Zeroizing::new(p.into_inner()))
            .and_then(|p| DataKey::from_slice(&p))
            .ok_or_else(|| {
                KeyError::new(
                    KeyErrorKind::InvalidCiphertext,
                    "KMS returned no 32-byte key",
                )
            })
    }

    async fn rewrap(
        &self,
        from: &Kek,
        to: &Kek,
        ctx: &EncryptionContext,
        wrapped: &[u8],
    ) -> Result<Option<Wrapped>, KeyError> {
        if !self.same_principal(from, to) {
            return Ok(None);
        }
        let (client, source_key) = self.client_for(from).await?;
        let (_, destination_key) = self.client_for(to).await?;
        self.count();
        let context: HashMap<String, String> = ctx.clone().into_iter().collect();
        let out = client
            .re_encrypt()
            .ciphertext_blob(Blob::new(wrapped.to_vec()))
            .source_key_id(&source_key)
            .set_source_encryption_context(Some(context.clone()))
            .destination_key_id(&destination_key)
            .set_destination_encryption_context(Some(context))
            .send()
            .await
            .map_err(|e| {
                key_error(
                    e,
                    &format!("re-encrypting from KMS key {source_key} to {destination_key}"),
                )
            });
        let out = counted(out, cmk_core::metrics::kms_call)?;
        wrapped_from(out.ciphertext_blob(), out.key_id()).map(Some)
    }

    async fn check(&self, kek: &Kek) -> Result<Option<String>, KeyError> {
        let mut ctx = EncryptionContext::new();
        ctx.insert("org".into(), kek.org.to_string());
        ctx.insert("purpose".into(), "key-check".into());
        let probe = DataKey::generate();
        // An explicit check asks STS again even if a failure is remembered.
        let wrapped = self.encrypt(kek, &ctx, probe.expose(), true).await?;
        let mut resolved_kek = kek.clone();
        if let KeySpec::AwsKms {
            resolved_key_arn, ..
        } = &mut resolved_kek.spec
        {
            *resolved_key_arn = wrapped.resolved_key.clone();
        }
        let back = self.unwrap(&resolved_kek, &ctx, &wrapped.blob).await?;
        if back.expose() != probe.expose() {
            return Err(KeyError::new(
                KeyErrorKind::InvalidCiphertext,
                "the round trip returned other bytes",
            ));
        }
        Ok(wrapped.resolved_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_map_to_kinds() {
        assert_eq!(
            kind_of(Some("AccessDeniedException"), Some(400)),
            KeyErrorKind::AccessDenied
        );
        assert_eq!(kind_of(None, Some(403)), KeyErrorKind::AccessDenied);
        assert_eq!(
            kind_of(Some("DisabledException"), None),
            KeyErrorKind::KeyDisabled
        );
        assert_eq!(
            kind_of(Some("KMSInvalidStateException"), None),
            KeyErrorKind::InvalidKeyState
        );
        assert_eq!(
            kind_of(Some("ThrottlingException"), None),
            KeyErrorKind::Throttled
        );
        assert_eq!(
            kind_of(Some("NotFoundException"), None),
            KeyErrorKind::KeyNotFound
        );
        assert_eq!(kind_of(None, None), KeyErrorKind::Transient);
    }

    #[test]
    fn the_region_comes_from_the_key_arn() {
        assert_eq!(
            arn_region("arn:aws:kms:eu-west-1:111122223333:key/abc"),
            Some("eu-west-1")
        );
        assert_eq!(
            arn_region("arn:aws-us-gov:kms:us-gov-west-1:111122223333:alias/x"),
            Some("us-gov-west-1")
        );
        assert_eq!(arn_region("alias/cmk-service"), None);
        assert_eq!(arn_region("1234abcd-12ab-34cd-56ef-1234567890ab"), None);
        assert_eq!(arn_region("arn:aws:kms::111122223333:key/abc"), None);
    }

    #[test]
    fn session_names_are_bounded() {
        assert_eq!(session_name("acme"), "cmk-service-acme");
        assert_eq!(session_name(&"x".repeat(100)).len(), 64);
    }
}
