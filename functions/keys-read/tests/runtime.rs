//! The `cmk-keys-read` binary as Lambda runs it: a Runtime API stand-in hands it events of
//! `events/` and it answers API Gateway responses; SDK clients are built at init without any AWS
//! call (AWS is unreachable here), and a configuration error stops the cold start.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cmk_lambda::testing::{fixture, FakeRuntime, Outcome};
use serde_json::Value;

fn binary() -> String {
    cmk_lambda::testing::function_binary(env!("CARGO_BIN_EXE_cmk-keys-read"), "cmk-keys-read")
}

fn response(outcome: Outcome) -> Value {
    match outcome {
        Outcome::Response(v) => v,
        other => panic!("expected a response, got {other:?}"),
    }
}

#[tokio::test]
async fn the_binary_answers_api_gateway_events() {
    let mut runtime = FakeRuntime::start().await;
    let env = runtime.function_env();
    runtime.spawn(&binary(), &env);

    let page = response(runtime.invoke(fixture("keys-read/page.json")).await);
    assert_eq!(page["statusCode"], 200);
    assert!(page["body"].as_str().unwrap_or("").contains("<html"));

    let mut other_org = fixture("keys-read/list-keys.json");
    other_org["requestContext"]["authorizer"]["jwt"]["claims"]["org"] = "globex".into();
    assert_eq!(response(runtime.invoke(other_org).await)["statusCode"], 403);

    // keys/setup is keys-write's.
    assert_eq!(
        response(runtime.invoke(fixture("keys-write/setup.json")).await)["statusCode"],
        404
    );
}

/// Runs the bootstrap with only `env`, which must stop its cold start; returns its stderr.
fn refused_cold_start(env: Vec<(String, String)>) -> String {
    let out = std::process::Command::new(binary())
        .env_clear()
        .envs(env)
        .output()
        .expect("run");
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn a_missing_variable_stops_the_cold_start() {
    let runtime = FakeRuntime::start().await;
    let env: Vec<(String, String)> = runtime
        .function_env()
        .into_iter()
        .filter(|(k, _)| k != "CMK_TABLE")
        .collect();
    let stderr = refused_cold_start(env);
    assert!(stderr.contains("CMK_TABLE"), "{stderr}");
}

#[tokio::test]
async fn an_oidc_issuer_that_is_not_https_stops_the_cold_start() {
    let runtime = FakeRuntime::start().await;
    let mut env = runtime.function_env();
    env.push((
        "CMK_OIDC_ISSUER".into(),
        "http://cmk.example.com/oidc".into(),
    ));
    env.push(("CMK_OIDC_SIGNING_KEYS".into(), "alias/cmk-oidc".into()));
    let stderr = refused_cold_start(env);
    assert!(stderr.contains("CMK_OIDC_ISSUER"), "{stderr}");
    assert!(stderr.contains("https"), "{stderr}");
}
