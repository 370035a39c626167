//! Rooms in memory over real sockets (issue 14), on both io drivers: an empty room leaves
//! memory after `room_idle_evict_ms` and comes back from the store whole, with its seq going
//! on; `history` of a room with no messages creates nothing; and the rooms a user brings
//! into memory are rate-limited, while other users and loaded rooms are unaffected.

mod common;

use std::time::{Duration, Instant};

use common::{metric_sum, Client, Server};
use serde_json::json;

fn on_both_drivers(envs: &[(&str, &str)], f: impl Fn(&mut Server)) {
    for driver in common::drivers() {
        let mut server = Server::start(driver, envs);
        f(&mut server);
    }
}

/// Waits up to 10 s for `f`.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < until, "not within 10 s: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `n` fresh room names that shard 0 of 2 owns (the limits are per owner shard).
fn rooms_of_shard_0(tag: &str, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("{tag}-{i}"))
        .filter(|r| edge::room::owner(r, 2) == 0)
        .take(n)
        .collect()
}

#[test]
fn an_idle_empty_room_leaves_memory_and_comes_back_whole() {
    on_both_drivers(&[("EDGE_ROOM_IDLE_EVICT_MS", "1000")], |s| {
        let mut a = Client::connect(&s.addr, "alice", "");
        let joined = a.join("evict-me");
        for i in 1..=3 {
            let ack = a.request(
                json!({"type": "send", "room": "evict-me", "body": format!("m{i}")}),
                &format!("s{i}"),
            );
            assert_eq!(ack["seq"], i, "{ack}");
        }
        assert_eq!(a.request(json!({"type": "leave", "room": "evict-me"}), "l")["type"], "left");
        eventually("the room is evicted", || metric_sum(&s.addr, "rooms_evicted_total") >= 1);
        assert_eq!(metric_sum(&s.addr, "rooms_owned"), 0, "no room left in memory");

        // Named again: loaded from the store, same epoch, the seq goes on, history whole.
        let again = a.join("evict-me");
        assert_eq!((again["seq"].as_u64(), &again["epoch"]), (Some(3), &joined["epoch"]), "{again}");
        let ack = a.request(json!({"type": "send", "room": "evict-me", "body": "m4"}), "s4");
        assert_eq!(ack["seq"], 4, "no seq reused after the reload: {ack}");
        let page = a.request(json!({"type": "history", "room": "evict-me", "limit": 10}), "h");
        let bodies: Vec<&str> = page["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .filter_map(|m| m["body"].as_str())
            .collect();
        assert_eq!(bodies, ["m1", "m2", "m3", "m4"], "{page}");

        // A room with a member stays, however idle.
        let mut b = Client::connect(&s.addr, "bob", "");
        b.join("kept");
        let before = metric_sum(&s.addr, "rooms_evicted_total");
        std::thread::sleep(Duration::from_millis(2_500));
        assert!(metric_sum(&s.addr, "rooms_owned") >= 1, "a room with a member stays in memory");
        b.request(json!({"type": "send", "room": "kept", "body": "still"}), "k");
        assert!(
            metric_sum(&s.addr, "rooms_evicted_total") <= before + 1,
            "only evict-me could have gone again"
        );
    });
}

#[test]
fn history_of_a_room_without_messages_creates_nothing() {
    on_both_drivers(&[], |s| {
        let mut a = Client::connect(&s.addr, "alice", "");
        for i in 0..50 {
            let page = a.request(json!({"type": "history", "room": format!("nothing-{i}")}), &format!("h{i}"));
            assert_eq!(page["type"], "history", "{page}");
            assert_eq!(page["messages"].as_array().map(Vec::len), Some(0), "{page}");
        }
        assert_eq!(metric_sum(&s.addr, "rooms_owned"), 0, "50 history requests loaded no room");
        // A room with messages still answers its history (not in memory: from the store).
        a.join("has-some");
        a.request(json!({"type": "send", "room": "has-some", "body": "x"}), "s");
        let page = a.request(json!({"type": "history", "room": "has-some"}), "h");
        assert_eq!(page["messages"][0]["body"], "x", "{page}");
    });
}

#[test]
fn the_rooms_a_user_brings_into_memory_are_rate_limited() {
    let envs = [("EDGE_ROOMS_PER_USER_PER_S", "0.5"), ("EDGE_ROOMS_PER_USER_BURST", "3")];
    on_both_drivers(&envs, |s| {
        let rooms = rooms_of_shard_0("fresh", 5);
        let mut a = Client::connect(&s.addr, "alice", "");
        for r in &rooms[..3] {
            a.join(r);
        }
        let refused = a.request(json!({"type": "join", "room": rooms[3]}), "j4");
        assert_eq!(
            (refused["type"].as_str(), refused["code"].as_str()),
            (Some("error"), Some("overloaded")),
            "{refused}"
        );
        assert!(
            refused["message"].as_str().is_some_and(|m| m.contains("too many new rooms")),
            "{refused}"
        );
        assert!(refused["retry_ms"].as_u64().is_some(), "{refused}");
        // A DM to a new peer brings its room into memory too (the name sorts alice first).
        let peer = (0..)
            .map(|i| format!("peer{i}"))
            .find(|p| edge::room::owner(&format!("dm:alice:{p}"), 2) == 0)
            .expect("a peer");
        let send = a.request(json!({"type": "send", "to": peer, "body": "x"}), "s5");
        assert_eq!(send["code"], "overloaded", "a DM to a room not in memory counts too: {send}");
        assert_eq!(metric_sum(&s.addr, "room_loads_refused_total"), 2);

        // Another user is unaffected, and alice may still use rooms already in memory.
        let mut b = Client::connect(&s.addr, "bob", "");
        b.join(&rooms[4]);
        b.join(&rooms[3]);
        assert_eq!(a.join(&rooms[3])["type"], "joined", "bob loaded it: no new room for alice");
        let ack = a.request(json!({"type": "send", "room": rooms[0], "body": "ok"}), "s1");
        assert_eq!(ack["type"], "ack", "{ack}");
    });
}
