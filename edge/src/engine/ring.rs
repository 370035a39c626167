//! The recent ring: a room's newest rendered messages, by seq, bounded in count and in
//! bytes (the oldest go first; the newest message is kept whatever its size).
//!
//! One type for both places a room's recent messages are kept: the owner's
//! room state on a single node (history pages and catch-up without the
//! store) and a member shard's feed of a room (catch-up without Redis).
//! Seqs are pushed in ascending order; a seq may be missing (a durable write
//! that failed, or a range announced with `gap`), and the ring never claims
//! to hold a range that has such a hole at its start.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bytes::Bytes;

use crate::room::Page;

/// Messages dropped from rings (all rooms, all shards) to keep them within their byte bound
/// (`edge_ring_bytes_evicted_total`).
pub static EVICTED_FOR_BYTES: AtomicU64 = AtomicU64::new(0);

/// A room's newest messages, oldest first, at most `cap` of them and `max_bytes` of them.
#[derive(Debug, Clone)]
pub struct RecentRing {
    items: VecDeque<(u64, Bytes)>,
    cap: usize,
    max_bytes: usize,
    bytes: usize,
}

impl RecentRing {
    /// An empty ring that keeps at most `cap` messages (0 keeps none).
    pub fn new(cap: usize) -> Self {
        Self {
            items: VecDeque::new(),
            cap,
            max_bytes: usize::MAX,
            bytes: 0,
        }
    }

    /// The same ring, keeping at most `max_bytes` of rendered messages (the newest one
    /// always).
    #[must_use]
    pub fn with_max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    fn pop_oldest(&mut self) -> Option<Bytes> {
        let (_, b) = self.items.pop_front()?;
        self.bytes -= b.len();
        Some(b)
    }

    /// Keeps `seq` (above every seq held) and drops the oldest past the bound.
    pub fn push(&mut self, seq: u64, rendered: Bytes) {
        self.push_then(seq, rendered, drop);
    }

    /// As [`push`](Self::push), handing each message it lets go (`rendered` itself when
    /// the ring keeps none) to `evicted`.
    pub fn push_then(&mut self, seq: u64, rendered: Bytes, mut evicted: impl FnMut(Bytes)) {
        debug_assert!(self.items.back().is_none_or(|(s, _)| *s < seq), "seqs are pushed ascending");
        if self.cap == 0 {
            return evicted(rendered);
        }
        if self.items.len() == self.cap {
            self.pop_oldest().into_iter().for_each(&mut evicted);
        }
        while self.bytes + rendered.len() > self.max_bytes {
            let Some(old) = self.pop_oldest() else { break };
            evicted(old);
            EVICTED_FOR_BYTES.fetch_add(1, Relaxed);
        }
        self.bytes += rendered.len();
        self.items.push_back((seq, rendered));
    }

    /// Bytes of the messages held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Forgets everything (the room's sequence restarted).
    pub fn clear(&mut self) {
        self.items.clear();
        self.bytes = 0;
    }

    /// Keeps only the run of consecutive seqs that ends at `last` (nothing, if the
    /// newest held is not `last`): what the ring holds then has no hole up to `last`.
    pub fn keep_run_to(&mut self, last: u64) {
        if self.items.back().is_none_or(|(s, _)| *s != last) {
            return self.clear();
        }
        let run = self
            .items
            .iter()
            .rev()
            .enumerate()
            .take_while(|(i, (s, _))| *s + *i as u64 == last)
            .count();
        let drop = self.items.len() - run;
        for _ in 0..drop {
            self.pop_oldest();
        }
    }

    /// The message `seq`, when held.
    pub fn get(&self, seq: u64) -> Option<&Bytes> {
        let first = self.first_seq()?;
        let i = usize::try_from(seq.checked_sub(first)?).ok()?;
        // Seqs ascend with holes possible: the entry is at or before index `seq - first`.
        let end = i.min(self.items.len().saturating_sub(1));
        self.items.range(..=end).rev().find(|(s, _)| *s == seq).map(|(_, b)| b)
    }

    /// Puts `rendered` in place of message `seq` (its new version); false when not held.
    pub fn replace(&mut self, seq: u64, rendered: Bytes) -> bool {
        let Some(first) = self.first_seq() else { return false };
        let Some(i) = seq.checked_sub(first).and_then(|d| usize::try_from(d).ok()) else {
            return false;
        };
        let end = i.min(self.items.len().saturating_sub(1));
        match self.items.range_mut(..=end).rev().find(|(s, _)| *s == seq) {
            Some(entry) => {
                // A new version may be larger: the bound is kept again at the next push.
                self.bytes = self.bytes - entry.1.len() + rendered.len();
                entry.1 = rendered;
                true
            }
            None => false,
        }
    }

    /// Seq of the oldest message held.
    pub fn first_seq(&self) -> Option<u64> {
        self.items.front().map(|(s, _)| *s)
    }

    /// Messages held.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether the ring holds everything after `since` up to `upto` (the
    /// room's last seq): nothing to fetch elsewhere for a catch-up.
    pub fn covers(&self, since: u64, upto: u64) -> bool {
        since >= upto || self.first_seq().is_some_and(|first| first <= since.saturating_add(1))
    }

    /// The messages held with seq > `since`, oldest first.
    pub fn after(&self, since: u64) -> impl Iterator<Item = (u64, &Bytes)> {
        self.items.iter().filter(move |(s, _)| *s > since).map(|(s, b)| (*s, b))
    }

    /// A `history` page: the newest `limit` messages with seq < `before`,
    /// oldest first, and the next cursor; `None` when the ring does not hold
    /// the whole page. `from_start` says the room's history starts inside
    /// the ring (nothing older exists), so a short page is still whole.
    pub fn page(&self, before: Option<u64>, limit: usize, from_start: bool) -> Option<Page> {
        let before = before.unwrap_or(u64::MAX);
        let held: Vec<&(u64, Bytes)> = self.items.iter().filter(|(s, _)| *s < before).collect();
        let page = &held[held.len().saturating_sub(limit)..];
        if page.len() < limit && !from_start {
            return None;
        }
        let next = page.first().map(|(s, _)| *s).filter(|&s| s > 1);
        Some((page.iter().map(|e| (e.0, e.1.clone())).collect(), next))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ring(cap: usize, seqs: &[u64]) -> RecentRing {
        let mut r = RecentRing::new(cap);
        for &s in seqs {
            r.push(s, Bytes::from(s.to_string()));
        }
        r
    }

    #[test]
    fn the_byte_bound_drops_the_oldest_and_keeps_the_newest() {
        let mut r = RecentRing::new(100).with_max_bytes(10);
        let before = EVICTED_FOR_BYTES.load(Relaxed);
        for s in 1..=5 {
            r.push(s, Bytes::from(vec![b'x'; 4]));
        }
        assert_eq!(r.after(0).map(|(s, _)| s).collect::<Vec<_>>(), [4, 5], "8 of 10 bytes: two fit");
        assert_eq!(r.bytes(), 8);
        r.push(6, Bytes::from(vec![b'y'; 50]));
        assert_eq!(
            r.after(0).map(|(s, _)| s).collect::<Vec<_>>(),
            [6],
            "the newest stays, even alone over the bound"
        );
        assert!(EVICTED_FOR_BYTES.load(Relaxed) >= before + 5, "counted");
        assert!(!r.covers(3, 6), "what was dropped is not claimed");
        assert!(r.replace(6, Bytes::from_static(b"z")));
        assert_eq!(r.bytes(), 1, "a replaced version is counted at its size");
        r.keep_run_to(7);
        assert_eq!((r.len(), r.bytes()), (0, 0));
    }

    #[test]
    fn keep_run_to_leaves_no_hole() {
        let mut r = ring(8, &[3, 4, 6, 7, 8]);
        r.keep_run_to(8);
        assert_eq!(r.after(0).map(|(s, _)| s).collect::<Vec<_>>(), [6, 7, 8]);
        r.keep_run_to(9);
        assert!(r.is_empty(), "9 is not held: nothing is contiguous up to it");
    }

    #[test]
    fn it_keeps_the_newest_and_says_what_it_covers() {
        let r = ring(3, &[1, 2, 3, 4, 5]);
        assert_eq!(r.first_seq(), Some(3));
        assert!(r.covers(2, 5) && r.covers(4, 5) && r.covers(5, 5) && r.covers(9, 5));
        assert!(!r.covers(1, 5), "seq 2 was dropped");
        assert_eq!(r.after(3).map(|(s, _)| s).collect::<Vec<_>>(), [4, 5]);
        assert!(!RecentRing::new(0).covers(0, 1), "a ring of 0 holds nothing");
        assert!(ring(0, &[1, 2]).is_empty());
    }

    proptest! {
        /// Against a model (every seq pushed, in a Vec): the ring holds the
        /// newest `cap`; `covers` is true exactly when every seq after `since`
        /// up to the last is held; `after` yields exactly the held seqs above `since`.
        #[test]
        fn matches_a_model(cap in 0usize..8, steps in proptest::collection::vec(1u64..4, 0..40), since in 0u64..130) {
            let mut seqs = Vec::new();
            let mut s = 0;
            for d in steps {
                s += d; // holes when d > 1
                seqs.push(s);
            }
            let r = ring(cap, &seqs);
            let held: Vec<u64> = seqs[seqs.len().saturating_sub(cap)..].to_vec();
            prop_assert_eq!(r.after(0).map(|(s, _)| s).collect::<Vec<_>>(), held.clone());
            let upto = seqs.last().copied().unwrap_or(0);
            let want = since >= upto || held.first().is_some_and(|&f| f <= since + 1);
            prop_assert_eq!(r.covers(since, upto), want);
            let above: Vec<u64> = held.iter().copied().filter(|&x| x > since).collect();
            prop_assert_eq!(r.after(since).map(|(s, _)| s).collect::<Vec<_>>(), above);
        }

        /// `get` finds exactly the held seqs; `replace` changes that one entry and nothing else.
        #[test]
        fn get_and_replace_find_exactly_the_held_seq(cap in 1usize..8, steps in proptest::collection::vec(1u64..4, 0..40), probe in 0u64..130) {
            let mut seqs = Vec::new();
            let mut s = 0;
            for d in steps {
                s += d;
                seqs.push(s);
            }
            let mut r = ring(cap, &seqs);
            let held = seqs[seqs.len().saturating_sub(cap)..].contains(&probe);
            prop_assert_eq!(r.get(probe).is_some(), held);
            if held {
                prop_assert_eq!(r.get(probe).cloned(), Some(Bytes::from(probe.to_string())));
            }
            prop_assert_eq!(r.replace(probe, Bytes::from_static(b"new")), held);
            for (seq, b) in r.after(0) {
                let want = if held && seq == probe { Bytes::from_static(b"new") } else { Bytes::from(seq.to_string()) };
                prop_assert_eq!(b.clone(), want);
            }
        }
    }
}
