//! Changes to sent messages, on a single node: edits, deletes and
//! reactions of the rooms a shard owns, through the store.
//!
//! A change runs in steps, each a store call whose answer starts the next:
//! 1. read the message (the recent ring, else the store);
//! 2. edit/delete: check the author (or the moderator flag), render the new
//!    version, and replace the stored frame; react: read the message's
//!    reactions to check the bounds, then add or remove one (the rules, shared
//!    with a cluster's changes, are in `engine/change_rules.rs`);
//! 3. tell: the ring keeps the new version, every subscribed shard gets the
//!    `update`/`reaction` event (and the new version for its ring), a DM's two
//!    users get it on the user channel, and the asker gets its `ack`.
//!
//! What must stay true:
//! - a room runs one change at a time, in arrival order (bounded queue): a
//!   delete cannot be overtaken by an edit read before it, and a reaction's
//!   bound check holds when its write lands;
//! - a change waits until the store holds its message (fast mode acks before
//!   the write commits), so a stored frame is never replaced before it exists;
//! - every change gets exactly one answer: `ack`, or an error naming why.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use bytes::Bytes;
use router::ChangeMsg;
use storage::{Answer, Query, ReactionCount, StoreError, StoredMessage};

use super::{load, Effect, Owner, StorePort, Wait};
use crate::engine::change_rules::{self as rules, Plan};
use crate::engine::{Busy, Failure};
use crate::protocol::server;
use crate::protocol::ErrorCode;

use load::Readiness;

/// Changes that may wait behind the one running in a room.
const QUEUE_MAX: usize = 256;
pub use rules::{MAX_EMOJIS_PER_MESSAGE, MAX_EMOJIS_PER_USER};

/// The changes of one room: the one running, and those waiting behind it.
#[derive(Debug, Default)]
pub(super) struct RoomChanges {
    running: bool,
    queue: VecDeque<ChangeMsg>,
}

/// The step a running change waits for.
#[derive(Debug)]
pub(super) enum Stage {
    /// The message, read from the store.
    Lookup,
    /// The message's reactions (a `react`), with the message's id.
    Bounds { msg_id: String },
    /// The reaction's write.
    React { msg_id: String },
    /// The new version's write, with the message's id.
    Replace { frame: Bytes, msg_id: String },
}

/// A running change waiting for the store.
#[derive(Debug)]
pub(super) struct ChangeWait {
    pub(super) change: ChangeMsg,
    pub(super) stage: Stage,
}

impl<S: StorePort> Owner<S> {
    /// A member's edit, delete or reaction of message `c.seq` in a room this shard owns.
    pub fn change(&mut self, c: ChangeMsg, now_ms: u64) {
        let (room, user) = (c.room.clone(), c.user.clone());
        let mut parked = Some(c);
        let ready = self.room_ready(
            &room,
            Some(&user),
            || load::Op::Change(Box::new(parked.take().expect("built once"))),
            now_ms,
        );
        let c = match (ready, parked) {
            (Readiness::Queued, _) | (Readiness::Ready, None) => return,
            (Readiness::Refused(msg), Some(c)) => return self.reply(c.conn, Busy::Store.reply(c.req.as_deref(), msg)),
            (Readiness::Refused(_), None) => return,
            (Readiness::Ready, Some(c)) => c,
        };
        let Some(r) = self.rooms.get(&room) else { return };
        if c.seq == 0 || c.seq > r.published() {
            return self.refuse(&c, ErrorCode::NotFound, &format!("{} has no message {}", c.room, c.seq));
        }
        let changes = self.changes.entry(room.clone()).or_default();
        if changes.queue.len() >= QUEUE_MAX {
            return self.reply(
                c.conn,
                Busy::Store.reply(c.req.as_deref(), "too many changes waiting in this room, retry"),
            );
        }
        changes.queue.push_back(c);
        self.next_change(&room, now_ms);
    }

    /// Starts the room's next change unless one runs, or the next one's message is not stored yet.
    pub(super) fn next_change(&mut self, room: &str, now_ms: u64) {
        let Some(r) = self.rooms.get_mut(room) else { return };
        let settled = r.settled_seq();
        let Some(changes) = self.changes.get_mut(room) else { return };
        if changes.running {
            return;
        }
        // Fast mode: the message may still be on its way to the store; its commit calls this again.
        if changes.queue.front().is_none_or(|c| c.seq > settled) {
            if changes.queue.is_empty() {
                self.changes.remove(room);
            }
            return;
        }
        let Some(c) = changes.queue.pop_front() else { return };
        changes.running = true;
        r.hold();
        let held = r.ring().get(c.seq).cloned();
        match held {
            Some(frame) => self.looked_up(c, Some(frame), now_ms),
            None => {
                let query = rules::lookup_query(&c);
                self.step(c, query, Stage::Lookup, now_ms);
            }
        }
    }

    /// Submits the store call of a change's next step; a full store queue ends the change.
    fn step(&mut self, change: ChangeMsg, query: Query, stage: Stage, now_ms: u64) {
        let ticket = self.take_ticket();
        if self.store.query(query, ticket).is_err() {
            let reply = Busy::Store.reply(change.req.as_deref(), "message store busy, retry");
            return self.finish_change(&change, reply, now_ms);
        }
        self.waits.insert(ticket, Wait::Change(Box::new(ChangeWait { change, stage })));
    }

    /// The store answered a change's step.
    pub(super) fn change_answered(&mut self, w: ChangeWait, result: Result<Answer, StoreError>, now_ms: u64) {
        let c = w.change;
        match (w.stage, result) {
            (Stage::Lookup, Ok(Answer::RangeAfter(msgs))) => {
                let frame = msgs.into_iter().find(|m| m.seq == c.seq).map(|m: StoredMessage| m.frame);
                self.looked_up(c, frame, now_ms);
            }
            (Stage::Bounds { msg_id }, Ok(Answer::ReactionCounts(counts))) => self.react_within_bounds(c, msg_id, &counts, now_ms),
            (Stage::React { msg_id }, Ok(Answer::Reacted)) => self.changed(c, &msg_id, None, now_ms),
            (Stage::Replace { frame, msg_id }, Ok(Answer::Replaced(true))) => self.changed(c, &msg_id, Some(frame), now_ms),
            (Stage::Replace { .. }, Ok(Answer::Replaced(false))) => {
                let msg = format!("{} has no message {}", c.room, c.seq);
                self.finish_change(&c, server::error(c.req.as_deref(), ErrorCode::NotFound, &msg, None), now_ms);
            }
            (_, Err(e)) => {
                let reply = Failure::Store(e).reply(c.req.as_deref(), "message not changed");
                self.finish_change(&c, reply, now_ms);
            }
            (stage, Ok(other)) => {
                tracing::error!(shard = self.cfg.shard, ?stage, ?other, "a change step got the wrong answer");
                let reply =
                    Failure::Store(StoreError::Internal("unexpected store answer".into())).reply(c.req.as_deref(), "message not changed");
                self.finish_change(&c, reply, now_ms);
            }
        }
    }

    /// Step 1 done: the message as stored (`None`: not stored, a seq given up).
    fn looked_up(&mut self, c: ChangeMsg, frame: Option<Bytes>, now_ms: u64) {
        match rules::plan(&c, frame.as_ref(), now_ms) {
            Err(reply) => self.finish_change(&c, reply, now_ms),
            Ok(Plan::React { msg_id }) => {
                let query = rules::bounds_query(&c);
                self.step(c, query, Stage::Bounds { msg_id }, now_ms);
            }
            Ok(Plan::Replace { frame, msg_id }) => {
                let query = Query::ReplaceFrame {
                    room: c.room.clone(),
                    seq: c.seq,
                    frame: frame.clone(),
                };
                self.step(c, query, Stage::Replace { frame, msg_id }, now_ms);
            }
        }
    }

    /// A reaction's bounds, from the message's reactions: then its write (none when it changes nothing).
    fn react_within_bounds(&mut self, c: ChangeMsg, msg_id: String, counts: &[ReactionCount], now_ms: u64) {
        match rules::react_write(&c, counts) {
            Err(reply) => self.finish_change(&c, reply, now_ms),
            // Already there, or already gone: an ack, and nobody is told.
            Ok(None) => {
                let ack = server::ack(c.req.as_deref(), &c.room, c.seq, &msg_id, now_ms);
                self.finish_change(&c, ack, now_ms);
            }
            Ok(Some(query)) => self.step(c, query, Stage::React { msg_id }, now_ms),
        }
    }

    /// The store holds the change: the ring, every subscribed shard, a DM's users, then the ack.
    fn changed(&mut self, c: ChangeMsg, msg_id: &str, frame: Option<Bytes>, now_ms: u64) {
        let event = rules::event(&c, now_ms);
        if let Some(r) = self.rooms.get_mut(&c.room) {
            if let Some(f) = &frame {
                r.patch(c.seq, f.clone());
            }
            let name = r.name();
            for shard in r.subscribers(self.cfg.shard) {
                self.effects.push_back(Effect::Changed {
                    shard,
                    room: name.clone(),
                    seq: c.seq,
                    message: frame.clone(),
                    event: event.clone(),
                });
            }
            if crate::auth::dm_participants(&c.room).is_some() {
                // Seq 0: an event, not a message (the user channel skips no order check for it).
                self.effects.push_back(Effect::ToUsers {
                    room: Rc::clone(&name),
                    seq: 0,
                    payload: event,
                });
            }
        }
        let ack = server::ack(c.req.as_deref(), &c.room, c.seq, msg_id, now_ms);
        self.finish_change(&c, ack, now_ms);
    }

    /// A change refused before it ran (nothing held, nothing queued).
    fn refuse(&mut self, c: &ChangeMsg, code: ErrorCode, msg: &str) {
        self.reply(c.conn, server::error(c.req.as_deref(), code, msg, None));
    }

    /// A running change is answered: the room runs its next one.
    fn finish_change(&mut self, c: &ChangeMsg, reply: Bytes, now_ms: u64) {
        self.reply(c.conn, reply);
        if let Some(r) = self.rooms.get_mut(&c.room) {
            r.release();
        }
        if let Some(changes) = self.changes.get_mut(&c.room) {
            changes.running = false;
        }
        self.next_change(&c.room, now_ms);
    }
}

/// The rooms with changes running or waiting.
pub(super) type Changes = HashMap<String, RoomChanges>;

#[cfg(test)]
mod tests;
