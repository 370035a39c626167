//! Heap allocations per send in the local sequencer's owner (`engine::owner`),
//! counted by a counting global allocator on this test's thread: a loaded
//! room with three subscribed shards, 1,000 sends (with and without a
//! `client_id`), each send's effects pulled and its store write completed.
//!
//! This is a count, not a timing: it does not flake. The bound is a
//! regression gate at today's figure; `ALLOC_REPORT=1` prints the figures.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use edge::config::Durability;
use edge::engine::owner::{Effect, Owner, OwnerConfig, SendArgs, StorePort};
use edge::metrics::ShardStats;
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

/// The allocations of `sends` sends into a loaded room with three subscribed shards.
fn per_send(durability: Durability, client_ids: bool) -> f64 {
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
    let sends = 1_000u64;
    let ids: Vec<String> = (0..sends).map(|i| format!("c{i}")).collect();
    let body = "hello, this is a chat message of an ordinary length";
    let mut effects = 0;
    let before = allocs();
    for i in 0..sends {
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
        o.send(&a, 2_000 + i);
        // Popped in place: the port's own bookkeeping allocates nothing per send.
        while let Some(ticket) = o.store_mut().writes.pop() {
            o.completion(Completion::Written { ticket, result: Ok(()) }, 2_000 + i);
        }
        while let Some(e) = o.poll() {
            effects += u64::from(matches!(e, Effect::Deliver { .. }));
        }
    }
    let n = allocs() - before;
    assert_eq!(effects, 3 * sends, "one Deliver per subscribed shard per send");
    n as f64 / sends as f64
}

fn o_queries(o: &mut Owner<Port>) -> Vec<(u64, Query)> {
    std::mem::take(&mut o.store_mut().queries)
}

#[test]
fn allocations_per_send_stay_at_or_below_todays() {
    // (mode, measured, today's figure + half an allocation: the gate)
    let figures = [
        ("fast", per_send(Durability::Fast, false), 4.5),
        ("fast+client_id", per_send(Durability::Fast, true), 9.5),
        ("durable", per_send(Durability::Durable, false), 8.5),
        ("durable+client_id", per_send(Durability::Durable, true), 14.5),
    ];
    if std::env::var_os("ALLOC_REPORT").is_some() {
        for (what, n, _) in &figures {
            eprintln!("allocations per send, {what}: {n:.2}");
        }
    }
    for (what, n, bound) in figures {
        assert!(
            n <= bound,
            "{what}: {n:.2} allocations per send, above {bound} (results/alloc-per-send.txt)"
        );
    }
}
