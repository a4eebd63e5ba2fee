//! `cmk serve --backend aws`: the same API and worker on DynamoDB, SQS and AWS KMS, so the
//! service also runs on a plain host (or against an AWS emulator).

use anyhow::{anyhow, bail, Context, Result};
use aws_config::SdkConfig;
use clap::Args;
use cmk_aws::backend::sdk_config;
use cmk_aws::resources::{ensure_queues, ensure_table};

#[derive(Args, Debug, Clone)]
pub struct AwsArgs {
    /// DynamoDB table.
    #[arg(long, env = "CMK_TABLE", default_value = "cmk")]
    pub table: String,
    /// SQS queue URL of the rewrap work (with --create-resources: created from --queue-name).
    #[arg(long, env = "CMK_QUEUE_URL")]
    pub queue_url: Option<String>,
    /// Queue name used by --create-resources (its dead-letter queue is `<name>-dlq`).
    #[arg(long, env = "CMK_QUEUE_NAME", default_value = "cmk-rewrap")]
    pub queue_name: String,
    /// The service-managed KMS key (id, ARN or alias). With --create-resources and none given,
    /// `alias/cmk-service` is created.
    #[arg(long, env = "CMK_SERVICE_KEY_ID")]
    pub service_key_id: Option<String>,
    /// One endpoint for every AWS service (e.g. an emulator on loopback).
    #[arg(long = "aws-endpoint-url", env = "AWS_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,
    /// Create a missing table, queue (with dead-letter queue) and service key first, from the
    /// same definitions as template.yaml.
    #[arg(long)]
    pub create_resources: bool,
    /// The EventBridge bus that key health changes and job transitions go to (e.g. `default`);
    /// none by default.
    #[arg(long, env = "CMK_EVENT_BUS")]
    pub event_bus: Option<String>,
}

const SERVICE_ALIAS: &str = "alias/cmk-service";

/// The service key: the one given, or (creating resources) `alias/cmk-service`, made if absent.
async fn service_key(client: &aws_sdk_kms::Client, args: &AwsArgs) -> Result<String> {
    if let Some(k) = &args.service_key_id {
        return Ok(k.clone());
    }
    if !args.create_resources {
        bail!("--service-key-id (CMK_SERVICE_KEY_ID) is required without --create-resources");
    }
    if client
        .describe_key()
        .key_id(SERVICE_ALIAS)
        .send()
        .await
        .is_ok()
    {
        return Ok(SERVICE_ALIAS.to_owned());
    }
    let key = client
        .create_key()
        .description("CMK service: the service-managed key")
        .send()
        .await
        .map_err(|e| {
            anyhow!(
                "cannot create the service key: {}",
                aws_sdk_kms::error::DisplayErrorContext(e)
            )
        })?;
    let key_id = key
        .key_metadata()
        .map(|m| m.key_id().to_owned())
        .ok_or_else(|| anyhow!("KMS returned no key id"))?;
    client
        .create_alias()
        .alias_name(SERVICE_ALIAS)
        .target_key_id(&key_id)
        .send()
        .await
        .map_err(|e| {
            anyhow!(
                "cannot alias the service key: {}",
                aws_sdk_kms::error::DisplayErrorContext(e)
            )
        })?;
    Ok(SERVICE_ALIAS.to_owned())
}

/// The AWS resources the service runs on, resolved (and created, when asked).
#[derive(Debug)]
pub struct Resources {
    pub config: SdkConfig,
    pub queue_url: String,
    pub service_key_id: String,
    /// The service's own account: customer roles in it are refused.
    pub service_account_id: String,
}

/// Resolves the SDK configuration, queue, service key and account (creating resources when
/// asked).
pub async fn resources(aws: &AwsArgs) -> Result<Resources> {
    let config = sdk_config(aws.endpoint_url.as_deref()).await;
    if config.region().is_none() {
        bail!("no AWS region: set AWS_REGION");
    }
    let queue_url = if aws.create_resources {
        ensure_table(&aws_sdk_dynamodb::Client::new(&config), &aws.table)
            .await
            .map_err(|e| anyhow!("cannot create table {}: {e}", aws.table))?;
        ensure_queues(&aws_sdk_sqs::Client::new(&config), &aws.queue_name)
            .await
            .map_err(|e| anyhow!("cannot create queue {}: {e}", aws.queue_name))?
    } else {
        aws.queue_url
            .clone()
            .context("--queue-url (CMK_QUEUE_URL) is required without --create-resources")?
    };
    let kms = aws_sdk_kms::Client::new(&config);
    let service_key_id = service_key(&kms, aws).await?;
    // The service's account (customer roles in it are refused): the key ARN's.
    let service_account_id = match cmk_aws::backend::arn_account(&service_key_id) {
        Some(account) => account.to_owned(),
        None => {
            let arn = kms
                .describe_key()
                .key_id(&service_key_id)
                .send()
                .await
                .map_err(|e| anyhow!("cannot read the service key {service_key_id}: {e}"))?
                .key_metadata
                .and_then(|m| m.arn)
                .context("the service key has no ARN")?;
            cmk_aws::backend::arn_account(&arn)
                .context("the service key's ARN names no account")?
                .to_owned()
        }
    };
    Ok(Resources {
        config,
        queue_url,
        service_key_id,
        service_account_id,
    })
}
