//! A change at its deadline, and the property test: whatever its calls answer, and when,
//! every change is answered once, and the lock and the store keep their rules.

use super::*;

/// Runs change `id` (the only one) with the model until its call out is `stop`; that call.
fn run_until(c: &mut Changes, model: &mut Model, id: u64, stop: &str, now: u64) -> ChangeCall {
    loop {
        let (calls, replies) = drain(c);
        assert!(replies.is_empty(), "{replies:?}");
        let (_, call, _) = calls.into_iter().next().expect("a call");
        if kind(&call) == stop {
            return call;
        }
        let answer = model.answer(&call, now);
        c.answered(id, answer, now);
    }
}

#[test]
fn a_change_whose_store_read_is_late_is_answered_at_its_deadline_then_releases_the_lock() {
    let mut model = Model::default().room("r", 3);
    let mut c = changes();
    c.change(1, edit("r", 2, 7, "new"), 99, NOW);
    c.change(2, edit("r", 2, 8, "newer"), 98, NOW);
    let lookup = run_until(&mut c, &mut model, 1, "lookup", NOW);
    assert_eq!(c.next_deadline(), Some(NOW + budget()));
    c.tick(NOW + budget() - 1);
    assert!(c.poll().is_none());
    c.tick(NOW + budget());
    let (calls, late) = drain(&mut c);
    assert!(calls.is_empty());
    let v = &late[0].1;
    assert_eq!(
        (v["code"].as_str(), v["retry_ms"].as_u64()),
        (Some("unavailable"), Some(200)),
        "{v}"
    );
    assert!(v["message"].as_str().unwrap().contains("store"), "{v}");
    // The read comes back: no write after the answer, the lock released, the next change runs.
    let answer = model.answer(&lookup, NOW + budget());
    c.answered(1, answer, NOW + budget());
    let (calls, again) = drain(&mut c);
    assert!(again.is_empty(), "answered once");
    assert!(matches!(&calls[..], [(1, ChangeCall::Unlock { .. }, _)]), "{calls:?}");
    let answer = model.answer(&calls[0].1, NOW + budget());
    c.answered(1, answer, NOW + budget());
    let mut now = NOW + budget();
    let log = run(&mut c, &mut model, &mut now);
    assert_eq!(kinds(&log)[0], "seq", "the next change starts after the release");
    let answers = replies(&log);
    assert_eq!(answers.len(), 1, "only the next change is answered: {answers:?}");
    assert_eq!((answers[0].0, answers[0].1["type"].as_str()), (8, Some("ack")));
}

#[test]
fn a_write_late_at_the_deadline_leaves_the_lock_to_expire() {
    let mut model = Model::default().room("r", 3);
    let mut c = changes();
    c.change(1, edit("r", 2, 7, "new"), 99, NOW);
    c.change(2, edit("r", 2, 8, "newer"), 98, NOW);
    let _write = run_until(&mut c, &mut model, 1, "write", NOW);
    let at = NOW + budget();
    c.answered(1, ChangeAnswer::Stored(Err(Failure::StoreTimedOut)), at);
    let (calls, replies) = drain(&mut c);
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].1["code"], "unavailable");
    assert!(
        matches!(&calls[..], [(2, ChangeCall::RoomSeq { .. }, _)]),
        "no release while the write may land; the next change starts: {calls:?}"
    );
    assert_eq!(model.lock_holder("r", at), Some(99));
}

#[test]
fn a_change_whose_write_landed_is_acked_at_its_deadline_and_still_publishes() {
    let mut model = Model::default().room("r", 3);
    let mut c = changes();
    c.change(1, edit("r", 2, 7, "new"), 99, NOW);
    let publish = run_until(&mut c, &mut model, 1, "publish", NOW);
    c.tick(NOW + budget());
    let (_, replies) = drain(&mut c);
    assert_eq!(replies[0].1["type"], "ack", "the store holds the change");
    let answer = model.answer(&publish, NOW + budget() + 5);
    c.answered(1, answer, NOW + budget() + 5);
    let log = run(&mut c, &mut model, &mut (NOW + budget() + 5));
    assert_eq!(kinds(&log), ["unlock"], "released, and not answered again");
    assert_eq!(model.published.len(), 1);
    assert!(model.locks.is_empty());
}

#[test]
fn a_change_pausing_for_the_lock_at_its_deadline_ends_without_a_release() {
    let mut model = Model::default().room("r", 3);
    model.locks.insert("r".into(), (5, u64::MAX));
    // A lookup that takes long leaves the change's deadline inside its lock wait.
    let mut c = Changes::new(ChangesConfig { timeout_ms: 0 });
    c.change(1, edit("r", 2, 7, "new"), 99, NOW);
    let mut now = NOW;
    let seq = run_until(&mut c, &mut model, 1, "seq", now);
    now += c.budget_ms() - LOCK_WAIT_MS / 2;
    let answer = model.answer(&seq, now);
    c.answered(1, answer, now);
    loop {
        let (calls, replies) = drain(&mut c);
        if let Some((_, v)) = replies.first() {
            assert_eq!(
                (v["code"].as_str(), v["retry_ms"].as_u64()),
                (Some("unavailable"), Some(500)),
                "{v}"
            );
            break;
        }
        match calls.into_iter().next() {
            Some((id, call, _)) => {
                assert!(matches!(call, ChangeCall::Lock { .. }));
                let answer = model.answer(&call, now);
                c.answered(id, answer, now);
            }
            None => {
                now = c.next_deadline().unwrap();
                c.tick(now);
            }
        }
    }
    assert_eq!(c.in_flight(), 0);
    assert!(c.poll().is_none(), "no release of a lock it never held");
}

#[test]
fn an_answer_for_no_change_or_of_the_wrong_kind_keeps_one_answer() {
    let mut model = Model::default().room("r", 3);
    let mut c = changes();
    c.answered(5, ChangeAnswer::RoomSeq(Ok(3)), NOW);
    assert!(c.poll().is_none(), "an answer for no change is dropped");
    c.change(1, edit("r", 2, 7, "new"), 99, NOW);
    let _ = run_until(&mut c, &mut model, 1, "lookup", NOW);
    c.answered(1, ChangeAnswer::Published(Ok(())), NOW);
    let (calls, replies) = drain(&mut c);
    assert!(replies.is_empty());
    assert!(matches!(&calls[..], [(1, ChangeCall::Unlock { .. }, _)]));
    let answer = model.answer(&calls[0].1, NOW);
    c.answered(1, answer, NOW);
    let (_, replies) = drain(&mut c);
    assert_eq!(replies[0].1["code"], "internal");
    c.answered(1, ChangeAnswer::Unlocked(Ok(())), NOW);
    assert!(c.poll().is_none(), "the change was answered once already");
}

/// How the property test answers one call.
#[derive(Debug, Clone, Copy)]
enum Reply {
    Right,
    Failed,
    /// At the call's deadline, as a timeout; a lock or a write may still have been applied.
    Late {
        applied: bool,
    },
    WrongKind,
}

fn reply_strategy() -> impl Strategy<Value = Reply> {
    prop_oneof![
        12 => Just(Reply::Right),
        1 => Just(Reply::Failed),
        1 => any::<bool>().prop_map(|applied| Reply::Late { applied }),
        1 => Just(Reply::WrongKind),
    ]
}

fn timed_out(call: &ChangeCall) -> ChangeAnswer {
    match call {
        ChangeCall::RoomSeq { .. } => ChangeAnswer::RoomSeq(Err(Failure::RedisTimedOut)),
        ChangeCall::Lock { .. } => ChangeAnswer::Locked(Err(Failure::RedisTimedOut)),
        ChangeCall::Unlock { .. } => ChangeAnswer::Unlocked(Err(Failure::RedisTimedOut)),
        ChangeCall::Publish { .. } => ChangeAnswer::Published(Err(Failure::RedisTimedOut)),
        ChangeCall::Store(_) => ChangeAnswer::Stored(Err(Failure::StoreTimedOut)),
    }
}

fn failed(call: &ChangeCall) -> ChangeAnswer {
    let redis = || Failure::Redis(BridgeError::Unavailable);
    match call {
        ChangeCall::RoomSeq { .. } => ChangeAnswer::RoomSeq(Err(redis())),
        ChangeCall::Lock { .. } => ChangeAnswer::Locked(Err(redis())),
        ChangeCall::Unlock { .. } => ChangeAnswer::Unlocked(Err(redis())),
        ChangeCall::Publish { .. } => ChangeAnswer::Published(Err(redis())),
        ChangeCall::Store(_) => ChangeAnswer::Stored(Err(Failure::Store(StoreError::Injected("down")))),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Changes in three rooms (one a DM, one locked for a while by another node), their
    /// calls answered in any order, right, failed, late or wrongly, time passing: each
    /// change is answered once; one change of a room runs at a time; a write is asked for
    /// only while the change holds the room's lock, and released only once no write of it
    /// can land; an event is published only after its write landed.
    #[test]
    fn every_change_is_answered_once_and_writes_only_under_its_lock(
        asks in prop::collection::vec((0usize..3, 1u64..5, 0u8..4), 1..12),
        order in prop::collection::vec(any::<prop::sample::Index>(), 96),
        how in prop::collection::vec(reply_strategy(), 96),
        waits in prop::collection::vec(0u64..400, 96),
        foreign_lock_ms in 0u64..3_000,
    ) {
        let rooms = ["r", "dm:ann:bob", "s"];
        let mut model = Model::default().room(rooms[0], 3).room(rooms[1], 3).room(rooms[2], 3);
        model.stored.remove(&("r".into(), 3));
        model.locks.insert("s".into(), (1, NOW + foreign_lock_ms));
        let mut c = changes();
        let mut room_of = HashMap::new();
        for (i, &(room, seq, op)) in asks.iter().enumerate() {
            let (id, room) = (i as u64 + 1, rooms[room]);
            let user = if op == 3 { "bob" } else { "ann" };
            let op = match op {
                0 => ChangeOp::Edit { body: format!("v{id}") },
                1 => ChangeOp::Delete,
                _ => ChangeOp::React { emoji: "👍".into(), add: op == 2 },
            };
            c.change(id, change(room, seq, user, id, op), 1000 + id, NOW);
            room_of.insert(id, room);
        }
        let mut now = NOW;
        let mut out: Calls = Vec::new();
        let mut answered: BTreeMap<u64, serde_json::Value> = BTreeMap::new();
        let mut landed: BTreeSet<u64> = BTreeSet::new();
        let mut late_write: BTreeSet<u64> = BTreeSet::new();
        // Changes that may have left their lock: a write or a release not answered right.
        let mut kept: BTreeSet<u64> = BTreeSet::new();
        let mut step = 0;
        loop {
            let (calls, replies) = drain(&mut c);
            for (conn, v) in replies {
                prop_assert!(answered.insert(conn, v).is_none(), "change {} answered twice", conn);
            }
            for (id, call, deadline) in calls {
                prop_assert!(out.iter().all(|o| o.0 != id), "change {} has two calls out", id);
                let room = room_of[&id];
                prop_assert!(
                    out.iter().all(|o| room_of[&o.0] != room),
                    "two changes of {} have calls out", room
                );
                prop_assert!(deadline >= now);
                match &call {
                    ChangeCall::Store(Query::ReplaceFrame { .. } | Query::React { .. }) => {
                        prop_assert_eq!(model.lock_holder(room, now), Some(1000 + id), "a write without the lock");
                    }
                    ChangeCall::Publish { .. } => prop_assert!(landed.contains(&id), "a publish before its write landed"),
                    ChangeCall::Unlock { .. } => prop_assert!(!late_write.contains(&id), "released while a write may land"),
                    _ => {}
                }
                out.push((id, call, deadline));
            }
            if out.is_empty() {
                match c.next_deadline() {
                    Some(at) if c.in_flight() > 0 => {
                        now = now.max(at);
                        c.tick(now);
                        continue;
                    }
                    _ => break,
                }
            }
            let (id, call, deadline) = out.swap_remove(order[step % order.len()].index(out.len()));
            let h = how[step % how.len()];
            now = (now + waits[step % waits.len()]).min(deadline).max(now);
            step += 1;
            let is_write = matches!(call, ChangeCall::Store(Query::ReplaceFrame { .. } | Query::React { .. }));
            let answer = match h {
                Reply::Right => model.answer(&call, now),
                Reply::Failed => failed(&call),
                Reply::Late { applied } => {
                    now = now.max(deadline);
                    if applied && !matches!(call, ChangeCall::Unlock { .. }) {
                        let _ = model.answer(&call, now);
                    }
                    if is_write {
                        late_write.insert(id);
                    }
                    timed_out(&call)
                }
                Reply::WrongKind => ChangeAnswer::Published(Ok(())),
            };
            if is_write && matches!(answer, ChangeAnswer::Stored(Ok(Answer::Replaced(true) | Answer::Reacted))) {
                landed.insert(id);
            }
            if matches!(h, Reply::WrongKind) && is_write {
                late_write.insert(id);
            }
            if late_write.contains(&id) || (matches!(call, ChangeCall::Unlock { .. }) && !matches!(h, Reply::Right)) {
                kept.insert(id);
            }
            c.tick(now);
            c.answered(id, answer, now);
        }
        prop_assert_eq!(answered.len(), asks.len(), "every change answered: {:?}", answered);
        prop_assert_eq!(c.in_flight(), 0);
        prop_assert_eq!(c.next_deadline(), None);
        // A lock left behind is another node's, one a late write keeps until it expires, or
        // one whose release failed.
        for (room, (token, until)) in &model.locks {
            let id = token.wrapping_sub(1000);
            prop_assert!(
                *token == 1 || kept.contains(&id) || *until <= now,
                "room {} left locked by change {}", room, id
            );
        }
    }
}
