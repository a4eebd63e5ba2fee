//! The integration suites of `cmk-aws`, in one test binary: one link of the AWS SDK instead of
//! one per suite. Each module opens with what it proves. The noisy-neighbour test keeps a binary
//! of its own (`tests/noisy_neighbour.rs`), so that no other test runs beside its latency
//! measurement.

mod common;
mod contract;
mod dynamo_retries;
mod iam;
mod kms_errors;
mod oidc;
mod regions;
