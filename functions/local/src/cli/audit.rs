//! `cmk audit`: the org's audit trail, newest first.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use cmk_http::dto::AuditResponse;

use super::client::{print_json, typed, Client};
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
    let page: AuditResponse = typed(&page)?;
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = page
        .events
        .iter()
        .map(|e| {
            vec![
                e.at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                e.actor.clone(),
                e.action.clone(),
                e.outcome.clone(),
                opt(&e.key_id),
                opt(&e.job_id),
                opt(&e.detail),
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
    if let Some(next) = &page.next_cursor {
        out!("\nmore: cmk audit --cursor {next}");
    }
    Ok(ExitCode::SUCCESS)
}
