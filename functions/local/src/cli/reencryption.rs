//! `cmk reencryption status [--watch] | retry | cancel`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use super::client::{n, print_json, s, Client};
use super::table::{self, count};
use super::Remote;

#[derive(Args, Debug)]
pub struct ReencryptionArgs {
    #[command(flatten)]
    remote: Remote,
    #[command(subcommand)]
    command: ReencryptionCommand,
}

#[derive(Subcommand, Debug)]
enum ReencryptionCommand {
    /// Show the unfinished re-encryption, else the last one.
    Status {
        /// Draw a progress bar until the job ends; exit 0 only if it completed.
        #[arg(long)]
        watch: bool,
        /// Seconds between polls with --watch.
        #[arg(long, default_value_t = 0.5)]
        interval: f64,
    },
    /// Run a failed job again for the data keys that failed or remain.
    Retry,
    /// Cancel the unfinished job; every data key stays readable with its current key.
    Cancel,
}

/// `adopt running: 4,200/10,000 done, 0 failed (job …)`.
pub fn job_summary(job: &Value) -> String {
    format!(
        "{} {}: {}/{} done, {} failed (job {})",
        s(job, "kind"),
        s(job, "state"),
        count(n(job, "done")),
        count(n(job, "total")),
        count(n(job, "failed")),
        s(job, "id"),
    )
}

fn print_job(job: &Value) -> anyhow::Result<()> {
    if !job.is_object() {
        out!("no re-encryption has run in this org");
        return Ok(());
    }
    let total = n(job, "total");
    let done = n(job, "done");
    let pct = done.saturating_mul(100).checked_div(total).unwrap_or(100);
    let sources: Vec<&str> = job["source_key_ids"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let rows = vec![
        vec!["job".into(), s(job, "id").to_owned()],
        vec!["kind".into(), s(job, "kind").to_owned()],
        vec!["state".into(), s(job, "state").to_owned()],
        vec![
            "progress".into(),
            format!("{}/{} ({pct}%)", count(done), count(total)),
        ],
        vec!["failed".into(), count(n(job, "failed"))],
        vec!["from".into(), sources.join(", ")],
        vec!["to".into(), s(job, "target_key_id").to_owned()],
        vec![
            "started".into(),
            format!("{} by {}", s(job, "started_at"), s(job, "started_by")),
        ],
        vec![
            "finished".into(),
            job["finished_at"].as_str().unwrap_or("-").to_owned(),
        ],
    ];
    out!("{}", table::render(&["FIELD", "VALUE"], &rows));
    let errors = job["errors"].as_array().cloned().unwrap_or_default();
    if !errors.is_empty() {
        out!("\nfirst errors:");
        let rows: Vec<Vec<String>> = errors
            .iter()
            .map(|e| {
                vec![
                    s(e, "data_key_id").to_owned(),
                    s(e, "key_id").to_owned(),
                    s(e, "reason").to_owned(),
                    s(e, "message").to_owned(),
                ]
            })
            .collect();
        out!(
            "{}",
            table::render(&["DATA KEY", "KEY", "REASON", "MESSAGE"], &rows)
        );
    }
    if s(job, "state") == "failed" {
        out!("\nfix access to the key, then: cmk reencryption retry (or cancel)");
    }
    Ok(())
}

/// Polls until the job is no longer running, drawing a bar on stderr unless `quiet`.
async fn watch(client: &Client, interval: Duration, quiet: bool) -> Result<Value> {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} ({percent}%, eta {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    };
    loop {
        let job = client.get("/reencryption").await?["reencryption"].clone();
        if !job.is_object() {
            bar.finish_and_clear();
            return Ok(job);
        }
        bar.set_length(n(&job, "total"));
        bar.set_position(n(&job, "done"));
        let failed = n(&job, "failed");
        bar.set_message(if failed > 0 {
            format!("{} ({failed} failed)", s(&job, "kind"))
        } else {
            s(&job, "kind").to_owned()
        });
        if s(&job, "state") != "running" {
            bar.finish_and_clear();
            return Ok(job);
        }
        tokio::time::sleep(interval).await;
    }
}

pub async fn reencryption(args: ReencryptionArgs) -> Result<ExitCode> {
    let client = Client::new(&args.remote)?;
    let json = args.remote.json;
    let job = match args.command {
        ReencryptionCommand::Status {
            watch: false,
            interval: _,
        } => client.get("/reencryption").await?["reencryption"].clone(),
        ReencryptionCommand::Status {
            watch: true,
            interval,
        } => {
            let interval = Duration::from_secs_f64(interval.clamp(0.05, 60.0));
            let job = watch(&client, interval, json).await?;
            if json {
                print_json(&serde_json::json!({ "reencryption": job }))?;
            } else {
                print_job(&job)?;
            }
            let ok = !job.is_object() || s(&job, "state") == "completed";
            return Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        ReencryptionCommand::Retry => {
            client.post("/reencryption/retry", None).await?["reencryption"].clone()
        }
        ReencryptionCommand::Cancel => {
            client.post("/reencryption/cancel", None).await?["reencryption"].clone()
        }
    };
    if json {
        print_json(&serde_json::json!({ "reencryption": job }))?;
    } else {
        print_job(&job)?;
    }
    Ok(ExitCode::SUCCESS)
}
