//! A private AWS emulator (`moto_server`) for tests that switch IAM enforcement on, which is
//! global to an emulator and so cannot share the test command's one. Test-only: behind the
//! `emulator` feature, used as a dev-dependency.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aws_config::SdkConfig;
use aws_credential_types::Credentials;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The test command's shared emulator (`CMK_TEST_AWS_ENDPOINT`), for tests that need no private
/// one. Without it the caller's test is skipped (`None`), unless `CMK_REQUIRE_AWS_TESTS` is set,
/// in which case it panics: CI must never skip AWS tests silently.
///
/// # Panics
/// When AWS tests are required but no endpoint is set.
pub fn shared_endpoint() -> Option<String> {
    match std::env::var("CMK_TEST_AWS_ENDPOINT") {
        Ok(e) if !e.is_empty() => Some(e),
        _ => {
            assert!(
                std::env::var_os("CMK_REQUIRE_AWS_TESTS").is_none(),
                "CMK_TEST_AWS_ENDPOINT is not set but AWS tests are required"
            );
            eprintln!("skipped: set CMK_TEST_AWS_ENDPOINT to an AWS emulator to run this test");
            None
        }
    }
}

/// A running emulator on a free loopback port, killed and waited for when dropped.
#[derive(Debug)]
pub struct Emulator {
    child: Child,
    endpoint: String,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Emulator {
    /// Starts `$CMK_MOTO_SERVER` (the test command sets it) and waits until it answers.
    /// Without it the caller's test is skipped (`None`), unless `CMK_REQUIRE_AWS_TESTS` is set,
    /// in which case it panics: CI must never skip AWS tests silently.
    ///
    /// # Panics
    /// When AWS tests are required but no emulator is configured, or it does not start.
    pub async fn start() -> Option<Self> {
        let Some(server) = std::env::var_os("CMK_MOTO_SERVER") else {
            assert!(
                std::env::var_os("CMK_REQUIRE_AWS_TESTS").is_none(),
                "CMK_MOTO_SERVER is not set but AWS tests are required"
            );
            eprintln!("skipped: set CMK_MOTO_SERVER to the emulator's executable");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        // Owned by the guard at once, so it is killed and waited for on every path.
        let emulator = Self {
            child: Command::new(server)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start the emulator"),
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        for _ in 0..150 {
            if emulator.control("GET", "moto-api/", "").await == Some(200) {
                return Some(emulator);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the emulator did not start");
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Switches IAM enforcement on (`true`) or off.
    ///
    /// # Panics
    /// When the emulator refuses.
    pub async fn enforce_iam(&self, on: bool) {
        // The emulator enforces IAM once this many requests have been made.
        let after = if on { "0" } else { "1000000000" };
        assert_eq!(
            self.control("POST", "moto-api/reset-auth", after).await,
            Some(200),
            "reset-auth"
        );
    }

    /// An SDK configuration as the emulator's root identity (allowed everything even with IAM
    /// enforced), for setting up users, roles and resources.
    pub async fn root_config(&self) -> SdkConfig {
        self.config(Credentials::new("testing", "testing", None, None, "static"))
            .await
    }

    /// An SDK configuration for this emulator with `credentials`.
    pub async fn config(&self, credentials: Credentials) -> SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(credentials)
            .load()
            .await
    }

    /// One request to the emulator's control API (plain HTTP/1.1 over tokio, no client crate);
    /// the response status, or `None` when it cannot be reached.
    async fn control(&self, method: &str, path: &str, body: &str) -> Option<u16> {
        let host = self.endpoint.strip_prefix("http://")?;
        let mut stream = tokio::net::TcpStream::connect(host).await.ok()?;
        let request = format!(
            "{method} /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        response.get(9..12)?.parse().ok()
    }
}
