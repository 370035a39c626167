//! The harness's clients: authenticated sessions (`engine::session`), so
//! every request (join, leave, send, history, presence, the changes of
//! `changes.rs`, a token's refresh) is a JSON client frame through the
//! checks a shard runs, and what it comes to is carried out as
//! `shard/requests.rs` does: a join and a leave to the member side, a send,
//! a history page, a presence list and a change to the room's owner shard.
//! The harness makes only requests the checks let through: a refusal by the
//! session fails the seed. And what each client has seen.

use std::collections::HashMap;

use rand::Rng;
use serde_json::{json, Value};

use super::{shard_of, trace, Frame, World, ROOMS};
use crate::engine::harness_sessions::SessionCtx;
use crate::engine::owner::SendArgs;
use crate::engine::session::{Session, Step};
use crate::engine::subscriber::JoinReq;
use crate::protocol::server;

/// What a client's member shard knows of it, and what the client has seen.
pub(super) struct Client {
    /// The connection's session: who it is, and the rooms joined or being joined (the
    /// member side's `conn.rooms`); every request goes through its checks.
    pub(super) session: Session,
    /// The last seq seen per room, kept across leaves (a realistic `since`).
    pub(super) seen: HashMap<String, u64>,
    /// Rooms whose `joined` arrived: the last seq seen there (the member side's fan-out list).
    pub(super) member: HashMap<String, u64>,
    /// The last `presence` status seen per (room, user) since the member's `joined`.
    pub(super) presence: HashMap<(String, String), bool>,
    /// The `since` of each join request not answered yet, by request id.
    pub(super) since: HashMap<String, Option<u64>>,
    /// For each join request not answered yet: the other connections that were members of
    /// its room (their `joined` had arrived) when it was made, with the number of their
    /// membership. Those still members by that same membership when the `joined` comes must
    /// be in its `members` count.
    pub(super) members_before: HashMap<String, Vec<(u64, u64)>>,
    /// The number of each current membership (a new one for every `joined`), per room.
    pub(super) membership: HashMap<String, u64>,
}

impl Client {
    pub(super) fn new(session: Session) -> Self {
        Self {
            session,
            seen: HashMap::new(),
            member: HashMap::new(),
            presence: HashMap::new(),
            since: HashMap::new(),
            members_before: HashMap::new(),
            membership: HashMap::new(),
        }
    }
}

/// The user connection `conn` is authenticated as: three users, each with connections on
/// every shard.
pub(super) fn user_of(conn: u64) -> String {
    format!("p{}", conn % 3)
}

/// A client frame: `fields` with request id `req` (raw JSON, as `World::req` makes it).
pub(super) fn frame(mut fields: Value, req: &str) -> String {
    fields["id"] = serde_json::from_str(req).expect("a request id is JSON");
    fields.to_string()
}

impl World {
    /// A random client asks for something: join (with or without `since`), leave, send,
    /// change a message, history, who is online.
    pub(super) fn client_step(&mut self) {
        let ids: Vec<u64> = self.clients.keys().copied().collect();
        let conn = ids[self.rng.random_range(0..ids.len())];
        let room = ROOMS[self.rng.random_range(0..ROOMS.len())].to_owned();
        let joined = self.clients[&conn].session.rooms().contains(&room);
        let text = match (joined, self.rng.random_range(0..10)) {
            (false, 0..=5) => return self.client_join(conn, room),
            (true, 0..=1) => return self.client_leave(conn, room),
            (true, 2..=5) => return self.client_send(conn, room),
            (true, 6..=7) => return self.client_change(conn, room),
            _ if self.rng.random_bool(0.3) => {
                let req = self.req();
                frame(json!({"type": "presence", "room": room}), &req)
            }
            _ => {
                let before = self.rng.random_bool(0.5).then(|| self.rng.random_range(1..30u64));
                let req = self.req();
                let mut page = json!({"type": "history", "room": room, "limit": 10});
                if let Some(b) = before {
                    page["before"] = b.into();
                }
                frame(page, &req)
            }
        };
        self.request(conn, &text);
    }

    fn client_join(&mut self, conn: u64, room: String) {
        let seen = self.clients[&conn].seen.get(&room).copied();
        let since = match self.rng.random_range(0..3) {
            0 => None,
            1 => Some(0),
            _ => seen.or(Some(0)),
        };
        let req = self.req();
        let before: Vec<(u64, u64)> = self
            .clients
            .iter()
            .filter(|(&d, other)| d != conn && other.member.contains_key(&room))
            .map(|(&d, other)| (d, other.membership.get(&room).copied().unwrap_or_default()))
            .collect();
        let c = self.clients.get_mut(&conn).expect("client");
        c.member.remove(&room);
        c.since.insert(req.clone(), since);
        c.members_before.insert(req.clone(), before);
        let mut join = json!({"type": "join", "room": room});
        if let Some(s) = since {
            join["since"] = s.into();
        }
        self.request(conn, &frame(join, &req));
    }

    fn client_leave(&mut self, conn: u64, room: String) {
        let req = self.side_req('l');
        self.request(conn, &frame(json!({"type": "leave", "room": room}), &req));
    }

    /// A send, with a new client id, a retried recent one of this connection, or none.
    fn client_send(&mut self, conn: u64, room: String) {
        let key = (conn, room.clone());
        let earlier = self.sent_ids.get(&key).filter(|ids| !ids.is_empty() && self.rng.random_bool(0.3));
        let client_id = match earlier {
            Some(ids) => Some(ids[self.rng.random_range(ids.len().saturating_sub(3)..ids.len())].clone()),
            None if self.rng.random_bool(0.7) => {
                let id = format!("c{}", self.next_req);
                self.sent_ids.entry(key).or_default().push(id.clone());
                Some(id)
            }
            None => None,
        };
        let req = self.req();
        self.sends.insert(req.clone(), (self.user(conn), client_id.clone()));
        let body = format!("from u{conn:x} ({req})");
        let mut send = json!({"type": "send", "room": room, "body": body});
        if let Some(cid) = client_id {
            send["client_id"] = cid.into();
        }
        self.request(conn, &frame(send, &req));
    }

    /// The user client `conn`'s session is authenticated as.
    fn user(&self, conn: u64) -> String {
        self.clients[&conn].session.user().expect("authenticated").sub.clone()
    }

    /// A request id apart from the request counter (which numbers joins and client ids):
    /// `kind` then a number.
    pub(super) fn side_req(&mut self, kind: char) -> String {
        self.side_reqs += 1;
        let id = format!("\"{kind}{}\"", self.side_reqs);
        self.answers.insert(id.clone(), 0);
        id
    }

    /// `text` from client `conn` through its session (at the virtual clock), carried out.
    pub(super) fn request(&mut self, conn: u64, text: &str) {
        let mono_ns = self.now_ms * 1_000_000;
        let c = self.clients.get_mut(&conn).expect("client");
        let (id, step) = self.sessions.frame(&mut c.session, text, mono_ns);
        trace(|| format!("conn {conn:x}: {text} -> {step:?}"));
        self.carry_out(conn, text, id, step);
    }

    /// Carries out what a request came to, as `shard/requests.rs` does (a mesh hop to the
    /// room's owner shard, or a direct call when it is the connection's).
    fn carry_out(&mut self, conn: u64, text: &str, id: Option<&str>, step: Step<'_>) {
        let shard = shard_of(conn);
        let user = self.user(conn);
        let req = || id.expect("the harness gives every request an id").to_owned();
        match step {
            Step::Reply(reply) if !reply.starts_with(br#"{"type":"error""#) => self.deliver_to_client(conn, &reply),
            Step::Join { room, since } => self.member_join(conn, id, &room, since),
            Step::Leave { room } => self.member_leave(conn, id, &room),
            Step::Send { room, send } => {
                let a = SendArgs::of_req(&room, (shard, conn), &user, id, &send);
                self.send_to_owner(shard, &room, Frame::Send(a.to_msg()));
            }
            Step::History {
                room,
                before,
                limit,
                thread,
            } => {
                let page = Frame::History {
                    room: room.to_string(),
                    user,
                    conn,
                    req: req(),
                    before,
                    limit,
                    thread,
                };
                self.send_to_owner(shard, &room, page);
            }
            Step::Presence { room } => {
                let online = Frame::Online {
                    room: room.to_string(),
                    conn,
                    req: req(),
                };
                self.send_to_owner(shard, &room, online);
            }
            Step::Change(change) => {
                let claims = self.clients[&conn].session.user().expect("authenticated");
                assert_eq!(
                    change.moderator,
                    claims.moderator.is_some(),
                    "the token moderates every room, or none"
                );
                let change = change.into_msg(&user, conn, id);
                let room = change.room.clone();
                self.send_to_owner(shard, &room, Frame::Change(change));
            }
            refused => panic!("conn {conn:x}: the session refused {text}, or the harness never asks it: {refused:?}"),
        }
    }

    /// A join the session passed, to the member side of the connection's shard.
    fn member_join(&mut self, conn: u64, id: Option<&str>, room: &str, since: Option<u64>) {
        let shard = shard_of(conn);
        let user = self.user(conn);
        // The shell takes a ticket; the harness's is the join's request number.
        let j = JoinReq {
            room,
            conn,
            token: self.next_req,
            req: id,
            since,
            user: &user,
        };
        trace(|| format!("shard {shard}: {j:?}"));
        self.subscribers[shard].join(j);
        self.drain_member(shard);
    }

    /// A leave the session passed (the room is off the session): the member side forgets
    /// the connection there, then the client gets `left`.
    fn member_leave(&mut self, conn: u64, id: Option<&str>, room: &str) {
        let shard = shard_of(conn);
        let user = self.user(conn);
        let c = self.clients.get_mut(&conn).expect("client");
        assert!(
            !c.session.rooms().iter().any(|r| r == room),
            "a leave takes the room off the session"
        );
        let was_member = c.member.remove(room).is_some();
        trace(|| format!("shard {shard}: conn {conn:x} leaves {room} (member: {was_member})"));
        self.subscribers[shard].leave(room, conn, &user, was_member);
        self.drain_member(shard);
        self.deliver_to_client(conn, &server::left(id, room));
    }

    /// Client `conn`'s token moderates every room, or none: a `refresh` with a new token of
    /// its user when it does not already.
    pub(super) fn moderate(&mut self, conn: u64, moderator: bool) {
        let claims = self.clients[&conn].session.user().expect("authenticated");
        if claims.moderator.is_some() == moderator {
            return;
        }
        let token = SessionCtx::token(&claims.sub, moderator);
        let req = self.side_req('t');
        self.request(conn, &frame(json!({"type": "refresh", "token": token}), &req));
    }
}
