//! A re-encryption spends at most its key's rate limit of the customer's KMS quota: against a
//! KMS stand-in that times every request (`SimulatedKms`: a latency per request, a quota above
//! which it throttles), the requests sent for an `aws-kms` key stay within 10 % of its limit
//! over every one-second window; when KMS throttles, the rate halves and recovers (AIMD), the
//! job shows `throttled` with the rate it runs at, and it still completes. An admin changes the
//! limit with `PATCH keys/{id}`, and the data plane is never limited. `keys/{id}/rewrap` on an
//! `aws-kms` key answers why nothing needs doing (KMS rotates transparently).

use cmk_tests as common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cmk_core::engine::EngineConfig;
use cmk_core::model::KeyId;
use cmk_core::ports::KeyProvider;
use cmk_embedded::{SimulatedKms, SimulatedKmsConfig};
use common::{Options, TestApp};
use serde_json::{json, Value};

/// A test app whose `aws-kms` keys are served by a KMS stand-in.
async fn app_with_kms(
    config: SimulatedKmsConfig,
    engine: EngineConfig,
) -> (TestApp, Arc<SimulatedKms>) {
    let kms: Arc<std::sync::Mutex<Option<Arc<SimulatedKms>>>> = Arc::default();
    let slot = Arc::clone(&kms);
    let app = TestApp::with(Options {
        allow_aws_keys: true,
        wrap_keys: Box::new(move |inner| {
            let simulated = Arc::new(SimulatedKms::new(inner, config));
            *slot.lock().expect("slot") = Some(Arc::clone(&simulated));
            simulated as Arc<dyn KeyProvider>
        }),
        engine,
        ..Options::default()
    })
    .await;
    let kms = kms.lock().expect("slot").clone().expect("the stand-in");
    (app, kms)
}

fn engine(max_attempts: u32, retry_backoff: Duration) -> EngineConfig {
    EngineConfig {
        batch_size: 100,
        concurrency: 16,
        max_attempts,
        retry_backoff,
        plan_segment: 200,
        rate_share: 1,
        message_budget: Duration::from_secs(20),
    }
}

async fn add_kms_key(app: &TestApp, org: &str, name: &str, limit: u32) -> Value {
    let (status, body) = app
        .admin(
            "POST",
            &format!("/v1/orgs/{org}/keys"),
            org,
            Some(json!({
                "name": name,
                "type": "aws-kms",
                "role_arn": "arn:aws:iam::111122223333:role/cmk",
                "key_arn": "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
                "rewrap_rate_limit": limit,
            })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body
}

/// Data keys under the service-managed key, created in-process (fast).
async fn data_keys(app: &TestApp, org: &str, n: usize) {
    let org = cmk_core::model::OrgId::from_trusted(org);
    for _ in 0..n {
        app.cmk.create_data_key(&org).await.expect("data key");
    }
}

/// The most requests in any one-second window.
fn busiest_second(requests: &[Instant]) -> usize {
    (0..requests.len())
        .map(|i| {
            let end = requests[i] + Duration::from_secs(1);
            requests[i..].iter().take_while(|t| **t < end).count()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_encryption_stays_within_its_keys_rate_limit() {
    let (app, kms) = app_with_kms(
        SimulatedKmsConfig {
            latency: Duration::from_millis(2),
            quota: None,
        },
        engine(3, Duration::from_millis(5)),
    )
    .await;
    let org = "limited";
    data_keys(&app, org, 400).await;
    let limit = 100;
    let added = add_kms_key(&app, org, "prod", limit).await;
    assert_eq!(added["key"]["rewrap_rate_limit"], limit);
    let key = KeyId::from_trusted(added["key"]["id"].as_str().expect("id"));
    let started = Instant::now();

    // The data plane is not limited: 300 new data keys under the new default meanwhile.
    let org_id = cmk_core::model::OrgId::from_trusted(org);
    let data_plane = Instant::now();
    let mut created = std::collections::HashSet::new();
    for _ in 0..300 {
        let dk = app.cmk.create_data_key(&org_id).await.expect("data key");
        created.insert(dk.id.to_string());
    }
    let data_plane = data_plane.elapsed();

    let job = app.wait_job(org).await;
    let took = started.elapsed();
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(job["done"], 400);
    // The re-encryption's requests: not the data plane's wraps of new data keys.
    let requests: Vec<Instant> = kms
        .requests(&key)
        .into_iter()
        .filter(|r| {
            r.data_key_id
                .as_ref()
                .is_some_and(|id| !created.contains(id))
        })
        .map(|r| r.at)
        .collect();
    // One wrap per data key moved, and a few more for a batch redelivered while the limit
    // slowed it (the test queue's visibility timeout is half a second): limited all the same.
    assert!(requests.len() >= 400, "{}", requests.len());
    let busiest = busiest_second(&requests);
    println!(
        "limit {limit}/s: {} requests in {took:?}, busiest second {busiest}; 300 data-plane wraps in {data_plane:?}",
        requests.len()
    );
    assert!(
        busiest as f64 <= f64::from(limit) * 1.1,
        "{busiest} requests in one second against a limit of {limit}"
    );
    // 400 wraps at 100 per second take about four seconds; without the limit, a fraction.
    assert!(took >= Duration::from_millis(3_500), "{took:?}");
    // The data plane wrapped faster than the key's limit would have let it (300 at 100 per
    // second: three seconds).
    assert!(
        data_plane < Duration::from_millis(2_700),
        "300 data-plane wraps took {data_plane:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_halves_the_rate_and_the_job_shows_it_then_completes() {
    let (app, kms) = app_with_kms(
        SimulatedKmsConfig {
            latency: Duration::from_millis(2),
            quota: Some(100),
        },
        engine(10, Duration::from_millis(50)),
    )
    .await;
    let org = "throttled";
    data_keys(&app, org, 600).await;
    let added = add_kms_key(&app, org, "prod", 1_000).await;
    let key = KeyId::from_trusted(added["key"]["id"].as_str().expect("id"));
    let mut shown = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    let job = loop {
        let (_, body) = app
            .admin("GET", &format!("/v1/orgs/{org}/reencryption"), org, None)
            .await;
        let job = body["reencryption"].clone();
        if job["throttled"] == true {
            shown = Some(job["throttled_rate"].as_u64().expect("the rate it runs at"));
        }
        if job["state"] != "running" {
            break job;
        }
        assert!(Instant::now() < deadline, "{job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(job["done"], 600);
    let rate = shown.expect("the job showed that KMS throttled it");
    assert!(rate < 1_000, "it adapted down from its limit: {rate}");
    println!(
        "quota 100/s, limit 1000/s: {} requests, {} throttled, the job showed {rate}/s",
        kms.requests(&key).len(),
        kms.throttled()
    );
    assert!(kms.throttled() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_sets_a_keys_rate_limit_within_bounds() {
    let (app, _kms) = app_with_kms(
        SimulatedKmsConfig {
            latency: Duration::ZERO,
            quota: None,
        },
        engine(3, Duration::from_millis(5)),
    )
    .await;
    let org = "patch";
    let added = add_kms_key(&app, org, "prod", 250).await;
    let id = added["key"]["id"].as_str().expect("id").to_owned();
    let local = app.add_local_key(org, "local").await;
    let (status, body) = app
        .call(
            "PATCH",
            &format!("/v1/orgs/{org}/keys/{id}"),
            org,
            cmk_core::model::Role::Admin,
            Some(json!({"rewrap_rate_limit": 1200})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["key"]["rewrap_rate_limit"], 1200);
    let listing = app.keys(org).await;
    let keys = listing["keys"].as_array().expect("keys");
    let by_id = |id: &str| keys.iter().find(|k| k["id"] == id).expect("key").clone();
    assert_eq!(by_id(&id)["rewrap_rate_limit"], 1200);
    assert_eq!(by_id(&local)["rewrap_rate_limit"], Value::Null);
    assert_eq!(by_id("service")["rewrap_rate_limit"], Value::Null);
    let before = app.observe(org).await;
    for (key, body, status, code) in [
        (
            id.as_str(),
            json!({"rewrap_rate_limit": 0}),
            400,
            "invalid_request",
        ),
        (
            id.as_str(),
            json!({"rewrap_rate_limit": 10_001}),
            400,
            "invalid_request",
        ),
        (
            id.as_str(),
            json!({"rewrap_rate_limit": "fast"}),
            400,
            "invalid_request",
        ),
        (id.as_str(), json!({"rate": 5}), 400, "invalid_request"),
        (
            local.as_str(),
            json!({"rewrap_rate_limit": 5}),
            400,
            "invalid_request",
        ),
        (
            "service",
            json!({"rewrap_rate_limit": 5}),
            409,
            "key_is_service_managed",
        ),
        (
            "key_nope",
            json!({"rewrap_rate_limit": 5}),
            404,
            "not_found",
        ),
    ] {
        let (got, answer) = app
            .call(
                "PATCH",
                &format!("/v1/orgs/{org}/keys/{key}"),
                org,
                cmk_core::model::Role::Admin,
                Some(body.clone()),
            )
            .await;
        assert_eq!(
            (got, answer["code"].as_str()),
            (status, Some(code)),
            "{body}: {answer}"
        );
    }
    assert_eq!(app.observe(org).await, before, "refusals change nothing");
    let (_, audit) = app
        .admin("GET", &format!("/v1/orgs/{org}/audit?limit=50"), org, None)
        .await;
    assert!(audit["events"]
        .as_array()
        .expect("events")
        .iter()
        .any(|e| e["action"] == "key.rate_limit_set"
            && e["detail"] == "250 to 1200 requests per second"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_slowed_by_its_limit_hands_the_rest_on_within_its_time_budget() {
    use cmk_core::ports::RewrapQueue;
    let budget = Duration::from_millis(300);
    let (mut app, kms) = app_with_kms(
        SimulatedKmsConfig {
            latency: Duration::from_millis(1),
            quota: None,
        },
        EngineConfig {
            message_budget: budget,
            ..engine(3, Duration::from_millis(5))
        },
    )
    .await;
    app.kill_worker();
    let org = "budget";
    data_keys(&app, org, 150).await;
    // 100 data keys per batch at 50 per second would hold a delivery for two seconds.
    let added = add_kms_key(&app, org, "prod", 50).await;
    let key = KeyId::from_trusted(added["key"]["id"].as_str().expect("id"));
    let mut longest = Duration::ZERO;
    let mut deliveries = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let batch = app
            .queue
            .receive(10, Duration::from_millis(50))
            .await
            .expect("receive");
        if batch.is_empty() {
            let (_, body) = app
                .admin("GET", &format!("/v1/orgs/{org}/reencryption"), org, None)
                .await;
            if body["reencryption"]["state"] != "running" {
                break;
            }
        }
        for d in batch {
            let t = Instant::now();
            app.engine.handle(&d.body).await.expect("handled");
            longest = longest.max(t.elapsed());
            deliveries += 1;
            app.queue.ack(&d.receipt).await.expect("ack");
        }
        assert!(Instant::now() < deadline, "the job did not end");
    }
    let job = app.wait_job(org).await;
    assert_eq!(
        (job["state"].as_str(), job["done"].as_u64()),
        (Some("completed"), Some(150))
    );
    println!(
        "{deliveries} deliveries, the longest {longest:?}, {} requests",
        kms.requests(&key).len()
    );
    assert!(
        // Slack for one provider call and one commit on a loaded machine; without the budget
        // a delivery here takes two seconds.
        longest < budget + Duration::from_millis(500),
        "a delivery took {longest:?} with a budget of {budget:?}"
    );
    assert!(
        deliveries > 3,
        "the batches were continued: {deliveries} deliveries"
    );
}

/// `keys/{id}/rewrap` on an `aws-kms` key: nothing to do, and the answer says why (AWS KMS
/// rotates its material transparently); no job starts and nothing is sent to KMS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrapping_an_aws_kms_key_explains_why_nothing_needs_doing() {
    let (app, kms) = app_with_kms(
        SimulatedKmsConfig {
            latency: Duration::ZERO,
            quota: None,
        },
        engine(5, Duration::from_millis(10)),
    )
    .await;
    let key = add_kms_key(&app, "acme", "prod", 250).await;
    let id = key["key"]["id"].as_str().expect("id").to_owned();
    app.wait_job("acme").await;
    let key_id = KeyId::from_trusted(id.clone());
    let before = kms.requests(&key_id).len();
    let (status, body) = app
        .admin(
            "POST",
            &format!("/v1/orgs/acme/keys/{id}/rewrap"),
            "acme",
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reencryption"], Value::Null, "{body}");
    assert!(
        body["explanation"]
            .as_str()
            .is_some_and(|e| e.contains("transparently")),
        "{body}"
    );
    assert_eq!(kms.requests(&key_id).len(), before, "no KMS request");
}
