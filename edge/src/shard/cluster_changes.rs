//! Cluster mode on a shared store: the shell of `engine::cluster_changes`
//! (edits, deletes and reactions under a room's lock in Redis). It hands the
//! engine a member's change with a lock token of its own, makes each call the
//! engine asks for as a task (to Redis through the bridge, or a shared-store
//! query) bounded by the call's deadline, hands the answer back, wakes the
//! engine at the time it asks for (the pauses between tries, the changes'
//! deadlines), and sends the replies to their connections.

use std::rc::Rc;
use std::time::Duration;

use router::bridge::BridgeHandle;
use router::ChangeMsg;

use super::cluster::timed;
use super::cluster_store::timed_store;
use super::sequencer::{RedisSequencer, Sequencer};
use super::Shard;
use crate::engine::cluster_changes::{ChangeAnswer, ChangeCall, ChangeEffect, Changes};

impl Shard {
    /// A member's edit, delete or reaction in a cluster on a shared store: run by the engine
    /// (queued behind the room's change running on this shard, if any), answered on its
    /// connection (`change.conn`).
    pub(super) fn cluster_change(self: &Rc<Self>, change: ChangeMsg) {
        let id = self.take_ticket();
        // The lock's value: unique cluster-wide, so a change releases only its own lock.
        let token: u64 = rand::random();
        self.with_changes(|c, now| c.change(id, change, token, now));
    }

    /// Runs `f` on the changes with the time, carries out every effect they produced, then
    /// makes sure the engine is woken at its next deadline.
    fn with_changes(self: &Rc<Self>, f: impl FnOnce(&mut Changes, u64)) {
        let Sequencer::Redis(r) = &self.sequencer else { return };
        f(&mut r.changes.borrow_mut(), Self::now_ms());
        loop {
            // The borrow ends before the effect runs.
            let Some(effect) = r.changes.borrow_mut().poll() else { break };
            match effect {
                ChangeEffect::Reply { conn, payload } => self.to_conn(conn, payload),
                ChangeEffect::Call { id, call, deadline_ms } => self.change_call(&r.bridge, id, call, deadline_ms),
            }
        }
        self.arm_changes_timer(r);
    }

    fn change_call(self: &Rc<Self>, bridge: &BridgeHandle, id: u64, call: ChangeCall, deadline_ms: u64) {
        let left = Duration::from_millis(deadline_ms.saturating_sub(Self::now_ms()));
        let (me, b) = (self.clone(), bridge.clone());
        monoio::spawn(async move {
            let answer = match call {
                ChangeCall::RoomSeq { room } => ChangeAnswer::RoomSeq(timed(left, b.room_seq(&room)).await),
                ChangeCall::Lock { room, token, ttl_ms } => ChangeAnswer::Locked(timed(left, b.lock(&room, token, ttl_ms)).await),
                ChangeCall::Unlock { room, token } => ChangeAnswer::Unlocked(timed(left, b.unlock(&room, token)).await),
                ChangeCall::Publish { channel, frame } => ChangeAnswer::Published(timed(left, b.publish_event(&channel, frame)).await),
                ChangeCall::Store(query) => ChangeAnswer::Stored(timed_store(&me, left, query).await),
            };
            me.with_changes(|c, now| c.answered(id, answer, now));
        });
    }

    /// Arms the changes' timer for their next deadline, unless one as early is armed.
    fn arm_changes_timer(self: &Rc<Self>, r: &RedisSequencer) {
        let Some(at) = r.changes.borrow().next_deadline() else { return };
        let armed = r.changes_timer.get();
        if armed != 0 && armed <= at {
            return;
        }
        r.changes_timer.set(at);
        let me = self.clone();
        let wait = Duration::from_millis(at.saturating_sub(Self::now_ms()));
        monoio::spawn(async move {
            monoio::time::sleep(wait).await;
            let Sequencer::Redis(r) = &me.sequencer else { return };
            // A timer armed earlier since then has ticked already, and armed the next one.
            if r.changes_timer.get() == at {
                r.changes_timer.set(0);
                me.with_changes(|c, now| c.tick(now));
            }
        });
    }
}
