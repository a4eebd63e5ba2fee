//! The `vault-transit` key provider: data keys wrapped by a key of a customer's HashiCorp
//! Vault or OpenBao transit engine (`encrypt`, `decrypt`, `rewrap`, batched with
//! `batch_input`), with the encryption context bound through a derived key
//! ([`cmk_core::vault`] says why).
//!
//! # Why a thin layer over reqwest, not a client crate
//!
//! The service needs five calls: AppRole login and transit `encrypt`, `decrypt` and `rewrap`,
//! single and batched, and it must read the per-item results that a partly failed batch
//! answers with HTTP 400. `vaultrs`, the maintained client, would bring its own HTTP layer
//! (`rustify`) over a second reqwest configuration for those five calls. A few hundred lines
//! over the workspace's reqwest keep one TLS stack (rustls with the platform's roots), typed
//! batches, and the error mapping ([`errors`]) in the provider's hands.

pub mod client;
pub mod errors;
mod provider;
#[cfg(feature = "testing")]
pub mod testing;

pub use provider::{VaultSettings, VaultTransitProvider, BATCH_LIMIT};
