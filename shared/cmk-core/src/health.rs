//! Continuous key health checks: every customer managed key that is not disabled gets a real
//! round trip through its provider at most once per [`HealthCheckConfig::interval`], so a
//! revoked or broken key shows (and alarms) within that interval even when nothing uses it.
//!
//! A run (the local worker's timer, the scheduled sweep on AWS) asks the store for the keys
//! whose last check is older than the interval, least recently checked first, at most
//! [`HealthCheckConfig::per_run`] of them, and checks them a few at a time. Because each key
//! falls due one interval after its own last check and a run takes a bounded number, checks
//! spread over the interval instead of bunching: keys added together are spread by the first
//! runs that cannot take them all. Any use of a key records its health too (a failed decrypt, a
//! re-encryption, an admin's check), which also moves its next check back.
//!
//! A check that does not answer within [`HealthCheckConfig::timeout`] records `unknown`, and a
//! run stops starting checks after [`HealthCheckConfig::budget`]: one org's hanging key delays
//! no other org's check by more than one timeout, and a run fits in the worker's time limit.

use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};

use crate::error::CoreError;
use crate::model::{KeyRecord, OrgId};
use crate::service::{Cmk, HEALTH_ACTOR};

/// Settings of the continuous health checks.
#[derive(Clone, Debug)]
pub struct HealthCheckConfig {
    /// Each key is checked at most once per interval (`CMK_HEALTH_CHECK_INTERVAL`).
    pub interval: Duration,
    /// Most keys one run checks.
    pub per_run: usize,
    /// Checks in flight at once.
    pub concurrency: usize,
    /// How long one check may take before it counts as failed (`unknown`).
    pub timeout: Duration,
    /// A run starts no check after this long.
    pub budget: Duration,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(crate::defaults::HEALTH_CHECK_INTERVAL_SECS),
            per_run: crate::defaults::HEALTH_CHECKS_PER_RUN,
            concurrency: 8,
            timeout: Duration::from_secs(10),
            budget: Duration::from_secs(30),
        }
    }
}

/// What one run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HealthCheckRun {
    /// Keys checked by a round trip.
    pub checked: usize,
    /// Of those, keys whose health status changed.
    pub changed: usize,
    /// Checks whose result could not be recorded (the store failed), or not started because
    /// the run's budget ran out; they stay due for the next run.
    pub skipped: usize,
}

/// One key's check, as a run counts it.
enum Outcome {
    Unchanged,
    Changed,
    Skipped,
}

impl Cmk {
    /// Checks the keys that are due, at most `config.per_run` of them.
    pub async fn check_due_keys(
        &self,
        config: &HealthCheckConfig,
    ) -> Result<HealthCheckRun, CoreError> {
        let started = Instant::now();
        let Some(before) = chrono::Duration::from_std(config.interval)
            .ok()
            .and_then(|interval| crate::model::now().checked_sub_signed(interval))
        else {
            return Ok(HealthCheckRun::default());
        };
        let due = self
            .orgs()
            .keys_due_for_check(before, config.per_run)
            .await?;
        let outcomes: Vec<Outcome> = stream::iter(due)
            .map(|(org, record)| async move {
                if started.elapsed() >= config.budget {
                    return Outcome::Skipped;
                }
                match self.check_unattended(&org, &record, config.timeout).await {
                    Ok(true) => Outcome::Changed,
                    Ok(false) => Outcome::Unchanged,
                    Err(e) => {
                        tracing::warn!(error = %e, %org, key = %record.id, "could not record a key's health check");
                        Outcome::Skipped
                    }
                }
            })
            .buffer_unordered(config.concurrency.max(1))
            .collect()
            .await;
        let mut run = HealthCheckRun::default();
        for outcome in outcomes {
            match outcome {
                Outcome::Unchanged => run.checked += 1,
                Outcome::Changed => {
                    run.checked += 1;
                    run.changed += 1;
                }
                Outcome::Skipped => run.skipped += 1,
            }
        }
        Ok(run)
    }

    /// Checks one key and records its health; `true` when the status changed.
    async fn check_unattended(
        &self,
        org: &OrgId,
        record: &KeyRecord,
        timeout: Duration,
    ) -> Result<bool, CoreError> {
        let kek = self.kek(org, &record.id).await?;
        let observed = self.round_trip(&kek, Some(timeout)).await;
        let (_, changed) = self
            .record_check(HEALTH_ACTOR, org, record, observed)
            .await?;
        Ok(changed)
    }
}
