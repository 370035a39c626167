//! The Redis bridge between nodes: cluster-wide sequencing, room pub/sub,
//! presence leases, and catch-up queries.
//!
//! # Shape
//!
//! The bridge runs on one thread with a tokio runtime ([`start`], or
//! [`spawn`] on a runtime the node already has). Shards never touch Redis:
//! they send commands through a [`BridgeHandle`] and read
//! [`BridgeEvent`]s from [`BridgeEvents`], both bounded `tokio::sync`
//! channels that any executor (monoio included) can await.
//!
//! # Sequencing: one script per batch, pub/sub order = seq order
//!
//! In cluster mode the owner shard of a room renders each message's client
//! JSON once, with [`SEQ_PLACEHOLDER`] (`"seq":` + 20 spaces) where the seq
//! goes, and wraps it in a [`PreparedMessage`]: the ordinary mesh frame
//! `Frame::Deliver` (seq 0), plus the byte offsets of the archived `u64`
//! seq and of the 20-space JSON slot. [`BridgeHandle::publish`] sends a
//! batch of one room in one `EVALSHA` of the publish script (batches of
//! different rooms are in flight together), which atomically:
//!
//! 1. `INCRBY chat:{room}:seq n` (and never below the stream's last id);
//! 2. for each message in order, writes its seq into the frame in place:
//!    `struct.pack('<I8', seq)` at the rkyv offset and `%20d` at the JSON
//!    slot (same length, so no offset moves);
//! 3. `XADD chat:{room}:recent MAXLEN ~ recent_len <seq>-0 f <frame>`;
//! 4. `PUBLISH chat:{room}:ch <frame>` (`SPUBLISH` when sharded).
//!
//! Because one script publishes a batch in seq order and scripts run one
//! at a time, every subscriber sees a room's messages in seq order, and
//! the bytes it receives are a valid frame whose payload goes to clients
//! as it is (and whose whole buffer can go over the mesh as it is). The
//! script returns the first seq so the owner can ack its senders.
//!
//! # Keys (all hash-tagged by room: one Redis Cluster slot per room)
//!
//! `chat:{room}:seq` (counter), `chat:{room}:recent` (stream, ids
//! `<seq>-0`), `chat:{room}:ch` (channel), `chat:{room}:presence` (zset
//! `user|node` → lease expiry ms) and `chat:{room}:presence_users` (hash
//! `user` → `<entries>:<since_ms>`).
//!
//! # Subscriptions, reconnects, gaps
//!
//! Shards register with [`BridgeHandle::subscribe`]/`unsubscribe`; the node
//! holds one channel subscription per room while any shard wants it, on a
//! dedicated connection. After a reconnect every subscription is restored
//! and a [`BridgeEvent::Resync`] names the rooms that may have missed
//! messages; a seq that does not follow the previous one yields a
//! [`BridgeEvent::Gap`], and a room's first delivery since it was subscribed
//! says so (`first`: there was nothing to check it against). The node then
//! compares [`BridgeHandle::room_seq`]
//! and fetches [`BridgeHandle::recent_after`], or tells clients `gap`.
//!
//! # Alignment
//!
//! The workspace builds rkyv 0.8 with `unaligned`: archived types have
//! alignment 1 (asserted at compile time in [`wire`]), so a pub/sub
//! buffer is validated and read in place wherever the Redis client's
//! buffer put it; tests decode at odd offsets and from real receives.
//!
//! What must stay true (details in each module):
//! - every queue is bounded and every loss is announced (`Gap`/`Resync`);
//! - bytes from Redis are validated before use and never panic the node;
//! - a publish script is sent at most once (no client-side retry).

mod config;
mod core;
mod error;
mod handle;
pub mod keys;
mod metrics;
mod ops;
mod presence;
mod pump;
mod scripts;
mod subs;
pub mod wire;

pub use self::config::BridgeConfig;
pub use self::core::{spawn, start, Bridge};
pub use self::error::{BridgeError, ErrorSource};
pub use self::handle::{BridgeEvent, BridgeEvents, BridgeHandle, Duplicate, RecentMessage, SeqFloor, SeqRange, Sequenced};
pub use self::metrics::{BridgeMetrics, MetricsSnapshot};
pub use self::wire::{
    decode_incoming, patch_seq, Incoming, PreparedMessage, PresenceNote, PRESENCE_VERSION, SEQ_PLACEHOLDER, SEQ_SLOT_WIDTH,
};
