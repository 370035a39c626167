//! A cluster node whose shared PostgreSQL goes away and comes back: a real node, a private
//! Redis, a real PostgreSQL reached through a TCP forwarder the test cuts (every connection
//! broken, connects refused) and restores.
//!
//! - `fast`: sends keep flowing (acked once Redis sequenced them, delivered), their writes are
//!   held, counted and retried; past 7/8 of `store_queue_capacity` sends are refused
//!   `overloaded` before they take a seq; when the store is back every acked message lands.
//! - `durable`: sends answer `unavailable` (nothing acked that is not stored).
//! - `/readyz` names the dependency that is down, and recovers by itself.

mod cluster_support;
mod common;
#[path = "../../storage/tests/support/pg.rs"]
mod pg;

use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster_support::{eventually, start_cluster_with, Member, ENVS};
use common::{http_get, RedisServer, Server};
use serde_json::{json, Value};

/// A TCP forwarder on a fixed local port to `target`, which the test can cut and restore.
struct Cut {
    port: u16,
    target: SocketAddr,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    listener: Option<std::thread::JoinHandle<()>>,
}

impl Cut {
    fn new(target: SocketAddr) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut cut = Self {
            port,
            target,
            up: Arc::new(AtomicBool::new(false)),
            conns: Arc::default(),
            listener: None,
        };
        cut.restore();
        cut
    }

    /// Listens again on the same port.
    fn restore(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).expect("rebind the forwarder's port");
        listener.set_nonblocking(true).expect("nonblocking");
        self.up.store(true, Ordering::SeqCst);
        let (up, conns, target) = (self.up.clone(), self.conns.clone(), self.target);
        self.listener = Some(std::thread::spawn(move || {
            while up.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        let Ok(server) = TcpStream::connect(target) else { continue };
                        let mut held = conns.lock().expect("conns");
                        for (mut from, mut to) in [
                            (client.try_clone().expect("clone"), server.try_clone().expect("clone")),
                            (server.try_clone().expect("clone"), client.try_clone().expect("clone")),
                        ] {
                            std::thread::spawn(move || {
                                let _ = std::io::copy(&mut from, &mut to);
                                let _ = to.shutdown(Shutdown::Both);
                            });
                        }
                        held.extend([client, server]);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }));
    }

    /// Stops listening (connects are refused) and breaks every connection made through it.
    fn cut(&mut self) {
        self.up.store(false, Ordering::SeqCst);
        if let Some(t) = self.listener.take() {
            t.join().expect("listener thread");
        }
        for c in self.conns.lock().expect("conns").drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        self.cut();
    }
}

/// `url` with its `host:port` replaced by the forwarder's, and the address it named.
fn through(url: &str, port: u16) -> (String, SocketAddr) {
    let at = url.find('@').expect("user@ in the test database url") + 1;
    let end = at + url[at..].find('/').expect("/database");
    let target = url[at..end].to_socket_addrs().expect("resolve").next().expect("an address");
    (format!("{}127.0.0.1:{port}{}", &url[..at], &url[end..]), target)
}

/// `GET /readyz`: (status, body).
fn readyz(node: &Server) -> (u16, String) {
    let text = http_get(&node.addr, "/readyz");
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").trim().to_owned();
    (status, body)
}

/// The value of metric `name` on `node`.
fn metric(node: &Server, name: &str) -> Option<u64> {
    let text = http_get(&node.addr, "/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// One node on `redis` storing in `db` through a forwarder, with `extra` in its environment.
fn node_through_cut(redis: &RedisServer, db: &pg::TestDb, extra: &[(&str, &str)]) -> (Cut, Server) {
    let (_, target) = through(&db.url, 0);
    let cut = Cut::new(target);
    let (url, _) = through(&db.url, cut.port);
    let mut envs = ENVS.to_vec();
    envs.extend([("EDGE_STORE", "postgres"), ("EDGE_POSTGRES_URL", url.as_str())]);
    envs.extend(extra);
    let node = start_cluster_with(1, redis, &envs).remove(0);
    (cut, node)
}

fn send(m: &mut Member, room: &str, body: &str, id: &str) -> Value {
    m.request(json!({"type": "send", "room": room, "body": body}), id, Duration::from_secs(15))
}

#[test]
fn fast_mode_holds_the_writes_while_postgres_is_down_then_refuses_and_loses_nothing() {
    let redis = RedisServer::start();
    let db = pg::TestDb::create();
    let extra = [
        ("EDGE_STORE_BATCH_MAX_MESSAGES", "16"),
        ("EDGE_STORE_QUEUE_CAPACITY", "64"),
        ("EDGE_REDIS_RECENT_LEN", "10"),
    ];
    let (mut cut, node) = node_through_cut(&redis, &db, &extra);
    let mut m = Member::connect(&node, "n1", "ann");
    m.join("down");
    let mut acked: Vec<u64> = Vec::new();
    for i in 0..5 {
        let ack = send(&mut m, "down", &format!("up {i}"), &format!("u{i}"));
        acked.push(ack["seq"].as_u64().unwrap_or_else(|| panic!("{ack}")));
    }
    assert_eq!(readyz(&node), (200, "ready".into()));

    cut.cut();
    // Sends go on: acked, delivered; their writes are held. Past 7/8 of the queue (56 held),
    // `overloaded` before any seq is taken.
    let mut refused = 0;
    for i in 0..120 {
        let reply = send(&mut m, "down", &format!("down {i}"), &format!("d{i}"));
        match reply["type"].as_str() {
            Some("ack") => acked.push(reply["seq"].as_u64().expect("seq")),
            _ if reply["code"] == "overloaded" => refused += 1,
            _ => panic!("send {i} while the store is down: {reply}"),
        }
    }
    eprintln!("store down, fast mode: {} acked in all, {refused} of 120 refused", acked.len());
    assert!(refused > 0, "the held backlog is bounded: some sends are refused");
    assert!(
        acked.len() > 5 + 40,
        "sends kept flowing while the store was down: {} acked",
        acked.len()
    );
    let want: Vec<u64> = (1..=acked.len() as u64).collect();
    assert_eq!(acked, want, "refused sends took no seq");
    let (status, why) = readyz(&node);
    assert_eq!((status, why.as_str()), (503, "store unavailable"), "readyz names the store");
    assert_eq!(metric(&node, "edge_store_unavailable"), Some(1));
    assert!(
        metric(&node, "edge_store_write_queue_depth").is_some_and(|d| d > 0),
        "a counted backlog"
    );
    m.drain(Duration::from_millis(300));
    let live: Vec<u64> = m.messages("down").iter().filter_map(|v| v["seq"].as_u64()).collect();
    assert_eq!(live, want, "every acked message was delivered while the store was down");

    cut.restore();
    let landed = eventually(Duration::from_secs(30), || pg::message_count(&db.url, "down") == acked.len() as i64);
    assert!(
        landed,
        "every acked message reached PostgreSQL: {} of {}",
        pg::message_count(&db.url, "down"),
        acked.len()
    );
    assert!(eventually(Duration::from_secs(10), || readyz(&node).0 == 200), "ready again");
    assert_eq!(metric(&node, "edge_store_write_errors_total"), Some(0), "no write was given up");
    // History below the stream (10) comes from the store: all of it, nothing twice.
    let mut seqs: Vec<u64> = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let mut q = json!({"type": "history", "room": "down", "limit": 100});
        if let Some(b) = before {
            q["before"] = json!(b);
        }
        let page = m.request(q, "h", Duration::from_secs(10));
        let mut got: Vec<u64> = page["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .filter_map(|v| v["seq"].as_u64())
            .collect();
        got.extend(seqs);
        seqs = got;
        match page["next_before"].as_u64() {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    assert_eq!(seqs, want);
    let ack = send(&mut m, "down", "after", "after");
    assert_eq!(ack["type"], "ack", "{ack}");
}

#[test]
fn durable_mode_answers_unavailable_while_postgres_is_down_and_recovers() {
    let redis = RedisServer::start();
    let db = pg::TestDb::create();
    let (mut cut, node) = node_through_cut(&redis, &db, &[("EDGE_DURABILITY", "durable")]);
    let mut m = Member::connect(&node, "n1", "bob");
    m.join("strict");
    for i in 1..=3u64 {
        let ack = send(&mut m, "strict", "up", &format!("u{i}"));
        assert_eq!(ack["seq"].as_u64(), Some(i), "{ack}");
    }

    cut.cut();
    let mut sequenced_unstored = 0;
    for i in 0..10 {
        let reply = send(&mut m, "strict", "down", &format!("d{i}"));
        assert_eq!(
            reply["code"], "unavailable",
            "send {i}: never acked while the store is down: {reply}"
        );
        assert!(reply["retry_ms"].as_u64().is_some(), "{reply}");
        if reply["message"].as_str().is_some_and(|t| t.contains("sequenced")) {
            sequenced_unstored += 1;
        }
    }
    // Only a send already on its way when the store went away was sequenced; once the store is
    // known down, sends are refused before Redis.
    assert!(
        sequenced_unstored <= 1,
        "{sequenced_unstored} sends were sequenced although the store was down"
    );
    let (status, why) = readyz(&node);
    assert_eq!((status, why.as_str()), (503, "store unavailable"));

    cut.restore();
    // Nothing is written while the store is idle: the writer's probe sees it back.
    assert!(
        eventually(Duration::from_secs(15), || readyz(&node).0 == 200),
        "ready again: {:?}",
        readyz(&node)
    );
    let ack = send(&mut m, "strict", "back", "back");
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["seq"].as_u64(), Some(4 + sequenced_unstored), "refused sends took no seq");
    assert_eq!(pg::message_count(&db.url, "strict"), 4);
}

#[test]
fn readyz_names_every_dependency_that_is_down() {
    let mut redis = RedisServer::start();
    let db = pg::TestDb::create();
    let (mut cut, node) = node_through_cut(&redis, &db, &[("EDGE_DURABILITY", "durable")]);
    let mut m = Member::connect(&node, "n1", "cy");
    m.join("r");
    cut.cut();
    let reply = send(&mut m, "r", "x", "x");
    assert_eq!(reply["code"], "unavailable", "{reply}");
    redis.kill();
    assert!(
        eventually(Duration::from_secs(15), || readyz(&node).1
            == "redis unreachable, store unavailable"),
        "{:?}",
        readyz(&node)
    );
}
