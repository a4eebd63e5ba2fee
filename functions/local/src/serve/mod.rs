//! `cmk serve`: the API and the re-encryption worker in one process, on the embedded backends
//! (default) or on AWS (DynamoDB, SQS, KMS; the worker polls SQS with the worker Lambda's code).
//! `aws` resolves the AWS resources; this file assembles either backend and runs them.

mod aws;

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use cmk_aws::backend::AwsSettings;
use cmk_core::cache::DataKeyCache;
use cmk_core::defaults;
use cmk_core::engine::{EngineConfig, RewrapEngine};
use cmk_core::health::HealthCheckConfig;
use cmk_core::service::ServiceConfig;
use cmk_core::worker::{run_health_checks, run_worker, WorkerConfig};
use cmk_embedded::QueueConfig;
use cmk_http::auth::Hs256Authenticator;
use cmk_http::AppState;
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

use crate::local::{open_backends, token_secret, webhook_secret};
use crate::webhook::{Webhook, WebhookConfig};
use cmk_core::oidc::OidcIssuer;
use cmk_embedded::LocalOidcKeys;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// SQLite and local key files in the data directory.
    Embedded,
    /// DynamoDB, SQS and AWS KMS (customer keys through STS).
    Aws,
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Where state lives.
    #[arg(long, env = "CMK_BACKEND", value_enum, default_value = "embedded")]
    pub backend: Backend,
    #[command(flatten)]
    pub aws: aws::AwsArgs,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "CMK_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Seconds an unwrapped data key stays cached in memory (0 disables the cache).
    #[arg(long, env = "CMK_DATA_KEY_CACHE_TTL", default_value_t = defaults::DATA_KEY_CACHE_TTL_SECS)]
    pub data_key_cache_ttl: u64,
    /// Most unwrapped data keys kept in memory.
    #[arg(long, env = "CMK_DATA_KEY_CACHE_SIZE", default_value_t = defaults::DATA_KEY_CACHE_SIZE)]
    pub data_key_cache_size: usize,
    /// Seconds a customer key's failure is remembered: a failed AssumeRole is answered from
    /// memory meanwhile, and failing calls write the key's health at most once per interval.
    #[arg(long, env = "CMK_FAILURE_MEMORY", default_value_t = defaults::FAILURE_MEMORY_SECS)]
    pub failure_memory: u64,
    /// Re-encryption messages handled at once.
    #[arg(long, env = "CMK_WORKER_CONCURRENCY", default_value_t = defaults::LOCAL_WORKER_CONCURRENCY)]
    pub worker_concurrency: usize,
    /// Data keys per re-encryption batch.
    #[arg(long, env = "CMK_BATCH_SIZE", default_value_t = defaults::LOCAL_BATCH_SIZE)]
    pub batch_size: usize,
    /// Seconds a received batch stays invisible before it is delivered again.
    #[arg(long, env = "CMK_VISIBILITY_TIMEOUT", default_value_t = defaults::LOCAL_VISIBILITY_TIMEOUT_SECS)]
    pub visibility_timeout: u64,
    /// Seconds without progress after which a running job is planned again.
    #[arg(long, env = "CMK_STALLED_AFTER", default_value_t = defaults::LOCAL_STALLED_AFTER_SECS)]
    pub stalled_after: u64,
    /// The principal customers trust in their role's trust policy (shown by keys/setup).
    #[arg(
        long,
        env = "CMK_SERVICE_PRINCIPAL",
        default_value = defaults::SERVICE_PRINCIPAL
    )]
    pub service_principal: String,
    /// Allows aws-kms keys whose role is in the service's own AWS account (single-account
    /// test setups only; customers' roles belong in their own accounts).
    #[arg(long, env = "CMK_ALLOW_SAME_ACCOUNT_ROLES")]
    pub allow_same_account_roles: bool,
    /// The org whose admin gets the ready login link printed at start.
    #[arg(long, env = "CMK_ADMIN_ORG", default_value = "acme")]
    pub admin_org: String,
    /// Seconds between two health checks of one customer key: a real round trip through its
    /// provider, so a revoked key shows even when nothing uses it (0 turns the checks off).
    #[arg(long, env = "CMK_HEALTH_CHECK_INTERVAL", default_value_t = defaults::HEALTH_CHECK_INTERVAL_SECS)]
    pub health_check_interval: u64,
    /// Seconds between two runs of the health checks (each checks the keys that are due).
    #[arg(long, env = "CMK_HEALTH_CHECK_EVERY", default_value_t = defaults::LOCAL_HEALTH_CHECK_EVERY_SECS)]
    pub health_check_every: u64,
    /// POSTs each event (a key's health changed, a job started or ended) to this URL, signed
    /// with `webhook.secret` in the data directory (see "Operating it" in the README). https,
    /// or http to a loopback address.
    #[arg(long, env = "CMK_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// The OIDC issuer URL that customers' roles trust (its discovery document is served at
    /// `/oidc/.well-known/openid-configuration`). Default: `http://ADDR/oidc` with the address
    /// listened on.
    #[arg(long, env = "CMK_OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,
    /// Serves `GET /metrics` (Prometheus text, unauthenticated) on a non-loopback address too.
    /// On a loopback address it is always served.
    #[arg(long, env = "CMK_METRICS")]
    pub metrics: bool,
}

fn init_tracing() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,tower_http=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Resolves when SIGINT or SIGTERM arrives.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

pub async fn run(data_dir: &Path, args: ServeArgs) -> Result<ExitCode> {
    init_tracing();
    // Before anything records: counts made with no recorder installed are lost.
    let metrics = if args.metrics || args.addr.ip().is_loopback() {
        Some(cmk_http::metrics::prometheus().map_err(anyhow::Error::msg)?)
    } else {
        None
    };
    // Fail closed before anything starts: no secret, no service.
    let secret = token_secret(data_dir)?;
    let auth = Arc::new(Hs256Authenticator::new(&secret).context("the token secret")?);
    let admin_org = cmk_core::model::OrgId::parse(&args.admin_org)
        .map_err(|e| anyhow::anyhow!("--admin-org: {e}"))?;
    let cache = DataKeyCache::new(
        Duration::from_secs(args.data_key_cache_ttl),
        args.data_key_cache_size,
    );
    // Listening first: the OIDC issuer's default URL names the address.
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    let addr = listener.local_addr()?;
    let issuer = args
        .oidc_issuer
        .clone()
        .unwrap_or_else(|| format!("http://{addr}{}", cmk_http::oidc::ISSUER_PATH));
    let oidc = OidcIssuer::new(
        &issuer,
        Arc::new(
            LocalOidcKeys::open(data_dir)
                .with_context(|| format!("the OIDC signing keys in {}", data_dir.display()))?,
        ),
    );
    let (cmk, state_at) = match args.backend {
        Backend::Embedded => {
            let backends = open_backends(
                data_dir,
                QueueConfig {
                    visibility_timeout: Duration::from_secs(args.visibility_timeout.max(1)),
                    ..QueueConfig::default()
                },
                cache,
                ServiceConfig {
                    service_principal: args.service_principal.clone(),
                    allow_local_keys: true,
                    allow_aws_keys: false,
                    allow_vault_keys: true,
                    health_write_interval: Duration::from_secs(args.failure_memory),
                    stalled_after: Duration::from_secs(args.stalled_after.max(1)),
                    oidc_issuer: Some(issuer.clone()),
                    ..ServiceConfig::default()
                },
            )?;
            (backends.cmk, format!("data in {}", data_dir.display()))
        }
        Backend::Aws => {
            let resources = aws::resources(&args.aws).await?;
            let settings = AwsSettings {
                table: args.aws.table.clone(),
                queue_url: resources.queue_url,
                service_key_id: resources.service_key_id,
                service_principal: args.service_principal.clone(),
                endpoint_url: args.aws.endpoint_url.clone(),
                data_key_cache_ttl: Duration::from_secs(args.data_key_cache_ttl),
                data_key_cache_size: args.data_key_cache_size,
                failure_memory: Duration::from_secs(args.failure_memory),
                stalled_after: Duration::from_secs(args.stalled_after.max(1)),
                service_account_id: Some(resources.service_account_id),
                allow_same_account_roles: args.allow_same_account_roles,
                event_bus: args.aws.event_bus.clone(),
                oidc_issuer: Some(issuer.clone()),
                oidc_signing_keys: Vec::new(),
            };
            let backend = cmk_aws::backend::build(&resources.config, &settings);
            backend.keys.use_web_identity(oidc.clone());
            let at = format!("table {}, queue {}", args.aws.table, backend.queue.url());
            (backend.cmk, at)
        }
    };
    let webhook = match &args.webhook_url {
        Some(_) if args.aws.event_bus.is_some() => {
            anyhow::bail!("--webhook-url and --event-bus: events go to one of them; choose one")
        }
        Some(url) => Some(Webhook::start(
            url,
            webhook_secret(data_dir)?,
            WebhookConfig::default(),
        )?),
        None => None,
    };
    let cmk = match &webhook {
        Some(w) => cmk.with_events(Arc::clone(w) as Arc<dyn cmk_core::ports::EventPublisher>),
        None => cmk,
    };
    let engine = Arc::new(RewrapEngine::new(
        cmk.clone(),
        EngineConfig {
            batch_size: args.batch_size.clamp(1, 10_000),
            // A delivery ends well inside the queue's visibility timeout.
            message_budget: Duration::from_secs(args.visibility_timeout.max(1) * 2 / 3).clamp(
                Duration::from_secs(1),
                EngineConfig::default().message_budget,
            ),
            ..EngineConfig::default()
        },
    ));
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let worker = tokio::spawn(run_worker(
        engine,
        WorkerConfig {
            concurrency: args.worker_concurrency.max(1),
            stalled_after: Duration::from_secs(args.stalled_after.max(1)),
            ..WorkerConfig::default()
        },
        stopped(stop_rx.clone()),
    ));
    let health_checks = (args.health_check_interval > 0).then(|| {
        tokio::spawn(run_health_checks(
            cmk.clone(),
            HealthCheckConfig {
                interval: Duration::from_secs(args.health_check_interval),
                ..HealthCheckConfig::default()
            },
            Duration::from_secs(args.health_check_every.max(1)),
            stopped(stop_rx.clone()),
        ))
    });

    let mut app = cmk_http::router(AppState {
        cmk: cmk.clone(),
        auth,
    });
    if let Some(handle) = metrics.clone() {
        app = app.merge(cmk_http::metrics::metrics_route(handle));
    }
    let app = app.merge(cmk_http::oidc::routes(oidc.clone()));
    let dir = data_dir.display();
    // Name this very binary, so the printed commands work without `cmk` on the PATH.
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "cmk".to_owned());
    println!("cmk listening on http://{addr} ({state_at})");
    println!("  an admin token:  {exe} token --data-dir {dir} --org acme --role admin");
    println!("  a service token: {exe} token --data-dir {dir} --org acme --role service");
    println!(
        "  try: curl -H \"Authorization: Bearer $({exe} token --data-dir {dir} --org acme)\" http://{addr}/v1/orgs/acme/keys"
    );
    println!("  API description: http://{addr}/openapi.json");
    println!("  OIDC issuer: {issuer}");
    if metrics.is_some() {
        println!("  metrics (Prometheus): http://{addr}/metrics");
    }
    if let Some(url) = &args.webhook_url {
        println!(
            "  events: POST to {url}, signed with {}",
            data_dir.join(crate::local::WEBHOOK_SECRET_FILE).display()
        );
    }
    // A ready login link for the admin page: the token rides in the fragment, never sent.
    let token = cmk_http::auth::issue_token(
        &secret,
        "local-admin",
        admin_org.as_str(),
        cmk_http::auth::Role::Admin,
        Duration::from_secs(12 * 3600),
    );
    println!("  admin page for org {admin_org} (the link is valid for 12 h):");
    println!("open http://{addr}/#org={admin_org}&token={token}");

    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing requests and in-flight batches");
        let _ = stop_tx.send(true);
    });
    server.await.context("the server failed")?;
    // The worker finishes its in-flight batches; anything unacknowledged is redelivered later.
    if tokio::time::timeout(Duration::from_secs(30), worker)
        .await
        .is_err()
    {
        tracing::warn!("the worker did not stop in 30 s; unfinished batches will be redelivered");
    }
    if let Some(health_checks) = health_checks {
        let _ = health_checks.await;
    }
    if let Some(webhook) = webhook {
        let lost = webhook.drain(Duration::from_secs(10)).await;
        if lost > 0 {
            tracing::warn!(lost, "events not delivered to the webhook before the stop");
        }
    }
    println!("cmk stopped");
    Ok(ExitCode::SUCCESS)
}
