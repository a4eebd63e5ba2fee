//! The service's metrics, named in one place and recorded through the `metrics` facade, so that
//! each runtime chooses where they go: Prometheus text at `GET /metrics` locally, CloudWatch
//! Embedded Metric Format on Lambda. With no recorder installed (tests, tools) recording costs
//! next to nothing.
//!
//! Labels are low-cardinality only: a route template, a status, an outcome, a state. An org or
//! a key id is never a label (one series per customer would grow without bound).

use metrics::{counter, histogram};

/// Data keys a re-encryption moved to their target (each counted once, however often its batch
/// was delivered).
pub const DATA_KEYS_MOVED: &str = "cmk_rewrap_data_keys_moved_total";
/// Data keys a re-encryption batch could not move (recorded as the job's failures).
pub const DATA_KEYS_FAILED: &str = "cmk_rewrap_data_keys_failed_total";
/// Job transitions, labelled `transition`: `started`, `completed`, `failed`, `cancelled`, and
/// `retried` (a failed job running again).
pub const JOB_TRANSITIONS: &str = "cmk_jobs_total";
/// Seconds one re-encryption batch took: its page listed, rewrapped and committed.
pub const BATCH_SECONDS: &str = "cmk_rewrap_batch_seconds";
/// HTTP requests answered, labelled `route` (the template, e.g. `/v1/orgs/{org}/decrypt`) and
/// `status`.
pub const HTTP_REQUESTS: &str = "cmk_http_requests_total";
/// AWS KMS calls, labelled `outcome`: `ok`, `throttled`, `access_denied`, `other`.
pub const KMS_CALLS: &str = "cmk_kms_calls_total";
/// STS `AssumeRole` calls for customer keys' sessions, labelled `outcome` as [`KMS_CALLS`].
pub const STS_SESSIONS: &str = "cmk_sts_sessions_total";
/// Round-trip checks of customer keys, labelled `result` (a health status: `ok`,
/// `access_denied`, ...).
pub const KEY_CHECKS: &str = "cmk_key_checks_total";
/// Changes of a customer key's health, labelled `status` (the new one): `ok` is a recovery,
/// anything else a key that stopped working.
pub const KEY_HEALTH_CHANGES: &str = "cmk_key_health_changes_total";
/// Events published ([`crate::events`]), labelled `outcome`: `sent` (accepted by EventBridge,
/// or answered 2xx by the webhook), `failed` (refused, or given up on after retries),
/// `dropped` (the webhook's queue was full).
pub const EVENTS: &str = "cmk_events_total";

pub fn data_keys_moved(n: u64) {
    counter!(DATA_KEYS_MOVED).increment(n);
}

pub fn data_keys_failed(n: u64) {
    counter!(DATA_KEYS_FAILED).increment(n);
}

/// A job transition that was committed (see [`JOB_TRANSITIONS`]).
pub fn job_transition(transition: &'static str) {
    counter!(JOB_TRANSITIONS, "transition" => transition).increment(1);
}

pub fn batch_seconds(seconds: f64) {
    histogram!(BATCH_SECONDS).record(seconds);
}

/// A request answered: `route` is the matched route template, never the path itself (which
/// holds org names and ids).
pub fn http_request(route: &str, status: u16) {
    counter!(HTTP_REQUESTS, "route" => route.to_owned(), "status" => status.to_string())
        .increment(1);
}

pub fn kms_call(outcome: &'static str) {
    counter!(KMS_CALLS, "outcome" => outcome).increment(1);
}

pub fn sts_session(outcome: &'static str) {
    counter!(STS_SESSIONS, "outcome" => outcome).increment(1);
}

pub fn key_check(result: &'static str) {
    counter!(KEY_CHECKS, "result" => result).increment(1);
}

pub fn key_health_changed(status: &'static str) {
    counter!(KEY_HEALTH_CHANGES, "status" => status).increment(1);
}

/// `n` events reached a final outcome (see [`EVENTS`]).
pub fn events(outcome: &'static str, n: u64) {
    counter!(EVENTS, "outcome" => outcome).increment(n);
}
