//! A small model of the store for the owner's unit tests: what the owner asks
//! waits until the test answers it, from a map of messages and a set of reactions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use router::{ChangeMsg, ChangeOp};
use serde_json::Value;
use storage::{Answer, Completion, Overloaded, Query, ReactionCount, ReactionOp, RoomState, StoredMessage};

use super::{Effect, HistoryArgs, Owner, OwnerConfig, SendArgs, StorePort};
use crate::config::Durability;
use crate::metrics::ShardStats;

/// The store's admission: what was asked, not answered yet, and the model it is answered from.
#[derive(Default)]
pub(super) struct Port {
    pub(super) writes: Vec<(u64, StoredMessage)>,
    pub(super) queries: Vec<(u64, Query)>,
    pub(super) messages: BTreeMap<u64, StoredMessage>,
    /// (seq, emoji, user).
    pub(super) reactions: BTreeSet<(u64, String, String)>,
    pub(super) last_seen: BTreeMap<String, u64>,
    /// While set, every query is refused as if the store's queue were full.
    pub(super) full: bool,
}

impl StorePort for Port {
    fn write(&mut self, msg: StoredMessage, ticket: u64) -> Result<(), Overloaded> {
        self.writes.push((ticket, msg));
        Ok(())
    }

    fn query(&mut self, query: Query, ticket: u64) -> Result<(), Overloaded> {
        if self.full {
            return Err(Overloaded);
        }
        self.queries.push((ticket, query));
        Ok(())
    }
}

impl Port {
    pub(super) fn answer(&mut self, q: Query) -> Answer {
        match q {
            Query::RoomState { .. } => Answer::RoomState(RoomState { epoch: 1, last_seq: 0 }),
            Query::RangeAfter { after, limit, .. } => {
                Answer::RangeAfter(self.messages.range(after + 1..).take(limit).map(|(_, m)| m.clone()).collect())
            }
            Query::History { before, limit, .. } => {
                let below: Vec<StoredMessage> = self.messages.range(..before.unwrap_or(u64::MAX)).map(|(_, m)| m.clone()).collect();
                let messages = below[below.len().saturating_sub(limit)..].to_vec();
                let next_before = (below.len() > limit).then(|| messages[0].seq);
                Answer::History(storage::HistoryPage { messages, next_before })
            }
            Query::ReactionCounts { from, to, user, .. } => {
                let mut counts: Vec<ReactionCount> = Vec::new();
                for (seq, emoji, u) in self.reactions.iter().filter(|r| (from..=to).contains(&r.0)) {
                    match counts.last_mut() {
                        Some(c) if c.seq == *seq && c.emoji == *emoji => {
                            c.count += 1;
                            c.me |= *u == user;
                        }
                        _ => counts.push(ReactionCount {
                            seq: *seq,
                            emoji: emoji.clone(),
                            count: 1,
                            me: *u == user,
                        }),
                    }
                }
                Answer::ReactionCounts(counts)
            }
            Query::React { seq, user, emoji, op, .. } => {
                match op {
                    ReactionOp::Add => self.reactions.insert((seq, emoji, user)),
                    ReactionOp::Remove => self.reactions.remove(&(seq, emoji, user)),
                };
                Answer::Reacted
            }
            Query::ReplaceFrame { seq, frame, .. } => Answer::Replaced(self.messages.get_mut(&seq).map(|m| m.frame = frame).is_some()),
            Query::Thread { root, before, limit, .. } => {
                let below: Vec<StoredMessage> = self
                    .messages
                    .range(..before.unwrap_or(u64::MAX))
                    .map(|(_, m)| m)
                    .filter(|m| m.reply_to == Some(root))
                    .cloned()
                    .collect();
                let messages = below[below.len().saturating_sub(limit)..].to_vec();
                let next_before = (below.len() > limit).then(|| messages[0].seq);
                Answer::History(storage::HistoryPage { messages, next_before })
            }
            Query::ReplyCounts { from, to, .. } => {
                let mut counts: BTreeMap<u64, u64> = BTreeMap::new();
                for root in self
                    .messages
                    .values()
                    .filter_map(|m| m.reply_to)
                    .filter(|r| (from..=to).contains(r))
                {
                    *counts.entry(root).or_default() += 1;
                }
                Answer::ReplyCounts(counts.into_iter().collect())
            }
            Query::AddUserRoom { .. } => Answer::UserRoomAdded,
            Query::SetLastSeen { user, ts_ms } => {
                let t = self.last_seen.entry(user).or_default();
                *t = (*t).max(ts_ms);
                Answer::LastSeenSet
            }
            Query::LastSeen { user } => Answer::LastSeen(self.last_seen.get(&user).copied()),
            Query::SetMarks { users, seq, .. } => Answer::Marks(users.iter().map(|_| seq).collect()),
            other => panic!("unexpected query {other:?}"),
        }
    }
}

pub(super) const NOW: u64 = 5_000;

/// The test owners' configuration: shard 0 of 2, fast mode, small bounds, a ring of `ring`.
pub(super) fn config(ring: usize) -> OwnerConfig {
    OwnerConfig {
        shard: 0,
        shards: 2,
        durability: Durability::Fast,
        dedupe_per_room: 8,
        recent_per_room: ring,
        recent_per_room_bytes: usize::MAX,
        room_load_queue_max: 8,
        max_rooms_per_shard: 8,
        room_idle_evict_ms: 0,
        rooms_per_user_per_s: 0.0,
        rooms_per_user_burst: 1,
        history_page_max_bytes: 1 << 20,
        presence_roster_max: 100,
        receipts_room_max: 100,
        delivered_marks: true,
        delivered_flush_ms: 1_000,
        previous_run_clean: true,
        run_epoch: 1,
    }
}

/// An owner of room `r` (loaded, shard 1 subscribed), fast mode, a ring of `ring` messages.
pub(super) fn owner(ring: usize) -> Owner<Port> {
    let stats = Arc::new((0..2).map(|_| ShardStats::default()).collect::<Vec<_>>());
    let mut o = Owner::new(config(ring), Port::default(), stats);
    o.subscribe("r", 1, 1, None, NOW);
    settle_queries(&mut o);
    drain(&mut o);
    o
}

/// Answers every query asked so far (and those their answers ask), in order.
pub(super) fn settle_queries(o: &mut Owner<Port>) {
    while !o.store_mut().queries.is_empty() {
        let (ticket, q) = o.store_mut().queries.remove(0);
        let result = Ok(o.store_mut().answer(q));
        o.completion(Completion::Answered { ticket, result }, NOW);
    }
}

/// Commits every write asked so far.
pub(super) fn settle_writes(o: &mut Owner<Port>) {
    for (ticket, msg) in std::mem::take(&mut o.store_mut().writes) {
        o.store_mut().messages.insert(msg.seq, msg);
        o.completion(Completion::Written { ticket, result: Ok(()) }, NOW);
    }
}

pub(super) fn drain(o: &mut Owner<Port>) -> Vec<Effect> {
    std::iter::from_fn(|| o.poll()).collect()
}

pub(super) fn send(o: &mut Owner<Port>, user: &str, body: &str) {
    send_reply(o, user, body, None);
}

/// A send of `user` with `reply_to`; what the owner answered is drained.
pub(super) fn send_reply(o: &mut Owner<Port>, user: &str, body: &str, reply_to: Option<u64>) -> Vec<Effect> {
    let a = SendArgs {
        room: "r",
        shard: 1,
        conn: 9,
        user,
        req: None,
        client_id: None,
        body,
        kind: "text",
        file: None,
        reply_to,
    };
    o.send(&a, NOW);
    drain(o)
}

pub(super) fn change(o: &mut Owner<Port>, user: &str, seq: u64, op: ChangeOp) {
    let c = ChangeMsg {
        room: "r".into(),
        seq,
        user: user.into(),
        moderator: user == "mod",
        conn: 7,
        req: Some("\"c\"".into()),
        op,
    };
    o.change(c, NOW);
}

pub(super) fn edit(body: &str) -> ChangeOp {
    ChangeOp::Edit { body: body.into() }
}

pub(super) fn react(emoji: &str, add: bool) -> ChangeOp {
    ChangeOp::React { emoji: emoji.into(), add }
}

pub(super) fn json(b: &[u8]) -> Value {
    serde_json::from_slice(b).expect("json")
}

/// What the asking connection was answered, and what members were told (events, new versions).
pub(super) fn outcome(o: &mut Owner<Port>) -> (Vec<Value>, Vec<(Value, Option<Value>)>) {
    let (mut replies, mut told) = (Vec::new(), Vec::new());
    for e in drain(o) {
        match e {
            Effect::Reply { conn: 7, payload } => replies.push(json(&payload)),
            Effect::Changed {
                shard: 1, event, message, ..
            } => told.push((json(&event), message.map(|m| json(&m)))),
            other => panic!("unexpected effect {other:?}"),
        }
    }
    (replies, told)
}

/// Asks for a history page for connection 7 of `user` (answered once the store is).
pub(super) fn ask_history(o: &mut Owner<Port>, user: &str, before: Option<u64>, limit: u32, thread: Option<u64>) {
    let h = HistoryArgs {
        room: "r",
        user,
        conn: 7,
        req: None,
        before,
        limit,
        thread,
    };
    o.history(h, NOW);
}
