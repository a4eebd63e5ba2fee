//! The integration suites of the `cmk` binary, in one test binary (one link of the AWS SDK
//! instead of one per suite). Each module opens with what it proves; they run the built `cmk`.

mod cli;
mod e2e;
mod e2e_aws;
mod health;
mod metrics;
mod oidc;
mod secrets;
mod vault;
mod webhook;
