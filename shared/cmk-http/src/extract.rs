//! Extractors whose every rejection is an [`ApiError`], so that malformed input always answers
//! `400 invalid_request` as problem+json (axum's own rejections are plain text, 415 or 422).

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use cmk_core::model::{DataKeyId, KeyId};
use serde::de::DeserializeOwned;

use crate::auth::path_param;
use crate::error::ApiError;

/// Largest request body accepted, in bytes.
pub const BODY_LIMIT: usize = 64 * 1024;

fn body_error(e: BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::invalid_request(format!(
            "the request body is larger than {} KiB",
            BODY_LIMIT / 1024
        ))
    } else {
        ApiError::invalid_request(format!(
            "could not read the request body: {}",
            e.body_text()
        ))
    }
}

fn json_error(e: JsonRejection) -> ApiError {
    match e {
        JsonRejection::MissingJsonContentType(_) => ApiError::invalid_request(
            "the request body must be JSON (content-type: application/json)",
        ),
        JsonRejection::BytesRejection(e) => body_error(e),
        other => ApiError::invalid_request(other.body_text()),
    }
}

fn is_json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    let Some((kind, sub)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (sub.eq_ignore_ascii_case("json") || sub.to_ascii_lowercase().ends_with("+json"))
}

/// Parses a JSON object body. Arrays and scalars are refused even where serde would accept a
/// struct written as an array.
fn parse_object<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        Some(_) => {
            return Err(ApiError::invalid_request(
                "the request body must be a JSON object",
            ))
        }
        None => return Err(ApiError::invalid_request("the request body is empty")),
    }
    Json::<T>::from_bytes(bytes)
        .map(|Json(v)| v)
        .map_err(json_error)
}

/// A required JSON object body.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json_content_type(req.headers()) {
            return Err(json_error(JsonRejection::MissingJsonContentType(
                Default::default(),
            )));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(body_error)?;
        parse_object(&bytes).map(ApiJson)
    }
}

/// An optional JSON object body: an empty body reads as `T::default()` (routes that take `{}`),
/// a present one must be a valid JSON object.
#[derive(Debug)]
pub struct JsonOrEmpty<T>(pub T);

impl<S, T> FromRequest<S> for JsonOrEmpty<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Default,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json = is_json_content_type(req.headers());
        let bytes = Bytes::from_request(req, state).await.map_err(body_error)?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonOrEmpty(T::default()));
        }
        if !json {
            return Err(json_error(JsonRejection::MissingJsonContentType(
                Default::default(),
            )));
        }
        parse_object(&bytes).map(JsonOrEmpty)
    }
}

/// The body of routes that take `{}`: no fields allowed.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// A query string; a malformed one is a 400 problem.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|e| ApiError::invalid_request(e.body_text()))
    }
}

/// The `{key_id}` path parameter, syntax-checked (an unknown id is the core's 404).
#[derive(Debug)]
pub struct KeyPath(pub KeyId);

impl<S: Send + Sync> FromRequestParts<S> for KeyPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let raw = path_param(parts, state, "key_id").await?;
        Ok(KeyPath(KeyId::parse(&raw)?))
    }
}

/// The `{id}` path parameter of a data key, syntax-checked.
#[derive(Debug)]
pub struct DataKeyPath(pub DataKeyId);

impl<S: Send + Sync> FromRequestParts<S> for DataKeyPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let raw = path_param(parts, state, "id").await?;
        Ok(DataKeyPath(DataKeyId::parse(&raw)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Named {
        name: String,
    }

    fn req(content_type: Option<&str>, body: &str) -> Request {
        let mut b = axum::http::Request::builder().method("POST").uri("/");
        if let Some(ct) = content_type {
            b = b.header(CONTENT_TYPE, ct);
        }
        b.body(Body::from(body.to_owned())).expect("request")
    }

    async fn json(ct: Option<&str>, body: &str) -> Result<Named, ApiError> {
        ApiJson::<Named>::from_request(req(ct, body), &())
            .await
            .map(|ApiJson(v)| v)
    }

    async fn optional(ct: Option<&str>, body: &str) -> Result<Empty, ApiError> {
        JsonOrEmpty::<Empty>::from_request(req(ct, body), &())
            .await
            .map(|JsonOrEmpty(v)| v)
    }

    const JSON: Option<&str> = Some("application/json");

    #[tokio::test]
    async fn required_json() {
        assert_eq!(json(JSON, r#"{"name":"a"}"#).await.expect("ok").name, "a");
        assert_eq!(
            json(Some("application/json; charset=utf-8"), r#"{"name":"a"}"#)
                .await
                .expect("ok")
                .name,
            "a"
        );
        for (ct, body) in [
            (None, r#"{"name":"a"}"#),
            (Some("text/plain"), r#"{"name":"a"}"#),
            (JSON, ""),
            (JSON, "{"),
            (JSON, r#"["a"]"#),
            (JSON, r#"{"name":1}"#),
            (JSON, r#"{"name":"a","x":1}"#),
            (JSON, r#"{}"#),
        ] {
            let e = json(ct, body).await.expect_err(body);
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{body}: {e:?}");
            assert_eq!(e.code().as_str(), "invalid_request");
        }
    }

    #[tokio::test]
    async fn optional_json() {
        assert!(optional(None, "").await.is_ok());
        assert!(optional(JSON, "").await.is_ok());
        assert!(optional(JSON, "{}").await.is_ok());
        assert!(optional(JSON, " { } ").await.is_ok());
        for (ct, body) in [
            (None, "{}"),
            (JSON, "[]"),
            (JSON, "{\"a\":1}"),
            (JSON, "nope"),
        ] {
            let e = optional(ct, body).await.expect_err(body);
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{body}");
        }
    }
}
