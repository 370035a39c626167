//! The local sequencer's shell (one node). Around `engine::owner`: it feeds
//! the owner what reaches this shard for the rooms it owns (member shards'
//! subscribes, catch-up reads, member counts; sends and history requests;
//! store completions, with the time read here) and carries out what the owner
//! asks, in order: replies over the mesh or into a local outbox, answers to
//! member shards, deliveries to every subscribed shard (this one's go to its
//! member side directly). And the member side's calls to a room's owner:
//! a direct call when this shard owns the room, else a mesh frame.

use std::rc::Rc;

use bytes::Bytes;
use router::{Frame, Refusal, SeqPayload};
use storage::{Completion, Overloaded, Query, StoreHandle, StoredMessage};

use super::members::JoinStep;
use super::sequencer::{Page, Sequencer};
use super::{Conn, Shard};
use crate::engine::owner::{Effect, FetchArgs, HistoryArgs, Owner, SendArgs, StorePort};
use crate::engine::subscriber::{RoomPos, SubEffect};
use crate::engine::{Busy, Failure};

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

/// The refusal of new work while this shard's spill queue is over its bound.
pub(super) const SPILL_FULL: &str = "this core's outbound queue is backed up, retry";

impl Shard {
    /// Runs `f` on the owner with the time now, then carries out every effect it produced.
    pub(super) fn with_owner(&self, f: impl FnOnce(&mut LocalOwner, u64)) {
        let Sequencer::Local(owner) = &self.sequencer else { return };
        f(&mut owner.borrow_mut(), Self::now_ms());
        loop {
            // The borrow ends before the effect runs: carrying one out never re-enters the owner.
            let Some(effect) = owner.borrow_mut().poll() else { break };
            self.carry_out(effect);
        }
    }

    pub(super) fn carry_out(&self, effect: Effect) {
        match effect {
            Effect::Reply { conn, payload } => self.to_conn(conn, payload),
            Effect::ToUsers { room, seq, payload } => self.to_users_everywhere(&room, seq, &payload),
            Effect::Subscribed { shard, token, result } => {
                if shard == self.id {
                    let step = JoinStep::Subscribed(result.map(Some).map_err(Failure::Owner));
                    return self.join_answered(token, step);
                }
                let (pos, refusal) = match result {
                    Ok(p) => (p, None),
                    Err(r) => (
                        RoomPos {
                            seq: 0,
                            epoch: 0,
                            others: 0,
                        },
                        Some(r),
                    ),
                };
                let frame = Frame::Subscribed {
                    token,
                    seq: pos.seq,
                    epoch: pos.epoch,
                    others: pos.others,
                    refusal,
                };
                self.send_frame(shard, &frame);
            }
            Effect::Fetched { shard, token, result } => {
                if shard == self.id {
                    return self.join_answered(token, JoinStep::Fetched(result.map_err(Failure::Owner)));
                }
                let (messages, refusal) = match result {
                    Ok(m) => (
                        m.into_iter().map(|(seq, b)| SeqPayload { seq, payload: b.to_vec() }).collect(),
                        None,
                    ),
                    Err(r) => (Vec::new(), Some(r)),
                };
                self.send_frame(shard, &Frame::Fetched { token, messages, refusal });
            }
            Effect::Deliver { shard, room, seq, payload } => {
                let at_us = super::latency::mono_us();
                if shard == self.id {
                    return self.member_deliver(&room, seq, &payload, at_us);
                }
                let frame = self.mesh_out.borrow_mut().deliver(&room, seq, &payload, at_us);
                self.send_encoded(shard, frame);
            }
            Effect::Event {
                shard,
                room,
                from,
                payload,
            } => self.event_to(shard, &room, &from, &payload),
            Effect::EventTo {
                shard,
                room,
                users,
                payload,
            } => self.event_to_users(shard, &room, &users, &payload),
            Effect::Changed {
                shard,
                room,
                seq,
                message,
                event,
            } => self.changed_to(shard, &room, seq, message, &event),
        }
    }

    /// An event without a seq for shard `shard`'s members: its member side, or a frame.
    fn event_to(&self, shard: usize, room: &str, from: &str, payload: &Bytes) {
        if shard == self.id {
            return self.member_event(room, from, payload);
        }
        let frame = Frame::Event {
            room: room.to_owned(),
            from: from.to_owned(),
            payload: payload.to_vec(),
        };
        self.send_frame(shard, &frame);
    }

    /// An event without a seq about `from` for the members of a room this shard owns.
    pub(super) fn owner_event(&self, room: &str, from: &str, payload: &Bytes) {
        self.with_owner(|o, _| o.event(room, from, payload));
    }

    /// A member shard subscribes to a room this shard owns.
    pub(super) fn owner_subscribe(&self, room: &str, shard: usize, token: u64, user: Option<&str>) {
        self.with_owner(|o, now| o.subscribe(room, shard, token, user, now));
    }

    /// A join's subscribe (counting a member of `user`) to the room's owner shard.
    fn local_subscribe(&self, token: u64, room: String, user: Option<String>) {
        let owner = crate::room::owner(&room, self.shards);
        if owner == self.id {
            return self.owner_subscribe(&room, self.id, token, user.as_deref());
        }
        let frame = Frame::Subscribe {
            room,
            shard: self.id as u16,
            token,
            user,
        };
        if !self.try_request(owner, &frame) {
            self.join_answered(token, JoinStep::Subscribed(Err(congested())));
        }
    }

    /// A member shard reads a catch-up of a room this shard owns.
    pub(super) fn owner_fetch(&self, f: FetchArgs<'_>) {
        if self.spill_refuses() {
            let result = Err(Busy::Shard.refusal(SPILL_FULL));
            return self.carry_out(Effect::Fetched {
                shard: f.shard,
                token: f.token,
                result,
            });
        }
        self.with_owner(|o, now| o.fetch(f, now));
    }

    /// A member shard has no member and no join left in a room this shard owns.
    pub(super) fn owner_unsubscribe(&self, room: &str, shard: usize) {
        self.with_owner(|o, _| o.unsubscribe(room, shard));
    }

    /// A member (of `user`) on `shard` joined or left a room this shard owns.
    pub(super) fn owner_member(&self, room: &str, shard: usize, user: &str, online: bool) {
        self.with_owner(|o, now| o.member(room, shard, user, online, now));
    }

    /// A member's `read`: to the room's owner shard (a direct call when it is this one).
    pub(super) fn local_read(&self, conn: &Rc<Conn>, id: Option<&str>, room: &str, seq: u64) {
        let Some(user) = conn.user() else { return };
        let owner = crate::room::owner(room, self.shards);
        if owner == self.id {
            return self.owner_read(room, &user.sub, seq, conn.id, id);
        }
        let frame = Frame::Read {
            room: room.to_owned(),
            user: user.sub.clone(),
            seq,
            conn: conn.id,
            req: id.map(str::to_owned),
        };
        if !self.try_request(owner, &frame) {
            self.overloaded(conn, id);
        }
    }

    /// A `read` of a room this shard owns.
    pub(super) fn owner_read(&self, room: &str, user: &str, seq: u64, conn: u64, req: Option<&str>) {
        self.with_owner(|o, _| o.read(room, user, seq, conn, req));
    }

    /// `sync` for a connection of this shard, read through this shard's owner.
    pub(super) fn local_sync(&self, conn: &Rc<Conn>, id: Option<&str>) {
        let Some(user) = conn.user() else { return };
        self.with_owner(|o, _| o.sync(&user.sub, conn.id, id));
    }

    /// The owner's periodic tick (a single node), or the publisher's idle rooms (a cluster).
    pub(super) fn owner_tick(&self) {
        if let Sequencer::Redis(r) = &self.sequencer {
            return r.publisher.borrow_mut().evict_idle(Self::now_ms());
        }
        self.with_owner(|o, now| o.tick(now));
    }

    /// Who is online in a room this shard owns, for connection `conn`.
    pub(super) fn owner_presence(&self, room: &str, conn: u64, req: Option<&str>) {
        self.with_owner(|o, _| o.presence(room, conn, req));
    }

    /// Member side: who is online, from the room's owner shard.
    pub(super) fn local_presence(&self, conn: &Rc<Conn>, id: Option<&str>, room: &str) {
        let owner = crate::room::owner(room, self.shards);
        if owner == self.id {
            return self.owner_presence(room, conn.id, id);
        }
        let frame = Frame::Online {
            room: room.to_owned(),
            conn: conn.id,
            req: id.map(str::to_owned),
        };
        if !self.try_request(owner, &frame) {
            self.overloaded(conn, id);
        }
    }

    /// A send to a room this shard owns.
    pub(super) fn owner_send(&self, a: &SendArgs<'_>) {
        if self.spill_refuses() {
            return self.to_conn(a.conn, Busy::Shard.reply(a.req, SPILL_FULL));
        }
        self.with_owner(|o, now| o.send(a, now));
    }

    /// A history page of a room this shard owns.
    pub(super) fn owner_history(&self, h: HistoryArgs<'_>) {
        if self.spill_refuses() {
            return self.to_conn(h.conn, Busy::Shard.reply(h.req, SPILL_FULL));
        }
        self.with_owner(|o, now| o.history(h, now));
    }

    fn on_completion(&self, c: Completion) {
        match &self.sequencer {
            Sequencer::Local(_) => self.with_owner(|o, now| o.completion(c, now)),
            Sequencer::Redis(r) => self.cluster_store_completion(r, c),
        }
    }

    /// Carries out a member side's call to the room's owner shard: a direct call when it is
    /// this one, else a frame. A subscribe or fetch (a client's join) is refused while the
    /// ring to the owner is congested; unsubscribe and presence are never lost.
    pub(super) fn local_call(&self, call: SubEffect) {
        let me = self.id;
        match call {
            // The local owner always says the room's position with its answer; a seq read
            // is served by subscribing again (the owner counts a shard once, and no member).
            SubEffect::Subscribe { token, room, user } => self.local_subscribe(token, room, Some(user)),
            SubEffect::RoomSeq { token, room } => self.local_subscribe(token, room, None),
            SubEffect::Fetch { token, room, after, count } => {
                let owner = crate::room::owner(&room, self.shards);
                if owner == me {
                    let f = FetchArgs {
                        room: &room,
                        shard: me,
                        token,
                        after,
                        count,
                    };
                    return self.owner_fetch(f);
                }
                let frame = Frame::Fetch {
                    room,
                    shard: me as u16,
                    token,
                    after,
                    count,
                };
                if !self.try_request(owner, &frame) {
                    self.join_answered(token, JoinStep::Fetched(Err(congested())));
                }
            }
            SubEffect::Unsubscribe { room } => {
                let owner = crate::room::owner(&room, self.shards);
                if owner == me {
                    return self.owner_unsubscribe(&room, me);
                }
                self.send_frame(owner, &Frame::Unsubscribe { room, shard: me as u16 });
            }
            SubEffect::Presence { room, user, online } => {
                let owner = crate::room::owner(&room, self.shards);
                if owner == me {
                    return self.owner_member(&room, me, &user, online);
                }
                let frame = Frame::Presence {
                    room,
                    shard: me as u16,
                    user,
                    online,
                };
                self.send_frame(owner, &frame);
            }
            answer @ (SubEffect::Joined { .. }
            | SubEffect::Refused { .. }
            | SubEffect::Cancelled { .. }
            | SubEffect::Deliver { .. }
            | SubEffect::Event { .. }) => {
                tracing::error!(?answer, "a member-side answer reached the owner call path");
            }
        }
    }

    /// Member side: a history page from the room's owner shard.
    pub(super) fn local_history(&self, conn: &Rc<Conn>, id: Option<&str>, room: &str, page: Page) {
        let Page { before, limit, thread } = page;
        let Some(user) = conn.user() else { return };
        let owner = crate::room::owner(room, self.shards);
        if owner == self.id {
            return self.owner_history(HistoryArgs {
                room,
                user: &user.sub,
                conn: conn.id,
                req: id,
                before,
                limit,
                thread,
            });
        }
        let frame = Frame::History {
            room: room.to_owned(),
            user: user.sub.clone(),
            conn: conn.id,
            req: id.map(str::to_owned),
            before,
            limit,
            thread,
        };
        if !self.try_request(owner, &frame) {
            self.overloaded(conn, id);
        }
    }
}

/// The refusal of a join whose request could not reach the room's owner shard.
fn congested() -> Failure {
    Failure::Owner(Busy::Shard.refusal("server busy, retry"))
}

/// A member shard's view of a `Fetched` frame's messages (payloads sliced from `buf`, no copy).
pub(super) fn fetched_from_frame(
    buf: &Bytes,
    messages: &[router::ArchivedSeqPayload],
    refusal: Option<&router::ArchivedRefusal>,
) -> Result<Vec<(u64, Bytes)>, Failure> {
    if let Some(r) = refusal {
        return Err(Failure::Owner(refusal_from_frame(r)));
    }
    Ok(messages
        .iter()
        .map(|m| (m.seq.to_native(), router::payload_bytes(buf, m.payload.as_slice())))
        .collect())
}

/// An owner's refusal, read from a frame.
pub(super) fn refusal_from_frame(r: &router::ArchivedRefusal) -> Refusal {
    let code = match r.code {
        router::ArchivedRefusalCode::Overloaded => router::RefusalCode::Overloaded,
        router::ArchivedRefusalCode::Unavailable => router::RefusalCode::Unavailable,
        router::ArchivedRefusalCode::Internal => router::RefusalCode::Internal,
    };
    Refusal {
        code,
        retry_ms: r.retry_ms.as_ref().map(|m| m.to_native()),
        message: r.message.as_str().to_owned(),
    }
}
