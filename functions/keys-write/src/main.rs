//! `keys-write`: the admin routes that change keys and jobs, and `keys/setup` (see
//! `cmk_lambda::http`).

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    cmk_lambda::http::run(cmk_lambda::HttpFunction::KeysWrite).await
}
