//! The change steps against a small model of the store, answered when the test says.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use router::{ChangeMsg, ChangeOp};
use serde_json::{json, Value};
use storage::{Answer, Completion, Overloaded, Query, ReactionCount, ReactionOp, RoomState, StoredMessage};

use super::super::{Effect, HistoryArgs, Owner, OwnerConfig, SendArgs, StorePort};
use super::{MAX_EMOJIS_PER_MESSAGE, MAX_EMOJIS_PER_USER};
use crate::config::Durability;
use crate::metrics::ShardStats;

/// The store's admission: what was asked, not answered yet, and the model it is answered from.
#[derive(Default)]
struct Port {
    writes: Vec<(u64, StoredMessage)>,
    queries: Vec<(u64, Query)>,
    messages: BTreeMap<u64, StoredMessage>,
    /// (seq, emoji, user).
    reactions: BTreeSet<(u64, String, String)>,
}

impl StorePort for Port {
    fn write(&mut self, msg: StoredMessage, ticket: u64) -> Result<(), Overloaded> {
        self.writes.push((ticket, msg));
        Ok(())
    }

    fn query(&mut self, query: Query, ticket: u64) -> Result<(), Overloaded> {
        self.queries.push((ticket, query));
        Ok(())
    }
}

impl Port {
    fn answer(&mut self, q: Query) -> Answer {
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
            Query::AddUserRoom { .. } => Answer::UserRoomAdded,
            other => panic!("unexpected query {other:?}"),
        }
    }
}

const NOW: u64 = 5_000;

/// An owner of room `r` (loaded, shard 1 subscribed), fast mode, a ring of `ring` messages.
fn owner(ring: usize) -> Owner<Port> {
    let cfg = OwnerConfig {
        shard: 0,
        shards: 2,
        durability: Durability::Fast,
        dedupe_per_room: 8,
        recent_per_room: ring,
        room_load_queue_max: 8,
        max_rooms_per_shard: 8,
        history_page_max_bytes: 1 << 20,
        presence_roster_max: 100,
        receipts_room_max: 100,
        previous_run_clean: true,
        run_epoch: 1,
    };
    let stats = Arc::new((0..2).map(|_| ShardStats::default()).collect::<Vec<_>>());
    let mut o = Owner::new(cfg, Port::default(), stats);
    o.subscribe("r", 1, 1, None, NOW);
    settle_queries(&mut o);
    drain(&mut o);
    o
}

/// Answers every query asked so far (and those their answers ask), in order.
fn settle_queries(o: &mut Owner<Port>) {
    while !o.store_mut().queries.is_empty() {
        let (ticket, q) = o.store_mut().queries.remove(0);
        let result = Ok(o.store_mut().answer(q));
        o.completion(Completion::Answered { ticket, result }, NOW);
    }
}

/// Commits every write asked so far.
fn settle_writes(o: &mut Owner<Port>) {
    for (ticket, msg) in std::mem::take(&mut o.store_mut().writes) {
        o.store_mut().messages.insert(msg.seq, msg);
        o.completion(Completion::Written { ticket, result: Ok(()) }, NOW);
    }
}

fn drain(o: &mut Owner<Port>) -> Vec<Effect> {
    std::iter::from_fn(|| o.poll()).collect()
}

fn send(o: &mut Owner<Port>, user: &str, body: &str) {
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
        reply_to: None,
    };
    o.send(&a, NOW);
    drain(o);
}

fn change(o: &mut Owner<Port>, user: &str, seq: u64, op: ChangeOp) {
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

fn edit(body: &str) -> ChangeOp {
    ChangeOp::Edit { body: body.into() }
}

fn react(emoji: &str, add: bool) -> ChangeOp {
    ChangeOp::React { emoji: emoji.into(), add }
}

fn json(b: &[u8]) -> Value {
    serde_json::from_slice(b).expect("json")
}

/// What the asking connection was answered, and what members were told (events, new versions).
fn outcome(o: &mut Owner<Port>) -> (Vec<Value>, Vec<(Value, Option<Value>)>) {
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

#[test]
fn an_edit_waits_for_its_message_to_be_stored_then_changes_store_ring_and_members() {
    let mut o = owner(8);
    send(&mut o, "alice", "helo");
    change(&mut o, "alice", 1, edit("hello"));
    settle_queries(&mut o);
    assert_eq!(
        outcome(&mut o),
        (vec![], vec![]),
        "fast mode: the write is not committed yet, the edit waits"
    );
    settle_writes(&mut o);
    settle_queries(&mut o);
    let (replies, told) = outcome(&mut o);
    assert_eq!(replies.len(), 1);
    assert_eq!((replies[0]["type"].clone(), replies[0]["seq"].clone()), (json!("ack"), json!(1)));
    assert_eq!(told.len(), 1);
    let (event, version) = &told[0];
    assert_eq!(
        event,
        &json!({"type":"update","room":"r","seq":1,"body":"hello","deleted":false,"edited_ts":NOW})
    );
    let version = version.as_ref().expect("an edit carries the new version");
    assert_eq!(
        (version["body"].clone(), version["edited_ts"].clone()),
        (json!("hello"), json!(NOW))
    );
    assert_eq!(json(&o.store_mut().messages[&1].frame), *version, "the store holds the new version");
    // The ring holds it too: a history page from the ring shows the edit.
    o.history(
        HistoryArgs {
            room: "r",
            user: "alice",
            conn: 7,
            req: None,
            before: None,
            limit: 10,
        },
        NOW,
    );
    settle_queries(&mut o);
    let (replies, _) = outcome(&mut o);
    assert_eq!(replies[0]["messages"][0]["body"], json!("hello"));
}

#[test]
fn only_the_author_or_a_moderator_changes_a_message_and_a_tombstone_stays() {
    let mut o = owner(8);
    send(&mut o, "alice", "one");
    settle_writes(&mut o);
    change(&mut o, "bob", 1, edit("mine now"));
    settle_queries(&mut o);
    let (replies, told) = outcome(&mut o);
    assert_eq!((replies[0]["code"].clone(), told.len()), (json!("forbidden"), 0));
    change(&mut o, "mod", 1, ChangeOp::Delete);
    // Queued behind the delete, read after it: the edit finds a tombstone.
    change(&mut o, "alice", 1, edit("too late"));
    settle_queries(&mut o);
    let (replies, told) = outcome(&mut o);
    assert_eq!(replies[0]["type"], json!("ack"));
    assert_eq!(replies[1]["code"], json!("not_found"), "{}", replies[1]);
    assert_eq!(told.len(), 1);
    assert_eq!(
        told[0].0,
        json!({"type":"update","room":"r","seq":1,"deleted":true,"edited_ts":NOW})
    );
    let stored = json(&o.store_mut().messages[&1].frame);
    assert_eq!((stored["deleted"].clone(), stored.get("body")), (json!(true), None));
    change(&mut o, "alice", 1, react("👍", true));
    settle_queries(&mut o);
    assert_eq!(outcome(&mut o).0[0]["code"], json!("not_found"), "no reaction on a tombstone");
}

#[test]
fn unknown_seqs_are_not_found_at_once() {
    let mut o = owner(8);
    send(&mut o, "alice", "one");
    settle_writes(&mut o);
    for seq in [0, 2, 99] {
        change(&mut o, "alice", seq, ChangeOp::Delete);
        let (replies, _) = outcome(&mut o);
        assert_eq!(replies[0]["code"], json!("not_found"), "seq {seq}");
        assert!(o.store_mut().queries.is_empty(), "nothing asked of the store for seq {seq}");
    }
}

#[test]
fn a_message_out_of_the_ring_is_read_from_the_store() {
    let mut o = owner(2);
    for i in 0..5 {
        send(&mut o, "alice", &format!("m{i}"));
    }
    settle_writes(&mut o);
    change(&mut o, "alice", 1, edit("first, edited"));
    assert!(matches!(o.store_mut().queries[0].1, Query::RangeAfter { after: 0, limit: 1, .. }));
    settle_queries(&mut o);
    let (replies, told) = outcome(&mut o);
    assert_eq!(
        (replies[0]["type"].clone(), told[0].0["body"].clone()),
        (json!("ack"), json!("first, edited"))
    );
    assert_eq!(json(&o.store_mut().messages[&1].frame)["body"], json!("first, edited"));
}

#[test]
fn reactions_are_told_once_per_change_and_bounded() {
    let mut o = owner(8);
    send(&mut o, "alice", "one");
    settle_writes(&mut o);
    change(&mut o, "bob", 1, react("👍", true));
    change(&mut o, "bob", 1, react("👍", true));
    change(&mut o, "bob", 1, react("👍", false));
    change(&mut o, "bob", 1, react("🎉", false));
    settle_queries(&mut o);
    let (replies, told) = outcome(&mut o);
    assert!(replies.iter().all(|r| r["type"] == "ack"), "{replies:?}");
    let ops: Vec<Value> = told
        .iter()
        .map(|(e, m)| {
            assert!(m.is_none(), "a reaction changes no message version");
            e["op"].clone()
        })
        .collect();
    assert_eq!(
        ops,
        [json!("add"), json!("remove")],
        "a repeated add and an absent remove tell nobody"
    );
    // Per user.
    for i in 0..MAX_EMOJIS_PER_USER + 1 {
        change(&mut o, "carol", 1, react(&format!("e{i}"), true));
    }
    settle_queries(&mut o);
    let (replies, _) = outcome(&mut o);
    assert_eq!(replies[MAX_EMOJIS_PER_USER]["code"], json!("too_large"));
    // Per message: other users fill it up to the bound.
    for i in MAX_EMOJIS_PER_USER..MAX_EMOJIS_PER_MESSAGE + 1 {
        change(&mut o, &format!("u{i}"), 1, react(&format!("e{i}"), true));
    }
    settle_queries(&mut o);
    let (replies, _) = outcome(&mut o);
    let last = replies.last().expect("answers");
    assert_eq!(last["code"], json!("too_large"), "{last}");
    assert_eq!(
        replies.iter().filter(|r| r["type"] == "ack").count(),
        MAX_EMOJIS_PER_MESSAGE - MAX_EMOJIS_PER_USER
    );
    // A known emoji may still be added by someone else.
    change(&mut o, "dave", 1, react("e0", true));
    settle_queries(&mut o);
    assert_eq!(outcome(&mut o).0[0]["type"], json!("ack"));
}

#[test]
fn history_messages_carry_their_reactions_with_the_askers_own() {
    let mut o = owner(8);
    send(&mut o, "alice", "one");
    send(&mut o, "alice", "two");
    settle_writes(&mut o);
    change(&mut o, "bob", 2, react("👍", true));
    change(&mut o, "carol", 2, react("👍", true));
    settle_queries(&mut o);
    outcome(&mut o);
    o.history(
        HistoryArgs {
            room: "r",
            user: "bob",
            conn: 7,
            req: None,
            before: None,
            limit: 10,
        },
        NOW,
    );
    settle_queries(&mut o);
    let (replies, _) = outcome(&mut o);
    let msgs = &replies[0]["messages"];
    assert!(msgs[0].get("reactions").is_none(), "no reactions, no field: {}", msgs[0]);
    assert_eq!(msgs[1]["reactions"], json!([{"emoji":"👍","count":2,"me":true}]));
}
