//! Edits, deletes and reactions: the shell around `engine::owner::changes`.
//! A member's change goes to the room's owner shard (a direct call when it
//! is this one, else `Frame::Change`), which answers the connection with a
//! `Frame::Reply`; what changed comes back to every subscribed shard as
//! `Frame::Changed` on the same ring as the room's deliveries, so it follows
//! the message it changes: the shard's ring keeps the new version and the
//! members get the event. Unlike typing, these events are never shed: a
//! member whose queue is full is treated as for a message.

use std::rc::Rc;

use bytes::Bytes;
use router::{ChangeMsg, Frame};

use super::{Conn, Shard};
use crate::engine::Busy;
use crate::metrics::ShardStats;

impl Shard {
    /// A member's change of a sent message, on one node: to the room's owner shard.
    pub(super) fn local_change(&self, conn: &Rc<Conn>, id: Option<&str>, change: ChangeMsg) {
        let owner = crate::room::owner(&change.room, self.shards);
        if owner == self.id {
            return self.owner_change(change);
        }
        if !self.try_request(owner, &Frame::Change(change)) {
            self.overloaded(conn, id);
        }
    }

    /// A change of a message in a room this shard owns.
    pub(super) fn owner_change(&self, change: ChangeMsg) {
        if self.spill_refuses() {
            let reply = Busy::Shard.reply(change.req.as_deref(), super::local::SPILL_FULL);
            return self.to_conn(change.conn, reply);
        }
        self.with_owner(|o, now| o.change(change, now));
    }

    /// A changed message for shard `shard`: its member side, or a frame.
    pub(super) fn changed_to(&self, shard: usize, room: &str, seq: u64, message: Option<Bytes>, event: &Bytes) {
        if shard == self.id {
            return self.member_changed(room, seq, message.as_ref(), event);
        }
        let frame = Frame::Changed {
            room: room.to_owned(),
            seq,
            message: message.map(|m| m.to_vec()),
            event: event.to_vec(),
        };
        self.send_frame(shard, &frame);
    }

    /// Message `seq` of `room` changed: the feed's ring keeps `message`, and every member
    /// here gets `event`.
    pub(super) fn member_changed(&self, room: &str, seq: u64, message: Option<&Bytes>, event: &Bytes) {
        // False: a hole before it is being read, and the event waits its turn.
        if self.subscriber.borrow_mut().changed(room, seq, message, event) {
            self.event_to_members(room, event);
        }
    }

    /// A change's event for every member of `room` here, never shed.
    pub(super) fn event_to_members(&self, room: &str, event: &Bytes) {
        let members = self.members.borrow();
        let conns = self.conns.borrow();
        let mut n = 0;
        for id in members.get(room) {
            if conns.get(id).is_some_and(|c| c.out.push_live(event.clone())) {
                n += 1;
            }
        }
        ShardStats::add(&self.stats().events_total, n);
    }
}
