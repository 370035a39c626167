//! The HTTP API over real sockets against the real binary: publish seen by
//! WebSocket members (one node, and three nodes through a private Redis),
//! history and presence under the WebSocket rules, tokens, the dev-mode
//! sign-in, the admin routes, keep-alive, the page, and every refusal
//! (bad keys, bad JSON, oversized or chunked bodies, unknown routes).

mod cluster_support;
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{drivers, read_banner, temp_data_dir, token, token_with, Client, RedisServer, Server};
use serde_json::{json, Value};

const KEY: &str = "test-api-key-0123456789";
const ENVS: &[(&str, &str)] = &[("EDGE_API_KEYS", "other-key-000000000000,test-api-key-0123456789")];

/// A response: status, head (lower-cased), JSON body (or the raw text as a string).
struct Reply {
    status: u16,
    head: String,
    body: Value,
}

/// One request on a fresh connection (`Connection: close`), read to its end.
fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15))).expect("timeout");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write head");
    s.write_all(body).expect("write body");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    parse_reply(&out)
}

fn parse_reply(raw: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned()));
    Reply {
        status,
        head: head.to_ascii_lowercase(),
        body,
    }
}

/// Writes `raw` as is on a fresh connection and reads the response to its end.
fn raw_request(addr: &str, raw: &str) -> Reply {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s.write_all(raw.as_bytes()).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    parse_reply(&out)
}

fn key_header() -> [(&'static str, &'static str); 1] {
    [("X-API-Key", KEY)]
}

fn publish(addr: &str, room: &str, body: Value, idempotency: Option<&str>) -> Reply {
    let mut h = vec![
        ("Authorization", format!("apikey {KEY}")),
        ("Content-Type", "application/json".into()),
    ];
    if let Some(k) = idempotency {
        h.push(("Idempotency-Key", k.to_owned()));
    }
    let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    http(
        addr,
        "POST",
        &format!("/api/rooms/{room}/messages"),
        &h,
        body.to_string().as_bytes(),
    )
}

fn error_code(r: &Reply) -> &str {
    r.body["error"]["code"].as_str().unwrap_or("<no error.code>")
}

#[test]
fn publish_reaches_members_and_history_and_presence_follow_the_websocket_rules() {
    for driver in drivers() {
        let server = Server::start(driver, ENVS);
        let addr = &server.addr;
        let mut alice = Client::connect(addr, "alice", "");
        alice.join("lobby");

        let r = publish(addr, "lobby", json!({"body": "hello <b>", "user": "bot"}), Some("k1"));
        assert_eq!(r.status, 200, "{driver}: publish {:?}", r.body);
        assert_eq!(
            (r.body["room"].as_str(), r.body["seq"].as_u64()),
            (Some("lobby"), Some(1)),
            "{:?}",
            r.body
        );
        let m = alice.recv_chat();
        assert_eq!(
            (m["type"].as_str(), m["from"].as_str(), m["body"].as_str()),
            (Some("message"), Some("bot"), Some("hello <b>")),
            "{m}"
        );

        // The same Idempotency-Key is the same message: the first ack again, nothing sent.
        let again = publish(addr, "lobby", json!({"body": "hello <b>", "user": "bot"}), Some("k1"));
        assert_eq!((again.status, again.body["seq"].as_u64()), (200, Some(1)), "{:?}", again.body);
        let r = publish(addr, "lobby", json!({"body": "second"}), None);
        assert_eq!(r.body["seq"].as_u64(), Some(2), "{:?}", r.body);
        let m = alice.recv_chat();
        assert_eq!(
            (m["seq"].as_u64(), m["from"].as_str()),
            (Some(2), Some("system")),
            "a retried publish was delivered twice: {m}"
        );

        // History: a user's token, or the key; the rooms claim applies to tokens.
        let bearer = format!("Bearer {}", token("bob"));
        let h = http(
            addr,
            "GET",
            "/api/rooms/lobby/messages?limit=10",
            &[("Authorization", &bearer)],
            b"",
        );
        assert_eq!(h.status, 200, "{:?}", h.body);
        let seqs: Vec<u64> = h.body["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .filter_map(|m| m["seq"].as_u64())
            .collect();
        assert_eq!(seqs, vec![1, 2], "{:?}", h.body);
        let h = http(addr, "GET", "/api/rooms/lobby/messages?limit=1&before=2", &key_header(), b"");
        assert_eq!(h.body["messages"][0]["body"], "hello <b>", "{:?}", h.body);
        let narrow = format!("Bearer {}", token_with("bob", Some(vec!["other".into()])));
        let h = http(addr, "GET", "/api/rooms/lobby/messages", &[("Authorization", &narrow)], b"");
        assert_eq!((h.status, error_code(&h)), (403, "forbidden"), "{:?}", h.body);
        let h = http(
            addr,
            "GET",
            "/api/rooms/dm:alice:carol/messages",
            &[("Authorization", &bearer)],
            b"",
        );
        assert_eq!(h.status, 403, "someone else's DM: {:?}", h.body);
        let h = http(addr, "GET", "/api/rooms/lobby/messages?limit=101", &key_header(), b"");
        assert_eq!((h.status, error_code(&h)), (400, "bad_request"), "{:?}", h.body);

        // A DM published by a backend reaches a recipient who never joined it.
        let mut carol = Client::connect(addr, "carol", "");
        let r = publish(addr, "dm:bot:carol", json!({"body": "psst", "user": "bot"}), None);
        assert_eq!(r.status, 200, "{:?}", r.body);
        let m = carol.recv_chat();
        assert_eq!(
            (m["room"].as_str(), m["body"].as_str()),
            (Some("dm:bot:carol"), Some("psst")),
            "{m}"
        );
        let h = http(addr, "GET", "/api/rooms/dm%3Abot%3Acarol/messages", &key_header(), b"");
        assert_eq!(h.body["messages"][0]["body"], "psst", "a key reads DM rooms too: {:?}", h.body);

        // Presence of a room and of a user.
        let p = http(addr, "GET", "/api/rooms/lobby/presence", &[("Authorization", &bearer)], b"");
        assert_eq!(p.status, 200, "{:?}", p.body);
        assert!(p.body.to_string().contains("alice"), "alice is in lobby: {:?}", p.body);
        let p = http(addr, "GET", "/api/users/alice/presence", &key_header(), b"");
        assert_eq!((p.status, p.body["status"].as_str()), (200, Some("online")), "{:?}", p.body);
        let p = http(addr, "GET", "/api/users/nobody/presence", &key_header(), b"");
        assert_eq!(
            (p.body["status"].as_str(), p.body["last_seen"].clone()),
            (Some("offline"), Value::Null),
            "{:?}",
            p.body
        );
        let p = http(addr, "GET", "/api/users/no:colon/presence", &key_header(), b"");
        assert_eq!(p.status, 400, "{:?}", p.body);
        server.stop_clean();
    }
}

#[test]
fn refusals_are_clear_errors_and_the_node_keeps_serving() {
    let envs = [
        ENVS[0],
        ("EDGE_API_MAX_BODY_BYTES", "2048"),
        ("EDGE_HANDSHAKE_TIMEOUT_MS", "1000"),
        ("EDGE_MAX_BODY_CHARS", "50"),
    ];
    let server = Server::start("io_uring", &envs);
    let addr = &server.addr;
    let json_ct = ("Content-Type", "application/json");
    let cases: Vec<(&str, Reply, u16, &str)> = vec![
        (
            "no key",
            http(addr, "POST", "/api/rooms/r/messages", &[json_ct], br#"{"body":"x"}"#),
            401,
            "unauthorized",
        ),
        (
            "wrong key",
            http(
                addr,
                "POST",
                "/api/rooms/r/messages",
                &[("X-API-Key", "wrong-key-000000000000")],
                br#"{"body":"x"}"#,
            ),
            401,
            "unauthorized",
        ),
        (
            "user token on a key route",
            http(
                addr,
                "POST",
                "/api/tokens",
                &[("Authorization", &format!("Bearer {}", token("bob")))],
                br#"{"user":"x"}"#,
            ),
            403,
            "forbidden",
        ),
        (
            "bad token",
            http(addr, "GET", "/api/rooms/r/messages", &[("Authorization", "Bearer not.a.jwt")], b""),
            401,
            "unauthorized",
        ),
        (
            "no credentials",
            http(addr, "GET", "/api/rooms/r/messages", &[], b""),
            401,
            "unauthorized",
        ),
        (
            "bad JSON",
            http(addr, "POST", "/api/rooms/r/messages", &key_header(), b"{\"body\":"),
            400,
            "bad_request",
        ),
        (
            "not an object",
            http(addr, "POST", "/api/rooms/r/messages", &key_header(), b"[1]"),
            400,
            "bad_request",
        ),
        (
            "no body field",
            http(addr, "POST", "/api/rooms/r/messages", &key_header(), b"{}"),
            400,
            "bad_request",
        ),
        (
            "body over max_body_chars",
            http(
                addr,
                "POST",
                "/api/rooms/r/messages",
                &key_header(),
                json!({"body": "x".repeat(51)}).to_string().as_bytes(),
            ),
            413,
            "too_large",
        ),
        (
            "bad room",
            http(addr, "POST", "/api/rooms/bad%20room/messages", &key_header(), br#"{"body":"x"}"#),
            400,
            "bad_request",
        ),
        (
            "oversized body",
            http(addr, "POST", "/api/rooms/r/messages", &key_header(), &vec![b' '; 4096]),
            413,
            "too_large",
        ),
        ("unknown route", http(addr, "GET", "/api/nothing", &[], b""), 404, "not_found"),
        (
            "wrong method",
            http(addr, "DELETE", "/api/rooms/r/messages", &key_header(), b""),
            405,
            "method_not_allowed",
        ),
        (
            "unknown token field",
            http(addr, "POST", "/api/tokens", &key_header(), br#"{"user":"a","roms":["x"]}"#),
            400,
            "bad_request",
        ),
        (
            "dev token off dev mode",
            http(addr, "POST", "/api/dev/token", &[], br#"{"user":"a"}"#),
            404,
            "not_found",
        ),
    ];
    for (what, r, status, code) in &cases {
        assert_eq!((r.status, error_code(r)), (*status, *code), "{what}: {:?}", r.body);
        assert!(r.head.contains("content-type: application/json"), "{what}: {}", r.head);
    }
    assert!(
        cases[12].1.head.contains("allow: get, post"),
        "405 names the allowed methods: {}",
        cases[12].1.head
    );

    // Chunked bodies are refused with 411; a body that never arrives with 408.
    let chunked =
        format!("POST /api/rooms/r/messages HTTP/1.1\r\nX-API-Key: {KEY}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
    let r = raw_request(addr, &chunked);
    assert_eq!((r.status, error_code(&r)), (411, "length_required"), "{:?}", r.body);
    let short = format!("POST /api/rooms/r/messages HTTP/1.1\r\nX-API-Key: {KEY}\r\nContent-Length: 100\r\n\r\n{{\"bo");
    let r = raw_request(addr, &short);
    assert_eq!((r.status, error_code(&r)), (408, "timeout"), "{:?}", r.body);
    // Two Content-Lengths that disagree (request smuggling) are refused.
    let two = format!("POST /api/tokens HTTP/1.1\r\nX-API-Key: {KEY}\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{{}}");
    assert_eq!(raw_request(addr, &two).status, 400);

    // Still serving, and nothing of the refused publishes was stored.
    let h = http(addr, "GET", "/api/rooms/r/messages", &key_header(), b"");
    assert_eq!(
        (h.status, h.body["messages"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{:?}",
        h.body
    );
    server.stop_clean();
}

#[test]
fn tokens_minted_over_http_open_a_socket() {
    let server = Server::start("epoll", ENVS);
    let addr = &server.addr;
    let r = http(
        addr,
        "POST",
        "/api/tokens",
        &key_header(),
        br#"{"user":"dana","rooms":["team-*"],"ttl_s":600,"name":"Dana"}"#,
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    let tok = r.body["token"].as_str().expect("token").to_owned();
    assert_eq!(r.body["user"], "dana");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let exp = r.body["expires_at"].as_u64().expect("expires_at");
    assert!((now + 590..=now + 610).contains(&exp), "exp {exp} now {now}");
    let mut c = Client::connect_raw_query(addr, &format!("token={tok}")).expect("upgrade with the minted token");
    let w = c.recv_type("welcome");
    assert_eq!(w["user"], "dana", "{w}");
    // The rooms claim it was minted with holds.
    let r = c.request(json!({"type": "join", "room": "lobby"}), "j");
    assert_eq!((r["type"].as_str(), r["code"].as_str()), (Some("error"), Some("forbidden")), "{r}");
    c.join("team-a");
    let r = http(addr, "POST", "/api/tokens", &key_header(), br#"{"user":"dana","ttl_s":0}"#);
    assert_eq!(r.status, 400, "{:?}", r.body);
    server.stop_clean();
}

#[test]
fn a_dev_node_mints_tokens_for_any_user_name() {
    let dir = temp_data_dir("dev");
    let mut child = Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["serve", "--listen", "127.0.0.1:0", "--cores", "2", "--data-dir"])
        .arg(&dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let (_, addr) = read_banner(&mut child);
    let r = http(&addr, "POST", "/api/dev/token", &[], br#"{"user":"erin"}"#);
    assert_eq!(r.status, 200, "{:?}", r.body);
    let tok = r.body["token"].as_str().expect("token");
    let mut c = Client::connect_raw_query(&addr, &format!("token={tok}")).expect("upgrade");
    assert_eq!(c.recv_type("welcome")["user"], "erin");
    let r = http(&addr, "POST", "/api/dev/token", &[], br#"{"user":"bad name"}"#);
    assert_eq!(r.status, 400, "{:?}", r.body);
    // The page is served by the node itself, behind a strict CSP.
    let page = http(&addr, "GET", "/", &[], b"");
    assert_eq!(page.status, 200);
    assert!(page.head.contains("content-type: text/html"), "{}", page.head);
    assert!(page.head.contains("content-security-policy: default-src 'self'"), "{}", page.head);
    let js = http(&addr, "GET", "/app.js", &[], b"");
    assert!(js.status == 200 && js.head.contains("text/javascript"), "{}", js.head);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn admin_counts_shards_and_disconnects_a_user_everywhere_on_the_node() {
    let server = Server::start("io_uring", ENVS);
    let addr = &server.addr;
    // Four connections of frank: by `?room=` they land on the rooms' owner shards.
    let rooms = ["a", "b", "c", "d"];
    let mut franks: Vec<Client> = rooms
        .iter()
        .map(|r| Client::connect(addr, "frank", &format!("&room={r}")))
        .collect();
    let shards: std::collections::BTreeSet<u64> = franks.iter().map(Client::shard).collect();
    let _gina = Client::connect(addr, "gina", "");
    let r = http(addr, "GET", "/api/admin/shards", &key_header(), b"");
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["shards"].as_array().map(Vec::len), Some(2), "{:?}", r.body);
    assert_eq!(
        r.body["connections"].as_u64(),
        Some(5),
        "API requests are not counted as connections: {:?}",
        r.body
    );

    let r = http(
        addr,
        "POST",
        "/api/admin/users/frank/disconnect",
        &key_header(),
        br#"{"reason":"moved","retry_ms":500}"#,
    );
    assert_eq!(
        (r.status, r.body["closed"].as_u64()),
        (200, Some(4)),
        "frank had 4 connections on shards {shards:?}: {:?}",
        r.body
    );
    for f in &mut franks {
        let hint = f.recv_type("reconnect");
        assert_eq!(
            (hint["retry_ms"].as_u64(), hint["reason"].as_str()),
            (Some(500), Some("moved")),
            "{hint}"
        );
        assert_eq!(f.close_code(), Some(4001));
    }
    let r = http(addr, "POST", "/api/admin/users/frank/disconnect", &key_header(), b"");
    assert_eq!(r.body["closed"].as_u64(), Some(0), "{:?}", r.body);
    let r = http(
        addr,
        "POST",
        "/api/admin/users/gina/disconnect",
        &key_header(),
        br#"{"retry_ms":99999999}"#,
    );
    assert_eq!(r.status, 400, "{:?}", r.body);
    server.stop_clean();
}

#[test]
fn a_kept_alive_connection_serves_requests_in_turn() {
    let server = Server::start("epoll", ENVS);
    let mut s = TcpStream::connect(&server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = br#"{"body":"one"}"#;
    let pipelined = format!(
        "POST /api/rooms/k/messages HTTP/1.1\r\nX-API-Key: {KEY}\r\nContent-Length: {}\r\n\r\n{}GET /api/rooms/k/messages HTTP/1.1\r\nX-API-Key: {KEY}\r\nConnection: close\r\n\r\n",
        body.len(),
        std::str::from_utf8(body).unwrap()
    );
    s.write_all(pipelined.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    assert!(text.contains("\"seq\":1") && text.contains("\"body\":\"one\""), "{text}");
    server.stop_clean();
}

#[test]
fn a_publish_on_one_node_reaches_members_on_three() {
    let redis = RedisServer::start();
    let mut envs = cluster_support::ENVS.to_vec();
    envs.push(ENVS[0]);
    let nodes = cluster_support::start_cluster_with(3, &redis, &envs);
    let mut members: Vec<Client> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let mut c = Client::connect(&n.addr, &format!("m{i}"), "");
            c.join("all");
            c
        })
        .collect();
    let r = publish(&nodes[0].addr, "all", json!({"body": "to everyone", "user": "ops"}), Some("once"));
    assert_eq!(r.status, 200, "{:?}", r.body);
    let seq = r.body["seq"].as_u64().expect("seq");
    for (i, m) in members.iter_mut().enumerate() {
        let got = m.recv_chat();
        assert_eq!(
            (got["body"].as_str(), got["seq"].as_u64(), got["from"].as_str()),
            (Some("to everyone"), Some(seq), Some("ops")),
            "node {}: {got}",
            i + 1
        );
    }
    // History over HTTP on another node sees it too (the Redis stream in cluster mode).
    let h = http(&nodes[2].addr, "GET", "/api/rooms/all/messages", &key_header(), b"");
    assert_eq!(h.body["messages"][0]["body"], "to everyone", "{:?}", h.body);

    // A disconnect asked of node 1 reaches the user's connections on nodes 2 and 3.
    let mut zeds: Vec<Client> = nodes[1..].iter().map(|n| Client::connect(&n.addr, "zed", "")).collect();
    let asked = || {
        http(
            &nodes[0].addr,
            "POST",
            "/api/admin/users/zed/disconnect",
            &key_header(),
            br#"{"reason":"ban","retry_ms":1000}"#,
        )
    };
    // Each node subscribes the user's channel as the connection opens: wait until both did.
    let subscribed = cluster_support::eventually(Duration::from_secs(10), || cluster_support::numsub(redis.port(), "user/zed") == 2);
    assert!(subscribed, "nodes 2 and 3 subscribe zed's channel");
    let r = asked();
    assert_eq!(
        (r.status, r.body["closed"].as_u64(), r.body["other_nodes_asked"].as_bool()),
        (200, Some(0), Some(true)),
        "{:?}",
        r.body
    );
    for z in &mut zeds {
        z.ws.get_mut().set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let hint = z.recv_type("reconnect");
        assert_eq!(hint["reason"], "ban", "{hint}");
        assert_eq!(z.close_code(), Some(4001));
    }
}
