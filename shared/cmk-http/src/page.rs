//! The admin page: static HTML, CSS and JavaScript modules compiled into the binary, so the same
//! page is served by `cmk serve` and by the AWS read function, with no asset from the internet
//! and no front-end build step. The page calls only the API of API.md with the admin's bearer
//! token; serving it needs no token.

use axum::extract::{Path, State};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::error::ApiError;
use crate::AppState;

/// No inline script or style, nothing from another origin, no framing, no form posts.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
     object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const INDEX_HTML: &str = include_str!("../assets/index.html");

/// The files under `/assets/`: name, content type, bytes. The page's script is ES modules by
/// part of the page: `app.js` wires them (`session`, `keys-table`, `menu`, `dialogs`,
/// `add-dialog`, `disable-dialogs`, `banner`), over `state` and `keys` (the page's state and
/// what it says about keys), `dom`, `api.js` and `words.js`. No module imports another back.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/app.js"),
    ),
    (
        "session.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/session.js"),
    ),
    (
        "keys-table.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/keys-table.js"),
    ),
    (
        "menu.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/menu.js"),
    ),
    (
        "dialogs.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/dialogs.js"),
    ),
    (
        "add-dialog.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/add-dialog.js"),
    ),
    (
        "disable-dialogs.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/disable-dialogs.js"),
    ),
    (
        "banner.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/banner.js"),
    ),
    (
        "state.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/state.js"),
    ),
    (
        "keys.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/keys.js"),
    ),
    (
        "dom.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/dom.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/api.js"),
    ),
    (
        "words.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/words.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/app.css"),
    ),
    (
        "icon.svg",
        "image/svg+xml",
        include_bytes!("../assets/icon.svg"),
    ),
];

/// Placeholder in index.html replaced by the key types this service accepts.
const KEY_TYPES_PLACEHOLDER: &str = "{{KEY_TYPES}}";

/// `GET /` (the page) and `GET /assets/{file}` (its scripts, style and icon).
pub fn page_routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/assets/{file}", get(asset))
}

/// The security headers of every page response.
fn secure(mut response: Response, content_type: &'static str) -> Response {
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    // Small files: always revalidate, so a new binary's page is used at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The page. Its `data-key-types` tells which key types the dialog offers (`local` only where
/// the service accepts local keys).
async fn index(State(s): State<AppState>) -> Response {
    let config = s.cmk.config();
    let mut types = Vec::new();
    if config.allow_aws_keys {
        types.push("aws-kms");
    }
    if config.allow_vault_keys {
        types.push("vault-transit");
    }
    if config.allow_local_keys {
        types.push("local");
    }
    let html = INDEX_HTML.replace(KEY_TYPES_PLACEHOLDER, &types.join(" "));
    secure(
        (StatusCode::OK, html).into_response(),
        "text/html; charset=utf-8",
    )
}

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, bytes)) => {
            secure((StatusCode::OK, *bytes).into_response(), content_type)
        }
        None => ApiError::not_found("no such asset").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_assets() {
        assert!(INDEX_HTML.contains(KEY_TYPES_PLACEHOLDER));
        // No inline script or style, and nothing from another origin.
        assert!(!INDEX_HTML.contains("<script>"));
        assert!(!INDEX_HTML.contains("<style"));
        assert!(!INDEX_HTML.contains(" style="));
        assert!(!INDEX_HTML.contains("http://") && !INDEX_HTML.contains("https://"));
        // (The SVG namespace is a name, not an address that is fetched.)
        for (name, _, bytes) in ASSETS {
            let text = String::from_utf8_lossy(bytes).replace("http://www.w3.org/2000/svg", "");
            assert!(
                !text.contains("https://") && !text.contains("http://"),
                "{name} must not reach another origin"
            );
        }
    }

    /// The modules each script imports, by name.
    fn imports() -> Vec<(&'static str, Vec<String>)> {
        ASSETS
            .iter()
            .filter(|(name, _, _)| name.ends_with(".js"))
            .map(|(name, _, bytes)| {
                let text = String::from_utf8_lossy(bytes);
                let modules = text
                    .split("from './")
                    .skip(1)
                    .map(|rest| rest.split('\'').next().unwrap_or_default().to_owned())
                    .collect();
                (*name, modules)
            })
            .collect()
    }

    #[test]
    fn every_module_a_script_imports_is_served() {
        let served: Vec<&str> = ASSETS.iter().map(|(name, _, _)| *name).collect();
        let graph = imports();
        for (name, modules) in &graph {
            for module in modules {
                assert!(
                    served.contains(&module.as_str()),
                    "{name} imports {module}, which is not served"
                );
            }
        }
        let edges: usize = graph.iter().map(|(_, m)| m.len()).sum();
        assert!(edges >= 9, "the page is ES modules: {edges} imports");
    }

    /// No module imports another that (through others) imports it back: each part of the page
    /// reads on its own, and `state.js` connects the redraws instead.
    #[test]
    fn the_page_modules_import_no_cycle() {
        let graph = imports();
        let deps = |name: &str| {
            graph
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, m)| m.clone())
                .unwrap_or_default()
        };
        for (start, _) in &graph {
            // Every module reachable from `start` must not lead back to it.
            let mut seen: Vec<String> = Vec::new();
            let mut todo = deps(start);
            while let Some(next) = todo.pop() {
                assert_ne!(next, *start, "{start} imports itself through other modules");
                if !seen.contains(&next) {
                    todo.extend(deps(&next));
                    seen.push(next);
                }
            }
        }
    }
}
