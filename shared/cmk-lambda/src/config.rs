//! The functions' configuration: every environment variable is read and parsed into typed values
//! before the Lambda runtime starts, so a bad deployment fails at init with a message that names
//! the variable, never on a request.
//!
//! | variable | used by | default | what |
//! | --- | --- | --- | --- |
//! | `CMK_TABLE`, `CMK_QUEUE_URL`, `CMK_SERVICE_KEY_ID`, `CMK_SERVICE_PRINCIPAL`, `CMK_DATA_KEY_CACHE_TTL`, `CMK_DATA_KEY_CACHE_SIZE`, `AWS_ENDPOINT_URL` | all | see [`AwsSettings::from_env`] | the AWS backend |
//! | `CMK_SERVICE_ACCOUNT_ID` | all | the account of `CMK_SERVICE_KEY_ID` (required when that is not an ARN) | the service's own account: customer roles in it are refused |
//! | `CMK_ALLOW_SAME_ACCOUNT_ROLES` | keys-write | `false` | allow customer roles in the service's own account (single-account test setups only) |
//! | `CMK_ORG_CLAIM` | HTTP functions | `org` | the JWT claim that names the caller's org |
//! | `CMK_ROLE_CLAIM` | HTTP functions | `role` | the JWT claim that carries `admin`, `member` or `service` |
//! | `CMK_BATCH_SIZE` | worker | `500` | data keys per planned batch message |
//! | `CMK_WORKER_CONCURRENCY` | worker | `10` | SQS messages of one invocation handled at once |
//! | `CMK_WORKER_MAX_CONCURRENCY` | worker | `10` | the most worker instances at once (the template's `WorkerMaxConcurrency`): each spends this share of a key's re-encryption rate limit |
//! | `CMK_STALLED_AFTER` | keys-write, worker | `900` | seconds without a plan or progress before a retry or the scheduled sweep re-plans a running job |
//! | `CMK_EVENT_BUS` | keys-write, data-keys, worker | none | the EventBridge bus of key health changes and job transitions (`default` in the template) |
//! | `CMK_OIDC_ISSUER`, `CMK_OIDC_SIGNING_KEYS` | all | none | the OIDC issuer URL (https) and its KMS signing keys, current first: keys-read serves the issuer's documents, the others sign tokens for keys in `oidc` trust mode |
//! | `CMK_HEALTH_CHECK_INTERVAL` | worker | `900` | seconds between two health checks of one customer key (run by the scheduled sweep); `0` turns them off |
//! | `CMK_HEALTH_CHECKS_PER_RUN` | worker | `1500` | most keys one scheduled sweep checks |
//! | `CMK_FAILURE_MEMORY` | all | `10` | seconds a customer key's failure (a refused `AssumeRole`) is remembered; failing calls write a key's health at most once per interval |

use std::time::Duration;

use cmk_aws::AwsSettings;
use cmk_core::defaults;
use cmk_core::health::HealthCheckConfig;

/// A configuration that cannot start the function.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A variable of the AWS backend (its message names the variable).
    #[error("{0}")]
    Aws(String),
    #[error("{name}={value:?} is not valid: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: String,
    },
}

/// Where variables come from: the process environment, or a map in tests.
type Vars<'a> = &'a dyn Fn(&str) -> Option<String>;

/// A set, non-blank environment variable.
fn env_var(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// A number within `range`, or `default` when the variable is unset.
fn number(
    var: Vars<'_>,
    name: &'static str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, ConfigError> {
    let Some(raw) = var(name) else {
        return Ok(default);
    };
    match raw.parse::<u64>() {
        Ok(v) if range.contains(&v) => Ok(v),
        _ => Err(ConfigError::Invalid {
            name,
            value: raw,
            reason: format!(
                "expected a whole number from {} to {}",
                range.start(),
                range.end()
            ),
        }),
    }
}

/// The names of the JWT claims the API Gateway JWT authorizer passes on (`CMK_ORG_CLAIM`,
/// `CMK_ROLE_CLAIM`); `sub` is always the subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimNames {
    pub org: String,
    pub role: String,
}

impl Default for ClaimNames {
    fn default() -> Self {
        Self {
            org: "org".into(),
            role: "role".into(),
        }
    }
}

impl ClaimNames {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(&env_var)
    }

    fn from_vars(var: Vars<'_>) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let claim = |name: &'static str, default: String| match var(name) {
            None => Ok(default),
            Some(v) if v.chars().any(char::is_whitespace) => Err(ConfigError::Invalid {
                name,
                value: v,
                reason: "a claim name has no spaces".into(),
            }),
            Some(v) => Ok(v),
        };
        Ok(Self {
            org: claim("CMK_ORG_CLAIM", defaults.org)?,
            role: claim("CMK_ROLE_CLAIM", defaults.role)?,
        })
    }
}

/// What an HTTP function (`keys-read`, `keys-write`, `data-keys`) needs.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    pub aws: AwsSettings,
    pub claims: ClaimNames,
}

impl HttpSettings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            aws: AwsSettings::from_env().map_err(ConfigError::Aws)?,
            claims: ClaimNames::from_vars(&env_var)?,
        })
    }
}

/// What the `rewrap-worker` function needs.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    pub aws: AwsSettings,
    /// Data keys per planned batch message.
    pub batch_size: usize,
    /// Messages of one SQS batch handled at once.
    pub concurrency: usize,
    /// A running job without progress for this long is re-planned by the scheduled sweep. Longer
    /// than the queue's visibility timeout, so a batch still in flight is not planned twice.
    pub stalled_after: Duration,
    /// The most worker instances the queue runs at once: each spends this share of a key's
    /// re-encryption rate limit (`CMK_WORKER_MAX_CONCURRENCY`, the template's
    /// `WorkerMaxConcurrency`).
    pub max_instances: u32,
    /// The key health checks each scheduled sweep runs; `None` when turned off.
    pub health_checks: Option<HealthCheckConfig>,
}

impl WorkerSettings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(AwsSettings::from_env().map_err(ConfigError::Aws)?, &env_var)
    }

    fn from_vars(aws: AwsSettings, var: Vars<'_>) -> Result<Self, ConfigError> {
        Ok(Self {
            aws,
            batch_size: number(
                var,
                "CMK_BATCH_SIZE",
                defaults::BATCH_SIZE as u64,
                1..=10_000,
            )? as usize,
            concurrency: number(
                var,
                "CMK_WORKER_CONCURRENCY",
                defaults::LAMBDA_WORKER_CONCURRENCY as u64,
                1..=100,
            )? as usize,
            stalled_after: Duration::from_secs(number(
                var,
                "CMK_STALLED_AFTER",
                defaults::LAMBDA_STALLED_AFTER_SECS,
                1..=86_400,
            )?),
            max_instances: number(
                var,
                "CMK_WORKER_MAX_CONCURRENCY",
                u64::from(defaults::WORKER_MAX_CONCURRENCY),
                1..=1_000,
            )? as u32,
            health_checks: health_checks(var)?,
        })
    }
}

/// The health checks of the scheduled sweep, which shares the worker's 60 s timeout with the
/// stalled-job sweep: a run starts no check after 40 s.
fn health_checks(var: Vars<'_>) -> Result<Option<HealthCheckConfig>, ConfigError> {
    let interval = number(
        var,
        "CMK_HEALTH_CHECK_INTERVAL",
        defaults::HEALTH_CHECK_INTERVAL_SECS,
        0..=7 * 86_400,
    )?;
    let per_run = number(
        var,
        "CMK_HEALTH_CHECKS_PER_RUN",
        defaults::HEALTH_CHECKS_PER_RUN as u64,
        1..=100_000,
    )?;
    Ok((interval > 0).then(|| HealthCheckConfig {
        interval: Duration::from_secs(interval),
        per_run: per_run as usize,
        budget: Duration::from_secs(40),
        ..HealthCheckConfig::default()
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn aws() -> AwsSettings {
        AwsSettings {
            table: "t".into(),
            queue_url: "q".into(),
            service_key_id: "k".into(),
            service_principal: "p".into(),
            endpoint_url: None,
            data_key_cache_ttl: Duration::from_secs(300),
            data_key_cache_size: 10,
            failure_memory: Duration::from_secs(10),
            stalled_after: Duration::from_secs(900),
            service_account_id: None,
            allow_same_account_roles: false,
            event_bus: None,
            oidc_issuer: None,
            oidc_signing_keys: Vec::new(),
        }
    }

    #[test]
    fn claim_names_default_and_override() {
        assert_eq!(
            ClaimNames::from_vars(&vars(&[])).expect("defaults"),
            ClaimNames::default()
        );
        let names = ClaimNames::from_vars(&vars(&[
            ("CMK_ORG_CLAIM", "custom:org"),
            ("CMK_ROLE_CLAIM", "https://cmk.example/role"),
        ]))
        .expect("custom");
        assert_eq!(names.org, "custom:org");
        assert_eq!(names.role, "https://cmk.example/role");
        let bad = ClaimNames::from_vars(&vars(&[("CMK_ROLE_CLAIM", "my role")]));
        assert!(
            matches!(
                bad,
                Err(ConfigError::Invalid {
                    name: "CMK_ROLE_CLAIM",
                    ..
                })
            ),
            "{bad:?}"
        );
    }

    #[test]
    fn worker_numbers_are_checked() {
        let s = WorkerSettings::from_vars(aws(), &vars(&[])).expect("defaults");
        assert_eq!(
            (s.batch_size, s.concurrency, s.stalled_after),
            (500, 10, Duration::from_secs(900))
        );
        let s = WorkerSettings::from_vars(
            aws(),
            &vars(&[("CMK_BATCH_SIZE", "100"), ("CMK_WORKER_CONCURRENCY", "4")]),
        )
        .expect("set");
        assert_eq!((s.batch_size, s.concurrency), (100, 4));
        let checks = |pairs: &[(&str, &str)]| {
            WorkerSettings::from_vars(aws(), &vars(pairs))
                .expect("health checks")
                .health_checks
                .map(|h| (h.interval.as_secs(), h.per_run))
        };
        assert_eq!(checks(&[]), Some((900, 1_500)), "on by default");
        assert_eq!(
            checks(&[
                ("CMK_HEALTH_CHECK_INTERVAL", "60"),
                ("CMK_HEALTH_CHECKS_PER_RUN", "10")
            ]),
            Some((60, 10))
        );
        assert_eq!(
            checks(&[("CMK_HEALTH_CHECK_INTERVAL", "0")]),
            None,
            "0 turns them off"
        );
        for (name, value) in [
            ("CMK_BATCH_SIZE", "0"),
            ("CMK_BATCH_SIZE", "many"),
            ("CMK_WORKER_CONCURRENCY", "1000"),
            ("CMK_STALLED_AFTER", "-1"),
            ("CMK_HEALTH_CHECK_INTERVAL", "soon"),
            ("CMK_HEALTH_CHECKS_PER_RUN", "0"),
        ] {
            let e = WorkerSettings::from_vars(aws(), &vars(&[(name, value)]))
                .expect_err(value)
                .to_string();
            assert!(e.contains(name), "{e}");
        }
    }
}
