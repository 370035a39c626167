//! GCRA (generic cell rate algorithm): one theoretical arrival time per
//! limited thing, integer nanoseconds, no floats on the hot path.

/// A rate limiter admitting `burst` requests back to back, refilling at `rate_per_s`.
#[derive(Debug, Clone)]
pub struct Gcra {
    /// Nanoseconds between admitted requests at the steady rate; 0 = unlimited.
    interval_ns: u64,
    /// How far ahead of `now` the theoretical arrival time may run.
    tolerance_ns: u64,
    tat_ns: u64,
}

impl Gcra {
    /// A limiter; a non-positive or non-finite rate means unlimited.
    pub fn new(rate_per_s: f64, burst: u32) -> Self {
        let interval_ns = if rate_per_s.is_finite() && rate_per_s > 0.0 {
            (1e9 / rate_per_s).max(1.0) as u64
        } else {
            0
        };
        let tolerance_ns = interval_ns.saturating_mul(u64::from(burst.max(1)) - 1);
        Self {
            interval_ns,
            tolerance_ns,
            tat_ns: 0,
        }
    }

    /// Admits one request at monotonic time `now_ns`, or returns how many
    /// milliseconds (at least 1) until one would be admitted.
    pub fn check(&mut self, now_ns: u64) -> Result<(), u64> {
        if self.interval_ns == 0 {
            return Ok(());
        }
        let tat = self.tat_ns.max(now_ns);
        let allow_at = tat.saturating_sub(self.tolerance_ns);
        if now_ns < allow_at {
            return Err((allow_at - now_ns).div_ceil(1_000_000).max(1));
        }
        self.tat_ns = tat.saturating_add(self.interval_ns);
        Ok(())
    }

    /// Whether the bucket is full again at `now_ns` (forgetting it changes nothing).
    pub fn is_full(&self, now_ns: u64) -> bool {
        self.tat_ns <= now_ns
    }
}

/// One [`Gcra`] per key (a user), created on first use; keys whose bucket is full again are
/// forgotten by [`KeyedGcra::prune`], so the map holds only the keys limited lately.
#[derive(Debug, Clone)]
pub struct KeyedGcra {
    rate_per_s: f64,
    burst: u32,
    keys: std::collections::HashMap<Box<str>, Gcra>,
}

impl KeyedGcra {
    /// `rate_per_s` per key with bursts of `burst`; a non-positive rate admits everything.
    pub fn new(rate_per_s: f64, burst: u32) -> Self {
        Self {
            rate_per_s,
            burst,
            keys: Default::default(),
        }
    }

    /// Admits one request of `key` at `now_ns`, or the milliseconds until one would be.
    pub fn check(&mut self, key: &str, now_ns: u64) -> Result<(), u64> {
        if !(self.rate_per_s.is_finite() && self.rate_per_s > 0.0) {
            return Ok(());
        }
        if let Some(g) = self.keys.get_mut(key) {
            return g.check(now_ns);
        }
        let mut g = Gcra::new(self.rate_per_s, self.burst);
        let r = g.check(now_ns);
        self.keys.insert(key.into(), g);
        r
    }

    /// Forgets the keys whose bucket is full again.
    pub fn prune(&mut self, now_ns: u64) {
        self.keys.retain(|_, g| !g.is_full(now_ns));
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// No key held.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn keyed_limits_each_key_alone_and_forgets_refilled_keys() {
        let mut k = KeyedGcra::new(10.0, 3);
        let t = 1_000 * MS;
        for _ in 0..3 {
            assert!(k.check("a", t).is_ok());
        }
        assert_eq!(k.check("a", t), Err(100), "over the burst: 100 ms to the next slot");
        assert!(k.check("b", t).is_ok(), "another key has its own bucket");
        k.prune(t + 50 * MS);
        assert_eq!(k.len(), 2, "neither bucket is full yet");
        k.prune(t + 300 * MS);
        assert!(k.is_empty(), "both refilled: forgotten");
        assert!(k.check("a", t + 300 * MS).is_ok());
        let mut off = KeyedGcra::new(0.0, 1);
        assert!(
            (0..100).all(|_| off.check("a", t).is_ok()) && off.is_empty(),
            "rate 0: no limit, no state"
        );
    }

    #[test]
    fn burst_then_rate() {
        let mut g = Gcra::new(10.0, 3);
        let t = 1_000 * MS;
        assert!(g.check(t).is_ok());
        assert!(g.check(t).is_ok());
        assert!(g.check(t).is_ok());
        assert_eq!(g.check(t), Err(100));
        assert_eq!(g.check(t + 40 * MS), Err(60));
        assert!(g.check(t + 100 * MS).is_ok());
        assert!(g.check(t + 100 * MS).is_err());
        // After a long pause the full burst is back, not more.
        let later = t + 10_000 * MS;
        for _ in 0..3 {
            assert!(g.check(later).is_ok());
        }
        assert!(g.check(later).is_err());
    }

    #[test]
    fn time_going_backwards_is_refused_not_a_panic() {
        let mut g = Gcra::new(1.0, 1);
        assert!(g.check(5_000 * MS).is_ok());
        assert!(g.check(0).is_err());
    }

    #[test]
    fn unlimited() {
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let mut g = Gcra::new(rate, 1);
            assert!((0..1000).all(|_| g.check(0).is_ok()));
        }
    }
}
