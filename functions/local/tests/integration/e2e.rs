//! End to end: the `cmk` binary started on a free loopback port with a fresh data directory,
//! walked through the seed's flows over HTTP, with `cmk seed` and `cmk verify` proving every
//! sample ciphertext decrypts to the same bytes after each re-encryption. Then a hard kill in
//! the middle of a job: after a restart the job finishes with exact counts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const CMK: &str = env!("CARGO_BIN_EXE_cmk");

pub(crate) fn cmk(data_dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(CMK)
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run cmk");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

pub(crate) struct Server {
    child: Child,
    pub(crate) base: String,
}

impl Server {
    pub(crate) fn start(data_dir: &Path) -> Self {
        let mut child = Command::new(CMK)
            .arg("--data-dir")
            .arg(data_dir)
            .args([
                "serve",
                "--addr",
                "127.0.0.1:0",
                "--stalled-after",
                "5",
                "--visibility-timeout",
                "2",
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start cmk serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().expect("a line").expect("utf8");
        let base = first
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no address in {first:?}"))
            .to_owned();
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self { child, base }
    }

    fn kill(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("wait");
    }

    #[cfg(unix)]
    fn terminate(mut self) -> bool {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.success();
            }
            assert!(Instant::now() < deadline, "cmk did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) struct Api {
    pub(crate) http: reqwest::Client,
    pub(crate) base: String,
    pub(crate) token: String,
}

impl Api {
    pub(crate) async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{}", self.base, path))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Waits for the org's job, which must complete having moved `done` data keys.
    pub(crate) async fn wait_completed(&self, org: &str, done: u64) -> Value {
        let job = self.wait_job(org).await;
        assert_eq!(
            (job["state"].as_str(), job["done"].as_u64()),
            (Some("completed"), Some(done)),
            "{job}"
        );
        job
    }

    pub(crate) async fn wait_job(&self, org: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (status, body) = self
                .call("GET", &format!("/v1/orgs/{org}/reencryption"), None)
                .await;
            assert_eq!(status, 200, "{body}");
            let job = body["reencryption"].clone();
            if job.is_null() || job["state"] != "running" {
                return job;
            }
            assert!(Instant::now() < deadline, "job still running: {job}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub(crate) fn verify(data_dir: &Path, org: &str, expect: u64) {
    let (ok, out) = cmk(data_dir, &["verify", "--org", org]);
    assert!(ok, "cmk verify failed: {out}");
    assert!(
        out.contains(&format!("{expect} ok, 0 failed")),
        "cmk verify: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_walks_the_seed_flows_and_every_sample_still_decrypts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data);
    let (ok, token) = cmk(&data, &["token", "--org", "acme", "--role", "admin"]);
    assert!(ok, "{token}");
    let api = Api {
        http: reqwest::Client::new(),
        base: server.base.clone(),
        token: token.trim().to_owned(),
    };
    let (status, body) = api.call("GET", "/healthz", None).await;
    assert_eq!(status, 200, "{body}");

    let (ok, out) = cmk(&data, &["seed", "--org", "acme", "--data-keys", "2000"]);
    assert!(ok, "seed: {out}");
    verify(&data, "acme", 2000);

    // First key: adopted.
    let (status, body) = api
        .call(
            "POST",
            "/v1/orgs/acme/keys",
            Some(json!({"name": "prod", "type": "local"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let prod = body["key"]["id"].as_str().unwrap().to_owned();
    api.wait_completed("acme", 2000).await;
    verify(&data, "acme", 2000);

    // Second key, set as default; more data under it.
    let (status, body) = api
        .call(
            "POST",
            "/v1/orgs/acme/keys",
            Some(json!({"name": "stage", "type": "local"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let stage = body["key"]["id"].as_str().unwrap().to_owned();
    let (status, body) = api
        .call("POST", &format!("/v1/orgs/acme/keys/{stage}/default"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    let (ok, out) = cmk(&data, &["seed", "--org", "acme", "--data-keys", "500"]);
    assert!(ok, "{out}");

    // Disable prod, re-encrypting to stage.
    let (status, body) = api
        .call(
            "POST",
            &format!("/v1/orgs/acme/keys/{prod}/disable"),
            Some(json!({"reencrypt_to": stage})),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    api.wait_completed("acme", 2000).await;
    verify(&data, "acme", 2500);

    // Revoke stage: decrypt fails naming it; restore; all good again.
    let (ok, out) = cmk(
        &data,
        &["local-key", "revoke", "--org", "acme", "--key", &stage],
    );
    assert!(ok, "{out}");
    let (ok, out) = cmk(&data, &["verify", "--org", "acme"]);
    assert!(!ok, "verify must fail while the key is revoked: {out}");
    assert!(out.contains(&stage), "failures name the key: {out}");
    let (ok, out) = cmk(
        &data,
        &["local-key", "restore", "--org", "acme", "--key", &stage],
    );
    assert!(ok, "{out}");

    // Disable all.
    let (status, body) = api
        .call("POST", "/v1/orgs/acme/keys/disable-all", None)
        .await;
    assert_eq!(status, 202, "{body}");
    api.wait_completed("acme", 2500).await;
    verify(&data, "acme", 2500);
    let (_, listing) = api.call("GET", "/v1/orgs/acme/keys", None).await;
    assert_eq!(listing["default_key_id"], "service");
    assert_eq!(listing["keys"][0]["data_keys"], 2500);

    #[cfg(unix)]
    assert!(server.terminate(), "SIGTERM stops cmk cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_kill_mid_job_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (ok, out) = cmk(&data, &["seed", "--org", "kill", "--data-keys", "30000"]);
    assert!(ok, "{out}");
    let server = Server::start(&data);
    let (_, token) = cmk(&data, &["token", "--org", "kill"]);
    let api = Api {
        http: reqwest::Client::new(),
        base: server.base.clone(),
        token: token.trim().to_owned(),
    };
    let (status, body) = api
        .call(
            "POST",
            "/v1/orgs/kill/keys",
            Some(json!({"name": "k", "type": "local"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    // Kill -9 once some progress is visible, mid-job.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = api.call("GET", "/v1/orgs/kill/reencryption", None).await;
        let done = body["reencryption"]["done"].as_u64().unwrap_or(0);
        if done > 0 {
            assert!(
                done < 30000,
                "the job finished before the kill; seed more data keys"
            );
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill();

    let server = Server::start(&data);
    let api = Api {
        base: server.base.clone(),
        ..api
    };
    let job = api.wait_job("kill").await;
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(
        (
            job["done"].as_u64(),
            job["total"].as_u64(),
            job["failed"].as_u64()
        ),
        (Some(30000), Some(30000), Some(0))
    );
    verify(&data, "kill", 30000);
    drop(server);
}
