//! The member side's answers from a room's sequencer: a join counted
//! (`joined`) or refused, and deliveries to the local members of a room.

use std::cell::RefCell;

use bytes::Bytes;

use super::Shard;
use crate::engine::owner::JOIN_CANCELLED;
use crate::metrics::ShardStats;
use crate::protocol::server;
use crate::protocol::ErrorCode;

impl Shard {
    /// The member side of a refused join: the connection forgets the room if that join
    /// attempt still stands (`token`; `None`: the cluster path, which tracks its own), and
    /// gets the error either way (it is the join's one answer).
    pub(super) fn on_join_refused(&self, room: &str, conn: u64, token: Option<u64>, error: Bytes) {
        let Some(c) = self.conn(conn) else { return };
        let stands = match token {
            Some(t) => take_join(&c.joins, room, t),
            None => true,
        };
        if stands {
            let pos = c.rooms.borrow().iter().position(|r| r == room);
            if let Some(pos) = pos {
                c.rooms.borrow_mut().swap_remove(pos);
            }
        }
        c.out.push_text(error);
    }

    /// The member side of a join: the owner has counted the member. If this join attempt
    /// still stands, the connection joins the fan-out list and gets `joined` and its
    /// catch-up; if a leave overtook it, the join is answered "cancelled" and the catch-up
    /// dropped (the owner already took the leave into account).
    pub(super) fn on_joined(&self, a: JoinAnswer<'_>, joined: Bytes, catch_up: impl IntoIterator<Item = Bytes>) {
        let Some(c) = self.conn(a.conn) else { return };
        if !take_join(&c.joins, a.room, a.token) {
            c.out.push_text(server::error(a.req, ErrorCode::BadRequest, JOIN_CANCELLED, None));
            return;
        }
        self.members.borrow_mut().insert(a.room, a.conn);
        c.out.push_text(joined);
        for frame in catch_up {
            c.out.push_text(frame);
        }
    }

    /// Queues `payload` to every local member of `room`.
    pub(super) fn deliver_local(&self, room: &str, payload: &Bytes) {
        let members = self.members.borrow();
        let conns = self.conns.borrow();
        let mut n = 0;
        for id in members.get(room) {
            if let Some(c) = conns.get(id) {
                if c.out.push_live(payload.clone()) {
                    n += 1;
                }
            }
        }
        ShardStats::add(&self.stats().deliveries_total, n);
    }
}

/// Who a join answer is for.
pub(super) struct JoinAnswer<'a> {
    pub(super) room: &'a str,
    pub(super) conn: u64,
    pub(super) req: Option<&'a str>,
    pub(super) token: u64,
}

/// Removes the pending join `(room, token)`; false when it no longer stands.
fn take_join(joins: &RefCell<Vec<(String, u64)>>, room: &str, token: u64) -> bool {
    let mut joins = joins.borrow_mut();
    let Some(pos) = joins.iter().position(|(r, t)| r == room && *t == token) else {
        return false;
    };
    joins.swap_remove(pos);
    true
}
