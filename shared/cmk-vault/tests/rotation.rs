//! A `rotate` job through the real engine, store and queue moves its data keys with transit
//! `rewrap` in batches: one request per 200 data keys, the plaintext never leaving the server
//! (a decrypt and an encrypt per batch would be twice the requests). Every data key is then at
//! the key's latest version.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use cmk_core::cache::DataKeyCache;
use cmk_core::engine::{EngineConfig, RewrapEngine};
use cmk_core::model::{JobId, JobState, KeyType, OrgId};
use cmk_core::ports::{DataKeyStore, RewrapProgress};
use cmk_core::providers::ProviderRouter;
use cmk_core::service::{NewKeySpec, Rewrap, ServiceConfig};
use cmk_core::vault::VaultCredential;
use cmk_core::worker::{run_worker, WorkerConfig};
use cmk_core::Cmk;
use cmk_embedded::QueueConfig;
use cmk_vault::testing::BaoDevServer;
use cmk_vault::{VaultSettings, VaultTransitProvider, BATCH_LIMIT};

async fn completed(store: &cmk_embedded::SqliteStore, org: &OrgId, job: &JobId) -> u64 {
    for _ in 0..3000 {
        let j = store.get_job(org, job).await.unwrap().unwrap();
        if j.state != JobState::Running {
            assert_eq!(j.state, JobState::Completed, "{j:?}");
            return j.done;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("job {job} still running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotate_job_rewraps_in_batches_inside_the_server() {
    let Some(bao) = BaoDevServer::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (store, queue, local) = cmk_embedded::open(dir.path(), QueueConfig::default()).unwrap();
    let (store, local) = (Arc::new(store), Arc::new(local));
    let vault = Arc::new(
        VaultTransitProvider::new(
            local.clone(),
            VaultSettings {
                allow_private_addresses: true,
                ..VaultSettings::default()
            },
        )
        .unwrap(),
    );
    let keys = ProviderRouter::new(local).route(KeyType::VaultTransit, vault.clone());
    let cmk = Cmk::new(
        store.clone(),
        Arc::new(queue),
        Arc::new(keys),
        DataKeyCache::disabled(),
        ServiceConfig {
            allow_vault_keys: true,
            ..ServiceConfig::default()
        },
    );
    let worker = tokio::spawn(run_worker(
        // One page per batch message: the rotation's requests are its page's chunks.
        Arc::new(RewrapEngine::new(
            cmk.clone(),
            EngineConfig {
                batch_size: 1_000,
                ..EngineConfig::default()
            },
        )),
        WorkerConfig {
            poll_wait: Duration::from_millis(50),
            ..WorkerConfig::default()
        },
        std::future::pending::<()>(),
    ));

    let org = OrgId::from_trusted("acme");
    let n = 2 * BATCH_LIMIT + 100;
    for _ in 0..n {
        cmk.create_data_key(&org).await.unwrap();
    }
    let (role_id, secret_id) = bao.customer_key("orders").await;
    let (key, adopt) = cmk
        .add_key(
            "alice",
            &org,
            "orders",
            NewKeySpec::VaultTransit {
                address: bao.address.clone(),
                mount: None,
                key_name: "orders".into(),
                namespace: None,
                credential: VaultCredential::AppRole { role_id, secret_id },
                rewrap_rate_limit: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(completed(&store, &org, &adopt.unwrap().id).await, n as u64);

    bao.rotate("orders").await;
    let before = vault.requests();
    let Rewrap::Started(job) = cmk.rewrap_key("alice", &org, &key.record.id).await.unwrap() else {
        panic!("a transit key starts a rotate job");
    };
    assert_eq!(completed(&store, &org, &job.id).await, n as u64);
    assert_eq!(
        vault.requests() - before,
        n.div_ceil(BATCH_LIMIT) as u64,
        "one rewrap request per batch of data keys"
    );
    let records = store
        .list_data_keys(&org, &key.record.id, 0, None, None, n + 1, None)
        .await
        .unwrap();
    assert_eq!(records.len(), n);
    assert!(
        records.iter().all(|r| r.wrapped.starts_with(b"vault:v2:")),
        "every data key is at the latest version"
    );
    worker.abort();
}
