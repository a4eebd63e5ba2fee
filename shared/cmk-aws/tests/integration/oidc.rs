//! The OIDC issuer's KMS signer on the emulator: tokens signed with an `ECC_NIST_P256` KMS key
//! verify against the JWKS built from `GetPublicKey` (signature, `kid`, issuer, audience), for
//! the token's own org only; with a previous key listed second both keys are published and a
//! token signed by either verifies.

use std::sync::Arc;

use cmk_aws::oidc::KmsTokenSigner;
use cmk_core::model::OrgId;
use cmk_core::oidc::OidcIssuer;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde_json::Value;

use crate::common;

async fn signing_key(kms: &aws_sdk_kms::Client) -> String {
    kms.create_key()
        .key_spec(aws_sdk_kms::types::KeySpec::EccNistP256)
        .key_usage(aws_sdk_kms::types::KeyUsageType::SignVerify)
        .send()
        .await
        .expect("a signing key")
        .key_metadata
        .and_then(|m| m.arn)
        .expect("arn")
}

fn verify(jwks: &Value, token: &str, issuer: &str, audience: &str) -> Result<Value, String> {
    let kid = decode_header(token)
        .map_err(|e| e.to_string())?
        .kid
        .ok_or("no kid")?;
    let jwk = jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .ok_or("no such key")?;
    let key = DecodingKey::from_ec_components(
        jwk["x"].as_str().expect("x"),
        jwk["y"].as_str().expect("y"),
    )
    .map_err(|e| e.to_string())?;
    let mut v = Validation::new(Algorithm::ES256);
    v.set_issuer(&[issuer]);
    v.set_audience(&[audience]);
    decode::<Value>(token, &key, &v)
        .map(|d| d.claims)
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn kms_signed_tokens_verify_against_the_published_keys() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let config = common::config(&endpoint, "testing").await;
    let kms = aws_sdk_kms::Client::new(&config);
    let (old, new) = (signing_key(&kms).await, signing_key(&kms).await);
    let issuer_url = "https://cmk.example/oidc";
    let acme = OrgId::from_trusted("acme");

    let before = OidcIssuer::new(
        issuer_url,
        Arc::new(KmsTokenSigner::new(kms.clone(), vec![old.clone()])),
    );
    let old_token = before.mint(&acme).await.expect("a token");
    let jwks = before.jwks().await.expect("jwks");
    assert_eq!(jwks["keys"].as_array().expect("keys").len(), 1);
    let claims = verify(&jwks, &old_token, issuer_url, "aws:acme").expect("verifies");
    assert_eq!(claims["sub"], "cmk:org:acme");
    assert!(
        verify(&jwks, &old_token, issuer_url, "aws:globex").is_err(),
        "another org's audience refuses it"
    );

    // Rotated: the new key signs, both are published, the old token still verifies.
    let after = OidcIssuer::new(
        issuer_url,
        Arc::new(KmsTokenSigner::new(kms, vec![new, old])),
    );
    let jwks = after.jwks().await.expect("jwks");
    assert_eq!(jwks["keys"].as_array().expect("keys").len(), 2);
    let new_token = after.mint(&acme).await.expect("a token");
    assert_ne!(
        decode_header(&new_token).expect("header").kid,
        decode_header(&old_token).expect("header").kid
    );
    verify(&jwks, &new_token, issuer_url, "aws:acme").expect("the new token verifies");
    verify(&jwks, &old_token, issuer_url, "aws:acme").expect("the old token still verifies");
}
