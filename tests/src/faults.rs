//! Fault injection at the ports: a store whose batch commits and job completions can be made to
//! fail before or after they apply (a crash between two writes), and a key provider that can
//! throttle.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cmk_core::crypto::DataKey;
use cmk_core::error::{KeyError, KeyErrorKind, StoreError};
use cmk_core::model::{
    AuditAction, EncryptionContext, Health, Job, JobId, KeyId, KeyRecord, OrgId,
};
use cmk_core::ports::{
    BatchCommit, JobProgress, Kek, KeyProvider, OrgCommit, OrgSnapshot, OrgStore, RewrapProgress,
    StoreParts, Wrapped,
};

/// Counters of faults still to inject; each fault fires once per unit.
#[derive(Debug, Default)]
pub struct StoreFaults {
    /// Fail the next N batch commits without applying them.
    pub batch_before: AtomicU32,
    /// Apply the next N batch commits, then report a failure (the caller crashed after the write).
    pub batch_after: AtomicU32,
    /// Apply the next N org commits that finish a job, then report a failure.
    pub finish_after: AtomicU32,
    /// Not a fault: how many key-health writes were made.
    pub health_writes: AtomicU32,
}

fn take(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

fn crash() -> StoreError {
    StoreError::Unavailable("injected crash".into())
}

/// The store with `faults` injected: the org and progress parts are wrapped, the data-key and
/// audit parts are the real ones.
pub fn with_faults(store: StoreParts, faults: Arc<StoreFaults>) -> StoreParts {
    StoreParts {
        orgs: Arc::new(FaultyOrgs {
            inner: store.orgs,
            faults: Arc::clone(&faults),
        }),
        progress: Arc::new(FaultyProgress {
            inner: store.progress,
            faults,
        }),
        ..store
    }
}

/// Org commits that finish a job can crash after they apply; key-health writes are counted.
struct FaultyOrgs {
    inner: Arc<dyn OrgStore>,
    faults: Arc<StoreFaults>,
}

#[async_trait]
impl OrgStore for FaultyOrgs {
    async fn ensure_org(&self, org: &OrgId, e: &str) -> Result<String, StoreError> {
        self.inner.ensure_org(org, e).await
    }

    async fn load_org(&self, org: &OrgId) -> Result<OrgSnapshot, StoreError> {
        self.inner.load_org(org).await
    }

    async fn commit(&self, org: &OrgId, commit: OrgCommit) -> Result<Option<Job>, StoreError> {
        let finishing = commit.events.iter().any(|e| {
            e.action == AuditAction::ReencryptionCompleted.as_str()
                || e.action == AuditAction::ReencryptionFailed.as_str()
        });
        let result = self.inner.commit(org, commit).await;
        if finishing && result.is_ok() && take(&self.faults.finish_after) {
            return Err(crash());
        }
        result
    }

    async fn get_key(&self, org: &OrgId, key: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.get_key(org, key).await
    }

    async fn set_key_health(
        &self,
        org: &OrgId,
        key: &KeyId,
        h: &Health,
    ) -> Result<Option<Health>, StoreError> {
        self.faults.health_writes.fetch_add(1, Ordering::SeqCst);
        self.inner.set_key_health(org, key, h).await
    }

    async fn keys_due_for_check(
        &self,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(OrgId, KeyRecord)>, StoreError> {
        self.inner.keys_due_for_check(before, limit).await
    }
}

/// Batch commits can fail before they apply or crash after.
struct FaultyProgress {
    inner: Arc<dyn RewrapProgress>,
    faults: Arc<StoreFaults>,
}

#[async_trait]
impl RewrapProgress for FaultyProgress {
    async fn get_job(&self, org: &OrgId, job: &JobId) -> Result<Option<Job>, StoreError> {
        self.inner.get_job(org, job).await
    }

    async fn running_jobs(&self) -> Result<Vec<(OrgId, Job)>, StoreError> {
        self.inner.running_jobs().await
    }

    async fn set_job_throttle(
        &self,
        org: &OrgId,
        job: &JobId,
        generation: u32,
        rate: Option<u32>,
    ) -> Result<(), StoreError> {
        self.inner
            .set_job_throttle(org, job, generation, rate)
            .await
    }

    async fn claim_replan(
        &self,
        org: &OrgId,
        job: &JobId,
        generation: u32,
        idle_before: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, StoreError> {
        self.inner
            .claim_replan(org, job, generation, idle_before)
            .await
    }

    async fn commit_batch(
        &self,
        org: &OrgId,
        batch: BatchCommit,
    ) -> Result<JobProgress, StoreError> {
        if take(&self.faults.batch_before) {
            return Err(crash());
        }
        let result = self.inner.commit_batch(org, batch).await;
        if result.is_ok() && take(&self.faults.batch_after) {
            return Err(crash());
        }
        result
    }
}

/// A provider that throttles the next N calls of any kind.
pub struct ThrottlingKeys {
    pub inner: Arc<dyn KeyProvider>,
    pub throttle_next: Arc<AtomicU32>,
}

impl ThrottlingKeys {
    fn throttled(&self) -> Result<(), KeyError> {
        if take(&self.throttle_next) {
            Err(KeyError::new(
                KeyErrorKind::Throttled,
                "rate exceeded (injected)",
            ))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl KeyProvider for ThrottlingKeys {
    async fn prepare(&self, kek: &Kek) -> Result<(), KeyError> {
        self.inner.prepare(kek).await
    }
    async fn wrap(
        &self,
        kek: &Kek,
        ctx: &EncryptionContext,
        pt: &DataKey,
    ) -> Result<Wrapped, KeyError> {
        self.throttled()?;
        self.inner.wrap(kek, ctx, pt).await
    }
    async fn unwrap(
        &self,
        kek: &Kek,
        ctx: &EncryptionContext,
        w: &[u8],
    ) -> Result<DataKey, KeyError> {
        self.throttled()?;
        self.inner.unwrap(kek, ctx, w).await
    }
    async fn check(&self, kek: &Kek) -> Result<Option<String>, KeyError> {
        self.inner.check(kek).await
    }
}

/// A provider with a one-call rewrap (like KMS `ReEncrypt`) that the customer's policy refuses,
/// and whose wraps under one chosen key can be denied (a revoked target).
pub struct RefusedOneCallRewrap {
    pub inner: Arc<dyn KeyProvider>,
    pub deny_wraps_by: Arc<std::sync::Mutex<Option<KeyId>>>,
}

#[async_trait]
impl KeyProvider for RefusedOneCallRewrap {
    fn rewraps_in_one_call(&self, _from: &Kek, _to: &Kek) -> bool {
        true
    }
    async fn prepare(&self, kek: &Kek) -> Result<(), KeyError> {
        self.inner.prepare(kek).await
    }
    async fn wrap(
        &self,
        kek: &Kek,
        ctx: &EncryptionContext,
        pt: &DataKey,
    ) -> Result<Wrapped, KeyError> {
        let denied = self
            .deny_wraps_by
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            == Some(&kek.key_id);
        if denied {
            return Err(KeyError::new(
                KeyErrorKind::AccessDenied,
                format!("not allowed to encrypt with {} (injected)", kek.key_id),
            ));
        }
        self.inner.wrap(kek, ctx, pt).await
    }
    async fn unwrap(
        &self,
        kek: &Kek,
        ctx: &EncryptionContext,
        w: &[u8],
    ) -> Result<DataKey, KeyError> {
        self.inner.unwrap(kek, ctx, w).await
    }
    async fn rewrap(
        &self,
        _from: &Kek,
        _to: &Kek,
        _ctx: &EncryptionContext,
        _w: &[u8],
    ) -> Result<Option<Wrapped>, KeyError> {
        Err(KeyError::new(
            KeyErrorKind::AccessDenied,
            "not allowed to re-encrypt (injected)",
        ))
    }
    async fn check(&self, kek: &Kek) -> Result<Option<String>, KeyError> {
        self.inner.check(kek).await
    }
}
