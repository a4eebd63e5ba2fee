//! `cmk bench conflicts`: one re-encryption job on DynamoDB (an emulator) with many workers,
//! run twice side by side: once where overlapping transactions on one item fail as on real
//! DynamoDB (the [`ConflictProxy`]), once where they are only counted. It shows whether the
//! job's own commits collide enough to slow it down, and that its counts stay exact either way.
//!
//! The key's rate limit is spent by `--workers` engines that each take their share, as the
//! worker Lambda's instances do; KMS is the `SimulatedKms` stand-in (one request per data key:
//! the source is the service key). The emulator runs one DynamoDB operation at a time, so the
//! job runs at the emulator's pace, far below the limit; `--hold-ms` keeps each transaction's
//! items held for DynamoDB's own commit time on top, and the run prints how many transactions
//! were in flight on average, to compare with what the job would have on DynamoDB at the limit.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use cmk_aws::dynamo::DynamoStore;
use cmk_aws::resources::ensure_table;
use cmk_core::cache::DataKeyCache;
use cmk_core::engine::{EngineConfig, RewrapEngine};
use cmk_core::model::{JobState, KeyId, KeySpec, OrgId};
use cmk_core::ports::{DataKeyStore, Kek, OrgStore, RewrapProgress, RewrapQueue};
use cmk_core::service::ServiceConfig;
use cmk_core::worker::{run_worker, WorkerConfig};
use cmk_core::Cmk;
use cmk_embedded::{QueueConfig, SimulatedKms, SimulatedKmsConfig};
use tokio::sync::watch;

use super::conflict_proxy::{ConflictProxy, ProxyStats};

#[derive(Args, Debug)]
pub struct ConflictsArgs {
    /// The AWS emulator.
    #[arg(long = "aws-endpoint-url", env = "AWS_ENDPOINT_URL")]
    endpoint_url: Option<String>,
    /// Data keys the job re-encrypts (in each of the two runs).
    #[arg(long, default_value_t = 3_000)]
    data_keys: u64,
    /// Worker instances, each with its share of the rate limit.
    #[arg(long, default_value_t = 10)]
    workers: u32,
    /// The key's re-encryption rate limit, in KMS requests per second.
    #[arg(long, default_value_t = 5_000)]
    limit: u32,
    /// How long each transaction holds its items beyond the emulator's own time (DynamoDB
    /// commits a transaction in about 10–30 ms).
    #[arg(long, default_value_t = 25)]
    hold_ms: u64,
    /// Data keys per batch message.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
}

/// One run's figures.
#[derive(Debug)]
pub struct RunReport {
    pub job_secs: f64,
    pub kms_requests: u64,
    pub proxy: ProxyStats,
}

pub async fn conflicts(args: ConflictsArgs) -> Result<ExitCode> {
    let endpoint = args
        .endpoint_url
        .clone()
        .context("--aws-endpoint-url (AWS_ENDPOINT_URL) is required")?;
    if args.data_keys == 0 || args.workers == 0 {
        bail!("--data-keys and --workers must be at least 1");
    }
    let proxy = ConflictProxy::start(&endpoint, Duration::from_millis(args.hold_ms)).await?;
    println!(
        "data_keys={} workers={} limit_per_s={} hold_ms={} batch_size={}",
        args.data_keys, args.workers, args.limit, args.hold_ms, args.batch_size
    );
    let mut rates = Vec::new();
    for (mode, on) in [("counted_only", false), ("conflicts", true)] {
        proxy.set_conflicts(on);
        let report = run(&proxy, &endpoint, &args).await?;
        let rate = args.data_keys as f64 / report.job_secs;
        let p = &report.proxy;
        println!(
            "{mode}: job_s={:.1} keys_per_s={rate:.0} kms_requests_per_s={:.0} \
             redone_rewraps={} transactions={} collisions={} refused_single_writes={} \
             mean_transactions_in_flight={:.2} exact=yes",
            report.job_secs,
            report.kms_requests as f64 / report.job_secs,
            report.kms_requests.saturating_sub(args.data_keys),
            p.transactions,
            p.collisions,
            p.refused_writes,
            p.busy.as_secs_f64() / report.job_secs,
        );
        if let Some((item, n)) = &p.hottest {
            println!("{mode}: most_collided_item={item} collisions={n}");
        }
        rates.push(rate);
    }
    println!("ratio={:.2}", rates[1] / rates[0]);
    Ok(ExitCode::SUCCESS)
}

/// Seeds `data_keys` under the service key of a new org on a new table behind the proxy, adds
/// a rate-limited key (which starts the adopt job), runs it with `workers` engines, and checks
/// that every count is exact.
pub async fn run(proxy: &ConflictProxy, endpoint: &str, args: &ConflictsArgs) -> Result<RunReport> {
    let err = |e: String| anyhow!(e);
    let direct = aws_sdk_dynamodb::Client::new(&cmk_aws::backend::sdk_config(Some(endpoint)).await);
    let table = format!(
        "cmk-conflicts-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    ensure_table(&direct, &table).await.map_err(err)?;
    let through_proxy =
        aws_sdk_dynamodb::Client::new(&cmk_aws::backend::sdk_config(Some(&proxy.url)).await);
    let store = Arc::new(DynamoStore::new(through_proxy, table));

    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let (_, queue, keys) = cmk_embedded::open(dir.path(), QueueConfig::default())
        .map_err(|e| anyhow!("cannot open the local queue and keys: {e}"))?;
    let keys = Arc::new(keys);
    let kms = Arc::new(SimulatedKms::new(
        keys.clone(),
        SimulatedKmsConfig {
            latency: Duration::from_millis(5),
            quota: None,
        },
    ));
    let cmk = Cmk::new(
        store.clone(),
        Arc::new(queue) as Arc<dyn RewrapQueue>,
        kms.clone(),
        DataKeyCache::disabled(),
        ServiceConfig {
            allow_aws_keys: true,
            ..ServiceConfig::default()
        },
    );
    let org = OrgId::parse("conflicts").map_err(|e| anyhow!("{e}"))?;
    cmk.setup(&org).await?;
    let service = Kek {
        org: org.clone(),
        key_id: KeyId::service(),
        spec: KeySpec::ServiceManaged,
        external_id: None,
    };
    super::common::seed(&*store, &keys, &org, &service, args.data_keys).await?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut workers = Vec::new();
    for _ in 0..args.workers {
        let engine = Arc::new(RewrapEngine::new(
            cmk.clone(),
            EngineConfig {
                batch_size: args.batch_size,
                rate_share: args.workers,
                max_attempts: 12,
                retry_backoff: Duration::from_millis(100),
                ..EngineConfig::default()
            },
        ));
        let mut stop = stop_rx.clone();
        workers.push(tokio::spawn(run_worker(
            engine,
            // One message at a time, as one Lambda instance handles one delivery.
            WorkerConfig {
                concurrency: 1,
                poll_wait: Duration::from_millis(50),
                ..WorkerConfig::default()
            },
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        )));
    }

    proxy.reset();
    let started = Instant::now();
    let (key, job) = super::common::add_limited_key(&cmk, &org, args.limit).await?;
    let deadline = Instant::now() + Duration::from_secs(1200);
    let finished = loop {
        let current = store.get_job(&org, &job.id).await?.context("no job")?;
        if current.state != JobState::Running {
            break current;
        }
        if Instant::now() > deadline {
            bail!("the job did not end in 20 minutes: {current:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let job_secs = started.elapsed().as_secs_f64();
    let proxy_stats = proxy.stats();
    let _ = stop_tx.send(true);
    for worker in workers {
        let _ = worker.await;
    }

    // Exact: the job's counts, the counters, and the data keys themselves all agree.
    let n = args.data_keys;
    if (
        finished.state,
        finished.done,
        finished.failed,
        finished.total,
    ) != (JobState::Completed, n, 0, n)
    {
        bail!("the job's counts are not exact: {finished:?}");
    }
    let snapshot = store.load_org(&org).await?;
    let (left, moved) = (
        snapshot.count(&KeyId::service()),
        snapshot.count(&key.record.id),
    );
    if (left, moved) != (0, n) {
        bail!("the counters say {left} data keys left and {moved} moved, of {n}");
    }
    let mut enumerated = 0u64;
    for partition in 0..store.data_key_partitions() {
        let mut after = None;
        loop {
            let page = store
                .list_data_key_ids(&org, &key.record.id, partition, after.as_ref(), 1000)
                .await?;
            enumerated += page.len() as u64;
            match page.last() {
                Some(last) if page.len() == 1000 => after = Some(last.clone()),
                _ => break,
            }
        }
    }
    if enumerated != n {
        bail!("{enumerated} data keys are wrapped by the new key, not {n}");
    }
    let kms_requests = kms
        .requests(&key.record.id)
        .iter()
        .filter(|r| r.data_key_id.is_some())
        .count() as u64;
    Ok(RunReport {
        job_secs,
        kms_requests,
        proxy: proxy_stats,
    })
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    //! Against the AWS emulator (`CMK_TEST_AWS_ENDPOINT`): the proxy's conflicts read as
    //! DynamoDB's through the real SDK, and a job with 10 workers through it keeps exact counts
    //! without redoing any batch.

    use super::*;
    use aws_sdk_dynamodb::error::ProvideErrorMetadata;
    use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
    use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem, Update};

    fn endpoint() -> Option<String> {
        cmk_aws::emulator::shared_endpoint()
    }

    /// A transaction's write to the one hot item.
    fn bump(table: &str) -> TransactWriteItem {
        TransactWriteItem::builder()
            .update(
                Update::builder()
                    .table_name(table)
                    .key("pk", AttributeValue::S("HOT".into()))
                    .key("sk", AttributeValue::S("ITEM".into()))
                    .update_expression("ADD n :one")
                    .expression_attribute_values(":one", AttributeValue::N("1".into()))
                    .build()
                    .expect("update"),
            )
            .build()
    }

    #[tokio::test]
    async fn overlapping_transactions_on_one_item_fail_as_on_dynamodb() {
        let Some(endpoint) = endpoint() else { return };
        let proxy = ConflictProxy::start(&endpoint, Duration::from_millis(400))
            .await
            .expect("proxy");
        let direct =
            aws_sdk_dynamodb::Client::new(&cmk_aws::backend::sdk_config(Some(&endpoint)).await);
        let table = format!(
            "cmk-proxy-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        ensure_table(&direct, &table).await.expect("table");
        let client =
            aws_sdk_dynamodb::Client::new(&cmk_aws::backend::sdk_config(Some(&proxy.url)).await);
        let first = {
            let (client, item) = (client.clone(), bump(&table));
            tokio::spawn(async move {
                client
                    .transact_write_items()
                    .transact_items(item)
                    .send()
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let second = client
            .transact_write_items()
            .transact_items(bump(&table))
            .send()
            .await
            .expect_err("the item is held by the first transaction");
        let service = second.into_service_error();
        assert_eq!(service.code(), Some("TransactionCanceledException"));
        let TransactWriteItemsError::TransactionCanceledException(cancelled) = service else {
            panic!("not a cancellation: {service:?}");
        };
        let codes: Vec<_> = cancelled
            .cancellation_reasons()
            .iter()
            .map(|r| r.code().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(codes, ["TransactionConflict"]);
        first.await.expect("task").expect("the first one commits");
        client
            .transact_write_items()
            .transact_items(bump(&table))
            .send()
            .await
            .expect("free again once the first answered");
        let stats = proxy.stats();
        assert_eq!((stats.transactions, stats.collisions), (2, 1));
    }

    /// A batch commit that collides is tried again (on another progress shard), not given up:
    /// with collisions forced on the first batch commits, nothing is redone and every count is
    /// exact.
    #[tokio::test]
    async fn a_batch_commit_that_collides_is_tried_again_not_redone() {
        let Some(endpoint) = endpoint() else { return };
        let proxy = ConflictProxy::start(&endpoint, Duration::ZERO)
            .await
            .expect("proxy");
        proxy.force_batch_conflicts(4);
        let args = ConflictsArgs {
            endpoint_url: Some(endpoint.clone()),
            data_keys: 200,
            workers: 2,
            limit: 5_000,
            hold_ms: 0,
            batch_size: 50,
        };
        // `run` fails unless the job, the counters and the data keys all agree.
        let report = run(&proxy, &endpoint, &args).await.expect("an exact job");
        assert!(report.proxy.collisions >= 4, "{report:?}");
        assert_eq!(
            report.kms_requests, args.data_keys,
            "no batch was given up and redone: {report:?}"
        );
    }

    #[tokio::test]
    async fn ten_workers_through_conflicts_keep_exact_counts_and_redo_nothing() {
        let Some(endpoint) = endpoint() else { return };
        let proxy = ConflictProxy::start(&endpoint, Duration::from_millis(25))
            .await
            .expect("proxy");
        let args = ConflictsArgs {
            endpoint_url: Some(endpoint.clone()),
            data_keys: 600,
            workers: 10,
            limit: 5_000,
            hold_ms: 25,
            batch_size: 50,
        };
        // `run` fails unless the job, the counters and the data keys all agree.
        let report = run(&proxy, &endpoint, &args).await.expect("an exact job");
        eprintln!("{report:?}");
        assert_eq!(
            report.kms_requests, args.data_keys,
            "every data key rewrapped once: no batch given up to a collision and redone"
        );
        assert!(report.proxy.transactions >= 12, "{report:?}");
    }
}
