//! `cmk bench rate-limit`: a re-encryption against a KMS stand-in (`SimulatedKms`: a latency per
//! request, and optionally a quota above which it throttles), with the key's rate limit. It
//! prints the requests sent for the key in every one-second window, the highest one-second and
//! ten-second windows against the limit, the throttled requests and the job's duration.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use cmk_core::cache::DataKeyCache;
use cmk_core::engine::{EngineConfig, RewrapEngine};
use cmk_core::model::{JobState, KeyId, KeySpec, OrgId};
use cmk_core::ports::{Kek, RewrapProgress, RewrapQueue};
use cmk_core::service::ServiceConfig;
use cmk_core::worker::{run_worker, WorkerConfig};
use cmk_core::Cmk;
use cmk_embedded::{QueueConfig, SimulatedKms, SimulatedKmsConfig};
use tokio::sync::watch;

#[derive(Args, Debug)]
pub struct RateLimitArgs {
    /// Data keys to re-encrypt onto the limited key.
    #[arg(long, default_value_t = 3_000)]
    data_keys: u64,
    /// The key's re-encryption rate limit, in KMS requests per second.
    #[arg(long, default_value_t = 250)]
    limit: u32,
    /// Requests per second above which the stand-in throttles (none by default).
    #[arg(long)]
    quota: Option<u32>,
    /// The stand-in's latency per request, in milliseconds.
    #[arg(long, default_value_t = 5)]
    latency_ms: u64,
}

pub async fn rate_limit(args: RateLimitArgs) -> Result<ExitCode> {
    if args.data_keys == 0 {
        bail!("--data-keys must be at least 1");
    }
    let dir = tempfile::tempdir().context("cannot create a temporary data directory")?;
    let (store, queue, keys) = cmk_embedded::open(dir.path(), QueueConfig::default())
        .map_err(|e| anyhow!("cannot open the data directory: {e}"))?;
    let (store, keys) = (Arc::new(store), Arc::new(keys));
    let kms = Arc::new(SimulatedKms::new(
        keys.clone(),
        SimulatedKmsConfig {
            latency: Duration::from_millis(args.latency_ms),
            quota: args.quota,
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
    let org = OrgId::parse("bench").map_err(|e| anyhow!("{e}"))?;
    let service = Kek {
        org: org.clone(),
        key_id: KeyId::service(),
        spec: KeySpec::ServiceManaged,
        external_id: None,
    };
    super::common::seed(&*store, &keys, &org, &service, args.data_keys).await?;

    let engine = Arc::new(RewrapEngine::new(
        cmk.clone(),
        EngineConfig {
            // Many retries: a throttled data key waits for the adapted rate instead of failing.
            max_attempts: 12,
            retry_backoff: Duration::from_millis(100),
            ..EngineConfig::default()
        },
    ));
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let worker = tokio::spawn(run_worker(
        engine,
        WorkerConfig {
            poll_wait: Duration::from_millis(100),
            ..WorkerConfig::default()
        },
        async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        },
    ));
    let started = Instant::now();
    let (key, job) = super::common::add_limited_key(&cmk, &org, args.limit).await?;
    let mut throttled_shown = None;
    let finished = loop {
        let current = store
            .get_job(&org, &job.id)
            .await?
            .ok_or_else(|| anyhow!("the job disappeared"))?;
        if let Some(rate) = current.throttled_rate {
            throttled_shown = Some(throttled_shown.map_or(rate, |r: u32| r.min(rate)));
        }
        if current.state != JobState::Running {
            break current;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let job_secs = started.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    let _ = worker.await;
    if finished.state != JobState::Completed || finished.done != args.data_keys {
        bail!(
            "the job ended {} with {}/{} done",
            finished.state.as_str(),
            finished.done,
            finished.total
        );
    }

    // The job's requests for the key (the add-time check names no data key).
    let requests: Vec<Instant> = kms
        .requests(&key.record.id)
        .into_iter()
        .filter(|r| r.data_key_id.is_some())
        .map(|r| r.at)
        .collect();
    let Some(&first) = requests.first() else {
        bail!("the job sent no request for the key");
    };
    let seconds = requests
        .last()
        .map_or(0, |l| l.duration_since(first).as_secs() as usize)
        + 1;
    let mut per_second = vec![0u64; seconds];
    for r in &requests {
        per_second[r.duration_since(first).as_secs() as usize] += 1;
    }
    let shown: Vec<String> = per_second.iter().map(u64::to_string).collect();
    println!("requests_per_1s_window=[{}]", shown.join(","));
    let busiest = |window: Duration| -> f64 {
        (0..requests.len())
            .map(|i| {
                let end = requests[i] + window;
                requests[i..].iter().take_while(|t| **t < end).count()
            })
            .max()
            .unwrap_or(0) as f64
            / window.as_secs_f64()
    };
    let limit = f64::from(args.limit);
    let (one, ten) = (
        busiest(Duration::from_secs(1)),
        busiest(Duration::from_secs(10)),
    );
    println!("limit_per_s={}", args.limit);
    if let Some(q) = args.quota {
        println!("kms_quota_per_s={q}");
    }
    println!(
        "highest_1s_window_per_s={one:.0} ({:.2} of the limit)",
        one / limit
    );
    if seconds >= 10 {
        println!(
            "highest_10s_window_per_s={ten:.1} ({:.3} of the limit)",
            ten / limit
        );
    } else {
        println!("highest_10s_window_per_s=n/a (the job ran {seconds} s; use more --data-keys)");
    }
    println!("requests={} throttled={}", requests.len(), kms.throttled());
    if let Some(rate) = throttled_shown {
        println!("job_showed_throttled_rate_per_s={rate} (lowest seen)");
    }
    println!(
        "data_keys={} job_s={job_secs:.1} job_keys_per_s={:.0}",
        args.data_keys,
        args.data_keys as f64 / job_secs
    );
    Ok(ExitCode::SUCCESS)
}
