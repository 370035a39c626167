//! The chains of a user's state, named cases first, then a property test that answers
//! every call right, failed, late or with the wrong kind of answer, in any order.

use std::collections::BTreeMap;

use proptest::prelude::*;
use router::bridge::BridgeError;
use storage::{StoreError, UserRoom};

use super::*;

const NOW: u64 = 1_000_000;
const TIMEOUT: u64 = 1_000;
const CAP: usize = 2;

fn state() -> State {
    State::new(StateConfig {
        timeout_ms: TIMEOUT,
        receipts_room_max: CAP,
    })
}

fn asker(conn: u64) -> Asker {
    Asker {
        conn,
        req: Some(format!("{conn}")),
    }
}

type Calls = Vec<(u64, StateCall, u64)>;
/// What a drain pulled: calls, replies (conn, JSON), published events (channel, JSON).
type Drained = (Calls, Vec<(u64, serde_json::Value)>, Vec<(String, serde_json::Value)>);

/// Pulls every effect: the calls, the replies (conn, JSON), and the published events
/// (channel, the payload inside the frame, JSON).
fn drain(s: &mut State) -> Drained {
    let (mut calls, mut replies, mut events) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(e) = s.poll() {
        match e {
            StateEffect::Call { id, call, deadline_ms } => calls.push((id, call, deadline_ms)),
            StateEffect::Reply { conn, payload } => replies.push((conn, serde_json::from_slice(&payload).unwrap())),
            StateEffect::Notify { channel, frame } => {
                let payload = match router::decode(&frame) {
                    Ok(router::ArchivedFrame::Event { payload, .. } | router::ArchivedFrame::ToSenders { payload, .. }) => payload.to_vec(),
                    _ => panic!("a receipt is an event or a ToSenders frame"),
                };
                events.push((channel, serde_json::from_slice(&payload).unwrap()));
            }
        }
    }
    (calls, replies, events)
}

fn redis_down() -> Failure {
    Failure::Redis(BridgeError::Unavailable)
}

fn online(n: usize) -> StateAnswer {
    StateAnswer::Online(Ok((0..n).map(|i| (format!("u{i}"), 1)).collect()))
}

#[test]
fn sync_is_one_store_query_answered_once_whatever_it_answers() {
    let mut s = state();
    s.sync(1, asker(7), "ann", NOW);
    let (calls, _, _) = drain(&mut s);
    assert!(matches!(&calls[..], [(1, StateCall::Store(Query::UserRooms { user }), d)] if user == "ann" && *d == NOW + TIMEOUT));
    let room = UserRoom {
        room: "r".into(),
        seq: 4,
        read: 2,
        delivered: 3,
        unread: 1,
    };
    s.answered(1, StateAnswer::Stored(Ok(Answer::UserRooms(vec![room]))), NOW);
    let (calls, replies, _) = drain(&mut s);
    assert!(calls.is_empty());
    assert_eq!((replies[0].0, replies[0].1["type"].as_str()), (7, Some("sync")));
    assert_eq!(replies[0].1["rooms"][0]["room"], "r");
    s.answered(1, StateAnswer::Stored(Ok(Answer::UserRooms(vec![]))), NOW);
    assert!(s.poll().is_none(), "answered once");

    for (answer, code, retry) in [
        (StateAnswer::Stored(Err(Failure::StoreTimedOut)), "unavailable", Some(200)),
        (
            StateAnswer::Stored(Err(Failure::Store(StoreError::Internal("x".into())))),
            "internal",
            None,
        ),
        (StateAnswer::Stored(Ok(Answer::Reacted)), "internal", None),
        (StateAnswer::RoomSeq(Ok(1)), "internal", None),
    ] {
        s.sync(2, asker(8), "ann", NOW);
        let _ = drain(&mut s);
        s.answered(2, answer, NOW);
        let (_, replies, _) = drain(&mut s);
        let v = &replies[0].1;
        assert_eq!((v["code"].as_str(), v["retry_ms"].as_u64()), (Some(code), retry), "{v}");
    }
    assert_eq!(s.in_flight(), 0);
}

#[test]
fn a_read_marks_at_most_the_last_message_and_only_a_moved_mark_is_pushed_at_the_tick() {
    let mut s = state();
    s.read(1, asker(7), "r", "ann", 10, NOW);
    let (calls, _, _) = drain(&mut s);
    assert!(matches!(&calls[..], [(1, StateCall::RoomSeq { room }, _)] if room == "r"));
    s.answered(1, StateAnswer::RoomSeq(Ok(5)), NOW);
    let (calls, _, _) = drain(&mut s);
    assert!(
        matches!(
            &calls[..],
            [(
                1,
                StateCall::Store(Query::SetMark {
                    seq: 5,
                    kind: MarkKind::Read,
                    ..
                }),
                _
            )]
        ),
        "{calls:?}"
    );
    s.answered(1, StateAnswer::Stored(Ok(Answer::Mark(5))), NOW);
    let (_, replies, _) = drain(&mut s);
    assert!(replies.is_empty(), "a read that worked is not answered");
    // A read behind the stored mark moves nothing.
    s.read(2, asker(8), "r", "bob", 3, NOW);
    let _ = drain(&mut s);
    s.answered(2, StateAnswer::RoomSeq(Ok(5)), NOW);
    let _ = drain(&mut s);
    s.answered(2, StateAnswer::Stored(Ok(Answer::Mark(4))), NOW);
    // A read of an empty room does nothing.
    s.read(3, asker(9), "e", "ann", 3, NOW);
    let _ = drain(&mut s);
    s.answered(3, StateAnswer::RoomSeq(Ok(0)), NOW);
    let (calls, replies, _) = drain(&mut s);
    assert!(calls.is_empty() && replies.is_empty());

    s.tick(10, NOW + 1_000);
    let (calls, _, _) = drain(&mut s);
    assert!(matches!(&calls[..], [(10, StateCall::Online { room }, _)] if room == "r"));
    s.answered(10, online(CAP), NOW + 1_000);
    let (_, _, events) = drain(&mut s);
    let [(channel, v)] = &events[..] else { panic!("{events:?}") };
    assert_eq!(channel, "r");
    assert_eq!(
        (v["type"].as_str(), v["user"].as_str(), v["seq"].as_u64()),
        (Some("receipt"), Some("ann"), Some(5))
    );
    assert_eq!(v["status"], "read");
    s.tick(11, NOW + 2_000);
    assert!(s.poll().is_none(), "nothing moved since");

    s.read(4, asker(7), "r", "ann", 2, NOW);
    let _ = drain(&mut s);
    s.answered(4, StateAnswer::RoomSeq(Err(redis_down())), NOW);
    let (_, replies, _) = drain(&mut s);
    let v = &replies[0].1;
    assert_eq!((v["code"].as_str(), v["retry_ms"].as_u64()), (Some("unavailable"), Some(500)));
}

#[test]
fn the_ticks_receipts_carry_each_users_highest_seq_and_skip_full_rooms_and_rooms_of_unknown_size() {
    let mut s = state();
    let mut id = 0;
    for (room, user, seq) in [("a", "ann", 3), ("a", "ann", 4), ("b", "ann", 1), ("c", "bob", 2), ("c", "cy", 5)] {
        id += 1;
        s.read(id, asker(id), room, user, seq, NOW);
        let _ = drain(&mut s);
        s.answered(id, StateAnswer::RoomSeq(Ok(9)), NOW);
        let _ = drain(&mut s);
        s.answered(id, StateAnswer::Stored(Ok(Answer::Mark(seq))), NOW);
    }
    s.tick(100, NOW);
    let mut asked = Vec::new();
    let mut events = Vec::new();
    for answer in [online(1), online(CAP + 1), StateAnswer::Online(Err(Failure::RedisTimedOut))] {
        let (calls, _, more) = drain(&mut s);
        events.extend(more);
        let [(100, StateCall::Online { room }, _)] = &calls[..] else {
            panic!("{calls:?}")
        };
        asked.push(room.clone());
        s.answered(100, answer, NOW);
    }
    let (calls, _, more) = drain(&mut s);
    events.extend(more);
    assert!(calls.is_empty());
    assert_eq!(asked, ["a", "b", "c"], "one room at a time");
    let got: Vec<(String, String, u64)> = events
        .iter()
        .map(|(c, v)| (c.clone(), v["user"].as_str().unwrap().to_owned(), v["seq"].as_u64().unwrap()))
        .collect();
    assert_eq!(got, [("a".to_owned(), "ann".to_owned(), 4)]);
    assert_eq!(s.in_flight(), 0);
}

#[test]
fn delivered_marks_are_stored_then_the_receipt_goes_to_the_room_and_a_dms_users_with_the_size_kept() {
    let mut s = state();
    let room = "dm:ann:bob";
    s.delivered(1, room, 3, vec!["bob".into()], NOW);
    let (calls, _, _) = drain(&mut s);
    assert!(matches!(
        &calls[..],
        [(
            1,
            StateCall::Store(Query::SetMarks {
                seq: 3,
                kind: MarkKind::Delivered,
                ..
            }),
            _
        )]
    ));
    // A store that fails leaves the marks to the next report; the receipt still goes.
    s.answered(1, StateAnswer::Stored(Err(Failure::StoreTimedOut)), NOW);
    let (calls, _, _) = drain(&mut s);
    assert!(matches!(&calls[..], [(1, StateCall::Online { .. }, _)]));
    s.answered(1, online(2), NOW);
    let (_, _, events) = drain(&mut s);
    let channels: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(channels, [room, keys::user("ann").as_str(), keys::user("bob").as_str()]);
    assert!(events
        .iter()
        .all(|e| e.1["status"] == "delivered" && e.1["users"] == serde_json::json!(["bob"])));

    // The size is kept: no Redis call within SIZE_KEPT_MS.
    s.delivered(2, room, 4, vec!["bob".into()], NOW + 5_000);
    let _ = drain(&mut s);
    s.answered(2, StateAnswer::Stored(Ok(Answer::Marks(vec![1]))), NOW + 5_000);
    let (calls, _, events) = drain(&mut s);
    assert!(calls.is_empty());
    assert_eq!(events.len(), 3);
    // Past it, read again; a room above the cap gets none.
    s.tick(3, NOW + SIZE_KEPT_MS + 1);
    s.delivered(4, room, 5, vec!["bob".into()], NOW + SIZE_KEPT_MS + 1);
    let _ = drain(&mut s);
    s.answered(4, StateAnswer::Stored(Ok(Answer::Marks(vec![1]))), NOW + SIZE_KEPT_MS + 1);
    let (calls, _, _) = drain(&mut s);
    assert!(matches!(&calls[..], [(4, StateCall::Online { .. }, _)]), "{calls:?}");
    s.answered(4, online(CAP + 1), NOW + SIZE_KEPT_MS + 1);
    let (_, _, events) = drain(&mut s);
    assert!(events.is_empty(), "a room above receipts_room_max pushes none");
    // Its size is kept too: the next report pushes none without asking.
    s.delivered(5, room, 6, vec!["bob".into()], NOW + SIZE_KEPT_MS + 2);
    let _ = drain(&mut s);
    s.answered(5, StateAnswer::Stored(Ok(Answer::Marks(vec![1]))), NOW + SIZE_KEPT_MS + 2);
    let (calls, _, events) = drain(&mut s);
    assert!(calls.is_empty() && events.is_empty());
}

#[test]
fn a_membership_is_written_once_and_again_after_its_write_failed() {
    let mut s = state();
    s.member(1, "ann", "r", NOW);
    let (calls, _, _) = drain(&mut s);
    assert!(matches!(&calls[..], [(1, StateCall::Store(Query::AddUserRoom { user, room }), _)] if user == "ann" && room == "r"));
    s.member(2, "ann", "r", NOW);
    assert!(s.poll().is_none(), "remembered");
    s.answered(1, StateAnswer::Stored(Err(Failure::Store(StoreError::Injected("down")))), NOW);
    s.member(3, "ann", "r", NOW);
    let (calls, _, _) = drain(&mut s);
    assert_eq!(calls.len(), 1, "forgotten after the failure");
    s.answered(3, StateAnswer::Stored(Ok(Answer::Reacted)), NOW);
    s.member(4, "ann", "r", NOW);
    assert!(s.poll().is_none());
}

#[test]
fn presence_of_a_user_is_online_here_or_on_any_node_else_the_stored_last_seen() {
    let mut s = state();
    s.last_seen(1, asker(7), "ann", true, NOW);
    let (calls, replies, _) = drain(&mut s);
    assert!(calls.is_empty());
    assert_eq!(
        (replies[0].1["status"].as_str(), replies[0].1["last_seen"].as_u64()),
        (Some("online"), Some(NOW))
    );

    s.last_seen(2, asker(7), "ann", false, NOW);
    let (calls, _, _) = drain(&mut s);
    assert!(matches!(&calls[..], [(2, StateCall::Subscribers { channel }, _)] if *channel == keys::user("ann")));
    s.answered(2, StateAnswer::Subscribers(Ok(1)), NOW);
    assert_eq!(drain(&mut s).1[0].1["status"], "online");

    s.last_seen(3, asker(7), "ann", false, NOW);
    let _ = drain(&mut s);
    s.answered(3, StateAnswer::Subscribers(Ok(0)), NOW);
    let (calls, _, _) = drain(&mut s);
    assert!(matches!(&calls[..], [(3, StateCall::Store(Query::LastSeen { .. }), _)]));
    s.answered(3, StateAnswer::Stored(Ok(Answer::LastSeen(Some(123)))), NOW);
    let v = &drain(&mut s).1[0].1;
    assert_eq!((v["status"].as_str(), v["last_seen"].as_u64()), (Some("offline"), Some(123)));

    s.last_seen(4, asker(7), "ann", false, NOW);
    let _ = drain(&mut s);
    s.answered(4, StateAnswer::Subscribers(Err(Failure::RedisTimedOut)), NOW);
    let v = &drain(&mut s).1[0].1;
    assert_eq!((v["code"].as_str(), v["retry_ms"].as_u64()), (Some("unavailable"), Some(500)));

    s.seen(5, "ann", NOW + 7);
    let (calls, _, _) = drain(&mut s);
    assert!(matches!(&calls[..], [(5, StateCall::Store(Query::SetLastSeen { ts_ms, .. }), _)] if *ts_ms == NOW + 7));
}

fn bad(call: &StateCall, how: u8) -> StateAnswer {
    let late = how == 1;
    let redis = || if late { Failure::RedisTimedOut } else { redis_down() };
    match (call, how) {
        (_, 2) => StateAnswer::Stored(Ok(Answer::Reacted)),
        (StateCall::RoomSeq { .. }, _) => StateAnswer::RoomSeq(Err(redis())),
        (StateCall::Subscribers { .. }, _) => StateAnswer::Subscribers(Err(redis())),
        (StateCall::Online { .. }, _) => StateAnswer::Online(Err(redis())),
        (StateCall::Store(_), 1) => StateAnswer::Stored(Err(Failure::StoreTimedOut)),
        (StateCall::Store(_), _) => StateAnswer::Stored(Err(Failure::Store(StoreError::Injected("down")))),
    }
}

fn right(call: &StateCall) -> StateAnswer {
    match call {
        StateCall::RoomSeq { .. } => StateAnswer::RoomSeq(Ok(6)),
        StateCall::Subscribers { .. } => StateAnswer::Subscribers(Ok(0)),
        StateCall::Online { .. } => online(1),
        StateCall::Store(Query::SetMark { seq, .. }) => StateAnswer::Stored(Ok(Answer::Mark(*seq))),
        StateCall::Store(Query::SetMarks { users, .. }) => StateAnswer::Stored(Ok(Answer::Marks(vec![0; users.len()]))),
        StateCall::Store(Query::UserRooms { .. }) => StateAnswer::Stored(Ok(Answer::UserRooms(vec![]))),
        StateCall::Store(Query::LastSeen { .. }) => StateAnswer::Stored(Ok(Answer::LastSeen(Some(5)))),
        StateCall::Store(_) => StateAnswer::Stored(Ok(Answer::Reacted)),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Requests of every kind at once, their calls answered in any order, right, failed, late
    /// or wrongly: `sync` and `presence` are answered exactly once, a `read` at most once and
    /// only with an error, one call of a chain is out at a time, and every chain ends.
    #[test]
    fn every_request_is_answered_once_and_every_chain_ends(
        asks in prop::collection::vec((0u8..6, 0u64..8), 1..12),
        order in prop::collection::vec(any::<prop::sample::Index>(), 64),
        how in prop::collection::vec(0u8..8, 64),
    ) {
        let mut s = state();
        let mut kind_of = BTreeMap::new();
        for (i, &(kind, seq)) in asks.iter().enumerate() {
            let id = i as u64 + 1;
            let room = ["r", "dm:ann:bob"][i % 2];
            match kind {
                0 => s.sync(id, asker(id), "ann", NOW),
                1 => s.read(id, asker(id), room, "ann", seq, NOW),
                2 => s.last_seen(id, asker(id), "bob", seq == 0, NOW),
                3 => s.delivered(id, room, seq, vec!["bob".into()], NOW),
                4 => s.member(id, "ann", room, NOW),
                _ => s.seen(id, "ann", NOW),
            }
            kind_of.insert(id, kind);
        }
        let mut out: Calls = Vec::new();
        let mut answered: BTreeMap<u64, serde_json::Value> = BTreeMap::new();
        let mut step = 0;
        loop {
            let (calls, replies, _) = drain(&mut s);
            for (conn, v) in replies {
                prop_assert!(answered.insert(conn, v).is_none(), "request {} answered twice", conn);
            }
            for (id, call, deadline) in calls {
                prop_assert!(out.iter().all(|o| o.0 != id), "chain {} has two calls out", id);
                prop_assert_eq!(deadline, NOW + TIMEOUT);
                out.push((id, call, deadline));
            }
            if out.is_empty() {
                break;
            }
            let (id, call, _) = out.swap_remove(order[step % order.len()].index(out.len()));
            let h = how[step % how.len()];
            step += 1;
            let answer = if h >= 3 { right(&call) } else { bad(&call, h) };
            s.answered(id, answer, NOW);
        }
        prop_assert_eq!(s.in_flight(), 0);
        for (id, kind) in kind_of {
            match kind {
                0 | 2 => prop_assert!(answered.contains_key(&id), "request {} not answered", id),
                1 => prop_assert!(answered.get(&id).is_none_or(|v| v["type"] == "error")),
                _ => prop_assert!(!answered.contains_key(&id)),
            }
        }
    }
}
