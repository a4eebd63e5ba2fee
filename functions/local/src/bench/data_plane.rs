//! `cmk bench data-plane`: the calls services make on every read and write of their data. The
//! one Router is served in-process on a loopback port (embedded backends, the service-managed
//! key) and N keep-alive connections call it for a fixed time per figure: `decrypt` (the cache
//! warmed first), `encrypt`, and `data-keys` (create), with the data-key cache on and then off.
//! It prints requests/s, p50 and p99 latency and errors per figure. The load generator shares
//! the machine's cores with the server, so the figures are what the server serves while a
//! client of its own weight runs beside it.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine;
use clap::Args;
use cmk_core::cache::DataKeyCache;
use cmk_core::model::{EncryptionContext, OrgId, Role};
use cmk_core::service::ServiceConfig;
use cmk_embedded::QueueConfig;
use cmk_http::auth::{issue_token, Hs256Authenticator};
use cmk_http::AppState;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::json;

use crate::local::open_backends;

#[derive(Args, Debug)]
pub struct DataPlaneArgs {
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Seconds each figure is measured for.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Data keys the decrypt and encrypt calls spread over.
    #[arg(long, default_value_t = 1_000)]
    data_keys: usize,
}

/// One call of the data plane, as the load generator sends it.
struct Call {
    name: &'static str,
    /// (path, body) of request `i`.
    request: Arc<dyn Fn(usize) -> (String, String) + Send + Sync>,
}

/// What one figure measured.
struct Figure {
    requests: usize,
    errors: usize,
    elapsed: Duration,
    /// Latencies of the successful requests, in microseconds, sorted.
    micros: Vec<u32>,
}

impl Figure {
    fn percentile_ms(&self, p: usize) -> f64 {
        match self.micros.len() {
            0 => f64::NAN,
            n => f64::from(self.micros[(n * p / 100).min(n - 1)]) / 1000.0,
        }
    }
}

pub async fn data_plane(args: DataPlaneArgs) -> Result<ExitCode> {
    if args.connections == 0 || args.data_keys == 0 || args.seconds <= 0.0 {
        bail!("--connections, --data-keys and --seconds must be positive");
    }
    let mut failed = false;
    for cache_on in [true, false] {
        let cache = if cache_on {
            DataKeyCache::new(Duration::from_secs(300), args.data_keys.max(10_000))
        } else {
            DataKeyCache::disabled()
        };
        let dir = tempfile::tempdir().context("cannot create a temporary data directory")?;
        let b = open_backends(
            dir.path(),
            QueueConfig::default(),
            cache,
            ServiceConfig::default(),
        )?;
        let secret: [u8; 32] = rand::random();
        let app = cmk_http::router(AppState {
            cmk: b.cmk.clone(),
            auth: Arc::new(Hs256Authenticator::new(&secret)?),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let org = OrgId::parse("bench").map_err(|e| anyhow::anyhow!("{e}"))?;
        let token = issue_token(
            &secret,
            "bench",
            org.as_str(),
            Role::Service,
            Duration::from_secs(3600),
        );

        // Data keys, and one ciphertext under each, made through the service directly.
        let mut ctx = EncryptionContext::new();
        ctx.insert("table".into(), "orders".into());
        let mut ids = Vec::with_capacity(args.data_keys);
        let mut ciphertexts = Vec::with_capacity(args.data_keys);
        for i in 0..args.data_keys {
            let dk = b.cmk.create_data_key(&org).await?;
            ciphertexts.push(b.cmk.encrypt(&org, &dk.id, &i.to_be_bytes(), &ctx).await?);
            ids.push(dk.id);
        }
        for ct in &ciphertexts {
            b.cmk.decrypt(&org, ct, &ctx).await?; // warms the cache when it is on
        }

        let plaintext = base64::engine::general_purpose::STANDARD.encode([7u8; 64]);
        let decrypt_bodies: Vec<String> = ciphertexts
            .iter()
            .map(|ct| json!({"ciphertext": ct, "context": {"table": "orders"}}).to_string())
            .collect();
        let encrypt_body =
            json!({"plaintext": plaintext, "context": {"table": "orders"}}).to_string();
        let (o1, o2, o3) = (org.to_string(), org.to_string(), org.to_string());
        let calls = [
            Call {
                name: "decrypt",
                request: Arc::new(move |i| {
                    (
                        format!("/v1/orgs/{o1}/decrypt"),
                        decrypt_bodies[i % decrypt_bodies.len()].clone(),
                    )
                }),
            },
            Call {
                name: "encrypt",
                request: Arc::new(move |i| {
                    (
                        format!("/v1/orgs/{o2}/data-keys/{}/encrypt", ids[i % ids.len()]),
                        encrypt_body.clone(),
                    )
                }),
            },
            Call {
                name: "data-keys",
                request: Arc::new(move |_| (format!("/v1/orgs/{o3}/data-keys"), "{}".into())),
            },
        ];
        for call in calls {
            let figure = load(&addr, &token, &call, &args).await?;
            failed |= figure.errors > 0;
            println!(
                "data_plane cache={} call={} connections={} requests_per_s={:.0} p50_ms={:.2} p99_ms={:.2} errors={}",
                if cache_on { "on" } else { "off" },
                call.name,
                args.connections,
                figure.requests as f64 / figure.elapsed.as_secs_f64(),
                figure.percentile_ms(50),
                figure.percentile_ms(99),
                figure.errors,
            );
        }
        server.abort();
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Runs `call` from `args.connections` keep-alive connections for `args.seconds`. Each
/// connection is a bare HTTP/1 client (hyper), so the load generator costs the cores it shares
/// with the server as little as it can.
async fn load(addr: &str, token: &str, call: &Call, args: &DataPlaneArgs) -> Result<Figure> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for first in 0..args.connections {
        let (request, step) = (Arc::clone(&call.request), args.connections);
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let (host, authorization) = (addr.to_owned(), format!("Bearer {token}"));
        tasks.spawn(async move {
            let (mut micros, mut errors) = (Vec::new(), 0usize);
            let mut i = first;
            while Instant::now() < deadline {
                let (path, body) = request(i);
                i += step;
                let req = hyper::Request::post(path)
                    .header("host", &host)
                    .header("authorization", &authorization)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)));
                let Ok(req) = req else {
                    errors += 1;
                    continue;
                };
                let sent = Instant::now();
                let ok = match sender.send_request(req).await {
                    Ok(r) => {
                        let success = r.status().is_success();
                        success && r.into_body().collect().await.is_ok()
                    }
                    Err(_) => false,
                };
                if ok {
                    micros.push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
                } else {
                    errors += 1;
                    if sender.ready().await.is_err() {
                        break; // the connection is gone
                    }
                }
            }
            (micros, errors)
        });
    }
    let (mut micros, mut errors) = (Vec::new(), 0);
    while let Some(done) = tasks.join_next().await {
        let (m, e) = done?;
        micros.extend(m);
        errors += e;
    }
    let elapsed = started.elapsed();
    micros.sort_unstable();
    Ok(Figure {
        requests: micros.len(),
        errors,
        elapsed,
        micros,
    })
}
