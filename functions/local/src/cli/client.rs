//! The HTTP client of the admin commands: bearer token, org scoping, problem+json errors.

use std::fmt;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use cmk_core::model::OrgId;
use cmk_http::dto::KeysResponse;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::Remote;

/// An error answer of the API: its status, `code` and `detail` (and `reason` when given).
#[derive(Debug)]
pub struct Problem {
    pub status: u16,
    pub code: String,
    pub detail: String,
    pub reason: Option<String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.status, self.detail)?;
        if let Some(reason) = &self.reason {
            write!(f, " [reason: {reason}]")?;
        }
        if self.code == "unauthenticated" {
            write!(
                f,
                "\nhint: pass a valid admin token with --token or CMK_TOKEN (locally: cmk token --org ORG --role admin)"
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for Problem {}

/// A client for one org of one service.
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    pub org: String,
}

/// The `org` claim of a JWT, read without checking the signature (the service checks it).
pub fn token_org(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("org")?.as_str().map(str::to_owned)
}

impl Client {
    pub fn new(remote: &Remote) -> Result<Self> {
        let token = remote
            .token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                anyhow!(
                    "no token: pass --token or set CMK_TOKEN (locally: cmk token --org ORG --role admin)"
                )
            })?
            .to_owned();
        let org = match &remote.org {
            Some(org) => org.clone(),
            None => {
                token_org(&token).ok_or_else(|| anyhow!("the token names no org; pass --org"))?
            }
        };
        let org = OrgId::parse(&org)
            .map_err(|e| anyhow!("--org: {e}"))?
            .to_string();
        let base = remote.url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("--url must start with http:// or https:// (got {base:?})");
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self {
            http,
            base,
            token,
            org,
        })
    }

    /// Calls `path` under `/v1/orgs/{org}`; a non-2xx answer becomes a [`Problem`].
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        let text = self.call_text(method, path, body).await?;
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// `GET path` for an answer that is not JSON (the setup kit's YAML).
    pub async fn get_text(&self, path: &str) -> Result<String> {
        self.call_text(Method::GET, path, None).await
    }

    async fn call_text(&self, method: Method, path: &str, body: Option<Value>) -> Result<String> {
        let url = format!("{}/v1/orgs/{}{}", self.base, self.org, path);
        let mut req = self
            .http
            .request(method, &url)
            .bearer_auth(&self.token)
            .header("accept", "application/json");
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.with_context(|| {
            format!(
                "cannot reach the service at {} (is `cmk serve` running? set --url or CMK_URL)",
                self.base
            )
        })?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .context("the service's answer was cut off")?;
        if status.is_success() {
            return Ok(text);
        }
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let field = |name: &str| json.get(name).and_then(Value::as_str).map(str::to_owned);
        Err(Problem {
            status: status.as_u16(),
            code: field("code").unwrap_or_else(|| format!("http_{}", status.as_u16())),
            detail: field("detail").unwrap_or_else(|| text.chars().take(300).collect()),
            reason: field("reason"),
        }
        .into())
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Option<Value>) -> Result<Value> {
        self.call(Method::POST, path, body).await
    }

    /// The id of the key named `key` (an id, or a name in any case).
    pub async fn resolve_key(&self, key: &str) -> Result<String> {
        let listing: KeysResponse = typed(&self.get("/keys").await?)?;
        let keys = &listing.keys;
        keys.iter()
            .find(|k| k.id == key)
            .or_else(|| keys.iter().find(|k| k.name == key))
            .or_else(|| {
                keys.iter()
                    .find(|k| k.name.to_lowercase() == key.to_lowercase())
            })
            .map(|k| k.id.clone())
            .ok_or_else(|| anyhow!("no key with id or name {key:?} in org {}", self.org))
    }
}

/// An answer read as the API's response type (`cmk_http::dto`), so a field this `cmk` needs
/// and the service left out is an error that says so, never a blank in a table.
pub fn typed<T: DeserializeOwned>(answer: &Value) -> Result<T> {
    serde_json::from_value(answer.clone()).map_err(|e| {
        anyhow!(
            "the service's answer is not what this cmk expects ({e}); are they the same version?"
        )
    })
}

/// The wire word of one of the API's enums (`running`, `access_denied`, `aws-kms`, ...).
pub fn word<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(s)) => s,
        _ => String::new(),
    }
}

/// Prints `value` as pretty JSON.
pub fn print_json(value: &Value) -> anyhow::Result<()> {
    out!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_org_comes_from_the_token() {
        let token = cmk_http::auth::issue_token(
            b"a secret of at least 32 bytes, as the signer requires",
            "me",
            "acme",
            cmk_http::auth::Role::Admin,
            Duration::from_secs(60),
        );
        assert_eq!(token_org(&token).as_deref(), Some("acme"));
        assert_eq!(token_org("not-a-token"), None);
    }

    #[test]
    fn answers_missing_a_field_are_errors_not_blanks() {
        let job = serde_json::json!({"reencryption": {"id": "j1", "kind": "adopt"}});
        let err = typed::<cmk_http::dto::ReencryptionStatusResponse>(&job)
            .expect_err("a job without its counts");
        assert!(err.to_string().contains("missing field"), "{err}");
        let none: cmk_http::dto::ReencryptionStatusResponse =
            typed(&serde_json::json!({"reencryption": null})).expect("no job");
        assert!(none.reencryption.is_none());
        assert_eq!(word(&cmk_http::dto::JobStateDto::Running), "running");
    }
}
