//! The OpenAPI document, generated from the handlers' `#[utoipa::path]` attributes and the DTOs.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr};
use utoipa::{Modify, OpenApi};

use crate::dto;
use crate::error::{Problem, PROBLEM_CONTENT_TYPE};
use crate::handlers;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Customer managed keys",
        version = "1",
        description = "Lets each organization protect its data with its own keys. See API.md."
    ),
    paths(
        handlers::healthz,
        openapi_json,
        handlers::list_keys,
        handlers::setup,
        handlers::setup_cloudformation,
        handlers::add_key,
        handlers::update_key,
        handlers::set_default,
        handlers::disable,
        handlers::disable_all,
        handlers::check_key,
        handlers::rewrap_key,
        handlers::reencryption,
        handlers::retry,
        handlers::cancel,
        handlers::audit,
        handlers::create_data_key,
        handlers::encrypt,
        handlers::decrypt,
    ),
    components(schemas(
        Problem,
        dto::KeyDto,
        dto::JobDto,
        dto::EventDto,
        dto::DataKeyDto,
        dto::KeysResponse,
        dto::SetupResponse,
        dto::AddKeyResponse,
        dto::KeyResponse,
        dto::JobResponse,
        dto::ReencryptionStatusResponse,
        dto::AuditResponse,
        dto::DataKeyResponse,
        dto::EncryptResponse,
        dto::DecryptResponse,
        dto::AddKeyRequest,
        dto::UpdateKeyRequest,
        dto::DisableRequest,
        dto::EncryptRequest,
        dto::DecryptRequest,
        dto::EmptyObject,
        dto::VaultKeyDto,
        dto::VaultAuthDto,
        dto::VaultCredentialDto,
        dto::VaultSetupDto,
        dto::RewrapResponse,
    )),
    modifiers(&SecurityAndCommonErrors),
    tags(
        (name = "keys", description = "Admin: the org's key-encryption keys"),
        (name = "reencryption", description = "Admin: the org's re-encryption job"),
        (name = "audit", description = "Admin: the org's audit trail"),
        (name = "data plane", description = "Services: data keys, encrypt, decrypt"),
        (name = "other", description = "Health and this document"),
    )
)]
struct ApiDoc;

/// The document served at `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// Name of the bearer security scheme.
const BEARER: &str = "bearer";

/// Adds the bearer scheme, and to every `/v1` operation the security requirement and the
/// problems any of them can answer (401, 403, 500), so each handler lists only its own.
struct SecurityAndCommonErrors;

impl Modify for SecurityAndCommonErrors {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "JWT with claims sub, org, role (admin, member, service), exp",
                    ))
                    .build(),
            ),
        );
        let common = [
            (
                "400",
                "`invalid_request`: malformed JSON, bad field or id, body too large",
            ),
            ("401", "`unauthenticated`: no, bad or expired token"),
            ("403", "`forbidden`: wrong role, or a token for another org"),
            (
                "500",
                "`internal`: the detail is generic; the cause is logged",
            ),
        ];
        for (path, item) in doc.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") {
                continue;
            }
            let ops: [&mut Option<Operation>; 5] = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ];
            for op in ops.into_iter().flatten() {
                op.security = Some(vec![SecurityRequirement::new::<_, _, &str>(BEARER, [])]);
                for (status, description) in common {
                    op.responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| problem_response(description));
                }
            }
        }
    }
}

fn problem_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                PROBLEM_CONTENT_TYPE,
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build(),
            )
            .build(),
    )
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "other",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn openapi_json() -> impl IntoResponse {
    // Built once per process: the document is static.
    static DOC: OnceLock<String> = OnceLock::new();
    let doc = DOC.get_or_init(|| {
        openapi().to_json().unwrap_or_else(|e| {
            tracing::error!(error = %e, "could not serialize the OpenAPI document");
            "{}".to_owned()
        })
    });
    ([(header::CONTENT_TYPE, "application/json")], doc.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route of API.md (with those its "added by the issues now open" section names and
    /// this service has), as (method, path).
    pub(crate) const ROUTES: [(&str, &str); 19] = [
        ("get", "/v1/orgs/{org}/keys"),
        ("get", "/v1/orgs/{org}/keys/setup"),
        ("post", "/v1/orgs/{org}/keys"),
        ("patch", "/v1/orgs/{org}/keys/{key_id}"),
        ("post", "/v1/orgs/{org}/keys/{key_id}/default"),
        ("post", "/v1/orgs/{org}/keys/{key_id}/disable"),
        ("post", "/v1/orgs/{org}/keys/disable-all"),
        ("post", "/v1/orgs/{org}/keys/{key_id}/check"),
        ("get", "/v1/orgs/{org}/reencryption"),
        ("post", "/v1/orgs/{org}/reencryption/retry"),
        ("post", "/v1/orgs/{org}/reencryption/cancel"),
        ("get", "/v1/orgs/{org}/audit"),
        ("post", "/v1/orgs/{org}/data-keys"),
        ("post", "/v1/orgs/{org}/data-keys/{id}/encrypt"),
        ("post", "/v1/orgs/{org}/decrypt"),
        ("get", "/healthz"),
        ("get", "/openapi.json"),
        // From API.md's section of the issues then open: the setup kit, the rotate job.
        ("get", "/v1/orgs/{org}/keys/setup/cloudformation"),
        ("post", "/v1/orgs/{org}/keys/{key_id}/rewrap"),
    ];

    #[test]
    fn lists_every_route_of_api_md() {
        let doc = serde_json::to_value(openapi()).expect("serialize");
        let paths = doc["paths"].as_object().expect("paths");
        let mut count = 0;
        for (method, path) in ROUTES {
            let op = &paths
                .get(path)
                .unwrap_or_else(|| panic!("missing path {path}"))[method];
            assert!(op.is_object(), "missing {method} {path}");
            if path.starts_with("/v1/") {
                assert_eq!(op["security"][0]["bearer"], serde_json::json!([]), "{path}");
                assert!(op["responses"]["401"].is_object(), "{path}");
            }
        }
        for item in paths.values() {
            count += item.as_object().expect("item").len();
        }
        assert_eq!(
            count,
            ROUTES.len(),
            "the document lists routes API.md does not"
        );
    }

    #[test]
    fn schemas_have_the_api_md_fields() {
        let doc = serde_json::to_value(openapi()).expect("serialize");
        let schemas = &doc["components"]["schemas"];
        let fields = |name: &str| -> Vec<String> {
            let mut v: Vec<String> = schemas[name]["properties"]
                .as_object()
                .unwrap_or_else(|| panic!("schema {name}"))
                .keys()
                .cloned()
                .collect();
            v.sort();
            v
        };
        for f in [
            "id",
            "name",
            "type",
            "default",
            "state",
            "busy",
            "data_keys",
            "health",
            "aws",
            "created_at",
            "created_by",
        ] {
            assert!(fields("Key").contains(&f.to_owned()), "Key.{f}");
        }
        for f in [
            "id",
            "kind",
            "state",
            "source_key_ids",
            "target_key_id",
            "total",
            "done",
            "failed",
            "errors",
            "started_at",
            "finished_at",
            "started_by",
        ] {
            assert!(fields("Job").contains(&f.to_owned()), "Job.{f}");
        }
        for f in [
            "id", "at", "actor", "action", "key_id", "job_id", "outcome", "detail",
        ] {
            assert!(fields("Event").contains(&f.to_owned()), "Event.{f}");
        }
    }
}
