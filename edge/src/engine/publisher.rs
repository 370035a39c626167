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
use router::bridge::{BridgeError, PreparedMessage, SeqFloor, SeqRange};
use storage::StoredMessage;

use super::owner::{render_message, SendArgs};
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
    /// Write every sequenced message to the store (a store the nodes share: PostgreSQL or
    /// Scylla), as the node that published it.
    pub store_writes: bool,
    /// With `store_writes`: ack a send once the store committed it (`durability = "durable"`),
    /// not when Redis sequenced it.
    pub ack_on_commit: bool,
}

/// What the shard must do.
#[derive(Debug)]
pub enum PubEffect {
    /// Publish `batch` of `room` through Redis, with `floor`, then call [`Publisher::published`].
    Publish {
        room: String,
        batch: Vec<PreparedMessage>,
        floor: SeqFloor,
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
    msg_id: String,
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
            pending_ids: HashSet::new(),
            dedupe: Dedupe::new(dedupe_cap),
        });
        if let Some(cid) = a.client_id {
            if let Some(ack) = r.dedupe.get(a.user, cid).cloned() {
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
        let msg_id = format!("{}-{:x}-{:x}", self.cfg.node_id, self.cfg.shard, self.next_id);
        let payload = render_message(a, None, &msg_id, now_ms);
        let msg = match PreparedMessage::new(a.room, payload.to_vec()) {
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
        self.effects.push_back(PubEffect::Publish {
            room: room.to_owned(),
            batch,
            floor,
        });
    }

    /// The store's highest seq of `room` was read (for the batch Redis refused without it),
    /// or could not be: the batch goes again with it, or its senders get the failure.
    pub fn floor_loaded(&mut self, room: &str, floor: Result<u64, String>) {
        let Some(r) = self.rooms.get_mut(room) else { return };
        r.loading_floor = false;
        match floor {
            Ok(f) => r.floor = Some(f),
            Err(e) => {
                let msg = format!("cluster: the store's highest seq of the room could not be read: {e}");
                let failed: Vec<Queued> = r.queued.drain(..).collect();
                for q in failed {
                    if let Some(cid) = &q.client_id {
                        r.pending_ids.remove(&(q.user.clone(), cid.clone()));
                    }
                    let err = server::error(q.req.as_deref(), ErrorCode::Unavailable, &msg, Some(1000));
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
                let mut seqs = range.iter();
                for q in batch {
                    if let Some(cid) = &q.client_id {
                        r.pending_ids.remove(&(q.user.clone(), cid.clone()));
                    }
                    // Redis answers a seq for each message of the batch; a short answer is a bug
                    // there, and the senders it left out still get their one reply.
                    let Some(seq) = seqs.next() else {
                        let err = server::error(q.req.as_deref(), ErrorCode::Internal, "cluster: no seq for this message", None);
                        replies.push((q.conn, err));
                        continue;
                    };
                    let ack = AckInfo {
                        seq,
                        msg_id: q.msg_id.clone(),
                        ts: q.ts,
                    };
                    if let Some(cid) = &q.client_id {
                        r.dedupe.insert(&q.user, cid, ack.clone());
                    }
                    let reply = (q.conn, server::ack(q.req.as_deref(), room, ack.seq, &ack.msg_id, ack.ts));
                    if !self.cfg.store_writes {
                        replies.push(reply);
                        continue;
                    }
                    let deferred = self.cfg.ack_on_commit.then(|| reply.clone());
                    if deferred.is_none() {
                        replies.push(reply.clone());
                    }
                    match stored(room, seq, q) {
                        Some(msg) => self.effects.push_back(PubEffect::Store { msg, ack: deferred }),
                        // Not readable back (a bug): the sender still gets its one reply.
                        None if deferred.is_some() => replies.push(reply),
                        None => {}
                    }
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
/// members got it from the room's channel.
fn stored(room: &str, seq: u64, q: Queued) -> Option<StoredMessage> {
    let frame = q.msg.patched(seq);
    let Ok(router::ArchivedFrame::Deliver { payload, .. }) = router::decode(&frame) else {
        return None;
    };
    Some(StoredMessage {
        room: room.to_owned(),
        seq,
        msg_id: q.msg_id,
        sender: q.user,
        ts_ms: q.ts,
        client_id: q.client_id,
        reply_to: q.reply_to,
        frame: router::payload_bytes(&frame, payload.as_slice()),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn publisher(queue_max: usize, batch_max: usize) -> Publisher {
        let cfg = PublisherConfig {
            node_id: "n1".into(),
            shard: 0,
            dedupe_per_room: 16,
            room_queue_max: queue_max,
            batch_max,
            max_rooms: 100,
            store_writes: false,
            ack_on_commit: false,
        };
        Publisher::new(cfg, Arc::new(vec![ShardStats::default()]))
    }

    fn send<'a>(conn: u64, req: &'a str, client_id: Option<&'a str>) -> SendArgs<'a> {
        SendArgs {
            room: "r",
            shard: 0,
            conn,
            user: "u",
            req: Some(req),
            client_id,
            body: "hi",
            kind: "text",
            file: None,
            reply_to: None,
        }
    }

    /// Drains the effects: (batch sizes published, replies as JSON).
    fn drain(p: &mut Publisher) -> (Vec<usize>, Vec<Value>) {
        let (mut batches, mut replies) = (Vec::new(), Vec::new());
        while let Some(e) = p.poll() {
            match e {
                PubEffect::Publish { batch, .. } => batches.push(batch.len()),
                PubEffect::LoadFloor { room } => panic!("no store, no floor to load for {room}"),
                PubEffect::Reply { payload, .. } => replies.push(serde_json::from_slice(&payload).expect("json")),
                PubEffect::Store { msg, .. } => panic!("no store writes configured, got {msg:?}"),
            }
        }
        (batches, replies)
    }

    #[test]
    fn with_a_shared_store_each_sequenced_message_is_written_once_with_its_seq() {
        let mut p = publisher(100, 8);
        p.cfg.store_writes = true;
        let mut stored = Vec::new();
        let mut keep = |p: &mut Publisher| {
            while let Some(e) = p.poll() {
                if let PubEffect::Store { msg, ack } = e {
                    assert!(ack.is_none(), "acked when sequenced unless ack_on_commit");
                    stored.push(msg);
                }
            }
        };
        p.send(&send(1, "1", Some("c1")), 10);
        p.send(
            &SendArgs {
                reply_to: Some(1),
                ..send(1, "2", None)
            },
            11,
        );
        keep(&mut p); // the first batch goes
        p.published("r", range(7, 1));
        keep(&mut p); // its message stored, the second batch goes
        p.published("r", range(8, 1));
        keep(&mut p);
        assert_eq!(stored.iter().map(|m| m.seq).collect::<Vec<_>>(), [7, 8]);
        assert_eq!((stored[0].client_id.as_deref(), stored[1].reply_to), (Some("c1"), Some(1)));
        for m in &stored {
            let v: Value = serde_json::from_slice(&m.frame).expect("the stored frame is the client JSON");
            assert_eq!(
                (v["seq"].as_u64(), v["room"].as_str(), v["from"].as_str()),
                (Some(m.seq), Some("r"), Some("u")),
                "{v}"
            );
        }
        // A failed publish stores nothing.
        p.send(&send(1, "3", None), 12);
        let _ = p.poll();
        p.published("r", Err(BridgeError::Stopped));
        assert!(std::iter::from_fn(|| p.poll()).all(|e| !matches!(e, PubEffect::Store { .. })));
    }

    #[test]
    fn a_batch_refused_for_want_of_a_floor_waits_for_the_store_then_goes_again_first() {
        let mut p = publisher(100, 1);
        p.cfg.store_writes = true;
        p.send(&send(1, "1", Some("c1")), 10);
        p.send(&send(1, "2", None), 10);
        let floor_of = |e: Option<PubEffect>| match e {
            Some(PubEffect::Publish { floor, batch, .. }) => (floor, batch.len()),
            other => panic!("expected a publish, got {other:?}"),
        };
        assert_eq!(floor_of(p.poll()), (SeqFloor::Unknown, 1));
        p.published("r", Err(BridgeError::FloorNeeded));
        assert!(matches!(p.poll(), Some(PubEffect::LoadFloor { room }) if room == "r"));
        assert!(p.poll().is_none(), "no reply and no batch while the floor is read");
        p.floor_loaded("r", Ok(41));
        assert_eq!(floor_of(p.poll()), (SeqFloor::At(41), 1), "the same first send, with the floor");
        p.published("r", range(42, 1));
        let mut acks = Vec::new();
        let mut floors = Vec::new();
        while let Some(e) = p.poll() {
            match e {
                PubEffect::Reply { payload, .. } => acks.push(serde_json::from_slice::<Value>(&payload).expect("json")),
                PubEffect::Publish { floor, .. } => floors.push(floor),
                PubEffect::Store { .. } => {}
                PubEffect::LoadFloor { .. } => panic!("the floor is known"),
            }
        }
        assert_eq!((acks[0]["id"].as_u64(), acks[0]["seq"].as_u64()), (Some(1), Some(42)));
        assert_eq!(floors, [SeqFloor::Unknown], "a floor is used once: later batches ask Redis again");
        // A floor that cannot be read fails the waiting sends, each once.
        p.published("r", Err(BridgeError::FloorNeeded));
        let _ = p.poll();
        p.floor_loaded("r", Err("store down".into()));
        let replies: Vec<Value> = std::iter::from_fn(|| p.poll())
            .filter_map(|e| match e {
                PubEffect::Reply { payload, .. } => serde_json::from_slice(&payload).ok(),
                _ => None,
            })
            .collect();
        assert_eq!(replies.len(), 1, "{replies:?}");
        assert_eq!(replies[0]["code"], "unavailable");
    }

    #[test]
    fn with_ack_on_commit_the_ack_waits_for_the_store() {
        let mut p = publisher(100, 8);
        p.cfg.store_writes = true;
        p.cfg.ack_on_commit = true;
        p.send(&send(5, "1", None), 10);
        let _ = p.poll();
        p.published("r", range(3, 1));
        let effects: Vec<PubEffect> = std::iter::from_fn(|| p.poll()).collect();
        assert!(
            !effects.iter().any(|e| matches!(e, PubEffect::Reply { .. })),
            "no ack before the commit: {effects:?}"
        );
        let Some(PubEffect::Store {
            msg,
            ack: Some((conn, ack)),
        }) = effects.into_iter().next()
        else {
            panic!("the write carries the ack");
        };
        let ack: Value = serde_json::from_slice(&ack).expect("json");
        assert_eq!(
            (conn, msg.seq, ack["type"].as_str(), ack["seq"].as_u64()),
            (5, 3, Some("ack"), Some(3))
        );
    }

    fn range(first: u64, count: u32) -> Result<SeqRange, BridgeError> {
        Ok(SeqRange { first, count })
    }

    #[test]
    fn one_batch_in_flight_per_room_and_the_rest_follow_in_order() {
        let mut p = publisher(100, 2);
        p.send(&send(1, "1", None), 10);
        assert_eq!(drain(&mut p).0, [1], "the first send goes at once");
        for i in 2..=4 {
            p.send(&send(1, &i.to_string(), None), 10);
        }
        assert!(drain(&mut p).0.is_empty(), "nothing more while a batch is in flight");
        p.published("r", range(1, 1));
        let (batches, replies) = drain(&mut p);
        assert_eq!(replies[0]["seq"], 1);
        assert_eq!(batches, [2], "then the queue, at most batch_max at a time");
        p.published("r", range(2, 2));
        let (batches, replies) = drain(&mut p);
        assert_eq!(replies.iter().map(|r| r["seq"].as_u64().unwrap()).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(batches, [1]);
        p.published("r", range(4, 1));
        let (batches, replies) = drain(&mut p);
        assert!(batches.is_empty(), "the queue is empty");
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0]["seq"], 4);
    }

    #[test]
    fn a_retried_client_id_gets_the_original_ack_or_waits() {
        let mut p = publisher(100, 8);
        p.send(&send(1, "1", Some("c1")), 10);
        p.send(&send(2, "2", Some("c1")), 11);
        let (batches, replies) = drain(&mut p);
        assert_eq!(batches, [1]);
        assert_eq!(replies[0]["code"], "overloaded", "in flight: retry later");
        p.published("r", range(7, 1));
        let acked = drain(&mut p).1;
        p.send(&send(3, "3", Some("c1")), 12);
        let (batches, again) = drain(&mut p);
        assert!(batches.is_empty(), "not published twice");
        assert_eq!(again[0]["seq"], 7);
        assert_eq!(again[0]["msg_id"], acked[0]["msg_id"]);
    }

    #[test]
    fn a_full_queue_and_a_failed_publish_answer_every_sender_once() {
        let mut p = publisher(1, 8);
        p.send(&send(1, "1", Some("a")), 10); // in flight
        p.send(&send(1, "2", None), 10); // queued
        p.send(&send(1, "3", None), 10); // over the queue bound
        let (_, replies) = drain(&mut p);
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0]["id"], 3);
        assert_eq!(replies[0]["code"], "overloaded");
        p.published("r", Err(BridgeError::Unavailable));
        let (batches, replies) = drain(&mut p);
        assert_eq!(replies[0]["code"], "unavailable");
        assert!(replies[0]["retry_ms"].as_u64().is_some());
        assert_eq!(batches, [1], "the queued send goes next");
        p.published("r", range(1, 0));
        let (_, replies) = drain(&mut p);
        assert_eq!(replies[0]["code"], "internal", "a short answer still answers every sender");
        p.send(&send(1, "4", Some("a")), 12);
        assert_eq!(drain(&mut p).0, [1], "a failed client_id may be sent again");
    }
}
