//! End-to-end tests: the real `edge` binary on loopback with 2 shards and
//! real WebSocket clients, on both io drivers.

mod common;

use std::time::Duration;

use common::{close_code_u16, drivers, http_get, token, Client, Raw, Server};
use serde_json::json;

/// Runs `f` once per io driver.
fn on_both_drivers(envs: &[(&str, &str)], f: impl Fn(&mut Server)) {
    for driver in drivers() {
        let mut server = Server::start(driver, envs);
        assert_eq!(server.driver, driver, "the node must say which driver runs");
        f(&mut server);
    }
}

#[test]
fn two_clients_exchange_messages_with_acks_and_identical_seqs() {
    on_both_drivers(&[], |s| {
        let mut a = Client::connect(&s.addr, "alice", "");
        let mut b = Client::connect(&s.addr, "bob", "");
        assert_eq!(a.welcome["user"], "alice");
        let ja = a.join("lobby");
        assert_eq!(ja["room"], "lobby");
        let jb = b.join("lobby");
        assert_eq!(jb["members"], 2);
        for i in 0..5 {
            let ack = a.request(
                json!({"type": "send", "room": "lobby", "body": format!("hi {i}")}),
                &format!("s{i}"),
            );
            assert_eq!(ack["type"], "ack", "{ack}");
            let got = b.recv_type("message");
            assert_eq!(got["seq"], ack["seq"]);
            assert_eq!(got["msg_id"], ack["msg_id"]);
            assert_eq!(got["body"], format!("hi {i}"));
            assert_eq!(got["from"], "alice");
            let own = a.recv_type("message");
            assert_eq!(own["seq"], ack["seq"]);
        }
        let reply = b.request(json!({"type": "send", "room": "lobby", "body": "back"}), "b1");
        assert_eq!(reply["seq"], 6);
    });
}

#[test]
fn idempotent_client_id_gets_the_same_ack_and_one_delivery() {
    on_both_drivers(&[], |s| {
        let mut a = Client::connect(&s.addr, "alice", "");
        let mut b = Client::connect(&s.addr, "bob", "");
        a.join("r");
        b.join("r");
        let send = json!({"type": "send", "room": "r", "body": "once", "client_id": "c-1"});
        let first = a.request(send.clone(), "1");
        let retry = a.request(send, "2");
        assert_eq!(first["seq"], retry["seq"]);
        assert_eq!(first["msg_id"], retry["msg_id"]);
        let next = a.request(json!({"type": "send", "room": "r", "body": "after"}), "3");
        assert_eq!(next["seq"], first["seq"].as_u64().expect("seq") + 1);
        assert_eq!(b.recv_type("message")["body"], "once");
        assert_eq!(b.recv_type("message")["body"], "after", "the retry must not be delivered twice");
    });
}

#[test]
fn members_on_both_shards_receive_every_message_in_seq_order() {
    on_both_drivers(&[("EDGE_MAX_MSGS_PER_S", "10000"), ("EDGE_MSGS_BURST", "10000")], |s| {
        let mut members: Vec<Client> = Vec::new();
        let mut shards_seen = [0usize; 2];
        for i in 0..60 {
            if shards_seen.iter().all(|&n| n >= 2) && members.len() >= 4 {
                break;
            }
            let c = Client::connect(&s.addr, &format!("u{i}"), "");
            shards_seen[c.shard() as usize] += 1;
            members.push(c);
        }
        assert!(
            shards_seen.iter().all(|&n| n >= 1),
            "SO_REUSEPORT never placed a client on one shard: {shards_seen:?}"
        );
        for m in &mut members {
            m.join("spread");
        }
        let per_sender = 25;
        for round in 0..per_sender {
            for (i, m) in members.iter_mut().enumerate() {
                m.send(json!({"type": "send", "room": "spread", "body": format!("{i}-{round}")}));
            }
        }
        let total = (per_sender * members.len()) as u64;
        for m in &mut members {
            let mut last = 0;
            while last < total {
                let v = m.recv();
                if v["type"] == "message" {
                    let seq = v["seq"].as_u64().expect("seq");
                    assert_eq!(seq, last + 1, "gap or reorder on shard {}", m.shard());
                    last = seq;
                }
            }
        }
    });
}

#[test]
fn room_query_lands_the_connection_on_the_owner_shard() {
    on_both_drivers(&[], |s| {
        for room in ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"] {
            let owner = edge::room::owner(room, 2) as u64;
            for _ in 0..3 {
                let mut c = Client::connect(&s.addr, "u", &format!("&room={room}"));
                assert_eq!(c.shard(), owner, "room {room}");
                let joined = c.recv_type("joined");
                assert_eq!(joined["room"], room);
            }
        }
    });
}

#[test]
fn bad_tokens_get_401_before_any_upgrade() {
    on_both_drivers(&[], |s| {
        for q in ["token=not-a-jwt", "token=", ""] {
            if q.is_empty() {
                continue; // no token: allowed, auth frame expected (tested below)
            }
            match Client::connect_raw_query(&s.addr, q) {
                Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401, "{q}"),
                Err(e) => panic!("{q}: unexpected error {e}"),
                Ok(_) => panic!("{q}: upgraded with a bad token"),
            }
        }
        let other = edge::auth::mint_hs256(
            "wrong-secret-0123456789abcdef-0123456789",
            "eve",
            60,
            None,
            None,
            2_000_000_000 - 100,
        )
        .expect("mint");
        match Client::connect_raw_query(&s.addr, &format!("token={other}")) {
            Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
            _ => panic!("wrong secret accepted"),
        }
    });
}

#[test]
fn auth_frame_then_welcome_and_other_frames_refused_before_it() {
    on_both_drivers(&[], |s| {
        let mut c = Client::connect_raw_query(&s.addr, "").expect("upgrade");
        c.send(json!({"type": "auth", "token": token("carol"), "id": 1}));
        let w = c.recv();
        assert_eq!(w["type"], "welcome", "{w}");
        assert_eq!(w["user"], "carol");
        let mut d = Client::connect_raw_query(&s.addr, "").expect("upgrade");
        d.send(json!({"type": "join", "room": "x", "id": 7}));
        let e = d.recv();
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str(), e["id"].as_u64()),
            (Some("error"), Some("unauthorized"), Some(7))
        );
        assert_eq!(d.close_code(), Some(1008));
    });
}

#[test]
fn protocol_errors_carry_the_request_id_and_a_clear_code() {
    on_both_drivers(&[], |s| {
        let mut c = Client::connect(&s.addr, "alice", "");
        let e = c.request(json!({"type": "send", "room": "never-joined", "body": "x"}), "e1");
        assert_eq!((e["type"].as_str(), e["code"].as_str()), (Some("error"), Some("forbidden")), "{e}");
        let e = c.request(json!({"type": "nope"}), "e2");
        assert_eq!(e["code"], "bad_request");
        let e = c.request(json!({"type": "join", "room": "bad room!"}), "e3");
        assert_eq!(e["code"], "bad_request");
        c.join("ok");
        let long = "x".repeat(5000);
        let e = c.request(json!({"type": "send", "room": "ok", "body": long}), "e4");
        assert_eq!(e["code"], "too_large");
        let e = c.request(json!({"type": "leave", "room": "elsewhere"}), "e5");
        assert_eq!(e["code"], "not_found");
        let l = c.request(json!({"type": "leave", "room": "ok"}), "e6");
        assert_eq!(l["type"], "left");
        let p = c.request(json!({"type": "ping"}), "e7");
        assert_eq!(p["type"], "pong");
        assert!(p["ts"].as_u64().is_some());
    });
}

#[test]
fn dm_rooms_admit_only_their_two_users() {
    on_both_drivers(&[], |s| {
        let mut a = Client::connect(&s.addr, "amy", "");
        let mut b = Client::connect(&s.addr, "ben", "");
        let mut e = Client::connect(&s.addr, "eve", "");
        b.join("dm:amy:ben");
        let ack = a.request(json!({"type": "send", "to": "ben", "body": "psst"}), "dm1");
        assert_eq!(ack["room"], "dm:amy:ben");
        let m = b.recv_type("message");
        assert_eq!((m["body"].as_str(), m["from"].as_str()), (Some("psst"), Some("amy")));
        let r = e.request(json!({"type": "join", "room": "dm:amy:ben"}), "x");
        assert_eq!(r["code"], "forbidden");
    });
}

#[test]
fn frame_over_the_limit_is_closed_1009() {
    on_both_drivers(&[], |s| {
        let mut r = Raw::connect(&s.addr, &format!("token={}", token("big")));
        r.write(&Raw::frame(0x1, true, &vec![b'a'; 70 * 1024], true));
        assert_eq!(r.close_code(), Some(1009));
    });
}

#[test]
fn invalid_utf8_is_closed_1007() {
    on_both_drivers(&[], |s| {
        let mut r = Raw::connect(&s.addr, &format!("token={}", token("u")));
        r.write(&Raw::frame(0x1, true, b"{\"type\":\"ping\xff\xfe\"}", true));
        assert_eq!(r.close_code(), Some(1007));
    });
}

#[test]
fn unmasked_client_frame_is_closed_1002() {
    on_both_drivers(&[], |s| {
        let mut r = Raw::connect(&s.addr, &format!("token={}", token("u")));
        r.write(&Raw::frame(0x1, true, b"{\"type\":\"ping\"}", false));
        assert_eq!(r.close_code(), Some(1002));
    });
}

#[test]
fn a_client_that_never_reads_is_closed_4008_while_others_keep_receiving() {
    let envs = [
        ("EDGE_OUTBOUND_QUEUE_MAX_BYTES", "262144"),
        ("EDGE_MAX_MSGS_PER_S", "100000"),
        ("EDGE_MSGS_BURST", "100000"),
    ];
    on_both_drivers(&envs, |s| {
        let mut slow = Raw::connect(&s.addr, &format!("token={}&room=busy", token("slow")));
        let mut fast = Client::connect(&s.addr, "fast", "&room=busy");
        fast.recv_type("joined");
        let mut sender = Client::connect(&s.addr, "sender", "&room=busy");
        sender.recv_type("joined");
        let body = "y".repeat(4000);
        let n = 3000u64; // ~12 MB: far beyond socket buffers + the 256 KiB queue
        let mut last_seen = 0;
        for i in 0..n {
            // The sender reads its own replies, so only `slow` falls behind.
            sender.request(json!({"type": "send", "room": "busy", "body": body}), &i.to_string());
            if i % 50 == 49 {
                // The fast reader keeps up and sees every seq in order.
                while last_seen < i + 1 {
                    let v = fast.recv();
                    if v["type"] == "message" {
                        assert_eq!(v["seq"].as_u64(), Some(last_seen + 1));
                        last_seen += 1;
                    }
                }
            }
        }
        assert_eq!(last_seen, n);
        assert_eq!(slow.close_code(), Some(4008));
        let m = http_get(&s.addr, "/metrics");
        assert!(m.contains("edge_slow_consumer_total"), "{m}");
    });
}

#[test]
fn sigterm_sends_reconnect_then_1012_and_exits_zero() {
    on_both_drivers(&[], |s| {
        let mut a = Client::connect(&s.addr, "a", "");
        let mut b = Client::connect(&s.addr, "b", "&room=x");
        b.recv_type("joined");
        let status = std::thread::scope(|scope| {
            let h = scope.spawn(|| s.signal_and_wait(libc::SIGTERM, Duration::from_secs(15)));
            for c in [&mut a, &mut b] {
                let r = c.recv_type("reconnect");
                assert!(r["retry_ms"].as_u64().is_some(), "{r}");
                assert_eq!(c.close_code(), Some(1012));
            }
            h.join().expect("join")
        });
        assert!(status.expect("exited").success());
    });
}

#[test]
fn health_ready_and_metrics_endpoints_answer() {
    on_both_drivers(&[], |s| {
        assert!(http_get(&s.addr, "/healthz").starts_with("HTTP/1.1 200"));
        assert!(http_get(&s.addr, "/readyz").starts_with("HTTP/1.1 200"));
        let m = http_get(&s.addr, "/metrics");
        assert!(m.starts_with("HTTP/1.1 200") && m.contains("edge_connections_open"), "{m}");
        assert!(http_get(&s.addr, "/nope").starts_with("HTTP/1.1 404"));
    });
}

#[test]
fn delivery_latency_is_counted_on_the_owner_shard_and_across_the_mesh() {
    on_both_drivers(&[], |s| {
        let room = "lat";
        // One member lands on the room's owner shard, the other on the other shard.
        let owner = edge::room::owner(room, 2);
        let elsewhere = (0..100)
            .map(|i| format!("o{i}"))
            .find(|r| edge::room::owner(r, 2) != owner)
            .expect("a room of the other shard");
        let mut near = Client::connect(&s.addr, "near", &format!("&room={room}"));
        near.recv_type("joined");
        let mut far = Client::connect(&s.addr, "far", &format!("&room={elsewhere}"));
        far.recv_type("joined");
        far.join(room);
        assert_ne!(near.shard(), far.shard());
        for i in 0..20 {
            near.request(json!({"type": "send", "room": room, "body": format!("m{i}")}), &i.to_string());
        }
        for c in [&mut near, &mut far] {
            let mut got = 0;
            while got < 20 {
                if c.recv()["type"] == "message" {
                    got += 1;
                }
            }
        }
        let text = http_get(&s.addr, "/metrics");
        for shard in [near.shard(), far.shard()] {
            let count = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("edge_delivery_latency_seconds_count{{shard=\"{shard}\"}} ")))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            assert!(
                (1..=20).contains(&count),
                "shard {shard} timed {count} of its 20 deliveries: {text}"
            );
        }
        assert!(text.contains("# TYPE edge_delivery_latency_seconds histogram"), "{text}");
    });
}

#[test]
fn admission_control_refuses_over_the_rate_with_a_retry_hint() {
    let envs = [("EDGE_ADMISSION_RATE_PER_SHARD", "0.5"), ("EDGE_ADMISSION_BURST", "2")];
    on_both_drivers(&envs, |s| {
        let mut first = Client::connect(&s.addr, "early", "");
        let mut refused = None;
        for i in 0..20 {
            match Client::connect_raw_query(&s.addr, &format!("token={}", token(&format!("u{i}")))) {
                Ok(c) => drop(c),
                Err(tungstenite::Error::Http(resp)) => {
                    refused = Some(resp);
                    break;
                }
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        let resp = refused.expect("a 503 within 20 upgrades at 0.5/s with burst 2 per shard");
        assert_eq!(resp.status(), 503);
        let retry_ms: u64 = resp.headers()["Retry-Ms"].to_str().expect("ascii").parse().expect("number");
        assert!((1..=10_000).contains(&retry_ms), "retry_ms {retry_ms}");
        assert!(resp.headers().contains_key("Retry-After"));
        let body = String::from_utf8(resp.body().clone().unwrap_or_default()).expect("utf8");
        assert!(body.contains("\"code\":\"overloaded\""), "{body}");
        // the established connection is not affected
        let pong = first.request(json!({"type": "ping"}), "p1");
        assert_eq!(pong["type"], "pong");
        let metrics = http_get(&s.addr, "/metrics");
        assert!(metrics.contains("admission_refused_total"), "metric exported");
        // The process's own figures: two connections and the listeners are open fds.
        let fds = metrics
            .lines()
            .find_map(|l| l.strip_prefix("process_open_fds "))
            .and_then(|v| v.trim().parse::<u64>().ok());
        assert!(fds.is_some_and(|n| n >= 2), "process_open_fds in {metrics}");
        assert!(metrics.contains("process_resident_memory_bytes ") && metrics.contains("process_cpu_seconds_total "));
        // The embedded store (the default) is open, so SQLite holds at least its schema and statements.
        let sqlite = metrics
            .lines()
            .find_map(|l| l.strip_prefix("edge_store_sqlite_memory_bytes "))
            .and_then(|v| v.trim().parse::<u64>().ok());
        assert!(sqlite.is_some_and(|n| n > 0), "edge_store_sqlite_memory_bytes in {metrics}");
    });
}

#[test]
fn admission_control_can_refuse_with_close_1013() {
    let envs = [
        ("EDGE_ADMISSION_RATE_PER_SHARD", "0.5"),
        ("EDGE_ADMISSION_BURST", "1"),
        ("EDGE_ADMISSION_REFUSAL", "close1013"),
    ];
    on_both_drivers(&envs, |s| {
        let mut held = Vec::new();
        let mut reason = None;
        for i in 0..20 {
            let mut c = Client::connect_raw_query(&s.addr, &format!("token={}", token(&format!("u{i}")))).expect("upgrade");
            match c.ws.read().expect("first frame") {
                tungstenite::Message::Close(Some(f)) => {
                    assert_eq!(close_code_u16(f.code), 1013);
                    reason = Some(f.reason.to_string());
                    break;
                }
                tungstenite::Message::Text(t) => {
                    assert!(t.contains("welcome"), "{t}");
                    held.push(c);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        let reason = reason.expect("a 1013 within 20 upgrades");
        let ms: u64 = reason.strip_prefix("retry_ms=").expect("retry_ms=N").parse().expect("number");
        assert!(ms >= 1, "{reason}");
    });
}
