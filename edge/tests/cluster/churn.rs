//! Subscription churn: joins and leaves, clean and abrupt, leave no Redis subscription behind.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use serde_json::json;

use crate::cluster_support::*;
use crate::common::RedisServer;

#[test]
fn join_leave_churn_leaves_no_stale_subscription() {
    let redis = RedisServer::start();
    let nodes = start_cluster(2, &redis);
    let port = redis.port();
    let rooms = ["c0", "c1", "c2", "c3", "c4"];
    let rounds = 5;
    for round in 0..rounds {
        let mut clients: Vec<(Member, Vec<&str>)> = Vec::new();
        for (n, s) in nodes.iter().enumerate() {
            for k in 0..3 {
                let mut m = Member::connect(s, &format!("n{}", n + 1), &format!("u{n}{k}"));
                let mine: Vec<&str> = rooms
                    .iter()
                    .enumerate()
                    .filter(|(r, _)| (r + k + round) % 3 != 0)
                    .map(|(_, r)| *r)
                    .collect();
                for r in &mine {
                    m.join(r);
                }
                clients.push((m, mine));
            }
        }
        // A message through one room while it is busy: every member of it on both nodes gets it.
        let busy = rooms[round % rooms.len()];
        if let Some((sender, _)) = clients.iter_mut().find(|(_, mine)| mine.contains(&busy)) {
            let ack = sender.request(
                json!({"type": "send", "room": busy, "body": format!("r{round}")}),
                "churn-send",
                Duration::from_secs(10),
            );
            assert_eq!(ack["type"], "ack", "round {round}: send into {busy}: {ack}\n{}", sender.context());
        }
        for (m, mine) in clients.iter_mut().filter(|(_, mine)| mine.contains(&busy)) {
            let body = format!("r{round}");
            let got = m.seen_or_read(Duration::from_secs(10), |v| {
                v["type"] == "message" && v["room"] == busy && v["body"] == body.as_str()
            });
            assert!(
                got.is_some(),
                "round {round}: {} (rooms {mine:?}) never got the message in {busy}\n{}",
                m.who(),
                m.context()
            );
        }
        for (i, (mut m, mine)) in clients.into_iter().enumerate() {
            match (i + round) % 3 {
                0 => {
                    for r in &mine {
                        m.leave(r);
                    }
                }
                1 => {
                    // A clean close handshake.
                    let _ = m.c.ws.close(None);
                    let _ = m.c.ws.flush();
                    m.drain(Duration::from_millis(200));
                }
                _ => {} // dropped: the TCP connection just goes away
            }
        }
        // Join and leave pipelined (the leave may overtake the join's Redis work): one reply each.
        let mut quick = Member::connect(&nodes[round % 2], &format!("n{}", round % 2 + 1), "quick");
        let r = rooms[(round + 1) % rooms.len()];
        quick.send(json!({"type": "join", "room": r, "id": "qj"}));
        quick.send(json!({"type": "leave", "room": r, "id": "ql"}));
        let mut seen = HashMap::new();
        quick.read_until(Duration::from_secs(10), |v| {
            if let Some(id) = v["id"].as_str() {
                *seen.entry(id.to_owned()).or_insert(0) += 1;
            }
            seen.len() == 2
        });
        assert!(
            seen.get("qj") == Some(&1) && seen.get("ql") == Some(&1),
            "round {round}: pipelined join+leave of {r} must get one reply each: {seen:?}\n{}",
            quick.context()
        );
        drop(quick);
        // A connection that goes away while its join waits for Redis.
        let mut gone = Member::connect(&nodes[(round + 1) % 2], &format!("n{}", (round + 1) % 2 + 1), "gone");
        gone.send(json!({"type": "join", "room": rooms[(round + 2) % rooms.len()], "id": "gj"}));
        drop(gone);
    }
    // The last `gone` join may still be doing its Redis work (subscribe, then drop it): wait
    // for the channel list to be empty and to stay empty for a second.
    let mut last = Vec::new();
    let mut seen = BTreeSet::new();
    let empty = settles(Duration::from_secs(6), Duration::from_secs(1), || {
        last = channels(port);
        seen.extend(last.iter().cloned());
        last.is_empty()
    });
    let counts: Vec<(&str, i64)> = rooms.iter().map(|r| (*r, numsub(port, r))).collect();
    assert!(
        empty,
        "after everyone left, PUBSUB CHANNELS chat:* must be (and stay, 1 s) empty within 6 s; it lists {last:?} (NUMSUB {counts:?}; channels seen while waiting {seen:?})"
    );

    // One member left on node A in c1: exactly one subscriber, and it stays one.
    let mut a = Member::connect(&nodes[0], "n1", "stay");
    a.join("c1");
    assert_eq!(
        numsub(port, "c1"),
        1,
        "one node with a member in c1 (joined answered): PUBSUB NUMSUB"
    );
    let mut b = Member::connect(&nodes[1], "n2", "visitor");
    b.join("c1");
    assert_eq!(numsub(port, "c1"), 2, "both nodes have a member in c1: PUBSUB NUMSUB");
    b.leave("c1");
    drop(b);
    let mut n = -1;
    let one = eventually(Duration::from_secs(3), || {
        n = numsub(port, "c1");
        n == 1
    });
    assert!(
        one,
        "node B's last member left c1: PUBSUB NUMSUB chat:{{c1}}:ch must be 1 within 3 s, is {n}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(numsub(port, "c1"), 1, "node A still has a member in c1 one second later");
    // Besides c1, the one connected user's channel (`users.rs`), held while it is connected.
    let mut subscribed = channels(port);
    subscribed.sort();
    assert_eq!(
        subscribed,
        vec!["chat:{c1}:ch".to_owned(), "chat:{user/stay}:ch".to_owned()],
        "only c1 and stay's user channel are subscribed"
    );
    let ack = a.request(
        json!({"type": "send", "room": "c1", "body": "still here"}),
        "a1",
        Duration::from_secs(10),
    );
    assert_eq!(ack["type"], "ack", "{ack}\n{}", a.context());
    let got = a.seen_or_read(Duration::from_secs(10), |v| v["type"] == "message" && v["body"] == "still here");
    assert!(got.is_some(), "the remaining member must still get messages of c1\n{}", a.context());
    a.leave("c1");
    let mut last = Vec::new();
    let only_user = eventually(Duration::from_secs(5), || {
        last = channels(port);
        last == ["chat:{user/stay}:ch"]
    });
    assert!(
        only_user,
        "the last member left c1 (still connected): PUBSUB CHANNELS chat:* lists {last:?} after 5 s, not its user channel alone"
    );
    drop(a);
    let empty = eventually(Duration::from_secs(5), || {
        last = channels(port);
        last.is_empty()
    });
    assert!(
        empty,
        "the last connection closed: PUBSUB CHANNELS chat:* still lists {last:?} after 5 s"
    );
}

#[test]
fn join_leave_join_before_redis_answers_counts_once() {
    let redis = RedisServer::start();
    let nodes = start_cluster(1, &redis);
    let mut m = Member::connect(&nodes[0], "n1", "jlj");
    let limit = Duration::from_secs(10);
    for round in 0..5 {
        // Pipelined: the first join is usually still waiting for Redis when the leave arrives.
        for (id, ty) in [("a", "join"), ("b", "leave"), ("c", "join")] {
            m.send(json!({"type": ty, "room": "jlj", "id": format!("{id}{round}")}));
        }
        let mut replies: BTreeMap<&str, String> = BTreeMap::new();
        m.read_until(limit, |v| {
            for id in ["a", "b", "c"] {
                if v["id"] == format!("{id}{round}").as_str() {
                    replies.insert(id, v["type"].as_str().unwrap_or("").to_owned());
                }
            }
            replies.len() == 3
        });
        assert_eq!(
            replies.len(),
            3,
            "round {round}: one reply per request: {replies:?}\n{}",
            m.context()
        );
        assert_eq!(replies["b"], "left", "round {round}: {replies:?}");
        assert_eq!(replies["c"], "joined", "round {round}: {replies:?}");
        assert!(["joined", "error"].contains(&replies["a"].as_str()), "round {round}: {replies:?}");
        m.leave("jlj");
        let port = redis.port();
        let gone = eventually(Duration::from_secs(5), || numsub(port, "jlj") == 0);
        assert!(
            gone,
            "round {round}: the subscription must go with the last member (NUMSUB {})",
            numsub(port, "jlj")
        );
    }
}
