//! The member side's repair of a hole in a room's deliveries, driven by hand:
//! what members get, in which order, for each way the read can end.

use router::bridge::BridgeError;
use serde_json::Value;

use super::*;

fn sub(max_catch_up: usize) -> Subscriber {
    Subscriber::new(SubscriberConfig {
        ring_cap: 8,
        ring_max_bytes: usize::MAX,
        max_catch_up_messages: max_catch_up,
        run_epoch: 1,
    })
}

fn m(seq: u64) -> Bytes {
    Bytes::from(format!("m{seq}"))
}

fn effects(s: &mut Subscriber) -> Vec<SubEffect> {
    std::iter::from_fn(|| s.poll()).collect()
}

/// A subscriber with one member (conn 1) of room "r", at seq `at`.
fn member_at(at: u64, max_catch_up: usize) -> Subscriber {
    let mut s = sub(max_catch_up);
    s.join(JoinReq {
        room: "r",
        conn: 1,
        token: 1,
        req: Some("1"),
        since: None,
        user: "u",
    });
    s.subscribed(1, Ok(None));
    s.room_seq(1, Ok(at));
    let out = effects(&mut s);
    assert!(matches!(out.last(), Some(SubEffect::Joined { .. })), "{out:?}");
    s
}

/// The one read a repair asks for: (token, after, count).
fn read_of(out: &[SubEffect]) -> (u64, u64, u32) {
    match out {
        [SubEffect::Fetch { token, after, count, .. }] => {
            assert!(*token >= FIRST_REPAIR_TOKEN, "a repair's token is out of the joins' range");
            (*token, *after, *count)
        }
        other => panic!("one read expected: {other:?}"),
    }
}

/// What members were given, as text: `m7` for a message, `gap 3-4`, or the notice.
fn given(out: &[SubEffect]) -> Vec<String> {
    out.iter()
        .map(|e| match e {
            SubEffect::Deliver { seq, payload, .. } => {
                let text = String::from_utf8_lossy(payload).into_owned();
                if *seq > 0 {
                    assert_eq!(text, format!("m{seq}"), "a message goes with its seq");
                    return text;
                }
                match serde_json::from_slice::<Value>(payload) {
                    Ok(v) if v["type"] == "gap" => format!("gap {}-{}", v["from"], v["to"]),
                    _ => text,
                }
            }
            SubEffect::Event { payload, .. } => format!("event {}", String::from_utf8_lossy(payload)),
            other => panic!("not for members: {other:?}"),
        })
        .collect()
}

#[test]
fn a_hole_is_read_and_given_before_what_arrived_meanwhile() {
    let mut s = member_at(5, 100);
    assert_eq!(s.deliver("r", 6, &m(6)), Fate::Members);
    assert_eq!(s.deliver("r", 9, &m(9)), Fate::Repairing, "7 and 8 were missed");
    let (token, after, count) = read_of(&effects(&mut s));
    assert_eq!((after, count), (6, 2));
    assert_eq!(s.deliver("r", 10, &m(10)), Fate::Dropped, "held behind the hole");
    assert_eq!(s.deliver("r", 0, &Bytes::from("note")), Fate::Dropped, "a notice too, in its place");
    assert_eq!(s.deliver("r", 9, &m(9)), Fate::Dropped);
    s.fetched(token, Ok(vec![(7, m(7)), (8, m(8))]));
    assert_eq!(given(&effects(&mut s)), ["m7", "m8", "m9", "m10", "note"]);
    assert_eq!(s.seen("r"), Some(10));
    assert_eq!(s.deliver("r", 11, &m(11)), Fate::Members, "live again");
    assert_eq!(
        s.deliver("r", 10, &m(10)),
        Fate::Dropped,
        "the held repeat of 9 and this one are dropped"
    );
}

#[test]
fn what_no_source_holds_is_a_gap_and_a_long_hole_reads_its_newest() {
    let mut s = member_at(2, 3);
    assert_eq!(s.deliver("r", 10, &m(10)), Fate::Repairing);
    let (token, after, count) = read_of(&effects(&mut s));
    assert_eq!((after, count), (6, 3), "the newest 3 of 3..=9");
    // The source no longer holds 7 either.
    s.fetched(token, Ok(vec![(8, m(8)), (9, m(9))]));
    assert_eq!(given(&effects(&mut s)), ["gap 3-7", "m8", "m9", "m10"]);
    assert_eq!(s.seen("r"), Some(10));
}

#[test]
fn a_failed_read_is_made_again_then_named_a_gap() {
    let mut s = member_at(1, 100);
    s.deliver("r", 4, &m(4));
    let (mut token, ..) = read_of(&effects(&mut s));
    for _ in 1..MAX_REPAIR_READS {
        s.fetched(token, Err(Failure::RedisTimedOut));
        let (next, after, count) = read_of(&effects(&mut s));
        assert_ne!(next, token, "each read has a token of its own");
        assert_eq!((after, count), (1, 2), "the same hole");
        token = next;
    }
    s.fetched(token, Err(Failure::RedisTimedOut));
    assert_eq!(given(&effects(&mut s)), ["gap 2-3", "m4"]);
    // A failure that cannot pass is a gap at once.
    s.deliver("r", 6, &m(6));
    let (token, ..) = read_of(&effects(&mut s));
    s.fetched(token, Err(Failure::Redis(BridgeError::BadMessage("bad".into()))));
    assert_eq!(given(&effects(&mut s)), ["gap 5-5", "m6"]);
}

#[test]
fn a_hole_among_the_held_is_read_in_turn() {
    let mut s = member_at(0, 100);
    s.deliver("r", 2, &m(2));
    let (first, ..) = read_of(&effects(&mut s));
    s.deliver("r", 3, &m(3));
    s.deliver("r", 6, &m(6)); // 4 and 5 lost too
    s.deliver("r", 7, &m(7));
    s.fetched(first, Ok(vec![(1, m(1))]));
    let out = effects(&mut s);
    assert_eq!(given(&out[..3]), ["m1", "m2", "m3"]);
    let (second, after, count) = read_of(&out[3..]);
    assert_eq!((after, count), (3, 2));
    s.fetched(second, Ok(vec![(4, m(4)), (5, m(5))]));
    assert_eq!(given(&effects(&mut s)), ["m4", "m5", "m6", "m7"]);
}

#[test]
fn a_change_behind_a_hole_waits_and_its_message_is_given_as_changed() {
    let mut s = member_at(0, 100);
    s.deliver("r", 2, &m(2));
    let (token, ..) = read_of(&effects(&mut s));
    let new = Bytes::from("m2");
    assert!(!s.changed("r", 2, Some(&new), &Bytes::from("edit2")), "held");
    s.fetched(token, Ok(vec![(1, m(1))]));
    assert_eq!(given(&effects(&mut s)), ["m1", "m2", "event edit2"]);
    assert!(s.changed("r", 1, None, &Bytes::from("react1")), "no hole: at once");
}

#[test]
fn the_pumps_gap_moves_the_cursor_and_a_hole_before_it_is_read() {
    let mut s = member_at(3, 100);
    s.skip("r", 4, 5, &server::gap("r", 4, 5));
    assert_eq!(given(&effects(&mut s)), ["gap 4-5"]);
    assert_eq!(s.deliver("r", 6, &m(6)), Fate::Members, "no hole: 4 and 5 were named");
    s.skip("r", 4, 5, &server::gap("r", 4, 5));
    assert!(effects(&mut s).is_empty(), "once");
    // 7 and 8 missed before a gap of 9..=10.
    s.skip("r", 9, 10, &server::gap("r", 9, 10));
    let (token, after, count) = read_of(&effects(&mut s));
    assert_eq!((after, count), (6, 2));
    s.deliver("r", 11, &m(11));
    s.fetched(token, Ok(vec![(7, m(7)), (8, m(8))]));
    assert_eq!(given(&effects(&mut s)), ["m7", "m8", "gap 9-10", "m11"]);
    // A gap overlapping what this shard read itself names only the rest.
    s.skip("r", 10, 13, &server::gap("r", 10, 13));
    assert_eq!(given(&effects(&mut s)), ["gap 12-13"]);
    assert_eq!(s.deliver("r", 14, &m(14)), Fate::Members);
}

#[test]
fn a_reset_or_a_leave_ends_the_repair_and_its_late_answer_is_ignored() {
    let mut s = member_at(1, 100);
    s.deliver("r", 5, &m(5));
    let (token, ..) = read_of(&effects(&mut s));
    s.reset("r", 2, &Bytes::from("epoch"), 50);
    assert_eq!(given(&effects(&mut s)), ["epoch"]);
    s.fetched(token, Ok(vec![(2, m(2)), (3, m(3)), (4, m(4))]));
    assert!(effects(&mut s).is_empty(), "the lost sequence's hole is not given");
    assert_eq!(s.deliver("r", 3, &m(3)), Fate::Members, "the new sequence goes on from 2");

    s.deliver("r", 6, &m(6));
    let (token, ..) = read_of(&effects(&mut s));
    s.leave("r", 1, "u", true);
    effects(&mut s);
    s.fetched(token, Ok(vec![(4, m(4)), (5, m(5))]));
    assert!(effects(&mut s).is_empty(), "no room, nothing given");
}

#[test]
fn a_join_during_a_repair_starts_before_the_hole_and_gets_it() {
    let mut s = member_at(4, 100);
    s.deliver("r", 7, &m(7));
    let (token, ..) = read_of(&effects(&mut s));
    s.join(JoinReq {
        room: "r",
        conn: 2,
        token: 2,
        req: Some("2"),
        since: None,
        user: "v",
    });
    s.subscribed(2, Ok(None));
    let out = effects(&mut s);
    let Some(SubEffect::Joined { payload, .. }) = out.last() else {
        panic!("{out:?}")
    };
    let v: Value = serde_json::from_slice(payload).unwrap();
    assert_eq!(v["seq"], 4, "joined at the cursor: what follows is the hole, then 7");
    s.fetched(token, Ok(vec![(5, m(5)), (6, m(6))]));
    assert_eq!(given(&effects(&mut s)), ["m5", "m6", "m7"]);
}

#[test]
fn a_repair_holds_a_bounded_number_of_messages_and_reads_the_rest_again() {
    let mut s = member_at(0, 100);
    s.deliver("r", 2, &m(2));
    let (token, ..) = read_of(&effects(&mut s));
    let last = 2 + repair::HELD_MAX as u64 + 5;
    for seq in 3..=last {
        s.deliver("r", seq, &m(seq));
    }
    s.fetched(token, Ok(vec![(1, m(1))]));
    let out = effects(&mut s);
    let kept = repair::HELD_MAX as u64 + 1;
    assert_eq!(out.len() as u64, kept, "1, then the held ones up to the bound");
    assert_eq!(s.seen("r"), Some(kept));
    // The next live message shows the let-go ones as a hole, read again.
    s.deliver("r", last + 1, &m(last + 1));
    let (_, after, count) = read_of(&effects(&mut s));
    assert_eq!((after, u64::from(count)), (kept, last - kept));
}
