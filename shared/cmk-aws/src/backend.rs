//! Wires the AWS adapters into the use cases, from typed settings: the one place where the
//! Lambda functions and `cmk serve --backend aws` build their service. No AWS call is made here
//! (clients are built once per cold start; the first request does the first call).

use std::sync::Arc;
use std::time::Duration;

use aws_config::{BehaviorVersion, SdkConfig};
use cmk_core::cache::DataKeyCache;
use cmk_core::defaults;
use cmk_core::service::ServiceConfig;
use cmk_core::Cmk;

use crate::metrics::CallCounter;
use crate::oidc::KmsTokenSigner;
use crate::{DynamoStore, EventBridgePublisher, KmsKeyProvider, KmsSettings, SqsQueue};
use cmk_core::oidc::OidcIssuer;

/// Everything the AWS backend needs, parsed before serving.
#[derive(Clone, Debug)]
pub struct AwsSettings {
    /// DynamoDB table (`CMK_TABLE`).
    pub table: String,
    /// SQS queue URL of the rewrap work (`CMK_QUEUE_URL`).
    pub queue_url: String,
    /// The service-managed KMS key: id, ARN or alias (`CMK_SERVICE_KEY_ID`).
    pub service_key_id: String,
    /// The principal customers trust in their roles (`CMK_SERVICE_PRINCIPAL`).
    pub service_principal: String,
    /// An endpoint for every AWS service (an emulator), else the SDK's defaults
    /// (`AWS_ENDPOINT_URL`, read by the SDK itself).
    pub endpoint_url: Option<String>,
    /// Seconds an unwrapped data key stays cached (`CMK_DATA_KEY_CACHE_TTL`, default 300).
    pub data_key_cache_ttl: Duration,
    pub data_key_cache_size: usize,
    /// How long a customer key's failure is remembered (`CMK_FAILURE_MEMORY`, seconds, default
    /// 10): a failed `AssumeRole` is answered from memory meanwhile, and failing calls write the
    /// key's health at most once per interval.
    pub failure_memory: Duration,
    /// A running job is planned again (by a retry or the sweep) only after this long without a
    /// plan or a committed batch (`CMK_STALLED_AFTER`, seconds, default 900).
    pub stalled_after: Duration,
    /// The service's own AWS account (`CMK_SERVICE_ACCOUNT_ID`; by default the account of
    /// `CMK_SERVICE_KEY_ID` when that is an ARN). Customer roles in it are refused.
    pub service_account_id: Option<String>,
    /// Allows customer roles in the service's own account (`CMK_ALLOW_SAME_ACCOUNT_ROLES`, for
    /// single-account test setups; off by default).
    pub allow_same_account_roles: bool,
    /// The EventBridge bus that key health changes and job transitions go to (`CMK_EVENT_BUS`;
    /// the template sets `default`); `None`: no events.
    pub event_bus: Option<String>,
    /// The service's OIDC issuer URL (`CMK_OIDC_ISSUER`, https): new `aws-kms` keys trust it
    /// by default. `None`: keys trust the org's external id.
    pub oidc_issuer: Option<String>,
    /// The issuer's signing keys, asymmetric KMS keys, current first (`CMK_OIDC_SIGNING_KEYS`,
    /// comma-separated; see [`crate::oidc`]). Empty with an issuer: the caller gives the
    /// provider another signer (`cmk serve` uses key files).
    pub oidc_signing_keys: Vec<String>,
}

/// Reads a required environment variable, naming it when missing.
fn required(name: &str) -> Result<String, String> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| format!("the environment variable {name} is required"))
}

fn parsed<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|_| format!("{name}={v:?} is not a valid value")),
        _ => Ok(default),
    }
}

impl AwsSettings {
    /// From the environment (`CMK_*` variables), for the Lambda functions.
    pub fn from_env() -> Result<Self, String> {
        Ok(Self {
            table: required("CMK_TABLE")?,
            queue_url: required("CMK_QUEUE_URL")?,
            service_key_id: required("CMK_SERVICE_KEY_ID")?,
            service_principal: required("CMK_SERVICE_PRINCIPAL")?,
            endpoint_url: std::env::var("AWS_ENDPOINT_URL")
                .ok()
                .filter(|v| !v.is_empty()),
            data_key_cache_ttl: Duration::from_secs(parsed(
                "CMK_DATA_KEY_CACHE_TTL",
                defaults::DATA_KEY_CACHE_TTL_SECS,
            )?),
            data_key_cache_size: parsed("CMK_DATA_KEY_CACHE_SIZE", defaults::DATA_KEY_CACHE_SIZE)?,
            failure_memory: Duration::from_secs(parsed(
                "CMK_FAILURE_MEMORY",
                defaults::FAILURE_MEMORY_SECS,
            )?),
            stalled_after: Duration::from_secs(
                parsed("CMK_STALLED_AFTER", defaults::LAMBDA_STALLED_AFTER_SECS)?.max(1),
            ),
            service_account_id: Some(service_account_id()?),
            allow_same_account_roles: parsed("CMK_ALLOW_SAME_ACCOUNT_ROLES", false)?,
            event_bus: std::env::var("CMK_EVENT_BUS")
                .ok()
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty()),
            oidc_issuer: oidc_issuer()?,
            oidc_signing_keys: oidc_signing_keys()?,
        })
    }
}

/// `CMK_OIDC_ISSUER`: an https URL, since STS fetches the issuer's keys over https only.
fn oidc_issuer() -> Result<Option<String>, String> {
    let Some(url) = std::env::var("CMK_OIDC_ISSUER")
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
    else {
        return Ok(None);
    };
    if !url.starts_with("https://") || url.len() <= "https://".len() {
        return Err(format!(
            "CMK_OIDC_ISSUER={url:?} must be an https URL: AWS STS reads an issuer's keys over \
             https only"
        ));
    }
    Ok(Some(url))
}

/// `CMK_OIDC_SIGNING_KEYS`, required with `CMK_OIDC_ISSUER`: an issuer that cannot sign would
/// make every key in `oidc` mode fail.
fn oidc_signing_keys() -> Result<Vec<String>, String> {
    let keys: Vec<String> = std::env::var("CMK_OIDC_SIGNING_KEYS")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect();
    let issuer = std::env::var("CMK_OIDC_ISSUER").is_ok_and(|v| !v.trim().is_empty());
    if issuer && keys.is_empty() {
        return Err(
            "CMK_OIDC_SIGNING_KEYS (the issuer's KMS signing keys, current first) is required \
             with CMK_OIDC_ISSUER"
                .to_owned(),
        );
    }
    if keys.len() > 2 {
        return Err(
            "CMK_OIDC_SIGNING_KEYS lists the current and the previous key, no more".to_owned(),
        );
    }
    Ok(keys)
}

/// The account of an ARN (`arn:<partition>:<service>:<region>:<account>:…`).
pub fn arn_account(arn: &str) -> Option<&str> {
    let mut parts = arn.splitn(6, ':');
    (parts.next()? == "arn").then_some(())?;
    let account = parts.nth(3)?;
    (account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit())).then_some(account)
}

/// The service's account: `CMK_SERVICE_ACCOUNT_ID`, else the service key ARN's. Fails closed:
/// without it customer roles in the operator's account could not be refused.
fn service_account_id() -> Result<String, String> {
    if let Ok(id) = std::env::var("CMK_SERVICE_ACCOUNT_ID") {
        let id = id.trim();
        if !id.is_empty() {
            // A wrong value would silently turn the refusal of own-account roles off.
            if id.len() != 12 || !id.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "CMK_SERVICE_ACCOUNT_ID={id:?} is not an AWS account id (12 digits)"
                ));
            }
            return Ok(id.to_owned());
        }
    }
    let key = required("CMK_SERVICE_KEY_ID")?;
    arn_account(&key).map(str::to_owned).ok_or_else(|| {
        "CMK_SERVICE_ACCOUNT_ID is required when CMK_SERVICE_KEY_ID is not a key ARN".to_owned()
    })
}

/// Loads the SDK configuration (region and credentials from the environment).
pub async fn sdk_config(endpoint_url: Option<&str>) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(ep) = endpoint_url {
        loader = loader.endpoint_url(ep);
    }
    loader.load().await
}

/// The service's adapters on AWS.
#[derive(Clone, Debug)]
pub struct AwsBackend {
    pub cmk: Cmk,
    /// The OIDC issuer, when the settings name one and its KMS signing keys.
    pub oidc: Option<OidcIssuer>,
    pub store: Arc<DynamoStore>,
    pub queue: Arc<SqsQueue>,
    pub keys: Arc<KmsKeyProvider>,
}

/// The EventBridge client: a put that hangs gives up after 2 s (retries included), so an event
/// delays the admin request or batch that caused it by that at most.
fn events_client(config: &SdkConfig) -> aws_sdk_eventbridge::Client {
    use aws_sdk_eventbridge::config::timeout::TimeoutConfig;
    aws_sdk_eventbridge::Client::from_conf(
        aws_sdk_eventbridge::config::Builder::from(config)
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_timeout(Duration::from_secs(2))
                    .build(),
            )
            .build(),
    )
}

/// Builds the use cases over DynamoDB, SQS and KMS.
pub fn build(config: &SdkConfig, settings: &AwsSettings) -> AwsBackend {
    build_counted(config, settings, None)
}

/// Like [`build`], with every AWS call counted at the SDK by `counter`.
pub fn build_counted(
    config: &SdkConfig,
    settings: &AwsSettings,
    counter: Option<&Arc<CallCounter>>,
) -> AwsBackend {
    let mut dynamodb = aws_sdk_dynamodb::config::Builder::from(config);
    let mut sqs = aws_sdk_sqs::config::Builder::from(config);
    let kms_settings = KmsSettings {
        failure_memory: settings.failure_memory,
        ..KmsSettings::new(settings.service_key_id.clone())
    };
    let mut keys = KmsKeyProvider::new(config, kms_settings.clone());
    if let Some(c) = counter {
        dynamodb = dynamodb.interceptor(c.interceptor("DynamoDB"));
        sqs = sqs.interceptor(c.interceptor("SQS"));
        let sts = aws_sdk_sts::Client::from_conf(
            aws_sdk_sts::config::Builder::from(config)
                .interceptor(c.interceptor("STS"))
                .build(),
        );
        keys = KmsKeyProvider::from_clients(
            config,
            aws_sdk_kms::Client::new(config),
            sts,
            kms_settings,
        )
        .with_interceptor(c.interceptor("KMS"));
    }
    let store = Arc::new(DynamoStore::new(
        aws_sdk_dynamodb::Client::from_conf(dynamodb.build()),
        settings.table.clone(),
    ));
    let queue = Arc::new(SqsQueue::new(
        aws_sdk_sqs::Client::from_conf(sqs.build()),
        settings.queue_url.clone(),
    ));
    let keys = Arc::new(keys);
    let cmk = Cmk::new(
        store.clone(),
        queue.clone(),
        keys.clone(),
        DataKeyCache::new(settings.data_key_cache_ttl, settings.data_key_cache_size),
        ServiceConfig {
            service_principal: settings.service_principal.clone(),
            allow_local_keys: false,
            allow_aws_keys: true,
            allow_vault_keys: false,
            health_write_interval: settings.failure_memory,
            stalled_after: settings.stalled_after,
            service_account_id: settings
                .service_account_id
                .clone()
                .or_else(|| arn_account(&settings.service_key_id).map(str::to_owned)),
            allow_same_account_roles: settings.allow_same_account_roles,
            oidc_issuer: settings.oidc_issuer.clone(),
        },
    );
    let oidc = match (&settings.oidc_issuer, settings.oidc_signing_keys.is_empty()) {
        (Some(issuer), false) => {
            let issuer = OidcIssuer::new(
                issuer,
                Arc::new(KmsTokenSigner::new(
                    aws_sdk_kms::Client::new(config),
                    settings.oidc_signing_keys.clone(),
                )),
            );
            keys.use_web_identity(issuer.clone());
            Some(issuer)
        }
        _ => None,
    };
    let cmk = match &settings.event_bus {
        Some(bus) => cmk.with_events(Arc::new(EventBridgePublisher::new(
            events_client(config),
            bus.clone(),
        ))),
        None => cmk,
    };
    AwsBackend {
        cmk,
        oidc,
        store,
        queue,
        keys,
    }
}
