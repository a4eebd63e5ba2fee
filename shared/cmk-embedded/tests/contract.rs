//! The port contract suites of cmk-core, run against the embedded adapters.

use std::sync::Arc;
use std::time::Duration;

use cmk_core::error::KeyErrorKind;
use cmk_core::model::{data_key_context, DataKeyId, KeyId, KeySpec, OrgId};
use cmk_core::ports::{Kek, KeyProvider};
use cmk_core::testsuite;
use cmk_embedded::{Database, LocalKeyProvider, QueueConfig, SqliteQueue, SqliteStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_passes_the_store_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Database::open(&dir.path().join("cmk.db")).expect("db");
    testsuite::store_contract(&SqliteStore::new(db)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_queue_passes_the_queue_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Database::open(&dir.path().join("cmk.db")).expect("db");
    let visibility = Duration::from_millis(300);
    let queue = SqliteQueue::new(
        db,
        QueueConfig {
            visibility_timeout: visibility,
            max_receives: 10,
        },
    );
    testsuite::queue_contract(&queue, visibility).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_queue_dead_letters_a_message_received_too_often() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Database::open(&dir.path().join("cmk.db")).expect("db");
    let queue = SqliteQueue::new(
        db,
        QueueConfig {
            visibility_timeout: Duration::ZERO,
            max_receives: 2,
        },
    );
    use cmk_core::ports::{RewrapMessage, RewrapQueue};
    queue
        .send(&[RewrapMessage::Plan {
            org: OrgId::from_trusted("o"),
            job_id: cmk_core::model::JobId::from_trusted("j"),
            generation: 0,
            resume: None,
        }])
        .await
        .expect("send");
    for _ in 0..2 {
        assert_eq!(queue.receive(1, Duration::ZERO).await.expect("rx").len(), 1);
    }
    assert!(queue
        .receive(1, Duration::ZERO)
        .await
        .expect("rx")
        .is_empty());
    assert_eq!(queue.dead_letters().await.expect("dlq"), 1);
}

fn local_kek(org: &OrgId, id: &str) -> Kek {
    Kek {
        org: org.clone(),
        key_id: KeyId::from_trusted(id),
        spec: KeySpec::Local,
        external_id: None,
    }
}

#[tokio::test]
async fn local_key_provider_passes_the_key_provider_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = LocalKeyProvider::open(dir.path()).expect("provider");
    let org = OrgId::from_trusted("acme");
    let service = Kek {
        org: org.clone(),
        key_id: KeyId::service(),
        spec: KeySpec::ServiceManaged,
        external_id: None,
    };
    testsuite::key_provider_contract(&provider, &service, &local_kek(&org, "key_a")).await;
    testsuite::key_provider_contract(
        &provider,
        &local_kek(&org, "key_a"),
        &local_kek(&org, "key_b"),
    )
    .await;
}

#[tokio::test]
async fn a_revoked_local_key_is_access_denied_until_restored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = Arc::new(LocalKeyProvider::open(dir.path()).expect("provider"));
    let org = OrgId::from_trusted("acme");
    let kek = local_kek(&org, "key_a");
    provider.prepare(&kek).await.expect("prepare");
    let ctx = data_key_context(&org, &DataKeyId::generate());
    let dk = cmk_core::crypto::DataKey::generate();
    let wrapped = provider.wrap(&kek, &ctx, &dk).await.expect("wrap");

    provider
        .set_revoked(&org, &kek.key_id, true)
        .expect("revoke");
    let err = provider
        .unwrap(&kek, &ctx, &wrapped.blob)
        .await
        .expect_err("revoked");
    assert_eq!(err.kind, KeyErrorKind::AccessDenied);
    assert_eq!(
        provider.check(&kek).await.expect_err("check").kind,
        KeyErrorKind::AccessDenied
    );

    // Another process (the `cmk` CLI) sees the same marker file.
    let other = LocalKeyProvider::open(dir.path()).expect("provider");
    assert!(other.unwrap(&kek, &ctx, &wrapped.blob).await.is_err());

    provider
        .set_revoked(&org, &kek.key_id, false)
        .expect("restore");
    let back = provider
        .unwrap(&kek, &ctx, &wrapped.blob)
        .await
        .expect("restored");
    assert_eq!(back.expose(), dk.expose());
    // The other process notices within the recheck interval.
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(other.unwrap(&kek, &ctx, &wrapped.blob).await.is_ok());

    // A check sees another process's revocation at once, without waiting for the recheck,
    // and the data path of the checking process follows it.
    provider
        .set_revoked(&org, &kek.key_id, true)
        .expect("revoke again");
    assert_eq!(
        other.check(&kek).await.expect_err("fresh check").kind,
        KeyErrorKind::AccessDenied
    );
    assert!(other.unwrap(&kek, &ctx, &wrapped.blob).await.is_err());
}

#[cfg(unix)]
#[test]
fn key_files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    LocalKeyProvider::open(dir.path()).expect("provider");
    let mode = std::fs::metadata(dir.path().join("service.key"))
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "no access for group or others");
}
