//! Read and delivered marks, and last seen, in a cluster on a shared store: a member's
//! `read` moves the user's mark in the store (forward only), and the moves this shard saw go
//! to the room's members once a second as `receipt` events, through the room's Redis
//! channel. Delivered marks and their receipts are `cluster_receipts.rs`. A user's
//! last seen is stored when a shard gets its first connection of the user or closes its last.
//!
//! What must stay true (as on one node, `engine/owner/receipts.rs`):
//! - a mark never moves back: the store keeps the larger seq, and a `read` at or below the
//!   stored mark changes nothing and tells nobody (not an error);
//! - a `read` past the room's last message (Redis's counter) marks that message;
//! - pushes are coalesced: at each tick, one `receipt` per user and room whose mark moved on
//!   this shard, with the highest seq; rooms with more than `receipts_room_max` users online
//!   push none (the marks are still stored);
//! - a receipt is an event (shed for a member whose queue is backed up), never a message.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use router::bridge::keys;
use storage::{Answer, MarkKind, Query};

use super::cluster::timed;
use super::sequencer::Sequencer;
use super::{Conn, Shard};
use crate::engine::Failure;
use crate::protocol::server;

/// Read marks this shard moved since the last tick: (room, user) → the highest seq.
#[derive(Default)]
pub(crate) struct MovedMarks(RefCell<BTreeMap<(String, String), u64>>);

impl Shard {
    /// `read` of `room` up to `seq` by a connection of this shard, in a cluster on a shared store.
    pub(super) fn cluster_read(self: &Rc<Self>, conn: &Rc<Conn>, id: Option<&str>, room: &str, seq: u64) {
        let (Some(user), Some(bridge)) = (conn.user(), self.bridge()) else {
            return;
        };
        let (me, conn_id, req) = (self.clone(), conn.id, id.map(str::to_owned));
        let (room, user) = (room.to_owned(), user.sub.clone());
        let limit = Duration::from_millis(self.cfg.cluster_join_timeout_ms);
        monoio::spawn(async move {
            let top = match timed(limit, bridge.room_seq(&room)).await {
                Ok(top) => top,
                Err(f) => return me.to_conn(conn_id, f.reply(req.as_deref(), "read mark not stored")),
            };
            let seq = seq.min(top);
            if seq == 0 {
                return;
            }
            let query = Query::SetMark {
                room: room.clone(),
                user: user.clone(),
                kind: MarkKind::Read,
                seq,
            };
            match me.cluster_store_query(query).await {
                Ok(Answer::Mark(now)) if now == seq => {
                    let Sequencer::Redis(r) = &me.sequencer else { return };
                    let mut moved = r.marks.0.borrow_mut();
                    let at = moved.entry((room, user)).or_default();
                    *at = (*at).max(seq);
                }
                // The stored mark is ahead already: nothing moved, nobody is told.
                Ok(Answer::Mark(_)) => {}
                Ok(other) => tracing::error!(?other, "set_mark answered with something else"),
                Err(e) => me.to_conn(conn_id, Failure::Store(e).reply(req.as_deref(), "read mark not stored")),
            }
        });
    }

    /// This shard holds its first connection of `user`, or closed its last one: in a cluster on
    /// a shared store the user's last seen is stored now (the later time wins), so it is
    /// readable on every node once the user is offline everywhere.
    pub(super) fn cluster_seen(self: &Rc<Self>, user: &str) {
        let (me, user) = (self.clone(), user.to_owned());
        monoio::spawn(async move {
            let query = Query::SetLastSeen {
                user: user.clone(),
                ts_ms: Self::now_ms(),
            };
            if let Err(e) = me.cluster_store_query(query).await {
                tracing::warn!(user, error = %e, "cluster: last seen not stored");
            }
        });
    }

    /// `presence` of `user` in a cluster on a shared store: online while a connection of the
    /// user is on this shard or any node subscribes the user's Redis channel (a node does while
    /// it holds one), else offline with the last seen the store keeps.
    pub(super) fn cluster_last_seen(self: &Rc<Self>, conn: &Rc<Conn>, id: Option<&str>, user: &str) {
        let Some(bridge) = self.bridge() else { return };
        let here = !self.users.borrow().get(user).is_empty();
        let (me, conn_id, req, user) = (self.clone(), conn.id, id.map(str::to_owned), user.to_owned());
        let limit = Duration::from_millis(self.cfg.cluster_join_timeout_ms);
        monoio::spawn(async move {
            let req = req.as_deref();
            let online = here
                || match timed(limit, bridge.subscribers(&keys::user(&user))).await {
                    Ok(n) => n > 0,
                    Err(f) => return me.to_conn(conn_id, f.reply(req, "presence not read")),
                };
            if online {
                return me.to_conn(conn_id, server::presence_user(req, &user, true, Some(Self::now_ms())));
            }
            let reply = match me.cluster_store_query(Query::LastSeen { user: user.clone() }).await {
                Ok(Answer::LastSeen(ts)) => server::presence_user(req, &user, false, ts),
                Ok(other) => {
                    tracing::error!(?other, "last_seen answered with something else");
                    server::error(req, crate::protocol::ErrorCode::Internal, "last seen not read", None)
                }
                Err(e) => Failure::Store(e).reply(req, "last seen not read"),
            };
            me.to_conn(conn_id, reply);
        });
    }

    /// Once a second: the marks moved since the last tick go to their rooms' members, one
    /// `receipt` per user and room, except in rooms above `receipts_room_max` users online.
    pub(super) fn cluster_marks_tick(self: &Rc<Self>) {
        let Sequencer::Redis(r) = &self.sequencer else { return };
        let moved = std::mem::take(&mut *r.marks.0.borrow_mut());
        if moved.is_empty() {
            return;
        }
        let mut by_room: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
        for ((room, user), seq) in moved {
            by_room.entry(room).or_default().push((user, seq));
        }
        let (bridge, cap) = (r.bridge.clone(), self.cfg.receipts_room_max);
        let limit = Duration::from_millis(self.cfg.cluster_join_timeout_ms);
        monoio::spawn(async move {
            for (room, marks) in by_room {
                match timed(limit, bridge.presence_online(&room)).await {
                    Ok(online) if online.len() > cap => continue,
                    Ok(_) => {}
                    Err(_) => {
                        tracing::debug!(room, "cluster: receipts not pushed: the room's size is unknown");
                        continue;
                    }
                }
                for (user, seq) in marks {
                    Self::cluster_event(&bridge, &room, "", &server::receipt(&room, &user, seq, "read"));
                }
            }
        });
    }
}
