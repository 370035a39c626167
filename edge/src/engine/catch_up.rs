//! The one catch-up merge: what a member missed after `since`, up to the
//! room's last seq, from sources that each hold an ascending run of seqs
//! (a store or stream read first, then the recent ring), with a `gap` for
//! every range no source holds.
//!
//! Used by every path that catches a member up: a join with `since` and
//! `resume=` on a single node (store read + the owner's ring), the same in
//! a cluster (Redis stream + the member shard's ring), and the cluster pump
//! recovering a jump in a room's sequence.
//!
//! Invariant (property-tested below): the pieces cover `since+1..=upto`
//! exactly once, in ascending order, each seq either as a message or inside
//! one gap, and a gap only where no source holds the seq.

use bytes::Bytes;

use crate::protocol::server;

/// One step of a catch-up: a message a source held, or a range none held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a, T> {
    /// The message with this seq.
    Message(u64, &'a T),
    /// Seqs `from..=to` are held by no source.
    Gap(u64, u64),
}

/// Merges `sources` (each ascending; chained older first, so overlaps are
/// skipped) into the pieces after `since` up to `upto`.
pub fn merge<'a, T: 'a>(since: u64, upto: u64, sources: impl IntoIterator<Item = (u64, &'a T)>) -> Vec<Piece<'a, T>> {
    let mut out = Vec::new();
    if since >= upto {
        return out;
    }
    let mut next = since + 1;
    for (seq, msg) in sources {
        if seq < next || seq > upto {
            continue;
        }
        if seq > next {
            out.push(Piece::Gap(next, seq - 1));
        }
        out.push(Piece::Message(seq, msg));
        next = seq + 1;
    }
    if next <= upto {
        out.push(Piece::Gap(next, upto));
    }
    out
}

/// The catch-up as the frames a client receives: messages as rendered, and
/// `{"type":"gap"}` frames for what no source holds.
pub fn frames<'a>(room: &str, since: u64, upto: u64, sources: impl IntoIterator<Item = (u64, &'a Bytes)>) -> Vec<Bytes> {
    merge(since, upto, sources)
        .into_iter()
        .map(|p| match p {
            Piece::Message(_, m) => m.clone(),
            Piece::Gap(from, to) => server::gap(room, from, to),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn texts(frames: &[Bytes]) -> Vec<String> {
        frames.iter().map(|f| String::from_utf8_lossy(f).into_owned()).collect()
    }

    fn held(seqs: &[u64]) -> Vec<(u64, Bytes)> {
        seqs.iter().map(|&s| (s, Bytes::from(s.to_string()))).collect()
    }

    #[test]
    fn a_read_and_the_ring_are_joined_and_the_holes_named() {
        let fetched = held(&[4, 5, 7]);
        let ring = held(&[8, 9, 10]);
        let sources = fetched.iter().chain(&ring).map(|(s, b)| (*s, b));
        let got = texts(&frames("r", 3, 10, sources));
        assert_eq!(got[..2], ["4", "5"]);
        assert!(got[2].contains("\"type\":\"gap\"") && got[2].contains("\"from\":6") && got[2].contains("\"to\":6"));
        assert_eq!(got[3..], ["7", "8", "9", "10"]);
        // Nothing held at all: one gap for the whole range.
        let none: Vec<(u64, Bytes)> = Vec::new();
        let got = texts(&frames("r", 0, 3, none.iter().map(|(s, b)| (*s, b))));
        assert_eq!(got.len(), 1);
        assert!(got[0].contains("\"from\":1") && got[0].contains("\"to\":3"));
        // Up to date: nothing.
        assert!(frames("r", 10, 10, ring.iter().map(|(s, b)| (*s, b))).is_empty());
    }

    fn ascending(max: u64) -> impl Strategy<Value = Vec<u64>> {
        proptest::collection::btree_set(1..=max, 0..(max as usize)).prop_map(|s| s.into_iter().collect())
    }

    proptest! {
        #[test]
        fn pieces_cover_the_range_once_in_order(
            a in ascending(40), b in ascending(40), since in 0u64..45, upto in 0u64..45,
        ) {
            let (a, b) = (held(&a), held(&b));
            let sources = a.iter().chain(&b).map(|(s, m)| (*s, m));
            let pieces = merge(since, upto, sources);
            let all: BTreeSet<u64> = a.iter().chain(&b).map(|(s, _)| *s).collect();
            let mut next = since + 1;
            for p in &pieces {
                match *p {
                    Piece::Message(seq, m) => {
                        prop_assert_eq!(seq, next, "in order, none skipped or repeated");
                        prop_assert_eq!(m, &Bytes::from(seq.to_string()));
                        next += 1;
                    }
                    Piece::Gap(from, to) => {
                        prop_assert_eq!(from, next);
                        prop_assert!(to >= from && to <= upto);
                        prop_assert!((from..=to).all(|s| !all.contains(&s) || b.iter().any(|(x, _)| *x == s) && a.iter().any(|(x, _)| *x > s)),
                            "a gap only where no source can still deliver the seq in order: {from}..={to}");
                        next = to + 1;
                    }
                }
            }
            prop_assert_eq!(next, upto.max(since) + 1, "the range is covered to the end");
        }
    }
}
