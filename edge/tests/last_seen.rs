//! Last seen on a single node, over real sockets and a real store, on both io
//! drivers: `presence` with `user` says whether the user is online anywhere
//! on the node (connections on both shards), and once the last connection
//! closes, when it was last seen; the time survives a clean restart.

mod cluster_support;
mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cluster_support::Member;
use common::{drivers, temp_data_dir, RedisServer, Server};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as u64
}

fn ask(m: &mut Member, user: &str, id: &str) -> Value {
    let r = m.request(json!({"type": "presence", "user": user}), id, WAIT);
    assert_eq!(r["type"], "presence", "{r}");
    r
}

/// Asks until the user is offline (the last close reaches the home shard a moment later).
fn offline_soon(m: &mut Member, user: &str) -> Value {
    for i in 0..100 {
        let r = ask(m, user, &format!("off-{i}"));
        if r["status"] == "offline" {
            return r;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{user} stays online\n{}", m.context());
}

#[test]
fn last_seen_is_kept_while_offline_and_survives_a_restart() {
    for driver in drivers() {
        let dir = temp_data_dir("last-seen");
        let s = Server::start_with(driver, &[], &[], &dir);
        let mut bob = Member::connect(&s, "n1", "bob");
        let never = ask(&mut bob, "alice", "a0");
        assert_eq!(
            (never["status"].clone(), never["last_seen"].clone()),
            (json!("offline"), json!(null))
        );
        // Alice on both shards: she stays online until her last connection closes.
        let mut alices: Vec<Member> = Vec::new();
        while alices.iter().map(|m| m.c.shard()).collect::<std::collections::BTreeSet<_>>().len() < 2 {
            assert!(alices.len() < 40, "40 connections on one shard");
            alices.push(Member::connect(&s, "n1", "alice"));
        }
        assert_eq!(ask(&mut bob, "alice", "a1")["status"], "online");
        let last = alices.pop().expect("one");
        drop(alices);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(ask(&mut bob, "alice", "a2")["status"], "online", "one connection is left");
        let before = now_ms();
        drop(last);
        let seen = offline_soon(&mut bob, "alice");
        let at = seen["last_seen"].as_u64().unwrap_or_else(|| panic!("{seen}"));
        assert!((before..=now_ms()).contains(&at), "{at} not in {before}..now");
        let bad = bob.request(json!({"type": "presence", "user": "no:colons"}), "bad", WAIT);
        assert_eq!(bad["code"], "bad_request", "{bad}");
        // Bob stays connected through the stop: the drain closes his connection.
        s.stop_clean();
        drop(bob);

        let s = Server::start_with(driver, &[], &[], &dir);
        let mut carol = Member::connect(&s, "n1", "carol");
        let r = ask(&mut carol, "alice", "after");
        assert_eq!(
            (r["status"].clone(), r["last_seen"].clone()),
            (json!("offline"), json!(at)),
            "{driver}"
        );
        // Bob's connection was open until the stop: his time was stored when the drain closed it.
        let b = ask(&mut carol, "bob", "bob");
        assert!(b["last_seen"].as_u64().is_some_and(|t| t >= at), "{b}");
    }
}

#[test]
fn a_cluster_refuses_a_users_presence_clearly() {
    let redis = RedisServer::start();
    let nodes = cluster_support::start_cluster(1, &redis);
    let mut bob = Member::connect(&nodes[0], "n1", "bob");
    let r = bob.request(json!({"type": "presence", "user": "alice"}), "p", WAIT);
    assert_eq!(r["code"], "bad_request", "{r}");
}
