//! Read receipts on a single node, over real sockets and a real store: `read`
//! moves the user's read mark forward only, members hear it as a coalesced
//! `receipt`, and the mark survives a restart.

mod cluster_support;
mod common;

use std::time::Duration;

use cluster_support::Member;
use common::{drivers, temp_data_dir, Server};
use serde_json::{json, Value};

const ENVS: &[(&str, &str)] = &[
    ("EDGE_MAX_MSGS_PER_S", "100000"),
    ("EDGE_MSGS_BURST", "100000"),
    ("EDGE_DELIVERED_FLUSH_MS", "200"),
];
const WAIT: Duration = Duration::from_secs(10);
const ROOM: &str = "r";

fn receipts_of(m: &Member, user: &str) -> Vec<u64> {
    m.log
        .iter()
        .filter(|v| v["type"] == "receipt" && v["status"] == "read" && v["room"] == ROOM && v["user"] == user)
        .map(|v| {
            assert_eq!(v["status"], "read", "{v}");
            v["seq"].as_u64().expect("seq")
        })
        .collect()
}

fn is_receipt(v: &Value, user: &str, seq: u64) -> bool {
    v["type"] == "receipt" && v["status"] == "read" && v["user"] == user && v["seq"] == seq
}

fn is_delivered(v: &Value, user: &str, seq: u64) -> bool {
    let users = v["users"].as_array().map_or(&[][..], Vec::as_slice);
    v["type"] == "receipt" && v["status"] == "delivered" && users.iter().any(|u| u == user) && v["seq"] == seq
}

/// Reads what `m` was sent until now, past a tick (receipts go out once a second).
fn settle(m: &mut Member) {
    m.drain(Duration::from_millis(1_300));
    let r = m.request(json!({"type": "ping"}), &format!("p{}", m.log.len()), WAIT);
    assert_eq!(r["type"], "pong");
}

fn send(m: &mut Member, n: usize) {
    for i in 0..n {
        let id = format!("s{i}-{}", m.log.len());
        let ack = m.request(json!({"type": "send", "room": ROOM, "body": format!("m{i}")}), &id, WAIT);
        assert_eq!(ack["type"], "ack", "{ack}");
    }
}

#[test]
fn read_marks_move_forward_only_are_pushed_coalesced_and_survive_a_restart() {
    for driver in drivers() {
        let dir = temp_data_dir("receipts");
        let s = Server::start_with(driver, ENVS, &[], &dir);
        let mut alice: Vec<Member> = (0..2).map(|_| Member::connect(&s, "n1", "alice")).collect();
        let mut bob = Member::connect(&s, "n1", "bob");
        for m in alice.iter_mut() {
            m.join(ROOM);
        }
        bob.join(ROOM);
        send(&mut bob, 5);

        // Three reads at once: one receipt at the next tick (two if a tick fell between).
        for seq in 1..=3 {
            alice[0].send(json!({"type": "read", "room": ROOM, "seq": seq}));
        }
        assert!(bob.read_until(WAIT, |v| is_receipt(v, "alice", 3)).is_some(), "{}", bob.context());
        // Every member hears it, the reader's other connection too.
        assert!(
            alice[1].read_until(WAIT, |v| is_receipt(v, "alice", 3)).is_some(),
            "{}",
            alice[1].context()
        );
        // Backwards: ignored, not an error, nobody told.
        alice[0].send(json!({"type": "read", "room": ROOM, "seq": 2, "id": "back"}));
        settle(&mut alice[0]);
        assert!(
            alice[0].log.iter().all(|v| v["id"] != "back"),
            "a read backwards is no error: {}",
            alice[0].context()
        );
        settle(&mut bob);
        let got = receipts_of(&bob, "alice");
        assert!(
            got.len() <= 2 && got.last() == Some(&3) && got.windows(2).all(|w| w[0] < w[1]),
            "{got:?}"
        );
        // Past the last message: marks the last one.
        alice[0].send(json!({"type": "read", "room": ROOM, "seq": 99}));
        assert!(bob.read_until(WAIT, |v| is_receipt(v, "alice", 5)).is_some(), "{}", bob.context());
        // Someone else's DM is refused like a join of it.
        let r = alice[0].request(json!({"type": "read", "room": "dm:bob:carol", "seq": 1}), "dm", WAIT);
        assert_eq!(r["code"], "forbidden", "{r}");
        drop((alice, bob));
        drop(s);

        // The mark is 5 in the store: after a restart a read of 4 moves nothing, 6 does.
        let s = Server::start_with(driver, ENVS, &[], &dir);
        let mut alice = Member::connect(&s, "n1", "alice");
        let mut bob = Member::connect(&s, "n1", "bob");
        alice.join(ROOM);
        bob.join(ROOM);
        alice.send(json!({"type": "read", "room": ROOM, "seq": 4}));
        send(&mut bob, 1);
        alice.send(json!({"type": "read", "room": ROOM, "seq": 6}));
        assert!(bob.read_until(WAIT, |v| is_receipt(v, "alice", 6)).is_some(), "{}", bob.context());
        settle(&mut bob);
        assert_eq!(
            receipts_of(&bob, "alice"),
            [6],
            "the read of 4 stayed below the stored mark, {driver}"
        );
    }
}

/// `sync` entries by room: (seq, read, unread, delivered).
type Inbox = std::collections::BTreeMap<String, (u64, u64, u64, u64)>;

fn synced(m: &mut Member, id: &str) -> Inbox {
    let r = m.request(json!({"type": "sync"}), id, WAIT);
    assert_eq!(r["type"], "sync", "{r}");
    r["rooms"]
        .as_array()
        .expect("rooms")
        .iter()
        .map(|e| {
            let n = |k: &str| e[k].as_u64().unwrap_or_else(|| panic!("{k} in {e}"));
            let room = e["room"].as_str().expect("room").to_owned();
            (room, (n("seq"), n("read"), n("unread"), n("delivered")))
        })
        .collect()
}

/// `sync` until `done` holds, for up to 5 s: marks, memberships and (fast mode) the
/// messages themselves reach the store through its queue, a few ms after the ack, and
/// delivered marks are reported once a second.
fn synced_soon(m: &mut Member, done: impl Fn(&Inbox) -> bool) -> Inbox {
    let mut got = synced(m, "soon");
    for attempt in 0..100 {
        if done(&got) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        got = synced(m, &format!("soon-{attempt}"));
    }
    got
}

#[test]
fn sync_lists_joined_rooms_and_dms_with_seqs_and_read_marks_across_a_restart() {
    for driver in drivers() {
        let dir = temp_data_dir("sync");
        let s = Server::start_with(driver, ENVS, &[], &dir);
        let mut alice = Member::connect(&s, "n1", "alice");
        let mut bob = Member::connect(&s, "n1", "bob");
        let mut carol = Member::connect(&s, "n1", "carol");
        assert!(synced(&mut alice, "s0").is_empty(), "a new user belongs to no room");
        for room in ["r", "quiet"] {
            alice.join(room);
        }
        bob.join(ROOM);
        send(&mut bob, 3);
        alice.send(json!({"type": "read", "room": ROOM, "seq": 2}));
        // Carol writes to Alice, who never joined the DM room.
        let ack = carol.request(json!({"type": "send", "to": "alice", "body": "hi"}), "dm", WAIT);
        assert_eq!(ack["type"], "ack", "{ack}");
        // Delivered: Alice's connections got all three of `r` and Carol's DM (without joining it).
        let want: Inbox = [
            ("dm:alice:carol".to_owned(), (1, 0, 1, 1)),
            ("quiet".to_owned(), (0, 0, 0, 0)),
            ("r".to_owned(), (3, 2, 1, 3)),
        ]
        .into();
        // A second connection of Alice's, joined nowhere, sees the same inbox.
        let mut other = Member::connect(&s, "n1", "alice");
        assert_eq!(synced_soon(&mut other, |got| *got == want), want, "{driver}");
        // Carol's own message is no unread of hers.
        let carols = synced_soon(&mut carol, |got| got.get("dm:alice:carol") == Some(&(1, 0, 0, 1)));
        assert_eq!(carols.get("dm:alice:carol"), Some(&(1, 0, 0, 1)), "the sender's side of the DM");
        drop((alice, bob, carol, other));
        // A clean stop (the store flushes; a SIGKILL in fast mode may lose the last batch).
        s.stop_clean();

        // Everything comes from the store now: the same after a restart.
        let s = Server::start_with(driver, ENVS, &[], &dir);
        let mut alice = Member::connect(&s, "n1", "alice");
        assert_eq!(synced(&mut alice, "s2"), want, "after a restart, {driver}");
    }
}

#[test]
fn delivered_marks_move_when_a_message_reaches_a_live_connection_and_members_hear_it() {
    for driver in drivers() {
        // The default flush (10 s): the marks reach the store at the clean stop below.
        let dir = temp_data_dir("delivered");
        let envs = &ENVS[..2];
        let s = Server::start_with(driver, envs, &[], &dir);
        let mut alice = Member::connect(&s, "n1", "alice");
        let mut bob = Member::connect(&s, "n1", "bob");
        alice.join(ROOM);
        bob.join(ROOM);
        // Carol joins, then goes away: what is sent after that never reaches her.
        let mut carol = Member::connect(&s, "n1", "carol");
        carol.join(ROOM);
        drop(carol);
        send(&mut bob, 4);
        assert!(
            bob.read_until(WAIT, |v| is_delivered(v, "alice", 4)).is_some(),
            "{driver}: {}",
            bob.context()
        );
        // The receipt goes to the sender (bob), naming the sender's own connection too; alice
        // sent nothing, so she is told nothing.
        settle(&mut alice);
        assert!(alice.log.iter().all(|v| v["status"] != "delivered"), "{}", alice.context());
        settle(&mut bob);
        let delivered: Vec<&Value> = bob
            .log
            .iter()
            .filter(|v| v["type"] == "receipt" && v["status"] == "delivered")
            .collect();
        assert!(
            delivered
                .iter()
                .all(|v| !v["users"].as_array().expect("users").iter().any(|u| u == "carol")),
            "carol has no live connection: {delivered:?}"
        );
        // Coalesced: one frame per room, seq and tick naming every user it reached (each shard
        // reports its own users, so at most a frame per shard and tick) for four messages sent
        // at once; together they name both users at seq 4.
        assert!(delivered.len() <= 4, "{delivered:?}");
        let at_4: std::collections::BTreeSet<&str> = delivered
            .iter()
            .filter(|v| v["seq"] == 4)
            .flat_map(|v| v["users"].as_array().expect("users").iter().map(|u| u.as_str().expect("user")))
            .collect();
        assert_eq!(at_4, ["alice", "bob"].into_iter().collect(), "{delivered:?}");
        drop((alice, bob));
        s.stop_clean();
        let s = Server::start_with(driver, envs, &[], &dir);
        let mut alice = Member::connect(&s, "n1", "alice");
        assert_eq!(synced(&mut alice, "after")[ROOM], (4, 0, 4, 4), "flushed at the stop, {driver}");
    }
}

#[test]
fn delivered_marks_can_be_turned_off() {
    let envs = [ENVS, &[("EDGE_DELIVERED_MARKS", "false")]].concat();
    let s = Server::start_with("io_uring", &envs, &[], &temp_data_dir("no-delivered"));
    let mut alice = Member::connect(&s, "n1", "alice");
    let mut bob = Member::connect(&s, "n1", "bob");
    alice.join(ROOM);
    bob.join(ROOM);
    send(&mut bob, 2);
    alice.send(json!({"type": "read", "room": ROOM, "seq": 2}));
    // The read receipt goes out at a tick: by then a delivered one would have too.
    assert!(bob.read_until(WAIT, |v| is_receipt(v, "alice", 2)).is_some(), "{}", bob.context());
    settle(&mut bob);
    assert!(
        bob.log.iter().all(|v| v["status"] != "delivered"),
        "no delivered receipt: {}",
        bob.context()
    );
    let inbox = synced_soon(&mut alice, |got| got.get(ROOM).is_some_and(|e| e.1 == 2));
    assert_eq!(inbox[ROOM], (2, 2, 0, 0), "read kept, delivered not");
}
