//! `vault-transit` keys: a key of a customer's HashiCorp Vault or OpenBao transit engine. What
//! the service stores about one, the rules its settings obey, and the policy the customer
//! grants. The provider that calls the server is in `cmk-vault`.
//!
//! # How the encryption context is bound
//!
//! Transit binds a context to a ciphertext only through a *derived* key (`derived=true`): the
//! `context` of each call derives the key that encrypts. A key that is not derived silently
//! ignores `context`, and transit's other binding (`associated_data`) is not accepted by
//! `rewrap`, which customer rotation needs. So the service requires a derived key, and the
//! add-time check proves the binding: a test value wrapped under one context must not unwrap
//! under another.

use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::model::{EncryptionContext, InvalidValue};

/// The default mount path of the transit engine.
pub const DEFAULT_MOUNT: &str = "transit";

/// A `vault-transit` key as stored. The credential is sealed under the service-managed key
/// ([`crate::credentials`]); only its method and fingerprint are ever shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultTransitKey {
    /// The server's base URL: https, or http to a loopback address.
    pub address: String,
    pub mount: String,
    pub key_name: String,
    /// Vault Enterprise / OpenBao namespace, sent as `X-Vault-Namespace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub auth: VaultAuth,
}

/// How the service logs in, without the secret itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultAuth {
    pub method: VaultAuthMethod,
    /// The first 8 bytes of SHA-256 over the secret parts, in hex: tells two credentials apart
    /// without revealing either (the secrets are random values of 128 bits or more).
    pub fingerprint: String,
    pub sealed: crate::credentials::SealedSecret,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VaultAuthMethod {
    /// `auth/approle/login` with a role id and a secret id; the service renews its token by
    /// logging in again.
    AppRole,
    /// A token the customer issued (best a periodic token); used as is.
    Token,
}

impl VaultAuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            VaultAuthMethod::AppRole => "approle",
            VaultAuthMethod::Token => "token",
        }
    }
}

/// A credential in the clear, only between the request that brings it and its sealing, and
/// inside the provider at login. Wiped on drop; never printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum VaultCredential {
    AppRole { role_id: String, secret_id: String },
    Token { token: String },
}

impl fmt::Debug for VaultCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VaultCredential({}, <redacted>)", self.method().as_str())
    }
}

impl VaultCredential {
    pub fn method(&self) -> VaultAuthMethod {
        match self {
            VaultCredential::AppRole { .. } => VaultAuthMethod::AppRole,
            VaultCredential::Token { .. } => VaultAuthMethod::Token,
        }
    }

    /// See [`VaultAuth::fingerprint`].
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        match self {
            VaultCredential::AppRole { role_id, secret_id } => {
                h.update(b"approle\0");
                h.update(role_id.as_bytes());
                h.update([0]);
                h.update(secret_id.as_bytes());
            }
            VaultCredential::Token { token } => {
                h.update(b"token\0");
                h.update(token.as_bytes());
            }
        }
        h.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Checks the parts' shapes (not whether the server accepts them).
    pub fn validate(&self) -> Result<(), InvalidValue> {
        let part = |field: &'static str, v: &str| {
            if v.is_empty() || v.len() > 512 || v.chars().any(|c| c.is_control() || c == ' ') {
                Err(InvalidValue::of(
                    field,
                    format!("{field} must be 1 to 512 characters without spaces"),
                ))
            } else {
                Ok(())
            }
        };
        match self {
            VaultCredential::AppRole { role_id, secret_id } => {
                part("role_id", role_id)?;
                part("secret_id", secret_id)
            }
            VaultCredential::Token { token } => part("token", token),
        }
    }
}

/// Checks a server address: an absolute http(s) URL with no query, fragment or user part;
/// https unless the host is a loopback address. Returns it without a trailing slash.
pub fn validate_address(address: &str) -> Result<String, InvalidValue> {
    let bad = |why: &str| InvalidValue::of("address", format!("address {why}"));
    let address = address.trim().trim_end_matches('/');
    let (scheme, rest) = address
        .split_once("://")
        .ok_or_else(|| bad("must be a URL such as https://vault.example.com:8200"))?;
    if address.len() > 512 || address.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad(
            "must be a URL of at most 512 characters without spaces",
        ));
    }
    if rest.contains(['?', '#', '@']) {
        return Err(bad("takes no query, fragment or user name"));
    }
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    // An address literal the service never calls is refused here; private ones are judged
    // where the connection is made (the operator's setting), and so are names, once resolved.
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        if !is_callable_ip(ip, true) {
            return Err(bad(
                "is a link-local, unspecified or multicast address, which the service never calls",
            ));
        }
    }
    match scheme {
        "https" => Ok(address.to_owned()),
        "http" if is_loopback_host(host) => Ok(address.to_owned()),
        "http" => Err(bad(
            "must use https (http is accepted only for a loopback address)",
        )),
        _ => Err(bad("must start with https://")),
    }
}

/// Whether the service may connect to `ip` for a transit key. Never to link-local addresses
/// (the cloud's instance metadata at 169.254.169.254 among them), unspecified, multicast or
/// broadcast ones; to loopback and private ranges (and IPv6 unique-local, where AWS serves
/// metadata too) only where the operator allows private addresses, as local runs do. A
/// customer's address must not become a way into the operator's own network.
pub fn is_callable_ip(ip: std::net::IpAddr, allow_private: bool) -> bool {
    use std::net::IpAddr;
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    let (never, private) = match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            (
                v4.is_unspecified()
                    || v4.is_link_local()
                    || v4.is_multicast()
                    || v4.is_broadcast()
                    || a == 0,
                v4.is_loopback() || v4.is_private() || (a == 100 && (64..128).contains(&b)),
            )
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            (
                v6.is_unspecified() || v6.is_multicast() || (first & 0xffc0) == 0xfe80,
                v6.is_loopback() || (first & 0xfe00) == 0xfc00,
            )
        }
    };
    !never && (allow_private || !private)
}

/// Whether a URL's host (`localhost`, or an address, IPv6 with or without brackets) is this
/// machine: the one place plain http is accepted, for transit servers and webhooks alike.
pub fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A mount path or namespace: segments of letters, digits, `-`, `_` and `.`, joined by `/`.
fn validate_path(field: &'static str, value: &str) -> Result<String, InvalidValue> {
    let value = value.trim().trim_matches('/');
    let ok = !value.is_empty()
        && value.len() <= 128
        && value.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        });
    if ok {
        Ok(value.to_owned())
    } else {
        Err(InvalidValue::of(
            field,
            format!(
                "{field} must be 1 to 128 characters: letters, digits, '-', '_' and '.', in \
                 segments joined by '/'"
            ),
        ))
    }
}

pub fn validate_mount(mount: &str) -> Result<String, InvalidValue> {
    validate_path("mount", mount)
}

pub fn validate_namespace(namespace: &str) -> Result<String, InvalidValue> {
    validate_path("namespace", namespace)
}

/// A transit key name: one path segment.
pub fn validate_key_name(name: &str) -> Result<String, InvalidValue> {
    let name = name.trim();
    if !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        Ok(name.to_owned())
    } else {
        Err(InvalidValue::of(
            "key_name",
            "key_name must be 1 to 128 characters: letters, digits, '-', '_' and '.'",
        ))
    }
}

/// Transit's `context` for an encryption context: the canonical context bytes, base64.
pub fn transit_context(ctx: &EncryptionContext) -> String {
    use base64::Engine as _;
    let mut bytes = Vec::with_capacity(64);
    crate::crypto::context_bytes(ctx, &mut bytes);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The policy a customer grants the service for one transit key: encrypt, decrypt and rewrap
/// on that key only, nothing to read, create, rotate or delete keys.
pub fn policy(mount: &str, key_name: &str) -> String {
    format!(
        "# Lets the CMK service use transit key \"{key_name}\" (a derived key) and nothing else.\n\
         path \"{mount}/encrypt/{key_name}\" {{\n  capabilities = [\"update\"]\n}}\n\
         path \"{mount}/decrypt/{key_name}\" {{\n  capabilities = [\"update\"]\n}}\n\
         path \"{mount}/rewrap/{key_name}\" {{\n  capabilities = [\"update\"]\n}}\n"
    )
}

/// The commands that create a key the service accepts and an AppRole for the service.
pub fn setup_commands(mount: &str, key_name: &str) -> String {
    format!(
        "vault secrets enable -path={mount} transit   # once, if not enabled\n\
         vault write -f {mount}/keys/{key_name} derived=true\n\
         vault policy write cmk-{key_name} cmk-policy.hcl\n\
         vault auth enable approle   # once, if not enabled\n\
         vault write auth/approle/role/cmk-{key_name} token_policies=cmk-{key_name} token_ttl=1h token_max_ttl=4h\n\
         vault read -field=role_id auth/approle/role/cmk-{key_name}/role-id\n\
         vault write -f -field=secret_id auth/approle/role/cmk-{key_name}/secret-id\n"
    )
}

/// Why the service needs a derived key, as the setup text says it.
pub const REQUIREMENT: &str = "Create the transit key with derived=true. The service binds each \
data key's encryption context (the org and the data key's id) through transit's context \
parameter, which only derived keys honour; a key that is not derived is refused when added.";

/// The key name the setup text uses until the admin names one.
pub const EXAMPLE_KEY_NAME: &str = "cmk";

/// What a customer sets up in Vault for one transit key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VaultSetup {
    pub mount: String,
    pub key_name: String,
    pub requirement: &'static str,
    /// The policy to grant the service (HCL).
    pub policy: String,
    /// The `vault` commands that create the key, the policy and an AppRole.
    pub commands: String,
}

/// The setup of a key at `mount` (default [`DEFAULT_MOUNT`]) named `key_name` (default
/// [`EXAMPLE_KEY_NAME`]).
pub fn setup(mount: Option<&str>, key_name: Option<&str>) -> Result<VaultSetup, InvalidValue> {
    let mount = validate_mount(mount.filter(|m| !m.is_empty()).unwrap_or(DEFAULT_MOUNT))?;
    let key_name = validate_key_name(
        key_name
            .filter(|k| !k.is_empty())
            .unwrap_or(EXAMPLE_KEY_NAME),
    )?;
    Ok(VaultSetup {
        policy: policy(&mount, &key_name),
        commands: setup_commands(&mount, &key_name),
        requirement: REQUIREMENT,
        mount,
        key_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_need_https_except_on_loopback() {
        assert_eq!(
            validate_address("https://vault.example.com:8200/").expect("accepted"),
            "https://vault.example.com:8200"
        );
        assert!(validate_address("http://127.0.0.1:8200").is_ok());
        assert!(validate_address("http://localhost:8200").is_ok());
        assert!(validate_address("http://[::1]:8200").is_ok());
        for bad in [
            "http://vault.example.com",
            "http://127.0.0.1.evil.com",
            "ftp://vault",
            "vault.example.com",
            "https://user@vault",
            "https://vault?x=1",
            "https://",
            "https://va ult",
        ] {
            let e = validate_address(bad).expect_err("refused");
            assert_eq!(e.field, Some("address"), "{bad}");
        }
    }

    #[test]
    fn the_metadata_address_and_private_ranges_are_not_for_customers() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().expect("an address");
        for never in [
            "169.254.169.254",
            "169.254.170.2",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "fe80::1",
            "::ffff:169.254.169.254",
        ] {
            assert!(!is_callable_ip(ip(never), true), "{never}");
        }
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "::1",
            "fd00:ec2::254",
        ] {
            assert!(is_callable_ip(ip(private), true), "{private} where allowed");
            assert!(!is_callable_ip(ip(private), false), "{private} by default");
        }
        assert!(is_callable_ip(ip("203.0.113.10"), false));
        assert!(is_callable_ip(ip("2001:db8::1"), false));
        assert!(validate_address("https://169.254.169.254").is_err());
        assert!(validate_address("http://[fe80::1]:8200").is_err());
    }

    #[test]
    fn mounts_namespaces_and_key_names_are_plain_paths() {
        assert_eq!(validate_mount("/transit/").expect("accepted"), "transit");
        assert_eq!(
            validate_mount("team-a/transit").expect("accepted"),
            "team-a/transit"
        );
        assert_eq!(
            validate_namespace("eng/payments").expect("accepted"),
            "eng/payments"
        );
        assert_eq!(
            validate_key_name("orders_v2").expect("accepted"),
            "orders_v2"
        );
        for bad in ["", "a/../b", "a b", "x\"y", "a//b"] {
            assert!(validate_mount(bad).is_err(), "{bad}");
        }
        for bad in ["", "a/b", "..", "k\"}", &"k".repeat(129)] {
            assert_eq!(
                validate_key_name(bad).expect_err("refused").field,
                Some("key_name")
            );
        }
    }

    #[test]
    fn credentials_never_print_and_fingerprints_tell_them_apart() {
        let a = VaultCredential::AppRole {
            role_id: "role".into(),
            secret_id: "s3cret-value".into(),
        };
        let b = VaultCredential::AppRole {
            role_id: "role".into(),
            secret_id: "other".into(),
        };
        assert!(!format!("{a:?}").contains("s3cret"));
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().len(), 16);
        assert!(VaultCredential::Token { token: "".into() }
            .validate()
            .is_err());
    }

    #[test]
    fn the_policy_grants_the_one_key_only() {
        let p = policy("transit", "orders");
        assert!(p.contains("path \"transit/encrypt/orders\""));
        assert!(p.contains("path \"transit/rewrap/orders\""));
        assert!(!p.contains("keys/"));
        assert!(!p.contains('*'));
    }
}
