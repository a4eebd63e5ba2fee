//! The rewrap invariants under faults injected at the ports: duplicate delivery, a crash between
//! any two writes of a batch, a worker that dies mid-job, throttling, and admins racing; and
//! retries and sweeps that never multiply queued work.

use cmk_tests as common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cmk_core::model::{JobState, OrgId};
use cmk_core::ports::{DataKeyStore, OrgStore, RewrapQueue};
use common::faults::{with_faults, RefusedOneCallRewrap, StoreFaults, ThrottlingKeys};
use common::{Options, TestApp};
use serde_json::json;

fn manual() -> Options {
    Options {
        worker: false,
        ..Options::default()
    }
}

/// Receives and handles every visible message once; acknowledges the ones handled.
async fn pump(app: &TestApp, duplicate: bool) -> usize {
    let mut handled = 0;
    loop {
        let deliveries = app
            .queue
            .receive(10, Duration::ZERO)
            .await
            .expect("receive");
        if deliveries.is_empty() {
            return handled;
        }
        for d in deliveries {
            if app.engine.handle(&d.body).await.is_ok() {
                if duplicate {
                    app.engine
                        .handle(&d.body)
                        .await
                        .expect("a duplicate is harmless");
                }
                app.queue.ack(&d.receipt).await.expect("ack");
            }
            handled += 1;
        }
    }
}

async fn job_of(app: &TestApp, org: &str) -> cmk_core::model::Job {
    app.sqlite
        .load_org(&OrgId::from_trusted(org))
        .await
        .expect("snapshot")
        .job
        .expect("a job")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_delivered_twice_counts_once() {
    let app = TestApp::with(manual()).await;
    let samples = app.data_with_samples("dup", 230).await;
    app.add_local_key("dup", "k").await;
    let handled = pump(&app, true).await;
    assert!(handled >= 6, "a plan and five batches: {handled}");
    let job = job_of(&app, "dup").await;
    assert_eq!(job.state, JobState::Completed);
    assert_eq!((job.done, job.total, job.failed), (230, 230, 0));
    app.assert_invariants("dup").await;
    app.assert_decrypts("dup", &samples).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_job_is_planned_in_bounded_segments() {
    // 400 data keys in batches of 50, 2 batches per plan segment: 5 plan deliveries, batches
    // handled twice (as a redelivery would), and the job counts every data key once. (Every
    // message twice, plans included, is `every_message_delivered_twice_counts_once`.)
    let app = TestApp::with(manual()).await;
    let samples = app.data_with_samples("segments", 400).await;
    app.add_local_key("segments", "k").await;
    let mut plans = Vec::new();
    loop {
        let deliveries = app.queue.receive(1, Duration::ZERO).await.expect("receive");
        let Some(d) = deliveries.into_iter().next() else {
            break;
        };
        let body: serde_json::Value = serde_json::from_str(&d.body).expect("a JSON message");
        if body["type"] == "plan" {
            plans.push(body["resume"].clone());
        } else {
            app.engine.handle(&d.body).await.expect("a duplicate batch");
        }
        app.engine.handle(&d.body).await.expect("handled");
        app.queue.ack(&d.receipt).await.expect("ack");
    }
    // Four segments of two full batches, and a last continuation that finds nothing more.
    assert_eq!(plans.len(), 5, "one plan and four continuations: {plans:?}");
    assert!(plans[0].is_null() && plans[1..].iter().all(|c| c["source"] == "service"));
    let job = job_of(&app, "segments").await;
    assert_eq!(
        (job.state, job.done, job.total, job.failed),
        (JobState::Completed, 400, 400, 0)
    );
    app.assert_invariants("segments").await;
    app.assert_decrypts("segments", &samples).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_any_two_writes_of_a_batch_loses_and_doubles_nothing() {
    let faults = Arc::new(StoreFaults::default());
    let f = Arc::clone(&faults);
    let app = TestApp::with(Options {
        worker: false,
        visibility: Duration::from_millis(100),
        wrap_store: Box::new(move |store| with_faults(store, f)),
        ..Options::default()
    })
    .await;
    let samples = app.data_with_samples("crash", 160).await;
    app.add_local_key("crash", "k").await;

    // Crash before a batch commit, after one (before completion is checked), and after the
    // job-finishing write (before the message is acknowledged).
    faults.batch_before.store(2, Ordering::SeqCst);
    faults.batch_after.store(2, Ordering::SeqCst);
    faults.finish_after.store(1, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        pump(&app, false).await;
        let job = job_of(&app, "crash").await;
        assert!(job.done <= job.total, "done never exceeds total");
        if job.state != JobState::Running && app.queue.depth().await.expect("depth") == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "job stuck: {job:?}");
        // Unacknowledged messages come back after the visibility timeout.
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    assert_eq!(
        faults.batch_before.load(Ordering::SeqCst),
        0,
        "every fault fired"
    );
    assert_eq!(faults.batch_after.load(Ordering::SeqCst), 0);
    assert_eq!(faults.finish_after.load(Ordering::SeqCst), 0);
    let job = job_of(&app, "crash").await;
    assert_eq!(job.state, JobState::Completed);
    assert_eq!((job.done, job.total, job.failed), (160, 160, 0));
    app.assert_invariants("crash").await;
    app.assert_decrypts("crash", &samples).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_dies_mid_job_is_replaced_and_the_job_finishes_exactly() {
    let mut app = TestApp::with(Options {
        worker: false,
        batch_size: 20,
        visibility: Duration::from_millis(300),
        ..Options::default()
    })
    .await;
    let samples = app.data_with_samples("die", 400).await;
    app.add_local_key("die", "k").await;
    app.start_worker();
    // Kill it as soon as some progress is visible.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let job = job_of(&app, "die").await;
        if job.done > 0 || job.state != JobState::Running {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    app.kill_worker();
    let at_death = job_of(&app, "die").await;
    app.start_worker();
    let job = app.wait_job("die").await;
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(job["done"], 400);
    assert_eq!(job["total"], 400);
    assert!(at_death.done <= 400);
    app.assert_invariants("die").await;
    app.assert_decrypts("die", &samples).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_retried_with_backoff_and_beyond_retries_recorded() {
    let throttle = Arc::new(AtomicU32::new(0));
    let t = Arc::clone(&throttle);
    let app = TestApp::with(Options {
        worker: false,
        wrap_keys: Box::new(move |inner| {
            Arc::new(ThrottlingKeys {
                inner,
                throttle_next: t,
            })
        }),
        ..Options::default()
    })
    .await;
    let samples = app.data_with_samples("throttle", 40).await;
    app.add_local_key("throttle", "k").await;
    // Two throttles are absorbed by retries (3 attempts per data key).
    throttle.store(2, Ordering::SeqCst);
    pump(&app, false).await;
    let job = job_of(&app, "throttle").await;
    assert_eq!((job.state, job.done), (JobState::Completed, 40));
    app.assert_decrypts("throttle", &samples).await;

    // Persistent throttling beyond retries fails data keys with reason `throttled`; the job
    // ends failed, and a retry completes it.
    let key2 = app.add_local_key("throttle", "k2").await;
    let (status, _) = app
        .admin(
            "POST",
            &format!("/v1/orgs/throttle/keys/{key2}/default"),
            "throttle",
            None,
        )
        .await;
    assert_eq!(status, 200);
    let key1 = app.keys("throttle").await["keys"][1]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let (status, body) = app
        .admin(
            "POST",
            &format!("/v1/orgs/throttle/keys/{key1}/disable"),
            "throttle",
            Some(json!({"reencrypt_to": key2})),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    throttle.store(1_000_000, Ordering::SeqCst);
    pump(&app, false).await;
    let job = job_of(&app, "throttle").await;
    assert_eq!(job.state, JobState::Failed, "{job:?}");
    assert_eq!((job.done, job.failed), (0, 40));
    assert!(job.errors.iter().all(|e| e.reason.as_str() == "throttled"));
    throttle.store(0, Ordering::SeqCst);
    let (status, body) = app
        .admin(
            "POST",
            "/v1/orgs/throttle/reencryption/retry",
            "throttle",
            None,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    pump(&app, false).await;
    let job = job_of(&app, "throttle").await;
    assert_eq!(
        (job.state, job.done, job.failed, job.total),
        (JobState::Completed, 40, 0, 40)
    );
    app.assert_invariants("throttle").await;
    app.assert_decrypts("throttle", &samples).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_one_call_rewrap_falls_back_and_a_failure_names_the_key_that_failed() {
    let deny = Arc::new(std::sync::Mutex::new(None));
    let d = Arc::clone(&deny);
    let app = TestApp::with(Options {
        worker: false,
        wrap_keys: Box::new(move |inner| {
            Arc::new(RefusedOneCallRewrap {
                inner,
                deny_wraps_by: d,
            })
        }),
        ..Options::default()
    })
    .await;
    let org = "blame";
    let samples = app.data_with_samples(org, 30).await;
    let k1 = app.add_local_key(org, "k1").await;
    let k2 = app.add_local_key(org, "k2").await;
    // The one-call rewrap is refused, but unwrap then wrap is allowed: the job still completes.
    pump(&app, false).await;
    let job = job_of(&app, org).await;
    assert_eq!(
        (job.state, job.done, job.failed),
        (JobState::Completed, 30, 0)
    );

    // The target refuses: the failures and the health name the target, not the source.
    let (status, body) = app
        .admin(
            "POST",
            &format!("/v1/orgs/{org}/keys/{k2}/default"),
            org,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    *deny.lock().expect("lock") = Some(cmk_core::model::KeyId::from_trusted(k2.clone()));
    let (status, body) = app
        .admin(
            "POST",
            &format!("/v1/orgs/{org}/keys/{k1}/disable"),
            org,
            Some(json!({"reencrypt_to": k2})),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    pump(&app, false).await;
    let job = job_of(&app, org).await;
    assert_eq!((job.state, job.failed), (JobState::Failed, 30), "{job:?}");
    assert!(
        job.errors
            .iter()
            .all(|e| e.key_id.as_str() == k2 && e.reason.as_str() == "access_denied"),
        "{:?}",
        job.errors
    );
    let listing = app.keys(org).await;
    let health = |id: &str| {
        listing["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .find(|k| k["id"] == id)
            .map(|k| k["health"]["status"].clone())
    };
    assert_eq!(health(&k2), Some(json!("access_denied")));
    assert_ne!(health(&k1), Some(json!("access_denied")));

    // Access returns; the retry completes the job.
    *deny.lock().expect("lock") = None;
    let (status, body) = app
        .admin(
            "POST",
            &format!("/v1/orgs/{org}/reencryption/retry"),
            org,
            None,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    pump(&app, false).await;
    let job = job_of(&app, org).await;
    assert_eq!(
        (job.state, job.done, job.failed),
        (JobState::Completed, 30, 0)
    );
    app.assert_invariants(org).await;
    app.assert_decrypts(org, &samples).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_corrupt_data_key_fails_alone_and_the_rest_of_its_batch_moves() {
    let app = TestApp::with(manual()).await;
    let org = "corrupt";
    // The corrupt one first (the lowest id): the batch meets it before the others.
    let bad = cmk_core::model::DataKeyRecord {
        id: cmk_core::model::DataKeyId::generate(),
        key_id: cmk_core::model::KeyId::service(),
        wrapped: vec![1, 2, 3],
        version: 0,
        created_at: cmk_core::model::now(),
        row_hint: None,
    };
    app.sqlite
        .insert_data_keys(&OrgId::from_trusted(org), std::slice::from_ref(&bad))
        .await
        .expect("insert");
    let samples = app.data_with_samples(org, 40).await;
    app.add_local_key(org, "k").await;
    pump(&app, false).await;
    let job = job_of(&app, org).await;
    assert_eq!(
        (job.state, job.done, job.failed),
        (JobState::Failed, 40, 1),
        "{job:?}"
    );
    assert_eq!(job.errors.len(), 1);
    assert_eq!(job.errors[0].data_key_id, bad.id);
    app.assert_decrypts(org, &samples).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_admins_racing_leave_one_default_and_at_most_one_job() {
    let app = Arc::new(TestApp::start().await);
    let org = "race";
    let samples = app.data_with_samples(org, 50).await;
    let mut keys = Vec::new();
    for name in ["a", "b", "c", "d"] {
        keys.push(app.add_local_key(org, name).await);
    }
    app.wait_job(org).await;
    let more = app.data_with_samples(org, 30).await;

    let mut tasks = Vec::new();
    for i in 0..20usize {
        let app = Arc::clone(&app);
        let keys = keys.clone();
        tasks.push(tokio::spawn(async move {
            let key = &keys[i % keys.len()];
            let other = &keys[(i + 1) % keys.len()];
            let (status, body) = match i % 3 {
                0 => {
                    app.admin(
                        "POST",
                        &format!("/v1/orgs/{org}/keys/{key}/default"),
                        org,
                        None,
                    )
                    .await
                }
                1 => {
                    app.admin(
                        "POST",
                        &format!("/v1/orgs/{org}/keys/{key}/disable"),
                        org,
                        Some(json!({"reencrypt_to": other})),
                    )
                    .await
                }
                _ => {
                    app.admin(
                        "POST",
                        &format!("/v1/orgs/{org}/keys/disable-all"),
                        org,
                        None,
                    )
                    .await
                }
            };
            assert!(
                matches!(status, 200 | 202 | 409),
                "a racing request wins or gets a clear 409: {status} {body}"
            );
            (status, body)
        }));
    }
    let mut started = 0;
    for t in tasks {
        let (status, _) = t.await.expect("task");
        if status == 202 {
            started += 1;
        }
    }
    assert!(started >= 1, "someone started a job");
    // While racing, at most one job was ever unfinished: jobs started = distinct job ids, and
    // each began after the previous one ended (they could not overlap).
    let job = app.wait_job(org).await;
    assert!(job["state"] == "completed", "{job}");
    app.assert_invariants(org).await;
    app.assert_decrypts(org, &samples).await;
    app.assert_decrypts(org, &more).await;
    let (_, audit) = app
        .admin("GET", &format!("/v1/orgs/{org}/audit?limit=500"), org, None)
        .await;
    let starts = audit["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["action"] == "reencryption.started")
        .count();
    assert_eq!(starts, 1 + started, "the adopt job plus one per 202");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_plan_message_is_recovered_by_the_sweep() {
    let mut app = TestApp::with(manual()).await;
    let samples = app.data_with_samples("lost", 30).await;
    app.add_local_key("lost", "k").await;
    // The plan message is lost (acknowledged unread, as after a dead-letter queue).
    for d in app
        .queue
        .receive(10, Duration::ZERO)
        .await
        .expect("receive")
    {
        app.queue.ack(&d.receipt).await.expect("ack");
    }
    assert_eq!(job_of(&app, "lost").await.state, JobState::Running);
    // The worker's sweep finds the stalled job and plans it again.
    app.start_worker();
    let job = app.wait_job("lost").await;
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(job["done"], 30);
    app.assert_decrypts("lost", &samples).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_retries_of_a_running_job_enqueue_at_most_one_extra_plan() {
    let app = TestApp::with(Options {
        worker: false,
        stalled_after: Duration::from_secs(1),
        ..Options::default()
    })
    .await;
    let org = "replan";
    app.data_with_samples(org, 20).await;
    app.add_local_key(org, "k").await;
    let planned = app.queue.depth().await.expect("depth");
    assert_eq!(planned, 1, "adding the first key enqueues one plan");
    let retry = || async {
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
    };
    // Just planned: no retry plans it again.
    for _ in 0..50 {
        retry().await;
    }
    assert_eq!(app.queue.depth().await.expect("depth"), planned);
    // Idle past the stall interval (nothing consumes the queue): 50 retries, in a row and at
    // once, plan it once more, and a sweep right after adds nothing.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    for _ in 0..25 {
        retry().await;
    }
    futures::future::join_all((0..25).map(|_| retry())).await;
    assert_eq!(app.queue.depth().await.expect("depth"), planned + 1);
    assert_eq!(
        app.engine
            .sweep(Duration::from_secs(1))
            .await
            .expect("sweep"),
        0
    );
    assert_eq!(app.queue.depth().await.expect("depth"), planned + 1);

    // The sweep alone, after another idle interval, plans it once however often it runs.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let mut replanned = 0;
    for _ in 0..5 {
        replanned += app
            .engine
            .sweep(Duration::from_secs(1))
            .await
            .expect("sweep");
    }
    assert_eq!(replanned, 1);
    assert_eq!(app.queue.depth().await.expect("depth"), planned + 2);
}
