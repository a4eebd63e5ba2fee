//! Revocation with a `local` key: decrypt answers `key_unavailable` naming the key, health shows
//! it, a job that needs the key fails with per-data-key errors, and completes after access
//! returns and an admin retries. Health-check runs that see one revocation at once record it once.

use cmk_tests as common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::faults::{with_faults, StoreFaults};

use cmk_core::model::{KeyId, OrgId};
use common::TestApp;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_fails_clearly_and_recovers_after_restore_and_retry() {
    let app = TestApp::start().await;
    let org = "revoke";
    let samples = app.data_with_samples(org, 60).await;
    let k1 = app.add_local_key(org, "customer").await;
    assert_eq!(app.wait_job(org).await["state"], "completed");

    // The customer revokes access.
    app.keys
        .set_revoked(
            &OrgId::from_trusted(org),
            &KeyId::from_trusted(k1.as_str()),
            true,
        )
        .expect("revoke");
    let (status, body) = app
        .service(
            "POST",
            &format!("/v1/orgs/{org}/decrypt"),
            org,
            Some(json!({"ciphertext": samples[0].0, "context": {"env": "prod"}})),
        )
        .await;
    assert_eq!(status, 424, "{body}");
    assert_eq!(body["code"], "key_unavailable");
    assert_eq!(body["key_id"], k1.as_str(), "the answer names the key");
    assert_eq!(body["reason"], "access_denied");
    // New data keys cannot be created under a revoked default either.
    let (status, body) = app
        .service(
            "POST",
            &format!("/v1/orgs/{org}/data-keys"),
            org,
            Some(json!({})),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (424, Some("key_unavailable")),
        "{body}"
    );

    // The health check reports it.
    let (status, body) = app
        .admin(
            "POST",
            &format!("/v1/orgs/{org}/keys/{k1}/check"),
            org,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["key"]["health"]["status"], "access_denied");
    assert!(body["key"]["health"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("revoked"));

    // Disable-all needs the revoked key: the job fails with per-data-key errors.
    let (status, body) = app
        .admin(
            "POST",
            &format!("/v1/orgs/{org}/keys/disable-all"),
            org,
            None,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let job = app.wait_job(org).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["failed"], 60);
    assert_eq!(job["done"], 0);
    let errors = job["errors"].as_array().expect("errors");
    assert!(!errors.is_empty());
    assert_eq!(errors[0]["reason"], "access_denied");
    assert_eq!(errors[0]["key_id"], k1.as_str());
    assert!(errors[0]["data_key_id"].is_string());
    // Every data key is still wrapped by the (revoked, not lost) key; nothing moved.
    let listing = app.keys(org).await;
    assert_eq!(listing["keys"][1]["state"], "reencrypting");
    assert_eq!(listing["keys"][1]["busy"], true);
    assert_eq!(listing["keys"][1]["data_keys"], 60);

    // Access returns; an admin retries; the job completes with exact counts.
    app.keys
        .set_revoked(
            &OrgId::from_trusted(org),
            &KeyId::from_trusted(k1.as_str()),
            false,
        )
        .expect("restore");
    let (status, body) = app
        .admin(
            "POST",
            &format!("/v1/orgs/{org}/reencryption/retry"),
            org,
            None,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["reencryption"]["state"], "running");
    let job = app.wait_job(org).await;
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(
        (
            job["done"].as_u64(),
            job["failed"].as_u64(),
            job["total"].as_u64()
        ),
        (Some(60), Some(0), Some(60))
    );
    assert_eq!(app.keys(org).await["keys"][1]["state"], "disabled");
    app.assert_decrypts(org, &samples).await;
    app.assert_invariants(org).await;

    let (_, audit) = app
        .admin("GET", &format!("/v1/orgs/{org}/audit?limit=200"), org, None)
        .await;
    let actions: Vec<&str> = audit["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["action"].as_str().unwrap_or(""))
        .collect();
    assert!(actions.contains(&"reencryption.failed"));
    assert!(actions.contains(&"reencryption.retried"));
    assert!(actions.contains(&"key.check"));
}

/// Decrypts `ciphertext` as a service of `org` and returns the status.
async fn decrypt_status(app: &TestApp, org: &str, ciphertext: &str) -> u16 {
    app.service(
        "POST",
        &format!("/v1/orgs/{org}/decrypt"),
        org,
        Some(json!({"ciphertext": ciphertext, "context": {"env": "prod"}})),
    )
    .await
    .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failed_call_wipes_a_revoked_keys_cached_data_keys_on_that_instance() {
    // A cache that would otherwise serve the revoked key's data keys for an hour.
    let app = TestApp::with(common::Options {
        cache_ttl: std::time::Duration::from_secs(3600),
        ..common::Options::default()
    })
    .await;
    let org = "killswitch";
    let other = "bystander";
    let k1 = app.add_local_key(org, "customer").await;
    app.add_local_key(other, "theirs").await;
    let samples = app.data_with_samples(org, 4).await;
    let theirs = app.data_with_samples(other, 2).await;
    // Warm the cache with the first two data keys of the org and the bystander's.
    for (ct, _) in samples[..2].iter() {
        assert_eq!(decrypt_status(&app, org, ct).await, 200);
    }
    for (ct, _) in &theirs {
        assert_eq!(decrypt_status(&app, other, ct).await, 200);
    }

    let revoke = |revoked| {
        app.keys
            .set_revoked(
                &OrgId::from_trusted(org),
                &KeyId::from_trusted(k1.as_str()),
                revoked,
            )
            .expect("revoke or restore")
    };
    // The third sample's data key is not in memory (creating it had cached it).
    let third = cmk_core::crypto::parse(&samples[2].0)
        .expect("a ciphertext")
        .data_key_id;
    app.cmk.cache().forget(&OrgId::from_trusted(org), &[third]);
    revoke(true);
    // A cached data key is still served from memory (the TTL is the bound when nothing fails)...
    assert_eq!(decrypt_status(&app, org, &samples[0].0).await, 200);
    // ...until one call through the key fails: an uncached data key.
    assert_eq!(decrypt_status(&app, org, &samples[2].0).await, 424);
    for (ct, _) in samples[..2].iter() {
        assert_eq!(
            decrypt_status(&app, org, ct).await,
            424,
            "the revocation bites at once"
        );
    }
    // Another org's cached keys are untouched.
    for (ct, _) in &theirs {
        assert_eq!(decrypt_status(&app, other, ct).await, 200);
    }

    // The same after a failed key check, with a freshly warmed cache.
    revoke(false);
    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    assert_eq!(decrypt_status(&app, org, &samples[3].0).await, 200);
    revoke(true);
    let (status, body) = app
        .admin(
            "POST",
            &format!("/v1/orgs/{org}/keys/{k1}/check"),
            org,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["key"]["health"]["status"], "access_denied");
    assert_eq!(decrypt_status(&app, org, &samples[3].0).await, 424);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_under_load_writes_its_health_once_per_interval_not_once_per_call() {
    let faults = Arc::new(StoreFaults::default());
    let f = Arc::clone(&faults);
    let app = TestApp::with(common::Options {
        wrap_store: Box::new(move |store| with_faults(store, f)),
        ..common::Options::default()
    })
    .await;
    let org = "debounce";
    let k1 = app.add_local_key(org, "customer").await;
    let samples = app.data_with_samples(org, 8).await;
    app.keys
        .set_revoked(
            &OrgId::from_trusted(org),
            &KeyId::from_trusted(k1.as_str()),
            true,
        )
        .expect("revoke");
    let before = faults.health_writes.load(Ordering::SeqCst);
    // 8 callers, 25 failing decrypts each.
    let calls = futures::future::join_all(samples.iter().map(|(ct, _)| async {
        let mut statuses = Vec::new();
        for _ in 0..25 {
            statuses.push(decrypt_status(&app, org, ct).await);
        }
        statuses
    }))
    .await;
    assert!(calls.iter().flatten().all(|s| *s == 424));
    // The write is spawned after the answer: give it a moment to land.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let writes = faults.health_writes.load(Ordering::SeqCst) - before;
    assert_eq!(
        writes, 1,
        "200 failed calls, one health write in the interval"
    );
    let listing = app.keys(org).await;
    assert_eq!(listing["keys"][1]["health"]["status"], "access_denied");
}

/// A change of a key's health is audited and counted once however many observers see it: four
/// health-check runs at once after a revocation report one change between them and write one
/// `key.health_changed` (the store hands back the health each write replaced).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_health_checks_record_a_change_once() {
    let app = TestApp::start().await;
    let org = OrgId::from_trusted("observers");
    let k1 = app.add_local_key(org.as_str(), "customer").await;
    app.keys
        .set_revoked(&org, &KeyId::from_trusted(k1.as_str()), true)
        .expect("revoke");
    let config = cmk_core::health::HealthCheckConfig {
        interval: std::time::Duration::ZERO,
        ..Default::default()
    };
    let runs = futures::future::join_all((0..4).map(|_| app.cmk.check_due_keys(&config))).await;
    let runs: Vec<_> = runs.into_iter().map(|r| r.expect("a run")).collect();
    assert_eq!(runs.iter().map(|r| r.checked).sum::<usize>(), 4, "{runs:?}");
    assert_eq!(runs.iter().map(|r| r.changed).sum::<usize>(), 1, "{runs:?}");
    let (events, _) = app.cmk.audit(&org, 100, None).await.expect("audit");
    let changes: Vec<_> = events
        .iter()
        .filter(|e| e.action == "key.health_changed")
        .collect();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(
        changes[0]
            .detail
            .as_deref()
            .map(|d| d.starts_with("ok -> access_denied")),
        Some(true)
    );
}
