//! The message store: what a node keeps of its rooms across restarts.
//!
//! What lives here (see DESIGN.md "Storage" and "Life of a message"):
//! - [`MessageStore`], the one trait every backend implements, and the data it
//!   stores ([`StoredMessage`], [`RoomState`], [`HistoryPage`], marks,
//!   reactions, per-user room lists, node runs);
//! - [`embedded`]: SQLite in one data directory, the default, durable across a
//!   kill -9 of the process;
//! - `scylla` (cargo feature `scylla`, on by default): the cluster store, with
//!   its CQL schema and migrations in `storage/schema/`;
//! - `postgres` (cargo feature `postgres`, on by default): a PostgreSQL database
//!   shared by the nodes, with its SQL migrations in `storage/schema/postgres/`;
//! - [`AnyStore`], the enum the node holds, chosen by [`StoreConfig`];
//! - [`service`]: the store thread and its group-commit writer, the only way the
//!   edge's monoio shards reach the store, never blocking them;
//! - [`conformance`]: the test suite every backend must pass.
//!
//! Invariants every backend keeps:
//! - a message is identified by `(room, seq)`; writing it again is not an error
//!   and keeps one copy (ids are fixed before the write, so retries are safe);
//! - `frame` comes back byte for byte as it was written;
//! - marks only move forward;
//! - everything read is bounded: pages and ranges are capped at
//!   [`MAX_PAGE_MESSAGES`], lists at [`MAX_LIST_ITEMS`].
//!
//! Measured (`storebench`, `results/store-embedded.json`; 2-core VM, release,
//! embedded store, WAL + `synchronous=NORMAL`, 200-byte frames spread over
//! 100 rooms, one monoio "shard" keeping two batches in flight through the
//! service): one message per transaction, the baseline, 7.9k msg/s with
//! submit→committed p50 159 µs; `batch_max_messages` 256: 87k msg/s, p50
//! 4.6 ms; 1024: 137k msg/s (17× the baseline), p50 14 ms. Shared,
//! noisy machine: repeated runs moved by up to ~2×.

mod any;
mod config;
pub mod conformance;
pub mod embedded;
mod error;
mod msg_id;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "scylla")]
pub mod scylla;
pub mod service;
mod stats;
mod store;
mod types;

pub use any::{migrate, AnyStore};
pub use config::{StoreConfig, StoreKind};
pub use error::{ErrorSource, Overloaded, StoreError};
pub use msg_id::{MsgId, SmallStr};
pub use service::{spawn, spawn_with, Answer, Completion, Completions, Query, StoreHandle};
pub use stats::{LatencyHistogram, StoreStats, StoreStatsSnapshot};
pub use store::MessageStore;
pub use types::{HistoryPage, MarkKind, ReactionCount, ReactionOp, RoomState, StoredMessage, UserRoom};

/// The most messages one `history` page or one `range_after` call returns; larger limits are cut to this.
pub const MAX_PAGE_MESSAGES: usize = 1000;

/// The most unread messages `user_rooms` counts in one room (a client shows "1000+").
pub const MAX_UNREAD: u64 = 1000;

/// The most items `reactions` and `user_rooms` return.
pub const MAX_LIST_ITEMS: usize = 10_000;
