//! The port contract suites of cmk-core, run against DynamoDB, SQS and KMS on the emulator,
//! through the real AWS SDK over HTTP.

use crate::common;

use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use cmk_aws::{DynamoStore, KmsKeyProvider, KmsSettings, SqsQueue};
use cmk_aws_testkit::customer_role;
use cmk_core::model::{KeyId, KeySpec, OrgId};
use cmk_core::ports::Kek;
use cmk_core::testsuite;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_store_passes_the_store_contract() {
    let Some(ep) = common::endpoint() else { return };
    let config = common::config(&ep, "testing").await;
    let client = aws_sdk_dynamodb::Client::new(&config);
    let table = common::unique("cmk");
    cmk_aws::resources::ensure_table(&client, &table)
        .await
        .expect("table");
    testsuite::store_contract(&DynamoStore::new(client, table)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_queue_passes_the_queue_contract() {
    let Some(ep) = common::endpoint() else { return };
    let config = common::config(&ep, "testing").await;
    let client = aws_sdk_sqs::Client::new(&config);
    let url = client
        .create_queue()
        .queue_name(common::unique("rewrap"))
        .attributes(QueueAttributeName::VisibilityTimeout, "1")
        .send()
        .await
        .expect("queue")
        .queue_url
        .expect("url");
    testsuite::queue_contract(&SqsQueue::new(client, url), Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_key_provider_passes_the_key_provider_contract() {
    let Some(ep) = common::endpoint() else { return };
    let config = common::config(&ep, "testing").await;
    let kms = aws_sdk_kms::Client::new(&config);
    let iam = aws_sdk_iam::Client::new(&config);
    let service_key = kms
        .create_key()
        .send()
        .await
        .expect("key")
        .key_metadata
        .expect("meta")
        .arn
        .expect("arn");
    let customer_key = kms
        .create_key()
        .send()
        .await
        .expect("key")
        .key_metadata
        .expect("meta")
        .arn
        .expect("arn");
    let second_key = kms
        .create_key()
        .send()
        .await
        .expect("key")
        .key_metadata
        .expect("meta")
        .arn
        .expect("arn");
    let role_arn = customer_role(&iam, &common::unique("customer"), "ext-contract").await;
    let provider = KmsKeyProvider::new(&config, KmsSettings::new(&service_key));
    let org = OrgId::from_trusted("contract");
    let service = Kek {
        org: org.clone(),
        key_id: KeyId::service(),
        spec: KeySpec::ServiceManaged,
        external_id: None,
    };
    let customer = Kek {
        org: org.clone(),
        key_id: KeyId::from_trusted("key_customer"),
        spec: KeySpec::AwsKms {
            role_arn,
            key_arn: customer_key,
            resolved_key_arn: None,
            trust: cmk_core::model::TrustMode::ExternalId,
        },
        external_id: Some("ext-contract".into()),
    };
    let mut second = customer.clone();
    second.key_id = KeyId::from_trusted("key_second");
    if let KeySpec::AwsKms { key_arn, .. } = &mut second.spec {
        *key_arn = second_key;
    }
    // Across principals (decrypt then encrypt), then within one role (ReEncrypt).
    testsuite::key_provider_contract(&provider, &service, &customer).await;
    testsuite::key_provider_contract(&provider, &customer, &second).await;
}
