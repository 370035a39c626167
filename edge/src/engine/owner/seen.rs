//! Last seen, on a single node: whether a user is online anywhere on the
//! node, and when it was last seen once it is not. Every user has a home
//! shard (`room::owner` of its id); each shard tells it when it holds its
//! first connection of the user and when its last one closes, and the home
//! shard's owner keeps the set of shards holding one. When the set empties,
//! the time goes to the store (`last_seen`), so it survives a restart.
//!
//! What must stay true: a user is online exactly while some shard holds a
//! connection of it (each shard's reports arrive in order on its ring, and
//! the set holds shards, not counts, so two shards' reports may interleave);
//! every question gets one answer. At a clean stop every shard stores the
//! time for the users it holds itself; a crash loses the last-seen time of
//! users online then (their stored time is their previous one).

use storage::{Answer, Query, StoreError};

use super::{Owner, StorePort, Wait};
use crate::engine::{Busy, Failure};
use crate::metrics::ShardStats;
use crate::protocol::server;

impl<S: StorePort> Owner<S> {
    /// Shard `shard` holds its first connection of `user` (`online`), or closed its last one
    /// at `now_ms`.
    pub fn user_seen(&mut self, user: &str, shard: usize, online: bool, now_ms: u64) {
        let shards = self.seen.entry(user.to_owned()).or_default();
        let at = shards.binary_search(&shard);
        match (online, at) {
            (true, Err(i)) => shards.insert(i, shard),
            (false, Ok(i)) => {
                shards.remove(i);
            }
            // A repeated report changes nothing.
            _ => {}
        }
        if !shards.is_empty() {
            return;
        }
        self.seen.remove(user);
        self.store_last_seen(user, now_ms);
    }

    /// The node is stopping: the users this shard holds connections of are seen now (stored
    /// from here, since their home shards may stop before this shard's reports reach them).
    pub fn stopping(&mut self, users: &[String], now_ms: u64) {
        for user in users {
            self.store_last_seen(user, now_ms);
        }
        self.flush_delivered(now_ms, true);
    }

    fn store_last_seen(&mut self, user: &str, now_ms: u64) {
        let query = Query::SetLastSeen {
            user: user.to_owned(),
            ts_ms: now_ms,
        };
        let ticket = self.take_ticket();
        if self.store.query(query, ticket).is_err() {
            ShardStats::inc(&self.stats().store_overloaded_total);
            return tracing::warn!(shard = self.cfg.shard, user, "last seen not stored: the store is busy");
        }
        self.waits.insert(ticket, Wait::LastSeenSet { user: user.to_owned() });
    }

    /// Whether `user` is online, and when it was last seen, for connection `conn`.
    pub fn last_seen(&mut self, user: &str, conn: u64, req: Option<&str>, now_ms: u64) {
        if self.seen.contains_key(user) {
            return self.reply(conn, server::presence_user(req, user, true, Some(now_ms)));
        }
        let ticket = self.take_ticket();
        if self.store.query(Query::LastSeen { user: user.to_owned() }, ticket).is_err() {
            return self.reply(conn, Busy::Store.reply(req, "the store is busy: last seen not read"));
        }
        let wait = Wait::LastSeen {
            user: user.to_owned(),
            conn,
            req: req.map(str::to_owned),
        };
        self.waits.insert(ticket, wait);
    }

    /// The store answered a last-seen read (the user may have come online meanwhile).
    pub(super) fn last_seen_read(&mut self, user: &str, conn: u64, req: Option<&str>, result: Result<Answer, StoreError>) {
        let reply = match result {
            Ok(Answer::LastSeen(ts)) => server::presence_user(req, user, self.seen.contains_key(user), ts),
            Ok(other) => {
                tracing::error!(shard = self.cfg.shard, ?other, "last_seen answered with something else");
                Failure::Store(StoreError::Internal("unexpected store answer".into())).reply(req, "last seen not read")
            }
            Err(e) => Failure::Store(e).reply(req, "last seen not read"),
        };
        self.reply(conn, reply);
    }

    /// The store answered a last-seen write.
    pub(super) fn last_seen_stored(&mut self, user: &str, result: Result<Answer, StoreError>) {
        if let Err(e) = result {
            tracing::warn!(shard = self.cfg.shard, user, error = %e, "last seen not stored");
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::super::store_model::*;

    fn ask(o: &mut super::Owner<Port>, user: &str) -> Value {
        o.last_seen(user, 7, None, NOW + 50);
        settle_queries(o);
        let (mut replies, _) = outcome(o);
        assert_eq!(replies.len(), 1, "{replies:?}");
        replies.remove(0)
    }

    #[test]
    fn a_user_is_online_while_any_shard_holds_it_then_its_last_seen_is_stored() {
        let mut o = owner(4);
        assert_eq!(
            ask(&mut o, "ann"),
            json!({"type":"presence","user":"ann","status":"offline","last_seen":null})
        );
        o.user_seen("ann", 0, true, NOW);
        o.user_seen("ann", 1, true, NOW);
        o.user_seen("ann", 0, false, NOW + 10);
        assert_eq!(ask(&mut o, "ann")["status"], json!("online"), "shard 1 still holds her");
        o.user_seen("ann", 1, true, NOW + 11);
        o.user_seen("ann", 1, false, NOW + 20);
        settle_queries(&mut o);
        assert_eq!(o.store_mut().last_seen.get("ann"), Some(&(NOW + 20)));
        assert_eq!(
            ask(&mut o, "ann"),
            json!({"type":"presence","user":"ann","status":"offline","last_seen":NOW + 20})
        );
        assert_eq!(ask(&mut o, "bob")["last_seen"], json!(null), "others are untouched");
    }
}
