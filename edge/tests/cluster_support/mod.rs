//! Helpers of the cluster tests: nodes, Redis checks, and a member that logs
//! every frame it reads and never panics on a timeout.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::time::{Duration, Instant};

use crate::common::{http_get, redis_cmd, temp_data_dir, Client, RedisServer, Server};
use serde_json::{json, Value};
use tungstenite::Message;

pub const DRIVER: &str = "io_uring";
/// Short presence timings and no per-connection rate limit.
pub const ENVS: &[(&str, &str)] = &[
    ("EDGE_PRESENCE_LEASE_MS", "1500"),
    ("EDGE_PRESENCE_HEARTBEAT_MS", "300"),
    ("EDGE_MAX_MSGS_PER_S", "100000"),
    ("EDGE_MSGS_BURST", "100000"),
];
/// Lease 1500 ms + heartbeat 300 ms, plus slack.
pub const OFFLINE_WITHIN: Duration = Duration::from_secs(6);
/// Socket read timeout `Client` uses outside these helpers.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Cluster and Redis helpers

/// `n` nodes `n1..=n{n}` in the cluster of `redis`, each with 2 shards and its own data dir.
pub fn start_cluster(n: usize, redis: &RedisServer) -> Vec<Server> {
    start_cluster_with(n, redis, ENVS)
}

/// `n` nodes `n1..=n{n}` in the cluster of `redis` with the environment `envs`.
pub fn start_cluster_with(n: usize, redis: &RedisServer, envs: &[(&str, &str)]) -> Vec<Server> {
    let url = redis.url();
    (1..=n)
        .map(|i| {
            let id = format!("n{i}");
            let s = Server::start_with(DRIVER, envs, &["--redis-url", &url, "--node-id", &id], &temp_data_dir(&id));
            assert_eq!(s.driver, DRIVER, "node {id} must run the driver it was asked for");
            s
        })
        .collect()
}

/// The status code of an HTTP GET (0 when the response has no status line).
pub fn http_status(addr: &str, path: &str) -> u16 {
    let text = http_get(addr, path);
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// Polls `/readyz` of every node until all answer `want`, for up to `limit`.
pub fn wait_readyz(nodes: &[Server], want: u16, limit: Duration, what: &str) -> Duration {
    let start = Instant::now();
    loop {
        let got: Vec<u16> = nodes.iter().map(|s| http_status(&s.addr, "/readyz")).collect();
        if got.iter().all(|&c| c == want) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{what}: /readyz did not become {want} on every node within {limit:?}; last statuses {got:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `PUBSUB NUMSUB chat:{room}:ch`: how many subscribers (nodes) the room's channel has.
pub fn numsub(port: u16, room: &str) -> i64 {
    let ch = format!("chat:{{{room}}}:ch");
    let raw = redis_cmd(port, &["PUBSUB", "NUMSUB", &ch]);
    raw.split("\r\n")
        .filter_map(|l| l.strip_prefix(':'))
        .last()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected PUBSUB NUMSUB reply {raw:?}"))
}

/// `PUBSUB CHANNELS chat:*`: the subscribed channels.
pub fn channels(port: u16) -> Vec<String> {
    let raw = redis_cmd(port, &["PUBSUB", "CHANNELS", "chat:*"]);
    assert!(raw.starts_with('*'), "unexpected PUBSUB CHANNELS reply {raw:?}");
    raw.split("\r\n")
        .skip(1)
        .filter(|l| !l.is_empty() && !l.starts_with('$'))
        .map(str::to_owned)
        .collect()
}

/// Polls `cond` every 50 ms for up to `limit`; returns whether it held.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `cond` every 50 ms until it has held for all of `window` (each poll true), within `limit`.
pub fn settles(limit: Duration, window: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    let mut since: Option<Instant> = None;
    loop {
        if cond() {
            let t = *since.get_or_insert_with(Instant::now);
            if t.elapsed() >= window {
                return true;
            }
        } else {
            since = None;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------
// Members: a client that logs every frame it reads

/// What one bounded read produced.
pub enum Next {
    Frame(Value),
    Timeout,
    Closed,
}

/// A connected client plus the log of every frame read from it (for checks and failure context).
pub struct Member {
    pub name: String,
    pub node: String,
    pub c: Client,
    pub log: Vec<Value>,
    /// Set once the socket closed or failed.
    pub closed: Option<String>,
}

impl Member {
    pub fn connect(server: &Server, node: &str, user: &str) -> Self {
        Self {
            name: user.to_owned(),
            node: node.to_owned(),
            c: Client::connect(&server.addr, user, ""),
            log: Vec::new(),
            closed: None,
        }
    }

    /// One frame, waiting at most `limit`; never panics on a timeout or a closed socket.
    pub fn next(&mut self, limit: Duration) -> Next {
        if let Some(v) = self.c.backlog.pop_front() {
            return Next::Frame(v);
        }
        if self.closed.is_some() {
            return Next::Closed;
        }
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
            let _ = self.c.ws.get_ref().set_read_timeout(Some(left));
            let r = self.c.ws.read();
            let _ = self.c.ws.get_ref().set_read_timeout(Some(DEFAULT_READ_TIMEOUT));
            match r {
                Ok(Message::Text(t)) => {
                    let v: Value =
                        serde_json::from_str(t.as_str()).unwrap_or_else(|e| panic!("{}: a frame that is not JSON ({e}): {t}", self.who()));
                    return Next::Frame(v);
                }
                Ok(Message::Close(c)) => {
                    self.closed = Some(format!("close frame {c:?}"));
                    return Next::Closed;
                }
                Ok(_) => {
                    if Instant::now() >= deadline {
                        return Next::Timeout;
                    }
                }
                Err(tungstenite::Error::Io(e)) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Next::Timeout;
                }
                Err(e) => {
                    self.closed = Some(e.to_string());
                    return Next::Closed;
                }
            }
        }
    }

    /// Reads frames (all logged) until `stop` accepts one, which is returned, or `limit` passes
    /// or the socket closes (`None`).
    pub fn read_until(&mut self, limit: Duration, mut stop: impl FnMut(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() && self.c.backlog.is_empty() {
                return None;
            }
            match self.next(left) {
                Next::Frame(v) => {
                    self.log.push(v.clone());
                    if stop(&v) {
                        return Some(v);
                    }
                }
                Next::Timeout | Next::Closed => return None,
            }
        }
    }

    /// The first frame already read that `want` accepts, or else the next one to arrive within `limit`.
    pub fn seen_or_read(&mut self, limit: Duration, mut want: impl FnMut(&Value) -> bool) -> Option<Value> {
        if let Some(v) = self.log.iter().find(|v| want(v)) {
            return Some(v.clone());
        }
        self.read_until(limit, want)
    }

    /// Reads (and logs) everything that arrives within `limit`.
    pub fn drain(&mut self, limit: Duration) {
        self.read_until(limit, |_| false);
    }

    /// Sends `v` with request id `id` and returns its reply (the frame with that id), within `limit`.
    pub fn request(&mut self, mut v: Value, id: &str, limit: Duration) -> Value {
        v["id"] = json!(id);
        self.send(v.clone());
        self.read_until(limit, |f| f["id"] == id)
            .unwrap_or_else(|| panic!("{}: no reply to {v} within {limit:?}\n{}", self.who(), self.context()))
    }

    /// Sends `v` as request `id` and checks that it is acked; the `ack`.
    pub fn expect_ack(&mut self, v: Value, id: &str) -> Value {
        let r = self.request(v, id, Duration::from_secs(10));
        assert_eq!(r["type"], "ack", "{}: {r}\n{}", self.who(), self.context());
        r
    }

    /// Sends `v` as request `id` and checks that it is refused with `code`; the `error`.
    pub fn expect_error(&mut self, v: Value, id: &str, code: &str) -> Value {
        let r = self.request(v, id, Duration::from_secs(10));
        assert_eq!(
            (r["type"].as_str(), r["code"].as_str()),
            (Some("error"), Some(code)),
            "{}: {r}",
            self.who()
        );
        r
    }

    pub fn send(&mut self, v: Value) {
        if let Err(e) = self.c.ws.send(Message::text(v.to_string())) {
            panic!("{}: sending {v} failed: {e}\n{}", self.who(), self.context());
        }
    }

    pub fn join(&mut self, room: &str) -> Value {
        let id = format!("j-{room}-{}", self.log.len());
        let r = self.request(json!({"type": "join", "room": room}), &id, Duration::from_secs(10));
        assert_eq!(r["type"], "joined", "{}: join {room}: {r}\n{}", self.who(), self.context());
        r
    }

    pub fn leave(&mut self, room: &str) {
        let id = format!("l-{room}-{}", self.log.len());
        let r = self.request(json!({"type": "leave", "room": room}), &id, Duration::from_secs(10));
        assert_eq!(r["type"], "left", "{}: leave {room}: {r}\n{}", self.who(), self.context());
    }

    /// The `message` frames of `room` seen so far, in arrival order.
    pub fn messages(&self, room: &str) -> Vec<&Value> {
        self.log.iter().filter(|v| v["type"] == "message" && v["room"] == room).collect()
    }

    pub fn message_count(&self, room: &str) -> usize {
        self.messages(room).len()
    }

    pub fn who(&self) -> String {
        format!("{}@{}", self.name, self.node)
    }

    /// The last frames read, for failure messages.
    pub fn context(&self) -> String {
        let from = self.log.len().saturating_sub(20);
        let mut s = format!(
            "  last {} of {} frames read by {}:\n",
            self.log.len() - from,
            self.log.len(),
            self.who()
        );
        for (i, v) in self.log.iter().enumerate().skip(from) {
            s.push_str(&format!("    #{i} {v}\n"));
        }
        if let Some(why) = &self.closed {
            s.push_str(&format!("  socket closed: {why}\n"));
        }
        s
    }
}

pub fn seq_of(v: &Value) -> u64 {
    v["seq"].as_u64().unwrap_or_else(|| panic!("frame without a numeric seq: {v}"))
}

/// Asserts that whenever `m` received a `message` of `room` whose seq is not above one it had
/// already seen, an `epoch` or `gap` frame of `room` came in between (no silent seq reset).
pub fn assert_no_silent_reset(m: &Member, room: &str) {
    let mut max_seen: Option<u64> = None;
    let mut announced = false;
    for (i, v) in m.log.iter().enumerate() {
        if v["room"] != room {
            continue;
        }
        match v["type"].as_str() {
            Some("epoch") | Some("gap") => announced = true,
            Some("message") => {
                let seq = seq_of(v);
                if let Some(max) = max_seen {
                    if seq <= max {
                        assert!(
                            announced,
                            "{}: frame #{i} is message seq {seq} of {room} after seq {max} was seen, with no epoch/gap frame in between\n{}",
                            m.who(),
                            m.context()
                        );
                        max_seen = None;
                    }
                }
                max_seen = Some(max_seen.map_or(seq, |x| x.max(seq)));
                announced = false;
            }
            _ => {}
        }
    }
}

/// The users in a `presence` reply's `online` list.
pub fn online_users(reply: &Value) -> BTreeSet<String> {
    reply["online"]
        .as_array()
        .unwrap_or_else(|| panic!("presence reply without an online array: {reply}"))
        .iter()
        .map(|e| {
            e["user"]
                .as_str()
                .unwrap_or_else(|| panic!("online entry without a user: {reply}"))
                .to_owned()
        })
        .collect()
}

pub fn is_presence_event(v: &Value, room: &str, user: &str, status: &str) -> bool {
    v["type"] == "presence" && v["room"] == room && v["user"] == user && v["status"] == status
}

// ---------------------------------------------------------------------------
// Tests

/// Alice sends bob a DM (bob never joins `dm:alice:bob`), edits it, and bob reacts: bob hears
/// the edit and alice the reaction, wherever their connections are.
pub fn a_dm_change_reaches_the_recipient_who_never_joined(alice: &mut Member, bob: &mut Member) {
    let wait = Duration::from_secs(10);
    let ack = alice.expect_ack(json!({"type": "send", "to": "bob", "body": "hi"}), "dm");
    let seq = ack["seq"].as_u64().unwrap_or_else(|| panic!("{ack}"));
    bob.read_until(wait, |v| v["type"] == "message")
        .unwrap_or_else(|| panic!("the DM: {}", bob.context()));
    alice.expect_ack(json!({"type": "edit", "room": "dm:alice:bob", "seq": seq, "body": "hello"}), "e");
    let u = bob
        .read_until(wait, |v| v["type"] == "update")
        .unwrap_or_else(|| panic!("{}", bob.context()));
    assert_eq!(
        (u["room"].clone(), u["body"].clone()),
        (json!("dm:alice:bob"), json!("hello")),
        "{u}"
    );
    bob.expect_ack(
        json!({"type": "react", "room": "dm:alice:bob", "seq": seq, "emoji": "❤️", "op": "add"}),
        "r",
    );
    let r = alice
        .read_until(wait, |v| v["type"] == "reaction")
        .unwrap_or_else(|| panic!("{}", alice.context()));
    assert_eq!(r["user"], "bob", "{r}");
}
