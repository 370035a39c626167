//! Correctness accounting for one receiver in one room, from `seq` alone.
//!
//! Every room numbers its messages 1, 2, 3, ... with no gaps within an
//! epoch, so a receiver can tell from the numbers what it missed:
//! - a seq above the next expected one opens a hole (the seqs skipped);
//! - a seq that fills a hole arrived out of order;
//! - a seq already received is a duplicate;
//! - holes still open at the end, and seqs the senders had acked that the
//!   receiver never reached, are lost.
//!
//! A `gap` frame from the server (history no longer holds some messages)
//! closes those holes as *announced* losses: the server told the truth, so
//! they are counted apart from silent losses.

use std::collections::BTreeSet;

/// Holes tracked one by one; a jump wider than this is counted at once.
const MAX_TRACKED_HOLES: u64 = 1 << 20;

/// The tally of one receiver in one room.
#[derive(Debug, Default, Clone)]
pub struct SeqTracker {
    /// Highest seq received or accounted for.
    max_seen: u64,
    /// Seqs below `max_seen` not received yet.
    holes: BTreeSet<u64>,
    /// Holes too wide to track, counted as lost at once.
    untracked_lost: u64,
    pub delivered: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// Seqs the server announced as gone with a `gap` frame.
    pub announced_lost: u64,
    started: bool,
}

/// What a finished tracker counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub announced_lost: u64,
}

impl Tally {
    pub fn add(&mut self, o: &Self) {
        self.delivered += o.delivered;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.out_of_order += o.out_of_order;
        self.announced_lost += o.announced_lost;
    }

    /// True when nothing was lost silently, duplicated or reordered.
    pub fn is_clean(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.out_of_order == 0
    }
}

impl SeqTracker {
    /// Sets the starting point on the first join: seqs up to `latest` were
    /// sent before this receiver joined and are not expected. Later joins
    /// (after a reconnect) keep the original starting point.
    pub fn begin(&mut self, latest: u64) {
        if !self.started {
            self.started = true;
            self.max_seen = latest;
        }
    }

    /// True once [`begin`](Self::begin) set the starting point.
    pub fn started(&self) -> bool {
        self.started
    }

    /// The seq to ask catch-up from (`join.since`): everything up to it has
    /// been received or accounted for.
    pub fn since(&self) -> u64 {
        self.holes.first().map_or(self.max_seen, |h| h - 1)
    }

    /// Highest seq received or accounted for.
    pub fn max_seen(&self) -> u64 {
        self.max_seen
    }

    /// Counts one received `seq`.
    pub fn receive(&mut self, seq: u64) {
        if seq > self.max_seen {
            self.delivered += 1;
            let skipped = seq - self.max_seen - 1;
            if skipped > MAX_TRACKED_HOLES {
                self.untracked_lost += skipped;
            } else {
                self.holes.extend(self.max_seen + 1..seq);
            }
            self.max_seen = seq;
        } else if self.holes.remove(&seq) {
            self.delivered += 1;
            self.out_of_order += 1;
        } else {
            self.duplicated += 1;
        }
    }

    /// The server announced that seqs `from..=to` are gone.
    pub fn gap(&mut self, from: u64, to: u64) {
        if to < from {
            return;
        }
        let closed: Vec<u64> = self.holes.range(from..=to).copied().collect();
        for s in &closed {
            self.holes.remove(s);
        }
        self.announced_lost += closed.len() as u64;
        if to > self.max_seen {
            let start = from.max(self.max_seen + 1);
            self.announced_lost += to - start + 1;
            self.holes.extend(self.max_seen + 1..start);
            self.max_seen = to;
        }
    }

    /// True when every seq up to `target` was received or accounted for.
    pub fn caught_up(&self, target: u64) -> bool {
        self.max_seen >= target && self.holes.first().is_none_or(|&h| h > target)
    }

    /// The final tally, given the highest seq any sender had acked in this room.
    pub fn finish(&self, last_acked: u64) -> Tally {
        let tail = last_acked.saturating_sub(self.max_seen);
        Tally {
            delivered: self.delivered,
            lost: self.holes.len() as u64 + self.untracked_lost + tail,
            duplicated: self.duplicated,
            out_of_order: self.out_of_order,
            announced_lost: self.announced_lost,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(start: u64, seqs: &[u64], last_acked: u64) -> Tally {
        let mut t = SeqTracker::default();
        t.begin(start);
        for &s in seqs {
            t.receive(s);
        }
        t.finish(last_acked)
    }

    #[test]
    fn clean_stream() {
        let t = run(10, &[11, 12, 13, 14], 14);
        assert_eq!(
            t,
            Tally {
                delivered: 4,
                ..Tally::default()
            }
        );
        assert!(t.is_clean());
    }

    #[test]
    fn a_lost_a_duplicate_and_a_reordered_seq_are_each_counted() {
        // 3 never arrives (lost), 5 arrives twice (duplicate), 7 arrives after 8 (out of order).
        let t = run(0, &[1, 2, 4, 5, 5, 6, 8, 7, 9], 9);
        assert_eq!(t.lost, 1);
        assert_eq!(t.duplicated, 1);
        assert_eq!(t.out_of_order, 1);
        assert_eq!(t.delivered, 8);
        assert!(!t.is_clean());
    }

    #[test]
    fn the_tail_the_senders_acked_but_never_arrived_is_lost() {
        let t = run(0, &[1, 2, 3], 6);
        assert_eq!(t.lost, 3);
    }

    #[test]
    fn seqs_before_joining_are_not_expected() {
        let t = run(100, &[101, 102], 102);
        assert!(t.is_clean());
        // and a seq from before the join is a duplicate, not a delivery
        let t = run(100, &[100, 101], 101);
        assert_eq!((t.duplicated, t.delivered), (1, 1));
    }

    #[test]
    fn since_is_below_the_first_hole() {
        let mut t = SeqTracker::default();
        t.begin(0);
        for s in [1, 2, 5] {
            t.receive(s);
        }
        assert_eq!(t.since(), 2);
        // catch-up fills the holes: counted as reorders, not losses
        t.receive(3);
        t.receive(4);
        assert_eq!(t.since(), 5);
        assert!(t.caught_up(5));
        assert_eq!(t.finish(5).lost, 0);
    }

    #[test]
    fn gaps_are_announced_losses_not_silent_ones() {
        let mut t = SeqTracker::default();
        t.begin(0);
        t.receive(1);
        t.gap(2, 4);
        t.receive(5);
        let f = t.finish(5);
        assert_eq!((f.lost, f.announced_lost, f.delivered), (0, 3, 2));
        assert!(t.caught_up(5));
        // a gap over holes already open closes them
        let mut t = SeqTracker::default();
        t.begin(0);
        t.receive(1);
        t.receive(6);
        t.gap(2, 3);
        let f = t.finish(6);
        assert_eq!((f.lost, f.announced_lost), (2, 2));
    }

    #[test]
    fn rejoining_keeps_the_starting_point() {
        let mut t = SeqTracker::default();
        t.begin(10);
        t.receive(11);
        t.begin(50); // the join after a reconnect: room is at 50 now
        assert_eq!(t.since(), 11);
        assert!(!t.caught_up(50));
        assert_eq!(t.finish(50).lost, 39);
    }
}
