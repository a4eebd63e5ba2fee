//! The `cmk-rewrap-worker` binary as Lambda runs it: a Runtime API stand-in hands it the SQS and
//! scheduled events of `events/`. AWS is unreachable here, so the fixture's plan and batch
//! messages fail and are the only ones reported, while a poison message is acknowledged; the
//! sweep fails the invocation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use cmk_lambda::testing::{fixture, FakeRuntime, Outcome};

#[tokio::test]
async fn the_binary_answers_partial_batch_failures() {
    let mut runtime = FakeRuntime::start().await;
    let env = runtime.function_env();
    runtime.spawn(
        &cmk_lambda::testing::function_binary(
            env!("CARGO_BIN_EXE_cmk-rewrap-worker"),
            "cmk-rewrap-worker",
        ),
        &env,
    );

    let mut event = fixture("rewrap-worker/sqs-rewrap.json");
    let records = event["Records"].as_array_mut().expect("records");
    let expected: BTreeSet<String> = records
        .iter()
        .map(|r| r["messageId"].as_str().expect("id").to_owned())
        .collect();
    let mut poison = records[0].clone();
    poison["messageId"] = "poison-1".into();
    poison["body"] = "not json".into();
    records.push(poison);

    let Outcome::Response(answer) = runtime.invoke(event).await else {
        panic!("expected a batch answer")
    };
    let failed: BTreeSet<String> = answer["batchItemFailures"]
        .as_array()
        .expect("batchItemFailures")
        .iter()
        .map(|f| f["itemIdentifier"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(failed, expected);

    let sweep = runtime.invoke(fixture("rewrap-worker/schedule.json")).await;
    assert!(matches!(sweep, Outcome::Error(_)), "{sweep:?}");
}
