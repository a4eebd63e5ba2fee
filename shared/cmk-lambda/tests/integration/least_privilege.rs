//! Each function runs with exactly the IAM actions `template.yaml` gives its role, with IAM
//! enforced on an emulator of this suite's own (enforcement is global to an emulator): the
//! flows of every route and of the worker succeed, and keys-read, which may only read the
//! table, can neither write it (so `keys/setup`, whose first call writes, is keys-write's) nor
//! reach a customer's key.
//!
//! The emulator checks actions, not resources or conditions, so the template's statements are
//! applied with `Resource: "*"` and without `Condition` (the template test checks their
//! resources). It names a few batch and transaction calls by their own action names, which
//! real IAM authorizes through the underlying actions (e.g. `TransactWriteItems` through
//! `PutItem`, `UpdateItem`, `DeleteItem`, `ConditionCheckItem`): those names are added for the
//! roles that hold an underlying action.
//!
//! Needs `CMK_MOTO_SERVER` (the emulator's executable; the test command sets it); skips without
//! it unless `CMK_REQUIRE_AWS_TESTS` is set.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use aws_config::SdkConfig;
use aws_credential_types::Credentials;
use axum::http::StatusCode;
use cmk_aws::emulator::Emulator;
use cmk_lambda::{app, ClaimNames, HttpFunction};
use common::{
    call, create_data_key, decrypt, encrypt, org_event, run_queue, set_body, Answer, Functions,
};
use serde_json::{json, Value};

/// The emulator's names for calls that real IAM authorizes through other actions.
const EMULATOR_ACTIONS: &[(&str, &str)] = &[
    ("dynamodb:PutItem", "dynamodb:TransactWriteItems"),
    ("dynamodb:UpdateItem", "dynamodb:TransactWriteItems"),
    ("dynamodb:DeleteItem", "dynamodb:TransactWriteItems"),
    ("dynamodb:ConditionCheckItem", "dynamodb:TransactWriteItems"),
    ("dynamodb:GetItem", "dynamodb:TransactGetItems"),
    ("sqs:SendMessage", "sqs:SendMessageBatch"),
    ("sqs:DeleteMessage", "sqs:DeleteMessageBatch"),
    (
        "sqs:ChangeMessageVisibility",
        "sqs:ChangeMessageVisibilityBatch",
    ),
];

/// The actions of a role's inline policies in `template.yaml`, as one emulator policy.
fn policy_of(template: &serde_yaml::Value, role: &str) -> (BTreeSet<String>, String) {
    let mut actions = BTreeSet::new();
    let policies = template["Resources"][role]["Properties"]["Policies"]
        .as_sequence()
        .unwrap_or_else(|| panic!("{role} has inline policies"));
    for policy in policies {
        for st in policy["PolicyDocument"]["Statement"]
            .as_sequence()
            .expect("statements")
        {
            assert_eq!(st["Effect"].as_str(), Some("Allow"));
            match &st["Action"] {
                serde_yaml::Value::String(a) => {
                    actions.insert(a.clone());
                }
                list => {
                    for a in list.as_sequence().expect("actions") {
                        actions.insert(a.as_str().expect("action").to_owned());
                    }
                }
            }
        }
    }
    let mut granted = actions.clone();
    for (real, emulated) in EMULATOR_ACTIONS {
        if actions.contains(*real) {
            granted.insert((*emulated).to_owned());
        }
    }
    let document = json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": granted, "Resource": "*"}
    ]});
    (actions, document.to_string())
}

/// An IAM user with `policy`, and an SDK configuration with its credentials.
async fn principal(
    iam: &aws_sdk_iam::Client,
    emu: &Emulator,
    name: &str,
    policy: &str,
) -> SdkConfig {
    iam.create_user()
        .user_name(name)
        .send()
        .await
        .expect("user");
    iam.put_user_policy()
        .user_name(name)
        .policy_name("template")
        .policy_document(policy)
        .send()
        .await
        .expect("user policy");
    let key = iam
        .create_access_key()
        .user_name(name)
        .send()
        .await
        .expect("access key")
        .access_key
        .expect("access key");
    emu.config(Credentials::new(
        key.access_key_id(),
        key.secret_access_key(),
        None,
        None,
        "static",
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_function_works_with_only_its_template_permissions() {
    common::init();
    let Some(emu) = Emulator::start().await else {
        return;
    };
    let scene = Scene::set_up(&emu).await;
    let samples = scene
        .data_keys_encrypts_samples_under_the_service_key()
        .await;
    scene.keys_read_serves_every_route().await;
    let customer = scene
        .keys_write_sets_up_and_the_customer_makes_a_role()
        .await;
    scene
        .keys_read_can_neither_write_nor_reach_a_customer_key(&customer)
        .await;
    scene.keys_write_adds_and_checks_the_key(&customer).await;
    scene
        .the_worker_moves_every_data_key_on_its_own_credentials()
        .await;
    scene.disable_all_goes_back_to_the_service_key().await;
    scene
        .every_sample_decrypts_through_fresh_functions(&samples)
        .await;
}

/// The service's resources, one principal per function with its template policy, and the
/// functions built on them, with IAM enforced.
struct Scene {
    /// The operator: sets up resources and plays the customer's side.
    admin: SdkConfig,
    /// keys-read, keys-write, data-keys, rewrap-worker, in that order.
    configs: Vec<SdkConfig>,
    settings: cmk_aws::AwsSettings,
    f: Functions,
    org: String,
}

/// The customer's side, made by the operator: a role trusting the org's external id, and a key.
struct Customer {
    external_id: String,
    role_arn: String,
    /// The body of `POST keys` that adds the key.
    add_body: Value,
}

fn assert_status(a: &Answer, status: StatusCode) {
    assert_eq!(a.status, status, "{}", String::from_utf8_lossy(&a.body));
}

impl Scene {
    async fn set_up(emu: &Emulator) -> Self {
        let root = emu.root_config().await;
        let iam = aws_sdk_iam::Client::new(&root);
        let template: serde_yaml::Value = serde_yaml::from_str(
            &std::fs::read_to_string(common::repo_root().join("template.yaml")).expect("template"),
        )
        .expect("yaml");

        let admin = principal(
            &iam,
            emu,
            "operator",
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#,
        )
        .await;
        let mut configs = Vec::new();
        for role in [
            "KeysReadRole",
            "KeysWriteRole",
            "DataKeysRole",
            "RewrapWorkerRole",
        ] {
            let (_, policy) = policy_of(&template, role);
            configs.push(principal(&iam, emu, role, &policy).await);
        }
        let (read_actions, _) = policy_of(&template, "KeysReadRole");
        // Reads of the table, and the OIDC issuer's public key: never a write, never a customer key.
        assert!(read_actions
            .iter()
            .all(|a| a.starts_with("dynamodb:") || a == "kms:GetPublicKey"));

        // The service's resources, as the template declares them.
        let table = common::unique("cmk");
        cmk_aws::resources::ensure_table(&aws_sdk_dynamodb::Client::new(&root), &table)
            .await
            .expect("table");
        let queue_url = cmk_aws::resources::ensure_queues(
            &aws_sdk_sqs::Client::new(&root),
            &common::unique("rewrap"),
        )
        .await
        .expect("queues");
        let service_key = create_key(&aws_sdk_kms::Client::new(&root)).await;
        let settings = cmk_aws::AwsSettings {
            table,
            queue_url,
            service_key_id: service_key,
            service_principal: "arn:aws:iam::123456789012:root".into(),
            endpoint_url: Some(emu.endpoint().to_owned()),
            data_key_cache_ttl: Duration::from_secs(300),
            data_key_cache_size: 100,
            failure_memory: Duration::from_secs(10),
            stalled_after: Duration::from_secs(60),
            service_account_id: None,
            allow_same_account_roles: true,
            // As the template sets it: the functions that change things publish events.
            event_bus: Some("default".into()),
            oidc_issuer: None,
            oidc_signing_keys: Vec::new(),
        };

        // IAM enforced from here on.
        emu.enforce_iam(true).await;
        let f = Functions::with_configs(
            [&configs[0], &configs[1], &configs[2], &configs[3]],
            &settings,
        );
        Self {
            admin,
            configs,
            settings,
            f,
            org: common::unique("org"),
        }
    }

    async fn data_keys_encrypts_samples_under_the_service_key(&self) -> Vec<(String, Vec<u8>)> {
        let mut samples = Vec::new();
        for i in 0..3u8 {
            let dk = create_data_key(&self.f, &self.org).await;
            samples.push((encrypt(&self.f, &self.org, &dk, &[i; 8]).await, vec![i; 8]));
        }
        samples
    }

    async fn keys_read_serves_every_route(&self) {
        for event in [
            "keys-read/list-keys.json",
            "keys-read/reencryption.json",
            "keys-read/audit.json",
        ] {
            let a = call(&self.f.read, &org_event(event, &self.org)).await;
            assert_eq!(
                a.status,
                StatusCode::OK,
                "{event}: {}",
                String::from_utf8_lossy(&a.body)
            );
        }
    }

    /// keys/setup writes the org's external id; the customer trusts it in a role with KMS
    /// rights, and makes a key.
    async fn keys_write_sets_up_and_the_customer_makes_a_role(&self) -> Customer {
        let setup = call(
            &self.f.write,
            &org_event("keys-write/setup.json", &self.org),
        )
        .await;
        assert_status(&setup, StatusCode::OK);
        let external_id = setup.json()["external_id"].as_str().expect("id").to_owned();
        let role_arn = cmk_aws_testkit::customer_role(
            &aws_sdk_iam::Client::new(&self.admin),
            &common::unique("customer"),
            &external_id,
        )
        .await;
        let key_arn = create_key(&aws_sdk_kms::Client::new(&self.admin)).await;
        let add_body =
            json!({"name": "prod", "type": "aws-kms", "role_arn": role_arn, "key_arn": key_arn});
        Customer {
            external_id,
            role_arn,
            add_body,
        }
    }

    fn add_event(&self, customer: &Customer) -> Value {
        let mut add = org_event("keys-write/add-key.json", &self.org);
        set_body(&mut add, &customer.add_body);
        add
    }

    /// The admin writes, on keys-read's credentials, fail at their first write (keys/setup's
    /// first call for an org writes the external id: hence it is keys-write's); keys-read can
    /// neither assume the customer's role nor use the service key, where keys-write can.
    async fn keys_read_can_neither_write_nor_reach_a_customer_key(&self, customer: &Customer) {
        let read_as_writer = app(
            HttpFunction::KeysWrite,
            cmk_aws::backend::build(&self.configs[0], &self.settings).cmk,
            &ClaimNames::default(),
            None,
        );
        let other_org = common::unique("org");
        for ev in [
            self.add_event(customer),
            org_event("keys-write/setup.json", &other_org),
        ] {
            let refused = call(&read_as_writer, &ev).await;
            assert!(
                refused.status.is_server_error(),
                "{}: {}",
                refused.status,
                String::from_utf8_lossy(&refused.body)
            );
        }
        let assume = |config: &SdkConfig| {
            let sts = aws_sdk_sts::Client::new(config);
            let (role_arn, external_id) = (customer.role_arn.clone(), customer.external_id.clone());
            async move {
                sts.assume_role()
                    .role_arn(role_arn)
                    .role_session_name("cmk-service-test")
                    .external_id(external_id)
                    .send()
                    .await
            }
        };
        assert!(
            assume(&self.configs[0]).await.is_err(),
            "keys-read assumed a customer role"
        );
        assert!(
            assume(&self.configs[1]).await.is_ok(),
            "keys-write could not assume the customer role"
        );
        let encrypted = aws_sdk_kms::Client::new(&self.configs[0])
            .encrypt()
            .key_id(&self.settings.service_key_id)
            .plaintext(aws_sdk_kms::primitives::Blob::new(vec![0u8; 32]))
            .encryption_context("org", self.org.as_str())
            .send()
            .await;
        assert!(encrypted.is_err(), "keys-read used the service key");
    }

    /// keys-write assumes the role for the add's round trip and the check, and starts a job.
    async fn keys_write_adds_and_checks_the_key(&self, customer: &Customer) {
        let added = call(&self.f.write, &self.add_event(customer)).await;
        assert_status(&added, StatusCode::CREATED);
        let key_id = added.json()["key"]["id"].as_str().expect("id").to_owned();
        let mut check = org_event("keys-write/check-key.json", &self.org);
        let path = format!("/v1/orgs/{}/keys/{key_id}/check", self.org);
        common::set_route(&mut check, "POST", &path);
        let checked = call(&self.f.write, &check).await;
        assert_status(&checked, StatusCode::OK);
        assert_eq!(checked.json()["key"]["health"]["status"], "ok");
    }

    /// Consumes the queue on rewrap-worker's credentials until the org's job ends.
    async fn run_worker(&self) {
        let sqs = aws_sdk_sqs::Client::new(&self.configs[3]);
        let answers = run_queue(
            &self.f.worker,
            &sqs,
            &self.settings.queue_url,
            &self.f.read,
            &self.org,
            Vec::new(),
        )
        .await;
        assert!(answers.iter().all(|a| a.is_empty()), "{answers:?}");
    }

    async fn the_worker_moves_every_data_key_on_its_own_credentials(&self) {
        self.run_worker().await;
        let job = call(
            &self.f.read,
            &org_event("keys-read/reencryption.json", &self.org),
        )
        .await;
        assert_eq!(
            job.json()["reencryption"]["state"],
            "completed",
            "{}",
            job.json()
        );
    }

    /// Through keys-write and the worker again.
    async fn disable_all_goes_back_to_the_service_key(&self) {
        let all = call(
            &self.f.write,
            &org_event("keys-write/disable-all.json", &self.org),
        )
        .await;
        assert_status(&all, StatusCode::ACCEPTED);
        self.run_worker().await;
        let keys: Value = call(
            &self.f.read,
            &org_event("keys-read/list-keys.json", &self.org),
        )
        .await
        .json();
        assert_eq!(keys["default_key_id"], "service", "{keys}");
    }

    /// Nothing cached: every sample decrypts through functions built afresh.
    async fn every_sample_decrypts_through_fresh_functions(&self, samples: &[(String, Vec<u8>)]) {
        let c = &self.configs;
        let fresh = Functions::with_configs([&c[0], &c[1], &c[2], &c[3]], &self.settings);
        for (ct, plaintext) in samples {
            assert_eq!(&decrypt(&fresh.data, &self.org, ct).await, plaintext);
        }
    }
}

async fn create_key(kms: &aws_sdk_kms::Client) -> String {
    kms.create_key()
        .send()
        .await
        .expect("key")
        .key_metadata
        .and_then(|m| m.arn)
        .expect("arn")
}
