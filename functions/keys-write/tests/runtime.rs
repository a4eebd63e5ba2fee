//! The `cmk-keys-write` binary as Lambda runs it: a Runtime API stand-in hands it events of
//! `events/` and it answers API Gateway responses (AWS is unreachable here: only what needs no
//! AWS call is asked).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cmk_lambda::testing::{fixture, FakeRuntime, Outcome};
use serde_json::Value;

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
    runtime.spawn(
        &cmk_lambda::testing::function_binary(
            env!("CARGO_BIN_EXE_cmk-keys-write"),
            "cmk-keys-write",
        ),
        &env,
    );

    let mut member = fixture("keys-write/add-key.json");
    member["requestContext"]["authorizer"]["jwt"]["claims"]["role"] = "member".into();
    assert_eq!(response(runtime.invoke(member).await)["statusCode"], 403);

    let mut untyped = fixture("keys-write/add-key.json");
    untyped["headers"]
        .as_object_mut()
        .expect("headers")
        .remove("content-type");
    let answer = response(runtime.invoke(untyped).await);
    assert_eq!(answer["statusCode"], 400);

    // The admin page is keys-read's.
    assert_eq!(
        response(runtime.invoke(fixture("keys-read/page.json")).await)["statusCode"],
        404
    );
}
