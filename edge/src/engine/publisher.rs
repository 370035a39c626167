//! The Redis sequencer's owner side, sans-IO: a room's sends on this node are
//! rendered once (with the seq slot Redis fills), queued, and published in
//! batches, one batch in flight per room, so the node's sends of a room keep
//! their order. Senders are acked with the seq Redis assigned; the message
//! reaches members (this node's included) through the room's subscription.
//!
//! Events are method calls (`send` with `now_ms`, `published` with the
//! bridge's answer); effects are pulled with [`Publisher::poll`]: a batch to
//! publish (the shell awaits the bridge and calls `published`), or a reply.
//!
//! Invariants: the queue of a room is bounded (`room_queue_max`, then
//! `overloaded`); a `client_id` is remembered once its message is sequenced,
//! and a retry while it is queued or in flight is answered `overloaded` (it
//! then gets the original ack); every send gets exactly one reply, a failed
//! publish answering each sender of the batch with the failure.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use router::bridge::{BridgeError, Duplicate, PreparedMessage, SeqFloor, SeqRange, Sequenced};
use storage::StoredMessage;

use super::owner::{render_unsequenced, SendArgs};
use super::{Busy, Failure};
use crate::metrics::ShardStats;
use crate::protocol::server;
use crate::protocol::ErrorCode;
use crate::room::{AckInfo, Dedupe};

/// What a publisher is configured with.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// This node, for message ids.
    pub node_id: String,
    /// This shard.
    pub shard: usize,
    /// `client_id`s remembered per room.
    pub dedupe_per_room: usize,
    /// Sends that may wait per room.
    pub room_queue_max: usize,
    /// Messages per script call at most.
    pub batch_max: usize,
    /// Rooms with publishing state kept (idle ones beyond it are forgotten).
    pub max_rooms: usize,
    /// Idle rooms are forgotten after this long without a send (0: only past `max_rooms`).
    pub room_idle_evict_ms: u64,
    /// Write every sequenced message to the store (a store the nodes share: PostgreSQL or
    /// Scylla), as the node that published it.
    pub store_writes: bool,
    /// With `store_writes`: ack a send once the store committed it (`durability = "durable"`),
    /// not when Redis sequenced it.
    pub ack_on_commit: bool,
}

/// The shared store as a send finds it (see [`Publisher::admit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreState {
    /// The store is unreachable (its writer's last attempt failed).
    pub unavailable: bool,
    /// Writes waiting for the store.
    pub backlog: u64,
    /// The most writes that may wait.
    pub capacity: u64,
}

/// What the shard must do.
#[derive(Debug)]
pub enum PubEffect {
    /// Publish `batch` of `room` through Redis, with `floor`, then call [`Publisher::published`].
    /// `notice` (an `epoch` event's JSON, with a floor above 0) goes to the room's members
    /// first if the script starts the room's counter there: Redis had lost the room.
    Publish {
        room: String,
        batch: Vec<PreparedMessage>,
        floor: SeqFloor,
        notice: Option<Bytes>,
    },
    /// Read the store's highest seq of `room`, then call [`Publisher::floor_loaded`].
    LoadFloor { room: String },
    /// Bytes for connection `conn` (on any shard).
    Reply { conn: u64, payload: Bytes },
    /// Write this sequenced message to the shared store (`store_writes`); with
    /// `ack_on_commit`, send `ack` to `conn` once it is committed (or an error if it fails).
    Store { msg: StoredMessage, ack: Option<(u64, Bytes)> },
}

/// One send waiting for its seq.
#[derive(Debug)]
struct Queued {
    msg: PreparedMessage,
    conn: u64,
    req: Option<String>,
    user: String,
    client_id: Option<String>,
    reply_to: Option<u64>,
    msg_id: storage::MsgId,
    ts: u64,
}

/// A room's publishing state.
#[derive(Debug)]
struct PubRoom {
    queued: VecDeque<Queued>,
    /// The batch Redis is sequencing now.
    in_flight: Vec<Queued>,
    /// `(user, client_id)` of sends queued or in flight.
    pending_ids: HashSet<(String, String)>,
    dedupe: Dedupe,
    /// The store's highest seq, read because Redis had no sequence for the room: the floor
    /// of the next batch (`store_writes`).
    floor: Option<u64>,
    /// The store's highest seq is being read: no batch goes until it is.
    loading_floor: bool,
    /// The `epoch` notice that goes with the floor (Redis lost the room).
    notice: Option<Bytes>,
    /// The highest seq Redis gave this node's sends of the room: a floor never goes below it
    /// (the store may not hold the newest of them yet when Redis loses the room).
    last_seq: u64,
    /// When a send last named the room (ms).
    active_ms: u64,
}

impl PubRoom {
    fn idle(&self) -> bool {
        self.queued.is_empty() && self.in_flight.is_empty() && !self.loading_floor
    }
}

/// The Redis sequencer's owner side of one shard.
pub struct Publisher {
    cfg: PublisherConfig,
    stats: Arc<Vec<ShardStats>>,
    rooms: HashMap<String, PubRoom>,
    next_id: u64,
    effects: VecDeque<PubEffect>,
}

impl Publisher {
    /// A publisher with no room; `stats[cfg.shard]` is its stats line.
    pub fn new(cfg: PublisherConfig, stats: Arc<Vec<ShardStats>>) -> Self {
        Self {
            cfg,
            stats,
            rooms: HashMap::new(),
            next_id: 0,
            effects: VecDeque::new(),
        }
    }

    /// The next effect to carry out, oldest first.
    pub fn poll(&mut self) -> Option<PubEffect> {
        self.effects.pop_front()
    }

    fn reply(&mut self, conn: u64, payload: Bytes) {
        self.effects.push_back(PubEffect::Reply { conn, payload });
    }

    fn refuse(&mut self, a: &SendArgs<'_>, msg: &str) {
        ShardStats::inc(&self.stats[self.cfg.shard].overloaded_total);
        self.reply(a.conn, Busy::Publish.reply(a.req, msg));
    }

    /// Whether a send may be sequenced while the shared store is in `store` (`store_writes`),
    /// else refused now, before Redis gives it a seq: with `ack_on_commit` while the store is
    /// unavailable (`unavailable`, nothing acked could be stored), and in fast mode once the
    /// writes held for it reach 7/8 of its queue (`overloaded`; the rest of the queue absorbs
    /// the batches already on their way to Redis).
    pub fn admit(&mut self, a: &SendArgs<'_>, store: StoreState) -> bool {
        if !self.cfg.store_writes {
            return true;
        }
        if self.cfg.ack_on_commit && store.unavailable {
            ShardStats::inc(&self.stats[self.cfg.shard].store_overloaded_total);
            let msg = "the store is unavailable: not sent, retry";
            self.reply(
                a.conn,
                server::error(a.req, ErrorCode::Unavailable, msg, Some(Busy::Store.retry_ms() * 5)),
            );
            return false;
        }
        if store.backlog >= store.capacity - store.capacity / 8 {
            ShardStats::inc(&self.stats[self.cfg.shard].store_overloaded_total);
            self.reply(
                a.conn,
                Busy::Store.reply(a.req, "the store's write backlog is full: not sent, retry"),
            );
            return false;
        }
        true
    }

    /// This shard's stats line.
    pub(crate) fn stats(&self) -> &ShardStats {
        &self.stats[self.cfg.shard]
    }

    /// Forgets the rooms with nothing queued or in flight and no send for
    /// `room_idle_evict_ms` (their `client_id`s stay deduplicated by Redis for
    /// `redis_dedupe_ttl_ms`); the shell calls it about once a second.
    pub fn evict_idle(&mut self, now_ms: u64) {
        let idle_ms = self.cfg.room_idle_evict_ms;
        if idle_ms == 0 {
            return;
        }
        let before = self.rooms.len();
        self.rooms
            .retain(|_, r| !(r.idle() && now_ms.saturating_sub(r.active_ms) >= idle_ms));
        let evicted = (before - self.rooms.len()) as u64;
        if evicted > 0 {
            ShardStats::add(&self.stats().rooms_evicted_total, evicted);
        }
    }

    /// A send to a room this shard owns.
    pub fn send(&mut self, a: &SendArgs<'_>, now_ms: u64) {
        if !self.rooms.contains_key(a.room) && self.rooms.len() >= self.cfg.max_rooms {
            self.rooms.retain(|_, r| !r.idle());
        }
        let dedupe_cap = self.cfg.dedupe_per_room;
        let r = self.rooms.entry(a.room.to_owned()).or_insert_with(|| PubRoom {
            queued: VecDeque::new(),
            in_flight: Vec::new(),
            floor: None,
            loading_floor: false,
            notice: None,
            last_seq: 0,
            pending_ids: HashSet::new(),
            dedupe: Dedupe::new(dedupe_cap),
            active_ms: now_ms,
        });
        r.active_ms = r.active_ms.max(now_ms);
        if let Some(cid) = a.client_id {
            if let Some(ack) = r.dedupe.get(a.user, cid) {
                return self.reply(a.conn, server::ack(a.req, a.room, ack.seq, &ack.msg_id, ack.ts));
            }
            if r.pending_ids.contains(&(a.user.to_owned(), cid.to_owned())) {
                return self.refuse(a, "this client_id is being sequenced, retry");
            }
        }
        if r.queued.len() >= self.cfg.room_queue_max {
            return self.refuse(a, "room publish queue full, retry");
        }
        self.next_id += 1;
        let msg_id = storage::MsgId::format(format_args!("{}-{:x}-{:x}", self.cfg.node_id, self.cfg.shard, self.next_id));
        let payload = render_unsequenced(a, &msg_id, now_ms);
        let prepared = PreparedMessage::new(a.room, payload.to_vec()).map(|m| match a.client_id {
            Some(cid) => m.with_dedupe(a.user, cid, &format!("{msg_id} {now_ms}")),
            None => m,
        });
        let msg = match prepared {
            Ok(m) => m,
            Err(e) => return self.reply(a.conn, Failure::Redis(e).reply(a.req, "cannot prepare the message")),
        };
        let Some(r) = self.rooms.get_mut(a.room) else { return };
        if let Some(cid) = a.client_id {
            r.pending_ids.insert((a.user.to_owned(), cid.to_owned()));
        }
        r.queued.push_back(Queued {
            msg,
            conn: a.conn,
            req: a.req.map(str::to_owned),
            user: a.user.to_owned(),
            client_id: a.client_id.map(str::to_owned),
            reply_to: a.reply_to,
            msg_id,
            ts: now_ms,
        });
        self.next_batch(a.room);
    }

    /// Starts the room's next batch unless one is in flight or nothing waits.
    fn next_batch(&mut self, room: &str) {
        let Some(r) = self.rooms.get_mut(room) else { return };
        if !r.in_flight.is_empty() || r.queued.is_empty() || r.loading_floor {
            return;
        }
        let n = r.queued.len().min(self.cfg.batch_max.max(1));
        r.in_flight.extend(r.queued.drain(..n));
        let batch = r.in_flight.iter().map(|q| q.msg.clone()).collect();
        let floor = match (self.cfg.store_writes, r.floor.take()) {
            (false, _) => SeqFloor::Off,
            (true, Some(f)) => SeqFloor::At(f),
            (true, None) => SeqFloor::Unknown,
        };
        let notice = matches!(floor, SeqFloor::At(_)).then(|| r.notice.take()).flatten();
        self.effects.push_back(PubEffect::Publish {
            room: room.to_owned(),
            batch,
            floor,
            notice,
        });
    }

    /// The store's highest seq of `room` was read (for the batch Redis refused without it),
    /// or could not be: the batch goes again with it, or its senders get the failure.
    pub fn floor_loaded(&mut self, room: &str, floor: Result<u64, Failure>) {
        let Some(r) = self.rooms.get_mut(room) else { return };
        r.loading_floor = false;
        match floor {
            Ok(f) => {
                let floor = f.max(r.last_seq);
                r.floor = Some(floor);
                // Redis lost a room that has messages: the sequence continues after `floor`,
                // in a new epoch members are told of (the time of the first send waiting).
                if floor > 0 {
                    let epoch = r.queued.front().map_or(0, |q| q.ts);
                    r.notice = Some(server::epoch(room, epoch, floor));
                }
            }
            Err(e) => {
                let what = "the store's highest seq of the room could not be read";
                let failed: Vec<Queued> = r.queued.drain(..).collect();
                for q in failed {
                    if let Some(cid) = &q.client_id {
                        r.pending_ids.remove(&(q.user.clone(), cid.clone()));
                    }
                    let err = e.reply(q.req.as_deref(), what);
                    self.effects.push_back(PubEffect::Reply {
                        conn: q.conn,
                        payload: err,
                    });
                }
            }
        }
        self.next_batch(room);
    }

    /// Redis answered the room's batch in flight: ack (or refuse) each sender, then the next batch.
    pub fn published(&mut self, room: &str, result: Result<SeqRange, BridgeError>) {
        let Some(r) = self.rooms.get_mut(room) else { return };
        let batch = std::mem::take(&mut r.in_flight);
        if matches!(result, Err(BridgeError::FloorNeeded)) {
            // Nothing was published: the batch waits, first in line, for the store's floor.
            for q in batch.into_iter().rev() {
                r.queued.push_front(q);
            }
            r.loading_floor = true;
            self.effects.push_back(PubEffect::LoadFloor { room: room.to_owned() });
            return;
        }
        let mut replies = Vec::with_capacity(batch.len());
        match result {
            Ok(range) => {
                ShardStats::add(&self.stats[self.cfg.shard].messages_total, u64::from(range.count));
                let top = range.iter().last().into_iter().chain(range.duplicates.iter().map(|d| d.seq)).max();
                r.last_seq = r.last_seq.max(top.unwrap_or(0));
                let mut outcomes = range.outcomes();
                for q in batch {
                    let key = q.client_id.clone().map(|cid| (q.user.clone(), cid));
                    if let Some(k) = &key {
                        r.pending_ids.remove(k);
                    }
                    let (conn, req) = (q.conn, q.req.clone());
                    // Redis answers for each message of the batch; a short answer is a bug
                    // there, and the senders it left out still get their one reply.
                    let (ack, msg) = match outcomes.next() {
                        Some(Sequenced::New(seq)) => {
                            let ack = AckInfo {
                                seq,
                                msg_id: q.msg_id.clone(),
                                ts: q.ts,
                            };
                            (ack, stored(room, seq, q))
                        }
                        // A retry of a message some node sequenced before: its original ack,
                        // and (with a shared store) its original frame written again, a no-op
                        // if that node stored it already, so a durable ack still means stored.
                        Some(Sequenced::Duplicate(d)) => match original(room, d, q) {
                            Some(pair) => pair,
                            None => {
                                let msg = "cluster: this client_id was sequenced before, but its receipt is unreadable";
                                replies.push((conn, server::error(req.as_deref(), ErrorCode::Internal, msg, None)));
                                continue;
                            }
                        },
                        None => {
                            let msg = "cluster: no seq for this message";
                            replies.push((conn, server::error(req.as_deref(), ErrorCode::Internal, msg, None)));
                            continue;
                        }
                    };
                    if let Some((user, cid)) = &key {
                        r.dedupe.insert(user, cid, ack.clone());
                    }
                    let reply = (conn, server::ack(req.as_deref(), room, ack.seq, &ack.msg_id, ack.ts));
                    let Some(msg) = msg.filter(|_| self.cfg.store_writes) else {
                        replies.push(reply);
                        continue;
                    };
                    let deferred = self.cfg.ack_on_commit.then(|| reply.clone());
                    if deferred.is_none() {
                        replies.push(reply);
                    }
                    self.effects.push_back(PubEffect::Store { msg, ack: deferred });
                }
            }
            Err(e) => {
                let failure = Failure::Redis(e);
                for q in batch {
                    if let Some(cid) = &q.client_id {
                        r.pending_ids.remove(&(q.user.clone(), cid.clone()));
                    }
                    replies.push((q.conn, failure.reply(q.req.as_deref(), "cluster: message not sequenced")));
                }
            }
        }
        for (conn, payload) in replies {
            self.reply(conn, payload);
        }
        self.next_batch(room);
    }
}

/// The message as the store keeps it: the client JSON with its seq written in, exactly as
/// members got it from the room's channel. `None` only if the frame does not read back (a bug).
fn stored(room: &str, seq: u64, q: Queued) -> Option<StoredMessage> {
    let frame = q.msg.patched(seq);
    let Ok(router::ArchivedFrame::Deliver { payload, .. }) = router::decode(&frame) else {
        return None;
    };
    Some(StoredMessage {
        room: room.into(),
        seq,
        msg_id: q.msg_id,
        sender: q.user.into(),
        ts_ms: q.ts,
        client_id: q.client_id.map(Into::into),
        reply_to: q.reply_to,
        frame: router::payload_bytes(&frame, payload.as_slice()),
    })
}

/// The original ack of a duplicate (its receipt is `"<msg_id> <ts>"`, as [`Publisher::send`]
/// wrote it), and the original message as the store keeps it while the room's stream still
/// holds its frame. `None` if the receipt does not read.
fn original(room: &str, d: &Duplicate, q: Queued) -> Option<(AckInfo, Option<StoredMessage>)> {
    let (msg_id, ts) = d.receipt.split_once(' ')?;
    let ack = AckInfo {
        seq: d.seq,
        msg_id: msg_id.into(),
        ts: ts.parse().ok()?,
    };
    let msg = d.frame.as_ref().and_then(|frame| {
        let Ok(router::ArchivedFrame::Deliver { payload, .. }) = router::decode(frame) else {
            return None;
        };
        let payload = router::payload_bytes(frame, payload.as_slice());
        let reply_to = serde_json::from_slice::<serde_json::Value>(&payload)
            .ok()?
            .get("reply_to")
            .and_then(serde_json::Value::as_u64);
        Some(StoredMessage {
            room: room.into(),
            seq: d.seq,
            msg_id: ack.msg_id.clone(),
            sender: q.user.as_str().into(),
            ts_ms: ack.ts,
            client_id: q.client_id.as_deref().map(Into::into),
            reply_to,
            frame: payload,
        })
    });
    Some((ack, msg))
}

#[cfg(test)]
mod tests;
