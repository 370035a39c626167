//! Hardening over real sockets (issue 14), on both io drivers: refused frames are not free,
//! a trickle is silence, URL joins are rated, tokens expire unless refreshed, the echo
//! endpoint's checks, `admin_listen`, rooms' recent rings bounded in bytes, and the bound of
//! the cross-core spill queue.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{http_get, token, Client, Raw, Server};
use serde_json::json;

/// Runs `f` once per io driver.
fn on_both_drivers(envs: &[(&str, &str)], f: impl Fn(&mut Server)) {
    for driver in common::drivers() {
        let mut server = Server::start(driver, envs);
        assert_eq!(server.driver, driver, "the node must say which driver runs");
        f(&mut server);
    }
}

#[test]
fn a_stream_of_refused_frames_is_closed_4029_and_errors_do_not_echo_bulk() {
    // Each refusal echoes at most 128 bytes of the input; 20 refusals in a row
    // (`rate_limit_strikes`) close the connection, while another client is unaffected.
    on_both_drivers(&[("EDGE_MAX_MSGS_PER_S", "100000"), ("EDGE_MSGS_BURST", "100000")], |s| {
        let mut other = Client::connect(&s.addr, "bob", "");
        let mut c = Client::connect(&s.addr, "alice", "");
        let huge = "x".repeat(60_000);
        let e = c.request(json!({"type": "history", "room": "r", "before": huge}), "big");
        assert_eq!(e["code"], "bad_request", "{e}");
        assert!(e.to_string().len() < 400, "the refusal of a 60 KB field is short: {e}");
        for _ in 0..3000 {
            c.send(json!({}));
        }
        let mut replies = 0;
        let code = loop {
            match c.ws.read() {
                Ok(tungstenite::Message::Text(_)) => replies += 1,
                Ok(tungstenite::Message::Close(f)) => break f.map(|f| u16::from(f.code)),
                Ok(_) => {}
                Err(e) => panic!("read error before the close: {e}"),
            }
        };
        assert_eq!(code, Some(4029), "closed for refused frames after {replies} replies");
        assert!(replies <= 20, "{replies} error replies before the close (rate_limit_strikes is 20)");
        let p = other.request(json!({"type": "ping"}), "p");
        assert_eq!(p["type"], "pong", "the other client is unaffected");
    });
}

#[test]
fn a_trickle_of_bytes_does_not_keep_a_connection_alive_but_complete_frames_do() {
    // Idle after 1.5 s; the sweep runs each second. The trickler sends one byte of a frame it
    // never finishes every 200 ms (and never answers the server's pings); the pinger sends a
    // complete ping frame every 200 ms. Both go on for 4 s; a thread waits for the
    // trickler's close meanwhile.
    let envs = [("EDGE_IDLE_TIMEOUT_MS", "1500"), ("EDGE_HEARTBEAT_MS", "500")];
    on_both_drivers(&envs, |s| {
        let mut trickler = Raw::connect(&s.addr, &format!("token={}", token("t")));
        let mut pinger = Raw::connect(&s.addr, &format!("token={}", token("p")));
        let mut watch = Raw {
            s: trickler.s.try_clone().expect("clone"),
        };
        let waiter = std::thread::spawn(move || (watch.close_code(), std::time::Instant::now()));
        let frame = Raw::frame(
            0x1,
            true,
            br#"{"type":"ping","id":1,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#,
            true,
        );
        let started = std::time::Instant::now();
        let mut sent = 0;
        while started.elapsed() < Duration::from_secs(4) {
            if !waiter.is_finished() {
                let _ = trickler.s.write_all(&frame[sent..=sent]);
                sent += 1;
            }
            pinger.write(&Raw::frame(0x9, true, b"hb", true));
            std::thread::sleep(Duration::from_millis(200));
        }
        let trickling_ended = std::time::Instant::now();
        assert!(sent < frame.len() - 1, "the frame must outlast the test ({sent} bytes sent)");
        let (code, at) = waiter.join().expect("waiter");
        assert_eq!(code, Some(1001), "a trickle is silence: closed idle");
        assert!(at < trickling_ended, "closed while it was still trickling");
        // The pinger, alive for 4 s (past the idle timeout twice), is still served: its
        // request is answered and nothing closed it.
        pinger.s.set_read_timeout(Some(Duration::from_millis(500))).expect("timeout");
        pinger.write(&Raw::frame(0x1, true, br#"{"type":"ping"}"#, true));
        assert_ne!(pinger.close_code(), Some(1001), "complete frames keep a connection alive");
    });
}

#[test]
fn joins_in_the_url_count_toward_the_rate() {
    // A burst of 3 and a slow refill: of four rooms in `resume=`, three are joined and the
    // fourth is refused rate_limited; the next frame finds the burst spent as well.
    on_both_drivers(&[("EDGE_MSGS_BURST", "3"), ("EDGE_MAX_MSGS_PER_S", "0.1")], |s| {
        let mut c = Client::connect(&s.addr, "alice", "&resume=a:0,b:0,c:0,d:0");
        let frames: Vec<serde_json::Value> = (0..4).map(|_| c.recv()).collect();
        let mut joined: Vec<&str> = frames
            .iter()
            .filter(|f| f["type"] == "joined")
            .filter_map(|f| f["room"].as_str())
            .collect();
        joined.sort_unstable();
        assert_eq!(joined, ["a", "b", "c"], "{frames:?}");
        assert!(
            frames
                .iter()
                .any(|f| f["code"] == "rate_limited" && f["message"] == "join d: too many requests"),
            "the refusal names the room: {frames:?}"
        );
        let p = c.request(json!({"type": "ping"}), "p");
        assert_eq!(p["code"], "rate_limited", "{p}");
    });
}

#[test]
fn the_echo_endpoint_honours_origin_like_ws() {
    let envs = [("EDGE_ECHO_PATH", "/echo"), ("EDGE_ALLOWED_ORIGINS", "https://good.example")];
    on_both_drivers(&envs, |s| {
        let status = |origin: &str| {
            let mut t = std::net::TcpStream::connect(&s.addr).expect("connect");
            t.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
            let req = format!(
                "GET /echo HTTP/1.1\r\nHost: {}\r\nOrigin: {origin}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                s.addr
            );
            t.write_all(req.as_bytes()).expect("write");
            let head = common::read_head(&mut t);
            head.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok()).unwrap_or(0)
        };
        assert_eq!(status("https://evil.example"), 403, "a foreign origin is refused on /echo too");
        assert_eq!(status("https://good.example"), 101);
    });
}

#[test]
fn a_session_ends_when_its_token_expires_unless_refreshed() {
    // Tokens good for 2 s, no leeway: the plain session is closed 1008 "token expired";
    // the one that refreshed (same user) is still served after 4 s.
    on_both_drivers(&[("EDGE_JWT_LEEWAY_S", "0")], |s| {
        let now_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let short = |user: &str| edge::auth::mint_hs256(common::SECRET, user, 2, None, None, now_s).expect("token");
        let mut plain = Client::connect_raw_query(&s.addr, &format!("token={}", short("ann"))).expect("upgrade");
        assert_eq!(plain.recv()["type"], "welcome");
        let mut kept = Client::connect_raw_query(&s.addr, &format!("token={}", short("bob"))).expect("upgrade");
        assert_eq!(kept.recv()["type"], "welcome");
        let other = edge::auth::mint_hs256(common::SECRET, "eve", 3600, None, None, now_s).expect("token");
        let refused = kept.request(json!({"type": "refresh", "token": other}), "r0");
        assert_eq!(refused["code"], "forbidden", "another user's token: {refused}");
        let long = edge::auth::mint_hs256(common::SECRET, "bob", 3600, None, None, now_s).expect("token");
        let r = kept.request(json!({"type": "refresh", "token": long}), "r1");
        assert_eq!(
            (r["type"].as_str(), r["exp"].as_u64()),
            (Some("refreshed"), Some(now_s + 3600)),
            "{r}"
        );
        let code = loop {
            match plain.ws.read() {
                Ok(tungstenite::Message::Close(f)) => break f.map(|f| (u16::from(f.code), f.reason.to_string())),
                Ok(_) => {}
                Err(e) => panic!("read error before the close: {e}"),
            }
        };
        assert_eq!(code, Some((1008, "token expired".to_owned())));
        std::thread::sleep(Duration::from_secs(2));
        let p = kept.request(json!({"type": "ping"}), "p");
        assert_eq!(p["type"], "pong", "the refreshed session lives on");
    });
}

#[test]
fn with_admin_listen_the_operator_endpoints_leave_the_public_port() {
    // On 127.0.0.3: a port free on 127.0.0.1 can be taken, before the node binds it, as the
    // ephemeral port of another test's client (they connect from 127.0.0.1).
    let port = std::net::TcpListener::bind("127.0.0.3:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let admin = format!("127.0.0.3:{port}");
    on_both_drivers(&[("EDGE_ADMIN_LISTEN", admin.as_str())], |s| {
        let status = |addr: &str, path: &str| -> (u16, String) {
            let text = http_get(addr, path);
            let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
            (code, text)
        };
        for path in ["/metrics", "/healthz", "/readyz"] {
            assert_eq!(status(&s.addr, path).0, 404, "{path} is not served on the public port");
        }
        let (code, metrics) = status(&admin, "/metrics");
        assert_eq!(code, 200);
        assert!(metrics.contains("edge_info"), "the metrics, on the admin address");
        assert_eq!(status(&admin, "/healthz").0, 200);
        assert_eq!(status(&admin, "/readyz").0, 200);
        assert_eq!(status(&admin, "/ws").0, 404, "only the operator's endpoints there");
        // Chat is untouched on the public port.
        let mut c = Client::connect(&s.addr, "alice", "");
        assert_eq!(c.request(json!({"type": "ping"}), "p")["type"], "pong");
    });
}

#[test]
fn rooms_keep_recent_messages_within_their_byte_bound_and_lose_nothing() {
    // A 4 KiB ring and 1 KiB messages: a room keeps about four; a late joiner's catch-up
    // from 0 and the history pages still get all thirty (from the store), in order.
    on_both_drivers(&[("EDGE_RECENT_PER_ROOM_BYTES", "4096"), ("EDGE_MAX_MSGS_PER_S", "1000")], |s| {
        let mut a = Client::connect(&s.addr, "alice", "");
        a.join("big");
        for i in 0..30 {
            let ack = a.request(
                json!({"type": "send", "room": "big", "body": format!("{i:04}{}", "x".repeat(1000))}),
                &format!("s{i}"),
            );
            assert_eq!(ack["type"], "ack", "{ack}");
        }
        let text = http_get(&s.addr, "/metrics");
        let evicted_total: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("edge_ring_bytes_evicted_total ")?.trim().parse().ok())
            .expect("edge_ring_bytes_evicted_total");
        assert!(evicted_total >= 20, "the byte bound dropped the oldest ({evicted_total})");
        let mut b = Client::connect(&s.addr, "bob", "");
        let joined = b.request(json!({"type": "join", "room": "big", "since": 0}), "j");
        assert_eq!(joined["type"], "joined", "{joined}");
        let seqs: Vec<u64> = (0..30)
            .map(|_| {
                let m = b.recv_chat();
                m["seq"].as_u64().unwrap_or_else(|| panic!("a message: {m}"))
            })
            .collect();
        assert_eq!(seqs, (1..=30).collect::<Vec<_>>(), "the catch-up is whole, in order");
        let page = b.request(json!({"type": "history", "room": "big", "limit": 30}), "h");
        let got: Vec<u64> = page["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .filter_map(|m| m["seq"].as_u64())
            .collect();
        assert_eq!(got, (1..=30).collect::<Vec<_>>(), "history is whole too");
    });
}

#[test]
fn a_full_spill_queue_refuses_new_sends_and_loses_nothing_taken() {
    // Room `spill-r` is owned by one shard; its sender is placed there and its 100 members on
    // the other shard, so every message is a frame across the mesh. The sender pipelines
    // 5,000 sends; with rings of 64 frames and a spill bound of 8 the owner refuses sends while they
    // wait, and every message it acked reaches the members, gap-free and in order.
    let envs = [
        ("EDGE_MESH_SPILL_MAX_FRAMES", "8"),
        ("EDGE_MESH_RING_CAPACITY", "64"),
        ("EDGE_MAX_MSGS_PER_S", "1000000"),
        ("EDGE_MSGS_BURST", "1000000"),
        ("EDGE_OUTBOUND_QUEUE_MAX_BYTES", "16777216"),
        ("EDGE_OUTBOUND_QUEUE_MAX_FRAMES", "100000"),
    ];
    const SENDS: usize = 5000;
    on_both_drivers(&envs, |s| {
        let room = "spill-r";
        let owner = edge::room::owner(room, 2);
        let other_room = (0..)
            .map(|i| format!("o{i}"))
            .find(|r| edge::room::owner(r, 2) != owner)
            .expect("a room");
        let mut sender = Client::connect(&s.addr, "sender", &format!("&room={room}"));
        assert_eq!(sender.shard() as usize, owner, "the sender is on the owner shard");
        let mut members: Vec<Client> = (0..100)
            .map(|i| {
                let mut m = Client::connect(&s.addr, &format!("m{i}"), &format!("&room={other_room}"));
                assert_ne!(m.shard() as usize, owner, "members are on the other shard");
                m.join(room);
                m
            })
            .collect();
        for i in 0..SENDS {
            sender.send(json!({"type": "send", "room": room, "body": format!("b{i}"), "id": format!("s{i}")}));
        }
        let (mut acked, mut refused) = (Vec::new(), 0);
        while acked.len() + refused < SENDS {
            let v = sender.recv();
            match v["type"].as_str() {
                Some("ack") => acked.push(v["seq"].as_u64().expect("seq")),
                Some("error") => {
                    assert_eq!(v["code"], "overloaded", "{v}");
                    assert!(
                        v["message"].as_str().is_some_and(|m| m.contains("outbound queue is backed up")),
                        "{v}"
                    );
                    refused += 1;
                }
                _ => {}
            }
        }
        eprintln!("spill bound: {} acked, {refused} refused", acked.len());
        assert!(refused > 0, "the bound was never reached: {} acked", acked.len());
        assert!(common::metric_sum(&s.addr, "mesh_spill_refused_total") >= refused as u64);
        assert_eq!(acked, (1..=acked.len() as u64).collect::<Vec<_>>(), "acked seqs are gap-free");
        let m = &mut members[99];
        for want in 1..=acked.len() as u64 {
            let v = m.recv_type("message");
            assert_eq!(v["seq"], want, "every acked message reaches the members in order: {v}");
        }
    });
}

#[test]
fn an_idle_connection_frees_its_decoder_and_buffers_and_still_decodes_whole() {
    // The once-a-second sweep drops a silent connection's decoder when it holds nothing
    // partial, and its outbox's buffers when nothing was written. What must hold: a message
    // fragmented across sweeps, and a header split across them, still decode whole; after
    // the drops the connection still reads and writes.
    on_both_drivers(&[], |s| {
        let next_of = |raw: &mut Raw, ty: &str| loop {
            let v = raw.next_json();
            if v["type"] == ty {
                return v;
            }
        };
        let mut bob = Client::connect(&s.addr, "bob", "");
        bob.join("r");
        let mut raw = Raw::connect(&s.addr, &format!("token={}", token("ann")));
        assert_eq!(next_of(&mut raw, "welcome")["type"], "welcome");
        raw.write(&Raw::frame(0x1, true, br#"{"type":"join","room":"r","id":"j"}"#, true));
        assert_eq!(next_of(&mut raw, "joined")["room"], "r");
        let pause = || std::thread::sleep(Duration::from_millis(2_300));
        // A send in two fragments, a ping between them, two sweeps in the middle.
        let send = br#"{"type":"send","room":"r","body":"across the sweep","id":"s1"}"#;
        let (head, tail) = send.split_at(20);
        raw.write(&Raw::frame(0x1, false, head, true));
        pause();
        raw.write(&Raw::frame(0x9, true, b"hb", true));
        raw.write(&Raw::frame(0x0, true, tail, true));
        let ack = next_of(&mut raw, "ack");
        assert_eq!(ack["id"], "s1", "{ack}");
        assert_eq!(bob.recv_type("message")["body"], "across the sweep");
        // Silent past two sweeps (the decoder at rest is dropped), then a frame whose
        // header is split across two more.
        pause();
        let ping = Raw::frame(0x1, true, br#"{"type":"ping","id":"p1"}"#, true);
        raw.write(&ping[..1]);
        pause();
        raw.write(&ping[1..]);
        let pong = next_of(&mut raw, "pong");
        assert_eq!(pong["id"], "p1", "{pong}");
        // Idle again, then live traffic from another member still arrives.
        pause();
        let ack = bob.request(json!({"type": "send", "room": "r", "body": "to an idle one"}), "b1");
        assert_eq!(ack["type"], "ack", "{ack}");
        assert_eq!(next_of(&mut raw, "message")["body"], "to an idle one");
    });
}
