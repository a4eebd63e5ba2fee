//! `vault-transit` keys through the `cmk` binary, against a real OpenBao dev server: added from
//! the CLI with an AppRole (the secret read from a file, never shown again: keys show the
//! method and a fingerprint), adopted, used by the data plane, and every sample still
//! decrypts. Removing the service's policy revokes: the health check reports `access_denied`,
//! decrypt answers 424, a job to the key fails; restoring the policy and retrying completes it.
//! A server that goes away makes the key `unavailable`, not revoked.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cmk_vault::testing::BaoDevServer;
use serde_json::{json, Value};

use super::e2e::{cmk, verify, Api, Server};

/// A `cmk serve` on a fresh data directory with `data_keys` seeded, and an admin's client.
struct Local {
    dir: tempfile::TempDir,
    data: std::path::PathBuf,
    server: Server,
    token: String,
    api: Api,
}

fn local(data_keys: u64) -> Local {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data);
    let token = client_token(&data, "admin");
    let api = client(&server, &token);
    let (ok, out) = cmk(
        &data,
        &[
            "seed",
            "--org",
            "acme",
            "--data-keys",
            &data_keys.to_string(),
        ],
    );
    assert!(ok, "seed: {out}");
    Local {
        dir,
        data,
        server,
        token,
        api,
    }
}

fn client_token(data: &std::path::Path, role: &str) -> String {
    let (ok, token) = cmk(data, &["token", "--org", "acme", "--role", role]);
    assert!(ok, "{token}");
    token.trim().to_owned()
}

fn client(server: &Server, token: &str) -> Api {
    Api {
        http: reqwest::Client::new(),
        base: server.base.clone(),
        token: token.to_owned(),
    }
}

/// `POST keys` of a transit key on `bao` logging in with an AppRole.
fn transit_key(bao: &BaoDevServer, name: &str, role_id: &str, secret_id: &str) -> Value {
    json!({"name": name, "type": "vault-transit", "address": bao.address, "key_name": name,
        "auth": {"method": "approle", "role_id": role_id, "secret_id": secret_id}})
}

/// Adds a key (201): its id.
async fn add_key(api: &Api, body: Value) -> String {
    let (status, added) = api.call("POST", "/v1/orgs/acme/keys", Some(body)).await;
    assert_eq!(status, 201, "{added}");
    added["key"]["id"].as_str().unwrap().to_owned()
}

/// `cmk <args>` against the local service as its admin.
fn admin_cli(l: &Local, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_cmk"))
        .args(args)
        .env("CMK_URL", &l.server.base)
        .env("CMK_TOKEN", &l.token)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// `POST keys/{id}/check`: the key's health status.
async fn check(api: &Api, key: &str) -> Value {
    let (status, checked) = api
        .call("POST", &format!("/v1/orgs/acme/keys/{key}/check"), None)
        .await;
    assert_eq!(status, 200, "{checked}");
    checked["key"]["health"]["status"].clone()
}

/// `POST decrypt` of a ciphertext the data plane made.
async fn decrypt(data_plane: &Api, ciphertext: &Value) -> (u16, Value) {
    data_plane
        .call(
            "POST",
            "/v1/orgs/acme/decrypt",
            Some(json!({ "ciphertext": ciphertext })),
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transit_keys_walk_the_seed_flows_and_revoke_by_policy() {
    let Some(bao) = BaoDevServer::start().await else {
        return;
    };
    let (role_id, secret_id) = bao.customer_key("orders").await;
    let (billing_role, billing_secret) = bao.customer_key("billing").await;
    let l = local(700);
    let (api, data) = (&l.api, &l.data);
    let data_plane = client(&l.server, &client_token(data, "service"));

    // The setup text names the key's policy and why it must be derived.
    let (status, setup) = api
        .call(
            "GET",
            "/v1/orgs/acme/keys/setup?vault_key_name=orders",
            None,
        )
        .await;
    assert_eq!(status, 200, "{setup}");
    assert!(setup["vault"]["policy"]
        .as_str()
        .unwrap()
        .contains("path \"transit/decrypt/orders\""));
    assert!(setup["vault"]["requirement"]
        .as_str()
        .unwrap()
        .contains("derived=true"));
    let (status, problem) = api
        .call("GET", "/v1/orgs/acme/keys/setup?vault_key_name=a/b", None)
        .await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (400, Some("key_name")),
        "{problem}"
    );

    // Added from the CLI: the secret id comes from a file.
    let secret_file = l.dir.path().join("secret-id");
    std::fs::write(&secret_file, format!("{secret_id}\n")).unwrap();
    let out = admin_cli(
        &l,
        &[
            "keys",
            "add",
            "--name",
            "orders",
            "--type",
            "vault-transit",
            "--address",
            &bao.address,
            "--key-name",
            "orders",
            "--role-id",
            &role_id,
            "--secret-id-file",
            secret_file.to_str().unwrap(),
            "--json",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let added: Value = serde_json::from_str(&stdout).unwrap();
    let orders = added["key"]["id"].as_str().unwrap().to_owned();
    assert_eq!(added["key"]["type"], "vault-transit");
    assert_eq!(added["key"]["vault"]["key_name"], "orders");
    assert_eq!(added["key"]["vault"]["mount"], "transit");
    assert_eq!(added["key"]["vault"]["auth"]["method"], "approle");
    assert_eq!(
        added["key"]["vault"]["auth"]["fingerprint"]
            .as_str()
            .unwrap()
            .len(),
        16
    );
    api.wait_completed("acme", 700).await;
    verify(data, "acme", 700);

    // The data plane wraps new data keys with it.
    let (status, dk) = data_plane
        .call("POST", "/v1/orgs/acme/data-keys", Some(json!({})))
        .await;
    assert_eq!(status, 201, "{dk}");
    assert_eq!(dk["data_key"]["key_id"], orders.as_str());
    let dk_id = dk["data_key"]["id"].as_str().unwrap().to_owned();
    let (status, enc) = data_plane
        .call(
            "POST",
            &format!("/v1/orgs/acme/data-keys/{dk_id}/encrypt"),
            Some(json!({"plaintext": "aGVsbG8="})),
        )
        .await;
    assert_eq!(status, 200, "{enc}");

    // No route, listing or audit record shows the secret.
    for path in [
        "/v1/orgs/acme/keys",
        "/v1/orgs/acme/audit",
        "/v1/orgs/acme/keys/setup",
    ] {
        let (_, body) = api.call("GET", path, None).await;
        assert!(
            !body.to_string().contains(&secret_id),
            "{path} leaks the secret id"
        );
    }

    // A bad address or a key that ignores the context is refused with a reason, and nothing
    // is stored.
    bao.create_key("plain", false).await;
    let (status, body) = api
        .call(
            "POST",
            "/v1/orgs/acme/keys",
            Some(transit_key(&bao, "plain", &role_id, &secret_id)),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    for (field, body) in [
        (
            "address",
            json!({"name": "x", "type": "vault-transit", "address": "http://vault.example.com",
            "key_name": "k", "auth": {"method": "token", "token": "t"}}),
        ),
        (
            "key_name",
            json!({"name": "x", "type": "vault-transit", "address": bao.address,
            "key_name": "a/b", "auth": {"method": "token", "token": "t"}}),
        ),
    ] {
        let (status, problem) = api.call("POST", "/v1/orgs/acme/keys", Some(body)).await;
        assert_eq!(status, 400, "{problem}");
        assert!(problem.to_string().contains(field), "{problem}");
    }

    // Revoked by removing the policy: the check says so, decrypt answers 424.
    bao.put_policy("cmk-orders", "# revoked\n").await;
    assert_eq!(check(api, &orders).await, "access_denied");
    let (status, problem) = decrypt(&data_plane, &enc["ciphertext"]).await;
    assert_eq!(status, 424, "{problem}");

    // A job off the revoked key fails; restoring the policy and retrying completes it.
    let billing = add_key(
        api,
        transit_key(&bao, "billing", &billing_role, &billing_secret),
    )
    .await;
    let (status, body) = api
        .call(
            "POST",
            &format!("/v1/orgs/acme/keys/{billing}/default"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api
        .call(
            "POST",
            &format!("/v1/orgs/acme/keys/{orders}/disable"),
            Some(json!({"reencrypt_to": billing})),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let job = api.wait_job("acme").await;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["errors"][0]["reason"], "access_denied", "{job}");
    bao.put_policy("cmk-orders", &cmk_core::vault::policy("transit", "orders"))
        .await;
    assert_eq!(check(api, &orders).await, "ok");
    let (status, body) = api
        .call("POST", "/v1/orgs/acme/reencryption/retry", None)
        .await;
    assert!(status == 200 || status == 202, "{body}");
    api.wait_completed("acme", 701).await;
    verify(data, "acme", 700);
    let (status, body) = decrypt(&data_plane, &enc["ciphertext"]).await;
    assert_eq!(
        (status, body["plaintext"].as_str()),
        (200, Some("aGVsbG8=")),
        "{body}"
    );

    // The server goes away: the key is `unavailable`, not revoked, so the data key the last
    // decrypt cached still serves (a revocation would have wiped it).
    drop(bao);
    assert_eq!(check(api, &billing).await, "unavailable");
    let (status, body) = decrypt(&data_plane, &enc["ciphertext"]).await;
    assert_eq!(status, 200, "{body}");
}

/// The customer rotates the transit key; `cmk keys rewrap` starts a `rotate` job that moves
/// every data key to the latest version with transit `rewrap`; then the customer raises
/// `min_decryption_version` and every sample still decrypts. A local key has no versions.
/// Disable all then brings every data key back to the service-managed key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_then_rewrap_lets_the_customer_retire_old_versions() {
    let Some(bao) = BaoDevServer::start().await else {
        return;
    };
    let (role_id, secret_id) = bao.customer_key("orders").await;
    let l = local(600);
    let (api, data) = (&l.api, &l.data);
    let orders = add_key(api, transit_key(&bao, "orders", &role_id, &secret_id)).await;
    assert_eq!(api.wait_job("acme").await["state"], "completed");

    bao.rotate("orders").await;
    let out = admin_cli(&l, &["keys", "rewrap", "orders", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let started: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(started["reencryption"]["kind"], "rotate", "{started}");
    assert_eq!(started["reencryption"]["total"], 600, "{started}");
    let job = api.wait_job("acme").await;
    assert_eq!(
        (
            job["state"].as_str(),
            job["done"].as_u64(),
            job["failed"].as_u64()
        ),
        (Some("completed"), Some(600), Some(0)),
        "{job}"
    );
    let (_, listing) = api.call("GET", "/v1/orgs/acme/keys", None).await;
    let key = listing["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == orders.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        (key["state"].as_str(), key["data_keys"].as_u64()),
        (Some("active"), Some(600)),
        "the key keeps its data keys and stays active: {key}"
    );
    assert_eq!(listing["default_key_id"], orders.as_str());

    // Old versions retired: every sample still decrypts.
    bao.set_min_decryption_version("orders", 2).await;
    verify(data, "acme", 600);

    // A second rewrap with nothing older to move still completes, exactly counted.
    let (status, body) = api
        .call("POST", &format!("/v1/orgs/acme/keys/{orders}/rewrap"), None)
        .await;
    assert_eq!(status, 202, "{body}");
    api.wait_completed("acme", 600).await;

    // A local key has one version: refused, nothing started.
    let disk = add_key(api, json!({"name": "disk", "type": "local"})).await;
    let (status, problem) = api
        .call("POST", &format!("/v1/orgs/acme/keys/{disk}/rewrap"), None)
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (400, Some("invalid_request")),
        "{problem}"
    );
    verify(data, "acme", 600);

    // Disable all: every data key returns from the transit key to the service-managed key.
    let (status, body) = api
        .call("POST", "/v1/orgs/acme/keys/disable-all", None)
        .await;
    assert_eq!(status, 202, "{body}");
    api.wait_completed("acme", 600).await;
    verify(data, "acme", 600);
}
