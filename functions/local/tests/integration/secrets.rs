//! Secrets fail closed: processes that start together on a new data directory all sign with
//! the one complete token secret, and a secret or key file that is empty or short stops
//! `cmk serve` and `cmk token` with exit 1 and an error naming the file, before anything is
//! served.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const CMK: &str = env!("CARGO_BIN_EXE_cmk");

fn cmk(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(CMK)
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run cmk")
}

/// Starts `cmk serve` on a free port and returns its base URL and the child.
fn serve(data_dir: &Path) -> (String, std::process::Child) {
    let mut child = Command::new(CMK)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["serve", "--addr", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start cmk serve");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = lines.next().expect("a line").expect("utf8");
    let base = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .to_owned();
    std::thread::spawn(move || for _ in lines {});
    (base, child)
}

#[tokio::test(flavor = "multi_thread")]
async fn eight_processes_starting_together_on_a_new_data_directory_mint_tokens_that_all_verify() {
    for round in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        // Eight processes race to create the secret; each mints a token with what it read.
        let children: Vec<_> = (0..8)
            .map(|i| {
                Command::new(CMK)
                    .arg("--data-dir")
                    .arg(&data_dir)
                    .args(["token", "--org", "acme", "--sub", &format!("p{i}")])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn cmk token")
            })
            .collect();
        let tokens: Vec<String> = children
            .into_iter()
            .map(|c| {
                let out = c.wait_with_output().expect("wait");
                assert!(
                    out.status.success(),
                    "round {round}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8(out.stdout).unwrap().trim().to_owned()
            })
            .collect();
        let secret = std::fs::read_to_string(data_dir.join("token.secret")).unwrap();
        assert_eq!(
            secret.trim().len(),
            64,
            "a complete secret: 32 bytes as hex"
        );

        // A server on that directory accepts every one of them.
        let (base, mut server) = serve(&data_dir);
        let http = reqwest::Client::new();
        for (i, token) in tokens.iter().enumerate() {
            let status = http
                .get(format!("{base}/v1/orgs/acme/keys"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(
                status, 200,
                "round {round}: the token of process {i} verifies"
            );
        }
        server.kill().unwrap();
        server.wait().unwrap();
    }
}

/// Runs `cmk serve` on a data directory that must be refused: it exits 1 by itself, says why
/// naming `file`, and never prints a listening address.
fn assert_serve_refuses(data_dir: &Path, file: &str) {
    let mut child = Command::new(CMK)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["serve", "--addr", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cmk serve");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("cmk serve kept running on a data directory with a bad {file}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(file), "the error names {file}: {stderr}");
    assert!(!stdout.contains("listening"), "nothing is served: {stdout}");
}

#[test]
fn an_empty_or_short_token_secret_stops_serve_and_token_with_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path();
    assert!(cmk(data_dir, &["token", "--org", "acme"]).status.success());
    let secret_path = data_dir.join("token.secret");
    let secret = std::fs::read(&secret_path).unwrap();
    let not_hex = [b'z'; 70];
    for truncated in [&b""[..], &secret[..1], &secret[..63], &not_hex[..]] {
        std::fs::write(&secret_path, truncated).unwrap();
        let out = cmk(data_dir, &["token", "--org", "acme"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(out.stdout.is_empty(), "no token is printed");
        assert!(stderr.contains("token.secret"), "{stderr}");
        assert_serve_refuses(data_dir, "token.secret");
        // The file is left as it was for the operator to look at: never silently replaced.
        assert_eq!(std::fs::read(&secret_path).unwrap(), truncated);
    }
}

#[test]
fn a_short_service_key_stops_serve_with_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path();
    // `seed` opens the backends, which creates the service key.
    assert!(
        cmk(data_dir, &["seed", "--org", "acme", "--data-keys", "1"])
            .status
            .success()
    );
    let key_path = data_dir.join("keys").join("service.key");
    let key = std::fs::read(&key_path).unwrap();
    assert_eq!(key.len(), 32);
    std::fs::write(&key_path, &key[..16]).unwrap();
    assert_serve_refuses(data_dir, "service.key");
}
