//! A message pub/sub lost on its way to a node, in a room that node had not
//! received a message of yet (so its pump has nothing to check the room
//! against at the resync): the member shard sees the hole at the next message,
//! reads it from the stream, and its members get both, in seq order.

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::json;

use crate::cluster_support::*;
use crate::common::{read_resp, redis_cmd, temp_data_dir, RedisServer, Server};

/// One connection to Redis kept open, so it still counts once `maxclients` is lowered.
struct Admin(BufReader<TcpStream>);

impl Admin {
    fn connect(port: u16) -> Self {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to redis");
        s.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        Self(BufReader::new(s))
    }

    fn cmd(&mut self, args: &[&str]) -> String {
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.0.get_mut().write_all(req.as_bytes()).expect("write to redis");
        let mut out = String::new();
        read_resp(&mut self.0, &mut out);
        out
    }

    /// The room channel's subscribers (nodes), asked on this connection.
    fn numsub(&mut self, room: &str) -> String {
        self.cmd(&["PUBSUB", "NUMSUB", &format!("chat:{{{room}}}:ch")])
    }
}

/// The ids of Redis's pub/sub clients (`CLIENT LIST TYPE pubsub`).
fn pubsub_ids(port: u16) -> Vec<String> {
    let list = redis_cmd(port, &["CLIENT", "LIST", "TYPE", "pubsub"]);
    list.split_whitespace()
        .filter_map(|w| w.strip_prefix("id="))
        .map(str::to_owned)
        .collect()
}

fn node(redis: &RedisServer, id: &str) -> Server {
    let url = redis.url();
    Server::start_with(DRIVER, ENVS, &["--redis-url", &url, "--node-id", id], &temp_data_dir(id))
}

#[test]
fn a_message_lost_before_a_rooms_first_delivery_is_read_and_given_in_order() {
    let redis = RedisServer::start();
    let port = redis.port();
    // B first, with a member: its pub/sub connection is then the only one.
    let room = "hole";
    let b = node(&redis, "hb");
    wait_readyz(std::slice::from_ref(&b), 200, Duration::from_secs(10), "node hb");
    let mut bob = Member::connect(&b, "hb", "bob");
    let joined = bob.join(room);
    assert_eq!(joined["seq"], 0);
    let b_sub = pubsub_ids(port);
    assert_eq!(b_sub.len(), 1, "one pub/sub connection per node: {b_sub:?}");
    let a = node(&redis, "ha");
    wait_readyz(std::slice::from_ref(&a), 200, Duration::from_secs(10), "node ha");
    let mut alice = Member::connect(&a, "ha", "alice");
    alice.join(room);
    assert!(
        eventually(Duration::from_secs(5), || numsub(port, room) == 2),
        "both nodes subscribe the room"
    );

    // B's pub/sub connection goes, and cannot come back while `maxclients` is the count
    // without it: what is published meanwhile never reaches B.
    let mut admin = Admin::connect(port);
    let info = admin.cmd(&["INFO", "clients"]);
    let connected: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no connected_clients in {info:?}"));
    let limit = (connected - 1).to_string();
    assert!(admin.cmd(&["CONFIG", "SET", "maxclients", &limit]).starts_with("+OK"));
    assert!(
        admin.cmd(&["CLIENT", "KILL", "ID", &b_sub[0]]).starts_with(":1"),
        "B's pub/sub connection is killed"
    );
    let mut one = String::new();
    assert!(
        eventually(Duration::from_secs(5), || {
            one = admin.numsub(room);
            one.ends_with(":1\r\n")
        }),
        "B is off the room's channel: {one:?}"
    );
    alice.expect_ack(json!({"type": "send", "room": room, "body": "while B was away"}), "s1");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(admin.numsub(room), one, "B stayed away while the first message was published");

    // B comes back (and resyncs: its pump has forwarded nothing of the room, so it has
    // nothing to compare), then the second message reaches it.
    assert!(admin.cmd(&["CONFIG", "SET", "maxclients", "10000"]).starts_with("+OK"));
    assert!(
        eventually(Duration::from_secs(15), || numsub(port, room) == 2),
        "B subscribes the room again"
    );
    wait_readyz(
        std::slice::from_ref(&b),
        200,
        Duration::from_secs(10),
        "node hb after its reconnect",
    );
    alice.expect_ack(json!({"type": "send", "room": room, "body": "after B came back"}), "s2");

    bob.read_until(Duration::from_secs(10), |v| v["type"] == "message" && v["seq"] == 2);
    let got: Vec<(u64, String)> = bob
        .messages(room)
        .iter()
        .map(|v| (seq_of(v), v["body"].as_str().unwrap_or_default().to_owned()))
        .collect();
    assert_eq!(
        got,
        [(1, "while B was away".to_owned()), (2, "after B came back".to_owned())],
        "bob gets the lost message, then the next, in order\n{}",
        bob.context()
    );
    assert!(
        !bob.log.iter().any(|v| v["type"] == "gap"),
        "the stream held it: no gap\n{}",
        bob.context()
    );
}
