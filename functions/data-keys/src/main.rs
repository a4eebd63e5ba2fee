//! `data-keys`: the data plane, for services under AWS IAM authorization (see
//! `cmk_lambda::http`).

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    cmk_lambda::http::run(cmk_lambda::HttpFunction::DataKeys).await
}
