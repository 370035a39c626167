//! The cluster harness's seeded runs, in both modes, and the seeds that found bugs.

use super::{World, MAX_REPAIR_READS};

fn run_seeds() {
    let seeds: Vec<u64> = match std::env::var("HARNESS_SEED") {
        Ok(s) => vec![s.parse().expect("HARNESS_SEED is a number")],
        Err(_) => (0..std::env::var("HARNESS_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(300)).collect(),
    };
    let many = seeds.len() >= 30;
    for via_pump in [false, true] {
        let mode = if via_pump { "through the pump" } else { "direct" };
        let (mut evicted, mut repairs, mut gave_up, mut recoveries) = (0, 0, 0, 0);
        for &seed in &seeds {
            let run = || {
                let mut w = World::new(seed, via_pump);
                w.run(400);
                let evicted = w
                    .publishers
                    .iter()
                    .map(|p| p.stats().rooms_evicted_total.load(std::sync::atomic::Ordering::Relaxed))
                    .sum::<u64>();
                let gave_up = w.failed_holes.values().filter(|&&n| n >= MAX_REPAIR_READS).count();
                (evicted, w.repair_reads, gave_up, w.recovery_reads)
            };
            match std::panic::catch_unwind(run) {
                Ok((e, r, g, p)) => (evicted, repairs, gave_up, recoveries) = (evicted + e, repairs + r, gave_up + g, recoveries + p),
                Err(e) => {
                    eprintln!("cluster harness: seed {seed} failed {mode}; replay with HARNESS_SEED={seed}");
                    std::panic::resume_unwind(e);
                }
            }
        }
        if many {
            eprintln!(
                "cluster harness, {mode}: {repairs} reads of a hole by a shard ({gave_up} named a gap after every read failed), {recoveries} reads by a pump"
            );
            assert!(evicted > 0, "{mode}: no idle room was forgotten in any seed");
            assert!(repairs > 0, "{mode}: no shard read a hole in any seed");
            assert!(!via_pump || recoveries > 0, "{mode}: no pump read the stream in any seed");
        }
    }
}

#[test]
fn the_redis_sequencer_keeps_every_invariant_over_seeded_interleavings() {
    run_seeds();
}

/// Seeds that found real bugs, kept as regression tests.
#[test]
fn found_a_second_seq_read_dropping_messages_in_flight() {
    // Two joins racing on a shard both read the room's seq; the later read moved the
    // cursor past deliveries still in flight, which were then dropped as repeats, and
    // stale deliveries of an earlier subscription set the position (`RoomFeed::learn`).
    World::new(0, false).run(400);
}

#[test]
fn found_a_gap_announced_for_messages_the_stream_still_held() {
    // Deliveries during a join's catch-up read that the ring did not keep were
    // announced as a gap instead of being read too (`Subscriber::fetched`).
    World::new(11, false).run(400);
}

#[test]
fn found_a_pump_gap_overlapping_what_a_shard_read_itself() {
    // The pump's recovery read failed and it named 5..=9 a gap, while the shard's own read
    // of a hole had already given 5 and 6 to its members: the `gap` must name 7..=9 only
    // (`Subscriber::release`).
    World::new(1, true).run(400);
}
