//! The harness's seeded runs: every seed in `fast` and `durable` mode, and the
//! seeds that found real bugs, kept as regression tests.

use std::collections::BTreeMap;

use super::World;
use crate::config::Durability;

/// What a seed's run did: idle rooms evicted, and what the clients got (`World::tally`).
struct Ran {
    evicted: u64,
    tally: BTreeMap<String, u64>,
}

/// Runs `steps` steps of seed `seed`, then settles and checks.
fn run(seed: u64, durability: Durability, steps: usize) -> Ran {
    let mut w = World::new(seed, durability);
    for _ in 0..steps {
        w.step();
    }
    w.settle();
    let evicted = w
        .owners
        .iter()
        .map(|o| o.stats().rooms_evicted_total.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    Ran { evicted, tally: w.tally }
}

/// Runs every seed (or `HARNESS_SEED` alone); a failure names its seed.
fn run_seeds(durability: Durability) {
    let seeds: Vec<u64> = match std::env::var("HARNESS_SEED") {
        Ok(s) => vec![s.parse().expect("HARNESS_SEED is a number")],
        Err(_) => {
            let n = std::env::var("HARNESS_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
            (0..n).collect()
        }
    };
    let mut idle_evictions = 0;
    let mut tally: BTreeMap<String, u64> = BTreeMap::new();
    let many = seeds.len() >= 30;
    let n = seeds.len();
    for seed in seeds {
        match std::panic::catch_unwind(|| run(seed, durability, 400)) {
            Ok(ran) => {
                idle_evictions += ran.evicted;
                for (kind, k) in ran.tally {
                    *tally.entry(kind).or_default() += k;
                }
            }
            Err(e) => {
                eprintln!("harness: seed {seed} ({durability:?}) failed; replay with HARNESS_SEED={seed}");
                std::panic::resume_unwind(e);
            }
        }
    }
    // A third of the seeds evict idle rooms: over many seeds that must have happened, or
    // the invariants above were never checked across an idle eviction and reload.
    assert!(!many || idle_evictions > 0, "no idle room was evicted in any seed");
    // What the seeds exercised (with --nocapture), to compare runs of the same seeds.
    eprintln!("harness {durability:?}: {n} seeds, {idle_evictions} idle evictions; clients got {tally:?}");
}

#[test]
fn fast_mode_keeps_every_invariant_over_seeded_interleavings() {
    run_seeds(Durability::Fast);
}

#[test]
fn durable_mode_keeps_every_invariant_over_seeded_interleavings() {
    run_seeds(Durability::Durable);
}

/// Seeds that found real bugs, kept as regression tests (each fails without its fix).
#[test]
fn found_a_leave_after_a_refused_join_taking_another_members_count() {
    // Before members were counted per connection (`OwnedRoom::join`/`leave`), a leave for
    // a join the owner had refused decremented its shard's count for another member.
    run(30, Durability::Durable, 400);
}

#[test]
fn found_a_given_up_seq_reused_after_eviction_and_reload() {
    // Before `OwnedRoom::is_evictable` waited for the store to hold a seq above every seq
    // given up, a room whose last durable write failed could be evicted and reloaded from
    // below that seq, handing it to a new message.
    run(1901, Durability::Durable, 400);
}

#[test]
fn found_an_old_version_kept_from_an_earlier_subscription() {
    // Before `RoomFeed::learn_from_owner` dropped what a feed held before the owner's answer
    // to its subscribe, a delivery still in flight from the shard's earlier subscription
    // (the owner, told of the unsubscribe, no longer sent it that message's delete) stayed
    // in the new feed's ring as the old version, for later catch-ups to serve.
    run(408, Durability::Durable, 400);
    // The harness changed since, and seed 408 no longer meets the bug; seed 321 does (it fails
    // without the fix, in both modes).
    run(321, Durability::Durable, 400);
}
