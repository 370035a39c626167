//! Client requests on the connection's own shard (the member side): parse,
//! rate-limit, authorize, then either answer locally or forward to the room's
//! owner shard. Requests that would have to queue behind a full mesh ring are
//! answered `overloaded` with a retry hint instead of buffering.

use std::rc::Rc;
use std::sync::OnceLock;
use std::time::Instant;

use bytes::Bytes;
use router::Frame;

use super::{Conn, Shard};
use crate::auth::{self, Claims};
use crate::engine::owner::SendArgs;
use crate::engine::Busy;
use crate::metrics::ShardStats;
use crate::protocol::client::{self, ParseLimits, Request, SendReq, Target};
use crate::protocol::server::{self, AdvertisedLimits, FileOut};
use crate::protocol::ErrorCode;

/// Close code for a client that keeps exceeding its rate.
const CLOSE_RATE_LIMIT: u16 = 4029;

fn mono_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

impl Shard {
    /// One text frame from a client.
    pub(super) fn handle_text(&self, conn: &Rc<Conn>, text: &str) {
        ShardStats::inc(&self.stats().frames_in_total);
        let limits = ParseLimits {
            max_body_chars: self.cfg.max_body_chars,
            max_client_id_bytes: 64,
        };
        let env = match client::parse(text, &limits) {
            Ok(env) => env,
            Err(e) => {
                let id = e.id.as_deref().map(|r| r.get());
                return self.reply_error(conn, id, e.code, &e.message, None);
            }
        };
        let id = env.id.map(|r| r.get());
        if !self.rate_ok(conn, id) {
            return;
        }
        if conn.claims.borrow().is_none() {
            return match env.request {
                Request::Auth { token } => self.on_auth(conn, id, &token),
                _ => {
                    self.reply_error(
                        conn,
                        id,
                        ErrorCode::Unauthorized,
                        "authenticate first with {\"type\":\"auth\",\"token\":...}",
                        None,
                    );
                    conn.out.close(1008, "not authenticated");
                }
            };
        }
        self.dispatch(conn, id, env.request);
    }

    fn dispatch(&self, conn: &Rc<Conn>, id: Option<&str>, req: Request<'_>) {
        match req {
            Request::Auth { .. } => self.reply_error(conn, id, ErrorCode::BadRequest, "already authenticated", None),
            Request::Join { room, since } => self.on_join(conn, id, &room, since),
            Request::Leave { room } => self.on_leave(conn, id, &room),
            Request::Send(s) => self.on_send(conn, id, s),
            Request::History { room, before, limit } => self.on_history(conn, id, &room, before, limit),
            Request::Presence { room } => self.on_presence(conn, id, &room),
            Request::Ping => {
                conn.out.push_text(server::pong(id, Self::now_ms()));
            }
            other => {
                let msg = format!("{} is not available yet on this server", client::type_name(&other));
                self.reply_error(conn, id, ErrorCode::BadRequest, &msg, None);
            }
        }
    }

    /// GCRA per connection; repeated violations close the socket 4029.
    fn rate_ok(&self, conn: &Conn, id: Option<&str>) -> bool {
        let verdict = conn.rate.borrow_mut().check(mono_ns());
        match verdict {
            Ok(()) => {
                conn.strikes.set(0);
                true
            }
            Err(retry_ms) => {
                ShardStats::inc(&self.stats().rate_limited_total);
                let strikes = conn.strikes.get() + 1;
                conn.strikes.set(strikes);
                if strikes >= self.cfg.rate_limit_strikes {
                    conn.out.close(CLOSE_RATE_LIMIT, "rate limit exceeded repeatedly");
                } else {
                    self.reply_error(conn, id, ErrorCode::RateLimited, "too many requests", Some(retry_ms));
                }
                false
            }
        }
    }

    fn on_auth(&self, conn: &Rc<Conn>, id: Option<&str>, token: &str) {
        match self.verifier.verify(token, Self::now_ms() / 1000) {
            Ok(claims) => {
                let joins = std::mem::take(&mut *conn.pending_joins.borrow_mut());
                self.authenticated(conn, claims, joins);
            }
            Err(e) => {
                self.reply_error(conn, id, ErrorCode::Unauthorized, &format!("invalid token: {e}"), None);
                conn.out.close(1008, "authentication failed");
            }
        }
    }

    /// The connection proved who it is: `welcome`, then the `?room=` and `?resume=` joins.
    pub(super) fn authenticated(&self, conn: &Rc<Conn>, claims: Claims, joins: Vec<(String, Option<u64>)>) {
        let limits = AdvertisedLimits {
            max_frame_bytes: self.cfg.max_frame_bytes as u64,
            max_body_chars: self.cfg.max_body_chars as u64,
            max_rooms_per_conn: self.cfg.max_rooms_per_conn as u64,
            max_msgs_per_s: self.cfg.max_msgs_per_s,
        };
        let conn_id = format!("{:x}", conn.id);
        let welcome = server::welcome(
            &claims.sub,
            &conn_id,
            &self.cfg.node_id,
            self.id as u16,
            self.cfg.heartbeat_ms,
            &limits,
        );
        *conn.claims.borrow_mut() = Some(Rc::new(claims));
        conn.out.push_text(welcome);
        for (room, since) in joins {
            self.on_join(conn, None, &room, since);
        }
    }

    fn on_join(&self, conn: &Rc<Conn>, id: Option<&str>, room: &str, since: Option<u64>) {
        if !self.may_see(conn, id, room) {
            return;
        }
        if since.is_some() && !self.reply_budget_ok(conn, id) {
            return;
        }
        if conn.in_room(room) {
            return self.reply_error(conn, id, ErrorCode::BadRequest, &format!("already joined {room}"), None);
        }
        if conn.rooms.borrow().len() >= self.cfg.max_rooms_per_conn {
            let msg = format!("at most {} rooms per connection", self.cfg.max_rooms_per_conn);
            return self.reply_error(conn, id, ErrorCode::Forbidden, &msg, None);
        }
        self.member_join(conn, id, room, since);
    }

    fn on_leave(&self, conn: &Rc<Conn>, id: Option<&str>, room: &str) {
        if !self.leave_room(conn, room) {
            return self.reply_error(conn, id, ErrorCode::NotFound, &format!("not in room {room}"), None);
        }
        conn.out.push_text(server::left(id, room));
    }

    /// Removes `conn` from `room` here and at the owner; false if not a member.
    fn leave_room(&self, conn: &Conn, room: &str) -> bool {
        let pos = conn.rooms.borrow().iter().position(|r| r == room);
        let Some(pos) = pos else { return false };
        conn.rooms.borrow_mut().swap_remove(pos);
        // A join still waiting for its answer no longer stands: the member side answers it.
        let was_member = self.members.borrow_mut().remove(room, conn.id);
        self.member_leave(conn, room, was_member);
        true
    }

    /// Leaves every room (the connection is gone).
    pub(super) fn leave_all(&self, conn: &Conn) {
        let rooms: Vec<String> = conn.rooms.borrow().clone();
        for room in rooms {
            self.leave_room(conn, &room);
        }
    }

    fn on_send(&self, conn: &Rc<Conn>, id: Option<&str>, s: SendReq<'_>) {
        let Some(claims) = conn.user() else { return };
        let room = match s.target {
            Target::Room(r) if conn.in_room(&r) => r.into_owned(),
            Target::Room(r) => {
                return self.reply_error(conn, id, ErrorCode::Forbidden, &format!("join {r} before sending to it"), None);
            }
            Target::User(to) if auth::is_valid_user_id(&to) => auth::dm_room(&claims.sub, &to),
            Target::User(_) => return self.reply_error(conn, id, ErrorCode::BadRequest, "send: invalid user id in to", None),
        };
        let args = SendArgs {
            room: &room,
            shard: self.id,
            conn: conn.id,
            user: &claims.sub,
            req: id,
            client_id: s.client_id.as_deref(),
            body: &s.body,
            kind: s.kind.as_str(),
            file: s.file.as_ref().map(|f| FileOut {
                url: &f.url,
                name: &f.name,
                size: f.size,
                mime: &f.mime,
            }),
            reply_to: s.reply_to,
        };
        let owner = crate::room::owner(&room, self.shards);
        if owner == self.id {
            return self.seq_send(&args);
        }
        if !self.try_request(owner, &super::mesh_io::send_frame(&args)) {
            self.overloaded(conn, id);
        }
    }

    /// Whether the connection's user may see `room` (the join rules); answers the refusal if not.
    fn may_see(&self, conn: &Conn, id: Option<&str>, room: &str) -> bool {
        let Some(claims) = conn.user() else { return false };
        let Err(denied) = auth::may_join(&claims, room) else { return true };
        let code = if denied.code() == "bad_request" {
            ErrorCode::BadRequest
        } else {
            ErrorCode::Forbidden
        };
        self.reply_error(conn, id, code, &denied.to_string(), None);
        false
    }

    /// Who is online in a room.
    fn on_presence(&self, conn: &Rc<Conn>, id: Option<&str>, room: &str) {
        if !self.may_see(conn, id, room) {
            return;
        }
        self.seq_presence(conn, id, room);
    }

    /// A page of history; the user needs the right to join the room, not membership.
    fn on_history(&self, conn: &Rc<Conn>, id: Option<&str>, room: &str, before: Option<u64>, limit: u32) {
        if !self.may_see(conn, id, room) || !self.reply_budget_ok(conn, id) {
            return;
        }
        self.seq_history(conn, id, room, before, limit);
    }

    /// Flow control of large replies: while more than `reply_budget_bytes` of
    /// this connection's replies still wait for the socket, a new history or
    /// catch-up request is answered `overloaded` (retry once the client has
    /// read what it asked for) rather than queued without bound.
    fn reply_budget_ok(&self, conn: &Conn, id: Option<&str>) -> bool {
        if conn.out.reply_bytes() <= self.cfg.reply_budget_bytes {
            return true;
        }
        ShardStats::inc(&self.stats().reply_budget_refused_total);
        let msg = "earlier replies are still being sent: read them, then retry";
        conn.out.push_text(Busy::Shard.reply(id, msg));
        false
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
        self.send_frame(
            shard,
            &Frame::Reply {
                conn,
                payload: payload.to_vec(),
            },
        );
    }
}
