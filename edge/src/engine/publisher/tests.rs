//! The publisher's unit tests: batches, acks, dedupe, the floor and store writes.

use serde_json::Value;

use super::*;

fn publisher(queue_max: usize, batch_max: usize) -> Publisher {
    let cfg = PublisherConfig {
        node_id: "n1".into(),
        shard: 0,
        dedupe_per_room: 16,
        room_queue_max: queue_max,
        batch_max,
        max_rooms: 100,
        room_idle_evict_ms: 0,
        store_writes: false,
        ack_on_commit: false,
    };
    Publisher::new(cfg, Arc::new(vec![ShardStats::default()]))
}

fn send<'a>(conn: u64, req: &'a str, client_id: Option<&'a str>) -> SendArgs<'a> {
    SendArgs {
        room: "r",
        shard: 0,
        conn,
        user: "u",
        req: Some(req),
        client_id,
        body: "hi",
        kind: "text",
        file: None,
        reply_to: None,
    }
}

/// Drains the effects: (batch sizes published, replies as JSON).
fn drain(p: &mut Publisher) -> (Vec<usize>, Vec<Value>) {
    let (mut batches, mut replies) = (Vec::new(), Vec::new());
    while let Some(e) = p.poll() {
        match e {
            PubEffect::Publish { batch, .. } => batches.push(batch.len()),
            PubEffect::LoadFloor { room } => panic!("no store, no floor to load for {room}"),
            PubEffect::Reply { payload, .. } => replies.push(serde_json::from_slice(&payload).expect("json")),
            PubEffect::Store { msg, .. } => panic!("no store writes configured, got {msg:?}"),
        }
    }
    (batches, replies)
}

#[test]
fn with_a_shared_store_each_sequenced_message_is_written_once_with_its_seq() {
    let mut p = publisher(100, 8);
    p.cfg.store_writes = true;
    let mut stored = Vec::new();
    let mut keep = |p: &mut Publisher| {
        while let Some(e) = p.poll() {
            if let PubEffect::Store { msg, ack } = e {
                assert!(ack.is_none(), "acked when sequenced unless ack_on_commit");
                stored.push(msg);
            }
        }
    };
    p.send(&send(1, "1", Some("c1")), 10);
    p.send(
        &SendArgs {
            reply_to: Some(1),
            ..send(1, "2", None)
        },
        11,
    );
    keep(&mut p); // the first batch goes
    p.published("r", range(7, 1));
    keep(&mut p); // its message stored, the second batch goes
    p.published("r", range(8, 1));
    keep(&mut p);
    assert_eq!(stored.iter().map(|m| m.seq).collect::<Vec<_>>(), [7, 8]);
    assert_eq!((stored[0].client_id.as_deref(), stored[1].reply_to), (Some("c1"), Some(1)));
    for m in &stored {
        let v: Value = serde_json::from_slice(&m.frame).expect("the stored frame is the client JSON");
        assert_eq!(
            (v["seq"].as_u64(), v["room"].as_str(), v["from"].as_str()),
            (Some(m.seq), Some("r"), Some("u")),
            "{v}"
        );
    }
    // A failed publish stores nothing.
    p.send(&send(1, "3", None), 12);
    let _ = p.poll();
    p.published("r", Err(BridgeError::Stopped));
    assert!(std::iter::from_fn(|| p.poll()).all(|e| !matches!(e, PubEffect::Store { .. })));
}

#[test]
fn a_batch_refused_for_want_of_a_floor_waits_for_the_store_then_goes_again_first() {
    let mut p = publisher(100, 1);
    p.cfg.store_writes = true;
    p.send(&send(1, "1", Some("c1")), 10);
    p.send(&send(1, "2", None), 10);
    let floor_of = |e: Option<PubEffect>| match e {
        Some(PubEffect::Publish { floor, batch, .. }) => (floor, batch.len()),
        other => panic!("expected a publish, got {other:?}"),
    };
    assert_eq!(floor_of(p.poll()), (SeqFloor::Unknown, 1));
    p.published("r", Err(BridgeError::FloorNeeded));
    assert!(matches!(p.poll(), Some(PubEffect::LoadFloor { room }) if room == "r"));
    assert!(p.poll().is_none(), "no reply and no batch while the floor is read");
    p.floor_loaded("r", Ok(41));
    assert_eq!(floor_of(p.poll()), (SeqFloor::At(41), 1), "the same first send, with the floor");
    p.published("r", range(42, 1));
    let mut acks = Vec::new();
    let mut floors = Vec::new();
    while let Some(e) = p.poll() {
        match e {
            PubEffect::Reply { payload, .. } => acks.push(serde_json::from_slice::<Value>(&payload).expect("json")),
            PubEffect::Publish { floor, .. } => floors.push(floor),
            PubEffect::Store { .. } => {}
            PubEffect::LoadFloor { .. } => panic!("the floor is known"),
        }
    }
    assert_eq!((acks[0]["id"].as_u64(), acks[0]["seq"].as_u64()), (Some(1), Some(42)));
    assert_eq!(floors, [SeqFloor::Unknown], "a floor is used once: later batches ask Redis again");
    // A floor that cannot be read fails the waiting sends, each once.
    p.published("r", Err(BridgeError::FloorNeeded));
    let _ = p.poll();
    p.floor_loaded("r", Err(Failure::Store(storage::StoreError::Injected("store down"))));
    let replies = replies(&mut p);
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0]["code"], "unavailable", "a retryable failure: {}", replies[0]);
    assert_eq!(replies[0]["retry_ms"], 200, "the store's retry hint");
}

/// The replies among the effects left, as JSON (other effects dropped).
fn replies(p: &mut Publisher) -> Vec<Value> {
    std::iter::from_fn(|| p.poll())
        .filter_map(|e| match e {
            PubEffect::Reply { payload, .. } => serde_json::from_slice(&payload).ok(),
            _ => None,
        })
        .collect()
}

#[test]
fn a_floor_the_store_cannot_give_answers_by_the_failures_kind() {
    // The answer follows the failure's own classification: a full queue to the store is
    // `overloaded`, a broken store `internal` without a retry hint.
    for (failure, code, retry) in [
        (Failure::Busy(Busy::Store), "overloaded", Some(200)),
        (Failure::Store(storage::StoreError::OutOfRange("seq".into())), "internal", None),
    ] {
        let mut p = publisher(100, 1);
        p.cfg.store_writes = true;
        p.send(&send(1, "1", None), 10);
        assert!(matches!(p.poll(), Some(PubEffect::Publish { .. })));
        p.published("r", Err(BridgeError::FloorNeeded));
        assert!(matches!(p.poll(), Some(PubEffect::LoadFloor { .. })));
        p.floor_loaded("r", Err(failure));
        let replies = replies(&mut p);
        assert_eq!(replies.len(), 1, "{replies:?}");
        assert_eq!(replies[0]["code"], code, "{}", replies[0]);
        assert_eq!(replies[0]["retry_ms"].as_u64(), retry, "{}", replies[0]);
    }
}

#[test]
fn with_ack_on_commit_the_ack_waits_for_the_store() {
    let mut p = publisher(100, 8);
    p.cfg.store_writes = true;
    p.cfg.ack_on_commit = true;
    p.send(&send(5, "1", None), 10);
    let _ = p.poll();
    p.published("r", range(3, 1));
    let effects: Vec<PubEffect> = std::iter::from_fn(|| p.poll()).collect();
    assert!(
        !effects.iter().any(|e| matches!(e, PubEffect::Reply { .. })),
        "no ack before the commit: {effects:?}"
    );
    let Some(PubEffect::Store {
        msg,
        ack: Some((conn, ack)),
    }) = effects.into_iter().next()
    else {
        panic!("the write carries the ack");
    };
    let ack: Value = serde_json::from_slice(&ack).expect("json");
    assert_eq!(
        (conn, msg.seq, ack["type"].as_str(), ack["seq"].as_u64()),
        (5, 3, Some("ack"), Some(3))
    );
}

#[test]
fn a_retry_another_node_sequenced_gets_the_original_ack_and_is_stored_again() {
    let mut p = publisher(100, 8);
    p.cfg.store_writes = true;
    p.cfg.ack_on_commit = true;
    for (conn, cid) in [(1, None), (2, Some("c1")), (3, Some("c2")), (4, Some("c3"))] {
        p.send(&send(conn, &conn.to_string(), cid), 10);
    }
    assert!(matches!(p.poll(), Some(PubEffect::Publish { batch, .. }) if batch.len() == 1));
    p.published("r", range(1, 1));
    assert!(matches!(p.poll(), Some(PubEffect::Store { .. })));
    assert!(matches!(p.poll(), Some(PubEffect::Publish { batch, .. }) if batch.len() == 3));
    // Redis answers: c1 was sequenced by node n2 at 4 (its frame still in the stream), c3
    // at 5 (the stream trimmed it); c2 is new and gets 9.
    let json = format!(
        r#"{{"type":"message","room":"r",{},"from":"u","body":"orig","reply_to":3}}"#,
        router::bridge::SEQ_PLACEHOLDER
    );
    let original = PreparedMessage::new("r", json.into_bytes()).expect("placeholder").patched(4);
    let dup = |index, seq, receipt: &str, frame| Duplicate {
        index,
        seq,
        receipt: receipt.into(),
        frame,
    };
    let answer = SeqRange {
        first: 9,
        count: 1,
        duplicates: vec![dup(0, 4, "n2-0-5 7", Some(original)), dup(2, 5, "n2-0-6 8", None)],
    };
    p.published("r", Ok(answer));
    let (mut stored, mut acks) = (Vec::new(), Vec::new());
    while let Some(e) = p.poll() {
        match e {
            PubEffect::Store {
                msg,
                ack: Some((conn, ack)),
            } => {
                stored.push(msg);
                acks.push((conn, serde_json::from_slice::<Value>(&ack).expect("json")));
            }
            PubEffect::Reply { conn, payload } => acks.push((conn, serde_json::from_slice(&payload).expect("json"))),
            other => panic!("unexpected {other:?}"),
        }
    }
    acks.sort_by_key(|(conn, _)| *conn);
    let summary: Vec<_> = acks
        .iter()
        .map(|(c, a)| (*c, a["seq"].as_u64(), a["msg_id"].as_str().map(str::to_owned), a["ts"].as_u64()))
        .collect();
    assert_eq!(summary[0], (2, Some(4), Some("n2-0-5".into()), Some(7)), "the original ack");
    assert_eq!((summary[1].0, summary[1].1), (3, Some(9)), "the new one keeps its own");
    assert_eq!(summary[2], (4, Some(5), Some("n2-0-6".into()), Some(8)));
    // The duplicate whose frame the stream holds is written again (a no-op where the
    // first node stored it), and its ack waits for that commit; the other is acked at once.
    let mut seqs: Vec<u64> = stored.iter().map(|m| m.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, [4, 9]);
    let again = stored.iter().find(|m| m.seq == 4).expect("stored");
    assert_eq!(
        (again.msg_id.as_str(), again.ts_ms, again.client_id.as_deref(), again.reply_to),
        ("n2-0-5", 7, Some("c1"), Some(3))
    );
    let v: Value = serde_json::from_slice(&again.frame).expect("json");
    assert_eq!(
        (v["body"].as_str(), v["seq"].as_u64()),
        (Some("orig"), Some(4)),
        "the original frame"
    );
    // This node now remembers the original: a retry here is answered without Redis.
    p.send(&send(5, "5", Some("c1")), 12);
    let (batches, replies) = drain(&mut p);
    assert!(batches.is_empty());
    assert_eq!(
        (replies[0]["seq"].as_u64(), replies[0]["msg_id"].as_str()),
        (Some(4), Some("n2-0-5"))
    );
    // A receipt that does not read is an error for that sender, never a wrong ack.
    p.send(&send(6, "6", Some("c9")), 13);
    let _ = p.poll();
    let bad = SeqRange {
        first: 0,
        count: 0,
        duplicates: vec![dup(0, 6, "garbage", None)],
    };
    p.published("r", Ok(bad));
    let (_, replies) = drain_replies(&mut p);
    assert_eq!(replies[0]["code"], "internal");
}

/// Like [`drain`], tolerating store writes.
fn drain_replies(p: &mut Publisher) -> (usize, Vec<Value>) {
    let mut writes = 0;
    let mut replies = Vec::new();
    while let Some(e) = p.poll() {
        match e {
            PubEffect::Reply { payload, .. } => replies.push(serde_json::from_slice(&payload).expect("json")),
            PubEffect::Store { .. } => writes += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    (writes, replies)
}

fn range(first: u64, count: u32) -> Result<SeqRange, BridgeError> {
    Ok(SeqRange::new(first, count))
}

#[test]
fn one_batch_in_flight_per_room_and_the_rest_follow_in_order() {
    let mut p = publisher(100, 2);
    p.send(&send(1, "1", None), 10);
    assert_eq!(drain(&mut p).0, [1], "the first send goes at once");
    for i in 2..=4 {
        p.send(&send(1, &i.to_string(), None), 10);
    }
    assert!(drain(&mut p).0.is_empty(), "nothing more while a batch is in flight");
    p.published("r", range(1, 1));
    let (batches, replies) = drain(&mut p);
    assert_eq!(replies[0]["seq"], 1);
    assert_eq!(batches, [2], "then the queue, at most batch_max at a time");
    p.published("r", range(2, 2));
    let (batches, replies) = drain(&mut p);
    assert_eq!(replies.iter().map(|r| r["seq"].as_u64().unwrap()).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(batches, [1]);
    p.published("r", range(4, 1));
    let (batches, replies) = drain(&mut p);
    assert!(batches.is_empty(), "the queue is empty");
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0]["seq"], 4);
}

#[test]
fn a_retried_client_id_gets_the_original_ack_or_waits() {
    let mut p = publisher(100, 8);
    p.send(&send(1, "1", Some("c1")), 10);
    p.send(&send(2, "2", Some("c1")), 11);
    let (batches, replies) = drain(&mut p);
    assert_eq!(batches, [1]);
    assert_eq!(replies[0]["code"], "overloaded", "in flight: retry later");
    p.published("r", range(7, 1));
    let acked = drain(&mut p).1;
    p.send(&send(3, "3", Some("c1")), 12);
    let (batches, again) = drain(&mut p);
    assert!(batches.is_empty(), "not published twice");
    assert_eq!(again[0]["seq"], 7);
    assert_eq!(again[0]["msg_id"], acked[0]["msg_id"]);
}

#[test]
fn a_full_queue_and_a_failed_publish_answer_every_sender_once() {
    let mut p = publisher(1, 8);
    p.send(&send(1, "1", Some("a")), 10); // in flight
    p.send(&send(1, "2", None), 10); // queued
    p.send(&send(1, "3", None), 10); // over the queue bound
    let (_, replies) = drain(&mut p);
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0]["id"], 3);
    assert_eq!(replies[0]["code"], "overloaded");
    p.published("r", Err(BridgeError::Unavailable));
    let (batches, replies) = drain(&mut p);
    assert_eq!(replies[0]["code"], "unavailable");
    assert!(replies[0]["retry_ms"].as_u64().is_some());
    assert_eq!(batches, [1], "the queued send goes next");
    p.published("r", range(1, 0));
    let (_, replies) = drain(&mut p);
    assert_eq!(replies[0]["code"], "internal", "a short answer still answers every sender");
    p.send(&send(1, "4", Some("a")), 12);
    assert_eq!(drain(&mut p).0, [1], "a failed client_id may be sent again");
}

#[test]
fn a_shared_store_that_is_down_or_backed_up_refuses_sends_before_they_take_a_seq() {
    let up = StoreState {
        unavailable: false,
        backlog: 0,
        capacity: 64,
    };
    let down = StoreState { unavailable: true, ..up };
    let full = StoreState { backlog: 56, ..up };
    let mut p = publisher(100, 8);
    // Without store writes (the embedded store, one per node) the store is not asked about.
    assert!(p.admit(
        &send(1, "1", None),
        StoreState {
            unavailable: true,
            backlog: 64,
            capacity: 64
        }
    ));
    p.cfg.store_writes = true;
    // Fast mode: a store that is down holds the writes; only a backlog at 7/8 of the queue refuses.
    assert!(p.admit(&send(1, "2", None), down));
    assert!(p.admit(&send(1, "3", None), StoreState { backlog: 55, ..down }));
    assert!(!p.admit(&send(1, "4", None), full));
    // Durable: acks wait for the store, so a store that is down refuses at once.
    p.cfg.ack_on_commit = true;
    assert!(p.admit(&send(1, "5", None), up));
    assert!(!p.admit(&send(1, "6", None), down));
    let (batches, replies) = drain(&mut p);
    assert!(batches.is_empty(), "nothing refused reaches Redis");
    let codes: Vec<(u64, &str)> = replies
        .iter()
        .map(|r| (r["id"].as_u64().unwrap(), r["code"].as_str().unwrap()))
        .collect();
    assert_eq!(codes, [(4, "overloaded"), (6, "unavailable")]);
    assert!(replies.iter().all(|r| r["retry_ms"].as_u64().is_some()));
}

#[test]
fn a_floor_never_goes_below_what_redis_gave_this_node() {
    let mut p = publisher(100, 8);
    p.cfg.store_writes = true;
    p.send(&send(1, "1", None), 10);
    let _ = p.poll();
    p.published("r", range(7, 1));
    let _ = std::iter::from_fn(|| p.poll()).count();
    // Redis lost the room; the store has not written seq 7 yet (it says 5).
    p.send(&send(1, "2", None), 11);
    assert!(matches!(p.poll(), Some(PubEffect::Publish { .. })));
    p.published("r", Err(BridgeError::FloorNeeded));
    assert!(matches!(p.poll(), Some(PubEffect::LoadFloor { .. })));
    p.floor_loaded("r", Ok(5));
    let Some(PubEffect::Publish { floor, .. }) = p.poll() else {
        panic!("the batch goes again")
    };
    assert_eq!(floor, SeqFloor::At(7), "seq 7 is never given again");
}

#[test]
fn a_floor_above_0_comes_with_an_epoch_notice_and_a_new_room_without() {
    let mut p = publisher(100, 8);
    p.cfg.store_writes = true;
    let notice_of = |p: &mut Publisher, room_floor: u64| {
        p.published("r", Err(BridgeError::FloorNeeded));
        assert!(matches!(p.poll(), Some(PubEffect::LoadFloor { .. })));
        p.floor_loaded("r", Ok(room_floor));
        match p.poll() {
            Some(PubEffect::Publish { floor, notice, .. }) => (floor, notice),
            other => panic!("the batch goes again: {other:?}"),
        }
    };
    // A new room: the store has nothing, nothing was lost, no notice.
    p.send(&send(1, "1", None), 10);
    let _ = p.poll();
    let (floor, notice) = notice_of(&mut p, 0);
    assert_eq!((floor, notice), (SeqFloor::At(0), None));
    p.published("r", range(1, 1));
    let _ = std::iter::from_fn(|| p.poll()).count();
    // Redis lost the room at 41 messages: the batch carries the epoch notice, once.
    p.send(&send(1, "2", None), 20);
    let _ = p.poll();
    let (floor, notice) = notice_of(&mut p, 41);
    assert_eq!(floor, SeqFloor::At(41));
    let v: Value = serde_json::from_slice(&notice.expect("a notice")).expect("json");
    assert_eq!(
        (v["type"].as_str(), v["room"].as_str(), v["seq"].as_u64(), v["epoch"].as_u64()),
        (Some("epoch"), Some("r"), Some(41), Some(20))
    );
}

#[test]
fn idle_rooms_are_forgotten_but_not_while_a_send_is_out() {
    let mut p = publisher(100, 8);
    p.cfg.room_idle_evict_ms = 1_000;
    p.send(&send(1, "1", None), 10);
    let _ = drain(&mut p);
    p.evict_idle(5_000);
    assert_eq!(p.rooms.len(), 1, "a batch in flight keeps the room");
    p.published("r", range(1, 1));
    let _ = drain(&mut p);
    p.evict_idle(900);
    assert_eq!(p.rooms.len(), 1, "not idle long enough");
    p.evict_idle(1_010);
    assert!(p.rooms.is_empty(), "idle for room_idle_evict_ms: forgotten");
    assert_eq!(p.stats[0].rooms_evicted_total.load(std::sync::atomic::Ordering::Relaxed), 1);
}
