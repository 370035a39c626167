//! Reconnect delays: full-jitter exponential backoff (AWS Architecture
//! Blog, "Exponential Backoff And Jitter"), honouring the server's hint.
//!
//! `delay(attempt) = uniform(0, min(cap, base * 2^attempt))`, and never less
//! than a `retry_ms` the server gave: a client told to come back later does.
//! Full jitter spreads a herd of clients evenly over the window, which is
//! what turns a reconnect storm into a manageable ramp.

/// The backoff schedule of one client.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base_ms: u64,
    pub cap_ms: u64,
}

impl Backoff {
    /// The ceiling of the jitter window for `attempt` (0-based).
    pub fn window_ms(&self, attempt: u32) -> u64 {
        let exp = self.base_ms.saturating_mul(1u64 << attempt.min(32));
        exp.min(self.cap_ms)
    }

    /// The delay before retry number `attempt`, given a uniform sample `u`
    /// in [0, 1) and the server's hint.
    pub fn delay_ms(&self, attempt: u32, u: f64, hint_ms: Option<u64>) -> u64 {
        let jittered = (self.window_ms(attempt) as f64 * u.clamp(0.0, 1.0)) as u64;
        jittered.max(hint_ms.unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff {
        base_ms: 100,
        cap_ms: 10_000,
    };

    #[test]
    fn window_doubles_up_to_the_cap() {
        let w: Vec<u64> = (0..10).map(|a| B.window_ms(a)).collect();
        assert_eq!(w, [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]);
        assert_eq!(B.window_ms(200), 10_000, "no overflow on huge attempts");
    }

    #[test]
    fn delays_stay_within_bounds() {
        for attempt in 0..20 {
            for i in 0..100 {
                let u = f64::from(i) / 100.0;
                let d = B.delay_ms(attempt, u, None);
                assert!(d < B.window_ms(attempt).max(1), "attempt {attempt} u {u}: {d}");
            }
        }
    }

    #[test]
    fn the_server_hint_is_a_floor() {
        assert_eq!(B.delay_ms(0, 0.0, Some(750)), 750);
        assert_eq!(B.delay_ms(6, 0.99, Some(750)), 6336);
    }

    #[test]
    fn jitter_spreads_evenly_over_the_window() {
        // 10,000 clients on attempt 3 (window 800 ms), deterministic samples:
        // every 100 ms slice of the window gets about an eighth of them.
        let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut buckets = [0u32; 8];
        for _ in 0..10_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let u = (rng >> 11) as f64 / (1u64 << 53) as f64;
            buckets[(B.delay_ms(3, u, None) / 100) as usize] += 1;
        }
        for (i, n) in buckets.iter().enumerate() {
            assert!((1_100..1_400).contains(n), "slice {i} got {n} of 10000: {buckets:?}");
        }
    }
}
