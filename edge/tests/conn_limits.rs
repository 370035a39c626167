//! Connection limits over real sockets (issue 14), on both io drivers: per user (a token in
//! the URL is refused 429 before the upgrade; an in-band `auth` gets an error and close 1013),
//! per client address (`X-Forwarded-For` only from `trusted_proxies`), and per node (503).
//! Each limit holds, the refused client is told when to retry, a released slot can be used
//! again, and the clients already connected are unaffected.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::{metric_sum, token, Client, Server};
use serde_json::json;

fn on_both_drivers(envs: &[(&str, &str)], f: impl Fn(&mut Server)) {
    for driver in common::drivers() {
        let mut server = Server::start(driver, envs);
        f(&mut server);
    }
}

/// An upgrade from source address `from` with extra header lines; the response head, and the
/// socket (open when upgraded).
fn upgrade(addr: &str, from: [u8; 4], query: &str, headers: &str) -> (String, TcpStream) {
    let target: SocketAddr = addr.parse().expect("addr");
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.bind(&SocketAddr::from((from, 0)).into()).expect("bind the source address");
    socket.connect(&target.into()).expect("connect");
    let mut s: TcpStream = socket.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let req = format!(
        "GET /ws?{query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
    );
    s.write_all(req.as_bytes()).expect("write");
    let head = common::read_head(&mut s);
    (head, s)
}

fn status(head: &str) -> u16 {
    head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn body(mut s: TcpStream) -> String {
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn a_user_over_max_conns_per_user_is_refused_until_a_connection_closes() {
    let envs = [("EDGE_MAX_CONNS_PER_USER", "3"), ("EDGE_CONN_LIMIT_RETRY_MS", "1500")];
    on_both_drivers(&envs, |s| {
        let mut held: Vec<Client> = (0..3).map(|_| Client::connect(&s.addr, "alice", "")).collect();
        let limits = &held[0].welcome["limits"];
        assert_eq!(limits["max_conns_per_user"], 3, "welcome.limits advertises it: {limits}");
        assert!(limits["max_conns_per_ip"].is_null(), "no per-address limit: null");

        // A token in the URL: 429 before the upgrade, with the retry hint.
        let (head, sock) = upgrade(&s.addr, [127, 0, 0, 1], &format!("token={}", token("alice")), "");
        assert_eq!(status(&head), 429, "{head}");
        assert_eq!(header(&head, "Retry-Ms"), Some("1500"), "{head}");
        assert_eq!(header(&head, "Retry-After"), Some("2"), "{head}");
        let b = body(sock);
        assert!(
            b.contains(r#""code":"rate_limited""#) && b.contains("too many connections for this user"),
            "{b}"
        );

        // In-band auth: the upgrade happens, then an error and close 1013.
        let mut late = Client::connect_raw_query(&s.addr, "").expect("upgrade without a token");
        late.send(json!({"type": "auth", "token": token("alice"), "id": 1}));
        let e = late.recv();
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some("rate_limited")),
            "{e}"
        );
        assert_eq!(e["retry_ms"], 1500);
        assert_eq!(late.close_code(), Some(1013));

        // Another user is unaffected, and so are alice's connections.
        let mut bob = Client::connect(&s.addr, "bob", "");
        assert_eq!(bob.request(json!({"type": "ping"}), "p")["type"], "pong");
        assert_eq!(held[2].request(json!({"type": "ping"}), "p")["type"], "pong");
        assert_eq!(metric_sum(&s.addr, "conns_refused_user_total"), 2);

        // A closed connection gives its slot back (the server sees the close first).
        let mut gone = held.pop().expect("three");
        gone.ws.close(None).expect("close");
        while gone.ws.read().is_ok() {}
        let again = eventually(|| Client::connect_raw_query(&s.addr, &format!("token={}", token("alice"))).ok());
        drop(again);
    });
}

#[test]
fn max_conns_per_ip_counts_the_forwarded_address_only_from_trusted_proxies() {
    let envs = [("EDGE_MAX_CONNS_PER_IP", "2"), ("EDGE_TRUSTED_PROXIES", "127.0.0.1")];
    on_both_drivers(&envs, |s| {
        let q = |u: &str| format!("token={}", token(u));
        // Through the trusted proxy (127.0.0.1): counted under the forwarded client address.
        let xff = |ip: &str| format!("X-Forwarded-For: {ip}, 127.0.0.1\r\n");
        let mut held = Vec::new();
        for u in ["a1", "a2"] {
            let (head, sock) = upgrade(&s.addr, [127, 0, 0, 1], &q(u), &xff("203.0.113.7"));
            assert_eq!(status(&head), 101, "{head}");
            held.push(sock);
        }
        let (head, _) = upgrade(&s.addr, [127, 0, 0, 1], &q("a3"), &xff("203.0.113.7"));
        assert_eq!(status(&head), 429, "a third from the same client: {head}");
        assert!(header(&head, "Retry-Ms").is_some(), "{head}");
        let (head, sock) = upgrade(&s.addr, [127, 0, 0, 1], &q("b1"), &xff("198.51.100.1"));
        assert_eq!(status(&head), 101, "another client behind the same proxy: {head}");
        held.push(sock);

        // From a peer that is not trusted, the header is ignored: the peer is the client.
        for (i, forged) in ["192.0.2.1", "192.0.2.2"].iter().enumerate() {
            let (head, sock) = upgrade(&s.addr, [127, 0, 0, 2], &q(&format!("c{i}")), &xff(forged));
            assert_eq!(status(&head), 101, "{head}");
            held.push(sock);
        }
        let (head, _) = upgrade(&s.addr, [127, 0, 0, 2], &q("c9"), &xff("192.0.2.3"));
        assert_eq!(status(&head), 429, "a forged X-Forwarded-For does not escape the limit: {head}");
        assert_eq!(metric_sum(&s.addr, "conns_refused_ip_total"), 2);
        // The held connections still work.
        let mut c = Client::connect(&s.addr, "z", "");
        assert_eq!(
            c.request(json!({"type": "ping"}), "p")["type"],
            "pong",
            "127.0.0.1 itself is its own client"
        );
    });
}

#[test]
fn a_full_node_refuses_with_503_or_1013_and_its_clients_keep_chatting() {
    on_both_drivers(&[("EDGE_MAX_CONNS", "3")], |s| {
        let mut a = Client::connect(&s.addr, "a", "");
        let mut b = Client::connect(&s.addr, "b", "");
        let _c = Client::connect(&s.addr, "c", "");
        let (head, sock) = upgrade(&s.addr, [127, 0, 0, 1], &format!("token={}", token("d")), "");
        assert_eq!(status(&head), 503, "{head}");
        assert!(body(sock).contains("the node holds its maximum of connections"));
        a.join("r");
        b.join("r");
        let ack = a.request(json!({"type": "send", "room": "r", "body": "still here"}), "s");
        assert_eq!(ack["type"], "ack", "{ack}");
        assert_eq!(b.recv_type("message")["body"], "still here");
        assert_eq!(metric_sum(&s.addr, "conns_refused_node_total"), 1);
    });
    // With admission_refusal = "close1013" the refusal comes after the upgrade.
    on_both_drivers(&[("EDGE_MAX_CONNS", "1"), ("EDGE_ADMISSION_REFUSAL", "close1013")], |s| {
        let _a = Client::connect(&s.addr, "a", "");
        let mut late = Client::connect_raw_query(&s.addr, &format!("token={}", token("b"))).expect("upgraded");
        assert_eq!(late.close_code(), Some(1013));
    });
}

/// Retries `f` for up to 5 s.
fn eventually<T>(mut f: impl FnMut() -> Option<T>) -> T {
    let until = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(std::time::Instant::now() < until, "not within 5 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}
