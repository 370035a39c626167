//! The CI regression gate: instruction counts (callgrind, through gungraun)
//! of the hot paths, compared with the baseline committed in
//! `bench/baselines/`. `scripts/icount.sh` runs it; a path whose count
//! grows more than 3% fails the run. Counts do not flake the way wall-clock
//! timings do on a shared VM; criterion-style timings stay ungated.
//!
//! Each benchmark's setup runs outside the count, and each counted function
//! does a fixed amount of work, so a count is the same from run to run on
//! the same toolchain.

// gungraun's macros expand to fully qualified paths.
#![allow(unused_qualifications)]

use std::hint::black_box;
use std::sync::Arc;

use bytes::BytesMut;
use edge::config::Durability;
use edge::engine::owner::{Effect, Owner, OwnerConfig, SendArgs, StorePort};
use edge::engine::subscriber::{Fate, JoinReq, SubEffect, Subscriber, SubscriberConfig};
use edge::metrics::ShardStats;
use edge::protocol::client::{self, ParseLimits};
use edge::protocol::server::{self, MessageOut};
use edge::shard::mesh_out::MeshOut;
use edge::shard::outbox::Outbox;
use edge::ws::codec;
use gungraun::prelude::*;
use router::{ArchivedFrame, Endpoint, Frame, SendMsg};
use storage::{Answer, Completion, Overloaded, Query, RoomState, StoredMessage};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BODY: &str = "hello, this is a chat message of an ordinary length for a chat room";

// ---- frame header encode ----

/// The lengths a server's frames have: short ones, 16-bit and 64-bit lengths.
fn header_lengths() -> Vec<usize> {
    (0..1_000)
        .map(|i| [12, 125, 126, 300, 4_096, 65_535, 65_536, 1 << 20][i % 8] + i)
        .collect()
}

#[library_benchmark]
#[bench::thousand(setup = header_lengths)]
fn frame_header_encode(lengths: Vec<usize>) -> Vec<usize> {
    let mut sum = 0usize;
    for &n in &lengths {
        sum = sum.wrapping_add(black_box(codec::text_header(black_box(n))).as_bytes().len());
    }
    black_box(sum);
    lengths
}

// ---- client JSON parse ----

fn send_frame() -> String {
    format!(r#"{{"type":"send","id":17,"room":"lobby","body":"{BODY}","client_id":"c-0123456789abcdef"}}"#)
}

#[library_benchmark]
#[bench::send(setup = send_frame)]
fn client_json_parse(text: String) -> String {
    let limits = ParseLimits {
        max_body_chars: 4_096,
        max_client_id_bytes: 64,
    };
    for _ in 0..10 {
        let env = client::parse(black_box(&text), &limits).expect("a valid send");
        black_box(&env);
    }
    text
}

// ---- message render ----

#[library_benchmark]
fn message_render() {
    for seq in 1..=10 {
        let m = MessageOut {
            room: "lobby",
            seq,
            msg_id: "9f86d081884c7d65-18f3a2b4c1d-123456",
            from: "alice",
            ts: 1_764_600_000_000,
            body: BODY,
            kind: "text",
            file: None,
            reply_to: None,
        };
        black_box(server::message(black_box(&m)));
    }
}

// ---- fan-out of one message to 100 members through the engine ----

/// A store port that admits everything (the writes are completed by hand).
#[derive(Default)]
struct Port {
    writes: Vec<u64>,
    queries: Vec<(u64, Query)>,
}

impl StorePort for Port {
    fn write(&mut self, _msg: StoredMessage, ticket: u64) -> Result<(), Overloaded> {
        self.writes.push(ticket);
        Ok(())
    }

    fn query(&mut self, query: Query, ticket: u64) -> Result<(), Overloaded> {
        self.queries.push((ticket, query));
        Ok(())
    }
}

/// One shard's engine with a loaded room, its member side joined by 100 connections.
struct FanOut {
    owner: Owner<Port>,
    members: Subscriber,
    outboxes: Vec<Outbox>,
}

fn owner_config() -> OwnerConfig {
    OwnerConfig {
        shard: 0,
        shards: 1,
        durability: Durability::Fast,
        dedupe_per_room: 64,
        recent_per_room: 256,
        recent_per_room_bytes: 1 << 20,
        room_load_queue_max: 64,
        max_rooms_per_shard: 16,
        room_idle_evict_ms: 300_000,
        rooms_per_user_per_s: 5.0,
        rooms_per_user_burst: 100,
        history_page_max_bytes: 1 << 20,
        presence_roster_max: 100,
        receipts_room_max: 100,
        delivered_marks: true,
        delivered_flush_ms: 1_000,
        previous_run_clean: true,
        run_epoch: 1,
    }
}

fn fan_out_setup() -> FanOut {
    let stats = Arc::new(vec![ShardStats::default()]);
    let mut owner = Owner::new(owner_config(), Port::default(), stats);
    owner.subscribe("lobby", 0, 1, None, 1_000);
    let (ticket, _) = owner.store_mut().queries.remove(0);
    let state = Answer::RoomState(RoomState { epoch: 1, last_seq: 0 });
    owner.completion(Completion::Answered { ticket, result: Ok(state) }, 1_000);
    while owner.poll().is_some() {}
    let mut members = Subscriber::new(SubscriberConfig {
        ring_cap: 256,
        ring_max_bytes: 1 << 20,
        max_catch_up_messages: 1_000,
        run_epoch: 1,
    });
    let users: Vec<String> = (0..100).map(|i| format!("u{i}")).collect();
    for (i, user) in users.iter().enumerate() {
        let token = i as u64 + 1;
        members.join(JoinReq {
            room: "lobby",
            conn: token,
            token,
            req: None,
            since: None,
            user,
        });
        while let Some(e) = members.poll() {
            match e {
                SubEffect::Subscribe { token, .. } => members.subscribed(token, Ok(None)),
                SubEffect::RoomSeq { token, .. } => members.room_seq(token, Ok(0)),
                _ => {}
            }
        }
    }
    // The outbox bounds are far above what one message queues.
    let outboxes = (0..100).map(|_| Outbox::new(-1, 1 << 20, 1_000)).collect();
    FanOut { owner, members, outboxes }
}

#[library_benchmark]
#[bench::hundred_members(setup = fan_out_setup)]
fn fan_out_100(mut f: FanOut) -> FanOut {
    for i in 0..10u64 {
        let send = SendArgs {
            room: "lobby",
            shard: 0,
            conn: 1,
            user: "u0",
            req: Some("7"),
            client_id: None,
            body: BODY,
            kind: "text",
            file: None,
            reply_to: None,
        };
        f.owner.send(&send, 2_000 + i);
        while let Some(ticket) = f.owner.store_mut().writes.pop() {
            f.owner.completion(Completion::Written { ticket, result: Ok(()) }, 2_000 + i);
        }
        while let Some(e) = f.owner.poll() {
            if let Effect::Deliver { room, seq, payload, .. } = e {
                if f.members.deliver(&room, seq, &payload) == Fate::Members {
                    for out in &f.outboxes {
                        out.push_live(payload.clone());
                    }
                }
            }
        }
    }
    f
}

// ---- a mesh hop, and rkyv frame access ----

fn send_msg() -> Frame {
    Frame::Send(SendMsg {
        room: "lobby".into(),
        shard: 1,
        conn: (1 << 48) | 7,
        user: "alice".into(),
        req: Some("17".into()),
        client_id: Some("c-0123456789abcdef".into()),
        body: BODY.into(),
        kind: "text".into(),
        file: None,
        reply_to: None,
    })
}

/// A connection's parsed send, as the member shard has it.
fn args_of(msg: &Frame) -> SendArgs<'_> {
    let Frame::Send(m) = msg else { unreachable!("a send") };
    SendArgs::of_msg(m)
}

/// The member shard's mesh frames warm, as in a running node: its pool has retired a
/// full round of frames, each received and dropped, so a send encodes into one again.
fn mesh_setup() -> (Frame, MeshOut, Vec<Endpoint>) {
    let (msg, mut out) = (send_msg(), MeshOut::new());
    for _ in 0..2_048 {
        drop(out.send(&args_of(&msg)));
    }
    (msg, out, router::mesh(2, 1_024))
}

// A send crosses the mesh: encoded on the member shard (from the connection's parsed
// send, into a scratch frame and a pooled buffer, as the shell does), through the ring,
// read in place on the owner shard and turned into the engine's `SendArgs`.
#[library_benchmark]
#[bench::send(setup = mesh_setup)]
fn mesh_hop((msg, mut out, ends): (Frame, MeshOut, Vec<Endpoint>)) -> (Frame, MeshOut, Vec<Endpoint>) {
    let args = args_of(&msg);
    for _ in 0..10 {
        ends[1].try_send(0, out.send(black_box(&args))).expect("room in the ring");
        ends[0].drain(16, |_, bytes| {
            let archived = router::decode(&bytes).expect("a valid frame");
            if let ArchivedFrame::Send(m) = archived {
                black_box(SendArgs::of_archived(m));
            }
        });
    }
    (msg, out, ends)
}

/// A `Deliver` frame as the bridge gets it: read and validated in place, at an odd address.
fn deliver_frame() -> BytesMut {
    let payload = server::message(&MessageOut {
        room: "lobby",
        seq: 42,
        msg_id: "9f86d081884c7d65-18f3a2b4c1d-42",
        from: "alice",
        ts: 1_764_600_000_000,
        body: BODY,
        kind: "text",
        file: None,
        reply_to: None,
    });
    let f = router::encode(&Frame::Deliver {
        room: "lobby".into(),
        seq: 42,
        payload: payload.to_vec(),
        at_us: 0,
    });
    let mut buf = BytesMut::with_capacity(f.len() + 1);
    buf.extend_from_slice(&[0]);
    buf.extend_from_slice(&f);
    buf
}

#[library_benchmark]
#[bench::deliver(setup = deliver_frame)]
fn rkyv_frame_access(buf: BytesMut) -> BytesMut {
    let mut seqs = 0u64;
    for _ in 0..10 {
        if let Ok(ArchivedFrame::Deliver { seq, payload, .. }) = router::decode(black_box(&buf[1..])) {
            seqs += seq.to_native() + payload.len() as u64;
        }
    }
    black_box(seqs);
    buf
}

library_benchmark_group!(
    name = hot_paths,
    benchmarks = [
        frame_header_encode,
        client_json_parse,
        message_render,
        fan_out_100,
        mesh_hop,
        rkyv_frame_access
    ]
);

main!(library_benchmark_groups = hot_paths);
