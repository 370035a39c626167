//! Room state, sans-IO: placement by hash, sequencing, idempotent retries and
//! the recent-history ring of a room's owner shard, and the member index every
//! shard keeps for its own connections.
//!
//! Invariants: a room is owned by exactly one shard (`owner`); only the owner
//! assigns `seq`, which starts at 1 and grows by one per accepted message with
//! no gaps within an `epoch`; a retried `client_id` returns the original ack
//! and never a second message.

mod dedupe;
mod members;
mod page;
mod roster;

pub use dedupe::{AckInfo, Dedupe};
pub use members::MemberIndex;
pub use page::{fit_page, fit_page_seqs, Page};
pub use roster::Roster;

use std::collections::{HashSet, VecDeque};
use std::rc::Rc;

use bytes::Bytes;

use crate::engine::RecentRing;

/// FNV-1a, 64 bit: stable across runs, builds and machines, so placement is
/// the same on every node of a cluster.
pub fn stable_hash(key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The shard that owns `room` (or, for connections without a primary room,
/// the shard a user's connection is placed on).
pub fn owner(key: &str, shards: usize) -> usize {
    debug_assert!(shards > 0);
    (stable_hash(key) % shards.max(1) as u64) as usize
}

/// What the owner decided for one `send`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sequenced {
    /// A new message with the next seq.
    New(AckInfo),
    /// A retry of an already-sequenced `client_id`: answer with this ack again.
    Duplicate(AckInfo),
}

/// The owner shard's state of one room.
///
/// `seq` is the last seq assigned; `published` the last seq fanned out (and
/// kept in the recent ring). They differ only in durable mode, while the
/// store commits: a message is published after its batch is committed, in
/// seq order, so nobody sees a seq the store might not have.
#[derive(Debug)]
pub struct OwnedRoom {
    name: Rc<str>,
    /// The name again, for what leaves the thread (each stored message names its room).
    shared_name: std::sync::Arc<str>,
    seq: u64,
    published: u64,
    epoch: u64,
    room_hash: u64,
    /// Shards that deliver the room to their members (subscribed), one flag each.
    subscribed: Vec<bool>,
    /// Members per shard, as their shards report them ([`Self::member`]).
    members_by_shard: Vec<u32>,
    /// Who is online in the room.
    roster: Roster,
    /// Users whose membership (for `sync`) was sent to the store since the room loaded.
    recorded: HashSet<Rc<str>>,
    dedupe: Dedupe,
    recent: RecentRing,
    /// The thread replies the recent ring holds: (seq, root seq), ascending.
    replies: VecDeque<(u64, u64)>,
    /// Store writes and queries still out for this room: it must not be evicted meanwhile.
    holds: u32,
    /// The highest seq the store is known to hold (at load, or committed since).
    stored: u64,
    /// The highest seq someone may have been told of that the store does not hold: a
    /// durable write given up (`gap`), or a fast-mode write that failed after delivery.
    unstored: u64,
    /// Durable sends waiting for their commit: (seq, store ticket), ascending.
    committing: VecDeque<(u64, u64)>,
    /// When a request last named the room (ms; idle eviction reads it).
    active_ms: u64,
}

impl OwnedRoom {
    /// A room first seen at `now_ms`: seq 0, epoch = creation time.
    pub fn new(room: &str, shards: usize, now_ms: u64, dedupe_cap: usize, recent_cap: usize) -> Self {
        Self::restore(room, shards, now_ms, 0, dedupe_cap, recent_cap)
    }

    /// A room as the store knows it: its epoch and the last stored seq, which sequencing continues from.
    pub fn restore(room: &str, shards: usize, epoch: u64, last_seq: u64, dedupe_cap: usize, recent_cap: usize) -> Self {
        Self {
            name: Rc::from(room),
            shared_name: std::sync::Arc::from(room),
            seq: last_seq,
            published: last_seq,
            epoch,
            room_hash: stable_hash(room),
            subscribed: vec![false; shards],
            members_by_shard: vec![0; shards],
            roster: Roster::default(),
            recorded: HashSet::new(),
            dedupe: Dedupe::new(dedupe_cap),
            recent: RecentRing::new(recent_cap),
            replies: VecDeque::new(),
            holds: 0,
            stored: last_seq,
            unstored: 0,
            committing: VecDeque::new(),
            active_ms: 0,
        }
    }

    /// A request named the room at `now_ms`.
    pub fn touch(&mut self, now_ms: u64) {
        self.active_ms = self.active_ms.max(now_ms);
    }

    /// Evictable, and no request named it for `idle_ms` until `now_ms`.
    pub fn is_idle(&self, now_ms: u64, idle_ms: u64) -> bool {
        self.is_evictable() && now_ms.saturating_sub(self.active_ms) >= idle_ms
    }

    /// Puts a stored message back in the recent ring and the dedupe memory (oldest first, at load).
    pub fn warm(&mut self, seq: u64, sender: &str, client_id: Option<&str>, msg_id: &str, ts: u64, frame: Bytes) {
        if let Some(cid) = client_id {
            let ack = AckInfo {
                seq,
                msg_id: msg_id.into(),
                ts,
            };
            self.dedupe.insert(sender, cid, ack);
        }
        if seq <= self.published {
            self.record(seq, frame);
        }
    }

    /// Latest seq assigned (0 before the first message).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Latest seq fanned out to members: what `joined` reports and catch-up runs up to.
    pub fn published(&self) -> u64 {
        self.published
    }

    /// The epoch: seqs are gap-free within one epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The room's name, shared by the effects that name it.
    pub fn name(&self) -> Rc<str> {
        self.name.clone()
    }

    /// The room's name for the store (shared across threads, so a send does not copy it).
    pub fn shared_name(&self) -> std::sync::Arc<str> {
        self.shared_name.clone()
    }

    /// Members on all shards.
    pub fn members(&self) -> u64 {
        self.members_by_shard.iter().map(|&n| u64::from(n)).sum()
    }

    /// Members on shards other than `shard`.
    pub fn others(&self, shard: usize) -> u64 {
        self.members() - self.members_by_shard.get(shard).map_or(0, |&n| u64::from(n))
    }

    /// `shard` delivers the room to its members from now on (once, however often it asks).
    pub fn subscribe(&mut self, shard: usize) {
        if let Some(s) = self.subscribed.get_mut(shard) {
            *s = true;
        }
    }

    /// `shard` has no member and no join left in the room.
    pub fn unsubscribe(&mut self, shard: usize) {
        if let Some(s) = self.subscribed.get_mut(shard) {
            *s = false;
        }
    }

    /// A member (a connection of `user`) on `shard` joined (`true`) or left at `now_ms`:
    /// its shard counts each connection once each way, so no count goes below zero. True
    /// when the user came online or went offline in the room with it.
    pub fn member(&mut self, shard: usize, user: &str, joined: bool, now_ms: u64) -> bool {
        if let Some(n) = self.members_by_shard.get_mut(shard) {
            *n = if joined { n.saturating_add(1) } else { n.saturating_sub(1) };
        }
        if joined {
            self.roster.joined(user, now_ms)
        } else {
            self.roster.left(user)
        }
    }

    /// Who is online in the room.
    pub fn roster(&self) -> &Roster {
        &self.roster
    }

    /// Notes that `user`'s membership is being stored; false when it was already (since
    /// the room loaded).
    pub fn record_member(&mut self, user: &str) -> bool {
        if self.recorded.contains(user) {
            return false;
        }
        self.recorded.insert(Rc::from(user))
    }

    /// The store did not take `user`'s membership: the next join or DM tries again.
    pub fn unrecord_member(&mut self, user: &str) {
        self.recorded.remove(user);
    }

    /// Who is online in the room, to note a coalesced count change.
    pub fn roster_mut(&mut self) -> &mut Roster {
        &mut self.roster
    }

    /// The shards that deliver the room: `me` first when it does, one Deliver each.
    pub fn subscribers(&self, me: usize) -> impl Iterator<Item = usize> + '_ {
        let mine = self.subscribed.get(me).copied().unwrap_or(false);
        let others = self
            .subscribed
            .iter()
            .enumerate()
            .filter(move |(s, on)| *s != me && **on)
            .map(|(s, _)| s);
        mine.then_some(me).into_iter().chain(others)
    }

    /// Assigns the next seq unless `(user, client_id)` was already sequenced.
    pub fn sequence(&mut self, user: &str, client_id: Option<&str>, now_ms: u64) -> Sequenced {
        if let Some(cid) = client_id {
            if let Some(ack) = self.dedupe.get(user, cid) {
                return Sequenced::Duplicate(ack);
            }
        }
        self.seq += 1;
        let ack = AckInfo {
            seq: self.seq,
            msg_id: self.msg_id(self.seq),
            ts: now_ms,
        };
        if let Some(cid) = client_id {
            self.dedupe.insert(user, cid, ack.clone());
        }
        Sequenced::New(ack)
    }

    /// Takes back the seq just assigned (the store refused the write before anything else
    /// happened), so no gap is left. Only the latest seq can be taken back.
    pub fn unsequence(&mut self, seq: u64, user: &str, client_id: Option<&str>) -> bool {
        if seq != self.seq || seq <= self.published {
            return false;
        }
        self.seq -= 1;
        if let Some(cid) = client_id {
            self.dedupe.remove(user, cid);
        }
        true
    }

    /// Forgets a client id whose message could not be stored, so a retry is sequenced anew.
    pub fn forget_client_id(&mut self, user: &str, client_id: &str) {
        self.dedupe.remove(user, client_id);
    }

    /// Marks `seq` as fanned out and keeps its rendering in the recent ring (bounded),
    /// handing each message the ring lets go to `evicted` (the renderer's
    /// [`FramePool`](crate::protocol::server::FramePool) takes them back).
    pub fn publish_then(&mut self, seq: u64, rendered: Bytes, evicted: impl FnMut(Bytes)) {
        self.published = self.published.max(seq);
        self.recent.push_then(seq, rendered, evicted);
    }

    /// Marks `seq` as given up (its write failed): members are told with a `gap`.
    pub fn skip(&mut self, seq: u64) {
        self.published = self.published.max(seq);
    }

    /// The same room, its recent ring keeping at most `max_bytes` of messages.
    #[must_use]
    pub fn with_recent_max_bytes(mut self, max_bytes: usize) -> Self {
        self.recent = self.recent.with_max_bytes(max_bytes);
        self
    }

    fn record(&mut self, seq: u64, rendered: Bytes) {
        self.recent.push(seq, rendered);
    }

    /// A durable send waits for store ticket `ticket`.
    pub fn committing(&mut self, seq: u64, ticket: u64) {
        self.committing.push_back((seq, ticket));
        self.hold();
    }

    /// The commit of durable send `seq` arrived (commits arrive in seq order); false if it was not waiting.
    pub fn committed(&mut self, seq: u64) -> bool {
        let Some(pos) = self.committing.iter().position(|(s, _)| *s == seq) else {
            return false;
        };
        self.committing.remove(pos);
        self.release();
        true
    }

    /// The store ticket of a durable send still waiting for its commit.
    pub fn commit_ticket(&self, seq: u64) -> Option<u64> {
        self.committing.iter().find(|(s, _)| *s == seq).map(|(_, t)| *t)
    }

    /// A store write or query for this room is out.
    pub fn hold(&mut self) {
        self.holds += 1;
    }

    /// A store write or query for this room came back.
    pub fn release(&mut self) {
        self.holds = self.holds.saturating_sub(1);
    }

    /// The recent ring: the newest published messages.
    pub fn ring(&self) -> &RecentRing {
        &self.recent
    }

    /// Published message `seq` replies to `root`: kept while the ring holds `seq`.
    pub fn note_reply(&mut self, seq: u64, root: u64) {
        let first = self.first_recent_seq();
        while self.replies.front().is_some_and(|(s, _)| *s < first) {
            self.replies.pop_front();
        }
        if seq >= first {
            self.replies.push_back((seq, root));
        }
    }

    /// The replies to `root` the ring holds with seq < `before`, oldest first, with their renderings.
    pub fn ring_replies(&self, root: u64, before: u64) -> Vec<(u64, Bytes)> {
        self.replies
            .iter()
            .filter(|(s, r)| *r == root && *s < before)
            .filter_map(|(s, _)| self.recent.get(*s).map(|b| (*s, b.clone())))
            .collect()
    }

    /// Message `seq` changed (an edit or a delete): the ring keeps its new version.
    pub fn patch(&mut self, seq: u64, rendered: Bytes) {
        self.recent.replace(seq, rendered);
    }

    /// The highest seq whose store write has completed, stored or failed (writes complete in
    /// seq order): a message above it may still be on its way to the store.
    pub fn settled_seq(&self) -> u64 {
        self.stored.max(self.unstored)
    }

    /// Recent messages with seq > `after`, oldest first, when the ring still
    /// holds all of them; `None` when some were already evicted.
    pub fn recent_after(&self, after: u64) -> Option<impl Iterator<Item = &Bytes>> {
        if !self.recent.covers(after, self.published) {
            return None;
        }
        Some(self.recent.after(after).map(|(_, b)| b))
    }

    /// A `history` page from the recent ring: the newest `limit` messages with seq < `before`,
    /// oldest first, and the next cursor; `None` when the ring does not hold the whole page.
    pub fn recent_page(&self, before: Option<u64>, limit: usize) -> Option<Page> {
        let from_start = self.first_recent_seq() <= 1 || self.published == 0;
        self.recent.page(before, limit, from_start)
    }

    /// Seq of the oldest message the ring holds (`published + 1` when it holds none).
    pub fn first_recent_seq(&self) -> u64 {
        self.recent.first_seq().unwrap_or(self.published + 1)
    }

    /// True when no shard delivers the room: nobody to deliver to.
    pub fn is_empty(&self) -> bool {
        !self.subscribed.contains(&true)
    }

    /// The write of `seq` was committed.
    pub fn stored(&mut self, seq: u64) {
        self.stored = self.stored.max(seq);
    }

    /// The write of `seq` failed: it was given up (durable) or delivered without being stored (fast).
    pub fn unstored(&mut self, seq: u64) {
        self.unstored = self.unstored.max(seq);
    }

    /// True when the room may be dropped from memory: no shard subscribed, no store work
    /// pending, and the store's last seq is not below a seq that was given up or delivered
    /// unstored (else a reload would continue from below it and reuse that seq).
    pub fn is_evictable(&self) -> bool {
        self.is_empty() && self.holds == 0 && self.committing.is_empty() && self.unstored <= self.stored
    }

    fn msg_id(&self, seq: u64) -> storage::MsgId {
        // At most 16 + 1 + 16 + 1 + 20 = 54 bytes: always inline, no allocation.
        storage::MsgId::format(format_args!("{:016x}-{:x}-{seq}", self.room_hash, self.epoch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_stable_and_spreads() {
        assert_eq!(stable_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[owner(&format!("room-{i}"), 4)] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "uneven spread {counts:?}");
        }
        assert_eq!(owner("anything", 1), 0);
    }

    #[test]
    fn seq_is_gap_free_and_retries_are_deduplicated() {
        let mut r = OwnedRoom::new("r", 2, 1000, 8, 4);
        let Sequenced::New(a1) = r.sequence("u1", Some("c1"), 5) else {
            panic!("new")
        };
        let Sequenced::New(a2) = r.sequence("u1", None, 6) else {
            panic!("new")
        };
        assert_eq!((a1.seq, a2.seq), (1, 2));
        assert_eq!(r.sequence("u1", Some("c1"), 7), Sequenced::Duplicate(a1.clone()));
        // Same client_id from another user is a different message.
        let Sequenced::New(a3) = r.sequence("u2", Some("c1"), 8) else {
            panic!("new")
        };
        assert_eq!(a3.seq, 3);
        assert_ne!(a1.msg_id, a3.msg_id);
        assert_eq!(r.seq(), 3);
    }

    #[test]
    fn subscribed_shards_get_deliveries_and_members_are_counted_per_shard() {
        let mut r = OwnedRoom::new("r", 3, 0, 8, 4);
        assert!(r.is_empty() && r.is_evictable());
        r.subscribe(2);
        r.subscribe(0);
        r.subscribe(2);
        assert_eq!(r.subscribers(2).collect::<Vec<_>>(), [2, 0], "me first, each once");
        assert_eq!(r.subscribers(1).collect::<Vec<_>>(), [0, 2]);
        assert!(r.member(0, "a", true, 1), "a comes online");
        assert!(r.member(2, "b", true, 2));
        assert!(!r.member(2, "a", true, 3), "a's second connection");
        assert_eq!((r.members(), r.others(2), r.others(1)), (3, 1, 3));
        assert!(!r.member(2, "a", false, 4), "a still has a connection on shard 0");
        r.member(1, "z", false, 5); // never counted there: stays at zero
        assert_eq!(r.members(), 2);
        r.unsubscribe(2);
        assert_eq!(r.subscribers(2).collect::<Vec<_>>(), [0]);
        assert!(!r.is_evictable(), "shard 0 still subscribed");
        r.unsubscribe(0);
        assert!(r.is_empty() && r.is_evictable());
    }

    #[test]
    fn recent_ring_is_bounded_and_reports_what_it_lost() {
        let mut r = OwnedRoom::new("r", 1, 0, 8, 3);
        for _ in 0..5 {
            let Sequenced::New(a) = r.sequence("u", None, 0) else {
                panic!("new")
            };
            r.publish_then(a.seq, Bytes::from(a.seq.to_string()), drop);
        }
        let got: Vec<_> = r.recent_after(3).expect("held").cloned().collect();
        assert_eq!(got, [Bytes::from("4"), Bytes::from("5")]);
        assert_eq!(r.recent_after(2).expect("held").count(), 3);
        assert!(r.recent_after(1).is_none(), "seq 2 was evicted");
        assert_eq!(r.recent_after(5).expect("nothing missed").count(), 0);
    }

    #[test]
    fn restored_room_continues_its_seq_and_remembers_client_ids() {
        let mut r = OwnedRoom::restore("r", 1, 77, 10, 8, 4);
        r.warm(9, "u", Some("c9"), "m9", 1, Bytes::from("9"));
        r.warm(10, "u", None, "m10", 2, Bytes::from("10"));
        assert_eq!((r.seq(), r.published(), r.epoch()), (10, 10, 77));
        let Sequenced::Duplicate(a) = r.sequence("u", Some("c9"), 5) else {
            panic!("a stored client_id is a duplicate")
        };
        assert_eq!(a.seq, 9);
        let Sequenced::New(a) = r.sequence("u", Some("c11"), 5) else {
            panic!("new")
        };
        assert_eq!(a.seq, 11);
        assert_eq!(r.recent_after(8).expect("held").count(), 2);
    }

    #[test]
    fn unsequence_takes_back_only_the_latest_unpublished_seq() {
        let mut r = OwnedRoom::new("r", 1, 0, 8, 4);
        let Sequenced::New(a) = r.sequence("u", Some("c"), 0) else {
            panic!("new")
        };
        assert!(r.unsequence(a.seq, "u", Some("c")));
        assert_eq!(r.seq(), 0);
        assert!(
            matches!(r.sequence("u", Some("c"), 0), Sequenced::New(b) if b.seq == 1),
            "retry gets a fresh seq"
        );
        r.publish_then(1, Bytes::from("1"), drop);
        assert!(!r.unsequence(1, "u", Some("c")), "a published seq stays");
    }

    #[test]
    fn durable_commits_publish_in_order_and_hold_the_room() {
        let mut r = OwnedRoom::new("r", 1, 0, 8, 4);
        for t in [100, 101] {
            let Sequenced::New(a) = r.sequence("u", None, 0) else {
                panic!("new")
            };
            r.committing(a.seq, t);
        }
        assert_eq!((r.seq(), r.published()), (2, 0));
        assert!(!r.is_evictable(), "commits pending");
        assert_eq!(r.commit_ticket(2), Some(101));
        assert!(r.committed(1));
        r.publish_then(1, Bytes::from("1"), drop);
        assert!(r.committed(2));
        assert!(!r.committed(2), "once");
        r.skip(2);
        assert_eq!(r.published(), 2);
        assert!(r.is_evictable());
        r.hold();
        assert!(!r.is_evictable(), "a catch-up read is out");
        r.release();
        assert!(r.is_evictable());
    }

    #[test]
    fn history_pages_come_from_the_ring_only_when_it_holds_them() {
        let mut r = OwnedRoom::new("r", 1, 0, 8, 5);
        for seq in 1..=8 {
            r.sequence("u", None, 0);
            r.publish_then(seq, Bytes::from(seq.to_string()), drop);
        }
        // Ring holds 4..=8.
        let (page, next) = r.recent_page(None, 3).expect("newest page held");
        assert_eq!(page, [(6, Bytes::from("6")), (7, Bytes::from("7")), (8, Bytes::from("8"))]);
        assert_eq!(next, Some(6));
        assert!(r.recent_page(Some(6), 3).is_none(), "3..=5 not all held");
        assert_eq!(r.recent_page(Some(6), 2).expect("4, 5").0.len(), 2);
        let fresh = OwnedRoom::new("r", 1, 0, 8, 5);
        assert_eq!(fresh.recent_page(None, 50), Some((Vec::new(), None)));
        let mut small = OwnedRoom::new("r", 1, 0, 8, 5);
        small.sequence("u", None, 0);
        small.publish_then(1, Bytes::from("1"), drop);
        assert_eq!(small.recent_page(None, 50), Some((vec![(1, Bytes::from("1"))], None)));
    }
}
