//! Presence on a single node (no Redis): the real binary and real WebSocket
//! clients, on both io drivers. (The deterministic harness covers the
//! interleavings across shards; this is the wire behaviour end to end.) And
//! the coalesced counts of a three-node cluster through a private Redis.

mod cluster_support;
mod common;

use common::{drivers, Client, Server};
use serde_json::{json, Value};

fn presence_events(log: &[Value], user: &str) -> Vec<String> {
    log.iter()
        .filter(|v| v["type"] == "presence" && v["user"] == user && v.get("id").is_none())
        .map(|v| v["status"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn listed(reply: &Value) -> Vec<String> {
    let mut users: Vec<String> = reply["online"]
        .as_array()
        .expect("online")
        .iter()
        .map(|u| u["user"].as_str().expect("user").to_owned())
        .collect();
    users.sort();
    users
}

/// Reads `c`'s frames into `log` until `pred` holds for one of them.
fn read_until(c: &mut Client, log: &mut Vec<Value>, pred: impl Fn(&Value) -> bool) {
    for _ in 0..1000 {
        let v = c.recv();
        let done = pred(&v);
        log.push(v);
        if done {
            return;
        }
    }
    panic!("not seen in 1000 frames: {log:?}");
}

#[test]
fn a_single_node_lists_who_is_online_and_pushes_first_and_last_connections() {
    for driver in drivers() {
        let s = Server::start(driver, &[]);
        let mut alice = Client::connect(&s.addr, "alice", "");
        alice.join("p");
        let mut log = Vec::new();
        let mut bob1 = Client::connect(&s.addr, "bob", "");
        let mut bob2 = Client::connect(&s.addr, "bob", "");
        bob1.join("p");
        bob2.join("p");
        read_until(&mut alice, &mut log, |v| v["type"] == "presence" && v["user"] == "bob");

        let r = alice.request(json!({"type": "presence", "room": "p"}), "q1");
        assert_eq!(r["type"], "presence", "{r}");
        assert_eq!(listed(&r), ["alice", "bob"], "{r}");
        assert_eq!(r["count"], 2);
        let r = bob1.request(json!({"type": "presence", "room": "elsewhere"}), "q2");
        assert_eq!(r["online"], json!([]), "a room nobody is in: {r}");

        // Bob's first connection goes: he is still online through the second.
        drop(bob1);
        let r = bob2.request(json!({"type": "presence", "room": "p"}), "q3");
        assert_eq!(listed(&r), ["alice", "bob"], "{r}");
        drop(bob2);
        read_until(&mut alice, &mut log, |v| {
            v["type"] == "presence" && v["user"] == "bob" && v["status"] == "offline"
        });
        let offline = log.last().expect("the offline event");
        assert!(offline["last_seen"].as_u64().is_some_and(|t| t > 1_600_000_000_000), "{offline}");
        assert_eq!(
            presence_events(&log, "bob"),
            ["online", "offline"],
            "one event per first/last connection, {driver}"
        );

        let r = alice.request(json!({"type": "presence", "room": "p"}), "q4");
        assert_eq!(listed(&r), ["alice"], "{r}");
        let denied = alice.request(json!({"type": "presence", "room": "dm:bob:carol"}), "q5");
        assert_eq!(denied["code"], "forbidden", "someone else's DM: {denied}");
    }
}

#[test]
fn above_presence_roster_max_a_room_lists_the_first_users_and_pushes_coalesced_counts() {
    let s = Server::start(drivers()[0], &[("EDGE_PRESENCE_ROSTER_MAX", "2")]);
    let mut first = Client::connect(&s.addr, "first", "");
    first.join("big");
    let mut log = Vec::new();
    let mut second = Client::connect(&s.addr, "second", "");
    second.join("big");
    read_until(&mut first, &mut log, |v| v["type"] == "presence" && v["user"] == "second");
    // Two more users: the room is above the cap, so members get counts, not each user.
    let mut others: Vec<Client> = ["third", "fourth"].iter().map(|u| Client::connect(&s.addr, u, "")).collect();
    for c in others.iter_mut() {
        c.join("big");
    }
    read_until(&mut first, &mut log, |v| v["type"] == "presence" && v["count"] == 4);
    let r = first.request(json!({"type": "presence", "room": "big"}), "q");
    assert_eq!(
        (listed(&r), r["count"].as_u64()),
        (vec!["first".to_owned(), "second".to_owned()], Some(4)),
        "the two online longest, and everyone counted: {r}"
    );
    drop(others);
    read_until(&mut first, &mut log, |v| v["type"] == "presence" && v["count"] == 2);
    let told: Vec<&Value> = log.iter().filter(|v| v["type"] == "presence").collect();
    assert!(
        told.iter().all(|v| v["user"] != "third" && v["user"] != "fourth"),
        "no per-user event above the cap: {told:?}"
    );
    assert!(
        told.len() <= 5,
        "second online, then at most one count per tick of changes: {told:?}"
    );
}

#[test]
fn a_cluster_coalesces_presence_counts_above_the_roster_max_too() {
    let redis = common::RedisServer::start();
    let envs = [cluster_support::ENVS, &[("EDGE_PRESENCE_ROSTER_MAX", "2")]].concat();
    let nodes = cluster_support::start_cluster_with(3, &redis, &envs);
    cluster_support::wait_readyz(&nodes, 200, std::time::Duration::from_secs(10), "cluster up");
    let wait = std::time::Duration::from_secs(10);
    let mut watcher = cluster_support::Member::connect(&nodes[0], "n1", "watcher");
    watcher.join("big");
    let mut second = cluster_support::Member::connect(&nodes[1], "n2", "second");
    second.join("big");
    let online = |v: &Value, user: &str| v["type"] == "presence" && v["user"] == user && v["status"] == "online";
    assert!(watcher.read_until(wait, |v| online(v, "second")).is_some(), "{}", watcher.context());
    // Two more, on other nodes: above the cap, members get counts, not each user.
    let mut others = vec![
        cluster_support::Member::connect(&nodes[2], "n3", "third"),
        cluster_support::Member::connect(&nodes[1], "n2", "fourth"),
    ];
    for m in others.iter_mut() {
        m.join("big");
    }
    let count = |n: u64| move |v: &Value| v["type"] == "presence" && v["count"] == n && v.get("user").is_none();
    assert!(watcher.read_until(wait, count(4)).is_some(), "{}", watcher.context());
    drop(others);
    assert!(
        watcher.read_until(cluster_support::OFFLINE_WITHIN, count(2)).is_some(),
        "{}",
        watcher.context()
    );
    let told: Vec<&Value> = watcher.log.iter().filter(|v| v["type"] == "presence").collect();
    assert!(
        told.iter().all(|v| v["user"] != "third" && v["user"] != "fourth"),
        "no per-user event above the cap: {told:?}"
    );
}
