//! A data directory written before schema 2 opens with today's code. The fixture
//! (`fixtures/data-dir-schema-1`, made by the release binary of commit 0f10e82: see its README)
//! holds org `acme` with 250 data keys under a local key `prod` and an unused local key
//! `spare`, and org `other` with 30 data keys under the service key, each with a sample
//! ciphertext. Opening it migrates the database once, after which every data key keeps its
//! key, and every sample still decrypts; a re-encryption then runs on the migrated rows, and
//! the database says it holds schema 2.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cmk_core::cache::DataKeyCache;
use cmk_core::engine::{EngineConfig, RewrapEngine};
use cmk_core::model::{EncryptionContext, JobState, KeyId, OrgId};
use cmk_core::ports::{DataKeyStore, OrgStore, RewrapQueue};
use cmk_core::service::ServiceConfig;
use cmk_core::Cmk;
use cmk_embedded::{
    Database, LocalKeyProvider, QueueConfig, SampleStore, SqliteQueue, SqliteStore,
};

const PROD: &str = "key_5b487a27ca744e749e5026fab4af5bd7";
const SPARE: &str = "key_2cfa325f5c3d431c9f7f4ebca443086b";

/// Copies the fixture, with key files owner-only as the service writes them (git keeps no
/// permissions).
fn copy_fixture(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("dir");
    for entry in std::fs::read_dir(from).expect("fixture") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_fixture(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600))
                    .expect("chmod");
            }
        }
    }
}

fn schema_version(path: &Path) -> i64 {
    rusqlite::Connection::open(path)
        .expect("open")
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("user_version")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_of_schema_1_is_migrated_on_open_and_keeps_every_data_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data-dir-schema-1");
    copy_fixture(&fixture, dir.path());
    let db_path = dir.path().join("cmk.db");
    assert_eq!(schema_version(&db_path), 0, "the fixture predates versions");

    // Opening twice: the first open migrates, the second finds nothing to do.
    drop(Database::open(&db_path).expect("open and migrate"));
    let db = Database::open(&db_path).expect("open again");
    assert_eq!(schema_version(&db_path), cmk_embedded::SCHEMA_VERSION);

    let store = Arc::new(SqliteStore::new(Arc::clone(&db)));
    let queue = Arc::new(SqliteQueue::new(Arc::clone(&db), QueueConfig::default()));
    let keys = Arc::new(LocalKeyProvider::open(&dir.path().join("keys")).expect("keys"));
    let cmk = Cmk::new(
        Arc::clone(&store),
        queue.clone() as Arc<dyn RewrapQueue>,
        keys,
        DataKeyCache::disabled(),
        ServiceConfig::default(),
    );
    let (acme, other) = (OrgId::from_trusted("acme"), OrgId::from_trusted("other"));

    // Every data key is where it was, and the counts agree with the rows.
    for (org, key, n) in [(&acme, PROD, 250), (&other, "service", 30)] {
        let key = KeyId::from_trusted(key);
        let rows = store
            .list_data_keys(org, &key, 0, None, None, 10_000, None)
            .await
            .expect("rows");
        assert_eq!(rows.len(), n, "{org}/{key}");
        assert!(rows.iter().all(|r| r.key_id == key));
        let one = store.get_data_key(org, &rows[0].id).await.expect("get");
        assert_eq!(one.map(|r| r.wrapped), Some(rows[0].wrapped.clone()));
        let counts = store.load_org(org).await.expect("snapshot").data_key_counts;
        assert_eq!(counts.get(&key).copied(), Some(n as u64), "{org}/{key}");
    }

    // Every sample decrypts.
    let samples = SampleStore::open(Arc::clone(&db)).expect("samples");
    let mut ctx = EncryptionContext::new();
    ctx.insert("purpose".into(), "cmk-seed-sample".into());
    for (org, n) in [(&acme, 250), (&other, 30)] {
        let page = samples.page(org, None, 1_000).await.expect("samples");
        assert_eq!(page.len(), n);
        for s in page {
            let back = cmk
                .decrypt(org, &s.ciphertext, &ctx)
                .await
                .expect("decrypts");
            assert_eq!(back.as_slice(), s.plaintext.as_slice());
        }
    }

    // A re-encryption over the migrated rows: prod's data keys move to spare.
    let spare = KeyId::from_trusted(SPARE);
    cmk.set_default("tester", &acme, &spare)
        .await
        .expect("default");
    cmk.disable("tester", &acme, &KeyId::from_trusted(PROD), &spare)
        .await
        .expect("disable");
    let engine = RewrapEngine::new(cmk.clone(), EngineConfig::default());
    for _ in 0..200 {
        let job = cmk.reencryption(&acme).await.expect("job").expect("a job");
        if job.state != JobState::Running {
            assert_eq!(
                (job.state, job.done, job.failed),
                (JobState::Completed, 250, 0)
            );
            break;
        }
        for delivery in queue
            .receive(10, Duration::from_millis(50))
            .await
            .expect("receive")
        {
            engine.handle(&delivery.body).await.expect("handled");
            queue.ack(&delivery.receipt).await.expect("ack");
        }
    }
    let job = cmk.reencryption(&acme).await.expect("job").expect("a job");
    assert_eq!(job.state, JobState::Completed, "{job:?}");
    for s in samples.page(&acme, None, 1_000).await.expect("samples") {
        let back = cmk
            .decrypt(&acme, &s.ciphertext, &ctx)
            .await
            .expect("decrypts");
        assert_eq!(back.as_slice(), s.plaintext.as_slice());
    }
}

#[tokio::test]
async fn a_database_of_a_newer_schema_is_refused_not_misread() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cmk.db");
    drop(Database::open(&path).expect("create"));
    rusqlite::Connection::open(&path)
        .expect("open")
        .pragma_update(None, "user_version", cmk_embedded::SCHEMA_VERSION + 1)
        .expect("bump");
    let err = Database::open(&path).expect_err("refused");
    assert!(err.to_string().contains("newer release"), "{err}");
}
