//! The admin CLI: `cmk keys …`, `cmk reencryption …` and `cmk audit`. Each command talks to a
//! running service over the HTTP API of API.md with an admin's bearer token, prints a table (or
//! the API's JSON with `--json`), and on an API error prints its code and detail and exits
//! non-zero.

mod audit;
mod client;
mod keys;
mod reencryption;
mod table;

pub use audit::{audit, AuditArgs};
pub use keys::{keys, KeysArgs};
pub use reencryption::{reencryption, ReencryptionArgs};

use clap::Args;

/// Where the service is and who is calling; shared by every admin command.
#[derive(Args, Debug, Clone)]
pub struct Remote {
    /// Base URL of the running service.
    #[arg(
        long,
        env = "CMK_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    /// An admin bearer token (locally: `cmk token --org ORG --role admin`).
    #[arg(long, env = "CMK_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// The organization; defaults to the token's `org` claim.
    #[arg(long, global = true)]
    pub org: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}
