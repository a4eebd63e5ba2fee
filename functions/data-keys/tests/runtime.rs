//! The `cmk-data-keys` binary as Lambda runs it: a Runtime API stand-in hands it events of
//! `events/` and it answers API Gateway responses (AWS is unreachable here: only what needs no
//! AWS call is asked).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cmk_lambda::testing::{fixture, FakeRuntime, Outcome};
use serde_json::{json, Value};

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
        &cmk_lambda::testing::function_binary(env!("CARGO_BIN_EXE_cmk-data-keys"), "cmk-data-keys"),
        &env,
    );

    // IAM context, but no content-type: 400 before any AWS call.
    let mut untyped = fixture("data-keys/decrypt.json");
    untyped["headers"]
        .as_object_mut()
        .expect("headers")
        .remove("content-type");
    assert_eq!(response(runtime.invoke(untyped).await)["statusCode"], 400);

    // JWT claims are not how services authenticate here.
    let mut jwt = fixture("data-keys/create-data-key.json");
    jwt["requestContext"]["authorizer"] =
        json!({"jwt": {"claims": {"sub": "svc", "org": "acme", "role": "service"}}});
    assert_eq!(response(runtime.invoke(jwt).await)["statusCode"], 401);
}
