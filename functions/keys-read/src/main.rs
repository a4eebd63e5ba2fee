//! `keys-read`: the admin page and the admin routes that only read (see `cmk_lambda::http`).

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    cmk_lambda::http::run(cmk_lambda::HttpFunction::KeysRead).await
}
