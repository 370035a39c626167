//! The bridge's counters and its Redis round-trip histogram: plain atomics,
//! written by the bridge thread, read from anywhere.
//!
//! What must stay true: recording is lock-free and allocation-free; a
//! snapshot may mix values from slightly different instants (each field is
//! read on its own), which is fine for monitoring.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Histogram buckets: bucket `i` counts round trips of `[2^(i-1), 2^i)` µs
/// (bucket 0: under 1 µs); the last bucket takes everything above.
const BUCKETS: usize = 32;

/// Live counters; read them with [`BridgeMetrics::snapshot`].
#[derive(Debug, Default)]
pub struct BridgeMetrics {
    rtt_buckets: [AtomicU64; BUCKETS],
    rtt_us_last: AtomicU64,
    pub(crate) reconnects_total: AtomicU64,
    pub(crate) subscriptions: AtomicU64,
    pub(crate) published_total: AtomicU64,
    pub(crate) received_total: AtomicU64,
    pub(crate) rejected_total: AtomicU64,
    pub(crate) script_calls_total: AtomicU64,
    pub(crate) errors_total: AtomicU64,
    pub(crate) gaps_total: AtomicU64,
    pub(crate) lagged_total: AtomicU64,
    pub(crate) resyncs_total: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// The latest Redis round trip, µs.
    pub rtt_us_last: u64,
    /// Median round trip since start (upper bound of its power-of-two bucket), µs.
    pub rtt_us_p50: u64,
    /// 99th percentile round trip since start (bucket upper bound), µs.
    pub rtt_us_p99: u64,
    /// Round trips measured.
    pub rtt_samples: u64,
    /// Reconnections to Redis after the first connection (both connections).
    pub reconnects_total: u64,
    /// Room channels this node wants subscribed (a gauge).
    pub subscriptions: u64,
    /// Messages published by this node (through the script).
    pub published_total: u64,
    /// Valid messages and presence notes received from Redis.
    pub received_total: u64,
    /// Received buffers rejected as malformed or misrouted.
    pub rejected_total: u64,
    /// Sequencing script calls.
    pub script_calls_total: u64,
    /// Failed Redis calls.
    pub errors_total: u64,
    /// `Gap` events emitted (a seq jumped or went back).
    pub gaps_total: u64,
    /// Received messages lost because the event reader fell behind.
    pub lagged_total: u64,
    /// `Resync` events emitted.
    pub resyncs_total: u64,
}

impl BridgeMetrics {
    /// Records one Redis round trip.
    pub(crate) fn record_rtt(&self, rtt: Duration) {
        let us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX);
        self.rtt_us_last.store(us, Relaxed);
        let bucket = (u64::BITS - us.leading_zeros()) as usize;
        self.rtt_buckets[bucket.min(BUCKETS - 1)].fetch_add(1, Relaxed);
    }

    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let counts: Vec<u64> = self.rtt_buckets.iter().map(|b| b.load(Relaxed)).collect();
        let samples = counts.iter().sum();
        let get = |c: &AtomicU64| c.load(Relaxed);
        MetricsSnapshot {
            rtt_us_last: get(&self.rtt_us_last),
            rtt_us_p50: quantile(&counts, samples, 50),
            rtt_us_p99: quantile(&counts, samples, 99),
            rtt_samples: samples,
            reconnects_total: get(&self.reconnects_total),
            subscriptions: get(&self.subscriptions),
            published_total: get(&self.published_total),
            received_total: get(&self.received_total),
            rejected_total: get(&self.rejected_total),
            script_calls_total: get(&self.script_calls_total),
            errors_total: get(&self.errors_total),
            gaps_total: get(&self.gaps_total),
            lagged_total: get(&self.lagged_total),
            resyncs_total: get(&self.resyncs_total),
        }
    }
}

/// The upper bound (µs) of the bucket holding the `pct`th percentile.
fn quantile(counts: &[u64], samples: u64, pct: u64) -> u64 {
    if samples == 0 {
        return 0;
    }
    let rank = (samples * pct).div_ceil(100).max(1);
    let mut seen = 0;
    for (i, &c) in counts.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return 1u64 << i.min(63);
        }
    }
    u64::MAX
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_from_buckets() {
        let m = BridgeMetrics::default();
        assert_eq!(m.snapshot().rtt_us_p99, 0);
        for _ in 0..98 {
            m.record_rtt(Duration::from_micros(100));
        }
        m.record_rtt(Duration::from_micros(5000));
        m.record_rtt(Duration::from_micros(6000));
        let s = m.snapshot();
        assert_eq!(s.rtt_samples, 100);
        assert_eq!(s.rtt_us_last, 6000);
        assert_eq!(s.rtt_us_p50, 128);
        assert_eq!(s.rtt_us_p99, 8192);
        BridgeMetrics::inc(&m.published_total);
        assert_eq!(m.snapshot().published_total, 1);
    }
}
