//! Edits, deletes and reactions on a single node, over real sockets and a
//! real store, on both io drivers: members hear `update` and `reaction`,
//! history and catch-up return each message's current version (a deleted
//! one as a tombstone that keeps its seq), history carries reactions with
//! the asker's own, everything survives a restart, and bad input gets the
//! protocol's error code. A cluster answers these with a clear refusal.

mod cluster_support;
mod common;

use std::time::Duration;

use cluster_support::Member;
use common::{drivers, temp_data_dir, Client, RedisServer, Server, SECRET};
use serde_json::{json, Value};

const ENVS: &[(&str, &str)] = &[("EDGE_MAX_MSGS_PER_S", "100000"), ("EDGE_MSGS_BURST", "100000")];
const WAIT: Duration = Duration::from_secs(10);
const ROOM: &str = "r";

/// A member whose token carries the `moderator` claim for `ROOM`.
fn moderator(s: &Server) -> Member {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = edge::auth::Claims {
        sub: "mod".into(),
        exp: now + 3600,
        nbf: None,
        rooms: None,
        name: None,
        moderator: Some([ROOM.into()].into()),
    };
    let token = edge::auth::mint_claims_hs256(SECRET, &claims).expect("mint");
    let mut c = Client::connect_raw_query(&s.addr, &format!("token={token}")).expect("upgrade");
    c.welcome = c.recv_type("welcome");
    Member {
        name: "mod".into(),
        node: "n1".into(),
        c,
        log: Vec::new(),
        closed: None,
    }
}

/// Members of `user` until they sit on both shards (changes then cross the mesh both ways).
fn on_both_shards(s: &Server, user: &str) -> Vec<Member> {
    let mut ms: Vec<Member> = Vec::new();
    while ms.iter().map(|m| m.c.shard()).collect::<std::collections::BTreeSet<_>>().len() < 2 {
        assert!(ms.len() < 40, "40 connections all landed on one shard");
        ms.push(Member::connect(s, "n1", user));
    }
    ms
}

fn history(m: &mut Member, id: &str) -> Vec<Value> {
    let r = m.request(json!({"type": "history", "room": ROOM}), id, WAIT);
    assert_eq!(r["type"], "history", "{r}");
    r["messages"].as_array().expect("messages").clone()
}

/// The three messages as they must read now: seq 1 edited, seq 2 deleted, seq 3 with bob's 👍.
fn check_current(msgs: &[Value], asker_reacted: bool) {
    assert_eq!(msgs.len(), 3, "{msgs:?}");
    let seqs: Vec<u64> = msgs.iter().map(cluster_support::seq_of).collect();
    assert_eq!(seqs, [1, 2, 3], "a tombstone keeps its seq: no gap");
    assert_eq!(msgs[0]["body"], "one, edited", "{}", msgs[0]);
    assert!(msgs[0]["edited_ts"].as_u64().is_some(), "{}", msgs[0]);
    assert_eq!(msgs[1]["deleted"], true, "{}", msgs[1]);
    assert!(msgs[1].get("body").is_none(), "a tombstone has no body: {}", msgs[1]);
    assert_eq!(msgs[1]["from"], "alice", "{}", msgs[1]);
    assert_eq!(msgs[2]["body"], "three");
    assert_eq!(
        msgs[2]["reactions"],
        json!([{"emoji": "👍", "count": 1, "me": asker_reacted}]),
        "{}",
        msgs[2]
    );
}

#[test]
fn edits_deletes_and_reactions_reach_members_persist_and_refuse_bad_input() {
    for driver in drivers() {
        let dir = temp_data_dir("changes");
        let s = Server::start_with(driver, ENVS, &[], &dir);
        let mut bobs = on_both_shards(&s, "bob");
        let mut alice = Member::connect(&s, "n1", "alice");
        let mut md = moderator(&s);
        for m in bobs.iter_mut().chain([&mut alice, &mut md]) {
            m.join(ROOM);
        }
        for (i, body) in ["one", "two", "three"].iter().enumerate() {
            alice.expect_ack(json!({"type": "send", "room": ROOM, "body": body}), &format!("s{i}"));
        }
        // The author edits: every member hears the update.
        alice.expect_ack(json!({"type": "edit", "room": ROOM, "seq": 1, "body": "one, edited"}), "e1");
        for b in bobs.iter_mut() {
            let u = b
                .read_until(WAIT, |v| v["type"] == "update")
                .unwrap_or_else(|| panic!("no update\n{}", b.context()));
            assert_eq!(
                (u["seq"].clone(), u["body"].clone(), u["deleted"].clone()),
                (json!(1), json!("one, edited"), json!(false))
            );
        }
        // Someone else may not; a moderator may delete.
        bobs[0].expect_error(json!({"type": "edit", "room": ROOM, "seq": 1, "body": "mine"}), "e2", "forbidden");
        bobs[0].expect_error(json!({"type": "delete", "room": ROOM, "seq": 2}), "d1", "forbidden");
        md.expect_ack(json!({"type": "delete", "room": ROOM, "seq": 2}), "d2");
        let gone = bobs[1]
            .read_until(WAIT, |v| v["type"] == "update" && v["seq"] == 2)
            .expect("delete update");
        assert_eq!(gone["deleted"], true, "{gone}");
        assert!(gone.get("body").is_none(), "{gone}");
        alice.expect_error(json!({"type": "edit", "room": ROOM, "seq": 2, "body": "back"}), "e3", "not_found");
        // Reactions: told once per change.
        bobs[0].expect_ack(json!({"type": "react", "room": ROOM, "seq": 3, "emoji": "👍", "op": "add"}), "r1");
        bobs[0].expect_ack(json!({"type": "react", "room": ROOM, "seq": 3, "emoji": "👍", "op": "add"}), "r2");
        let r = alice.read_until(WAIT, |v| v["type"] == "reaction").expect("reaction");
        assert_eq!(
            r,
            json!({"type": "reaction", "room": ROOM, "seq": 3, "user": "bob", "emoji": "👍", "op": "add"})
        );
        // Bad input: the protocol's codes.
        alice.expect_error(
            json!({"type": "react", "room": ROOM, "seq": 3, "emoji": "x".repeat(33), "op": "add"}),
            "b1",
            "bad_request",
        );
        alice.expect_error(
            json!({"type": "react", "room": ROOM, "seq": 99, "emoji": "👍", "op": "add"}),
            "b2",
            "not_found",
        );
        alice.expect_error(json!({"type": "delete", "room": ROOM, "seq": 0}), "b3", "not_found");
        alice.expect_error(json!({"type": "edit", "room": ROOM, "seq": 1}), "b4", "bad_request");
        alice.expect_error(json!({"type": "delete", "room": "dm:bob:carol", "seq": 1}), "b5", "forbidden");
        alice.drain(Duration::from_millis(300));
        let reactions = alice.log.iter().filter(|v| v["type"] == "reaction").count();
        assert_eq!(reactions, 1, "the repeated add told nobody\n{}", alice.context());

        check_current(&history(&mut bobs[0], "h1"), true);
        check_current(&history(&mut alice, "h2"), false);
        // A catch-up returns the current versions too (rings patched on both shards).
        for (i, b) in bobs.iter_mut().enumerate() {
            b.leave(ROOM);
            let id = format!("cj{i}");
            let j = b.request(json!({"type": "join", "room": ROOM, "since": 0}), &id, WAIT);
            assert_eq!(j["type"], "joined", "{j}");
            b.read_until(WAIT, |v| v["type"] == "message" && v["seq"] == 3).expect("caught up");
            let caught: Vec<&Value> = b
                .log
                .iter()
                .skip_while(|v| v["id"] != id.as_str())
                .filter(|v| v["type"] == "message")
                .collect();
            assert_eq!(caught[0]["body"], "one, edited", "{}", b.context());
            assert_eq!(caught[1]["deleted"], true, "{}", b.context());
        }
        drop((bobs, alice, md));
        s.stop_clean();

        // Everything is in the store: the same after a restart.
        let s = Server::start_with(driver, ENVS, &[], &dir);
        let mut bob = Member::connect(&s, "n1", "bob");
        check_current(&history(&mut bob, "h3"), true);
        bob.expect_ack(
            json!({"type": "react", "room": ROOM, "seq": 3, "emoji": "👍", "op": "remove"}),
            "r3",
        );
        let msgs = history(&mut bob, "h4");
        assert!(msgs[2].get("reactions").is_none(), "the last reaction removed: {}", msgs[2]);
    }
}

#[test]
fn a_dm_edit_reaches_the_recipient_who_never_joined() {
    let s = Server::start("io_uring", ENVS);
    let mut bob = Member::connect(&s, "n1", "bob");
    let mut alice = Member::connect(&s, "n1", "alice");
    cluster_support::a_dm_change_reaches_the_recipient_who_never_joined(&mut alice, &mut bob);
}

#[test]
fn a_cluster_refuses_changes_clearly() {
    let redis = RedisServer::start();
    let nodes = cluster_support::start_cluster(1, &redis);
    let mut alice = Member::connect(&nodes[0], "n1", "alice");
    alice.join(ROOM);
    alice.expect_ack(json!({"type": "send", "room": ROOM, "body": "x"}), "s");
    for (i, v) in [
        json!({"type": "edit", "room": ROOM, "seq": 1, "body": "y"}),
        json!({"type": "delete", "room": ROOM, "seq": 1}),
        json!({"type": "react", "room": ROOM, "seq": 1, "emoji": "👍", "op": "add"}),
    ]
    .into_iter()
    .enumerate()
    {
        let r = alice.expect_error(v, &format!("c{i}"), "bad_request");
        assert!(r["message"].as_str().is_some_and(|m| m.contains("cluster mode")), "{r}");
    }
}
