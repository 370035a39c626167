//! Delivered marks of the rooms a shard owns, on a single node: the member
//! shards report once a second which users a room's messages reached
//! (`shard/delivered.rs`); the marks are pushed at the next tick to the
//! members who sent to the room in the last 30 s (the senders whose messages
//! they acknowledge; in a DM room to both users), and written to the
//! store at most every `delivered_flush_ms`.
//!
//! What must stay true:
//! - a reported mark is a watermark the user's connections really reached
//!   (the member shard reports the highest seq it handed them), so it is
//!   pushed as reported, and stored forward-only (the store keeps the larger);
//! - a receipt goes to the senders, not to every member: one receipt naming
//!   100 users, pushed each second to 100 members, cost a fan-out of ten
//!   100-member rooms at 10 messages a second 4x its p99 latency (figures in
//!   results/NOTES.md);
//! - writes are coalesced: between two flushes each (room, user) is one row,
//!   written in one `set_marks` per room and seq, so the store's work does
//!   not grow with the message rate (1 000 rows a second in ten 100-member
//!   rooms cost the shard's core a 10 ms burst every second when written
//!   each second: the figures in results/NOTES.md);
//! - a flush the store refuses keeps its marks for the next one; a clean stop
//!   flushes; a crash loses at most the last `delivered_flush_ms` of marks
//!   (they are watermarks: the next delivery moves them again).

use std::collections::BTreeMap;

use std::rc::Rc;

use bytes::Bytes;
use storage::{Answer, MarkKind, Query, StoreError};

use super::{Effect, Owner, StorePort, Wait};
use crate::metrics::ShardStats;

/// A member who sent to a room gets its delivered receipts for this long after its last message.
pub const SENDER_WINDOW_MS: u64 = 30_000;

impl<S: StorePort> Owner<S> {
    /// Message `seq` of `room` reached connections of `users` on a member shard.
    pub fn delivered(&mut self, room: &str, seq: u64, users: Vec<String>) {
        let seq = match self.rooms.get(room) {
            Some(r) => seq.min(r.published()),
            None => seq,
        };
        if seq == 0 {
            return;
        }
        for user in users {
            let pushed = self
                .receipts
                .entry((room.to_owned(), user.clone(), MarkKind::Delivered))
                .or_default();
            *pushed = (*pushed).max(seq);
            let stored = self.delivered_unstored.entry((room.to_owned(), user)).or_default();
            *stored = (*stored).max(seq);
        }
    }

    /// Writes the delivered marks reported since the last flush when `delivered_flush_ms`
    /// has passed (`force`: now, at a clean stop).
    pub(super) fn flush_delivered(&mut self, now_ms: u64, force: bool) {
        if self.delivered_unstored.is_empty() || (!force && now_ms < self.delivered_flushed_ms + self.cfg.delivered_flush_ms) {
            return;
        }
        self.delivered_flushed_ms = now_ms;
        let mut batches: BTreeMap<(String, u64), Vec<String>> = BTreeMap::new();
        for ((room, user), seq) in std::mem::take(&mut self.delivered_unstored) {
            batches.entry((room, seq)).or_default().push(user);
        }
        for ((room, seq), users) in batches {
            let query = Query::SetMarks {
                room: room.clone(),
                users: users.clone(),
                kind: MarkKind::Delivered,
                seq,
            };
            let ticket = self.take_ticket();
            if self.store.query(query, ticket).is_err() {
                // Kept for the next flush.
                ShardStats::inc(&self.stats().store_overloaded_total);
                for user in users {
                    let e = self.delivered_unstored.entry((room.clone(), user)).or_default();
                    *e = (*e).max(seq);
                }
                continue;
            }
            self.waits.insert(ticket, Wait::Delivered { room });
        }
    }

    /// `user` sent to `room` at `now_ms`: the room's delivered receipts of the next
    /// [`SENDER_WINDOW_MS`] are for it too (hot path: a lookup, and an allocation only for a
    /// sender new in the window).
    pub(super) fn note_sender(&mut self, room: &str, user: &str, now_ms: u64) {
        // A room above `receipts_room_max` pushes no receipt: nobody to remember (this also
        // bounds the list this scans).
        let big = self.rooms.get(room).is_none_or(|r| r.roster().len() > self.cfg.receipts_room_max);
        if !self.cfg.delivered_marks || big {
            return;
        }
        match self.delivered_senders.get_mut(room) {
            Some(senders) => match senders.iter_mut().find(|(s, _)| s == user) {
                Some(s) => s.1 = now_ms,
                None => senders.push((user.to_owned(), now_ms)),
            },
            None => {
                self.delivered_senders.insert(room.to_owned(), vec![(user.to_owned(), now_ms)]);
            }
        }
    }

    /// A delivered receipt of `room`: for the members who sent to it lately (the senders
    /// whose messages it acknowledges), and in a DM room for its two users.
    pub(super) fn delivered_receipt(&mut self, room: &str, payload: &Bytes, senders: &Rc<[String]>) {
        let Some(r) = self.rooms.get(room) else { return };
        let name = r.name();
        if crate::auth::dm_participants(room).is_some() {
            // Both users, members of the room or not (seq 0: an event, not a message).
            self.effects.push_back(Effect::ToUsers {
                room: name,
                seq: 0,
                payload: payload.clone(),
            });
            return;
        }
        if senders.is_empty() {
            return;
        }
        for shard in r.subscribers(self.cfg.shard) {
            self.effects.push_back(Effect::EventTo {
                shard,
                room: name.clone(),
                users: senders.clone(),
                payload: payload.clone(),
            });
        }
    }

    /// Forgets the senders older than [`SENDER_WINDOW_MS`] in every room (a room whose last
    /// message went out with nobody left to report it delivered is pruned nowhere else).
    pub(super) fn forget_old_senders(&mut self, now_ms: u64) {
        self.delivered_senders.retain(|_, senders| {
            senders.retain(|(_, at)| at.saturating_add(SENDER_WINDOW_MS) >= now_ms);
            !senders.is_empty()
        });
    }

    /// Who sent to `room` within [`SENDER_WINDOW_MS`] of `now_ms` (older senders are forgotten).
    pub(super) fn recent_senders(&mut self, room: &str, now_ms: u64) -> Rc<[String]> {
        let Some(senders) = self.delivered_senders.get_mut(room) else {
            return Rc::from([]);
        };
        senders.retain(|(_, at)| at.saturating_add(SENDER_WINDOW_MS) >= now_ms);
        let out: Rc<[String]> = senders.iter().map(|(u, _)| u.clone()).collect();
        if senders.is_empty() {
            self.delivered_senders.remove(room);
        }
        out
    }

    /// The store answered a flush of delivered marks.
    pub(super) fn delivered_stored(&mut self, room: &str, result: Result<Answer, StoreError>) {
        match result {
            Ok(Answer::Marks(_)) => {}
            Ok(other) => tracing::error!(shard = self.cfg.shard, ?other, "set_marks answered with something else"),
            Err(e) => tracing::warn!(shard = self.cfg.shard, room, error = %e, "delivered marks not stored: the next ones carry them"),
        }
    }
}

#[cfg(test)]
mod tests {
    use storage::Query;

    use super::super::store_model::*;

    fn set_marks(o: &mut super::Owner<Port>) -> Vec<(u64, Vec<String>)> {
        let asked = o
            .store_mut()
            .queries
            .iter()
            .filter_map(|(_, q)| match q {
                Query::SetMarks { seq, users, .. } => Some((*seq, users.clone())),
                _ => None,
            })
            .collect();
        settle_queries(o);
        asked
    }

    #[test]
    fn marks_are_pushed_each_tick_and_written_once_per_flush() {
        let mut o = owner(8);
        for i in 0..3 {
            send(&mut o, "alice", &format!("m{i}"));
        }
        let users = |u: &[&str]| u.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        o.delivered("r", 1, users(&["bob"]));
        o.tick(NOW);
        assert_eq!(set_marks(&mut o), vec![(1, users(&["bob"]))], "the first flush goes at once");
        o.delivered("r", 1, users(&["bob", "carol"]));
        o.delivered("r", 3, users(&["bob"]));
        o.delivered("r", 9, users(&["dave"]));
        // 1 000 ms is the test owner's flush interval: nothing is written before it.
        o.tick(NOW + 500);
        assert!(set_marks(&mut o).is_empty());
        o.tick(NOW + 1_000);
        let mut written = set_marks(&mut o);
        for w in &mut written {
            w.1.sort();
        }
        written.sort();
        // Coalesced per user (bob at 3), grouped per seq; dave's 9 is cut to the last message.
        assert_eq!(written, vec![(1, users(&["carol"])), (3, users(&["bob", "dave"]))]);
        o.tick(NOW + 3_000);
        assert!(set_marks(&mut o).is_empty(), "nothing new, nothing written");
        o.delivered("r", 3, users(&["carol"]));
        o.stopping(&[], NOW + 3_100);
        assert_eq!(set_marks(&mut o), vec![(3, users(&["carol"]))], "a clean stop flushes");
    }
}

#[cfg(test)]
mod audience {
    use serde_json::json;

    use super::super::store_model::*;
    use super::super::Effect;
    use super::SENDER_WINDOW_MS;

    /// The delivered receipts effects at a tick: (to whom, what it says).
    fn receipts(o: &mut super::Owner<Port>, now: u64) -> Vec<(Vec<String>, serde_json::Value)> {
        o.tick(now);
        settle_queries(o);
        drain(o)
            .into_iter()
            .filter_map(|e| match e {
                Effect::EventTo { users, payload, .. } => Some((users.to_vec(), serde_json::from_slice(&payload).expect("json"))),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_delivered_receipt_goes_to_the_rooms_recent_senders_only() {
        let mut o = owner(8);
        send(&mut o, "alice", "hi");
        o.delivered("r", 1, vec!["bob".into(), "carol".into()]);
        let got = receipts(&mut o, NOW + 10);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, ["alice"], "alice sent; bob and carol did not");
        assert_eq!(
            got[0].1,
            json!({"type":"receipt","room":"r","users":["bob","carol"],"seq":1,"status":"delivered"})
        );
        // Later reports of the same message still reach her, within the window.
        o.delivered("r", 1, vec!["dave".into()]);
        assert_eq!(receipts(&mut o, NOW + 1_000)[0].0, ["alice"]);
        // Past the window, nobody sent lately: nobody is told.
        o.delivered("r", 1, vec!["erin".into()]);
        assert!(receipts(&mut o, NOW + SENDER_WINDOW_MS + 1).is_empty());
    }

    #[test]
    fn senders_of_a_room_nobody_reports_on_are_forgotten_by_the_sweep() {
        let mut o = owner(8);
        send(&mut o, "alice", "hi");
        drain(&mut o);
        assert_eq!(o.delivered_senders.len(), 1);
        o.forget_old_senders(NOW + 1_000);
        assert_eq!(o.delivered_senders.len(), 1, "within the window: kept");
        o.forget_old_senders(NOW + SENDER_WINDOW_MS + 1_000);
        assert!(
            o.delivered_senders.is_empty(),
            "past the window, with no report on the room: forgotten"
        );
    }

    #[test]
    fn a_room_above_receipts_room_max_remembers_no_sender() {
        let mut o = owner(8);
        for i in 0..101 {
            o.subscribe("r", 1, 10 + i, Some(&format!("m{i}")), NOW);
        }
        drain(&mut o);
        send(&mut o, "alice", "hi");
        assert!(o.delivered_senders.is_empty(), "101 online: no receipt will be pushed");
        o.delivered("r", 1, vec!["bob".into()]);
        assert!(receipts(&mut o, NOW + 10).is_empty());
    }
}
