//! Cluster integration tests: several real `edge` nodes joined through a
//! private redis-server (no persistence), real WebSocket clients, io_uring.
//!
//! What must hold: a room's messages get one cluster-wide, gap-free seq and
//! reach every member on every node exactly once, in seq order; a node holds
//! a room's Redis subscription exactly while it has members there; a Redis
//! outage is visible (`/readyz` 503, `unavailable` replies) but never drops a
//! request silently, and after it the restarted sequence is announced (`epoch`
//! or `gap`) before any lower seq is delivered; a SIGKILLed node's clients
//! catch up elsewhere with `join` + `since`, and its users go offline within
//! the presence lease.
//!
//! Every wait has a deadline; failures print the frames the client saw.

mod common;

#[path = "cluster/churn.rs"]
mod churn;
mod cluster_support;
#[path = "cluster/hole.rs"]
mod hole;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use cluster_support::*;
use common::RedisServer;
use serde_json::{json, Value};

#[test]
fn three_nodes_one_room_exactly_once_in_seq_order() {
    let redis = RedisServer::start();
    let nodes = start_cluster(3, &redis);
    let room = "all";
    // Member 2*n is node n's sender, member 2*n+1 only listens.
    let mut members: Vec<Member> = Vec::new();
    for (n, s) in nodes.iter().enumerate() {
        for k in 0..2 {
            let mut m = Member::connect(s, &format!("n{}", n + 1), &format!("u{n}{k}"));
            m.join(room);
            members.push(m);
        }
    }
    let per_sender = 20;
    // Interleaved and pipelined: the three nodes sequence concurrently.
    for i in 0..per_sender {
        for n in 0..nodes.len() {
            members[2 * n].send(json!({"type": "send", "room": room, "body": format!("b{n}-{i}"), "id": format!("s{n}-{i}")}));
        }
    }
    let total = per_sender * nodes.len();
    // seq -> body, from the acks.
    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    for (idx, m) in members.iter_mut().enumerate() {
        let sender = idx % 2 == 0;
        let want_replies = if sender { per_sender } else { 0 };
        let mut replies = 0;
        let mut msgs = 0;
        m.read_until(Duration::from_secs(20), |v| {
            if v.get("id").is_some() {
                replies += 1;
            }
            if v["type"] == "message" {
                msgs += 1;
            }
            replies >= want_replies && msgs >= total
        });
        let replies: Vec<Value> = m
            .log
            .iter()
            .filter(|v| v.get("id").is_some() && v["type"] != "joined")
            .cloned()
            .collect();
        assert_eq!(
            (replies.len(), m.message_count(room)),
            (want_replies, total),
            "{}: expected {want_replies} replies and {total} messages within 20 s\n{}",
            m.who(),
            m.context()
        );
        for r in &replies {
            assert_eq!(r["type"], "ack", "{}: every send must be acked: {r}\n{}", m.who(), m.context());
            let id = r["id"].as_str().unwrap_or_else(|| panic!("ack with a non-string id: {r}"));
            let body = format!("b{}", id.strip_prefix('s').unwrap_or_else(|| panic!("unexpected id {id}")));
            let seq = seq_of(r);
            if let Some(prev) = acked.insert(seq, body.clone()) {
                panic!("seq {seq} acked twice: for {prev} and for {body} ({r})");
            }
        }
    }
    let want: Vec<u64> = (1..=total as u64).collect();
    assert_eq!(
        acked.keys().copied().collect::<Vec<_>>(),
        want,
        "the acked seqs must be exactly 1..={total}"
    );
    for m in &members {
        let got: Vec<u64> = m.messages(room).iter().map(|v| seq_of(v)).collect();
        assert_eq!(
            got,
            want,
            "{}: messages must be seqs 1..={total}, each once, ascending\n{}",
            m.who(),
            m.context()
        );
        for v in m.messages(room) {
            let seq = seq_of(v);
            assert_eq!(
                v["body"].as_str(),
                Some(acked[&seq].as_str()),
                "{}: message seq {seq} carries another body than the one acked for it: {v}",
                m.who()
            );
        }
    }
    // History in cluster mode pages back through the room's Redis stream, on any node.
    let reader = &mut members[5];
    let limit = Duration::from_secs(10);
    let page = reader.request(json!({"type": "history", "room": room, "limit": 50}), "h1", limit);
    let seqs: Vec<u64> = page["messages"]
        .as_array()
        .map(|a| a.iter().map(seq_of).collect())
        .unwrap_or_default();
    assert_eq!(seqs, (11..=60).collect::<Vec<u64>>(), "newest page: {page}");
    assert_eq!(page["next_before"], 11, "{page}");
    let older = reader.request(json!({"type": "history", "room": room, "before": 11, "limit": 50}), "h2", limit);
    let seqs: Vec<u64> = older["messages"]
        .as_array()
        .map(|a| a.iter().map(seq_of).collect())
        .unwrap_or_default();
    assert_eq!(seqs, (1..=10).collect::<Vec<u64>>(), "oldest page: {older}");
    assert!(older["next_before"].is_null(), "the first page ends the history: {older}");
    for m in older["messages"].as_array().into_iter().flatten() {
        let seq = seq_of(m);
        assert_eq!(m["body"].as_str(), Some(acked[&seq].as_str()), "history seq {seq}: {m}");
    }
}

#[test]
fn redis_outage_is_survived_and_announced() {
    let mut redis = RedisServer::start();
    let port = redis.port();
    let nodes = start_cluster(2, &redis);
    let room = "o";
    let mut a = Member::connect(&nodes[0], "n1", "alice");
    let mut b = Member::connect(&nodes[1], "n2", "bob");
    a.join(room);
    b.join(room);
    wait_readyz(&nodes, 200, Duration::from_secs(10), "before the outage");
    fn exchange(from: &mut Member, to: &mut Member, room: &str, i: usize) {
        let body = format!("{}-{i}", from.name);
        let ack = from.request(
            json!({"type": "send", "room": room, "body": body}),
            &format!("pre-{i}"),
            Duration::from_secs(10),
        );
        assert_eq!(ack["type"], "ack", "{ack}\n{}", from.context());
        for m in [to, from] {
            let got = m.seen_or_read(Duration::from_secs(10), |v| v["type"] == "message" && v["body"] == body.as_str());
            assert!(got.is_some(), "{} never got {body}\n{}", m.who(), m.context());
        }
    }
    for i in 0..3 {
        exchange(&mut a, &mut b, room, i);
        exchange(&mut b, &mut a, room, i);
    }
    let seen_before = b.messages(room).iter().map(|v| seq_of(v)).max().unwrap_or(0);
    assert!(
        seen_before >= 6,
        "bob saw seqs up to {seen_before} before the outage\n{}",
        b.context()
    );

    redis.kill();
    let killed = Instant::now();
    let took = wait_readyz(&nodes, 503, Duration::from_secs(10), "Redis killed");
    eprintln!("readyz 503 on both nodes {took:?} after the kill");
    for m in [&mut a, &mut b] {
        let pong = m.request(json!({"type": "ping"}), "ping-down", Duration::from_secs(5));
        assert_eq!(
            pong["type"],
            "pong",
            "{}: ping while Redis is down: {pong}\n{}",
            m.who(),
            m.context()
        );
    }
    // Sends while Redis is down: each gets exactly one reply, an error with retry_ms.
    let n_down = 5;
    for i in 0..n_down {
        a.send(json!({"type": "send", "room": room, "body": format!("down-{i}"), "id": format!("down-{i}")}));
    }
    let mut replies: HashMap<String, Vec<Value>> = HashMap::new();
    a.read_until(Duration::from_secs(10), |v| {
        if let Some(id) = v["id"].as_str().filter(|id| id.starts_with("down-")) {
            replies.entry(id.to_owned()).or_default().push(v.clone());
        }
        replies.len() == n_down
    });
    a.drain(Duration::from_millis(500));
    let mut replies: HashMap<String, Vec<Value>> = HashMap::new();
    for v in &a.log {
        if let Some(id) = v["id"].as_str().filter(|id| id.starts_with("down-")) {
            replies.entry(id.to_owned()).or_default().push(v.clone());
        }
    }
    for i in 0..n_down {
        let id = format!("down-{i}");
        let got = replies.get(&id).cloned().unwrap_or_default();
        assert_eq!(
            got.len(),
            1,
            "send {id} while Redis is down ({:?} after the kill) must get exactly one reply within 10 s, got {got:?}\n{}",
            killed.elapsed(),
            a.context()
        );
        let e = &got[0];
        let code = e["code"].as_str();
        assert!(
            e["type"] == "error" && matches!(code, Some("unavailable") | Some("overloaded")) && e["retry_ms"].is_u64(),
            "send {id} while Redis is down must get error unavailable/overloaded with retry_ms: {e}"
        );
    }

    redis.restart();
    let restarted = Instant::now();
    let took = wait_readyz(&nodes, 200, Duration::from_secs(20), "Redis restarted");
    eprintln!("readyz 200 on both nodes {took:?} after the restart");
    let mut subs = -1;
    let left = Duration::from_secs(20).saturating_sub(restarted.elapsed());
    let both = eventually(left, || {
        subs = numsub(port, room);
        subs == 2
    });
    assert!(
        both,
        "PUBSUB NUMSUB chat:{{o}}:ch must be 2 (both nodes resubscribed) within 20 s of the restart; is {subs} after {:?}",
        restarted.elapsed()
    );
    eprintln!("both nodes resubscribed {:?} after the restart", restarted.elapsed());

    // Alice sends until acked (the bridge may still be settling).
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut attempt = 0;
    let (after_body, after_seq) = loop {
        let body = format!("after-{attempt}");
        let r = a.request(
            json!({"type": "send", "room": room, "body": body}),
            &format!("after-{attempt}"),
            Duration::from_secs(10),
        );
        if r["type"] == "ack" {
            break (body, seq_of(&r));
        }
        let retry = matches!(r["code"].as_str(), Some("unavailable") | Some("overloaded") | Some("rate_limited"));
        assert!(retry, "send after the restart: unexpected reply {r}\n{}", a.context());
        assert!(
            Instant::now() < deadline,
            "no send acked within 15 s of readyz 200; last reply {r}\n{}",
            a.context()
        );
        let wait = r["retry_ms"].as_u64().unwrap_or(100).clamp(20, 1000);
        std::thread::sleep(Duration::from_millis(wait));
        attempt += 1;
    };
    eprintln!("first ack after the restart: seq {after_seq} (attempt {attempt})");
    let got = b.seen_or_read(Duration::from_secs(10), |v| {
        v["type"] == "message" && v["room"] == room && v["body"] == after_body.as_str()
    });
    assert!(
        got.is_some(),
        "bob on n2 never got {after_body} (acked seq {after_seq})\n{}",
        b.context()
    );
    let got = a.seen_or_read(Duration::from_secs(10), |v| {
        v["type"] == "message" && v["room"] == room && v["body"] == after_body.as_str()
    });
    assert!(
        got.is_some(),
        "alice never got her own {after_body} (acked seq {after_seq})\n{}",
        a.context()
    );
    // The seq restarted (Redis lost its counters): bob must have been told before the message.
    let pos = b
        .log
        .iter()
        .position(|v| v["type"] == "message" && v["body"] == after_body.as_str())
        .expect("logged");
    let pre_outage = b
        .log
        .iter()
        .rposition(|v| v["type"] == "message" && v["body"] == "alice-2")
        .unwrap_or(0);
    let announced = b.log[pre_outage..pos]
        .iter()
        .any(|v| v["room"] == room && matches!(v["type"].as_str(), Some("epoch") | Some("gap")));
    assert!(
        announced,
        "bob got {after_body} (seq {after_seq}, after seeing up to {seen_before}) with no epoch or gap frame for {room} since the outage\n{}",
        b.context()
    );
    assert_no_silent_reset(&a, room);
    assert_no_silent_reset(&b, room);
    for (i, s) in nodes.iter().enumerate() {
        assert_eq!(
            http_status(&s.addr, "/healthz"),
            200,
            "node n{} must still serve after the outage",
            i + 1
        );
    }
}

#[test]
fn killed_node_clients_catch_up_elsewhere_and_its_users_go_offline() {
    let redis = RedisServer::start();
    let mut nodes = start_cluster(3, &redis);
    let room = "k";
    let mut watcher = Member::connect(&nodes[0], "n1", "watcher");
    watcher.join(room);
    let mut sender = Member::connect(&nodes[1], "n2", "sender");
    sender.join(room);
    let mut victim = Member::connect(&nodes[2], "n3", "victim");
    victim.join(room);
    let mut ghost = Member::connect(&nodes[2], "n3", "ghost");
    ghost.join(room);

    // The watcher learns that victim and ghost are online (pushed, or by asking).
    let mut listed = BTreeSet::new();
    let mut polls = 0;
    let online = eventually(Duration::from_secs(6), || {
        polls += 1;
        let r = watcher.request(
            json!({"type": "presence", "room": room}),
            &format!("p{polls}"),
            Duration::from_secs(5),
        );
        assert_eq!(r["type"], "presence", "presence request: {r}\n{}", watcher.context());
        assert_eq!(
            r["count"].as_u64(),
            Some(r["online"].as_array().map_or(0, |a| a.len() as u64)),
            "count must match online: {r}"
        );
        listed = online_users(&r);
        listed.contains("victim") && listed.contains("ghost")
    });
    let pushed = watcher.log.iter().any(|v| is_presence_event(v, room, "victim", "online"));
    assert!(
        online || pushed,
        "the watcher on n1 never saw victim (n3) online: presence lists {listed:?}\n{}",
        watcher.context()
    );

    let mut bodies: HashMap<u64, String> = HashMap::new();
    for i in 0..10 {
        let body = format!("k{i}");
        let ack = sender.request(
            json!({"type": "send", "room": room, "body": body}),
            &format!("s{i}"),
            Duration::from_secs(10),
        );
        assert_eq!(ack["type"], "ack", "{ack}\n{}", sender.context());
        bodies.insert(seq_of(&ack), body);
    }
    victim.seen_or_read(Duration::from_secs(10), |v| v["type"] == "message" && v["body"] == "k9");
    let seen: Vec<u64> = victim.messages(room).iter().map(|v| seq_of(v)).collect();
    assert_eq!(
        seen,
        (1..=10).collect::<Vec<_>>(),
        "victim on n3 must see the first 10 messages\n{}",
        victim.context()
    );
    let last = *seen.last().expect("seen");

    nodes[2].kill9();
    let killed = Instant::now();
    for i in 10..20 {
        let body = format!("k{i}");
        let ack = sender.request(
            json!({"type": "send", "room": room, "body": body}),
            &format!("s{i}"),
            Duration::from_secs(10),
        );
        assert_eq!(ack["type"], "ack", "a send on n2 after n3 was killed: {ack}\n{}", sender.context());
        bodies.insert(seq_of(&ack), body);
    }
    let acked: BTreeSet<u64> = bodies.keys().copied().collect();
    assert_eq!(acked, (1..=20).collect(), "acked seqs");

    // The victim reconnects to n2 and catches up from its last seq.
    let mut victim2 = Member::connect(&nodes[1], "n2", "victim");
    let joined = victim2.request(
        json!({"type": "join", "room": room, "since": last}),
        "rejoin",
        Duration::from_secs(10),
    );
    assert_eq!(
        joined["type"],
        "joined",
        "rejoin on n2 with since {last}: {joined}\n{}",
        victim2.context()
    );
    victim2.seen_or_read(Duration::from_secs(10), |v| v["type"] == "message" && v["body"] == "k19");
    victim2.drain(Duration::from_millis(300));
    let after_join: Vec<&Value> = victim2
        .log
        .iter()
        .skip_while(|v| v["id"] != "rejoin")
        .skip(1)
        .filter(|v| v["room"] == room && matches!(v["type"].as_str(), Some("message") | Some("gap") | Some("epoch")))
        .collect();
    let got: Vec<u64> = after_join
        .iter()
        .map(|v| {
            assert_eq!(
                v["type"],
                "message",
                "the catch-up must be messages only (nothing was lost): {v}\n{}",
                victim2.context()
            );
            seq_of(v)
        })
        .collect();
    assert_eq!(
        got,
        (last + 1..=20).collect::<Vec<_>>(),
        "victim's catch-up on n2 after since={last} must be exactly the missed seqs in order\n{}",
        victim2.context()
    );
    for v in &after_join {
        assert_eq!(v["body"].as_str(), Some(bodies[&seq_of(v)].as_str()), "catch-up body: {v}");
    }

    // Ghost lived only on n3: the watcher is told it went offline within the lease.
    let left = OFFLINE_WITHIN.saturating_sub(killed.elapsed());
    let off = watcher.read_until(left, |v| is_presence_event(v, room, "ghost", "offline"));
    assert!(
        off.is_some(),
        "the watcher on n1 got no presence offline event for ghost within {OFFLINE_WITHIN:?} of the SIGKILL of n3 ({:?} elapsed)\n{}",
        killed.elapsed(),
        watcher.context()
    );
    eprintln!("ghost offline event read {:?} after the kill", killed.elapsed());
    assert!(off.expect("event")["last_seen"].is_u64(), "offline event without last_seen");
    let mut listed = BTreeSet::new();
    let mut polls = 0;
    let ok = eventually(Duration::from_secs(3), || {
        polls += 1;
        let r = watcher.request(
            json!({"type": "presence", "room": room}),
            &format!("q{polls}"),
            Duration::from_secs(5),
        );
        assert_eq!(r["type"], "presence", "presence request: {r}\n{}", watcher.context());
        listed = online_users(&r);
        !listed.contains("ghost") && listed.contains("victim") && listed.contains("watcher")
    });
    assert!(
        ok,
        "after ghost's node died, presence on n1 must list victim and watcher but not ghost; it lists {listed:?} ({:?} after the kill)",
        killed.elapsed()
    );
    drop(victim);
    drop(ghost);
}
