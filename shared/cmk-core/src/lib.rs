//! The core of the customer-managed-keys service: domain types, the key rules, the ports, the
//! use cases, the re-encryption engine and envelope crypto. It knows no AWS SDK, no SQLite and
//! no HTTP; adapters implement its ports.
//!
//! # Words
//!
//! - **Data key**: a random key that a customer's service encrypts its data with; stored only
//!   wrapped.
//! - **Wrapping key** (KEK): what wraps data keys: the service-managed key or a customer
//!   managed key (`local`, `aws-kms` or `vault-transit`).
//! - **Wrap / unwrap**: encrypt / decrypt a data key under a wrapping key, with the data key's
//!   encryption context.
//! - **Rewrap**: move one data key from one wrapping key to another: unwrap then wrap, or one
//!   provider call where it has one (KMS `ReEncrypt`).
//! - **Re-encryption** (the API's word) or **job**: rewrapping every data key of some source
//!   keys onto a target key. Kinds: `adopt`, `disable`, `disable_all`.
//! - **Plan, batch**: a job is planned into batch messages, each naming a range of one source's
//!   data keys.
//! - **Move** (the store's word): the conditional write that records a rewrap: the data key
//!   now wrapped by the target, at the next version. A batch commit is its moves and failures.
//! - **Generation**: a job's attempt number; a retry starts a new one, and messages of older
//!   generations change nothing.
//! - **Snapshot, rule, commit**: every admin change reads an org snapshot, applies a pure rule
//!   (`rules`) and commits conditionally on the snapshot's version.

pub mod cache;
pub mod credentials;
pub mod crypto;
pub mod defaults;
pub mod engine;
pub mod error;
pub mod events;
pub mod health;
pub mod metrics;
pub mod model;
pub mod oidc;
pub mod ports;
pub mod providers;
pub mod ratelimit;
pub mod rules;
pub mod service;
pub mod setup_kit;
#[cfg(feature = "testsuite")]
pub mod testsuite;
pub mod vault;
pub mod worker;

pub use error::CoreError;
pub use service::Cmk;
