//! Customer roles with IAM enforced, on an emulator of this suite's own (IAM enforcement is
//! global to an emulator): a wrong external id is refused; a key in a second account is reached
//! through `AssumeRole` by key ARN and by alias ARN; removing the role's KMS permission makes the
//! key `access_denied` for health checks, decrypts and jobs, until the permission is restored and
//! the job is retried. Needs `CMK_MOTO_SERVER` (the emulator's executable; the test command sets
//! it); skips without it unless `CMK_REQUIRE_AWS_TESTS` is set.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use aws_credential_types::Credentials;
use cmk_aws::backend::{build, AwsSettings};
use cmk_aws::emulator::Emulator;
use cmk_core::engine::{EngineConfig, RewrapEngine};
use cmk_core::model::{EncryptionContext, HealthStatus, JobState, OrgId};
use cmk_core::service::NewKeySpec;
use cmk_core::worker::{run_worker, WorkerConfig};
use cmk_core::{Cmk, CoreError};

async fn wait_job(cmk: &Cmk, org: &OrgId) -> cmk_core::model::Job {
    for _ in 0..600 {
        let job = cmk.reencryption(org).await.unwrap().expect("a job");
        if job.state != JobState::Running {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the job did not end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_roles_external_ids_second_accounts_and_revocation() {
    let Some(emu) = Emulator::start().await else {
        return;
    };
    let ep = emu.endpoint().to_owned();
    let root = emu.root_config().await;
    let iam = aws_sdk_iam::Client::new(&root);

    // The service's own identity: an IAM user allowed everything in the operator's account.
    let service_config = common::service_identity(&emu).await;

    let table = common::unique("cmk");
    cmk_aws::resources::ensure_table(&aws_sdk_dynamodb::Client::new(&root), &table)
        .await
        .unwrap();
    let queue_url = cmk_aws::resources::ensure_queues(
        &aws_sdk_sqs::Client::new(&root),
        &common::unique("rewrap"),
    )
    .await
    .unwrap();
    let service_key = aws_sdk_kms::Client::new(&root)
        .create_key()
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap()
        .arn
        .unwrap();
    let backend = build(
        &service_config,
        &AwsSettings {
            table,
            queue_url,
            service_key_id: service_key,
            service_principal: "arn:aws:iam::123456789012:user/cmk-service".into(),
            endpoint_url: Some(ep.clone()),
            data_key_cache_ttl: Duration::ZERO,
            data_key_cache_size: 0,
            failure_memory: Duration::from_secs(10),
            stalled_after: Duration::from_secs(60),
            service_account_id: None,
            allow_same_account_roles: true,
        },
    );
    let cmk = backend.cmk.clone();
    let org = OrgId::from_trusted("acme");
    let external_id = cmk.setup(&org).await.unwrap().external_id;

    // Customer roles in the operator's account (trust policies are checked there), and a key in a
    // second account, reached by assuming a role there.
    let good = common::customer_role(&iam, "customer", &external_id).await;
    let wrong = common::customer_role(&iam, "someone-else", "not-this-orgs-external-id").await;
    let kms_root = aws_sdk_kms::Client::new(&root);
    let local_key = kms_root
        .create_key()
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap()
        .arn
        .unwrap();

    let second_role = "arn:aws:iam::111111111111:role/customer-second";
    let sts = aws_sdk_sts::Client::new(&root);
    let assumed = sts
        .assume_role()
        .role_arn(second_role)
        .role_session_name("setup")
        .send()
        .await
        .expect("assume into the second account")
        .credentials
        .expect("creds");
    let second = emu
        .config(Credentials::new(
            assumed.access_key_id(),
            assumed.secret_access_key(),
            Some(assumed.session_token().to_owned()),
            None,
            "static",
        ))
        .await;
    // The customer's role in the second account (trusting the service with the org's external
    // id; the emulator does not check trust policies across accounts).
    let iam_second = aws_sdk_iam::Client::new(&second);
    let created = common::customer_role(&iam_second, "customer-second", &external_id).await;
    assert_eq!(created, second_role);
    let kms_second = aws_sdk_kms::Client::new(&second);
    let far_meta = kms_second
        .create_key()
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap();
    let far_key = far_meta.arn.clone().unwrap();
    assert!(
        far_key.contains(":111111111111:key/"),
        "a key of the second account: {far_key}"
    );
    kms_second
        .create_alias()
        .alias_name("alias/far")
        .target_key_id(far_meta.key_id())
        .send()
        .await
        .unwrap();
    let far_alias = "arn:aws:kms:us-east-1:111111111111:alias/far".to_owned();

    // Data under the service key before any CMK.
    let mut ciphertexts = Vec::new();
    for i in 0..12u8 {
        let dk = cmk.create_data_key(&org).await.unwrap();
        ciphertexts.push((
            cmk.encrypt(&org, &dk.id, &[i; 16], &EncryptionContext::new())
                .await
                .unwrap(),
            vec![i; 16],
        ));
    }

    emu.enforce_iam(true).await;
    let engine = Arc::new(RewrapEngine::new(cmk.clone(), EngineConfig::default()));
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(run_worker(
        engine,
        WorkerConfig {
            poll_wait: Duration::from_secs(1),
            ..WorkerConfig::default()
        },
        async move {
            let mut rx = stop_rx;
            let _ = rx.wait_for(|s| *s).await;
        },
    ));

    // A role that demands another external id is refused, and nothing is stored.
    let refused = cmk
        .add_key(
            "alice",
            &org,
            "wrong",
            NewKeySpec::AwsKms {
                role_arn: wrong,
                key_arn: local_key.clone(),
                rewrap_rate_limit: None,
            },
        )
        .await;
    match refused {
        Err(CoreError::KeyCheckFailed { reason, message }) => {
            assert_eq!(reason, HealthStatus::AccessDenied, "{message}");
            assert!(
                message.contains("external id"),
                "the reason says what to fix: {message}"
            );
        }
        other => panic!("expected key_check_failed, got {other:?}"),
    }
    assert_eq!(cmk.list_keys(&org).await.unwrap().keys.len(), 1);

    // The first key: in the operator's account through the customer role; adopted.
    let (first, job) = cmk
        .add_key(
            "alice",
            &org,
            "prod",
            NewKeySpec::AwsKms {
                role_arn: good.clone(),
                key_arn: local_key.clone(),
                rewrap_rate_limit: None,
            },
        )
        .await
        .expect("the customer role works");
    assert!(job.is_some());
    assert_eq!(wait_job(&cmk, &org).await.state, JobState::Completed);

    // A key of the second account through a role there, by alias ARN: the key ARN is recorded.
    let (far, _) = cmk
        .add_key(
            "alice",
            &org,
            "far",
            NewKeySpec::AwsKms {
                role_arn: second_role.into(),
                key_arn: far_alias.clone(),
                rewrap_rate_limit: None,
            },
        )
        .await
        .expect("a key in a second account");
    match &far.record.spec {
        cmk_core::model::KeySpec::AwsKms {
            resolved_key_arn, ..
        } => {
            assert_eq!(resolved_key_arn.as_deref(), Some(far_key.as_str()))
        }
        other => panic!("{other:?}"),
    }
    // The same key of the second account by its key ARN.
    let (by_arn, _) = cmk
        .add_key(
            "alice",
            &org,
            "far by arn",
            NewKeySpec::AwsKms {
                role_arn: second_role.into(),
                key_arn: far_key.clone(),
                rewrap_rate_limit: None,
            },
        )
        .await
        .expect("a key in a second account, by key ARN");
    assert_eq!(by_arn.record.health.status, HealthStatus::Ok);
    cmk.set_default("alice", &org, &far.record.id)
        .await
        .unwrap();
    cmk.disable("alice", &org, &first.record.id, &far.record.id)
        .await
        .unwrap();
    assert_eq!(wait_job(&cmk, &org).await.state, JobState::Completed);
    for (ct, pt) in &ciphertexts {
        assert_eq!(
            cmk.decrypt(&org, ct, &EncryptionContext::new())
                .await
                .unwrap()
                .as_slice(),
            pt.as_slice()
        );
    }

    // The customer re-points the alias at another key: the CMK stays pinned to the key ARN its
    // check resolved, so data keys wrapped before and after both decrypt.
    emu.enforce_iam(false).await;
    let other_key = kms_second
        .create_key()
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap();
    kms_second
        .update_alias()
        .alias_name("alias/far")
        .target_key_id(other_key.key_id())
        .send()
        .await
        .expect("re-point the alias");
    emu.enforce_iam(true).await;
    for i in 0..3u8 {
        let dk = cmk.create_data_key(&org).await.unwrap();
        assert_eq!(dk.key_id, far.record.id, "wrapped by the default key");
        let pt = vec![100 + i; 16];
        ciphertexts.push((
            cmk.encrypt(&org, &dk.id, &pt, &EncryptionContext::new())
                .await
                .unwrap(),
            pt,
        ));
    }
    for (ct, pt) in &ciphertexts {
        let back = cmk
            .decrypt(&org, ct, &EncryptionContext::new())
            .await
            .expect("decrypts after the alias moved");
        assert_eq!(back.as_slice(), pt.as_slice());
    }

    // The customer removes the role's KMS permission: health checks, decrypts and jobs say so.
    emu.enforce_iam(false).await;
    iam_second
        .delete_role_policy()
        .role_name("customer-second")
        .policy_name("kms")
        .send()
        .await
        .expect("remove the role's KMS permission");
    emu.enforce_iam(true).await;
    let checked = cmk.check_key("alice", &org, &far.record.id).await.unwrap();
    assert_eq!(
        checked.record.health.status,
        HealthStatus::AccessDenied,
        "{:?}",
        checked.record.health
    );
    match cmk
        .decrypt(&org, &ciphertexts[0].0, &EncryptionContext::new())
        .await
    {
        Err(CoreError::KeyUnavailable { key_id, reason, .. }) => {
            assert_eq!(key_id, far.record.id);
            assert_eq!(reason, HealthStatus::AccessDenied);
        }
        other => panic!("expected key_unavailable, got {other:?}"),
    }
    cmk.disable_all("alice", &org).await.unwrap();
    let failed = wait_job(&cmk, &org).await;
    assert_eq!(failed.state, JobState::Failed, "{failed:?}");
    let data_keys = ciphertexts.len() as u64;
    assert_eq!(failed.failed, data_keys);
    assert!(failed
        .errors
        .iter()
        .all(|e| e.reason == HealthStatus::AccessDenied && e.key_id == far.record.id));

    // Access returns; the admin retries; everything moves and still decrypts.
    emu.enforce_iam(false).await;
    iam_second
        .put_role_policy()
        .role_name("customer-second")
        .policy_name("kms")
        .policy_document(common::ALLOW_KMS)
        .send()
        .await
        .expect("restore the permission");
    emu.enforce_iam(true).await;
    cmk.retry("alice", &org).await.unwrap();
    let done = wait_job(&cmk, &org).await;
    assert_eq!(
        (done.state, done.done, done.failed),
        (JobState::Completed, data_keys, 0),
        "{done:?}"
    );
    for (ct, pt) in &ciphertexts {
        assert_eq!(
            cmk.decrypt(&org, ct, &EncryptionContext::new())
                .await
                .unwrap()
                .as_slice(),
            pt.as_slice()
        );
    }
    let _ = stop.send(true);
    let _ = worker.await;
}
