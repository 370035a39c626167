//! The PostgreSQL store (cargo feature `postgres`): tokio-postgres behind a bounded deadpool pool.
//!
//! Layout: the tables of the embedded store (`messages` keyed by `(room, seq)`, `rooms`, `marks`,
//! `reactions`, `user_rooms`, `node_runs`, `last_seen`), schema in `storage/schema/postgres/`
//! applied by [`migrate`] (on [`PostgresStore::open`] and by `edge migrate`).
//!
//! Guarantees:
//! - every statement is prepared once per connection (deadpool's statement cache) and bound with
//!   typed parameters; text never gets spliced into SQL;
//! - `write_batch` is one `INSERT ... SELECT FROM unnest(...) ON CONFLICT (room, seq) DO NOTHING`
//!   statement, hence one transaction: all of the batch or none of it, one round trip whatever its
//!   size, and writing a message again keeps the stored copy;
//! - every read-modify-write (`set_mark(s)`, `set_last_seen`, `begin_run`) is a single statement,
//!   so concurrent nodes sharing the database cannot interleave inside one; `room_state` creates a
//!   room with `ON CONFLICT DO NOTHING` and re-reads it, so the first epoch written wins everywhere;
//! - at most `pool_size` connections are open; each [`MessageStore`] call (waiting for a connection
//!   included) ends within [`OP_TIMEOUT`], a timeout being a retryable error; connection failures
//!   are retryable too, constraint and data errors are not (the classification is in `error.rs`);
//! - ordering of text (`reactions`, `user_rooms`) is bytewise, as in the embedded store, whatever the
//!   database's locale (the columns are `COLLATE "C"`).
//!
//! Differences from the embedded store: text values (rooms, users, ids, emoji) cannot hold a NUL
//! byte (PostgreSQL refuses it: a non-retryable error, the batch is not written); the database must
//! use the UTF8 encoding (checked when the store opens). TLS is not supported (`sslmode=require`
//! is refused by the config check); use a local socket, a trusted network or a TLS-terminating proxy.
//!
//! The store must be used from the tokio runtime that opened it: connections run as tasks of it.
//!
//! Measured (`write_batch_throughput` in `tests/postgres.rs`, release; 2-core VM, PostgreSQL 15 with
//! default settings — fsync and synchronous_commit on, one fdatasync ≈ 0.14 ms here —, 200-byte
//! frames over 100 rooms, one batch at a time as the service's writer does): batch 1: ~3.0k msg/s
//! (0.34 ms per commit); 16: ~36k msg/s; 256: ~96–108k msg/s (2.4–2.7 ms per batch).

mod error;
mod messages;
mod migrate;
mod state;

use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

pub use migrate::{applied_versions, migrate, migrate_files, MigrationFile, MIGRATIONS, MIGRATIONS_TABLE, MIGRATION_LOCK};

use crate::{HistoryPage, MarkKind, MessageStore, ReactionCount, ReactionOp, RoomState, StoreError, StoredMessage, UserRoom};
use error::{pool_err, timeout_err};

/// Longest time one store operation may take, waiting for a pooled connection included.
pub const OP_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest time opening one connection may take, unless the URL sets `connect_timeout`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Most connections a pool may be configured with.
pub const MAX_POOL_SIZE: usize = 1024;

/// How to reach the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    /// A libpq connection string: a URL (`postgres://user:password@host:5432/db?options`) or `key=value` pairs.
    pub url: String,
    /// Most connections open at once (1..=[`MAX_POOL_SIZE`]).
    pub pool_size: usize,
}

impl PostgresConfig {
    /// Checks the settings; the error names the field (and never repeats the URL, which may hold a password).
    pub fn validate(&self) -> Result<(), StoreError> {
        self.pg_config().map(drop)?;
        if !(1..=MAX_POOL_SIZE).contains(&self.pool_size) {
            return Err(StoreError::Config(format!(
                "postgres_pool_size must be 1..={MAX_POOL_SIZE}, got {}",
                self.pool_size
            )));
        }
        Ok(())
    }

    /// The driver's settings: the URL parsed, plus this store's defaults where the URL sets none.
    fn pg_config(&self) -> Result<tokio_postgres::Config, StoreError> {
        if self.url.trim().is_empty() {
            return Err(StoreError::Config(
                "postgres_url must be set for store = \"postgres\" (e.g. postgres://user@127.0.0.1:5432/db)".into(),
            ));
        }
        let mut cfg = tokio_postgres::Config::from_str(&self.url)
            .map_err(|e| StoreError::Config(format!("postgres_url is not a valid PostgreSQL connection URL: {e}")))?;
        if cfg.get_hosts().is_empty() {
            return Err(StoreError::Config("postgres_url names no host".into()));
        }
        if cfg.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            return Err(StoreError::Config(
                "postgres_url asks for sslmode=require, but this build connects without TLS".into(),
            ));
        }
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(CONNECT_TIMEOUT);
        }
        if cfg.get_application_name().is_none() {
            cfg.application_name("edge-storage");
        }
        Ok(cfg)
    }
}

/// The PostgreSQL-backed [`MessageStore`]. Cheap to clone (shares its pool).
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = self.pool.status();
        f.debug_struct("PostgresStore")
            .field("pool_size", &status.max_size)
            .field("open_connections", &status.size)
            .finish()
    }
}

impl PostgresStore {
    /// Builds the pool without connecting: connections open on first use (at most `pool_size`),
    /// each running as a task of the tokio runtime current at that moment.
    pub fn new(cfg: &PostgresConfig) -> Result<Self, StoreError> {
        cfg.validate()?;
        let manager = Manager::from_config(
            cfg.pg_config()?,
            NoTls,
            ManagerConfig {
                // A broken connection is noticed by `is_closed` (its task ended) and replaced.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(cfg.pool_size)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .wait_timeout(Some(OP_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Config(format!("cannot build the postgres pool: {e}")))?;
        Ok(Self { pool })
    }

    /// Connects, checks the database's encoding, applies the pending migrations and prepares every
    /// statement once (so a schema mismatch fails here, not at the first message).
    pub async fn open(cfg: &PostgresConfig) -> Result<Self, StoreError> {
        let store = Self::new(cfg)?;
        store.migrate().await?;
        store.check().await?;
        Ok(store)
    }

    /// Applies the pending migrations; returns the versions applied now (empty when up to date).
    pub async fn migrate(&self) -> Result<Vec<i32>, StoreError> {
        let mut client = self.client("connect to migrate").await?;
        migrate(&mut client).await
    }

    /// The schema versions recorded in the database.
    pub async fn schema_versions(&self) -> Result<Vec<i32>, StoreError> {
        let client = self.client("connect").await?;
        applied_versions(&client).await
    }

    /// Refuses a database whose encoding is not UTF8; prepares every statement of the store.
    async fn check(&self) -> Result<(), StoreError> {
        let client = self.client("connect").await?;
        let row = client
            .query_one("SELECT current_setting('server_encoding')", &[])
            .await
            .map_err(|e| error::pg_err("read server_encoding", e))?;
        let encoding: String = row.try_get(0).map_err(|e| error::pg_err("read server_encoding", e))?;
        if !encoding.eq_ignore_ascii_case("UTF8") {
            return Err(StoreError::Config(format!(
                "the database named by postgres_url has encoding {encoding}; create it with ENCODING 'UTF8'"
            )));
        }
        for sql in messages::ALL.iter().chain(state::ALL) {
            client
                .prepare_cached(sql)
                .await
                .map_err(|e| error::pg_err("prepare statements (is the schema migrated?)", e))?;
        }
        Ok(())
    }

    /// A pooled connection (opening one if none is idle and the pool is not full).
    async fn client(&self, context: &'static str) -> Result<deadpool_postgres::Client, StoreError> {
        self.pool.get().await.map_err(|e| pool_err(context, e))
    }

    /// Runs `op` on a pooled connection within [`OP_TIMEOUT`].
    async fn with_client<T, F>(&self, context: &'static str, op: F) -> Result<T, StoreError>
    where
        F: AsyncFnOnce(&deadpool_postgres::Client) -> Result<T, StoreError>,
    {
        let run = async {
            let client = self.client(context).await?;
            op(&client).await
        };
        tokio::time::timeout(OP_TIMEOUT, run)
            .await
            .unwrap_or_else(|_| Err(timeout_err(context, OP_TIMEOUT)))
    }
}

impl MessageStore for PostgresStore {
    async fn write_batch(&self, msgs: &[StoredMessage]) -> Result<(), StoreError> {
        if msgs.is_empty() {
            return Ok(());
        }
        self.with_client("write batch", async |c| messages::write_batch(c, msgs).await)
            .await
    }

    async fn room_state(&self, room: &str, new_epoch: u64) -> Result<RoomState, StoreError> {
        self.with_client("room state", async |c| messages::room_state(c, room, new_epoch).await)
            .await
    }

    async fn set_epoch(&self, room: &str, epoch: u64) -> Result<(), StoreError> {
        self.with_client("set epoch", async |c| messages::set_epoch(c, room, epoch).await)
            .await
    }

    async fn history(&self, room: &str, before: Option<u64>, limit: usize) -> Result<HistoryPage, StoreError> {
        self.with_client("history", async |c| messages::page(c, room, None, before, limit).await)
            .await
    }

    async fn range_after(&self, room: &str, after: u64, limit: usize) -> Result<Vec<StoredMessage>, StoreError> {
        self.with_client("range after", async |c| messages::range_after(c, room, after, limit).await)
            .await
    }

    async fn find_client_id(&self, room: &str, sender: &str, client_id: &str) -> Result<Option<StoredMessage>, StoreError> {
        self.with_client("find client id", async |c| {
            messages::find_client_id(c, room, sender, client_id).await
        })
        .await
    }

    async fn thread(&self, room: &str, root: u64, before: Option<u64>, limit: usize) -> Result<HistoryPage, StoreError> {
        self.with_client("thread", async |c| messages::page(c, room, Some(root), before, limit).await)
            .await
    }

    async fn reply_counts(&self, room: &str, from: u64, to: u64) -> Result<Vec<(u64, u64)>, StoreError> {
        self.with_client("reply counts", async |c| messages::reply_counts(c, room, from, to).await)
            .await
    }

    async fn set_mark(&self, room: &str, user: &str, kind: MarkKind, seq: u64) -> Result<u64, StoreError> {
        let users = [user.to_owned()];
        let marks = self
            .with_client("set mark", async |c| state::set_marks(c, room, &users, kind, seq).await)
            .await?;
        marks
            .first()
            .copied()
            .ok_or_else(|| StoreError::Internal("set mark returned no mark".into()))
    }

    async fn set_marks(&self, room: &str, users: &[String], kind: MarkKind, seq: u64) -> Result<Vec<u64>, StoreError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        self.with_client("set marks", async |c| state::set_marks(c, room, users, kind, seq).await)
            .await
    }

    async fn react(&self, room: &str, seq: u64, user: &str, emoji: &str, op: ReactionOp) -> Result<(), StoreError> {
        self.with_client("react", async |c| state::react(c, room, seq, user, emoji, op).await)
            .await
    }

    async fn reactions(&self, room: &str, seq: u64) -> Result<Vec<(String, String)>, StoreError> {
        self.with_client("reactions", async |c| state::reactions(c, room, seq).await).await
    }

    async fn reaction_counts(&self, room: &str, from: u64, to: u64, user: &str) -> Result<Vec<ReactionCount>, StoreError> {
        self.with_client("reaction counts", async |c| state::reaction_counts(c, room, from, to, user).await)
            .await
    }

    async fn replace_frame(&self, room: &str, seq: u64, frame: &Bytes) -> Result<bool, StoreError> {
        self.with_client("replace frame", async |c| messages::replace_frame(c, room, seq, frame).await)
            .await
    }

    async fn set_last_seen(&self, user: &str, ts_ms: u64) -> Result<(), StoreError> {
        self.with_client("set last seen", async |c| state::set_last_seen(c, user, ts_ms).await)
            .await
    }

    async fn last_seen(&self, user: &str) -> Result<Option<u64>, StoreError> {
        self.with_client("last seen", async |c| state::last_seen(c, user).await).await
    }

    async fn add_user_room(&self, user: &str, room: &str) -> Result<(), StoreError> {
        self.with_client("add user room", async |c| state::add_user_room(c, user, room).await)
            .await
    }

    async fn user_rooms(&self, user: &str) -> Result<Vec<UserRoom>, StoreError> {
        self.with_client("user rooms", async |c| state::user_rooms(c, user).await).await
    }

    async fn begin_run(&self, node_id: &str) -> Result<bool, StoreError> {
        self.with_client("begin run", async |c| state::begin_run(c, node_id).await).await
    }

    async fn end_run(&self, node_id: &str) -> Result<(), StoreError> {
        self.with_client("end run", async |c| state::end_run(c, node_id).await).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> PostgresConfig {
        PostgresConfig {
            url: url.into(),
            pool_size: 8,
        }
    }

    #[test]
    fn urls_are_checked() {
        cfg("postgres://edge@127.0.0.1:5432/edge").validate().expect("a URL");
        cfg("host=/tmp port=5433 user=edge dbname=edge")
            .validate()
            .expect("key=value pairs");
        for bad in ["", "  ", "postgres://edge@127.0.0.1:notaport/edge", "mysql://x", "postgres:///edge"] {
            let err = cfg(bad).validate().expect_err(bad).to_string();
            assert!(err.contains("postgres_url"), "{bad:?}: {err}");
        }
        let err = cfg("postgres://u:secret@h/db?sslmode=require").validate().expect_err("tls");
        assert!(!err.to_string().contains("secret"), "{err}");
        let err = PostgresConfig {
            pool_size: 0,
            ..cfg("postgres://h/db")
        }
        .validate()
        .expect_err("pool 0");
        assert!(err.to_string().contains("postgres_pool_size"), "{err}");
    }
}
