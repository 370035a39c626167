//! The owner side of a room: membership counts per shard, sequencing,
//! idempotent retries, the recent ring, fan-out, history pages and catch-up.
//!
//! Fan-out renders the `message` JSON once; local members get a reference to
//! those bytes, every other shard with members gets one Deliver frame (never
//! one per member), and the sender gets its `ack` after the fan-out is queued.
//!
//! A room must be loaded from the store before the owner acts on it
//! (`store_io::room_ready`); requests that arrive meanwhile wait in the
//! room's bounded load queue and are replayed in order.
//!
//! Durability: in `fast` mode a message is published (ring, fan-out, ack)
//! as soon as it is sequenced and its store write follows; in `durable` mode
//! it is published only when its batch is committed (`store_io`), in seq
//! order, so no client ever sees a message the store might lose.

use bytes::Bytes;
use router::{FileRef, Frame};
use storage::{Query, StoreError, StoredMessage};

use super::store_io::{PendingSend, Readiness, Wait};
use super::Shard;
use crate::config::Durability;
use crate::engine::{catch_up, Busy, Failure};
use crate::metrics::ShardStats;
use crate::protocol::server::{self, FileOut, MessageOut};
use crate::protocol::ErrorCode;
use crate::room::{fit_page, AckInfo, OwnedRoom, Sequenced};

/// The answer to a join whose connection left the room before the join completed.
pub(super) const JOIN_CANCELLED: &str = "join cancelled: the room was left before the join completed";

/// A send, as the owner receives it (from a local connection or a frame).
pub(super) struct SendArgs<'a> {
    pub(super) room: &'a str,
    pub(super) shard: usize,
    pub(super) conn: u64,
    pub(super) user: &'a str,
    pub(super) req: Option<&'a str>,
    pub(super) client_id: Option<&'a str>,
    pub(super) body: &'a str,
    pub(super) kind: &'a str,
    /// url, name, size, mime
    pub(super) file: Option<(&'a str, &'a str, u64, &'a str)>,
    pub(super) reply_to: Option<u64>,
}

impl<'a> SendArgs<'a> {
    pub(super) fn to_frame(&self) -> Frame {
        Frame::Send {
            room: self.room.to_owned(),
            shard: self.shard as u16,
            conn: self.conn,
            user: self.user.to_owned(),
            req: self.req.map(str::to_owned),
            client_id: self.client_id.map(str::to_owned),
            body: self.body.to_owned(),
            kind: self.kind.to_owned(),
            file: self.file.map(|(url, name, size, mime)| FileRef {
                url: url.to_owned(),
                name: name.to_owned(),
                size,
                mime: mime.to_owned(),
            }),
            reply_to: self.reply_to,
        }
    }

    /// The arguments of an owned `Frame::Send` (a send replayed from a load queue).
    pub(super) fn from_frame(f: &'a Frame) -> Option<Self> {
        let Frame::Send {
            room,
            shard,
            conn,
            user,
            req,
            client_id,
            body,
            kind,
            file,
            reply_to,
        } = f
        else {
            return None;
        };
        Some(Self {
            room,
            shard: usize::from(*shard),
            conn: *conn,
            user,
            req: req.as_deref(),
            client_id: client_id.as_deref(),
            body,
            kind,
            file: file.as_ref().map(|f| (f.url.as_str(), f.name.as_str(), f.size, f.mime.as_str())),
            reply_to: *reply_to,
        })
    }
}

impl Shard {
    /// A member on `shard` joins `room`; answers `joined`, then catch-up
    /// (from the recent ring, or from the store when the ring no longer holds it).
    pub(super) fn owner_join(&self, room: &str, shard: usize, conn: u64, req: Option<&str>, since: Option<u64>) {
        let queued = || Frame::Join {
            room: room.to_owned(),
            shard: shard as u16,
            conn,
            user: String::new(),
            req: req.map(str::to_owned),
            since,
        };
        match self.room_ready(room, queued) {
            Readiness::Ready => {}
            Readiness::Queued => return,
            Readiness::Refused(msg) => return self.refuse_join(room, shard, conn, Busy::Store.reply(req, msg)),
        }
        let mut owned = self.owned.borrow_mut();
        let Some(r) = owned.get_mut(room) else { return };
        if let Some(since) = since.filter(|&s| !r.ring().covers(s, r.published())) {
            let after = since.max(r.published().saturating_sub(self.cfg.max_catch_up_messages as u64));
            r.start_join(conn);
            r.hold();
            drop(owned);
            let query = Query::RangeAfter {
                room: room.to_owned(),
                after,
                limit: self.cfg.max_catch_up_messages,
            };
            let wait = Wait::CatchUp {
                room: room.to_owned(),
                shard,
                conn,
                req: req.map(str::to_owned),
                since,
            };
            if !self.submit_query(query, wait) {
                self.with_loaded(room, |r| {
                    r.finish_join(conn);
                    r.release();
                });
                self.refuse_join(room, shard, conn, Busy::Store.reply(req, "store busy, retry"));
            }
            return;
        }
        let members = r.join(shard);
        let joined = server::joined(req, room, r.published(), r.epoch(), members);
        let missed = since.map_or_else(Vec::new, |s| catch_up::frames(room, s, r.published(), r.ring().after(s)));
        drop(owned);
        self.send_joined(room, shard, conn, req, joined, missed);
    }

    /// The store answered a catch-up read: count the member, then `joined`, stored messages, ring messages.
    pub(super) fn finish_catch_up(&self, w: CatchUpDone<'_>, stored: Result<Vec<StoredMessage>, StoreError>) {
        let mut owned = self.owned.borrow_mut();
        let Some(r) = owned.get_mut(w.room) else { return };
        r.release();
        if !r.finish_join(w.conn) {
            // Left (or closed) while the store was read: the join still gets its one reply.
            drop(owned);
            return self.to_conn(w.conn, server::error(w.req, ErrorCode::BadRequest, JOIN_CANCELLED, None));
        }
        let stored = match stored {
            Ok(s) => s,
            Err(e) => {
                drop(owned);
                let err = Failure::Store(e).reply(w.req, "history store unavailable");
                return self.refuse_join(w.room, w.shard, w.conn, err);
            }
        };
        let members = r.join(w.shard);
        let joined = server::joined(w.req, w.room, r.published(), r.epoch(), members);
        let read = stored.iter().map(|m| (m.seq, &m.frame));
        let out = catch_up::frames(w.room, w.since, r.published(), read.chain(r.ring().after(w.since)));
        drop(owned);
        self.send_joined(w.room, w.shard, w.conn, w.req, joined, out);
    }

    /// Sends `joined` and the catch-up frames to a member (same ring, so in order before live messages).
    fn send_joined(&self, room: &str, shard: usize, conn: u64, req: Option<&str>, joined: Bytes, catch_up: Vec<Bytes>) {
        if shard == self.id {
            self.on_joined(room, conn, req, joined);
        } else {
            self.send_frame(
                shard,
                &Frame::Joined {
                    room: room.to_owned(),
                    conn,
                    req: req.map(str::to_owned),
                    payload: joined.to_vec(),
                },
            );
        }
        for payload in catch_up {
            self.to_conn(conn, payload);
        }
    }

    /// Refuses a join: the member side forgets the room for that connection and relays the error.
    pub(super) fn refuse_join(&self, room: &str, shard: usize, conn: u64, error: Bytes) {
        if shard == self.id {
            return self.on_join_refused(room, conn, error);
        }
        let frame = Frame::JoinRefused {
            room: room.to_owned(),
            conn,
            payload: error.to_vec(),
        };
        self.send_frame(shard, &frame);
    }

    /// The member side of a refused join.
    pub(super) fn on_join_refused(&self, room: &str, conn: u64, error: Bytes) {
        let Some(c) = self.conn(conn) else { return };
        let pos = c.rooms.borrow().iter().position(|r| r == room);
        if let Some(pos) = pos {
            c.rooms.borrow_mut().swap_remove(pos);
        }
        c.out.push_text(error);
    }

    /// A member on `shard` left `room` (or its join, still waiting for the store, is dropped).
    pub(super) fn owner_leave(&self, room: &str, shard: usize, conn: u64) {
        if self.drop_queued_join(room, conn) {
            return;
        }
        if let Some(r) = self.owned.borrow_mut().get_mut(room) {
            if !r.finish_join(conn) {
                r.leave(shard);
            }
        }
    }

    /// The member side of a join: the owner has counted the member, so it is
    /// added to the fan-out list (unless it left or closed meanwhile).
    pub(super) fn on_joined(&self, room: &str, conn: u64, req: Option<&str>, payload: Bytes) {
        let Some(c) = self.conn(conn) else { return };
        if !c.in_room(room) {
            // Left before the owner's answer arrived: the join still gets its one reply.
            c.out.push_text(server::error(req, ErrorCode::BadRequest, JOIN_CANCELLED, None));
            return;
        }
        self.members.borrow_mut().insert(room, conn);
        c.out.push_text(payload);
    }

    /// Sequences a send, hands it to the store, and publishes it as the durability mode says.
    pub(super) fn owner_send(&self, a: &SendArgs<'_>) {
        if self.clustered() {
            if let Some(me) = self.rc() {
                me.cluster_send(a);
            }
            return;
        }
        match self.room_ready(a.room, || a.to_frame()) {
            Readiness::Ready => {}
            Readiness::Queued => return,
            Readiness::Refused(msg) => return self.to_conn(a.conn, Busy::Store.reply(a.req, msg)),
        }
        let mut owned = self.owned.borrow_mut();
        let Some(r) = owned.get_mut(a.room) else { return };
        let ack = match r.sequence(a.user, a.client_id, Self::now_ms()) {
            Sequenced::New(ack) => ack,
            Sequenced::Duplicate(ack) => {
                let ticket = (ack.seq > r.published()).then(|| r.commit_ticket(ack.seq)).flatten();
                drop(owned);
                return self.answer_duplicate(a, &ack, ticket);
            }
        };
        let rendered = render_message(a, Some(ack.seq), &ack.msg_id, ack.ts);
        let stored = StoredMessage {
            room: a.room.to_owned(),
            seq: ack.seq,
            msg_id: ack.msg_id.clone(),
            sender: a.user.to_owned(),
            ts_ms: ack.ts,
            client_id: a.client_id.map(str::to_owned),
            frame: rendered.clone(),
        };
        let ticket = self.take_ticket();
        if self.store.write(self.id, stored, ticket).is_err() {
            // Nothing happened since `sequence`: take the seq back, so the room has no gap.
            r.unsequence(ack.seq, a.user, a.client_id);
            drop(owned);
            ShardStats::inc(&self.stats().store_overloaded_total);
            return self.to_conn(a.conn, Busy::Store.reply(a.req, "message store busy, retry"));
        }
        ShardStats::inc(&self.stats().messages_total);
        if self.cfg.durability == Durability::Durable {
            r.committing(ack.seq, ticket);
            drop(owned);
            let pending = PendingSend {
                room: a.room.to_owned(),
                user: a.user.to_owned(),
                client_id: a.client_id.map(str::to_owned),
                ack,
                rendered,
                waiters: vec![(a.conn, a.req.map(str::to_owned))],
            };
            self.waits.borrow_mut().insert(ticket, Wait::Durable(Box::new(pending)));
            return;
        }
        r.hold();
        r.publish(ack.seq, rendered.clone());
        let remote: Vec<usize> = r.remote_shards(self.id).collect();
        drop(owned);
        self.waits.borrow_mut().insert(ticket, Wait::Write { room: a.room.to_owned() });
        self.fan_out(a.room, ack.seq, &rendered, &remote);
        self.to_conn(a.conn, server::ack(a.req, a.room, ack.seq, &ack.msg_id, ack.ts));
    }

    /// A retried `client_id`: the original ack, now or (durable, still committing) when the commit lands.
    fn answer_duplicate(&self, a: &SendArgs<'_>, ack: &AckInfo, committing: Option<u64>) {
        if let Some(ticket) = committing {
            if let Some(Wait::Durable(p)) = self.waits.borrow_mut().get_mut(&ticket) {
                p.waiters.push((a.conn, a.req.map(str::to_owned)));
                return;
            }
        }
        self.to_conn(a.conn, server::ack(a.req, a.room, ack.seq, &ack.msg_id, ack.ts));
    }

    /// Publishes a committed durable send: ring, fan-out, then every waiting ack.
    pub(super) fn publish_durable(&self, p: PendingSend) {
        let remote = {
            let mut owned = self.owned.borrow_mut();
            let Some(r) = owned.get_mut(&p.room) else { return };
            r.committed(p.ack.seq);
            r.publish(p.ack.seq, p.rendered.clone());
            r.remote_shards(self.id).collect::<Vec<_>>()
        };
        self.fan_out(&p.room, p.ack.seq, &p.rendered, &remote);
        for (conn, req) in &p.waiters {
            self.to_conn(*conn, server::ack(req.as_deref(), &p.room, p.ack.seq, &p.ack.msg_id, p.ack.ts));
        }
    }

    /// A durable send whose batch failed: the seq is given up, members are told with `gap`,
    /// the senders get the failure (`unavailable` when a retry may succeed), and the client id
    /// may be retried.
    pub(super) fn fail_durable(&self, p: PendingSend, error: &Failure) {
        let remote = {
            let mut owned = self.owned.borrow_mut();
            let Some(r) = owned.get_mut(&p.room) else { return };
            r.committed(p.ack.seq);
            r.skip(p.ack.seq);
            if let Some(cid) = &p.client_id {
                r.forget_client_id(&p.user, cid);
            }
            r.remote_shards(self.id).collect::<Vec<_>>()
        };
        let gap = server::gap(&p.room, p.ack.seq, p.ack.seq);
        self.fan_out(&p.room, p.ack.seq, &gap, &remote);
        for (conn, req) in &p.waiters {
            self.to_conn(*conn, error.reply(req.as_deref(), "message not stored"));
        }
    }

    /// Queues `payload` to local members and one Deliver frame to each other shard with members.
    fn fan_out(&self, room: &str, seq: u64, payload: &Bytes, remote: &[usize]) {
        self.deliver_local(room, payload);
        for &shard in remote {
            let frame = Frame::Deliver {
                room: room.to_owned(),
                seq,
                payload: payload.to_vec(),
            };
            self.send_frame(shard, &frame);
        }
    }

    /// Queues `payload` to every local member of `room`.
    pub(super) fn deliver_local(&self, room: &str, payload: &Bytes) {
        let members = self.members.borrow();
        let conns = self.conns.borrow();
        let mut n = 0;
        for id in members.get(room) {
            if let Some(c) = conns.get(id) {
                if c.out.push_live(payload.clone()) {
                    n += 1;
                }
            }
        }
        ShardStats::add(&self.stats().deliveries_total, n);
    }

    /// A page of history: from the recent ring when it holds the page, else from the store.
    pub(super) fn owner_history(&self, room: &str, conn: u64, req: Option<&str>, before: Option<u64>, limit: u32) {
        let queued = || Frame::History {
            room: room.to_owned(),
            conn,
            req: req.map(str::to_owned),
            before,
            limit,
        };
        match self.room_ready(room, queued) {
            Readiness::Ready => {}
            Readiness::Queued => return,
            Readiness::Refused(msg) => return self.to_conn(conn, Busy::Store.reply(req, msg)),
        }
        let page = self.with_loaded(room, |r| r.recent_page(before, limit as usize)).flatten();
        if let Some((messages, next)) = page {
            let (messages, next) = fit_page(messages, next, self.cfg.history_page_max_bytes);
            return self.to_conn(conn, server::history(req, room, &messages, next));
        }
        let query = Query::History {
            room: room.to_owned(),
            before,
            limit: limit as usize,
        };
        let wait = Wait::History {
            room: room.to_owned(),
            conn,
            req: req.map(str::to_owned),
        };
        if !self.submit_query(query, wait) {
            self.to_conn(conn, Busy::Store.reply(req, "store busy, retry"));
        }
    }

    /// Runs `f` on a loaded room's state; `None` when the room is not in memory.
    pub(super) fn with_loaded<T>(&self, room: &str, f: impl FnOnce(&mut OwnedRoom) -> T) -> Option<T> {
        self.owned.borrow_mut().get_mut(room).map(f)
    }
}

/// A catch-up read the store answered.
pub(super) struct CatchUpDone<'a> {
    pub(super) room: &'a str,
    pub(super) shard: usize,
    pub(super) conn: u64,
    pub(super) req: Option<&'a str>,
    pub(super) since: u64,
}

/// The `message` JSON of a send, rendered once; `seq: None` leaves the slot Redis fills (cluster mode).
pub(super) fn render_message(a: &SendArgs<'_>, seq: Option<u64>, msg_id: &str, ts: u64) -> Bytes {
    let m = MessageOut {
        room: a.room,
        seq: seq.unwrap_or(0),
        msg_id,
        from: a.user,
        ts,
        body: a.body,
        kind: a.kind,
        file: a.file.map(|(url, name, size, mime)| FileOut { url, name, size, mime }),
        reply_to: a.reply_to,
    };
    match seq {
        Some(_) => server::message(&m),
        None => server::message_unsequenced(&m),
    }
}
