//! Edits, deletes and reactions in a cluster on a shared PostgreSQL store: three real
//! nodes through a private Redis, a real PostgreSQL (a fresh database), real clients.
//! Members on every node hear `update` and `reaction`; only the author (or a moderator)
//! edits; history and a catch-up on a node that held nothing of the room return each
//! message's current version, from the store over the Redis stream, with reactions as the
//! asker sees them; all of it survives restarting every node; a DM's change reaches a
//! recipient who never joined; and a room's changes racing from two nodes end as they
//! were acked (the room's lock in Redis runs them one at a time).

mod cluster_support;
mod common;
#[path = "../../storage/tests/support/pg.rs"]
mod pg;

use std::time::Duration;

use cluster_support::{eventually, seq_of, start_cluster_with, Member, ENVS};
use common::RedisServer;
use serde_json::{json, Value};

const ROOM: &str = "edits";
const WAIT: Duration = Duration::from_secs(10);

fn history(m: &mut Member, id: &str) -> Vec<Value> {
    let r = m.request(json!({"type": "history", "room": ROOM}), id, WAIT);
    assert_eq!(r["type"], "history", "{r}");
    r["messages"].as_array().expect("messages").clone()
}

/// Whether `msgs` read as they must now: seq 1 edited, seq 2 deleted (a tombstone that keeps
/// its seq), seq 3 with bob's 👍 (`me` for bob).
fn current(msgs: &[Value], asker_reacted: bool) -> bool {
    let seqs: Vec<u64> = msgs.iter().map(seq_of).collect();
    seqs == [1, 2, 3]
        && msgs[0]["body"] == "one, edited"
        && msgs[0]["edited_ts"].as_u64().is_some()
        && msgs[1]["deleted"] == true
        && msgs[1].get("body").is_none()
        && msgs[1]["from"] == "alice"
        && msgs[2]["body"] == "three"
        && msgs[2]["reactions"] == json!([{"emoji": "👍", "count": 1, "me": asker_reacted}])
}

fn start(redis: &RedisServer, db: &pg::TestDb) -> Vec<common::Server> {
    let mut envs = ENVS.to_vec();
    envs.extend([("EDGE_STORE", "postgres"), ("EDGE_POSTGRES_URL", db.url.as_str())]);
    let nodes = start_cluster_with(3, redis, &envs);
    cluster_support::wait_readyz(&nodes, 200, WAIT, "cluster start");
    nodes
}

#[test]
fn changes_in_a_cluster_reach_every_node_persist_and_refuse_bad_input() {
    let redis = RedisServer::start();
    let db = pg::TestDb::create();
    let nodes = start(&redis, &db);
    let mut alice = Member::connect(&nodes[0], "n1", "alice");
    let mut alice2 = Member::connect(&nodes[1], "n2", "alice");
    let mut bob = Member::connect(&nodes[1], "n2", "bob");
    let mut carol = Member::connect(&nodes[1], "n2", "carol");
    for m in [&mut alice, &mut alice2, &mut bob, &mut carol] {
        m.join(ROOM);
    }
    for (i, body) in ["one", "two", "three"].into_iter().enumerate() {
        let ack = alice.expect_ack(json!({"type": "send", "room": ROOM, "body": body}), &format!("s{i}"));
        assert_eq!(ack["seq"], i as u64 + 1);
    }

    // The author edits on node 1; the members on node 2 hear it.
    alice.expect_ack(json!({"type": "edit", "room": ROOM, "seq": 1, "body": "one, edited"}), "e1");
    for m in [&mut bob, &mut carol] {
        let u = m
            .read_until(WAIT, |v| v["type"] == "update")
            .unwrap_or_else(|| panic!("{}", m.context()));
        assert_eq!((u["seq"].clone(), u["body"].clone()), (json!(1), json!("one, edited")), "{u}");
        assert!(u["edited_ts"].as_u64().is_some(), "{u}");
    }
    // Only the author: bob may not edit or delete alice's messages.
    bob.expect_error(json!({"type": "edit", "room": ROOM, "seq": 1, "body": "mine"}), "be", "forbidden");
    bob.expect_error(json!({"type": "delete", "room": ROOM, "seq": 2}), "bd", "forbidden");
    // The author deletes from her other node; node 1 hears it.
    alice2.expect_ack(json!({"type": "delete", "room": ROOM, "seq": 2}), "d2");
    let u = alice
        .seen_or_read(WAIT, |v| v["type"] == "update" && v["seq"] == 2)
        .unwrap_or_else(|| panic!("{}", alice.context()));
    assert_eq!(u["deleted"], true, "{u}");
    // A tombstone stays one; seqs past the room's last, and 0, do not exist.
    alice.expect_error(json!({"type": "edit", "room": ROOM, "seq": 2, "body": "back"}), "e2", "not_found");
    alice.expect_error(json!({"type": "delete", "room": ROOM, "seq": 2}), "d2again", "not_found");
    bob.expect_error(
        json!({"type": "react", "room": ROOM, "seq": 2, "emoji": "👍", "op": "add"}),
        "r2",
        "not_found",
    );
    alice.expect_error(json!({"type": "edit", "room": ROOM, "seq": 99, "body": "x"}), "e99", "not_found");
    // Bob reacts on node 2; alice hears it on node 1. Adding it again is acked and tells nobody.
    bob.expect_ack(json!({"type": "react", "room": ROOM, "seq": 3, "emoji": "👍", "op": "add"}), "r3");
    let r = alice
        .read_until(WAIT, |v| v["type"] == "reaction")
        .unwrap_or_else(|| panic!("{}", alice.context()));
    assert_eq!(
        (r["user"].clone(), r["emoji"].clone(), r["op"].clone()),
        (json!("bob"), json!("👍"), json!("add")),
        "{r}"
    );
    let from = alice.log.len();
    bob.expect_ack(
        json!({"type": "react", "room": ROOM, "seq": 3, "emoji": "👍", "op": "add"}),
        "r3again",
    );
    // An event of it would cross the room's Redis channel before this message, sent after.
    alice.expect_ack(json!({"type": "send", "room": ROOM, "body": "marker"}), "marker");
    let marker = alice.seen_or_read(WAIT, |v| v["type"] == "message" && v["body"] == "marker");
    assert!(marker.is_some(), "the marker: {}", alice.context());
    assert!(
        !alice.log[from..].iter().any(|v| v["type"] == "reaction"),
        "a reaction already there told nobody: {}",
        alice.context()
    );

    // History from every node: the current versions, from the store over the Redis stream.
    let three = |msgs: Vec<Value>| msgs.into_iter().filter(|m| seq_of(m) <= 3).collect::<Vec<_>>();
    assert!(current(&three(history(&mut carol, "h1")), false), "{:?}", history(&mut carol, "h1"));
    assert!(current(&three(history(&mut bob, "h2")), true), "bob sees his own 👍");
    // A catch-up on node 3, which held nothing of the room: read from the stream, then the store.
    let mut dave = Member::connect(&nodes[2], "n3", "dave");
    let joined = dave.request(json!({"type": "join", "room": ROOM, "since": 0}), "j", WAIT);
    assert_eq!(joined["type"], "joined", "{joined}");
    let mut caught = Vec::new();
    assert!(
        eventually(WAIT, || {
            while let Some(v) = dave.read_until(Duration::from_millis(200), |v| v["type"] == "message") {
                caught.push(v);
            }
            caught.len() >= 4
        }),
        "the catch-up: {}",
        dave.context()
    );
    assert_eq!(caught[0]["body"], "one, edited", "{:?}", caught);
    assert_eq!(caught[1]["deleted"], true, "{:?}", caught);
    assert!(caught[1].get("body").is_none(), "{:?}", caught);

    // Every node restarts: the store still holds every change.
    drop((alice, alice2, bob, carol, dave));
    drop(nodes);
    let nodes = start(&redis, &db);
    let mut erin = Member::connect(&nodes[2], "n3", "erin");
    erin.join(ROOM);
    assert!(
        current(&three(history(&mut erin, "after")), false),
        "{:?}",
        history(&mut erin, "after")
    );
    let mut bob = Member::connect(&nodes[0], "n1", "bob");
    assert!(
        current(&three(history(&mut bob, "bob-after")), true),
        "{:?}",
        history(&mut bob, "bob-after")
    );
}

#[test]
fn a_dm_change_in_a_cluster_reaches_the_recipient_who_never_joined() {
    let redis = RedisServer::start();
    let db = pg::TestDb::create();
    let nodes = start(&redis, &db);
    let mut bob = Member::connect(&nodes[2], "n3", "bob");
    let mut alice = Member::connect(&nodes[0], "n1", "alice");
    cluster_support::a_dm_change_reaches_the_recipient_who_never_joined(&mut alice, &mut bob);
}

#[test]
fn changes_racing_from_two_nodes_end_as_they_were_acked() {
    let redis = RedisServer::start();
    let db = pg::TestDb::create();
    let nodes = start(&redis, &db);
    let mut a1 = Member::connect(&nodes[0], "n1", "alice");
    let mut a2 = Member::connect(&nodes[1], "n2", "alice");
    let mut watcher = Member::connect(&nodes[2], "n3", "wat");
    for m in [&mut a1, &mut a2, &mut watcher] {
        m.join(ROOM);
    }
    let rounds = 10;
    for i in 0..rounds {
        a1.expect_ack(json!({"type": "send", "room": ROOM, "body": format!("m{i}")}), &format!("s{i}"));
    }
    // Each message: an edit from node 1 and a delete from node 2, sent together.
    for i in 0..rounds {
        let seq = i + 1;
        a1.send(json!({"type": "edit", "room": ROOM, "seq": seq, "body": format!("edited {i}"), "id": format!("e{i}")}));
        a2.send(json!({"type": "delete", "room": ROOM, "seq": seq, "id": format!("d{i}")}));
    }
    let answer = |m: &mut Member, id: String| {
        m.seen_or_read(WAIT, |v| v["id"] == id.as_str())
            .unwrap_or_else(|| panic!("no answer to {id}: {}", m.context()))
    };
    for i in 0..rounds {
        let d = answer(&mut a2, format!("d{i}"));
        // Nothing can make the delete fail: before the edit, or after it.
        assert_eq!(d["type"], "ack", "{d}");
        let e = answer(&mut a1, format!("e{i}"));
        // The edit ran first (acked), or after the delete (the message was gone).
        assert!(e["type"] == "ack" || e["code"] == "not_found", "{e}");
    }
    // Every message ends deleted in the store, and the watcher's last event of each is the delete.
    let mut page = Vec::new();
    let all_gone = eventually(WAIT, || {
        let r = watcher.request(json!({"type": "history", "room": ROOM}), "h", WAIT);
        page = r["messages"].as_array().cloned().unwrap_or_default();
        page.len() == rounds as usize && page.iter().all(|m| m["deleted"] == true)
    });
    assert!(all_gone, "every message a tombstone: {page:?}");
    let mut last = std::collections::BTreeMap::new();
    let _ = watcher.read_until(Duration::from_secs(2), |_| false);
    for v in watcher.log.iter().filter(|v| v["type"] == "update") {
        last.insert(v["seq"].as_u64().expect("seq"), v["deleted"] == true);
    }
    assert_eq!(last.len(), rounds as usize, "an update per message: {}", watcher.context());
    assert!(
        last.values().all(|&deleted| deleted),
        "the delete is the last event of every message: {last:?}"
    );
}
