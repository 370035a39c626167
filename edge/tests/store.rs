//! Store integration tests: the real `edge` binary with its embedded store in a
//! temp data directory, real WebSocket clients, the io_uring driver only.
//!
//! What must hold: in `durable` mode an acked (or delivered) message survives
//! a SIGKILL; a room's seq continues from the store after a restart with no
//! reuse and no gap; `history` pages back through a room without overlap;
//! `join` + `since` replays exactly the missed messages, from memory or, after
//! a restart, from the store; the epoch changes after an unclean stop only.

mod common;

use std::collections::HashSet;
use std::net::TcpStream;
use std::ops::{Range, RangeInclusive};
use std::path::Path;
use std::time::Duration;

use common::{temp_data_dir, token_with, Client, Server};
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

/// One driver keeps CI time down; the io code paths are covered by e2e.rs.
const DRIVER: &str = "io_uring";
/// Lifts the per-connection rate limit (50/s, burst 100) for tests that send many messages.
const ENVS: &[(&str, &str)] = &[("EDGE_MAX_MSGS_PER_S", "100000"), ("EDGE_MSGS_BURST", "100000")];
const DURABLE: &[&str] = &["--durability", "durable"];
/// Sends kept in flight while waiting for the kill point, so the node dies mid-stream.
const WINDOW: usize = 64;

/// What the node said about one message: `body` got `seq` and `msg_id`
/// (from an `ack`, whose request id names the body, or from a `message` frame).
#[derive(Debug, Clone)]
struct Acked {
    seq: u64,
    msg_id: String,
    body: String,
}

impl Acked {
    /// An `ack` answering the request id `s{i}`, which sent body `m{i}`.
    fn from_ack(v: &Value) -> Self {
        assert_eq!(v["type"], "ack", "expected an ack: {v}");
        let i = v["id"]
            .as_str()
            .and_then(|id| id.strip_prefix('s'))
            .unwrap_or_else(|| panic!("ack without an s{{i}} id: {v}"));
        Self {
            seq: v["seq"].as_u64().unwrap_or_else(|| panic!("ack without a seq: {v}")),
            msg_id: v["msg_id"]
                .as_str()
                .unwrap_or_else(|| panic!("ack without a msg_id: {v}"))
                .to_owned(),
            body: format!("m{i}"),
        }
    }

    fn from_message(v: &Value) -> Self {
        Self {
            seq: v["seq"].as_u64().unwrap_or_else(|| panic!("message without a seq: {v}")),
            msg_id: v["msg_id"]
                .as_str()
                .unwrap_or_else(|| panic!("message without a msg_id: {v}"))
                .to_owned(),
            body: v["body"]
                .as_str()
                .unwrap_or_else(|| panic!("message without a body: {v}"))
                .to_owned(),
        }
    }
}

/// A node on `data_dir` with the rate limit lifted; `args` are extra `serve` flags.
fn start_node(args: &[&str], data_dir: &Path) -> Server {
    let server = Server::start_with(DRIVER, ENVS, args, data_dir);
    assert_eq!(server.driver, DRIVER, "the node must run the driver it was asked for");
    server
}

/// A `send` of body `m{i}` with client_id `c{i}` and request id `s{i}`.
fn send_frame(room: &str, i: usize) -> Value {
    json!({"type": "send", "room": room, "body": format!("m{i}"), "client_id": format!("c{i}"), "id": format!("s{i}")})
}

/// Sends `m{i}` for every `i` in `range` to `room` (which `c` has joined),
/// `chunk` frames at a time without waiting for acks in between, then reads
/// that chunk's acks. Returns the acks in `range` order; other frames
/// (the sender's own `message` copies) are skipped.
fn send_pipelined(c: &mut Client, room: &str, range: Range<usize>, chunk: usize) -> Vec<Acked> {
    let all: Vec<usize> = range.collect();
    let mut acked = Vec::with_capacity(all.len());
    for part in all.chunks(chunk) {
        for &i in part {
            c.send(send_frame(room, i));
        }
        let mut replies: Vec<Value> = Vec::with_capacity(part.len());
        while replies.len() < part.len() {
            let v = c.recv();
            if v.get("id").is_some() {
                assert_eq!(v["type"], "ack", "every pipelined send must be acked: {v}");
                replies.push(v);
            }
        }
        for &i in part {
            let id = format!("s{i}");
            let ack = replies
                .iter()
                .find(|v| v["id"] == id.as_str())
                .unwrap_or_else(|| panic!("no ack for {id} among {replies:?}"));
            acked.push(Acked::from_ack(ack));
        }
    }
    acked
}

/// The next JSON text frame, or `None` once the socket errors or closes.
/// Unlike `Client::recv` it does not panic: the node may be dead.
fn read_json(ws: &mut WebSocket<TcpStream>) -> Option<Value> {
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => return Some(serde_json::from_str(t.as_str()).expect("server frames are JSON")),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Sends `m0..m{n-1}` to `room` keeping up to `WINDOW` sends in flight, and
/// SIGKILLs the node once `kill_after` acks are back (sends still in flight),
/// then reads whatever the dead socket still holds. Returns the acks, the
/// `message` frames delivered to `c`, and any error replies.
fn send_until_killed(server: &mut Server, c: &mut Client, room: &str, n: usize, kill_after: usize) -> (Vec<Acked>, Vec<Acked>, Vec<Value>) {
    let (mut acked, mut delivered, mut errors): (Vec<Acked>, Vec<Acked>, Vec<Value>) = (Vec::new(), Vec::new(), Vec::new());
    let (mut sent, mut killed) = (0, false);
    loop {
        let replies = acked.len() + errors.len();
        while !killed && sent < n && sent - replies < WINDOW {
            c.send(send_frame(room, sent));
            sent += 1;
        }
        if !killed && (acked.len() >= kill_after || replies == n) {
            server.kill9();
            killed = true;
        }
        let Some(v) = read_json(&mut c.ws) else {
            assert!(
                killed,
                "the socket failed before the kill: {} acks, {sent} sent, errors {errors:?}",
                acked.len()
            );
            break;
        };
        match v["type"].as_str() {
            Some("ack") => acked.push(Acked::from_ack(&v)),
            Some("message") => delivered.push(Acked::from_message(&v)),
            Some("error") => errors.push(v),
            _ => {}
        }
    }
    (acked, delivered, errors)
}

/// Seqs of message frames.
fn seqs(msgs: &[Value]) -> Vec<u64> {
    msgs.iter()
        .map(|m| m["seq"].as_u64().unwrap_or_else(|| panic!("message without a seq: {m}")))
        .collect()
}

/// One `history` page: its messages and `next_before`.
fn history_page(c: &mut Client, room: &str, before: Option<u64>, limit: usize, id: &str) -> (Vec<Value>, Option<u64>) {
    let mut req = json!({"type": "history", "room": room, "limit": limit});
    if let Some(b) = before {
        req["before"] = json!(b);
    }
    let r = c.request(req, id);
    assert_eq!(
        (r["type"].as_str(), r["room"].as_str()),
        (Some("history"), Some(room)),
        "history reply {id}: {r}"
    );
    let messages = r["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("history.messages is not an array: {r}"))
        .clone();
    let next = match &r["next_before"] {
        Value::Null => None,
        v => Some(v.as_u64().unwrap_or_else(|| panic!("next_before is neither null nor a seq: {r}"))),
    };
    for m in &messages {
        let shape = (
            m["type"].as_str(),
            m["room"].as_str(),
            m["msg_id"].is_string(),
            m["from"].is_string(),
        );
        assert_eq!(shape, (Some("message"), Some(room), true, true), "history message shape: {m}");
        assert!(
            m["ts"].is_u64() && m["body"].is_string() && m["kind"].is_string(),
            "history message shape: {m}"
        );
    }
    (messages, next)
}

/// Pages through `room`'s history from the newest message back to the first,
/// `limit` at a time. Checks every page (ascending, below its cursor, no
/// overlap with the newer page, full unless it is the last). Returns all
/// messages oldest first and the number of pages.
fn history_all(c: &mut Client, room: &str, limit: usize) -> (Vec<Value>, usize) {
    let mut pages: Vec<Vec<Value>> = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let n = pages.len();
        assert!(n < 10_000, "history of {room} never reached its first message");
        let (page, next) = history_page(c, room, before, limit, &format!("h{n}"));
        let s = seqs(&page);
        assert!(
            page.len() <= limit,
            "page {n} (before {before:?}) has {} messages over limit {limit}",
            page.len()
        );
        assert!(
            s.windows(2).all(|w| w[0] < w[1]),
            "page {n} (before {before:?}) is not ascending: {s:?}"
        );
        if let Some(b) = before {
            assert!(s.iter().all(|&q| q < b), "page {n} holds seqs not below before={b}: {s:?}");
        }
        if let (Some(newer), Some(&last)) = (pages.last(), s.last()) {
            let newer_first = seqs(newer)[0];
            assert!(last < newer_first, "page {n} overlaps the newer page: {s:?} vs first {newer_first}");
        }
        pages.push(page);
        let Some(nb) = next else { break };
        assert_eq!(
            s.len(),
            limit,
            "page {n} (before {before:?}) says older messages exist (next_before {nb}) but is not full: {s:?}"
        );
        assert!(before.is_none_or(|b| nb < b), "next_before {nb} does not move back from {before:?}");
        before = Some(nb);
    }
    let count = pages.len();
    (pages.into_iter().rev().flatten().collect(), count)
}

/// Asserts `msgs` hold exactly the seqs 1..=len, in order (no gap, no duplicate).
fn assert_gap_free(room: &str, msgs: &[Value]) {
    let got = seqs(msgs);
    if let Some(k) = got.iter().enumerate().position(|(k, &s)| s != k as u64 + 1) {
        let around = &got[k.saturating_sub(3)..(k + 3).min(got.len())];
        panic!(
            "{room}: seqs are not 1..={}: index {k} holds {} (around it: {around:?})",
            got.len(),
            got[k]
        );
    }
}

/// Asserts every one of `expected` is in `msgs` (gap-free from seq 1) with its seq, msg_id and body.
fn assert_stored(msgs: &[Value], expected: &[Acked], what: &str) {
    for a in expected {
        let m = usize::try_from(a.seq)
            .ok()
            .and_then(|s| s.checked_sub(1))
            .and_then(|k| msgs.get(k))
            .unwrap_or_else(|| panic!("{what} {a:?} is missing: the store holds seqs 1..={}", msgs.len()));
        let got = (m["seq"].as_u64(), m["msg_id"].as_str(), m["body"].as_str());
        assert_eq!(
            got,
            (Some(a.seq), Some(a.msg_id.as_str()), Some(a.body.as_str())),
            "{what} {a:?} is stored as {m}"
        );
    }
}

/// Asserts no seq was handed out twice.
fn assert_distinct_seqs(acked: &[Acked]) {
    let mut seen = HashSet::new();
    for a in acked {
        assert!(seen.insert(a.seq), "seq {} acked twice (again for {a:?})", a.seq);
    }
}

/// Reads the next frames of `c`: exactly the messages `expected` of `room`, in order, with
/// their acked bodies (presence events passed over).
fn expect_messages(c: &mut Client, room: &str, expected: RangeInclusive<u64>, acked: &[Acked]) {
    for seq in expected {
        let v = c.recv_chat();
        let want = acked
            .iter()
            .find(|a| a.seq == seq)
            .unwrap_or_else(|| panic!("seq {seq} was never acked"));
        let got = (
            v["type"].as_str(),
            v["room"].as_str(),
            v["seq"].as_u64(),
            v["msg_id"].as_str(),
            v["body"].as_str(),
        );
        let exp = (
            Some("message"),
            Some(room),
            Some(seq),
            Some(want.msg_id.as_str()),
            Some(want.body.as_str()),
        );
        assert_eq!(got, exp, "catch-up frame for seq {seq}: {v}");
    }
}

#[test]
fn durable_acks_survive_sigkill_and_seq_continues() {
    let dir = temp_data_dir("crash");
    let mut server = start_node(DURABLE, &dir);
    let mut c = Client::connect(&server.addr, "alice", "&room=crash");
    let epoch_before = c.recv_type("joined")["epoch"].clone();
    assert!(epoch_before.is_u64(), "joined.epoch must be a number: {epoch_before}");
    let (acked, delivered, errors) = send_until_killed(&mut server, &mut c, "crash", 300, 50);
    assert!(acked.len() >= 50, "only {} acks before the kill; errors: {errors:?}", acked.len());
    assert_distinct_seqs(&acked);
    drop(c);
    drop(server);

    let server = start_node(DURABLE, &dir);
    let mut c = Client::connect(&server.addr, "alice", "&room=crash");
    let joined = c.recv_type("joined");
    assert!(joined["epoch"].is_u64(), "joined.epoch must be a number: {joined}");
    assert_ne!(
        joined["epoch"], epoch_before,
        "SIGKILL is an unclean stop: the room needs a new epoch ({joined})"
    );
    let (stored, pages) = history_all(&mut c, "crash", 50);
    assert_gap_free("crash", &stored);
    assert_stored(&stored, &acked, "acked message");
    assert_stored(&stored, &delivered, "delivered message (fan-out only after commit)");
    let max = stored.len() as u64;
    assert_eq!(pages, stored.len().div_ceil(50), "{max} stored messages in pages of 50");
    assert_eq!(
        joined["seq"], max,
        "joined.seq after the restart is the highest stored seq ({joined})"
    );
    let mut bodies = HashSet::new();
    for m in &stored {
        let body = m["body"].as_str().unwrap_or_default();
        let i = body.strip_prefix('m').and_then(|i| i.parse::<usize>().ok());
        assert!(i.is_some_and(|i| i < 300), "a body that was never sent is stored: {m}");
        assert!(bodies.insert(body.to_owned()), "{body} is stored twice: {m}");
    }
    let ack = c.request(
        json!({"type": "send", "room": "crash", "body": "after the crash", "client_id": "c-after"}),
        "after",
    );
    let got = (ack["type"].as_str(), ack["seq"].as_u64());
    assert_eq!(
        got,
        (Some("ack"), Some(max + 1)),
        "the seq continues after the highest stored seq {max}: {ack}"
    );
}

#[test]
fn history_pages_1000_messages_in_pages_of_50() {
    let server = start_node(&[], &temp_data_dir("history"));
    let mut sender = Client::connect(&server.addr, "alice", "&room=h");
    sender.recv_type("joined");
    let acked = send_pipelined(&mut sender, "h", 0..1000, 100);
    assert_distinct_seqs(&acked);
    // The reader never joins "h": being allowed to join is enough for history.
    let mut reader = Client::connect(&server.addr, "reader", "");
    let (msgs, pages) = history_all(&mut reader, "h", 50);
    assert_eq!(pages, 20, "1000 messages in pages of 50 (the 20th page's next_before is null)");
    assert_eq!(msgs.len(), 1000, "every message comes back once");
    assert_gap_free("h", &msgs);
    assert_stored(&msgs, &acked, "acked message");
    for m in &msgs {
        assert_eq!((m["from"].as_str(), m["kind"].as_str()), (Some("alice"), Some("text")), "{m}");
    }
    for limit in [0, 101] {
        let e = reader.request(json!({"type": "history", "room": "h", "limit": limit}), &format!("limit-{limit}"));
        let got = (e["type"].as_str(), e["code"].as_str());
        assert_eq!(got, (Some("error"), Some("bad_request")), "history limit {limit}: {e}");
    }
    let tok = token_with("u", Some(vec!["allowed*".into()]));
    let mut limited = Client::connect_raw_query(&server.addr, &format!("token={tok}")).expect("upgrade");
    limited.welcome = limited.recv_type("welcome");
    let e = limited.request(json!({"type": "history", "room": "h"}), "not-allowed");
    let got = (e["type"].as_str(), e["code"].as_str());
    assert_eq!(
        got,
        (Some("error"), Some("forbidden")),
        "history of a room the token may not join: {e}"
    );
}

#[test]
fn since_catch_up_after_reconnect_delivers_exactly_the_missed() {
    let server = start_node(&[], &temp_data_dir("since"));
    let mut a = Client::connect(&server.addr, "alice", "&room=s");
    a.recv_type("joined");
    let mut b = Client::connect(&server.addr, "bob", "&room=s");
    b.recv_type("joined");
    let mut acked = send_pipelined(&mut a, "s", 0..10, 100);
    let seen: Vec<u64> = (0..10)
        .map(|_| b.recv_type("message")["seq"].as_u64().expect("message.seq"))
        .collect();
    assert_eq!(seen, (1..=10).collect::<Vec<u64>>(), "B sees the first 10 messages in order");
    let last = seen[9];
    drop(b);

    acked.extend(send_pipelined(&mut a, "s", 10..35, 100));
    let mut b = Client::connect(&server.addr, "bob", "");
    let joined = b.request(json!({"type": "join", "room": "s", "since": last}), "rejoin");
    let got = (joined["type"].as_str(), joined["seq"].as_u64());
    assert_eq!(got, (Some("joined"), Some(35)), "rejoin with since {last}: {joined}");
    expect_messages(&mut b, "s", 11..=35, &acked);

    let live = send_pipelined(&mut a, "s", 35..36, 1);
    assert_eq!(live[0].seq, 36, "the live message after 35 sends: {:?}", live[0]);
    let next = b.recv_chat();
    let got = (next["type"].as_str(), next["seq"].as_u64());
    assert_eq!(
        got,
        (Some("message"), Some(36)),
        "after the catch-up B's next frame must be the live seq 36: {next}"
    );
    acked.extend(live);

    // `?resume=<room>:<seq>` on the upgrade URL: the same catch-up without a join request.
    let mut c = Client::connect(&server.addr, "carol", "&resume=s:33");
    let joined = c.recv_type("joined");
    assert_eq!((joined["room"].as_str(), joined["seq"].as_u64()), (Some("s"), Some(36)), "{joined}");
    expect_messages(&mut c, "s", 34..=36, &acked);
    let tok = common::token("carol");
    for bad in ["s", "s:x", ":3"] {
        let refused = Client::connect_raw_query(&server.addr, &format!("token={tok}&resume={bad}"));
        assert!(refused.is_err(), "resume={bad} must be refused before the upgrade");
    }
}

#[test]
fn since_catch_up_after_restart_comes_from_the_store() {
    let dir = temp_data_dir("restart");
    let mut server = start_node(DURABLE, &dir);
    let mut a = Client::connect(&server.addr, "alice", "&room=r2");
    let epoch_before = a.recv_type("joined")["epoch"].clone();
    assert!(epoch_before.is_u64(), "joined.epoch must be a number: {epoch_before}");
    let acked = send_pipelined(&mut a, "r2", 0..40, 100);
    let acked_seqs: Vec<u64> = acked.iter().map(|x| x.seq).collect();
    assert_eq!(
        acked_seqs,
        (1..=40).collect::<Vec<u64>>(),
        "one connection's sends are sequenced in order"
    );
    let status = server.signal_and_wait(libc::SIGTERM, Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "a graceful stop exits 0 within 10 s: {status:?}"
    );
    drop(a);
    drop(server);

    // A ring of 8 (it holds 33..=40 after the restart) sends catch-up from further back to the
    // store; at most 20 messages are replayed from it, older ones are announced with `gap`.
    let small_ring = [ENVS, &[("EDGE_RECENT_PER_ROOM", "8"), ("EDGE_MAX_CATCH_UP_MESSAGES", "20")]].concat();
    let server = Server::start_with(DRIVER, &small_ring, DURABLE, &dir);
    let mut b = Client::connect(&server.addr, "bob", "");
    let joined = b.request(json!({"type": "join", "room": "r2", "since": 25}), "rejoin");
    let got = (joined["type"].as_str(), joined["seq"].as_u64());
    assert_eq!(got, (Some("joined"), Some(40)), "join after the restart: {joined}");
    assert_eq!(joined["epoch"], epoch_before, "a graceful stop keeps the room's epoch: {joined}");
    expect_messages(&mut b, "r2", 26..=40, &acked);
    let mut c = Client::connect(&server.addr, "carol", "");
    let joined = c.request(json!({"type": "join", "room": "r2", "since": 5}), "far-back");
    assert_eq!(joined["seq"], 40, "{joined}");
    let gap = c.recv_chat();
    let got = (gap["type"].as_str(), gap["from"].as_u64(), gap["to"].as_u64());
    assert_eq!(got, (Some("gap"), Some(6), Some(20)), "past max_catch_up_messages: {gap}");
    expect_messages(&mut c, "r2", 21..=40, &acked);
    let ack = b.request(json!({"type": "send", "room": "r2", "body": "after the restart"}), "after");
    let got = (ack["type"].as_str(), ack["seq"].as_u64());
    assert_eq!(got, (Some("ack"), Some(41)), "the seq continues from the store: {ack}");
}

#[test]
fn a_full_store_queue_answers_overloaded_and_leaves_no_seq_gap() {
    // One message per commit and room for one waiting write: a pipelined burst must overflow.
    let envs = [ENVS, &[("EDGE_STORE_BATCH_MAX_MESSAGES", "1"), ("EDGE_STORE_QUEUE_CAPACITY", "1")]].concat();
    let server = Server::start_with(DRIVER, &envs, DURABLE, &temp_data_dir("full"));
    let mut c = Client::connect(&server.addr, "alice", "&room=full");
    c.recv_type("joined");
    let n = 200;
    for i in 0..n {
        c.send(send_frame("full", i));
    }
    let (mut acked, mut refused) = (Vec::new(), 0);
    while acked.len() + refused < n {
        let v = c.recv();
        match (v["type"].as_str(), v.get("id").is_some()) {
            (Some("ack"), true) => acked.push(Acked::from_ack(&v)),
            (Some("error"), true) => {
                assert_eq!(v["code"], "overloaded", "a refused send is `overloaded`: {v}");
                assert!(v["retry_ms"].as_u64().is_some_and(|r| r > 0), "with a retry hint: {v}");
                refused += 1;
            }
            _ => {}
        }
    }
    eprintln!("full store queue: {} acked, {refused} refused", acked.len());
    assert!(refused > 0, "{n} pipelined sends into a queue of 1 must overflow it");
    let mut seqs: Vec<u64> = acked.iter().map(|a| a.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=acked.len() as u64).collect::<Vec<_>>(), "a refusal takes no seq");
    let (stored, _) = history_all(&mut c, "full", 100);
    assert_gap_free("full", &stored);
    assert_eq!(stored.len(), acked.len(), "exactly the acked messages are stored");
    assert_stored(&stored, &acked, "acked message");
}

#[test]
fn a_join_cancelled_by_a_leave_still_gets_one_reply() {
    let server = start_node(&[], &temp_data_dir("cancel"));
    let mut c = Client::connect(&server.addr, "alice", "");
    let mine = c.shard() as usize;
    // Rooms owned by the other shard: the join crosses the mesh, the leave is answered at once.
    let rooms: Vec<String> = (0..200)
        .map(|i| format!("far-{i}"))
        .filter(|r| edge::room::owner(r, 2) != mine)
        .take(20)
        .collect();
    for room in &rooms {
        c.send(json!({"type": "join", "room": room, "id": format!("j-{room}")}));
        c.send(json!({"type": "leave", "room": room, "id": format!("l-{room}")}));
    }
    let mut replies: std::collections::HashMap<String, Value> = std::collections::HashMap::new();
    while replies.len() < 2 * rooms.len() {
        let v = c.recv();
        if let Some(id) = v["id"].as_str() {
            assert!(replies.insert(id.to_owned(), v.clone()).is_none(), "two replies to {id}: {v}");
        }
    }
    for room in &rooms {
        let (j, l) = (&replies[&format!("j-{room}")], &replies[&format!("l-{room}")]);
        assert_eq!(l["type"], "left", "{room}: {l}");
        let joined_or_cancelled = j["type"] == "joined" || (j["type"] == "error" && j["code"] == "bad_request");
        assert!(joined_or_cancelled, "{room}: the join gets `joined` or a cancellation: {j}");
    }
    // Nothing was left behind: a message to any of those rooms now needs a fresh join.
    let e = c.request(json!({"type": "send", "room": rooms[0], "body": "x"}), "after");
    assert_eq!((e["type"].as_str(), e["code"].as_str()), (Some("error"), Some("forbidden")), "{e}");
}
