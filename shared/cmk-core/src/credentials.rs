//! Secrets the service keeps for a customer key (a Vault AppRole secret id or token), sealed
//! under the org's service-managed key: a fresh data key encrypts the secret (AES-256-GCM), and
//! the service-managed key wraps that data key through the key provider with a context naming
//! the org, the customer key and the purpose. A sealed secret copied onto another key record or
//! org does not open. Stores and backups hold only the sealed form.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::{self, DataKey};
use crate::error::{KeyError, KeyErrorKind};
use crate::model::{EncryptionContext, KeyId, KeySpec, OrgId};
use crate::ports::{Kek, KeyProvider};

/// A secret sealed by [`seal`]; both parts are ciphertext.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedSecret {
    /// The data key, wrapped by the service-managed key.
    #[serde(with = "b64")]
    pub wrapped_key: Vec<u8>,
    /// `nonce || ciphertext || tag` of the secret under the data key.
    #[serde(with = "b64")]
    pub ciphertext: Vec<u8>,
}

impl std::fmt::Debug for SealedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealedSecret({} bytes)", self.ciphertext.len())
    }
}

const PURPOSE: &str = "key-credential";

fn context(org: &OrgId, key: &KeyId) -> EncryptionContext {
    let mut ctx = EncryptionContext::new();
    ctx.insert("org".to_owned(), org.to_string());
    ctx.insert("key_id".to_owned(), key.to_string());
    ctx.insert("purpose".to_owned(), PURPOSE.to_owned());
    ctx
}

fn aad(ctx: &EncryptionContext) -> Vec<u8> {
    let mut out = b"cmk-credential-v1".to_vec();
    crypto::context_bytes(ctx, &mut out);
    out
}

fn service_kek(org: &OrgId) -> Kek {
    Kek {
        org: org.clone(),
        key_id: KeyId::service(),
        spec: KeySpec::ServiceManaged,
        external_id: None,
    }
}

/// Seals `secret` for customer key `key` of `org`.
pub async fn seal(
    keys: &dyn KeyProvider,
    org: &OrgId,
    key: &KeyId,
    secret: &[u8],
) -> Result<SealedSecret, KeyError> {
    let ctx = context(org, key);
    let data_key = DataKey::generate();
    let wrapped = keys.wrap(&service_kek(org), &ctx, &data_key).await?;
    Ok(SealedSecret {
        wrapped_key: wrapped.blob,
        ciphertext: crypto::seal(data_key.expose(), &aad(&ctx), secret),
    })
}

/// Opens what [`seal`] made for the same org and key.
pub async fn open(
    keys: &dyn KeyProvider,
    org: &OrgId,
    key: &KeyId,
    sealed: &SealedSecret,
) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let ctx = context(org, key);
    let data_key = keys
        .unwrap(&service_kek(org), &ctx, &sealed.wrapped_key)
        .await?;
    crypto::open(data_key.expose(), &aad(&ctx), &sealed.ciphertext).ok_or_else(|| {
        KeyError::new(
            KeyErrorKind::InvalidCiphertext,
            format!("the stored credential of key {key} does not open"),
        )
    })
}

mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}
