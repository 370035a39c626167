//! The member side's unit tests: joins, answers, leaves and deliveries, driven by hand.

use router::bridge::BridgeError;
use serde_json::Value;

use super::*;

fn sub() -> Subscriber {
    Subscriber::new(SubscriberConfig {
        ring_cap: 4,
        ring_max_bytes: usize::MAX,
        max_catch_up_messages: 100,
        run_epoch: 1,
    })
}

fn join(token: u64, conn: u64, since: Option<u64>) -> JoinReq<'static> {
    JoinReq {
        room: "r",
        conn,
        token,
        req: Some("1"),
        since,
        user: "u",
    }
}

fn effects(s: &mut Subscriber) -> Vec<SubEffect> {
    std::iter::from_fn(|| s.poll()).collect()
}

fn recent(seq: u64) -> (u64, Bytes) {
    (seq, Bytes::from(seq.to_string()))
}

fn json(b: &Bytes) -> Value {
    serde_json::from_slice(b).expect("json")
}

#[test]
fn a_join_subscribes_learns_the_seq_fetches_and_answers_in_one_go() {
    let mut s = sub();
    s.join(join(7, 1, Some(2)));
    assert_eq!(
        effects(&mut s),
        [SubEffect::Subscribe {
            token: 7,
            room: "r".into(),
            user: "u".into(),
        }]
    );
    s.subscribed(7, Ok(None));
    assert_eq!(
        effects(&mut s),
        [SubEffect::RoomSeq {
            token: 7,
            room: "r".into()
        }]
    );
    s.room_seq(7, Ok(5));
    assert_eq!(
        effects(&mut s),
        [SubEffect::Fetch {
            token: 7,
            room: "r".into(),
            after: 2,
            count: 3
        }]
    );
    s.fetched(7, Ok(vec![recent(3), recent(4), recent(5)]));
    let out = effects(&mut s);
    let SubEffect::Joined { payload, catch_up, .. } = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(json(payload)["seq"], 5);
    assert_eq!(catch_up, &[Bytes::from("3"), Bytes::from("4"), Bytes::from("5")]);
    assert_eq!(out.len(), 1, "counted online by the sequencer at the subscribe: {out:?}");
    // Live traffic: re-deliveries are dropped, notices pass.
    assert_eq!(s.deliver("r", 5, &Bytes::from("5")), Fate::Dropped, "a re-delivery");
    assert_eq!(s.deliver("r", 6, &Bytes::from("6")), Fate::Members);
    assert_eq!(s.deliver("r", 0, &Bytes::from("note")), Fate::Members, "notices pass");
    assert_eq!(s.deliver("other", 1, &Bytes::from("1")), Fate::Dropped, "not delivered here");
    assert!(effects(&mut s).is_empty());
}

#[test]
fn a_local_owners_position_skips_the_seq_read_and_counts_other_shards_members() {
    let mut s = sub();
    s.join(join(3, 1, Some(4)));
    effects(&mut s);
    let pos = RoomPos {
        seq: 6,
        epoch: 77,
        others: 2,
    };
    s.subscribed(3, Ok(Some(pos)));
    assert_eq!(
        effects(&mut s),
        [SubEffect::Fetch {
            token: 3,
            room: "r".into(),
            after: 4,
            count: 2
        }],
        "no RoomSeq: the owner said where the room stands"
    );
    s.fetched(3, Ok(vec![recent(5), recent(6)]));
    let out = effects(&mut s);
    let SubEffect::Joined { payload, catch_up, .. } = &out[0] else {
        panic!("{out:?}")
    };
    let v = json(payload);
    assert_eq!(
        (v["seq"].as_u64(), v["epoch"].as_u64(), v["members"].as_u64()),
        (Some(6), Some(77), Some(3))
    );
    assert_eq!(catch_up, &[Bytes::from("5"), Bytes::from("6")]);
}

#[test]
fn a_catch_up_keeps_the_newest_and_says_gap_only_at_its_start() {
    // At most 3 messages per catch-up; deliveries outrun the first read.
    let mut s = Subscriber::new(SubscriberConfig {
        ring_cap: 1,
        ring_max_bytes: usize::MAX,
        max_catch_up_messages: 3,
        run_epoch: 1,
    });
    s.join(join(1, 1, Some(0)));
    s.subscribed(
        1,
        Ok(Some(RoomPos {
            seq: 4,
            epoch: 1,
            others: 0,
        })),
    );
    effects(&mut s);
    for seq in 5..=8 {
        s.deliver("r", seq, &Bytes::from(seq.to_string()));
    }
    s.fetched(1, Ok(vec![recent(2), recent(3), recent(4)]));
    let out = effects(&mut s);
    let [SubEffect::Fetch { after: 4, count: 3, .. }] = out.as_slice() else {
        panic!("reads on towards the ring (it holds 8 only): {out:?}")
    };
    s.fetched(1, Ok(vec![recent(5), recent(6), recent(7)]));
    let out = effects(&mut s);
    let SubEffect::Joined { catch_up, .. } = &out[0] else {
        panic!("{out:?}")
    };
    let frames: Vec<Value> = catch_up.iter().map(json).collect();
    assert_eq!(frames[0]["type"], "gap");
    assert_eq!((frames[0]["from"].as_u64(), frames[0]["to"].as_u64()), (Some(1), Some(4)));
    assert_eq!(
        &catch_up[1..],
        &[Bytes::from("5"), Bytes::from("6"), Bytes::from("7"), Bytes::from("8")]
    );
}

#[test]
fn a_join_overtaken_by_a_leave_is_cancelled_and_drops_the_idle_subscription() {
    let mut s = sub();
    s.join(join(1, 9, None));
    effects(&mut s);
    s.leave("r", 9, "u", false);
    s.subscribed(1, Ok(None));
    s.room_seq(1, Ok(0));
    let out = effects(&mut s);
    assert_eq!(
        out[1..],
        [
            // Counted in when the subscribe was answered, so counted out once.
            SubEffect::Presence {
                room: "r".into(),
                user: "u".into(),
                online: false
            },
            SubEffect::Unsubscribe { room: "r".into() },
            SubEffect::Cancelled {
                conn: 9,
                req: Some("1".into())
            }
        ]
    );
}

#[test]
fn a_failed_join_is_refused_once_and_other_members_keep_the_subscription() {
    let mut s = sub();
    s.join(join(1, 1, None));
    s.subscribed(1, Ok(None));
    s.room_seq(1, Ok(3));
    effects(&mut s);
    s.join(join(2, 2, None));
    s.subscribed(2, Err(Failure::Redis(BridgeError::Unavailable)));
    let out = effects(&mut s);
    let SubEffect::Refused { conn: 2, payload, .. } = &out[1] else {
        panic!("{out:?}")
    };
    assert_eq!(json(payload)["code"], "unavailable");
    assert_eq!(out.len(), 2, "member 1 still holds the subscription: {out:?}");
    s.leave("r", 1, "u", true);
    assert_eq!(effects(&mut s)[1], SubEffect::Unsubscribe { room: "r".into() });
}
