//! The conformance suite: what every [`MessageStore`] backend must do, as async test functions.
//!
//! Each case takes the store and a `prefix` it puts in front of every room,
//! user and node name, so cases (and runs against a shared Scylla cluster)
//! never see each other's data. A case panics with a message on the first
//! difference; it is test support code, compiled in so other crates' tests
//! can run it too. `storage/tests/conformance.rs` runs it against the
//! embedded store always and against Scylla when `SCYLLA_URI` is set.

use bytes::Bytes;

use crate::{MarkKind, MessageStore, ReactionCount, ReactionOp, RoomState, StoredMessage, UserRoom};

/// The names of the cases, in the order [`run_all`] runs them.
pub const CASES: &[&str] = &[
    "verbatim_frames",
    "idempotent_rewrite",
    "history_paging",
    "history_edges",
    "range_after_catch_up",
    "room_state_and_epoch",
    "client_id_lookup",
    "marks_move_forward",
    "reactions_are_a_set",
    "reaction_counts_per_message",
    "replace_frame_in_place",
    "thread_pages_and_reply_counts",
    "user_rooms_with_marks",
    "last_seen_moves_forward",
    "run_flags",
    "many_rooms_interleaved",
];

/// A message of `room` with seq `seq`: a JSON frame naming both, sender `u{seq % 7}`.
pub fn message(room: &str, seq: u64) -> StoredMessage {
    let sender = format!("u{}", seq % 7);
    let frame = format!(r#"{{"type":"message","room":"{room}","seq":{seq},"from":"{sender}","text":"hi \"{seq}\" ✓ 🙂"}}"#);
    StoredMessage {
        room: room.into(),
        seq,
        msg_id: crate::MsgId::format(format_args!("{room}-m{seq}")),
        sender: sender.into(),
        ts_ms: 1_700_000_000_000_u64.saturating_add(seq),
        client_id: None,
        frame: Bytes::from(frame),
        reply_to: None,
    }
}

fn messages(room: &str, seqs: impl IntoIterator<Item = u64>) -> Vec<StoredMessage> {
    seqs.into_iter().map(|s| message(room, s)).collect()
}

fn seqs(msgs: &[StoredMessage]) -> Vec<u64> {
    msgs.iter().map(|m| m.seq).collect()
}

/// Runs one case by name; panics on an unknown name.
pub async fn run_case<S: MessageStore>(store: &S, case: &str, prefix: &str) {
    let p = format!("{prefix}-{case}");
    match case {
        "verbatim_frames" => verbatim_frames(store, &p).await,
        "idempotent_rewrite" => idempotent_rewrite(store, &p).await,
        "history_paging" => history_paging(store, &p).await,
        "history_edges" => history_edges(store, &p).await,
        "range_after_catch_up" => range_after_catch_up(store, &p).await,
        "room_state_and_epoch" => room_state_and_epoch(store, &p).await,
        "client_id_lookup" => client_id_lookup(store, &p).await,
        "marks_move_forward" => marks_move_forward(store, &p).await,
        "reactions_are_a_set" => reactions_are_a_set(store, &p).await,
        "reaction_counts_per_message" => reaction_counts_per_message(store, &p).await,
        "replace_frame_in_place" => replace_frame_in_place(store, &p).await,
        "thread_pages_and_reply_counts" => thread_pages_and_reply_counts(store, &p).await,
        "user_rooms_with_marks" => user_rooms_with_marks(store, &p).await,
        "last_seen_moves_forward" => last_seen_moves_forward(store, &p).await,
        "run_flags" => run_flags(store, &p).await,
        "many_rooms_interleaved" => many_rooms_interleaved(store, &p).await,
        other => panic!("unknown conformance case {other:?}"),
    }
}

/// Runs every case of [`CASES`].
pub async fn run_all<S: MessageStore>(store: &S, prefix: &str) {
    for case in CASES {
        run_case(store, case, prefix).await;
    }
}

/// Frames (including non-UTF-8 bytes) and every field come back exactly as written.
pub async fn verbatim_frames<S: MessageStore>(store: &S, p: &str) {
    let room = format!("{p}-room");
    let mut odd = message(&room, 2);
    odd.frame = Bytes::from_static(b"\x00\xff{\"quote\":\"\\\"\",\n\"nul\":\"\x00\"}\xfe");
    odd.client_id = Some("client-2".into());
    let batch = vec![message(&room, 1), odd, message(&room, 3)];
    store.write_batch(&batch).await.expect("write");
    let got = store.range_after(&room, 0, 10).await.expect("range_after");
    assert_eq!(got, batch, "messages must come back verbatim");
    let page = store.history(&room, None, 10).await.expect("history");
    assert_eq!(page.messages, batch, "history must return the same bytes");
}

/// Writing the same messages again (alone or overlapping new ones) keeps one copy of each.
pub async fn idempotent_rewrite<S: MessageStore>(store: &S, p: &str) {
    let room = format!("{p}-room");
    store.write_batch(&messages(&room, 1..=10)).await.expect("first write");
    store
        .write_batch(&messages(&room, 1..=10))
        .await
        .expect("same batch again is not an error");
    store.write_batch(&messages(&room, 5..=15)).await.expect("overlapping batch");
    let got = store.range_after(&room, 0, 100).await.expect("range_after");
    assert_eq!(got, messages(&room, 1..=15), "one copy of each message");
    assert_eq!(store.room_state(&room, 1).await.expect("room_state").last_seq, 15);
}

/// 1,000 messages read back newest-first in pages of 50: no loss, no overlap, `next_before` None at the end.
pub async fn history_paging<S: MessageStore>(store: &S, p: &str) {
    let room = format!("{p}-room");
    for chunk in (1..=1000_u64).collect::<Vec<_>>().chunks(100) {
        store.write_batch(&messages(&room, chunk.iter().copied())).await.expect("write");
    }
    let mut before = None;
    let mut seen: Vec<u64> = Vec::new();
    let mut pages = 0;
    loop {
        let page = store.history(&room, before, 50).await.expect("history");
        pages += 1;
        assert_eq!(page.messages.len(), 50, "page {pages} must be full");
        let got = seqs(&page.messages);
        assert!(
            got.windows(2).all(|w| w[1] == w[0] + 1),
            "page {pages} ascending and contiguous: {got:?}"
        );
        if let Some(&oldest_seen) = seen.first() {
            assert_eq!(got[49] + 1, oldest_seen, "page {pages} must end right below the previous page");
        }
        seen.splice(0..0, got);
        match page.next_before {
            Some(b) => {
                assert_eq!(b, page.messages[0].seq, "next_before is the oldest seq of the page");
                before = Some(b);
            }
            None => break,
        }
        assert!(pages < 25, "paging does not terminate");
    }
    assert_eq!(pages, 20);
    assert_eq!(seen, (1..=1000).collect::<Vec<_>>());
}

/// Empty rooms, `before` at the start, limits larger than the room, and gaps across buckets.
pub async fn history_edges<S: MessageStore>(store: &S, p: &str) {
    let room = format!("{p}-room");
    let empty = store.history(&room, None, 50).await.expect("history of an empty room");
    assert!(empty.messages.is_empty() && empty.next_before.is_none());
    let sparse = [1_u64, 2, 999, 1000, 2500, 7001];
    store.write_batch(&messages(&room, sparse)).await.expect("write");
    let all = store.history(&room, None, 50).await.expect("history");
    assert_eq!(seqs(&all.messages), sparse.to_vec());
    assert_eq!(all.next_before, None, "the page holds the first message");
    let newest = store.history(&room, None, 2).await.expect("history");
    assert_eq!((seqs(&newest.messages), newest.next_before), (vec![2500, 7001], Some(2500)));
    let next = store.history(&room, Some(2500), 3).await.expect("history");
    assert_eq!((seqs(&next.messages), next.next_before), (vec![2, 999, 1000], Some(2)));
    let last = store.history(&room, Some(2), 3).await.expect("history");
    assert_eq!((seqs(&last.messages), last.next_before), (vec![1], None));
    let nothing = store.history(&room, Some(1), 3).await.expect("history");
    assert!(nothing.messages.is_empty() && nothing.next_before.is_none());
}

/// `range_after` returns seq > after, ascending, at most `limit`, across empty buckets.
pub async fn range_after_catch_up<S: MessageStore>(store: &S, p: &str) {
    let room = format!("{p}-room");
    let sparse = [1_u64, 2, 3, 998, 1500, 4200, 4201];
    store.write_batch(&messages(&room, sparse)).await.expect("write");
    assert_eq!(seqs(&store.range_after(&room, 0, 100).await.expect("r")), sparse.to_vec());
    assert_eq!(seqs(&store.range_after(&room, 2, 3).await.expect("r")), vec![3, 998, 1500]);
    assert_eq!(seqs(&store.range_after(&room, 1500, 100).await.expect("r")), vec![4200, 4201]);
    assert!(store.range_after(&room, 4201, 100).await.expect("r").is_empty());
    assert!(store.range_after(&format!("{p}-none"), 0, 100).await.expect("r").is_empty());
}

/// A new room gets `new_epoch` and last_seq 0; later calls keep the epoch; `set_epoch` changes it.
pub async fn room_state_and_epoch<S: MessageStore>(store: &S, p: &str) {
    let room = format!("{p}-room");
    assert_eq!(store.room_state(&room, 7).await.expect("rs"), RoomState { epoch: 7, last_seq: 0 });
    assert_eq!(
        store.room_state(&room, 9).await.expect("rs"),
        RoomState { epoch: 7, last_seq: 0 },
        "epoch is kept"
    );
    store.write_batch(&messages(&room, 1..=3)).await.expect("write");
    assert_eq!(store.room_state(&room, 9).await.expect("rs"), RoomState { epoch: 7, last_seq: 3 });
    store.set_epoch(&room, 11).await.expect("set_epoch");
    assert_eq!(store.room_state(&room, 99).await.expect("rs"), RoomState { epoch: 11, last_seq: 3 });
    let other = format!("{p}-other");
    store.write_batch(&messages(&other, [1500])).await.expect("write before room_state");
    assert_eq!(
        store.room_state(&other, 4).await.expect("rs"),
        RoomState { epoch: 4, last_seq: 1500 }
    );
    let fresh = format!("{p}-fresh");
    store.set_epoch(&fresh, 5).await.expect("set_epoch creates");
    assert_eq!(store.room_state(&fresh, 6).await.expect("rs").epoch, 5);
}

/// A message is found again by (room, sender, client_id), and only by that triple.
pub async fn client_id_lookup<S: MessageStore>(store: &S, p: &str) {
    let room = format!("{p}-room");
    let mut m = message(&room, 4);
    m.client_id = Some("c-1".into());
    store
        .write_batch(&[message(&room, 3), m.clone(), message(&room, 5)])
        .await
        .expect("write");
    let sender = m.sender.clone();
    assert_eq!(store.find_client_id(&room, &sender, "c-1").await.expect("find"), Some(m));
    assert_eq!(store.find_client_id(&room, "someone-else", "c-1").await.expect("find"), None);
    assert_eq!(store.find_client_id(&room, &sender, "c-2").await.expect("find"), None);
    assert_eq!(
        store.find_client_id(&format!("{p}-other"), &sender, "c-1").await.expect("find"),
        None
    );
}

/// Marks only move forward, per kind.
pub async fn marks_move_forward<S: MessageStore>(store: &S, p: &str) {
    let (room, user) = (format!("{p}-room"), format!("{p}-alice"));
    assert_eq!(store.set_mark(&room, &user, MarkKind::Read, 5).await.expect("mark"), 5);
    assert_eq!(
        store.set_mark(&room, &user, MarkKind::Read, 3).await.expect("mark"),
        5,
        "never back"
    );
    assert_eq!(store.set_mark(&room, &user, MarkKind::Read, 9).await.expect("mark"), 9);
    assert_eq!(
        store.set_mark(&room, &user, MarkKind::Delivered, 2).await.expect("mark"),
        2,
        "kinds are independent"
    );
    assert_eq!(store.set_mark(&room, &user, MarkKind::Delivered, 1).await.expect("mark"), 2);
    assert_eq!(
        store.set_mark(&room, &user, MarkKind::Read, 9).await.expect("mark"),
        9,
        "same value is fine"
    );
    // Many users at once: each mark forward only, the results in order.
    let users: Vec<String> = ["bob", "carol", "alice"].iter().map(|u| format!("{p}-{u}")).collect();
    store.set_mark(&room, &users[1], MarkKind::Delivered, 7).await.expect("mark");
    let got = store.set_marks(&room, &users, MarkKind::Delivered, 4).await.expect("marks");
    assert_eq!(got, vec![4, 7, 4], "carol's 7 stays, alice's 2 moves to 4");
    assert_eq!(
        store.set_mark(&room, &user, MarkKind::Read, 1).await.expect("mark"),
        9,
        "other kind untouched"
    );
    assert!(store.set_marks(&room, &[], MarkKind::Read, 4).await.expect("none").is_empty());
}

/// Reactions are a set of (emoji, user): add twice keeps one, remove of an absent one is fine.
pub async fn reactions_are_a_set<S: MessageStore>(store: &S, p: &str) {
    let room = format!("{p}-room");
    let (a, b) = (format!("{p}-alice"), format!("{p}-bob"));
    for (emoji, user) in [("👍", &a), ("👍", &b), ("❤️", &a), ("👍", &a)] {
        store.react(&room, 1, user, emoji, ReactionOp::Add).await.expect("add");
    }
    let mut want = vec![
        ("❤️".to_owned(), a.clone()),
        ("👍".to_owned(), a.clone()),
        ("👍".to_owned(), b.clone()),
    ];
    want.sort();
    assert_eq!(store.reactions(&room, 1).await.expect("reactions"), want);
    store.react(&room, 1, &b, "👍", ReactionOp::Remove).await.expect("remove");
    store.react(&room, 1, &b, "👍", ReactionOp::Remove).await.expect("remove again");
    want.retain(|(_, u)| u != &b);
    assert_eq!(store.reactions(&room, 1).await.expect("reactions"), want);
    assert!(
        store.reactions(&room, 2).await.expect("reactions").is_empty(),
        "other messages are untouched"
    );
}

/// Reaction counts over a range of messages: one entry per (seq, emoji), ascending, counted
/// exactly, `me` for the asking user only, nothing for messages outside the range.
pub async fn reaction_counts_per_message<S: MessageStore>(store: &S, p: &str) {
    let room = format!("{p}-room");
    let (a, b, c) = (format!("{p}-alice"), format!("{p}-bob"), format!("{p}-carol"));
    for (seq, emoji, user) in [
        (2, "👍", &a),
        (2, "👍", &b),
        (2, "🎉", &c),
        (3, "👍", &c),
        (5, "👍", &a),
        (1, "x", &a),
    ] {
        store.react(&room, seq, user, emoji, ReactionOp::Add).await.expect("add");
    }
    let count = |seq: u64, emoji: &str, count: u64, me: bool| ReactionCount {
        seq,
        emoji: emoji.to_owned(),
        count,
        me,
    };
    let got = store.reaction_counts(&room, 2, 4, &a).await.expect("reaction_counts");
    assert_eq!(
        got,
        vec![count(2, "🎉", 1, false), count(2, "👍", 2, true), count(3, "👍", 1, false)]
    );
    let got = store.reaction_counts(&room, 5, 5, &b).await.expect("reaction_counts");
    assert_eq!(got, vec![count(5, "👍", 1, false)]);
    store.react(&room, 2, &b, "👍", ReactionOp::Remove).await.expect("remove");
    let got = store.reaction_counts(&room, 2, 2, &b).await.expect("reaction_counts");
    assert_eq!(got, vec![count(2, "🎉", 1, false), count(2, "👍", 1, false)]);
    assert!(store.reaction_counts(&room, 6, 9, &a).await.expect("empty range").is_empty());
}

/// An edit or delete replaces a stored message's frame: history and catch-up return the new
/// bytes, everything else stays; a message not stored is not created.
pub async fn replace_frame_in_place<S: MessageStore>(store: &S, p: &str) {
    let room = format!("{p}-room");
    store.write_batch(&messages(&room, 1..=3)).await.expect("write");
    let edited = Bytes::from_static(b"{\"type\":\"message\",\"edited\":true}");
    assert!(store.replace_frame(&room, 2, &edited).await.expect("replace"));
    let mut want = messages(&room, 1..=3);
    want[1].frame = edited.clone();
    assert_eq!(store.range_after(&room, 0, 10).await.expect("range_after"), want);
    assert_eq!(store.history(&room, None, 10).await.expect("history").messages, want);
    assert!(
        !store.replace_frame(&room, 7, &edited).await.expect("replace absent"),
        "seq 7 was never stored"
    );
    assert_eq!(
        store.room_state(&room, 1).await.expect("room_state").last_seq,
        3,
        "no row was created"
    );
}

/// A thread's replies page like history (ascending, `next_before` None at its first reply),
/// `reply_to` comes back as written, and reply counts cover exactly the asked range.
pub async fn thread_pages_and_reply_counts<S: MessageStore>(store: &S, p: &str) {
    let room = format!("{p}-room");
    // Roots 1 and 2; replies 3..=12 alternate between them; 13 replies to 3 (a reply to a reply).
    let mut msgs = messages(&room, 1..=13);
    for m in &mut msgs[2..12] {
        m.reply_to = Some(1 + m.seq % 2);
    }
    msgs[12].reply_to = Some(3);
    store.write_batch(&msgs).await.expect("write");
    assert_eq!(
        store.range_after(&room, 0, 20).await.expect("range_after"),
        msgs,
        "reply_to round-trips"
    );
    let odd: Vec<u64> = (3..=12).filter(|s| s % 2 == 0).collect();
    let page = store.thread(&room, 1, None, 3).await.expect("thread");
    assert_eq!(
        seqs(&page.messages),
        odd[odd.len() - 3..],
        "the newest replies of root 1, ascending"
    );
    assert_eq!(page.next_before, Some(page.messages[0].seq));
    let mut all = Vec::new();
    let mut before = None;
    loop {
        let page = store.thread(&room, 1, before, 2).await.expect("thread page");
        all.splice(0..0, seqs(&page.messages));
        match page.next_before {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    assert_eq!(all, odd, "paging reaches the first reply, nothing skipped or repeated");
    assert!(store.thread(&room, 5, None, 10).await.expect("no replies").messages.is_empty());
    assert_eq!(
        store.reply_counts(&room, 1, 13).await.expect("counts"),
        vec![(1, 5), (2, 5), (3, 1)]
    );
    assert_eq!(store.reply_counts(&room, 2, 2).await.expect("counts"), vec![(2, 5)]);
    assert!(store.reply_counts(&room, 4, 13).await.expect("counts").is_empty());
}

/// A user's rooms, sorted, each once, with the room's last stored seq and the user's marks there.
pub async fn user_rooms_with_marks<S: MessageStore>(store: &S, p: &str) {
    let user = format!("{p}-alice");
    let (ra, rb, rc) = (format!("{p}-a"), format!("{p}-b"), format!("{p}-c"));
    assert!(store.user_rooms(&user).await.expect("user_rooms").is_empty());
    for room in [&rb, &ra, &rc, &ra] {
        store.add_user_room(&user, room).await.expect("add");
    }
    let mut sent = messages(&ra, 1..=8);
    sent[7].sender = user.as_str().into();
    store.write_batch(&sent).await.expect("write");
    store.set_mark(&ra, &user, MarkKind::Read, 4).await.expect("mark");
    store.set_mark(&ra, &user, MarkKind::Delivered, 6).await.expect("mark");
    store.set_mark(&rc, &user, MarkKind::Delivered, 2).await.expect("mark");
    store
        .set_mark(&format!("{p}-not-joined"), &user, MarkKind::Read, 1)
        .await
        .expect("mark");
    let got = store.user_rooms(&user).await.expect("user_rooms");
    let want = vec![
        // Unread: 5, 6 and 7; 8 is the user's own.
        UserRoom {
            room: ra,
            seq: 8,
            read: 4,
            delivered: 6,
            unread: 3,
        },
        UserRoom {
            room: rb,
            seq: 0,
            read: 0,
            delivered: 0,
            unread: 0,
        },
        UserRoom {
            room: rc,
            seq: 0,
            read: 0,
            delivered: 2,
            unread: 0,
        },
    ];
    assert_eq!(got, want);
    assert!(store.user_rooms(&format!("{p}-bob")).await.expect("user_rooms").is_empty());
}

/// A user's last-seen time: none before the first, the latest after several (an older one,
/// from a slower node or a late write, does not move it back).
pub async fn last_seen_moves_forward<S: MessageStore>(store: &S, p: &str) {
    let (a, b) = (format!("{p}-alice"), format!("{p}-bob"));
    assert_eq!(store.last_seen(&a).await.expect("last_seen"), None);
    store.set_last_seen(&a, 1_700_000_000_500).await.expect("set");
    store.set_last_seen(&a, 1_700_000_000_900).await.expect("set");
    store.set_last_seen(&a, 1_700_000_000_700).await.expect("set older");
    assert_eq!(store.last_seen(&a).await.expect("last_seen"), Some(1_700_000_000_900));
    assert_eq!(store.last_seen(&b).await.expect("last_seen"), None, "users are independent");
}

/// `begin_run` reports whether the previous run ended with `end_run`.
pub async fn run_flags<S: MessageStore>(store: &S, p: &str) {
    let node = format!("{p}-node");
    assert!(store.begin_run(&node).await.expect("begin"), "a first run counts as clean");
    assert!(!store.begin_run(&node).await.expect("begin"), "no end_run: unclean");
    store.end_run(&node).await.expect("end");
    assert!(store.begin_run(&node).await.expect("begin"), "after end_run: clean");
    store.end_run(&node).await.expect("end");
    assert!(
        store.begin_run(&format!("{p}-other-node")).await.expect("begin"),
        "nodes are independent"
    );
}

/// Batches mixing 20 rooms: each room reads back its own messages, in order, complete.
pub async fn many_rooms_interleaved<S: MessageStore>(store: &S, p: &str) {
    let rooms: Vec<String> = (0..20).map(|i| format!("{p}-r{i}")).collect();
    let all: Vec<StoredMessage> = (1..=50_u64).flat_map(|seq| rooms.iter().map(move |r| message(r, seq))).collect();
    for chunk in all.chunks(64) {
        store.write_batch(chunk).await.expect("write");
    }
    for room in &rooms {
        assert_eq!(
            store.range_after(room, 0, 1000).await.expect("range"),
            messages(room, 1..=50),
            "room {room}"
        );
        assert_eq!(store.room_state(room, 1).await.expect("rs").last_seq, 50);
    }
}
