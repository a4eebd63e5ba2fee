//! One [`KeyProvider`] over several: each key goes to the provider of its type. A backend's
//! own provider serves its key types (the service-managed key, `local` or `aws-kms` keys), and
//! others are added by type (`vault-transit`). A re-encryption between keys of two providers
//! unwraps with one and wraps with the other.

use std::sync::Arc;

use async_trait::async_trait;

use crate::crypto::DataKey;
use crate::error::KeyError;
use crate::model::{EncryptionContext, KeyType};
use crate::ports::{Kek, KeyFailure, KeyProvider, RewrapItem, Wrapped};

#[derive(Clone)]
pub struct ProviderRouter {
    default: Arc<dyn KeyProvider>,
    routes: Vec<(KeyType, Arc<dyn KeyProvider>)>,
}

impl std::fmt::Debug for ProviderRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let types: Vec<&str> = self.routes.iter().map(|(t, _)| t.as_str()).collect();
        f.debug_struct("ProviderRouter")
            .field("routes", &types)
            .finish_non_exhaustive()
    }
}

impl ProviderRouter {
    /// Every key type goes to `default` unless routed elsewhere.
    pub fn new(default: Arc<dyn KeyProvider>) -> Self {
        Self {
            default,
            routes: Vec::new(),
        }
    }

    /// Sends keys of `key_type` to `provider`.
    pub fn route(mut self, key_type: KeyType, provider: Arc<dyn KeyProvider>) -> Self {
        self.routes.retain(|(t, _)| *t != key_type);
        self.routes.push((key_type, provider));
        self
    }

    fn of(&self, kek: &Kek) -> &Arc<dyn KeyProvider> {
        let key_type = kek.spec.key_type();
        self.routes
            .iter()
            .find(|(t, _)| *t == key_type)
            .map_or(&self.default, |(_, p)| p)
    }

    /// The one provider of both keys, if they share it.
    fn shared(&self, from: &Kek, to: &Kek) -> Option<&Arc<dyn KeyProvider>> {
        let (a, b) = (self.of(from), self.of(to));
        Arc::ptr_eq(a, b).then_some(a)
    }
}

#[async_trait]
impl KeyProvider for ProviderRouter {
    async fn prepare(&self, kek: &Kek) -> Result<(), KeyError> {
        self.of(kek).prepare(kek).await
    }

    async fn discard(&self, kek: &Kek) {
        self.of(kek).discard(kek).await
    }

    async fn wrap(
        &self,
        kek: &Kek,
        ctx: &EncryptionContext,
        plaintext: &DataKey,
    ) -> Result<Wrapped, KeyError> {
        self.of(kek).wrap(kek, ctx, plaintext).await
    }

    async fn unwrap(
        &self,
        kek: &Kek,
        ctx: &EncryptionContext,
        wrapped: &[u8],
    ) -> Result<DataKey, KeyError> {
        self.of(kek).unwrap(kek, ctx, wrapped).await
    }

    fn rewraps_in_one_call(&self, from: &Kek, to: &Kek) -> bool {
        self.shared(from, to)
            .is_some_and(|p| p.rewraps_in_one_call(from, to))
    }

    async fn rewrap(
        &self,
        from: &Kek,
        to: &Kek,
        ctx: &EncryptionContext,
        wrapped: &[u8],
    ) -> Result<Option<Wrapped>, KeyError> {
        match self.shared(from, to) {
            Some(p) => p.rewrap(from, to, ctx, wrapped).await,
            None => Ok(None),
        }
    }

    fn rewraps_locally(&self, from: &Kek, to: &Kek) -> bool {
        self.shared(from, to)
            .is_some_and(|p| p.rewraps_locally(from, to))
    }

    fn rewrap_locally(
        &self,
        from: &Kek,
        to: &Kek,
        items: &[RewrapItem],
    ) -> Vec<Result<Wrapped, KeyFailure>> {
        // Called only where `rewraps_locally` said yes: both keys share a provider.
        self.of(from).rewrap_locally(from, to, items)
    }

    fn batch_limit(&self, kek: &Kek) -> Option<usize> {
        self.of(kek).batch_limit(kek)
    }

    async fn wrap_batch(
        &self,
        kek: &Kek,
        items: &[(EncryptionContext, DataKey)],
    ) -> Result<Vec<Result<Wrapped, KeyError>>, KeyError> {
        self.of(kek).wrap_batch(kek, items).await
    }

    async fn unwrap_batch(
        &self,
        kek: &Kek,
        items: &[RewrapItem],
    ) -> Result<Vec<Result<DataKey, KeyError>>, KeyError> {
        self.of(kek).unwrap_batch(kek, items).await
    }

    async fn rewrap_batch(
        &self,
        from: &Kek,
        to: &Kek,
        items: &[RewrapItem],
    ) -> Result<Option<Vec<Result<Wrapped, KeyError>>>, KeyError> {
        match self.shared(from, to) {
            Some(p) => p.rewrap_batch(from, to, items).await,
            None => Ok(None),
        }
    }

    async fn check(&self, kek: &Kek) -> Result<Option<String>, KeyError> {
        self.of(kek).check(kek).await
    }
}
