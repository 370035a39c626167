//! Cluster mode, owner side: a room's sends on this node are rendered once
//! (with the seq slot Redis fills), queued, and published in batches by one
//! task per room: one sequencing script call per batch, the next batch only
//! after the previous one returned, so the node's sends of a room keep their
//! order. Senders are acked with the seq Redis assigned; the message reaches
//! members (this node's included) through the room's subscription.
//!
//! What must stay true: the queue of a room is bounded
//! (`room_load_queue_max`, then `overloaded`); a `client_id` is remembered
//! only once its message is sequenced, and a retry while it is in flight is
//! answered `overloaded` (retry later: it then gets the original ack); a
//! failed publish answers every sender of the batch `unavailable` and takes
//! no seq it could not use (the script runs at most once).

use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;

use router::bridge::{BridgeError, BridgeHandle, PreparedMessage, SeqRange};

use super::Shard;
use crate::engine::owner::{render_message, SendArgs};
use crate::engine::{Busy, Failure};
use crate::metrics::ShardStats;
use crate::protocol::server;
use crate::room::{AckInfo, Dedupe};

/// One send waiting for its seq.
struct Queued {
    msg: PreparedMessage,
    conn: u64,
    req: Option<String>,
    user: String,
    client_id: Option<String>,
    msg_id: String,
    ts: u64,
}

/// A room's publishing state on its owner shard.
#[derive(Default)]
pub(crate) struct PubRoom {
    queued: VecDeque<Queued>,
    /// `(user, client_id)` of sends queued or in flight.
    in_flight: HashSet<(String, String)>,
    running: bool,
    dedupe: Option<Dedupe>,
}

impl Shard {
    /// A send in cluster mode, on the room's owner shard.
    pub(super) fn cluster_send(self: &Rc<Self>, a: &SendArgs<'_>) {
        let Some(bridge) = self.sequencer.bridge().cloned() else { return };
        let mut rooms = self.publishing.borrow_mut();
        if !rooms.contains_key(a.room) && rooms.len() >= self.cfg.max_rooms_per_shard {
            rooms.retain(|_, r| r.running || !r.queued.is_empty());
        }
        let r = rooms.entry(a.room.to_owned()).or_default();
        let dedupe = r.dedupe.get_or_insert_with(|| Dedupe::new(self.cfg.dedupe_per_room));
        if let Some(cid) = a.client_id {
            if let Some(ack) = dedupe.get(a.user, cid).cloned() {
                drop(rooms);
                return self.to_conn(a.conn, server::ack(a.req, a.room, ack.seq, &ack.msg_id, ack.ts));
            }
            if r.in_flight.contains(&(a.user.to_owned(), cid.to_owned())) {
                drop(rooms);
                return self.refuse_send(a, "this client_id is being sequenced, retry");
            }
        }
        if r.queued.len() >= self.cfg.room_load_queue_max {
            drop(rooms);
            return self.refuse_send(a, "room publish queue full, retry");
        }
        let queued = match self.prepare(a) {
            Ok(q) => q,
            Err(e) => {
                drop(rooms);
                return self.to_conn(a.conn, Failure::Redis(e).reply(a.req, "cannot prepare the message"));
            }
        };
        if let Some(cid) = &queued.client_id {
            r.in_flight.insert((queued.user.clone(), cid.clone()));
        }
        r.queued.push_back(queued);
        if !r.running {
            r.running = true;
            monoio::spawn(publish_loop(self.clone(), bridge, a.room.to_owned()));
        }
    }

    fn prepare(&self, a: &SendArgs<'_>) -> Result<Queued, BridgeError> {
        let n = self.take_ticket();
        let msg_id = format!("{}-{:x}-{n:x}", self.cfg.node_id, self.id);
        let ts = Self::now_ms();
        let payload = render_message(a, None, &msg_id, ts);
        let msg = PreparedMessage::new(a.room, payload.to_vec())?;
        Ok(Queued {
            msg,
            conn: a.conn,
            req: a.req.map(str::to_owned),
            user: a.user.to_owned(),
            client_id: a.client_id.map(str::to_owned),
            msg_id,
            ts,
        })
    }

    fn refuse_send(&self, a: &SendArgs<'_>, msg: &str) {
        ShardStats::inc(&self.stats().overloaded_total);
        self.to_conn(a.conn, Busy::Publish.reply(a.req, msg));
    }

    /// Takes the next batch of `room`, or ends the room's task when none is queued.
    fn next_batch(&self, room: &str) -> Vec<Queued> {
        let mut rooms = self.publishing.borrow_mut();
        let Some(r) = rooms.get_mut(room) else { return Vec::new() };
        let n = r.queued.len().min(self.cfg.redis_batch_max as usize);
        if n == 0 {
            r.running = false;
        }
        r.queued.drain(..n).collect()
    }

    /// Acks (or refuses) the senders of a published batch.
    fn published(&self, room: &str, batch: Vec<Queued>, result: Result<SeqRange, BridgeError>) {
        let mut rooms = self.publishing.borrow_mut();
        let mut r = rooms.get_mut(room);
        let mut replies = Vec::with_capacity(batch.len());
        match result {
            Ok(range) => {
                ShardStats::add(&self.stats().messages_total, batch.len() as u64);
                for (seq, q) in range.iter().zip(batch) {
                    let ack = AckInfo {
                        seq,
                        msg_id: q.msg_id,
                        ts: q.ts,
                    };
                    if let (Some(cid), Some(r)) = (&q.client_id, r.as_deref_mut()) {
                        r.in_flight.remove(&(q.user.clone(), cid.clone()));
                        if let Some(d) = r.dedupe.as_mut() {
                            d.insert(&q.user, cid, ack.clone());
                        }
                    }
                    replies.push((q.conn, server::ack(q.req.as_deref(), room, ack.seq, &ack.msg_id, ack.ts)));
                }
            }
            Err(e) => {
                let failure = Failure::Redis(e);
                for q in batch {
                    if let (Some(cid), Some(r)) = (&q.client_id, r.as_deref_mut()) {
                        r.in_flight.remove(&(q.user.clone(), cid.clone()));
                    }
                    replies.push((q.conn, failure.reply(q.req.as_deref(), "cluster: message not sequenced")));
                }
            }
        }
        drop(rooms);
        for (conn, reply) in replies {
            self.to_conn(conn, reply);
        }
    }
}

/// Publishes `room`'s queued sends, one batch at a time, until the queue is empty.
async fn publish_loop(shard: Rc<Shard>, bridge: BridgeHandle, room: String) {
    loop {
        let batch = shard.next_batch(&room);
        if batch.is_empty() {
            return;
        }
        let msgs: Vec<PreparedMessage> = batch.iter().map(|q| q.msg.clone()).collect();
        let result = bridge.publish(&room, msgs).await;
        shard.published(&room, batch, result);
    }
}

/// The publishing state of every room this shard owns (cluster mode).
pub(crate) type PubRooms = HashMap<String, PubRoom>;
