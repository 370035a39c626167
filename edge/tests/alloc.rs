//! Heap allocations per send on one node, through the engine and the mesh:
//! a send from a connection on shard 1 crosses the mesh to the room's owner
//! shard (`shard::mesh_out`, read in place), is sequenced by the local
//! sequencer's owner (`engine::owner`), and comes back across the mesh as the
//! ack and as a delivery that shard 1's member side (`engine::subscriber`)
//! takes into its ring. Counted by a counting global allocator on this test's
//! thread: a loaded room with three subscribed shards; 3,000 sends (with and
//! without a `client_id`, fast and durable), each send's effects pulled and its
//! store write completed.
//!
//! This is a count, not a timing: it does not flake. Once the room is warm
//! (the rings full, the frame pools and the dedupe memory in use: after the
//! first 2,000 sends), a send must allocate nothing. `ALLOC_REPORT=1` prints
//! the figures of both parts.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use edge::config::Durability;
use edge::engine::owner::{Effect, Owner, OwnerConfig, SendArgs, StorePort};
use edge::engine::subscriber::{Fate, JoinReq, SubEffect, Subscriber, SubscriberConfig};
use edge::metrics::ShardStats;
use edge::shard::mesh_out::MeshOut;
use router::ArchivedFrame;
use storage::{Answer, Completion, Overloaded, Query, RoomState, StoredMessage};

thread_local!(static ALLOCS: Cell<u64> = const { Cell::new(0) });

struct Counting;

// SAFETY: every call is passed on to the system allocator unchanged; the count is a
// thread-local `Cell` with const initialisation, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(l) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

/// A store port that admits everything and remembers the tickets to complete.
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

/// The allocations per send into a loaded room with three subscribed shards: over the
/// first 2,000 sends (the rings, the frame pools and the dedupe memory filling), then the
/// next 1,000 (the steady state).
fn per_send(durability: Durability, client_ids: bool) -> (f64, f64) {
    let cfg = OwnerConfig {
        shard: 0,
        shards: 3,
        durability,
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
    };
    let stats = Arc::new((0..3).map(|_| ShardStats::default()).collect::<Vec<_>>());
    let mut o = Owner::new(cfg, Port::default(), stats);
    // The sender is a joined member, as a room's sender always is (its session checks it):
    // online in the room's roster, whose name the stored message shares.
    for shard in 0..3 {
        o.subscribe("lobby", shard, shard as u64, (shard == 1).then_some("ann"), 1_000);
    }
    let mut polled = 0;
    // The room loads: its state, then (no message yet) nothing to warm.
    let (ticket, _) = o_queries(&mut o).remove(0);
    let state = Answer::RoomState(RoomState { epoch: 1, last_seq: 0 });
    o.completion(Completion::Answered { ticket, result: Ok(state) }, 1_000);
    while let Some(e) = o.poll() {
        polled += u32::from(matches!(e, Effect::Subscribed { .. }));
    }
    assert_eq!(polled, 3, "each shard's subscribe answered");
    // The sender's membership record (for `sync`) is written once, before the sends.
    while let Some(ticket) = o.store_mut().writes.pop() {
        o.completion(Completion::Written { ticket, result: Ok(()) }, 1_000);
    }
    while o.poll().is_some() {}
    let mut members = member_side();
    // Shard 1's frames to the owner shard, and the owner shard's to shard 1.
    let (mut member_out, mut owner_out) = (MeshOut::new(), MeshOut::new());
    let mut acks = 0;
    let sends = 1_000u64;
    let ids: Vec<String> = (0..3 * sends).map(|i| format!("c{i}")).collect();
    let body = "hello, this is a chat message of an ordinary length";
    let mut effects = 0;
    let mut counts = [0; 2];
    for i in 0..3 * sends {
        let before = allocs();
        let a = SendArgs {
            room: "lobby",
            shard: 1,
            conn: (1 << 48) | 7,
            user: "ann",
            req: Some("\"s\""),
            client_id: client_ids.then(|| ids[i as usize].as_str()),
            body,
            kind: "text",
            file: None,
            reply_to: None,
        };
        // The send comes from a connection on shard 1: across the mesh, read in place.
        let frame = member_out.send(&a);
        let Ok(ArchivedFrame::Send(m)) = router::decode(&frame) else {
            panic!("a send frame")
        };
        o.send(&SendArgs::of_archived(m), 2_000 + i);
        drop(frame);
        // Popped in place: the port's own bookkeeping allocates nothing per send.
        while let Some(ticket) = o.store_mut().writes.pop() {
            o.completion(Completion::Written { ticket, result: Ok(()) }, 2_000 + i);
        }
        while let Some(e) = o.poll() {
            match e {
                // Shard 1's member side takes it, across the mesh, into its ring (which keeps
                // the frame's buffer): its members get it.
                Effect::Deliver { shard, room, seq, payload } => {
                    effects += 1;
                    if shard != 1 {
                        continue;
                    }
                    let frame = owner_out.deliver(&room, seq, &payload, 0);
                    let Ok(ArchivedFrame::Deliver { room, seq, payload, .. }) = router::decode(&frame) else {
                        panic!("a deliver frame")
                    };
                    let payload = router::payload_bytes(&frame, payload.as_slice());
                    assert_eq!(members.deliver(room.as_str(), seq.to_native(), &payload), Fate::Members);
                }
                // The ack goes back across the mesh to the sender's shard, which writes it.
                Effect::Reply { conn, payload } => {
                    let frame = owner_out.reply(conn, &payload);
                    let Ok(ArchivedFrame::Reply { payload, .. }) = router::decode(&frame) else {
                        panic!("a reply frame")
                    };
                    acks += usize::from(router::payload_bytes(&frame, payload.as_slice()).starts_with(b"{\"type\":\"ack\""));
                }
                _ => {}
            }
        }
        counts[usize::from(i >= 2 * sends)] += allocs() - before;
    }
    assert_eq!(effects, 3 * 3 * sends, "one Deliver per subscribed shard per send");
    assert_eq!(acks, 3 * sends as usize, "one ack per send");
    (counts[0] as f64 / (2 * sends) as f64, counts[1] as f64 / sends as f64)
}

/// A member shard's side of the room, with three connections joined.
fn member_side() -> Subscriber {
    let mut members = Subscriber::new(SubscriberConfig {
        ring_cap: 256,
        ring_max_bytes: 1 << 20,
        max_catch_up_messages: 1_000,
        run_epoch: 1,
    });
    for token in 1..=3 {
        members.join(JoinReq {
            room: "lobby",
            conn: token,
            token,
            req: None,
            since: None,
            user: "ann",
        });
        while let Some(e) = members.poll() {
            match e {
                SubEffect::Subscribe { token, .. } => members.subscribed(token, Ok(None)),
                SubEffect::RoomSeq { token, .. } => members.room_seq(token, Ok(0)),
                _ => {}
            }
        }
    }
    members
}

fn o_queries(o: &mut Owner<Port>) -> Vec<(u64, Query)> {
    std::mem::take(&mut o.store_mut().queries)
}

#[test]
fn a_send_allocates_nothing_once_its_room_is_warm() {
    let figures = [
        ("fast", per_send(Durability::Fast, false)),
        ("fast+client_id", per_send(Durability::Fast, true)),
        ("durable", per_send(Durability::Durable, false)),
        ("durable+client_id", per_send(Durability::Durable, true)),
    ];
    if std::env::var_os("ALLOC_REPORT").is_some() {
        for (what, (first, steady)) in &figures {
            eprintln!("allocations per send, {what}: first 2,000 {first:.2}, next 1,000 {steady:.2}");
        }
    }
    for (what, (_, steady)) in figures {
        assert!(
            steady == 0.0,
            "{what}: {steady:.3} allocations per send once warm, not 0 (results/alloc-per-send.txt)"
        );
    }
}
