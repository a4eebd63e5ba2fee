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
use cmk_aws_testkit::{customer_role, ALLOW_KMS};
use cmk_core::engine::{EngineConfig, RewrapEngine};
use cmk_core::model::{EncryptionContext, HealthStatus, Job, JobState, Key, KeySpec, OrgId};
use cmk_core::service::NewKeySpec;
use cmk_core::worker::{run_worker, WorkerConfig};
use cmk_core::{Cmk, CoreError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

async fn wait_job(cmk: &Cmk, org: &OrgId) -> Job {
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
    let mut scene = Scene::set_up(emu).await;
    scene
        .a_role_demanding_another_external_id_is_refused()
        .await;
    let first = scene.a_key_of_the_operators_account_is_adopted().await;
    let far = scene
        .a_second_accounts_key_is_added_by_alias_and_by_arn()
        .await;
    scene.data_moves_to_the_second_account(&first, &far).await;
    scene.the_key_stays_pinned_when_its_alias_moves(&far).await;
    scene
        .a_removed_permission_is_access_denied_everywhere(&far)
        .await;
    scene.restored_access_and_a_retry_move_everything().await;
    scene.stop().await;
}

/// The service on the emulator with IAM enforced and its worker running, the customer's roles
/// and keys in two accounts, and every ciphertext written so far.
struct Scene {
    emu: Emulator,
    cmk: Cmk,
    org: OrgId,
    /// A role in the operator's account that trusts the org's external id.
    good_role: String,
    /// A role that demands another external id.
    wrong_role: String,
    /// A key in the operator's account.
    local_key: String,
    iam_second: aws_sdk_iam::Client,
    kms_second: aws_sdk_kms::Client,
    far_key: String,
    far_alias: String,
    ciphertexts: Vec<(String, Vec<u8>)>,
    stop: watch::Sender<bool>,
    worker: JoinHandle<()>,
}

const SECOND_ROLE: &str = "arn:aws:iam::111111111111:role/customer-second";

impl Scene {
    async fn set_up(emu: Emulator) -> Self {
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
        let kms_root = aws_sdk_kms::Client::new(&root);
        let service_key = create_key(&kms_root).await.arn.unwrap();
        let backend = build(
            &service_config,
            &AwsSettings {
                table,
                queue_url,
                service_key_id: service_key,
                service_principal: "arn:aws:iam::123456789012:user/cmk-service".into(),
                endpoint_url: Some(ep),
                data_key_cache_ttl: Duration::ZERO,
                data_key_cache_size: 0,
                failure_memory: Duration::from_secs(10),
                stalled_after: Duration::from_secs(60),
                service_account_id: None,
                allow_same_account_roles: true,
                event_bus: None,
                oidc_issuer: None,
                oidc_signing_keys: Vec::new(),
            },
        );
        let cmk = backend.cmk.clone();
        let org = OrgId::from_trusted("acme");
        let external_id = cmk.setup(&org).await.unwrap().external_id;

        // Customer roles in the operator's account (trust policies are checked there), and a
        // key in a second account, reached by assuming a role there.
        let good_role = customer_role(&iam, "customer", &external_id).await;
        let wrong_role = customer_role(&iam, "someone-else", "not-this-orgs-external-id").await;
        let local_key = create_key(&kms_root).await.arn.unwrap();

        let assumed = aws_sdk_sts::Client::new(&root)
            .assume_role()
            .role_arn(SECOND_ROLE)
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
        // The customer's role in the second account (trusting the service with the org's
        // external id; the emulator does not check trust policies across accounts).
        let iam_second = aws_sdk_iam::Client::new(&second);
        let created = customer_role(&iam_second, "customer-second", &external_id).await;
        assert_eq!(created, SECOND_ROLE);
        let kms_second = aws_sdk_kms::Client::new(&second);
        let far_meta = create_key(&kms_second).await;
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
        let (stop, stop_rx) = watch::channel(false);
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
        Self {
            emu,
            cmk,
            org,
            good_role,
            wrong_role,
            local_key,
            iam_second,
            kms_second,
            far_key,
            far_alias,
            ciphertexts,
            stop,
            worker,
        }
    }

    async fn add(
        &self,
        name: &str,
        role_arn: &str,
        key_arn: &str,
    ) -> Result<(Key, Option<Job>), CoreError> {
        self.cmk
            .add_key(
                "alice",
                &self.org,
                name,
                NewKeySpec::AwsKms {
                    role_arn: role_arn.to_owned(),
                    key_arn: key_arn.to_owned(),
                    rewrap_rate_limit: None,
                    trust: Some(cmk_core::model::TrustMode::ExternalId),
                },
            )
            .await
    }

    async fn wait_job(&self) -> Job {
        wait_job(&self.cmk, &self.org).await
    }

    async fn assert_everything_decrypts(&self) {
        for (ct, pt) in &self.ciphertexts {
            let back = self
                .cmk
                .decrypt(&self.org, ct, &EncryptionContext::new())
                .await
                .expect("decrypts");
            assert_eq!(back.as_slice(), pt.as_slice());
        }
    }

    /// Nothing is stored, and the reason says what to fix.
    async fn a_role_demanding_another_external_id_is_refused(&self) {
        match self.add("wrong", &self.wrong_role, &self.local_key).await {
            Err(CoreError::KeyCheckFailed { reason, message }) => {
                assert_eq!(reason, HealthStatus::AccessDenied, "{message}");
                assert!(
                    message.contains("external id"),
                    "the reason says what to fix: {message}"
                );
            }
            other => panic!("expected key_check_failed, got {other:?}"),
        }
        assert_eq!(self.cmk.list_keys(&self.org).await.unwrap().keys.len(), 1);
    }

    /// Through the customer role in the operator's account; the adopt job completes.
    async fn a_key_of_the_operators_account_is_adopted(&self) -> Key {
        let (first, job) = self
            .add("prod", &self.good_role, &self.local_key)
            .await
            .expect("the customer role works");
        assert!(job.is_some());
        assert_eq!(self.wait_job().await.state, JobState::Completed);
        first
    }

    /// Through a role there; by alias ARN the resolved key ARN is recorded.
    async fn a_second_accounts_key_is_added_by_alias_and_by_arn(&self) -> Key {
        let (far, _) = self
            .add("far", SECOND_ROLE, &self.far_alias)
            .await
            .expect("a key in a second account");
        match &far.record.spec {
            KeySpec::AwsKms {
                resolved_key_arn, ..
            } => assert_eq!(resolved_key_arn.as_deref(), Some(self.far_key.as_str())),
            other => panic!("{other:?}"),
        }
        let (by_arn, _) = self
            .add("far by arn", SECOND_ROLE, &self.far_key)
            .await
            .expect("a key in a second account, by key ARN");
        assert_eq!(by_arn.record.health.status, HealthStatus::Ok);
        far
    }

    /// The far key becomes the default and the first is disabled onto it.
    async fn data_moves_to_the_second_account(&self, first: &Key, far: &Key) {
        self.cmk
            .set_default("alice", &self.org, &far.record.id)
            .await
            .unwrap();
        self.cmk
            .disable("alice", &self.org, &first.record.id, &far.record.id)
            .await
            .unwrap();
        assert_eq!(self.wait_job().await.state, JobState::Completed);
        self.assert_everything_decrypts().await;
    }

    /// The customer re-points the alias at another key: the CMK stays pinned to the key ARN
    /// its check resolved, so data keys wrapped before and after both decrypt.
    async fn the_key_stays_pinned_when_its_alias_moves(&mut self, far: &Key) {
        self.emu.enforce_iam(false).await;
        let other_key = create_key(&self.kms_second).await;
        self.kms_second
            .update_alias()
            .alias_name("alias/far")
            .target_key_id(other_key.key_id())
            .send()
            .await
            .expect("re-point the alias");
        self.emu.enforce_iam(true).await;
        for i in 0..3u8 {
            let dk = self.cmk.create_data_key(&self.org).await.unwrap();
            assert_eq!(dk.key_id, far.record.id, "wrapped by the default key");
            let pt = vec![100 + i; 16];
            let ct = self
                .cmk
                .encrypt(&self.org, &dk.id, &pt, &EncryptionContext::new())
                .await
                .unwrap();
            self.ciphertexts.push((ct, pt));
        }
        self.assert_everything_decrypts().await;
    }

    /// The customer removes the role's KMS permission: health checks, decrypts and jobs say so.
    async fn a_removed_permission_is_access_denied_everywhere(&self, far: &Key) {
        self.emu.enforce_iam(false).await;
        self.iam_second
            .delete_role_policy()
            .role_name("customer-second")
            .policy_name("kms")
            .send()
            .await
            .expect("remove the role's KMS permission");
        self.emu.enforce_iam(true).await;
        let checked = self
            .cmk
            .check_key("alice", &self.org, &far.record.id)
            .await
            .unwrap();
        assert_eq!(
            checked.record.health.status,
            HealthStatus::AccessDenied,
            "{:?}",
            checked.record.health
        );
        match self
            .cmk
            .decrypt(&self.org, &self.ciphertexts[0].0, &EncryptionContext::new())
            .await
        {
            Err(CoreError::KeyUnavailable { key_id, reason, .. }) => {
                assert_eq!(key_id, far.record.id);
                assert_eq!(reason, HealthStatus::AccessDenied);
            }
            other => panic!("expected key_unavailable, got {other:?}"),
        }
        self.cmk.disable_all("alice", &self.org).await.unwrap();
        let failed = self.wait_job().await;
        assert_eq!(failed.state, JobState::Failed, "{failed:?}");
        assert_eq!(failed.failed, self.ciphertexts.len() as u64);
        assert!(failed
            .errors
            .iter()
            .all(|e| e.reason == HealthStatus::AccessDenied && e.key_id == far.record.id));
    }

    /// Access returns; the admin retries; everything moves and still decrypts.
    async fn restored_access_and_a_retry_move_everything(&self) {
        self.emu.enforce_iam(false).await;
        self.iam_second
            .put_role_policy()
            .role_name("customer-second")
            .policy_name("kms")
            .policy_document(ALLOW_KMS)
            .send()
            .await
            .expect("restore the permission");
        self.emu.enforce_iam(true).await;
        self.cmk.retry("alice", &self.org).await.unwrap();
        let done = self.wait_job().await;
        assert_eq!(
            (done.state, done.done, done.failed),
            (JobState::Completed, self.ciphertexts.len() as u64, 0),
            "{done:?}"
        );
        self.assert_everything_decrypts().await;
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.worker.await;
    }
}

async fn create_key(kms: &aws_sdk_kms::Client) -> aws_sdk_kms::types::KeyMetadata {
    kms.create_key()
        .send()
        .await
        .expect("create a key")
        .key_metadata
        .expect("metadata")
}
