//! The use cases: what the HTTP routes, the CLI and the worker call. Every admin change reads a
//! snapshot, applies a rule from [`crate::rules`], and commits conditionally, retrying when a
//! concurrent change won.
//!
//! Over 600 lines because it is every use case of the service, each short; the rules they apply
//! live in [`crate::rules`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::Rng;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::cache::DataKeyCache;
use crate::crypto::{self, DataKey};
use crate::error::{CoreError, KeyError, KeyErrorKind, StoreError};
use crate::events::ServiceEvent;
use crate::model::{
    data_key_context, validate_key_name, validate_kms_key_arn, validate_role_arn, AuditAction,
    AuditEvent, DataKeyId, DataKeyRecord, EncryptionContext, Health, Job, JobState, Key, KeyId,
    KeyRecord, KeySpec, KeyState, OrgId, TrustMode,
};
use crate::ports::{
    AuditLog, DataKeyStore, EventPublisher, JobChange, Kek, KeyProvider, OrgCommit, OrgSnapshot,
    OrgStore, RewrapMessage, RewrapProgress, RewrapQueue, StoreParts,
};
use crate::rules::{self, Retry};

/// Settings of the use cases.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// The principals customers trust in their role's trust policy (shown by `keys/setup`),
    /// separated by commas.
    pub service_principal: String,
    /// Whether `local` keys may be added (local runs only).
    pub allow_local_keys: bool,
    /// Whether `aws-kms` keys may be added (needs the AWS key provider).
    pub allow_aws_keys: bool,
    /// Whether `vault-transit` keys may be added (needs the transit key provider).
    pub allow_vault_keys: bool,
    /// At most one key-health write per key per this interval is caused by failing calls, so a
    /// revoked key under load does not turn every failed decrypt into a store write.
    pub health_write_interval: Duration,
    /// A running job is planned again (by a retry or the sweep) only when neither a plan nor a
    /// committed batch of it is more recent than this: see [`Cmk::replan_if_stalled`].
    pub stalled_after: Duration,
    /// The AWS account the service runs in. A customer role in it is refused: customers' keys
    /// live in their own accounts, and a role of the operator's account reached through the
    /// service would be the operator's, not the customer's (confused deputy).
    pub service_account_id: Option<String>,
    /// Allows roles in the service's own account (single-account test setups only).
    pub allow_same_account_roles: bool,
    /// The service's OIDC issuer URL, when it is one ([`crate::oidc`]): new `aws-kms` keys
    /// trust it by default, and `keys/setup` describes that trust.
    pub oidc_issuer: Option<String>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            service_principal: crate::defaults::SERVICE_PRINCIPAL.into(),
            allow_local_keys: true,
            allow_aws_keys: false,
            allow_vault_keys: false,
            health_write_interval: Duration::from_secs(crate::defaults::FAILURE_MEMORY_SECS),
            stalled_after: Duration::from_secs(crate::defaults::LOCAL_STALLED_AFTER_SECS),
            service_account_id: None,
            allow_same_account_roles: false,
            oidc_issuer: None,
        }
    }
}

/// The keys page: every key, the default, and the current job.
#[derive(Clone, Debug)]
pub struct KeyListing {
    pub keys: Vec<Key>,
    pub default_key_id: KeyId,
    pub job: Option<Job>,
}

/// What an admin needs to set up a customer role and key.
#[derive(Clone, Debug)]
pub struct Setup {
    /// What a new `aws-kms` key trusts unless the admin says otherwise.
    pub default_trust: TrustMode,
    pub external_id: String,
    pub service_principal: String,
    /// The role's trust policy in `external_id` mode.
    pub trust_policy: Value,
    pub key_policy_statement: Value,
    /// The `oidc` mode, when the service is an OIDC issuer.
    pub oidc: Option<OidcSetup>,
}

/// What a customer sets up to trust the service's OIDC issuer.
#[derive(Clone, Debug)]
pub struct OidcSetup {
    /// The IAM OIDC identity provider's URL.
    pub provider_url: String,
    /// The provider's audience (client id) for this org.
    pub audience: String,
    /// The subject of this org's tokens.
    pub subject: String,
    pub trust_policy: Value,
}

/// A key to add, as the admin asked for it.
#[derive(Clone, Debug)]
pub enum NewKeySpec {
    AwsKms {
        role_arn: String,
        key_arn: String,
        /// `None`: [`crate::model::DEFAULT_REWRAP_RATE_LIMIT`].
        rewrap_rate_limit: Option<u32>,
        /// `None`: OIDC where the service has an issuer, else the external id.
        trust: Option<TrustMode>,
    },
    Local,
    VaultTransit {
        address: String,
        /// `None`: [`crate::vault::DEFAULT_MOUNT`].
        mount: Option<String>,
        key_name: String,
        namespace: Option<String>,
        credential: crate::vault::VaultCredential,
        /// `None`: no limit.
        rewrap_rate_limit: Option<u32>,
    },
}

/// What `keys/{id}/rewrap` did.
#[derive(Clone, Debug)]
pub enum Rewrap {
    /// A `rotate` job started.
    Started(Job),
    /// Nothing to do, and why.
    Automatic(String),
}

/// Why an `aws-kms` key needs no re-wrap after a rotation.
pub const AWS_KMS_ROTATION: &str = "AWS KMS rotates key material transparently: a rotated key \
keeps every earlier version and decrypts what they wrapped, so its data keys need no re-wrap \
and there is no old version to retire.";

/// Most attempts at a conditional commit before answering [`CoreError::Contention`].
const COMMIT_ATTEMPTS: u32 = 64;
/// The longest a change waits for its events to be handed over before it carries on.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// Most attempts at inserting a data key while the default changes under it.
const INSERT_ATTEMPTS: u32 = 8;

/// The CMK service's use cases over its ports. Cheap to clone.
#[derive(Clone)]
pub struct Cmk {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cmk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cmk").finish_non_exhaustive()
    }
}

struct Inner {
    store: StoreParts,
    queue: Arc<dyn RewrapQueue>,
    keys: Arc<dyn KeyProvider>,
    cache: DataKeyCache,
    config: ServiceConfig,
    /// Key specs never change after a key is added, so they are cached for the data plane.
    keks: Mutex<HashMap<(OrgId, KeyId), Kek>>,
    /// When a failure last wrote each key's health (the debounce of [`Cmk::key_failed`]).
    health_written: Mutex<HashMap<(OrgId, KeyId), Instant>>,
    /// Where events go, if anywhere ([`Cmk::with_events`]).
    events: OnceLock<Arc<dyn EventPublisher>>,
}

impl Cmk {
    /// `store` is one adapter that has every part (`Arc<SqliteStore>`, `Arc<dyn Store>`) or
    /// [`StoreParts`] put together from several.
    pub fn new(
        store: impl Into<StoreParts>,
        queue: Arc<dyn RewrapQueue>,
        keys: Arc<dyn KeyProvider>,
        cache: DataKeyCache,
        config: ServiceConfig,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store: store.into(),
                queue,
                keys,
                cache,
                config,
                keks: Mutex::new(HashMap::new()),
                health_written: Mutex::new(HashMap::new()),
                events: OnceLock::new(),
            }),
        }
    }

    /// Publishes [`ServiceEvent`]s (key health changes, job transitions) to `events`. Set once,
    /// before the service is used; a second call changes nothing.
    pub fn with_events(self, events: Arc<dyn EventPublisher>) -> Self {
        if self.inner.events.set(events).is_err() {
            tracing::warn!("an event publisher was already set; keeping the first");
        }
        self
    }

    /// Publishes events of a committed change. Never fails the caller: the change stands, and
    /// the adapter has counted what it could not deliver.
    pub(crate) async fn publish(&self, events: Vec<ServiceEvent>) {
        let Some(publisher) = self.inner.events.get() else {
            return;
        };
        if events.is_empty() {
            return;
        }
        match tokio::time::timeout(PUBLISH_TIMEOUT, publisher.publish(&events)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, events = events.len(), "events not published"),
            Err(_) => {
                crate::metrics::events("failed", events.len() as u64);
                tracing::warn!(
                    events = events.len(),
                    "events not published within {} s",
                    PUBLISH_TIMEOUT.as_secs()
                );
            }
        }
    }

    /// Orgs and their keys: snapshots, the conditional commit, key health.
    pub(crate) fn orgs(&self) -> &Arc<dyn OrgStore> {
        &self.inner.store.orgs
    }

    pub(crate) fn data_keys(&self) -> &Arc<dyn DataKeyStore> {
        &self.inner.store.data_keys
    }

    /// Jobs' progress: what the engine and the sweep read and write.
    pub(crate) fn progress(&self) -> &Arc<dyn RewrapProgress> {
        &self.inner.store.progress
    }

    pub(crate) fn audit_log(&self) -> &Arc<dyn AuditLog> {
        &self.inner.store.audit
    }

    pub(crate) fn queue(&self) -> &Arc<dyn RewrapQueue> {
        &self.inner.queue
    }

    pub(crate) fn key_provider(&self) -> &Arc<dyn KeyProvider> {
        &self.inner.keys
    }

    pub fn config(&self) -> &ServiceConfig {
        &self.inner.config
    }

    pub async fn snapshot(&self, org: &OrgId) -> Result<OrgSnapshot, CoreError> {
        Ok(self.orgs().load_org(org).await?)
    }

    /// Reads a snapshot, applies `rule`, commits conditionally; retries when another writer won.
    pub(crate) async fn commit_rule<F>(
        &self,
        org: &OrgId,
        rule: F,
    ) -> Result<(OrgSnapshot, Option<Job>), CoreError>
    where
        F: Fn(&OrgSnapshot) -> Result<OrgCommit, CoreError>,
    {
        let (snapshot, (), job) = self
            .decide_and_commit(org, |s| Ok(Decision::Commit(rule(s)?, ())))
            .await?;
        Ok((snapshot, job))
    }

    /// The one loop of every change to an org: read a snapshot, let `rule` decide, commit
    /// conditionally on the snapshot's version, and when another writer won, back off and
    /// start over from a new snapshot. Returns the snapshot decided on, what the rule said to
    /// do next, and the job the commit wrote (none for an [`Decision::Answer`]).
    pub(crate) async fn decide_and_commit<T, F>(
        &self,
        org: &OrgId,
        rule: F,
    ) -> Result<(OrgSnapshot, T, Option<Job>), CoreError>
    where
        F: Fn(&OrgSnapshot) -> Result<Decision<T>, CoreError>,
    {
        for attempt in 0..COMMIT_ATTEMPTS {
            let snapshot = self.snapshot(org).await?;
            let (commit, next) = match rule(&snapshot)? {
                Decision::Answer(next) => return Ok((snapshot, next, None)),
                Decision::Commit(commit, next) => (commit, next),
            };
            let transition = commit.job.as_ref().map(job_transition);
            match self.orgs().commit(org, commit).await {
                Ok(job) => {
                    if let Some(transition) = transition {
                        crate::metrics::job_transition(transition);
                        if let Some(event) = job
                            .as_ref()
                            .and_then(|j| ServiceEvent::job_changed(transition, &snapshot, j))
                        {
                            self.publish(vec![event]).await;
                        }
                    }
                    return Ok((snapshot, next, job));
                }
                Err(StoreError::Conflict(_)) => backoff(attempt).await,
                Err(e) => return Err(e.into()),
            }
        }
        Err(CoreError::Contention)
    }

    /// Sends messages; a failure is logged, not returned: the state change already committed,
    /// and the worker's sweep re-plans a job whose message was lost.
    pub(crate) async fn enqueue(&self, messages: &[RewrapMessage]) {
        if let Err(e) = self.inner.queue.send(messages).await {
            tracing::error!(error = %e, "could not enqueue re-encryption work; the sweep will re-plan it");
        }
    }

    pub(crate) async fn enqueue_plan(&self, org: &OrgId, job: &Job, generation: u32) {
        self.enqueue(&[RewrapMessage::Plan {
            org: org.clone(),
            job_id: job.id.clone(),
            generation,
            resume: None,
        }])
        .await;
    }

    /// Plans a running job again, but only if it stalled: neither planned nor advanced by a
    /// committed batch for `stalled_after`. The decision is a conditional write on the job (the
    /// store's `claim_replan`), so any number of retries and sweeps, from any number of
    /// instances, enqueue at most one extra plan per interval; a job whose batches are merely
    /// queued behind others' is planned again at most once per interval, not on every sweep.
    /// Returns whether it enqueued a plan.
    pub async fn replan_if_stalled(
        &self,
        org: &OrgId,
        job: &Job,
        stalled_after: Duration,
    ) -> Result<bool, CoreError> {
        let stalled = chrono::Duration::from_std(stalled_after).unwrap_or(chrono::Duration::MAX);
        let idle_before = crate::model::now() - stalled;
        if job.updated_at >= idle_before {
            return Ok(false);
        }
        let claimed = self
            .progress()
            .claim_replan(org, &job.id, job.generation, idle_before)
            .await?;
        if claimed {
            self.enqueue_plan(org, job, job.generation).await;
        }
        Ok(claimed)
    }

    /// The provider's view of a key, cached (specs are immutable).
    pub async fn kek(&self, org: &OrgId, key: &KeyId) -> Result<Kek, CoreError> {
        let cache_key = (org.clone(), key.clone());
        if let Some(kek) = lock(&self.inner.keks).get(&cache_key) {
            return Ok(kek.clone());
        }
        let snapshot = self.snapshot(org).await?;
        let kek = kek_of(&snapshot, key)?;
        lock(&self.inner.keks).insert(cache_key, kek.clone());
        Ok(kek)
    }

    // ---- admin reads ----

    pub async fn list_keys(&self, org: &OrgId) -> Result<KeyListing, CoreError> {
        let s = self.snapshot(org).await?;
        Ok(KeyListing {
            keys: rules::key_views(&s),
            default_key_id: s.default_key_id.clone(),
            job: s.job.clone(),
        })
    }

    pub async fn get_key(&self, org: &OrgId, key: &KeyId) -> Result<Key, CoreError> {
        rules::key_view(&self.snapshot(org).await?, key)
    }

    pub async fn reencryption(&self, org: &OrgId) -> Result<Option<Job>, CoreError> {
        Ok(self.snapshot(org).await?.job)
    }

    async fn external_id(&self, org: &OrgId) -> Result<String, CoreError> {
        let fresh = format!("cmk-{}", uuid::Uuid::new_v4().simple());
        Ok(self.orgs().ensure_org(org, &fresh).await?)
    }

    pub async fn setup(&self, org: &OrgId) -> Result<Setup, CoreError> {
        let external_id = self.external_id(org).await?;
        let principal = self.inner.config.service_principal.clone();
        let principals = self.service_principals();
        let trusted = match principals.as_slice() {
            [one] => json!(one),
            many => json!(many),
        };
        let trust_policy = json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow",
                "Principal": {"AWS": trusted},
                "Action": "sts:AssumeRole",
                "Condition": {"StringEquals": {"sts:ExternalId": external_id}}
            }]
        });
        let key_policy_statement = json!({
            "Sid": "AllowCustomerManagedKeysService",
            "Effect": "Allow",
            "Principal": {"AWS": "<the Role ARN you give us>"},
            "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncryptFrom", "kms:ReEncryptTo", "kms:DescribeKey"],
            "Resource": "*",
            "Condition": {"StringEquals": {"kms:EncryptionContext:org": org.as_str()}}
        });
        let oidc = self
            .inner
            .config
            .oidc_issuer
            .as_deref()
            .map(|issuer| OidcSetup {
                provider_url: issuer.to_owned(),
                audience: crate::oidc::audience(org),
                subject: crate::oidc::subject(org),
                trust_policy: crate::oidc::trust_policy(issuer, org),
            });
        Ok(Setup {
            default_trust: self.trust_mode(None)?,
            external_id,
            service_principal: principal,
            trust_policy,
            key_policy_statement,
            oidc,
        })
    }

    /// What a customer sets up in Vault for the transit key `key_name` at `mount` (defaults:
    /// [`crate::vault::setup`]); `None` where this service takes no `vault-transit` keys.
    pub fn vault_setup(
        &self,
        mount: Option<&str>,
        key_name: Option<&str>,
    ) -> Result<Option<crate::vault::VaultSetup>, CoreError> {
        if !self.inner.config.allow_vault_keys {
            return Ok(None);
        }
        Ok(Some(crate::vault::setup(mount, key_name)?))
    }

    /// The principals a customer's role trusts in `external_id` mode: several where the service
    /// is several function roles (the ones that reach customer keys).
    fn service_principals(&self) -> Vec<&str> {
        self.inner
            .config
            .service_principal
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect()
    }

    /// The setup kit: a CloudFormation template for the customer's account
    /// ([`crate::setup_kit`]), in `trust` mode (by default the one new keys get), making a new
    /// KMS key or taking an existing one's ARN.
    pub async fn setup_cloudformation(
        &self,
        org: &OrgId,
        trust: Option<TrustMode>,
        create_key: bool,
    ) -> Result<Value, CoreError> {
        let trust = self.trust_mode(trust)?;
        let external_id = self.external_id(org).await?;
        let principals = self.service_principals();
        Ok(crate::setup_kit::cloudformation(
            &crate::setup_kit::KitInput {
                org,
                trust,
                create_key,
                issuer: self.inner.config.oidc_issuer.as_deref(),
                external_id: &external_id,
                service_principals: &principals,
            },
        ))
    }

    pub async fn audit(
        &self,
        org: &OrgId,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<(Vec<AuditEvent>, Option<String>), CoreError> {
        // A cursor is an event id (a canonical UUID); anything else would silently read a
        // different page, so it is refused.
        if let Some(c) = cursor {
            let canonical = uuid::Uuid::try_parse(c).is_ok_and(|u| u.hyphenated().to_string() == c);
            if !canonical {
                return Err(CoreError::InvalidRequest(
                    "cursor must be the next_cursor of a previous audit page".to_owned(),
                ));
            }
        }
        Ok(self
            .audit_log()
            .list_audit(org, limit.clamp(1, 500), cursor)
            .await?)
    }

    // ---- admin writes ----

    /// Adds a key after a real round trip through the provider; nothing is stored if it fails.
    pub async fn add_key(
        &self,
        actor: &str,
        org: &OrgId,
        name: &str,
        spec: NewKeySpec,
    ) -> Result<(Key, Option<Job>), CoreError> {
        let name = validate_key_name(name)?;
        let key_id = KeyId::generate();
        let mut rate_limit = None;
        let spec = match spec {
            NewKeySpec::Local if !self.inner.config.allow_local_keys => {
                return Err(CoreError::InvalidRequest(
                    "local keys are available only when the service runs locally".into(),
                ))
            }
            NewKeySpec::Local => KeySpec::Local,
            NewKeySpec::AwsKms { .. } if !self.inner.config.allow_aws_keys => {
                return Err(CoreError::InvalidRequest(
                    "aws-kms keys need the AWS backend; this service runs on embedded backends (use type \"local\")".into(),
                ))
            }
            NewKeySpec::AwsKms {
                role_arn,
                key_arn,
                rewrap_rate_limit,
                trust,
            } => {
                validate_role_arn(&role_arn)?;
                validate_kms_key_arn(&key_arn)?;
                self.refuse_own_account(&role_arn)?;
                rate_limit = Some(crate::model::validate_rewrap_rate_limit(
                    rewrap_rate_limit.unwrap_or(crate::model::DEFAULT_REWRAP_RATE_LIMIT),
                )?);
                KeySpec::AwsKms {
                    role_arn,
                    key_arn,
                    resolved_key_arn: None,
                    trust: self.trust_mode(trust)?,
                }
            }
            NewKeySpec::VaultTransit { .. } if !self.inner.config.allow_vault_keys => {
                return Err(CoreError::InvalidRequest(
                    "vault-transit keys are not enabled on this service".into(),
                ))
            }
            NewKeySpec::VaultTransit {
                address,
                mount,
                key_name,
                namespace,
                credential,
                rewrap_rate_limit,
            } => {
                let address = crate::vault::validate_address(&address)?;
                let mount = crate::vault::validate_mount(
                    mount.as_deref().unwrap_or(crate::vault::DEFAULT_MOUNT),
                )?;
                let key_name = crate::vault::validate_key_name(&key_name)?;
                let namespace = namespace
                    .as_deref()
                    .filter(|n| !n.trim().is_empty())
                    .map(crate::vault::validate_namespace)
                    .transpose()?;
                credential.validate()?;
                rate_limit = rewrap_rate_limit
                    .map(crate::model::validate_rewrap_rate_limit)
                    .transpose()?;
                let secret = zeroize::Zeroizing::new(
                    serde_json::to_vec(&credential)
                        .map_err(|e| CoreError::Internal(format!("credential: {e}")))?,
                );
                let sealed =
                    crate::credentials::seal(self.inner.keys.as_ref(), org, &key_id, &secret)
                        .await
                        .map_err(|e| {
                            CoreError::Internal(format!(
                                "cannot seal the credential under the service-managed key: {e}"
                            ))
                        })?;
                KeySpec::VaultTransit(crate::vault::VaultTransitKey {
                    address,
                    mount,
                    key_name,
                    namespace,
                    auth: crate::vault::VaultAuth {
                        method: credential.method(),
                        fingerprint: credential.fingerprint(),
                        sealed,
                    },
                })
            }
        };
        let external_id = self.external_id(org).await?;
        rules::precheck_add(&self.snapshot(org).await?, &name)?;

        let mut kek = Kek {
            org: org.clone(),
            key_id,
            spec,
            external_id: Some(external_id),
        };
        let check = async {
            self.inner.keys.prepare(&kek).await?;
            self.inner.keys.check(&kek).await
        };
        let resolved = match check.await {
            Ok(resolved) => resolved,
            Err(e) => {
                self.inner.keys.discard(&kek).await;
                return Err(CoreError::KeyCheckFailed {
                    reason: e.kind.health(),
                    message: e.message,
                });
            }
        };
        if let KeySpec::AwsKms {
            resolved_key_arn, ..
        } = &mut kek.spec
        {
            *resolved_key_arn = resolved;
        }
        let record = KeyRecord {
            id: kek.key_id.clone(),
            name,
            spec: kek.spec.clone(),
            state: KeyState::Active,
            health: Health::ok(crate::model::now()),
            created_at: crate::model::now(),
            created_by: actor.to_owned(),
            rewrap_rate_limit: rate_limit,
        };
        let committed = self
            .commit_rule(org, |s| rules::add_key(s, actor, record.clone()))
            .await;
        let (_, job) = match committed {
            Ok(done) => done,
            // A store that failed may still have applied the commit: keep the key then.
            Err(e @ (CoreError::Store(StoreError::Unavailable(_)) | CoreError::Internal(_))) => {
                return Err(e)
            }
            Err(e) => {
                self.inner.keys.discard(&kek).await;
                return Err(e);
            }
        };
        if let Some(job) = &job {
            self.enqueue_plan(org, job, job.generation).await;
        }
        Ok((self.get_key(org, &record.id).await?, job))
    }

    /// The trust mode of a new `aws-kms` key: as asked, by default OIDC when the service is an
    /// OIDC issuer; OIDC without an issuer is refused.
    fn trust_mode(&self, asked: Option<TrustMode>) -> Result<TrustMode, CoreError> {
        let issuer = self.inner.config.oidc_issuer.is_some();
        match asked {
            Some(TrustMode::Oidc) if !issuer => Err(CoreError::InvalidField {
                field: "trust",
                message: "trust \"oidc\" needs the service's OIDC issuer, which is not \
                          configured here; use \"external_id\""
                    .to_owned(),
            }),
            Some(mode) => Ok(mode),
            None if issuer => Ok(TrustMode::Oidc),
            None => Ok(TrustMode::ExternalId),
        }
    }

    /// A customer role must be in another account than the service's (see
    /// [`ServiceConfig::service_account_id`]); checked before any AWS call.
    fn refuse_own_account(&self, role_arn: &str) -> Result<(), CoreError> {
        let config = &self.inner.config;
        let account = role_arn.split(':').nth(4).unwrap_or_default();
        match &config.service_account_id {
            Some(own) if own == account && !config.allow_same_account_roles => {
                Err(CoreError::KeyCheckFailed {
                    reason: crate::model::HealthStatus::AccessDenied,
                    message: format!(
                        "role {role_arn} is in the service's own AWS account ({own}); a customer \
                         managed key must be reached through a role in the customer's account"
                    ),
                })
            }
            _ => Ok(()),
        }
    }

    pub async fn set_default(
        &self,
        actor: &str,
        org: &OrgId,
        key: &KeyId,
    ) -> Result<Key, CoreError> {
        self.commit_rule(org, |s| rules::set_default(s, actor, key))
            .await?;
        self.get_key(org, key).await
    }

    /// Sets an `aws-kms` key's re-encryption rate limit (see [`rules::set_rate_limit`]).
    pub async fn set_rate_limit(
        &self,
        actor: &str,
        org: &OrgId,
        key: &KeyId,
        limit: u32,
    ) -> Result<Key, CoreError> {
        self.commit_rule(org, |s| rules::set_rate_limit(s, actor, key, limit))
            .await?;
        self.get_key(org, key).await
    }

    pub async fn disable(
        &self,
        actor: &str,
        org: &OrgId,
        key: &KeyId,
        target: &KeyId,
    ) -> Result<Job, CoreError> {
        let (_, job) = self
            .commit_rule(org, |s| rules::disable(s, actor, key, target))
            .await?;
        self.started(org, job).await
    }

    pub async fn disable_all(&self, actor: &str, org: &OrgId) -> Result<Job, CoreError> {
        let (_, job) = self
            .commit_rule(org, |s| rules::disable_all(s, actor))
            .await?;
        self.started(org, job).await
    }

    /// Re-wraps every data key of `key` with its latest version (a `rotate` job), after the
    /// customer rotated a `vault-transit` key; an `aws-kms` key answers why there is nothing
    /// to do.
    pub async fn rewrap_key(
        &self,
        actor: &str,
        org: &OrgId,
        key: &KeyId,
    ) -> Result<Rewrap, CoreError> {
        if !key.is_service() {
            let view = self.get_key(org, key).await?;
            if matches!(view.record.spec, KeySpec::AwsKms { .. }) {
                return Ok(Rewrap::Automatic(AWS_KMS_ROTATION.to_owned()));
            }
        }
        let (_, job) = self
            .commit_rule(org, |s| rules::rotate(s, actor, key))
            .await?;
        Ok(Rewrap::Started(self.started(org, job).await?))
    }

    async fn started(&self, org: &OrgId, job: Option<Job>) -> Result<Job, CoreError> {
        let job = job.ok_or_else(|| CoreError::Internal("the store returned no job".into()))?;
        self.enqueue_plan(org, &job, job.generation).await;
        Ok(job)
    }

    /// A real round trip through the key's provider; records and returns the key's health.
    pub async fn check_key(&self, actor: &str, org: &OrgId, key: &KeyId) -> Result<Key, CoreError> {
        let mut view = self.get_key(org, key).await?;
        let kek = self.kek(org, key).await?;
        let mut health = self.round_trip(&kek, None).await;
        if !key.is_service() {
            (health, _) = self.record_check(actor, org, &view.record, health).await?;
        }
        let mut event = AuditEvent::new(actor, AuditAction::KeyCheck)
            .key(key)
            .detail(health.status.as_str());
        if health.status != crate::model::HealthStatus::Ok {
            event = event.outcome("failure");
        }
        self.audit_log().append_audit(org, &[event]).await?;
        view.record.health = health;
        Ok(view)
    }

    pub async fn retry(&self, actor: &str, org: &OrgId) -> Result<Job, CoreError> {
        /// What a retry does after its commit (if any).
        enum Next {
            /// A failed job restarted at this generation: plan it.
            Plan(u32),
            /// A running job: plan it again only if it stalled.
            ReplanIfStalled(Job),
        }
        let (_, next, committed) = self
            .decide_and_commit(org, |s| {
                Ok(match rules::retry(s, actor)? {
                    Retry::Replan(job) => Decision::Answer(Next::ReplanIfStalled(job)),
                    Retry::Restart { commit, generation } => {
                        Decision::Commit(commit, Next::Plan(generation))
                    }
                })
            })
            .await?;
        match next {
            Next::Plan(generation) => {
                let job = committed
                    .ok_or_else(|| CoreError::Internal("the store returned no job".into()))?;
                self.enqueue_plan(org, &job, generation).await;
                Ok(job)
            }
            Next::ReplanIfStalled(job) => {
                let replanned = self
                    .replan_if_stalled(org, &job, self.inner.config.stalled_after)
                    .await?;
                let detail = if replanned {
                    "re-planned the remaining work of a stalled running job"
                } else {
                    "the running job is progressing or was planned recently; nothing re-planned"
                };
                self.audit_log()
                    .append_audit(
                        org,
                        &[AuditEvent::new(actor, AuditAction::ReencryptionRetried)
                            .job(&job.id)
                            .detail(detail)],
                    )
                    .await?;
                Ok(job)
            }
        }
    }

    pub async fn cancel(&self, actor: &str, org: &OrgId) -> Result<Job, CoreError> {
        let (_, job) = self.commit_rule(org, |s| rules::cancel(s, actor)).await?;
        job.ok_or_else(|| CoreError::Internal("the store returned no job".into()))
    }

    // ---- data plane ----

    /// Creates a data key wrapped by the org's current default key.
    pub async fn create_data_key(&self, org: &OrgId) -> Result<DataKeyRecord, CoreError> {
        for attempt in 0..INSERT_ATTEMPTS {
            let snapshot = self.snapshot(org).await?;
            let kek = kek_of(&snapshot, &snapshot.default_key_id)?;
            let id = DataKeyId::generate();
            let plaintext = DataKey::generate();
            let wipes = self.inner.cache.wipes(org, &id, &kek.key_id);
            let wrapped = self
                .inner
                .keys
                .wrap(&kek, &data_key_context(org, &id), &plaintext)
                .await
                .map_err(|e| self.unavailable(org, &kek.key_id, e))?;
            let record = DataKeyRecord {
                id,
                key_id: kek.key_id.clone(),
                wrapped: wrapped.blob,
                version: 0,
                created_at: crate::model::now(),
                row_hint: None,
            };
            match self
                .data_keys()
                .insert_data_keys(org, std::slice::from_ref(&record))
                .await
            {
                Ok(()) => {
                    self.inner.cache.insert_unless_wiped(
                        org,
                        &record.id,
                        &kek.key_id,
                        &plaintext,
                        wipes,
                    );
                    return Ok(record);
                }
                // The default changed between the read and the insert: wrap under the new one.
                Err(StoreError::Conflict(_)) => backoff(attempt).await,
                Err(e) => return Err(e.into()),
            }
        }
        Err(CoreError::Contention)
    }

    /// The plaintext of a data key, from the cache or through its wrapping key.
    pub async fn data_key(&self, org: &OrgId, id: &DataKeyId) -> Result<DataKey, CoreError> {
        if let Some(k) = self.inner.cache.get(org, id) {
            return Ok(k);
        }
        let record = self
            .data_keys()
            .get_data_key(org, id)
            .await?
            .ok_or_else(|| {
                CoreError::NotFound(format!("data key {id} not found in this organization"))
            })?;
        self.unwrap_record(org, &record).await
    }

    /// One ciphertext of [`Cmk::decrypt_many`], its data key from `records` when read there.
    async fn decrypt_parsed(
        &self,
        org: &OrgId,
        records: &HashMap<DataKeyId, DataKeyRecord>,
        parsed: Result<crypto::ParsedCiphertext, CoreError>,
        ctx: &EncryptionContext,
    ) -> Result<Zeroizing<Vec<u8>>, CoreError> {
        let parsed = parsed?;
        let key = match records.get(&parsed.data_key_id) {
            Some(record) => self.unwrap_record(org, record).await?,
            None => self.data_key(org, &parsed.data_key_id).await?,
        };
        crypto::decrypt(org, &parsed, &key, ctx)
    }

    /// A stored data key's plaintext through its wrapping key, cached unless the key was wiped
    /// meanwhile.
    async fn unwrap_record(
        &self,
        org: &OrgId,
        record: &DataKeyRecord,
    ) -> Result<DataKey, CoreError> {
        let id = &record.id;
        let kek = self.kek(org, &record.key_id).await?;
        let wipes = self.inner.cache.wipes(org, id, &record.key_id);
        let plaintext = self
            .inner
            .keys
            .unwrap(&kek, &data_key_context(org, id), &record.wrapped)
            .await
            .map_err(|e| self.unavailable(org, &record.key_id, e))?;
        self.inner
            .cache
            .insert_unless_wiped(org, id, &record.key_id, &plaintext, wipes);
        Ok(plaintext)
    }

    /// Maps a provider failure to `key_unavailable`, and reacts to it (see [`Cmk::key_failed`]).
    fn unavailable(&self, org: &OrgId, key: &KeyId, e: KeyError) -> CoreError {
        if self.key_failed(org, key, &e) {
            let (cmk, health) = (self.clone(), failure_health(&e));
            let (org, key) = (org.clone(), key.clone());
            tokio::spawn(async move { cmk.record_failure(&org, &key, health).await });
        }
        CoreError::KeyUnavailable {
            key_id: key.clone(),
            reason: e.kind.health(),
            message: e.message,
        }
    }

    /// What every failed use of a key does on this instance: a revocation (denied, disabled,
    /// deleted) wipes the key's cached data keys at once, so it bites within one failed call
    /// instead of after the cache's TTL. Returns whether the caller should record the key's
    /// health: only for a customer key's lasting failure, and at most once per key per
    /// [`ServiceConfig::health_write_interval`].
    pub(crate) fn key_failed(&self, org: &OrgId, key: &KeyId, e: &KeyError) -> bool {
        if e.kind.is_revocation() {
            let wiped = self.inner.cache.evict_key(org, key);
            if wiped > 0 {
                tracing::warn!(%org, %key, wiped, reason = e.kind.health().as_str(), "wiped the cached data keys of a key that failed");
            }
        }
        if key.is_service() || e.kind.is_retryable() {
            return false;
        }
        let now = Instant::now();
        let mut written = lock(&self.inner.health_written);
        let interval = self.inner.config.health_write_interval;
        written.retain(|_, at| now.duration_since(*at) < interval);
        match written.entry((org.clone(), key.clone())) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(now);
                true
            }
        }
    }

    /// A real round trip through the key's provider, as health: `timeout` bounds a check that
    /// runs unattended, so a key that hangs costs its own check only.
    pub(crate) async fn round_trip(&self, kek: &Kek, timeout: Option<Duration>) -> Health {
        let check = self.inner.keys.check(kek);
        let result = match timeout {
            Some(limit) => tokio::time::timeout(limit, check)
                .await
                .unwrap_or_else(|_| {
                    Err(KeyError::new(
                        KeyErrorKind::Transient,
                        format!("the check did not answer within {} s", limit.as_secs_f32()),
                    ))
                }),
            None => check.await,
        };
        let health = match result {
            Ok(_) => Health::ok(crate::model::now()),
            Err(e) => {
                // The caller records the health; only the cache reacts here.
                let _ = self.key_failed(&kek.org, &kek.key_id, &e);
                failure_health(&e)
            }
        };
        crate::metrics::key_check(health.status.as_str());
        health
    }

    /// Records what a use or check of a customer key found, after `previous` (its health as
    /// read before). When the status changed, audits `key.health_changed` with the old and new
    /// status and the reason, and counts it: the store returns the health it replaced in the
    /// same write, so of two observers of one change only one records it as a change.
    /// Returns the health recorded and whether it was a change.
    pub(crate) async fn record_health(
        &self,
        actor: &str,
        org: &OrgId,
        record: &KeyRecord,
        observed: Health,
    ) -> Result<(Health, bool), CoreError> {
        let key = &record.id;
        let health = observed.following(&record.health);
        let replaced = self.orgs().set_key_health(org, key, &health).await?;
        let Some(replaced) = replaced.filter(|r| r.status != health.status) else {
            return Ok((health, false));
        };
        let (from, to) = (replaced.status.as_str(), health.status.as_str());
        crate::metrics::key_health_changed(to);
        if health.is_failure() {
            tracing::warn!(%org, %key, from, to, reason = health.message.as_deref().unwrap_or_default(), "a key's health changed");
        } else {
            tracing::info!(%org, %key, from, to, "a key's health changed");
        }
        let mut detail = format!("{from} -> {to}");
        if let Some(message) = health.message.as_deref().filter(|_| health.is_failure()) {
            detail = format!("{detail}: {message}");
        }
        let mut event = AuditEvent::new(actor, AuditAction::KeyHealthChanged)
            .key(key)
            .detail(detail);
        if health.is_failure() {
            event = event.outcome("failure");
        }
        self.audit_log().append_audit(org, &[event]).await?;
        self.publish(vec![ServiceEvent::key_health_changed(
            org,
            record,
            replaced.status,
            &health,
        )])
        .await;
        Ok((health, true))
    }

    /// Records what a check of a key found (see [`Cmk::record_health`]). A failed use after it
    /// records itself again, whatever the debounce of [`Cmk::key_failed`] said.
    pub(crate) async fn record_check(
        &self,
        actor: &str,
        org: &OrgId,
        record: &KeyRecord,
        observed: Health,
    ) -> Result<(Health, bool), CoreError> {
        let recorded = self.record_health(actor, org, record, observed).await?;
        lock(&self.inner.health_written).remove(&(org.clone(), record.id.clone()));
        Ok(recorded)
    }

    /// Records a failed use of a key (the data plane, a re-encryption), reading its health
    /// first. Best effort: the failure is already the caller's answer.
    pub(crate) async fn record_failure(&self, org: &OrgId, key: &KeyId, observed: Health) {
        let result = async {
            let Some(record) = self.orgs().get_key(org, key).await? else {
                return Ok(());
            };
            self.record_health(HEALTH_ACTOR, org, &record, observed)
                .await
                .map(drop)
        };
        if let Err(e) = result.await {
            tracing::warn!(error = %e, %org, %key, "could not record key health");
        }
    }

    /// Forgets cached plaintexts of data keys that moved to another key, so the next use goes
    /// through (and is checked by) the key that wraps them now.
    pub(crate) fn moved(&self, org: &OrgId, ids: &[DataKeyId]) {
        self.inner.cache.forget(org, ids);
    }

    pub fn cache(&self) -> &DataKeyCache {
        &self.inner.cache
    }

    pub async fn encrypt(
        &self,
        org: &OrgId,
        id: &DataKeyId,
        plaintext: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<String, CoreError> {
        let key = self.data_key(org, id).await?;
        Ok(crypto::encrypt(org, id, &key, ctx, plaintext))
    }

    pub async fn decrypt(
        &self,
        org: &OrgId,
        ciphertext: &str,
        ctx: &EncryptionContext,
    ) -> Result<Zeroizing<Vec<u8>>, CoreError> {
        let parsed = crypto::parse(ciphertext)?;
        let key = self.data_key(org, &parsed.data_key_id).await?;
        crypto::decrypt(org, &parsed, &key, ctx)
    }

    /// Decrypts many ciphertexts of one org, in order: the data keys they need that are not
    /// cached are read in one store call, then each goes through its wrapping key as in
    /// [`Cmk::decrypt`] (up to 16 provider calls at once). `Err` only when that read fails.
    pub async fn decrypt_many(
        &self,
        org: &OrgId,
        items: &[(&str, &EncryptionContext)],
    ) -> Result<Vec<Result<Zeroizing<Vec<u8>>, CoreError>>, CoreError> {
        let parsed: Vec<Result<crypto::ParsedCiphertext, CoreError>> =
            items.iter().map(|(ct, _)| crypto::parse(ct)).collect();
        let wanted: Vec<DataKeyId> = parsed
            .iter()
            .flatten()
            .filter(|p| self.inner.cache.get(org, &p.data_key_id).is_none())
            .map(|p| p.data_key_id.clone())
            .collect();
        let records: HashMap<DataKeyId, DataKeyRecord> = self
            .data_keys()
            .get_data_keys(org, &wanted)
            .await?
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
        // Up to 16 at once, in order, with no closure handed to a combinator (so the future
        // stays `Send` for any caller that spawns it).
        let mut results = Vec::with_capacity(items.len());
        let mut next = parsed.into_iter().zip(items);
        let mut pending = futures::stream::FuturesOrdered::new();
        loop {
            while pending.len() < 16 {
                let Some((parsed, (_, ctx))) = next.next() else {
                    break;
                };
                pending.push_back(self.decrypt_parsed(org, &records, parsed, ctx));
            }
            match pending.next().await {
                Some(result) => results.push(result),
                None => break,
            }
        }
        Ok(results)
    }
}

/// What a job change is, as [`crate::metrics::JOB_TRANSITIONS`] counts it.
fn job_transition(change: &JobChange) -> &'static str {
    match change {
        JobChange::Start(_) => "started",
        JobChange::Update(u) => match u.state {
            JobState::Running => "retried",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        },
    }
}

/// Who the audit trail names for health the service observed by itself.
pub(crate) const HEALTH_ACTOR: &str = "system";

/// The health a failed use of a key records.
pub(crate) fn failure_health(e: &KeyError) -> Health {
    Health::failed(e.kind.health(), crate::model::now(), e.message.clone())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The provider's view of a key of the snapshot.
pub fn kek_of(s: &OrgSnapshot, key: &KeyId) -> Result<Kek, CoreError> {
    let spec = if key.is_service() {
        KeySpec::ServiceManaged
    } else {
        s.key(key).map(|k| k.spec.clone()).ok_or_else(|| {
            CoreError::NotFound(format!("key {key} not found in this organization"))
        })?
    };
    Ok(Kek {
        org: s.org.clone(),
        key_id: key.clone(),
        spec,
        external_id: s.external_id.clone(),
    })
}

/// What a rule made of one snapshot (see [`Cmk::decide_and_commit`]).
// Made once per attempt and taken apart at once: the commit's size costs nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Decision<T> {
    /// Commit this, then do `T`.
    Commit(OrgCommit, T),
    /// Nothing to write: answer `T`.
    Answer(T),
}

/// Short randomized exponential backoff for lost conditional writes.
pub(crate) async fn backoff(attempt: u32) {
    let cap = 2u64.saturating_pow(attempt.min(6)).max(1);
    let ms = rand::thread_rng().gen_range(0..=cap);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}
