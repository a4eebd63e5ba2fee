//! The customer's side of the AWS tests: an IAM role that trusts the service through the org's
//! external id and may use KMS. Shared by the test suites of `cmk-aws`, `cmk-lambda` and
//! `cmk-local` as a dev-dependency. It is not in `cmk_aws::emulator` because there the IAM SDK
//! would become a dependency of the `cmk-aws` library, and every crate built on it would wait
//! for that SDK (measured: 80 s more per CI build).

/// A policy allowing every KMS action: what a customer's role grants the service in tests (the
/// emulator does not match resource ARNs).
pub const ALLOW_KMS: &str =
    r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:*","Resource":"*"}]}"#;

/// Creates a customer's role `name` that anyone presenting `external_id` may assume, with
/// [`ALLOW_KMS`]; returns its ARN.
///
/// # Panics
/// When the emulator refuses a call: a test set-up failure.
pub async fn customer_role(iam: &aws_sdk_iam::Client, name: &str, external_id: &str) -> String {
    let trust = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole",
                       "Condition": {"StringEquals": {"sts:ExternalId": external_id}}}]
    });
    let arn = iam
        .create_role()
        .role_name(name)
        .assume_role_policy_document(trust.to_string())
        .send()
        .await
        .expect("role")
        .role
        .expect("role")
        .arn;
    iam.put_role_policy()
        .role_name(name)
        .policy_name("kms")
        .policy_document(ALLOW_KMS)
        .send()
        .await
        .expect("policy");
    arn
}
