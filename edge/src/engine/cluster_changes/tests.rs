//! The changes against a small model of Redis (each room's counter and lock, with its
//! expiry) and of the shared store (messages by room and seq, reactions). Named cases
//! first, then a property test that answers every call right, failed, late or with the
//! wrong kind of answer, in any order across rooms, with time passing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use router::bridge::{keys, BridgeError};
use router::ChangeOp;
use storage::{Answer, Query, ReactionCount, ReactionOp, StoreError, StoredMessage};

use super::*;
use crate::protocol::server::{self, MessageOut, StoredView};

const NOW: u64 = 1_000_000;
const TIMEOUT: u64 = 1_000;

fn changes() -> Changes {
    Changes::new(ChangesConfig { timeout_ms: TIMEOUT })
}

fn budget() -> u64 {
    changes().budget_ms()
}

/// A stored `message` frame of `room`'s `seq`, sent by `from`.
fn message(room: &str, seq: u64, from: &str) -> Bytes {
    server::message(&MessageOut {
        room,
        seq,
        msg_id: &format!("m{seq}"),
        from,
        ts: 5,
        body: "hi",
        kind: "text",
        file: None,
        reply_to: None,
    })
}

/// Redis and the store, as the changes see them.
#[derive(Debug, Default)]
struct Model {
    /// Each room's counter.
    top: HashMap<String, u64>,
    /// Each room's lock: (token, expires at).
    locks: HashMap<String, (u64, u64)>,
    /// Messages by (room, seq).
    stored: BTreeMap<(String, u64), Bytes>,
    /// Reactions: (room, seq, user, emoji).
    reactions: BTreeSet<(String, u64, String, String)>,
    /// What was published: (channel, frame).
    published: Vec<(String, Bytes)>,
}

impl Model {
    /// `room` with messages `1..=n` of ann, stored.
    fn room(mut self, room: &str, n: u64) -> Self {
        self.top.insert(room.into(), n);
        for seq in 1..=n {
            self.stored.insert((room.into(), seq), message(room, seq, "ann"));
        }
        self
    }

    fn lock_holder(&self, room: &str, now: u64) -> Option<u64> {
        self.locks.get(room).filter(|l| l.1 > now).map(|l| l.0)
    }

    /// Carries out `call` at `now` and answers it.
    fn answer(&mut self, call: &ChangeCall, now: u64) -> ChangeAnswer {
        match call {
            ChangeCall::RoomSeq { room } => ChangeAnswer::RoomSeq(Ok(self.top.get(room).copied().unwrap_or(0))),
            ChangeCall::Lock { room, token, ttl_ms } => {
                let free = self.lock_holder(room, now).is_none();
                if free {
                    self.locks.insert(room.clone(), (*token, now + ttl_ms));
                }
                ChangeAnswer::Locked(Ok(free))
            }
            ChangeCall::Unlock { room, token } => {
                if self.lock_holder(room, now) == Some(*token) {
                    self.locks.remove(room);
                }
                ChangeAnswer::Unlocked(Ok(()))
            }
            ChangeCall::Publish { channel, frame } => {
                self.published.push((channel.clone(), frame.clone()));
                ChangeAnswer::Published(Ok(()))
            }
            ChangeCall::Store(q) => ChangeAnswer::Stored(Ok(self.query(q))),
        }
    }

    fn query(&mut self, q: &Query) -> Answer {
        match q {
            Query::RangeAfter { room, after, limit } => Answer::RangeAfter(
                self.stored
                    .range((room.clone(), after + 1)..=(room.clone(), u64::MAX))
                    .take(*limit)
                    .map(|((r, seq), frame)| StoredMessage {
                        room: Arc::from(r.as_str()),
                        seq: *seq,
                        msg_id: format!("m{seq}").as_str().into(),
                        sender: Arc::from("ann"),
                        ts_ms: 5,
                        client_id: None,
                        reply_to: None,
                        frame: frame.clone(),
                    })
                    .collect(),
            ),
            Query::ReplaceFrame { room, seq, frame } => match self.stored.get_mut(&(room.clone(), *seq)) {
                Some(f) => {
                    *f = frame.clone();
                    Answer::Replaced(true)
                }
                None => Answer::Replaced(false),
            },
            Query::ReactionCounts { room, from, user, .. } => {
                let mut counts: BTreeMap<&str, (u64, bool)> = BTreeMap::new();
                for (r, s, u, e) in &self.reactions {
                    if r == room && s == from {
                        let c = counts.entry(e).or_default();
                        c.0 += 1;
                        c.1 |= u == user;
                    }
                }
                let counts = counts.into_iter().map(|(emoji, (count, me))| ReactionCount {
                    seq: *from,
                    emoji: emoji.into(),
                    count,
                    me,
                });
                Answer::ReactionCounts(counts.collect())
            }
            Query::React {
                room,
                seq,
                user,
                emoji,
                op,
            } => {
                let key = (room.clone(), *seq, user.clone(), emoji.clone());
                match op {
                    ReactionOp::Add => self.reactions.insert(key),
                    ReactionOp::Remove => self.reactions.remove(&key),
                };
                Answer::Reacted
            }
            other => panic!("the changes made a query they never make: {other:?}"),
        }
    }
}

fn change(room: &str, seq: u64, user: &str, conn: u64, op: ChangeOp) -> ChangeMsg {
    ChangeMsg {
        room: room.into(),
        seq,
        user: user.into(),
        moderator: false,
        conn,
        req: Some(format!("{conn}")),
        op,
    }
}

fn edit(room: &str, seq: u64, conn: u64, body: &str) -> ChangeMsg {
    change(room, seq, "ann", conn, ChangeOp::Edit { body: body.into() })
}

fn react(room: &str, seq: u64, user: &str, conn: u64) -> ChangeMsg {
    let op = ChangeOp::React {
        emoji: "👍".into(),
        add: true,
    };
    change(room, seq, user, conn, op)
}

type Calls = Vec<(u64, ChangeCall, u64)>;

/// Pulls every effect: the calls (id, call, deadline) and the replies (conn, JSON).
fn drain(c: &mut Changes) -> (Calls, Vec<(u64, serde_json::Value)>) {
    let (mut calls, mut replies) = (Vec::new(), Vec::new());
    while let Some(e) = c.poll() {
        match e {
            ChangeEffect::Call { id, call, deadline_ms } => calls.push((id, call, deadline_ms)),
            ChangeEffect::Reply { conn, payload } => replies.push((conn, serde_json::from_slice(&payload).unwrap())),
        }
    }
    (calls, replies)
}

/// Answers every call from `model`, oldest first, ticking at each deadline when no call is
/// out, until no change runs. What happened, in order: `Ok((id, call))` or `Err((conn, reply))`.
type Log = Vec<Result<(u64, ChangeCall), (u64, serde_json::Value)>>;

fn run(c: &mut Changes, model: &mut Model, now: &mut u64) -> Log {
    let mut log = Log::new();
    let mut out: Calls = Vec::new();
    loop {
        let (calls, replies) = drain(c);
        log.extend(replies.into_iter().map(Err));
        out.extend(calls);
        if out.is_empty() {
            match c.next_deadline() {
                Some(at) if c.in_flight() > 0 => {
                    *now = (*now).max(at);
                    c.tick(*now);
                    continue;
                }
                _ => return log,
            }
        }
        let (id, call, _) = out.remove(0);
        let answer = model.answer(&call, *now);
        log.push(Ok((id, call)));
        c.answered(id, answer, *now);
    }
}

fn replies(log: &Log) -> Vec<(u64, serde_json::Value)> {
    log.iter().filter_map(|e| e.as_ref().err().cloned()).collect()
}

/// A call's kind, as the logs name it.
fn kind(call: &ChangeCall) -> &'static str {
    match call {
        ChangeCall::RoomSeq { .. } => "seq",
        ChangeCall::Lock { .. } => "lock",
        ChangeCall::Unlock { .. } => "unlock",
        ChangeCall::Publish { .. } => "publish",
        ChangeCall::Store(Query::RangeAfter { .. }) => "lookup",
        ChangeCall::Store(Query::ReactionCounts { .. }) => "bounds",
        ChangeCall::Store(_) => "write",
    }
}

/// The kinds of the calls in `log`, and its replies, in order.
fn kinds(log: &Log) -> Vec<&'static str> {
    log.iter()
        .map(|e| match e {
            Ok((_, call)) => kind(call),
            Err(_) => "reply",
        })
        .collect()
}

#[test]
fn an_edit_runs_its_chain_under_the_lock_and_is_acked_once_the_lock_is_released() {
    let mut model = Model::default().room("r", 3);
    let mut c = changes();
    c.change(1, edit("r", 2, 7, "new"), 99, NOW);
    let (calls, _) = drain(&mut c);
    assert!(matches!(&calls[..], [(1, ChangeCall::RoomSeq { .. }, d)] if *d == NOW + TIMEOUT));
    let answer = model.answer(&calls[0].1, NOW);
    c.answered(1, answer, NOW);
    let mut now = NOW;
    let log = run(&mut c, &mut model, &mut now);
    assert_eq!(kinds(&log), ["lock", "lookup", "write", "publish", "unlock", "reply"]);
    let reply = &replies(&log)[0];
    assert_eq!(
        (reply.0, reply.1["type"].as_str(), reply.1["id"].as_u64()),
        (7, Some("ack"), Some(7))
    );
    assert_eq!(reply.1["msg_id"], "m2");
    let stored: serde_json::Value = serde_json::from_slice(&model.stored[&("r".into(), 2)]).unwrap();
    assert_eq!(stored["body"], "new", "the store holds the edited version: {stored}");
    assert!(stored["edited_ts"].as_u64().is_some(), "{stored}");
    assert!(model.locks.is_empty(), "the lock was released");
    let [(channel, frame)] = &model.published[..] else {
        panic!("one publish: {:?}", model.published);
    };
    assert_eq!(channel, "r");
    assert!(matches!(router::decode(frame), Ok(router::ArchivedFrame::Changed { .. })));
    assert_eq!(c.in_flight(), 0);
    assert_eq!(c.next_deadline(), None, "no timer left behind");
}

#[test]
fn store_calls_are_due_by_the_changes_deadline_and_redis_calls_within_the_timeout() {
    let mut model = Model::default().room("r", 3);
    let mut c = changes();
    c.change(1, edit("r", 2, 7, "new"), 99, NOW);
    let mut now = NOW;
    loop {
        let (calls, _) = drain(&mut c);
        let Some((id, call, deadline)) = calls.into_iter().next() else {
            break;
        };
        let want = if matches!(call, ChangeCall::Store(_)) {
            NOW + budget()
        } else {
            now + TIMEOUT
        };
        assert_eq!(deadline, want, "{call:?}");
        now += 100;
        let answer = model.answer(&call, now);
        c.answered(id, answer, now);
    }
    assert_eq!(budget(), 3 * TIMEOUT + LOCK_WAIT_MS + STORED_WAIT_MS);
}

#[test]
fn a_rooms_changes_run_one_at_a_time_in_arrival_order_while_rooms_run_side_by_side() {
    let mut model = Model::default().room("a", 3).room("b", 3);
    let mut c = changes();
    c.change(1, edit("a", 1, 11, "x"), 101, NOW);
    c.change(2, edit("a", 1, 12, "y"), 102, NOW);
    c.change(3, change("a", 1, "ann", 13, ChangeOp::Delete), 103, NOW);
    c.change(4, edit("b", 1, 14, "z"), 104, NOW);
    let (calls, _) = drain(&mut c);
    assert_eq!(calls.iter().map(|c| c.0).collect::<Vec<_>>(), [1, 4], "one change per room runs");
    for (id, call, _) in calls {
        let answer = model.answer(&call, NOW);
        c.answered(id, answer, NOW);
    }
    let mut now = NOW;
    let log = run(&mut c, &mut model, &mut now);
    // In room a, a change's first call comes after the one before it was answered.
    let room_a: Vec<u64> = log
        .iter()
        .filter_map(|e| e.as_ref().ok())
        .map(|(id, _)| *id)
        .filter(|id| *id != 4)
        .collect();
    let mut seen = room_a.clone();
    seen.dedup();
    assert_eq!(seen, [1, 2, 3], "no interleaving: {room_a:?}");
    let order: Vec<u64> = replies(&log).iter().map(|r| r.0).filter(|&conn| conn != 14).collect();
    assert_eq!(order, [11, 12, 13], "answered in arrival order");
    assert!(replies(&log).iter().all(|r| r.1["type"] == "ack"), "{log:?}");
    let a1 = StoredView::parse(&model.stored[&("a".into(), 1)]).expect("stored");
    assert!(a1.deleted, "the delete came last");
}

#[test]
fn a_room_holds_at_most_queue_max_changes_waiting_and_refuses_the_next_overloaded() {
    let mut model = Model::default().room("r", 1);
    let mut c = changes();
    for i in 0..QUEUE_MAX as u64 + 2 {
        c.change(i + 1, edit("r", 1, 1000 + i, &format!("v{i}")), i + 1, NOW);
    }
    let (calls, refused) = drain(&mut c);
    assert_eq!(calls.len(), 1);
    let [(conn, v)] = &refused[..] else { panic!("{refused:?}") };
    assert_eq!(*conn, 1000 + QUEUE_MAX as u64 + 1);
    assert_eq!(
        (v["code"].as_str(), v["retry_ms"].as_u64()),
        (Some("overloaded"), Some(Busy::Store.retry_ms()))
    );
    let (id, call, _) = calls.into_iter().next().unwrap();
    let answer = model.answer(&call, NOW);
    c.answered(id, answer, NOW);
    let log = run(&mut c, &mut model, &mut NOW.clone());
    let acks = replies(&log);
    assert_eq!(acks.len(), QUEUE_MAX + 1, "the running one and every waiting one answered");
    assert!(acks.iter().all(|a| a.1["type"] == "ack"));
}

#[test]
fn a_lock_held_elsewhere_is_tried_again_with_doubling_pauses_then_refused_overloaded() {
    let mut model = Model::default().room("r", 3);
    model.locks.insert("r".into(), (5, u64::MAX));
    let mut c = changes();
    c.change(1, edit("r", 2, 7, "new"), 99, NOW);
    let mut now = NOW;
    let (mut tries, mut pauses) = (Vec::new(), Vec::new());
    loop {
        let (calls, replies) = drain(&mut c);
        if let Some((_, v)) = replies.first() {
            assert_eq!((v["code"].as_str(), v["retry_ms"].as_u64()), (Some("overloaded"), Some(200)));
            break;
        }
        match calls.into_iter().next() {
            Some((id, call, _)) => {
                if matches!(call, ChangeCall::Lock { .. }) {
                    tries.push(now);
                }
                assert!(matches!(call, ChangeCall::RoomSeq { .. } | ChangeCall::Lock { .. }), "{call:?}");
                let answer = model.answer(&call, now);
                c.answered(id, answer, now);
            }
            None => {
                let at = c.next_deadline().expect("a pause");
                pauses.push(at - now);
                c.tick(at - 1);
                assert!(c.poll().is_none(), "nothing before the pause ends");
                now = at;
                c.tick(now);
            }
        }
    }
    assert_eq!(pauses[..5], [10, 20, 40, 80, 80]);
    assert!(tries.last().unwrap() - tries[0] >= LOCK_WAIT_MS);
    assert!(
        tries[tries.len() - 2] - tries[0] < LOCK_WAIT_MS,
        "refused at the first try past the wait"
    );
    assert_eq!(c.in_flight(), 0, "nothing to release: the lock was never this change's");
    assert_eq!(model.locks["r"].0, 5);

    // A lock freed while a change waits is taken at the next try.
    c.change(2, edit("r", 2, 8, "new"), 98, now);
    let (calls, _) = drain(&mut c);
    let answer = model.answer(&calls[0].1, now);
    c.answered(2, answer, now);
    let (calls, _) = drain(&mut c);
    let answer = model.answer(&calls[0].1, now);
    c.answered(2, answer, now);
    model.locks.clear();
    let log = run(&mut c, &mut model, &mut now);
    assert_eq!(kinds(&log), ["lock", "lookup", "write", "publish", "unlock", "reply"]);
}

#[test]
fn a_message_not_stored_yet_is_read_again_until_it_is_or_the_stored_wait_ends() {
    let mut model = Model::default().room("r", 3);
    let held = model.stored.remove(&("r".into(), 3)).unwrap();
    let mut c = changes();
    c.change(1, edit("r", 3, 7, "new"), 99, NOW);
    let mut now = NOW;
    let mut lookups = 0;
    loop {
        let (calls, replies) = drain(&mut c);
        if !replies.is_empty() {
            assert_eq!(replies[0].1["type"], "ack", "{replies:?}");
            break;
        }
        if let Some((id, call, _)) = calls.into_iter().next() {
            lookups += usize::from(matches!(call, ChangeCall::Store(Query::RangeAfter { .. })));
            if lookups == 4 {
                // The send's write lands.
                model.stored.insert(("r".into(), 3), held.clone());
            }
            let answer = model.answer(&call, now);
            c.answered(id, answer, now);
        } else {
            now = c.next_deadline().unwrap();
            c.tick(now);
        }
    }
    assert_eq!(lookups, 4);
    assert_eq!(now - NOW, 10 + 20 + 40, "three pauses");

    // Never stored: `not_found` once the wait is over, after the lock is released.
    let mut model = Model::default().room("r", 3);
    model.stored.remove(&("r".into(), 3));
    c.change(2, edit("r", 3, 8, "new"), 98, now);
    let start = now;
    let log = run(&mut c, &mut model, &mut now);
    let k = kinds(&log);
    assert_eq!(k[k.len() - 2..], ["unlock", "reply"]);
    assert!(!k.contains(&"write"));
    let v = &replies(&log)[0].1;
    assert_eq!(v["code"], "not_found");
    assert!(v["message"].as_str().unwrap().contains("not stored"), "{v}");
    assert!(now - start >= STORED_WAIT_MS && now - start < STORED_WAIT_MS + 100);
}

#[test]
fn redis_failures_answer_with_their_own_type_and_a_failed_lock_call_is_released_after() {
    let mut c = changes();
    c.change(1, edit("r", 2, 7, "new"), 99, NOW);
    let _ = drain(&mut c);
    c.answered(1, ChangeAnswer::RoomSeq(Err(Failure::Redis(BridgeError::Unavailable))), NOW);
    let (calls, replies) = drain(&mut c);
    assert!(calls.is_empty());
    assert_eq!(
        (replies[0].1["code"].as_str(), replies[0].1["retry_ms"].as_u64()),
        (Some("unavailable"), Some(500))
    );

    c.change(2, edit("r", 2, 7, "new"), 99, NOW);
    let _ = drain(&mut c);
    c.answered(2, ChangeAnswer::RoomSeq(Err(Failure::Redis(BridgeError::Stopped))), NOW);
    let v = &drain(&mut c).1[0].1;
    assert_eq!(v["code"], "internal");
    assert!(v.get("retry_ms").is_none(), "no retry hint when a retry cannot help: {v}");

    // A lock call that timed out may have taken the lock: answered at once, then released,
    // and the room's next change waits for the release.
    c.change(3, edit("r", 2, 7, "new"), 99, NOW);
    c.change(4, edit("r", 2, 8, "new"), 98, NOW);
    let _ = drain(&mut c);
    c.answered(3, ChangeAnswer::RoomSeq(Ok(5)), NOW);
    let _ = drain(&mut c);
    c.answered(3, ChangeAnswer::Locked(Err(Failure::RedisTimedOut)), NOW + TIMEOUT);
    let (calls, replies) = drain(&mut c);
    assert_eq!(replies[0].1["code"], "unavailable");
    assert!(matches!(&calls[..], [(3, ChangeCall::Unlock { token: 99, .. }, _)]), "{calls:?}");
    c.answered(3, ChangeAnswer::Unlocked(Err(Failure::RedisTimedOut)), NOW + 2 * TIMEOUT);
    let (calls, replies) = drain(&mut c);
    assert!(replies.is_empty(), "answered once");
    assert!(matches!(&calls[..], [(4, ChangeCall::RoomSeq { .. }, _)]), "{calls:?}");
}

#[test]
fn a_store_failure_is_answered_once_the_lock_is_released() {
    let mut model = Model::default().room("r", 3);
    let mut c = changes();
    c.change(1, edit("r", 2, 7, "new"), 99, NOW);
    for _ in 0..2 {
        let (calls, _) = drain(&mut c);
        let answer = model.answer(&calls[0].1, NOW);
        c.answered(1, answer, NOW);
    }
    let (lookup, _) = drain(&mut c);
    assert_eq!(kind(&lookup[0].1), "lookup");
    let busy = Failure::Store(StoreError::Injected("disk busy"));
    c.answered(1, ChangeAnswer::Stored(Err(busy)), NOW);
    let (calls, replies) = drain(&mut c);
    assert!(replies.is_empty(), "not before the release");
    assert!(matches!(&calls[..], [(1, ChangeCall::Unlock { .. }, _)]));
    let answer = model.answer(&calls[0].1, NOW);
    c.answered(1, answer, NOW);
    let v = &drain(&mut c).1[0].1;
    assert_eq!((v["code"].as_str(), v["retry_ms"].as_u64()), (Some("unavailable"), Some(200)));
    assert!(model.locks.is_empty());
}

#[test]
fn a_dm_change_goes_on_the_room_and_each_users_channel_and_a_failed_publish_still_acks() {
    let mut model = Model::default().room("dm:ann:bob", 1).room("dm:ann:ann", 1);
    let mut c = changes();
    c.change(1, react("dm:ann:bob", 1, "bob", 7), 99, NOW);
    let log = run(&mut c, &mut model, &mut NOW.clone());
    assert_eq!(
        kinds(&log),
        ["seq", "lock", "lookup", "bounds", "write", "publish", "publish", "publish", "unlock", "reply"]
    );
    let channels: Vec<&str> = model.published.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(channels, ["dm:ann:bob", keys::user("ann").as_str(), keys::user("bob").as_str()]);
    assert!(model.published.iter().all(|p| p.1 == model.published[0].1), "one frame for all");
    assert_eq!(replies(&log)[0].1["type"], "ack");

    // A DM with oneself has one user channel; a publish that fails is logged, the ack owed.
    c.change(2, edit("dm:ann:ann", 1, 8, "x"), 98, NOW);
    let mut publishes = 0;
    loop {
        let (calls, replies) = drain(&mut c);
        if let Some((_, v)) = replies.first() {
            assert_eq!(v["type"], "ack");
            break;
        }
        let (id, call, _) = calls.into_iter().next().expect("a call");
        let answer = match call {
            ChangeCall::Publish { .. } => {
                publishes += 1;
                ChangeAnswer::Published(Err(Failure::RedisTimedOut))
            }
            call => model.answer(&call, NOW),
        };
        c.answered(id, answer, NOW);
    }
    assert_eq!(publishes, 2);
    // A reaction already there is acked and tells nobody.
    model.published.clear();
    c.change(3, react("dm:ann:bob", 1, "bob", 9), 97, NOW);
    let log = run(&mut c, &mut model, &mut NOW.clone());
    assert_eq!(replies(&log)[0].1["type"], "ack");
    assert!(model.published.is_empty());
}

#[path = "deadline_tests.rs"]
mod deadline_tests;
