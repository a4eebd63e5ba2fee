//! The continuous key health checks of `cmk serve`: a key the customer revokes shows
//! `access_denied` without anyone using or checking it, the change is audited as
//! `key.health_changed` (old and new status, reason) and counted; once access returns the key is
//! `ok` again and keeps its last failure for the page. With the interval at 0 nothing is
//! checked.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::cli::{admin, json, local, ok, token, Server};
use super::metrics::{get, sample};

/// Every second: each key is checked at most once a second.
const FAST_CHECKS: [&str; 6] = [
    "--addr",
    "127.0.0.1:0",
    "--health-check-interval",
    "1",
    "--health-check-every",
    "1",
];

/// The key named `name` in the keys list, once `until` holds for it (30 s at most).
fn key_when(server: &Server, token: &str, name: &str, until: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listing = json(&ok(admin(server, Some(token), &["keys", "list", "--json"])));
        let key = listing["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .find(|k| k["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no key {name} in {listing}"));
        if until(&key) {
            return key;
        }
        assert!(
            Instant::now() < deadline,
            "key {name} never got there: {key}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn health_changes(server: &Server, token: &str) -> Vec<Value> {
    let audit = json(&ok(admin(
        server,
        Some(token),
        &["audit", "--limit", "500", "--json"],
    )));
    audit["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["action"] == "key.health_changed")
        .cloned()
        .collect()
}

#[test]
fn a_revoked_key_shows_without_anyone_using_it_and_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = Server::start_with(&data, &FAST_CHECKS);
    let t = token(&data, "acme", "admin");
    ok(admin(&server, Some(&t), &["keys", "add", "--name", "prod"]));
    let key = key_when(&server, &t, "prod", |k| k["health"]["status"] == "ok");
    let id = key["id"].as_str().expect("id").to_owned();
    let added_check = key["health"]["checked_at"].clone();
    let rechecked = key_when(&server, &t, "prod", |k| {
        k["health"]["checked_at"] != added_check
    });
    assert_eq!(
        rechecked["health"]["status"], "ok",
        "checked again, still fine"
    );
    assert!(
        health_changes(&server, &t).is_empty(),
        "no change, nothing audited"
    );

    ok(local(
        &data,
        &["local-key", "revoke", "--org", "acme", "--key", &id],
    ));
    let revoked = key_when(&server, &t, "prod", |k| k["health"]["status"] != "ok");
    assert_eq!(revoked["health"]["status"], "access_denied", "{revoked}");
    assert!(
        revoked["health"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("revoked")),
        "{revoked}"
    );
    let changes = health_changes(&server, &t);
    assert_eq!(changes.len(), 1, "one change, audited once: {changes:?}");
    assert_eq!(changes[0]["actor"], "system");
    assert_eq!(changes[0]["key_id"], id.as_str());
    assert_eq!(changes[0]["outcome"], "failure");
    let detail = changes[0]["detail"].as_str().expect("detail");
    assert!(detail.starts_with("ok -> access_denied: "), "{detail}");

    ok(local(
        &data,
        &["local-key", "restore", "--org", "acme", "--key", &id],
    ));
    let back = key_when(&server, &t, "prod", |k| k["health"]["status"] == "ok");
    assert_eq!(back["health"]["message"], Value::Null);
    assert_eq!(
        back["health"]["last_failure"]["status"], "access_denied",
        "the failure is kept for the page: {back}"
    );
    assert_eq!(
        back["health"]["last_failure"]["at"], revoked["health"]["checked_at"],
        "{back}"
    );
    let changes = health_changes(&server, &t);
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert_eq!(changes[0]["detail"], "access_denied -> ok", "newest first");
    assert_eq!(changes[0]["outcome"], "success");

    let (_, metrics) = get(&server.base, "/metrics");
    for status in ["access_denied", "ok"] {
        assert_eq!(
            sample(
                &metrics,
                &format!("cmk_key_health_changes_total{{status=\"{status}\"}}")
            ),
            Some(1.0),
            "{metrics}"
        );
    }
    assert!(
        sample(&metrics, "cmk_key_checks_total{result=\"access_denied\"}").is_some(),
        "{metrics}"
    );
}

#[test]
fn an_interval_of_zero_turns_the_checks_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut args = FAST_CHECKS;
    args[3] = "0";
    let server = Server::start_with(&data, &args);
    let t = token(&data, "acme", "admin");
    ok(admin(&server, Some(&t), &["keys", "add", "--name", "prod"]));
    let key = key_when(&server, &t, "prod", |_| true);
    std::thread::sleep(Duration::from_millis(2_500));
    let later = key_when(&server, &t, "prod", |_| true);
    assert_eq!(
        later["health"]["checked_at"], key["health"]["checked_at"],
        "not checked again"
    );
}
