//! Flow control on the outbound side, over real sockets on both drivers:
//! replies a client asked for (history pages, catch-up) are served whole
//! however large, and a client that stops reading is cut within the write
//! stall timeout while the other members keep receiving.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::{drivers, metric_sum, token, Client, Raw, Server};
use serde_json::{json, Value};

/// Runs `f` once per io driver.
fn on_both_drivers(envs: &[(&str, &str)], f: impl Fn(&mut Server)) {
    for driver in drivers() {
        let mut server = Server::start(driver, envs);
        assert_eq!(server.driver, driver, "the node must say which driver runs");
        f(&mut server);
    }
}

/// Sends `n` messages with `body` to `room`, each acked before the next.
fn send_n(c: &mut Client, room: &str, n: usize, body: &str) {
    for i in 0..n {
        let r = c.request(json!({"type": "send", "room": room, "body": body}), &format!("s{i}"));
        assert_eq!(r["type"], "ack", "send {i}: {r}");
    }
}

/// Pages `history` back to the start; returns every seq seen, ascending, and the page count.
fn read_all_history(c: &mut Client, room: &str, tag: &str) -> (Vec<u64>, usize) {
    let (mut seqs, mut before, mut pages) = (Vec::new(), None::<u64>, 0);
    loop {
        let mut req = json!({"type": "history", "room": room, "limit": 100});
        if let Some(b) = before {
            req["before"] = json!(b);
        }
        let r = c.request(req, &format!("{tag}-{pages}"));
        assert_eq!(r["type"], "history", "page {pages}: {r}");
        pages += 1;
        let page: Vec<u64> = r["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["seq"].as_u64().expect("seq"))
            .collect();
        assert!(!page.is_empty() || seqs.is_empty(), "an empty page in the middle");
        seqs.splice(0..0, page);
        match r["next_before"].as_u64() {
            Some(b) => before = Some(b),
            None => return (seqs, pages),
        }
    }
}

/// 4,096 control characters: JSON escapes each as `\u00XX`, six times bigger.
fn poisoned_body() -> String {
    "\u{1}".repeat(4096)
}

#[test]
fn a_poisoned_rooms_history_is_served_whole_to_every_requester() {
    // 60 messages of ~24.6 KB rendered: 1.5 MB, over the 1 MiB outbound bound.
    // Served from the recent ring (default) and from the store (ring of 8).
    for recent in ["256", "8"] {
        let envs = [
            ("EDGE_MAX_MSGS_PER_S", "10000"),
            ("EDGE_MSGS_BURST", "10000"),
            ("EDGE_RECENT_PER_ROOM", recent),
        ];
        on_both_drivers(&envs, |s| {
            let mut sender = Client::connect(&s.addr, "poisoner", "&room=poison");
            sender.recv_type("joined");
            send_n(&mut sender, "poison", 60, &poisoned_body());
            let mut readers: Vec<Client> = (0..12).map(|i| Client::connect(&s.addr, &format!("reader{i}"), "")).collect();
            for (i, r) in readers.iter_mut().enumerate() {
                let (seqs, pages) = read_all_history(r, "poison", &format!("h{i}"));
                assert_eq!(seqs, (1..=60).collect::<Vec<_>>(), "reader {i}, ring {recent}");
                assert!(pages >= 2, "a 1.5 MB page is split by history_page_max_bytes: {pages} page(s)");
                // Still open: a ping gets its pong.
                assert_eq!(r.request(json!({"type": "ping"}), "p")["type"], "pong");
            }
        });
    }
}

#[test]
fn a_1000_message_catch_up_is_served_whole_by_join_since_and_resume() {
    let envs = [("EDGE_MAX_MSGS_PER_S", "10000"), ("EDGE_MSGS_BURST", "10000")];
    on_both_drivers(&envs, |s| {
        let mut sender = Client::connect(&s.addr, "writer", "&room=big");
        sender.recv_type("joined");
        // ~1.2 KB rendered each: 1.2 MB of catch-up, over the 1 MiB outbound bound.
        send_n(&mut sender, "big", 1000, &"k".repeat(1000));

        let mut joiner = Client::connect(&s.addr, "late", "");
        let joined = joiner.request(json!({"type": "join", "room": "big", "since": 0}), "j");
        assert_eq!(joined["type"], "joined", "{joined}");
        assert_eq!(joined["seq"], 1000);
        expect_seqs(&mut joiner, "big", 1..=1000);

        let mut resumer = Client::connect(&s.addr, "resumer", "&resume=big:0");
        resumer.recv_type("joined");
        expect_seqs(&mut resumer, "big", 1..=1000);

        // Live traffic continues after the catch-up, in order.
        send_n(&mut sender, "big", 1, "after");
        for c in [&mut joiner, &mut resumer] {
            expect_seqs(c, "big", 1001..=1001);
        }
    });
}

/// The next messages are exactly `want`, in order (presence events, which members get
/// when users come and go, are passed over).
fn expect_seqs(c: &mut Client, room: &str, want: std::ops::RangeInclusive<u64>) {
    for seq in want {
        let v: Value = c.recv_chat();
        assert_eq!(v["type"], "message", "expected seq {seq}, got {v}");
        assert_eq!((v["room"].as_str(), v["seq"].as_u64()), (Some(room), Some(seq)));
    }
}

#[test]
fn a_client_that_stops_reading_is_cut_within_the_stall_timeout_and_counted() {
    let envs = [
        ("EDGE_WRITE_STALL_TIMEOUT_MS", "1000"),
        ("EDGE_MAX_MSGS_PER_S", "100000"),
        ("EDGE_MSGS_BURST", "100000"),
    ];
    on_both_drivers(&envs, |s| {
        let mut stuck = Raw::connect(&s.addr, &format!("token={}&room=busy", token("stuck")));
        let mut fast = Client::connect(&s.addr, "fast", "&room=busy");
        fast.recv_type("joined");
        let mut sender = Client::connect(&s.addr, "sender", "&room=busy");
        sender.recv_type("joined");
        let body = "z".repeat(4000);
        let mut seq = 0u64;
        // Far beyond socket buffers plus the 1 MiB queue, until the stalled socket is cut.
        let deadline = Instant::now() + Duration::from_secs(60);
        while metric_sum(&s.addr, "write_stalled_total") == 0 {
            assert!(Instant::now() < deadline, "no stalled write was cut within 60 s");
            for _ in 0..200 {
                seq += 1;
                let r = sender.request(json!({"type": "send", "room": "busy", "body": body}), &seq.to_string());
                assert_eq!(r["type"], "ack");
                let v = fast.recv_type("message");
                assert_eq!(v["seq"].as_u64(), Some(seq), "the reading member gets every message in order");
            }
        }
        // The stuck connection is gone from the node, and its socket is shut down:
        // reading what the kernel still holds ends in EOF or a reset, not a timeout.
        let gone = Instant::now() + Duration::from_secs(10);
        while metric_sum(&s.addr, "connections_open") != 2 {
            assert!(Instant::now() < gone, "the stuck connection still counts as open");
            std::thread::sleep(Duration::from_millis(50));
        }
        stuck.s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let mut sink = Vec::new();
        match stuck.s.read_to_end(&mut sink) {
            Ok(_) => {}
            Err(e) => assert!(
                !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
                "the socket was not shut down: {e}"
            ),
        }
        // The others keep receiving.
        seq += 1;
        let r = sender.request(json!({"type": "send", "room": "busy", "body": "still here"}), "last");
        assert_eq!(r["seq"].as_u64(), Some(seq));
        assert_eq!(fast.recv_type("message")["seq"].as_u64(), Some(seq));
    });
}
