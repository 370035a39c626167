//! A cluster on a shared PostgreSQL store: three real nodes through a private Redis, a real
//! PostgreSQL (private server or `PG_URL`, a fresh database either way), real clients. The
//! Redis stream keeps only the newest messages (`redis_recent_len`, 1000 by default, of the
//! 3,000 sent); history older than it comes from the store, written once by the node that
//! published each message, and so does a catch-up (`join` with `since`) below the stream.

mod cluster_pg;
mod cluster_support;
mod common;
#[path = "../../storage/tests/support/pg.rs"]
mod pg;

use std::time::Duration;

use cluster_pg::cluster_on_postgres;
use cluster_support::{eventually, start_cluster_with, Member, ENVS};
use common::RedisServer;
use serde_json::{json, Value};

const ROOM: &str = "long";

const SENT: u64 = 3000;

#[test]
fn history_beyond_the_redis_stream_comes_from_the_shared_store_on_every_node() {
    // Senders on every node, so each node writes its own share of the messages.
    // The stream keeps about 500; a catch-up replays at most 1,000 (`max_catch_up_messages`).
    let extra = [("EDGE_REDIS_RECENT_LEN", "500")];
    let (redis, _db, nodes, mut senders) = cluster_on_postgres(3, &extra, ROOM);
    // Pipelined, 100 in flight per sender, so the 3,000 take seconds, not minutes.
    for chunk in 0..SENT / 300 {
        for (k, s) in senders.iter_mut().enumerate() {
            for j in 0..100 {
                let i = chunk * 300 + k as u64 * 100 + j;
                s.send(json!({"type": "send", "room": ROOM, "body": format!("m{i}"), "id": format!("q{i}")}));
            }
        }
        for s in &mut senders {
            let mut acks = 0;
            let done = s.read_until(Duration::from_secs(20), |f| {
                assert_ne!(f["type"], "error", "{f}");
                acks += usize::from(f["type"] == "ack");
                acks == 100
            });
            assert!(done.is_some(), "100 acks\n{}", s.context());
        }
    }
    let stream = common::redis_cmd(redis.port(), &["XLEN", &format!("chat:{{{ROOM}}}:recent")]);
    let kept: u64 = stream
        .trim_start_matches(':')
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("XLEN: {stream:?}"));
    assert!(
        kept < 1000,
        "the stream holds {kept} of {SENT}: older history, and the catch-up's start, must come from the store"
    );

    // Every node pages the whole history back to seq 1: the newest from the stream, the
    // rest from PostgreSQL. Each node writes its own senders' messages, within a batch
    // interval: wait until everything below the stream is in the store (a page of it can
    // still be on its way from one node while older ones from the others are in).
    let below_stream = SENT - kept;
    let mut reader = Member::connect(&nodes[2], "n3", "reader");
    let mut probe = 0;
    let complete = eventually(Duration::from_secs(10), || {
        let mut stored = 0;
        let mut before = below_stream + 1;
        loop {
            probe += 1;
            let page = reader.request(
                json!({"type": "history", "room": ROOM, "before": before, "limit": 100}),
                &format!("probe{probe}"),
                Duration::from_secs(10),
            );
            stored += page["messages"].as_array().map_or(0, Vec::len) as u64;
            match page["next_before"].as_u64() {
                Some(b) => before = b,
                None => break,
            }
        }
        stored == below_stream
    });
    assert!(complete, "the {below_stream} messages older than the stream reach the store");
    for (n, node) in nodes.iter().enumerate() {
        let mut m = Member::connect(node, &format!("n{}", n + 1), &format!("r{n}"));
        let mut seqs: Vec<u64> = Vec::new();
        let mut before: Option<u64> = None;
        for page_no in 0..100 {
            let mut q = json!({"type": "history", "room": ROOM, "limit": 100});
            if let Some(b) = before {
                q["before"] = json!(b);
            }
            let page = m.request(q, &format!("h{page_no}"), Duration::from_secs(10));
            let msgs: &Vec<Value> = page["messages"].as_array().unwrap_or_else(|| panic!("node {}: {page}", n + 1));
            let mut got: Vec<u64> = msgs.iter().map(|v| v["seq"].as_u64().expect("seq")).collect();
            got.extend(seqs);
            seqs = got;
            match page["next_before"].as_u64() {
                Some(b) => before = Some(b),
                None => break,
            }
        }
        let want: Vec<u64> = (1..=SENT).collect();
        assert_eq!(seqs, want, "node {} pages every message once, in order", n + 1);

        // A join with `since` below the stream catches up on everything after it: the oldest
        // from the store, the newest from the stream (1,000, the catch-up bound).
        let since = SENT - 1000;
        let mut late = Member::connect(node, &format!("n{}", n + 1), &format!("late{n}"));
        let joined = late.request(json!({"type": "join", "room": ROOM, "since": since}), "j", Duration::from_secs(10));
        assert_eq!(joined["type"], "joined", "{joined}");
        let last = late.seen_or_read(Duration::from_secs(10), |f| {
            f["type"] == "message" && f["seq"].as_u64() == Some(SENT)
        });
        assert!(
            last.is_some(),
            "node {}: the catch-up reached seq {SENT}\n{}",
            n + 1,
            late.context()
        );
        let caught: Vec<u64> = late.messages(ROOM).iter().filter_map(|m| m["seq"].as_u64()).collect();
        assert_eq!(
            caught,
            (since + 1..=SENT).collect::<Vec<_>>(),
            "node {}: a catch-up across the stream's start delivers every message once, in order",
            n + 1
        );
        assert!(
            !late.log.iter().any(|f| f["type"] == "gap"),
            "no gap: nothing is gone\n{}",
            late.context()
        );
    }
}

/// Whether PostgreSQL holds message `seq` of `room` (a fresh connection, read committed).
fn in_postgres(url: &str, room: &str, seq: u64) -> bool {
    let (url, room) = (url.to_owned(), room.to_owned());
    pg::block_on(async move {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect");
        let task = tokio::spawn(conn);
        let row = client
            .query_one(
                "SELECT count(*) FROM messages WHERE room = $1 AND seq = $2",
                &[&room, &(seq as i64)],
            )
            .await
            .expect("query");
        drop(client);
        let _ = task.await;
        row.get::<_, i64>(0) == 1
    })
}

#[test]
fn durable_acks_in_a_cluster_come_after_the_shared_store_committed() {
    let (_redis, db, _nodes, mut senders) = cluster_on_postgres(2, &[("EDGE_DURABILITY", "durable")], "durable");
    for i in 0..20u64 {
        let s = &mut senders[(i % 2) as usize];
        let ack = s.request(
            json!({"type": "send", "room": "durable", "body": format!("d{i}")}),
            &format!("w{i}"),
            Duration::from_secs(10),
        );
        assert_eq!(ack["type"], "ack", "{ack}");
        let seq = ack["seq"].as_u64().expect("seq");
        assert!(
            in_postgres(&db.url, "durable", seq),
            "seq {seq} was acked before PostgreSQL held it"
        );
    }
}

#[test]
fn after_redis_loses_everything_the_sequence_continues_from_the_store() {
    let (mut redis, db, nodes, mut senders) = cluster_on_postgres(2, &[("EDGE_DURABILITY", "durable")], "kept");
    for i in 1..=5u64 {
        let ack = senders[(i % 2) as usize].request(
            json!({"type": "send", "room": "kept", "body": format!("before {i}")}),
            &format!("b{i}"),
            Duration::from_secs(10),
        );
        assert_eq!(ack["seq"].as_u64(), Some(i), "{ack}");
    }
    // Redis restarts empty: no counter, no stream.
    redis.restart();
    cluster_support::wait_readyz(&nodes, 200, Duration::from_secs(20), "after the Redis restart");
    let mut acked = None;
    let sent = eventually(Duration::from_secs(20), || {
        let ack = senders[0].request(
            json!({"type": "send", "room": "kept", "body": "after"}),
            "after",
            Duration::from_secs(10),
        );
        acked = ack["seq"].as_u64();
        ack["type"] == "ack"
    });
    assert!(sent, "a send goes through once Redis is back: {acked:?}");
    assert_eq!(acked, Some(6), "the seq continues from PostgreSQL's highest, never reused");
    assert!(in_postgres(&db.url, "kept", 6));
    let page = senders[1].request(
        json!({"type": "history", "room": "kept", "limit": 10}),
        "h",
        Duration::from_secs(10),
    );
    let bodies: Vec<&str> = page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["body"].as_str())
        .collect();
    assert_eq!(
        bodies,
        ["before 1", "before 2", "before 3", "before 4", "before 5", "after"],
        "{page}"
    );
    // Members on both nodes heard that Redis lost the room (`epoch`, the sequence going on
    // after 5), then got the new message.
    for m in &mut senders {
        let got = m.seen_or_read(Duration::from_secs(10), |f| f["type"] == "message" && f["seq"] == 6);
        assert!(got.is_some(), "{}: seq 6 delivered\n{}", m.who(), m.context());
        let epoch = m
            .log
            .iter()
            .position(|f| f["type"] == "epoch" && f["room"] == "kept" && f["seq"] == 5);
        let sixth = m.log.iter().position(|f| f["type"] == "message" && f["seq"] == 6);
        assert!(
            epoch.is_some() && epoch < sixth,
            "{}: an epoch before message 6\n{}",
            m.who(),
            m.context()
        );
    }
}

#[test]
fn a_client_id_retried_through_another_node_is_stored_and_delivered_once() {
    let (_redis, db, nodes, mut senders) = cluster_on_postgres(2, &[("EDGE_DURABILITY", "durable")], "retry");
    // s0 sent from node 1; its retry comes through node 2, as after a reconnect elsewhere.
    let send = json!({"type": "send", "room": "retry", "body": "once", "client_id": "c-1"});
    let first = senders[0].request(send.clone(), "a", Duration::from_secs(10));
    assert_eq!(first["type"], "ack", "{first}");
    let mut moved = Member::connect(&nodes[1], "n2", "s0");
    moved.join("retry");
    let retry = moved.request(send.clone(), "b", Duration::from_secs(10));
    assert_eq!(retry["type"], "ack", "{retry}");
    for field in ["seq", "msg_id", "ts"] {
        assert_eq!(retry[field], first[field], "the retry gets the original ack's {field}");
    }
    // Once more through node 2 (now from its own memory) and node 1: still the same message.
    let third = moved.request(send.clone(), "c", Duration::from_secs(10));
    assert_eq!(third["seq"], first["seq"], "{third}");
    // Another user's same client_id is a message of its own.
    let other = senders[1].request(send, "d", Duration::from_secs(10));
    assert_eq!(other["seq"].as_u64(), first["seq"].as_u64().map(|s| s + 1), "{other}");

    // Members on both nodes got "once" once, and the store holds it once.
    for s in &mut senders {
        s.drain(Duration::from_millis(500));
        let bodies: Vec<&str> = s.messages("retry").iter().filter_map(|m| m["body"].as_str()).collect();
        assert_eq!(
            bodies,
            ["once", "once"],
            "{}: ann's and the other user's, each once\n{}",
            s.who(),
            s.context()
        );
    }
    assert_eq!(pg::message_count(&db.url, "retry"), 2);
    let page = moved.request(
        json!({"type": "history", "room": "retry", "limit": 10}),
        "h",
        Duration::from_secs(10),
    );
    let seqs: Vec<u64> = page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["seq"].as_u64())
        .collect();
    assert_eq!(seqs, [1, 2], "{page}");
}

/// The same wiring on Scylla: runs when `SCYLLA_URI` (`host:port`) names a live cluster, and
/// says it was skipped otherwise (no Scylla server can run on the machines this was built on).
#[test]
fn a_cluster_on_scylla_pages_history_below_the_stream_and_dedupes_retries() {
    let Ok(uri) = std::env::var("SCYLLA_URI") else {
        eprintln!("skipped: SCYLLA_URI not set");
        return;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    let keyspace = format!("edge_cluster_{nanos}");
    let redis = RedisServer::start();
    let mut envs = ENVS.to_vec();
    envs.extend([
        ("EDGE_STORE", "scylla"),
        ("EDGE_SCYLLA_CONTACT_POINTS", uri.as_str()),
        ("EDGE_SCYLLA_KEYSPACE", keyspace.as_str()),
        ("EDGE_SCYLLA_CONSISTENCY", "ONE"),
        ("EDGE_REDIS_RECENT_LEN", "20"),
    ]);
    let nodes = start_cluster_with(2, &redis, &envs);
    let mut senders: Vec<Member> = nodes
        .iter()
        .enumerate()
        .map(|(i, s)| Member::connect(s, &format!("n{}", i + 1), "ann"))
        .collect();
    for s in &mut senders {
        s.join("sc");
    }
    for i in 0..120u64 {
        let ack = senders[(i % 2) as usize].request(
            json!({"type": "send", "room": "sc", "body": format!("m{i}"), "client_id": format!("c{i}")}),
            &format!("q{i}"),
            Duration::from_secs(10),
        );
        assert_eq!(ack["seq"].as_u64(), Some(i + 1), "{ack}");
    }
    // A retry through the other node is the original.
    let retry = senders[1].request(
        json!({"type": "send", "room": "sc", "body": "m0", "client_id": "c0"}),
        "r",
        Duration::from_secs(10),
    );
    assert_eq!(retry["seq"].as_u64(), Some(1), "{retry}");
    let complete = eventually(Duration::from_secs(20), || {
        let page = senders[1].request(
            json!({"type": "history", "room": "sc", "before": 21, "limit": 20}),
            "probe",
            Duration::from_secs(10),
        );
        page["messages"].as_array().is_some_and(|m| m.len() == 20)
    });
    assert!(complete, "the oldest messages come back from Scylla");
}

#[test]
fn a_thread_in_a_cluster_pages_its_replies_from_the_shared_store_and_roots_count_them() {
    let (_redis, _db, _nodes, mut senders) = cluster_on_postgres(3, &[], "th");
    let mut send = |who: usize, body: &str, reply_to: Option<u64>| {
        let mut q = json!({"type": "send", "room": "th", "body": body});
        if let Some(r) = reply_to {
            q["reply_to"] = json!(r);
        }
        let ack = senders[who].request(q, body, Duration::from_secs(10));
        ack["seq"].as_u64().unwrap_or_else(|| panic!("{ack}"))
    };
    let root = send(0, "root", None);
    let replies: Vec<u64> = (0..3).map(|i| send(1, &format!("re{i}"), Some(root))).collect();
    send(0, "aside", None);
    let last = send(1, "re3", Some(root));
    let seqs = |page: &Value| -> Vec<u64> {
        page["messages"]
            .as_array()
            .map(|m| m.iter().filter_map(|v| v["seq"].as_u64()).collect())
            .unwrap_or_default()
    };
    // Every reply, from the other node, once the writes landed (a batch interval).
    let want: Vec<u64> = replies.iter().copied().chain([last]).collect();
    let mut page = Value::Null;
    let whole = eventually(Duration::from_secs(10), || {
        page = senders[1].request(
            json!({"type": "history", "room": "th", "thread": root}),
            "t",
            Duration::from_secs(10),
        );
        seqs(&page) == want
    });
    assert!(whole, "the thread's replies, without the message aside: {page}");
    // A plain page (from the Redis stream) carries the root's reply count from the store.
    let mut plain = Value::Null;
    let counted = eventually(Duration::from_secs(10), || {
        plain = senders[0].request(json!({"type": "history", "room": "th"}), "h", Duration::from_secs(10));
        let msgs = plain["messages"].as_array().cloned().unwrap_or_default();
        let of = |seq: u64| msgs.iter().find(|m| m["seq"] == seq).map(|m| m["replies"].clone());
        of(root) == Some(json!(4)) && of(last) == Some(Value::Null)
    });
    assert!(counted, "the root says 4 replies, a reply says none: {plain}");
    // Paged two at a time, newest first.
    let first = senders[0].request(
        json!({"type": "history", "room": "th", "thread": root, "limit": 2}),
        "p1",
        Duration::from_secs(10),
    );
    assert_eq!(seqs(&first), want[2..], "{first}");
    let older = senders[0].request(
        json!({"type": "history", "room": "th", "thread": root, "limit": 2, "before": first["next_before"]}),
        "p2",
        Duration::from_secs(10),
    );
    assert_eq!(seqs(&older), want[..2], "{older}");
    // A root the room does not have is not found.
    let none = senders[0].request(
        json!({"type": "history", "room": "th", "thread": 99}),
        "nf",
        Duration::from_secs(10),
    );
    assert_eq!(none["code"], "not_found", "{none}");
    // A reply to seq 0 is refused, and takes no seq.
    let q = json!({"type": "send", "room": "th", "body": "orphan", "reply_to": 0});
    let r = senders[1].request(q, "orphan", Duration::from_secs(10));
    assert_eq!(r["code"], "not_found", "reply_to 0: {r}");
    // A reply to a seq Redis has not given is refused too (Redis's counter is asked, since
    // the root is past what the sender's core delivered), and takes no seq.
    let q = json!({"type": "send", "room": "th", "body": "far", "reply_to": last + 50});
    let r = senders[1].request(q, "far", Duration::from_secs(10));
    assert_eq!(r["code"], "not_found", "reply_to past the room's last seq: {r}");
    // A reply to the newest root, sent from the other node at once: not refused.
    let fresh = senders[0].request(
        json!({"type": "send", "room": "th", "body": "fresh root"}),
        "fresh",
        Duration::from_secs(10),
    );
    let fresh = fresh["seq"].as_u64().unwrap_or_else(|| panic!("{fresh}"));
    let q = json!({"type": "send", "room": "th", "body": "quick reply", "reply_to": fresh});
    let reply = senders[1].request(q, "quick", Duration::from_secs(10));
    assert_eq!(reply["seq"], fresh + 1, "a reply to a root just acked elsewhere: {reply}");
    let after = senders[0].request(
        json!({"type": "send", "room": "th", "body": "after"}),
        "after",
        Duration::from_secs(10),
    );
    assert_eq!(after["seq"], last + 3, "the refused replies took no seq: {after}");
}
