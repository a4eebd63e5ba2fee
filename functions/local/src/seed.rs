//! `cmk seed` and `cmk verify`: fill an org with data keys and sample ciphertexts, then prove
//! that every sample still decrypts to the same bytes (after any number of re-encryptions).

use std::collections::VecDeque;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, Result};
use clap::Args;
use cmk_core::cache::DataKeyCache;
use cmk_core::crypto::{self, DataKey};
use cmk_core::error::StoreError;
use cmk_core::model::{data_key_context, DataKeyId, DataKeyRecord, EncryptionContext, OrgId};
use cmk_core::ports::{DataKeyStore, KeyProvider, OrgStore};
use cmk_core::service::{kek_of, ServiceConfig};
use cmk_embedded::{QueueConfig, Sample, SampleStore};

use indicatif::{ProgressBar, ProgressStyle};
use rand::RngCore;

use crate::local::{open_backends, Backends};

#[derive(Args, Debug)]
pub struct SeedArgs {
    #[arg(long)]
    org: String,
    /// How many data keys to create.
    #[arg(long)]
    data_keys: u64,
    /// Data keys per transaction.
    #[arg(long, default_value_t = 5_000)]
    chunk: usize,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[arg(long)]
    org: String,
}

/// The context under which sample data is encrypted (what a caller would pass).
fn sample_context() -> EncryptionContext {
    let mut ctx = EncryptionContext::new();
    ctx.insert("purpose".into(), "cmk-seed-sample".into());
    ctx
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(&format!(
            "{what} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} ({{per_sec}}, eta {{eta}})"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb
}

fn parse_org(s: &str) -> Result<OrgId> {
    OrgId::parse(s).map_err(|e| anyhow!("--org: {e}"))
}

fn backends(data_dir: &Path) -> Result<Backends> {
    // No cache: every decrypt of `verify` goes through the data key's current wrapping key.
    open_backends(
        data_dir,
        QueueConfig::default(),
        DataKeyCache::disabled(),
        ServiceConfig::default(),
    )
}

/// One chunk of generated data keys and their samples.
fn generate(
    org: &OrgId,
    kek: &cmk_core::ports::Kek,
    keys: &cmk_embedded::LocalKeyProvider,
    n: usize,
) -> Result<(Vec<DataKeyRecord>, Vec<Sample>)> {
    let ctx = sample_context();
    let mut records = Vec::with_capacity(n);
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let id = DataKeyId::generate();
        let key = DataKey::generate();
        let wrapped =
            futures::executor::block_on(keys.wrap(kek, &data_key_context(org, &id), &key))
                .map_err(|e| anyhow!("cannot wrap under key {}: {e}", kek.key_id))?;
        let mut plaintext = vec![0u8; 24];
        rand::thread_rng().fill_bytes(&mut plaintext);
        samples.push(Sample {
            data_key_id: id.clone(),
            ciphertext: crypto::encrypt(org, &id, &key, &ctx, &plaintext),
            plaintext,
        });
        records.push(DataKeyRecord {
            id,
            key_id: kek.key_id.clone(),
            wrapped: wrapped.blob,
            version: 0,
            created_at: cmk_core::model::now(),
            row_hint: None,
        });
    }
    Ok((records, samples))
}

pub async fn seed(data_dir: &Path, args: SeedArgs) -> Result<ExitCode> {
    let org = parse_org(&args.org)?;
    let b = backends(data_dir)?;
    let samples = SampleStore::open(Arc::clone(b.store.database()))?;
    let chunk = args.chunk.clamp(1, 50_000);
    let pb = bar(args.data_keys, "seeding");
    let mut left = args.data_keys;
    let started = std::time::Instant::now();

    // Generation (CPU) runs on a blocking thread one chunk ahead of the writes (SQLite).
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<(Vec<DataKeyRecord>, Vec<Sample>)>>(2);
    let snapshot = b.store.load_org(&org).await?;
    let mut kek = kek_of(&snapshot, &snapshot.default_key_id)?;
    let spawn_generator = |kek: cmk_core::ports::Kek, count: u64| {
        let (org, keys, tx) = (org.clone(), Arc::clone(&b.keys), tx.clone());
        tokio::task::spawn_blocking(move || {
            let mut left = count;
            while left > 0 {
                let n = left.min(chunk as u64) as usize;
                if tx.blocking_send(generate(&org, &kek, &keys, n)).is_err() {
                    return;
                }
                left -= n as u64;
            }
        })
    };
    let mut generator = spawn_generator(kek.clone(), left);
    while left > 0 {
        let Some(next) = rx.recv().await else {
            break;
        };
        let (records, chunk_samples) = next?;
        match b.store.insert_data_keys(&org, &records).await {
            Ok(()) => {
                samples.insert(&org, chunk_samples).await?;
                left -= records.len() as u64;
                pb.inc(records.len() as u64);
            }
            Err(StoreError::Conflict(_)) => {
                // The default key changed while seeding: continue under the new default.
                generator.abort();
                while rx.try_recv().is_ok() {}
                let s = b.store.load_org(&org).await?;
                kek = kek_of(&s, &s.default_key_id)?;
                generator = spawn_generator(kek.clone(), left);
            }
            Err(e) => return Err(e.into()),
        }
    }
    drop(tx);
    pb.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "seeded {} data keys for org {org} under key {} in {secs:.1} s ({:.0} keys/s)",
        args.data_keys,
        kek.key_id,
        args.data_keys as f64 / secs.max(1e-9)
    );
    Ok(ExitCode::SUCCESS)
}

/// Pages of samples `cmk verify` checks at once.
const CHECKS_IN_FLIGHT: usize = 3;

/// A sample, and what is wrong with it if anything.
type Checked = (Sample, Option<String>);

pub async fn verify(data_dir: &Path, args: VerifyArgs) -> Result<ExitCode> {
    let org = parse_org(&args.org)?;
    let b = backends(data_dir)?;
    let samples = SampleStore::open(Arc::clone(b.store.database()))?;
    let total = samples.count(&org).await?;
    let pb = bar(total, "verifying");
    let ctx = sample_context();
    let mut after: Option<DataKeyId> = None;
    let (mut checked, mut failed) = (0u64, 0u64);
    let mut reported = 0;
    // Pages are checked while the next ones are read, a few at once, so that the reads and the
    // checks use both cores; results are taken in page order.
    let mut checking: VecDeque<tokio::task::JoinHandle<Result<Vec<Checked>>>> = VecDeque::new();
    let mut take = |checked_page: Vec<Checked>| {
        for (s, problem) in checked_page {
            checked += 1;
            if let Some(problem) = problem {
                failed += 1;
                if reported < 20 {
                    reported += 1;
                    pb.suspend(|| println!("FAILED data key {}: {problem}", s.data_key_id));
                }
            }
        }
        pb.set_position(checked);
    };
    loop {
        let page = samples.page(&org, after.as_ref(), 2_000).await?;
        let Some(last) = page.last() else {
            break;
        };
        after = Some(last.data_key_id.clone());
        let (cmk, org, ctx) = (b.cmk.clone(), org.clone(), ctx.clone());
        checking.push_back(tokio::spawn(async move {
            // One store read for the page's data keys; each still goes through its wrapping key.
            let items: Vec<(&str, &EncryptionContext)> =
                page.iter().map(|s| (s.ciphertext.as_str(), &ctx)).collect();
            let decrypted = cmk.decrypt_many(&org, &items).await?;
            Ok(page
                .iter()
                .cloned()
                .zip(decrypted)
                .map(|(s, r)| {
                    let problem = match r {
                        Ok(pt) if pt.as_slice() == s.plaintext.as_slice() => None,
                        Ok(_) => Some("decrypted to different bytes".to_owned()),
                        Err(e) => Some(e.to_string()),
                    };
                    (s, problem)
                })
                .collect())
        }));
        if checking.len() >= CHECKS_IN_FLIGHT {
            if let Some(task) = checking.pop_front() {
                take(task.await??);
            }
        }
    }
    for task in checking {
        take(task.await??);
    }
    pb.finish_and_clear();
    println!(
        "verified {checked} samples of org {org}: {} ok, {failed} failed",
        checked - failed
    );
    if failed > 0 {
        return Ok(ExitCode::FAILURE);
    }
    if checked == 0 {
        println!("(no samples: run `cmk seed --org {org} --data-keys N` first)");
    }
    Ok(ExitCode::SUCCESS)
}
