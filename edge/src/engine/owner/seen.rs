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
//! users online then (their stored time is their previous one). A time the
//! store cannot take (its queue is full during a reconnect storm, or the write
//! failed) is kept, answered from memory, and written again at the next ticks.

use storage::{Answer, Query, StoreError};

use super::{Owner, StorePort, Wait};
use crate::engine::{Busy, Failure};
use crate::metrics::ShardStats;
use crate::protocol::server;

/// Last-seen times a shard keeps back while the store cannot take them, at most.
const UNSTORED_MAX: usize = 100_000;

impl<S: StorePort> Owner<S> {
    /// Shard `shard` holds its first connection of `user` (`online`), or closed its last one
    /// at `now_ms`.
    pub fn user_seen(&mut self, user: &str, shard: usize, online: bool, now_ms: u64) {
        // Looked up first: the key is allocated only for a user new to the set.
        let Some(shards) = self.seen.get_mut(user) else {
            if online {
                self.seen.insert(user.into(), smallvec::SmallVec::from_elem(shard, 1));
            } else {
                self.store_last_seen(user, now_ms);
            }
            return;
        };
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

    /// Writes `user`'s last seen; one the store cannot take now is kept and written again
    /// at the next ticks (`retry_last_seen`), so a burst of closes (a reconnect storm) loses none.
    fn store_last_seen(&mut self, user: &str, ts_ms: u64) -> bool {
        let query = Query::SetLastSeen {
            user: user.to_owned(),
            ts_ms,
        };
        let ticket = self.take_ticket();
        if self.store.query(query, ticket).is_err() {
            ShardStats::inc(&self.stats().store_overloaded_total);
            self.keep_last_seen(user, ts_ms);
            return false;
        }
        let wait = Wait::LastSeenSet {
            user: user.to_owned(),
            ts_ms,
        };
        self.waits.insert(ticket, wait);
        true
    }

    /// Keeps a last seen the store did not take (the later time wins), up to [`UNSTORED_MAX`].
    fn keep_last_seen(&mut self, user: &str, ts_ms: u64) {
        if let Some(at) = self.seen_unstored.get_mut(user) {
            *at = (*at).max(ts_ms);
        } else if self.seen_unstored.len() < UNSTORED_MAX {
            self.seen_unstored.insert(user.to_owned(), ts_ms);
        } else {
            tracing::warn!(
                shard = self.cfg.shard,
                user,
                "last seen not stored: {UNSTORED_MAX} already wait for the store"
            );
        }
    }

    /// At each tick: the last-seen times kept back go to the store, until it refuses again.
    pub(super) fn retry_last_seen(&mut self) {
        let kept: Vec<(String, u64)> = self.seen_unstored.drain().collect();
        let mut refused = false;
        for (user, ts_ms) in kept {
            if refused {
                self.keep_last_seen(&user, ts_ms);
            } else {
                refused = !self.store_last_seen(&user, ts_ms);
            }
        }
    }

    /// Whether `user` is online, and when it was last seen, for connection `conn`.
    pub fn last_seen(&mut self, user: &str, conn: u64, req: Option<&str>, now_ms: u64) {
        if self.seen.contains_key(user) {
            return self.reply(conn, server::presence_user(req, user, true, Some(now_ms)));
        }
        if let Some(&ts) = self.seen_unstored.get(user) {
            // Newer than what the store holds: it waits to be written.
            return self.reply(conn, server::presence_user(req, user, false, Some(ts)));
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

    /// The store answered a last-seen write: one that failed is written again at the next tick.
    pub(super) fn last_seen_stored(&mut self, user: String, ts_ms: u64, result: Result<Answer, StoreError>) {
        if let Err(e) = result {
            tracing::debug!(shard = self.cfg.shard, user, error = %e, "last seen not stored yet: written again at the next tick");
            self.keep_last_seen(&user, ts_ms);
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

    #[test]
    fn a_last_seen_the_store_cannot_take_is_kept_answered_and_written_at_a_later_tick() {
        let mut o = owner(4);
        o.user_seen("ann", 0, true, NOW);
        o.store_mut().full = true;
        o.user_seen("ann", 0, false, NOW + 30);
        o.tick(NOW + 1_000);
        assert!(o.store_mut().last_seen.is_empty(), "the store took nothing while full");
        // Asked meanwhile: answered from what waits to be written.
        o.last_seen("ann", 7, None, NOW + 1_100);
        let (replies, _) = outcome(&mut o);
        assert_eq!(
            replies,
            vec![json!({"type":"presence","user":"ann","status":"offline","last_seen":NOW + 30})]
        );
        o.store_mut().full = false;
        o.tick(NOW + 2_000);
        settle_queries(&mut o);
        assert_eq!(
            o.store_mut().last_seen.get("ann"),
            Some(&(NOW + 30)),
            "written at the tick after the store took queries again"
        );
        assert_eq!(ask(&mut o, "ann")["last_seen"], json!(NOW + 30));
    }
}
