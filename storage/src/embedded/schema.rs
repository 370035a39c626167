//! Opening the SQLite file: pragmas, and the schema migrations applied on open.
//!
//! Invariants:
//! - `PRAGMA user_version` is the number of entries of `MIGRATIONS` applied;
//!   each migration runs in its own transaction together with its version bump,
//!   so a crash leaves the file at one version or the next, never between;
//! - a file with a newer version than this binary knows is refused, not touched;
//! - the writer connection is in WAL mode (checked, not assumed).
//!
//! Durability: WAL with `synchronous=NORMAL` (the default here). A commit
//! appends its frames to the `-wal` file with `write(2)` before it returns, so
//! the committed data is in the kernel's page cache and survives a crash or
//! kill -9 of *the process*; NORMAL only skips the `fsync` at each commit, so
//! what it gives up is the last transactions on *power loss or an OS crash*
//! (the database stays consistent either way). That is the promise of
//! `durable` mode ("a crash of one node loses no acked message"), tested by
//! `tests/kill9.rs`. `synchronous=FULL` (`embedded_sync_full = true`) adds an
//! fsync of the WAL per commit, for machines where power loss must not lose
//! acked messages either, at the cost of one fsync per batch.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::StoreError;

/// The file name of the database inside `data_dir`.
pub const DB_FILE: &str = "edge.sqlite3";

/// How long a connection waits on a lock held by another before failing with a (retryable) busy error.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The smallest page cache a connection gets, KiB (SQLite's own default is 2 MiB).
const MIN_CACHE_KIB: u64 = 1024;

/// Splits the page-cache budget `total_kib`: half to the writer (the tails of the busy rooms'
/// B-tree pages stay in memory), the other half shared by the `readers`. Each share is at least
/// [`MIN_CACHE_KIB`].
pub(super) fn cache_shares(total_kib: u64, readers: usize) -> (u64, u64) {
    let writer = (total_kib / 2).max(MIN_CACHE_KIB);
    let reader = (total_kib / 2 / readers.max(1) as u64).max(MIN_CACHE_KIB);
    (writer, reader)
}

/// Prepared statements kept per connection (each connection uses fewer than this).
const STATEMENT_CACHE: usize = 32;

/// The schema, one entry per version: entry `i` moves the file from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // Version 1.
    // Rowid order is arrival order, so a batch appends to the table's last pages; (room, seq) is a small
    // unique index. Measured against a WITHOUT ROWID table keyed by (room, seq), whose inserts scatter
    // full ~300-byte rows over one B-tree page per busy room: about half the write throughput with 100
    // interleaved rooms (storebench, batch 16 and 64).
    "CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        room TEXT NOT NULL,
        seq INTEGER NOT NULL,
        msg_id TEXT NOT NULL,
        sender TEXT NOT NULL,
        ts_ms INTEGER NOT NULL,
        client_id TEXT,
        frame BLOB NOT NULL,
        UNIQUE (room, seq)
    );
    CREATE INDEX messages_client_id ON messages (room, sender, client_id, seq) WHERE client_id IS NOT NULL;
    CREATE TABLE rooms (room TEXT PRIMARY KEY NOT NULL, epoch INTEGER NOT NULL) WITHOUT ROWID;
    CREATE TABLE marks (
        user_id TEXT NOT NULL,
        room TEXT NOT NULL,
        read_seq INTEGER NOT NULL DEFAULT 0,
        delivered_seq INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (user_id, room)
    ) WITHOUT ROWID;
    CREATE TABLE reactions (
        room TEXT NOT NULL,
        seq INTEGER NOT NULL,
        emoji TEXT NOT NULL,
        user_id TEXT NOT NULL,
        PRIMARY KEY (room, seq, emoji, user_id)
    ) WITHOUT ROWID;
    CREATE TABLE user_rooms (user_id TEXT NOT NULL, room TEXT NOT NULL, PRIMARY KEY (user_id, room)) WITHOUT ROWID;
    CREATE TABLE node_runs (node_id TEXT PRIMARY KEY NOT NULL, open INTEGER NOT NULL) WITHOUT ROWID;",
    // Version 2: thread replies. Messages stored before it keep their `reply_to` in the
    // frame only: it is copied out of the JSON, so their threads are complete too.
    "ALTER TABLE messages ADD COLUMN reply_to INTEGER;
    UPDATE messages SET reply_to = json_extract(CAST(frame AS TEXT), '$.reply_to')
        WHERE json_valid(CAST(frame AS TEXT)) AND json_type(CAST(frame AS TEXT), '$.reply_to') = 'integer';
    CREATE INDEX messages_thread ON messages (room, reply_to, seq) WHERE reply_to IS NOT NULL;",
    // Version 3: when each user was last seen.
    "CREATE TABLE last_seen (user_id TEXT PRIMARY KEY NOT NULL, ts_ms INTEGER NOT NULL) WITHOUT ROWID;",
];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// Opens (creating if needed) the writer connection, sets its pragmas and migrates the schema.
pub(super) fn open_writer(path: &Path, sync_full: bool, cache_kib: u64) -> Result<Connection, StoreError> {
    let mut conn = Connection::open(path).map_err(|e| StoreError::sqlite("open database", e))?;
    common_setup(&conn)?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(|e| StoreError::sqlite("set journal_mode=WAL", e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Config(format!(
            "{}: SQLite refused WAL mode (got {mode})",
            path.display()
        )));
    }
    let sync = if sync_full { "FULL" } else { "NORMAL" };
    conn.pragma_update(None, "synchronous", sync)
        .map_err(|e| StoreError::sqlite("set synchronous", e))?;
    set_cache(&conn, cache_kib)?;
    // Checkpoints run on their own thread (see `checkpoint`); this only bounds the WAL if that thread falls behind.
    conn.pragma_update(None, "wal_autocheckpoint", super::checkpoint::WRITER_AUTOCHECKPOINT_PAGES)
        .map_err(|e| StoreError::sqlite("set wal_autocheckpoint", e))?;
    migrate(&mut conn)?;
    Ok(conn)
}

/// Opens a read-only connection to a file the writer has already created and migrated.
pub(super) fn open_reader(path: &Path, cache_kib: u64) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| StoreError::sqlite("open read connection", e))?;
    common_setup(&conn)?;
    set_cache(&conn, cache_kib)?;
    Ok(conn)
}

/// `cache_size` in KiB (SQLite takes a negative number as KiB, a positive one as pages).
fn set_cache(conn: &Connection, kib: u64) -> Result<(), StoreError> {
    let kib = i64::try_from(kib).unwrap_or(i64::MAX);
    conn.pragma_update(None, "cache_size", -kib)
        .map_err(|e| StoreError::sqlite("set cache_size", e))
}

fn common_setup(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| StoreError::sqlite("set busy_timeout", e))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(())
}

/// Applies the migrations the file lacks, each in its own transaction with its `user_version` bump.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let current: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(|e| StoreError::sqlite("read user_version", e))?;
    let current = usize::try_from(current).map_err(|_| StoreError::OutOfRange(format!("user_version {current}")))?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::Config(format!(
            "database schema version {current} is newer than this binary's {SCHEMA_VERSION}; refusing to open it"
        )));
    }
    for (done, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction().map_err(|e| StoreError::sqlite("begin migration", e))?;
        tx.execute_batch(sql).map_err(|e| StoreError::sqlite("apply migration", e))?;
        tx.pragma_update(None, "user_version", done as i64 + 1)
            .map_err(|e| StoreError::sqlite("bump user_version", e))?;
        tx.commit().map_err(|e| StoreError::sqlite("commit migration", e))?;
        tracing::info!(version = done + 1, "embedded store: applied schema migration");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_budget_is_split_half_to_the_writer() {
        assert_eq!(cache_shares(128 * 1024, 4), (64 * 1024, 16 * 1024));
        assert_eq!(cache_shares(16 * 1024, 2), (8 * 1024, 4 * 1024));
        // Tiny budgets and zero readers still give every connection a usable cache.
        assert_eq!(cache_shares(0, 0), (MIN_CACHE_KIB, MIN_CACHE_KIB));
        assert_eq!(cache_shares(3 * 1024, 8), (1536, MIN_CACHE_KIB));
    }

    #[test]
    fn the_cache_size_is_applied_to_the_connection() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(DB_FILE);
        let conn = open_writer(&path, false, 4096).expect("open writer");
        let got: i64 = conn.query_row("PRAGMA cache_size", [], |r| r.get(0)).expect("read cache_size");
        assert_eq!(got, -4096);
        let reader = open_reader(&path, 1536).expect("open reader");
        let got: i64 = reader.query_row("PRAGMA cache_size", [], |r| r.get(0)).expect("read cache_size");
        assert_eq!(got, -1536);
    }

    #[test]
    fn migrates_once_and_records_the_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(DB_FILE);
        let conn = open_writer(&path, false, 2048).expect("first open");
        drop(conn);
        let conn = open_writer(&path, false, 2048).expect("second open is a no-op migration");
        let v: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).expect("user_version");
        assert_eq!(v as usize, SCHEMA_VERSION);
        let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0)).expect("journal_mode");
        assert_eq!(mode, "wal");
    }

    #[test]
    fn version_2_copies_reply_to_out_of_frames_stored_before_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(DB_FILE);
        let conn = Connection::open(&path).expect("open");
        conn.execute_batch(MIGRATIONS[0]).expect("version 1");
        conn.pragma_update(None, "user_version", 1).expect("at version 1");
        let insert = "INSERT INTO messages (room, seq, msg_id, sender, ts_ms, frame) VALUES ('r', ?1, 'm', 'u', 1, ?2)";
        for (seq, frame) in [
            (1, &b"{\"type\":\"message\",\"seq\":1}"[..]),
            (2, b"{\"type\":\"message\",\"seq\":2,\"reply_to\":1}"),
            (3, b"\x00not json"),
        ] {
            conn.execute(insert, rusqlite::params![seq, frame]).expect("insert");
        }
        drop(conn);
        let conn = open_writer(&path, false, 2048).expect("migrate to the newest version");
        let got: Vec<(i64, Option<i64>)> = conn
            .prepare("SELECT seq, reply_to FROM messages ORDER BY seq")
            .expect("prepare")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(got, vec![(1, None), (2, Some(1)), (3, None)]);
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(DB_FILE);
        let conn = open_writer(&path, false, 2048).expect("open");
        conn.pragma_update(None, "user_version", SCHEMA_VERSION as i64 + 1).expect("bump");
        drop(conn);
        let err = open_writer(&path, false, 2048).expect_err("newer schema must be refused");
        assert!(matches!(err, StoreError::Config(_)), "{err}");
    }
}
