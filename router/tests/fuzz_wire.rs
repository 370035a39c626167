//! Property-based fuzzing (proptest, stable Rust) of the router's parsers of bytes from
//! other threads and other nodes: rkyv frame access, `router::decode` (`frame`), and what
//! the Redis bridge decodes, `router::bridge::decode_incoming` (`bridge`).
//!
//! Every property runs `FUZZ_CASES` cases (default 256, so `cargo test --workspace` stays
//! quick; `scripts/test.sh` runs many more). Failure persistence is off: a case proptest
//! finds is committed as a plain `#[test]` holding its bytes, next to its property, and the
//! parser is fixed in its own source file.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::Config;
use router::{ChangeMsg, ChangeOp, FileRef, Frame, Refusal, RefusalCode, SendMsg, SeqPayload};

#[cfg(feature = "redis")]
#[path = "fuzz_wire/bridge.rs"]
mod bridge;
#[path = "fuzz_wire/frame.rs"]
mod frame;

/// Cases per property: `FUZZ_CASES`, else 256.
fn cases() -> u32 {
    std::env::var("FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(256)
}

/// The config of every property here: [`cases`], no regression files in the tree.
fn config() -> Config {
    Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    }
}

/// Which variant `f` is. Exhaustive, so a new variant does not compile until [`any_frame`]
/// generates it too (and `VARIANTS` counts it).
fn variant(f: &Frame) -> usize {
    match f {
        Frame::Handoff { .. } => 0,
        Frame::Subscribe { .. } => 1,
        Frame::Subscribed { .. } => 2,
        Frame::Fetch { .. } => 3,
        Frame::Fetched { .. } => 4,
        Frame::Unsubscribe { .. } => 5,
        Frame::Presence { .. } => 6,
        Frame::Send(_) => 7,
        Frame::Online { .. } => 8,
        Frame::Reply { .. } => 9,
        Frame::Deliver { .. } => 10,
        Frame::Shutdown { .. } => 11,
        Frame::History { .. } => 12,
        Frame::Reset { .. } => 13,
        Frame::Read { .. } => 14,
        Frame::Typing { .. } => 15,
        Frame::UserDeliver { .. } => 16,
        Frame::Event { .. } => 17,
        Frame::Delivered { .. } => 18,
        Frame::EventTo { .. } => 19,
        Frame::Seen { .. } => 20,
        Frame::LastSeen { .. } => 21,
        Frame::Change(_) => 22,
        Frame::Changed { .. } => 23,
        Frame::Disconnect { .. } => 24,
        Frame::ToSenders { .. } => 25,
        Frame::Gap { .. } => 26,
    }
}

/// How many variants [`variant`] knows.
const VARIANTS: usize = 27;

fn text() -> impl Strategy<Value = String> + Clone {
    "(?s).{0,12}"
}

fn opt_text() -> impl Strategy<Value = Option<String>> + Clone {
    prop::option::of(text())
}

fn bytes() -> impl Strategy<Value = Vec<u8>> + Clone {
    vec(any::<u8>(), 0..48)
}

fn refusal() -> impl Strategy<Value = Option<Refusal>> {
    let code = prop::sample::select(vec![RefusalCode::Overloaded, RefusalCode::Unavailable, RefusalCode::Internal]);
    prop::option::of(
        (code, prop::option::of(any::<u64>()), text()).prop_map(|(code, retry_ms, message)| Refusal { code, retry_ms, message }),
    )
}

fn send_msg() -> impl Strategy<Value = SendMsg> {
    let file = (text(), text(), any::<u64>(), text()).prop_map(|(url, name, size, mime)| FileRef { url, name, size, mime });
    (
        (text(), any::<u16>(), any::<u64>(), text()),
        (opt_text(), opt_text(), text(), text()),
        (prop::option::of(file), prop::option::of(any::<u64>())),
    )
        .prop_map(
            |((room, shard, conn, user), (req, client_id, body, kind), (file, reply_to))| SendMsg {
                room,
                shard,
                conn,
                user,
                req,
                client_id,
                body,
                kind,
                file,
                reply_to,
            },
        )
}

fn change_msg() -> impl Strategy<Value = ChangeMsg> {
    let op = prop_oneof![
        text().prop_map(|body| ChangeOp::Edit { body }),
        Just(ChangeOp::Delete),
        (text(), any::<bool>()).prop_map(|(emoji, add)| ChangeOp::React { emoji, add }),
    ];
    (text(), any::<u64>(), text(), any::<bool>(), any::<u64>(), opt_text(), op).prop_map(|(room, seq, user, moderator, conn, req, op)| {
        ChangeMsg {
            room,
            seq,
            user,
            moderator,
            conn,
            req,
            op,
        }
    })
}

/// Any frame of any variant, with any field values.
fn any_frame() -> BoxedStrategy<Frame> {
    let (s, os, b, u64s) = (text(), opt_text(), bytes(), any::<u64>());
    let names = vec(text(), 0..4);
    let seq_payloads = vec((any::<u64>(), bytes()).prop_map(|(seq, payload)| SeqPayload { seq, payload }), 0..4);
    prop_oneof![
        (any::<i32>(), b.clone(), s.clone()).prop_map(|(fd, head, peer)| Frame::Handoff { fd, head, peer }),
        (s.clone(), any::<u16>(), u64s, os.clone()).prop_map(|(room, shard, token, user)| Frame::Subscribe { room, shard, token, user }),
        (u64s, u64s, u64s, u64s, refusal()).prop_map(|(token, seq, epoch, others, refusal)| Frame::Subscribed {
            token,
            seq,
            epoch,
            others,
            refusal
        }),
        (s.clone(), any::<u16>(), u64s, u64s, any::<u32>()).prop_map(|(room, shard, token, after, count)| Frame::Fetch {
            room,
            shard,
            token,
            after,
            count
        }),
        (u64s, seq_payloads, refusal()).prop_map(|(token, messages, refusal)| Frame::Fetched { token, messages, refusal }),
        (s.clone(), any::<u16>()).prop_map(|(room, shard)| Frame::Unsubscribe { room, shard }),
        (s.clone(), any::<u16>(), s.clone(), any::<bool>()).prop_map(|(room, shard, user, online)| Frame::Presence {
            room,
            shard,
            user,
            online
        }),
        send_msg().prop_map(Frame::Send),
        (s.clone(), u64s, os.clone()).prop_map(|(room, conn, req)| Frame::Online { room, conn, req }),
        (u64s, b.clone()).prop_map(|(conn, payload)| Frame::Reply { conn, payload }),
        (s.clone(), u64s, b.clone(), u64s).prop_map(|(room, seq, payload, at_us)| Frame::Deliver { room, seq, payload, at_us }),
        any::<u32>().prop_map(|retry_ms_max| Frame::Shutdown { retry_ms_max }),
        (
            s.clone(),
            s.clone(),
            u64s,
            os.clone(),
            prop::option::of(u64s),
            any::<u32>(),
            prop::option::of(u64s)
        )
            .prop_map(|(room, user, conn, req, before, limit, thread)| Frame::History {
                room,
                user,
                conn,
                req,
                before,
                limit,
                thread
            }),
        (s.clone(), u64s, b.clone()).prop_map(|(room, seq, payload)| Frame::Reset { room, seq, payload }),
        (s.clone(), s.clone(), u64s, u64s, os.clone()).prop_map(|(room, user, seq, conn, req)| Frame::Read {
            room,
            user,
            seq,
            conn,
            req
        }),
        (s.clone(), s.clone(), any::<bool>()).prop_map(|(room, user, typing)| Frame::Typing { room, user, typing }),
        (os.clone(), s.clone(), u64s, b.clone()).prop_map(|(user, room, seq, payload)| Frame::UserDeliver { user, room, seq, payload }),
        (s.clone(), s.clone(), b.clone()).prop_map(|(room, from, payload)| Frame::Event { room, from, payload }),
        (s.clone(), u64s, names.clone()).prop_map(|(room, seq, users)| Frame::Delivered { room, seq, users }),
        (s.clone(), names, b.clone()).prop_map(|(room, users, payload)| Frame::EventTo { room, users, payload }),
        (s.clone(), any::<u16>(), any::<bool>()).prop_map(|(user, shard, online)| Frame::Seen { user, shard, online }),
        (s.clone(), u64s, os).prop_map(|(user, conn, req)| Frame::LastSeen { user, conn, req }),
        change_msg().prop_map(Frame::Change),
        (s.clone(), b.clone()).prop_map(|(room, payload)| Frame::ToSenders { room, payload }),
        (s.clone(), u64s, u64s, b.clone()).prop_map(|(room, from, to, payload)| Frame::Gap { room, from, to, payload }),
        (s.clone(), u64s, prop::option::of(b.clone()), b).prop_map(|(room, seq, message, event)| Frame::Changed {
            room,
            seq,
            message,
            event
        }),
        (s.clone(), s, prop::option::of(u64s), u64s).prop_map(|(user, reason, retry_ms, conn)| Frame::Disconnect {
            user,
            reason,
            retry_ms,
            conn
        }),
    ]
    .boxed()
}

/// Byte edits on an encoding: flip bits, set, insert or remove a byte, truncate, extend.
fn mutate(buf: &[u8], edits: &[(prop::sample::Index, u8, u8)]) -> Vec<u8> {
    let mut b = buf.to_vec();
    for (at, op, byte) in edits {
        let i = at.index(b.len() + 1);
        match op % 6 {
            0 if i < b.len() => b[i] ^= byte | 1,
            1 if i < b.len() => b[i] = *byte,
            2 => b.insert(i, *byte),
            3 if i < b.len() => {
                b.remove(i);
            }
            4 => b.truncate(i),
            5 => b.extend(std::iter::repeat_n(*byte, usize::from(*byte % 8) + 1)),
            _ => {}
        }
    }
    b
}

/// Valid encodings of any frame, mutated.
fn mutated_frame() -> impl Strategy<Value = Vec<u8>> {
    (any_frame(), vec((any::<prop::sample::Index>(), any::<u8>(), any::<u8>()), 1..5))
        .prop_map(|(f, edits)| mutate(&router::encode(&f), &edits))
}
