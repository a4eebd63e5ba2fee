//! The one mapping of SQLite's failures to the store port's error, shared by every module
//! (a leaf, so that no two modules import each other for it).

use cmk_core::error::StoreError;

/// A SQLite failure the caller may retry: the store is unavailable.
pub(crate) fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}
