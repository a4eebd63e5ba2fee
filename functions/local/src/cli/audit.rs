//! `cmk audit`: the org's audit trail, newest first.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use serde_json::Value;

use super::client::{print_json, s, Client};
use super::table;
use super::Remote;

#[derive(Args, Debug)]
pub struct AuditArgs {
    #[command(flatten)]
    remote: Remote,
    /// Events per page (1 to 500).
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// `next_cursor` of the previous page.
    #[arg(long)]
    cursor: Option<String>,
}

pub async fn audit(args: AuditArgs) -> Result<ExitCode> {
    let client = Client::new(&args.remote)?;
    let mut path = format!("/audit?limit={}", args.limit);
    if let Some(cursor) = &args.cursor {
        let encoded: String = cursor
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        path.push_str(&format!("&cursor={encoded}"));
    }
    let page = client.get(&path).await?;
    if args.remote.json {
        print_json(&page)?;
        return Ok(ExitCode::SUCCESS);
    }
    let events = page["events"].as_array().cloned().unwrap_or_default();
    let opt = |v: &Value, f: &str| v[f].as_str().unwrap_or("-").to_owned();
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                s(e, "at").to_owned(),
                s(e, "actor").to_owned(),
                s(e, "action").to_owned(),
                s(e, "outcome").to_owned(),
                opt(e, "key_id"),
                opt(e, "job_id"),
                opt(e, "detail"),
            ]
        })
        .collect();
    out!(
        "{}",
        table::render(
            &["AT", "ACTOR", "ACTION", "OUTCOME", "KEY", "JOB", "DETAIL"],
            &rows
        )
    );
    if let Some(next) = page["next_cursor"].as_str() {
        out!("\nmore: cmk audit --cursor {next}");
    }
    Ok(ExitCode::SUCCESS)
}
