//! A thin typed layer over Vault's HTTP API: AppRole login and the transit `encrypt`,
//! `decrypt` and `rewrap` endpoints, single or batched. Errors keep the HTTP status and the
//! server's messages, which [`crate::errors`] turns into key-error kinds.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use zeroize::Zeroizing;

/// Where a transit key is.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    pub address: &'a str,
    pub namespace: Option<&'a str>,
    pub mount: &'a str,
    pub key_name: &'a str,
}

/// A failed call: no answer (`status` is `None`), or the server's status and messages.
#[derive(Clone, Debug)]
pub struct VaultError {
    pub status: Option<u16>,
    pub message: String,
}

impl std::fmt::Display for VaultError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(s) => write!(f, "{} (HTTP {s})", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// A token from a login, with how long it lives (`None`: it does not expire).
pub struct Login {
    pub token: Zeroizing<String>,
    pub ttl: Option<Duration>,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Login(<token>, ttl {:?})", self.ttl)
    }
}

/// One item of a batch answer: the value, or the server's message about that item.
pub type ItemResult = Result<Zeroizing<String>, String>;

#[derive(Clone, Debug)]
pub struct TransitClient {
    http: reqwest::Client,
    /// Requests sent, logins included (for benchmarks: requests per data key).
    requests: std::sync::Arc<std::sync::atomic::AtomicU64>,
    allow_private: bool,
}

/// The message of a refused address; [`crate::errors`] reads it as the key's setting.
pub const REFUSED_ADDRESS: &str = "is an address the service does not call";

fn refused(what: &str) -> VaultError {
    VaultError {
        status: None,
        message: format!(
            "{what} {REFUSED_ADDRESS} (link-local, metadata, or private where private addresses \
             are not allowed)"
        ),
    }
}

/// Resolves names, keeping only addresses the service may call.
#[derive(Debug)]
struct CallableOnly {
    allow_private: bool,
}

/// A name that resolved only to addresses the service does not call.
#[derive(Debug)]
struct RefusedName(String);

impl std::fmt::Display for RefusedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {REFUSED_ADDRESS}", self.0)
    }
}

impl std::error::Error for RefusedName {}

impl reqwest::dns::Resolve for CallableOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| cmk_core::vault::is_callable_ip(a.ip(), allow_private))
                .collect();
            if found.is_empty() {
                return Err(Box::new(RefusedName(host)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(found.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Whether a failed request was refused by [`CallableOnly`].
fn refused_by_resolver(e: &reqwest::Error) -> Option<String> {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(r) = err.downcast_ref::<RefusedName>() {
            return Some(r.0.clone());
        }
        source = err.source();
    }
    None
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    auth: Option<AuthData>,
    #[serde(default)]
    errors: Vec<String>,
}

#[derive(Deserialize)]
struct AuthData {
    client_token: String,
    #[serde(default)]
    lease_duration: u64,
}

#[derive(Deserialize)]
struct BatchResults<T> {
    batch_results: Vec<T>,
}

#[derive(Deserialize)]
struct Item {
    #[serde(default)]
    ciphertext: Option<String>,
    #[serde(default)]
    plaintext: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

impl Item {
    fn into_result(self, field: &str) -> ItemResult {
        if let Some(e) = self.error.filter(|e| !e.is_empty()) {
            return Err(e);
        }
        let value = if field == "plaintext" {
            self.plaintext
        } else {
            self.ciphertext
        };
        value
            .filter(|v| !v.is_empty())
            .map(Zeroizing::new)
            .ok_or_else(|| format!("the answer has no {field}"))
    }
}

impl TransitClient {
    /// `timeout` bounds each call; connecting gets at most 3 s of it.
    /// `timeout` bounds each call; connecting gets at most 3 s of it. Addresses are checked
    /// against [`cmk_core::vault::is_callable_ip`] (`allow_private`: loopback and private
    /// ranges too), both address literals and what names resolve to, at every connection, so
    /// a name cannot be re-pointed at the instance metadata after the key was added.
    pub fn new(timeout: Duration, allow_private: bool) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(3)))
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(std::sync::Arc::new(CallableOnly { allow_private }))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            http,
            requests: Default::default(),
            allow_private,
        })
    }

    /// Refuses an address literal the service may not call (names go through
    /// [`CallableOnly`]).
    fn check_literal(&self, url: &str) -> Result<(), VaultError> {
        let host = reqwest::Url::parse(url).ok().and_then(|u| {
            u.host_str()
                .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned())
                .and_then(|h| h.parse::<std::net::IpAddr>().ok())
        });
        match host {
            Some(ip) if !cmk_core::vault::is_callable_ip(ip, self.allow_private) => {
                Err(refused(&ip.to_string()))
            }
            _ => Ok(()),
        }
    }

    /// How many requests this client has sent.
    pub fn requests(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `auth/approle/login`.
    pub async fn login_approle(
        &self,
        address: &str,
        namespace: Option<&str>,
        role_id: &str,
        secret_id: &str,
    ) -> Result<Login, VaultError> {
        let body = Zeroizing::new(to_json(&LoginBody { role_id, secret_id }));
        let url = format!("{address}/v1/auth/approle/login");
        let envelope = self.post(&url, namespace, None, body.as_str()).await?;
        let auth = envelope.auth.ok_or_else(|| VaultError {
            status: None,
            message: "the login answered no token".into(),
        })?;
        Ok(Login {
            token: Zeroizing::new(auth.client_token),
            ttl: (auth.lease_duration > 0).then(|| Duration::from_secs(auth.lease_duration)),
        })
    }

    /// `encrypt` of one base64 plaintext under a base64 context: the ciphertext.
    pub async fn encrypt(
        &self,
        t: Target<'_>,
        token: &str,
        plaintext_b64: &str,
        context_b64: &str,
    ) -> Result<Zeroizing<String>, VaultError> {
        let body = Zeroizing::new(to_json(&PlaintextItem {
            plaintext: plaintext_b64,
            context: context_b64,
        }));
        self.single(t, "encrypt", token, &body, "ciphertext").await
    }

    /// `decrypt` of one ciphertext: the base64 plaintext.
    pub async fn decrypt(
        &self,
        t: Target<'_>,
        token: &str,
        ciphertext: &str,
        context_b64: &str,
    ) -> Result<Zeroizing<String>, VaultError> {
        let body = to_json(&CiphertextItem {
            ciphertext,
            context: context_b64,
        });
        self.single(t, "decrypt", token, &body, "plaintext").await
    }

    /// `encrypt` with `batch_input` of (base64 plaintext, base64 context) pairs.
    pub async fn encrypt_batch(
        &self,
        t: Target<'_>,
        token: &str,
        items: &[(Zeroizing<String>, String)],
    ) -> Result<Vec<ItemResult>, VaultError> {
        let batch_input: Vec<PlaintextItem<'_>> = items
            .iter()
            .map(|(p, c)| PlaintextItem {
                plaintext: p.as_str(),
                context: c,
            })
            .collect();
        // Serialized straight from the borrowed plaintexts: the body is their one copy.
        let body = Zeroizing::new(to_json(&Batch { batch_input }));
        self.batch(t, "encrypt", token, &body, "ciphertext", items.len())
            .await
    }

    /// `decrypt` with `batch_input` of (ciphertext, base64 context) pairs.
    pub async fn decrypt_batch(
        &self,
        t: Target<'_>,
        token: &str,
        items: &[(String, String)],
    ) -> Result<Vec<ItemResult>, VaultError> {
        self.ciphertext_batch(t, "decrypt", token, items, "plaintext")
            .await
    }

    /// `rewrap` with `batch_input`: each ciphertext re-encrypted under the key's latest
    /// version inside the server.
    pub async fn rewrap_batch(
        &self,
        t: Target<'_>,
        token: &str,
        items: &[(String, String)],
    ) -> Result<Vec<ItemResult>, VaultError> {
        self.ciphertext_batch(t, "rewrap", token, items, "ciphertext")
            .await
    }

    /// A batch of (ciphertext, context) items to `op`, answering `field` per item.
    async fn ciphertext_batch(
        &self,
        t: Target<'_>,
        op: &str,
        token: &str,
        items: &[(String, String)],
        field: &str,
    ) -> Result<Vec<ItemResult>, VaultError> {
        let batch_input = items
            .iter()
            .map(|(c, ctx)| CiphertextItem {
                ciphertext: c,
                context: ctx,
            })
            .collect();
        let body = to_json(&Batch { batch_input });
        self.batch(t, op, token, &body, field, items.len()).await
    }

    async fn single(
        &self,
        t: Target<'_>,
        op: &str,
        token: &str,
        body: &str,
        field: &str,
    ) -> Result<Zeroizing<String>, VaultError> {
        let envelope = self
            .post(&op_url(t, op), t.namespace, Some(token), body)
            .await?;
        let item: Item = data_as(envelope.data)?;
        item.into_result(field).map_err(|message| VaultError {
            status: None,
            message,
        })
    }

    async fn batch(
        &self,
        t: Target<'_>,
        op: &str,
        token: &str,
        body: &str,
        field: &str,
        expected: usize,
    ) -> Result<Vec<ItemResult>, VaultError> {
        let envelope = self
            .post(&op_url(t, op), t.namespace, Some(token), body)
            .await?;
        let results: BatchResults<Item> = data_as(envelope.data)?;
        if results.batch_results.len() != expected {
            return Err(VaultError {
                status: None,
                message: format!(
                    "the server answered {} results for {expected} items",
                    results.batch_results.len()
                ),
            });
        }
        Ok(results
            .batch_results
            .into_iter()
            .map(|i| i.into_result(field))
            .collect())
    }

    /// POSTs `body`. A batch whose items failed answers 400 with its per-item results: that
    /// is an answer, not an error.
    async fn post(
        &self,
        url: &str,
        namespace: Option<&str>,
        token: Option<&str>,
        body: &str,
    ) -> Result<Envelope, VaultError> {
        let mut request = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_owned());
        if let Some(token) = token {
            request = request.header("X-Vault-Token", token);
        }
        if let Some(ns) = namespace {
            request = request.header("X-Vault-Namespace", ns);
        }
        self.check_literal(url)?;
        let sent = request.send().await;
        let refused_name = sent.as_ref().err().and_then(refused_by_resolver);
        if refused_name.is_none() {
            self.requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let response = sent.map_err(|e| match refused_name {
            Some(name) => refused(&name),
            None => VaultError {
                status: None,
                message: if e.is_timeout() {
                    "the server did not answer in time".into()
                } else {
                    "the server cannot be reached".into()
                },
            },
        })?;
        let status = response.status();
        // Holds plaintext data keys (decrypt) or a token (login): wiped when dropped.
        let text = Zeroizing::new(response.text().await.map_err(|_| VaultError {
            status: Some(status.as_u16()),
            message: "the answer was cut off".into(),
        })?);
        let envelope: Option<Envelope> = serde_json::from_str(text.as_str()).ok();
        match envelope {
            Some(e) if status.is_success() => Ok(e),
            Some(e)
                if status.as_u16() == 400
                    && e.data
                        .as_ref()
                        .is_some_and(|d| d.get("batch_results").is_some()) =>
            {
                Ok(e)
            }
            Some(e) if !e.errors.is_empty() => Err(VaultError {
                status: Some(status.as_u16()),
                message: tidy(&e.errors.join("; ")),
            }),
            _ => Err(VaultError {
                status: Some(status.as_u16()),
                message: format!("the server answered HTTP {status}"),
            }),
        }
    }
}

fn op_url(t: Target<'_>, op: &str) -> String {
    format!("{}/v1/{}/{op}/{}", t.address, t.mount, t.key_name)
}

#[derive(Serialize)]
struct LoginBody<'a> {
    role_id: &'a str,
    secret_id: &'a str,
}

#[derive(Serialize)]
struct PlaintextItem<'a> {
    plaintext: &'a str,
    context: &'a str,
}

#[derive(Serialize)]
struct CiphertextItem<'a> {
    ciphertext: &'a str,
    context: &'a str,
}

#[derive(Serialize)]
struct Batch<T> {
    batch_input: Vec<T>,
}

/// Request bodies are plain structs of strings: serializing them cannot fail.
fn to_json<T: Serialize>(body: &T) -> String {
    serde_json::to_string(body).unwrap_or_default()
}

fn data_as<T: DeserializeOwned>(data: Option<Value>) -> Result<T, VaultError> {
    data.and_then(|d| serde_json::from_value(d).ok())
        .ok_or_else(|| VaultError {
            status: None,
            message: "the answer is not what transit answers".into(),
        })
}

/// Vault wraps messages as `1 error occurred:\n\t* permission denied\n\n`: keep the messages.
fn tidy(message: &str) -> String {
    let parts: Vec<&str> = message
        .lines()
        .map(|l| l.trim().trim_start_matches("* ").trim())
        .filter(|l| {
            !l.is_empty() && !l.ends_with("error occurred:") && !l.ends_with("errors occurred:")
        })
        .collect();
    if parts.is_empty() {
        message.trim().to_owned()
    } else {
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_messages_are_tidied() {
        assert_eq!(
            tidy("1 error occurred:\n\t* permission denied\n\n"),
            "permission denied"
        );
        assert_eq!(tidy("encryption key not found"), "encryption key not found");
    }
}
