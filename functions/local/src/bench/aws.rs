//! `cmk bench rewrap --backend aws`: re-encryption on DynamoDB, SQS, KMS and STS (an emulator),
//! with every AWS call counted at the SDK, beside the emulator's own ceiling for the same calls
//! measured in the same run.
//!
//! Two jobs run: an adopt (service key → a customer key: two principals, so Decrypt then
//! Encrypt) and a disable (customer key → another key behind the same role: ReEncrypt).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};
use aws_sdk_kms::primitives::Blob;
use cmk_aws::backend::{build_counted, sdk_config, AwsSettings};
use cmk_aws::metrics::{CallCounter, Counts};
use cmk_aws::resources::{ensure_queues, ensure_table};
use cmk_core::crypto::DataKey;
use cmk_core::engine::{EngineConfig, RewrapEngine};
use cmk_core::model::{data_key_context, DataKeyId, DataKeyRecord, JobState, KeyId, OrgId};
use cmk_core::ports::{DataKeyStore, KeyProvider, OrgStore};
use cmk_core::service::{kek_of, NewKeySpec};
use cmk_core::worker::{run_worker, WorkerConfig};
use cmk_core::Cmk;
use futures::stream::{self, StreamExt};
use tokio::sync::watch;

/// Calls in flight against the emulator, for the jobs and the ceiling alike.
const CONCURRENCY: usize = 16;
/// Batch messages the worker handles at once.
const WORKER_MESSAGES: usize = 2;

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("{e}")
}

async fn wait(cmk: &Cmk, org: &OrgId) -> Result<cmk_core::model::Job> {
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let job = cmk.reencryption(org).await?.context("no job")?;
        if job.state != JobState::Running {
            return Ok(job);
        }
        if Instant::now() > deadline {
            bail!("the job did not end in 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn report(name: &str, n: u64, secs: f64, c: &Counts) {
    let per = |v: u64| v as f64 / n as f64;
    println!("{name}_keys_per_s={:.0}", n as f64 / secs);
    println!("{name}_kms_calls_per_key={:.3}", per(c.service("KMS")));
    println!(
        "{name}_dynamodb_write_requests_per_key={:.3}",
        per(c.dynamodb_writes())
    );
    println!(
        "{name}_dynamodb_items_written_per_key={:.3}",
        per(c.dynamodb_items_written)
    );
    println!("{name}_sts_calls={}", c.service("STS"));
}

pub async fn rewrap(n: u64, endpoint: Option<String>) -> Result<ExitCode> {
    let endpoint =
        endpoint.context("--aws-endpoint-url (AWS_ENDPOINT_URL) is required with --backend aws")?;
    if n == 0 {
        bail!("--data-keys must be at least 1");
    }
    let config = sdk_config(Some(&endpoint)).await;
    if config.region().is_none() {
        bail!("no AWS region: set AWS_REGION");
    }
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let table = format!("cmk-bench-{suffix}");
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    let kms = aws_sdk_kms::Client::new(&config);
    let iam = aws_sdk_iam::Client::new(&config);
    ensure_table(&dynamodb, &table).await.map_err(err)?;
    let queue_url = ensure_queues(
        &aws_sdk_sqs::Client::new(&config),
        &format!("cmk-bench-{suffix}"),
    )
    .await
    .map_err(err)?;
    let new_key = || async {
        kms.create_key()
            .send()
            .await
            .map_err(|e| anyhow!("{}", aws_sdk_kms::error::DisplayErrorContext(e)))?
            .key_metadata
            .and_then(|m| m.arn)
            .context("no key ARN")
    };
    let service_key = new_key().await?;
    let counter = Arc::new(CallCounter::default());
    let backend = build_counted(
        &config,
        &AwsSettings {
            table: table.clone(),
            queue_url,
            service_key_id: service_key.clone(),
            service_principal: "arn:aws:iam::123456789012:role/cmk-service".into(),
            endpoint_url: Some(endpoint.clone()),
            data_key_cache_ttl: Duration::ZERO,
            data_key_cache_size: 0,
            failure_memory: Duration::from_secs(10),
            stalled_after: Duration::from_secs(60),
            service_account_id: None,
            allow_same_account_roles: true,
            event_bus: None,
            oidc_issuer: None,
            oidc_signing_keys: Vec::new(),
        },
        Some(&counter),
    );
    let cmk = backend.cmk.clone();
    let org = OrgId::parse("bench").map_err(err)?;

    // The customer's role (trusting the service with the org's external id) and two keys.
    let external_id = cmk.setup(&org).await?.external_id;
    let trust = serde_json::json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
        "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole",
        "Condition": {"StringEquals": {"sts:ExternalId": external_id}}}]});
    let role_name = format!("cmk-bench-customer-{suffix}");
    let role_arn = iam
        .create_role()
        .role_name(&role_name)
        .assume_role_policy_document(trust.to_string())
        .send()
        .await
        .map_err(|e| anyhow!("{}", aws_sdk_iam::error::DisplayErrorContext(e)))?
        .role
        .context("no role")?
        .arn;
    iam.put_role_policy()
        .role_name(&role_name)
        .policy_name("kms")
        .policy_document(r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:*","Resource":"*"}]}"#)
        .send()
        .await
        .map_err(|e| anyhow!("{}", aws_sdk_iam::error::DisplayErrorContext(e)))?;
    let (key_a, key_b) = (new_key().await?, new_key().await?);

    // Seed n data keys under the service key.
    let t = Instant::now();
    let snapshot = backend.store.load_org(&org).await?;
    let service = kek_of(&snapshot, &KeyId::service())?;
    let keys = Arc::clone(&backend.keys);
    let records: Vec<DataKeyRecord> = stream::iter(0..n)
        .map(|_| {
            let (keys, service, org) = (Arc::clone(&keys), service.clone(), org.clone());
            async move {
                let id = DataKeyId::generate();
                let w = keys
                    .wrap(&service, &data_key_context(&org, &id), &DataKey::generate())
                    .await
                    .map_err(err)?;
                Ok::<_, anyhow::Error>(DataKeyRecord {
                    id,
                    key_id: KeyId::service(),
                    wrapped: w.blob,
                    version: 0,
                    created_at: cmk_core::model::now(),
                    row_hint: None,
                })
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    for chunk in records.chunks(500) {
        backend.store.insert_data_keys(&org, chunk).await?;
    }
    println!("seeded {n} data keys in {:.1} s", t.elapsed().as_secs_f64());

    let engine = Arc::new(RewrapEngine::new(
        cmk.clone(),
        EngineConfig {
            batch_size: 96,
            concurrency: CONCURRENCY,
            ..EngineConfig::default()
        },
    ));
    let (stop, stop_rx) = watch::channel(false);
    let worker = tokio::spawn(run_worker(
        engine,
        WorkerConfig {
            concurrency: WORKER_MESSAGES,
            poll_wait: Duration::from_secs(1),
            ..WorkerConfig::default()
        },
        async move {
            let mut rx = stop_rx;
            let _ = rx.wait_for(|s| *s).await;
        },
    ));

    // (a) Adopt: service key → customer key A (Decrypt, then Encrypt through the role).
    let before = counter.snapshot();
    let t = Instant::now();
    let (a, _) = cmk
        .add_key(
            "bench",
            &org,
            "a",
            NewKeySpec::AwsKms {
                role_arn: role_arn.clone(),
                key_arn: key_a,
                // The most: the benchmark measures the engine, not the rate limit.
                rewrap_rate_limit: Some(10_000),
                trust: Some(cmk_core::model::TrustMode::ExternalId),
            },
        )
        .await?;
    let job = wait(&cmk, &org).await?;
    let adopt_secs = t.elapsed().as_secs_f64();
    if job.state != JobState::Completed || job.done != n {
        bail!(
            "the adopt job ended {} with {}/{}",
            job.state.as_str(),
            job.done,
            job.total
        );
    }
    let adopt = counter.snapshot().since(&before);
    report("adopt", n, adopt_secs, &adopt);

    // (b) Disable A → B behind the same role: ReEncrypt, the plaintext never leaves KMS.
    let (b, _) = cmk
        .add_key(
            "bench",
            &org,
            "b",
            NewKeySpec::AwsKms {
                role_arn,
                key_arn: key_b,
                // The most: the benchmark measures the engine, not the rate limit.
                rewrap_rate_limit: Some(10_000),
                trust: Some(cmk_core::model::TrustMode::ExternalId),
            },
        )
        .await?;
    cmk.set_default("bench", &org, &b.record.id).await?;
    let before = counter.snapshot();
    let t = Instant::now();
    cmk.disable("bench", &org, &a.record.id, &b.record.id)
        .await?;
    let job = wait(&cmk, &org).await?;
    let reencrypt_secs = t.elapsed().as_secs_f64();
    if job.state != JobState::Completed || job.done != n {
        bail!(
            "the disable job ended {} with {}/{}",
            job.state.as_str(),
            job.done,
            job.total
        );
    }
    report(
        "reencrypt",
        n,
        reencrypt_secs,
        &counter.snapshot().since(&before),
    );
    let _ = stop.send(true);
    let _ = worker.await;

    // The emulator's ceiling for the adopt job's calls: per data key a Decrypt and an Encrypt
    // (as many in flight as the engine keeps), per 96 data keys one transaction of 96
    // conditional writes, one at a time (the emulator runs one DynamoDB operation at a time).
    let t = Instant::now();
    let ctx: std::collections::HashMap<String, String> = [("org".to_owned(), "bench".to_owned())]
        .into_iter()
        .collect();
    let kms_ref = &kms;
    stream::iter(0..n)
        .map(|_| {
            let ctx = ctx.clone();
            let key = service_key.clone();
            async move {
                let out = kms_ref
                    .encrypt()
                    .key_id(&key)
                    .plaintext(Blob::new(vec![7u8; 32]))
                    .set_encryption_context(Some(ctx.clone()))
                    .send()
                    .await
                    .map_err(|e| anyhow!("{}", aws_sdk_kms::error::DisplayErrorContext(e)))?;
                kms_ref
                    .decrypt()
                    .set_ciphertext_blob(out.ciphertext_blob)
                    .set_encryption_context(Some(ctx))
                    .send()
                    .await
                    .map_err(|e| anyhow!("{}", aws_sdk_kms::error::DisplayErrorContext(e)))?;
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    let chunks: Vec<u64> = (0..n.div_ceil(96)).collect();
    let (dynamodb_ref, table_ref) = (&dynamodb, &table);
    stream::iter(chunks)
        .map(|c| async move {
            let mut items = Vec::new();
            for i in 0..96u64 {
                let put = Put::builder()
                    .table_name(table_ref)
                    .item("pk", AttributeValue::S(format!("CEILING#{c}#{i}")))
                    .item("sk", AttributeValue::S("X".into()))
                    .item("v", AttributeValue::N("1".into()))
                    .condition_expression("attribute_not_exists(pk)")
                    .build()
                    .map_err(err)?;
                items.push(TransactWriteItem::builder().put(put).build());
            }
            dynamodb_ref
                .transact_write_items()
                .set_transact_items(Some(items))
                .send()
                .await
                .map_err(|e| anyhow!("{}", aws_sdk_dynamodb::error::DisplayErrorContext(e)))?;
            Ok::<_, anyhow::Error>(())
        })
        .buffer_unordered(1)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    let ceiling = n as f64 / t.elapsed().as_secs_f64();
    let adopt_rate = n as f64 / adopt_secs;
    println!("emulator_ceiling_keys_per_s={ceiling:.0}");
    println!("data_keys={n}");
    if let Some(mb) = super::common::peak_rss_mb() {
        println!("peak_rss_mb={mb:.0}");
    }

    println!("ratio={:.2}", adopt_rate / ceiling);
    Ok(ExitCode::SUCCESS)
}
