//! Delivered marks and their receipts in a cluster on a shared store. As on one node
//! (`engine/owner/delivered.rs`), a receipt goes to the members who sent to the room
//! lately, not to every member. No node owns a room in a cluster, so no one place knows its
//! senders; instead each shard knows who sent to the room *from it* (a member's send goes
//! through its own shard, which is subscribed to the room since the member joined it):
//! 1. once a second each member shard reports which users a room's messages reached on it
//!    (`shard/delivered.rs`); here their marks are stored, forward-only, for `sync`;
//! 2. and the receipt (`{"type":"receipt","room","users","seq","status":"delivered"}`)
//!    goes over the room's Redis channel as a `Frame::ToSenders`, and in a DM room over its
//!    two users' channels too;
//! 3. each node's subscribed shards push it to their members who sent to the room from
//!    that shard in the last [`SENDER_WINDOW_MS`] (every member, in a DM room), and a DM
//!    user's channel brings it to the user's connections that did not join the DM room.
//!
//! What must stay true:
//! - a receipt is an event: shed for a member whose queue is backed up, never stored;
//! - rooms with more than `receipts_room_max` users online push none (the count is read
//!   from the presence leases at most once per [`SIZE_KEPT_MS`] per room and shard), but
//!   their marks are still stored;
//! - the senders a shard remembers are forgotten [`SENDER_WINDOW_MS`] after their last
//!   send (at the tick), so the map holds only the last 30 s of senders.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use router::bridge::keys;
use router::Frame;
use storage::{Answer, MarkKind, Query};

use super::cluster::timed;
use super::sequencer::Sequencer;
use super::Shard;
use crate::engine::owner::SENDER_WINDOW_MS;
use crate::protocol::server;

/// How long a room's online count is trusted for the `receipts_room_max` check.
const SIZE_KEPT_MS: u64 = 10_000;

/// Who sent to each room from this shard (user → the time of the last send, ms), and the
/// rooms' online counts read lately (room → (count, read at)).
#[derive(Default)]
pub(crate) struct RecentSenders {
    senders: RefCell<HashMap<String, HashMap<String, u64>>>,
    sizes: RefCell<HashMap<String, (usize, u64)>>,
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

    /// Forgets the senders and counts that are too old.
    fn prune(&self, now_ms: u64) {
        let mut senders = self.senders.borrow_mut();
        senders.retain(|_, users| {
            users.retain(|_, at| at.saturating_add(SENDER_WINDOW_MS) >= now_ms);
            !users.is_empty()
        });
        self.sizes
            .borrow_mut()
            .retain(|_, (_, at)| at.saturating_add(SIZE_KEPT_MS) >= now_ms);
    }

    /// The room's online count, if read in the last [`SIZE_KEPT_MS`].
    fn size(&self, room: &str, now_ms: u64) -> Option<usize> {
        let sizes = self.sizes.borrow();
        sizes
            .get(room)
            .filter(|(_, at)| at.saturating_add(SIZE_KEPT_MS) >= now_ms)
            .map(|(n, _)| *n)
    }
}

impl Shard {
    /// The users message `seq` of `room` reached on this shard (once a second): their delivered
    /// marks are stored forward-only (for `sync`), and the receipt goes to the room's senders
    /// through Redis.
    pub(super) fn cluster_delivered(self: &Rc<Self>, room: String, seq: u64, users: Vec<String>) {
        let Some(bridge) = self.bridge() else { return };
        let payload = server::receipt_users(&room, &users, seq, "delivered");
        let me = self.clone();
        monoio::spawn(async move {
            let query = Query::SetMarks {
                room: room.clone(),
                users,
                kind: MarkKind::Delivered,
                seq,
            };
            match me.cluster_store_query(query).await {
                Ok(Answer::Marks(_)) => {}
                Ok(other) => tracing::error!(?other, "set_marks answered with something else"),
                Err(e) => tracing::warn!(room, error = %e, "cluster: delivered marks not stored: the next ones carry them"),
            }
            if me.receipts_allowed(&bridge, &room).await {
                me.publish_to_senders(&bridge, &room, payload).await;
            }
        });
    }

    /// Whether `room` has at most `receipts_room_max` users online (false when unknown).
    async fn receipts_allowed(&self, bridge: &router::bridge::BridgeHandle, room: &str) -> bool {
        let Sequencer::Redis(r) = &self.sequencer else { return false };
        let now = Self::now_ms();
        let size = match r.senders.size(room, now) {
            Some(n) => n,
            None => {
                let limit = Duration::from_millis(self.cfg.cluster_join_timeout_ms);
                match timed(limit, bridge.presence_online(room)).await {
                    Ok(online) => {
                        r.senders.sizes.borrow_mut().insert(room.to_owned(), (online.len(), now));
                        online.len()
                    }
                    Err(_) => {
                        tracing::debug!(room, "cluster: delivered receipts not pushed: the room's size is unknown");
                        return false;
                    }
                }
            }
        };
        size <= self.cfg.receipts_room_max
    }

    /// The receipt on the room's channel, and on a DM room's users' channels (best effort,
    /// like every event).
    async fn publish_to_senders(&self, bridge: &router::bridge::BridgeHandle, room: &str, payload: Bytes) {
        let frame = router::encode(&Frame::ToSenders {
            room: room.to_owned(),
            payload: payload.to_vec(),
        });
        bridge.notify(room, frame.clone()).await.ok();
        if let Some((a, b)) = crate::auth::dm_participants(room) {
            for user in if a == b { vec![a] } else { vec![a, b] } {
                bridge.notify(&keys::user(user), frame.clone()).await.ok();
            }
        }
    }

    /// A delivered receipt of `room` from Redis: for this shard's members who sent to the room
    /// from it lately (every member, in a DM room).
    pub(super) fn member_to_senders(&self, room: &str, payload: &Bytes) {
        let Sequencer::Redis(r) = &self.sequencer else { return };
        let dm = crate::auth::dm_participants(room).is_some();
        let now = Self::now_ms();
        self.push_event(room, payload, |user| dm || r.senders.sent_lately(room, user, now));
    }

    /// Once a second: forgets the senders and room sizes that are too old.
    pub(super) fn cluster_receipts_tick(&self) {
        if let Sequencer::Redis(r) = &self.sequencer {
            r.senders.prune(Self::now_ms());
        }
    }
}
