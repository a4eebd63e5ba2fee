//! Who is calling, as API Gateway says.
//!
//! On AWS the HTTP API authenticates every caller before a function runs: its JWT authorizer
//! verifies the admins' tokens (issuer, audience, expiry, signature), and AWS IAM authorization
//! verifies the services' SigV4 signatures. The function reads the verified identity from the
//! request context of the API Gateway HTTP API (payload 2.0) event and hands it to the shared
//! router as a [`Principal`] in the request extensions ([`GatewayAuthLayer`]), where the
//! extractors of `cmk-http` take it instead of a bearer token. A bearer token that reaches the
//! function without authorizer claims is refused ([`GatewayAuthenticator`]): the authorizer is
//! the only source of truth, and the function holds no key to verify tokens with anyway.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use axum::http::Request;
use cmk_core::error::AuthError;
use cmk_core::model::{OrgId, Principal, Role};
use cmk_core::ports::Authenticator;
use lambda_http::request::RequestContext;
use tower::{Layer, Service};

use crate::config::ClaimNames;

/// Where a function takes its callers' identity from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthorizerSource {
    /// The JWT authorizer's claims (`requestContext.authorizer.jwt.claims`): `sub`, and the org
    /// and role claims named here. The admin routes.
    Jwt(ClaimNames),
    /// AWS IAM authorization (`requestContext.authorizer.iam`): the caller's ARN is the subject,
    /// the role is `service` and the org is the `{org}` of the path, so which orgs a service may
    /// use is decided by its IAM policy (`execute-api:Invoke` on `…/POST/v1/orgs/{org}/*`). The
    /// data-plane routes.
    Iam,
}

/// The org segment of `/v1/orgs/{org}/…`.
pub fn org_of_path(path: &str) -> Option<&str> {
    let org = path.strip_prefix("/v1/orgs/")?.split('/').next()?;
    (!org.is_empty()).then_some(org)
}

/// The caller named by verified JWT claims. API Gateway passes every claim as a string.
pub fn principal_from_claims(
    claims: &HashMap<String, String>,
    names: &ClaimNames,
) -> Result<Principal, String> {
    let claim = |name: &str| {
        claims
            .get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("the token has no {name:?} claim"))
    };
    let subject = claim("sub")?.to_owned();
    let org = OrgId::parse(claim(&names.org)?)
        .map_err(|_| format!("the {:?} claim is not a valid org id", names.org))?;
    let role = match claim(&names.role)? {
        "admin" => Role::Admin,
        "member" => Role::Member,
        "service" => Role::Service,
        other => {
            return Err(format!(
                "the {:?} claim is {other:?}, not admin, member or service",
                names.role
            ))
        }
    };
    Ok(Principal { subject, org, role })
}

/// The service calling a data-plane route under AWS IAM authorization.
pub fn principal_from_iam(user_arn: Option<&str>, path: &str) -> Result<Principal, String> {
    let subject = user_arn
        .map(str::trim)
        .filter(|a| a.starts_with("arn:"))
        .ok_or("the IAM authorizer context has no caller ARN")?;
    let org = org_of_path(path)
        .and_then(|o| OrgId::parse(o).ok())
        .ok_or("the path names no valid org")?;
    Ok(Principal {
        subject: subject.to_owned(),
        org,
        role: Role::Service,
    })
}

impl AuthorizerSource {
    /// `None` when the event carries no identity of this source (a route without an authorizer,
    /// such as the admin page); `Some(Err)` when it carries one that cannot be used.
    pub fn principal<B>(&self, req: &Request<B>) -> Option<Result<Principal, String>> {
        let Some(RequestContext::ApiGatewayV2(ctx)) = req.extensions().get::<RequestContext>()
        else {
            return None;
        };
        let authorizer = ctx.authorizer.as_ref()?;
        match self {
            Self::Jwt(names) => {
                let jwt = authorizer.jwt.as_ref()?;
                Some(principal_from_claims(&jwt.claims, names))
            }
            Self::Iam => {
                let iam = authorizer.iam.as_ref()?;
                Some(principal_from_iam(
                    iam.user_arn.as_deref(),
                    req.uri().path(),
                ))
            }
        }
    }
}

/// Puts the gateway-verified [`Principal`] into the request extensions (see the module docs).
#[derive(Clone, Debug)]
pub struct GatewayAuthLayer {
    source: Arc<AuthorizerSource>,
}

impl GatewayAuthLayer {
    pub fn new(source: AuthorizerSource) -> Self {
        Self {
            source: Arc::new(source),
        }
    }
}

impl<S> Layer<S> for GatewayAuthLayer {
    type Service = GatewayAuth<S>;

    fn layer(&self, inner: S) -> GatewayAuth<S> {
        GatewayAuth {
            inner,
            source: Arc::clone(&self.source),
        }
    }
}

/// The service of [`GatewayAuthLayer`].
#[derive(Clone, Debug)]
pub struct GatewayAuth<S> {
    inner: S,
    source: Arc<AuthorizerSource>,
}

impl<S, B> Service<Request<B>> for GatewayAuth<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // Only this layer may say who the caller is.
        req.extensions_mut().remove::<Principal>();
        match self.source.principal(&req) {
            Some(Ok(principal)) => {
                req.extensions_mut().insert(principal);
            }
            Some(Err(reason)) => {
                tracing::warn!(%reason, "the authorizer's identity cannot be used; refusing the caller");
            }
            None => tracing::debug!("no authorizer identity in the request context"),
        }
        self.inner.call(req)
    }
}

/// Refuses every bearer token: on AWS only the API Gateway authorizer authenticates callers, and
/// a request that reaches a protected route without its identity answers 401.
#[derive(Clone, Copy, Debug, Default)]
pub struct GatewayAuthenticator;

#[async_trait]
impl Authenticator for GatewayAuthenticator {
    async fn authenticate(&self, _bearer_token: &str) -> Result<Principal, AuthError> {
        Err(AuthError::Invalid(
            "callers are authenticated by the API Gateway authorizer, and this request carries no usable identity from it".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn claims_name_the_caller() {
        let names = ClaimNames::default();
        let p = principal_from_claims(
            &claims(&[("sub", "alice"), ("org", "acme"), ("role", "admin")]),
            &names,
        )
        .expect("valid");
        assert_eq!(
            (p.subject.as_str(), p.org.as_str(), p.role),
            ("alice", "acme", Role::Admin)
        );

        let custom = ClaimNames {
            org: "custom:org".into(),
            role: "custom:role".into(),
        };
        let p = principal_from_claims(
            &claims(&[
                ("sub", "bob"),
                ("custom:org", "globex"),
                ("custom:role", "member"),
                // The default names mean nothing once others are configured.
                ("org", "acme"),
                ("role", "admin"),
            ]),
            &custom,
        )
        .expect("valid");
        assert_eq!((p.org.as_str(), p.role), ("globex", Role::Member));

        for (bad, why) in [
            (claims(&[("org", "acme"), ("role", "admin")]), "sub"),
            (claims(&[("sub", "a"), ("role", "admin")]), "org"),
            (
                claims(&[("sub", "a"), ("org", "Acme Inc"), ("role", "admin")]),
                "org",
            ),
            (claims(&[("sub", "a"), ("org", "acme")]), "role"),
            (
                claims(&[("sub", "a"), ("org", "acme"), ("role", "root")]),
                "role",
            ),
            (
                claims(&[("sub", " "), ("org", "acme"), ("role", "admin")]),
                "sub",
            ),
        ] {
            let e = principal_from_claims(&bad, &names).expect_err(why);
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn iam_callers_are_services_of_the_path_org() {
        let arn = "arn:aws:sts::111122223333:assumed-role/orders/i-1";
        let p = principal_from_iam(Some(arn), "/v1/orgs/acme/data-keys").expect("valid");
        assert_eq!(
            (p.subject.as_str(), p.org.as_str(), p.role),
            (arn, "acme", Role::Service)
        );
        assert!(principal_from_iam(None, "/v1/orgs/acme/decrypt").is_err());
        assert!(principal_from_iam(Some(""), "/v1/orgs/acme/decrypt").is_err());
        assert!(principal_from_iam(Some(arn), "/healthz").is_err());
        assert!(principal_from_iam(Some(arn), "/v1/orgs//decrypt").is_err());
        assert!(principal_from_iam(Some(arn), "/v1/orgs/ACME/decrypt").is_err());
    }

    #[test]
    fn org_segment() {
        assert_eq!(org_of_path("/v1/orgs/acme"), Some("acme"));
        assert_eq!(org_of_path("/v1/orgs/acme/keys/k/default"), Some("acme"));
        assert_eq!(org_of_path("/v1/orgs/"), None);
        assert_eq!(org_of_path("/prod/v1/orgs/acme/keys"), None);
    }
}
