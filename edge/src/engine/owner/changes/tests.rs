//! The change steps against the store model, answered when the test says.

use router::ChangeOp;
use serde_json::{json, Value};
use storage::Query;

use super::super::store_model::*;
use super::{MAX_EMOJIS_PER_MESSAGE, MAX_EMOJIS_PER_USER};

#[test]
fn an_edit_waits_for_its_message_to_be_stored_then_changes_store_ring_and_members() {
    let mut o = owner(8);
    send(&mut o, "alice", "helo");
    change(&mut o, "alice", 1, edit("hello"));
    settle_queries(&mut o);
    assert_eq!(
        outcome(&mut o),
        (vec![], vec![]),
        "fast mode: the write is not committed yet, the edit waits"
    );
    settle_writes(&mut o);
    settle_queries(&mut o);
    let (replies, told) = outcome(&mut o);
    assert_eq!(replies.len(), 1);
    assert_eq!((replies[0]["type"].clone(), replies[0]["seq"].clone()), (json!("ack"), json!(1)));
    assert_eq!(told.len(), 1);
    let (event, version) = &told[0];
    assert_eq!(
        event,
        &json!({"type":"update","room":"r","seq":1,"body":"hello","deleted":false,"edited_ts":NOW})
    );
    let version = version.as_ref().expect("an edit carries the new version");
    assert_eq!(
        (version["body"].clone(), version["edited_ts"].clone()),
        (json!("hello"), json!(NOW))
    );
    assert_eq!(json(&o.store_mut().messages[&1].frame), *version, "the store holds the new version");
    // The ring holds it too: a history page from the ring shows the edit.
    ask_history(&mut o, "alice", None, 10, None);
    settle_queries(&mut o);
    let (replies, _) = outcome(&mut o);
    assert_eq!(replies[0]["messages"][0]["body"], json!("hello"));
}

#[test]
fn only_the_author_or_a_moderator_changes_a_message_and_a_tombstone_stays() {
    let mut o = owner(8);
    send(&mut o, "alice", "one");
    settle_writes(&mut o);
    change(&mut o, "bob", 1, edit("mine now"));
    settle_queries(&mut o);
    let (replies, told) = outcome(&mut o);
    assert_eq!((replies[0]["code"].clone(), told.len()), (json!("forbidden"), 0));
    change(&mut o, "mod", 1, ChangeOp::Delete);
    // Queued behind the delete, read after it: the edit finds a tombstone.
    change(&mut o, "alice", 1, edit("too late"));
    settle_queries(&mut o);
    let (replies, told) = outcome(&mut o);
    assert_eq!(replies[0]["type"], json!("ack"));
    assert_eq!(replies[1]["code"], json!("not_found"), "{}", replies[1]);
    assert_eq!(told.len(), 1);
    assert_eq!(
        told[0].0,
        json!({"type":"update","room":"r","seq":1,"deleted":true,"edited_ts":NOW})
    );
    let stored = json(&o.store_mut().messages[&1].frame);
    assert_eq!((stored["deleted"].clone(), stored.get("body")), (json!(true), None));
    change(&mut o, "alice", 1, react("👍", true));
    settle_queries(&mut o);
    assert_eq!(outcome(&mut o).0[0]["code"], json!("not_found"), "no reaction on a tombstone");
}

#[test]
fn unknown_seqs_are_not_found_at_once() {
    let mut o = owner(8);
    send(&mut o, "alice", "one");
    settle_writes(&mut o);
    for seq in [0, 2, 99] {
        change(&mut o, "alice", seq, ChangeOp::Delete);
        let (replies, _) = outcome(&mut o);
        assert_eq!(replies[0]["code"], json!("not_found"), "seq {seq}");
        assert!(o.store_mut().queries.is_empty(), "nothing asked of the store for seq {seq}");
    }
}

#[test]
fn a_message_out_of_the_ring_is_read_from_the_store() {
    let mut o = owner(2);
    for i in 0..5 {
        send(&mut o, "alice", &format!("m{i}"));
    }
    settle_writes(&mut o);
    change(&mut o, "alice", 1, edit("first, edited"));
    assert!(matches!(o.store_mut().queries[0].1, Query::RangeAfter { after: 0, limit: 1, .. }));
    settle_queries(&mut o);
    let (replies, told) = outcome(&mut o);
    assert_eq!(
        (replies[0]["type"].clone(), told[0].0["body"].clone()),
        (json!("ack"), json!("first, edited"))
    );
    assert_eq!(json(&o.store_mut().messages[&1].frame)["body"], json!("first, edited"));
}

#[test]
fn reactions_are_told_once_per_change_and_bounded() {
    let mut o = owner(8);
    send(&mut o, "alice", "one");
    settle_writes(&mut o);
    change(&mut o, "bob", 1, react("👍", true));
    change(&mut o, "bob", 1, react("👍", true));
    change(&mut o, "bob", 1, react("👍", false));
    change(&mut o, "bob", 1, react("🎉", false));
    settle_queries(&mut o);
    let (replies, told) = outcome(&mut o);
    assert!(replies.iter().all(|r| r["type"] == "ack"), "{replies:?}");
    let ops: Vec<Value> = told
        .iter()
        .map(|(e, m)| {
            assert!(m.is_none(), "a reaction changes no message version");
            e["op"].clone()
        })
        .collect();
    assert_eq!(
        ops,
        [json!("add"), json!("remove")],
        "a repeated add and an absent remove tell nobody"
    );
    // Per user.
    for i in 0..MAX_EMOJIS_PER_USER + 1 {
        change(&mut o, "carol", 1, react(&format!("e{i}"), true));
    }
    settle_queries(&mut o);
    let (replies, _) = outcome(&mut o);
    assert_eq!(replies[MAX_EMOJIS_PER_USER]["code"], json!("too_large"));
    // Per message: other users fill it up to the bound.
    for i in MAX_EMOJIS_PER_USER..MAX_EMOJIS_PER_MESSAGE + 1 {
        change(&mut o, &format!("u{i}"), 1, react(&format!("e{i}"), true));
    }
    settle_queries(&mut o);
    let (replies, _) = outcome(&mut o);
    let last = replies.last().expect("answers");
    assert_eq!(last["code"], json!("too_large"), "{last}");
    assert_eq!(
        replies.iter().filter(|r| r["type"] == "ack").count(),
        MAX_EMOJIS_PER_MESSAGE - MAX_EMOJIS_PER_USER
    );
    // A known emoji may still be added by someone else.
    change(&mut o, "dave", 1, react("e0", true));
    settle_queries(&mut o);
    assert_eq!(outcome(&mut o).0[0]["type"], json!("ack"));
}
