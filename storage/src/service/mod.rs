//! The store service: one OS thread owning a tokio runtime and the store, fed by the edge's shards without blocking them.
//!
//! Shape (DESIGN.md "Threads of one node", "Life of a message"):
//! - shards call [`StoreHandle::write`] / [`StoreHandle::query`]: an admission
//!   check on an atomic counter (the bound), then a push onto an unbounded
//!   channel that never blocks; a full queue answers [`Overloaded`];
//! - the store thread runs the group-commit `writer` (batches written strictly
//!   one after another, so per-room order is the submit order) and the query
//!   `queries` lanes (bounded concurrency, same room/user → same lane, in order);
//! - results go back to the submitting shard's [`Completions`], which wakes it.
//!
//! Invariants:
//! - every admitted write and query gets exactly one completion, an error one
//!   if it could not be done (failed batch after retries, shutdown) — never a silent drop;
//! - a `Written { result: Ok }` is sent only after the batch holding it is
//!   committed, so a query submitted after it sees the message;
//! - `shutdown` flushes everything admitted before it, then calls `end_run`.

mod completions;
mod queries;
mod thread;
mod writer;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

use completions::CompletionQueue;
pub use completions::Completions;

use crate::{
    HistoryPage, MarkKind, MessageStore, Overloaded, ReactionCount, ReactionOp, RoomState, StoreConfig, StoreError, StoreStats,
    StoredMessage, UserRoom,
};

/// A read or a small update, answered by an [`Answer`] of the matching variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// [`MessageStore::room_state`] → [`Answer::RoomState`].
    RoomState { room: String, new_epoch: u64 },
    /// [`MessageStore::set_epoch`] → [`Answer::EpochSet`].
    SetEpoch { room: String, epoch: u64 },
    /// [`MessageStore::history`] → [`Answer::History`].
    History { room: String, before: Option<u64>, limit: usize },
    /// [`MessageStore::range_after`] → [`Answer::RangeAfter`].
    RangeAfter { room: String, after: u64, limit: usize },
    /// [`MessageStore::thread`] → [`Answer::History`].
    Thread {
        room: String,
        root: u64,
        before: Option<u64>,
        limit: usize,
    },
    /// [`MessageStore::reply_counts`] → [`Answer::ReplyCounts`].
    ReplyCounts { room: String, from: u64, to: u64 },
    /// [`MessageStore::find_client_id`] → [`Answer::ClientId`].
    FindClientId { room: String, sender: String, client_id: String },
    /// [`MessageStore::set_mark`] → [`Answer::Mark`].
    SetMark {
        room: String,
        user: String,
        kind: MarkKind,
        seq: u64,
    },
    /// [`MessageStore::set_marks`] → [`Answer::Marks`].
    SetMarks {
        room: String,
        users: Vec<String>,
        kind: MarkKind,
        seq: u64,
    },
    /// [`MessageStore::react`] → [`Answer::Reacted`].
    React {
        room: String,
        seq: u64,
        user: String,
        emoji: String,
        op: ReactionOp,
    },
    /// [`MessageStore::reactions`] → [`Answer::Reactions`].
    Reactions { room: String, seq: u64 },
    /// [`MessageStore::reaction_counts`] → [`Answer::ReactionCounts`].
    ReactionCounts { room: String, from: u64, to: u64, user: String },
    /// [`MessageStore::replace_frame`] → [`Answer::Replaced`].
    ReplaceFrame { room: String, seq: u64, frame: Bytes },
    /// [`MessageStore::set_last_seen`] → [`Answer::LastSeenSet`].
    SetLastSeen { user: String, ts_ms: u64 },
    /// [`MessageStore::last_seen`] → [`Answer::LastSeen`].
    LastSeen { user: String },
    /// [`MessageStore::add_user_room`] → [`Answer::UserRoomAdded`].
    AddUserRoom { user: String, room: String },
    /// [`MessageStore::user_rooms`] → [`Answer::UserRooms`].
    UserRooms { user: String },
}

impl Query {
    /// The key that orders queries: queries with the same key run one after another in submit order.
    fn order_key(&self) -> &str {
        match self {
            Self::SetMark { user, .. }
            | Self::AddUserRoom { user, .. }
            | Self::UserRooms { user }
            | Self::SetLastSeen { user, .. }
            | Self::LastSeen { user } => user,
            Self::RoomState { room, .. }
            | Self::SetEpoch { room, .. }
            | Self::History { room, .. }
            | Self::RangeAfter { room, .. }
            | Self::FindClientId { room, .. }
            | Self::React { room, .. }
            | Self::Reactions { room, .. }
            | Self::ReactionCounts { room, .. }
            | Self::SetMarks { room, .. }
            | Self::Thread { room, .. }
            | Self::ReplyCounts { room, .. }
            | Self::ReplaceFrame { room, .. } => room,
        }
    }
}

/// The result of a [`Query`], one variant per query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The room's epoch and last seq.
    RoomState(RoomState),
    /// The epoch was set.
    EpochSet,
    /// A page of history.
    History(HistoryPage),
    /// Messages after a seq.
    RangeAfter(Vec<StoredMessage>),
    /// The message with that client id, if any.
    ClientId(Option<StoredMessage>),
    /// The resulting mark.
    Mark(u64),
    /// The resulting marks, one per user asked.
    Marks(Vec<u64>),
    /// The reaction was added or removed.
    Reacted,
    /// `(emoji, user)` pairs.
    Reactions(Vec<(String, String)>),
    /// Per message and emoji: how many reacted, and whether the asking user did.
    ReactionCounts(Vec<ReactionCount>),
    /// `(root seq, replies)` of the messages with replies.
    ReplyCounts(Vec<(u64, u64)>),
    /// Whether a stored message's frame was replaced.
    Replaced(bool),
    /// The last-seen time was stored.
    LastSeenSet,
    /// When the user was last seen, if ever.
    LastSeen(Option<u64>),
    /// The room was added to the user's list.
    UserRoomAdded,
    /// The user's rooms with marks.
    UserRooms(Vec<UserRoom>),
}

/// What the store thread sends back to the submitting shard.
#[derive(Debug, Clone)]
pub enum Completion {
    /// The write with this ticket is committed (`Ok`) or failed after the retries.
    Written { ticket: u64, result: Result<(), StoreError> },
    /// The query with this ticket was answered.
    Answered { ticket: u64, result: Result<Answer, StoreError> },
}

impl Completion {
    /// The ticket given at submission.
    pub fn ticket(&self) -> u64 {
        match self {
            Self::Written { ticket, .. } | Self::Answered { ticket, .. } => *ticket,
        }
    }
}

// `Shutdown` is sent once: boxing `Write` to shrink the enum would allocate per message.
#[allow(clippy::large_enum_variant)]
enum WriteCmd {
    Write { shard: usize, msg: StoredMessage, ticket: u64 },
    Shutdown,
}

enum QueryCmd {
    Query { shard: usize, query: Query, ticket: u64 },
    Shutdown,
}

/// What the writer and the query lanes need to deliver results.
struct Outbox {
    queues: Vec<Arc<CompletionQueue>>,
    stats: Arc<StoreStats>,
}

/// The store thread and the channel on which it reports how `end_run` went.
type StoreThread = (JoinHandle<()>, std::sync::mpsc::Receiver<Result<(), StoreError>>);

struct Shared {
    write_tx: UnboundedSender<WriteCmd>,
    /// Wakes the writer when a write fills its batch (it sleeps to the batch's deadline).
    fill: Arc<writer::Fill>,
    query_tx: UnboundedSender<QueryCmd>,
    stats: Arc<StoreStats>,
    shards: usize,
    queue_capacity: u64,
    query_queue_capacity: u64,
    closed: AtomicBool,
    shutdown_requested: Arc<AtomicBool>,
    shutdown_timeout: Duration,
    previous_run_clean: bool,
    thread: Mutex<Option<StoreThread>>,
}

/// The shards' way into the store. Cheap to clone, `Send + Sync`; `write` and `query` never block.
#[derive(Clone)]
pub struct StoreHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for StoreHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreHandle")
            .field("shards", &self.shared.shards)
            .field("stats", &self.stats().snapshot())
            .finish()
    }
}

/// Takes one slot of a bounded queue counted by `depth`, or counts an overload.
fn admit(depth: &AtomicU64, capacity: u64, stats: &StoreStats) -> Result<(), Overloaded> {
    if depth.fetch_add(1, Ordering::Relaxed) >= capacity {
        depth.fetch_sub(1, Ordering::Relaxed);
        stats.overloaded_total.fetch_add(1, Ordering::Relaxed);
        return Err(Overloaded);
    }
    Ok(())
}

impl StoreHandle {
    /// Queues `msg` for the next batch; `Written { ticket }` arrives on `shard`'s [`Completions`] once committed.
    /// `Err(Overloaded)` when `queue_capacity` writes are waiting or the store is shutting down.
    ///
    /// # Panics
    /// If `shard` is not below the `shards` given to [`spawn`] (a caller bug, not a runtime condition).
    pub fn write(&self, shard: usize, msg: StoredMessage, ticket: u64) -> Result<(), Overloaded> {
        let s = &self.shared;
        assert!(
            shard < s.shards,
            "store write from shard {shard}, but the store was spawned for {} shards",
            s.shards
        );
        if s.closed.load(Ordering::Acquire) {
            return Err(Overloaded);
        }
        admit(&s.stats.write_queue_depth, s.queue_capacity, &s.stats)?;
        if s.write_tx.send(WriteCmd::Write { shard, msg, ticket }).is_err() {
            // The store thread has stopped; nothing will complete this write.
            s.stats.write_queue_depth.fetch_sub(1, Ordering::Relaxed);
            return Err(Overloaded);
        }
        s.fill.queued(s.stats.write_queue_depth.load(Ordering::SeqCst));
        Ok(())
    }

    /// Queues a query; `Answered { ticket }` arrives on `shard`'s [`Completions`].
    /// `Err(Overloaded)` when `query_queue_capacity` queries are waiting or running, or the store is shutting down.
    ///
    /// # Panics
    /// If `shard` is not below the `shards` given to [`spawn`].
    pub fn query(&self, shard: usize, query: Query, ticket: u64) -> Result<(), Overloaded> {
        let s = &self.shared;
        assert!(
            shard < s.shards,
            "store query from shard {shard}, but the store was spawned for {} shards",
            s.shards
        );
        if s.closed.load(Ordering::Acquire) {
            return Err(Overloaded);
        }
        admit(&s.stats.query_queue_depth, s.query_queue_capacity, &s.stats)?;
        if s.query_tx.send(QueryCmd::Query { shard, query, ticket }).is_err() {
            s.stats.query_queue_depth.fetch_sub(1, Ordering::Relaxed);
            return Err(Overloaded);
        }
        Ok(())
    }

    /// The service's metrics.
    pub fn stats(&self) -> &StoreStats {
        &self.shared.stats
    }

    /// Whether the node's previous run ended cleanly (`begin_run` at spawn); false means an unclean restart.
    pub fn previous_run_clean(&self) -> bool {
        self.shared.previous_run_clean
    }

    /// Stops taking requests, commits everything already queued, answers queued queries, calls `end_run`,
    /// and joins the store thread, waiting at most `shutdown_timeout_ms`. A second call returns `Ok` at once.
    pub fn shutdown(&self) -> Result<(), StoreError> {
        let s = &self.shared;
        if s.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        s.shutdown_requested.store(true, Ordering::Release);
        // Send errors mean the thread is already gone; the join below reports it.
        let _ = s.write_tx.send(WriteCmd::Shutdown);
        // The writer may be sleeping to a batch's deadline, off the channel.
        s.fill.wake();
        let _ = s.query_tx.send(QueryCmd::Shutdown);
        let Some((join, done)) = s.thread.lock().unwrap_or_else(PoisonError::into_inner).take() else {
            return Ok(());
        };
        match done.recv_timeout(s.shutdown_timeout) {
            Ok(end_run) => {
                join.join()
                    .map_err(|_| StoreError::Internal("store thread panicked during shutdown".into()))?;
                end_run
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(StoreError::Internal(format!(
                "store thread did not stop within {} ms; left running",
                s.shutdown_timeout.as_millis()
            ))),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let _ = join.join();
                Err(StoreError::Internal("store thread panicked".into()))
            }
        }
    }
}

/// Starts the store thread with an already-open store. See [`spawn_with`].
pub fn spawn<S: MessageStore>(store: S, cfg: &StoreConfig, shards: usize) -> Result<(StoreHandle, Vec<Completions>), StoreError> {
    spawn_with(move || std::future::ready(Ok(store)), cfg, shards)
}

/// Starts the store thread, opening the store inside its runtime with `open` (the Scylla driver's
/// background tasks must live on the runtime that uses the session). Calls `begin_run(cfg.node_id)`
/// before returning; returns the handle and one [`Completions`] per shard (index = shard).
pub fn spawn_with<S, F, Fut>(open: F, cfg: &StoreConfig, shards: usize) -> Result<(StoreHandle, Vec<Completions>), StoreError>
where
    S: MessageStore,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<S, StoreError>>,
{
    cfg.validate()?;
    if shards == 0 {
        return Err(StoreError::Config("the store needs at least one shard to answer".into()));
    }
    let stats = Arc::new(StoreStats::default());
    let queues: Vec<Arc<CompletionQueue>> = (0..shards).map(|_| Arc::new(CompletionQueue::default())).collect();
    let (write_tx, write_rx) = unbounded_channel();
    let (query_tx, query_rx) = unbounded_channel();
    let shutdown_requested = Arc::new(AtomicBool::new(false));
    let fill = Arc::new(writer::Fill::default());
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
    let ctx = thread::Ctx {
        writer: writer::Settings::from_config(cfg),
        query_concurrency: cfg.query_concurrency,
        node_id: cfg.node_id.clone(),
        outbox: Arc::new(Outbox {
            queues: queues.clone(),
            stats: Arc::clone(&stats),
        }),
        shutdown_requested: Arc::clone(&shutdown_requested),
        fill: Arc::clone(&fill),
    };
    let join = std::thread::Builder::new()
        .name("store".into())
        .spawn(move || thread::main(open, ctx, write_rx, query_rx, ready_tx, done_tx))
        .map_err(|e| StoreError::Internal(format!("cannot start the store thread: {e}")))?;
    let previous_run_clean = match ready_rx.recv() {
        Ok(Ok(clean)) => clean,
        Ok(Err(e)) => {
            let _ = join.join();
            return Err(e);
        }
        Err(_) => {
            let _ = join.join();
            return Err(StoreError::Internal("store thread died while starting".into()));
        }
    };
    let shared = Shared {
        write_tx,
        fill,
        query_tx,
        stats,
        shards,
        queue_capacity: cfg.queue_capacity as u64,
        query_queue_capacity: cfg.query_queue_capacity as u64,
        closed: AtomicBool::new(false),
        shutdown_requested,
        shutdown_timeout: Duration::from_millis(cfg.shutdown_timeout_ms),
        previous_run_clean,
        thread: Mutex::new(Some((join, done_rx))),
    };
    let completions = queues.into_iter().map(Completions::new).collect();
    Ok((StoreHandle { shared: Arc::new(shared) }, completions))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clone_send_sync<T: Clone + Send + Sync + 'static>() {}
    fn send<T: Send + 'static>() {}

    #[test]
    fn handles_cross_threads() {
        clone_send_sync::<StoreHandle>();
        send::<Completions>();
        send::<Completion>();
    }

    #[test]
    fn order_keys_follow_rooms_and_users() {
        let mark = Query::SetMark {
            room: "r".into(),
            user: "u".into(),
            kind: MarkKind::Read,
            seq: 1,
        };
        assert_eq!(mark.order_key(), "u", "marks are read back through the user's room list");
        assert_eq!(Query::UserRooms { user: "u".into() }.order_key(), "u");
        assert_eq!(Query::Reactions { room: "r".into(), seq: 1 }.order_key(), "r");
    }
}
