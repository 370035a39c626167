//! A member shard's feed of one room: the seq cursor, the epoch, and the
//! recent ring of what was delivered here.
//!
//! The member side keeps one per room it delivers, in both modes:
//! deliveries come in seq order from the room's owner shard or from Redis,
//! and resyncs or catch-up races may repeat one.
//!
//! Invariants: a delivery whose seq is not above the cursor is refused (a
//! re-delivery is never passed to members twice); once the position is known,
//! the cursor moves one seq at a time (a delivery past the next one is a
//! [`Advance::Jump`]: the missed seqs are read first, or skipped with a `gap`
//! named to members); the ring holds only seqs that were delivered,
//! ascending; a reset (the room's sequence restarted) moves the cursor to the
//! new seq and empties the ring.

use bytes::Bytes;

use super::catch_up;
use super::ring::RecentRing;

/// What a delivery does to a feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advance {
    /// The next seq: recorded, for members.
    Next,
    /// At or below the cursor: a re-delivery, dropped.
    Repeat,
    /// The position is not known yet: only held in the ring until [`RoomFeed::learn`].
    Unknown,
    /// Past the next seq: the ones after the cursor (`after`) were missed. Nothing was
    /// recorded: they are read first, then this one is given again.
    Jump {
        /// The cursor: seqs above it, below the delivery's, were missed.
        after: u64,
    },
}

/// What a member shard knows of a room it delivers.
#[derive(Debug)]
pub struct RoomFeed {
    /// The last seq delivered here; `None` before any is known.
    cursor: Option<u64>,
    /// Whether the position came from the sequencer (a read of the room's seq, or a
    /// reset). Before that, deliveries are only held: some may be stale, left in
    /// flight by an earlier subscription of this shard.
    learned: bool,
    epoch: u64,
    ring: RecentRing,
}

impl RoomFeed {
    /// The same feed, its ring keeping at most `max_bytes` of messages.
    #[must_use]
    pub fn with_ring_max_bytes(mut self, max_bytes: usize) -> Self {
        self.ring = self.ring.with_max_bytes(max_bytes);
        self
    }

    /// A feed not yet positioned, with `epoch` and a ring of `ring_cap` messages.
    pub fn new(epoch: u64, ring_cap: usize) -> Self {
        Self {
            cursor: None,
            learned: false,
            epoch,
            ring: RecentRing::new(ring_cap),
        }
    }

    /// The last seq delivered (0 before any is known).
    pub fn cursor(&self) -> u64 {
        self.cursor.unwrap_or(0)
    }

    /// Whether the position is known from the sequencer (members may be answered).
    pub fn is_known(&self) -> bool {
        self.learned
    }

    /// The epoch members are told in `joined`.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The sequencer says the room is at `seq` (read after this shard subscribed).
    ///
    /// The first read sets the position: `seq`, or the newest delivery held if one
    /// came after it (deliveries of one room arrive in order, so those above `seq`
    /// are the run that follows it); the ring keeps only what is contiguous up to
    /// there, so stale deliveries of an earlier subscription go. A later read never
    /// moves the position: deliveries are the room's in-order stream, and a read
    /// that raced ahead of them would make those still in flight look like
    /// re-deliveries and drop them for the members already here.
    ///
    /// `epoch`: the room's epoch, when the sequencer says it with the seq.
    pub fn learn(&mut self, seq: u64, epoch: Option<u64>) {
        if self.learned {
            return;
        }
        self.learned = true;
        if let Some(e) = epoch {
            self.epoch = e;
        }
        let at = self.cursor.map_or(seq, |c| c.max(seq));
        self.cursor = Some(at);
        self.ring.keep_run_to(at);
    }

    /// The room's owner answered this shard's subscribe with its position (a single node):
    /// the answer comes on the same ring as the room's deliveries, before every delivery
    /// of this subscription, so whatever was held before it is from an earlier one and may
    /// be an old version of a message edited since (the owner told only the shards then
    /// subscribed): it is dropped, not kept as a run.
    pub fn learn_from_owner(&mut self, seq: u64, epoch: u64) {
        if !self.learned {
            self.ring.clear();
        }
        self.learn(seq, Some(epoch));
    }

    /// A delivery: recorded when it is the next seq, or while the position is not known
    /// yet (then only held until [`Self::learn`]); see [`Advance`].
    pub fn advance(&mut self, seq: u64, payload: &Bytes) -> Advance {
        match self.cursor {
            Some(c) if seq <= c => return Advance::Repeat,
            Some(c) if self.learned && seq > c + 1 => return Advance::Jump { after: c },
            _ => {}
        }
        self.cursor = Some(seq);
        self.ring.push(seq, payload.clone());
        if self.learned {
            Advance::Next
        } else {
            Advance::Unknown
        }
    }

    /// Seqs up to `to` were missed and no source holds them (members are told with a
    /// `gap`): the cursor moves past them. False when it is there already.
    pub fn skip_to(&mut self, to: u64) -> bool {
        if self.cursor.is_some_and(|c| to <= c) {
            return false;
        }
        self.cursor = Some(to);
        true
    }

    /// What the ring holds, oldest first (for the harness's checks).
    #[cfg(test)]
    pub fn ring_entries(&self) -> Vec<(u64, Bytes)> {
        self.ring.after(0).map(|(s, b)| (s, b.clone())).collect()
    }

    /// Message `seq` changed (an edit or a delete): the ring keeps its current version.
    pub fn patch(&mut self, seq: u64, message: Bytes) {
        self.ring.replace(seq, message);
    }

    /// The room's sequence restarted at `seq` (a new epoch): forget what was held.
    pub fn reset(&mut self, seq: u64, epoch: u64) {
        self.cursor = Some(seq);
        self.learned = true;
        self.epoch = epoch;
        self.ring.clear();
    }

    /// Whether the ring alone can catch a member up from `since`.
    pub fn covers(&self, since: u64) -> bool {
        self.ring.covers(since, self.cursor())
    }

    /// The catch-up frames after `since` up to the cursor: `fetched` (older,
    /// from the stream or the store) first, then the ring, `gap` for the rest.
    pub fn catch_up<'a>(&'a self, room: &str, since: u64, fetched: impl IntoIterator<Item = (u64, &'a Bytes)>) -> Vec<Bytes> {
        catch_up::frames(room, since, self.cursor(), fetched.into_iter().chain(self.ring.after(since)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: u64) -> Bytes {
        Bytes::from(s.to_string())
    }

    #[test]
    fn re_deliveries_are_refused_and_the_ring_follows_the_cursor() {
        let mut f = RoomFeed::new(1, 2);
        assert!(!f.is_known());
        f.learn(5, None);
        assert_eq!(f.advance(5, &b(5)), Advance::Repeat, "at the cursor");
        assert_eq!(f.advance(6, &b(6)), Advance::Next);
        assert_eq!(f.advance(7, &b(7)), Advance::Next);
        assert_eq!(f.advance(6, &b(6)), Advance::Repeat, "behind the cursor");
        assert!(f.covers(5), "6 and 7 are held");
        assert!(!f.covers(4), "5 was never delivered here");
        assert!(f.covers(7));
        f.learn(3, None);
        assert_eq!(f.cursor(), 7, "learning an older seq does not move the cursor back");
        f.learn(9, None);
        assert_eq!(f.cursor(), 7, "nor a newer one: 8 and 9 are still on their way");
        assert_eq!(f.advance(8, &b(8)), Advance::Next);
        f.reset(2, 9);
        assert_eq!((f.cursor(), f.epoch()), (2, 9));
        assert_eq!(
            f.advance(3, &b(3)),
            Advance::Next,
            "after a reset, the restarted sequence is delivered"
        );
    }

    #[test]
    fn a_delivery_past_the_next_seq_is_a_jump_and_records_nothing() {
        let mut f = RoomFeed::new(1, 8);
        f.learn(5, None);
        assert_eq!(f.advance(8, &b(8)), Advance::Jump { after: 5 });
        assert_eq!(f.cursor(), 5, "the cursor waits for 6 and 7");
        assert!(f.ring_entries().is_empty());
        assert_eq!(f.advance(6, &b(6)), Advance::Next);
        assert!(f.skip_to(7), "7 is held nowhere: skipped");
        assert!(!f.skip_to(7), "once");
        assert_eq!(f.advance(8, &b(8)), Advance::Next);
        assert_eq!(f.cursor(), 8);
        // Before the position is known, nothing is a jump: the first read decides.
        let mut g = RoomFeed::new(1, 8);
        assert_eq!(g.advance(3, &b(3)), Advance::Unknown);
        assert_eq!(g.advance(9, &b(9)), Advance::Unknown);
    }

    #[test]
    fn deliveries_before_the_first_read_are_held_and_only_the_fresh_run_kept() {
        let mut f = RoomFeed::new(1, 8);
        // Stale deliveries of an earlier subscription, then 21 after re-subscribing (20 missed).
        for s in [6, 7, 8, 21] {
            assert_eq!(
                f.advance(s, &b(s)),
                Advance::Unknown,
                "not for members before the position is known"
            );
        }
        assert!(!f.is_known());
        f.learn(20, None);
        assert!(f.is_known());
        assert_eq!(f.cursor(), 21, "21 came after the read: the position is past it");
        assert!(f.covers(20), "21 is held");
        assert!(!f.covers(19), "20 never reached this shard: it must be fetched");
        assert_eq!(f.advance(21, &b(21)), Advance::Repeat);
        assert_eq!(f.advance(22, &b(22)), Advance::Next);
        // Stale only: the read decides, the ring is emptied.
        let mut g = RoomFeed::new(1, 8);
        g.advance(6, &b(6));
        g.learn(20, None);
        assert_eq!(g.cursor(), 20);
        assert!(!g.covers(19));
    }

    #[test]
    fn catch_up_takes_the_fetched_then_the_ring() {
        let mut f = RoomFeed::new(1, 3);
        f.learn(7, None);
        for s in 8..=10 {
            f.advance(s, &b(s));
        }
        let fetched = [(5, b(5)), (6, b(6)), (7, b(7)), (8, b(8))];
        let got = f.catch_up("r", 4, fetched.iter().map(|(s, m)| (*s, m)));
        let texts: Vec<String> = got.iter().map(|m| String::from_utf8_lossy(m).into_owned()).collect();
        assert_eq!(texts, ["5", "6", "7", "8", "9", "10"]);
    }
}
