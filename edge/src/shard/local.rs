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
use super::sequencer::Sequencer;
use super::{Conn, Shard};
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
        let Sequencer::Local(owner) = &self.sequencer else { return };
        f(&mut owner.borrow_mut(), Self::now_ms());
        loop {
            // The borrow ends before the effect runs: carrying one out never re-enters the owner.
            let Some(effect) = owner.borrow_mut().poll() else { break };
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

    /// A send to a room this shard owns.
    pub(super) fn owner_send(&self, a: &SendArgs<'_>) {
        self.with_owner(|o, now| o.send(a, now));
    }

    /// A history page of a room this shard owns.
    pub(super) fn owner_history(&self, h: HistoryArgs<'_>) {
        self.with_owner(|o, now| o.history(h, now));
    }

    fn on_completion(&self, c: Completion) {
        self.with_owner(|o, now| o.completion(c, now));
    }

    /// Member side: a join (checks passed) to the room's owner shard, with a fresh token.
    pub(super) fn local_join(&self, conn: &Rc<Conn>, id: Option<&str>, room: &str, since: Option<u64>) {
        let Some(claims) = conn.user() else { return };
        let owner = crate::room::owner(room, self.shards);
        let token = self.take_ticket();
        if owner == self.id {
            conn.rooms.borrow_mut().push(room.to_owned());
            conn.joins.borrow_mut().push((room.to_owned(), token));
            return self.owner_join(JoinArgs {
                room,
                shard: self.id,
                conn: conn.id,
                req: id,
                since,
                token,
            });
        }
        let frame = Frame::Join {
            room: room.to_owned(),
            shard: self.id as u16,
            conn: conn.id,
            user: claims.sub.clone(),
            req: id.map(str::to_owned),
            since,
            token,
        };
        if !self.try_request(owner, &frame) {
            return self.overloaded(conn, id);
        }
        conn.rooms.borrow_mut().push(room.to_owned());
        conn.joins.borrow_mut().push((room.to_owned(), token));
    }

    /// Member side: `conn` left `room`; the owner takes it off its count.
    pub(super) fn local_leave(&self, conn: &Conn, room: &str) {
        let owner = crate::room::owner(room, self.shards);
        if owner == self.id {
            self.owner_leave(room, self.id, conn.id);
        } else {
            let frame = Frame::Leave {
                room: room.to_owned(),
                shard: self.id as u16,
                conn: conn.id,
            };
            self.send_frame(owner, &frame);
        }
    }

    /// Member side: a history page from the room's owner shard.
    pub(super) fn local_history(&self, conn: &Rc<Conn>, id: Option<&str>, room: &str, before: Option<u64>, limit: u32) {
        let owner = crate::room::owner(room, self.shards);
        if owner == self.id {
            return self.owner_history(HistoryArgs {
                room,
                conn: conn.id,
                req: id,
                before,
                limit,
            });
        }
        let frame = Frame::History {
            room: room.to_owned(),
            conn: conn.id,
            req: id.map(str::to_owned),
            before,
            limit,
        };
        if !self.try_request(owner, &frame) {
            self.overloaded(conn, id);
        }
    }
}
