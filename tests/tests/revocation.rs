//! Revocation with a `local` key: decrypt answers `key_unavailable` naming the key, health shows
//! it, a job that needs the key fails with per-data-key errors, and completes after access
//! returns and an admin retries.

mod common;

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
