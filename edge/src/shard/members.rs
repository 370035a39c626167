//! The member side's answers from a room's sequencer: a join counted
//! (`joined`) or refused, and deliveries to the local members of a room.

use bytes::Bytes;

use super::Shard;
use crate::engine::owner::JOIN_CANCELLED;
use crate::metrics::ShardStats;
use crate::protocol::server;
use crate::protocol::ErrorCode;

impl Shard {
    /// The member side of a refused join.
    pub(super) fn on_join_refused(&self, room: &str, conn: u64, error: Bytes) {
        let Some(c) = self.conn(conn) else { return };
        let pos = c.rooms.borrow().iter().position(|r| r == room);
        if let Some(pos) = pos {
            c.rooms.borrow_mut().swap_remove(pos);
        }
        c.out.push_text(error);
    }

    /// The member side of a join: the owner has counted the member, so it is
    /// added to the fan-out list (unless it left or closed meanwhile).
    pub(super) fn on_joined(&self, room: &str, conn: u64, req: Option<&str>, payload: Bytes) {
        let Some(c) = self.conn(conn) else { return };
        if !c.in_room(room) {
            // Left before the owner's answer arrived: the join still gets its one reply.
            c.out.push_text(server::error(req, ErrorCode::BadRequest, JOIN_CANCELLED, None));
            return;
        }
        self.members.borrow_mut().insert(room, conn);
        c.out.push_text(payload);
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
