//! History pages against the store model: reactions and reply counts, and thread pages
//! from the ring and the store.

use serde_json::{json, Value};

use super::super::store_model::*;
use super::super::{Effect, Owner};

fn page(o: &mut Owner<Port>, user: &str, before: Option<u64>, limit: u32, thread: Option<u64>) -> Value {
    ask_history(o, user, before, limit, thread);
    settle_queries(o);
    let (mut replies, told) = outcome(o);
    assert!(told.is_empty());
    assert_eq!(replies.len(), 1, "{replies:?}");
    replies.remove(0)
}

fn seqs(page: &Value) -> Vec<u64> {
    page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect()
}

#[test]
fn history_messages_carry_their_reactions_with_the_askers_own() {
    let mut o = owner(8);
    send(&mut o, "alice", "one");
    send(&mut o, "alice", "two");
    settle_writes(&mut o);
    change(&mut o, "bob", 2, react("👍", true));
    change(&mut o, "carol", 2, react("👍", true));
    settle_queries(&mut o);
    outcome(&mut o);
    ask_history(&mut o, "bob", None, 10, None);
    settle_queries(&mut o);
    let (replies, _) = outcome(&mut o);
    let msgs = &replies[0]["messages"];
    assert!(msgs[0].get("reactions").is_none(), "no reactions, no field: {}", msgs[0]);
    assert_eq!(msgs[1]["reactions"], json!([{"emoji":"👍","count":2,"me":true}]));
}

#[test]
fn thread_pages_hold_only_their_replies_from_ring_and_store_and_roots_carry_counts() {
    // A ring of 4: the older replies are only in the store.
    let mut o = owner(4);
    send(&mut o, "alice", "root");
    for i in 0..6 {
        send_reply(&mut o, "bob", &format!("reply {i}"), Some(1));
        send(&mut o, "carol", &format!("chat {i}"));
    }
    settle_writes(&mut o);
    // Replies are seqs 2, 4, .., 12; the ring holds 10..=13.
    let p = page(&mut o, "alice", None, 3, Some(1));
    assert_eq!(seqs(&p), [8, 10, 12], "{p}");
    assert_eq!(p["next_before"], json!(8));
    let mut all = seqs(&p);
    let mut before = p["next_before"].as_u64();
    while let Some(b) = before {
        let p = page(&mut o, "alice", Some(b), 3, Some(1));
        all.splice(0..0, seqs(&p));
        before = p["next_before"].as_u64();
    }
    assert_eq!(all, [2, 4, 6, 8, 10, 12], "paging a thread reaches its first reply");
    // The ring alone: a page of the newest replies it holds.
    let p = page(&mut o, "alice", None, 1, Some(1));
    assert_eq!((seqs(&p), p["next_before"].clone()), (vec![12], json!(12)));
    // The room's page: the root carries its count.
    let p = page(&mut o, "alice", Some(3), 10, None);
    assert_eq!(p["messages"][0]["replies"], json!(6), "{p}");
    assert!(p["messages"][1].get("replies").is_none());
    // No such root, and a reply to nothing.
    assert_eq!(page(&mut o, "alice", None, 5, Some(99))["code"], json!("not_found"));
    let effects = send_reply(&mut o, "bob", "to nothing", Some(99));
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::Reply { payload, .. } if payload.starts_with(br#"{"type":"error""#))),
        "{effects:?}"
    );
}

#[test]
fn a_fast_mode_reply_not_stored_yet_is_in_its_thread_from_the_ring() {
    let mut o = owner(8);
    send(&mut o, "alice", "root");
    settle_writes(&mut o);
    send_reply(&mut o, "bob", "quick", Some(1));
    // Not committed: the store's thread is empty, the ring has it.
    let p = page(&mut o, "alice", None, 10, Some(1));
    assert_eq!(seqs(&p), [2], "{p}");
}

#[test]
fn a_page_older_than_the_ring_waits_for_the_writes_in_flight() {
    let mut o = owner(2);
    for i in 0..5 {
        send(&mut o, "alice", &format!("m{i}"));
    }
    ask_history(&mut o, "alice", None, 5, None);
    settle_queries(&mut o);
    assert_eq!(outcome(&mut o), (vec![], vec![]), "seqs 1..=3 are not stored yet: the page waits");
    settle_writes(&mut o);
    settle_queries(&mut o);
    let (replies, _) = outcome(&mut o);
    assert_eq!(seqs(&replies[0]), [1, 2, 3, 4, 5], "{}", replies[0]);
}
