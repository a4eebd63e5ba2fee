//! `cmk bench rewrap`: the re-encryption engine against the floor of the same work, in one run.
//!
//! (a) The floor: a plain loop over the data keys that unwraps and wraps each with AES-GCM and
//!     moves it to another key with a conditional SQLite update, batched in transactions.
//! (b) A complete adopt job through the real engine, store and queue, with the local worker.
//! Before both, the reference floor of the machine (see [`super::reference`]). It prints
//! `job_keys_per_s`, the peak memory, `reference_floor_keys_per_s` and `ratio_to_reference`,
//! then `floor_keys_per_s` and last `ratio=` (the job against its own floor).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use cmk_core::cache::DataKeyCache;
use cmk_core::engine::{EngineConfig, RewrapEngine};
use cmk_core::model::{data_key_context, JobState, KeyId, OrgId};
use cmk_core::ports::{Kek, KeyProvider, RewrapItem};
use cmk_core::service::{NewKeySpec, ServiceConfig};
use cmk_core::worker::{run_worker, WorkerConfig};
use cmk_embedded::{data_keys, LocalKeyProvider, QueueConfig};
use rusqlite::params;
use tokio::sync::watch;

use super::common::{cpu_time, peak_rss_mb, seed};
use super::reference::Reference;
use crate::local::open_backends;
use cmk_core::ports::RewrapProgress;

/// What `bench rewrap` was asked for.
pub struct Args {
    pub data_keys: u64,
    pub batch_size: usize,
    pub concurrency: usize,
    pub reference: Reference,
}

/// Runs the reference floor, seeds `data_keys` twice (one org each), runs its own floor and a
/// complete job, and prints the figures.
pub async fn rewrap(args: Args) -> Result<ExitCode> {
    if args.data_keys == 0 {
        bail!("--data-keys must be at least 1");
    }
    // First, alone on the machine: the reference floor.
    let reference = {
        let (r, n) = (args.reference.clone(), args.data_keys);
        tokio::task::spawn_blocking(move || super::reference::measure(&r, n)).await?
    };
    let dir = tempfile::tempdir().context("cannot create a temporary data directory")?;
    let b = open_backends(
        dir.path(),
        QueueConfig::default(),
        DataKeyCache::disabled(),
        ServiceConfig::default(),
    )?;
    let org = OrgId::parse("bench").map_err(|e| anyhow!("{e}"))?;
    let service = Kek {
        org: org.clone(),
        key_id: KeyId::service(),
        spec: cmk_core::model::KeySpec::ServiceManaged,
        external_id: None,
    };

    // The floor runs on an org of its own with the same number of data keys, so both runs
    // move rows between keys (the index maintenance is part of the work).
    let floor_org = OrgId::parse("floor").map_err(|e| anyhow!("{e}"))?;
    let floor_service = Kek {
        org: floor_org.clone(),
        ..service.clone()
    };
    let t = Instant::now();
    seed(&*b.store, &b.keys, &org, &service, args.data_keys).await?;
    seed(
        &*b.store,
        &b.keys,
        &floor_org,
        &floor_service,
        args.data_keys,
    )
    .await?;
    println!(
        "seeded 2 x {} data keys in {:.1} s",
        args.data_keys,
        t.elapsed().as_secs_f64()
    );

    // (a) The floor.
    let floor_secs = {
        let db = Arc::clone(b.store.database());
        let keys = Arc::clone(&b.keys);
        let (kek, batch) = (floor_service, args.batch_size);
        tokio::task::spawn_blocking(move || floor(&db, &keys, &kek, batch)).await??
    };
    let floor_rate = args.data_keys as f64 / floor_secs;
    println!("floor measured: {floor_rate:.0} data keys/s");

    // (b) A complete adopt job through the engine, the store and the queue.
    let engine = Arc::new(RewrapEngine::new(
        b.cmk.clone(),
        EngineConfig {
            batch_size: args.batch_size,
            ..EngineConfig::default()
        },
    ));
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let worker = tokio::spawn(run_worker(
        engine,
        WorkerConfig {
            concurrency: args.concurrency.max(1),
            poll_wait: Duration::from_millis(200),
            ..WorkerConfig::default()
        },
        async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        },
    ));
    let busy_before = b.store.database().writer_busy();
    let cpu_before = cpu_time();
    let started = Instant::now();
    let (_, job) = b
        .cmk
        .add_key("bench", &org, "bench-key", NewKeySpec::Local)
        .await?;
    let job = job.ok_or_else(|| anyhow!("adding the first key started no job"))?;
    let finished = loop {
        let current = b
            .store
            .get_job(&org, &job.id)
            .await?
            .ok_or_else(|| anyhow!("the job disappeared"))?;
        if current.state != JobState::Running {
            break current;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let job_secs = started.elapsed().as_secs_f64();
    let cores = cpu_time()
        .zip(cpu_before)
        .map(|(after, before)| (after - before).as_secs_f64() / job_secs);
    let writer_busy = (b.store.database().writer_busy() - busy_before).as_secs_f64() / job_secs;
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
    let job_rate = args.data_keys as f64 / job_secs;
    println!("job_keys_per_s={job_rate:.0}");
    println!(
        "data_keys={} batch_size={}",
        args.data_keys, args.batch_size
    );
    // The share of the job's time the one SQLite writer was held: near 1, the writer bounds it.
    println!("writer_busy={writer_busy:.2}");
    if let Some(cores) = cores {
        println!("cpu_cores_used={cores:.2}");
    }
    if let Some(mb) = peak_rss_mb() {
        println!("peak_rss_mb={mb:.0}");
    }
    match reference {
        Ok(rate) => {
            println!("reference_floor_keys_per_s={rate:.0}");
            println!("ratio_to_reference={:.2}", job_rate / rate);
        }
        Err(why) => println!("reference_floor=unavailable: {why}"),
    }
    println!("floor_keys_per_s={floor_rate:.0}");
    println!("ratio={:.2}", job_rate / floor_rate);
    Ok(ExitCode::SUCCESS)
}

/// The floor: read a page, rewrap it with the provider's page call (the engine's crypto path),
/// and move each data key to another key with a conditional update, one transaction per page.
fn floor(
    db: &cmk_embedded::Database,
    keys: &LocalKeyProvider,
    kek: &Kek,
    batch: usize,
) -> Result<f64> {
    let org = &kek.org;
    let org_n = db.name_number(org.as_str())?;
    let source_n = db.name_number(kek.key_id.as_str())?;
    let target_n = db.name_number("floor-target")?;
    let started = Instant::now();
    db.with_writer(|conn| -> Result<()> {
        let mut after: Vec<u8> = Vec::new();
        loop {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let page: Vec<(Vec<u8>, Vec<u8>, i64, i64)> = tx
                .prepare_cached(
                    "SELECT id, wrapped, version, n FROM data_keys
                     WHERE org = ?1 AND key_id = ?2 AND id > ?3 ORDER BY id LIMIT ?4",
                )?
                .query_map(params![org_n, source_n, after, batch as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?
                .collect::<Result<_, _>>()?;
            let Some(last) = page.last() else {
                break;
            };
            after = last.0.clone();
            let items = page
                .iter()
                .map(|(id, wrapped, _, _)| {
                    Ok(RewrapItem {
                        ctx: data_key_context(org, &data_keys::id_of(id)?),
                        wrapped: wrapped.clone(),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let rewrapped = keys.rewrap_locally(kek, kek, &items);
            {
                let mut update = tx.prepare_cached(
                    "UPDATE data_keys SET key_id = ?6, wrapped = ?3, version = version + 1
                     WHERE n = ?7 AND org = ?1 AND id = ?2 AND key_id = ?4 AND version = ?5",
                )?;
                for ((id, _, version, row), again) in page.iter().zip(rewrapped) {
                    let again = again.map_err(|f| anyhow!("{}", f.error))?;
                    update.execute(params![
                        org_n, id, again.blob, source_n, version, target_n, row
                    ])?;
                }
            }
            tx.commit()?;
        }
        Ok(())
    })?;
    Ok(started.elapsed().as_secs_f64())
}
