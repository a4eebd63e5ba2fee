//! Customer keys in any region: a key ARN (or alias ARN) of another region than the service's
//! is checked, wrapped and unwrapped in that region, `resolved_key_arn` stays in that region,
//! and every KMS request is signed for the region of the key it names (read from each request's
//! SigV4 `Authorization` header). One-call `ReEncrypt` is used only within one region. Against
//! the test command's emulator (`CMK_TEST_AWS_ENDPOINT`), whose KMS keeps each region apart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::sync::{Arc, Mutex};

use aws_sdk_kms::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_kms::config::{ConfigBag, Intercept, RuntimeComponents, SharedInterceptor};
use aws_sdk_kms::error::BoxError;
use cmk_aws::{KmsKeyProvider, KmsSettings};
use cmk_core::crypto::DataKey;
use cmk_core::model::{EncryptionContext, KeyId, KeySpec, OrgId};
use cmk_core::ports::{Kek, KeyProvider};

/// Records the region each KMS request was signed for.
#[derive(Debug, Default)]
struct SignedRegions(Mutex<Vec<String>>);

impl SignedRegions {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

#[derive(Debug)]
struct Recorder(Arc<SignedRegions>);

impl Intercept for Recorder {
    fn name(&self) -> &'static str {
        "signed-region-recorder"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        // `AWS4-HMAC-SHA256 Credential=<key>/<date>/<region>/kms/aws4_request, …`
        let auth = context
            .request()
            .headers()
            .get("authorization")
            .unwrap_or_default();
        let region = auth
            .split("Credential=")
            .nth(1)
            .and_then(|c| c.split('/').nth(2))
            .unwrap_or("unsigned")
            .to_owned();
        self.0 .0.lock().unwrap().push(region);
        Ok(())
    }
}

async fn create_key(endpoint: &str, region: &str, alias: Option<&str>) -> String {
    let config = aws_sdk_kms::config::Builder::from(&common::config(endpoint, "testing").await)
        .region(aws_sdk_kms::config::Region::new(region.to_owned()))
        .build();
    let kms = aws_sdk_kms::Client::from_conf(config);
    let arn = kms
        .create_key()
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap()
        .arn
        .unwrap();
    if let Some(alias) = alias {
        kms.create_alias()
            .alias_name(alias)
            .target_key_id(&arn)
            .send()
            .await
            .unwrap();
    }
    arn
}

fn kek(key_arn: &str) -> Kek {
    Kek {
        org: OrgId::from_trusted("acme"),
        key_id: KeyId::generate(),
        spec: KeySpec::AwsKms {
            role_arn: "arn:aws:iam::123456789012:role/customer".into(),
            key_arn: key_arn.to_owned(),
            resolved_key_arn: None,
            trust: cmk_core::model::TrustMode::ExternalId,
        },
        external_id: Some("cmk-ext".into()),
    }
}

#[tokio::test]
async fn keys_of_two_regions_are_each_called_in_their_own_region() {
    let Some(ep) = common::endpoint() else {
        return;
    };
    let config = common::config(&ep, "testing").await; // the service runs in us-east-1
    let alias = format!("alias/{}", common::unique("far"));
    let west = create_key(&ep, "eu-west-1", Some(&alias)).await;
    let west_alias = format!(
        "arn:aws:kms:eu-west-1:{}:{alias}",
        west.split(':').nth(4).unwrap()
    );
    let east = create_key(&ep, "us-east-1", None).await;
    let service_key = create_key(&ep, "us-east-1", None).await;
    let signed = Arc::new(SignedRegions::default());
    let provider = KmsKeyProvider::new(&config, KmsSettings::new(service_key))
        .with_interceptor(SharedInterceptor::new(Recorder(Arc::clone(&signed))));

    // The add-time check resolves each key in its own region.
    let mut keks = Vec::new();
    for (arn, region) in [
        (&west, "eu-west-1"),
        (&west_alias, "eu-west-1"),
        (&east, "us-east-1"),
    ] {
        let mut k = kek(arn);
        let resolved = provider.check(&k).await.unwrap_or_else(|e| {
            panic!("the key {arn} is checked in {region}: {e}");
        });
        let resolved = resolved.expect("KMS names the key");
        assert_eq!(&resolved, if arn == &east { &east } else { &west });
        assert_eq!(
            signed.take(),
            vec![region; 2],
            "encrypt and decrypt of {arn}"
        );
        if let KeySpec::AwsKms {
            resolved_key_arn, ..
        } = &mut k.spec
        {
            *resolved_key_arn = Some(resolved);
        }
        keks.push((k, region));
    }

    // Wrap and unwrap in each key's region.
    let plaintext = DataKey::generate();
    let mut ctx = EncryptionContext::new();
    ctx.insert("org".into(), "acme".into());
    for (k, region) in &keks {
        let wrapped = provider.wrap(k, &ctx, &plaintext).await.unwrap();
        let back = provider.unwrap(k, &ctx, &wrapped.blob).await.unwrap();
        assert_eq!(back.expose(), plaintext.expose());
        assert_eq!(signed.take(), vec![*region; 2]);
    }

    // ReEncrypt within eu-west-1 (key ARN to alias ARN: one principal, one region) is one
    // call there; between regions there is no one-call path (the engine unwraps and wraps).
    let from_west = provider.wrap(&keks[0].0, &ctx, &plaintext).await.unwrap();
    signed.take();
    let moved = provider
        .rewrap(&keks[0].0, &keks[1].0, &ctx, &from_west.blob)
        .await
        .unwrap()
        .expect("one ReEncrypt within a region");
    assert_eq!(signed.take(), vec!["eu-west-1"]);
    let back = provider
        .unwrap(&keks[1].0, &ctx, &moved.blob)
        .await
        .unwrap();
    assert_eq!(back.expose(), plaintext.expose());
    signed.take();
    assert!(provider
        .rewrap(&keks[0].0, &keks[2].0, &ctx, &from_west.blob)
        .await
        .unwrap()
        .is_none());
    assert!(
        signed.take().is_empty(),
        "no call for a cross-region ReEncrypt"
    );
}
