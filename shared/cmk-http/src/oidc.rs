//! The OIDC issuer's public routes (see [`cmk_core::oidc`]): the discovery document and the
//! JWKS that STS fetches to verify the service's web-identity tokens. Unauthenticated by
//! design, and they hold public keys only. Cached for five minutes: after a key rotation the
//! previous key stays in the JWKS for longer than that, so no cached copy lacks a live key.

use axum::extract::State;
use axum::http::header::CACHE_CONTROL;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cmk_core::oidc::OidcIssuer;
use cmk_core::CoreError;

use crate::error::ApiError;

/// The path of the issuer below the service's base URL.
pub const ISSUER_PATH: &str = "/oidc";

const CACHED: &str = "public, max-age=300";

/// `GET /oidc/.well-known/openid-configuration` and `GET /oidc/.well-known/jwks.json`.
pub fn routes(issuer: OidcIssuer) -> Router {
    Router::new()
        .route("/oidc/.well-known/openid-configuration", get(discovery))
        .route("/oidc/.well-known/jwks.json", get(jwks))
        .with_state(issuer)
}

async fn discovery(State(issuer): State<OidcIssuer>) -> Response {
    ([(CACHE_CONTROL, CACHED)], Json(issuer.discovery())).into_response()
}

async fn jwks(State(issuer): State<OidcIssuer>) -> Response {
    match issuer.jwks().await {
        Ok(keys) => ([(CACHE_CONTROL, CACHED)], Json(keys)).into_response(),
        Err(e) => ApiError::from(CoreError::Internal(format!(
            "the issuer's keys cannot be read: {e}"
        )))
        .into_response(),
    }
}
