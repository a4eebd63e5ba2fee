//! The local key provider: the service-managed key and `local` customer keys as files in the
//! data directory (owner-only), used with AES-256-GCM and the encryption context as
//! authenticated data. It can simulate a customer revoking access to a `local` key: a
//! `<key>.revoked` marker makes every use fail with `AccessDenied` until it is removed.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cmk_core::crypto::{context_bytes, Cipher, DataKey, KEY_LEN};
use cmk_core::error::{KeyError, KeyErrorKind};
use cmk_core::model::{EncryptionContext, KeyId, KeySpec, OrgId};
use cmk_core::ports::{Kek, KeyFailure, KeyProvider, RewrapItem, Wrapped};
use zeroize::Zeroizing;

const WRAP_VERSION: u8 = 1;
/// How long a key's revocation state is trusted on the data path before the marker file is
/// looked at again (like KMS, a revocation takes effect after a short delay; `check` is
/// always fresh).
const REVOCATION_RECHECK: Duration = Duration::from_millis(200);

struct Material {
    key: Zeroizing<[u8; KEY_LEN]>,
    revoked: bool,
    checked: Instant,
}

pub struct LocalKeyProvider {
    dir: PathBuf,
    service: Zeroizing<[u8; KEY_LEN]>,
    local: Mutex<HashMap<PathBuf, Material>>,
}

impl std::fmt::Debug for LocalKeyProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKeyProvider")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Writes a new key file (owner-only, atomically: see [`crate::secret_file`]). Fails with
/// `AlreadyExists` when the file is there already, whoever wrote it.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if crate::secret_file::create_private(path, bytes)? {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{} exists", path.display()),
        ))
    }
}

/// A key file's 32 bytes; a file of any other length is refused with its path (fail closed:
/// a truncated service key must stop the process, not be replaced).
fn read_key(path: &Path) -> std::io::Result<Zeroizing<[u8; KEY_LEN]>> {
    let bytes = Zeroizing::new(crate::secret_file::read_secret(path, KEY_LEN, "key file")?);
    if bytes.len() != KEY_LEN {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "the key file {} holds {} bytes, not the {KEY_LEN} of a key: refusing to use it",
                path.display(),
                bytes.len()
            ),
        ));
    }
    // Straight into zeroizing memory: no stack copy of the key is left behind.
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    key.copy_from_slice(&bytes);
    Ok(key)
}

fn safe_component(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl LocalKeyProvider {
    /// Opens the key directory, creating it and the service key on first use.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        fs::create_dir_all(dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        }
        let service_path = dir.join("service.key");
        if !service_path.exists() {
            let key = DataKey::generate();
            match write_private(&service_path, key.expose()) {
                Ok(()) => {}
                // Another process created it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
            service: read_key(&service_path)?,
            local: Mutex::new(HashMap::new()),
        })
    }

    fn local_path(&self, org: &OrgId, key: &KeyId) -> Result<PathBuf, KeyError> {
        if !safe_component(org.as_str()) || !safe_component(key.as_str()) {
            return Err(KeyError::new(
                KeyErrorKind::KeyNotFound,
                "invalid key reference",
            ));
        }
        Ok(self.dir.join(org.as_str()).join(format!("{key}.key")))
    }

    fn revoked_marker(path: &Path) -> PathBuf {
        path.with_extension("revoked")
    }

    /// Simulates the customer revoking (`true`) or restoring (`false`) access to a local key.
    pub fn set_revoked(&self, org: &OrgId, key: &KeyId, revoked: bool) -> std::io::Result<()> {
        let path = self
            .local_path(org, key)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.message))?;
        if !path.exists() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no local key {key} in org {org}"),
            ));
        }
        let marker = Self::revoked_marker(&path);
        if revoked {
            fs::write(&marker, b"access revoked by the customer\n")?;
        } else if marker.exists() {
            fs::remove_file(&marker)?;
        }
        if let Some(m) = self.lock().get_mut(&path) {
            m.revoked = revoked;
            m.checked = Instant::now();
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Material>> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The key bytes for `kek`, or the failure a customer's KMS would answer.
    fn material(&self, kek: &Kek) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyError> {
        match &kek.spec {
            KeySpec::ServiceManaged => Ok(self.service.clone()),
            KeySpec::AwsKms { .. } | KeySpec::VaultTransit(_) => Err(KeyError::new(
                KeyErrorKind::Unsupported,
                format!(
                    "{} keys need another key provider",
                    kek.spec.key_type().as_str()
                ),
            )),
            KeySpec::Local => {
                let path = self.local_path(&kek.org, &kek.key_id)?;
                let mut cache = self.lock();
                let now = Instant::now();
                if let Some(m) = cache.get_mut(&path) {
                    if now.duration_since(m.checked) >= REVOCATION_RECHECK {
                        m.revoked = Self::revoked_marker(&path).exists();
                        m.checked = now;
                    }
                    return if m.revoked {
                        Err(revoked(&kek.key_id))
                    } else {
                        Ok(m.key.clone())
                    };
                }
                let key = read_key(&path).map_err(|e| {
                    KeyError::new(
                        KeyErrorKind::KeyNotFound,
                        format!("local key {} cannot be read: {e}", kek.key_id),
                    )
                })?;
                let revoked_now = Self::revoked_marker(&path).exists();
                cache.insert(
                    path,
                    Material {
                        key: key.clone(),
                        revoked: revoked_now,
                        checked: now,
                    },
                );
                if revoked_now {
                    Err(revoked(&kek.key_id))
                } else {
                    Ok(key)
                }
            }
        }
    }
}

fn revoked(key: &KeyId) -> KeyError {
    KeyError::new(
        KeyErrorKind::AccessDenied,
        format!("access to local key {key} was revoked by the customer"),
    )
}

fn aad(kek: &Kek, ctx: &EncryptionContext) -> Vec<u8> {
    let mut aad = Vec::new();
    aad_into(&mut aad, kek, ctx);
    aad
}

/// Writes the authenticated data of a wrap by `kek` under `ctx` into `out` (cleared first).
fn aad_into(out: &mut Vec<u8>, kek: &Kek, ctx: &EncryptionContext) {
    out.clear();
    out.extend_from_slice(b"cmk-local-wrap-v1");
    out.extend_from_slice(kek.key_id.as_str().as_bytes());
    out.push(0);
    context_bytes(ctx, out);
}

fn not_wrapped_by(kek: &Kek) -> KeyError {
    KeyError::new(
        KeyErrorKind::InvalidCiphertext,
        format!(
            "the data key is not wrapped by key {} under this context",
            kek.key_id
        ),
    )
}

fn is_local(kek: &Kek) -> bool {
    matches!(kek.spec, KeySpec::ServiceManaged | KeySpec::Local)
}

/// The data key in a wrapped blob (`[version][nonce][ciphertext and tag]`), if `cipher` and
/// `aad` open it.
fn open_wrapped(cipher: &Cipher, aad: &[u8], wrapped: &[u8]) -> Option<DataKey> {
    let (&version, sealed) = wrapped.split_first()?;
    if version != WRAP_VERSION {
        return None;
    }
    DataKey::from_slice(&cipher.open(aad, sealed)?)
}

#[async_trait]
impl KeyProvider for LocalKeyProvider {
    async fn prepare(&self, kek: &Kek) -> Result<(), KeyError> {
        if kek.spec != KeySpec::Local {
            return Ok(());
        }
        let path = self.local_path(&kek.org, &kek.key_id)?;
        let io = |e: std::io::Error| {
            KeyError::new(
                KeyErrorKind::Transient,
                format!("cannot create local key: {e}"),
            )
        };
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io)?;
        }
        match write_private(&path, DataKey::generate().expose()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(io(e)),
        }
    }

    async fn discard(&self, kek: &Kek) {
        if kek.spec != KeySpec::Local {
            return;
        }
        if let Ok(path) = self.local_path(&kek.org, &kek.key_id) {
            self.lock().remove(&path);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(error = %e, key = %kek.key_id, "could not remove an unused local key");
                }
            }
        }
    }

    async fn wrap(
        &self,
        kek: &Kek,
        ctx: &EncryptionContext,
        plaintext: &DataKey,
    ) -> Result<Wrapped, KeyError> {
        let key = self.material(kek)?;
        let mut blob = vec![WRAP_VERSION];
        blob.extend(Cipher::new(&key).seal(&aad(kek, ctx), plaintext.expose()));
        Ok(Wrapped {
            blob,
            resolved_key: None,
        })
    }

    async fn unwrap(
        &self,
        kek: &Kek,
        ctx: &EncryptionContext,
        wrapped: &[u8],
    ) -> Result<DataKey, KeyError> {
        let key = self.material(kek)?;
        open_wrapped(&Cipher::new(&key), &aad(kek, ctx), wrapped).ok_or_else(|| not_wrapped_by(kek))
    }

    fn rewraps_locally(&self, from: &Kek, to: &Kek) -> bool {
        is_local(from) && is_local(to)
    }

    /// Each key's material is looked up and its cipher made once for the whole page; a key
    /// that cannot be used (revoked, missing) fails every item at once.
    fn rewrap_locally(
        &self,
        from: &Kek,
        to: &Kek,
        items: &[RewrapItem],
    ) -> Vec<Result<Wrapped, KeyFailure>> {
        let fail_all = |kek: &Kek, error: KeyError| {
            let failure = KeyFailure {
                key_id: kek.key_id.clone(),
                error,
            };
            items.iter().map(|_| Err(failure.clone())).collect()
        };
        let opener = match self.material(from) {
            Ok(key) => Cipher::new(&key),
            Err(e) => return fail_all(from, e),
        };
        let sealer = match self.material(to) {
            Ok(key) => Cipher::new(&key),
            Err(e) => return fail_all(to, e),
        };
        let mut aad = Vec::with_capacity(128);
        items
            .iter()
            .map(|item| {
                aad_into(&mut aad, from, &item.ctx);
                let plain =
                    open_wrapped(&opener, &aad, &item.wrapped).ok_or_else(|| KeyFailure {
                        key_id: from.key_id.clone(),
                        error: not_wrapped_by(from),
                    })?;
                aad_into(&mut aad, to, &item.ctx);
                let mut blob = Vec::with_capacity(1 + 12 + KEY_LEN + 16);
                blob.push(WRAP_VERSION);
                blob.extend(sealer.seal(&aad, plain.expose()));
                Ok(Wrapped {
                    blob,
                    resolved_key: None,
                })
            })
            .collect()
    }

    async fn check(&self, kek: &Kek) -> Result<Option<String>, KeyError> {
        // An admin's explicit check is authoritative: it looks at the key file and the
        // revocation marker now instead of trusting the cached state.
        if kek.spec == KeySpec::Local {
            let path = self.local_path(&kek.org, &kek.key_id)?;
            self.lock().remove(&path);
        }
        let mut ctx = EncryptionContext::new();
        ctx.insert("org".into(), kek.org.to_string());
        ctx.insert("purpose".into(), "key-check".into());
        let probe = DataKey::generate();
        let wrapped = self.wrap(kek, &ctx, &probe).await?;
        let back = self.unwrap(kek, &ctx, &wrapped.blob).await?;
        if back.expose() != probe.expose() {
            return Err(KeyError::new(
                KeyErrorKind::InvalidCiphertext,
                "round trip mismatch",
            ));
        }
        Ok(None)
    }
}
