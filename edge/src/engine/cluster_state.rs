//! A user's state in a cluster on a shared store, sans-IO: memberships and
//! `sync`, read and delivered marks with their receipts, and last seen. Each
//! is a short chain of calls (Redis, then the store, or the reverse); the
//! chain is decided here, and the shell (`shard/cluster_state.rs`) makes
//! each call and hands its answer back with [`State::answered`].
//!
//! Events are method calls with `now_ms` (the wall clock, ms: it stamps last
//! seen and dates the room sizes kept; deadlines are in it): a request with
//! the id the shell gave it, each call's answer, and the shell's
//! once-a-second [`State::tick`]. Effects are pulled with [`State::poll`]:
//! calls to make (each with the time by which the shell answers it, failed if
//! it must), replies for connections, and events to publish without waiting
//! (receipts, best effort).
//!
//! The chains:
//! - a membership (a join's subscribe, a stored DM's two users) is written
//!   once while this shard remembers it (at most [`MEMBERS_KEPT`], then all
//!   are forgotten and written again, a no-op in the store); one whose write
//!   fails is forgotten, so the user's next join writes it again;
//! - `sync` is one store query (`user_rooms`: rooms, last stored seqs, marks);
//! - `read`: Redis's counter for the room (a `read` past it marks the last
//!   message; at 0 nothing is done), then the mark is stored forward only;
//!   when it moved, the mark waits for the tick. A `read` is answered only
//!   when it fails;
//! - at each tick, the read marks moved since the last one go to their rooms'
//!   members, one `receipt` per user and room with the highest seq, except in
//!   rooms with more than `receipts_room_max` users online (read from Redis,
//!   one room at a time; a room whose size is unknown gets none);
//! - delivered marks (once a second per member shard and room) are stored
//!   forward only, then the receipt goes on the room's channel as a
//!   `Frame::ToSenders` (and a DM room's users' channels), unless the room has
//!   more than `receipts_room_max` users online (the count is read from Redis
//!   at most once per [`SIZE_KEPT_MS`] per room; unknown: none);
//! - last seen is stored when a shard gets its first connection of a user or
//!   closes its last; `presence` of a user is `online` while a connection of
//!   theirs is on this shard or any node subscribes their Redis channel, else
//!   `offline` with the stored last seen.
//!
//! What must stay true:
//! - a client's `sync` and `presence` get exactly one answer, and a `read` at
//!   most one (an error); one call of a chain is out at a time;
//! - a mark never moves back (the store keeps the larger seq), and a mark
//!   that did not move tells nobody;
//! - a receipt is an event (best effort, shed for a member whose queue is
//!   backed up), never a message;
//! - every call has a deadline (`cluster_join_timeout_ms` from when it is
//!   made): a Redis call late is `RedisTimedOut`, a store call `StoreTimedOut`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use bytes::Bytes;
use router::bridge::keys;
use router::Frame;
use storage::{Answer, MarkKind, Query};

use super::Failure;
use crate::protocol::{server, ErrorCode};

mod steps;
#[cfg(test)]
mod tests;

/// Memberships a shard remembers having written.
pub const MEMBERS_KEPT: usize = 100_000;
/// How long a room's online count is trusted for the `receipts_room_max` check.
pub const SIZE_KEPT_MS: u64 = 10_000;

/// What the chains are configured with.
#[derive(Debug, Clone, Copy)]
pub struct StateConfig {
    /// How long one call may take (`cluster_join_timeout_ms`).
    pub timeout_ms: u64,
    /// Rooms with more users online than this push no receipts.
    pub receipts_room_max: usize,
}

/// One call a chain makes.
#[derive(Debug)]
pub enum StateCall {
    /// Redis's counter for `room`; answered [`StateAnswer::RoomSeq`].
    RoomSeq { room: String },
    /// How many nodes subscribe `channel`; [`StateAnswer::Subscribers`].
    Subscribers { channel: String },
    /// Who is online in `room`; [`StateAnswer::Online`].
    Online { room: String },
    /// A shared-store query; [`StateAnswer::Stored`].
    Store(Query),
}

/// A call's answer (a call not answered by its deadline is answered with a timeout failure).
#[derive(Debug)]
pub enum StateAnswer {
    RoomSeq(Result<u64, Failure>),
    Subscribers(Result<u64, Failure>),
    /// `(user, online since ms)`.
    Online(Result<Vec<(String, u64)>, Failure>),
    Stored(Result<Answer, Failure>),
}

/// What the shell must do.
#[derive(Debug)]
pub enum StateEffect {
    /// Make `call` for chain `id`, answered with [`State::answered`] by `deadline_ms` at the
    /// latest.
    Call { id: u64, call: StateCall, deadline_ms: u64 },
    /// A request's answer for connection `conn`.
    Reply { conn: u64, payload: Bytes },
    /// Publish `frame` on `channel` (a room, or a user's channel) without waiting.
    Notify { channel: String, frame: Bytes },
}

/// Who asked.
#[derive(Debug, Clone)]
pub struct Asker {
    pub conn: u64,
    /// The request's id (raw JSON).
    pub req: Option<String>,
}

/// A chain in progress.
#[derive(Debug)]
enum Chain {
    /// A membership or a last seen being written (`member`: the membership, forgotten if the
    /// write fails).
    Write {
        what: &'static str,
        member: Option<(String, String)>,
    },
    Sync {
        to: Asker,
    },
    Read {
        to: Asker,
        room: String,
        user: String,
        seq: u64,
    },
    LastSeen {
        to: Asker,
        user: String,
    },
    /// Delivered marks stored, then the room's size (`sizing`) before the receipt goes.
    Delivered {
        room: String,
        payload: Bytes,
        sizing: bool,
    },
    /// The tick's read receipts, room by room, each after its size.
    Receipts {
        rooms: VecDeque<(String, Vec<(String, u64)>)>,
    },
}

/// What a chain does next.
enum Next {
    Call(StateCall),
    Reply(Bytes),
    Done,
}

/// The chains of one shard, and what they keep between requests.
#[derive(Debug)]
pub struct State {
    cfg: StateConfig,
    chains: HashMap<u64, Chain>,
    /// Memberships (user, room) written from this shard.
    members: HashSet<(String, String)>,
    /// Read marks moved since the last tick: (room, user) → the highest seq.
    moved: BTreeMap<(String, String), u64>,
    /// Rooms' online counts read lately: room → (count, read at).
    sizes: HashMap<String, (usize, u64)>,
    effects: VecDeque<StateEffect>,
}

impl State {
    pub fn new(cfg: StateConfig) -> Self {
        Self {
            cfg,
            chains: HashMap::new(),
            members: HashSet::new(),
            moved: BTreeMap::new(),
            sizes: HashMap::new(),
            effects: VecDeque::new(),
        }
    }

    /// The next effect to carry out.
    pub fn poll(&mut self) -> Option<StateEffect> {
        self.effects.pop_front()
    }

    /// Chains waiting for a call's answer.
    pub fn in_flight(&self) -> usize {
        self.chains.len()
    }

    /// `user` belongs to `room`: written to the store for `sync`, unless this shard
    /// remembers having written it.
    pub fn member(&mut self, id: u64, user: &str, room: &str, now_ms: u64) {
        let key = (user.to_owned(), room.to_owned());
        if self.members.len() >= MEMBERS_KEPT {
            self.members.clear();
        }
        if !self.members.insert(key.clone()) {
            return;
        }
        let query = Query::AddUserRoom {
            user: key.0.clone(),
            room: key.1.clone(),
        };
        let chain = Chain::Write {
            what: "membership",
            member: Some(key),
        };
        self.begin(id, chain, StateCall::Store(query), now_ms);
    }

    /// `user`'s first connection on this shard came, or its last one went: its last seen is
    /// stored (the later time wins).
    pub fn seen(&mut self, id: u64, user: &str, now_ms: u64) {
        let query = Query::SetLastSeen {
            user: user.to_owned(),
            ts_ms: now_ms,
        };
        let chain = Chain::Write {
            what: "last seen",
            member: None,
        };
        self.begin(id, chain, StateCall::Store(query), now_ms);
    }

    /// `sync` of `user`: their rooms, last stored seqs and marks.
    pub fn sync(&mut self, id: u64, to: Asker, user: &str, now_ms: u64) {
        let query = Query::UserRooms { user: user.to_owned() };
        self.begin(id, Chain::Sync { to }, StateCall::Store(query), now_ms);
    }

    /// `read` of `room` up to `seq` by `user`.
    pub fn read(&mut self, id: u64, to: Asker, room: &str, user: &str, seq: u64, now_ms: u64) {
        let chain = Chain::Read {
            to,
            room: room.to_owned(),
            user: user.to_owned(),
            seq,
        };
        self.begin(id, chain, StateCall::RoomSeq { room: room.to_owned() }, now_ms);
    }

    /// `presence` of `user`: `here` says whether this shard holds a connection of theirs
    /// (then they are online without asking Redis).
    pub fn last_seen(&mut self, id: u64, to: Asker, user: &str, here: bool, now_ms: u64) {
        if here {
            let payload = server::presence_user(to.req.as_deref(), user, true, Some(now_ms));
            return self.effects.push_back(StateEffect::Reply { conn: to.conn, payload });
        }
        let call = StateCall::Subscribers { channel: keys::user(user) };
        self.begin(id, Chain::LastSeen { to, user: user.to_owned() }, call, now_ms);
    }

    /// The users message `seq` of `room` reached on this shard: their delivered marks, then
    /// the receipt to the room's senders.
    pub fn delivered(&mut self, id: u64, room: &str, seq: u64, users: Vec<String>, now_ms: u64) {
        let payload = server::receipt_users(room, &users, seq, "delivered");
        let query = Query::SetMarks {
            room: room.to_owned(),
            users,
            kind: MarkKind::Delivered,
            seq,
        };
        let chain = Chain::Delivered {
            room: room.to_owned(),
            payload,
            sizing: false,
        };
        self.begin(id, chain, StateCall::Store(query), now_ms);
    }

    /// Once a second: the read marks moved since the last tick go to their rooms' members
    /// (chain `id`), and room sizes too old are forgotten.
    pub fn tick(&mut self, id: u64, now_ms: u64) {
        self.sizes.retain(|_, (_, at)| at.saturating_add(SIZE_KEPT_MS) >= now_ms);
        let mut rooms: VecDeque<(String, Vec<(String, u64)>)> = VecDeque::new();
        for ((room, user), seq) in std::mem::take(&mut self.moved) {
            match rooms.back_mut() {
                Some((r, marks)) if *r == room => marks.push((user, seq)),
                _ => rooms.push_back((room, vec![(user, seq)])),
            }
        }
        let Some((room, _)) = rooms.front() else { return };
        let call = StateCall::Online { room: room.clone() };
        self.begin(id, Chain::Receipts { rooms }, call, now_ms);
    }

    /// The answer to chain `id`'s call. An answer for a chain that is not waiting is dropped.
    pub fn answered(&mut self, id: u64, answer: StateAnswer, now_ms: u64) {
        let Some(mut chain) = self.chains.remove(&id) else {
            tracing::debug!(id, "cluster state: an answer for no chain in progress");
            return;
        };
        let next = self.step(&mut chain, answer, now_ms);
        self.carry_on(id, chain, next, now_ms);
    }

    fn begin(&mut self, id: u64, chain: Chain, call: StateCall, now_ms: u64) {
        if self.chains.contains_key(&id) {
            // The shell's ids are unique; a second chain with one in use would take its answers.
            tracing::error!(id, "cluster state: a chain id already in use");
            return self.carry_on(id, chain, Next::Reply(internal(None, "not done")), now_ms);
        }
        self.carry_on(id, chain, Next::Call(call), now_ms);
    }

    fn carry_on(&mut self, id: u64, chain: Chain, next: Next, now_ms: u64) {
        match next {
            Next::Call(call) => {
                let deadline_ms = now_ms + self.cfg.timeout_ms;
                self.effects.push_back(StateEffect::Call { id, call, deadline_ms });
                self.chains.insert(id, chain);
            }
            Next::Reply(payload) => {
                if let Chain::Sync { to } | Chain::Read { to, .. } | Chain::LastSeen { to, .. } = chain {
                    self.effects.push_back(StateEffect::Reply { conn: to.conn, payload });
                }
            }
            Next::Done => {}
        }
    }
}

/// An `internal` error for request `req`: `what` was not done.
fn internal(req: Option<&str>, what: &str) -> Bytes {
    server::error(req, ErrorCode::Internal, what, None)
}

/// The receipts' frame for `room`'s channel and, in a DM room, its users' channels.
fn to_senders(room: &str, payload: &Bytes) -> Vec<(String, Bytes)> {
    let frame = router::encode(&Frame::ToSenders {
        room: room.to_owned(),
        payload: payload.to_vec(),
    });
    let mut out = vec![(room.to_owned(), frame.clone())];
    if let Some((a, b)) = crate::auth::dm_participants(room) {
        out.push((keys::user(a), frame.clone()));
        if a != b {
            out.push((keys::user(b), frame));
        }
    }
    out
}
