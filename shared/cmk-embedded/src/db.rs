//! One SQLite database (WAL) shared by the store and the queue: a single writer connection, owned
//! by a writer thread, and a few reader connections, each used on a blocking thread.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cmk_core::error::StoreError;
use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use crate::names::Names;
use crate::unavailable::unavailable;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS orgs (
    org TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    external_id TEXT NOT NULL,
    default_key_id TEXT NOT NULL,
    current_job_id TEXT
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS keys (
    org TEXT NOT NULL,
    id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    name TEXT NOT NULL,
    name_folded TEXT NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('active', 'reencrypting', 'disabled')),
    health TEXT NOT NULL,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    PRIMARY KEY (org, id),
    UNIQUE (org, name_folded)
) WITHOUT ROWID;

-- How many data keys each key wraps, kept in the same transactions that move data keys.
CREATE TABLE IF NOT EXISTS key_counts (
    org TEXT NOT NULL,
    key_id TEXT NOT NULL,
    n INTEGER NOT NULL CHECK (n >= 0),
    PRIMARY KEY (org, key_id)
) WITHOUT ROWID;

-- Org names and key ids as numbers, for the data_keys table (see names.rs). Append-only.
CREATE TABLE IF NOT EXISTS names (
    n INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);

CREATE TABLE IF NOT EXISTS jobs (
    org TEXT NOT NULL,
    id TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    sources TEXT NOT NULL,
    target TEXT NOT NULL,
    total INTEGER NOT NULL,
    done INTEGER NOT NULL CHECK (done >= 0 AND done <= total),
    failed INTEGER NOT NULL CHECK (failed >= 0),
    generation INTEGER NOT NULL,
    started_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    finished_at TEXT,
    started_by TEXT NOT NULL,
    PRIMARY KEY (org, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS jobs_running ON jobs (state) WHERE state = 'running';

CREATE TABLE IF NOT EXISTS job_failures (
    org TEXT NOT NULL,
    job_id TEXT NOT NULL,
    data_key_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (org, job_id, data_key_id)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS audit (
    org TEXT NOT NULL,
    id TEXT NOT NULL,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    key_id TEXT,
    job_id TEXT,
    outcome TEXT NOT NULL,
    detail TEXT,
    PRIMARY KEY (org, id)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    body TEXT NOT NULL,
    visible_at INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt TEXT
);
CREATE INDEX IF NOT EXISTS queue_visible ON queue (visible_at, id);

CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    body TEXT NOT NULL,
    receive_count INTEGER NOT NULL,
    dead_at INTEGER NOT NULL
);
"#;

/// The schema this code reads and writes, kept in the database's `user_version`. Databases of
/// the first releases carry 0 (they wrote no version) and hold schema 1, which has text ids in
/// `data_keys`; schema 2 had compact ids in a table without rowids; schema 3 addresses rows by
/// rowid. Opening an older one migrates it ([`migrate_schema_1`], [`migrate_schema_2`]).
pub const SCHEMA_VERSION: i64 = 3;

/// A write for the writer thread: runs with the writer connection.
type WriteJob = Box<dyn FnOnce(&mut Connection) + Send>;

/// The database file and its connections.
///
/// Writes go to one thread that owns the writer connection and runs them one after another
/// ([`Database::write`]). SQLite has one writer anyway; a dedicated thread takes the next
/// queued write the moment the last one ends, where a mutex handed between blocking threads
/// left the writer idle while a woken waiter waited for a core (measured: 15-20% of a
/// re-encryption's time on the 2-core machine).
pub struct Database {
    path: PathBuf,
    names: Names,
    writer: Arc<Mutex<Connection>>,
    /// The writer thread's queue; the thread ends when this is dropped.
    writes: std::sync::mpsc::Sender<WriteJob>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    /// Nanoseconds the writer connection was held by [`Database::write`]: the one resource
    /// every write waits for, so the benchmark reports how busy it was.
    writer_busy_ns: AtomicU64,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("path", &self.path)
            .finish()
    }
}

const READERS: usize = 4;

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "cache_size", -16000)?; // 16 MB per connection
    Ok(())
}

/// Columns added after the first release, added in place to a database made before them
/// (SQLite adds a nullable column without rewriting the table).
const ADDED_COLUMNS: [(&str, &str, &str); 4] = [
    ("keys", "rewrap_rate_limit", "INTEGER"),
    ("jobs", "throttled_rate", "INTEGER"),
    // A key's last check in microseconds; NULL in a database made before it, which makes
    // every key due for one check at once.
    ("keys", "checked_at", "INTEGER"),
    // The job that last moved the data key (its number in `names`); NULL until one does.
    ("data_keys", "moved_by", "INTEGER"),
];

/// Indexes on added columns, created once the columns exist.
const ADDED_INDEXES: &str = "
-- The health checks' work list: keys not disabled, least recently checked first.
CREATE INDEX IF NOT EXISTS keys_due ON keys (checked_at) WHERE state != 'disabled';
";

fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    for (table, column, decl) in ADDED_COLUMNS {
        let exists: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2)",
            [table, column],
            |r| r.get(0),
        )?;
        if !exists {
            match conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}")) {
                // Another process opening the same database added it first.
                Err(e) if e.to_string().contains("duplicate column name") => {}
                other => other?,
            }
        }
    }
    conn.execute_batch(ADDED_INDEXES)
}

fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

fn has_table(conn: &Connection, table: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
        [table],
        |r| r.get(0),
    )
}

/// Rewrites a schema-1 `data_keys` table (text org, id, key id and time) in the current
/// schema, in one transaction: a crash leaves the database as it was, and the next open
/// migrates again. Row by row in Rust, with the same conversions the store uses, so the two
/// cannot disagree.
fn migrate_schema_1(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(unavailable)?;
    // Another process may have migrated while this one waited for the lock.
    if user_version(&tx).map_err(unavailable)? >= 2
        || !has_table(&tx, "data_keys").map_err(unavailable)?
    {
        return Ok(());
    }
    tracing::info!("migrating the database from schema 1 (compact data key rows)");
    tx.execute_batch(
        "DROP INDEX IF EXISTS data_keys_by_key;
         ALTER TABLE data_keys RENAME TO data_keys_schema_1;",
    )
    .map_err(unavailable)?;
    tx.execute_batch(SCHEMA).map_err(unavailable)?;
    tx.execute_batch(crate::data_keys::SCHEMA)
        .map_err(unavailable)?;
    tx.execute_batch(
        "INSERT OR IGNORE INTO names (name)
         SELECT org FROM data_keys_schema_1 UNION SELECT key_id FROM data_keys_schema_1;",
    )
    .map_err(unavailable)?;
    {
        let mut read = tx
            .prepare(
                "SELECT o.n, d.id, k.n, d.wrapped, d.version, d.created_at
                 FROM data_keys_schema_1 d
                 JOIN names o ON o.name = d.org JOIN names k ON k.name = d.key_id",
            )
            .map_err(unavailable)?;
        let mut write = tx
            .prepare(
                "INSERT INTO data_keys (org, id, key_id, wrapped, version, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(unavailable)?;
        let mut rows = read.query([]).map_err(unavailable)?;
        while let Some(r) = rows.next().map_err(unavailable)? {
            let id: String = r.get(1).map_err(unavailable)?;
            let id = crate::data_keys::stored_id(&cmk_core::model::DataKeyId::from_trusted(id))?;
            let created_at: String = r.get(5).map_err(unavailable)?;
            let created_at = chrono::DateTime::parse_from_rfc3339(&created_at)
                .map_err(|e| StoreError::Corrupt(format!("timestamp {created_at:?}: {e}")))?;
            write
                .execute(rusqlite::params![
                    r.get::<_, i64>(0).map_err(unavailable)?,
                    &id[..],
                    r.get::<_, i64>(2).map_err(unavailable)?,
                    r.get::<_, Vec<u8>>(3).map_err(unavailable)?,
                    r.get::<_, i64>(4).map_err(unavailable)?,
                    crate::data_keys::micros(&created_at.to_utc()),
                ])
                .map_err(unavailable)?;
        }
    }
    tx.execute_batch(&format!(
        "DROP TABLE data_keys_schema_1; PRAGMA user_version = {SCHEMA_VERSION};"
    ))
    .map_err(unavailable)?;
    tx.commit().map_err(unavailable)
}

/// Copies a schema-2 `data_keys` table (no rowid) into the current one, in one transaction.
fn migrate_schema_2(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(unavailable)?;
    if user_version(&tx).map_err(unavailable)? != 2 {
        return Ok(()); // another process migrated while this one waited for the lock
    }
    tracing::info!("migrating the database from schema 2 (rows addressed by rowid)");
    tx.execute_batch(
        "DROP INDEX IF EXISTS data_keys_by_key;
         ALTER TABLE data_keys RENAME TO data_keys_schema_2;",
    )
    .map_err(unavailable)?;
    tx.execute_batch(crate::data_keys::SCHEMA)
        .map_err(unavailable)?;
    tx.execute_batch(&format!(
        "INSERT INTO data_keys (org, id, key_id, wrapped, version, created_at)
         SELECT org, id, key_id, wrapped, version, created_at FROM data_keys_schema_2 ORDER BY org, id;
         DROP TABLE data_keys_schema_2;
         PRAGMA user_version = {SCHEMA_VERSION};"
    ))
    .map_err(unavailable)?;
    tx.commit().map_err(unavailable)
}

/// Brings the database to [`SCHEMA_VERSION`]: creates what is missing, migrates a schema-1
/// database, and refuses one written by a newer release rather than misreading it.
fn prepare_schema(conn: &mut Connection) -> Result<(), StoreError> {
    let version = user_version(conn).map_err(unavailable)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Unavailable(format!(
            "the database was written by a newer release (schema {version}); this release \
             reads schema {SCHEMA_VERSION} and older: run the newer release"
        )));
    }
    if version < 2 && has_table(conn, "data_keys").map_err(unavailable)? {
        migrate_schema_1(conn)?;
    } else if version == 2 {
        migrate_schema_2(conn)?;
    }
    conn.execute_batch(SCHEMA).map_err(unavailable)?;
    conn.execute_batch(crate::data_keys::SCHEMA)
        .map_err(unavailable)?;
    migrate(conn).map_err(unavailable)?;
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(unavailable)
}

impl Database {
    /// Opens (creating if needed) the database at `path` and brings it to the current schema.
    pub fn open(path: &Path) -> Result<Arc<Self>, StoreError> {
        let mut writer = Connection::open(path).map_err(unavailable)?;
        // Takes effect only on a new database (before WAL mode is set); an existing one keeps
        // its page size. 8 KiB pages: fewer B-tree levels and splits for the data keys table
        // (measured: a re-encryption's updates cost 9% less than with 4 KiB).
        writer
            .pragma_update(None, "page_size", 8192)
            .map_err(unavailable)?;
        writer
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(unavailable)?;
        configure(&writer).map_err(unavailable)?;
        prepare_schema(&mut writer)?;
        let writer = Arc::new(Mutex::new(writer));
        let (writes, queued) = std::sync::mpsc::channel::<WriteJob>();
        let conn = Arc::clone(&writer);
        std::thread::Builder::new()
            .name("cmk-sqlite-writer".into())
            .spawn(move || {
                while let Ok(job) = queued.recv() {
                    let mut conn = Self::lock(&conn);
                    job(&mut conn);
                    // Whatever queued meanwhile runs without letting go of the connection.
                    while let Ok(job) = queued.try_recv() {
                        job(&mut conn);
                    }
                }
            })
            .map_err(unavailable)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(unavailable)?;
            configure(&conn).map_err(unavailable)?;
            readers.push(Mutex::new(conn));
        }
        Ok(Arc::new(Self {
            path: path.to_owned(),
            names: Names::default(),
            writer,
            writes,
            readers,
            next_reader: AtomicUsize::new(0),
            writer_busy_ns: AtomicU64::new(0),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The interned org names and key ids (see [`crate::names`]).
    pub(crate) fn names(&self) -> &Names {
        &self.names
    }

    /// The number `data_keys` stores for an org name or key id, interning it if needed: for
    /// tools that read the table directly (the benchmark's floor).
    pub fn name_number(&self, name: &str) -> Result<i64, StoreError> {
        self.with_writer(|conn| self.names.intern(conn, name))
    }

    fn lock(m: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
        // A panic mid-transaction drops the transaction (rolled back), so the connection is fine.
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` with the writer connection on the writer thread.
    pub(crate) async fn write<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (done, result) = tokio::sync::oneshot::channel();
        let db = Arc::clone(self);
        let job: WriteJob = Box::new(move |conn| {
            let held = std::time::Instant::now();
            // A panic mid-transaction drops the transaction (rolled back) and must not end the
            // writer thread: it answers this write as failed instead.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(conn)));
            let ns = held.elapsed().as_nanos() as u64;
            db.writer_busy_ns.fetch_add(ns, Ordering::Relaxed);
            if let Ok(r) = outcome {
                let _ = done.send(r); // the caller may have gone; the write stands
            }
        });
        if self.writes.send(job).is_err() {
            return Err(StoreError::Unavailable(
                "the database writer has stopped".into(),
            ));
        }
        result.await.map_err(|_| {
            StoreError::Unavailable("a database write failed unexpectedly (it panicked)".into())
        })?
    }

    /// How long the writer connection has been held by writes since the database was opened.
    pub fn writer_busy(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.writer_busy_ns.load(Ordering::Relaxed))
    }

    /// Runs `f` with a reader connection on a blocking thread.
    pub(crate) async fn read<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let db = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let start = db.next_reader.fetch_add(1, Ordering::Relaxed);
            for i in 0..db.readers.len() {
                if let Ok(mut conn) = db.readers[(start + i) % db.readers.len()].try_lock() {
                    return f(&mut conn);
                }
            }
            f(&mut Self::lock(&db.readers[start % db.readers.len()]))
        })
        .await
        .map_err(unavailable)?
    }

    /// Runs `f` on the writer connection on the current thread (for tools that own the thread).
    pub fn with_writer<T>(&self, f: impl FnOnce(&mut Connection) -> T) -> T {
        f(&mut Self::lock(&self.writer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_of_schema_2_is_migrated_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cmk.db");
        {
            // Schema 2 as commits 318fe62 to b9d3361 wrote it, with one data key.
            let conn = Connection::open(&path).expect("open");
            conn.execute_batch(SCHEMA).expect("tables");
            conn.execute_batch(
                "CREATE TABLE data_keys (
                     org INTEGER NOT NULL, id BLOB NOT NULL, key_id INTEGER NOT NULL,
                     wrapped BLOB NOT NULL, version INTEGER NOT NULL, created_at INTEGER NOT NULL,
                     PRIMARY KEY (org, id)) WITHOUT ROWID;
                 CREATE INDEX data_keys_by_key ON data_keys (org, key_id, id);
                 INSERT INTO names (n, name) VALUES (1, 'acme'), (2, 'service');
                 INSERT INTO data_keys VALUES (1, x'0190b6c4000070008000000000000001', 2, x'0102', 3, 1700000000000000);
                 PRAGMA user_version = 2;",
            )
            .expect("schema 2");
        }
        for _ in 0..2 {
            let db = Database::open(&path).expect("open and migrate");
            let conn = Database::lock(&db.writer);
            assert_eq!(user_version(&conn).expect("version"), SCHEMA_VERSION);
            let row: (i64, i64, Vec<u8>, i64) = conn
                .query_row(
                    "SELECT n, key_id, wrapped, version FROM data_keys
                     WHERE org = 1 AND id = x'0190b6c4000070008000000000000001'",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .expect("the data key");
            assert_eq!((row.1, row.2, row.3), (2, vec![1, 2], 3));
            assert!(!has_table(&conn, "data_keys_schema_2").expect("tables"));
        }
    }

    #[test]
    fn a_database_of_the_previous_release_gains_the_new_columns_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cmk.db");
        {
            // The schema as the previous release made it, with a key and a job in it.
            let conn = Connection::open(&path).expect("open");
            conn.execute_batch(SCHEMA).expect("old schema");
            conn.execute(
                "INSERT INTO keys (org, id, seq, name, name_folded, spec, state, health,
                                   created_at, created_by)
                 VALUES ('acme', 'k1', 1, 'prod', 'prod', '\"local\"', 'active',
                         '{\"status\":\"ok\",\"checked_at\":null,\"message\":null}',
                         '2026-01-01T00:00:00.000000Z', 'alice')",
                [],
            )
            .expect("an old key");
        }
        for _ in 0..2 {
            // Opening migrates once; opening again finds nothing to do.
            let db = Database::open(&path).expect("open and migrate");
            let conn = Database::lock(&db.writer);
            for (table, column, _) in ADDED_COLUMNS {
                let n: i64 = conn
                    .query_row(
                        "SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2",
                        [table, column],
                        |r| r.get(0),
                    )
                    .expect("table info");
                assert_eq!(n, 1, "{table}.{column}");
            }
            let limit: Option<i64> = conn
                .query_row(
                    "SELECT rewrap_rate_limit FROM keys WHERE id = 'k1'",
                    [],
                    |r| r.get(0),
                )
                .expect("the old key");
            assert_eq!(limit, None, "an old key has no limit");
        }
    }
}
