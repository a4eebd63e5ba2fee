//! The functions' real handlers fed with the `events/` fixtures (the files `sam local invoke -e`
//! takes): HTTP events through `lambda_http::request::from_str` into each function's router, SQS
//! and scheduled events through `LambdaEvent` into the worker.
//!
//! Routing and authorization need no AWS: those tests run the AWS backend against an endpoint
//! where nothing listens. The flows that need DynamoDB, SQS, KMS and STS run on the AWS emulator
//! when `CMK_TEST_AWS_ENDPOINT` is set.
//!
//! It is long because it feeds every fixture of `events/`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::HashSet;
use std::time::Duration;

use axum::http::StatusCode;
use axum::Router;
use base64::Engine as _;
use cmk_lambda::http::{RouteSpec, COMMON_ROUTES, PUBLIC_ROUTES};
use cmk_lambda::{app, ClaimNames, HttpFunction, Worker};
use common::{
    assert_problem, call, claims, create_data_key, decrypt, encrypt, failures, fixture,
    fixtures_of, org_event, set_body, sqs_record, Functions,
};
use lambda_runtime::{Context, LambdaEvent};
use serde_json::{json, Value};

async fn offline(function: HttpFunction) -> Router {
    let backend = common::offline_backend().await;
    app(function, backend.cmk, &ClaimNames::default(), backend.oidc)
}

fn owned(function: HttpFunction) -> Vec<RouteSpec> {
    let mut routes = function.routes().to_vec();
    if function == HttpFunction::KeysRead {
        routes.extend_from_slice(COMMON_ROUTES);
    }
    routes
}

// ------------------------------------------------------------------ fixtures and routing

#[tokio::test]
async fn every_route_has_a_fixture_that_reaches_it_through_its_function() {
    for function in HttpFunction::ALL {
        let app = offline(function).await;
        let routes = owned(function);
        let mut covered = HashSet::new();
        for (name, ev) in fixtures_of(function.name()) {
            let route_key = ev["routeKey"].as_str().expect("routeKey").to_owned();
            let (method, template) = route_key.split_once(' ').expect("METHOD /path");
            assert!(
                routes.contains(&(method, template)),
                "{name}: {route_key} is not a route of {}",
                function.name()
            );
            assert_eq!(ev["requestContext"]["routeKey"], ev["routeKey"], "{name}");
            assert_eq!(
                ev["requestContext"]["http"]["path"], ev["rawPath"],
                "{name}"
            );
            assert_eq!(ev["requestContext"]["http"]["method"], method, "{name}");
            // Paths without the stage, as API Gateway sends them on the $default stage.
            assert_eq!(ev["requestContext"]["stage"], "$default", "{name}");
            let authorizer = &ev["requestContext"]["authorizer"];
            if PUBLIC_ROUTES.contains(&(method, template)) {
                assert!(
                    authorizer.is_null(),
                    "{name}: a public route has no authorizer"
                );
            } else if function == HttpFunction::DataKeys {
                assert!(
                    authorizer["iam"]["userArn"].is_string(),
                    "{name}: IAM context"
                );
                assert!(authorizer["jwt"].is_null(), "{name}");
            } else {
                assert!(claims(&mut ev.clone()).is_object(), "{name}: JWT claims");
            }
            covered.insert(route_key.clone());

            let a = call(&app, &ev).await;
            assert!(
                ![
                    StatusCode::UNAUTHORIZED,
                    StatusCode::FORBIDDEN,
                    StatusCode::NOT_FOUND,
                    StatusCode::METHOD_NOT_ALLOWED
                ]
                .contains(&a.status),
                "{name} through {}: {} {}",
                function.name(),
                a.status,
                String::from_utf8_lossy(&a.body)
            );
        }
        for (method, path) in routes {
            assert!(
                covered.contains(&format!("{method} {path}")),
                "no fixture in events/{}/ for {method} {path}",
                function.name()
            );
        }
    }
}

#[tokio::test]
async fn the_page_and_health_need_no_aws() {
    let app = offline(HttpFunction::KeysRead).await;
    let page = call(&app, &fixture("keys-read/page.json")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.content_type.starts_with("text/html"));
    let html = String::from_utf8_lossy(&page.body);
    assert!(
        html.contains("aws-kms"),
        "the page offers aws-kms keys on AWS"
    );
    let asset = call(&app, &fixture("keys-read/asset.json")).await;
    assert_eq!(asset.status, StatusCode::OK);
    assert!(asset.content_type.starts_with("text/javascript"));
    let health = call(&app, &fixture("keys-read/healthz.json")).await;
    assert_eq!(health.status, StatusCode::OK);
    let openapi = call(&app, &fixture("keys-read/openapi.json")).await;
    assert_eq!(openapi.status, StatusCode::OK);
    assert!(openapi.json()["paths"].is_object());
}

#[tokio::test]
async fn a_route_of_another_function_is_not_found() {
    let read = offline(HttpFunction::KeysRead).await;
    let write = offline(HttpFunction::KeysWrite).await;
    let data = offline(HttpFunction::DataKeys).await;
    for (app, name, event) in [
        (&read, "keys-read", "data-keys/decrypt.json"),
        (&read, "keys-read", "keys-write/set-default.json"),
        (&read, "keys-read", "keys-write/setup.json"),
        (&write, "keys-write", "keys-read/page.json"),
        (&write, "keys-write", "data-keys/create-data-key.json"),
        (&data, "data-keys", "keys-read/list-keys.json"),
        (&data, "data-keys", "keys-write/disable-all.json"),
        (&data, "data-keys", "keys-read/asset.json"),
    ] {
        let a = call(app, &fixture(event)).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{event} through {name}");
        assert_eq!(a.code(), "not_found");
    }
    // `/v1/orgs/{org}/keys` exists in both admin functions with another method: 405, and
    // still nothing is served.
    let a = call(&read, &fixture("keys-write/add-key.json")).await;
    assert_problem(&a, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    let a = call(&write, &fixture("keys-read/list-keys.json")).await;
    assert_problem(&a, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
}

// ------------------------------------------------------------------ identities

#[tokio::test]
async fn admin_claims_of_another_org_are_forbidden() {
    let read = offline(HttpFunction::KeysRead).await;
    let write = offline(HttpFunction::KeysWrite).await;
    for (app, event) in [
        (&read, "keys-read/list-keys.json"),
        (&read, "keys-read/audit.json"),
        (&write, "keys-write/setup.json"),
        (&write, "keys-write/add-key.json"),
        (&write, "keys-write/disable-all.json"),
    ] {
        let mut ev = fixture(event);
        claims(&mut ev)["org"] = "globex".into();
        let a = call(app, &ev).await;
        assert_problem(&a, StatusCode::FORBIDDEN, "forbidden");
        assert!(a.json()["detail"].as_str().unwrap_or("").contains("globex"));
    }
}

#[tokio::test]
async fn members_and_services_are_forbidden_on_admin_routes() {
    let read = offline(HttpFunction::KeysRead).await;
    let write = offline(HttpFunction::KeysWrite).await;
    for role in ["member", "service"] {
        for (app, event) in [
            (&read, "keys-read/list-keys.json"),
            (&read, "keys-read/reencryption.json"),
            (&write, "keys-write/add-key.json"),
            (&write, "keys-write/cancel.json"),
        ] {
            let mut ev = fixture(event);
            claims(&mut ev)["role"] = role.into();
            let a = call(app, &ev).await;
            assert_problem(&a, StatusCode::FORBIDDEN, "forbidden");
        }
    }
}

#[tokio::test]
async fn without_a_usable_authorizer_identity_callers_are_unauthenticated() {
    let read = offline(HttpFunction::KeysRead).await;
    // No authorizer context: the bearer token is not checked by the function.
    let mut ev = fixture("keys-read/list-keys.json");
    ev["requestContext"]
        .as_object_mut()
        .expect("context")
        .remove("authorizer");
    assert_problem(
        &call(&read, &ev).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    // Claims without the org claim, or with an unknown role.
    for (claim, value) in [("org", Value::Null), ("role", "root".into())] {
        let mut ev = fixture("keys-read/list-keys.json");
        let c = claims(&mut ev).as_object_mut().expect("claims");
        if value.is_null() {
            c.remove(claim);
        } else {
            c.insert(claim.into(), value);
        }
        assert_problem(
            &call(&read, &ev).await,
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        );
    }
    // The data plane trusts AWS IAM only: JWT claims, even of a service, are not enough.
    let data = offline(HttpFunction::DataKeys).await;
    let mut ev = fixture("data-keys/create-data-key.json");
    ev["requestContext"]["authorizer"] =
        json!({"jwt": {"claims": {"sub": "svc", "org": "acme", "role": "service"}}});
    assert_problem(
        &call(&data, &ev).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
}

#[tokio::test]
async fn claim_names_come_from_the_configuration() {
    let names = ClaimNames {
        org: "custom:org".into(),
        role: "custom:role".into(),
    };
    let read = app(
        HttpFunction::KeysRead,
        common::offline_backend().await.cmk,
        &names,
        None,
    );
    let mut ev = fixture("keys-read/list-keys.json");
    *claims(&mut ev) = json!({"sub": "alice", "custom:org": "acme", "custom:role": "member", "org": "acme", "role": "admin"});
    // The configured role claim says member: the default "role" claim is not looked at.
    assert_problem(&call(&read, &ev).await, StatusCode::FORBIDDEN, "forbidden");
    claims(&mut ev)["custom:role"] = "admin".into();
    let a = call(&read, &ev).await;
    // Authorized; the offline store then fails.
    assert!(
        !matches!(a.status.as_u16(), 401 | 403 | 404),
        "{}",
        a.status
    );
}

// ------------------------------------------------------------------ bodies and paths

#[tokio::test]
async fn a_body_without_content_type_is_a_bad_request() {
    let write = offline(HttpFunction::KeysWrite).await;
    let data = offline(HttpFunction::DataKeys).await;
    for (app, event) in [
        (&write, "keys-write/add-key.json"),
        (&write, "keys-write/disable-key.json"),
        (&data, "data-keys/encrypt.json"),
        (&data, "data-keys/decrypt.json"),
    ] {
        let mut ev = fixture(event);
        ev["headers"]
            .as_object_mut()
            .expect("headers")
            .remove("content-type");
        let a = call(app, &ev).await;
        assert_problem(&a, StatusCode::BAD_REQUEST, "invalid_request");
        assert!(
            a.json()["detail"]
                .as_str()
                .unwrap_or("")
                .contains("content-type"),
            "{event}"
        );
    }
    // A base64-encoded body (API Gateway sends binary payloads so) is read the same.
    let mut ev = fixture("keys-write/add-key.json");
    ev["headers"]["content-type"] = "text/plain".into();
    let body = ev["body"].as_str().expect("body").to_owned();
    ev["body"] = base64::engine::general_purpose::STANDARD
        .encode(body)
        .into();
    ev["isBase64Encoded"] = true.into();
    assert_problem(
        &call(&write, &ev).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
}

#[tokio::test]
async fn a_stage_outside_the_path_still_routes() {
    // A custom domain mapped to a named stage: rawPath has no stage, requestContext.stage is
    // "prod". With AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH (set by the template), the path is used
    // as is.
    let read = offline(HttpFunction::KeysRead).await;
    let mut ev = fixture("keys-read/healthz.json");
    ev["requestContext"]["stage"] = "prod".into();
    assert_eq!(call(&read, &ev).await.status, StatusCode::OK);
}

#[tokio::test]
async fn the_runtime_answer_is_an_http_api_response() {
    use tower::ServiceExt;
    let read = offline(HttpFunction::KeysRead).await;
    let respond = |ev: Value| {
        let adapter = lambda_http::Adapter::from(read.clone());
        async move {
            let request: lambda_http::request::LambdaRequest =
                serde_json::from_value(ev).expect("event");
            let response = adapter
                .oneshot(LambdaEvent::new(request, Context::default()))
                .await
                .expect("answer");
            serde_json::to_value(response).expect("json")
        }
    };
    let page = respond(fixture("keys-read/page.json")).await;
    assert_eq!(page["statusCode"], 200);
    assert_eq!(page["isBase64Encoded"], false);
    assert!(page["headers"]["content-type"]
        .as_str()
        .unwrap_or("")
        .starts_with("text/html"));
    assert!(page["body"].as_str().unwrap_or("").contains("<html"));

    let missing = respond(fixture("data-keys/decrypt.json")).await;
    assert_eq!(missing["statusCode"], 404);
    let body: Value =
        serde_json::from_str(missing["body"].as_str().expect("text body")).expect("problem");
    assert_eq!(body["code"], "not_found");
}

// ------------------------------------------------------------------ worker, offline

async fn offline_worker() -> Worker {
    let backend = common::offline_backend().await;
    Worker::new(
        cmk_core::engine::RewrapEngine::new(backend.cmk, Default::default()),
        4,
        Duration::from_secs(900),
    )
}

#[tokio::test]
async fn the_worker_reports_only_the_messages_that_failed() {
    let worker = offline_worker().await;
    let mut event = fixture("rewrap-worker/sqs-rewrap.json");
    let fixture_ids: HashSet<String> = event["Records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| r["messageId"].as_str().expect("id").to_owned())
        .collect();
    let records = event["Records"].as_array_mut().expect("records");
    // A poison message (never readable) and one without a body are acknowledged: no
    // redelivery could ever make them succeed.
    records.push(sqs_record(Some("poison-1"), Some("not json")));
    records.push(sqs_record(Some("empty-1"), None));
    // The fixture's plan and batch messages need the store, which is unreachable: they fail,
    // and only they are reported, for SQS to redeliver.
    let response = worker
        .handle(LambdaEvent::new(event, Context::default()))
        .await
        .expect("a batch answer");
    assert_eq!(failures(&response), fixture_ids);
    let json = serde_json::to_value(&response).expect("json");
    assert_eq!(
        json["batchItemFailures"].as_array().map(Vec::len),
        Some(2),
        "{json}"
    );
}

#[tokio::test]
async fn a_failure_without_a_message_id_fails_the_whole_batch() {
    let worker = offline_worker().await;
    // Succeeds without an id: fine.
    let ok = json!({"Records": [sqs_record(None, Some("not json"))]});
    let r = worker
        .handle(LambdaEvent::new(ok, Context::default()))
        .await
        .expect("acknowledged");
    assert!(r.batch_item_failures.is_empty());
    // Fails without an id: cannot be reported alone, so the invocation fails.
    let body = fixture("rewrap-worker/sqs-rewrap.json")["Records"][0]["body"].clone();
    let bad = json!({"Records": [sqs_record(None, body.as_str())]});
    assert!(worker
        .handle(LambdaEvent::new(bad, Context::default()))
        .await
        .is_err());
}

#[tokio::test]
async fn the_worker_sweeps_on_schedule_and_refuses_other_events() {
    let worker = offline_worker().await;
    // The sweep needs the store: unreachable here, so the invocation fails (and is retried).
    let schedule = fixture("rewrap-worker/schedule.json");
    assert!(worker
        .handle(LambdaEvent::new(schedule, Context::default()))
        .await
        .is_err());
    let other = fixture("keys-read/healthz.json");
    assert!(worker
        .handle(LambdaEvent::new(other, Context::default()))
        .await
        .is_err());
}

// ------------------------------------------------------------------ on the AWS emulator

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_and_data_plane_events_work_on_the_emulator() {
    let Some(endpoint) = common::emulator_endpoint() else {
        return;
    };
    let env = common::emulated(&endpoint).await;
    let f = Functions::new(&env.config, &env.settings);
    let org = common::unique("org");

    // An admin (JWT claims) lists the keys: only the service-managed key, the default.
    let keys = call(&f.read, &org_event("keys-read/list-keys.json", &org)).await;
    assert_eq!(
        keys.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&keys.body)
    );
    assert_eq!(keys.json()["default_key_id"], "service");

    // keys/setup (keys-write: the first call creates the org's external id) is stable.
    let setup = call(&f.write, &org_event("keys-write/setup.json", &org)).await;
    assert_eq!(setup.status, StatusCode::OK);
    let external_id = setup.json()["external_id"].as_str().expect("id").to_owned();
    let again = call(&f.write, &org_event("keys-write/setup.json", &org)).await;
    assert_eq!(again.json()["external_id"], external_id.as_str());
    assert_eq!(
        setup.json()["trust_policy"]["Statement"][0]["Condition"]["StringEquals"]["sts:ExternalId"],
        external_id.as_str()
    );

    // A service (IAM context) creates a data key, encrypts and decrypts.
    let dk = create_data_key(&f, &org).await;
    let ct = encrypt(&f, &org, &dk, b"hello world").await;
    assert_eq!(decrypt(&f.data, &org, &ct).await, b"hello world");

    // The audit trail and the (absent) job, as the admin reads them.
    let audit = call(&f.read, &org_event("keys-read/audit.json", &org)).await;
    assert_eq!(audit.status, StatusCode::OK);
    assert!(audit.json()["events"].is_array());
    let job = call(&f.read, &org_event("keys-read/reencryption.json", &org)).await;
    assert_eq!(job.status, StatusCode::OK);
    assert!(job.json()["reencryption"].is_null());

    // An admin of another org sees nothing of it.
    let mut ev = org_event("keys-read/list-keys.json", &org);
    claims(&mut ev)["org"] = "globex".into();
    assert_problem(
        &call(&f.read, &ev).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_reencrypts_on_the_emulator_and_reports_partial_failures() {
    let Some(endpoint) = common::emulator_endpoint() else {
        return;
    };
    let env = common::emulated(&endpoint).await;
    let f = Functions::new(&env.config, &env.settings);
    let org = common::unique("org");

    // Data keys under the service-managed key, each with a ciphertext.
    let mut samples = Vec::new();
    for i in 0..5u8 {
        let dk = create_data_key(&f, &org).await;
        let plaintext = vec![i; 16];
        samples.push((encrypt(&f, &org, &dk, &plaintext).await, plaintext));
    }

    // The customer's role (trusting anyone with the org's external id) and KMS key.
    let (role_arn, key_arn) = customer_role_and_key(&f, &env.config, &org).await;

    // The admin adds it (keys-write): it becomes the default and an adopt job starts.
    let added = add_key(
        &f,
        &org,
        json!({"name": "prod", "type": "aws-kms", "role_arn": role_arn, "key_arn": key_arn}),
    )
    .await;
    let new_key = added["key"]["id"].as_str().expect("id").to_owned();
    assert_eq!(added["reencryption"]["kind"], "adopt");

    // A job whose stored record is unreadable: its plan message fails on every delivery.
    let broken_org = common::unique("broken");
    let broken_job = uuid::Uuid::now_v7().to_string();
    aws_sdk_dynamodb::Client::new(&env.config)
        .put_item()
        .table_name(&env.table)
        .item(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S(format!("ORG#{broken_org}")),
        )
        .item(
            "sk",
            aws_sdk_dynamodb::types::AttributeValue::S(format!("JOB#{broken_job}")),
        )
        .item(
            "state",
            aws_sdk_dynamodb::types::AttributeValue::S("running".into()),
        )
        .send()
        .await
        .expect("put");
    let failing = sqs_record(
        Some("failing-1"),
        Some(
            &json!({"type": "plan", "org": broken_org, "job_id": broken_job, "generation": 1})
                .to_string(),
        ),
    );
    let poison = sqs_record(Some("poison-1"), Some("{\"type\":\"nonsense\"}"));

    // The event source mapping's part, with the failing and the poison messages added to the
    // first invocation: only the failing one is reported.
    let sqs = aws_sdk_sqs::Client::new(&env.config);
    let answers = common::run_queue(
        &f.worker,
        &sqs,
        &env.queue_url,
        &f.read,
        &org,
        vec![failing, poison],
    )
    .await;
    assert_eq!(answers[0], HashSet::from(["failing-1".to_owned()]));
    assert!(answers[1..].iter().all(HashSet::is_empty), "{answers:?}");
    assert!(answers.len() >= 2, "a plan, then its batches");
    let job = call(&f.read, &org_event("keys-read/reencryption.json", &org)).await;
    assert_eq!(job.json()["reencryption"]["state"], "completed");

    // Every data key moved to the customer's key, and every ciphertext decrypts unchanged,
    // through a fresh data-keys function (no cached data key).
    let keys = call(&f.read, &org_event("keys-read/list-keys.json", &org))
        .await
        .json();
    assert_eq!(keys["default_key_id"], new_key.as_str());
    for key in keys["keys"].as_array().expect("keys") {
        let expected = if key["id"] == new_key.as_str() { 5 } else { 0 };
        assert_eq!(key["data_keys"], expected, "{key}");
    }
    let fresh = Functions::new(&env.config, &env.settings);
    for (ct, plaintext) in &samples {
        assert_eq!(&decrypt(&fresh.data, &org, ct).await, plaintext);
    }
}

/// An EventBridge bus of the test's own with a rule that sends the service's events to a new
/// SQS queue, as an operator would route them: returns the bus name and the queue's URL.
async fn events_to_a_queue(config: &aws_config::SdkConfig) -> (String, String) {
    let bus = common::unique("cmk-bus");
    let events = aws_sdk_eventbridge::Client::new(config);
    events
        .create_event_bus()
        .name(&bus)
        .send()
        .await
        .expect("bus");
    let sqs = aws_sdk_sqs::Client::new(config);
    let url = sqs
        .create_queue()
        .queue_name(common::unique("cmk-events"))
        .send()
        .await
        .expect("queue")
        .queue_url
        .expect("url");
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("attributes")
        .attributes
        .and_then(|a| {
            a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                .cloned()
        })
        .expect("arn");
    events
        .put_rule()
        .name("cmk-events")
        .event_bus_name(&bus)
        .event_pattern(json!({"source": [cmk_core::events::SOURCE]}).to_string())
        .send()
        .await
        .expect("rule");
    events
        .put_targets()
        .rule("cmk-events")
        .event_bus_name(&bus)
        .targets(
            aws_sdk_eventbridge::types::Target::builder()
                .id("queue")
                .arn(arn)
                .build()
                .expect("target"),
        )
        .send()
        .await
        .expect("target");
    (bus, url)
}

/// Every event the rule delivered to `queue` so far (EventBridge's envelope per message).
async fn delivered_events(config: &aws_config::SdkConfig, queue: &str) -> Vec<Value> {
    let sqs = aws_sdk_sqs::Client::new(config);
    let mut events = Vec::new();
    loop {
        let got = sqs
            .receive_message()
            .queue_url(queue)
            .max_number_of_messages(10)
            .send()
            .await
            .expect("receive")
            .messages
            .unwrap_or_default();
        if got.is_empty() {
            return events;
        }
        for m in got {
            events.push(serde_json::from_str(m.body().expect("body")).expect("an event"));
            sqs.delete_message()
                .queue_url(queue)
                .receipt_handle(m.receipt_handle().expect("receipt"))
                .send()
                .await
                .expect("delete");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduled_sweep_checks_due_keys_and_events_reach_eventbridge_on_the_emulator() {
    use cmk_core::model::{Health, HealthStatus, KeyId, OrgId};
    use cmk_core::ports::OrgStore;

    let Some(endpoint) = common::emulator_endpoint() else {
        return;
    };
    let mut env = common::emulated(&endpoint).await;
    let (bus, events_queue) = events_to_a_queue(&env.config).await;
    env.settings.event_bus = Some(bus);
    let f = Functions::new(&env.config, &env.settings);
    let org = common::unique("org");
    let (role_arn, key_arn) = customer_role_and_key(&f, &env.config, &org).await;
    let added = add_key(
        &f,
        &org,
        json!({"name": "prod", "type": "aws-kms", "role_arn": role_arn, "key_arn": key_arn}),
    )
    .await;
    let key = added["key"]["id"].as_str().expect("id").to_owned();
    let job_id = added["reencryption"]["id"]
        .as_str()
        .expect("job")
        .to_owned();
    job_to_end(&f, &env, &org).await;

    // An hour ago a use of the key failed; nothing has used it since.
    let failed_at = cmk_core::model::now() - chrono::Duration::hours(1);
    env.backend
        .store
        .set_key_health(
            &OrgId::from_trusted(&org),
            &KeyId::from_trusted(&key),
            &Health::failed(HealthStatus::AccessDenied, failed_at, "refused"),
        )
        .await
        .expect("health");

    let worker = Worker::new(
        cmk_core::engine::RewrapEngine::new(
            cmk_aws::backend::build(&env.config, &env.settings).cmk,
            Default::default(),
        ),
        4,
        Duration::from_secs(900),
    )
    .with_health_checks(Some(cmk_core::health::HealthCheckConfig {
        interval: Duration::from_secs(600),
        ..Default::default()
    }));
    let sweep = || async {
        worker
            .handle(LambdaEvent::new(
                fixture("rewrap-worker/schedule.json"),
                Context::default(),
            ))
            .await
            .expect("the scheduled sweep")
    };
    let health = || async {
        let keys = call(&f.read, &org_event("keys-read/list-keys.json", &org)).await;
        keys.json()["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .find(|k| k["id"] == key.as_str())
            .expect("the key")["health"]
            .clone()
    };

    sweep().await;
    let checked = health().await;
    assert_eq!(
        checked["status"], "ok",
        "checked by a round trip: {checked}"
    );
    assert_eq!(checked["last_failure"]["status"], "access_denied");
    let audit = call(&f.read, &org_event("keys-read/audit.json", &org))
        .await
        .json();
    let changes: Vec<&Value> = audit["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["action"] == "key.health_changed")
        .collect();
    assert_eq!(changes.len(), 1, "{audit}");
    assert_eq!(changes[0]["detail"], "access_denied -> ok");
    assert_eq!(changes[0]["actor"], "system");

    sweep().await;
    assert_eq!(
        health().await["checked_at"],
        checked["checked_at"],
        "checked at most once per interval"
    );

    // The job's start (keys-write), its end (the worker) and the health change (the sweep),
    // each once, through an EventBridge rule to a queue.
    let events = delivered_events(&env.config, &events_queue).await;
    let types: Vec<&str> = events
        .iter()
        .filter_map(|e| e["detail-type"].as_str())
        .collect();
    let mut sorted = types.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        [
            cmk_core::events::KEY_HEALTH_CHANGED,
            cmk_core::events::REENCRYPTION_COMPLETED,
            cmk_core::events::REENCRYPTION_STARTED,
        ],
        "{events:?}"
    );
    let of = |t: &str| {
        events
            .iter()
            .find(|e| e["detail-type"] == t)
            .expect("the event")
    };
    for e in &events {
        assert_eq!(e["source"], cmk_core::events::SOURCE);
        assert_eq!(e["detail"]["org"], org.as_str());
    }
    let completed = &of(cmk_core::events::REENCRYPTION_COMPLETED)["detail"];
    assert_eq!(completed["job_id"], job_id.as_str());
    assert_eq!(completed["kind"], "adopt");
    assert_eq!(completed["target_key"]["name"], "prod");
    assert_eq!(completed["done"], completed["total"]);
    let changed = &of(cmk_core::events::KEY_HEALTH_CHANGED)["detail"];
    assert_eq!(changed["key_id"], key.as_str());
    assert_eq!(changed["key_name"], "prod");
    assert_eq!(
        (
            changed["previous_status"].as_str(),
            changed["status"].as_str()
        ),
        (Some("access_denied"), Some("ok"))
    );
}

/// Events are best effort: with a bus that does not exist every put fails, and the key is
/// still added and its job still completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_event_put_fails_neither_the_request_nor_the_job_on_the_emulator() {
    let Some(endpoint) = common::emulator_endpoint() else {
        return;
    };
    let mut env = common::emulated(&endpoint).await;
    env.settings.event_bus = Some(common::unique("no-such-bus"));
    let f = Functions::new(&env.config, &env.settings);
    let org = common::unique("org");
    let (role_arn, key_arn) = customer_role_and_key(&f, &env.config, &org).await;
    add_key(
        &f,
        &org,
        json!({"name": "prod", "type": "aws-kms", "role_arn": role_arn, "key_arn": key_arn}),
    )
    .await;
    assert_eq!(job_to_end(&f, &env, &org).await["state"], "completed");
}

/// Keys in `oidc` trust mode through the functions, on the emulator: with an issuer
/// configured, `keys/setup` offers OIDC first, a key added without a trust mode trusts the
/// issuer (the role is assumed with `AssumeRoleWithWebIdentity` and a token minted by a KMS
/// signing key), its adopt job completes and every sample decrypts through a fresh function.
/// An unknown trust mode is a 400, and OIDC on a service without an issuer names the field.
/// (The emulator's STS does not check web-identity tokens; `cmk-aws`'s `oidc` suite and
/// `cmk`'s `oidc` test verify them as STS would.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_that_trust_the_oidc_issuer_go_through_the_flows_on_the_emulator() {
    let Some(endpoint) = common::emulator_endpoint() else {
        return;
    };
    let mut env = common::emulated(&endpoint).await;
    let plain = Functions::new(&env.config, &env.settings);
    let signing_key = aws_sdk_kms::Client::new(&env.config)
        .create_key()
        .key_spec(aws_sdk_kms::types::KeySpec::EccNistP256)
        .key_usage(aws_sdk_kms::types::KeyUsageType::SignVerify)
        .send()
        .await
        .expect("signing key")
        .key_metadata
        .and_then(|m| m.arn)
        .expect("arn");
    env.settings.oidc_issuer = Some("https://cmk.example.com/oidc".into());
    env.settings.oidc_signing_keys = vec![signing_key];
    let f = Functions::new(&env.config, &env.settings);
    let org = common::unique("org");

    let mut samples = Vec::new();
    for i in 0..3u8 {
        let dk = create_data_key(&f, &org).await;
        samples.push((encrypt(&f, &org, &dk, &[i; 8]).await, vec![i; 8]));
    }
    // keys-read publishes the issuer's documents, the JWKS from the KMS signing key.
    let discovery = call(&f.read, &fixture("keys-read/oidc-discovery.json")).await;
    assert_eq!(discovery.status, StatusCode::OK);
    assert_eq!(discovery.json()["issuer"], "https://cmk.example.com/oidc");
    let jwks = call(&f.read, &fixture("keys-read/oidc-jwks.json")).await;
    assert_eq!(jwks.status, StatusCode::OK);
    assert_eq!(jwks.json()["keys"][0]["crv"], "P-256");
    assert!(jwks.json()["keys"][0].get("d").is_none());

    let setup = call(&f.write, &org_event("keys-write/setup.json", &org))
        .await
        .json();
    assert_eq!(setup["default_trust"], "oidc");
    assert_eq!(setup["oidc"]["audience"], format!("aws:{org}"));
    assert_eq!(
        setup["oidc"]["trust_policy"]["Statement"][0]["Condition"]["StringEquals"]
            ["cmk.example.com/oidc:sub"],
        format!("cmk:org:{org}")
    );
    let iam = aws_sdk_iam::Client::new(&env.config);
    let role_arn = cmk_aws_testkit::customer_role(
        &iam,
        &common::unique("customer"),
        setup["external_id"].as_str().expect("id"),
    )
    .await;
    let key_arn = aws_sdk_kms::Client::new(&env.config)
        .create_key()
        .send()
        .await
        .expect("key")
        .key_metadata
        .and_then(|m| m.arn)
        .expect("arn");

    let add = |body: Value| add_key_event(&org, &body);
    let bogus = call(
        &f.write,
        &add(json!({"name": "x", "type": "aws-kms", "role_arn": role_arn, "key_arn": key_arn, "trust": "telepathy"})),
    )
    .await;
    assert_problem(&bogus, StatusCode::BAD_REQUEST, "invalid_request");
    let no_issuer = call(
        &plain.write,
        &add(json!({"name": "x", "type": "aws-kms", "role_arn": role_arn, "key_arn": key_arn, "trust": "oidc"})),
    )
    .await;
    assert_problem(&no_issuer, StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(no_issuer.json()["field"], "trust");

    let added = add_key(
        &f,
        &org,
        json!({"name": "prod", "type": "aws-kms", "role_arn": role_arn, "key_arn": key_arn}),
    )
    .await;
    assert_eq!(
        added["key"]["aws"]["trust"], "oidc",
        "the default with an issuer"
    );
    assert_eq!(job_to_end(&f, &env, &org).await["state"], "completed");
    let fresh = Functions::new(&env.config, &env.settings);
    for (ct, plaintext) in &samples {
        assert_eq!(&decrypt(&fresh.data, &org, ct).await, plaintext);
    }
}

/// The setup kit as a customer uses it, on the emulator: the CloudFormation template of
/// `keys/setup/cloudformation` (external id mode, a new key) creates the role and the key in a
/// stack; its outputs `RoleArn` and `KeyArn` are added as a key (201) whose adopt job completes.
/// The emulator's CloudFormation skips `AWS::IAM::OIDCProvider` (it creates no provider), so the
/// OIDC kits are checked by cfn-lint only: every kit (both trust modes, new or existing key)
/// passes `cfn-lint` with no error or warning (`CMK_CFN_LINT`, which the test command sets).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stack_of_the_setup_kit_gives_a_key_that_works_on_the_emulator() {
    let Some(endpoint) = common::emulator_endpoint() else {
        return;
    };
    let mut env = common::emulated(&endpoint).await;
    env.settings.oidc_issuer = Some("https://cmk.example.com/oidc".into());
    env.settings.oidc_signing_keys = vec!["alias/unused-here".into()];
    let f = Functions::new(&env.config, &env.settings);
    let org = common::unique("org");
    let dk = create_data_key(&f, &org).await;
    let ct = encrypt(&f, &org, &dk, b"kit").await;

    let mut ev = org_event("keys-write/setup-cloudformation.json", &org);
    ev["rawQueryString"] = "trust=nonsense".into();
    ev["queryStringParameters"] = json!({"trust": "nonsense"});
    assert_problem(
        &call(&f.write, &ev).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );

    lint_every_kit(&f, &org).await;
    let kit = call(
        &f.write,
        &org_event("keys-write/setup-cloudformation.json", &org),
    )
    .await;
    assert_eq!(
        kit.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&kit.body)
    );
    assert!(kit.content_type.starts_with("application/yaml"));
    let template = String::from_utf8(kit.body.to_vec()).expect("utf8");
    let cfn = aws_sdk_cloudformation::Client::new(&env.config);
    let stack = common::unique("customer");
    cfn.create_stack()
        .stack_name(&stack)
        .template_body(&template)
        .capabilities(aws_sdk_cloudformation::types::Capability::CapabilityNamedIam)
        .send()
        .await
        .expect("the customer's stack");
    let outputs = cfn
        .describe_stacks()
        .stack_name(&stack)
        .send()
        .await
        .expect("describe")
        .stacks
        .and_then(|s| s.into_iter().next())
        .and_then(|s| s.outputs)
        .expect("outputs");
    let output = |name: &str| {
        outputs
            .iter()
            .find(|o| o.output_key() == Some(name))
            .and_then(|o| o.output_value())
            .unwrap_or_else(|| panic!("output {name}"))
            .to_owned()
    };
    let (role_arn, key_arn) = (output("RoleArn"), output("KeyArn"));

    add_key(&f, &org, json!({"name": "from-the-kit", "type": "aws-kms", "role_arn": role_arn, "key_arn": key_arn, "trust": "external_id"})).await;
    assert_eq!(job_to_end(&f, &env, &org).await["state"], "completed");
    let fresh = Functions::new(&env.config, &env.settings);
    assert_eq!(decrypt(&fresh.data, &org, &ct).await, b"kit");
}

/// Runs cfn-lint on the kit of every trust mode, with a new key and with an existing one.
async fn lint_every_kit(f: &Functions, org: &str) {
    let Some(lint) = std::env::var_os("CMK_CFN_LINT") else {
        assert!(
            std::env::var_os("CMK_REQUIRE_AWS_TESTS").is_none(),
            "CMK_CFN_LINT (the cfn-lint executable) is required with CMK_REQUIRE_AWS_TESTS"
        );
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    for trust in ["oidc", "external_id"] {
        for create_key in ["true", "false"] {
            let mut ev = org_event("keys-write/setup-cloudformation.json", org);
            ev["rawQueryString"] = format!("trust={trust}&create_key={create_key}").into();
            ev["queryStringParameters"] = json!({"trust": trust, "create_key": create_key});
            let kit = call(&f.write, &ev).await;
            assert_eq!(kit.status, StatusCode::OK, "{trust} {create_key}");
            let file = dir.path().join(format!("{trust}-{create_key}.yaml"));
            std::fs::write(&file, &kit.body).expect("write");
            let out = std::process::Command::new(&lint)
                .arg(&file)
                .output()
                .expect("run cfn-lint");
            assert!(
                out.status.success(),
                "cfn-lint of the {trust} kit (create_key={create_key}):\n{}{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&kit.body)
            );
        }
    }
}

/// The customer's side of a key of `org`: a role that trusts the org's external id (read from
/// `keys/setup` through keys-write) and a KMS key.
async fn customer_role_and_key(
    f: &Functions,
    config: &aws_config::SdkConfig,
    org: &str,
) -> (String, String) {
    let setup = call(&f.write, &org_event("keys-write/setup.json", org)).await;
    let external_id = setup.json()["external_id"].as_str().expect("id").to_owned();
    let iam = aws_sdk_iam::Client::new(config);
    let role_arn =
        cmk_aws_testkit::customer_role(&iam, &common::unique("customer"), &external_id).await;
    let key_arn = aws_sdk_kms::Client::new(config)
        .create_key()
        .send()
        .await
        .expect("key")
        .key_metadata
        .and_then(|m| m.arn)
        .expect("arn");
    (role_arn, key_arn)
}

/// `POST keys` of `org` with `body`, as the HTTP API hands it to keys-write.
fn add_key_event(org: &str, body: &Value) -> Value {
    let mut ev = org_event("keys-write/add-key.json", org);
    set_body(&mut ev, body);
    ev
}

/// Adds a key of `org` through keys-write, which must answer 201; returns the answer.
async fn add_key(f: &Functions, org: &str, body: Value) -> Value {
    let added = call(&f.write, &add_key_event(org, &body)).await;
    assert_eq!(
        added.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&added.body)
    );
    added.json()
}

/// Plays the queue for the worker until `org`'s job ends; returns the job as keys-read shows it.
async fn job_to_end(f: &Functions, env: &common::Emulated, org: &str) -> Value {
    common::run_queue(
        &f.worker,
        &aws_sdk_sqs::Client::new(&env.config),
        &env.queue_url,
        &f.read,
        org,
        Vec::new(),
    )
    .await;
    call(&f.read, &org_event("keys-read/reencryption.json", org))
        .await
        .json()["reencryption"]
        .clone()
}
