//! `cmk bench …`: benchmarks that print figures, one module each. `common` holds what they
//! share; this file only parses the command and routes it.

mod aws;
mod common;
mod conflict_proxy;
mod conflicts;
mod data_plane;
mod embedded;
mod rate;
mod reference;
mod vault;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Re-encryption throughput: the engine beside the floor of the same work.
    Rewrap(RewrapArgs),
    /// A re-encryption against a KMS stand-in: the requests it sends per second against the
    /// key's rate limit, and how it adapts when KMS throttles.
    RateLimit(rate::RateLimitArgs),
    /// One job on DynamoDB (an emulator) with many workers, with and without DynamoDB's
    /// transaction conflicts: whether its commits collide, and that its counts stay exact.
    Conflicts(conflicts::ConflictsArgs),
    /// The calls services make on every read and write (decrypt, encrypt, create a data key)
    /// over HTTP from many keep-alive connections: requests/s and p50/p99 latency, with the
    /// data-key cache on and off.
    DataPlane(data_plane::DataPlaneArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchBackend {
    Embedded,
    Aws,
}

#[derive(Args, Debug)]
pub struct RewrapArgs {
    /// `aws` runs against DynamoDB, SQS, KMS and STS at --aws-endpoint-url (an emulator).
    #[arg(long, value_enum, default_value = "embedded")]
    backend: BenchBackend,
    /// The AWS endpoint (with --backend aws).
    #[arg(long = "aws-endpoint-url", env = "AWS_ENDPOINT_URL")]
    endpoint_url: Option<String>,
    /// `vault-transit` re-encrypts to, between and from transit keys of an OpenBao dev server
    /// started from `CMK_BAO` (embedded backend only).
    #[arg(long, value_enum, default_value = "local")]
    provider: BenchProvider,
    /// How many data keys to re-encrypt.
    #[arg(long, default_value_t = 100_000)]
    data_keys: u64,
    /// Data keys per batch (the same for the floor and the job).
    #[arg(long, default_value_t = cmk_core::defaults::LOCAL_BATCH_SIZE)]
    batch_size: usize,
    /// Messages the worker handles at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// The reference floor to compare with (a script or binary taking the number of data
    /// keys); by default `shared/bench/floor/run` beside the repository.
    #[arg(long, value_name = "BIN", conflicts_with = "no_reference_floor")]
    reference_floor: Option<std::path::PathBuf>,
    /// Do not measure the reference floor (the output says it was skipped).
    #[arg(long)]
    no_reference_floor: bool,
}

/// The key provider of `bench rewrap`'s target keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchProvider {
    Local,
    #[value(name = "vault-transit")]
    VaultTransit,
}

pub async fn run(cmd: BenchCommand) -> Result<ExitCode> {
    match cmd {
        BenchCommand::Rewrap(args) if args.provider == BenchProvider::VaultTransit => {
            if args.backend == BenchBackend::Aws {
                anyhow::bail!("--provider vault-transit runs on the embedded backend only");
            }
            vault::rewrap(args.data_keys, args.batch_size, args.concurrency).await
        }
        BenchCommand::Rewrap(args) if args.backend == BenchBackend::Aws => {
            aws::rewrap(args.data_keys, args.endpoint_url).await
        }
        BenchCommand::Rewrap(args) => {
            let reference = match (args.no_reference_floor, args.reference_floor) {
                (true, _) => reference::Reference::Skip,
                (false, Some(path)) => reference::Reference::At(path),
                (false, None) => reference::Reference::Find,
            };
            embedded::rewrap(embedded::Args {
                data_keys: args.data_keys,
                batch_size: args.batch_size,
                concurrency: args.concurrency,
                reference,
            })
            .await
        }
        BenchCommand::RateLimit(args) => rate::rate_limit(args).await,
        BenchCommand::Conflicts(args) => conflicts::conflicts(args).await,
        BenchCommand::DataPlane(args) => data_plane::data_plane(args).await,
    }
}
