//! [`AnyStore`]: the backend chosen by [`StoreConfig::store`], implementing [`MessageStore`] by delegation.
//!
//! Invariant: adds no behaviour of its own; each method forwards to the backend unchanged.

use bytes::Bytes;

use crate::embedded::EmbeddedStore;
use crate::{
    HistoryPage, MarkKind, MessageStore, ReactionCount, ReactionOp, RoomState, StoreConfig, StoreError, StoreKind, StoredMessage, UserRoom,
};

/// One of the backends.
#[derive(Debug, Clone)]
pub enum AnyStore {
    /// SQLite in the data directory.
    Embedded(EmbeddedStore),
    /// A Scylla cluster.
    #[cfg(feature = "scylla")]
    Scylla(crate::scylla::ScyllaStore),
    /// A PostgreSQL database.
    #[cfg(feature = "postgres")]
    Postgres(crate::postgres::PostgresStore),
}

impl AnyStore {
    /// Opens the backend `cfg` names (validating `cfg` first). Scylla: connects, and migrates when
    /// `scylla_migrate_on_start`. PostgreSQL: connects, applies the pending migrations (several nodes
    /// may do so at once) and prepares every statement. Both must run inside the tokio runtime that
    /// will use the store.
    pub async fn open(cfg: &StoreConfig) -> Result<Self, StoreError> {
        cfg.validate()?;
        match cfg.store {
            StoreKind::Embedded => {
                let (dir, opts) = (cfg.data_dir.clone(), cfg.embedded());
                let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(&dir, &opts))
                    .await
                    .map_err(|e| StoreError::Internal(format!("opening the embedded store failed: {e}")))??;
                Ok(Self::Embedded(store))
            }
            #[cfg(feature = "scylla")]
            StoreKind::Scylla => {
                use crate::scylla as sc;
                let scfg = cfg.scylla();
                let session = std::sync::Arc::new(sc::connect(&scfg).await?);
                if cfg.scylla_migrate_on_start {
                    sc::migrate(&session, &scfg.keyspace, &sc::replication_map(scfg.replication_factor)).await?;
                }
                Ok(Self::Scylla(sc::ScyllaStore::open(session, &scfg).await?))
            }
            #[cfg(not(feature = "scylla"))]
            StoreKind::Scylla => Err(StoreError::Config("this binary was built without the `scylla` feature".into())),
            #[cfg(feature = "postgres")]
            StoreKind::Postgres => Ok(Self::Postgres(crate::postgres::PostgresStore::open(&cfg.postgres()).await?)),
            #[cfg(not(feature = "postgres"))]
            StoreKind::Postgres => Err(StoreError::Config("this binary was built without the `postgres` feature".into())),
        }
    }
}

/// Prepares the store `cfg` names and says what was done (the `edge migrate` command).
/// Embedded: creates the data directory and the database, applying its schema.
/// Scylla: creates the keyspace if absent and applies the pending migrations of `storage/schema/`.
/// PostgreSQL: applies the pending migrations of `storage/schema/postgres/` (safe while other nodes
/// run or migrate), saying which were applied and the schema version reached.
/// Blocking: runs its own single-threaded runtime.
pub fn migrate(cfg: &StoreConfig) -> Result<String, StoreError> {
    cfg.validate()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StoreError::Internal(format!("cannot start a runtime: {e}")))?;
    rt.block_on(async {
        match cfg.store {
            StoreKind::Embedded => {
                let store = EmbeddedStore::open(&cfg.data_dir, &cfg.embedded())?;
                Ok(format!("embedded store ready at {}", store.path().display()))
            }
            #[cfg(feature = "scylla")]
            StoreKind::Scylla => {
                use crate::scylla as sc;
                let scfg = cfg.scylla();
                let session = sc::connect(&scfg).await?;
                let applied = sc::migrate(&session, &scfg.keyspace, &sc::replication_map(scfg.replication_factor)).await?;
                Ok(format!("scylla keyspace {}: applied migrations {applied:?}", scfg.keyspace))
            }
            #[cfg(not(feature = "scylla"))]
            StoreKind::Scylla => Err(StoreError::Config("this binary was built without the `scylla` feature".into())),
            #[cfg(feature = "postgres")]
            StoreKind::Postgres => {
                let store = crate::postgres::PostgresStore::new(&cfg.postgres())?;
                let applied = store.migrate().await?;
                let version = store.schema_versions().await?.last().copied().unwrap_or(0);
                Ok(if applied.is_empty() {
                    format!("postgres: schema up to date at version {version}, no migration applied")
                } else {
                    format!("postgres: applied migrations {applied:?}, schema now at version {version}")
                })
            }
            #[cfg(not(feature = "postgres"))]
            StoreKind::Postgres => Err(StoreError::Config("this binary was built without the `postgres` feature".into())),
        }
    })
}

/// Forwards one call to whichever backend `self` holds.
macro_rules! delegate {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            AnyStore::Embedded($s) => $call.await,
            #[cfg(feature = "scylla")]
            AnyStore::Scylla($s) => $call.await,
            #[cfg(feature = "postgres")]
            AnyStore::Postgres($s) => $call.await,
        }
    };
}

impl MessageStore for AnyStore {
    async fn write_batch(&self, msgs: &[StoredMessage]) -> Result<(), StoreError> {
        delegate!(self, s => s.write_batch(msgs))
    }

    async fn room_state(&self, room: &str, new_epoch: u64) -> Result<RoomState, StoreError> {
        delegate!(self, s => s.room_state(room, new_epoch))
    }

    async fn set_epoch(&self, room: &str, epoch: u64) -> Result<(), StoreError> {
        delegate!(self, s => s.set_epoch(room, epoch))
    }

    async fn history(&self, room: &str, before: Option<u64>, limit: usize) -> Result<HistoryPage, StoreError> {
        delegate!(self, s => s.history(room, before, limit))
    }

    async fn range_after(&self, room: &str, after: u64, limit: usize) -> Result<Vec<StoredMessage>, StoreError> {
        delegate!(self, s => s.range_after(room, after, limit))
    }

    async fn find_client_id(&self, room: &str, sender: &str, client_id: &str) -> Result<Option<StoredMessage>, StoreError> {
        delegate!(self, s => s.find_client_id(room, sender, client_id))
    }

    async fn thread(&self, room: &str, root: u64, before: Option<u64>, limit: usize) -> Result<HistoryPage, StoreError> {
        delegate!(self, s => s.thread(room, root, before, limit))
    }

    async fn reply_counts(&self, room: &str, from: u64, to: u64) -> Result<Vec<(u64, u64)>, StoreError> {
        delegate!(self, s => s.reply_counts(room, from, to))
    }

    async fn set_mark(&self, room: &str, user: &str, kind: MarkKind, seq: u64) -> Result<u64, StoreError> {
        delegate!(self, s => s.set_mark(room, user, kind, seq))
    }

    async fn set_marks(&self, room: &str, users: &[String], kind: MarkKind, seq: u64) -> Result<Vec<u64>, StoreError> {
        delegate!(self, s => s.set_marks(room, users, kind, seq))
    }

    async fn react(&self, room: &str, seq: u64, user: &str, emoji: &str, op: ReactionOp) -> Result<(), StoreError> {
        delegate!(self, s => s.react(room, seq, user, emoji, op))
    }

    async fn reactions(&self, room: &str, seq: u64) -> Result<Vec<(String, String)>, StoreError> {
        delegate!(self, s => s.reactions(room, seq))
    }

    async fn reaction_counts(&self, room: &str, from: u64, to: u64, user: &str) -> Result<Vec<ReactionCount>, StoreError> {
        delegate!(self, s => s.reaction_counts(room, from, to, user))
    }

    async fn replace_frame(&self, room: &str, seq: u64, frame: &Bytes) -> Result<bool, StoreError> {
        delegate!(self, s => s.replace_frame(room, seq, frame))
    }

    async fn set_last_seen(&self, user: &str, ts_ms: u64) -> Result<(), StoreError> {
        delegate!(self, s => s.set_last_seen(user, ts_ms))
    }

    async fn last_seen(&self, user: &str) -> Result<Option<u64>, StoreError> {
        delegate!(self, s => s.last_seen(user))
    }

    async fn add_user_room(&self, user: &str, room: &str) -> Result<(), StoreError> {
        delegate!(self, s => s.add_user_room(user, room))
    }

    async fn user_rooms(&self, user: &str) -> Result<Vec<UserRoom>, StoreError> {
        delegate!(self, s => s.user_rooms(user))
    }

    async fn begin_run(&self, node_id: &str) -> Result<bool, StoreError> {
        delegate!(self, s => s.begin_run(node_id))
    }

    async fn end_run(&self, node_id: &str) -> Result<(), StoreError> {
        delegate!(self, s => s.end_run(node_id))
    }
}
