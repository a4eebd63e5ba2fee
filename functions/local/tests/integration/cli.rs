//! The admin CLI (`cmk keys`, `cmk reencryption`, `cmk audit`) against a running `cmk serve` on
//! a free loopback port with a fresh data directory: tables and JSON, progress watching, the
//! API's error codes with a non-zero exit, and `cmk verify` after every re-encryption.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

const CMK: &str = env!("CARGO_BIN_EXE_cmk");

pub(crate) struct Server {
    child: Child,
    pub(crate) base: String,
}

impl Server {
    pub(crate) fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, &["--addr", "127.0.0.1:0"])
    }

    /// `cmk serve` with `args` (which name the address).
    pub(crate) fn start_with(data_dir: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(CMK)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["serve", "--batch-size", "50"])
            .args(args)
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
        std::thread::spawn(move || for _ in lines {});
        Self { child, base }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub(crate) struct Out {
    pub(crate) ok: bool,
    code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// A local command on the data directory (token, seed, verify, local-key).
pub(crate) fn local(data_dir: &Path, args: &[&str]) -> Out {
    let out = Command::new(CMK)
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run cmk");
    Out {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// An admin command against `server`, with `token` in `CMK_TOKEN` (none if `None`).
pub(crate) fn admin(server: &Server, token: Option<&str>, args: &[&str]) -> Out {
    let mut cmd = Command::new(CMK);
    cmd.args(args)
        .env("CMK_URL", &server.base)
        .env_remove("CMK_TOKEN")
        .env("RUST_LOG", "warn");
    if let Some(t) = token {
        cmd.env("CMK_TOKEN", t);
    }
    let out = cmd.output().expect("run cmk");
    Out {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub(crate) fn ok(out: Out) -> Out {
    assert!(out.ok, "expected success: {out:#?}");
    out
}

fn fails_with(out: Out, needle: &str) -> Out {
    assert!(!out.ok, "expected failure: {out:#?}");
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(
        out.stderr.contains(needle),
        "stderr should contain {needle:?}: {out:#?}"
    );
    out
}

pub(crate) fn json(out: &Out) -> Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {out:#?}"))
}

pub(crate) fn token(data_dir: &Path, org: &str, role: &str) -> String {
    let out = ok(local(data_dir, &["token", "--org", org, "--role", role]));
    out.stdout.trim().to_owned()
}

fn verify(data_dir: &Path, org: &str, expect: u64) {
    let out = ok(local(data_dir, &["verify", "--org", org]));
    assert!(
        out.stdout.contains(&format!("{expect} ok, 0 failed")),
        "{out:#?}"
    );
}

#[test]
fn keys_are_added_made_default_disabled_and_audited_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    ok(local(
        &data,
        &["seed", "--org", "acme", "--data-keys", "1000"],
    ));
    let server = Server::start(&data);
    let admin_token = token(&data, "acme", "admin");
    let t = Some(admin_token.as_str());

    // A table by default; the org comes from the token.
    let out = ok(admin(&server, t, &["keys", "list"]));
    let header = out.stdout.lines().next().unwrap();
    for column in [
        "ID",
        "NAME",
        "TYPE",
        "DEFAULT",
        "STATE",
        "HEALTH",
        "DATA KEYS",
    ] {
        assert!(header.contains(column), "{header}");
    }
    assert!(out.stdout.contains("Service-managed key"), "{out:#?}");
    assert!(out.stdout.contains("1,000"), "{out:#?}");
    // JSON on request: the API's own shape.
    let listing = json(&ok(admin(&server, t, &["keys", "list", "--json"])));
    assert_eq!(listing["default_key_id"], "service");
    assert_eq!(listing["keys"][0]["data_keys"], 1000);

    // The first key: default, with an adopt job that --watch follows to the end.
    let out = ok(admin(&server, t, &["keys", "add", "--name", "prod"]));
    assert!(out.stdout.contains("added key prod"), "{out:#?}");
    assert!(out.stdout.contains("re-encryption: adopt"), "{out:#?}");
    let out = ok(admin(&server, t, &["reencryption", "status", "--watch"]));
    assert!(out.stdout.contains("completed"), "{out:#?}");
    assert!(out.stdout.contains("1,000/1,000 (100%)"), "{out:#?}");
    verify(&data, "acme", 1000);

    // A second key, by JSON; set as default by name.
    let added = json(&ok(admin(
        &server,
        t,
        &[
            "keys", "add", "--name", "stage", "--type", "local", "--json",
        ],
    )));
    assert_eq!(added["key"]["name"], "stage");
    assert!(added["reencryption"].is_null(), "{added}");
    let out = ok(admin(&server, t, &["keys", "default", "stage"]));
    assert!(out.stdout.contains("is now the default key"), "{out:#?}");

    // Disable prod, re-encrypting to stage; watch with JSON.
    ok(admin(
        &server,
        t,
        &["keys", "disable", "prod", "--reencrypt-to", "stage"],
    ));
    let job = json(&ok(admin(
        &server,
        t,
        &["reencryption", "status", "--watch", "--json"],
    )));
    assert_eq!(job["reencryption"]["state"], "completed", "{job}");
    assert_eq!(job["reencryption"]["kind"], "disable", "{job}");
    verify(&data, "acme", 1000);
    let listing = json(&ok(admin(&server, t, &["keys", "list", "--json"])));
    let prod = listing["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "prod")
        .unwrap();
    assert_eq!(prod["state"], "disabled");

    // The API's refusals: code and detail on stderr, exit 1.
    fails_with(
        admin(
            &server,
            t,
            &["keys", "disable", "stage", "--reencrypt-to", "service"],
        ),
        "key_is_default (409)",
    );
    fails_with(
        admin(
            &server,
            t,
            &[
                "keys",
                "add",
                "--name",
                "aws",
                "--role-arn",
                "arn:aws:iam::111122223333:role/r",
                "--key-arn",
                "arn:aws:kms:us-east-1:111122223333:alias/k",
            ],
        ),
        "invalid_request (400)",
    );
    fails_with(
        admin(&server, t, &["keys", "add", "--name", "STAGE"]),
        "name_taken (409)",
    );
    fails_with(
        admin(&server, t, &["keys", "default", "nope"]),
        "no key with id or name \"nope\"",
    );
    fails_with(
        admin(&server, t, &["reencryption", "retry"]),
        "no_reencryption (409)",
    );

    // Disable all: back to the service-managed key.
    let out = ok(admin(&server, t, &["keys", "disable-all"]));
    assert!(out.stdout.contains("disable_all"), "{out:#?}");
    ok(admin(&server, t, &["reencryption", "status", "--watch"]));
    verify(&data, "acme", 1000);
    let out = ok(admin(&server, t, &["keys", "check", "service"]));
    assert!(out.stdout.contains(" ok "), "{out:#?}");

    // The audit trail, newest first, paged.
    let out = ok(admin(&server, t, &["audit", "--limit", "3"]));
    assert!(out.stdout.lines().next().unwrap().contains("ACTION"));
    assert_eq!(
        out.stdout.lines().filter(|l| l.starts_with("20")).count(),
        3
    );
    let cursor = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("more: cmk audit --cursor "))
        .expect("a next page")
        .to_owned();
    let page2 = json(&ok(admin(
        &server,
        t,
        &["audit", "--limit", "3", "--cursor", &cursor, "--json"],
    )));
    assert_eq!(page2["events"].as_array().unwrap().len(), 3);
    let all = json(&ok(admin(
        &server,
        t,
        &["audit", "--limit", "500", "--json"],
    )));
    let actions: Vec<&str> = all["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for action in [
        "key.added",
        "key.default_set",
        "key.disable_requested",
        "keys.disable_all_requested",
        "key.disabled",
        "reencryption.started",
        "reencryption.completed",
        "key.check",
    ] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
}

#[test]
fn a_revoked_key_fails_its_check_and_its_job_until_access_returns() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    ok(local(
        &data,
        &["seed", "--org", "acme", "--data-keys", "500"],
    ));
    let server = Server::start(&data);
    let admin_token = token(&data, "acme", "admin");
    let t = Some(admin_token.as_str());

    let added = json(&ok(admin(
        &server,
        t,
        &["keys", "add", "--name", "k1", "--json"],
    )));
    let k1 = added["key"]["id"].as_str().unwrap().to_owned();
    ok(admin(&server, t, &["reencryption", "status", "--watch"]));

    ok(local(
        &data,
        &["local-key", "revoke", "--org", "acme", "--key", &k1],
    ));
    // The check looks at the key now (no cache), reports the health and exits 1.
    let out = admin(&server, t, &["keys", "check", "k1"]);
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stdout.contains("access_denied"), "{out:#?}");

    // A job that needs the key fails; --watch exits 1 and prints the first errors.
    ok(admin(&server, t, &["keys", "disable-all"]));
    let out = admin(&server, t, &["reencryption", "status", "--watch"]);
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stdout.contains("failed"), "{out:#?}");
    assert!(out.stdout.contains("first errors"), "{out:#?}");
    assert!(out.stdout.contains("access_denied"), "{out:#?}");
    let status = json(&ok(admin(
        &server,
        t,
        &["reencryption", "status", "--json"],
    )));
    assert_eq!(status["reencryption"]["state"], "failed");
    assert_eq!(status["reencryption"]["failed"], 500);

    // Access returns; retry finishes the job. (The server trusts a local key's revocation state
    // for 200 ms before it looks at the marker file again.)
    ok(local(
        &data,
        &["local-key", "restore", "--org", "acme", "--key", &k1],
    ));
    std::thread::sleep(std::time::Duration::from_millis(400));
    let out = ok(admin(&server, t, &["reencryption", "retry"]));
    assert!(out.stdout.contains("running"), "{out:#?}");
    let out = ok(admin(&server, t, &["reencryption", "status", "--watch"]));
    assert!(out.stdout.contains("completed"), "{out:#?}");
    verify(&data, "acme", 500);

    // Cancel: a failed job ends cancelled, and the data still decrypts.
    let added = json(&ok(admin(
        &server,
        t,
        &["keys", "add", "--name", "k2", "--json"],
    )));
    let k2 = added["key"]["id"].as_str().unwrap().to_owned();
    ok(admin(&server, t, &["reencryption", "status", "--watch"]));
    ok(local(
        &data,
        &["local-key", "revoke", "--org", "acme", "--key", &k2],
    ));
    // A job reads revocations through the server's 200 ms cache (only `check` bypasses it).
    std::thread::sleep(std::time::Duration::from_millis(400));
    ok(admin(&server, t, &["keys", "disable-all"]));
    let out = admin(&server, t, &["reencryption", "status", "--watch"]);
    assert_eq!(out.code, Some(1), "{out:#?}");
    let out = ok(admin(&server, t, &["reencryption", "cancel"]));
    assert!(out.stdout.contains("cancelled"), "{out:#?}");
    ok(local(
        &data,
        &["local-key", "restore", "--org", "acme", "--key", &k2],
    ));
    verify(&data, "acme", 500);
}

#[test]
fn tokens_orgs_and_unreachable_services_are_reported_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data);

    fails_with(admin(&server, None, &["keys", "list"]), "no token");
    fails_with(
        admin(
            &server,
            Some("not.a.token"),
            &["keys", "list", "--org", "acme"],
        ),
        "unauthenticated (401)",
    );
    let member = token(&data, "acme", "member");
    fails_with(
        admin(&server, Some(&member), &["keys", "list"]),
        "forbidden (403)",
    );
    // The org comes from the token unless --org names another, which is refused.
    let beta = token(&data, "beta", "admin");
    let out = ok(admin(&server, Some(&beta), &["keys", "list"]));
    assert!(out.stdout.contains("Service-managed key"), "{out:#?}");
    fails_with(
        admin(&server, Some(&beta), &["keys", "list", "--org", "acme"]),
        "forbidden (403)",
    );
    // --url wins over CMK_URL; nothing listens on port 1.
    fails_with(
        admin(
            &server,
            Some(&beta),
            &["keys", "list", "--url", "http://127.0.0.1:1"],
        ),
        "cannot reach the service",
    );
}

/// Runs `cmk args…` with its stdout a pipe whose reader has already gone (like `| head -1`
/// after its line) and returns the exit code and stderr.
fn with_closed_stdout(configure: impl FnOnce(&mut Command)) -> (Option<i32>, String) {
    let mut cmd = Command::new(CMK);
    configure(&mut cmd);
    let mut child = cmd
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run cmk");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_closed_stdout_ends_commands_quietly_instead_of_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let token = ok(local(dir.path(), &["token", "--org", "acme"]))
        .stdout
        .trim()
        .to_owned();
    ok(admin(
        &server,
        Some(&token),
        &["keys", "add", "--name", "prod", "--type", "local"],
    ));
    let cases: [&[&str]; 4] = [
        &["keys", "list", "--json"],
        &["keys", "list"],
        &["audit", "--limit", "5"],
        &["reencryption", "status"],
    ];
    for args in cases {
        let (code, stderr) = with_closed_stdout(|c| {
            c.args(args)
                .env("CMK_URL", &server.base)
                .env("CMK_TOKEN", &token);
        });
        assert_eq!(code, Some(0), "cmk {args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "cmk {args:?}: {stderr}");
        assert!(stderr.is_empty(), "cmk {args:?} says nothing: {stderr}");
    }
    let (code, stderr) = with_closed_stdout(|c| {
        c.arg("--data-dir")
            .arg(dir.path())
            .args(["token", "--org", "acme"]);
    });
    assert_eq!((code, stderr.as_str()), (Some(0), ""));
    // And through a real shell pipeline, as a user types it.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{CMK} keys list --json | head -1"))
        .env("CMK_URL", &server.base)
        .env("CMK_TOKEN", &token)
        .output()
        .expect("sh");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "{\n");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("panicked"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
