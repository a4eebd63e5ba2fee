//! The `data_keys` table (schema 3): the one table a re-encryption rewrites row by row, so its
//! rows and index entries are kept narrow.
//!
//! - `org` and `key_id` are numbers from `names` (see [`crate::names`]).
//! - `id` is the data key id's UUID as 16 bytes. Data key ids are v7 UUIDs in canonical text
//!   (lowercase, hyphenated), whose byte order is their text order, so paging by id is
//!   unchanged. Text of any other form names no stored data key.
//! - `created_at` is in microseconds since the epoch (what the text form held).
//! - `n`, the rowid, is what a record read here carries as its `row_hint`: a move of it finds
//!   the row by an integer instead of searching the id index (measured: a re-encryption's
//!   writer spends most of its time in B-tree searches). A move still checks org, id, key and
//!   version, and falls back to the id when the hint does not match.
//!
//! Schema 1 (the first releases) kept the ids and time as text, schema 2 had no rowid;
//! [`crate::db`] migrates both on open.

use chrono::{DateTime, Utc};
use cmk_core::error::StoreError;
use cmk_core::model::{DataKeyId, DataKeyRecord, KeyId};
use rusqlite::{params, Connection, OptionalExtension};

use crate::names::Names;
use crate::unavailable::unavailable;

/// The table and its index, as [`crate::db`] creates them.
pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS data_keys (
    n INTEGER PRIMARY KEY,
    org INTEGER NOT NULL,
    id BLOB NOT NULL,
    key_id INTEGER NOT NULL,
    wrapped BLOB NOT NULL,
    version INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS data_keys_by_id ON data_keys (org, id);
CREATE INDEX IF NOT EXISTS data_keys_by_key ON data_keys (org, key_id, id);
";

/// The stored form of a data key id: its 16 UUID bytes, or `None` for text that is not a
/// canonical UUID (under which nothing is ever stored).
pub fn id_bytes(id: &str) -> Option<[u8; 16]> {
    if id.len() != 36 || id.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    uuid::Uuid::parse_str(id).ok().map(|u| *u.as_bytes())
}

/// The data key id stored as `bytes`.
pub fn id_of(bytes: &[u8]) -> Result<DataKeyId, StoreError> {
    let uuid = uuid::Uuid::from_slice(bytes)
        .map_err(|_| StoreError::Corrupt(format!("a data key id of {} bytes", bytes.len())))?;
    Ok(DataKeyId::from_trusted(uuid.hyphenated().to_string()))
}

pub(crate) fn micros(t: &DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn time_of(us: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(us)
        .ok_or_else(|| StoreError::Corrupt(format!("a creation time of {us} µs")))
}

/// The stored bound of a page: after the start (`None`) or after a data key id.
fn bound(id: Option<&DataKeyId>) -> Result<Vec<u8>, StoreError> {
    match id {
        None => Ok(Vec::new()), // sorts before every 16-byte id
        Some(id) => id_bytes(id.as_str()).map(|b| b.to_vec()).ok_or_else(|| {
            StoreError::Corrupt(format!("a page bound {id} that is no data key id"))
        }),
    }
}

/// One data key of an org, by id.
pub(crate) fn get(
    conn: &Connection,
    names: &Names,
    org: &str,
    id: &DataKeyId,
) -> Result<Option<DataKeyRecord>, StoreError> {
    let (Some(org), Some(id_b)) = (names.find(conn, org)?, id_bytes(id.as_str())) else {
        return Ok(None);
    };
    let row: Option<(i64, Vec<u8>, i64, i64, i64)> = conn
        .prepare_cached(
            "SELECT key_id, wrapped, version, created_at, n FROM data_keys
             WHERE org = ?1 AND id = ?2",
        )
        .map_err(unavailable)?
        .query_row(params![org, &id_b[..]], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .optional()
        .map_err(unavailable)?;
    row.map(|(key, wrapped, version, created_at, n)| {
        Ok(DataKeyRecord {
            id: id.clone(),
            key_id: KeyId::from_trusted(names.name(conn, key)?),
            wrapped,
            version: version as u64,
            created_at: time_of(created_at)?,
            row_hint: Some(n),
        })
    })
    .transpose()
}

/// The data keys of `ids` that exist in the org, in one read transaction.
pub(crate) fn get_many(
    conn: &mut Connection,
    names: &Names,
    org: &str,
    ids: &[DataKeyId],
) -> Result<Vec<DataKeyRecord>, StoreError> {
    let tx = conn.transaction().map_err(unavailable)?;
    let mut found = Vec::with_capacity(ids.len());
    for id in ids {
        found.extend(get(&tx, names, org, id)?);
    }
    Ok(found)
}

/// Up to `limit` data keys of `key`, in id order, after `after` and up to `until` (inclusive).
/// Up to `limit` data keys of `key` with ids in `(after, until]`, in order; with
/// `not_moved_by`, only those that job has not moved (`moved_by`, set by every move).
#[allow(clippy::too_many_arguments)]
pub(crate) fn list(
    conn: &Connection,
    names: &Names,
    org: &str,
    key: &KeyId,
    after: Option<&DataKeyId>,
    until: Option<&DataKeyId>,
    limit: usize,
    not_moved_by: Option<&str>,
) -> Result<Vec<DataKeyRecord>, StoreError> {
    let (Some(org), Some(key_n)) = (names.find(conn, org)?, names.find(conn, key.as_str())?) else {
        return Ok(Vec::new());
    };
    // A job never interned has moved nothing.
    let job_n = match not_moved_by {
        Some(job) => names.find(conn, job)?,
        None => None,
    };
    let after = bound(after)?;
    // Two statements, so that SQLite bounds the index range on both sides (an
    // `?4 IS NULL OR id <= ?4` would scan to the end of the key's data keys).
    let mut stmt = match until {
        Some(_) => conn.prepare_cached(
            "SELECT id, wrapped, version, created_at, n FROM data_keys
             WHERE org = ?1 AND key_id = ?2 AND id > ?3 AND id <= ?4
               AND (?6 IS NULL OR moved_by IS NOT ?6) ORDER BY id LIMIT ?5",
        ),
        None => conn.prepare_cached(
            "SELECT id, wrapped, version, created_at, n FROM data_keys
             WHERE org = ?1 AND key_id = ?2 AND id > ?3 AND ?4 IS NULL
               AND (?6 IS NULL OR moved_by IS NOT ?6) ORDER BY id LIMIT ?5",
        ),
    }
    .map_err(unavailable)?;
    let until = until.map(|u| bound(Some(u))).transpose()?;
    let mut rows = stmt
        .query(params![org, key_n, after, until, limit as i64, job_n])
        .map_err(unavailable)?;
    let mut records = Vec::with_capacity(limit.min(10_000));
    while let Some(r) = rows.next().map_err(unavailable)? {
        let id: Vec<u8> = r.get(0).map_err(unavailable)?;
        records.push(DataKeyRecord {
            id: id_of(&id)?,
            key_id: key.clone(),
            wrapped: r.get(1).map_err(unavailable)?,
            version: r.get::<_, i64>(2).map_err(unavailable)? as u64,
            created_at: time_of(r.get(3).map_err(unavailable)?)?,
            row_hint: Some(r.get(4).map_err(unavailable)?),
        });
    }
    Ok(records)
}

/// Up to `limit` ids of data keys of `key`, in order, after `after`.
pub(crate) fn list_ids(
    conn: &Connection,
    names: &Names,
    org: &str,
    key: &KeyId,
    after: Option<&DataKeyId>,
    limit: usize,
) -> Result<Vec<DataKeyId>, StoreError> {
    let (Some(org), Some(key)) = (names.find(conn, org)?, names.find(conn, key.as_str())?) else {
        return Ok(Vec::new());
    };
    let mut stmt = conn
        .prepare_cached(
            "SELECT id FROM data_keys WHERE org = ?1 AND key_id = ?2 AND id > ?3
             ORDER BY id LIMIT ?4",
        )
        .map_err(unavailable)?;
    let mut rows = stmt
        .query(params![org, key, bound(after)?, limit as i64])
        .map_err(unavailable)?;
    let mut ids = Vec::with_capacity(limit.min(10_000));
    while let Some(r) = rows.next().map_err(unavailable)? {
        ids.push(id_of(&r.get::<_, Vec<u8>>(0).map_err(unavailable)?)?);
    }
    Ok(ids)
}

/// The stored id of a data key the service generated; any other id is refused.
pub(crate) fn stored_id(id: &DataKeyId) -> Result<[u8; 16], StoreError> {
    id_bytes(id.as_str()).ok_or_else(|| {
        StoreError::Corrupt(format!(
            "data key id {id} is not a UUID in canonical form, as the service generates them"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_keep_their_text_order_as_bytes_and_read_back_the_same() {
        let mut ids: Vec<DataKeyId> = (0..200).map(|_| DataKeyId::generate()).collect();
        ids.push(DataKeyId::from_trusted(
            "ffffffff-ffff-7fff-bfff-ffffffffffff".to_owned(),
        ));
        ids.push(DataKeyId::from_trusted(
            "00000000-0000-7000-8000-000000000000".to_owned(),
        ));
        for id in &ids {
            let bytes = id_bytes(id.as_str()).expect("a generated id is a UUID");
            assert_eq!(id_of(&bytes).expect("back"), *id);
        }
        let mut by_text = ids.clone();
        by_text.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        let mut by_bytes = ids;
        by_bytes.sort_by_key(|id| id_bytes(id.as_str()));
        assert_eq!(by_text, by_bytes);
    }

    #[test]
    fn text_that_is_not_a_canonical_uuid_names_no_stored_id() {
        for text in [
            "",
            "abc",
            "0190B6C4-0000-7000-8000-000000000000",
            "0190b6c400007000800000000000000000",
            "{0190b6c4-0000-7000-8000-000000000000}",
            "0190b6c4-0000-7000-8000-00000000000g",
        ] {
            assert_eq!(id_bytes(text), None, "{text:?}");
        }
        assert!(id_of(&[1, 2, 3]).is_err());
    }

    #[test]
    fn creation_times_keep_their_microseconds() {
        let t = cmk_core::model::now();
        assert_eq!(time_of(micros(&t)).expect("a time"), t);
    }
}
