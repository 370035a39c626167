//! The Redis bridge against a real, private redis-server: sequencing,
//! fan-out to several nodes, subscription reference counts, sharded
//! pub/sub, and hostile bytes on a room channel.
#![cfg(feature = "redis")]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use fred::interfaces::{LuaInterface, PubsubInterface};
use fred::types::Value;
use router::bridge::{BridgeEvent, PreparedMessage, SeqRange, SEQ_PLACEHOLDER};
use router::{encode, Frame};
use support::{config, deliveries, message, next_event, node, probe, RedisServer};

/// The Deliver events in `events`, as (seq, payload, frame, shards).
fn delivered(events: Vec<BridgeEvent>) -> Vec<(u64, Bytes, Bytes, Vec<u16>)> {
    events
        .into_iter()
        .filter_map(|e| match e {
            BridgeEvent::Deliver {
                seq,
                payload,
                frame,
                shards,
                ..
            } => Some((seq, payload, frame, shards.to_vec())),
            BridgeEvent::Gap { .. } => panic!("unexpected {e:?}"),
            _ => None,
        })
        .collect()
}

/// Asserts `got` is `sent` with `seq` written in, and nothing else changed.
fn assert_only_seq_changed(sent: &PreparedMessage, got: &Bytes, seq: u64) {
    assert_eq!(got.len(), sent.frame().len());
    let seq_field = sent.seq_offset()..sent.seq_offset() + 8;
    let slot = sent.slot_offset()..sent.slot_offset() + 20;
    for (i, (a, b)) in sent.frame().iter().zip(got.iter()).enumerate() {
        if !seq_field.contains(&i) && !slot.contains(&i) {
            assert_eq!(a, b, "byte {i} changed");
        }
    }
    assert_eq!(&got[seq_field], &seq.to_le_bytes());
    assert_eq!(&got[slot], format!("{seq:>20}").as_bytes());
    assert_eq!(got, &sent.patched(seq));
}

#[tokio::test]
async fn one_script_per_batch_reaches_every_node_once_in_seq_order() {
    let redis = RedisServer::start();
    let mut a = node(config(&redis, "a")).await;
    let mut b = node(config(&redis, "b")).await;
    a.handle.subscribe("lobby", 0).await.unwrap();
    a.handle.subscribe("lobby", 3).await.unwrap();
    b.handle.subscribe("lobby", 1).await.unwrap();

    let mut sent = BTreeMap::new();
    for batch in 0..3u64 {
        let msgs: Vec<_> = (0..5).map(|i| message("lobby", &format!("m{batch}-{i}"))).collect();
        let range = a.handle.publish("lobby", msgs.clone()).await.unwrap();
        assert_eq!(range, SeqRange::new(batch * 5 + 1, 5));
        sent.extend(range.iter().zip(msgs));
    }
    assert_eq!(a.handle.metrics().script_calls_total, 3);
    assert_eq!(a.handle.metrics().published_total, 15);

    let mut misalignments = BTreeSet::new();
    for (events, shards) in [(&mut a.events, vec![0, 3]), (&mut b.events, vec![1])] {
        let got = delivered(deliveries(events, "lobby", 15).await);
        let seqs: Vec<u64> = got.iter().map(|d| d.0).collect();
        assert_eq!(seqs, (1..=15).collect::<Vec<_>>());
        for (seq, payload, frame, s) in got {
            assert_only_seq_changed(&sent[&seq], &frame, seq);
            let inside = frame.as_ptr_range();
            assert!(
                inside.start <= payload.as_ptr() && payload.as_ptr_range().end <= inside.end,
                "payload is a view"
            );
            let text = std::str::from_utf8(&payload).unwrap();
            assert!(text.contains(&format!("\"seq\":{seq:>20},\"from\"")), "{text}");
            assert_eq!(s, shards);
            misalignments.insert(frame.as_ptr().addr() % 8);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(events.try_recv().is_none(), "each message once");
    }
    // Frames were validated in place wherever the client's buffer put them.
    eprintln!("received frame addresses mod 8: {misalignments:?}");

    assert_eq!(b.handle.room_seq("lobby").await.unwrap(), 15);
    assert_eq!(b.handle.room_seq("nowhere").await.unwrap(), 0);
    let recent = b.handle.recent_after("lobby", 10, 3).await.unwrap();
    assert_eq!(recent.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![11, 12, 13]);
    for m in &recent {
        assert_only_seq_changed(&sent[&m.seq], &m.frame, m.seq);
        assert!(m.payload.starts_with(b"{\"type\":\"message\""));
    }
    assert!(b.handle.recent_after("lobby", 15, 10).await.unwrap().is_empty());

    // A Redis that forgot its scripts (NOSCRIPT) gets them loaded again.
    let p = probe(&redis).await;
    let _: () = p.script_flush(false).await.unwrap();
    let range = a.handle.publish("lobby", vec![message("lobby", "after flush")]).await.unwrap();
    assert_eq!(range.first, 16);
}

#[tokio::test]
async fn concurrent_publishers_on_two_nodes_make_one_gap_free_stream() {
    let redis = RedisServer::start();
    let mut a = node(config(&redis, "a")).await;
    let mut b = node(config(&redis, "b")).await;
    a.handle.subscribe("busy", 0).await.unwrap();
    b.handle.subscribe("busy", 0).await.unwrap();

    let publish_all = |h: router::bridge::BridgeHandle, tag: &'static str| async move {
        let calls = (0..20).map(|i| {
            let h = h.clone();
            async move {
                let batch = (0..3).map(|j| message("busy", &format!("{tag}{i}-{j}"))).collect();
                h.publish("busy", batch).await.unwrap()
            }
        });
        futures::future::join_all(calls).await
    };
    let (ra, rb) = tokio::join!(publish_all(a.handle.clone(), "a"), publish_all(b.handle.clone(), "b"));
    let mut assigned: Vec<u64> = ra.iter().chain(&rb).flat_map(SeqRange::iter).collect();
    assigned.sort_unstable();
    assert_eq!(assigned, (1..=120).collect::<Vec<_>>());

    for events in [&mut a.events, &mut b.events] {
        let got = delivered(deliveries(events, "busy", 120).await);
        assert_eq!(got.iter().map(|d| d.0).collect::<Vec<_>>(), (1..=120).collect::<Vec<_>>());
    }
    assert_eq!(a.handle.metrics().gaps_total + b.handle.metrics().gaps_total, 0);
}

/// Subscribers of each channel, as Redis counts them.
async fn numsub(p: &fred::clients::Client, channels: &[String], sharded: bool) -> Vec<i64> {
    let v: Vec<Value> = if sharded {
        p.pubsub_shardnumsub(channels.to_vec()).await.unwrap()
    } else {
        p.pubsub_numsub(channels.to_vec()).await.unwrap()
    };
    v.chunks(2).map(|kv| kv[1].as_i64().unwrap()).collect()
}

async fn wait_numsub(p: &fred::clients::Client, channels: &[String], want: &[i64], sharded: bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = numsub(p, channels, sharded).await;
        if got == want {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "subscriber counts {got:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn subscription_refcount_churn_leaves_no_stale_subscription() {
    let redis = RedisServer::start();
    let a = node(config(&redis, "a")).await;
    let p = probe(&redis).await;
    let rooms: Vec<String> = (0..8).map(|i| format!("room{i}")).collect();
    let channels: Vec<String> = rooms.iter().map(|r| router::bridge::keys::channel(r)).collect();
    let mut model: BTreeMap<&str, BTreeSet<u16>> = BTreeMap::new();
    for round in 0..5usize {
        for shard in 0..4u16 {
            for (i, room) in rooms.iter().enumerate() {
                if (i + usize::from(shard) + round) % 3 == 0 {
                    a.handle.subscribe(room, shard).await.unwrap();
                    model.entry(room).or_default().insert(shard);
                } else {
                    a.handle.unsubscribe(room, shard).await.unwrap();
                    model.entry(room).or_default().remove(&shard);
                }
            }
        }
    }
    // Leave every other room entirely, shard by shard.
    for room in rooms.iter().step_by(2) {
        for shard in 0..4u16 {
            a.handle.unsubscribe(room, shard).await.unwrap();
            model.entry(room).or_default().remove(&shard);
        }
    }
    let want: Vec<i64> = rooms.iter().map(|r| i64::from(!model[r.as_str()].is_empty())).collect();
    assert!(want.contains(&0) && want.contains(&1), "the churn leaves a mix: {want:?}");
    wait_numsub(&p, &channels, &want, false).await;
    let listed: Vec<String> = p.pubsub_channels("chat:*").await.unwrap();
    assert_eq!(listed.len() as i64, want.iter().sum::<i64>());
    assert_eq!(a.handle.metrics().subscriptions as i64, want.iter().sum::<i64>());

    for room in &rooms {
        for shard in 0..4 {
            a.handle.unsubscribe(room, shard).await.unwrap();
        }
    }
    wait_numsub(&p, &channels, &[0; 8], false).await;
    assert_eq!(a.handle.metrics().subscriptions, 0);
}

#[tokio::test]
async fn sharded_pubsub_works_on_a_single_redis7() {
    let redis = RedisServer::start();
    let sharded = |node| router::bridge::BridgeConfig {
        sharded_pubsub: true,
        ..config(&redis, node)
    };
    let mut a = node(sharded("a")).await;
    let mut b = node(sharded("b")).await;
    let p = probe(&redis).await;
    let channel = vec![router::bridge::keys::channel("s1")];
    a.handle.subscribe("s1", 0).await.unwrap();
    b.handle.subscribe("s1", 2).await.unwrap();
    wait_numsub(&p, &channel, &[2], true).await;

    let first = a.handle.publish("s1", vec![message("s1", "x"), message("s1", "y")]).await.unwrap();
    let second = b.handle.publish("s1", vec![message("s1", "z")]).await.unwrap();
    assert_eq!((first.first, second.first), (1, 3));
    for events in [&mut a.events, &mut b.events] {
        let got = delivered(deliveries(events, "s1", 3).await);
        assert_eq!(got.iter().map(|d| d.0).collect::<Vec<_>>(), vec![1, 2, 3]);
    }
    let listed: Vec<String> = p.pubsub_shardchannels("chat:*").await.unwrap();
    assert_eq!(listed, channel);

    a.handle.unsubscribe("s1", 0).await.unwrap();
    b.handle.unsubscribe("s1", 2).await.unwrap();
    wait_numsub(&p, &channel, &[0], true).await;
}

#[tokio::test]
async fn malformed_bytes_on_a_room_channel_are_rejected_and_counted() {
    let redis = RedisServer::start();
    let mut a = node(config(&redis, "a")).await;
    a.handle.subscribe("lobby", 0).await.unwrap();
    let p = probe(&redis).await;
    let good = message("lobby", "ok").patched(1);
    let hostile: Vec<Bytes> = vec![
        Bytes::from_static(b"garbage"),
        Bytes::new(),
        encode(&Frame::Handoff {
            fd: 0,
            head: b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            peer: "x".into(),
        }),
        message("other-room", "misrouted").patched(1),
        good.slice(..good.len() - 3),
        Bytes::from_static(&[router::bridge::PRESENCE_VERSION, 0xFF, 0xFF]),
    ];
    let channel = router::bridge::keys::channel("lobby");
    for bytes in &hostile {
        let _: i64 = p.publish(channel.clone(), Value::Bytes(bytes.clone())).await.unwrap();
    }
    let h = a.handle.clone();
    support::wait_until("every hostile message rejected", || {
        h.metrics().rejected_total == hostile.len() as u64
    })
    .await;
    assert!(a.events.try_recv().is_none(), "nothing reached the node");

    let json = format!(r#"{{"type":"message",{SEQ_PLACEHOLDER}}}"#);
    let msg = PreparedMessage::new("lobby", json.into_bytes()).unwrap();
    a.handle.publish("lobby", vec![msg]).await.unwrap();
    match next_event(&mut a.events).await {
        BridgeEvent::Deliver { seq: 1, payload, .. } => {
            assert_eq!(&payload[..], format!("{{\"type\":\"message\",\"seq\":{:>20}}}", 1).as_bytes())
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(a.handle.metrics().received_total, 1);
}

#[tokio::test]
async fn a_reader_that_falls_behind_is_told_not_left_guessing() {
    let redis = RedisServer::start();
    let tiny = router::bridge::BridgeConfig {
        event_queue_len: 4,
        ..config(&redis, "a")
    };
    let mut a = node(tiny).await;
    a.handle.subscribe("flood", 0).await.unwrap();
    // 400 messages while nobody reads events: the bridge's queues hold 4.
    for _ in 0..8 {
        let batch = (0..50).map(|i| message("flood", &i.to_string())).collect();
        a.handle.publish("flood", batch).await.unwrap();
    }
    let seen = support::until_event(&mut a.events, |e| matches!(e, BridgeEvent::Deliver { seq: 400, .. })).await;
    // Every seq is delivered in order, or the jump is announced: by a Gap
    // just before, or by a Resync since the last delivery.
    let (mut last, mut resyncs, mut prev): (u64, u64, Option<&BridgeEvent>) = (0, 0, None);
    let mut resync_since_last = false;
    for e in &seen {
        match e {
            BridgeEvent::Deliver { seq, .. } => {
                let announced = matches!(prev, Some(BridgeEvent::Gap { expected, got, .. }) if *expected == last + 1 && got == seq);
                assert!(
                    *seq == last + 1 || announced || resync_since_last,
                    "silent jump from {last} to {seq}"
                );
                (last, resync_since_last) = (*seq, false);
            }
            BridgeEvent::Resync { rooms, .. } => {
                assert_eq!(rooms, &["flood".to_owned()]);
                (resyncs, resync_since_last) = (resyncs + 1, true);
            }
            _ => {}
        }
        prev = Some(e);
    }
    let m = a.handle.metrics();
    assert!(m.lagged_total > 0 && resyncs > 0, "the reader fell behind: {m:?}");
    assert_eq!(m.resyncs_total, resyncs);
}

#[tokio::test]
async fn seqs_never_go_back_while_the_stream_remembers_and_large_seqs_patch_exactly() {
    use fred::interfaces::KeysInterface;
    let redis = RedisServer::start();
    let mut a = node(config(&redis, "a")).await;
    a.handle.subscribe("big", 0).await.unwrap();
    let p = probe(&redis).await;
    // Past 2^32, so the script's 8-byte pack and %20d are really exercised.
    let _: () = p.set("chat:{big}:seq", 5_000_000_000u64 as i64, None, None, false).await.unwrap();
    let m = message("big", "large");
    assert_eq!(a.handle.publish("big", vec![m.clone()]).await.unwrap().first, 5_000_000_001);
    let got = delivered(deliveries(&mut a.events, "big", 1).await);
    assert_only_seq_changed(&m, &got[0].2, 5_000_000_001);

    // The counter is lost but the stream survives: seqs continue after it.
    let _: i64 = p.del("chat:{big}:seq").await.unwrap();
    let range = a
        .handle
        .publish("big", vec![message("big", "x"), message("big", "y")])
        .await
        .unwrap();
    assert_eq!(range.first, 5_000_000_002);
    assert_eq!(a.handle.room_seq("big").await.unwrap(), 5_000_000_003);
}

#[tokio::test]
async fn with_a_shared_store_the_sequence_restarts_above_the_stores_floor() {
    use fred::interfaces::KeysInterface;
    use router::bridge::{BridgeError, SeqFloor};
    let redis = RedisServer::start();
    let a = node(config(&redis, "a")).await;
    let p = probe(&redis).await;
    // Redis has nothing for the room: a publish that does not know the floor writes nothing.
    let refused = a
        .handle
        .publish_with("kept", vec![message("kept", "x")], Vec::new(), SeqFloor::Unknown)
        .await;
    assert!(matches!(refused, Err(BridgeError::FloorNeeded)), "{refused:?}");
    let exists: i64 = p.exists(vec!["chat:{kept}:seq", "chat:{kept}:recent"]).await.unwrap();
    assert_eq!(exists, 0, "nothing written before the floor is known");
    // With the store's highest seq, the sequence continues after it.
    let range = a
        .handle
        .publish_with("kept", vec![message("kept", "y")], Vec::new(), SeqFloor::At(41))
        .await
        .unwrap();
    assert_eq!(range.first, 42);
    // Once Redis holds the sequence, an unknown floor is no obstacle (and a stale one no harm).
    let range = a
        .handle
        .publish_with("kept", vec![message("kept", "z")], Vec::new(), SeqFloor::Unknown)
        .await
        .unwrap();
    assert_eq!(range.first, 43);
    let range = a
        .handle
        .publish_with("kept", vec![message("kept", "w")], Vec::new(), SeqFloor::At(7))
        .await
        .unwrap();
    assert_eq!(range.first, 44);
    // Without a store (`Off`) a lost room restarts at 1, as before.
    let range = a
        .handle
        .publish_with("fresh", vec![message("fresh", "v")], Vec::new(), SeqFloor::Off)
        .await
        .unwrap();
    assert_eq!(range.first, 1);
}

#[test]
fn callers_need_no_tokio_runtime() {
    use support::block_on;
    let redis = RedisServer::start();
    let mut a = router::bridge::start(config(&redis, "plain")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !a.handle.is_ready() {
        assert!(std::time::Instant::now() < deadline, "bridge ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    block_on(a.handle.subscribe("plain", 0)).unwrap();
    let range = block_on(a.handle.publish("plain", vec![message("plain", "no tokio here")])).unwrap();
    assert_eq!(range.first, 1);
    assert!(matches!(block_on(a.events.recv()), Some(BridgeEvent::Deliver { seq: 1, .. })));
    block_on(a.handle.shutdown()).unwrap();
    a.thread.join().unwrap();
}

#[tokio::test]
async fn a_batch_published_also_on_user_channels_reaches_their_subscribers_in_order() {
    use router::bridge::keys;
    let redis = RedisServer::start();
    let mut a = node(config(&redis, "a")).await;
    let mut b = node(config(&redis, "b")).await;
    // Node b holds connections of bob (shard 2) only, not the room.
    b.handle.subscribe(&keys::user("bob"), 2).await.unwrap();
    a.handle.subscribe("dm:ann:bob", 0).await.unwrap();
    let also = vec![keys::user("ann"), keys::user("bob")];
    for batch in 0..3 {
        let msgs: Vec<_> = (0..4).map(|i| message("dm:ann:bob", &format!("d{batch}-{i}"))).collect();
        a.handle.publish_also("dm:ann:bob", msgs, also.clone()).await.unwrap();
    }
    let mut seqs = Vec::new();
    while seqs.len() < 12 {
        match next_event(&mut b.events).await {
            BridgeEvent::UserDeliver {
                user,
                room,
                seq,
                payload,
                shards,
            } => {
                assert_eq!((user.as_str(), room.as_str(), &shards[..]), ("bob", "dm:ann:bob", &[2u16][..]));
                assert!(std::str::from_utf8(&payload).unwrap().contains(&format!("\"seq\":{seq:>20}")));
                seqs.push(seq);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        seqs,
        (1..=12).collect::<Vec<_>>(),
        "a room's messages in seq order on the user's channel"
    );
    // The room's own subscriber got them as room deliveries, with no user copy (ann's
    // channel has no subscriber).
    let got = delivered(deliveries(&mut a.events, "dm:ann:bob", 12).await);
    assert_eq!(got.iter().map(|d| d.0).collect::<Vec<_>>(), (1..=12).collect::<Vec<_>>());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(a.events.try_recv().is_none() && b.events.try_recv().is_none(), "each message once");
    // More than two other channels, or the room's own, are refused before anything is sent.
    let three = vec![keys::user("a"), keys::user("b"), keys::user("c")];
    assert!(a
        .handle
        .publish_also("dm:ann:bob", vec![message("dm:ann:bob", "x")], three)
        .await
        .is_err());
    assert_eq!(a.handle.room_seq("dm:ann:bob").await.unwrap(), 12);
}

#[tokio::test]
async fn subscribers_counts_the_nodes_on_a_channel() {
    let redis = RedisServer::start();
    let a = node(config(&redis, "a")).await;
    let b = node(config(&redis, "b")).await;
    assert_eq!(a.handle.subscribers("user/ann").await.unwrap(), 0, "nobody yet");
    a.handle.subscribe("user/ann", 0).await.unwrap();
    a.handle.subscribe("user/ann", 1).await.unwrap();
    assert_eq!(b.handle.subscribers("user/ann").await.unwrap(), 1, "one node, whatever its shards");
    b.handle.subscribe("user/ann", 0).await.unwrap();
    assert_eq!(a.handle.subscribers("user/ann").await.unwrap(), 2);
    b.handle.unsubscribe("user/ann", 0).await.unwrap();
    // The unsubscribe is queued; Redis counts one node again once it went through.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while a.handle.subscribers("user/ann").await.unwrap() != 1 {
        assert!(std::time::Instant::now() < deadline, "b's unsubscribe never reached Redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_room_restarted_at_a_floor_tells_its_members_first() {
    use router::bridge::SeqFloor;
    let redis = RedisServer::start();
    let a = node(config(&redis, "a")).await;
    let mut w = node(config(&redis, "w")).await;
    w.handle.subscribe("kept", 0).await.unwrap();
    let notice = |seq: u64| {
        encode(&Frame::Event {
            room: "kept".into(),
            from: String::new(),
            payload: format!(r#"{{"type":"epoch","room":"kept","seq":{seq}}}"#).into_bytes(),
        })
    };
    // Redis has nothing for the room and the store says 41: the notice, then message 42.
    let r = a
        .handle
        .publish_noticed("kept", vec![message("kept", "x")], Vec::new(), SeqFloor::At(41), Some(notice(41)))
        .await
        .unwrap();
    assert_eq!(r.first, 42);
    let first = next_event(&mut w.events).await;
    assert!(
        matches!(&first, BridgeEvent::Event { room, .. } if room == "kept"),
        "the notice comes first: {first:?}"
    );
    let second = next_event(&mut w.events).await;
    assert!(matches!(&second, BridgeEvent::Deliver { seq: 42, .. }), "{second:?}");
    // Once Redis holds the room, a floor (and its notice) changes nothing.
    let r = a
        .handle
        .publish_noticed("kept", vec![message("kept", "y")], Vec::new(), SeqFloor::At(7), Some(notice(7)))
        .await
        .unwrap();
    assert_eq!(r.first, 43);
    let third = next_event(&mut w.events).await;
    assert!(
        matches!(&third, BridgeEvent::Deliver { seq: 43, .. }),
        "no second notice: {third:?}"
    );
    // A notice that is not an Event frame of the room is refused before anything is sent.
    let bad = a
        .handle
        .publish_noticed(
            "kept",
            vec![message("kept", "z")],
            Vec::new(),
            SeqFloor::At(1),
            Some(Bytes::from_static(b"junk")),
        )
        .await;
    assert!(bad.is_err(), "{bad:?}");
}

#[tokio::test]
async fn a_rooms_first_delivery_since_it_was_subscribed_says_so() {
    let redis = RedisServer::start();
    let mut a = node(config(&redis, "a")).await;
    let first_flags = |events: Vec<BridgeEvent>| -> Vec<(u64, bool)> {
        events
            .into_iter()
            .filter_map(|e| match e {
                BridgeEvent::Deliver { seq, first, .. } => Some((seq, first)),
                _ => None,
            })
            .collect()
    };
    a.handle.subscribe("firsts", 0).await.unwrap();
    a.handle
        .publish("firsts", vec![message("firsts", "1"), message("firsts", "2")])
        .await
        .unwrap();
    let got = vec![next_event(&mut a.events).await, next_event(&mut a.events).await];
    // The pump checks a delivery against the last seq it forwarded, except the first of a
    // subscription: what it knew may be from before it.
    assert_eq!(first_flags(got), [(1, true), (2, false)]);
    a.handle.unsubscribe("firsts", 0).await.unwrap();
    a.handle.publish("firsts", vec![message("firsts", "3")]).await.unwrap();
    a.handle.subscribe("firsts", 0).await.unwrap();
    a.handle.publish("firsts", vec![message("firsts", "4")]).await.unwrap();
    assert_eq!(first_flags(vec![next_event(&mut a.events).await]), [(4, true)]);
}
