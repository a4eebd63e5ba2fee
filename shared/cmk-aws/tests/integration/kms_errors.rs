//! KMS failures the emulator cannot produce (throttling, a disabled key, a key pending
//! deletion), injected with `aws-smithy-mocks` into the real SDK client, map to the typed
//! failures of the port with messages that say what happened; and STS refusing `AssumeRole`
//! is remembered when lasting (denied) but not when throttled.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use aws_sdk_kms::error::ErrorMetadata;
use aws_sdk_kms::operation::decrypt::DecryptError;
use aws_sdk_kms::operation::encrypt::EncryptError;
use aws_sdk_kms::types::error::{DisabledException, KmsInvalidStateException};
use aws_smithy_mocks::{mock, mock_client, RuleMode};
use cmk_aws::{KmsKeyProvider, KmsSettings};
use cmk_core::crypto::DataKey;
use cmk_core::error::KeyErrorKind;
use cmk_core::model::{data_key_context, DataKeyId, KeyId, KeySpec, OrgId};
use cmk_core::ports::{Kek, KeyProvider};

fn service_kek() -> Kek {
    Kek {
        org: OrgId::from_trusted("acme"),
        key_id: KeyId::service(),
        spec: KeySpec::ServiceManaged,
        external_id: None,
    }
}

async fn provider(kms: aws_sdk_kms::Client) -> KmsKeyProvider {
    let config = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .build();
    let sts = aws_sdk_sts::Client::new(&config);
    KmsKeyProvider::from_clients(&config, kms, sts, KmsSettings::new("alias/cmk-service"))
}

#[tokio::test]
async fn a_disabled_key_is_key_disabled() {
    let rule = mock!(aws_sdk_kms::Client::decrypt)
        .sequence()
        .error(|| {
            DecryptError::DisabledException(
                DisabledException::builder()
                    .message("arn:aws:kms:...:key/1 is disabled.")
                    // The SDK's deserializer records the error code; a built error must too.
                    .meta(ErrorMetadata::builder().code("DisabledException").build())
                    .build(),
            )
        })
        .repeatedly()
        .build();
    let kms = mock_client!(aws_sdk_kms, RuleMode::MatchAny, [&rule]);
    let kek = service_kek();
    let ctx = data_key_context(&kek.org, &DataKeyId::generate());
    let err = provider(kms)
        .await
        .unwrap(&kek, &ctx, b"wrapped")
        .await
        .unwrap_err();
    assert_eq!(err.kind, KeyErrorKind::KeyDisabled);
    assert!(err.message.contains("disabled"), "{}", err.message);
}

#[tokio::test]
async fn a_key_pending_deletion_is_invalid_key_state() {
    let rule = mock!(aws_sdk_kms::Client::encrypt)
        .sequence()
        .error(|| {
            EncryptError::KmsInvalidStateException(
                KmsInvalidStateException::builder()
                    .message("arn:aws:kms:...:key/1 is pending deletion.")
                    .meta(
                        ErrorMetadata::builder()
                            .code("KMSInvalidStateException")
                            .build(),
                    )
                    .build(),
            )
        })
        .repeatedly()
        .build();
    let kms = mock_client!(aws_sdk_kms, RuleMode::MatchAny, [&rule]);
    let kek = service_kek();
    let ctx = data_key_context(&kek.org, &DataKeyId::generate());
    let err = provider(kms)
        .await
        .wrap(&kek, &ctx, &DataKey::generate())
        .await
        .unwrap_err();
    assert_eq!(err.kind, KeyErrorKind::InvalidKeyState);
    assert!(err.message.contains("pending deletion"), "{}", err.message);
    let health = provider(mock_client!(aws_sdk_kms, RuleMode::MatchAny, [&rule]))
        .await
        .check(&kek)
        .await
        .unwrap_err();
    assert_eq!(health.kind.health().as_str(), "invalid_key_state");
}

#[tokio::test]
async fn throttling_is_throttled_and_retryable() {
    let rule = mock!(aws_sdk_kms::Client::decrypt)
        .sequence()
        .error(|| {
            DecryptError::generic(
                ErrorMetadata::builder()
                    .code("ThrottlingException")
                    .message("Rate exceeded")
                    .build(),
            )
        })
        .repeatedly()
        .build();
    let kms = mock_client!(aws_sdk_kms, RuleMode::MatchAny, [&rule]);
    let kek = service_kek();
    let ctx = data_key_context(&kek.org, &DataKeyId::generate());
    let err = provider(kms)
        .await
        .unwrap(&kek, &ctx, b"wrapped")
        .await
        .unwrap_err();
    assert_eq!(err.kind, KeyErrorKind::Throttled);
    assert!(err.kind.is_retryable());
    assert!(err.message.contains("Rate exceeded"), "{}", err.message);
}

/// A provider whose STS answers every `AssumeRole` with `code`, and a customer key behind it.
async fn refused_by_sts(code: &'static str) -> (KmsKeyProvider, Kek) {
    let rule = mock!(aws_sdk_sts::Client::assume_role)
        .sequence()
        .error(move || {
            aws_sdk_sts::operation::assume_role::AssumeRoleError::generic(
                ErrorMetadata::builder().code(code).message(code).build(),
            )
        })
        .repeatedly()
        .build();
    let sts = mock_client!(aws_sdk_sts, RuleMode::MatchAny, [&rule]);
    let config = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .build();
    let provider = KmsKeyProvider::from_clients(
        &config,
        aws_sdk_kms::Client::new(&config),
        sts,
        KmsSettings::new("alias/cmk-service"),
    );
    let kek = Kek {
        org: OrgId::from_trusted("acme"),
        key_id: KeyId::generate(),
        spec: KeySpec::AwsKms {
            role_arn: "arn:aws:iam::111122223333:role/cmk".into(),
            key_arn: "arn:aws:kms:us-east-1:111122223333:key/k".into(),
            resolved_key_arn: None,
            trust: cmk_core::model::TrustMode::ExternalId,
        },
        external_id: Some("cmk-ext".into()),
    };
    (provider, kek)
}

#[tokio::test]
async fn a_refused_assume_role_is_remembered_but_sts_throttling_is_not() {
    for (code, kind, remembered) in [
        ("AccessDenied", KeyErrorKind::AccessDenied, true),
        ("Throttling", KeyErrorKind::Throttled, false),
    ] {
        let (provider, kek) = refused_by_sts(code).await;
        let ctx = data_key_context(&kek.org, &DataKeyId::generate());
        for _ in 0..3 {
            let err = provider.unwrap(&kek, &ctx, b"wrapped").await.unwrap_err();
            assert_eq!(err.kind, kind, "{code}");
        }
        let calls = provider
            .counters()
            .sts_calls
            .load(std::sync::atomic::Ordering::Relaxed);
        // A lasting refusal costs one STS call per failure-memory interval; a throttled STS
        // is asked again by the next caller, so one burst never costs an org seconds.
        assert_eq!(calls, if remembered { 1 } else { 3 }, "{code}");
    }
}
