//! The chat engine: chat logic that holds no sockets, no runtime, no clock
//! and no spawned tasks, written once for both sequencer modes (a single
//! node, or a cluster through Redis).
//!
//! What lives here (ARCHITECTURE.md, "Where the engine goes next", says
//! what moves in next):
//! - `owner`: the local sequencer, the owner side of a shard's rooms on a
//!   single node (events in with `now_ms`, effects pulled with `poll()`),
//!   answering member shards as Redis does in a cluster, with its
//!   deterministic harness;
//! - `publisher`: the Redis sequencer's owner side (a room's sends batched
//!   to Redis, one batch in flight, acks with the seq Redis assigned);
//! - `subscriber`: the member side, one code for both sequencers (a shard's
//!   room feeds and its connections' joins: subscribe, learn the seq, fetch,
//!   answer in one go; "join cancelled" is decided here only);
//! - `ring`: the recent ring of a room, one type for the owner's room state
//!   and a member shard's feed;
//! - `pump`: a cluster node's pump (the bridge's events for the node's
//!   shards: forward, recover a gap from the stream, resync, reset, presence);
//! - `reads`: a cluster's reads from Redis and the shared store (history,
//!   threads, presence, a join's catch-up): the chain of calls each makes,
//!   and the one place that merges the stream with the store;
//! - `cluster_changes`: a cluster's edits, deletes and reactions on a shared
//!   store (a room's queue, its lock in Redis with backoff, the wait for a
//!   message not stored yet, the write, the event's publish, the answer);
//! - `cluster_state`: a user's state in a cluster on a shared store
//!   (memberships and `sync`, read and delivered marks with their receipts,
//!   last seen): the chain of Redis and store calls each makes;
//! - `presence_counts`: a cluster's coalesced presence counts (the pump's
//!   half of what a single node's owner does from its roster);
//! - `catch_up`: the one merge that catches a member up (a read, then the
//!   ring, `gap` for the rest);
//! - `feed`: a member shard's feed of a room (cursor, epoch, ring): the
//!   dedupe of re-deliveries and the catch-up of a joining member;
//! - `session`: a connection's session (who, its rooms, its rate) and the
//!   checks every client frame passes before the shell acts on it;
//! - `liveness`: a connection's once-a-second check (an expired session
//!   closed, a stalled write cut, a silent connection pinged, then closed);
//! - `failure`: refusals and dependency failures with their types kept, and
//!   the one retry policy (`retryable()` decides, one table of hints).

pub mod catch_up;
pub mod change_rules;
pub mod cluster_changes;
#[cfg(test)]
mod cluster_harness;
pub mod cluster_state;
pub mod failure;
pub mod feed;
#[cfg(test)]
mod harness_sessions;
pub mod liveness;
pub mod owner;
pub mod presence_counts;
pub mod publisher;
pub mod pump;
pub mod reads;
pub mod ring;
pub mod session;
pub mod subscriber;
pub mod typing;

pub use catch_up::Piece;
pub use failure::{Busy, Failure};
pub use feed::RoomFeed;
pub use ring::RecentRing;
