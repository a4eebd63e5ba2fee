//! Shared setup for the suites against the AWS emulator (moto server on loopback).
//!
//! The endpoint comes from `CMK_TEST_AWS_ENDPOINT` (the test command starts the emulator and
//! sets it). Without it the suites skip, unless `CMK_REQUIRE_AWS_TESTS` is set (CI), where a
//! missing emulator is a failure.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;

pub fn endpoint() -> Option<String> {
    match std::env::var("CMK_TEST_AWS_ENDPOINT") {
        Ok(e) if !e.is_empty() => Some(e),
        _ => {
            assert!(
                std::env::var_os("CMK_REQUIRE_AWS_TESTS").is_none(),
                "CMK_TEST_AWS_ENDPOINT is not set but AWS tests are required"
            );
            eprintln!("skipped: set CMK_TEST_AWS_ENDPOINT to an AWS emulator to run this test");
            None
        }
    }
}

/// An SDK configuration for the emulator with static credentials (never instance metadata).
pub async fn config(endpoint: &str, access_key: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(
            access_key, "testing", None, None, "static",
        ))
        .load()
        .await
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}
