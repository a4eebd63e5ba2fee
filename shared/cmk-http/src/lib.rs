//! The one axum Router of the CMK service, served locally by `axum::serve` and on AWS Lambda by
//! `lambda_http`. It authenticates and authorizes callers, calls the use cases of
//! [`cmk_core::Cmk`], and renders every failure as `application/problem+json` (see [`error`]).
//!
//! Each Lambda mounts only the routes it owns: build its router with [`app`] and one of
//! [`admin_read_routes`], [`admin_write_routes`] or [`data_plane_routes`]. [`router`] has them all.
//! The admin page ([`page::page_routes`]: `GET /` and `GET /assets/{file}`) is part of
//! [`admin_read_routes`], so the read function serves it on AWS as `cmk serve` does locally.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::HeaderName;
use axum::routing::{get, post};
use axum::Router;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

pub mod auth;
pub mod dto;
pub mod error;
pub mod extract;
pub mod handlers;
pub mod metrics;
pub mod oidc;
mod openapi;
pub mod page;

pub use error::{ApiError, ProblemCode};
pub use extract::BODY_LIMIT;
pub use openapi::openapi;
pub use page::page_routes;

/// What every handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub cmk: cmk_core::Cmk,
    pub auth: Arc<dyn cmk_core::ports::Authenticator>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("cmk", &self.cmk)
            .finish_non_exhaustive()
    }
}

/// Header that carries the request id, set when the caller sent none and echoed in the response.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Admin routes that only read (the `keys-read` function), and the admin page that calls them.
pub fn admin_read_routes() -> Router<AppState> {
    page::page_routes()
        .route("/v1/orgs/{org}/keys", get(handlers::list_keys))
        .route("/v1/orgs/{org}/reencryption", get(handlers::reencryption))
        .route("/v1/orgs/{org}/audit", get(handlers::audit))
}

/// Admin routes that change state (the `keys-write` function). `GET keys/setup` is here although
/// it answers a read: an org's first call creates its external id.
pub fn admin_write_routes() -> Router<AppState> {
    Router::new()
        .route("/v1/orgs/{org}/keys/setup", get(handlers::setup))
        .route(
            "/v1/orgs/{org}/keys/setup/cloudformation",
            get(handlers::setup_cloudformation),
        )
        .route("/v1/orgs/{org}/keys", post(handlers::add_key))
        .route(
            "/v1/orgs/{org}/keys/{key_id}",
            axum::routing::patch(handlers::update_key),
        )
        .route(
            "/v1/orgs/{org}/keys/{key_id}/default",
            post(handlers::set_default),
        )
        .route(
            "/v1/orgs/{org}/keys/{key_id}/disable",
            post(handlers::disable),
        )
        .route(
            "/v1/orgs/{org}/keys/disable-all",
            post(handlers::disable_all),
        )
        .route(
            "/v1/orgs/{org}/keys/{key_id}/check",
            post(handlers::check_key),
        )
        .route(
            "/v1/orgs/{org}/keys/{key_id}/rewrap",
            post(handlers::rewrap_key),
        )
        .route("/v1/orgs/{org}/reencryption/retry", post(handlers::retry))
        .route("/v1/orgs/{org}/reencryption/cancel", post(handlers::cancel))
}

/// Data-plane routes, for services (the `data-keys` function).
pub fn data_plane_routes() -> Router<AppState> {
    Router::new()
        .route("/v1/orgs/{org}/data-keys", post(handlers::create_data_key))
        .route(
            "/v1/orgs/{org}/data-keys/{id}/encrypt",
            post(handlers::encrypt),
        )
        .route("/v1/orgs/{org}/decrypt", post(handlers::decrypt))
}

/// Finishes a router from some of the route sets above: adds `/healthz` and `/openapi.json`,
/// problem+json fallbacks for unknown paths (404) and wrong methods (405), the body limit,
/// request ids and tracing, and the state.
pub fn app(routes: Router<AppState>, state: AppState) -> Router {
    routes
        .route("/healthz", get(handlers::healthz))
        .route("/openapi.json", get(openapi::openapi_json))
        // Must come after every route: it is applied to the routes present now.
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .fallback(handlers::not_found)
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(
                    HeaderName::from_static(REQUEST_ID_HEADER),
                    MakeRequestUuid,
                ))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(make_span)
                        .on_response(DefaultOnResponse::new().level(Level::INFO)),
                )
                .layer(PropagateRequestIdLayer::new(HeaderName::from_static(
                    REQUEST_ID_HEADER,
                )))
                .layer(axum::middleware::from_fn(metrics::count_request))
                // Enforced by the body extractors, whose rejection becomes a 400 problem.
                .layer(DefaultBodyLimit::max(BODY_LIMIT)),
        )
        .with_state(state)
}

/// Every route of the service.
pub fn router(state: AppState) -> Router {
    app(
        admin_read_routes()
            .merge(admin_write_routes())
            .merge(data_plane_routes()),
        state,
    )
}

/// The request span: method, route template and request id only. Never headers (the
/// `Authorization` token), never the query (cursors) or bodies (plaintext).
fn make_span(req: &Request) -> tracing::Span {
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("<unmatched>", MatchedPath::as_str);
    let request_id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::info_span!("request", method = %req.method(), path, request_id)
}
