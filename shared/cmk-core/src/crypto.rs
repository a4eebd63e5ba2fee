//! Envelope encryption: AES-256-GCM under data keys, with versioned self-describing ciphertexts.
//!
//! A ciphertext is `cmk1.` followed by base64url (no padding) of:
//! `[version = 1][id length: u8][data key id][nonce: 12][AES-GCM ciphertext and tag]`.
//! Its authenticated data binds the version, the org, the data key id and the caller's context,
//! so a ciphertext moved to another org, data key or context fails to decrypt. Re-encryption
//! rewraps data keys only: it never touches a ciphertext.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use zeroize::Zeroizing;

use crate::error::CoreError;
use crate::model::{DataKeyId, EncryptionContext, OrgId};

/// Length of a data key and of every AES-256 key.
pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const PREFIX: &str = "cmk1.";
const VERSION: u8 = 1;

/// A plaintext AES-256 key. Zeroized on drop; never printed.
#[derive(Clone)]
pub struct DataKey(Zeroizing<[u8; KEY_LEN]>);

/// Its bytes live in [`Zeroizing`] memory, wiped when dropped.
impl zeroize::ZeroizeOnDrop for DataKey {}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

impl DataKey {
    pub fn generate() -> Self {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        rand::thread_rng().fill_bytes(k.as_mut());
        Self(k)
    }

    /// Copies a key straight into zeroizing memory (no stack copy is left behind).
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != KEY_LEN {
            return None;
        }
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        k.copy_from_slice(bytes);
        Some(Self(k))
    }

    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

/// Canonical bytes of a context: length-prefixed pairs in key order (a BTreeMap is sorted).
pub fn context_bytes(ctx: &EncryptionContext, out: &mut Vec<u8>) {
    for (k, v) in ctx {
        push_len_prefixed(out, k.as_bytes());
        push_len_prefixed(out, v.as_bytes());
    }
}

fn push_len_prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// An AES-256-GCM key made ready once (its key schedule computed) for many seals and opens:
/// a page of a re-encryption uses one per key instead of one per data key.
pub struct Cipher(Aes256Gcm);

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher(<redacted>)")
    }
}

impl Cipher {
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        Self(Aes256Gcm::new(key.into()))
    }

    /// Seals with a random nonce: returns `nonce || ciphertext || tag`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let ct = self
            .0
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .unwrap_or_default(); // encryption fails only for plaintexts over 64 GiB
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Opens what [`Cipher::seal`] made. `None` when the key, the data or the aad does not match.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if sealed.len() < NONCE_LEN + 16 {
            return None;
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        self.0
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
            .ok()
            .map(Zeroizing::new)
    }
}

/// AES-256-GCM with a random nonce: returns `nonce || ciphertext || tag`.
pub fn seal(key: &[u8; KEY_LEN], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    Cipher::new(key).seal(aad, plaintext)
}

/// Opens what [`seal`] made. `None` when the key, the data or the aad does not match.
pub fn open(key: &[u8; KEY_LEN], aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    Cipher::new(key).open(aad, sealed)
}

fn data_aad(org: &OrgId, data_key: &DataKeyId, ctx: &EncryptionContext) -> Vec<u8> {
    let mut aad = Vec::with_capacity(64);
    aad.extend_from_slice(PREFIX.as_bytes());
    push_len_prefixed(&mut aad, org.as_str().as_bytes());
    push_len_prefixed(&mut aad, data_key.as_str().as_bytes());
    context_bytes(ctx, &mut aad);
    aad
}

/// Encrypts data under a data key.
pub fn encrypt(
    org: &OrgId,
    data_key_id: &DataKeyId,
    key: &DataKey,
    ctx: &EncryptionContext,
    plaintext: &[u8],
) -> String {
    let sealed = seal(key.expose(), &data_aad(org, data_key_id, ctx), plaintext);
    let id = data_key_id.as_str().as_bytes();
    let mut raw = Vec::with_capacity(2 + id.len() + sealed.len());
    raw.push(VERSION);
    raw.push(id.len() as u8); // ids are at most 64 bytes
    raw.extend_from_slice(id);
    raw.extend_from_slice(&sealed);
    format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(raw))
}

/// A ciphertext split into its parts.
#[derive(Debug)]
pub struct ParsedCiphertext {
    pub data_key_id: DataKeyId,
    sealed: Vec<u8>,
}

/// Reads the header of a ciphertext without decrypting it.
pub fn parse(ciphertext: &str) -> Result<ParsedCiphertext, CoreError> {
    let bad = |why: &str| CoreError::InvalidRequest(format!("ciphertext is malformed: {why}"));
    let body = ciphertext
        .strip_prefix(PREFIX)
        .ok_or_else(|| bad("it does not start with cmk1."))?;
    let raw = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| bad("not base64url"))?;
    let (&version, rest) = raw.split_first().ok_or_else(|| bad("empty"))?;
    if version != VERSION {
        return Err(bad("unknown version"));
    }
    let (&len, rest) = rest.split_first().ok_or_else(|| bad("truncated"))?;
    let len = len as usize;
    if rest.len() < len + NONCE_LEN + 16 {
        return Err(bad("truncated"));
    }
    let id = std::str::from_utf8(&rest[..len]).map_err(|_| bad("bad data key id"))?;
    let data_key_id = DataKeyId::parse(id).map_err(|_| bad("bad data key id"))?;
    Ok(ParsedCiphertext {
        data_key_id,
        sealed: rest[len..].to_vec(),
    })
}

/// Decrypts a parsed ciphertext with its data key.
pub fn decrypt(
    org: &OrgId,
    parsed: &ParsedCiphertext,
    key: &DataKey,
    ctx: &EncryptionContext,
) -> Result<Zeroizing<Vec<u8>>, CoreError> {
    open(
        key.expose(),
        &data_aad(org, &parsed.data_key_id, ctx),
        &parsed.sealed,
    )
    .ok_or_else(|| {
        CoreError::DecryptFailed(
            "authentication failed: wrong context, or the ciphertext was altered".into(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org(s: &str) -> OrgId {
        OrgId::from_trusted(s)
    }

    /// Compiles only while key material is wiped on drop: data keys, the AES key schedules
    /// the ciphers build from them, and opened plaintexts.
    #[test]
    fn key_material_is_zeroized_on_drop() {
        fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        wiped_on_drop::<DataKey>();
        wiped_on_drop::<aes::Aes256>();
        wiped_on_drop::<Zeroizing<Vec<u8>>>();
        let key = DataKey::generate();
        let sealed = seal(key.expose(), b"aad", b"plain");
        let opened: Option<Zeroizing<Vec<u8>>> = open(key.expose(), b"aad", &sealed);
        assert_eq!(opened.as_deref().map(Vec::as_slice), Some(&b"plain"[..]));
        assert!(DataKey::from_slice(&[1; KEY_LEN - 1]).is_none());
        assert_eq!(
            DataKey::from_slice(key.expose()).map(|k| *k.expose()),
            Some(*key.expose())
        );
    }

    #[test]
    fn round_trip_and_binding() {
        let id = DataKeyId::generate();
        let key = DataKey::generate();
        let mut ctx = EncryptionContext::new();
        ctx.insert("env".into(), "prod".into());
        let ct = encrypt(&org("acme"), &id, &key, &ctx, b"hello");
        let parsed = parse(&ct).expect("parse");
        assert_eq!(parsed.data_key_id, id);
        let pt = decrypt(&org("acme"), &parsed, &key, &ctx).expect("decrypt");
        assert_eq!(pt.as_slice(), b"hello");
        assert!(decrypt(&org("other"), &parsed, &key, &ctx).is_err());
        assert!(decrypt(&org("acme"), &parsed, &key, &EncryptionContext::new()).is_err());
        assert!(decrypt(&org("acme"), &parsed, &DataKey::generate(), &ctx).is_err());
    }

    #[test]
    fn malformed_ciphertexts_are_invalid_requests() {
        for bad in ["", "cmk1.", "cmk1.!!!", "cmk2.AAAA", "cmk1.AQ"] {
            assert!(
                matches!(parse(bad), Err(CoreError::InvalidRequest(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn data_key_debug_is_redacted() {
        assert_eq!(format!("{:?}", DataKey::generate()), "DataKey(<redacted>)");
    }
}
