//! Edits, deletes and reactions in a cluster on a shared store (PostgreSQL or
//! Scylla). No node owns a room there, so the shard holding the asking
//! connection runs the change itself, as a task, under the room's
//! cluster-wide lock in Redis. The rules are the one node's
//! (`engine/change_rules.rs`).
//!
//! A change runs in steps:
//! 0. a room's changes from one shard run one at a time, in arrival order (at
//!    most [`QUEUE_MAX`] waiting, then `overloaded`);
//! 1. Redis's counter for the room: a seq of 0 or past it is `not_found`;
//! 2. the room's lock (`SET NX PX`, [`LOCK_TTL_MS`]), so a room's changes run
//!    one at a time across nodes: a delete cannot be overtaken by an edit read
//!    before it, and a reaction's bound check holds when its write lands. A
//!    lock another change holds is waited for, up to [`LOCK_WAIT`], then the
//!    change is refused `overloaded` with a retry hint;
//! 3. the message, from the store. In `fast` mode a send is acked before its
//!    write commits, so a message not stored yet is read again, backing off,
//!    for up to [`STORED_WAIT`] before the change is refused `not_found`;
//! 4. the rules decide, and the store takes the new version or the reaction;
//! 5. the `Changed` frame (the new version and the `update`/`reaction` event)
//!    is published on the room's Redis channel, and awaited, so a room's
//!    events reach Redis in the order of its changes. Every node's subscribed
//!    shards keep the new version in their rings and push the event to their
//!    members, as a room owner's `Changed` does on one node. A DM room's change
//!    also goes on its two users' channels, for their connections that did
//!    not join it;
//! 6. the lock is released, and the asker gets its `ack`.
//!
//! What must stay true:
//! - every change gets exactly one answer: `ack`, or an error naming why;
//! - the store is written only under the lock; an event is published only
//!   after its write landed;
//! - a change that outlives `cluster_join_timeout_ms` (Redis or the store is
//!   slow) is answered `unavailable`; it may still land. Retrying it is safe:
//!   an edit writes the same body, a delete of a tombstone is `not_found`, and
//!   a reaction already there is acked.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use router::bridge::{keys, BridgeHandle};
use router::{ChangeMsg, Frame};
use storage::{Answer, Query, StoreError, StoredMessage};

use super::cluster::timed;
use super::sequencer::Sequencer;
use super::{Conn, Shard};
use crate::engine::change_rules::{self as rules, Plan};
use crate::engine::{Busy, Failure};
use crate::protocol::server;
use crate::protocol::ErrorCode;

/// How long a room's lock lives if its holder never releases it (the node died).
const LOCK_TTL_MS: u64 = 10_000;
/// How long a change waits for the room's lock before it is refused `overloaded`.
const LOCK_WAIT: Duration = Duration::from_secs(2);
/// How long a change waits for its message to reach the store (`fast` mode) before `not_found`.
const STORED_WAIT: Duration = Duration::from_millis(1500);
/// The first pause between two tries (of the lock, or of the store); doubled each time, to
/// at most 8 times this.
const BACKOFF: Duration = Duration::from_millis(10);

/// A step that ends the change: the reply that answers it.
type Stop = Bytes;

/// A room's changes waiting on this shard behind the one running, with their connections.
type Queue = VecDeque<(Rc<Conn>, ChangeMsg)>;

/// Changes waiting per room on this shard: a room's changes from one shard run one at a time,
/// in arrival order (a connection's edit then delete land in that order), each under the
/// room's cluster-wide lock.
#[derive(Default)]
pub(crate) struct Waiting(RefCell<HashMap<String, Queue>>);

/// Changes one shard may hold waiting in one room.
const QUEUE_MAX: usize = 256;

impl Shard {
    /// A member's edit, delete or reaction in a cluster on a shared store: queued behind the
    /// room's change running on this shard, if any, and answered on `conn`.
    pub(super) fn cluster_change(self: &Rc<Self>, conn: &Rc<Conn>, change: ChangeMsg) {
        let (Sequencer::Redis(r), Some(bridge)) = (&self.sequencer, self.bridge()) else {
            return;
        };
        let mut waiting = r.changes.0.borrow_mut();
        if let Some(queue) = waiting.get_mut(&change.room) {
            if queue.len() >= QUEUE_MAX {
                let reply = Busy::Store.reply(change.req.as_deref(), "too many changes waiting in this room, retry");
                conn.out.push_text(reply);
                return;
            }
            return queue.push_back((conn.clone(), change));
        }
        let room = change.room.clone();
        waiting.insert(room.clone(), VecDeque::from([(conn.clone(), change)]));
        drop(waiting);
        let me = self.clone();
        let limit = Duration::from_millis(self.cfg.cluster_join_timeout_ms);
        monoio::spawn(async move {
            while let Some((conn, change)) = me.next_change(&room) {
                let req = change.req.clone();
                let run = me.run_change(&bridge, change, limit);
                let reply = match monoio::time::timeout(limit * 3 + LOCK_WAIT + STORED_WAIT, run).await {
                    Ok(reply) => reply,
                    Err(_) => Failure::RedisTimedOut.reply(req.as_deref(), "message change"),
                };
                conn.out.push_text(reply);
            }
        });
    }

    /// The room's next change to run on this shard; none (and the room's queue is gone) when
    /// all have run.
    fn next_change(&self, room: &str) -> Option<(Rc<Conn>, ChangeMsg)> {
        let Sequencer::Redis(r) = &self.sequencer else { return None };
        let mut waiting = r.changes.0.borrow_mut();
        let queue = waiting.get_mut(room)?;
        let next = queue.pop_front();
        if next.is_none() {
            waiting.remove(room);
        }
        next
    }

    /// Steps 1 to 6; the reply.
    async fn run_change(&self, bridge: &BridgeHandle, c: ChangeMsg, limit: Duration) -> Bytes {
        let req = c.req.as_deref();
        let top = match timed(limit, bridge.room_seq(&c.room)).await {
            Ok(top) => top,
            Err(f) => return f.reply(req, "message change"),
        };
        if c.seq == 0 || c.seq > top {
            let msg = format!("{} has no message {}", c.room, c.seq);
            return server::error(req, ErrorCode::NotFound, &msg, None);
        }
        let token: u64 = rand::random();
        if let Err(stop) = lock(bridge, &c, token, limit).await {
            return stop;
        }
        let reply = match self.locked_change(bridge, &c, limit).await {
            Ok(reply) | Err(reply) => reply,
        };
        if let Err(e) = timed(limit, bridge.unlock(&c.room, token)).await {
            // It expires by itself after LOCK_TTL_MS.
            tracing::warn!(room = c.room, error = ?e, "cluster: a change's lock was not released");
        }
        reply
    }

    /// Steps 3 to 5, under the room's lock.
    async fn locked_change(&self, bridge: &BridgeHandle, c: &ChangeMsg, limit: Duration) -> Result<Bytes, Stop> {
        let req = c.req.as_deref();
        let frame = self.stored_message(c).await?;
        let now_ms = Self::now_ms();
        let (message, msg_id) = match rules::plan(c, frame.as_ref(), now_ms)? {
            Plan::React { msg_id } => {
                let counts = match self.cluster_store_query(rules::bounds_query(c)).await {
                    Ok(Answer::ReactionCounts(counts)) => counts,
                    other => return Err(store_failed(req, other)),
                };
                let Some(query) = rules::react_write(c, &counts)? else {
                    // Already there, or already gone: an ack, and nobody is told.
                    return Ok(server::ack(req, &c.room, c.seq, &msg_id, now_ms));
                };
                match self.cluster_store_query(query).await {
                    Ok(Answer::Reacted) => (None, msg_id),
                    other => return Err(store_failed(req, other)),
                }
            }
            Plan::Replace { frame, msg_id } => {
                let query = Query::ReplaceFrame {
                    room: c.room.clone(),
                    seq: c.seq,
                    frame: frame.clone(),
                };
                match self.cluster_store_query(query).await {
                    Ok(Answer::Replaced(true)) => (Some(frame), msg_id),
                    Ok(Answer::Replaced(false)) => {
                        let msg = format!("{} has no message {}", c.room, c.seq);
                        return Err(server::error(req, ErrorCode::NotFound, &msg, None));
                    }
                    other => return Err(store_failed(req, other)),
                }
            }
        };
        let changed = router::encode(&Frame::Changed {
            room: c.room.clone(),
            seq: c.seq,
            message: message.map(|m| m.to_vec()),
            event: rules::event(c, now_ms).to_vec(),
        });
        // The store holds the change: the ack is owed whatever Redis does with the event.
        if let Err(e) = timed(limit, bridge.publish_event(&c.room, changed.clone())).await {
            tracing::warn!(room = c.room, seq = c.seq, error = ?e, "cluster: a change was stored but its event not published");
        }
        if let Some((a, b)) = crate::auth::dm_participants(&c.room) {
            for user in if a == b { vec![a] } else { vec![a, b] } {
                if let Err(e) = timed(limit, bridge.publish_event(&keys::user(user), changed.clone())).await {
                    tracing::debug!(room = c.room, user, error = ?e, "cluster: a DM change not published to its user");
                }
            }
        }
        Ok(server::ack(req, &c.room, c.seq, &msg_id, now_ms))
    }

    /// Step 3: the message as stored (`None`: still not stored after [`STORED_WAIT`]).
    async fn stored_message(&self, c: &ChangeMsg) -> Result<Option<Bytes>, Stop> {
        let started = std::time::Instant::now();
        let mut pause = BACKOFF;
        loop {
            match self.cluster_store_query(rules::lookup_query(c)).await {
                Ok(Answer::RangeAfter(msgs)) => {
                    if let Some(m) = msgs.into_iter().find(|m: &StoredMessage| m.seq == c.seq) {
                        return Ok(Some(m.frame));
                    }
                }
                other => return Err(store_failed(c.req.as_deref(), other)),
            }
            if started.elapsed() >= STORED_WAIT {
                return Ok(None);
            }
            monoio::time::sleep(pause).await;
            pause = (pause * 2).min(BACKOFF * 8);
        }
    }
}

/// Step 2: takes the room's lock, waiting up to [`LOCK_WAIT`] for another change to finish.
async fn lock(bridge: &BridgeHandle, c: &ChangeMsg, token: u64, limit: Duration) -> Result<(), Stop> {
    let started = std::time::Instant::now();
    let mut pause = BACKOFF;
    loop {
        match timed(limit, bridge.lock(&c.room, token, LOCK_TTL_MS)).await {
            Ok(true) => return Ok(()),
            Ok(false) if started.elapsed() < LOCK_WAIT => {}
            Ok(false) => {
                let msg = "another change of this room is running, retry";
                return Err(Busy::Store.reply(c.req.as_deref(), msg));
            }
            Err(f) => return Err(f.reply(c.req.as_deref(), "message change")),
        }
        monoio::time::sleep(pause).await;
        pause = (pause * 2).min(BACKOFF * 8);
    }
}

/// The reply to a store call that failed, or answered something else.
fn store_failed(req: Option<&str>, result: Result<Answer, StoreError>) -> Bytes {
    let e = match result {
        Err(e) => e,
        Ok(other) => {
            tracing::error!(?other, "cluster: a change step got the wrong store answer");
            StoreError::Internal("unexpected store answer".into())
        }
    };
    Failure::Store(e).reply(req, "message not changed")
}
