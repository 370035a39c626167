//! Threads on a single node, over real sockets and a real store, on both io
//! drivers: `history` with `thread` pages one root's replies (the newest
//! from the ring, older ones from the store), the root carries its reply
//! count, both survive a restart, and a reply to no message is refused. A
//! cluster refuses a thread's page clearly.

mod cluster_support;
mod common;

use std::time::Duration;

use cluster_support::{seq_of, Member};
use common::{drivers, temp_data_dir, RedisServer, Server};
use serde_json::{json, Value};

/// A ring of 4 messages per room, so a thread's older replies come from the store.
const ENVS: &[(&str, &str)] = &[
    ("EDGE_MAX_MSGS_PER_S", "100000"),
    ("EDGE_MSGS_BURST", "100000"),
    ("EDGE_RECENT_PER_ROOM", "4"),
];
const WAIT: Duration = Duration::from_secs(10);
const ROOM: &str = "t";

fn send(m: &mut Member, body: &str, reply_to: Option<u64>) -> Value {
    let mut v = json!({"type": "send", "room": ROOM, "body": body});
    if let Some(r) = reply_to {
        v["reply_to"] = json!(r);
    }
    m.request(v, &format!("s-{body}"), WAIT)
}

/// Every reply of `root`, newest page first, pages of `limit`; the seqs ascending.
fn whole_thread(m: &mut Member, root: u64, limit: u32) -> Vec<u64> {
    let (mut all, mut before, mut n) = (Vec::new(), None, 0);
    loop {
        let mut req = json!({"type": "history", "room": ROOM, "thread": root, "limit": limit});
        if let Some(b) = before {
            req["before"] = json!(b);
        }
        n += 1;
        let page = m.request(req, &format!("th{root}-{n}"), WAIT);
        assert_eq!(page["type"], "history", "{page}");
        let msgs = page["messages"].as_array().expect("messages");
        assert!(msgs.iter().all(|v| v["reply_to"] == root), "only replies to {root}: {page}");
        all.splice(0..0, msgs.iter().map(seq_of));
        match page["next_before"].as_u64() {
            Some(b) => before = Some(b),
            None => return all,
        }
        assert!(n < 50, "paging does not end");
    }
}

fn root_replies(m: &mut Member, id: &str) -> Vec<(u64, Option<u64>)> {
    let page = m.request(json!({"type": "history", "room": ROOM, "limit": 100}), id, WAIT);
    page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|v| (seq_of(v), v["replies"].as_u64()))
        .collect()
}

#[test]
fn thread_pages_and_reply_counts_work_and_survive_a_restart() {
    for driver in drivers() {
        let dir = temp_data_dir("threads");
        let s = Server::start_with(driver, ENVS, &[], &dir);
        let mut alice = Member::connect(&s, "n1", "alice");
        alice.join(ROOM);
        assert_eq!(send(&mut alice, "root", None)["seq"], 1);
        assert_eq!(send(&mut alice, "other root", None)["seq"], 2);
        let mut replies = Vec::new();
        for i in 0..7 {
            replies.push(seq_of(&send(&mut alice, &format!("r{i}"), Some(1))));
            send(&mut alice, &format!("chat{i}"), None);
        }
        let to_other = seq_of(&send(&mut alice, "to other", Some(2)));
        // A reply to no message is refused: nothing is sequenced.
        let r = send(&mut alice, "nowhere", Some(99));
        assert_eq!((r["type"].clone(), r["code"].clone()), (json!("error"), json!("not_found")), "{r}");
        let r = alice.request(json!({"type": "history", "room": ROOM, "thread": 99}), "h99", WAIT);
        assert_eq!(r["code"], "not_found", "{r}");

        for limit in [2, 3, 100] {
            assert_eq!(whole_thread(&mut alice, 1, limit), replies, "pages of {limit}, {driver}");
        }
        assert_eq!(whole_thread(&mut alice, 2, 10), [to_other]);
        // Counts are the store's: a fast-mode reply counts once its write is done (ms).
        let mut counts = root_replies(&mut alice, "c0");
        for attempt in 0..50 {
            if counts[..2] == [(1, Some(7)), (2, Some(1))] {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
            counts = root_replies(&mut alice, &format!("c{attempt}"));
        }
        assert_eq!(counts[..2], [(1, Some(7)), (2, Some(1))], "{driver}");
        assert!(counts[2..].iter().all(|(_, n)| n.is_none()), "{counts:?}");
        drop(alice);
        s.stop_clean();

        let s = Server::start_with(driver, ENVS, &[], &dir);
        let mut bob = Member::connect(&s, "n1", "bob");
        assert_eq!(whole_thread(&mut bob, 1, 3), replies, "after a restart, {driver}");
        assert_eq!(root_replies(&mut bob, "c-after")[..2], [(1, Some(7)), (2, Some(1))]);
    }
}

#[test]
fn a_cluster_refuses_a_thread_page_clearly() {
    let redis = RedisServer::start();
    let nodes = cluster_support::start_cluster(1, &redis);
    let mut alice = Member::connect(&nodes[0], "n1", "alice");
    alice.join(ROOM);
    let r = alice.request(json!({"type": "history", "room": ROOM, "thread": 1}), "h", WAIT);
    assert_eq!(r["code"], "bad_request", "{r}");
    assert!(r["message"].as_str().is_some_and(|m| m.contains("cluster mode")), "{r}");
}
