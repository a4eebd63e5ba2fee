//! The transit key provider against a real OpenBao dev server: the key-provider contract
//! (alone and routed beside the local provider), the add-time check's verdicts, revocation by
//! removing the policy, batches beyond one request's limit, and customer rotation with
//! `rewrap` and `min_decryption_version`. Credentials are sealed under a real local
//! service-managed key and never printed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use cmk_core::crypto::DataKey;
use cmk_core::error::KeyErrorKind;
use cmk_core::model::{
    data_key_context, DataKeyId, EncryptionContext, KeyId, KeySpec, KeyType, OrgId,
};
use cmk_core::ports::{Kek, KeyProvider, RewrapItem};
use cmk_core::providers::ProviderRouter;
use cmk_core::testsuite;
use cmk_core::vault::{VaultAuth, VaultCredential, VaultTransitKey, DEFAULT_MOUNT};
use cmk_embedded::LocalKeyProvider;
use cmk_vault::testing::BaoDevServer;
use cmk_vault::{VaultSettings, VaultTransitProvider, BATCH_LIMIT};

/// The dev server listens on loopback: private addresses allowed.
fn on_this_machine() -> VaultSettings {
    VaultSettings {
        allow_private_addresses: true,
        ..VaultSettings::default()
    }
}

struct Fixture {
    bao: BaoDevServer,
    local: Arc<LocalKeyProvider>,
    vault: Arc<VaultTransitProvider>,
    org: OrgId,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Option<Fixture> {
    let bao = BaoDevServer::start().await?;
    let dir = tempfile::tempdir().unwrap();
    let local = Arc::new(LocalKeyProvider::open(dir.path()).unwrap());
    let vault = Arc::new(VaultTransitProvider::new(local.clone(), on_this_machine()).unwrap());
    Some(Fixture {
        bao,
        local,
        vault,
        org: OrgId::from_trusted("acme"),
        _dir: dir,
    })
}

impl Fixture {
    /// A kek for transit key `name` logging in with `credential`, sealed as the service seals.
    async fn kek_with(&self, name: &str, credential: VaultCredential) -> Kek {
        let key_id = KeyId::generate();
        let secret = serde_json::to_vec(&credential).unwrap();
        let sealed = cmk_core::credentials::seal(self.local.as_ref(), &self.org, &key_id, &secret)
            .await
            .unwrap();
        Kek {
            org: self.org.clone(),
            key_id,
            spec: KeySpec::VaultTransit(VaultTransitKey {
                address: self.bao.address.clone(),
                mount: DEFAULT_MOUNT.into(),
                key_name: name.into(),
                namespace: None,
                auth: VaultAuth {
                    method: credential.method(),
                    fingerprint: credential.fingerprint(),
                    sealed,
                },
            }),
            external_id: None,
        }
    }

    /// A customer's derived key with the service's policy and an AppRole for it.
    async fn customer_kek(&self, name: &str) -> Kek {
        let (role_id, secret_id) = self.bao.customer_key(name).await;
        self.kek_with(name, VaultCredential::AppRole { role_id, secret_id })
            .await
    }

    fn service(&self) -> Kek {
        Kek {
            org: self.org.clone(),
            key_id: KeyId::service(),
            spec: KeySpec::ServiceManaged,
            external_id: None,
        }
    }
}

fn contexts(org: &OrgId, n: usize) -> Vec<(EncryptionContext, DataKey)> {
    (0..n)
        .map(|_| {
            (
                data_key_context(org, &DataKeyId::generate()),
                DataKey::generate(),
            )
        })
        .collect()
}

#[tokio::test]
async fn transit_keys_pass_the_key_provider_contract() {
    let Some(f) = fixture().await else { return };
    let a = f.customer_kek("orders").await;
    let b = f.customer_kek("billing").await;
    testsuite::key_provider_contract(f.vault.as_ref(), &a, &b).await;

    // Routed beside the local provider: re-encryption between the providers' keys works.
    let router = ProviderRouter::new(f.local.clone()).route(KeyType::VaultTransit, f.vault.clone());
    testsuite::key_provider_contract(&router, &f.service(), &a).await;
    testsuite::key_provider_contract(&router, &a, &f.service()).await;
}

#[tokio::test]
async fn a_token_credential_works_too_and_never_prints() {
    let Some(f) = fixture().await else { return };
    f.bao.create_key("tok", true).await;
    f.bao
        .put_policy("cmk-tok", &cmk_core::vault::policy("transit", "tok"))
        .await;
    let token = f.bao.token(&["cmk-tok"]).await;
    let kek = f
        .kek_with(
            "tok",
            VaultCredential::Token {
                token: token.clone(),
            },
        )
        .await;
    f.vault.check(&kek).await.expect("a usable token key");
    assert!(!format!("{kek:?}").contains(&token), "the token is sealed");
    let stored = serde_json::to_string(&kek.spec).unwrap();
    assert!(
        !stored.contains(&token),
        "the stored spec holds only the sealed form"
    );
}

#[tokio::test]
async fn the_check_refuses_keys_that_cannot_serve_and_says_why() {
    let Some(f) = fixture().await else { return };
    // A key that is not derived ignores the context: refused.
    f.bao.create_key("plain", false).await;
    f.bao
        .put_policy("cmk-plain", &cmk_core::vault::policy("transit", "plain"))
        .await;
    let (role_id, secret_id) = f.bao.approle("cmk-plain", &["cmk-plain"]).await;
    let plain = f
        .kek_with("plain", VaultCredential::AppRole { role_id, secret_id })
        .await;
    let e = f.vault.check(&plain).await.unwrap_err();
    assert_eq!(e.kind, KeyErrorKind::InvalidKeyState);
    assert!(e.message.contains("derived=true"), "{}", e.message);

    // A key that does not exist (the policy covers its name).
    f.bao
        .put_policy("cmk-ghost", &cmk_core::vault::policy("transit", "ghost"))
        .await;
    let (role_id, secret_id) = f.bao.approle("cmk-ghost", &["cmk-ghost"]).await;
    let ghost = f
        .kek_with("ghost", VaultCredential::AppRole { role_id, secret_id })
        .await;
    assert_eq!(
        f.vault.check(&ghost).await.unwrap_err().kind,
        KeyErrorKind::KeyNotFound
    );

    // A wrong secret id, and a role whose policy does not cover the key.
    let good = f.customer_kek("orders").await;
    let (role_id, _) = f.bao.approle("cmk-orders", &["cmk-orders"]).await;
    let wrong = f
        .kek_with(
            "orders",
            VaultCredential::AppRole {
                role_id,
                secret_id: "00000000-0000-0000-0000-000000000000".into(),
            },
        )
        .await;
    assert_eq!(
        f.vault.check(&wrong).await.unwrap_err().kind,
        KeyErrorKind::AccessDenied
    );
    let (role_id, secret_id) = f.bao.approle("cmk-other", &["cmk-ghost"]).await;
    let other = f
        .kek_with("orders", VaultCredential::AppRole { role_id, secret_id })
        .await;
    assert_eq!(
        f.vault.check(&other).await.unwrap_err().kind,
        KeyErrorKind::AccessDenied
    );
    f.vault.check(&good).await.expect("the customer's key");

    // A server that does not answer: transient, not the key's fault.
    let mut gone = good.clone();
    if let KeySpec::VaultTransit(k) = &mut gone.spec {
        k.address = "http://127.0.0.1:9".into();
    }
    gone.key_id = KeyId::generate();
    let e = f.vault.check(&gone).await.unwrap_err();
    assert_eq!(e.kind, KeyErrorKind::Transient, "{e:?}");
}

#[tokio::test]
async fn removing_the_policy_revokes_and_restoring_it_recovers() {
    let Some(f) = fixture().await else { return };
    let kek = f.customer_kek("orders").await;
    let ctx = data_key_context(&f.org, &DataKeyId::generate());
    let dk = DataKey::generate();
    let wrapped = f.vault.wrap(&kek, &ctx, &dk).await.unwrap();

    f.bao.put_policy("cmk-orders", "# nothing\n").await;
    let e = f.vault.unwrap(&kek, &ctx, &wrapped.blob).await.unwrap_err();
    assert_eq!(e.kind, KeyErrorKind::AccessDenied, "{e:?}");
    assert_eq!(
        f.vault.check(&kek).await.unwrap_err().kind,
        KeyErrorKind::AccessDenied
    );

    f.bao
        .put_policy("cmk-orders", &cmk_core::vault::policy("transit", "orders"))
        .await;
    let back = f.vault.unwrap(&kek, &ctx, &wrapped.blob).await.unwrap();
    assert_eq!(back.expose(), dk.expose());
}

#[tokio::test]
async fn batches_beyond_one_request_keep_order_and_fail_items_alone() {
    let Some(f) = fixture().await else { return };
    let kek = f.customer_kek("orders").await;
    let n = 2 * BATCH_LIMIT + 50;
    let keys = contexts(&f.org, n);
    let wrapped = f.vault.wrap_batch(&kek, &keys).await.unwrap();
    assert_eq!(wrapped.len(), n);
    let mut items: Vec<RewrapItem> = keys
        .iter()
        .zip(&wrapped)
        .map(|((ctx, _), w)| RewrapItem {
            ctx: ctx.clone(),
            wrapped: w.as_ref().unwrap().blob.clone(),
        })
        .collect();
    items[7].wrapped = b"not a transit ciphertext".to_vec();
    items[BATCH_LIMIT + 3].ctx = data_key_context(&f.org, &DataKeyId::generate());
    let back = f.vault.unwrap_batch(&kek, &items).await.unwrap();
    assert_eq!(back.len(), n);
    for (i, r) in back.iter().enumerate() {
        if i == 7 || i == BATCH_LIMIT + 3 {
            assert_eq!(
                r.as_ref().err().map(|e| e.kind),
                Some(KeyErrorKind::InvalidCiphertext)
            );
        } else {
            assert_eq!(r.as_ref().unwrap().expose(), keys[i].1.expose(), "item {i}");
        }
    }
}

#[tokio::test]
async fn rotation_then_rewrap_moves_every_data_key_to_the_latest_version() {
    let Some(f) = fixture().await else { return };
    let kek = f.customer_kek("orders").await;
    let keys = contexts(&f.org, 30);
    let old: Vec<RewrapItem> = f
        .vault
        .wrap_batch(&kek, &keys)
        .await
        .unwrap()
        .into_iter()
        .zip(&keys)
        .map(|(w, (ctx, _))| RewrapItem {
            ctx: ctx.clone(),
            wrapped: w.unwrap().blob,
        })
        .collect();
    assert!(old.iter().all(|i| i.wrapped.starts_with(b"vault:v1:")));

    f.bao.rotate("orders").await;
    // Older versions still decrypt after a rotation.
    let still = f.vault.unwrap_batch(&kek, &old).await.unwrap();
    assert!(still.iter().all(Result::is_ok));

    let moved = f
        .vault
        .rewrap_batch(&kek, &kek, &old)
        .await
        .unwrap()
        .expect("one key rewraps in one call");
    let new: Vec<RewrapItem> = moved
        .into_iter()
        .zip(&old)
        .map(|(m, i)| RewrapItem {
            ctx: i.ctx.clone(),
            wrapped: m.unwrap().blob,
        })
        .collect();
    assert!(new.iter().all(|i| i.wrapped.starts_with(b"vault:v2:")));

    f.bao.set_min_decryption_version("orders", 2).await;
    for (r, (_, dk)) in f
        .vault
        .unwrap_batch(&kek, &new)
        .await
        .unwrap()
        .iter()
        .zip(&keys)
    {
        assert_eq!(r.as_ref().unwrap().expose(), dk.expose());
    }
    let e = f
        .vault
        .unwrap(&kek, &old[0].ctx, &old[0].wrapped)
        .await
        .unwrap_err();
    assert_eq!(e.kind, KeyErrorKind::InvalidKeyState, "{e:?}");
}

/// By default (a hosted service) a transit server at a loopback or private address is refused
/// before any request, whether named by its address or by a name that resolves to it; the
/// instance-metadata address never passes.
#[tokio::test]
async fn private_addresses_are_refused_unless_allowed() {
    let Some(f) = fixture().await else { return };
    let kek = f.customer_kek("orders").await;
    let hosted = VaultTransitProvider::new(f.local.clone(), VaultSettings::default()).unwrap();
    let port = f.bao.address.rsplit(':').next().unwrap().to_owned();
    for address in [
        f.bao.address.clone(),
        format!("http://localhost:{port}"),
        format!("http://[::ffff:127.0.0.1]:{port}"),
    ] {
        let mut at = kek.clone();
        if let KeySpec::VaultTransit(k) = &mut at.spec {
            k.address = address.clone();
        }
        let e = hosted.check(&at).await.unwrap_err();
        assert_eq!(e.kind, KeyErrorKind::InvalidKeyState, "{address}: {e:?}");
        assert!(
            e.message.contains("does not call"),
            "{address}: {}",
            e.message
        );
    }
    assert_eq!(hosted.requests(), 0, "nothing was sent");
    // Allowed, the same key works (the local runs' setting).
    f.vault.check(&kek).await.expect("allowed on this machine");
}
