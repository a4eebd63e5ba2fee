//! Authentication: HS256 bearer tokens for local runs and tests, and the extractors that turn a
//! request into an authorized principal of the path's org.
//!
//! On AWS the HTTP API's authorizer verifies tokens before the Lambda runs; another
//! [`Authenticator`] then reads the verified claims. The extractors below do not care which.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use chrono::Utc;
use cmk_core::error::AuthError;
pub use cmk_core::model::Role;
use cmk_core::model::{OrgId, Principal};
use cmk_core::ports::Authenticator;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::AppState;

/// The claims of a token. `iat` is informative only.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    org: String,
    role: Role,
    exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<i64>,
}

/// Checks HS256 JWTs signed with a shared secret (the `cmk` binary's secret file).
#[derive(Clone)]
pub struct Hs256Authenticator {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Hs256Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a secret: never print it.
        f.debug_struct("Hs256Authenticator").finish_non_exhaustive()
    }
}

/// The shortest HS256 secret accepted: 32 bytes, the hash's output size (RFC 7518 §3.2).
pub const MIN_SECRET_LEN: usize = 32;

/// A signing secret too short to be safe (an empty one would let anyone mint tokens).
#[derive(Debug, thiserror::Error)]
#[error("the token secret holds {0} bytes, fewer than the {MIN_SECRET_LEN} it must")]
pub struct WeakSecret(pub usize);

impl Hs256Authenticator {
    /// Refuses a secret shorter than [`MIN_SECRET_LEN`]: fail closed, never a weak key.
    pub fn new(secret: &[u8]) -> Result<Self, WeakSecret> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(WeakSecret(secret.len()));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        // Tokens are signed and checked by the same process: no clock skew to forgive.
        validation.leeway = 0;
        validation.validate_exp = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(Self {
            key: DecodingKey::from_secret(secret),
            validation,
        })
    }

    /// Synchronous core of [`Authenticator::authenticate`].
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(e.to_string()),
            },
        )?;
        let claims = data.claims;
        if claims.sub.trim().is_empty() {
            return Err(AuthError::Invalid("empty sub claim".into()));
        }
        let org = OrgId::parse(&claims.org)
            .map_err(|_| AuthError::Invalid("org claim is not a valid org id".into()))?;
        Ok(Principal {
            subject: claims.sub,
            org,
            role: claims.role,
        })
    }
}

#[async_trait]
impl Authenticator for Hs256Authenticator {
    async fn authenticate(&self, bearer_token: &str) -> Result<Principal, AuthError> {
        self.verify(bearer_token)
    }
}

/// Signs a token for `sub` with `role` in `org`, valid for `ttl` (the `cmk token` command).
///
/// A secret shorter than [`MIN_SECRET_LEN`] signs nothing. Signing HS256 over these claims
/// cannot otherwise fail in practice; if it ever did, the error is logged. Either way an empty
/// string (which no authenticator accepts) is returned.
pub fn issue_token(secret: &[u8], sub: &str, org: &str, role: Role, ttl: Duration) -> String {
    if secret.len() < MIN_SECRET_LEN {
        tracing::error!(
            "refusing to sign a token with a secret shorter than {MIN_SECRET_LEN} bytes"
        );
        return String::new();
    }
    let now = Utc::now().timestamp();
    let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    let claims = Claims {
        sub: sub.to_owned(),
        org: org.to_owned(),
        role,
        exp: now.saturating_add(ttl),
        iat: Some(now),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap_or_else(|e| {
        tracing::error!(error = %e, "could not sign a token");
        String::new()
    })
}

/// The token of `Authorization: Bearer <token>`, if the header is there and well formed.
fn bearer(parts: &Parts) -> Result<&str, AuthError> {
    let value = parts
        .headers
        .get(AUTHORIZATION)
        .ok_or(AuthError::Missing)?
        .to_str()
        .map_err(|_| AuthError::Invalid("authorization header is not ASCII".into()))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| AuthError::Invalid("expected 'Bearer <token>'".into()))?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthError::Invalid("expected 'Bearer <token>'".into()));
    }
    Ok(token)
}

/// One path parameter, percent-decoded. Missing or undecodable → 400.
pub(crate) async fn path_param<S: Send + Sync>(
    parts: &mut Parts,
    state: &S,
    name: &str,
) -> Result<String, ApiError> {
    let params = RawPathParams::from_request_parts(parts, state)
        .await
        .map_err(|e| ApiError::invalid_request(e.body_text()))?;
    let found: HashMap<&str, &str> = params.iter().collect();
    found
        .get(name)
        .map(|v| (*v).to_owned())
        .ok_or_else(|| ApiError::invalid_request(format!("missing path parameter {name}")))
}

/// Authenticates the caller, then checks the role and that the path's org is the caller's.
/// Order matters: 401 before anything else, so nothing about the request leaks to strangers.
///
/// A [`Principal`] already in the request extensions is trusted as is: that is how a binary
/// whose gateway authenticates callers (API Gateway JWT or IAM authorizers) hands them over.
/// Otherwise the bearer token goes to [`AppState::auth`].
async fn authorize(
    parts: &mut Parts,
    state: &AppState,
    role: Role,
) -> Result<(Principal, OrgId), ApiError> {
    let principal = match parts.extensions.get::<Principal>() {
        // Set by server code only (a Lambda layer reading the API Gateway authorizer context,
        // e.g. for IAM-authorized data-plane routes); a client cannot put it there.
        Some(p) => p.clone(),
        None => match bearer(parts) {
            Ok(token) => state.auth.authenticate(token).await,
            Err(e) => Err(e),
        }
        .map_err(|e| {
            tracing::debug!(error = %e, "request not authenticated");
            ApiError::from(e)
        })?,
    };
    if principal.role != role {
        return Err(ApiError::forbidden(format!(
            "this route needs role {}; the token has role {}",
            role.as_str(),
            principal.role.as_str()
        )));
    }
    let org = OrgId::parse(&path_param(parts, state, "org").await?)?;
    if org != principal.org {
        return Err(ApiError::forbidden(format!(
            "the token is for organization {}, not {org}",
            principal.org
        )));
    }
    Ok((principal, org))
}

/// An org admin calling an admin route of their own org.
#[derive(Clone, Debug)]
pub struct Admin {
    pub principal: Principal,
    pub org: OrgId,
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let (principal, org) = authorize(parts, state, Role::Admin).await?;
        Ok(Self { principal, org })
    }
}

/// A service calling a data-plane route of its own org.
#[derive(Clone, Debug)]
pub struct ServiceCaller {
    pub principal: Principal,
    pub org: OrgId,
}

impl FromRequestParts<AppState> for ServiceCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let (principal, org) = authorize(parts, state, Role::Service).await?;
        Ok(Self { principal, org })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[tokio::test]
    async fn round_trip() {
        let token = issue_token(
            SECRET,
            "alice",
            "acme",
            Role::Admin,
            Duration::from_secs(60),
        );
        let auth = Hs256Authenticator::new(SECRET).expect("a 32-byte secret");
        let p = auth.authenticate(&token).await.expect("valid token");
        assert_eq!(p.subject, "alice");
        assert_eq!(p.org.as_str(), "acme");
        assert_eq!(p.role, Role::Admin);

        for role in [Role::Member, Role::Service] {
            let token = issue_token(SECRET, "svc", "acme", role, Duration::from_secs(60));
            assert_eq!(auth.verify(&token).expect("valid").role, role);
        }
    }

    #[test]
    fn a_secret_shorter_than_32_bytes_is_refused_and_signs_nothing() {
        for len in [0, 1, 31] {
            let short = vec![b'k'; len];
            assert!(Hs256Authenticator::new(&short).is_err(), "{len} bytes");
            assert_eq!(
                issue_token(
                    &short,
                    "mallory",
                    "acme",
                    Role::Admin,
                    Duration::from_secs(60)
                ),
                ""
            );
        }
        assert!(Hs256Authenticator::new(&[b'k'; 32]).is_ok());
    }

    #[test]
    fn expired_token() {
        let now = Utc::now().timestamp();
        let claims = Claims {
            sub: "alice".into(),
            org: "acme".into(),
            role: Role::Admin,
            exp: now - 10,
            iat: Some(now - 70),
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .expect("sign");
        let auth = Hs256Authenticator::new(SECRET).expect("a 32-byte secret");
        assert!(matches!(auth.verify(&token), Err(AuthError::Expired)));
    }

    #[test]
    fn wrong_secret_and_garbage() {
        let token = issue_token(
            b"another secret, just as long as the first",
            "alice",
            "acme",
            Role::Admin,
            Duration::from_secs(60),
        );
        let auth = Hs256Authenticator::new(SECRET).expect("a 32-byte secret");
        assert!(matches!(auth.verify(&token), Err(AuthError::Invalid(_))));
        assert!(matches!(auth.verify("nope"), Err(AuthError::Invalid(_))));
        assert!(matches!(auth.verify(""), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn bad_claims_are_invalid() {
        let auth = Hs256Authenticator::new(SECRET).expect("a 32-byte secret");
        let bad_org = issue_token(
            SECRET,
            "a",
            "Not An Org",
            Role::Admin,
            Duration::from_secs(60),
        );
        assert!(matches!(auth.verify(&bad_org), Err(AuthError::Invalid(_))));
        let no_sub = issue_token(SECRET, " ", "acme", Role::Admin, Duration::from_secs(60));
        assert!(matches!(auth.verify(&no_sub), Err(AuthError::Invalid(_))));

        // An unknown role, or a token signed with another algorithm, is refused.
        let claims = serde_json::json!({"sub":"a","org":"acme","role":"root","exp":Utc::now().timestamp()+60});
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .expect("sign");
        assert!(matches!(auth.verify(&token), Err(AuthError::Invalid(_))));
        let claims = serde_json::json!({"sub":"a","org":"acme","role":"admin","exp":Utc::now().timestamp()+60});
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .expect("sign");
        assert!(matches!(auth.verify(&token), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn bearer_header_parsing() {
        let parts = |v: Option<&str>| {
            let mut b = axum::http::Request::builder();
            if let Some(v) = v {
                b = b.header(AUTHORIZATION, v);
            }
            b.body(()).expect("request").into_parts().0
        };
        assert!(matches!(bearer(&parts(None)), Err(AuthError::Missing)));
        assert!(matches!(
            bearer(&parts(Some("Basic abc"))),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            bearer(&parts(Some("Bearer "))),
            Err(AuthError::Invalid(_))
        ));
        assert_eq!(bearer(&parts(Some("bearer abc"))).expect("ok"), "abc");
        assert_eq!(bearer(&parts(Some("Bearer abc"))).expect("ok"), "abc");
    }
}
