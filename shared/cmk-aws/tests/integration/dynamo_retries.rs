//! A transaction that succeeded but whose answer was lost is retried by the SDK with the same
//! `ClientRequestToken`, which DynamoDB recognises as the same transaction (the emulator keeps
//! no tokens, so the real SDK client is driven by `aws-smithy-mocks`: a 500, then success).
//! Every attempt's request body is read as it is sent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsOutput;
use aws_smithy_mocks::{mock, mock_client, RuleMode};
use cmk_aws::DynamoStore;
use cmk_core::model::{DataKeyId, DataKeyRecord, KeyId, OrgId};
use cmk_core::ports::DataKeyStore;

/// The `ClientRequestToken` of every TransactWriteItems attempt, as sent.
#[derive(Debug, Clone, Default)]
struct Tokens(Arc<Mutex<Vec<Option<String>>>>);

impl Intercept for Tokens {
    fn name(&self) -> &'static str {
        "transaction-token-recorder"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let body = context.request().body().bytes().unwrap_or_default();
        let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        self.0
            .lock()
            .unwrap()
            .push(json["ClientRequestToken"].as_str().map(str::to_owned));
        Ok(())
    }
}

#[tokio::test]
async fn an_sdk_retry_of_a_transaction_sends_the_same_client_request_token() {
    let rule = mock!(aws_sdk_dynamodb::Client::transact_write_items)
        .sequence()
        .http_status(500, None)
        .output(|| TransactWriteItemsOutput::builder().build())
        .build();
    let tokens = Tokens::default();
    let recorder = tokens.clone();
    let client = mock_client!(aws_sdk_dynamodb, RuleMode::Sequential, [&rule], move |c| {
        c.retry_config(
            RetryConfig::standard()
                .with_max_attempts(3)
                .with_initial_backoff(Duration::from_millis(1)),
        )
        .interceptor(recorder.clone())
    });
    let store = DynamoStore::new(client, "cmk");
    let org = OrgId::from_trusted("acme");
    let record = DataKeyRecord {
        id: DataKeyId::generate(),
        key_id: KeyId::service(),
        wrapped: vec![1, 2, 3],
        version: 0,
        created_at: cmk_core::model::now(),
        row_hint: None,
    };
    store
        .insert_data_keys(&org, std::slice::from_ref(&record))
        .await
        .expect("the retry of the applied transaction answers success");
    let sent = tokens.0.lock().unwrap().clone();
    assert_eq!(sent.len(), 2, "one attempt and one retry: {sent:?}");
    let token = sent[0].clone().expect("the first attempt carries a token");
    assert!(!token.is_empty() && token.len() <= 36, "{token}");
    assert_eq!(
        sent[1].as_deref(),
        Some(token.as_str()),
        "the retry is recognised"
    );

    // Another transaction (even of the same items) is another token.
    let rule = mock!(aws_sdk_dynamodb::Client::transact_write_items)
        .then_output(|| TransactWriteItemsOutput::builder().build());
    let tokens = Tokens::default();
    let recorder = tokens.clone();
    let client = mock_client!(aws_sdk_dynamodb, RuleMode::MatchAny, [&rule], move |c| c
        .interceptor(recorder.clone()));
    let store = DynamoStore::new(client, "cmk");
    for _ in 0..2 {
        store
            .insert_data_keys(&org, std::slice::from_ref(&record))
            .await
            .unwrap();
    }
    let sent = tokens.0.lock().unwrap().clone();
    assert_eq!(sent.len(), 2);
    assert_ne!(sent[0], sent[1]);
}
