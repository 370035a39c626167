//! The cluster harness's clients: authenticated sessions (`engine::session`,
//! given by `engine::harness_sessions`), so every request goes through the
//! checks a shard runs, and what each client has seen.

use std::collections::HashMap;

use crate::engine::session::Session;

pub(super) struct Client {
    /// The connection's session: every request goes through its checks, as on a shard.
    pub(super) session: Session,
    /// Room -> the join token still standing.
    pub(super) joins: HashMap<String, u64>,
    /// Room -> last seq seen, for members (in the fan-out list).
    pub(super) member: HashMap<String, u64>,
    pub(super) since: HashMap<u64, Option<u64>>,
}

impl Client {
    /// A client of `session` (a copy of one authenticated session: all are user `u`).
    pub(super) fn new(session: &Session) -> Self {
        Self {
            session: session.clone(),
            joins: HashMap::new(),
            member: HashMap::new(),
            since: HashMap::new(),
        }
    }
}
