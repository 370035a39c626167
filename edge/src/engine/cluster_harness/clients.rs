//! The cluster harness's clients: authenticated sessions (`engine::session`), so every
//! request goes through the checks a shard runs, and what each client has seen.

use std::collections::HashMap;

use super::ROOMS;
use crate::auth::{mint_hs256, AuthSettings, Verifier};
use crate::engine::session::{FrameCtx, Session, SessionLimits, Step};
use crate::metrics::ShardStats;

const SECRET: &str = "the-cluster-harness-secret-of-32-bytes";
const NOW_MS: u64 = 1_700_000_000_000;

pub(super) struct Client {
    /// The connection's session: every request goes through its checks, as on a shard.
    pub(super) session: Session,
    /// Room -> the join token still standing.
    pub(super) joins: HashMap<String, u64>,
    /// Room -> last seq seen, for members (in the fan-out list).
    pub(super) member: HashMap<String, u64>,
    pub(super) since: HashMap<u64, Option<u64>>,
}

/// What a shard gives its sessions: limits that let the harness's requests through, a
/// verifier, stats.
pub(super) struct SessionCtx {
    limits: SessionLimits,
    verifier: Verifier,
    stats: ShardStats,
}

impl SessionCtx {
    pub(super) fn new() -> Self {
        let settings = AuthSettings {
            secret: Some(SECRET.into()),
            ..AuthSettings::default()
        };
        Self {
            limits: SessionLimits {
                max_body_chars: 1_000,
                max_rooms_per_conn: ROOMS.len(),
                max_msgs_per_s: 1e9,
                msgs_burst: u32::MAX,
                rate_limit_strikes: 3,
                reply_budget_bytes: usize::MAX,
            },
            verifier: Verifier::new(&settings).expect("verifier"),
            stats: ShardStats::default(),
        }
    }

    /// A client frame through `session` at `mono_ns`.
    pub(super) fn frame<'a>(&self, session: &mut Session, text: &'a str, mono_ns: u64) -> (Option<&'a str>, Step<'a>) {
        let cx = FrameCtx {
            limits: &self.limits,
            verifier: &self.verifier,
            mono_ns,
            now_ms: NOW_MS,
            reply_bytes: 0,
            stats: &self.stats,
        };
        session.frame(text, &cx)
    }

    /// A session authenticated as user `u` (verified once; each client gets a copy).
    pub(super) fn authenticated(&self) -> Session {
        let mut session = Session::new(&self.limits, Vec::new());
        let token = mint_hs256(SECRET, "u", 3600, None, None, NOW_MS / 1000).expect("token");
        let auth = format!(r#"{{"type":"auth","token":"{token}"}}"#);
        let (_, step) = self.frame(&mut session, &auth, 0);
        assert!(matches!(step, Step::Welcome { .. }), "auth: {step:?}");
        session
    }

    pub(super) fn client(session: &Session) -> Client {
        Client {
            session: session.clone(),
            joins: HashMap::new(),
            member: HashMap::new(),
            since: HashMap::new(),
        }
    }
}
