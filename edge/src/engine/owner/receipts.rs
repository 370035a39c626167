//! Receipts of the rooms a shard owns, on a single node: a member's `read`
//! moves the user's read mark in the store, forward only; the member shards
//! report, once a second, which users a room's messages reached (their
//! delivered marks, `shard/delivered.rs`); the room's members hear both as
//! `receipt`s, coalesced.
//!
//! What must stay true:
//! - a mark never moves back: the store keeps the larger seq, and a `read`
//!   below the stored mark changes nothing and tells nobody (not an error);
//! - a `read` past the room's last published message marks that message;
//! - pushes are coalesced: at each tick, one read `receipt` per user and room
//!   that moved since, with the highest seq, and one delivered `receipt` per
//!   room and seq naming every user whose mark reached it; rooms above `receipts_room_max`
//!   users online push none (the marks are still stored);
//! - a receipt is ephemeral (an event for every member, shed for a member
//!   whose queue is backed up), never a message.

use std::collections::BTreeMap;

use storage::{Answer, MarkKind, Query, StoreError};

use super::{Owner, StorePort, Wait};
use crate::engine::{Busy, Failure};
use crate::protocol::server;

impl<S: StorePort> Owner<S> {
    /// `user` read `room` up to `seq` (connection `conn`, request `req`, answered only if
    /// the mark cannot be stored).
    pub fn read(&mut self, room: &str, user: &str, seq: u64, conn: u64, req: Option<&str>) {
        let seq = match self.rooms.get(room) {
            Some(r) => seq.min(r.published()),
            None => seq,
        };
        if seq == 0 {
            return;
        }
        let query = Query::SetMark {
            room: room.to_owned(),
            user: user.to_owned(),
            kind: MarkKind::Read,
            seq,
        };
        let ticket = self.take_ticket();
        if self.store.query(query, ticket).is_err() {
            return self.reply(conn, Busy::Store.reply(req, "the store is busy: read mark not stored"));
        }
        let wait = MarkWait {
            room: room.to_owned(),
            user: user.to_owned(),
            seq,
            conn,
            req: req.map(str::to_owned),
        };
        self.waits.insert(ticket, Wait::Mark(Box::new(wait)));
    }

    /// The store answered a `read`: a mark that moved to `seq` is told at the next tick.
    pub(super) fn marked(&mut self, mark: MarkWait, result: Result<Answer, StoreError>) {
        match result {
            Ok(Answer::Mark(now)) if now == mark.seq => {
                let pending = self.receipts.entry((mark.room, mark.user, MarkKind::Read)).or_default();
                *pending = (*pending).max(now);
            }
            // The stored mark is ahead already: nothing moved, nobody is told.
            Ok(Answer::Mark(_)) => {}
            Ok(other) => tracing::error!(shard = self.cfg.shard, ?other, "set_mark answered with something else"),
            Err(e) => {
                let reply = Failure::Store(e).reply(mark.req.as_deref(), "read mark not stored");
                self.reply(mark.conn, reply);
            }
        }
    }

    /// At the tick: one `receipt` per user, room and kind whose mark moved since the last one.
    /// Read receipts go one per user; delivered ones one per room and seq, with every user
    /// whose mark reached it (they move together: a message reaches all members at once).
    pub(super) fn flush_receipts(&mut self, now_ms: u64) {
        let mut delivered: BTreeMap<(String, u64), Vec<String>> = BTreeMap::new();
        for ((room, user, kind), seq) in std::mem::take(&mut self.receipts) {
            let Some(r) = self.rooms.get(&room) else { continue };
            if r.roster().len() > self.cfg.receipts_room_max {
                continue;
            }
            match kind {
                MarkKind::Read => {
                    let receipt = server::receipt(&room, &user, seq, "read");
                    self.event(&room, "", &receipt);
                }
                MarkKind::Delivered => delivered.entry((room, seq)).or_default().push(user),
            }
        }
        // Sorted by room: each room's senders are taken once, for all its receipts.
        let mut senders: Option<(String, std::rc::Rc<[String]>)> = None;
        for ((room, seq), mut users) in delivered {
            if senders.as_ref().is_none_or(|(r, _)| *r != room) {
                senders = Some((room.clone(), self.recent_senders(&room, now_ms)));
            }
            let Some((_, to)) = &senders else { continue };
            users.sort_unstable();
            let receipt = server::receipt_users(&room, &users, seq, "delivered");
            self.delivered_receipt(&room, &receipt, &to.clone());
        }
    }
}

/// A `read` waiting for the store.
#[derive(Debug)]
pub(super) struct MarkWait {
    pub(super) room: String,
    pub(super) user: String,
    pub(super) seq: u64,
    pub(super) conn: u64,
    pub(super) req: Option<String>,
}
