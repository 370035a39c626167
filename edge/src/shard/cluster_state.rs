//! Cluster mode on a shared store: the shell of `engine::cluster_state` (a
//! user's state: memberships and `sync`, read and delivered marks with their
//! receipts, last seen). It starts a chain for each request and for the
//! once-a-second tick, makes each call the engine asks for as a task (to Redis
//! through the bridge, or a shared-store query) bounded by the call's
//! deadline, hands the answer back, sends replies to their connections, and
//! publishes receipts on Redis without waiting (best effort).

use std::rc::Rc;
use std::time::Duration;

use router::bridge::BridgeHandle;

use super::cluster::timed;
use super::cluster_store::timed_store;
use super::sequencer::Sequencer;
use super::{Conn, Shard};
use crate::engine::cluster_state::{Asker, State, StateAnswer, StateCall, StateEffect};

impl Shard {
    /// Runs `f` on the chains with the time, then carries out every effect they produced.
    fn with_state(self: &Rc<Self>, f: impl FnOnce(&mut State, u64)) {
        let Sequencer::Redis(r) = &self.sequencer else { return };
        f(&mut r.state.borrow_mut(), Self::now_ms());
        loop {
            // The borrow ends before the effect runs.
            let Some(effect) = r.state.borrow_mut().poll() else { break };
            match effect {
                StateEffect::Reply { conn, payload } => self.to_conn(conn, payload),
                StateEffect::Notify { channel, frame } => {
                    let b = r.bridge.clone();
                    monoio::spawn(async move {
                        if let Err(e) = b.notify(&channel, frame).await {
                            tracing::debug!(channel, error = %e, "cluster: receipt not published");
                        }
                    });
                }
                StateEffect::Call { id, call, deadline_ms } => self.state_call(&r.bridge, id, call, deadline_ms),
            }
        }
    }

    fn state_call(self: &Rc<Self>, bridge: &BridgeHandle, id: u64, call: StateCall, deadline_ms: u64) {
        let left = Duration::from_millis(deadline_ms.saturating_sub(Self::now_ms()));
        let (me, b) = (self.clone(), bridge.clone());
        monoio::spawn(async move {
            let answer = match call {
                StateCall::RoomSeq { room } => StateAnswer::RoomSeq(timed(left, b.room_seq(&room)).await),
                StateCall::Subscribers { channel } => StateAnswer::Subscribers(timed(left, b.subscribers(&channel)).await),
                StateCall::Online { room } => StateAnswer::Online(timed(left, b.presence_online(&room)).await),
                StateCall::Store(query) => StateAnswer::Stored(timed_store(&me, left, query).await),
            };
            me.with_state(|s, now| s.answered(id, answer, now));
        });
    }

    fn state_asker(conn: &Conn, req: Option<&str>) -> Asker {
        Asker {
            conn: conn.id,
            req: req.map(str::to_owned),
        }
    }

    /// `user` belongs to `room` (a join, or a DM sent or received): written to the shared
    /// store for `sync`, once while this shard remembers it.
    pub(super) fn cluster_member(self: &Rc<Self>, room: &str, user: &str) {
        if !self.shared_store() {
            return;
        }
        let id = self.take_ticket();
        self.with_state(|s, now| s.member(id, user, room, now));
    }

    /// `sync` in a cluster on a shared store: the user's rooms, their last stored seqs and the
    /// user's marks, in one store query. (In `fast` mode a message sequenced in the last batch
    /// interval may not be counted yet.)
    pub(super) fn cluster_sync(self: &Rc<Self>, conn: &Rc<Conn>, req: Option<&str>) {
        let Some(user) = conn.user() else { return };
        let id = self.take_ticket();
        self.with_state(|s, now| s.sync(id, Self::state_asker(conn, req), &user.sub, now));
    }

    /// `read` of `room` up to `seq` by a connection of this shard, in a cluster on a shared store.
    pub(super) fn cluster_read(self: &Rc<Self>, conn: &Rc<Conn>, req: Option<&str>, room: &str, seq: u64) {
        let Some(user) = conn.user() else { return };
        let id = self.take_ticket();
        self.with_state(|s, now| s.read(id, Self::state_asker(conn, req), room, &user.sub, seq, now));
    }

    /// This shard holds its first connection of `user`, or closed its last one: in a cluster on
    /// a shared store the user's last seen is stored now (the later time wins), so it is
    /// readable on every node once the user is offline everywhere.
    pub(super) fn cluster_seen(self: &Rc<Self>, user: &str) {
        let id = self.take_ticket();
        self.with_state(|s, now| s.seen(id, user, now));
    }

    /// `presence` of `user` in a cluster on a shared store: online while a connection of the
    /// user is on this shard or any node subscribes the user's Redis channel (a node does while
    /// it holds one), else offline with the last seen the store keeps.
    pub(super) fn cluster_last_seen(self: &Rc<Self>, conn: &Rc<Conn>, req: Option<&str>, user: &str) {
        let here = !self.users.borrow().get(user).is_empty();
        let id = self.take_ticket();
        self.with_state(|s, now| s.last_seen(id, Self::state_asker(conn, req), user, here, now));
    }

    /// The users message `seq` of `room` reached on this shard (once a second): their delivered
    /// marks are stored forward-only (for `sync`), and the receipt goes to the room's senders
    /// through Redis.
    pub(super) fn cluster_delivered(self: &Rc<Self>, room: String, seq: u64, users: Vec<String>) {
        let id = self.take_ticket();
        self.with_state(|s, now| s.delivered(id, &room, seq, users, now));
    }

    /// Once a second: the read marks moved since the last tick go to their rooms' members, one
    /// `receipt` per user and room, except in rooms above `receipts_room_max` users online.
    pub(super) fn cluster_state_tick(self: &Rc<Self>) {
        let id = self.take_ticket();
        self.with_state(|s, now| s.tick(id, now));
    }
}
