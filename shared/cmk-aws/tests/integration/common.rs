//! Shared setup for the suites against the AWS emulator (moto server on loopback).
//!
//! The endpoint comes from `CMK_TEST_AWS_ENDPOINT` (the test command starts the emulator and
//! sets it). Without it the suites skip, unless `CMK_REQUIRE_AWS_TESTS` is set (CI), where a
//! missing emulator is a failure.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;

pub fn endpoint() -> Option<String> {
    cmk_aws::emulator::shared_endpoint()
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

/// On an emulator of a suite's own: the service's identity, an IAM user allowed everything in
/// the operator's account (what the functions' roles are, with IAM enforced).
pub async fn service_identity(emu: &cmk_aws::emulator::Emulator) -> SdkConfig {
    let iam = aws_sdk_iam::Client::new(&emu.root_config().await);
    iam.create_user()
        .user_name("cmk-service")
        .send()
        .await
        .expect("user");
    iam.put_user_policy()
        .user_name("cmk-service")
        .policy_name("all")
        .policy_document(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#,
        )
        .send()
        .await
        .expect("user policy");
    let key = iam
        .create_access_key()
        .user_name("cmk-service")
        .send()
        .await
        .expect("access key")
        .access_key
        .expect("access key");
    emu.config(Credentials::new(
        key.access_key_id(),
        key.secret_access_key(),
        None,
        None,
        "static",
    ))
    .await
}
