//! A connection's liveness, sans-IO: what the shard's once-a-second sweep
//! does to one connection. The shell passes in the time and what only it
//! knows (the session's token expired, the socket's write made no progress
//! for `write_stall_timeout_ms`, a close is already under way) and carries
//! out the [`Verdict`].
//!
//! In this order, the first that applies:
//! 1. a session whose token expired (and was not refreshed) is closed 1008;
//! 2. a stalled write shuts the socket down, counted once per connection
//!    (a queued close frame could never reach the peer);
//! 3. a connection silent (no complete frame) for more than `idle_ms` is
//!    closed 1001 (`idle_ms` 0: never);
//! 4. one silent for more than `heartbeat_ms` is pinged, at most once per
//!    `heartbeat_ms`.

/// Close code and reason of a session whose token expired.
pub const CLOSE_EXPIRED: (u16, &str) = (1008, "token expired");
/// Close code and reason of a silent connection.
pub const CLOSE_IDLE: (u16, &str) = (1001, "idle timeout");

/// The sweep's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessCfg {
    /// Close after this much silence; 0: never.
    pub idle_ms: u64,
    /// Ping after this much silence.
    pub heartbeat_ms: u64,
}

/// What the sweep does to one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing.
    Keep,
    /// Send a ping.
    Ping,
    /// Close with this code and reason.
    Close(u16, &'static str),
    /// Shut the socket down: its write stalled (`first`: count it).
    CutStalled { first: bool },
}

/// What the shell knows of the connection at a sweep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepCtx {
    /// The session's token expired (past the leeway) without a refresh.
    pub expired: bool,
    /// The socket's write has made no progress for `write_stall_timeout_ms`.
    pub write_stalled: bool,
    /// A close is already queued.
    pub closing: bool,
}

/// One connection's liveness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    last_heard_ms: u64,
    last_ping_ms: u64,
    stall_cut: bool,
}

impl Liveness {
    /// A connection opened at `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        Self {
            last_heard_ms: now_ms,
            last_ping_ms: now_ms,
            stall_cut: false,
        }
    }

    /// When a complete frame last came in (or the connection opened).
    pub fn last_heard_ms(&self) -> u64 {
        self.last_heard_ms
    }

    /// A complete frame came in at `now_ms` (bytes alone do not count: a peer trickling
    /// a byte now and then is as silent as one that sends nothing).
    pub fn heard(&mut self, now_ms: u64) {
        self.last_heard_ms = now_ms;
    }

    /// The sweep at `now_ms`.
    pub fn sweep(&mut self, cfg: LivenessCfg, now_ms: u64, cx: SweepCtx) -> Verdict {
        if cx.expired && !cx.closing {
            return Verdict::Close(CLOSE_EXPIRED.0, CLOSE_EXPIRED.1);
        }
        if cx.write_stalled {
            let first = !self.stall_cut;
            self.stall_cut = true;
            return Verdict::CutStalled { first };
        }
        if cfg.idle_ms == 0 {
            return Verdict::Keep;
        }
        let silent = now_ms.saturating_sub(self.last_heard_ms);
        if silent > cfg.idle_ms {
            return Verdict::Close(CLOSE_IDLE.0, CLOSE_IDLE.1);
        }
        if silent > cfg.heartbeat_ms && now_ms.saturating_sub(self.last_ping_ms) > cfg.heartbeat_ms {
            self.last_ping_ms = now_ms;
            return Verdict::Ping;
        }
        Verdict::Keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: LivenessCfg = LivenessCfg {
        idle_ms: 10_000,
        heartbeat_ms: 3_000,
    };

    fn quiet() -> SweepCtx {
        SweepCtx::default()
    }

    #[test]
    fn a_silent_connection_is_pinged_once_per_heartbeat_then_closed() {
        let mut l = Liveness::new(0);
        assert_eq!(l.sweep(CFG, 3_000, quiet()), Verdict::Keep, "not past the heartbeat yet");
        assert_eq!(l.sweep(CFG, 3_001, quiet()), Verdict::Ping);
        assert_eq!(l.sweep(CFG, 4_000, quiet()), Verdict::Keep, "pinged a second ago");
        assert_eq!(l.sweep(CFG, 6_002, quiet()), Verdict::Ping);
        assert_eq!(l.sweep(CFG, 9_002, quiet()), Verdict::Keep, "3 s since the last ping, not more");
        assert_eq!(
            l.sweep(CFG, 10_000, quiet()),
            Verdict::Ping,
            "silent 10 s: not past the idle timeout yet"
        );
        assert_eq!(l.sweep(CFG, 10_001, quiet()), Verdict::Close(1001, "idle timeout"));
    }

    #[test]
    fn a_complete_frame_keeps_it_alive() {
        let mut l = Liveness::new(0);
        l.heard(9_000);
        assert_eq!(l.sweep(CFG, 10_500, quiet()), Verdict::Keep);
        assert_eq!(l.sweep(CFG, 12_001, quiet()), Verdict::Ping, "3 s after the frame");
        assert_eq!(l.sweep(CFG, 19_001, quiet()), Verdict::Close(1001, "idle timeout"));
    }

    #[test]
    fn an_expired_token_closes_first_and_a_stalled_write_is_cut_and_counted_once() {
        let mut l = Liveness::new(0);
        let expired = SweepCtx { expired: true, ..quiet() };
        assert_eq!(l.sweep(CFG, 1, expired), Verdict::Close(1008, "token expired"));
        let closing = SweepCtx { closing: true, ..expired };
        assert_eq!(l.sweep(CFG, 2, closing), Verdict::Keep, "its close is queued already");
        let stalled = SweepCtx {
            write_stalled: true,
            closing: true,
            ..quiet()
        };
        assert_eq!(l.sweep(CFG, 3, stalled), Verdict::CutStalled { first: true });
        assert_eq!(l.sweep(CFG, 4, stalled), Verdict::CutStalled { first: false });
        assert_eq!(
            l.sweep(CFG, 20_000, stalled),
            Verdict::CutStalled { first: false },
            "a stalled socket is cut, not closed with a frame it cannot send"
        );
    }

    #[test]
    fn no_idle_timeout_means_no_heartbeat_and_no_close() {
        let mut l = Liveness::new(0);
        let off = LivenessCfg { idle_ms: 0, ..CFG };
        assert_eq!(l.sweep(off, 1_000_000, quiet()), Verdict::Keep);
    }
}
