//! `cmk reencryption status [--watch] | retry | cancel`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};
use cmk_http::dto::{JobDto, JobResponse, JobStateDto, ReencryptionStatusResponse};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use super::client::{print_json, typed, word, Client};
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
pub fn job_summary(job: &JobDto) -> String {
    format!(
        "{} {}: {}/{} done, {} failed (job {})",
        word(&job.kind),
        word(&job.state),
        count(job.done),
        count(job.total),
        count(job.failed),
        job.id,
    )
}

fn print_job(job: Option<&JobDto>) -> anyhow::Result<()> {
    let Some(job) = job else {
        out!("no re-encryption has run in this org");
        return Ok(());
    };
    let pct = job
        .done
        .saturating_mul(100)
        .checked_div(job.total)
        .unwrap_or(100);
    let time =
        |t: &chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
    let rows = vec![
        vec!["job".into(), job.id.clone()],
        vec!["kind".into(), word(&job.kind)],
        vec!["state".into(), word(&job.state)],
        vec![
            "progress".into(),
            format!("{}/{} ({pct}%)", count(job.done), count(job.total)),
        ],
        vec!["failed".into(), count(job.failed)],
        vec!["from".into(), job.source_key_ids.join(", ")],
        vec!["to".into(), job.target_key_id.clone()],
        vec![
            "started".into(),
            format!("{} by {}", time(&job.started_at), job.started_by),
        ],
        vec![
            "finished".into(),
            job.finished_at.as_ref().map_or_else(|| "-".into(), time),
        ],
    ];
    out!("{}", table::render(&["FIELD", "VALUE"], &rows));
    if !job.errors.is_empty() {
        out!("\nfirst errors:");
        let rows: Vec<Vec<String>> = job
            .errors
            .iter()
            .map(|e| {
                vec![
                    e.data_key_id.clone(),
                    e.key_id.clone(),
                    word(&e.reason),
                    e.message.clone(),
                ]
            })
            .collect();
        out!(
            "{}",
            table::render(&["DATA KEY", "KEY", "REASON", "MESSAGE"], &rows)
        );
    }
    if job.state == JobStateDto::Failed {
        out!("\nfix access to the key, then: cmk reencryption retry (or cancel)");
    }
    Ok(())
}

/// Polls until the job is no longer running, drawing a bar on stderr unless `quiet`. Returns
/// the last answer as sent (for `--json`) and as read.
async fn watch(
    client: &Client,
    interval: Duration,
    quiet: bool,
) -> Result<(Value, Option<JobDto>)> {
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
        let answer = client.get("/reencryption").await?;
        let status: ReencryptionStatusResponse = typed(&answer)?;
        let Some(job) = status.reencryption else {
            bar.finish_and_clear();
            return Ok((answer, None));
        };
        bar.set_length(job.total);
        bar.set_position(job.done);
        bar.set_message(if job.failed > 0 {
            format!("{} ({} failed)", word(&job.kind), job.failed)
        } else {
            word(&job.kind)
        });
        if job.state != JobStateDto::Running {
            bar.finish_and_clear();
            return Ok((answer, Some(job)));
        }
        tokio::time::sleep(interval).await;
    }
}

pub async fn reencryption(args: ReencryptionArgs) -> Result<ExitCode> {
    let client = Client::new(&args.remote)?;
    let json = args.remote.json;
    let (answer, job) = match args.command {
        ReencryptionCommand::Status {
            watch: false,
            interval: _,
        } => {
            let answer = client.get("/reencryption").await?;
            let status: ReencryptionStatusResponse = typed(&answer)?;
            (answer, status.reencryption)
        }
        ReencryptionCommand::Status {
            watch: true,
            interval,
        } => {
            let interval = Duration::from_secs_f64(interval.clamp(0.05, 60.0));
            let (answer, job) = watch(&client, interval, json).await?;
            if json {
                print_json(&answer)?;
            } else {
                print_job(job.as_ref())?;
            }
            let ok = job.is_none_or(|j| j.state == JobStateDto::Completed);
            return Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        ReencryptionCommand::Retry => {
            let answer = client.post("/reencryption/retry", None).await?;
            let started: JobResponse = typed(&answer)?;
            (answer, Some(started.reencryption))
        }
        ReencryptionCommand::Cancel => {
            let answer = client.post("/reencryption/cancel", None).await?;
            let cancelled: JobResponse = typed(&answer)?;
            (answer, Some(cancelled.reencryption))
        }
    };
    if json {
        print_json(&answer)?;
    } else {
        print_job(job.as_ref())?;
    }
    Ok(ExitCode::SUCCESS)
}
