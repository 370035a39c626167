//! A connection's session, sans-IO: who it is, the rooms it joined or is
//! joining, the `?room=`/`?resume=` joins waiting for its `auth`, its
//! request rate; and the checks every client text frame passes (parse,
//! rate, authentication, rights, limits, the reply budget) before the shell
//! acts on it. The shell feeds a frame in with the time and what only it
//! knows (the bytes of replies still queued); what comes out is one
//! [`Step`] to carry out.
//!
//! Invariants: a connection is authenticated before any request but `auth`
//! is acted on (else 1008); every frame counts toward the rate, a malformed
//! one too; a request over the rate is refused `rate_limited` and the
//! `rate_limit_strikes`-th in a row closes 4029, and so does the
//! `rate_limit_strikes`-th frame in a row that the checks refuse (malformed,
//! not allowed); a refusal shows at most `MAX_ECHO_BYTES` of the client's input; a join is passed on
//! only for a room the user may see, not already joined, within
//! `max_rooms_per_conn`, and (with `since`) while the reply budget holds; a
//! room is in `rooms` from its join until its leave or its join's refusal.

use std::borrow::Cow;
use std::rc::Rc;

use bytes::Bytes;

use super::Busy;
use crate::auth::{self, Claims, Verifier};
use crate::limits::gcra::Gcra;
use crate::metrics::ShardStats;
use router::{ChangeMsg, ChangeOp};

use crate::protocol::client::{self, ParseLimits, ReactOp, Request, SendReq, Target, TypingState};
use crate::protocol::server;
use crate::protocol::ErrorCode;

/// Longest `client_id` of a `send`, in bytes.
pub const MAX_CLIENT_ID_BYTES: usize = 64;
/// Close code for a client that keeps exceeding its rate.
pub const CLOSE_RATE_LIMIT: u16 = 4029;
/// Close code for a client that fails or skips authentication.
pub const CLOSE_POLICY: u16 = 1008;

/// What a session checks against (the node's configuration).
#[derive(Debug, Clone)]
pub struct SessionLimits {
    pub max_body_chars: usize,
    pub max_rooms_per_conn: usize,
    pub max_msgs_per_s: f64,
    pub msgs_burst: u32,
    pub rate_limit_strikes: u32,
    pub reply_budget_bytes: usize,
}

impl SessionLimits {
    /// The session limits of the node's configuration.
    pub fn new(cfg: &crate::config::Config) -> Self {
        Self {
            max_body_chars: cfg.max_body_chars,
            max_rooms_per_conn: cfg.max_rooms_per_conn,
            max_msgs_per_s: cfg.max_msgs_per_s,
            msgs_burst: cfg.msgs_burst,
            rate_limit_strikes: cfg.rate_limit_strikes,
            reply_budget_bytes: cfg.reply_budget_bytes,
        }
    }
}

/// What the shell knows when a frame comes in.
pub struct FrameCtx<'a> {
    pub limits: &'a SessionLimits,
    pub verifier: &'a Verifier,
    /// Monotonic nanoseconds (the rate limiter's clock).
    pub mono_ns: u64,
    /// Wall-clock milliseconds (token expiry, `pong`).
    pub now_ms: u64,
    /// Bytes of replies this connection still has queued.
    pub reply_bytes: usize,
    pub stats: &'a ShardStats,
}

/// What a client frame comes to, for the shell to carry out. `id` is the request id
/// (raw JSON) every answer echoes.
#[derive(Debug)]
pub enum Step<'a> {
    /// Nothing to do (a request that needs no answer).
    Nothing,
    /// Answer with this frame (an error, a `pong`).
    Reply(Bytes),
    /// Send this frame, then close the connection with `code`.
    Close { reply: Bytes, code: u16, reason: &'static str },
    /// The connection proved who it is: send `welcome`, then run each of `joins` through
    /// [`Session::join`].
    Welcome { joins: Vec<(String, Option<u64>)> },
    /// A join that passed the checks (the room is in the session's rooms already).
    Join { room: Cow<'a, str>, since: Option<u64> },
    /// A leave of a room the session had (already taken off its rooms).
    Leave { room: Cow<'a, str> },
    /// A send to `room` (a joined room, or the DM room of `to`).
    Send { room: String, send: SendReq<'a> },
    /// A history page of a room the user may see.
    History {
        room: Cow<'a, str>,
        before: Option<u64>,
        limit: u32,
        thread: Option<u64>,
    },
    /// Who is online in a room the user may see.
    Presence { room: Cow<'a, str> },
    /// Whether `user` (a valid user id) is online, and when it was last seen.
    LastSeen { user: Cow<'a, str> },
    /// The user's rooms with their seqs and marks.
    Sync,
    /// The user read a room it may see up to `seq`.
    Read { room: Cow<'a, str>, seq: u64 },
    /// The user started (`typing`) or stopped typing in a joined room.
    Typing { room: Cow<'a, str>, typing: bool },
    /// An edit, delete or reaction of a message of a room the user may see.
    Change(ChangeReq<'a>),
}

/// An edit, delete or reaction the session passed: of message `seq` of `room`; `moderator`:
/// the token's `moderator` claim covers the room (the owner checks authorship).
#[derive(Debug)]
pub struct ChangeReq<'a> {
    pub room: Cow<'a, str>,
    pub seq: u64,
    pub moderator: bool,
    pub op: ChangeOp,
}

impl ChangeReq<'_> {
    /// The change as the sequencer takes it, from connection `conn` of `user`, request `req`
    /// (the one conversion, for the shell and the harness).
    pub fn into_msg(self, user: &str, conn: u64, req: Option<&str>) -> ChangeMsg {
        ChangeMsg {
            room: self.room.into_owned(),
            seq: self.seq,
            user: user.to_owned(),
            moderator: self.moderator,
            conn,
            req: req.map(str::to_owned),
            op: self.op,
        }
    }
}

/// One connection's session.
#[derive(Debug, Clone)]
pub struct Session {
    user: Option<Rc<Claims>>,
    rooms: Vec<String>,
    /// Boxed, not a `Vec`: a connection keeps its session for its life, and these are
    /// taken once, at `auth` (16 bytes, not 24: results/idle-breakdown-20261205.txt, part 8).
    pending: Box<[(String, Option<u64>)]>,
    rate: Gcra,
    strikes: u32,
    /// Frames in a row the checks answered with an error.
    refused: u32,
}

impl Session {
    /// A session not yet authenticated; `pending` are its `?room=`/`?resume=` joins.
    pub fn new(limits: &SessionLimits, pending: Vec<(String, Option<u64>)>) -> Self {
        Self {
            user: None,
            rooms: Vec::new(),
            pending: pending.into_boxed_slice(),
            rate: Gcra::new(limits.max_msgs_per_s, limits.msgs_burst),
            strikes: 0,
            refused: 0,
        }
    }

    /// Who the connection is, once authenticated.
    pub fn user(&self) -> Option<&Rc<Claims>> {
        self.user.as_ref()
    }

    /// Rooms joined or being joined.
    pub fn rooms(&self) -> &[String] {
        &self.rooms
    }

    /// A join of `room` was refused: the session no longer has it.
    pub fn forget_room(&mut self, room: &str) {
        if let Some(pos) = self.rooms.iter().position(|r| r == room) {
            self.rooms.swap_remove(pos);
        }
    }

    /// Authenticated before the upgrade completed (a token in the URL): the pending joins run now.
    pub fn authenticated(&mut self, claims: Claims) -> Vec<(String, Option<u64>)> {
        self.user = Some(Rc::new(claims));
        std::mem::take(&mut self.pending).into_vec()
    }

    /// One text frame from the client: its request id (raw JSON, when it parsed) and what
    /// it comes to.
    pub fn frame<'a>(&mut self, text: &'a str, cx: &FrameCtx<'_>) -> (Option<&'a str>, Step<'a>) {
        let mut id = None;
        let step = match self.checked(text, &mut id, cx) {
            Step::Reply(reply) if is_error(&reply) => self.refusal(reply, cx),
            step => {
                self.refused = 0;
                step
            }
        };
        (id, step)
    }

    /// A frame the checks refused: counted, and the `rate_limit_strikes`-th in a row closes
    /// 4029 (errors are not free: a client that only sends refused frames is cut off).
    fn refusal<'a>(&mut self, reply: Bytes, cx: &FrameCtx<'_>) -> Step<'a> {
        ShardStats::inc(&cx.stats.frames_refused_total);
        self.refused += 1;
        if self.refused >= cx.limits.rate_limit_strikes {
            return Step::Close {
                reply,
                code: CLOSE_RATE_LIMIT,
                reason: "too many refused requests",
            };
        }
        Step::Reply(reply)
    }

    fn checked<'a>(&mut self, text: &'a str, id_out: &mut Option<&'a str>, cx: &FrameCtx<'_>) -> Step<'a> {
        ShardStats::inc(&cx.stats.frames_in_total);
        let parse = ParseLimits {
            max_body_chars: cx.limits.max_body_chars,
            max_client_id_bytes: MAX_CLIENT_ID_BYTES,
        };
        let env = match client::parse(text, &parse) {
            Ok(env) => env,
            Err(e) => {
                let id = e.id.as_deref().map(|r| r.get());
                // A malformed frame costs what any frame costs.
                if let Some(refused) = self.over_rate(id, "too many requests", cx) {
                    return refused;
                }
                return Step::Reply(server::error(id, e.code, &e.message, None));
            }
        };
        let id = env.id.map(|r| r.get());
        *id_out = id;
        if let Some(refused) = self.over_rate(id, "too many requests", cx) {
            return refused;
        }
        if self.user.is_none() {
            return match env.request {
                Request::Auth { token } => self.auth(id, &token, cx),
                _ => Step::Close {
                    reply: error(
                        id,
                        ErrorCode::Unauthorized,
                        "authenticate first with {\"type\":\"auth\",\"token\":...}",
                    ),
                    code: CLOSE_POLICY,
                    reason: "not authenticated",
                },
            };
        }
        self.request(id, env.request, cx)
    }

    fn request<'a>(&mut self, id: Option<&str>, req: Request<'a>, cx: &FrameCtx<'_>) -> Step<'a> {
        match req {
            Request::Auth { .. } => Step::Reply(error(id, ErrorCode::BadRequest, "already authenticated")),
            Request::Refresh { token } => self.refresh(id, &token, cx),
            Request::Join { room, since } => self.join(id, room, since, cx),
            Request::Leave { room } => match self.rooms.iter().position(|r| *r == room) {
                Some(pos) => {
                    self.rooms.swap_remove(pos);
                    Step::Leave { room }
                }
                None => Step::Reply(error(id, ErrorCode::NotFound, &format!("not in room {}", client::echo(&room)))),
            },
            Request::Send(s) => self.send(id, s),
            Request::History {
                room,
                before,
                limit,
                thread,
            } => match self.may_see(id, &room).and_then(|()| reply_budget(id, cx)) {
                Ok(()) => Step::History {
                    room,
                    before,
                    limit,
                    thread,
                },
                Err(refusal) => Step::Reply(refusal),
            },
            Request::Presence { room } => match self.may_see(id, &room) {
                Ok(()) => Step::Presence { room },
                Err(refusal) => Step::Reply(refusal),
            },
            Request::LastSeen { user } if auth::is_valid_user_id(&user) => Step::LastSeen { user },
            Request::LastSeen { .. } => Step::Reply(error(id, ErrorCode::BadRequest, "presence: invalid user id")),
            Request::Sync => Step::Sync,
            Request::Read { room, seq } => match self.may_see(id, &room) {
                Ok(()) => Step::Read { room, seq },
                Err(refusal) => Step::Reply(refusal),
            },
            Request::Typing { room, state } if self.rooms.iter().any(|r| *r == room) => Step::Typing {
                room,
                typing: state == TypingState::Start,
            },
            Request::Typing { room, .. } => Step::Reply(error(
                id,
                ErrorCode::Forbidden,
                &format!("join {} before typing in it", client::echo(&room)),
            )),
            Request::Ping => Step::Reply(server::pong(id, cx.now_ms)),
            Request::Edit { room, seq, body } => self.change(id, room, seq, ChangeOp::Edit { body: body.into_owned() }),
            Request::Delete { room, seq } => self.change(id, room, seq, ChangeOp::Delete),
            Request::React { room, seq, emoji, op } => {
                let add = op == ReactOp::Add;
                self.change(
                    id,
                    room,
                    seq,
                    ChangeOp::React {
                        emoji: emoji.into_owned(),
                        add,
                    },
                )
            }
        }
    }

    /// An edit, delete or reaction: allowed in a room the user may see.
    fn change<'a>(&self, id: Option<&str>, room: Cow<'a, str>, seq: u64, op: ChangeOp) -> Step<'a> {
        if let Err(refusal) = self.may_see(id, &room) {
            return Step::Reply(refusal);
        }
        let moderator = self.user.as_ref().is_some_and(|c| auth::may_moderate(c, &room));
        Step::Change(ChangeReq { room, seq, moderator, op })
    }

    /// A join from the URL (`?room=`, `?resume=`), run once the connection is authenticated:
    /// it counts toward the rate like a `join` frame (refused `rate_limited` over it).
    pub fn url_join<'a>(&mut self, room: Cow<'a, str>, since: Option<u64>, cx: &FrameCtx<'_>) -> Step<'a> {
        let what = format!("join {}: too many requests", client::echo(&room));
        if let Some(refused) = self.over_rate(None, &what, cx) {
            return refused;
        }
        self.join(None, room, since, cx)
    }

    /// A join, from a request or from the URL: the checks, then the room is the session's.
    pub fn join<'a>(&mut self, id: Option<&str>, room: Cow<'a, str>, since: Option<u64>, cx: &FrameCtx<'_>) -> Step<'a> {
        if let Err(refusal) = self.may_see(id, &room) {
            return Step::Reply(refusal);
        }
        if since.is_some() {
            if let Err(refusal) = reply_budget(id, cx) {
                return Step::Reply(refusal);
            }
        }
        if self.rooms.iter().any(|r| *r == room) {
            return Step::Reply(error(id, ErrorCode::BadRequest, &format!("already joined {}", client::echo(&room))));
        }
        if self.rooms.len() >= cx.limits.max_rooms_per_conn {
            let msg = format!("at most {} rooms per connection", cx.limits.max_rooms_per_conn);
            return Step::Reply(error(id, ErrorCode::Forbidden, &msg));
        }
        self.rooms.push(room.clone().into_owned());
        Step::Join { room, since }
    }

    fn send<'a>(&self, id: Option<&str>, s: SendReq<'a>) -> Step<'a> {
        let Some(claims) = &self.user else { return Step::Nothing };
        let room = match &s.target {
            Target::Room(r) if self.rooms.iter().any(|j| j == r) => r.clone().into_owned(),
            Target::Room(r) => {
                return Step::Reply(error(
                    id,
                    ErrorCode::Forbidden,
                    &format!("join {} before sending to it", client::echo(r)),
                ))
            }
            Target::User(to) if auth::is_valid_user_id(to) => auth::dm_room(&claims.sub, to),
            Target::User(_) => return Step::Reply(error(id, ErrorCode::BadRequest, "send: invalid user id in to")),
        };
        // Seq 0 is no message, in either mode. A root past the room's seq is the sequencer's
        // to refuse: on one node the owner checks it, in a cluster Redis's counter.
        if s.reply_to == Some(0) {
            return Step::Reply(error(
                id,
                ErrorCode::NotFound,
                &format!("{} has no message 0 to reply to", client::echo(&room)),
            ));
        }
        Step::Send { room, send: s }
    }

    fn auth<'a>(&mut self, id: Option<&str>, token: &str, cx: &FrameCtx<'_>) -> Step<'a> {
        match cx.verifier.verify(token, cx.now_ms / 1000) {
            Ok(claims) => Step::Welcome {
                joins: self.authenticated(claims),
            },
            Err(e) => Step::Close {
                reply: error(id, ErrorCode::Unauthorized, &format!("invalid token: {e}")),
                code: CLOSE_POLICY,
                reason: "authentication failed",
            },
        }
    }

    /// `refresh`: a newer token of the same user replaces the session's (its rooms claim too;
    /// rooms joined stay joined). A token that does not verify, or names another user, is
    /// refused and the session keeps its token.
    fn refresh<'a>(&mut self, id: Option<&str>, token: &str, cx: &FrameCtx<'_>) -> Step<'a> {
        let Some(current) = &self.user else { return Step::Nothing };
        match cx.verifier.verify(token, cx.now_ms / 1000) {
            Ok(claims) if claims.sub == current.sub => {
                let exp = claims.exp;
                self.user = Some(Rc::new(claims));
                Step::Reply(server::refreshed(id, exp))
            }
            Ok(_) => Step::Reply(error(id, ErrorCode::Forbidden, "refresh: the token is for another user")),
            Err(e) => Step::Reply(error(id, ErrorCode::Unauthorized, &format!("refresh: invalid token: {e}"))),
        }
    }

    /// Whether the session's token expired at `now_s` (leeway included): the connection is
    /// closed 1008 `token expired` unless a `refresh` came first. A token without `exp`
    /// (0) never expires here.
    pub fn expired(&self, verifier: &Verifier, now_s: u64) -> bool {
        self.user.as_ref().is_some_and(|c| c.exp > 0 && verifier.expired(c.exp, now_s))
    }

    /// GCRA per connection: the refusal of a frame over the rate (`None`: within it);
    /// repeated violations close the socket 4029.
    fn over_rate<'a>(&mut self, id: Option<&str>, what: &str, cx: &FrameCtx<'_>) -> Option<Step<'a>> {
        let Err(retry_ms) = self.rate.check(cx.mono_ns) else {
            self.strikes = 0;
            return None;
        };
        ShardStats::inc(&cx.stats.rate_limited_total);
        self.strikes += 1;
        let reply = server::error(id, ErrorCode::RateLimited, what, Some(retry_ms));
        if self.strikes >= cx.limits.rate_limit_strikes {
            return Some(Step::Close {
                reply,
                code: CLOSE_RATE_LIMIT,
                reason: "rate limit exceeded repeatedly",
            });
        }
        Some(Step::Reply(reply))
    }

    /// Whether the user may see `room` (the join rules); the refusal if not.
    fn may_see(&self, id: Option<&str>, room: &str) -> Result<(), Bytes> {
        let Some(claims) = &self.user else {
            return Err(error(id, ErrorCode::Unauthorized, "not authenticated"));
        };
        let Err(denied) = auth::may_join(claims, room) else { return Ok(()) };
        let code = if denied.code() == "bad_request" {
            ErrorCode::BadRequest
        } else {
            ErrorCode::Forbidden
        };
        Err(error(id, code, &denied.to_string()))
    }
}

/// Whether a reply is an `error` frame (every one starts `{"type":"error"`).
fn is_error(reply: &[u8]) -> bool {
    reply.starts_with(br#"{"type":"error""#)
}

/// Flow control of large replies: while more than `reply_budget_bytes` of this
/// connection's replies still wait for the socket, a new history or catch-up request is
/// answered `overloaded` (retry once the client has read what it asked for).
fn reply_budget(id: Option<&str>, cx: &FrameCtx<'_>) -> Result<(), Bytes> {
    if cx.reply_bytes <= cx.limits.reply_budget_bytes {
        return Ok(());
    }
    ShardStats::inc(&cx.stats.reply_budget_refused_total);
    Err(Busy::Shard.reply(id, "earlier replies are still being sent: read them, then retry"))
}

fn error(id: Option<&str>, code: ErrorCode, msg: &str) -> Bytes {
    server::error(id, code, msg, None)
}

#[cfg(test)]
mod tests;
