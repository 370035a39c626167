//! Direct messages reach the recipient without a join: one node on both io
//! drivers, and two nodes joined through a private redis-server. A `send`
//! with `to` reaches every live connection of both users, members of the DM
//! room or not, once each and in seq order.

mod cluster_support;
mod common;

use std::time::Duration;

use cluster_support::Member;
use common::{drivers, RedisServer, Server};
use serde_json::{json, Value};

const ENVS: &[(&str, &str)] = &[("EDGE_MAX_MSGS_PER_S", "100000"), ("EDGE_MSGS_BURST", "100000")];
const WAIT: Duration = Duration::from_secs(10);
const ROOM: &str = "dm:alice:bob";

/// The seqs of the DM messages `m` got, in arrival order.
fn dm_seqs(m: &Member) -> Vec<u64> {
    m.messages(ROOM).iter().map(|v| cluster_support::seq_of(v)).collect()
}

/// Alice sends `n` DMs to Bob with `to`, pipelined; returns the acked seqs in order.
fn send_dms(alice: &mut Member, n: usize) -> Vec<u64> {
    for i in 0..n {
        alice.send(json!({"type": "send", "to": "bob", "body": format!("dm {i}"), "id": format!("d{i}")}));
    }
    let mut acks = Vec::new();
    for i in 0..n {
        let id = format!("d{i}");
        let ack = alice
            .seen_or_read(WAIT, |v| v["id"] == id.as_str())
            .unwrap_or_else(|| panic!("no ack for {id}\n{}", alice.context()));
        assert_eq!(ack["type"], "ack", "{ack}");
        assert_eq!(ack["room"], ROOM, "{ack}");
        acks.push(cluster_support::seq_of(&ack));
    }
    acks
}

/// Every one of `members` gets each of `seqs` exactly once, in order.
fn all_get_once_in_order(members: &mut [Member], seqs: &[u64]) {
    let last = *seqs.last().expect("seqs");
    for m in members.iter_mut() {
        let done = m.seen_or_read(WAIT, |v| {
            v["type"] == "message" && v["room"] == ROOM && cluster_support::seq_of(v) == last
        });
        assert!(done.is_some(), "{} did not get DM seq {last}\n{}", m.who(), m.context());
        let r = m.request(json!({"type": "ping"}), &format!("p{}", m.log.len()), WAIT);
        assert_eq!(r["type"], "pong");
        assert_eq!(dm_seqs(m), seqs, "{}: every DM once, in seq order", m.who());
        let bodies: Vec<Value> = m.messages(ROOM).iter().map(|v| v["body"].clone()).collect();
        assert_eq!(bodies.first(), Some(&json!("dm 0")), "{}", m.who());
    }
}

fn check_dms(alice: &mut [Member], bob: &mut [Member]) {
    let seqs = send_dms(&mut alice[0], 20);
    assert_eq!(seqs, (seqs[0]..seqs[0] + 20).collect::<Vec<_>>(), "acks gap-free");
    // Alice's sending connection and her other ones get it too, like every member.
    all_get_once_in_order(alice, &seqs);
    all_get_once_in_order(bob, &seqs);
}

#[test]
fn one_node_delivers_a_dm_to_every_connection_of_both_users_without_a_join() {
    for driver in drivers() {
        let s = Server::start(driver, ENVS);
        let mut alice: Vec<Member> = (0..2).map(|_| Member::connect(&s, "n1", "alice")).collect();
        // Bob's connections on both shards (the kernel spreads accepts; connect until they are).
        let mut bob: Vec<Member> = Vec::new();
        while bob.len() < 3 || bob.iter().map(|m| m.c.shard()).collect::<std::collections::BTreeSet<_>>().len() < 2 {
            assert!(bob.len() < 16, "16 connections all on one shard, {driver}");
            bob.push(Member::connect(&s, "n1", "bob"));
        }
        let mut carol = Member::connect(&s, "n1", "carol");
        // One of Bob's connections joined the DM room: it gets each message once, as a member.
        bob[2].join(ROOM);
        check_dms(&mut alice, &mut bob);
        carol.drain(Duration::from_millis(300));
        assert!(carol.messages(ROOM).is_empty(), "a third user sees nothing: {}", carol.context());
    }
}

#[test]
fn a_dm_crosses_nodes_to_a_recipient_who_never_joined() {
    let redis = RedisServer::start();
    let nodes = cluster_support::start_cluster_with(3, &redis, ENVS);
    cluster_support::wait_readyz(&nodes, 200, WAIT, "cluster start");
    let mut alice = vec![Member::connect(&nodes[0], "n1", "alice"), Member::connect(&nodes[1], "n2", "alice")];
    let mut bob = vec![
        Member::connect(&nodes[1], "n2", "bob"),
        Member::connect(&nodes[1], "n2", "bob"),
        Member::connect(&nodes[2], "n3", "bob"),
    ];
    bob[1].join(ROOM);
    // A user's channel is subscribed when the connection authenticates: wait until every
    // node holding a connection of alice (nodes 1 and 2) and bob (nodes 2 and 3) subscribes it.
    for (user, n) in [("alice", 2), ("bob", 2)] {
        let all = cluster_support::eventually(WAIT, || cluster_support::numsub(redis.port(), &format!("user/{user}")) == n);
        assert!(all, "{n} nodes subscribe to {user}'s channel");
    }
    check_dms(&mut alice, &mut bob);
    // Read marks need the shared store (issue #13): a cluster says so rather than drop them.
    let r = alice[0].request(json!({"type": "read", "room": ROOM, "seq": 1}), "read", WAIT);
    assert_eq!(r["code"], "bad_request", "{r}");
    let mut carol = Member::connect(&nodes[1], "n2", "carol");
    carol.drain(Duration::from_millis(300));
    assert!(carol.messages(ROOM).is_empty(), "{}", carol.context());
}
