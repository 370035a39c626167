//! A user's state in a cluster, kept in the shared store (PostgreSQL): `sync`, read and
//! delivered marks, and a user's presence and last seen, across three real nodes through a
//! private Redis with real clients; and the refusal of what needs a shared store on the
//! embedded one.

mod cluster_pg;
mod cluster_support;
mod common;
#[path = "../../storage/tests/support/pg.rs"]
mod pg;

use std::time::Duration;

use cluster_pg::cluster_on_postgres;
use cluster_support::{eventually, Member};
use common::RedisServer;
use serde_json::{json, Value};

#[test]
fn sync_in_a_cluster_lists_joined_rooms_and_dms_from_the_shared_store() {
    let (_redis, _db, nodes, mut senders) = cluster_on_postgres(3, &[], "team");
    // s0 (node 1) and s1 (node 2) are in "team"; s1 writes three messages there, s0 one; then
    // s1 sends s0 a DM neither joined.
    for i in 0..3 {
        let ack = senders[1].request(
            json!({"type": "send", "room": "team", "body": format!("t{i}")}),
            &format!("t{i}"),
            Duration::from_secs(10),
        );
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let own = senders[0].request(
        json!({"type": "send", "room": "team", "body": "mine"}),
        "m",
        Duration::from_secs(10),
    );
    assert_eq!(own["seq"], 4, "{own}");
    let dm = senders[1].request(json!({"type": "send", "to": "s0", "body": "psst"}), "dm", Duration::from_secs(10));
    assert_eq!((dm["type"].as_str(), dm["room"].as_str()), (Some("ack"), Some("dm:s0:s1")), "{dm}");

    // s0 asks from the other node, as after a reconnect elsewhere: both rooms, with what it has
    // not read (its own message does not count). The writes land within a batch interval.
    let mut again = Member::connect(&nodes[1], "n2", "s0");
    let mut last = Value::Null;
    let listed = eventually(Duration::from_secs(10), || {
        last = again.request(json!({"type": "sync"}), "s", Duration::from_secs(10));
        last["rooms"]
            .as_array()
            .is_some_and(|r| r.len() == 2 && r[0]["seq"] == 1 && r[1]["seq"] == 4)
    });
    assert!(listed, "sync lists the DM and the room: {last}");
    let rooms = last["rooms"].as_array().expect("rooms");
    let row = |r: &Value| {
        (
            r["room"].as_str().map(str::to_owned),
            r["seq"].as_u64(),
            r["read"].as_u64(),
            r["unread"].as_u64(),
        )
    };
    assert_eq!(row(&rooms[0]), (Some("dm:s0:s1".into()), Some(1), Some(0), Some(1)));
    assert_eq!(row(&rooms[1]), (Some("team".into()), Some(4), Some(0), Some(3)));
    // The DM's sender has it too.
    let theirs = senders[1].request(json!({"type": "sync"}), "s1", Duration::from_secs(10));
    let names: Vec<&str> = theirs["rooms"]
        .as_array()
        .expect("rooms")
        .iter()
        .filter_map(|r| r["room"].as_str())
        .collect();
    assert_eq!(names, ["dm:s0:s1", "team"], "{theirs}");
}

#[test]
fn read_and_delivered_marks_in_a_cluster_are_kept_in_the_shared_store() {
    let (_redis, _db, nodes, mut senders) = cluster_on_postgres(3, &[], "marks");
    for i in 0..3 {
        let ack = senders[1].request(
            json!({"type": "send", "room": "marks", "body": format!("m{i}")}),
            &format!("m{i}"),
            Duration::from_secs(10),
        );
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    // s0 (node 1) reads 1, then 2, quickly: the members on both nodes hear of it, coalesced,
    // in order; a read below the mark changes nothing and is no error.
    for (seq, id) in [(1, "r1"), (2, "r2"), (1, "back")] {
        senders[0].send(json!({"type": "read", "room": "marks", "seq": seq, "id": id}));
    }
    let is_receipt = |f: &Value, seq: u64| f["type"] == "receipt" && f["user"] == "s0" && f["status"] == "read" && f["seq"] == seq;
    for m in senders.iter_mut() {
        let got = m.seen_or_read(Duration::from_secs(10), |f| is_receipt(f, 2));
        assert!(got.is_some(), "{}: the read receipt for seq 2\n{}", m.who(), m.context());
    }
    // A read past the last message marks the last one.
    senders[0].send(json!({"type": "read", "room": "marks", "seq": 99, "id": "far"}));
    let got = senders[1].seen_or_read(Duration::from_secs(10), |f| is_receipt(f, 3));
    assert!(got.is_some(), "the read receipt for seq 3\n{}", senders[1].context());
    senders[1].drain(Duration::from_millis(1500));
    let receipts: Vec<u64> = senders[1]
        .log
        .iter()
        .filter(|f| f["type"] == "receipt" && f["status"] == "read")
        .map(|f| f["seq"].as_u64().expect("seq"))
        .collect();
    assert!(receipts.windows(2).all(|w| w[0] < w[1]), "receipts only move forward: {receipts:?}");
    assert!(receipts.len() <= 3, "one per mark that moved at most: {receipts:?}");
    assert!(
        !senders[0].log.iter().any(|f| f["type"] == "error"),
        "no read was refused\n{}",
        senders[0].context()
    );
    // The marks are in the shared store: sync, from the other node, says them (the delivered
    // mark: the three messages reached s0's connection on node 1; stored within a second).
    let mut again = Member::connect(&nodes[1], "n2", "s0");
    let mut sync = Value::Null;
    let stored = eventually(Duration::from_secs(10), || {
        sync = again.request(json!({"type": "sync"}), "s", Duration::from_secs(10));
        sync["rooms"][0]["delivered"] == 3
    });
    assert!(stored, "the delivered mark is stored: {sync}");
    let row = &sync["rooms"][0];
    assert_eq!(
        (row["room"].as_str(), row["read"].as_u64(), row["unread"].as_u64()),
        (Some("marks"), Some(3), Some(0)),
        "{sync}"
    );
}

#[test]
fn a_cluster_on_the_embedded_store_says_read_and_sync_need_a_shared_store() {
    let redis = RedisServer::start();
    let nodes = cluster_support::start_cluster(1, &redis);
    let mut m = Member::connect(&nodes[0], "n1", "ann");
    m.join("r");
    let asks = [
        (json!({"type": "read", "room": "r", "seq": 1}), "read needs a shared store"),
        (json!({"type": "sync"}), "sync needs a shared store"),
    ];
    for (i, (ask, want)) in asks.into_iter().enumerate() {
        let r = m.request(ask, &format!("a{i}"), Duration::from_secs(10));
        assert_eq!(r["code"], "bad_request", "{r}");
        assert!(r["message"].as_str().is_some_and(|t| t.starts_with(want)), "{r}");
    }
}

#[test]
fn a_users_presence_in_a_cluster_is_online_anywhere_then_last_seen_from_the_shared_store() {
    let (_redis, _db, nodes, mut senders) = cluster_on_postgres(3, &[], "ls");
    let ask = |m: &mut Member, who: &str| m.request(json!({"type": "presence", "user": who}), who, Duration::from_secs(10));
    // ann is on node 1 only; s1 asks from node 2.
    let ann = Member::connect(&nodes[0], "n1", "ann");
    let mut online = Value::Null;
    let seen_online = eventually(Duration::from_secs(10), || {
        online = ask(&mut senders[1], "ann");
        online["status"] == "online"
    });
    assert!(seen_online, "ann is online on another node: {online}");
    // ann leaves: offline everywhere, with when.
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    drop(ann);
    let mut offline = Value::Null;
    // Offline can show before the close's write lands (the connect time is stored then): wait
    // for the time of the close, which is after `before`.
    let gone = eventually(Duration::from_secs(10), || {
        offline = ask(&mut senders[1], "ann");
        offline["status"] == "offline" && offline["last_seen"].as_u64().is_some_and(|t| t >= before)
    });
    assert!(gone, "offline, last seen when the connection closed: {offline}");
    // The same answer on the node ann was on; and a user never seen has no last seen.
    let there = ask(&mut senders[0], "ann");
    assert_eq!(
        (there["status"].as_str(), &there["last_seen"]),
        (Some("offline"), &offline["last_seen"]),
        "{there}"
    );
    let never = ask(&mut senders[0], "nobody");
    assert_eq!(
        (never["status"].as_str(), never["last_seen"].is_null()),
        (Some("offline"), true),
        "{never}"
    );
}
