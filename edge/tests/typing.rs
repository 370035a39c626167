//! Typing indicators over real sockets: one node on both io drivers, and two
//! nodes joined through a private redis-server. Pushed to the room's other
//! members (never to the typist's own connections), stopped by itself after
//! `typing_ttl_ms`, coalesced per `typing_interval_ms`, refused outside a
//! joined room.

mod cluster_support;
mod common;

use std::time::{Duration, Instant};

use cluster_support::Member;
use common::{drivers, RedisServer, Server};
use serde_json::{json, Value};

const TTL_MS: u64 = 800;
const ENVS: &[(&str, &str)] = &[
    ("EDGE_TYPING_TTL_MS", "800"),
    ("EDGE_TYPING_INTERVAL_MS", "200"),
    ("EDGE_MAX_MSGS_PER_S", "100000"),
    ("EDGE_MSGS_BURST", "100000"),
];
const WAIT: Duration = Duration::from_secs(5);

fn is_typing(v: &Value, user: &str, state: &str) -> bool {
    v["type"] == "typing" && v["user"] == user && v["state"] == state
}

/// The typing states `m` has seen about `user` in `room`, in order.
fn typing_seen(m: &Member, room: &str, user: &str) -> Vec<String> {
    m.log
        .iter()
        .filter(|v| v["type"] == "typing" && v["room"] == room && v["user"] == user)
        .map(|v| v["state"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Reads everything `m` has been sent so far (a ping's reply is the barrier).
fn settle(m: &mut Member, tag: &str) {
    let r = m.request(json!({"type": "ping"}), tag, WAIT);
    assert_eq!(r["type"], "pong", "{}", m.context());
}

/// Alice types, Bob's connections hear it and hear it stop by itself; Alice's own
/// connections hear nothing of her typing.
fn typing_reaches_the_others_and_runs_out(alice: &mut [Member], bob: &mut [Member], room: &str) {
    let sent = Instant::now();
    alice[0].send(json!({"type": "typing", "room": room, "state": "start"}));
    for b in bob.iter_mut() {
        let got = b.read_until(WAIT, |v| is_typing(v, "alice", "start"));
        assert!(got.is_some(), "{} never heard alice start typing\n{}", b.who(), b.context());
        assert_eq!(got.as_ref().map(|v| v["room"].clone()), Some(json!(room)));
    }
    for b in bob.iter_mut() {
        let got = b.read_until(WAIT, |v| is_typing(v, "alice", "stop"));
        assert!(got.is_some(), "{}: alice's start never ran out\n{}", b.who(), b.context());
    }
    let ran_out = sent.elapsed();
    assert!(
        ran_out >= Duration::from_millis(TTL_MS - 200),
        "a start without a refresh stopped after {ran_out:?}, before the {TTL_MS} ms ttl"
    );
    for (i, a) in alice.iter_mut().enumerate() {
        settle(a, &format!("a{i}-{}", a.log.len()));
        assert_eq!(
            typing_seen(a, room, "alice"),
            Vec::<String>::new(),
            "{}: told of her own typing",
            a.who()
        );
    }
    for b in bob.iter_mut() {
        assert_eq!(typing_seen(b, room, "alice"), ["start", "stop"], "{}", b.context());
    }
}

/// Alice starts and stops explicitly: the others hear both.
fn an_explicit_stop_is_pushed(alice: &mut Member, bob: &mut Member, room: &str) {
    let before = typing_seen(bob, room, "alice").len();
    alice.send(json!({"type": "typing", "room": room, "state": "start"}));
    assert!(
        bob.read_until(WAIT, |v| is_typing(v, "alice", "start")).is_some(),
        "{}",
        bob.context()
    );
    let asked = Instant::now();
    alice.send(json!({"type": "typing", "room": room, "state": "stop"}));
    assert!(
        bob.read_until(WAIT, |v| is_typing(v, "alice", "stop")).is_some(),
        "{}",
        bob.context()
    );
    assert!(asked.elapsed() < Duration::from_millis(TTL_MS), "the stop waited for the ttl");
    assert_eq!(typing_seen(bob, room, "alice")[before..], ["start", "stop"]);
}

#[test]
fn one_node_pushes_typing_to_the_other_members_and_stops_it_after_the_ttl() {
    for driver in drivers() {
        let s = Server::start(driver, ENVS);
        let room = "t";
        let mut alice: Vec<Member> = (0..2).map(|_| Member::connect(&s, "n1", "alice")).collect();
        // Bob's connections on both shards (the kernel spreads accepts; connect until they are).
        let mut bob: Vec<Member> = Vec::new();
        while bob.len() < 3 || bob.iter().map(|m| m.c.shard()).collect::<std::collections::BTreeSet<_>>().len() < 2 {
            assert!(bob.len() < 16, "16 connections all on one shard, {driver}");
            bob.push(Member::connect(&s, "n1", "bob"));
        }
        for m in alice.iter_mut().chain(bob.iter_mut()) {
            m.join(room);
        }
        typing_reaches_the_others_and_runs_out(&mut alice, &mut bob, room);
        an_explicit_stop_is_pushed(&mut alice[1], &mut bob[0], room);

        // Only in a joined room, and only start or stop.
        let mut carol = Member::connect(&s, "n1", "carol");
        let r = carol.request(json!({"type": "typing", "room": room, "state": "start"}), "c1", WAIT);
        assert_eq!((r["type"].as_str(), r["code"].as_str()), (Some("error"), Some("forbidden")), "{r}");
        let r = carol.request(json!({"type": "typing", "room": room, "state": "maybe"}), "c2", WAIT);
        assert_eq!(r["code"], "bad_request", "{r}");
        for (i, b) in bob.iter_mut().enumerate() {
            settle(b, &format!("b{i}"));
            assert!(typing_seen(b, room, "carol").is_empty(), "{}", b.context());
        }
    }
}

#[test]
fn a_burst_of_typing_is_coalesced_and_alternates() {
    let s = Server::start("io_uring", ENVS);
    let room = "burst";
    let mut alice = Member::connect(&s, "n1", "alice");
    let mut bob = Member::connect(&s, "n1", "bob");
    alice.join(room);
    bob.join(room);
    for i in 0..40 {
        let state = if i % 2 == 0 { "start" } else { "stop" };
        alice.send(json!({"type": "typing", "room": room, "state": state}));
    }
    // Everything has gone out once the ttl has passed (the last frame was a stop).
    bob.drain(Duration::from_millis(TTL_MS + 700));
    settle(&mut bob, "b");
    let seen = typing_seen(&bob, room, "alice");
    assert!(
        !seen.is_empty() && seen.len() <= 6,
        "40 changes within a few ms, at most one flush per 200 ms: {seen:?}"
    );
    for (i, state) in seen.iter().enumerate() {
        assert_eq!(state, if i % 2 == 0 { "start" } else { "stop" }, "{seen:?}");
    }
    assert_eq!(seen.last().map(String::as_str), Some("stop"), "{seen:?}");
}

#[test]
fn typing_crosses_nodes_through_redis() {
    let redis = RedisServer::start();
    let nodes = cluster_support::start_cluster_with(3, &redis, ENVS);
    cluster_support::wait_readyz(&nodes, 200, WAIT, "cluster start");
    let room = "x";
    let mut alice = vec![Member::connect(&nodes[0], "n1", "alice"), Member::connect(&nodes[1], "n2", "alice")];
    let mut bob = vec![Member::connect(&nodes[1], "n2", "bob"), Member::connect(&nodes[2], "n3", "bob")];
    for m in alice.iter_mut().chain(bob.iter_mut()) {
        m.join(room);
    }
    typing_reaches_the_others_and_runs_out(&mut alice, &mut bob, room);
    an_explicit_stop_is_pushed(&mut alice[0], &mut bob[0], room);
    // Bob types on node 2: Alice hears it on both nodes.
    bob[0].send(json!({"type": "typing", "room": room, "state": "start"}));
    for a in alice.iter_mut() {
        assert!(a.read_until(WAIT, |v| is_typing(v, "bob", "start")).is_some(), "{}", a.context());
    }
}

/// Bob stops reading while Alice sends: once his queue is half full he is shed typing
/// (counted), and when he reads again he has every message, in order, with no gap.
#[test]
fn a_backed_up_reader_is_shed_typing_but_gets_every_message_in_order() {
    let envs = [
        ("EDGE_TYPING_INTERVAL_MS", "20"),
        ("EDGE_MAX_MSGS_PER_S", "100000"),
        ("EDGE_MSGS_BURST", "100000"),
        ("EDGE_OUTBOUND_QUEUE_MAX_BYTES", "2097152"),
    ];
    let s = Server::start("io_uring", &envs);
    let room = "slow";
    let mut alice = Member::connect(&s, "n1", "alice");
    let mut bob = Member::connect(&s, "n1", "bob");
    alice.join(room);
    bob.join(room);
    let body = "x".repeat(4000);
    let (mut sent, mut typing_sent) = (0u64, 0u64);
    // Steps of 32 messages (about 128 KiB, well under the 1 MiB between half the bound and
    // the bound), each followed by a typing change, until Bob was shed one.
    while common::metric_sum(&s.addr, "events_shed_total") == 0 {
        assert!(sent < 8_192, "32 MiB sent and no typing shed for a reader that stopped");
        for _ in 0..32 {
            sent += 1;
            alice.send(json!({"type": "send", "room": room, "body": body, "id": format!("m{sent}")}));
        }
        let last = format!("m{sent}");
        assert!(
            alice.read_until(WAIT, |v| v["id"] == last.as_str()).is_some(),
            "{}",
            alice.context()
        );
        alice.log.clear();
        let state = if typing_sent % 2 == 0 { "start" } else { "stop" };
        alice.send(json!({"type": "typing", "room": room, "state": state}));
        typing_sent += 1;
        std::thread::sleep(Duration::from_millis(40));
    }
    // Bob reads again: every message, in order, and his connection was never closed.
    let got = bob.read_until(Duration::from_secs(60), |v| {
        v["type"] == "message" && cluster_support::seq_of(v) == sent
    });
    assert!(got.is_some(), "bob did not get message {sent}: closed {:?}", bob.closed);
    let seqs: Vec<u64> = bob.messages(room).iter().map(|v| cluster_support::seq_of(v)).collect();
    assert_eq!(seqs, (1..=sent).collect::<Vec<_>>(), "every message once, in order");
    let typing_heard = typing_seen(&bob, room, "alice").len() as u64;
    assert!(
        typing_heard < typing_sent,
        "some typing was shed: heard {typing_heard} of {typing_sent}"
    );
}
