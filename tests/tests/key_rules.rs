//! Every key rule of ARCHITECTURE.md and every 409/422 case of API.md, over HTTP: the status AND
//! the problem `code` of each refusal, and that a refused request changed nothing an admin can
//! observe (the keys listing and the audit trail are identical before and after).
//!
//! It is long because it is the rule list itself: one case per rule and refusal, on one fixture.

use cmk_tests as common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cmk_core::crypto::DataKey;
use cmk_core::error::{KeyError, KeyErrorKind};
use cmk_core::model::{EncryptionContext, KeyId, OrgId, Role};
use cmk_core::ports::{Kek, KeyProvider, RewrapQueue, Wrapped};
use common::{token, Options, TestApp};
use serde_json::{json, Value};

/// No worker: a job stays `running` until [`pump`] runs it.
fn manual() -> Options {
    Options {
        worker: false,
        ..Options::default()
    }
}

/// Handles every queued message until the queue is empty (the jobs run to their end).
async fn pump(app: &TestApp) {
    loop {
        let deliveries = app
            .queue
            .receive(10, Duration::ZERO)
            .await
            .expect("receive");
        if deliveries.is_empty() {
            return;
        }
        for d in deliveries {
            if app.engine.handle(&d.body).await.is_ok() {
                app.queue.ack(&d.receipt).await.expect("ack");
            }
        }
    }
}

/// Sends an admin request that must be refused with `status` and `code`, and checks that the
/// keys listing and the audit trail are the same afterwards. Returns the problem body.
async fn refused(
    app: &TestApp,
    org: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
    status: u16,
    code: &str,
) -> Value {
    let before = app.observe(org).await;
    let raw = app
        .raw(
            method,
            path,
            Some(&token(org, Role::Admin)),
            body.as_ref().map(|_| "application/json"),
            body.map(|b| b.to_string().into_bytes()),
        )
        .await;
    let what = format!("{method} {path}");
    raw.assert_problem(status, code, &what);
    assert!(
        raw.body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{what}: the problem explains itself: {}",
        raw.body
    );
    assert_eq!(
        app.observe(org).await,
        before,
        "{what} was refused ({code}) and changed neither the keys nor the audit"
    );
    raw.body
}

/// The key `id` of a keys listing.
fn key_in(listing: &Value, id: &str) -> Value {
    listing["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["id"] == id)
        .unwrap_or_else(|| panic!("key {id} is listed: {listing}"))
        .clone()
}

/// The audit actions of an org, newest first.
async fn actions(app: &TestApp, org: &str) -> Vec<String> {
    let (status, body) = app
        .admin("GET", &format!("/v1/orgs/{org}/audit?limit=500"), org, None)
        .await;
    assert_eq!(status, 200, "{body}");
    body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["action"].as_str().unwrap_or("").to_owned())
        .collect()
}

fn count(actions: &[String], action: &str) -> usize {
    actions.iter().filter(|a| *a == action).count()
}

async fn set_default(app: &TestApp, org: &str, key: &str) {
    let (status, body) = app
        .admin(
            "POST",
            &format!("/v1/orgs/{org}/keys/{key}/default"),
            org,
            None,
        )
        .await;
    assert_eq!(status, 200, "set {key} as default: {body}");
}

async fn disable(app: &TestApp, org: &str, key: &str, to: &str) -> Value {
    let (status, body) = app
        .admin(
            "POST",
            &format!("/v1/orgs/{org}/keys/{key}/disable"),
            org,
            Some(json!({ "reencrypt_to": to })),
        )
        .await;
    assert_eq!(status, 202, "disable {key}: {body}");
    body["reencryption"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_key_becomes_default_and_adopts_a_second_key_does_not() {
    // GIVEN an org whose data keys are all under the service-managed key, and no worker
    let app = TestApp::with(manual()).await;
    let org = "adopt";
    let samples = app.data_with_samples(org, 5).await;

    // WHEN the first CMK is added
    let (status, body) = app
        .admin(
            "POST",
            &format!("/v1/orgs/{org}/keys"),
            org,
            Some(json!({"name": "first", "type": "local"})),
        )
        .await;

    // THEN it is the default at once, and an adopt job moves the service key's data keys to it
    assert_eq!(status, 201, "{body}");
    let k1 = body["key"]["id"].as_str().expect("id").to_owned();
    assert_eq!(body["key"]["default"], true, "the first CMK is the default");
    assert_eq!(body["key"]["state"], "active");
    assert_eq!(
        body["key"]["busy"], true,
        "the target of the running job is busy"
    );
    let job = &body["reencryption"];
    assert_eq!(job["kind"], "adopt", "{job}");
    assert_eq!(job["state"], "running", "{job}");
    assert_eq!(job["source_key_ids"], json!(["service"]), "{job}");
    assert_eq!(job["target_key_id"], k1.as_str(), "{job}");
    assert_eq!(job["total"], 5, "{job}");
    let job_id = job["id"].clone();
    let listing = app.keys(org).await;
    assert_eq!(listing["default_key_id"], k1.as_str());
    assert_eq!(listing["reencryption"]["id"], job_id);
    assert_eq!(key_in(&listing, "service")["default"], false);

    // WHEN a second key is added (while the adopt job still runs: there is an active CMK)
    let (status, body) = app
        .admin(
            "POST",
            &format!("/v1/orgs/{org}/keys"),
            org,
            Some(json!({"name": "second", "type": "local"})),
        )
        .await;

    // THEN it is a plain add: not the default, no job
    assert_eq!(status, 201, "{body}");
    let k2 = body["key"]["id"].as_str().expect("id").to_owned();
    assert!(
        body["reencryption"].is_null(),
        "a second key starts no job: {body}"
    );
    assert_eq!(body["key"]["default"], false);
    assert_eq!(body["key"]["busy"], false);
    assert_eq!(body["key"]["data_keys"], 0);
    let listing = app.keys(org).await;
    assert_eq!(
        listing["default_key_id"],
        k1.as_str(),
        "the default is kept"
    );
    assert_eq!(
        listing["reencryption"]["id"], job_id,
        "still the adopt job only"
    );
    let audit = actions(&app, org).await;
    assert_eq!(count(&audit, "key.added"), 2, "{audit:?}");
    assert_eq!(count(&audit, "key.default_set"), 1, "{audit:?}");
    assert_eq!(count(&audit, "reencryption.started"), 1, "{audit:?}");

    // AND the adopt job ends with every data key under the first key
    pump(&app).await;
    let listing = app.keys(org).await;
    assert_eq!(listing["reencryption"]["state"], "completed", "{listing}");
    assert_eq!(key_in(&listing, &k1)["data_keys"], 5);
    assert_eq!(key_in(&listing, &k2)["data_keys"], 0);
    assert_eq!(key_in(&listing, "service")["data_keys"], 0);
    app.assert_decrypts(org, &samples).await;
    app.assert_invariants(org).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_is_taken_in_its_org_whatever_the_case_and_free_in_another_org() {
    // GIVEN an org with a key named "prod"
    let app = TestApp::start().await;
    let org = "names";
    app.add_local_key(org, "prod").await;
    app.wait_job(org).await;
    let path = format!("/v1/orgs/{org}/keys");

    // WHEN the same name is added again, in any case or with surrounding spaces
    // THEN 409 name_taken, and nothing changed
    for name in ["prod", "PROD", "Prod", "  prod  "] {
        let body = refused(
            &app,
            org,
            "POST",
            &path,
            Some(json!({"name": name, "type": "local"})),
            409,
            "name_taken",
        )
        .await;
        assert!(
            body["detail"].as_str().unwrap_or("").contains(name.trim()),
            "the problem names the name: {body}"
        );
    }

    // AND the case is folded beyond ASCII, as the store folds it
    app.add_local_key(org, "clé").await;
    for name in ["CLÉ", "Clé"] {
        refused(
            &app,
            org,
            "POST",
            &path,
            Some(json!({"name": name, "type": "local"})),
            409,
            "name_taken",
        )
        .await;
    }

    // AND the service-managed key's name is taken in every org too (it is listed with it)
    let service_name = key_in(&app.keys(org).await, "service")["name"]
        .as_str()
        .expect("name")
        .to_owned();
    for name in [service_name.clone(), service_name.to_uppercase()] {
        refused(
            &app,
            org,
            "POST",
            &path,
            Some(json!({"name": name, "type": "local"})),
            409,
            "name_taken",
        )
        .await;
    }

    // AND another org may use the name
    let other = app.add_local_key("names-other", "prod").await;
    assert!(other.starts_with("key_"));
    app.add_local_key("names-other", "CLÉ").await;
    let listing = app.keys(org).await;
    assert_eq!(listing["keys"].as_array().expect("keys").len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_org_has_at_most_ten_keys_in_use_and_disable_all_handles_them_all() {
    // GIVEN an org with the most customer managed keys in use, and data under them
    let app = TestApp::start().await;
    let org = "limit";
    let samples = app.data_with_samples(org, 40).await;
    let mut ids = Vec::new();
    for i in 0..cmk_core::rules::MAX_KEYS_IN_USE {
        ids.push(app.add_local_key(org, &format!("k{i}")).await);
    }
    app.wait_job(org).await;

    // WHEN one more is added THEN 409 key_limit_reached with the limit, and nothing changed
    let path = format!("/v1/orgs/{org}/keys");
    let body = refused(
        &app,
        org,
        "POST",
        &path,
        Some(json!({"name": "one too many", "type": "local"})),
        409,
        "key_limit_reached",
    )
    .await;
    assert_eq!(body["limit"], cmk_core::rules::MAX_KEYS_IN_USE);

    // WHEN one is disabled THEN a key can be added again (disabled keys do not count)
    disable(&app, org, &ids[1], &ids[0]).await;
    app.wait_job(org).await;
    ids.remove(1);
    ids.push(app.add_local_key(org, "replacement").await);

    // AND disable all takes every key in use in one job, which completes
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
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(
        job["source_key_ids"].as_array().map(Vec::len),
        Some(ids.len())
    );
    let listing = app.keys(org).await;
    for id in &ids {
        assert_eq!(key_in(&listing, id)["state"], "disabled");
    }
    app.assert_decrypts(org, &samples).await;
    app.assert_invariants(org).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_racing_to_add_one_name_leave_one_key_and_no_stray_key_material() {
    // GIVEN an org with a key, and 8 admins adding another with the same name at once
    let app = Arc::new(TestApp::start().await);
    let org = "race-add";
    app.add_local_key(org, "first").await;
    app.wait_job(org).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let app = Arc::clone(&app);
        tasks.push(tokio::spawn(async move {
            app.admin(
                "POST",
                &format!("/v1/orgs/{org}/keys"),
                org,
                Some(json!({"name": "twin", "type": "local"})),
            )
            .await
        }));
    }
    let mut added = 0;
    for t in tasks {
        let (status, body) = t.await.expect("task");
        match status {
            201 => added += 1,
            409 => assert_eq!(body["code"], "name_taken", "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    // THEN exactly one was added, and only the two stored keys have key material on disk
    assert_eq!(added, 1);
    assert_eq!(
        app.keys(org).await["keys"].as_array().map(Vec::len),
        Some(3)
    );
    let files = std::fs::read_dir(app.dir.path().join("keys").join(org))
        .expect("the org's key directory")
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "key"))
        .count();
    assert_eq!(files, 2, "the losers' prepared keys were discarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_key_cannot_be_disabled_nor_made_default_again() {
    let app = TestApp::start().await;
    let org = "defaults";

    // GIVEN the service key is the default (no CMK yet)
    // THEN setting it as default again is key_is_default
    refused(
        &app,
        org,
        "POST",
        &format!("/v1/orgs/{org}/keys/service/default"),
        None,
        409,
        "key_is_default",
    )
    .await;

    // GIVEN k1 is the default and k2 is another active key
    let k1 = app.add_local_key(org, "k1").await;
    let k2 = app.add_local_key(org, "k2").await;
    assert_eq!(app.wait_job(org).await["state"], "completed");

    // WHEN the default is disabled, or set as default again
    // THEN 409 key_is_default, and nothing changed
    refused(
        &app,
        org,
        "POST",
        &format!("/v1/orgs/{org}/keys/{k1}/disable"),
        Some(json!({ "reencrypt_to": k2 })),
        409,
        "key_is_default",
    )
    .await;
    refused(
        &app,
        org,
        "POST",
        &format!("/v1/orgs/{org}/keys/{k1}/default"),
        None,
        409,
        "key_is_default",
    )
    .await;

    // AND after the default moves to k2, the rule follows it
    set_default(&app, org, &k2).await;
    refused(
        &app,
        org,
        "POST",
        &format!("/v1/orgs/{org}/keys/{k2}/disable"),
        Some(json!({ "reencrypt_to": k1 })),
        409,
        "key_is_default",
    )
    .await;
    refused(
        &app,
        org,
        "POST",
        &format!("/v1/orgs/{org}/keys/{k2}/default"),
        Some(json!({})),
        409,
        "key_is_default",
    )
    .await;
    app.assert_invariants(org).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_key_cannot_be_disabled_but_can_be_the_default_again() {
    let app = TestApp::start().await;
    let org = "svc";

    // GIVEN no CMK: disabling the service key is refused as such (not as "default")
    refused(
        &app,
        org,
        "POST",
        &format!("/v1/orgs/{org}/keys/service/disable"),
        Some(json!({"reencrypt_to": "service"})),
        409,
        "key_is_service_managed",
    )
    .await;

    // GIVEN a CMK is the default
    let k1 = app.add_local_key(org, "k1").await;
    assert_eq!(app.wait_job(org).await["state"], "completed");
    refused(
        &app,
        org,
        "POST",
        &format!("/v1/orgs/{org}/keys/service/disable"),
        Some(json!({ "reencrypt_to": k1 })),
        409,
        "key_is_service_managed",
    )
    .await;

    // WHEN the service key is set as default
    let (status, body) = app
        .admin(
            "POST",
            &format!("/v1/orgs/{org}/keys/service/default"),
            org,
            None,
        )
        .await;

    // THEN it is the default, and new data keys go to it
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["key"]["id"], "service");
    assert_eq!(body["key"]["type"], "service-managed");
    assert_eq!(body["key"]["default"], true);
    let listing = app.keys(org).await;
    assert_eq!(listing["default_key_id"], "service");
    assert_eq!(key_in(&listing, &k1)["default"], false);
    assert_eq!(key_in(&listing, &k1)["state"], "active");
    let samples = app.data_with_samples(org, 2).await;
    let listing = app.keys(org).await;
    assert_eq!(key_in(&listing, "service")["data_keys"], 2);
    assert_eq!(key_in(&listing, &k1)["data_keys"], 0);
    assert!(
        actions(&app, org)
            .await
            .iter()
            .any(|a| a == "key.default_set"),
        "the change is audited"
    );

    // AND the CMK can be the default again
    set_default(&app, org, &k1).await;
    app.assert_decrypts(org, &samples).await;
    app.assert_invariants(org).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keys_of_a_running_job_are_busy_and_no_second_job_starts() {
    let app = TestApp::with(manual()).await;
    let org = "busy";
    let mut samples = app.data_with_samples(org, 4).await;

    // GIVEN an adopt job left running: source `service`, target k1 (also the default)
    let k1 = app.add_local_key(org, "k1").await;
    refused(
        &app,
        org,
        "POST",
        &format!("/v1/orgs/{org}/keys/service/default"),
        None,
        409,
        "key_busy",
    )
    .await;
    refused(
        &app,
        org,
        "POST",
        &format!("/v1/orgs/{org}/keys/{k1}/default"),
        None,
        409,
        "key_is_default",
    )
    .await;
    refused(
        &app,
        org,
        "POST",
        &format!("/v1/orgs/{org}/keys/{k1}/disable"),
        Some(json!({"reencrypt_to": "service"})),
        409,
        "key_busy",
    )
    .await;
    pump(&app).await;

    // GIVEN k2 wraps data keys, k1 is the default, and a disable job k2 -> k3 is left running
    let k2 = app.add_local_key(org, "k2").await;
    let k3 = app.add_local_key(org, "k3").await;
    let k4 = app.add_local_key(org, "k4").await;
    set_default(&app, org, &k2).await;
    samples.extend(app.data_with_samples(org, 6).await);
    set_default(&app, org, &k1).await;
    let job = disable(&app, org, &k2, &k3).await;
    assert_eq!(job["kind"], "disable", "{job}");
    assert_eq!(job["state"], "running", "{job}");
    assert_eq!(job["source_key_ids"], json!([k2]), "{job}");
    assert_eq!(job["target_key_id"], k3.as_str(), "{job}");
    assert_eq!(job["total"], 6, "{job}");
    let listing = app.keys(org).await;
    assert_eq!(key_in(&listing, &k2)["state"], "reencrypting");
    assert_eq!(key_in(&listing, &k2)["busy"], true);
    assert_eq!(key_in(&listing, &k3)["busy"], true);
    assert_eq!(key_in(&listing, &k4)["busy"], false);

    // WHEN the source or the target is set as default or disabled
    // THEN 409 key_busy
    for key in [&k2, &k3] {
        refused(
            &app,
            org,
            "POST",
            &format!("/v1/orgs/{org}/keys/{key}/default"),
            None,
            409,
            "key_busy",
        )
        .await;
        refused(
            &app,
            org,
            "POST",
            &format!("/v1/orgs/{org}/keys/{key}/disable"),
            Some(json!({ "reencrypt_to": k1 })),
            409,
            "key_busy",
        )
        .await;
    }

    // WHEN a second job would start: disable a key that is not busy, or disable all
    // THEN 409 reencryption_in_progress
    refused(
        &app,
        org,
        "POST",
        &format!("/v1/orgs/{org}/keys/{k4}/disable"),
        Some(json!({ "reencrypt_to": k1 })),
        409,
        "reencryption_in_progress",
    )
    .await;
    refused(
        &app,
        org,
        "POST",
        &format!("/v1/orgs/{org}/keys/disable-all"),
        None,
        409,
        "reencryption_in_progress",
    )
    .await;

    // WHEN an admin retries the running job
    let before = app.keys(org).await;
    let audit_before = actions(&app, org).await;
    let (status, body) = app
        .admin(
            "POST",
            &format!("/v1/orgs/{org}/reencryption/retry"),
            org,
            None,
        )
        .await;

    // THEN 202, the same job still running, the keys unchanged; only the audit notes it
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["reencryption"]["id"], job["id"]);
    assert_eq!(body["reencryption"]["state"], "running");
    assert_eq!(
        app.keys(org).await,
        before,
        "a retry of a running job is harmless"
    );
    let audit_after = actions(&app, org).await;
    assert_eq!(audit_after.len(), audit_before.len() + 1, "{audit_after:?}");
    assert_eq!(audit_after[0], "reencryption.retried");

    // WHEN the disable job is cancelled
    let (status, body) = app
        .admin(
            "POST",
            &format!("/v1/orgs/{org}/reencryption/cancel"),
            org,
            None,
        )
        .await;

    // THEN the source, which still wraps its data keys, is active again (not default, not busy)
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reencryption"]["state"], "cancelled");
    assert!(body["reencryption"]["finished_at"].is_string(), "{body}");
    let listing = app.keys(org).await;
    let source = key_in(&listing, &k2);
    assert_eq!(source["state"], "active", "{source}");
    assert_eq!(source["default"], false, "{source}");
    assert_eq!(source["busy"], false, "{source}");
    assert_eq!(source["data_keys"], 6, "{source}");
    assert_eq!(key_in(&listing, &k3)["busy"], false);
    assert_eq!(listing["default_key_id"], k1.as_str());
    assert!(actions(&app, org)
        .await
        .contains(&"reencryption.cancelled".to_owned()));

    // AND the cancelled job's queued messages change nothing; every ciphertext still decrypts
    pump(&app).await;
    assert_eq!(key_in(&app.keys(org).await, &k2)["data_keys"], 6);
    app.assert_decrypts(org, &samples).await;
    app.assert_invariants(org).await;

    // AND the keys are free again: k2 can now be disabled for real
    disable(&app, org, &k2, &k3).await;
    pump(&app).await;
    let listing = app.keys(org).await;
    assert_eq!(key_in(&listing, &k2)["state"], "disabled");
    assert_eq!(key_in(&listing, &k3)["data_keys"], 6);
    app.assert_decrypts(org, &samples).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_active_cmk_no_key_is_added_while_a_job_is_unfinished() {
    let app = TestApp::with(manual()).await;
    let org = "all";
    let samples = app.data_with_samples(org, 3).await;
    let k1 = app.add_local_key(org, "first").await;
    pump(&app).await;

    // GIVEN disable-all is running: every CMK is reencrypting, the service key is the default
    let (status, body) = app
        .admin(
            "POST",
            &format!("/v1/orgs/{org}/keys/disable-all"),
            org,
            None,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["reencryption"]["kind"], "disable_all");
    assert_eq!(body["reencryption"]["source_key_ids"], json!([k1]));
    assert_eq!(body["reencryption"]["target_key_id"], "service");
    let listing = app.keys(org).await;
    assert_eq!(listing["default_key_id"], "service", "at once");
    assert_eq!(key_in(&listing, &k1)["state"], "reencrypting");

    // WHEN a key is added, or disable-all is asked again
    // THEN 409 reencryption_in_progress
    refused(
        &app,
        org,
        "POST",
        &format!("/v1/orgs/{org}/keys"),
        Some(json!({"name": "second", "type": "local"})),
        409,
        "reencryption_in_progress",
    )
    .await;
    refused(
        &app,
        org,
        "POST",
        &format!("/v1/orgs/{org}/keys/disable-all"),
        Some(json!({})),
        409,
        "reencryption_in_progress",
    )
    .await;

    // GIVEN the job completed: k1 is disabled and wraps nothing
    pump(&app).await;
    let listing = app.keys(org).await;
    assert_eq!(listing["reencryption"]["state"], "completed");
    assert_eq!(key_in(&listing, &k1)["state"], "disabled");
    assert_eq!(key_in(&listing, &k1)["data_keys"], 0);
    assert_eq!(key_in(&listing, "service")["data_keys"], 3);

    // WHEN disable-all is asked with no active CMK
    // THEN 409 key_not_active
    refused(
        &app,
        org,
        "POST",
        &format!("/v1/orgs/{org}/keys/disable-all"),
        None,
        409,
        "key_not_active",
    )
    .await;
    // AND a disabled key keeps its name
    refused(
        &app,
        org,
        "POST",
        &format!("/v1/orgs/{org}/keys"),
        Some(json!({"name": "First", "type": "local"})),
        409,
        "name_taken",
    )
    .await;

    // WHEN a key is added now (no job is unfinished)
    // THEN it is the first active CMK again: default, with an adopt job
    let (status, body) = app
        .admin(
            "POST",
            &format!("/v1/orgs/{org}/keys"),
            org,
            Some(json!({"name": "second", "type": "local"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["key"]["default"], true);
    assert_eq!(body["reencryption"]["kind"], "adopt");
    assert_eq!(body["reencryption"]["total"], 3);
    pump(&app).await;
    app.assert_decrypts(org, &samples).await;
    app.assert_invariants(org).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_job_is_unfinished_until_cancelled() {
    let app = TestApp::start().await;
    let org = "failed";
    let samples = app.data_with_samples(org, 4).await;
    let k1 = app.add_local_key(org, "k1").await;
    assert_eq!(app.wait_job(org).await["state"], "completed");

    // GIVEN disable-all failed because the customer revoked k1
    app.keys
        .set_revoked(
            &OrgId::from_trusted(org),
            &KeyId::from_trusted(k1.as_str()),
            true,
        )
        .expect("revoke");
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

    // THEN the failed job still holds its keys and blocks a second job
    refused(
        &app,
        org,
        "POST",
        &format!("/v1/orgs/{org}/keys"),
        Some(json!({"name": "k2", "type": "local"})),
        409,
        "reencryption_in_progress",
    )
    .await;
    refused(
        &app,
        org,
        "POST",
        &format!("/v1/orgs/{org}/keys/disable-all"),
        None,
        409,
        "reencryption_in_progress",
    )
    .await;
    refused(
        &app,
        org,
        "POST",
        &format!("/v1/orgs/{org}/keys/{k1}/default"),
        None,
        409,
        "key_busy",
    )
    .await;

    // WHEN it is cancelled
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

    // THEN k1, which still wraps the data keys, is active again; the service key stays default
    let listing = app.keys(org).await;
    let key = key_in(&listing, &k1);
    assert_eq!(key["state"], "active", "{key}");
    assert_eq!(key["busy"], false, "{key}");
    assert_eq!(key["data_keys"], 4, "{key}");
    assert_eq!(listing["default_key_id"], "service");

    // AND once access returns everything decrypts, and a key can be added again (no job)
    app.keys
        .set_revoked(
            &OrgId::from_trusted(org),
            &KeyId::from_trusted(k1.as_str()),
            false,
        )
        .expect("restore");
    app.assert_decrypts(org, &samples).await;
    let (status, body) = app
        .admin(
            "POST",
            &format!("/v1/orgs/{org}/keys"),
            org,
            Some(json!({"name": "k2", "type": "local"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert!(
        body["reencryption"].is_null(),
        "k1 is an active CMK: {body}"
    );
    app.assert_invariants(org).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_key_is_neither_a_target_nor_a_default() {
    let app = TestApp::start().await;
    let org = "inactive";
    let k1 = app.add_local_key(org, "k1").await;
    let k2 = app.add_local_key(org, "k2").await;
    let k3 = app.add_local_key(org, "k3").await;
    app.wait_job(org).await;
    set_default(&app, org, &k2).await;
    let samples = app.data_with_samples(org, 5).await;
    set_default(&app, org, &k1).await;

    // GIVEN k2 was disabled and its job completed
    let job = disable(&app, org, &k2, &k1).await;
    assert_eq!(job["total"], 5);
    let job = app.wait_job(org).await;
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(
        (job["done"].as_u64(), job["total"].as_u64()),
        (Some(5), Some(5))
    );
    let listing = app.keys(org).await;
    let disabled = key_in(&listing, &k2);
    assert_eq!(disabled["state"], "disabled", "{disabled}");
    assert_eq!(disabled["data_keys"], 0, "{disabled}");
    assert_eq!(disabled["busy"], false, "{disabled}");
    assert_eq!(key_in(&listing, &k1)["data_keys"], 5);
    let audit = actions(&app, org).await;
    assert_eq!(count(&audit, "key.disabled"), 1, "{audit:?}");
    assert_eq!(count(&audit, "key.disable_requested"), 1, "{audit:?}");

    // WHEN the disabled key is a re-encryption target, the default, or disabled again
    // THEN 409 key_not_active
    refused(
        &app,
        org,
        "POST",
        &format!("/v1/orgs/{org}/keys/{k3}/disable"),
        Some(json!({ "reencrypt_to": k2 })),
        409,
        "key_not_active",
    )
    .await;
    refused(
        &app,
        org,
        "POST",
        &format!("/v1/orgs/{org}/keys/{k2}/default"),
        None,
        409,
        "key_not_active",
    )
    .await;
    refused(
        &app,
        org,
        "POST",
        &format!("/v1/orgs/{org}/keys/{k2}/disable"),
        Some(json!({ "reencrypt_to": k1 })),
        409,
        "key_not_active",
    )
    .await;

    // AND a disabled key never wraps a new data key
    let more = app.data_with_samples(org, 2).await;
    let listing = app.keys(org).await;
    assert_eq!(key_in(&listing, &k2)["data_keys"], 0);
    assert_eq!(key_in(&listing, &k1)["data_keys"], 7);
    app.assert_decrypts(org, &samples).await;
    app.assert_decrypts(org, &more).await;
    app.assert_invariants(org).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reencryption_key_must_be_another_key_of_the_org_and_ids_must_exist() {
    let app = TestApp::start().await;
    let org = "unknown";
    let k1 = app.add_local_key(org, "k1").await;
    let k2 = app.add_local_key(org, "k2").await;
    app.wait_job(org).await;
    let ghost = "key_00000000000000000000000000000000";

    // reencrypt_to is the key itself: 400 invalid_request
    refused(
        &app,
        org,
        "POST",
        &format!("/v1/orgs/{org}/keys/{k2}/disable"),
        Some(json!({ "reencrypt_to": k2 })),
        400,
        "invalid_request",
    )
    .await;
    // reencrypt_to is unknown: 404 not_found
    let body = refused(
        &app,
        org,
        "POST",
        &format!("/v1/orgs/{org}/keys/{k2}/disable"),
        Some(json!({ "reencrypt_to": ghost })),
        404,
        "not_found",
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap_or("").contains(ghost),
        "the problem names the unknown key: {body}"
    );
    // the key itself is unknown: 404 not_found on every key route
    refused(
        &app,
        org,
        "POST",
        &format!("/v1/orgs/{org}/keys/{ghost}/disable"),
        Some(json!({ "reencrypt_to": k1 })),
        404,
        "not_found",
    )
    .await;
    refused(
        &app,
        org,
        "POST",
        &format!("/v1/orgs/{org}/keys/{ghost}/default"),
        None,
        404,
        "not_found",
    )
    .await;
    refused(
        &app,
        org,
        "POST",
        &format!("/v1/orgs/{org}/keys/{ghost}/check"),
        None,
        404,
        "not_found",
    )
    .await;
    app.assert_invariants(org).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_and_cancel_need_an_unfinished_job() {
    let app = TestApp::start().await;
    let org = "nojob";
    for route in ["retry", "cancel"] {
        // GIVEN no job ever
        refused(
            &app,
            org,
            "POST",
            &format!("/v1/orgs/{org}/reencryption/{route}"),
            None,
            409,
            "no_reencryption",
        )
        .await;
    }
    // GIVEN the last job completed
    app.add_local_key(org, "k1").await;
    assert_eq!(app.wait_job(org).await["state"], "completed");
    for route in ["retry", "cancel"] {
        refused(
            &app,
            org,
            "POST",
            &format!("/v1/orgs/{org}/reencryption/{route}"),
            Some(json!({})),
            409,
            "no_reencryption",
        )
        .await;
    }
    let listing = app.keys(org).await;
    assert_eq!(
        listing["reencryption"]["state"], "completed",
        "the last job is untouched"
    );
}

/// A provider whose add-time round trip fails (access denied) while `fail` is set; everything
/// else is delegated, so existing keys keep working.
struct FailingCheck {
    inner: Arc<dyn KeyProvider>,
    fail: Arc<AtomicBool>,
}

#[async_trait]
impl KeyProvider for FailingCheck {
    async fn prepare(&self, kek: &Kek) -> Result<(), KeyError> {
        self.inner.prepare(kek).await
    }
    async fn wrap(
        &self,
        kek: &Kek,
        ctx: &EncryptionContext,
        plaintext: &DataKey,
    ) -> Result<Wrapped, KeyError> {
        self.inner.wrap(kek, ctx, plaintext).await
    }
    async fn unwrap(
        &self,
        kek: &Kek,
        ctx: &EncryptionContext,
        wrapped: &[u8],
    ) -> Result<DataKey, KeyError> {
        self.inner.unwrap(kek, ctx, wrapped).await
    }
    async fn rewrap(
        &self,
        from: &Kek,
        to: &Kek,
        ctx: &EncryptionContext,
        wrapped: &[u8],
    ) -> Result<Option<Wrapped>, KeyError> {
        self.inner.rewrap(from, to, ctx, wrapped).await
    }
    async fn check(&self, kek: &Kek) -> Result<Option<String>, KeyError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(KeyError::new(
                KeyErrorKind::AccessDenied,
                "the role cannot use the key (injected)",
            ));
        }
        self.inner.check(kek).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_key_check_answers_422_with_a_reason_and_stores_nothing() {
    let fail = Arc::new(AtomicBool::new(true));
    let f = Arc::clone(&fail);
    let app = TestApp::with(Options {
        wrap_keys: Box::new(move |inner| Arc::new(FailingCheck { inner, fail: f })),
        ..Options::default()
    })
    .await;
    let org = "check";
    let samples = app.data_with_samples(org, 3).await;
    let path = format!("/v1/orgs/{org}/keys");

    // GIVEN no CMK yet: a first key would become the default and start a job
    // WHEN its round trip fails
    let body = refused(
        &app,
        org,
        "POST",
        &path,
        Some(json!({"name": "prod", "type": "local"})),
        422,
        "key_check_failed",
    )
    .await;

    // THEN 422 with the reason, and no key, no default change, no job, no audit event
    assert_eq!(body["reason"], "access_denied", "{body}");
    let listing = app.keys(org).await;
    assert_eq!(
        listing["keys"].as_array().expect("keys").len(),
        1,
        "{listing}"
    );
    assert_eq!(listing["default_key_id"], "service");
    assert!(listing["reencryption"].is_null(), "{listing}");
    assert!(actions(&app, org).await.is_empty(), "nothing audited");

    // AND the name is still free once the check passes
    fail.store(false, Ordering::SeqCst);
    let k1 = app.add_local_key(org, "prod").await;
    assert_eq!(app.wait_job(org).await["state"], "completed");

    // GIVEN a CMK exists: a failing second key changes nothing either
    fail.store(true, Ordering::SeqCst);
    let body = refused(
        &app,
        org,
        "POST",
        &path,
        Some(json!({"name": "stage", "type": "local"})),
        422,
        "key_check_failed",
    )
    .await;
    assert_eq!(body["reason"], "access_denied", "{body}");
    let listing = app.keys(org).await;
    assert_eq!(listing["keys"].as_array().expect("keys").len(), 2);
    assert_eq!(listing["default_key_id"], k1.as_str());
    app.assert_decrypts(org, &samples).await;
    app.assert_invariants(org).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_in_the_services_own_account_is_refused_before_any_aws_call() {
    let app = TestApp::with(manual()).await;
    let service_account = "111122223333";
    let cmk_with = |allow_same_account_roles| {
        cmk_core::Cmk::new(
            Arc::clone(&app.sqlite),
            app.queue.clone() as Arc<dyn RewrapQueue>,
            app.keys.clone() as Arc<dyn KeyProvider>,
            cmk_core::cache::DataKeyCache::disabled(),
            cmk_core::service::ServiceConfig {
                allow_aws_keys: true,
                service_account_id: Some(service_account.to_owned()),
                allow_same_account_roles,
                ..cmk_core::service::ServiceConfig::default()
            },
        )
    };
    let org = OrgId::from_trusted("own-account");
    let add = |cmk: cmk_core::Cmk, account: &'static str| {
        let org = org.clone();
        async move {
            cmk.add_key(
            "alice",
            &org,
            "prod",
            cmk_core::service::NewKeySpec::AwsKms {
                role_arn: format!("arn:aws:iam::{account}:role/cmk"),
                key_arn:
                    "arn:aws:kms:us-east-1:444455556666:key/1234abcd-12ab-34cd-56ef-1234567890ab"
                        .into(),
                rewrap_rate_limit: None,
                trust: Some(cmk_core::model::TrustMode::ExternalId),
            },
        )
        .await
        }
    };
    match add(cmk_with(false), service_account).await {
        Err(cmk_core::CoreError::KeyCheckFailed { reason, message }) => {
            assert_eq!(reason, cmk_core::model::HealthStatus::AccessDenied);
            assert!(message.contains("own AWS account"), "{message}");
            assert!(message.contains(service_account), "{message}");
        }
        other => panic!("expected key_check_failed, got {other:?}"),
    }
    // A role in another account, or the same account when allowed, goes on to the provider's
    // round trip (which this local provider cannot do for aws-kms keys: another reason).
    for (cmk, account) in [
        (cmk_with(false), "444455556666"),
        (cmk_with(true), service_account),
    ] {
        match add(cmk, account).await {
            Err(cmk_core::CoreError::KeyCheckFailed { message, .. }) => {
                assert!(!message.contains("own AWS account"), "{message}");
            }
            other => panic!("expected the provider's refusal, got {other:?}"),
        }
    }
    assert_eq!(
        app.keys("own-account").await["keys"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_setup_trusts_each_function_role_named_not_an_account_root() {
    let app = TestApp::with(manual()).await;
    let roles = [
        "arn:aws:iam::111122223333:role/cmk-keys-write",
        "arn:aws:iam::111122223333:role/cmk-data-keys",
        "arn:aws:iam::111122223333:role/cmk-rewrap-worker",
    ];
    let cmk = cmk_core::Cmk::new(
        Arc::clone(&app.sqlite),
        app.queue.clone() as Arc<dyn RewrapQueue>,
        app.keys.clone() as Arc<dyn KeyProvider>,
        cmk_core::cache::DataKeyCache::disabled(),
        cmk_core::service::ServiceConfig {
            service_principal: roles.join(","),
            ..cmk_core::service::ServiceConfig::default()
        },
    );
    let setup = cmk
        .setup(&OrgId::from_trusted("setup"))
        .await
        .expect("setup");
    let statement = &setup.trust_policy["Statement"][0];
    assert_eq!(statement["Principal"]["AWS"], json!(roles));
    assert_eq!(
        statement["Condition"]["StringEquals"]["sts:ExternalId"],
        json!(setup.external_id)
    );
    // One principal stays a plain string.
    let (_, body) = app
        .admin("GET", "/v1/orgs/setup/keys/setup", "setup", None)
        .await;
    assert!(body["trust_policy"]["Statement"][0]["Principal"]["AWS"].is_string());
    // A service that takes no vault-transit keys describes no Vault setup.
    assert!(body.get("vault").is_none(), "{body}");
    assert!(cmk.vault_setup(None, None).expect("setup").is_none());
}
