//! The local OIDC issuer's signing keys: P-256 key pairs (PKCS#8) in `oidc/` under the data
//! directory, owner-only and created atomically ([`crate::secret_file`]). `current.key` signs;
//! `previous.key`, kept one rotation, still verifies (the JWKS serves both), so a token signed
//! just before `cmk oidc rotate` stays valid for its five minutes.
//!
//! Rotation writes the new key as `next.key`, then renames `current.key` to `previous.key` and
//! `next.key` to `current.key`; opening finishes a rotation a crash interrupted. The files are
//! read on every use (two small files, one token per customer session), so a running server
//! signs with the new key as soon as `cmk oidc rotate` returns. ECDSA through `ring`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use cmk_core::error::{KeyError, KeyErrorKind};
use cmk_core::oidc::{key_id, PublicKey, TokenSigner};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

use crate::secret_file;

const DIR: &str = "oidc";
const CURRENT: &str = "current.key";
const PREVIOUS: &str = "previous.key";
const NEXT: &str = "next.key";

/// The shortest PKCS#8 document of a P-256 key pair.
const MIN_PKCS8_LEN: usize = 64;

/// The signing keys of one data directory.
#[derive(Debug)]
pub struct LocalOidcKeys {
    dir: PathBuf,
}

impl LocalOidcKeys {
    /// Opens `data_dir/oidc`, creating the first key on first use.
    pub fn open(data_dir: &Path) -> io::Result<Self> {
        let dir = data_dir.join(DIR);
        create_private_dir(&dir)?;
        let keys = Self { dir };
        keys.finish_rotation()?;
        if !keys.path(CURRENT).exists() {
            secret_file::create_private(&keys.path(CURRENT), &generate()?)?;
        }
        keys.load(CURRENT)?;
        Ok(keys)
    }

    /// Makes a new current key; the current one becomes the previous one (and the previous one
    /// is forgotten). Returns the new key's `kid`.
    pub fn rotate(&self) -> io::Result<String> {
        let next = self.path(NEXT);
        if next.exists() {
            fs::remove_file(&next)?; // a rotation that crashed before its renames
        }
        secret_file::create_private(&next, &generate()?)?;
        fs::rename(self.path(CURRENT), self.path(PREVIOUS))?;
        fs::rename(&next, self.path(CURRENT))?;
        secret_file::sync_dir(&self.dir)?;
        Ok(self.load(CURRENT)?.0.kid)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A crash between a rotation's two renames leaves `next.key` and no `current.key`.
    fn finish_rotation(&self) -> io::Result<()> {
        if !self.path(CURRENT).exists() && self.path(NEXT).exists() {
            fs::rename(self.path(NEXT), self.path(CURRENT))?;
        }
        Ok(())
    }

    fn load(&self, name: &str) -> io::Result<(PublicKey, EcdsaKeyPair)> {
        let path = self.path(name);
        let pkcs8 = secret_file::read_secret(&path, MIN_PKCS8_LEN, "OIDC signing key")?;
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &pkcs8,
            &SystemRandom::new(),
        )
        .map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the OIDC signing key {} is not a P-256 key pair ({e}): restore it, \
                             or run `cmk oidc rotate` after removing it",
                    path.display()
                ),
            )
        })?;
        let point = pair.public_key().as_ref().to_vec();
        let kid = key_id(&point);
        Ok((PublicKey { kid, point }, pair))
    }

    /// The current key pair, then the previous one if there is one.
    fn pairs(&self) -> io::Result<Vec<(PublicKey, EcdsaKeyPair)>> {
        let mut pairs = vec![self.load(CURRENT)?];
        if self.path(PREVIOUS).exists() {
            pairs.push(self.load(PREVIOUS)?);
        }
        Ok(pairs)
    }
}

fn generate() -> io::Result<Vec<u8>> {
    EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
        .map(|doc| doc.as_ref().to_vec())
        .map_err(|e| io::Error::other(format!("cannot generate an OIDC signing key: {e}")))
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

fn unavailable(e: io::Error) -> KeyError {
    KeyError::new(KeyErrorKind::Transient, e.to_string())
}

#[async_trait]
impl TokenSigner for LocalOidcKeys {
    async fn public_keys(&self) -> Result<Vec<PublicKey>, KeyError> {
        Ok(self
            .pairs()
            .map_err(unavailable)?
            .into_iter()
            .map(|(public, _)| public)
            .collect())
    }

    async fn sign(&self, kid: &str, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        // The current key signs nearly always: the previous one is read only when asked for.
        let mut found = None;
        for name in [CURRENT, PREVIOUS] {
            if name == PREVIOUS && !self.path(PREVIOUS).exists() {
                break;
            }
            let (public, pair) = self.load(name).map_err(unavailable)?;
            if public.kid == kid {
                found = Some(pair);
                break;
            }
        }
        let pair = found.ok_or_else(|| {
            KeyError::new(
                KeyErrorKind::KeyNotFound,
                format!("no OIDC signing key {kid}"),
            )
        })?;
        pair.sign(&SystemRandom::new(), message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|e| KeyError::new(KeyErrorKind::Transient, format!("signing failed: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_are_made_once_rotated_and_the_previous_one_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = LocalOidcKeys::open(dir.path()).expect("open");
        let first = keys.public_keys().await.expect("keys");
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].point.len(), 65);
        let again = LocalOidcKeys::open(dir.path()).expect("reopen");
        assert_eq!(again.public_keys().await.expect("keys"), first, "made once");

        let kid = keys.rotate().expect("rotate");
        let now = again.public_keys().await.expect("keys");
        assert_eq!(now.len(), 2, "current and previous");
        assert_eq!(now[0].kid, kid);
        assert_eq!(now[1], first[0], "the old key still verifies");
        assert_ne!(kid, first[0].kid);
        let signature = again.sign(&kid, b"input").await.expect("sign");
        assert_eq!(signature.len(), 64, "r || s");
        assert!(again.sign("nope", b"input").await.is_err());

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| fs::metadata(p).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode(&dir.path().join("oidc")), 0o700);
            assert_eq!(mode(&dir.path().join("oidc").join(CURRENT)), 0o600);
        }
    }

    #[test]
    fn an_interrupted_rotation_is_finished_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = LocalOidcKeys::open(dir.path()).expect("open");
        let oidc = dir.path().join("oidc");
        fs::rename(oidc.join(CURRENT), oidc.join(PREVIOUS)).expect("half a rotation");
        secret_file::create_private(&oidc.join(NEXT), &generate().expect("key")).expect("next");
        drop(keys);
        let keys = LocalOidcKeys::open(dir.path()).expect("reopen");
        assert_eq!(keys.pairs().expect("pairs").len(), 2);
        assert!(!oidc.join(NEXT).exists());
    }
}
