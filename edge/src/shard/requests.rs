//! Client requests on the connection's own shard: each text frame goes
//! through the connection's session (`engine::session`: parse, rate,
//! authentication, rights, limits), and what it comes to is carried out here:
//! a reply, a close, joins and leaves to the member side, a send to the room's
//! owner shard, history and presence to the sequencer. Requests that would
//! have to queue behind a full mesh ring are answered `overloaded` with a
//! retry hint instead of buffering.

use std::borrow::Cow;
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::Instant;

use bytes::Bytes;

use super::{Conn, Shard};
use crate::engine::owner::SendArgs;
use crate::engine::session::{FrameCtx, Step};
use crate::engine::Busy;
use crate::limits::conns::ConnRefusal;
use crate::metrics::ShardStats;
use crate::protocol::client::SendReq;
use crate::protocol::server::{self, AdvertisedLimits};
use crate::protocol::ErrorCode;

fn mono_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

impl Shard {
    /// What the session is told with a frame.
    fn frame_ctx<'a>(&'a self, conn: &Conn) -> FrameCtx<'a> {
        FrameCtx {
            limits: &self.session_limits,
            verifier: &self.verifier,
            mono_ns: mono_ns(),
            now_ms: Self::now_ms(),
            reply_bytes: conn.out.reply_bytes(),
            stats: self.stats(),
        }
    }

    /// One text frame from a client.
    pub(super) fn handle_text(&self, conn: &Rc<Conn>, text: &str) {
        let cx = self.frame_ctx(conn);
        let (id, step) = conn.session.borrow_mut().frame(text, &cx);
        self.carry_out_step(conn, id, step);
    }

    fn carry_out_step(&self, conn: &Rc<Conn>, id: Option<&str>, step: Step<'_>) {
        match step {
            Step::Nothing => {}
            Step::Reply(reply) => {
                conn.out.push_text(reply);
            }
            Step::Close { reply, code, reason } => {
                conn.out.push_text(reply);
                conn.out.close(code, reason);
            }
            Step::Welcome { joins } => self.welcome(conn, joins),
            Step::Join { room, since } => self.member_join(conn, id, &room, since),
            Step::Leave { room } => {
                self.leave_room(conn, &room);
                conn.out.push_text(server::left(id, &room));
            }
            Step::Send { room, send } => self.on_send(conn, id, &room, send),
            Step::History {
                room,
                before,
                limit,
                thread,
            } => self.seq_history(conn, id, &room, super::sequencer::Page { before, limit, thread }),
            Step::Presence { room } => self.seq_presence(conn, id, &room),
            Step::LastSeen { user } => self.seq_last_seen(conn, id, &user),
            Step::Typing { room, typing } => self.on_typing(conn, &room, typing),
            Step::Read { room, seq } => self.seq_read(conn, id, &room, seq),
            Step::Sync => self.seq_sync(conn, id),
            Step::Change(change) => {
                let Some(user) = conn.user() else { return };
                self.seq_change(conn, id, change.into_msg(&user.sub, conn.id, id));
            }
        }
    }

    /// The connection proved who it is: `welcome`, then the `?room=` and `?resume=` joins
    /// (each through the session's join checks).
    pub(super) fn welcome(&self, conn: &Rc<Conn>, joins: Vec<(String, Option<u64>)>) {
        let Some(user) = conn.user() else { return };
        if !conn.user_counted.get() {
            // Authenticated in-band (`auth`): counted now, refused after the upgrade.
            if let Err(refusal) = self.conn_table.open_user(&user.sub) {
                return self.refuse_authenticated(conn, refusal);
            }
            conn.user_counted.set(true);
        }
        let table = self.conn_table.limits();
        let limits = AdvertisedLimits {
            max_frame_bytes: self.cfg.max_frame_bytes as u64,
            max_body_chars: self.cfg.max_body_chars as u64,
            max_rooms_per_conn: self.cfg.max_rooms_per_conn as u64,
            max_msgs_per_s: self.cfg.max_msgs_per_s,
            max_conns_per_user: table.max_per_user as u64,
            max_conns_per_ip: table.max_per_ip as u64,
        };
        let conn_id = format!("{:x}", conn.id);
        let welcome = server::welcome(
            &user.sub,
            &conn_id,
            &self.cfg.node_id,
            self.id as u16,
            self.cfg.heartbeat_ms,
            &limits,
        );
        conn.out.push_text(welcome);
        self.user_online(conn, &user.sub);
        for (room, since) in joins {
            let cx = self.frame_ctx(conn);
            let step = conn.session.borrow_mut().url_join(Cow::Owned(room), since, &cx);
            self.carry_out_step(conn, None, step);
        }
    }

    /// A connection over a connection limit once it authenticated: `error` with `retry_ms`,
    /// then close 1013 with reason `retry_ms=N`, as admission control closes.
    fn refuse_authenticated(&self, conn: &Conn, refusal: ConnRefusal) {
        self.count_conn_refusal(refusal);
        let retry_ms = self.cfg.conn_limit_retry_ms;
        let code = if refusal == ConnRefusal::Node {
            ErrorCode::Overloaded
        } else {
            ErrorCode::RateLimited
        };
        conn.out.push_text(server::error(None, code, refusal.message(), Some(retry_ms)));
        conn.out.close(1013, &format!("retry_ms={retry_ms}"));
    }

    /// Counts a connection refused by `max_conns*` under its reason.
    pub(super) fn count_conn_refusal(&self, refusal: ConnRefusal) {
        let s = self.stats();
        let counter = match refusal {
            ConnRefusal::Node => &s.conns_refused_node_total,
            ConnRefusal::Ip => &s.conns_refused_ip_total,
            ConnRefusal::User => &s.conns_refused_user_total,
        };
        ShardStats::inc(counter);
    }

    /// `conn` is off `room` in its session: the member side and the sequencer forget it.
    fn leave_room(&self, conn: &Conn, room: &str) {
        // A join still waiting for its answer no longer stands: the member side answers it.
        let was_member = self.members.borrow_mut().remove(room, conn.id);
        self.member_leave(conn, room, was_member);
    }

    /// Leaves every room (the connection is gone).
    pub(super) fn leave_all(&self, conn: &Conn) {
        let rooms: Vec<String> = conn.session.borrow().rooms().to_vec();
        for room in rooms {
            conn.session.borrow_mut().forget_room(&room);
            self.leave_room(conn, &room);
        }
    }

    /// A send the session allowed: to the room's owner shard.
    pub(super) fn on_send(&self, conn: &Rc<Conn>, id: Option<&str>, room: &str, s: SendReq<'_>) {
        let Some(claims) = conn.user() else { return };
        // `reply_to: 0` was refused by the session. On one node the owner checks a root against
        // the room's seq; in a cluster Redis's counter does, when the root is past what this
        // shard delivered (a root acked on another node a moment ago may not have reached it yet).
        let args = SendArgs::of_req(room, (self.id, conn.id), &claims.sub, id, &s);
        let owner = crate::room::owner(room, self.shards);
        if self.seq_before_send(conn, &args, owner) {
            return;
        }
        if owner == self.id {
            return self.seq_send(&args);
        }
        if !self.try_request_encoded(owner, self.mesh_out.borrow_mut().send(&args)) {
            self.overloaded(conn, id);
        }
    }

    pub(super) fn overloaded(&self, conn: &Conn, id: Option<&str>) {
        ShardStats::inc(&self.stats().overloaded_total);
        conn.out.push_text(Busy::Shard.reply(id, "server busy, retry"));
    }

    /// Sends an `error` frame for request `id`.
    pub(super) fn reply_error(&self, conn: &Conn, id: Option<&str>, code: ErrorCode, msg: &str, retry_ms: Option<u64>) {
        conn.out.push_text(server::error(id, code, msg, retry_ms));
    }

    /// Queues a rendered frame for a connection that may live on any shard.
    pub(super) fn to_conn(&self, conn: u64, payload: Bytes) {
        let shard = Self::shard_of(conn);
        if shard == self.id {
            if let Some(c) = self.conn(conn) {
                c.out.push_text(payload);
            }
            return;
        }
        let frame = self.mesh_out.borrow_mut().reply(conn, &payload);
        self.send_encoded(shard, frame);
    }
}
