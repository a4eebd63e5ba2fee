//! Re-encryption rate limits: how much of a customer's KMS quota a re-encryption may spend.
//!
//! KMS throttles per account and region, and the quota is shared with the customer's own
//! workloads. Each `aws-kms` key has a limit in KMS requests per second
//! ([`crate::model::KeyRecord::rewrap_rate_limit`]), summed over every worker: each worker
//! instance takes its share (the limit divided by the most instances that run at once), and
//! spends it through one [`Limiter`] per key, which every batch of that instance shares.
//!
//! A limiter books each request an absolute slot, `1 / rate` after the previous one, with a
//! burst of 50 ms of its rate (at least one request), so over any window of T seconds it allows
//! at most `rate × T` plus that burst: within 1 % of the limit over 10 s. Callers wait for their
//! own slot, so waiters never stampede, and a caller with a deadline (the end of a message's
//! time budget) books no slot past it.
//!
//! On throttling the rate adapts (AIMD): it halves (at most once a second, so one burst of
//! throttled calls counts once) and then recovers additively, back to the limit in
//! [`RECOVERY`] if nothing throttles again. The data plane never goes through a limiter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

// Tokio's clock, so tests can run minutes of rate in no time.
use tokio::time::Instant;

use crate::model::{KeyId, OrgId};

/// The lowest rate a limiter adapts down to, in requests per second (a limit below the number
/// of workers gives each a share below one per second, never more than the limit in total).
const MIN_RATE: f64 = 0.01;
/// Seconds of rate a limiter may spend at once (at least one request).
const BURST: f64 = 0.05;
/// How long a halved rate takes to climb back to the limit when nothing throttles.
pub const RECOVERY: Duration = Duration::from_secs(10);
/// One halving per this long, whatever the number of throttled calls in it.
const CUT_EVERY: Duration = Duration::from_secs(1);

/// The limiters of one worker instance, per (org, key).
#[derive(Debug)]
pub struct RateLimits {
    /// The most worker instances that spend one key's limit at once.
    share: u32,
    limiters: Mutex<HashMap<(OrgId, KeyId), Arc<Limiter>>>,
}

impl RateLimits {
    pub fn new(share: u32) -> Self {
        Self {
            share: share.max(1),
            limiters: Mutex::new(HashMap::new()),
        }
    }

    /// The limiter of `key`, whose limit is `limit` requests per second over every worker
    /// (`None`: not limited). A changed limit applies to the existing limiter at once.
    pub fn limiter(&self, org: &OrgId, key: &KeyId, limit: Option<u32>) -> Option<Arc<Limiter>> {
        let per_worker = (f64::from(limit?) / f64::from(self.share)).max(MIN_RATE);
        let mut limiters = lock(&self.limiters);
        let limiter = limiters
            .entry((org.clone(), key.clone()))
            .or_insert_with(|| Arc::new(Limiter::new(per_worker)));
        limiter.set_ceiling(per_worker);
        Some(Arc::clone(limiter))
    }
}

/// A rate limiter that books each request an absolute slot in time (the generic cell rate
/// algorithm): slots are `1 / rate` apart, with a tolerance of the burst, so a change of rate
/// applies to the slots booked after it and no burst builds up while callers wait.
#[derive(Debug)]
pub struct Limiter {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The configured rate (this worker's share of the key's limit).
    ceiling: f64,
    /// The rate now: the ceiling, or less after throttling.
    rate: f64,
    /// The earliest time the next slot may be booked at.
    next: Instant,
    /// When `rate` last recovered.
    recovered: Instant,
    last_cut: Option<Instant>,
}

impl State {
    /// Additive increase: back to the ceiling over [`RECOVERY`].
    fn recover(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.recovered).as_secs_f64();
        if self.rate < self.ceiling {
            self.rate = (self.rate + self.ceiling * dt / RECOVERY.as_secs_f64()).min(self.ceiling);
        }
        self.recovered = now;
    }

    /// How far behind now the next slot may lag: the burst, less the request itself.
    fn tolerance(&self) -> Duration {
        let burst = (self.rate * BURST).max(1.0);
        Duration::from_secs_f64((burst - 1.0) / self.rate)
    }
}

impl Limiter {
    pub fn new(rate: f64) -> Self {
        let rate = rate.max(MIN_RATE);
        let now = Instant::now();
        Self {
            state: Mutex::new(State {
                ceiling: rate,
                rate,
                next: now,
                recovered: now,
                last_cut: None,
            }),
        }
    }

    fn set_ceiling(&self, ceiling: f64) {
        let mut s = lock(&self.state);
        if s.ceiling != ceiling {
            s.recover(Instant::now());
            s.ceiling = ceiling;
            s.rate = s.rate.min(ceiling);
        }
    }

    /// Waits for the next request slot, unless it would come after `deadline`: then books
    /// nothing and returns `false` at once.
    pub async fn acquire_before(&self, deadline: Instant) -> bool {
        let slot = {
            let mut s = lock(&self.state);
            let now = Instant::now();
            s.recover(now);
            let earliest = now.checked_sub(s.tolerance()).unwrap_or(now);
            let slot = s.next.max(earliest);
            if slot > deadline {
                return false;
            }
            s.next = slot + Duration::from_secs_f64(1.0 / s.rate);
            slot
        };
        tokio::time::sleep_until(slot).await;
        true
    }

    /// KMS throttled a request: halve the rate (at most once per second). Returns the rate.
    pub fn throttled(&self) -> f64 {
        let now = Instant::now();
        let mut s = lock(&self.state);
        s.recover(now);
        if s.last_cut
            .is_none_or(|t| now.duration_since(t) >= CUT_EVERY)
        {
            s.rate = (s.rate / 2.0).max(MIN_RATE);
            s.last_cut = Some(now);
        }
        s.rate
    }

    /// The rate now, if throttling has brought it below the ceiling.
    pub fn throttled_rate(&self) -> Option<f64> {
        let mut s = lock(&self.state);
        s.recover(Instant::now());
        (s.rate < s.ceiling).then_some(s.rate)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Limiter {
        /// A slot, however late.
        async fn acquire(&self) {
            self.acquire_before(Instant::now() + Duration::from_secs(86_400))
                .await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_limiter_spends_at_most_its_rate_over_any_window() {
        let limiter = Arc::new(Limiter::new(100.0));
        let start = tokio::time::Instant::now();
        let mut at = Vec::new();
        for _ in 0..1_000 {
            limiter.acquire().await;
            at.push(start.elapsed());
        }
        // 1,000 slots at 100 per second: ten seconds, never faster.
        let last = at[999].as_secs_f64();
        assert!((9.9..=10.1).contains(&last), "{last}");
        for (i, t) in at.iter().enumerate() {
            let window_end = *t + Duration::from_secs(1);
            let in_window = at[i..].iter().take_while(|u| **u < window_end).count();
            assert!(
                in_window <= 101,
                "{in_window} slots in one second from {t:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_halves_the_rate_once_a_second_then_it_recovers() {
        let limiter = Limiter::new(200.0);
        assert_eq!(limiter.throttled_rate(), None);
        assert_eq!(limiter.throttled(), 100.0);
        assert_eq!(
            limiter.throttled(),
            100.0,
            "a second throttle in the same second"
        );
        tokio::time::advance(CUT_EVERY).await;
        // A second of recovery (+20) came first: (100 + 20) / 2.
        let rate = limiter.throttled();
        assert!((60.0..60.1).contains(&rate), "{rate}");
        assert!(limiter.throttled_rate().is_some());
        tokio::time::advance(RECOVERY).await;
        assert_eq!(limiter.throttled_rate(), None, "back at the limit");
    }

    #[tokio::test(start_paused = true)]
    async fn no_slot_is_booked_past_a_deadline() {
        let limiter = Limiter::new(10.0);
        let deadline = Instant::now() + Duration::from_millis(250);
        let mut got = 0;
        while limiter.acquire_before(deadline).await {
            got += 1;
        }
        // Slots at 0, 100 and 200 ms; the one at 300 ms is past the deadline and not booked.
        assert_eq!(got, 3);
        assert!(Instant::now() <= deadline);
        limiter.acquire().await;
        assert_eq!(
            Instant::now(),
            deadline + Duration::from_millis(50),
            "the refused slot was not booked: the next one is at 300 ms"
        );
    }

    #[test]
    fn each_worker_takes_its_share_and_a_new_limit_applies_at_once() {
        let limits = RateLimits::new(10);
        let org = OrgId::from_trusted("acme");
        let key = KeyId::generate();
        assert!(limits.limiter(&org, &key, None).is_none(), "no limit");
        let l = limits.limiter(&org, &key, Some(250)).expect("a limiter");
        assert_eq!(lock(&l.state).ceiling, 25.0);
        let again = limits
            .limiter(&org, &key, Some(5))
            .expect("the same limiter");
        assert!(Arc::ptr_eq(&l, &again));
        assert_eq!(
            lock(&l.state).ceiling,
            0.5,
            "a share below one per second: ten workers never send more than the limit"
        );
    }
}
