//! Delivered receipts in a cluster on a shared store, member side. As on one node
//! (`engine/owner/delivered.rs`), a receipt goes to the members who sent to the room
//! lately, not to every member. No node owns a room in a cluster, so no one place knows its
//! senders; instead each shard knows who sent to the room *from it* (a member's send goes
//! through its own shard, which is subscribed to the room since the member joined it):
//! 1. once a second each member shard reports which users a room's messages reached on it
//!    (`shard/delivered.rs`); their marks are stored, forward-only, for `sync`, and the
//!    receipt (`{"type":"receipt","room","users","seq","status":"delivered"}`) goes over
//!    the room's Redis channel as a `Frame::ToSenders`, and in a DM room over its two
//!    users' channels too (`engine::cluster_state`, shell `cluster_state.rs`);
//! 2. each node's subscribed shards push it to their members who sent to the room from
//!    that shard in the last [`SENDER_WINDOW_MS`] (every member, in a DM room), and a DM
//!    user's channel brings it to the user's connections that did not join the DM room.
//!
//! What must stay true:
//! - a receipt is an event: shed for a member whose queue is backed up, never stored;
//! - the senders a shard remembers are forgotten [`SENDER_WINDOW_MS`] after their last
//!   send (at the tick), so the map holds only the last 30 s of senders.

use std::cell::RefCell;
use std::collections::HashMap;

use bytes::Bytes;

use super::sequencer::Sequencer;
use super::Shard;
use crate::engine::owner::SENDER_WINDOW_MS;

/// Who sent to each room from this shard (user → the time of the last send, ms).
#[derive(Default)]
pub(crate) struct RecentSenders {
    senders: RefCell<HashMap<String, HashMap<String, u64>>>,
}

impl RecentSenders {
    /// `user` sent to `room` from this shard at `now_ms` (hot path: two lookups, and an
    /// allocation only for a sender new to the room).
    pub(crate) fn note(&self, room: &str, user: &str, now_ms: u64) {
        let mut senders = self.senders.borrow_mut();
        let users = match senders.get_mut(room) {
            Some(users) => users,
            None => senders.entry(room.to_owned()).or_default(),
        };
        match users.get_mut(user) {
            Some(at) => *at = now_ms,
            None => {
                users.insert(user.to_owned(), now_ms);
            }
        }
    }

    /// Whether `user` sent to `room` from this shard in the last [`SENDER_WINDOW_MS`].
    fn sent_lately(&self, room: &str, user: &str, now_ms: u64) -> bool {
        let senders = self.senders.borrow();
        let at = senders.get(room).and_then(|users| users.get(user));
        at.is_some_and(|&at| at.saturating_add(SENDER_WINDOW_MS) >= now_ms)
    }

    /// Forgets the senders that are too old.
    fn prune(&self, now_ms: u64) {
        let mut senders = self.senders.borrow_mut();
        senders.retain(|_, users| {
            users.retain(|_, at| at.saturating_add(SENDER_WINDOW_MS) >= now_ms);
            !users.is_empty()
        });
    }
}

impl Shard {
    /// A delivered receipt of `room` from Redis: for this shard's members who sent to the room
    /// from it lately (every member, in a DM room).
    pub(super) fn member_to_senders(&self, room: &str, payload: &Bytes) {
        let Sequencer::Redis(r) = &self.sequencer else { return };
        let dm = crate::auth::dm_participants(room).is_some();
        let now = Self::now_ms();
        self.push_event(room, payload, |user| dm || r.senders.sent_lately(room, user, now));
    }

    /// Once a second: forgets the senders that are too old.
    pub(super) fn cluster_receipts_tick(&self) {
        if let Sequencer::Redis(r) = &self.sequencer {
            r.senders.prune(Self::now_ms());
        }
    }
}
