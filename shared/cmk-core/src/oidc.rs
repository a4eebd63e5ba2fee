//! The service as an OpenID Connect issuer, so that a customer's role can trust it through
//! `sts:AssumeRoleWithWebIdentity` instead of a shared external id: the role's trust policy
//! names the issuer and conditions on the audience (`aws:<org>`) and the subject
//! (`cmk:org:<org>`), so a token minted for one org can never assume another org's role.
//!
//! This module holds what is the same wherever the service runs: the discovery document, the
//! JWKS, and the tokens (ES256 JWTs, five minutes, minted only inside the service and never
//! returned by a route). Signing is a port, [`TokenSigner`]: a key file in the data directory
//! locally, an asymmetric KMS key on AWS (its private half never leaves KMS).

use std::sync::Arc;

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::error::{KeyError, KeyErrorKind};
use crate::model::OrgId;

/// How long a minted token is valid: long enough for one `AssumeRoleWithWebIdentity`.
pub const TOKEN_LIFETIME_SECS: i64 = 300;

/// The only signing algorithm: ECDSA on P-256 with SHA-256.
pub const ALGORITHM: &str = "ES256";

/// The subject of an org's tokens, as the customer's trust policy names it.
pub fn subject(org: &OrgId) -> String {
    format!("cmk:org:{org}")
}

/// The audience of an org's tokens, as the customer's trust policy names it.
pub fn audience(org: &OrgId) -> String {
    format!("aws:{org}")
}

/// What IAM calls the provider: the issuer URL without its scheme (`host/path`), which also
/// prefixes the condition keys (`<provider>:aud`, `<provider>:sub`).
pub fn provider_name(issuer: &str) -> &str {
    issuer
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/')
}

/// The trust policy of a customer's role in OIDC mode: only tokens of this issuer whose
/// audience and subject name `org`.
pub fn trust_policy(issuer: &str, org: &OrgId) -> Value {
    let provider = provider_name(issuer);
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {
                "Federated": format!("arn:aws:iam::<your account id>:oidc-provider/{provider}")
            },
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {"StringEquals": {
                format!("{provider}:aud"): audience(org),
                format!("{provider}:sub"): subject(org),
            }}
        }]
    })
}

/// A P-256 public key as a JWK needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    /// A hash of the key ([`key_id`]).
    pub kid: String,
    /// The uncompressed point: `0x04 || x (32 bytes) || y (32 bytes)`.
    pub point: Vec<u8>,
}

impl PublicKey {
    pub fn jwk(&self) -> Result<Value, KeyError> {
        let (x, y) = coordinates(&self.point)?;
        Ok(json!({
            "kty": "EC",
            "crv": "P-256",
            "x": B64.encode(x),
            "y": B64.encode(y),
            "kid": self.kid,
            "alg": ALGORITHM,
            "use": "sig",
        }))
    }
}

/// The `kid` of a public key: the first 16 bytes of the SHA-256 of its uncompressed point,
/// base64url: stable, and different for every key.
pub fn key_id(point: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    B64.encode(&Sha256::digest(point)[..16])
}

fn coordinates(point: &[u8]) -> Result<(&[u8], &[u8]), KeyError> {
    match point {
        [0x04, rest @ ..] if rest.len() == 64 => Ok(rest.split_at(32)),
        _ => Err(KeyError::new(
            KeyErrorKind::Unsupported,
            "the signing key is not an uncompressed P-256 point",
        )),
    }
}

/// Signs tokens with the issuer's key; see the module docs.
#[async_trait]
pub trait TokenSigner: Send + Sync + 'static {
    /// The keys a verifier may meet: the current one first, then the previous one (kept one
    /// rotation, so tokens signed just before a rotation still verify).
    async fn public_keys(&self) -> Result<Vec<PublicKey>, KeyError>;

    /// Signs `message` with the key `kid` (one of [`TokenSigner::public_keys`]): ECDSA P-256
    /// SHA-256, as the 64 bytes `r || s` that JWS wants.
    async fn sign(&self, kid: &str, message: &[u8]) -> Result<Vec<u8>, KeyError>;
}

/// The issuer: its URL and its signer.
#[derive(Clone)]
pub struct OidcIssuer {
    issuer: String,
    signer: Arc<dyn TokenSigner>,
}

impl std::fmt::Debug for OidcIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcIssuer")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl OidcIssuer {
    /// `issuer` without a trailing slash: the discovery document is at
    /// `{issuer}/.well-known/openid-configuration`.
    pub fn new(issuer: &str, signer: Arc<dyn TokenSigner>) -> Self {
        Self {
            issuer: issuer.trim_end_matches('/').to_owned(),
            signer,
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The OpenID Provider metadata STS reads (only what web-identity federation needs).
    pub fn discovery(&self) -> Value {
        json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}/.well-known/jwks.json", self.issuer),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [ALGORITHM],
            "claims_supported": ["iss", "sub", "aud", "iat", "exp", "jti"],
        })
    }

    /// The public keys, as a JWK set.
    pub async fn jwks(&self) -> Result<Value, KeyError> {
        let keys = self
            .signer
            .public_keys()
            .await?
            .iter()
            .map(PublicKey::jwk)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(json!({ "keys": keys }))
    }

    /// A token for `org`'s `AssumeRoleWithWebIdentity`, signed with the current key.
    pub async fn mint(&self, org: &OrgId) -> Result<String, KeyError> {
        let keys = self.signer.public_keys().await?;
        let current = keys.first().ok_or_else(|| {
            KeyError::new(KeyErrorKind::Unsupported, "the issuer has no signing key")
        })?;
        let now = crate::model::now().timestamp();
        let header = json!({"alg": ALGORITHM, "typ": "JWT", "kid": current.kid});
        let claims = json!({
            "iss": self.issuer,
            "sub": subject(org),
            "aud": audience(org),
            "iat": now,
            "nbf": now,
            "exp": now + TOKEN_LIFETIME_SECS,
            "jti": uuid::Uuid::new_v4().to_string(),
        });
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let signature = self.signer.sign(&current.kid, input.as_bytes()).await?;
        Ok(format!("{input}.{}", B64.encode(signature)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;

    #[async_trait]
    impl TokenSigner for Fixed {
        async fn public_keys(&self) -> Result<Vec<PublicKey>, KeyError> {
            let mut point = vec![4u8];
            point.extend([1u8; 32]);
            point.extend([2u8; 32]);
            Ok(vec![PublicKey {
                kid: "k1".into(),
                point,
            }])
        }
        async fn sign(&self, kid: &str, _: &[u8]) -> Result<Vec<u8>, KeyError> {
            assert_eq!(kid, "k1");
            Ok(vec![9; 64])
        }
    }

    #[test]
    fn the_trust_policy_pins_audience_and_subject_to_the_org() {
        let p = trust_policy(
            "https://api.example.com/oidc/",
            &OrgId::from_trusted("acme"),
        );
        let st = &p["Statement"][0];
        assert_eq!(st["Action"], "sts:AssumeRoleWithWebIdentity");
        assert_eq!(
            st["Principal"]["Federated"],
            "arn:aws:iam::<your account id>:oidc-provider/api.example.com/oidc"
        );
        let cond = &st["Condition"]["StringEquals"];
        assert_eq!(cond["api.example.com/oidc:aud"], "aws:acme");
        assert_eq!(cond["api.example.com/oidc:sub"], "cmk:org:acme");
    }

    #[tokio::test]
    async fn a_token_names_the_org_as_subject_and_audience_and_lives_five_minutes() {
        let issuer = OidcIssuer::new("https://cmk.example/oidc/", Arc::new(Fixed));
        assert_eq!(issuer.issuer(), "https://cmk.example/oidc");
        let token = issuer
            .mint(&OrgId::from_trusted("acme"))
            .await
            .expect("a token");
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let decode = |p: &str| -> Value {
            serde_json::from_slice(&B64.decode(p).expect("base64url")).expect("json")
        };
        let header = decode(parts[0]);
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["kid"], "k1");
        let claims = decode(parts[1]);
        assert_eq!(claims["iss"], "https://cmk.example/oidc");
        assert_eq!(claims["sub"], "cmk:org:acme");
        assert_eq!(claims["aud"], "aws:acme");
        assert_eq!(
            claims["exp"].as_i64().expect("exp") - claims["iat"].as_i64().expect("iat"),
            300
        );
        assert_eq!(B64.decode(parts[2]).expect("signature"), vec![9; 64]);

        let jwks = issuer.jwks().await.expect("jwks");
        assert_eq!(jwks["keys"][0]["kty"], "EC");
        assert_eq!(jwks["keys"][0]["x"], B64.encode([1u8; 32]));
        assert!(jwks["keys"][0].get("d").is_none(), "public keys only");
        assert_eq!(
            issuer.discovery()["jwks_uri"],
            "https://cmk.example/oidc/.well-known/jwks.json"
        );
    }
}
