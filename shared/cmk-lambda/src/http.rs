//! The three HTTP functions: each runs the shared axum Router of `cmk-http` with only the routes
//! it owns, behind [`GatewayAuthLayer`], through `lambda_http`.
//!
//! | function | routes | authorizer | may write |
//! | --- | --- | --- | --- |
//! | `keys-read` | the admin page (`GET /`, `GET /assets/{file}`), `GET keys`, `GET reencryption`, `GET audit`, `GET /healthz`, `GET /openapi.json` | JWT (none for the page, `/healthz`, `/openapi.json`) | nothing |
//! | `keys-write` | `GET keys/setup`, `POST keys`, `…/default`, `…/disable`, `keys/disable-all`, `…/check`, `reencryption/retry`, `reencryption/cancel` | JWT | the table, the queue, the service key, `sts:AssumeRole` |
//! | `data-keys` | `POST data-keys`, `POST data-keys/{id}/encrypt`, `POST decrypt` | AWS IAM | the table, the service key, `sts:AssumeRole` |
//!
//! `GET keys/setup` belongs to `keys-write` although it answers a read: the first call for an
//! org creates the org's external id (a conditional `PutItem`), and a read function must not be
//! able to write. The route list below is what `template.yaml` declares, and a test keeps the
//! two, and the routers, in agreement.

use std::sync::Arc;

use axum::Router;
use cmk_core::oidc::OidcIssuer;
use cmk_core::Cmk;
use cmk_http::AppState;

use crate::config::{ClaimNames, HttpSettings};
use crate::gateway::{AuthorizerSource, GatewayAuthLayer, GatewayAuthenticator};

/// An HTTP function of the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HttpFunction {
    KeysRead,
    KeysWrite,
    DataKeys,
}

/// A route: method and path template (axum's and API Gateway's `{param}` syntax agree).
pub type RouteSpec = (&'static str, &'static str);

/// Routes every router answers (`cmk_http::app` adds them); on AWS only `keys-read` gets them.
pub const COMMON_ROUTES: &[RouteSpec] = &[("GET", "/healthz"), ("GET", "/openapi.json")];

/// The OIDC issuer's documents ([`cmk_http::oidc`]), served by keys-read when the service is
/// an issuer.
pub const OIDC_ROUTES: &[RouteSpec] = &[
    ("GET", "/oidc/.well-known/openid-configuration"),
    ("GET", "/oidc/.well-known/jwks.json"),
];

const KEYS_READ_ROUTES: &[RouteSpec] = &[
    ("GET", "/"),
    ("GET", "/assets/{file}"),
    OIDC_ROUTES[0],
    OIDC_ROUTES[1],
    ("GET", "/v1/orgs/{org}/keys"),
    ("GET", "/v1/orgs/{org}/reencryption"),
    ("GET", "/v1/orgs/{org}/audit"),
];

const KEYS_WRITE_ROUTES: &[RouteSpec] = &[
    ("GET", "/v1/orgs/{org}/keys/setup"),
    ("GET", "/v1/orgs/{org}/keys/setup/cloudformation"),
    ("POST", "/v1/orgs/{org}/keys"),
    ("PATCH", "/v1/orgs/{org}/keys/{key_id}"),
    ("POST", "/v1/orgs/{org}/keys/{key_id}/default"),
    ("POST", "/v1/orgs/{org}/keys/{key_id}/disable"),
    ("POST", "/v1/orgs/{org}/keys/disable-all"),
    ("POST", "/v1/orgs/{org}/keys/{key_id}/check"),
    ("POST", "/v1/orgs/{org}/keys/{key_id}/rewrap"),
    ("POST", "/v1/orgs/{org}/reencryption/retry"),
    ("POST", "/v1/orgs/{org}/reencryption/cancel"),
];

const DATA_KEYS_ROUTES: &[RouteSpec] = &[
    ("POST", "/v1/orgs/{org}/data-keys"),
    ("POST", "/v1/orgs/{org}/data-keys/{id}/encrypt"),
    ("POST", "/v1/orgs/{org}/decrypt"),
];

/// Routes served without an authorizer (the page and its assets, health, the API description,
/// the OIDC issuer's documents, which STS fetches).
pub const PUBLIC_ROUTES: &[RouteSpec] = &[
    ("GET", "/"),
    ("GET", "/assets/{file}"),
    ("GET", "/healthz"),
    ("GET", "/openapi.json"),
    OIDC_ROUTES[0],
    OIDC_ROUTES[1],
];

impl HttpFunction {
    pub const ALL: [HttpFunction; 3] = [Self::KeysRead, Self::KeysWrite, Self::DataKeys];

    /// The function's directory under `functions/`.
    pub fn name(self) -> &'static str {
        match self {
            Self::KeysRead => "keys-read",
            Self::KeysWrite => "keys-write",
            Self::DataKeys => "data-keys",
        }
    }

    /// The function's binary (`[[bin]]` of its crate, `BuildProperties: Binary` in the template).
    pub fn binary(self) -> &'static str {
        match self {
            Self::KeysRead => "cmk-keys-read",
            Self::KeysWrite => "cmk-keys-write",
            Self::DataKeys => "cmk-data-keys",
        }
    }

    /// The routes the function owns (not counting [`COMMON_ROUTES`]).
    pub fn routes(self) -> &'static [RouteSpec] {
        match self {
            Self::KeysRead => KEYS_READ_ROUTES,
            Self::KeysWrite => KEYS_WRITE_ROUTES,
            Self::DataKeys => DATA_KEYS_ROUTES,
        }
    }

    /// Where the function's callers are authenticated.
    pub fn authorizer(self, claims: &ClaimNames) -> AuthorizerSource {
        match self {
            Self::KeysRead | Self::KeysWrite => AuthorizerSource::Jwt(claims.clone()),
            Self::DataKeys => AuthorizerSource::Iam,
        }
    }

    /// The function's routes of the shared router, without state.
    pub fn router(self) -> Router<AppState> {
        match self {
            Self::KeysRead => cmk_http::admin_read_routes(),
            Self::KeysWrite => cmk_http::admin_write_routes(),
            Self::DataKeys => cmk_http::data_plane_routes(),
        }
    }
}

/// The function's complete handler: its routes, the common ones, the problem+json fallbacks,
/// and the authorizer identity; keys-read also serves the OIDC issuer's documents when there is
/// an `issuer` (else they are not found). `lambda_http::run` runs it; the tests call it with the
/// events of `events/`.
pub fn app(
    function: HttpFunction,
    cmk: Cmk,
    claims: &ClaimNames,
    issuer: Option<OidcIssuer>,
) -> Router {
    let state = AppState {
        cmk,
        auth: Arc::new(GatewayAuthenticator),
    };
    let mut router = cmk_http::app(function.router(), state);
    if let (HttpFunction::KeysRead, Some(issuer)) = (function, issuer) {
        router = router.merge(cmk_http::oidc::routes(issuer));
    }
    router.layer(GatewayAuthLayer::new(function.authorizer(claims)))
}

/// The `main` of an HTTP function: configuration, then SDK clients (built once per cold start,
/// with no AWS call), then the Lambda runtime.
pub async fn run(function: HttpFunction) -> Result<(), lambda_http::Error> {
    crate::init_tracing();
    let settings = HttpSettings::from_env().map_err(|e| {
        tracing::error!(error = %e, "invalid configuration; the function cannot start");
        e.to_string()
    })?;
    let config = cmk_aws::backend::sdk_config(settings.aws.endpoint_url.as_deref()).await;
    let backend = cmk_aws::backend::build(&config, &settings.aws);
    tracing::info!(function = function.name(), table = %settings.aws.table, "starting");
    crate::emf::install(function.name());
    let handler = app(function, backend.cmk, &settings.claims, backend.oidc)
        .layer(axum::middleware::from_fn(flush_metrics));
    lambda_http::run(handler).await
}

/// Prints the request's metrics once it is answered (one invocation, one request).
async fn flush_metrics(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let org = org_of_path(req.uri().path());
    let response = next.run(req).await;
    crate::emf::flush(org.as_slice());
    response
}

/// The org a request's path names (`/v1/orgs/{org}/…`), if it is a valid org id: the EMF
/// documents' `org` property.
fn org_of_path(path: &str) -> Option<String> {
    let mut parts = path.trim_start_matches('/').split('/');
    (parts.next()? == "v1" && parts.next()? == "orgs").then_some(())?;
    cmk_core::model::OrgId::parse(parts.next()?)
        .ok()
        .map(|o| o.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_org_of_a_path_is_its_orgs_segment_when_valid() {
        let org = super::org_of_path;
        assert_eq!(org("/v1/orgs/acme/keys").as_deref(), Some("acme"));
        assert_eq!(org("/v1/orgs/acme").as_deref(), Some("acme"));
        assert_eq!(org("/healthz"), None);
        assert_eq!(org("/v1/orgs/"), None);
        assert_eq!(
            org("/v1/orgs/%20bad/keys"),
            None,
            "not an org id: not a property"
        );
    }
}
