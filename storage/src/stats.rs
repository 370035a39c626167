//! The store's counters and gauges ([`StoreStats`]) and a lock-free latency histogram ([`LatencyHistogram`]).
//!
//! Invariants: every field is an atomic updated with `Relaxed` ordering (they
//! are metrics, not synchronisation); the histogram's buckets are fixed at
//! compile time (log-linear: exact below 8 µs, then 8 buckets per power of two,
//! so a reported quantile is at most 12.5% above the true value), it never
//! allocates and saturates at 2^40 µs.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use serde::Serialize;

const SUB_BITS: u32 = 3;
const SUB: usize = 1 << SUB_BITS;
const MAX_EXP: u32 = 40;
const BUCKETS: usize = SUB + (MAX_EXP as usize - SUB_BITS as usize + 1) * SUB;

/// A fixed-bucket histogram of durations in microseconds, safe to record into from any thread.
pub struct LatencyHistogram {
    buckets: Box<[AtomicU64; BUCKETS]>,
    count: AtomicU64,
    sum_us: AtomicU64,
    max_us: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            buckets: Box::new([const { AtomicU64::new(0) }; BUCKETS]),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
        }
    }
}

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyHistogram")
            .field("count", &self.count())
            .field("p50_us", &self.p50_us())
            .finish()
    }
}

fn bucket_of(us: u64) -> usize {
    let v = us.min((1 << (MAX_EXP + 1)) - 1);
    if v < SUB as u64 {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros();
    let sub = ((v >> (exp - SUB_BITS)) as usize) & (SUB - 1);
    SUB + (exp - SUB_BITS) as usize * SUB + sub
}

/// The largest value that falls in bucket `i`.
fn upper_bound(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let exp = ((i - SUB) / SUB) as u32 + SUB_BITS;
    let sub = ((i - SUB) % SUB) as u64;
    let width = 1_u64 << (exp - SUB_BITS);
    ((SUB as u64 + sub) << (exp - SUB_BITS)) + width - 1
}

impl LatencyHistogram {
    /// Records one duration.
    pub fn record_us(&self, us: u64) {
        self.buckets[bucket_of(us)].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
        self.max_us.fetch_max(us, Relaxed);
    }

    /// Number of recorded durations.
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// The largest recorded duration.
    pub fn max_us(&self) -> u64 {
        self.max_us.load(Relaxed)
    }

    /// The mean, 0 when empty.
    pub fn mean_us(&self) -> u64 {
        self.sum_us.load(Relaxed).checked_div(self.count()).unwrap_or(0)
    }

    /// The `q`-quantile (0.0..=1.0): the upper bound of the bucket holding it, never above the max; 0 when empty.
    pub fn quantile_us(&self, q: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Relaxed);
            if seen >= rank {
                return upper_bound(i).min(self.max_us());
            }
        }
        self.max_us()
    }

    /// The median.
    pub fn p50_us(&self) -> u64 {
        self.quantile_us(0.50)
    }

    /// The 99th percentile.
    pub fn p99_us(&self) -> u64 {
        self.quantile_us(0.99)
    }
}

/// The store service's metrics, shared by the store thread (writer) and the shards (readers).
#[derive(Debug, Default)]
pub struct StoreStats {
    pub(crate) write_queue_depth: AtomicU64,
    pub(crate) query_queue_depth: AtomicU64,
    pub(crate) batches_total: AtomicU64,
    pub(crate) messages_written_total: AtomicU64,
    pub(crate) write_errors_total: AtomicU64,
    pub(crate) write_retries_total: AtomicU64,
    pub(crate) overloaded_total: AtomicU64,
    pub(crate) queries_total: AtomicU64,
    pub(crate) query_errors_total: AtomicU64,
    pub(crate) last_batch_messages: AtomicU64,
    pub(crate) last_commit_us: AtomicU64,
    pub(crate) commit_latency: LatencyHistogram,
    pub(crate) unavailable: AtomicBool,
}

/// A copy of [`StoreStats`] at one moment, for metrics export and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StoreStatsSnapshot {
    /// Writes submitted and not yet taken into a batch.
    pub write_queue_depth: u64,
    /// Queries submitted and not yet answered.
    pub query_queue_depth: u64,
    /// Batches committed successfully.
    pub batches_total: u64,
    /// Messages in batches committed successfully.
    pub messages_written_total: u64,
    /// Messages whose write completed with an error (after the retries).
    pub write_errors_total: u64,
    /// Failed batch attempts that were tried again.
    pub write_retries_total: u64,
    /// Writes and queries refused because their queue was full.
    pub overloaded_total: u64,
    /// Queries answered (successfully or not).
    pub queries_total: u64,
    /// Queries answered with an error.
    pub query_errors_total: u64,
    /// Size of the last committed batch.
    pub last_batch_messages: u64,
    /// Duration of the last `write_batch` call that succeeded, microseconds.
    pub last_commit_us: u64,
    /// Median `write_batch` duration, microseconds.
    pub commit_p50_us: u64,
    /// 99th percentile `write_batch` duration, microseconds.
    pub commit_p99_us: u64,
    /// Longest `write_batch` duration, microseconds.
    pub commit_max_us: u64,
    /// The store is unreachable: the last write attempt (or probe) failed with a retryable error.
    pub unavailable: bool,
}

impl StoreStats {
    /// Whether the store is unreachable: its last write attempt, or the writer's probe while
    /// idle, failed with a retryable error, and none has succeeded since.
    pub fn unavailable(&self) -> bool {
        self.unavailable.load(Relaxed)
    }

    /// Records whether the store is reachable, logging each change once.
    pub(crate) fn set_unavailable(&self, down: bool, error: Option<&crate::StoreError>) {
        if self.unavailable.swap(down, Relaxed) == down {
            return;
        }
        match error {
            Some(e) if down => tracing::error!(error = %e, "store: unavailable; writes are held or retried"),
            _ if down => tracing::error!("store: unavailable"),
            _ => tracing::info!("store: available again"),
        }
    }

    /// Writes submitted and not yet taken into a batch.
    pub fn write_queue_depth(&self) -> u64 {
        self.write_queue_depth.load(Relaxed)
    }

    /// The histogram of successful `write_batch` durations (µs).
    pub fn commit_latency(&self) -> &LatencyHistogram {
        &self.commit_latency
    }

    /// All counters at once (each read individually; they may be a few events apart).
    pub fn snapshot(&self) -> StoreStatsSnapshot {
        StoreStatsSnapshot {
            write_queue_depth: self.write_queue_depth.load(Relaxed),
            query_queue_depth: self.query_queue_depth.load(Relaxed),
            batches_total: self.batches_total.load(Relaxed),
            messages_written_total: self.messages_written_total.load(Relaxed),
            write_errors_total: self.write_errors_total.load(Relaxed),
            write_retries_total: self.write_retries_total.load(Relaxed),
            overloaded_total: self.overloaded_total.load(Relaxed),
            queries_total: self.queries_total.load(Relaxed),
            query_errors_total: self.query_errors_total.load(Relaxed),
            last_batch_messages: self.last_batch_messages.load(Relaxed),
            last_commit_us: self.last_commit_us.load(Relaxed),
            commit_p50_us: self.commit_latency.p50_us(),
            commit_p99_us: self.commit_latency.p99_us(),
            commit_max_us: self.commit_latency.max_us(),
            unavailable: self.unavailable(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_bounded() {
        let mut last = 0;
        for v in (0..100_000).chain([1 << 30, u64::MAX]) {
            let b = bucket_of(v);
            assert!(b < BUCKETS);
            assert!(b >= last || v >= 1 << 30, "bucket order at {v}");
            last = b;
            if v < 1 << 40 {
                assert!(upper_bound(b) >= v, "upper bound of {v}");
                assert!(upper_bound(b) as f64 <= v as f64 * 1.125 + 1.0, "resolution at {v}");
            }
        }
    }

    #[test]
    fn quantiles() {
        let h = LatencyHistogram::default();
        assert_eq!(h.p50_us(), 0);
        for v in 1..=1000 {
            h.record_us(v);
        }
        let p50 = h.p50_us();
        assert!((500..=563).contains(&p50), "p50 {p50}");
        let p99 = h.p99_us();
        assert!((990..=1000).contains(&p99), "p99 {p99}");
        assert_eq!(h.max_us(), 1000);
        assert_eq!(h.count(), 1000);
        assert_eq!(h.mean_us(), 500);
    }
}
