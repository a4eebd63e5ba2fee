//! The core of the customer-managed-keys service: domain types, the key rules, the ports, the
//! use cases, the re-encryption engine and envelope crypto. It knows no AWS SDK, no SQLite and
//! no HTTP; adapters implement its ports.

pub mod cache;
pub mod crypto;
pub mod engine;
pub mod error;
pub mod model;
pub mod ports;
pub mod ratelimit;
pub mod rules;
pub mod service;
#[cfg(feature = "testsuite")]
pub mod testsuite;
pub mod worker;

pub use error::CoreError;
pub use service::Cmk;
