//! The OIDC issuer's signer on AWS: asymmetric KMS keys (`ECC_NIST_P256`, `SIGN_VERIFY`). The
//! private key never leaves KMS: tokens are signed with `kms:Sign`, and the JWKS is built from
//! `kms:GetPublicKey`, read once per key and process (a key's public half never changes).
//!
//! The keys are given current first (`CMK_OIDC_SIGNING_KEYS`, comma-separated ids or ARNs);
//! a second one is the previous key, still published so that tokens it signed stay valid. To
//! rotate: create a new key, list it first and the old one second, deploy, and drop the old
//! one from the list (and schedule its deletion) at the next rotation.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{MessageType, SigningAlgorithmSpec};
use aws_sdk_kms::Client;
use cmk_core::error::{KeyError, KeyErrorKind};
use cmk_core::oidc::{key_id, PublicKey, TokenSigner};

use crate::describe;

/// Length of the DER `SubjectPublicKeyInfo` of a P-256 key; its last 65 bytes are the point.
const P256_SPKI_LEN: usize = 91;

#[derive(Debug)]
pub struct KmsTokenSigner {
    kms: Client,
    /// Current first.
    key_ids: Vec<String>,
    /// Public keys by KMS key id, read once.
    public: Mutex<HashMap<String, PublicKey>>,
}

impl KmsTokenSigner {
    pub fn new(kms: Client, key_ids: Vec<String>) -> Self {
        Self {
            kms,
            key_ids,
            public: Mutex::new(HashMap::new()),
        }
    }

    async fn public_key(&self, key_id_or_arn: &str) -> Result<PublicKey, KeyError> {
        if let Some(k) = lock(&self.public).get(key_id_or_arn) {
            return Ok(k.clone());
        }
        let out = self
            .kms
            .get_public_key()
            .key_id(key_id_or_arn)
            .send()
            .await
            .map_err(|e| {
                KeyError::new(
                    KeyErrorKind::Transient,
                    format!(
                        "reading the OIDC signing key {key_id_or_arn}: {}",
                        describe(&e)
                    ),
                )
            })?;
        let spki = out.public_key().map(Blob::as_ref).unwrap_or_default();
        if spki.len() != P256_SPKI_LEN {
            return Err(KeyError::new(
                KeyErrorKind::Unsupported,
                format!("the OIDC signing key {key_id_or_arn} is not an ECC_NIST_P256 key"),
            ));
        }
        let point = spki[P256_SPKI_LEN - 65..].to_vec();
        let public = PublicKey {
            kid: key_id(&point),
            point,
        };
        lock(&self.public).insert(key_id_or_arn.to_owned(), public.clone());
        Ok(public)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An ECDSA signature as KMS returns it (DER: `SEQUENCE { INTEGER r, INTEGER s }`) as JWS
/// wants it: `r || s`, each 32 bytes big-endian.
pub fn der_to_jose(der: &[u8]) -> Option<[u8; 64]> {
    fn integer(input: &[u8]) -> Option<(&[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&len, rest) = rest.split_first()?;
        let len = usize::from(len);
        if tag != 0x02 || len > 33 || rest.len() < len {
            return None;
        }
        let (value, rest) = rest.split_at(len);
        // A leading zero only keeps the integer positive.
        let value = match value {
            [0, tail @ ..] if value.len() == 33 => tail,
            _ => value,
        };
        (value.len() <= 32).then_some((value, rest))
    }
    let (&tag, rest) = der.split_first()?;
    let (&len, body) = rest.split_first()?;
    if tag != 0x30 || usize::from(len) != body.len() {
        return None;
    }
    let (r, rest) = integer(body)?;
    let (s, rest) = integer(rest)?;
    if !rest.is_empty() {
        return None;
    }
    let mut out = [0u8; 64];
    out[32 - r.len()..32].copy_from_slice(r);
    out[64 - s.len()..].copy_from_slice(s);
    Some(out)
}

#[async_trait]
impl TokenSigner for KmsTokenSigner {
    async fn public_keys(&self) -> Result<Vec<PublicKey>, KeyError> {
        let mut keys = Vec::with_capacity(self.key_ids.len());
        for id in &self.key_ids {
            keys.push(self.public_key(id).await?);
        }
        Ok(keys)
    }

    async fn sign(&self, kid: &str, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut key = None;
        for id in &self.key_ids {
            if self.public_key(id).await?.kid == kid {
                key = Some(id);
                break;
            }
        }
        let key = key.ok_or_else(|| {
            KeyError::new(
                KeyErrorKind::KeyNotFound,
                format!("no OIDC signing key {kid}"),
            )
        })?;
        let out = self
            .kms
            .sign()
            .key_id(key)
            .message(Blob::new(message))
            .message_type(MessageType::Raw)
            .signing_algorithm(SigningAlgorithmSpec::EcdsaSha256)
            .send()
            .await
            .map_err(|e| {
                KeyError::new(
                    KeyErrorKind::Transient,
                    format!("signing with the OIDC key {key}: {}", describe(&e)),
                )
            })?;
        let der = out.signature().map(Blob::as_ref).unwrap_or_default();
        der_to_jose(der).map(|s| s.to_vec()).ok_or_else(|| {
            KeyError::new(
                KeyErrorKind::Transient,
                "KMS returned an unreadable signature",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::der_to_jose;

    #[test]
    fn der_signatures_become_fixed_width_r_and_s() {
        // r with a leading zero (its high bit set), s shorter than 32 bytes.
        let mut der = vec![0x30, 0];
        der.extend([0x02, 33, 0x00]);
        der.extend([0x80; 32]);
        der.extend([0x02, 31]);
        der.extend([0x11; 31]);
        der[1] = (der.len() - 2) as u8;
        let jose = der_to_jose(&der).expect("a signature");
        assert_eq!(&jose[..32], &[0x80; 32]);
        assert_eq!(jose[32], 0, "s is left-padded");
        assert_eq!(&jose[33..], &[0x11; 31]);

        assert!(der_to_jose(&[0x30, 0]).is_none());
        assert!(der_to_jose(&der[..der.len() - 1]).is_none(), "truncated");
    }
}
