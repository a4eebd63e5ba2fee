//! Metrics over HTTP: every answered request is counted by route template and status (on Lambda
//! and locally alike), and the local process serves all of the service's counters at
//! `GET /metrics` in Prometheus text format (see [`cmk_core::metrics`] for the names).

use std::sync::OnceLock;

use axum::extract::{MatchedPath, Request};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Counts a request once it is answered. The route is the matched template
/// (`/v1/orgs/{org}/decrypt`), never the path, which holds org names and ids.
pub async fn count_request(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "<unmatched>".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(req).await;
    cmk_core::metrics::http_request(&route, response.status().as_u16());
    response
}

/// Installs the Prometheus recorder as the process's metrics recorder, once; later calls
/// return the same handle.
pub fn prometheus() -> Result<PrometheusHandle, String> {
    static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .install_recorder()
                .map_err(|e| format!("cannot install the metrics recorder: {e}"))
        })
        .clone()
}

/// `GET /metrics`: the recorder's counters in Prometheus text format. Unauthenticated, so the
/// local server mounts it only on a loopback address or when asked to (`--metrics`).
pub fn metrics_route(handle: PrometheusHandle) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move {
                (
                    [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                    handle.render(),
                )
                    .into_response()
            }
        }),
    )
}
