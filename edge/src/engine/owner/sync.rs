//! `sync` and the memberships it lists, on a single node: a user's rooms
//! (joined, or a DM sent or received, stored by the room's owner once per
//! user while the room is loaded) with the room's last stored seq and the
//! user's marks, read in one store query.
//!
//! What must stay true: a membership is written once per user while the
//! room is loaded, and a write the store refused or failed is tried again
//! at the user's next join or DM; a `sync` lists at most what the store
//! holds, with a loaded room's published seq when this shard owns it.

use storage::{Answer, Query, StoreError, UserRoom};

use super::{Owner, StorePort, Wait};
use crate::engine::{Busy, Failure};
use crate::protocol::server;

impl<S: StorePort> Owner<S> {
    /// `user` belongs to `room` (a join's subscribe, a DM): stored once while the room is loaded.
    pub(super) fn record_member(&mut self, room: &str, user: &str) {
        let Some(r) = self.rooms.get_mut(room) else { return };
        if !r.record_member(user) {
            return;
        }
        let ticket = self.take_ticket();
        let query = Query::AddUserRoom {
            user: user.to_owned(),
            room: room.to_owned(),
        };
        if self.store.query(query, ticket).is_err() {
            if let Some(r) = self.rooms.get_mut(room) {
                r.unrecord_member(user);
            }
            return;
        }
        self.waits.insert(
            ticket,
            Wait::Member {
                room: room.to_owned(),
                user: user.to_owned(),
            },
        );
    }

    /// The store answered a membership write.
    pub(super) fn member_recorded(&mut self, room: &str, user: &str, result: Result<Answer, StoreError>) {
        if let Err(e) = result {
            tracing::warn!(shard = self.cfg.shard, room, user, error = %e, "membership not stored: retried at the next join");
            if let Some(r) = self.rooms.get_mut(room) {
                r.unrecord_member(user);
            }
        }
    }

    /// `sync` for connection `conn` of `user`: the user's rooms with their seqs and marks.
    pub fn sync(&mut self, user: &str, conn: u64, req: Option<&str>) {
        let ticket = self.take_ticket();
        if self.store.query(Query::UserRooms { user: user.to_owned() }, ticket).is_err() {
            return self.reply(conn, Busy::Store.reply(req, "the store is busy: sync not read"));
        }
        self.waits.insert(
            ticket,
            Wait::Sync {
                conn,
                req: req.map(str::to_owned),
            },
        );
    }

    /// The store answered a `sync`. A room this shard owns and holds in memory says its
    /// published seq, which may be ahead of the store's in fast mode.
    pub(super) fn synced(&mut self, conn: u64, req: Option<&str>, result: Result<Answer, StoreError>) {
        let rooms: Vec<UserRoom> = match result {
            Ok(Answer::UserRooms(rooms)) => rooms,
            Ok(other) => return tracing::error!(shard = self.cfg.shard, ?other, "user_rooms answered with something else"),
            Err(e) => return self.reply(conn, Failure::Store(e).reply(req, "sync not read")),
        };
        let rooms: Vec<UserRoom> = rooms
            .into_iter()
            .map(|mut u| {
                if let Some(r) = self.rooms.get(&u.room) {
                    u.seq = u.seq.max(r.published());
                }
                u
            })
            .collect();
        self.reply(conn, server::sync(req, &rooms));
    }
}
