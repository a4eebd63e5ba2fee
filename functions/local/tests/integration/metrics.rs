//! `GET /metrics` of `cmk serve`: after a re-encryption the moved count equals the job's `done`,
//! job transitions and requests are counted with low-cardinality labels only (no org name in
//! any series), and the unauthenticated route is served on a loopback address but not on
//! another one unless `--metrics` asks for it.

use std::io::{Read, Write};
use std::net::TcpStream;

use super::cli::{admin, json, local, ok, token, Server};

/// `GET path` over plain HTTP/1.0 (the connection closes after the answer): status and body.
pub(crate) fn get(base: &str, path: &str) -> (u16, String) {
    let addr = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).expect("connect");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"));
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_owned())
}

/// The value of the sample named exactly `series` (name and labels as Prometheus prints them).
pub(crate) fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

#[test]
fn metrics_count_what_a_job_moved_and_never_name_an_org() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    ok(local(
        &data,
        &["seed", "--org", "acme", "--data-keys", "700"],
    ));
    let server = Server::start(&data);
    let admin_token = token(&data, "acme", "admin");
    let t = Some(admin_token.as_str());
    ok(admin(&server, t, &["keys", "add", "--name", "prod"]));
    let job = json(&ok(admin(
        &server,
        t,
        &["reencryption", "status", "--watch", "--json"],
    )));
    assert_eq!(job["reencryption"]["state"], "completed", "{job}");
    let done = job["reencryption"]["done"].as_f64().expect("done");
    assert_eq!(done, 700.0);

    let (status, metrics) = get(&server.base, "/metrics");
    assert_eq!(status, 200, "{metrics}");
    assert_eq!(
        sample(&metrics, "cmk_rewrap_data_keys_moved_total"),
        Some(done),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "cmk_jobs_total{transition=\"started\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "cmk_jobs_total{transition=\"completed\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        sample(
            &metrics,
            "cmk_http_requests_total{route=\"/v1/orgs/{org}/keys\",status=\"201\"}"
        )
        .is_some(),
        "{metrics}"
    );
    assert!(metrics.contains("cmk_rewrap_batch_seconds"), "{metrics}");
    // Route templates only: no org name, no key id in any series.
    assert!(!metrics.contains("acme"), "{metrics}");
}

#[test]
fn metrics_are_served_off_loopback_only_when_asked_for() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    // Listening on every interface; the test still connects over loopback only.
    let server = Server::start_with(&data, &["--addr", "0.0.0.0:0"]);
    let port = server.base.rsplit(':').next().expect("a port").to_owned();
    let base = format!("http://127.0.0.1:{port}");
    let (status, _) = get(&base, "/metrics");
    assert_eq!(status, 404);
    drop(server);

    let server = Server::start_with(&data, &["--addr", "0.0.0.0:0", "--metrics"]);
    let port = server.base.rsplit(':').next().expect("a port").to_owned();
    let (status, body) = get(&format!("http://127.0.0.1:{port}"), "/metrics");
    assert_eq!(status, 200, "{body}");
}
