//! The delivery-latency histogram's sampling, shell side: each connection follows one
//! live frame at a time from its sequencing to the end of the write that carried it
//! (`Outbox::sample_latency`, then the writer), at 8 bytes per connection and one clock
//! read per sampled write.

use std::cell::Cell;

/// The delivery-latency sample of one connection, packed in a `u64` so it costs a
/// connection 8 bytes: bit 63 set while the followed frame is in the batch being written;
/// bits 40..63 the frames queued up to and including it; bits 0..40 when it was sequenced
/// ([`mono_us`], modulo 2^40: latencies are measured modulo 12 days). 0: nothing followed.
pub(super) struct Sample;

impl Sample {
    const IN_FLIGHT: u64 = 1 << 63;
    const AT_MASK: u64 = (1 << 40) - 1;
    const AHEAD_MAX: u64 = (1 << 23) - 1;

    /// A frame followed at position `ahead` of the queue (1: first).
    pub(super) fn queued(ahead: usize, at_us: u64) -> u64 {
        let ahead = (ahead as u64).min(Self::AHEAD_MAX);
        if ahead == 0 {
            return 0;
        }
        (ahead << 40) | (at_us & Self::AT_MASK)
    }

    /// `n` frames were taken from the queue's front into the batch.
    pub(super) fn taken(s: u64, n: usize) -> u64 {
        if s == 0 || s & Self::IN_FLIGHT != 0 {
            return s;
        }
        let ahead = (s >> 40) & Self::AHEAD_MAX;
        if ahead <= n as u64 {
            Self::IN_FLIGHT | (s & Self::AT_MASK)
        } else {
            ((ahead - n as u64) << 40) | (s & Self::AT_MASK)
        }
    }

    /// The batch was written at `now_us`: the followed frame's latency if it was in it.
    pub(super) fn written(cell: &Cell<u64>, now_us: u64) -> Option<u64> {
        let s = cell.get();
        if s & Self::IN_FLIGHT == 0 {
            return None;
        }
        cell.set(0);
        Some(now_us.wrapping_sub(s) & Self::AT_MASK)
    }
}

/// Monotonic microseconds since the process first asked a shard clock: the time a
/// message was sequenced, compared on whichever shard writes it.
pub(super) fn mono_us() -> u64 {
    start().elapsed().as_micros() as u64
}

pub(super) fn start() -> std::time::Instant {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *START.get_or_init(std::time::Instant::now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_is_timed_when_the_batch_holding_it_is_written() {
        let cell = Cell::new(Sample::queued(3, 1_000));
        // Two frames ahead of it go out first: not yet.
        cell.set(Sample::taken(cell.get(), 2));
        assert_eq!(Sample::written(&cell, 5_000), None);
        // The next batch holds it: timed once, then cleared.
        cell.set(Sample::taken(cell.get(), 4));
        assert_eq!(Sample::written(&cell, 5_000), Some(4_000));
        assert_eq!(cell.get(), 0);
        assert_eq!(Sample::written(&cell, 6_000), None);
    }

    #[test]
    fn a_sample_taken_with_the_batch_survives_more_takes_and_wraps_its_clock() {
        let at = (1u64 << 40) - 10; // just before the 40-bit clock wraps
        let cell = Cell::new(Sample::queued(1, at));
        cell.set(Sample::taken(cell.get(), 1));
        cell.set(Sample::taken(cell.get(), 5)); // already in flight: unchanged
        assert_eq!(Sample::written(&cell, (1u64 << 40) + 15), Some(25));
        assert_eq!(Sample::queued(0, 7), 0, "nothing queued: nothing followed");
        assert_eq!(Sample::taken(0, 3), 0);
    }
}
