//! End to end on the AWS backend: `cmk serve --backend aws --create-resources` against the AWS
//! emulator, walking the seed's flows with `aws-kms` customer keys reached through a customer
//! role (with the org's external id), by alias ARN and by key ARN. Every sample ciphertext
//! decrypts to the same bytes after each re-encryption. Skips without `CMK_TEST_AWS_ENDPOINT`
//! unless `CMK_REQUIRE_AWS_TESTS` is set.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};

const CMK: &str = env!("CARGO_BIN_EXE_cmk");

fn endpoint() -> Option<String> {
    cmk_aws::emulator::shared_endpoint()
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

struct Server(Child, String);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn aws_env(cmd: &mut Command) -> &mut Command {
    cmd.env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .env("RUST_LOG", "warn")
}

fn start(data: &Path, ep: &str, table: &str, queue: &str) -> Server {
    let mut cmd = Command::new(CMK);
    aws_env(&mut cmd)
        .arg("--data-dir")
        .arg(data)
        .args([
            "serve",
            "--backend",
            "aws",
            "--create-resources",
            "--addr",
            "127.0.0.1:0",
        ])
        .args([
            "--table",
            table,
            "--queue-name",
            queue,
            "--aws-endpoint-url",
            ep,
        ])
        .args(["--stalled-after", "10", "--data-key-cache-ttl", "0"])
        // The emulator's customer roles are in the service's own account.
        .arg("--allow-same-account-roles")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("start cmk serve");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = lines.next().expect("a line").expect("utf8");
    let base = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .to_owned();
    std::thread::spawn(move || for _ in lines {});
    Server(child, base)
}

fn token(data: &Path, org: &str, role: &str) -> String {
    let out = Command::new(CMK)
        .arg("--data-dir")
        .arg(data)
        .args(["token", "--org", org, "--role", role])
        .output()
        .expect("token");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

struct Api {
    http: reqwest::Client,
    base: String,
    admin: String,
    service: String,
}

impl Api {
    async fn call(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{}", self.base, path))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        (
            status,
            serde_json::from_str(&resp.text().await.unwrap()).unwrap_or(Value::Null),
        )
    }

    async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call(&self.admin, method, path, body).await
    }

    async fn wait_job(&self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (status, body) = self.admin("GET", "/v1/orgs/acme/reencryption", None).await;
            assert_eq!(status, 200, "{body}");
            let job = body["reencryption"].clone();
            if job.is_null() || job["state"] != "running" {
                return job;
            }
            assert!(Instant::now() < deadline, "job still running: {job}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn samples(&self, n: usize) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for i in 0..n {
            let (status, body) = self
                .call(
                    &self.service,
                    "POST",
                    "/v1/orgs/acme/data-keys",
                    Some(json!({})),
                )
                .await;
            assert_eq!(status, 201, "{body}");
            let id = body["data_key"]["id"].as_str().unwrap().to_owned();
            let plaintext = format!("aws sample {i}").into_bytes();
            let (status, body) = self
                .call(
                    &self.service,
                    "POST",
                    &format!("/v1/orgs/acme/data-keys/{id}/encrypt"),
                    Some(json!({"plaintext": B64.encode(&plaintext)})),
                )
                .await;
            assert_eq!(status, 200, "{body}");
            out.push((body["ciphertext"].as_str().unwrap().to_owned(), plaintext));
        }
        out
    }

    async fn assert_decrypts(&self, samples: &[(String, Vec<u8>)]) {
        for (ct, pt) in samples {
            let (status, body) = self
                .call(
                    &self.service,
                    "POST",
                    "/v1/orgs/acme/decrypt",
                    Some(json!({"ciphertext": ct})),
                )
                .await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(
                B64.decode(body["plaintext"].as_str().unwrap()).unwrap(),
                *pt
            );
        }
    }
}

async fn sdk(ep: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(ep)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_credential_types::Credentials::new(
            "testing", "testing", None, None, "static",
        ))
        .load()
        .await
}

/// A customer role trusting any principal that presents `external_id`, allowed to use KMS.
async fn customer_role(iam: &aws_sdk_iam::Client, external_id: &str) -> String {
    cmk_aws_testkit::customer_role(iam, &unique("customer-role"), external_id).await
}

/// A KMS key with an alias; returns (key ARN, alias ARN).
async fn customer_key(kms: &aws_sdk_kms::Client) -> (String, String) {
    let meta = kms
        .create_key()
        .send()
        .await
        .expect("key")
        .key_metadata
        .expect("meta");
    let alias = format!("alias/{}", unique("customer"));
    kms.create_alias()
        .alias_name(&alias)
        .target_key_id(meta.key_id())
        .send()
        .await
        .expect("alias");
    let arn = meta.arn.expect("arn");
    let alias_arn = format!("{}:{alias}", arn.rsplit_once(':').expect("arn").0);
    (arn, alias_arn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_backend_walks_the_seed_flows_with_aws_kms_keys() {
    let Some(ep) = endpoint() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start(&data, &ep, &unique("cmk"), &unique("rewrap"));
    let api = Api {
        http: reqwest::Client::new(),
        base: server.1.clone(),
        admin: token(&data, "acme", "admin"),
        service: token(&data, "acme", "service"),
    };
    let config = sdk(&ep).await;
    let (iam, kms) = (
        aws_sdk_iam::Client::new(&config),
        aws_sdk_kms::Client::new(&config),
    );

    // The admin reads the setup: the org's external id and the policies to apply.
    let (status, setup) = api.admin("GET", "/v1/orgs/acme/keys/setup", None).await;
    assert_eq!(status, 200, "{setup}");
    let external_id = setup["external_id"].as_str().unwrap().to_owned();
    assert_eq!(
        setup["trust_policy"]["Statement"][0]["Condition"]["StringEquals"]["sts:ExternalId"],
        external_id.as_str()
    );
    let role = customer_role(&iam, &external_id).await;
    let (prod_arn, prod_alias) = customer_key(&kms).await;
    let (stage_arn, _) = customer_key(&kms).await;

    let mut samples = api.samples(30).await;

    // The first key, by alias ARN: adopted; the key ARN that encrypts is recorded.
    let (status, body) = api
        .admin(
            "POST",
            "/v1/orgs/acme/keys",
            Some(
                json!({"name": "prod", "type": "aws-kms", "role_arn": role, "key_arn": prod_alias}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    // `cmk serve` is an OIDC issuer, so every flow below reaches the customer's role with
    // AssumeRoleWithWebIdentity and tokens signed by the data directory's key.
    assert_eq!(body["key"]["aws"]["trust"], "oidc", "{body}");
    let prod = body["key"]["id"].as_str().unwrap().to_owned();
    assert_eq!(body["key"]["aws"]["key_arn"], prod_alias.as_str());
    assert_eq!(body["key"]["aws"]["resolved_key_arn"], prod_arn.as_str());
    let job = api.wait_job().await;
    assert_eq!(
        (job["state"].as_str(), job["done"].as_u64()),
        (Some("completed"), Some(30)),
        "{job}"
    );
    api.assert_decrypts(&samples).await;

    // A second key (by key ARN), set as default, more data under it.
    let (status, body) = api
        .admin(
            "POST",
            "/v1/orgs/acme/keys",
            Some(
                json!({"name": "stage", "type": "aws-kms", "role_arn": role, "key_arn": stage_arn}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let stage = body["key"]["id"].as_str().unwrap().to_owned();
    let (status, body) = api
        .admin("POST", &format!("/v1/orgs/acme/keys/{stage}/default"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    samples.extend(api.samples(10).await);

    // Disable prod, re-encrypting to stage (one role reaches both: ReEncrypt).
    let (status, body) = api
        .admin(
            "POST",
            &format!("/v1/orgs/acme/keys/{prod}/disable"),
            Some(json!({"reencrypt_to": stage})),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let job = api.wait_job().await;
    assert_eq!(
        (job["state"].as_str(), job["done"].as_u64()),
        (Some("completed"), Some(30)),
        "{job}"
    );
    api.assert_decrypts(&samples).await;

    // Disable all: back to the service-managed key.
    let (status, body) = api
        .admin("POST", "/v1/orgs/acme/keys/disable-all", None)
        .await;
    assert_eq!(status, 202, "{body}");
    let job = api.wait_job().await;
    assert_eq!(
        (job["state"].as_str(), job["done"].as_u64()),
        (Some("completed"), Some(40)),
        "{job}"
    );
    let (_, listing) = api.admin("GET", "/v1/orgs/acme/keys", None).await;
    assert_eq!(listing["default_key_id"], "service");
    assert_eq!(listing["keys"][0]["data_keys"], 40);
    for k in listing["keys"].as_array().unwrap().iter().skip(1) {
        assert_eq!(k["state"], "disabled", "{k}");
        assert_eq!(k["data_keys"], 0);
    }
    api.assert_decrypts(&samples).await;
}
