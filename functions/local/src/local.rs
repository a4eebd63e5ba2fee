//! The data directory, the token secret, and the small local commands.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use cmk_core::cache::DataKeyCache;
use cmk_core::model::{KeyId, KeyType, OrgId, Role};
use cmk_core::providers::ProviderRouter;
use cmk_core::service::ServiceConfig;
use cmk_core::Cmk;
use cmk_embedded::{secret_file, LocalKeyProvider, LocalOidcKeys, QueueConfig, SqliteStore};
use cmk_vault::{VaultSettings, VaultTransitProvider};
use rand::RngCore;

const SECRET_FILE: &str = "token.secret";

/// The embedded backends of a data directory, wired into the use cases.
pub struct Backends {
    pub cmk: Cmk,
    pub store: Arc<SqliteStore>,
    pub keys: Arc<LocalKeyProvider>,
    pub vault: Arc<VaultTransitProvider>,
}

/// Opens (creating on first use) the data directory's database and keys.
pub fn open_backends(
    data_dir: &Path,
    queue: QueueConfig,
    cache: DataKeyCache,
    config: ServiceConfig,
) -> Result<Backends> {
    let (store, queue, keys) = cmk_embedded::open(data_dir, queue)
        .with_context(|| format!("cannot open the data directory {}", data_dir.display()))?;
    let (store, queue, keys) = (Arc::new(store), Arc::new(queue), Arc::new(keys));
    // `vault-transit` keys go to the transit provider, which opens their sealed credentials
    // with the local service-managed key; every other key stays with the local provider.
    let vault = Arc::new(
        VaultTransitProvider::new(
            keys.clone(),
            // A local run's Vault is on this machine or its network.
            VaultSettings {
                allow_private_addresses: true,
                ..VaultSettings::default()
            },
        )
        .map_err(anyhow::Error::msg)?,
    );
    let router = ProviderRouter::new(keys.clone()).route(KeyType::VaultTransit, vault.clone());
    let cmk = Cmk::new(
        store.clone(),
        queue.clone(),
        Arc::new(router),
        cache,
        config,
    );
    Ok(Backends {
        cmk,
        store,
        keys,
        vault,
    })
}

/// Hex digits of the token secret: 32 random bytes.
const SECRET_HEX_LEN: usize = 2 * cmk_http::auth::MIN_SECRET_LEN;

/// The HS256 secret that signs local tokens, created on first use (owner-only, atomically, so
/// processes starting together on a new data directory all use the same complete secret).
/// Fails closed: a secret file shorter than 32 bytes of secret (64 hex digits) stops the
/// command with an error naming the file, since a short key would let anyone mint tokens.
pub fn token_secret(data_dir: &Path) -> Result<Vec<u8>> {
    hex_secret(
        data_dir,
        SECRET_FILE,
        "token secret",
        "which invalidates every token",
    )
}

/// The key that signs webhook deliveries (`webhook.secret`), made and checked as the token
/// secret is; the receiver reads the same file.
pub fn webhook_secret(data_dir: &Path) -> Result<Vec<u8>> {
    hex_secret(
        data_dir,
        WEBHOOK_SECRET_FILE,
        "webhook secret",
        "which the webhook's receiver must then read again",
    )
}

pub const WEBHOOK_SECRET_FILE: &str = "webhook.secret";

/// A secret of 32 random bytes as 64 hex digits in `data_dir/file`, created on first use;
/// the text is the secret. `replacing` says what removing the file costs.
fn hex_secret(data_dir: &Path, file: &str, what: &str, replacing: &str) -> Result<Vec<u8>> {
    fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let path: PathBuf = data_dir.join(file);
    if !path.exists() {
        let mut secret = zeroize::Zeroizing::new([0u8; 32]);
        rand::thread_rng().fill_bytes(&mut secret[..]);
        let hex: zeroize::Zeroizing<String> =
            zeroize::Zeroizing::new(secret.iter().map(|b| format!("{b:02x}")).collect());
        secret_file::create_private(&path, hex.as_bytes())
            .with_context(|| format!("cannot create the {what} {}", path.display()))?;
    }
    let bytes = secret_file::read_secret(&path, SECRET_HEX_LEN, what)?;
    let text = String::from_utf8_lossy(&bytes);
    let trimmed = text.trim();
    if trimmed.len() < SECRET_HEX_LEN || !trimmed.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!(
            "the {what} {} must hold at least {SECRET_HEX_LEN} hex digits (32 bytes of secret); \
             refusing to start (remove it to create a new one, {replacing})",
            path.display()
        );
    }
    Ok(trimmed.as_bytes().to_vec())
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RoleArg {
    Admin,
    Member,
    Service,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Admin => Role::Admin,
            RoleArg::Member => Role::Member,
            RoleArg::Service => Role::Service,
        }
    }
}

#[derive(Args, Debug)]
pub struct TokenArgs {
    #[arg(long)]
    org: String,
    #[arg(long, value_enum, default_value = "admin")]
    role: RoleArg,
    /// The subject (who the token names in audit events).
    #[arg(long, default_value = "local-admin")]
    sub: String,
    /// Lifetime in hours.
    #[arg(long, default_value_t = 12)]
    ttl_hours: u64,
}

pub fn token(data_dir: &Path, args: TokenArgs) -> Result<ExitCode> {
    let org = OrgId::parse(&args.org).map_err(|e| anyhow::anyhow!("--org: {e}"))?;
    let secret = token_secret(data_dir)?;
    out!(
        "{}",
        cmk_http::auth::issue_token(
            &secret,
            &args.sub,
            org.as_str(),
            args.role.into(),
            Duration::from_secs(args.ttl_hours * 3600),
        )
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand, Debug)]
pub enum LocalKeyCommand {
    /// Make every use of the key fail with access denied, as if the customer revoked it.
    Revoke(LocalKeyArgs),
    /// Give access back.
    Restore(LocalKeyArgs),
}

#[derive(Args, Debug)]
pub struct LocalKeyArgs {
    #[arg(long)]
    org: String,
    /// The key id (as listed by the API).
    #[arg(long)]
    key: String,
}

#[derive(Subcommand, Debug)]
pub enum OidcCommand {
    /// Make a new signing key; the current one is kept as the previous one (still in the
    /// JWKS, so tokens it signed stay valid), and the one before is forgotten. A running
    /// `cmk serve` signs with the new key at once.
    Rotate,
}

pub fn oidc(data_dir: &Path, cmd: OidcCommand) -> Result<ExitCode> {
    match cmd {
        OidcCommand::Rotate => {
            let keys = LocalOidcKeys::open(data_dir)
                .with_context(|| format!("cannot open the OIDC keys in {}", data_dir.display()))?;
            let kid = keys
                .rotate()
                .context("cannot rotate the OIDC signing key")?;
            out!("the OIDC issuer now signs with key {kid}; the previous key stays in the JWKS");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn local_key(data_dir: &Path, cmd: LocalKeyCommand) -> Result<ExitCode> {
    let (args, revoke) = match cmd {
        LocalKeyCommand::Revoke(a) => (a, true),
        LocalKeyCommand::Restore(a) => (a, false),
    };
    let org = OrgId::parse(&args.org).map_err(|e| anyhow::anyhow!("--org: {e}"))?;
    let key = KeyId::parse(&args.key).map_err(|e| anyhow::anyhow!("--key: {e}"))?;
    if key.is_service() {
        bail!("the service-managed key cannot be revoked");
    }
    let provider = LocalKeyProvider::open(&data_dir.join("keys"))?;
    provider
        .set_revoked(&org, &key, revoke)
        .with_context(|| format!("cannot change access to key {key}"))?;
    out!(
        "access to local key {key} of org {org} {}",
        if revoke { "revoked" } else { "restored" }
    );
    Ok(ExitCode::SUCCESS)
}
