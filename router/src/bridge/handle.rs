//! The bridge as callers see it: a cloneable [`BridgeHandle`] that sends
//! commands in, and [`BridgeEvents`] that yields what arrived from Redis.
//!
//! Both sides are bounded `tokio::sync` channels, which need no tokio
//! runtime on the caller's side: a monoio shard (or any executor, or a
//! plain thread) can await them. Only the bridge's own tasks need tokio.
//!
//! What must stay true: every queue here is bounded (`command_queue_len`,
//! `event_queue_len`); a full command queue makes callers wait, a full
//! event queue makes the bridge stop reading, and the loss that follows is
//! reported as a `Resync`, never silent.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::core::Shared;
use super::metrics::MetricsSnapshot;
use super::{BridgeError, PreparedMessage};

/// The answer channel of one command.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, BridgeError>>;

/// Where a room's sequence may restart when Redis has none for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqFloor {
    /// No shared store: the sequence starts at 1 (past the stream, if it survived).
    Off,
    /// A shared store whose highest seq the node has not read: refuse the publish.
    Unknown,
    /// The store's highest seq: the sequence continues after it.
    At(u64),
}

/// A request to the bridge thread.
pub(crate) enum Command {
    Publish {
        room: String,
        batch: Vec<PreparedMessage>,
        also: Vec<String>,
        floor: SeqFloor,
        notice: Option<Bytes>,
        reply: Reply<SeqRange>,
    },
    Subscribe {
        room: String,
        shard: u16,
        reply: Reply<()>,
    },
    Unsubscribe {
        room: String,
        shard: u16,
    },
    Presence {
        room: String,
        user: String,
        join: bool,
        reply: Reply<()>,
    },
    PresenceOnline {
        room: String,
        reply: Reply<Vec<(String, u64)>>,
    },
    RoomSeq {
        room: String,
        reply: Reply<u64>,
    },
    Subscribers {
        name: String,
        reply: Reply<u64>,
    },
    RecentAfter {
        room: String,
        after: u64,
        limit: u32,
        reply: Reply<Vec<RecentMessage>>,
    },
    Notify {
        room: String,
        frame: Bytes,
    },
    PublishEvent {
        room: String,
        frame: Bytes,
        reply: Reply<()>,
    },
    Lock {
        room: String,
        token: u64,
        ttl_ms: u64,
        reply: Reply<bool>,
    },
    Unlock {
        room: String,
        token: u64,
        reply: Reply<()>,
    },
    Shutdown {
        reply: Reply<()>,
    },
}

/// The seqs one publish got. The batch's new messages got `first..first + count`, consecutive,
/// in batch order; the messages listed in `duplicates` (dedupe keys seen before) got none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqRange {
    /// The first new message's seq.
    pub first: u64,
    /// How many new messages.
    pub count: u32,
    /// The batch's messages sequenced before (by any node), by batch index, ascending.
    pub duplicates: Vec<Duplicate>,
}

/// A message of a batch whose dedupe key was sequenced before: not published again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    /// Its index in the batch.
    pub index: u32,
    /// The seq the original got.
    pub seq: u64,
    /// The receipt the original was published with.
    pub receipt: String,
    /// The original `Deliver` frame, if the room's stream still holds it.
    pub frame: Option<Bytes>,
}

/// What one message of a published batch got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sequenced<'a> {
    /// A new seq: the message was published.
    New(u64),
    /// Sequenced before: nothing was published.
    Duplicate(&'a Duplicate),
}

impl SeqRange {
    /// A range of `count` new messages from `first`, none a duplicate.
    pub fn new(first: u64, count: u32) -> Self {
        Self {
            first,
            count,
            duplicates: Vec::new(),
        }
    }

    /// Each new message's seq, in batch order.
    pub fn iter(&self) -> impl Iterator<Item = u64> {
        self.first..self.first + u64::from(self.count)
    }

    /// What each message of the batch got, in batch order (`count` plus the duplicates).
    pub fn outcomes(&self) -> impl Iterator<Item = Sequenced<'_>> {
        let mut fresh = self.iter();
        let mut dups = self.duplicates.iter().peekable();
        (0..self.count + self.duplicates.len() as u32).map_while(move |i| match dups.next_if(|d| d.index == i) {
            Some(d) => Some(Sequenced::Duplicate(d)),
            None => fresh.next().map(Sequenced::New),
        })
    }
}

/// A message read back from a room's recent-history stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecentMessage {
    /// Its seq.
    pub seq: u64,
    /// The client JSON (a view into `frame`).
    pub payload: Bytes,
    /// The whole `Deliver` frame as published.
    pub frame: Bytes,
}

/// What the bridge tells the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BridgeEvent {
    /// A sequenced room message, in seq order per room. `frame` is the
    /// received `Deliver` frame (forward it over the mesh as is) and
    /// `payload` the client JSON inside it, both without copying.
    Deliver {
        /// The room.
        room: String,
        /// The message's seq.
        seq: u64,
        /// The client JSON, ready to write to sockets.
        payload: Bytes,
        /// The validated `Deliver` frame it came in.
        frame: Bytes,
        /// This node's shards subscribed to the room.
        shards: Arc<[u16]>,
        /// The first message of `room` the bridge got since the node subscribed it: there was
        /// no seq to check it against (a gap before it is not told).
        first: bool,
    },
    /// The next message of `room` was not `expected`: messages
    /// `expected..got` were missed (fetch them with `recent_after`, or tell
    /// clients `gap`). `got < expected` means the room's sequence went
    /// back: Redis lost its data, a new epoch.
    Gap {
        /// The room.
        room: String,
        /// The seq that should have come next.
        expected: u64,
        /// The seq that came.
        got: u64,
    },
    /// Messages of these rooms may have been missed (Redis reconnect, or
    /// the event reader fell behind): compare each room's seq
    /// (`room_seq`) with the last one delivered.
    Resync {
        /// Every room subscribed at the time.
        rooms: Vec<String>,
        /// Redis lost its data meanwhile (its sentinel key is gone): every room's sequence
        /// restarted, or continues after a shared store's floor; members must be told.
        lost: bool,
    },
    /// A sequenced message of a room published on a user's channel too (a DM): for that
    /// user's connections on this node, whatever rooms they joined. A user's channel
    /// carries several rooms, so no gap check is made on it; each room's messages come in
    /// seq order.
    UserDeliver {
        /// The user (the name subscribed was [`keys::user`]`(user)`).
        user: String,
        /// The message's room.
        room: String,
        /// Its seq.
        seq: u64,
        /// The client JSON (a view into `frame`).
        payload: Bytes,
        /// This node's shards subscribed to the user's name.
        shards: Arc<[u16]>,
    },
    /// An event without a seq (typing) for `room`'s members: `frame` is the received
    /// mesh `Event` frame (forward it over the mesh as is).
    Event {
        /// The room.
        room: String,
        /// The validated `Event` frame it came in.
        frame: Bytes,
        /// This node's shards subscribed to the room.
        shards: Arc<[u16]>,
    },
    /// An operator disconnects `user` (published on the user's channel by the node that was
    /// asked): `frame` is the received mesh `Disconnect` frame (forward it as is).
    Disconnect {
        /// The user.
        user: String,
        /// The validated `Disconnect` frame.
        frame: Bytes,
        /// This node's shards subscribed to the user's name.
        shards: Arc<[u16]>,
    },
    /// A user came online in a room (first entry on any node) or went
    /// offline (last entry left or expired).
    PresenceChanged {
        /// The room.
        room: String,
        /// The user.
        user: String,
        /// The node whose entry changed.
        node: String,
        /// Whether the user is now online.
        online: bool,
    },
}

/// Sends commands to the bridge. Cheap to clone; `Send + Sync`. The
/// bridge stops when every handle is dropped (abruptly: presence entries
/// stay until their leases expire) or on [`Self::shutdown`].
#[derive(Clone)]
pub struct BridgeHandle {
    pub(crate) tx: mpsc::Sender<Command>,
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for BridgeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BridgeHandle")
            .field("node", &self.shared.config.node_id)
            .field("ready", &self.is_ready())
            .finish_non_exhaustive()
    }
}

impl BridgeHandle {
    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, BridgeError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| BridgeError::Stopped)?;
        rx.await.map_err(|_| BridgeError::Stopped)?
    }

    /// Sequences and publishes `batch` (at most `batch_max` messages, all
    /// of `room`) with one script call, and returns the seqs it got.
    ///
    /// Batches of one room are sequenced in the order Redis runs them:
    /// await one before publishing the next to keep a room's order.
    /// Fails fast with [`BridgeError::Unavailable`] while Redis is
    /// unreachable. The script is sent at most once: after an I/O error or
    /// a timeout it may or may not have run (then watch the room's stream).
    pub async fn publish(&self, room: &str, batch: Vec<PreparedMessage>) -> Result<SeqRange, BridgeError> {
        self.publish_also(room, batch, Vec::new()).await
    }

    /// [`Self::publish`], and each message is also published, in the same script call and
    /// order, on the channels of `also` (at most two names such as [`keys::user`]'s: a DM
    /// room's users), so a node subscribed to one of those names gets the room's messages
    /// in seq order as [`BridgeEvent::UserDeliver`].
    pub async fn publish_also(&self, room: &str, batch: Vec<PreparedMessage>, also: Vec<String>) -> Result<SeqRange, BridgeError> {
        self.publish_with(room, batch, also, SeqFloor::Off).await
    }

    /// [`Self::publish_also`] for a cluster on a shared store: where Redis holds no sequence
    /// for the room (a new room, or Redis lost it), the sequence must not restart below what
    /// the store holds. With [`SeqFloor::Unknown`] such a publish is refused
    /// [`BridgeError::FloorNeeded`] (nothing is published): read the store's highest seq of
    /// the room and publish again with [`SeqFloor::At`] it.
    pub async fn publish_with(
        &self,
        room: &str,
        batch: Vec<PreparedMessage>,
        also: Vec<String>,
        floor: SeqFloor,
    ) -> Result<SeqRange, BridgeError> {
        self.publish_noticed(room, batch, also, floor, None).await
    }

    /// [`Self::publish_with`], and `notice` (an `Event` frame of the room) is published on the
    /// room's channel before the batch when the script starts the room's counter at a floor
    /// above 0: Redis had lost the room, and members hear of it first.
    pub async fn publish_noticed(
        &self,
        room: &str,
        batch: Vec<PreparedMessage>,
        also: Vec<String>,
        floor: SeqFloor,
        notice: Option<Bytes>,
    ) -> Result<SeqRange, BridgeError> {
        let room = room.to_owned();
        self.ask(|reply| Command::Publish {
            room,
            batch,
            also,
            floor,
            notice,
            reply,
        })
        .await
    }

    /// Counts `shard` as a subscriber of `room`; the node subscribes to the
    /// room's channel on its first shard. Resolves once Redis confirmed
    /// the subscription (waits while Redis is unreachable: bound it with a
    /// timeout if needed). Repeating it for the same shard is a no-op.
    pub async fn subscribe(&self, room: &str, shard: u16) -> Result<(), BridgeError> {
        let room = room.to_owned();
        self.ask(|reply| Command::Subscribe { room, shard, reply }).await
    }

    /// Removes `shard` from `room`'s subscribers; the channel is
    /// unsubscribed after its last shard. Resolves once queued.
    pub async fn unsubscribe(&self, room: &str, shard: u16) -> Result<(), BridgeError> {
        let room = room.to_owned();
        self.tx
            .send(Command::Unsubscribe { room, shard })
            .await
            .map_err(|_| BridgeError::Stopped)
    }

    /// Marks `user` present in `room` on this node (counted: call once per
    /// connection, and [`Self::presence_leave`] once per connection). The
    /// lease is renewed every heartbeat. An error means the Redis write
    /// failed but the local record stands and the next heartbeat retries:
    /// do not call again.
    pub async fn presence_join(&self, room: &str, user: &str) -> Result<(), BridgeError> {
        let (room, user) = (room.to_owned(), user.to_owned());
        self.ask(|reply| Command::Presence {
            room,
            user,
            join: true,
            reply,
        })
        .await
    }

    /// Undoes one [`Self::presence_join`]. After the last one, the entry is
    /// removed (or, if that write fails, expires with its lease).
    pub async fn presence_leave(&self, room: &str, user: &str) -> Result<(), BridgeError> {
        let (room, user) = (room.to_owned(), user.to_owned());
        self.ask(|reply| Command::Presence {
            room,
            user,
            join: false,
            reply,
        })
        .await
    }

    /// Publishes `frame`, an encoded mesh `Frame::Event` of `room` (an event without a
    /// seq) or `Frame::Changed` (an edit, delete or reaction), on the room's channel: every
    /// node subscribed to the room gets it as a [`BridgeEvent::Event`]. Or, with `room` a user's name ([`keys::user`]), a
    /// `Frame::Disconnect` of that user: the nodes holding the user's connections get it as
    /// a [`BridgeEvent::Disconnect`]. Resolves once queued; the publish is best effort (a
    /// failure is counted and logged, never retried).
    pub async fn notify(&self, room: &str, frame: Bytes) -> Result<(), BridgeError> {
        let room = room.to_owned();
        self.tx
            .send(Command::Notify { room, frame })
            .await
            .map_err(|_| BridgeError::Stopped)
    }

    /// Publishes `frame` as [`Self::notify`] does, and resolves once Redis took it (or
    /// refused it): the caller knows its events reached Redis in the order it awaited them.
    pub async fn publish_event(&self, room: &str, frame: Bytes) -> Result<(), BridgeError> {
        let room = room.to_owned();
        self.ask(|reply| Command::PublishEvent { room, frame, reply }).await
    }

    /// Users online in `room` on any node, with the time (ms since the
    /// epoch, Redis clock) since which they are; sorted by user. Expired
    /// entries are swept first (and their offline notes published).
    pub async fn presence_online(&self, room: &str) -> Result<Vec<(String, u64)>, BridgeError> {
        let room = room.to_owned();
        self.ask(|reply| Command::PresenceOnline { room, reply }).await
    }

    /// Takes the room's cluster-wide lock for `ttl_ms` (Redis `SET NX PX`) with `token`, a
    /// value the caller picks unique: whether it holds it now (false: another caller does).
    /// Held for a change of a sent message, so a room's changes run one at a time across
    /// nodes; it expires by itself if its holder dies.
    pub async fn lock(&self, room: &str, token: u64, ttl_ms: u64) -> Result<bool, BridgeError> {
        let room = room.to_owned();
        self.ask(|reply| Command::Lock {
            room,
            token,
            ttl_ms,
            reply,
        })
        .await
    }

    /// Releases the room's lock if `token` still holds it.
    pub async fn unlock(&self, room: &str, token: u64) -> Result<(), BridgeError> {
        let room = room.to_owned();
        self.ask(|reply| Command::Unlock { room, token, reply }).await
    }

    /// The last seq assigned in `room` cluster-wide (0 if none).
    pub async fn room_seq(&self, room: &str) -> Result<u64, BridgeError> {
        let room = room.to_owned();
        self.ask(|reply| Command::RoomSeq { room, reply }).await
    }

    /// How many Redis clients (nodes) are subscribed to the channel of `name` (a room, or
    /// [`super::keys::user`]`(id)`: a node subscribes that while it holds a connection of the
    /// user). `PUBSUB NUMSUB`, or `SHARDNUMSUB` with sharded pub/sub.
    pub async fn subscribers(&self, name: &str) -> Result<u64, BridgeError> {
        let name = name.to_owned();
        self.ask(|reply| Command::Subscribers { name, reply }).await
    }

    /// Up to `limit` messages of `room` with seq > `after`, oldest first,
    /// from the recent-history stream. If the first one is not `after + 1`,
    /// the ones between were trimmed (or never existed).
    pub async fn recent_after(&self, room: &str, after: u64, limit: u32) -> Result<Vec<RecentMessage>, BridgeError> {
        let room = room.to_owned();
        self.ask(|reply| Command::RecentAfter { room, after, limit, reply }).await
    }

    /// Leaves every presence entry of this node (publishing the offline
    /// notes), then stops the bridge.
    pub async fn shutdown(&self) -> Result<(), BridgeError> {
        self.ask(|reply| Command::Shutdown { reply }).await
    }

    /// Whether both Redis connections are up and every subscription is in
    /// place (false from a disconnect until resubscribed).
    pub fn is_ready(&self) -> bool {
        self.shared.is_ready()
    }

    /// The bridge's counters.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.shared.metrics.snapshot()
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.shared.config.node_id
    }
}

/// The bridge's events, in the order it produced them.
#[derive(Debug)]
pub struct BridgeEvents {
    pub(crate) rx: mpsc::Receiver<BridgeEvent>,
}

impl BridgeEvents {
    /// The next event; `None` once the bridge has stopped and every event
    /// was taken.
    pub async fn recv(&mut self) -> Option<BridgeEvent> {
        self.rx.recv().await
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<BridgeEvent> {
        self.rx.try_recv().ok()
    }

    /// How many events are waiting.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// Whether no event is waiting.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}
