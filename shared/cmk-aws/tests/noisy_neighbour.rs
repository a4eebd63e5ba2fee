//! No org can slow another: with org A's customer role refusing the service (its trust policy
//! no longer names org A's external id) and 32 callers looping on org A's decrypts, org B's
//! decrypts through its cached session keep their latency (p99 within 2x of its p99 alone),
//! and org A costs one `AssumeRole` per failure-memory interval, not one per call, while an
//! admin's explicit check of its key always asks STS again. On an emulator of its own with IAM
//! enforced (trust policies are checked only then); needs
//! `CMK_MOTO_SERVER`, and skips without it unless `CMK_REQUIRE_AWS_TESTS` is set.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "integration/common.rs"]
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cmk_aws::emulator::Emulator;
use cmk_aws::{KmsKeyProvider, KmsSettings};
use cmk_aws_testkit::customer_role;
use cmk_core::crypto::DataKey;
use cmk_core::error::KeyErrorKind;
use cmk_core::model::{EncryptionContext, KeyId, KeySpec, OrgId};
use cmk_core::ports::{Kek, KeyProvider};

fn p99(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[(samples.len() * 99).div_ceil(100) - 1]
}

async fn timed_decrypts(
    provider: &KmsKeyProvider,
    kek: &Kek,
    ctx: &EncryptionContext,
    blob: &[u8],
    n: usize,
) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        provider
            .unwrap(kek, ctx, blob)
            .await
            .expect("org B decrypts");
        out.push(t.elapsed());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_org_costs_one_sts_call_per_interval_and_never_slows_another_org() {
    let Some(emu) = Emulator::start().await else {
        return;
    };
    let root = emu.root_config().await;
    let iam = aws_sdk_iam::Client::new(&root);
    let service = common::service_identity(&emu).await;
    let kms = aws_sdk_kms::Client::new(&root);
    let mut key_arns = Vec::new();
    for _ in 0..2 {
        key_arns.push(
            kms.create_key()
                .send()
                .await
                .unwrap()
                .key_metadata
                .unwrap()
                .arn
                .unwrap(),
        );
    }
    // Org A's customer changed the trust policy: org A's external id is no longer trusted.
    let role_a = customer_role(&iam, "customer-a", "cmk-someone-else").await;
    let role_b = customer_role(&iam, "customer-b", "cmk-ext-b").await;
    emu.enforce_iam(true).await;

    let failure_memory = Duration::from_secs(10);
    let provider = Arc::new(KmsKeyProvider::new(
        &service,
        KmsSettings {
            failure_memory,
            ..KmsSettings::new(key_arns[0].clone())
        },
    ));
    let kek = |org: &str, role: &str, key: &str, external_id: &str| Kek {
        org: OrgId::from_trusted(org),
        key_id: KeyId::generate(),
        spec: KeySpec::AwsKms {
            role_arn: role.to_owned(),
            key_arn: key.to_owned(),
            resolved_key_arn: None,
            trust: cmk_core::model::TrustMode::ExternalId,
        },
        external_id: Some(external_id.to_owned()),
    };
    let kek_a = kek("org-a", &role_a, &key_arns[0], "cmk-ext-a");
    let kek_b = kek("org-b", &role_b, &key_arns[1], "cmk-ext-b");
    let mut ctx = EncryptionContext::new();
    ctx.insert("org".into(), "org-b".into());
    // Org B's session is created and cached.
    let wrapped = provider
        .wrap(&kek_b, &ctx, &DataKey::generate())
        .await
        .expect("org B wraps")
        .blob;
    timed_decrypts(&provider, &kek_b, &ctx, &wrapped, 50).await;
    let alone = p99(timed_decrypts(&provider, &kek_b, &ctx, &wrapped, 200).await);
    let sts_before = provider.counters().sts_calls.load(Ordering::Relaxed);

    // 32 callers loop on org A's decrypts, each failing at AssumeRole.
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let callers: Vec<_> = (0..32)
        .map(|_| {
            let (provider, kek_a, stop) = (provider.clone(), kek_a.clone(), stop.clone());
            tokio::spawn(async move {
                let mut ctx = EncryptionContext::new();
                ctx.insert("org".into(), "org-a".into());
                let mut calls = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let e = provider
                        .unwrap(&kek_a, &ctx, b"any wrapped bytes")
                        .await
                        .expect_err("org A's role refuses the service");
                    assert_eq!(e.kind, KeyErrorKind::AccessDenied, "{e}");
                    calls += 1;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                calls
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let loaded = p99(timed_decrypts(&provider, &kek_b, &ctx, &wrapped, 200).await);
    stop.store(true, Ordering::Relaxed);
    let mut org_a_calls = 0;
    for c in callers {
        org_a_calls += c.await.expect("caller");
    }
    let elapsed = started.elapsed();
    let sts_org_a = provider.counters().sts_calls.load(Ordering::Relaxed) - sts_before;
    let intervals = elapsed.as_secs_f64() / failure_memory.as_secs_f64();
    println!(
        "org B p99 alone {alone:?}, under org A's load {loaded:?} ({:.2}x); org A: {org_a_calls} failed calls, {sts_org_a} STS calls in {elapsed:?}",
        loaded.as_secs_f64() / alone.as_secs_f64()
    );
    assert!(
        org_a_calls > 1_000,
        "org A's callers kept calling: {org_a_calls}"
    );
    assert!(
        sts_org_a as f64 <= intervals.ceil() + 1.0,
        "org A made {sts_org_a} STS calls in {elapsed:?}"
    );
    // Within 2x; a millisecond of slack keeps scheduler noise on a shared machine out of it.
    assert!(
        loaded <= alone * 2 + Duration::from_millis(1),
        "org B's p99 went from {alone:?} alone to {loaded:?} under org A's load"
    );

    // Org A's decrypts still answer from memory, but an admin's explicit check asks STS again.
    let sts = || provider.counters().sts_calls.load(Ordering::Relaxed);
    let before = sts();
    let e = provider
        .unwrap(&kek_a, &ctx, b"any wrapped bytes")
        .await
        .expect_err("still refused");
    assert_eq!(
        (e.kind, sts()),
        (KeyErrorKind::AccessDenied, before),
        "from memory"
    );
    let e = provider.check(&kek_a).await.expect_err("still refused");
    assert_eq!(e.kind, KeyErrorKind::AccessDenied);
    assert_eq!(sts(), before + 1, "a check is never answered from memory");
}
