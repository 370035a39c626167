//! The embedded store: SQLite (bundled) in one data directory, file [`DB_FILE`].
//!
//! Threads: SQLite calls block, so every call runs on tokio's blocking pool
//! (`spawn_blocking`) and the async runtime of the store thread never waits on
//! the disk. One writer connection (SQLite allows one writer at a time) takes
//! every write and read-modify-write; `read_connections` read-only connections
//! serve plain reads, which WAL mode lets run while a write transaction is
//! open, so history reads never wait for a batch commit.
//!
//! Durability: see [`schema`] — WAL + `synchronous=NORMAL` survives kill -9 of
//! the process with every committed batch intact; FULL is an option for power loss.
//!
//! The methods must be called from inside a tokio runtime (they use
//! `spawn_blocking`); the store thread of [`crate::service`] is one.

mod checkpoint;
pub mod heap;
mod ops;
pub mod schema;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use rusqlite::Connection;

pub use schema::{DB_FILE, SCHEMA_VERSION};

use crate::{HistoryPage, MarkKind, MessageStore, ReactionCount, ReactionOp, RoomState, StoreError, StoredMessage, UserRoom};

/// How to open the embedded store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedOptions {
    /// `synchronous=FULL` (fsync per commit, survives power loss) instead of NORMAL (survives process crash).
    pub sync_full: bool,
    /// Read-only connections for plain reads (at least 1).
    pub read_connections: usize,
    /// SQLite page cache of all connections together, KiB: the writer gets half, the read
    /// connections share the other half. Each cache fills up to its share and stays there.
    pub cache_kib: u64,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            sync_full: false,
            read_connections: 4,
            cache_kib: 128 * 1024,
        }
    }
}

struct Inner {
    path: PathBuf,
    // Declared first so it stops before the connections close.
    _checkpointer: checkpoint::Checkpointer,
    writer: Mutex<Connection>,
    /// The writer's commits and bytes, followed by the checkpointer.
    growth: Arc<checkpoint::WalGrowth>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
}

/// The SQLite-backed [`MessageStore`]. Cheap to clone (shares its connections).
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").field("path", &self.inner.path).finish()
    }
}

impl EmbeddedStore {
    /// Opens (creating the directory and file if needed, migrating the schema) the store in `data_dir`.
    /// Blocking: call it before the runtime starts or from a blocking thread.
    pub fn open(data_dir: &Path, opts: &EmbeddedOptions) -> Result<Self, StoreError> {
        heap::install();
        std::fs::create_dir_all(data_dir).map_err(|e| StoreError::io("create data_dir", e))?;
        let path = data_dir.join(DB_FILE);
        let readers = opts.read_connections.max(1);
        let (writer_cache, reader_cache) = schema::cache_shares(opts.cache_kib, readers);
        let writer = schema::open_writer(&path, opts.sync_full, writer_cache)?;
        let readers = (0..readers)
            .map(|_| schema::open_reader(&path, reader_cache).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        let growth = Arc::new(checkpoint::WalGrowth::default());
        let checkpointer = checkpoint::Checkpointer::start(&path, Arc::clone(&growth))?;
        let inner = Inner {
            path,
            _checkpointer: checkpointer,
            writer: Mutex::new(writer),
            growth,
            readers,
            next_reader: AtomicUsize::new(0),
        };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// Bytes SQLite holds on the heap right now, in this process (all its connections: page
    /// caches, statements, schemas). The page caches are bounded by [`EmbeddedOptions::cache_kib`].
    pub fn memory_used() -> u64 {
        // SAFETY: sqlite3_memory_used reads SQLite's global counter; it takes no arguments and
        // is safe to call from any thread at any time.
        let n = unsafe { rusqlite::ffi::sqlite3_memory_used() };
        u64::try_from(n).unwrap_or(0)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on the writer connection on a blocking thread.
    async fn on_writer<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.on_writer_sized(0, f).await
    }

    /// Runs `f` on the writer connection on a blocking thread, counting its commit and the
    /// `bytes` of messages it writes for the checkpointer.
    async fn on_writer_sized<T, F>(&self, bytes: u64, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        run_blocking(move || {
            // A poisoned lock means an earlier call panicked; SQLite rolled its transaction back when the
            // `Transaction` was dropped during unwinding, so the connection is still usable.
            let mut conn = inner.writer.lock().unwrap_or_else(PoisonError::into_inner);
            let result = f(&mut conn);
            inner.growth.wrote(bytes);
            result
        })
        .await
    }

    /// Runs `f` on one of the read connections (round robin) on a blocking thread.
    async fn on_reader<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        run_blocking(move || {
            let i = inner.next_reader.fetch_add(1, Ordering::Relaxed) % inner.readers.len();
            // Poison: as in `on_writer`, reads leave nothing half-done behind.
            let conn = inner.readers[i].lock().unwrap_or_else(PoisonError::into_inner);
            f(&conn)
        })
        .await
    }
}

/// The version of the SQLite library compiled into this binary (bundled).
pub fn sqlite_version() -> &'static str {
    rusqlite::version()
}

async fn run_blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, StoreError> + Send + 'static) -> Result<T, StoreError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) => Err(StoreError::Internal(format!("embedded store call failed: {e}"))),
    }
}

impl MessageStore for EmbeddedStore {
    async fn write_batch(&self, msgs: &[StoredMessage]) -> Result<(), StoreError> {
        if msgs.is_empty() {
            return Ok(());
        }
        // The closure must own its input: copy the batch (the frames are shared `Bytes`, not copied).
        let bytes = msgs.iter().map(|m| m.frame.len() as u64).sum();
        let msgs = msgs.to_vec();
        self.on_writer_sized(bytes, move |c| ops::write_batch(c, &msgs)).await
    }

    async fn room_state(&self, room: &str, new_epoch: u64) -> Result<RoomState, StoreError> {
        let room = room.to_owned();
        self.on_writer(move |c| ops::room_state(c, &room, new_epoch)).await
    }

    async fn set_epoch(&self, room: &str, epoch: u64) -> Result<(), StoreError> {
        let room = room.to_owned();
        self.on_writer(move |c| ops::set_epoch(c, &room, epoch)).await
    }

    async fn history(&self, room: &str, before: Option<u64>, limit: usize) -> Result<HistoryPage, StoreError> {
        let room = room.to_owned();
        self.on_reader(move |c| ops::history(c, &room, before, limit)).await
    }

    async fn range_after(&self, room: &str, after: u64, limit: usize) -> Result<Vec<StoredMessage>, StoreError> {
        let room = room.to_owned();
        self.on_reader(move |c| ops::range_after(c, &room, after, limit)).await
    }

    async fn thread(&self, room: &str, root: u64, before: Option<u64>, limit: usize) -> Result<HistoryPage, StoreError> {
        let room = room.to_owned();
        self.on_reader(move |c| ops::thread(c, &room, root, before, limit)).await
    }

    async fn reply_counts(&self, room: &str, from: u64, to: u64) -> Result<Vec<(u64, u64)>, StoreError> {
        let room = room.to_owned();
        self.on_reader(move |c| ops::reply_counts(c, &room, from, to)).await
    }

    async fn find_client_id(&self, room: &str, sender: &str, client_id: &str) -> Result<Option<StoredMessage>, StoreError> {
        let (room, sender, client_id) = (room.to_owned(), sender.to_owned(), client_id.to_owned());
        self.on_reader(move |c| ops::find_client_id(c, &room, &sender, &client_id)).await
    }

    async fn set_mark(&self, room: &str, user: &str, kind: MarkKind, seq: u64) -> Result<u64, StoreError> {
        let (room, user) = (room.to_owned(), user.to_owned());
        self.on_writer(move |c| ops::set_mark(c, &room, &user, kind, seq)).await
    }

    async fn set_marks(&self, room: &str, users: &[String], kind: MarkKind, seq: u64) -> Result<Vec<u64>, StoreError> {
        let (room, users) = (room.to_owned(), users.to_vec());
        self.on_writer(move |c| ops::set_marks(c, &room, &users, kind, seq)).await
    }

    async fn react(&self, room: &str, seq: u64, user: &str, emoji: &str, op: ReactionOp) -> Result<(), StoreError> {
        let (room, user, emoji) = (room.to_owned(), user.to_owned(), emoji.to_owned());
        self.on_writer(move |c| ops::react(c, &room, seq, &user, &emoji, op)).await
    }

    async fn reactions(&self, room: &str, seq: u64) -> Result<Vec<(String, String)>, StoreError> {
        let room = room.to_owned();
        self.on_reader(move |c| ops::reactions(c, &room, seq)).await
    }

    async fn reaction_counts(&self, room: &str, from: u64, to: u64, user: &str) -> Result<Vec<ReactionCount>, StoreError> {
        let (room, user) = (room.to_owned(), user.to_owned());
        self.on_reader(move |c| ops::reaction_counts(c, &room, from, to, &user)).await
    }

    async fn replace_frame(&self, room: &str, seq: u64, frame: &Bytes) -> Result<bool, StoreError> {
        let (room, frame) = (room.to_owned(), frame.clone());
        self.on_writer(move |c| ops::replace_frame(c, &room, seq, &frame)).await
    }

    async fn set_last_seen(&self, user: &str, ts_ms: u64) -> Result<(), StoreError> {
        let user = user.to_owned();
        self.on_writer(move |c| ops::set_last_seen(c, &user, ts_ms)).await
    }

    async fn last_seen(&self, user: &str) -> Result<Option<u64>, StoreError> {
        let user = user.to_owned();
        self.on_reader(move |c| ops::last_seen(c, &user)).await
    }

    async fn add_user_room(&self, user: &str, room: &str) -> Result<(), StoreError> {
        let (user, room) = (user.to_owned(), room.to_owned());
        self.on_writer(move |c| ops::add_user_room(c, &user, &room)).await
    }

    async fn user_rooms(&self, user: &str) -> Result<Vec<UserRoom>, StoreError> {
        let user = user.to_owned();
        self.on_reader(move |c| ops::user_rooms(c, &user)).await
    }

    async fn begin_run(&self, node_id: &str) -> Result<bool, StoreError> {
        let node_id = node_id.to_owned();
        self.on_writer(move |c| ops::begin_run(c, &node_id)).await
    }

    async fn end_run(&self, node_id: &str) -> Result<(), StoreError> {
        let node_id = node_id.to_owned();
        self.on_writer(move |c| ops::set_run_open(c, &node_id, false)).await
    }
}
