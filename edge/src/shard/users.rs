//! The user channel, one code for both modes: which of this shard's
//! connections belong to which user, and a DM room's messages for the
//! room's two users' connections that did not join it (a DM reaches its
//! recipient whether or not they joined `dm:<a>:<b>`).
//!
//! On one node the room's owner offers each DM message to every shard
//! (`Frame::UserDeliver`, on the same rings as the room's deliveries, so in
//! seq order); in a cluster the publish script also publishes it on both
//! users' Redis channels, which a node subscribes to while it holds a
//! connection of that user, and the pump hands it to the shards that hold
//! one. A connection that is a member of the DM room gets the message as a
//! member instead, never twice.

use bytes::Bytes;
use router::bridge::keys;
use router::Frame;

use super::sequencer::Sequencer;
use super::{Conn, Shard};
use crate::metrics::ShardStats;

impl Shard {
    /// `conn` proved it is `user`: the first such connection here opens the user's channel.
    pub(super) fn user_online(&self, conn: &Conn, user: &str) {
        let first = self.users.borrow().get(user).is_empty();
        if self.users.borrow_mut().insert(user, conn.id) && first {
            self.user_channel(user, true);
            self.seq_seen(user, true);
        }
    }

    /// `conn` is gone: the last connection of its user here closes the user's channel.
    pub(super) fn user_offline(&self, conn: &Conn) {
        let Some(user) = conn.user() else { return };
        let removed = self.users.borrow_mut().remove(&user.sub, conn.id);
        if removed && self.users.borrow().get(&user.sub).is_empty() {
            self.user_channel(&user.sub, false);
            self.seq_seen(&user.sub, false);
        }
    }

    /// Cluster: this shard wants (or no longer wants) what is published for `user`.
    fn user_channel(&self, user: &str, open: bool) {
        let Sequencer::Redis(r) = &self.sequencer else { return };
        let (bridge, name, shard) = (r.bridge.clone(), keys::user(user), self.id as u16);
        monoio::spawn(async move {
            let done = if open {
                bridge.subscribe(&name, shard).await
            } else {
                bridge.unsubscribe(&name, shard).await
            };
            if let Err(e) = done {
                tracing::warn!(name, open, error = %e, "cluster: a user's channel was not changed");
            }
        });
    }

    /// One node: a DM room's message (from the room's owner, this shard) offered to every shard.
    pub(super) fn to_users_everywhere(&self, room: &str, seq: u64, payload: &Bytes) {
        for shard in 0..self.shards {
            if shard == self.id {
                self.member_to_users(None, room, seq, payload);
                continue;
            }
            let frame = Frame::UserDeliver {
                user: None,
                room: room.to_owned(),
                seq,
                payload: payload.to_vec(),
            };
            self.send_frame(shard, &frame);
        }
    }

    /// A DM room's message for this shard's connections of the room's two users (or of
    /// `only`, one of them: what came on that user's channel) that are not members of the
    /// room (members get it as members).
    pub(super) fn member_to_users(&self, only: Option<&str>, room: &str, seq: u64, payload: &Bytes) {
        let Some((a, b)) = crate::auth::dm_participants(room) else { return };
        let users = self.users.borrow();
        let members = self.members.borrow();
        let conns = self.conns.borrow();
        let in_room = members.get(room);
        let pair = [a, b];
        let mut n = 0;
        for user in pair[..if a == b { 1 } else { 2 }].iter().filter(|u| only.is_none_or(|o| o == **u)) {
            for id in users.get(user).iter().filter(|id| !in_room.contains(id)) {
                if conns.get(id).is_some_and(|c| c.out.push_live(payload.clone())) {
                    n += 1;
                }
            }
        }
        ShardStats::add(&self.stats().deliveries_total, n);
        drop((users, members, conns));
        // Seq 0: an event about the room (an edit, a reaction), not a message.
        if n > 0 && seq > 0 {
            self.note_delivered(room, seq);
        }
    }
}
