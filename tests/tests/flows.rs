//! The seed's flows over HTTP on the embedded backends: first key adopted, a second key set as
//! default, a key disabled with a re-encryption key, all keys disabled. After each re-encryption
//! every sample ciphertext still decrypts to the same bytes.

use cmk_tests as common;

use common::TestApp;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_flows_keep_every_ciphertext_readable() {
    let app = TestApp::start().await;
    let org = "acme";

    // Before any CMK: the service-managed key is the default and wraps every data key.
    let mut samples = app.data_with_samples(org, 120).await;
    let listing = app.keys(org).await;
    assert_eq!(listing["default_key_id"], "service");
    assert_eq!(listing["keys"][0]["type"], "service-managed");
    assert_eq!(listing["keys"][0]["data_keys"], 120);
    assert!(listing["reencryption"].is_null());

    // Adding the first CMK makes it the default and re-encrypts the service key's data keys.
    let (status, body) = app
        .admin(
            "POST",
            "/v1/orgs/acme/keys",
            org,
            Some(json!({"name": "prod", "type": "local"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let prod = body["key"]["id"].as_str().expect("id").to_owned();
    assert_eq!(body["key"]["default"], true);
    assert_eq!(body["key"]["type"], "local");
    assert_eq!(body["reencryption"]["kind"], "adopt");
    assert_eq!(body["reencryption"]["total"], 120);
    let job = app.wait_job(org).await;
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(
        (job["done"].as_u64(), job["total"].as_u64()),
        (Some(120), Some(120))
    );
    let listing = app.keys(org).await;
    assert_eq!(listing["default_key_id"], prod.as_str());
    assert_eq!(listing["keys"][0]["data_keys"], 0);
    assert_eq!(listing["keys"][1]["data_keys"], 120);
    app.assert_decrypts(org, &samples).await;
    app.assert_invariants(org).await;

    // A second key is added without a job, then set as default.
    let (status, body) = app
        .admin(
            "POST",
            "/v1/orgs/acme/keys",
            org,
            Some(json!({"name": "stage", "type": "local"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert!(body["reencryption"].is_null());
    assert_eq!(body["key"]["default"], false);
    let stage = body["key"]["id"].as_str().expect("id").to_owned();
    samples.extend(app.data_with_samples(org, 20).await);
    let (status, body) = app
        .admin(
            "POST",
            &format!("/v1/orgs/acme/keys/{stage}/default"),
            org,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["key"]["default"], true);
    samples.extend(app.data_with_samples(org, 20).await);
    let listing = app.keys(org).await;
    assert_eq!(
        listing["keys"][1]["data_keys"], 140,
        "prod wraps the earlier ones"
    );
    assert_eq!(
        listing["keys"][2]["data_keys"], 20,
        "new data keys go to the default"
    );

    // Disabling prod moves its data keys to stage, then prod is disabled.
    let (status, body) = app
        .admin(
            "POST",
            &format!("/v1/orgs/acme/keys/{prod}/disable"),
            org,
            Some(json!({"reencrypt_to": stage})),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["reencryption"]["kind"], "disable");
    assert_eq!(body["reencryption"]["total"], 140);
    let job = app.wait_job(org).await;
    assert_eq!(job["state"], "completed", "{job}");
    let listing = app.keys(org).await;
    assert_eq!(listing["keys"][1]["state"], "disabled");
    assert_eq!(listing["keys"][1]["data_keys"], 0);
    assert_eq!(listing["keys"][2]["data_keys"], 160);
    app.assert_decrypts(org, &samples).await;
    app.assert_invariants(org).await;

    // Disable all: the service key is the default at once and adopts everything.
    app.add_local_key(org, "third").await;
    let (status, body) = app
        .admin("POST", "/v1/orgs/acme/keys/disable-all", org, None)
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["reencryption"]["kind"], "disable_all");
    assert_eq!(app.keys(org).await["default_key_id"], "service");
    let job = app.wait_job(org).await;
    assert_eq!(job["state"], "completed", "{job}");
    let listing = app.keys(org).await;
    for k in listing["keys"].as_array().expect("keys").iter().skip(1) {
        assert_eq!(k["state"], "disabled", "{k}");
    }
    assert_eq!(listing["keys"][0]["data_keys"], 160);
    app.assert_decrypts(org, &samples).await;
    app.assert_invariants(org).await;

    // The audit trail tells the story, newest first.
    let (status, body) = app
        .admin("GET", "/v1/orgs/acme/audit?limit=100", org, None)
        .await;
    assert_eq!(status, 200, "{body}");
    let actions: Vec<&str> = body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["action"].as_str().unwrap_or(""))
        .collect();
    for expected in [
        "key.added",
        "key.default_set",
        "key.disable_requested",
        "keys.disable_all_requested",
        "key.disabled",
        "reencryption.started",
        "reencryption.completed",
    ] {
        assert!(
            actions.contains(&expected),
            "audit has {expected}: {actions:?}"
        );
    }

    // Pages of 3 chained by next_cursor read the same trail, each event once.
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/orgs/acme/audit?limit=3&cursor={c}"),
            None => "/v1/orgs/acme/audit?limit=3".to_owned(),
        };
        let (status, page) = app.admin("GET", &path, org, None).await;
        assert_eq!(status, 200, "{page}");
        let events = page["events"].as_array().expect("events");
        assert!(events.len() <= 3);
        paged.extend(events.iter().map(|e| e["id"].clone()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let all: Vec<Value> = body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["id"].clone())
        .collect();
    assert_eq!(paged, all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_key_in_an_empty_org_completes_at_once() {
    let app = TestApp::start().await;
    let key = app.add_local_key("empty", "only").await;
    let job = app.wait_job("empty").await;
    assert_eq!(job["state"], "completed");
    assert_eq!(job["total"], 0);
    let listing = app.keys("empty").await;
    assert_eq!(listing["default_key_id"], key.as_str());
    // New data keys go straight to the CMK.
    let samples = app.data_with_samples("empty", 3).await;
    assert_eq!(app.keys("empty").await["keys"][1]["data_keys"], 3);
    app.assert_decrypts("empty", &samples).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_leaves_every_data_key_readable_and_sources_usable() {
    let mut app = TestApp::with(common::Options {
        worker: false,
        ..common::Options::default()
    })
    .await;
    let org = "cancel";
    let a = app.add_local_key(org, "a").await;
    // No worker yet: run the adopt job by hand to completion.
    app.start_worker();
    app.wait_job(org).await;
    let b = app.add_local_key(org, "b").await;
    let samples = app.data_with_samples(org, 30).await; // under a
    app.kill_worker();
    let (status, body) = app
        .admin(
            "POST",
            &format!("/v1/orgs/{org}/keys/{b}/default"),
            org,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let (status, body) = app
        .admin(
            "POST",
            &format!("/v1/orgs/{org}/keys/{a}/disable"),
            org,
            Some(json!({"reencrypt_to": b})),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    // The key is busy while the job is unfinished.
    let (status, body) = app
        .admin(
            "POST",
            &format!("/v1/orgs/{org}/keys/{a}/default"),
            org,
            None,
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("key_busy")),
        "{body}"
    );

    let (status, body) = app
        .admin(
            "POST",
            &format!("/v1/orgs/{org}/reencryption/cancel"),
            org,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reencryption"]["state"], "cancelled");
    let listing = app.keys(org).await;
    let key_a = listing["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["id"] == a.as_str())
        .expect("a")
        .clone();
    assert_eq!(
        key_a["state"], "active",
        "a cancelled source that still wraps data keys is active again"
    );
    assert_eq!(key_a["default"], false);
    assert_eq!(key_a["busy"], false);
    app.assert_decrypts(org, &samples).await;
    app.assert_invariants(org).await;

    // The worker meets the cancelled job's messages and changes nothing.
    app.start_worker();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(app.keys(org).await["keys"][1]["data_keys"], 30);
    let (status, body) = app
        .admin(
            "POST",
            &format!("/v1/orgs/{org}/reencryption/cancel"),
            org,
            None,
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("no_reencryption")),
        "{body}"
    );
}
