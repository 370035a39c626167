//! The IO shell around the engine's local sequencer (`engine::owner`): it
//! feeds the owner what reaches this shard for the rooms it owns (requests
//! of local connections, frames from other shards, store completions, with
//! the time read here) and carries out what the owner asks, in order:
//! replies over the mesh or into a local outbox, `Joined`/`JoinRefused`
//! for member shards, deliveries to every shard with members.

use std::rc::Rc;

use router::Frame;
use storage::{Completion, Overloaded, Query, StoreHandle, StoredMessage};

use super::members::JoinAnswer;
use super::Shard;
use crate::engine::owner::{Effect, HistoryArgs, JoinArgs, Owner, SendArgs, StorePort};

/// Completions handled per wake-up before yielding to connection tasks.
const DRAIN_BATCH: usize = 512;

/// The store service's admission, as one shard submits to it.
pub(crate) struct ShardStore {
    pub(crate) handle: StoreHandle,
    pub(crate) shard: usize,
}

impl StorePort for ShardStore {
    fn write(&mut self, msg: StoredMessage, ticket: u64) -> Result<(), Overloaded> {
        self.handle.write(self.shard, msg, ticket)
    }

    fn query(&mut self, query: Query, ticket: u64) -> Result<(), Overloaded> {
        self.handle.query(self.shard, query, ticket)
    }
}

/// The owner side of this shard's rooms on a single node.
pub(crate) type LocalOwner = Owner<ShardStore>;

pub(super) async fn run_completions(shard: Rc<Shard>) {
    loop {
        shard.completions.ready().await;
        let n = shard.completions.drain(DRAIN_BATCH, |c| shard.on_completion(c));
        if n == DRAIN_BATCH {
            monoio::time::sleep(std::time::Duration::ZERO).await;
        }
    }
}

impl Shard {
    /// Runs `f` on the owner with the time now, then carries out every effect it produced.
    fn with_owner(&self, f: impl FnOnce(&mut LocalOwner, u64)) {
        f(&mut self.owner.borrow_mut(), Self::now_ms());
        loop {
            // The borrow ends before the effect runs: carrying one out never re-enters the owner.
            let Some(effect) = self.owner.borrow_mut().poll() else { break };
            self.carry_out(effect);
        }
    }

    fn carry_out(&self, effect: Effect) {
        match effect {
            Effect::Reply { conn, payload } => self.to_conn(conn, payload),
            Effect::Joined {
                shard,
                room,
                conn,
                req,
                token,
                payload,
                catch_up,
            } => {
                if shard == self.id {
                    let answer = JoinAnswer {
                        room: &room,
                        conn,
                        req: req.as_deref(),
                        token,
                    };
                    return self.on_joined(answer, payload, catch_up);
                }
                let frame = Frame::Joined {
                    room: room.as_ref().to_owned(),
                    conn,
                    req,
                    token,
                    payload: payload.to_vec(),
                    catch_up: catch_up.iter().map(|b| b.to_vec()).collect(),
                };
                self.send_frame(shard, &frame);
            }
            Effect::JoinRefused {
                shard,
                room,
                conn,
                token,
                payload,
            } => {
                if shard == self.id {
                    return self.on_join_refused(&room, conn, Some(token), payload);
                }
                let frame = Frame::JoinRefused {
                    room: room.as_ref().to_owned(),
                    conn,
                    token,
                    payload: payload.to_vec(),
                };
                self.send_frame(shard, &frame);
            }
            Effect::Deliver { shard, room, seq, payload } => {
                if shard == self.id {
                    return self.deliver_local(&room, &payload);
                }
                let frame = Frame::Deliver {
                    room: room.as_ref().to_owned(),
                    seq,
                    payload: payload.to_vec(),
                };
                self.send_frame(shard, &frame);
            }
        }
    }

    /// A member on `j.shard` joins a room this shard owns.
    pub(super) fn owner_join(&self, j: JoinArgs<'_>) {
        self.with_owner(|o, now| o.join(j, now));
    }

    /// A member on `shard` leaves a room this shard owns.
    pub(super) fn owner_leave(&self, room: &str, shard: usize, conn: u64) {
        self.with_owner(|o, _| o.leave(room, shard, conn));
    }

    /// A send to a room this shard owns (cluster mode: published through Redis instead).
    pub(super) fn owner_send(&self, a: &SendArgs<'_>) {
        if self.clustered() {
            if let Some(me) = self.rc() {
                me.cluster_send(a);
            }
            return;
        }
        self.with_owner(|o, now| o.send(a, now));
    }

    /// A history page of a room this shard owns.
    pub(super) fn owner_history(&self, h: HistoryArgs<'_>) {
        self.with_owner(|o, now| o.history(h, now));
    }

    fn on_completion(&self, c: Completion) {
        self.with_owner(|o, now| o.completion(c, now));
    }
}
