//! Delivered receipts in a cluster on a shared PostgreSQL store: three real nodes through a
//! private Redis, a real PostgreSQL (a fresh database), real clients. A room's delivered
//! receipt reaches the members who sent to it lately, on any node, and not the members who
//! did not send; a DM's receipt reaches its sender, who never joined the DM room.

mod cluster_support;
mod common;
#[path = "../../storage/tests/support/pg.rs"]
mod pg;

use std::time::Duration;

use cluster_support::{start_cluster_with, Member, ENVS};
use common::RedisServer;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

fn delivered(f: &Value, room: &str, user: &str, seq: u64) -> bool {
    f["type"] == "receipt"
        && f["status"] == "delivered"
        && f["room"] == room
        && f["seq"].as_u64().is_some_and(|s| s >= seq)
        && f["users"].as_array().is_some_and(|u| u.iter().any(|u| u == user))
}

#[test]
fn delivered_receipts_in_a_cluster_reach_the_senders_on_any_node() {
    let redis = RedisServer::start();
    let db = pg::TestDb::create();
    let mut envs = ENVS.to_vec();
    envs.extend([("EDGE_STORE", "postgres"), ("EDGE_POSTGRES_URL", db.url.as_str())]);
    let nodes = start_cluster_with(3, &redis, &envs);
    cluster_support::wait_readyz(&nodes, 200, WAIT, "cluster start");
    let mut sender = Member::connect(&nodes[0], "n1", "sam");
    let mut reader = Member::connect(&nodes[1], "n2", "rita");
    let mut quiet = Member::connect(&nodes[2], "n3", "quinn");
    for m in [&mut sender, &mut reader, &mut quiet] {
        m.join("rcpt");
    }
    let ack = sender.request(json!({"type": "send", "room": "rcpt", "body": "hello"}), "s", WAIT);
    let seq = ack["seq"].as_u64().unwrap_or_else(|| panic!("{ack}"));
    reader
        .read_until(WAIT, |f| f["type"] == "message")
        .unwrap_or_else(|| panic!("{}", reader.context()));
    // Rita's node reports her delivery within a second; the receipt crosses Redis to sam.
    let got = sender.seen_or_read(WAIT, |f| delivered(f, "rcpt", "rita", seq));
    assert!(got.is_some(), "sam hears that rita got seq {seq}\n{}", sender.context());
    // Quinn sent nothing: no delivered receipt for him (his own delivery was reported too).
    quiet.drain(Duration::from_secs(3));
    assert!(
        !quiet.log.iter().any(|f| f["type"] == "receipt" && f["status"] == "delivered"),
        "a member who did not send gets no delivered receipt\n{}",
        quiet.context()
    );
    // Once quinn sends, his messages' receipts reach him too.
    let ack = quiet.request(json!({"type": "send", "room": "rcpt", "body": "me too"}), "q", WAIT);
    let seq = ack["seq"].as_u64().unwrap_or_else(|| panic!("{ack}"));
    let got = quiet.seen_or_read(WAIT, |f| delivered(f, "rcpt", "rita", seq));
    assert!(got.is_some(), "quinn hears that rita got seq {seq}\n{}", quiet.context());

    // A DM: alice (node 1) never joins the DM room; bob (node 3) gets the message on his
    // user channel, and alice gets bob's delivered receipt on hers.
    let mut bob = Member::connect(&nodes[2], "n3", "bob");
    let mut alice = Member::connect(&nodes[0], "n1", "alice");
    let ack = alice.request(json!({"type": "send", "to": "bob", "body": "psst"}), "dm", WAIT);
    let seq = ack["seq"].as_u64().unwrap_or_else(|| panic!("{ack}"));
    bob.read_until(WAIT, |f| f["type"] == "message")
        .unwrap_or_else(|| panic!("{}", bob.context()));
    let got = alice.seen_or_read(WAIT, |f| delivered(f, "dm:alice:bob", "bob", seq));
    assert!(got.is_some(), "alice hears that bob got the DM\n{}", alice.context());
}
