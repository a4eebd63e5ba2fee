//! Org names and key ids interned as small integers (the `names` table), so that every data
//! key row and index entry carries two integers instead of two strings: B-tree seeks compare
//! integers, and more entries fit a page.
//!
//! The table is append-only (an entry never changes or goes away), so a cached entry can never
//! go stale, and entries are only ever read back once committed. An entry is written in a
//! statement of its own before the transaction that uses it: a rolled-back transaction cannot
//! leave the cache naming a number the database never kept.

use std::collections::HashMap;
use std::sync::Mutex;

use cmk_core::error::StoreError;
use rusqlite::{Connection, OptionalExtension};

use crate::unavailable::unavailable;

/// The cache of committed entries, both ways.
#[derive(Debug, Default)]
pub(crate) struct Names {
    by_name: Mutex<HashMap<String, i64>>,
    by_number: Mutex<HashMap<i64, String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Names {
    fn remember(&self, name: &str, n: i64) {
        lock(&self.by_name).insert(name.to_owned(), n);
        lock(&self.by_number).insert(n, name.to_owned());
    }

    /// The number of `name`, if it was ever interned (nothing is stored under a name that was
    /// not).
    pub(crate) fn find(&self, conn: &Connection, name: &str) -> Result<Option<i64>, StoreError> {
        if let Some(n) = lock(&self.by_name).get(name) {
            return Ok(Some(*n));
        }
        let n: Option<i64> = conn
            .prepare_cached("SELECT n FROM names WHERE name = ?1")
            .map_err(unavailable)?
            .query_row([name], |r| r.get(0))
            .optional()
            .map_err(unavailable)?;
        if let Some(n) = n {
            self.remember(name, n);
        }
        Ok(n)
    }

    /// The number of `name`, interning it first if needed. Must run outside a transaction (see
    /// the module docs), on the writer connection.
    pub(crate) fn intern(&self, conn: &Connection, name: &str) -> Result<i64, StoreError> {
        if let Some(n) = self.find(conn, name)? {
            return Ok(n);
        }
        debug_assert!(
            conn.is_autocommit(),
            "names are interned outside transactions"
        );
        conn.prepare_cached("INSERT OR IGNORE INTO names (name) VALUES (?1)")
            .map_err(unavailable)?
            .execute([name])
            .map_err(unavailable)?;
        self.find(conn, name)?
            .ok_or_else(|| StoreError::Corrupt(format!("the name {name:?} was not kept")))
    }

    /// The name numbered `n`.
    pub(crate) fn name(&self, conn: &Connection, n: i64) -> Result<String, StoreError> {
        if let Some(name) = lock(&self.by_number).get(&n) {
            return Ok(name.clone());
        }
        let name: String = conn
            .prepare_cached("SELECT name FROM names WHERE n = ?1")
            .map_err(unavailable)?
            .query_row([n], |r| r.get(0))
            .optional()
            .map_err(unavailable)?
            .ok_or_else(|| StoreError::Corrupt(format!("no name numbered {n}")))?;
        self.remember(&name, n);
        Ok(name)
    }
}
