//! `cmk`: the customer-managed-keys service in one local process on embedded backends, and the
//! tools around it (tokens, seeding, verification, revocation drills, benchmarks).

mod bench;
mod local;
mod seed;
mod serve;

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
    Serve(serve::ServeArgs),
    /// Print a bearer token for an org and role.
    Token(local::TokenArgs),
    /// Fill an org with data keys and a sample ciphertext for each.
    Seed(seed::SeedArgs),
    /// Decrypt every sample of an org and report any that fails.
    Verify(seed::VerifyArgs),
    /// Simulate a customer revoking or restoring access to a `local` key.
    #[command(subcommand)]
    LocalKey(local::LocalKeyCommand),
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
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
            Command::Serve(args) => serve::run(&cli.data_dir, args).await,
            Command::Token(args) => local::token(&cli.data_dir, args),
            Command::Seed(args) => seed::seed(&cli.data_dir, args).await,
            Command::Verify(args) => seed::verify(&cli.data_dir, args).await,
            Command::LocalKey(cmd) => local::local_key(&cli.data_dir, cmd),
            Command::Bench(cmd) => bench::run(cmd).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
