//! Cluster mode: the shell of `engine::reads`. It starts a read for a
//! connection's `history`, thread page or `presence`, or for a join's
//! catch-up, makes each call the read asks for as a task (to Redis through
//! the bridge, or a shared-store query), bounded by the call's deadline, and
//! hands the answer back; replies go to the connection, a catch-up to the
//! member side.

use std::rc::Rc;
use std::time::Duration;

use router::bridge::BridgeHandle;

use super::cluster::timed;
use super::cluster_store::timed_store;
use super::members::JoinStep;
use super::sequencer::Sequencer;
use super::{Conn, Shard};
use crate::engine::reads::{Asker, PageAt, ReadAnswer, ReadCall, ReadEffect, Reads};

impl Shard {
    /// Runs `f` on the reads, then carries out every effect they produced.
    fn with_reads(self: &Rc<Self>, f: impl FnOnce(&mut Reads, u64)) {
        let Sequencer::Redis(r) = &self.sequencer else { return };
        f(&mut r.reads.borrow_mut(), self.mono_ms());
        loop {
            // The borrow ends before the effect runs: carrying one out may re-enter.
            let Some(effect) = r.reads.borrow_mut().poll() else { break };
            self.carry_out_read(&r.bridge, effect);
        }
    }

    fn carry_out_read(self: &Rc<Self>, bridge: &BridgeHandle, effect: ReadEffect) {
        match effect {
            ReadEffect::Reply { conn, payload } => self.to_conn(conn, payload),
            ReadEffect::Fetched { token, result } => self.join_answered(token, JoinStep::Fetched(result)),
            ReadEffect::Call { id, call, deadline_ms } => {
                let left = Duration::from_millis(deadline_ms.saturating_sub(self.mono_ms()));
                let (me, b) = (self.clone(), bridge.clone());
                monoio::spawn(async move {
                    let answer = match call {
                        ReadCall::RoomSeq { room } => ReadAnswer::RoomSeq(timed(left, b.room_seq(&room)).await),
                        ReadCall::Recent { room, after, count } => {
                            let read = timed(left, b.recent_after(&room, after, count)).await;
                            ReadAnswer::Recent(read.map(|msgs| msgs.into_iter().map(|m| (m.seq, m.payload)).collect()))
                        }
                        ReadCall::Online { room } => ReadAnswer::Online(timed(left, b.presence_online(&room)).await),
                        ReadCall::Store(query) => ReadAnswer::Stored(timed_store(&me, left, query).await),
                    };
                    me.with_reads(|r, now| r.answered(id, answer, now));
                });
            }
        }
    }

    /// The reads' clock: monotonic milliseconds (deadlines are in it).
    fn mono_ms(&self) -> u64 {
        self.mono_ns() / 1_000_000
    }

    fn asker(conn: &Conn, req: Option<&str>) -> Asker {
        Asker {
            conn: conn.id,
            req: req.map(str::to_owned),
            user: conn.user().map(|u| u.sub.clone()),
        }
    }

    /// `history` in cluster mode: a page from the room's recent stream in Redis, completed from
    /// the shared store below what the stream still holds.
    pub(super) fn cluster_history(&self, conn: &Conn, req: Option<&str>, room: &str, before: Option<u64>, limit: u32) {
        let (Some(me), id) = (self.rc(), self.take_ticket()) else { return };
        me.with_reads(|r, now| r.history(id, Self::asker(conn, req), room, PageAt { before, limit }, now));
    }

    /// `history` by `thread` in a cluster on a shared store: the root's replies from the store
    /// (in `fast` mode a reply sent in the last batch interval may not be there yet). A root
    /// that is 0 or past Redis's counter for the room is `not_found`, as on one node.
    pub(super) fn cluster_thread(&self, conn: &Conn, req: Option<&str>, room: &str, root: u64, before: Option<u64>, limit: u32) {
        let (Some(me), id) = (self.rc(), self.take_ticket()) else { return };
        me.with_reads(|r, now| r.thread(id, Self::asker(conn, req), room, root, PageAt { before, limit }, now));
    }

    /// `presence` in cluster mode: who is online in the room on any node.
    pub(super) fn cluster_presence(&self, conn: &Conn, req: Option<&str>, room: &str) {
        let (Some(me), id) = (self.rc(), self.take_ticket()) else { return };
        me.with_reads(|r, now| r.presence(id, Self::asker(conn, req), room, now));
    }

    /// A join's catch-up in cluster mode (the member side's `Fetch`), answered to join `token`.
    pub(super) fn cluster_fetch(self: &Rc<Self>, token: u64, room: &str, after: u64, count: u32) {
        let id = self.take_ticket();
        self.with_reads(|r, now| r.fetch(id, token, room, after, count, now));
    }
}
