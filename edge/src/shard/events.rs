//! Events without a seq (typing; presence uses the member side's half too),
//! one code for both modes: a member's `typing`
//! goes to the room's owner shard, whose `engine::typing` paces it and runs out
//! its starts; each event it decides is rendered once and handed to the
//! sequencer, which fans it out (over the mesh to the subscribed shards on one
//! node, on the room's Redis channel in a cluster); every member shard gives it
//! to its members of the room but those of the user it is about. Nothing is
//! stored, and a member whose queue is backed up misses it (`events_shed_total`).

use std::time::Duration;

use bytes::Bytes;
use router::Frame;

use super::{Conn, Shard};
use crate::metrics::ShardStats;
use crate::protocol::server;

impl Shard {
    /// A member's `typing` (the session checked the room is joined): to the room's owner shard.
    pub(super) fn on_typing(&self, conn: &Conn, room: &str, typing: bool) {
        let Some(user) = conn.user() else { return };
        let owner = crate::room::owner(room, self.shards);
        if owner == self.id {
            return self.typing_update(room, &user.sub, typing);
        }
        let frame = Frame::Typing {
            room: room.to_owned(),
            user: user.sub.clone(),
            typing,
        };
        // Ephemeral: when the ring to the owner is congested it is shed, not answered.
        if !self.try_request(owner, &frame) {
            ShardStats::inc(&self.stats().events_shed_total);
        }
    }

    /// A typing change in a room this shard owns.
    pub(super) fn typing_update(&self, room: &str, user: &str, typing: bool) {
        self.typing.borrow_mut().update(room, user, typing, Self::now_ms());
        self.carry_out_typing();
    }

    /// The typing timer fired.
    fn typing_tick(&self) {
        self.typing_timer.set(0);
        self.typing.borrow_mut().tick(Self::now_ms());
        self.carry_out_typing();
    }

    /// Hands each decided event to the sequencer, then arms the timer for the next deadline.
    fn carry_out_typing(&self) {
        loop {
            // The borrow ends before the event goes out.
            let Some(e) = self.typing.borrow_mut().poll() else { break };
            let payload = server::typing(&e.room, &e.user, e.typing);
            self.seq_event(&e.room, &e.user, payload);
        }
        let Some(at) = self.typing.borrow().next_deadline() else { return };
        let armed = self.typing_timer.get();
        if armed != 0 && armed <= at {
            return;
        }
        self.typing_timer.set(at);
        let Some(me) = self.rc() else { return };
        let wait = Duration::from_millis(at.saturating_sub(Self::now_ms()));
        monoio::spawn(async move {
            monoio::time::sleep(wait).await;
            // A timer armed earlier since then has ticked already, and armed the next one.
            if me.typing_timer.get() == at {
                me.typing_tick();
            }
        });
    }

    /// An event without a seq for the connections of `users` among shard `shard`'s members
    /// of `room`: its member side, or a frame.
    pub(super) fn event_to_users(&self, shard: usize, room: &str, users: &[String], payload: &Bytes) {
        if shard == self.id {
            return self.member_event_users(room, users, payload);
        }
        let frame = Frame::EventTo {
            room: room.to_owned(),
            users: users.to_vec(),
            payload: payload.to_vec(),
        };
        self.send_frame(shard, &frame);
    }

    /// An event without a seq for this shard's members of `room` who are among `users`.
    pub(super) fn member_event_users(&self, room: &str, users: &[String], payload: &Bytes) {
        self.push_event(room, payload, |user| users.iter().any(|u| u == user));
    }

    /// An event without a seq about `from` for this shard's members of `room` (from the
    /// room's owner shard, or from Redis): to all of them but `from`'s connections (all of
    /// them when `from` is empty: presence).
    pub(super) fn member_event(&self, room: &str, from: &str, payload: &Bytes) {
        self.push_event(room, payload, |user| from.is_empty() || user != from);
    }

    /// `payload` for this shard's members of `room` whose user `to` accepts; shed for a
    /// member whose queue is backed up.
    pub(super) fn push_event(&self, room: &str, payload: &Bytes, to: impl Fn(&str) -> bool) {
        let members = self.members.borrow();
        let conns = self.conns.borrow();
        let (mut sent, mut shed) = (0, 0);
        for c in members.get(room).iter().filter_map(|id| conns.get(id)) {
            if !c.user().is_some_and(|u| to(&u.sub)) {
                continue;
            }
            if c.out.push_ephemeral(payload.clone()) {
                sent += 1;
            } else {
                shed += 1;
            }
        }
        ShardStats::add(&self.stats().events_total, sent);
        ShardStats::add(&self.stats().events_shed_total, shed);
    }
}
