//! The reads against a small model of one room: its messages `1..=last`, a
//! Redis stream trimmed below `trim + 1`, a store holding `1..=stored` with
//! some messages edited there. Named cases first, then a property test that
//! answers every call right, wrongly or not at all, in any order across
//! several reads at once.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use storage::{Answer, HistoryPage, Query, ReactionCount, StoreError, StoredMessage};

use super::*;

const NOW: u64 = 1_000_000;
const TIMEOUT: u64 = 5_000;

fn cfg(shared_store: bool) -> ReadsConfig {
    ReadsConfig {
        timeout_ms: TIMEOUT,
        page_max_bytes: 1 << 20,
        presence_roster_max: 2,
        shared_store,
    }
}

fn asker(conn: u64) -> Asker {
    Asker {
        conn,
        req: Some(format!("{conn}")),
        user: Some("ann".into()),
    }
}

/// A message as the stream keeps it (`v1`) or as the store keeps an edit of it (`v2`).
fn frame(seq: u64, version: u32) -> Bytes {
    Bytes::from(format!(r#"{{"type":"message","room":"r","seq":{seq},"text":"v{version}"}}"#))
}

/// One room: what the stream and the store hold.
#[derive(Debug, Clone)]
struct Room {
    last: u64,
    /// The stream holds `trim + 1 ..= last`.
    trim: u64,
    /// The store holds `1 ..= stored`.
    stored: u64,
}

impl Room {
    /// The store's copy: every third message was edited.
    fn stored_frame(seq: u64) -> Bytes {
        frame(seq, if seq.is_multiple_of(3) { 2 } else { 1 })
    }

    fn stored_msg(seq: u64) -> StoredMessage {
        StoredMessage {
            room: Arc::from("r"),
            seq,
            msg_id: format!("m{seq}").as_str().into(),
            sender: Arc::from("bob"),
            ts_ms: seq,
            client_id: None,
            reply_to: (seq.is_multiple_of(4)).then_some(1),
            frame: Self::stored_frame(seq),
        }
    }

    /// The right answer to `call`.
    fn answer(&self, call: &ReadCall) -> ReadAnswer {
        match call {
            ReadCall::RoomSeq { .. } => ReadAnswer::RoomSeq(Ok(self.last)),
            ReadCall::Recent { after, count, .. } => {
                let from = (after + 1).max(self.trim + 1);
                let to = self.last.min(after + u64::from(*count));
                ReadAnswer::Recent(Ok((from..=to).map(|s| (s, frame(s, 1))).collect()))
            }
            ReadCall::Online { .. } => ReadAnswer::Online(Ok(vec![("cy".into(), 30), ("ann".into(), 10), ("bob".into(), 20)])),
            ReadCall::Store(q) => ReadAnswer::Stored(Ok(self.query(q))),
        }
    }

    fn query(&self, q: &Query) -> Answer {
        match q {
            Query::History { before, limit, .. } => {
                let top = before.map_or(self.stored, |b| (b - 1).min(self.stored));
                let from = top.saturating_sub(*limit as u64) + 1;
                let messages: Vec<_> = (from..=top).map(Self::stored_msg).collect();
                let next_before = messages.first().map(|m| m.seq).filter(|&s| s > 1);
                Answer::History(HistoryPage { messages, next_before })
            }
            Query::RangeAfter { after, limit, .. } => {
                let to = self.stored.min(after + *limit as u64);
                Answer::RangeAfter((after + 1..=to).map(Self::stored_msg).collect())
            }
            Query::Thread { root, limit, .. } => {
                let replies: Vec<_> = (root + 1..=self.stored)
                    .filter(|s| s % 4 == 0)
                    .take(*limit)
                    .map(Self::stored_msg)
                    .collect();
                Answer::History(HistoryPage {
                    messages: replies,
                    next_before: None,
                })
            }
            Query::ReactionCounts { from, to, .. } => Answer::ReactionCounts(
                (*from..=*to)
                    .filter(|s| s % 5 == 0)
                    .map(|seq| ReactionCount {
                        seq,
                        emoji: "👍".into(),
                        count: 2,
                        me: true,
                    })
                    .collect(),
            ),
            Query::ReplyCounts { from, to, .. } => Answer::ReplyCounts((*from..=*to).filter(|&s| s == 1).map(|s| (s, 7)).collect()),
            other => panic!("the reads made a query they never make: {other:?}"),
        }
    }
}

/// Pulls every effect: the calls (by read id) and the other effects.
fn drain(r: &mut Reads) -> (Vec<(u64, ReadCall, u64)>, Vec<ReadEffect>) {
    let (mut calls, mut done) = (Vec::new(), Vec::new());
    while let Some(e) = r.poll() {
        match e {
            ReadEffect::Call { id, call, deadline_ms } => calls.push((id, call, deadline_ms)),
            other => done.push(other),
        }
    }
    (calls, done)
}

/// Answers each call right until the read is done; the calls made, and the one effect left.
fn run_right(r: &mut Reads, room: &Room) -> (Vec<ReadCall>, ReadEffect) {
    let mut made = Vec::new();
    loop {
        let (mut calls, mut done) = drain(r);
        if let Some(e) = done.pop() {
            assert!(done.is_empty() && calls.is_empty(), "one answer, and nothing after it");
            assert_eq!(r.in_flight(), 0);
            return (made, e);
        }
        assert_eq!(calls.len(), 1, "one call of a read out at a time");
        let (id, call, _) = calls.pop().unwrap();
        let answer = room.answer(&call);
        made.push(call);
        r.answered(id, answer, NOW);
    }
}

fn json(e: &ReadEffect) -> serde_json::Value {
    let ReadEffect::Reply { payload, .. } = e else {
        panic!("not a reply: {e:?}");
    };
    serde_json::from_slice(payload).unwrap()
}

fn seqs_and_texts(v: &serde_json::Value) -> Vec<(u64, String)> {
    v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["seq"].as_u64().unwrap(), m["text"].as_str().unwrap().to_owned()))
        .collect()
}

#[test]
fn a_history_page_below_the_trimmed_stream_comes_from_the_store_in_current_versions() {
    let room = Room {
        last: 20,
        trim: 15,
        stored: 20,
    };
    let mut r = Reads::new(cfg(true));
    r.history(1, asker(7), "r", PageAt { before: None, limit: 10 }, NOW);
    let (calls, reply) = run_right(&mut r, &room);
    let v = json(&reply);
    assert!(matches!(reply, ReadEffect::Reply { conn: 7, .. }));
    assert_eq!(v["id"], 7);
    let page = seqs_and_texts(&v);
    let want: Vec<(u64, String)> = (11..=20).map(|s| (s, if s % 3 == 0 { "v2" } else { "v1" }.to_owned())).collect();
    assert_eq!(
        page, want,
        "11-15 from the store, 16-20 from the stream, edits as the store has them"
    );
    assert_eq!(v["next_before"], 11);
    let m15 = &v["messages"][4];
    assert_eq!(m15["reactions"][0]["count"], 2, "the store's reactions are added");
    assert!(matches!(calls[0], ReadCall::RoomSeq { .. }));
    assert!(matches!(calls[1], ReadCall::Recent { after: 10, count: 10, .. }));
    assert!(matches!(
        calls[2],
        ReadCall::Store(Query::History {
            before: Some(16),
            limit: 5,
            ..
        })
    ));
    assert!(matches!(calls[3], ReadCall::Store(Query::RangeAfter { after: 10, limit: 10, .. })));
    assert!(matches!(calls[4], ReadCall::Store(Query::ReactionCounts { from: 11, to: 20, .. })));
    assert!(matches!(calls[5], ReadCall::Store(Query::ReplyCounts { from: 11, to: 20, .. })));
    assert_eq!(calls.len(), 6);
}

#[test]
fn a_page_with_before_skips_the_counter_and_the_first_page_reaches_seq_one() {
    let room = Room {
        last: 20,
        trim: 0,
        stored: 20,
    };
    let mut r = Reads::new(cfg(true));
    r.history(
        1,
        asker(7),
        "r",
        PageAt {
            before: Some(4),
            limit: 10,
        },
        NOW,
    );
    let (calls, reply) = run_right(&mut r, &room);
    let v = json(&reply);
    assert!(matches!(calls[0], ReadCall::Recent { after: 0, count: 10, .. }), "{calls:?}");
    assert_eq!(seqs_and_texts(&v).iter().map(|m| m.0).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(v["next_before"], serde_json::Value::Null, "nothing older");
    assert_eq!(v["messages"][0]["replies"], 7, "a thread root shows its reply count");
}

#[test]
fn without_a_shared_store_a_page_is_the_stream_alone() {
    let room = Room {
        last: 20,
        trim: 15,
        stored: 20,
    };
    let mut r = Reads::new(cfg(false));
    r.history(1, asker(7), "r", PageAt { before: None, limit: 10 }, NOW);
    let (calls, reply) = run_right(&mut r, &room);
    assert_eq!(calls.len(), 2, "the counter and the stream: {calls:?}");
    let v = json(&reply);
    assert_eq!(
        seqs_and_texts(&v).iter().map(|m| m.0).collect::<Vec<_>>(),
        (16..=20).collect::<Vec<_>>()
    );
    assert_eq!(v["next_before"], 16);
}

#[test]
fn a_redis_failure_answers_unavailable_and_a_store_failure_serves_the_stream_part() {
    let mut r = Reads::new(cfg(true));
    r.history(1, asker(7), "r", PageAt { before: None, limit: 10 }, NOW);
    let (calls, _) = drain(&mut r);
    let deadline = calls[0].2;
    assert_eq!(deadline, NOW + TIMEOUT);
    r.answered(1, ReadAnswer::RoomSeq(Err(Failure::RedisTimedOut)), NOW + 10);
    let (calls, done) = drain(&mut r);
    assert!(calls.is_empty());
    let v = json(&done[0]);
    assert_eq!(v["code"], "unavailable");
    assert_eq!(v["retry_ms"], 500);

    r.history(2, asker(8), "r", PageAt { before: None, limit: 10 }, NOW);
    let _ = drain(&mut r);
    r.answered(2, ReadAnswer::RoomSeq(Ok(20)), NOW + 1);
    let (calls, _) = drain(&mut r);
    assert_eq!(calls[0].2, deadline, "one deadline for all of a client's read's calls");
    r.answered(2, ReadAnswer::Recent(Ok((18..=20).map(|s| (s, frame(s, 1))).collect())), NOW + 2);
    let _ = drain(&mut r);
    r.answered(2, ReadAnswer::Stored(Err(Failure::StoreTimedOut)), NOW + 3);
    let (calls, done) = drain(&mut r);
    assert!(calls.is_empty(), "no further store call once the store failed: {calls:?}");
    let v = json(&done[0]);
    assert_eq!(seqs_and_texts(&v).iter().map(|m| m.0).collect::<Vec<_>>(), [18, 19, 20]);
    assert_eq!(v["next_before"], 18, "the client can page on from where the stream stops");
    assert_eq!(r.in_flight(), 0);
}

#[test]
fn a_thread_past_the_counter_is_not_found_and_one_below_it_comes_from_the_store() {
    let room = Room {
        last: 20,
        trim: 15,
        stored: 20,
    };
    let mut r = Reads::new(cfg(true));
    r.thread(1, asker(7), "r", 21, PageAt { before: None, limit: 10 }, NOW);
    let (calls, reply) = run_right(&mut r, &room);
    assert_eq!(calls.len(), 1);
    assert_eq!(json(&reply)["code"], "not_found");
    r.thread(2, asker(7), "r", 0, PageAt { before: None, limit: 10 }, NOW);
    assert_eq!(json(&run_right(&mut r, &room).1)["code"], "not_found");
    r.thread(3, asker(7), "r", 1, PageAt { before: None, limit: 3 }, NOW);
    let (_, reply) = run_right(&mut r, &room);
    let page = seqs_and_texts(&json(&reply));
    assert_eq!(page.iter().map(|m| m.0).collect::<Vec<_>>(), [4, 8, 12]);
    r.thread(4, asker(7), "r", 1, PageAt { before: None, limit: 3 }, NOW);
    let _ = drain(&mut r);
    r.answered(4, room.answer(&ReadCall::RoomSeq { room: "r".into() }), NOW);
    let _ = drain(&mut r);
    let down = StoreError::Internal("down".into());
    r.answered(4, ReadAnswer::Stored(Err(Failure::Store(down))), NOW);
    let v = json(&drain(&mut r).1[0]);
    assert_eq!(v["code"], "internal", "a store error that is not retryable: {v}");
}

#[test]
fn presence_lists_those_online_longest_first_up_to_the_roster_bound() {
    let room = Room {
        last: 0,
        trim: 0,
        stored: 0,
    };
    let mut r = Reads::new(cfg(false));
    r.presence(1, asker(7), "r", NOW);
    let v = json(&run_right(&mut r, &room).1);
    let users: Vec<&str> = v["online"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["ann", "bob"]);
    assert_eq!(v["count"], 3);
}

#[test]
fn a_catch_up_below_the_trimmed_stream_is_completed_from_the_store() {
    let room = Room {
        last: 30,
        trim: 20,
        stored: 28,
    };
    let mut r = Reads::new(cfg(true));
    r.fetch(1, 99, "r", 10, 15, NOW);
    let (calls, done) = run_right(&mut r, &room);
    let ReadEffect::Fetched {
        token: 99,
        result: Ok(msgs),
    } = done
    else {
        panic!("{done:?}");
    };
    let seqs: Vec<u64> = msgs.iter().map(|m| m.0).collect();
    assert_eq!(seqs, (11..=25).collect::<Vec<_>>(), "15 messages after 10");
    assert!(
        matches!(calls[1], ReadCall::Store(Query::RangeAfter { after: 10, limit: 10, .. })),
        "{calls:?}"
    );
    assert_eq!(msgs[1].1, frame(12, 2), "12 was edited in the store");
    // Without a shared store the stream's part goes as it is, and the member side says `gap`.
    let mut r = Reads::new(cfg(false));
    r.fetch(1, 99, "r", 10, 15, NOW);
    let (calls, done) = run_right(&mut r, &room);
    assert_eq!(calls.len(), 1);
    let ReadEffect::Fetched { result: Ok(msgs), .. } = done else {
        panic!()
    };
    assert_eq!(msgs.first().map(|m| m.0), Some(21));
}

#[test]
fn a_catch_up_gives_each_call_its_own_deadline_and_fails_with_redis() {
    let mut r = Reads::new(cfg(true));
    r.fetch(1, 99, "r", 10, 5, NOW);
    let (calls, _) = drain(&mut r);
    assert_eq!(calls[0].2, NOW + TIMEOUT);
    r.answered(1, ReadAnswer::Recent(Ok(vec![(11, frame(11, 1))])), NOW + 4_000);
    let (calls, _) = drain(&mut r);
    assert_eq!(calls[0].2, NOW + 4_000 + TIMEOUT);
    r.answered(1, ReadAnswer::Stored(Ok(Answer::RangeAfter(vec![]))), NOW + 4_001);
    let (_, done) = drain(&mut r);
    assert!(matches!(&done[..], [ReadEffect::Fetched { result: Ok(m), .. }] if m.len() == 1));
    r.fetch(2, 98, "r", 10, 5, NOW);
    r.answered(2, ReadAnswer::Recent(Err(Failure::RedisTimedOut)), NOW);
    let (_, done) = drain(&mut r);
    assert!(
        matches!(
            &done[..],
            [ReadEffect::Fetched {
                token: 98,
                result: Err(Failure::RedisTimedOut)
            }]
        ),
        "{done:?}"
    );
}

#[test]
fn answers_for_no_read_and_answers_of_the_wrong_kind_do_not_break_the_one_answer_rule() {
    let mut r = Reads::new(cfg(true));
    r.answered(5, ReadAnswer::RoomSeq(Ok(3)), NOW);
    assert!(r.poll().is_none(), "an answer for no read is dropped");
    r.presence(1, asker(7), "r", NOW);
    let _ = drain(&mut r);
    r.answered(1, ReadAnswer::RoomSeq(Ok(3)), NOW);
    let (calls, done) = drain(&mut r);
    assert!(calls.is_empty());
    assert_eq!(json(&done[0])["code"], "internal");
    r.answered(1, ReadAnswer::Online(Ok(vec![])), NOW);
    assert!(r.poll().is_none(), "the read was answered once already");
}

/// How the property test answers one call.
#[derive(Debug, Clone, Copy)]
enum Reply {
    Right,
    Failed,
    Late,
    WrongKind,
}

fn reply_strategy() -> impl Strategy<Value = Reply> {
    prop_oneof![6 => Just(Reply::Right), 1 => Just(Reply::Failed), 1 => Just(Reply::Late), 1 => Just(Reply::WrongKind)]
}

/// What was asked of read `id`, to check its answer against.
#[derive(Debug, Clone, Copy)]
enum Asked {
    History { before: Option<u64>, limit: u32 },
    Fetch { after: u64, count: u32 },
    Other,
}

fn bad(call: &ReadCall, how: Reply) -> ReadAnswer {
    let redis = |late| {
        if late {
            Failure::RedisTimedOut
        } else {
            Failure::Redis(router::bridge::BridgeError::Unavailable)
        }
    };
    let late = matches!(how, Reply::Late);
    match (call, how) {
        (_, Reply::WrongKind) => ReadAnswer::Stored(Ok(Answer::ReplyCounts(vec![]))),
        (ReadCall::RoomSeq { .. }, _) => ReadAnswer::RoomSeq(Err(redis(late))),
        (ReadCall::Recent { .. }, _) => ReadAnswer::Recent(Err(redis(late))),
        (ReadCall::Online { .. }, _) => ReadAnswer::Online(Err(redis(late))),
        (ReadCall::Store(_), Reply::Late) => ReadAnswer::Stored(Err(Failure::StoreTimedOut)),
        (ReadCall::Store(_), _) => ReadAnswer::Stored(Err(Failure::Store(StoreError::Internal("down".into())))),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Several reads at once, their calls answered in any order, right, failed, late or with
    /// the wrong kind of answer: each read is answered exactly once, a page is a run of
    /// consecutive seqs ending at the page's top, and a page or catch-up whose calls were all
    /// answered right is exactly what the room holds, in the store's versions.
    #[test]
    fn every_read_is_answered_once_and_a_page_is_a_run_ending_at_its_top(
        last in 0u64..40,
        trim_pct in 0u64..=100,
        stored_pct in 0u64..=100,
        reads in prop::collection::vec((0u8..4, 1u32..12, 0u64..45), 1..6),
        order in prop::collection::vec(any::<prop::sample::Index>(), 64),
        how in prop::collection::vec(reply_strategy(), 64),
        shared in any::<bool>(),
    ) {
        let trim = last * trim_pct / 100;
        let room = Room { last, trim, stored: trim.max(last * stored_pct / 100) };
        let mut r = Reads::new(cfg(shared));
        let mut asked = BTreeMap::new();
        for (i, &(kind, n, at)) in reads.iter().enumerate() {
            let id = i as u64 + 1;
            match kind {
                0 => {
                    // A client pages with a `next_before` it was given: at most one past the top.
                    let before = Some(at % (last + 2)).filter(|&b| b > 0);
                    r.history(id, asker(id), "r", PageAt { before, limit: n }, NOW);
                    asked.insert(id, Asked::History { before, limit: n });
                }
                1 => {
                    r.fetch(id, 1000 + id, "r", at.min(last), n, NOW);
                    asked.insert(id, Asked::Fetch { after: at.min(last), count: n });
                }
                2 => { r.presence(id, asker(id), "r", NOW); asked.insert(id, Asked::Other); }
                _ => { r.thread(id, asker(id), "r", at, PageAt { before: None, limit: n }, NOW); asked.insert(id, Asked::Other); }
            }
        }
        let mut out: Vec<(u64, ReadCall)> = Vec::new();
        let mut answered: BTreeMap<u64, ReadEffect> = BTreeMap::new();
        let mut all_right: BTreeMap<u64, bool> = asked.keys().map(|&id| (id, true)).collect();
        let mut step = 0;
        loop {
            let (calls, done) = drain(&mut r);
            for (id, call, deadline) in calls {
                prop_assert!(out.iter().all(|(o, _)| *o != id), "read {} has two calls out", id);
                prop_assert!(deadline > NOW && deadline <= NOW + TIMEOUT + step as u64);
                out.push((id, call));
            }
            for e in done {
                let id = match &e {
                    ReadEffect::Reply { conn, .. } => *conn,
                    ReadEffect::Fetched { token, .. } => token - 1000,
                    ReadEffect::Call { .. } => unreachable!(),
                };
                prop_assert!(answered.insert(id, e).is_none(), "read {} answered twice", id);
                prop_assert!(out.iter().all(|(o, _)| *o != id), "read {} answered with a call out", id);
            }
            if out.is_empty() {
                break;
            }
            let (id, call) = out.swap_remove(order[step % order.len()].index(out.len()));
            let h = how[step % how.len()];
            step += 1;
            let answer = match h {
                Reply::Right => room.answer(&call),
                _ => { all_right.insert(id, false); bad(&call, h) }
            };
            r.answered(id, answer, NOW + step as u64);
        }
        prop_assert_eq!(answered.len(), asked.len(), "every read answered");
        prop_assert_eq!(r.in_flight(), 0);
        for (id, e) in &answered {
            let right = all_right[id];
            match (asked[id], e) {
                (Asked::History { before, limit }, ReadEffect::Reply { payload, .. }) => {
                    let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
                    if v["type"] == "error" {
                        prop_assert!(!right, "a page whose calls all went right failed: {}", v);
                        continue;
                    }
                    let top = before.map_or(last, |b| b - 1);
                    let page = seqs_and_texts(&v);
                    let seqs: Vec<u64> = page.iter().map(|m| m.0).collect();
                    if let (Some(&lo), Some(&hi)) = (seqs.first(), seqs.last()) {
                        prop_assert_eq!(hi, top);
                        prop_assert_eq!(seqs.clone(), (lo..=hi).collect::<Vec<_>>());
                        prop_assert!(seqs.len() <= limit as usize);
                    }
                    if right {
                        let held = |s: u64| s > trim || (shared && s <= room.stored);
                        let want: Vec<u64> = (top.saturating_sub(u64::from(limit)) + 1..=top).rev().take_while(|&s| held(s)).collect::<Vec<_>>().into_iter().rev().collect();
                        prop_assert_eq!(&seqs, &want);
                        for (s, text) in &page {
                            let edited = shared && s % 3 == 0 && *s <= room.stored;
                            prop_assert_eq!(text.as_str(), if edited { "v2" } else { "v1" }, "seq {}", s);
                        }
                        let next = v["next_before"].as_u64();
                        prop_assert_eq!(next, seqs.first().copied().filter(|&s| s > 1));
                    }
                }
                (Asked::Fetch { after, count }, ReadEffect::Fetched { result, .. }) => {
                    let Ok(msgs) = result else {
                        prop_assert!(!right);
                        continue;
                    };
                    let seqs: Vec<u64> = msgs.iter().map(|m| m.0).collect();
                    prop_assert!(seqs.windows(2).all(|w| w[0] < w[1]) && seqs.iter().all(|&s| s > after));
                    prop_assert!(seqs.len() <= count as usize);
                    if right {
                        let to = last.min(after + u64::from(count));
                        let stream: Vec<u64> = ((after + 1).max(trim + 1)..=to).collect();
                        let want: Vec<u64> = if shared && stream.first().is_some_and(|&f| f > after + 1) {
                            let first = stream[0];
                            let older = (after + 1..first).filter(|&s| s <= room.stored).take((first - after - 1).min(u64::from(count)) as usize);
                            older.chain(stream).take(count as usize).collect()
                        } else {
                            stream
                        };
                        prop_assert_eq!(&seqs, &want);
                    }
                }
                (Asked::Other, ReadEffect::Reply { .. }) => {}
                (a, e) => prop_assert!(false, "read {} asked {:?} answered {:?}", id, a, e),
            }
        }
    }
}
