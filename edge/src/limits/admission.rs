//! Admission control for new connections: a token bucket (GCRA) on WebSocket
//! upgrades per shard, and a retry hint that spreads a refused herd.
//!
//! A shard refuses an upgrade over the rate with HTTP 503 (or 1013 after the
//! upgrade) and `retry_ms`. The hint is the time until the bucket admits
//! again plus a uniform share of the backlog: `refused in the last second /
//! rate` seconds, so a herd of N refused clients is told to come back spread
//! over roughly the time the shard needs to admit N. Established connections
//! are not involved: only the handshake path asks.
//!
//! Sans-IO: time and the random sample come in as arguments.

use super::gcra::Gcra;

/// One shard's admission state.
#[derive(Debug, Clone)]
pub struct Admission {
    gcra: Gcra,
    rate_per_s: f64,
    retry_max_ms: u64,
    window_start_ns: u64,
    refused_this_window: u64,
    refused_last_window: u64,
}

const WINDOW_NS: u64 = 1_000_000_000;

impl Admission {
    /// Admits `rate_per_s` upgrades per second with bursts of `burst`; a
    /// non-positive rate admits everything.
    pub fn new(rate_per_s: f64, burst: u32, retry_max_ms: u64) -> Self {
        Self {
            gcra: Gcra::new(rate_per_s, burst),
            rate_per_s,
            retry_max_ms: retry_max_ms.max(1),
            window_start_ns: 0,
            refused_this_window: 0,
            refused_last_window: 0,
        }
    }

    /// Admits one upgrade at `now_ns`, or returns the `retry_ms` hint for the
    /// refused client. `u` is a uniform sample in [0, 1).
    pub fn check(&mut self, now_ns: u64, u: f64) -> Result<(), u64> {
        let wait_ms = match self.gcra.check(now_ns) {
            Ok(()) => return Ok(()),
            Err(ms) => ms,
        };
        if now_ns.saturating_sub(self.window_start_ns) >= WINDOW_NS {
            let skipped = now_ns.saturating_sub(self.window_start_ns) >= 2 * WINDOW_NS;
            self.refused_last_window = if skipped { 0 } else { self.refused_this_window };
            self.refused_this_window = 0;
            self.window_start_ns = now_ns;
        }
        self.refused_this_window += 1;
        let backlog = self.refused_this_window.max(self.refused_last_window) as f64;
        let backlog_ms = backlog / self.rate_per_s * 1000.0;
        let spread = (backlog_ms * u.clamp(0.0, 1.0)) as u64;
        Err(wait_ms.saturating_add(spread).min(self.retry_max_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn unlimited_admits_everything() {
        let mut a = Admission::new(0.0, 1, 1000);
        for i in 0..10_000 {
            assert!(a.check(i, 0.5).is_ok());
        }
    }

    #[test]
    fn over_the_rate_is_refused_with_a_bounded_hint() {
        let mut a = Admission::new(100.0, 10, 5_000);
        let t = 1_000 * MS;
        for _ in 0..10 {
            assert!(a.check(t, 0.5).is_ok(), "burst admitted");
        }
        let hint = a.check(t, 0.0).expect_err("over the burst");
        assert_eq!(hint, 10, "no spread with u = 0: the time to the next slot");
        for _ in 0..1_000 {
            let h = a.check(t, 0.999).expect_err("still refused");
            assert!(h <= 5_000, "capped: {h}");
        }
        // after the refill interval one more is admitted
        assert!(a.check(t + 10 * MS, 0.5).is_ok());
    }

    #[test]
    fn a_refused_herd_is_spread_over_the_time_needed_to_admit_it() {
        // 1,000 clients refused at once at 500/s: the i-th is told to come
        // back within (i + 1) / 500 s, uniformly, so the late part of the herd
        // spreads over about 2 s instead of returning together.
        let mut a = Admission::new(500.0, 1, 60_000);
        let t = 1_000 * MS;
        assert!(a.check(t, 0.0).is_ok());
        let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
        let hints: Vec<u64> = (0..1_000)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                a.check(t, (rng >> 11) as f64 / (1u64 << 53) as f64).expect_err("refused")
            })
            .collect();
        for (i, &h) in hints.iter().enumerate() {
            assert!(h <= 2 + (i as u64 + 1) * 2, "client {i}: hint {h} ms");
        }
        let tail = &hints[900..];
        let mean = tail.iter().sum::<u64>() as f64 / tail.len() as f64;
        assert!((800.0..1_100.0).contains(&mean), "last 100 hints average {mean} ms");
        // the next second starts from the herd size just seen
        assert!(a.check(t + 1_500 * MS, 0.5).is_ok(), "refused clients did not use up the bucket");
        let h = a.check(t + 1_500 * MS, 0.999).expect_err("refused");
        assert!(h > 1_500, "hint {h}");
    }
}
