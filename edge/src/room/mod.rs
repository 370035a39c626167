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

pub use dedupe::{AckInfo, Dedupe};
pub use members::MemberIndex;

use std::collections::VecDeque;

use bytes::Bytes;

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
#[derive(Debug)]
pub struct OwnedRoom {
    seq: u64,
    epoch: u64,
    room_hash: u64,
    members_by_shard: Vec<u32>,
    dedupe: Dedupe,
    recent: VecDeque<(u64, Bytes)>,
    recent_cap: usize,
}

impl OwnedRoom {
    /// A room first seen at `now_ms`: seq 0, epoch = creation time.
    pub fn new(room: &str, shards: usize, now_ms: u64, dedupe_cap: usize, recent_cap: usize) -> Self {
        Self {
            seq: 0,
            epoch: now_ms,
            room_hash: stable_hash(room),
            members_by_shard: vec![0; shards],
            dedupe: Dedupe::new(dedupe_cap),
            recent: VecDeque::new(),
            recent_cap,
        }
    }

    /// Latest seq (0 before the first message).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The epoch: seqs are gap-free within one epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Members on all shards.
    pub fn members(&self) -> u64 {
        self.members_by_shard.iter().map(|&n| u64::from(n)).sum()
    }

    /// A member on `shard` joined; returns the new total.
    pub fn join(&mut self, shard: usize) -> u64 {
        if let Some(n) = self.members_by_shard.get_mut(shard) {
            *n = n.saturating_add(1);
        }
        self.members()
    }

    /// A member on `shard` left.
    pub fn leave(&mut self, shard: usize) {
        if let Some(n) = self.members_by_shard.get_mut(shard) {
            *n = n.saturating_sub(1);
        }
    }

    /// Shards other than `me` that have members: one Deliver frame each.
    pub fn remote_shards(&self, me: usize) -> impl Iterator<Item = usize> + '_ {
        self.members_by_shard
            .iter()
            .enumerate()
            .filter(move |(s, n)| *s != me && **n > 0)
            .map(|(s, _)| s)
    }

    /// Assigns the next seq unless `(user, client_id)` was already sequenced.
    pub fn sequence(&mut self, user: &str, client_id: Option<&str>, now_ms: u64) -> Sequenced {
        if let Some(cid) = client_id {
            if let Some(ack) = self.dedupe.get(user, cid) {
                return Sequenced::Duplicate(ack.clone());
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

    /// Keeps the rendered message in the recent ring (bounded).
    pub fn record(&mut self, seq: u64, rendered: Bytes) {
        if self.recent_cap == 0 {
            return;
        }
        if self.recent.len() == self.recent_cap {
            self.recent.pop_front();
        }
        self.recent.push_back((seq, rendered));
    }

    /// Recent messages with seq > `after`, oldest first, when the ring still
    /// holds all of them; `None` when some were already evicted.
    pub fn recent_after(&self, after: u64) -> Option<impl Iterator<Item = &Bytes>> {
        let first = self.first_recent_seq();
        if after + 1 < first && after < self.seq {
            return None;
        }
        Some(self.recent.iter().filter(move |(s, _)| *s > after).map(|(_, b)| b))
    }

    /// Seq of the oldest message the ring holds (`seq + 1` when it holds none).
    pub fn first_recent_seq(&self) -> u64 {
        self.recent.front().map_or(self.seq + 1, |(s, _)| *s)
    }

    /// True when no shard has members: the room may be evicted.
    pub fn is_empty(&self) -> bool {
        self.members_by_shard.iter().all(|&n| n == 0)
    }

    fn msg_id(&self, seq: u64) -> String {
        format!("{:016x}-{:x}-{seq}", self.room_hash, self.epoch)
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
    fn members_are_counted_per_shard() {
        let mut r = OwnedRoom::new("r", 3, 0, 8, 4);
        r.join(0);
        r.join(2);
        assert_eq!(r.join(2), 3);
        assert_eq!(r.remote_shards(0).collect::<Vec<_>>(), [2]);
        r.leave(2);
        r.leave(2);
        r.leave(2); // never below zero
        assert_eq!(r.members(), 1);
        assert!(r.remote_shards(0).next().is_none());
        r.leave(0);
        assert!(r.is_empty());
    }

    #[test]
    fn recent_ring_is_bounded_and_reports_what_it_lost() {
        let mut r = OwnedRoom::new("r", 1, 0, 8, 3);
        for _ in 0..5 {
            let Sequenced::New(a) = r.sequence("u", None, 0) else {
                panic!("new")
            };
            r.record(a.seq, Bytes::from(a.seq.to_string()));
        }
        let got: Vec<_> = r.recent_after(3).expect("held").cloned().collect();
        assert_eq!(got, [Bytes::from("4"), Bytes::from("5")]);
        assert_eq!(r.recent_after(2).expect("held").count(), 3);
        assert!(r.recent_after(1).is_none(), "seq 2 was evicted");
        assert_eq!(r.recent_after(5).expect("nothing missed").count(), 0);
    }
}
