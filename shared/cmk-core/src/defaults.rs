//! The defaults of settings that more than one runtime reads, in one place: `cmk serve`'s flags
//! (clap) and the Lambda functions' environment (`cmk-lambda`'s configuration, `cmk-aws`'s
//! settings) both take them from here. Where the local process and the functions on AWS differ
//! on purpose, both values are here, with the reason.

/// Data keys per planned batch message on AWS (and the engine's default).
pub const BATCH_SIZE: usize = 500;

/// Data keys per planned batch message locally, where one SQLite transaction commits a batch:
/// a bigger batch spreads the fixed cost of a message (receive, job read, commit, ack) over
/// more data keys. Measured with `cmk bench rewrap --data-keys 1000000`: 166k data keys/s at
/// 500, 186k at 2,000. On AWS a batch's commits are DynamoDB transactions of 100 items and its
/// provider calls go over the network, so a bigger batch buys nothing there.
pub const LOCAL_BATCH_SIZE: usize = 2_000;

/// Seconds an unwrapped data key stays cached in memory.
pub const DATA_KEY_CACHE_TTL_SECS: u64 = 300;

/// Most unwrapped data keys cached in memory per process.
pub const DATA_KEY_CACHE_SIZE: usize = 10_000;

/// Seconds a customer key's failure (a refused `AssumeRole`) is remembered, and the shortest
/// interval between two health writes that failing calls cause for one key.
pub const FAILURE_MEMORY_SECS: u64 = 10;

/// The principal shown in `keys/setup` trust policies when none is configured: a placeholder
/// for local runs. On AWS the template sets the three function roles that reach customer keys.
pub const SERVICE_PRINCIPAL: &str = "arn:aws:iam::000000000000:role/cmk-service";

/// Re-encryption messages handled at once. Locally one process handles them all; on AWS one
/// invocation handles one SQS batch (of up to 10 messages), and instances add up.
pub const LOCAL_WORKER_CONCURRENCY: usize = 4;
pub const LAMBDA_WORKER_CONCURRENCY: usize = 10;

/// Seconds without a plan or a committed batch before a retry or the sweep re-plans a running
/// job. It must outlast the queue's visibility timeout, or a batch still in flight would be
/// planned twice: locally the timeout is [`LOCAL_VISIBILITY_TIMEOUT_SECS`] (30 s), on AWS six
/// times the worker Lambda's 60 s timeout (360 s).
pub const LOCAL_STALLED_AFTER_SECS: u64 = 60;
pub const LAMBDA_STALLED_AFTER_SECS: u64 = 900;

/// Seconds a received batch stays invisible to other local workers before it is redelivered.
pub const LOCAL_VISIBILITY_TIMEOUT_SECS: u64 = 30;

/// The most worker instances at once on AWS (the template's `WorkerMaxConcurrency`): each takes
/// this share of a key's re-encryption rate limit. Locally the one worker takes all of it.
pub const WORKER_MAX_CONCURRENCY: u32 = 10;

/// Seconds between two health checks of one customer key (`CMK_HEALTH_CHECK_INTERVAL`): how
/// long a revoked key that nothing uses can go unnoticed.
pub const HEALTH_CHECK_INTERVAL_SECS: u64 = 900;

/// Most keys one health-check run checks. A run comes every
/// [`LOCAL_HEALTH_CHECK_EVERY_SECS`] locally and with the scheduled sweep on AWS (every 5
/// minutes), so with the default interval up to 22,500 keys locally and 4,500 on AWS are
/// checked on time; more fall behind the interval (each still checked, oldest first). At 8
/// checks in flight and about 100 ms per check on AWS, a full run takes about 20 s.
pub const HEALTH_CHECKS_PER_RUN: usize = 1_500;

/// Seconds between two health-check runs of the local worker.
pub const LOCAL_HEALTH_CHECK_EVERY_SECS: u64 = 60;
