//! What a deterministic harness's shards give their clients' sessions
//! (`engine::session`), for both harnesses (`owner::harness`, the cluster
//! harness): limits that let the harnesses' requests through, a verifier of
//! the harness's own tokens, stats, and a fixed wall clock. Every request a
//! harness client makes is a JSON frame through [`SessionCtx::frame`], as on
//! a shard.

use crate::auth::{mint_claims_hs256, AuthSettings, Claims, Verifier};
use crate::engine::session::{FrameCtx, Session, SessionLimits, Step};
use crate::metrics::ShardStats;

const SECRET: &str = "the-deterministic-harnesses-secret-key";
/// The wall clock the sessions see (tokens are minted and checked against it).
const NOW_MS: u64 = 1_700_000_000_000;

pub(crate) struct SessionCtx {
    limits: SessionLimits,
    verifier: Verifier,
    stats: ShardStats,
}

impl SessionCtx {
    /// At most `max_rooms_per_conn` rooms per session (a harness's rooms, all of them).
    pub(crate) fn new(max_rooms_per_conn: usize) -> Self {
        let settings = AuthSettings {
            secret: Some(SECRET.into()),
            ..AuthSettings::default()
        };
        Self {
            limits: SessionLimits {
                max_body_chars: 1_000,
                max_rooms_per_conn,
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
    pub(crate) fn frame<'a>(&self, session: &mut Session, text: &'a str, mono_ns: u64) -> (Option<&'a str>, Step<'a>) {
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

    /// A token of `user` for every room, moderating every room when `moderator`.
    pub(crate) fn token(user: &str, moderator: bool) -> String {
        let claims = Claims {
            sub: user.to_owned(),
            exp: NOW_MS / 1000 + 3600,
            nbf: None,
            rooms: None,
            name: None,
            moderator: moderator.then(|| ["*".to_owned()].into()),
        };
        mint_claims_hs256(SECRET, &claims).expect("token")
    }

    /// A session authenticated as `user` (not a moderator) with an `auth` frame.
    pub(crate) fn authenticated(&self, user: &str) -> Session {
        let mut session = Session::new(&self.limits, Vec::new());
        let auth = format!(r#"{{"type":"auth","token":"{}"}}"#, Self::token(user, false));
        let (_, step) = self.frame(&mut session, &auth, 0);
        assert!(matches!(step, Step::Welcome { .. }), "auth: {step:?}");
        session
    }
}
