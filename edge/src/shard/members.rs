//! The member side's shell, one code for both modes: around
//! `engine::subscriber`, it feeds in this shard's joins and leaves, the
//! sequencer's answers and the room deliveries, and carries out what the
//! subscriber decides: answers and deliveries for this shard's connections
//! here, sequencer calls through `Sequencer::call` (to a room's owner shard
//! on a single node, to Redis in a cluster).

use std::rc::Rc;

use bytes::Bytes;

use super::{Conn, Shard};
use crate::engine::subscriber::{Fate, JoinReq, RoomPos, SubEffect, JOIN_CANCELLED};
use crate::engine::Failure;
use crate::metrics::ShardStats;
use crate::protocol::server;
use crate::protocol::ErrorCode;

/// A sequencer's answer for a join in progress.
pub(super) enum JoinStep {
    Subscribed(Result<Option<RoomPos>, Failure>),
    RoomSeq(Result<u64, Failure>),
    Fetched(Result<Vec<(u64, Bytes)>, Failure>),
}

impl Shard {
    /// Runs `f` on the subscriber, then carries out every effect it produced.
    fn with_subscriber(&self, f: impl FnOnce(&mut crate::engine::subscriber::Subscriber)) {
        f(&mut self.subscriber.borrow_mut());
        loop {
            // The borrow ends before the effect runs: carrying one out may re-enter.
            let Some(effect) = self.subscriber.borrow_mut().poll() else { break };
            self.carry_out_member(effect);
        }
    }

    fn carry_out_member(&self, effect: SubEffect) {
        match effect {
            SubEffect::Joined {
                conn,
                room,
                payload,
                catch_up,
            } => {
                let Some(c) = self.conn(conn) else { return };
                c.out.push_text(payload);
                for frame in catch_up {
                    c.out.push_text(frame);
                }
                self.members.borrow_mut().insert(&room, conn);
            }
            SubEffect::Refused { conn, room, payload } => {
                let Some(c) = self.conn(conn) else { return };
                c.session.borrow_mut().forget_room(&room);
                c.out.push_text(payload);
            }
            SubEffect::Cancelled { conn, req } => {
                if let Some(c) = self.conn(conn) {
                    c.out
                        .push_text(server::error(req.as_deref(), ErrorCode::BadRequest, JOIN_CANCELLED, None));
                }
            }
            SubEffect::Deliver { room, seq, payload } => {
                self.deliver_local(&room, &payload, None);
                if seq > 0 {
                    self.note_delivered(&room, seq);
                }
            }
            SubEffect::Event { room, payload } => self.event_to_members(&room, &payload),
            call => self.sequencer_call(call),
        }
    }

    /// A sequencer's answer for join `token`.
    pub(super) fn join_answered(&self, token: u64, step: JoinStep) {
        self.with_subscriber(|s| match step {
            JoinStep::Subscribed(r) => s.subscribed(token, r),
            JoinStep::RoomSeq(r) => s.room_seq(token, r),
            JoinStep::Fetched(r) => s.fetched(token, r),
        });
    }

    /// A join that passed the session's checks (the room is the session's already).
    pub(super) fn member_join(&self, conn: &Rc<Conn>, req: Option<&str>, room: &str, since: Option<u64>) {
        let Some(claims) = conn.user() else { return };
        let token = self.take_ticket();
        let j = JoinReq {
            room,
            conn: conn.id,
            token,
            req,
            since,
            user: &claims.sub,
        };
        self.with_subscriber(|s| s.join(j));
    }

    /// `conn` left `room` (already off its session); `was_member`: it was in the fan-out list.
    pub(super) fn member_leave(&self, conn: &Conn, room: &str, was_member: bool) {
        let user = conn.user().map(|c| c.sub.clone()).unwrap_or_default();
        self.with_subscriber(|s| s.leave(room, conn.id, &user, was_member));
    }

    /// A room message (or, seq 0, a notice) for this shard's members, from the room's
    /// owner shard or from Redis; `at_us`: when it was sequenced on this node
    /// ([`latency::mono_us`](super::latency::mono_us)), for the delivery-latency histogram.
    pub(super) fn member_deliver(&self, room: &str, seq: u64, payload: &Bytes, at_us: u64) {
        let fate = self.subscriber.borrow_mut().deliver(room, seq, payload);
        match fate {
            Fate::Members => {
                self.deliver_local(room, payload, Some(at_us));
                if seq > 0 {
                    self.note_delivered(room, seq);
                }
            }
            Fate::Dropped => {}
            // A hole before it: the subscriber reads it, and gives this after.
            Fate::Repairing => self.with_subscriber(|_| {}),
        }
    }

    /// The pump's `gap` (cluster): seqs `from..=to` of `room` are held nowhere.
    pub(super) fn member_skip(&self, room: &str, from: u64, to: u64, notice: &Bytes) {
        self.with_subscriber(|s| s.skip(room, from, to, notice));
    }

    /// The room's sequence restarted (Redis lost it): the cursor restarts at `seq` in a new
    /// epoch, and the members get `notice`.
    pub(super) fn member_reset(&self, room: &str, seq: u64, notice: &Bytes) {
        let now = Self::now_ms();
        self.with_subscriber(|s| s.reset(room, seq, notice, now));
    }

    /// Queues `payload` to every local member of `room` (followed to its write for the
    /// latency histogram on connections that follow none, when `at_us` is known).
    fn deliver_local(&self, room: &str, payload: &Bytes, at_us: Option<u64>) {
        let members = self.members.borrow();
        let conns = self.conns.borrow();
        let mut n = 0;
        for id in members.get(room) {
            if let Some(c) = conns.get(id) {
                if c.out.push_live(payload.clone()) {
                    n += 1;
                    if let Some(at) = at_us {
                        c.out.sample_latency(at);
                    }
                }
            }
        }
        ShardStats::add(&self.stats().deliveries_total, n);
    }
}
