//! Events of `cmk serve --webhook-url`, received by a small HTTP server in the test: a job's
//! start and end and a key's health change each arrive once, in EventBridge's envelope, signed
//! with the HMAC-SHA256 of the body under `webhook.secret`; a receiver that answers 503 gets
//! the same event again after a backoff, and `/metrics` counts what was sent.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{KeyInit, Mac};
use serde_json::Value;

use super::cli::{admin, local, ok, token, Server};
use super::metrics::{get, sample};

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Received {
    headers: HashMap<String, String>,
    body: String,
    /// What the receiver answered.
    status: u16,
}

/// An HTTP/1.1 receiver on a free loopback port that answers 503 to its first request and
/// 204 to every other; returns its URL and what it got.
fn receiver() -> (String, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/hooks/cmk", listener.local_addr().expect("addr"));
    let got: Arc<Mutex<Vec<Received>>> = Arc::default();
    let record = Arc::clone(&got);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut headers = HashMap::new();
            let mut line = String::new();
            reader.read_line(&mut line).expect("request line");
            loop {
                line.clear();
                reader.read_line(&mut line).expect("header");
                let Some((name, value)) = line.trim_end().split_once(':') else {
                    break;
                };
                headers.insert(name.to_ascii_lowercase(), value.trim().to_owned());
            }
            let length: usize = headers["content-length"].parse().expect("length");
            let mut body = vec![0; length];
            reader.read_exact(&mut body).expect("body");
            let mut all = record.lock().expect("lock");
            let status = if all.is_empty() { 503 } else { 204 };
            all.push(Received {
                headers,
                body: String::from_utf8(body).expect("utf8"),
                status,
            });
            drop(all);
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    (url, got)
}

#[test]
fn events_reach_the_webhook_signed_once_each_and_retried() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (url, got) = receiver();
    let server = Server::start_with(
        &data,
        &[
            "--addr",
            "127.0.0.1:0",
            "--webhook-url",
            &url,
            "--health-check-interval",
            "1",
            "--health-check-every",
            "1",
        ],
    );
    let t = token(&data, "acme", "admin");
    let added = ok(admin(
        &server,
        Some(&t),
        &["keys", "add", "--name", "prod", "--json"],
    ));
    let added: Value = serde_json::from_str(&added.stdout).expect("json");
    let key = added["key"]["id"].as_str().expect("id").to_owned();
    ok(admin(
        &server,
        Some(&t),
        &["reencryption", "status", "--watch"],
    ));
    ok(local(
        &data,
        &["local-key", "revoke", "--org", "acme", "--key", &key],
    ));

    let wanted = [
        "Re-encryption Started",
        "Re-encryption Completed",
        "Key Health Changed",
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    let delivered = loop {
        let all = got.lock().expect("lock").clone();
        let delivered: Vec<Received> = all.iter().filter(|r| r.status == 204).cloned().collect();
        let types: Vec<&str> = delivered
            .iter()
            .map(|r| r.headers["cmk-event-type"].as_str())
            .collect();
        if wanted.iter().all(|w| types.contains(w)) {
            break delivered;
        }
        assert!(Instant::now() < deadline, "events so far: {all:#?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let all = got.lock().expect("lock").clone();
    assert_eq!(all[0].status, 503);
    assert_eq!(
        all[1].headers["cmk-event-id"], all[0].headers["cmk-event-id"],
        "the event refused with 503 came again"
    );
    assert_eq!(all[1].body, all[0].body, "unchanged");

    let secret = std::fs::read_to_string(data.join("webhook.secret")).expect("secret");
    let mut ids = Vec::new();
    for r in &delivered {
        let mut mac =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.trim().as_bytes()).expect("key");
        mac.update(r.body.as_bytes());
        let expected: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(r.headers["cmk-signature"], format!("sha256={expected}"));
        assert_eq!(r.headers["content-type"], "application/json");
        let event: Value = serde_json::from_str(&r.body).expect("an event");
        assert_eq!(event["source"], "cmk");
        assert_eq!(event["detail-type"], r.headers["cmk-event-type"].as_str());
        assert_eq!(event["id"], r.headers["cmk-event-id"].as_str());
        assert_eq!(event["detail"]["org"], "acme");
        ids.push(event["id"].as_str().expect("id").to_owned());
        if event["detail-type"] == "Key Health Changed" {
            assert_eq!(event["detail"]["key_id"], key.as_str());
            assert_eq!(event["detail"]["key_name"], "prod");
            assert_eq!(event["detail"]["previous_status"], "ok");
            assert_eq!(event["detail"]["status"], "access_denied");
            assert!(event["detail"]["reason"].as_str().is_some());
        }
        if event["detail-type"] == "Re-encryption Completed" {
            assert_eq!(event["detail"]["kind"], "adopt");
            assert_eq!(event["detail"]["target_key"]["name"], "prod");
            assert_eq!(event["detail"]["failed"], 0);
        }
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        ids.len(),
        "each event delivered once: {ids:?}"
    );

    let (_, metrics) = get(&server.base, "/metrics");
    assert_eq!(
        sample(&metrics, "cmk_events_total{outcome=\"sent\"}"),
        Some(delivered.len() as f64),
        "{metrics}"
    );
}

#[test]
fn a_webhook_over_plain_http_to_another_host_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = local(
        &dir.path().join("data"),
        &[
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--webhook-url",
            "http://hooks.example.com/cmk",
        ],
    );
    assert!(!out.ok, "{out:?}");
    assert!(out.stderr.contains("use https"), "{out:?}");
}
