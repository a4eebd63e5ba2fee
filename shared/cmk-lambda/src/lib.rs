//! The glue of the CMK service's AWS Lambda functions, shared by the four binaries under
//! `functions/`, each of which is a one-line `main`:
//!
//! - [`config`]: every environment variable parsed into typed values before the runtime starts;
//! - [`gateway`]: the API Gateway authorizer's identity (JWT claims for admins, AWS IAM for
//!   services) handed to the shared router as a `Principal`;
//! - [`http`]: the `keys-read`, `keys-write` and `data-keys` functions, each the shared axum
//!   Router with only its own routes, run by `lambda_http`;
//! - [`worker`]: the SQS-triggered `rewrap-worker`, with partial batch failures;
//! - [`emf`]: the service's metrics as CloudWatch Embedded Metric Format lines on stdout.
//!
//! SDK clients are built once per cold start, and building them makes no AWS call.

pub mod config;
pub mod emf;
pub mod gateway;
pub mod http;
#[cfg(feature = "testing")]
pub mod testing;
pub mod worker;

pub use config::{ClaimNames, ConfigError, HttpSettings, WorkerSettings};
pub use gateway::{AuthorizerSource, GatewayAuthLayer, GatewayAuthenticator};
pub use http::{app, HttpFunction};
pub use worker::Worker;

/// Logs to stdout for CloudWatch, in the format and at the level the function's logging
/// configuration asks for (`AWS_LAMBDA_LOG_FORMAT`, `AWS_LAMBDA_LOG_LEVEL`, else `RUST_LOG`).
pub fn init_tracing() {
    lambda_runtime::tracing::init_default_subscriber();
}
