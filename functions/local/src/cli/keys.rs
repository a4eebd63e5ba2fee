//! `cmk keys list | add | default | set-rate | disable | disable-all | rewrap | check | setup`.

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Args, Subcommand, ValueEnum};
use cmk_http::dto::{
    AddKeyResponse, HealthStatusDto, JobDto, JobResponse, JobStateDto, KeyDto, KeyResponse,
    KeysResponse, RewrapResponse,
};
use serde_json::json;

use super::client::{print_json, typed, word, Client};
use super::reencryption::job_summary;
use super::table::{self, count};
use super::Remote;

#[derive(Args, Debug)]
pub struct KeysArgs {
    #[command(flatten)]
    remote: Remote,
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// List the org's keys, its default key and the current re-encryption.
    List,
    /// Add a key, checked first by a real round trip; the first one becomes the default.
    Add(Box<AddArgs>),
    /// Make a key (an id or a name) the default for new data keys.
    Default {
        /// Key id or name.
        key: String,
    },
    /// Set how many KMS requests per second a re-encryption may spend on an aws-kms key.
    SetRate {
        /// Key id or name.
        key: String,
        /// KMS requests per second, 1 to 10,000, summed over every worker.
        requests_per_second: u32,
    },
    /// Disable a key, re-encrypting its data keys with another active key.
    Disable {
        /// Key id or name.
        key: String,
        /// The active key (id or name) that takes over its data keys.
        #[arg(long)]
        reencrypt_to: String,
    },
    /// Disable every customer managed key: all data keys return to the service-managed key.
    DisableAll,
    /// After rotating a vault-transit key: re-wrap every data key with its latest version (a
    /// `rotate` job), so older versions can be retired (min_decryption_version).
    Rewrap {
        /// Key id or name.
        key: String,
    },
    /// Check a key's health by a real round trip (exits 1 when the key cannot be used).
    Check {
        /// Key id or name.
        key: String,
    },
    /// What the customer sets up for an aws-kms key (per trust mode), or with --cloudformation
    /// the setup kit: a CloudFormation template that creates it in the customer's account.
    Setup {
        /// Print the CloudFormation template (YAML) instead: `… > customer.yaml`.
        #[arg(long)]
        cloudformation: bool,
        /// The kit's trust mode (default: the one new keys get).
        #[arg(long, value_enum, requires = "cloudformation")]
        trust: Option<TrustArg>,
        /// The kit creates a new KMS key (else it takes your key's ARN as KeyArn).
        #[arg(long, requires = "cloudformation")]
        create_key: bool,
        /// The transit key the Vault policy names (default cmk).
        #[arg(long, conflicts_with = "cloudformation")]
        vault_key_name: Option<String>,
        /// The transit mount the Vault policy names (default transit).
        #[arg(long, conflicts_with = "cloudformation")]
        vault_mount: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum KeyTypeArg {
    #[value(name = "aws-kms")]
    AwsKms,
    Local,
    /// A derived key of a Vault or OpenBao transit engine.
    #[value(name = "vault-transit")]
    VaultTransit,
}

#[derive(Args, Debug)]
struct AddArgs {
    /// A unique name in the org.
    #[arg(long)]
    name: String,
    /// `aws-kms` (needs --role-arn and --key-arn) or `local` (local runs only). Default:
    /// aws-kms when an ARN is given, else local.
    #[arg(long = "type", value_enum)]
    key_type: Option<KeyTypeArg>,
    /// The IAM role the service assumes to use the key.
    #[arg(long)]
    role_arn: Option<String>,
    /// The KMS key ARN or alias ARN.
    #[arg(long)]
    key_arn: Option<String>,
    /// aws-kms and vault-transit: requests per second a re-encryption may spend on the key
    /// (default 250 for aws-kms, none for vault-transit).
    #[arg(long)]
    rewrap_rate_limit: Option<u32>,
    /// vault-transit: the server's URL (https, or http to a loopback address).
    #[arg(long, env = "VAULT_ADDR")]
    address: Option<String>,
    /// vault-transit: the transit engine's mount path (default transit).
    #[arg(long)]
    mount: Option<String>,
    /// vault-transit: the transit key's name (created with derived=true).
    #[arg(long)]
    key_name: Option<String>,
    /// vault-transit: the Vault Enterprise or OpenBao namespace.
    #[arg(long)]
    namespace: Option<String>,
    /// vault-transit: the AppRole's role id (with --secret-id-file).
    #[arg(long, conflicts_with = "token_file")]
    role_id: Option<String>,
    /// vault-transit: a file holding the AppRole's secret id (`-`: standard input). Secrets
    /// are never taken on the command line, where `ps` and shell history would keep them.
    #[arg(long, requires = "role_id")]
    secret_id_file: Option<std::path::PathBuf>,
    /// vault-transit: a file holding a token to use instead of an AppRole (`-`: standard input).
    #[arg(long)]
    token_file: Option<std::path::PathBuf>,
    /// aws-kms only: how the role trusts the service. Default: `oidc` where the service is an
    /// OIDC issuer (see `keys setup`), else `external_id`.
    #[arg(long, value_enum)]
    trust: Option<TrustArg>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum TrustArg {
    /// The service's OIDC issuer, through AssumeRoleWithWebIdentity.
    Oidc,
    /// The org's external id, through AssumeRole.
    #[value(name = "external_id")]
    ExternalId,
}

/// One line per key.
fn key_rows(keys: &[KeyDto]) -> Vec<Vec<String>> {
    keys.iter()
        .map(|k| {
            let mut health = word(&k.health.status);
            if let Some(m) = k
                .health
                .message
                .as_deref()
                .filter(|_| k.health.status != HealthStatusDto::Ok)
            {
                health = format!("{health}: {m}");
            }
            vec![
                k.id.clone(),
                k.name.clone(),
                word(&k.key_type),
                if k.default { "yes" } else { "-" }.into(),
                word(&k.state),
                health,
                count(k.data_keys),
            ]
        })
        .collect()
}

const KEY_HEADERS: [&str; 7] = [
    "ID",
    "NAME",
    "TYPE",
    "DEFAULT",
    "STATE",
    "HEALTH",
    "DATA KEYS",
];

fn print_keys(keys: &[KeyDto]) -> anyhow::Result<()> {
    out!("{}", table::render(&KEY_HEADERS, &key_rows(keys)));
    Ok(())
}

/// Prints a started or unfinished job in one line.
fn print_job_line(job: Option<&JobDto>) -> anyhow::Result<()> {
    if let Some(job) = job {
        out!("re-encryption: {}", job_summary(job));
        out!("  follow it with: cmk reencryption status --watch");
    }
    Ok(())
}

/// A secret from a file, or from standard input for `-`; trimmed.
fn read_secret(path: &std::path::Path) -> Result<String> {
    use anyhow::Context as _;
    let text = if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .context("cannot read the secret from standard input")?;
        s
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the secret in {}", path.display()))?
    };
    Ok(text.trim().to_owned())
}

/// The `POST keys` body of a vault-transit key.
fn vault_body(add: AddArgs) -> Result<serde_json::Value> {
    if add.trust.is_some() || add.role_arn.is_some() || add.key_arn.is_some() {
        bail!("--trust, --role-arn and --key-arn are for aws-kms keys");
    }
    let (Some(address), Some(key_name)) = (add.address, add.key_name) else {
        bail!("--type vault-transit needs --address (or VAULT_ADDR) and --key-name");
    };
    let auth = match (add.role_id, add.secret_id_file, add.token_file) {
        (Some(role_id), Some(file), None) => {
            json!({"method": "approle", "role_id": role_id, "secret_id": read_secret(&file)?})
        }
        (None, None, Some(file)) => json!({"method": "token", "token": read_secret(&file)?}),
        _ => bail!("--type vault-transit needs --role-id with --secret-id-file, or --token-file"),
    };
    let mut body = json!({
        "name": add.name, "type": "vault-transit", "address": address,
        "key_name": key_name, "auth": auth,
    });
    for (field, value) in [("mount", add.mount), ("namespace", add.namespace)] {
        if let Some(v) = value {
            body[field] = json!(v);
        }
    }
    if let Some(limit) = add.rewrap_rate_limit {
        body["rewrap_rate_limit"] = json!(limit);
    }
    Ok(body)
}

pub async fn keys(args: KeysArgs) -> Result<ExitCode> {
    let client = Client::new(&args.remote)?;
    let json = args.remote.json;
    match args.command {
        KeysCommand::Setup {
            cloudformation: true,
            trust,
            create_key,
            ..
        } => {
            let mut query = format!("?create_key={create_key}");
            match trust {
                Some(TrustArg::Oidc) => query.push_str("&trust=oidc"),
                Some(TrustArg::ExternalId) => query.push_str("&trust=external_id"),
                None => {}
            }
            let template = client
                .get_text(&format!("/keys/setup/cloudformation{query}"))
                .await?;
            out!("{}", template.trim_end());
        }
        KeysCommand::Setup {
            vault_key_name,
            vault_mount,
            ..
        } => {
            // (A throwaway base: only the encoded query is kept.)
            let mut url = reqwest::Url::parse("http://localhost/keys/setup")?;
            for (name, value) in [
                ("vault_key_name", vault_key_name),
                ("vault_mount", vault_mount),
            ] {
                if let Some(v) = value {
                    url.query_pairs_mut().append_pair(name, &v);
                }
            }
            let path = match url.query() {
                Some(q) => format!("/keys/setup?{q}"),
                None => "/keys/setup".to_owned(),
            };
            print_json(&client.get(&path).await?)?
        }
        KeysCommand::List => {
            let listing = client.get("/keys").await?;
            if json {
                print_json(&listing)?;
                return Ok(ExitCode::SUCCESS);
            }
            let listing: KeysResponse = typed(&listing)?;
            print_keys(&listing.keys)?;
            if let Some(job) = listing
                .reencryption
                .as_ref()
                .filter(|j| matches!(j.state, JobStateDto::Running | JobStateDto::Failed))
            {
                out!();
                print_job_line(Some(job))?;
            }
        }
        KeysCommand::Add(add) => {
            let key_type =
                add.key_type
                    .unwrap_or(if add.role_arn.is_some() || add.key_arn.is_some() {
                        KeyTypeArg::AwsKms
                    } else if add.key_name.is_some() {
                        KeyTypeArg::VaultTransit
                    } else {
                        KeyTypeArg::Local
                    });
            let body = match key_type {
                KeyTypeArg::AwsKms => {
                    let (Some(role_arn), Some(key_arn)) = (add.role_arn, add.key_arn) else {
                        bail!("--type aws-kms needs --role-arn and --key-arn");
                    };
                    let mut body = json!({"name": add.name, "type": "aws-kms", "role_arn": role_arn, "key_arn": key_arn});
                    if let Some(limit) = add.rewrap_rate_limit {
                        body["rewrap_rate_limit"] = json!(limit);
                    }
                    match add.trust {
                        Some(TrustArg::Oidc) => body["trust"] = json!("oidc"),
                        Some(TrustArg::ExternalId) => body["trust"] = json!("external_id"),
                        None => {}
                    }
                    body
                }
                KeyTypeArg::Local if add.trust.is_some() => {
                    bail!("--trust is for aws-kms keys; local keys are the service's own")
                }
                KeyTypeArg::Local
                    if add.key_name.is_some()
                        || add.role_id.is_some()
                        || add.token_file.is_some() =>
                {
                    bail!("--key-name, --role-id and --token-file are for vault-transit keys")
                }
                KeyTypeArg::Local if add.rewrap_rate_limit.is_some() => {
                    bail!("--rewrap-rate-limit is for aws-kms keys; local keys have no limit")
                }
                KeyTypeArg::Local => json!({"name": add.name, "type": "local"}),
                KeyTypeArg::VaultTransit => vault_body(*add)?,
            };
            let res = client.post("/keys", Some(body)).await?;
            if json {
                print_json(&res)?;
                return Ok(ExitCode::SUCCESS);
            }
            let res: AddKeyResponse = typed(&res)?;
            out!("added key {} ({})", res.key.name, res.key.id);
            print_keys(std::slice::from_ref(&res.key))?;
            print_job_line(res.reencryption.as_ref())?;
        }
        KeysCommand::Default { key } => {
            let id = client.resolve_key(&key).await?;
            let res = client.post(&format!("/keys/{id}/default"), None).await?;
            if json {
                print_json(&res)?;
                return Ok(ExitCode::SUCCESS);
            }
            let res: KeyResponse = typed(&res)?;
            out!("{} ({id}) is now the default key", res.key.name);
        }
        KeysCommand::SetRate {
            key,
            requests_per_second,
        } => {
            let id = client.resolve_key(&key).await?;
            let res = client
                .call(
                    reqwest::Method::PATCH,
                    &format!("/keys/{id}"),
                    Some(json!({"rewrap_rate_limit": requests_per_second})),
                )
                .await?;
            if json {
                print_json(&res)?;
                return Ok(ExitCode::SUCCESS);
            }
            let res: KeyResponse = typed(&res)?;
            match res.key.rewrap_rate_limit {
                Some(limit) => out!(
                    "{} ({id}) re-encrypts at most {limit} requests per second",
                    res.key.name
                ),
                None => out!("{} ({id}) has no re-encryption rate limit", res.key.name),
            }
        }
        KeysCommand::Disable { key, reencrypt_to } => {
            let id = client.resolve_key(&key).await?;
            let target = client.resolve_key(&reencrypt_to).await?;
            let res = client
                .post(
                    &format!("/keys/{id}/disable"),
                    Some(json!({"reencrypt_to": target})),
                )
                .await?;
            if json {
                print_json(&res)?;
                return Ok(ExitCode::SUCCESS);
            }
            let res: JobResponse = typed(&res)?;
            out!("disabling {id}: its data keys are re-encrypted with {target}");
            print_job_line(Some(&res.reencryption))?;
        }
        KeysCommand::Rewrap { key } => {
            let id = client.resolve_key(&key).await?;
            let res = client.post(&format!("/keys/{id}/rewrap"), None).await?;
            if json {
                print_json(&res)?;
                return Ok(ExitCode::SUCCESS);
            }
            let res: RewrapResponse = typed(&res)?;
            if let Some(why) = res.explanation {
                out!("{why}");
            }
            if let Some(job) = res.reencryption {
                out!("re-wrapping the data keys of {id} with its latest version");
                print_job_line(Some(&job))?;
            }
        }
        KeysCommand::DisableAll => {
            let res = client.post("/keys/disable-all", None).await?;
            if json {
                print_json(&res)?;
                return Ok(ExitCode::SUCCESS);
            }
            let res: JobResponse = typed(&res)?;
            out!(
                "disabling all customer managed keys: data keys return to the service-managed key"
            );
            print_job_line(Some(&res.reencryption))?;
        }
        KeysCommand::Check { key } => {
            let id = client.resolve_key(&key).await?;
            let res = client.post(&format!("/keys/{id}/check"), None).await?;
            let checked: KeyResponse = typed(&res)?;
            let healthy = checked.key.health.status == HealthStatusDto::Ok;
            if json {
                print_json(&res)?;
            } else {
                print_keys(std::slice::from_ref(&checked.key))?;
            }
            if !healthy {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
