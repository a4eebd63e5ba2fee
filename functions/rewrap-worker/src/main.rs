//! `rewrap-worker`: re-encryption messages from SQS with partial batch failures, and the
//! scheduled stalled-job sweep (see `cmk_lambda::worker`).

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    cmk_lambda::worker::run().await
}
