//! `cmk`: the customer-managed-keys service in one local process on embedded backends, the
//! tools around it (tokens, seeding, verification, revocation drills, benchmarks), and the admin
//! CLI that drives a running service over HTTP (`keys`, `reencryption`, `audit`).

/// Prints a line to stdout like `println!`, but returns the write's error instead of panicking,
/// so that a closed stdout (`cmk keys list --json | head -1`) ends the command quietly.
macro_rules! out {
    () => {
        $crate::write_stdout(format_args!(""))?
    };
    ($($arg:tt)*) => {
        $crate::write_stdout(format_args!($($arg)*))?
    };
}

mod bench;
mod cli;
mod local;
mod seed;
mod serve;
mod webhook;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "cmk", version, about = "Customer managed keys, run locally")]
struct Cli {
    /// Where the database, keys and token secret live.
    #[arg(long, global = true, env = "CMK_DATA_DIR", default_value = ".cmk")]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the API and the re-encryption worker.
    Serve(Box<serve::ServeArgs>),
    /// Print a bearer token for an org and role.
    Token(local::TokenArgs),
    /// Fill an org with data keys and a sample ciphertext for each.
    Seed(seed::SeedArgs),
    /// Decrypt every sample of an org and report any that fails.
    Verify(seed::VerifyArgs),
    /// Simulate a customer revoking or restoring access to a `local` key.
    #[command(subcommand)]
    LocalKey(local::LocalKeyCommand),
    /// The OIDC issuer's signing keys in the data directory.
    #[command(subcommand)]
    Oidc(local::OidcCommand),
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Admin: list, add, set as default, disable and check keys of a running service.
    Keys(cli::KeysArgs),
    /// Admin: the re-encryption job of a running service (status, watch, retry, cancel).
    Reencryption(cli::ReencryptionArgs),
    /// Admin: the audit trail of a running service, newest first.
    Audit(cli::AuditArgs),
}

/// Stdout's reader went away (a pipe into `head`): only a write to stdout reports this, so a
/// broken pipe anywhere else (a request to the service) stays an error.
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed")]
struct StdoutClosed;

/// One line to stdout; see [`out!`].
fn write_stdout(args: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_fmt(args)
        .and_then(|()| stdout.write_all(b"\n"))
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => anyhow::Error::new(StdoutClosed),
            _ => anyhow::Error::new(e).context("cannot write to stdout"),
        })
}

/// Whether `e` is [`StdoutClosed`].
fn is_closed_stdout(e: &anyhow::Error) -> bool {
    e.downcast_ref::<StdoutClosed>().is_some()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(&cli.data_dir, *args).await,
            Command::Token(args) => local::token(&cli.data_dir, args),
            Command::Seed(args) => seed::seed(&cli.data_dir, args).await,
            Command::Verify(args) => seed::verify(&cli.data_dir, args).await,
            Command::LocalKey(cmd) => local::local_key(&cli.data_dir, cmd),
            Command::Oidc(cmd) => local::oidc(&cli.data_dir, cmd),
            Command::Bench(cmd) => bench::run(cmd).await,
            Command::Keys(args) => cli::keys(args).await,
            Command::Reencryption(args) => cli::reencryption(args).await,
            Command::Audit(args) => cli::audit(args).await,
        }
    });
    match result {
        Ok(code) => code,
        // The reader has what it wanted: end quietly, as Unix tools do.
        Err(e) if is_closed_stdout(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
