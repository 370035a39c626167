//! The member side, sans-IO, written once for both sequencers: the rooms a
//! shard delivers to its connections, each with its feed (cursor, epoch,
//! ring), and the joins of its connections, answered by the shard itself:
//!
//! 1. subscribe (the sequencer counts the shard in: a local owner answers
//!    with the room's position, Redis does not), and, if the feed has no
//!    position yet, read the room's seq;
//! 2. with `since`, fetch what the ring does not hold (from the room's owner
//!    shard, which reads its ring or the store, or from the Redis stream);
//! 3. then, in one go: `joined` {seq: cursor}, the catch-up (fetched, then
//!    ring, `gap` for what neither holds), and the connection joins the
//!    fan-out list, so no live message overtakes its catch-up.
//!
//! Events are method calls (a join with its token, each sequencer answer, a
//! leave, a delivery or a reset); effects are pulled with
//! [`Subscriber::poll`]: sequencer calls to make (the shell carries them to
//! the owner shard or to Redis and answers each), answers for connections,
//! deliveries to the local fan-out list, presence updates for the sequencer.
//!
//! Invariants: a delivery whose seq is not above the room's cursor is dropped
//! (a re-delivery from a resync or a catch-up race); a delivery past the next
//! seq starts a repair (`repair.rs`): the missed seqs are read and given
//! first, what arrives meanwhile is held and given after them, in arrival
//! order, and only what no source holds is named a `gap`, so members get
//! every seq once and in order; seq 0 frames are notices passed to members
//! as they are (after a repair's, when one is out); every join gets exactly one
//! answer (`Joined`, `Refused`, or `Cancelled` when a leave overtook it: this
//! is the one place that decides it); a room's subscription is dropped once
//! it has no member and no join out; a member is counted online by the
//! sequencer when it answers the join's `Subscribe` (so it is in the count
//! before its `joined` goes), and counted offline with `Presence` exactly
//! once: when it leaves, or when its join fails or is cancelled after that.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use super::feed::Advance;
use super::{Failure, RoomFeed};
use crate::protocol::server;

mod repair;

#[cfg(test)]
pub(crate) use repair::MAX_REPAIR_READS;
use repair::{Held, Repair, FIRST_REPAIR_TOKEN};

/// Most reads one join's catch-up makes while deliveries outrun them (each read must make
/// progress; the ring catches up long before this in practice).
const MAX_CATCH_UP_READS: u32 = 16;

/// The answer to a join whose connection left the room before the join completed.
pub const JOIN_CANCELLED: &str = "join cancelled: the room was left before the join completed";

/// What a subscriber is configured with.
#[derive(Debug, Clone)]
pub struct SubscriberConfig {
    /// Messages kept in each room's ring.
    pub ring_cap: usize,
    /// Bytes kept in each room's ring at most.
    pub ring_max_bytes: usize,
    /// Most messages a catch-up fetches from the stream.
    pub max_catch_up_messages: usize,
    /// The epoch members are told until Redis says otherwise (this run's start).
    pub run_epoch: u64,
}

/// What the shard must do.
#[derive(Debug, PartialEq, Eq)]
pub enum SubEffect {
    /// Count this shard in `room`'s fan-out; answer with [`Subscriber::subscribed`].
    Subscribe { token: u64, room: String, user: String },
    /// Read `room`'s seq; answer with [`Subscriber::room_seq`].
    RoomSeq { token: u64, room: String },
    /// Read `count` messages after `after` of `room`; answer with [`Subscriber::fetched`]
    /// (a join's catch-up, or a repair's read: its token is at or above 2^62).
    Fetch { token: u64, room: String, after: u64, count: u32 },
    /// Drop this shard's subscription to `room` (nothing to answer).
    Unsubscribe { room: String },
    /// `conn` joins `room`'s fan-out list and gets `payload` (`joined`), then `catch_up`.
    Joined {
        conn: u64,
        room: String,
        payload: Bytes,
        catch_up: Vec<Bytes>,
    },
    /// The join failed: `conn` forgets `room` and gets the error.
    Refused { conn: u64, room: String, payload: Bytes },
    /// A leave overtook the join: `conn` gets "join cancelled" for request `req`.
    Cancelled { conn: u64, req: Option<String> },
    /// `payload` for every local member of `room`: message `seq`, or (seq 0) a notice. Live
    /// deliveries are answered by [`Subscriber::deliver`]; these are a reset's notice, and
    /// what a repair gives once the hole is read.
    Deliver { room: String, seq: u64, payload: Bytes },
    /// A change's event for every local member of `room`, held during a repair.
    Event { room: String, payload: Bytes },
    /// A connection of `user` left `room` (or, never here, joined it): for the sequencer's
    /// presence and member counts; nothing to answer.
    Presence { room: String, user: String, online: bool },
}

/// Where a room stands, as a local owner says when a shard subscribes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomPos {
    /// The room's last published seq.
    pub seq: u64,
    /// The room's epoch.
    pub epoch: u64,
    /// Members on other shards.
    pub others: u64,
}

/// A room this shard delivers.
#[derive(Debug)]
struct SubRoom {
    feed: RoomFeed,
    /// Connections in the fan-out list.
    members: u32,
    /// Members on other shards, as the owner last said (0 from Redis, which does not count them).
    others: u64,
    /// Joins still waiting for Redis (the subscription stays while any is out).
    joining: u32,
    /// The joins still wanted, as (connection, token): a leave drops its entry.
    wanted: Vec<(u64, u64)>,
    /// A hole in the deliveries being read.
    repair: Option<Box<Repair>>,
}

impl SubRoom {
    fn idle(&self) -> bool {
        self.members == 0 && self.joining == 0
    }
}

/// A join waiting for Redis.
#[derive(Debug)]
struct PendingJoin {
    room: String,
    conn: u64,
    req: Option<String>,
    since: Option<u64>,
    user: String,
    /// The catch-up read so far, ascending.
    fetched: Vec<(u64, Bytes)>,
    /// Reads made for it.
    reads: u32,
    /// The sequencer counted it in (its subscribe was answered).
    counted: bool,
}

/// A join, as the member side asks for it.
#[derive(Debug, Clone, Copy)]
pub struct JoinReq<'a> {
    pub room: &'a str,
    pub conn: u64,
    pub token: u64,
    pub req: Option<&'a str>,
    pub since: Option<u64>,
    pub user: &'a str,
}

/// What the shell does with a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Give it to the room's local members now.
    Members,
    /// Nothing: a re-delivery, held (until the position is known, or a hole is read), or
    /// a room not delivered here.
    Dropped,
    /// A hole was seen: it is held, and effects wait (the read of the hole).
    Repairing,
}

/// The member side of one shard.
pub struct Subscriber {
    cfg: SubscriberConfig,
    rooms: HashMap<String, SubRoom>,
    joins: HashMap<u64, PendingJoin>,
    /// Repair reads out: token -> room.
    repairs: HashMap<u64, String>,
    next_repair: u64,
    effects: VecDeque<SubEffect>,
}

impl Subscriber {
    /// A subscriber with no room.
    pub fn new(cfg: SubscriberConfig) -> Self {
        Self {
            cfg,
            rooms: HashMap::new(),
            joins: HashMap::new(),
            repairs: HashMap::new(),
            next_repair: FIRST_REPAIR_TOKEN,
            effects: VecDeque::new(),
        }
    }

    /// The next effect to carry out, oldest first.
    pub fn poll(&mut self) -> Option<SubEffect> {
        self.effects.pop_front()
    }

    /// A join whose member-side checks passed: step 1, subscribe.
    pub fn join(&mut self, j: JoinReq<'_>) {
        let (ring_cap, ring_bytes, epoch) = (self.cfg.ring_cap, self.cfg.ring_max_bytes, self.cfg.run_epoch);
        let r = self.rooms.entry(j.room.to_owned()).or_insert_with(|| SubRoom {
            feed: RoomFeed::new(epoch, ring_cap).with_ring_max_bytes(ring_bytes),
            members: 0,
            others: 0,
            joining: 0,
            wanted: Vec::new(),
            repair: None,
        });
        r.joining += 1;
        r.wanted.push((j.conn, j.token));
        let pending = PendingJoin {
            room: j.room.to_owned(),
            conn: j.conn,
            req: j.req.map(str::to_owned),
            since: j.since,
            user: j.user.to_owned(),
            fetched: Vec::new(),
            reads: 0,
            counted: false,
        };
        self.joins.insert(j.token, pending);
        self.effects.push_back(SubEffect::Subscribe {
            token: j.token,
            room: j.room.to_owned(),
            user: j.user.to_owned(),
        });
    }

    /// The sequencer answered a join's subscribe (with the room's position, from a local
    /// owner): learn the room's seq if still unknown, then go on.
    pub fn subscribed(&mut self, token: u64, result: Result<Option<RoomPos>, Failure>) {
        let Some(j) = self.joins.get_mut(&token) else { return };
        let pos = match result {
            Ok(pos) => pos,
            Err(e) => return self.finish(token, Err(e)),
        };
        j.counted = true;
        let room = j.room.clone();
        let Some(r) = self.rooms.get_mut(&room) else { return };
        if let Some(p) = pos {
            r.feed.learn_from_owner(p.seq, p.epoch);
            r.others = p.others;
        }
        if r.feed.is_known() {
            return self.fetch_missed(token);
        }
        self.effects.push_back(SubEffect::RoomSeq { token, room });
    }

    /// The bridge answered the room's seq.
    pub fn room_seq(&mut self, token: u64, result: Result<u64, Failure>) {
        let Some(room) = self.joins.get(&token).map(|j| j.room.clone()) else {
            return;
        };
        match result {
            Err(e) => self.finish(token, Err(e)),
            Ok(seq) => {
                if let Some(r) = self.rooms.get_mut(&room) {
                    r.feed.learn(seq, None);
                }
                self.fetch_missed(token);
            }
        }
    }

    /// Step 2: fetch what the ring lacks for `since` (nothing to fetch without one).
    fn fetch_missed(&mut self, token: u64) {
        let Some(j) = self.joins.get(&token) else { return };
        let Some(since) = j.since else {
            return self.finish(token, Ok(Vec::new()));
        };
        let (covered, cursor) = match self.rooms.get(&j.room) {
            Some(r) => (r.feed.covers(since), r.feed.cursor()),
            None => (true, 0),
        };
        if covered {
            return self.finish(token, Ok(Vec::new()));
        }
        let count = (cursor - since).min(self.cfg.max_catch_up_messages as u64) as u32;
        let fetch = SubEffect::Fetch {
            token,
            room: j.room.clone(),
            after: cursor - u64::from(count),
            count,
        };
        self.effects.push_back(fetch);
    }

    /// The sequencer answered a catch-up read (messages ascending by seq). Deliveries kept
    /// coming meanwhile; when the ring did not keep all of them, what lies between the
    /// read and the ring is read too (while reads make progress, up to
    /// `max_catch_up_messages`), so a `gap` is only ever said of what no source holds.
    pub fn fetched(&mut self, token: u64, result: Result<Vec<(u64, Bytes)>, Failure>) {
        if let Some(room) = self.repairs.remove(&token) {
            return self.repaired(&room, token, result);
        }
        let msgs = match result {
            Ok(m) => m,
            Err(e) => return self.finish(token, Err(e)),
        };
        let Some(j) = self.joins.get_mut(&token) else { return };
        let high = j.fetched.last().map_or(0, |m| m.0);
        let before = j.fetched.len();
        j.fetched.extend(msgs.into_iter().filter(|m| m.0 > high));
        let progressed = j.fetched.len() > before;
        let high = j.fetched.last().map_or(0, |m| m.0);
        // The catch-up keeps the newest `max_catch_up_messages`: what is older is the `gap`
        // at its start, never one in its middle.
        let max = self.cfg.max_catch_up_messages.max(1);
        if j.fetched.len() > max {
            j.fetched.drain(..j.fetched.len() - max);
        }
        j.reads += 1;
        let room = self.rooms.get(&j.room);
        let cursor = room.map_or(0, |r| r.feed.cursor());
        let covered = room.is_none_or(|r| r.feed.covers(high));
        if covered || !progressed || j.reads >= MAX_CATCH_UP_READS {
            let all = std::mem::take(&mut j.fetched);
            return self.finish(token, Ok(all));
        }
        let count = (cursor - high).min(max as u64) as u32;
        let fetch = SubEffect::Fetch {
            token,
            room: j.room.clone(),
            after: high,
            count,
        };
        self.effects.push_back(fetch);
    }

    /// Step 3: the join's sequencer work is done; answer it (or refuse it) in one go.
    fn finish(&mut self, token: u64, prepared: Result<Vec<(u64, Bytes)>, Failure>) {
        let Some(j) = self.joins.remove(&token) else { return };
        let Some(r) = self.rooms.get_mut(&j.room) else { return };
        r.joining = r.joining.saturating_sub(1);
        let wanted = match r.wanted.iter().position(|&w| w == (j.conn, token)) {
            Some(i) => {
                r.wanted.swap_remove(i);
                true
            }
            None => false,
        };
        let fetched = match (wanted, prepared) {
            (true, Ok(f)) => f,
            (wanted, result) => {
                if j.counted {
                    self.effects.push_back(SubEffect::Presence {
                        room: j.room.clone(),
                        user: j.user.clone(),
                        online: false,
                    });
                }
                if r.idle() {
                    self.rooms.remove(&j.room);
                    self.effects.push_back(SubEffect::Unsubscribe { room: j.room.clone() });
                }
                let answer = match (wanted, result) {
                    (true, Err(e)) => SubEffect::Refused {
                        conn: j.conn,
                        payload: e.reply(j.req.as_deref(), "join failed"),
                        room: j.room,
                    },
                    // Left before Redis answered: the join still gets its one reply.
                    _ => SubEffect::Cancelled { conn: j.conn, req: j.req },
                };
                return self.effects.push_back(answer);
            }
        };
        r.members += 1;
        let members = r.others + u64::from(r.members);
        let payload = server::joined(j.req.as_deref(), &j.room, r.feed.cursor(), r.feed.epoch(), members);
        let read = fetched.iter().map(|(seq, payload)| (*seq, payload));
        let catch_up = j.since.map_or_else(Vec::new, |s| r.feed.catch_up(&j.room, s, read));
        self.effects.push_back(SubEffect::Joined {
            conn: j.conn,
            room: j.room.clone(),
            payload,
            catch_up,
        });
    }

    /// `conn` (of `user`) left `room`; `was_member`: it was in the fan-out list (else its join is out).
    pub fn leave(&mut self, room: &str, conn: u64, user: &str, was_member: bool) {
        let Some(r) = self.rooms.get_mut(room) else { return };
        if !was_member {
            // Its join is still waiting for Redis: it must not count when it lands
            // (`finish` drops the subscription if nothing else holds it).
            r.wanted.retain(|&(c, _)| c != conn);
            return;
        }
        r.members = r.members.saturating_sub(1);
        let idle = r.idle();
        self.effects.push_back(SubEffect::Presence {
            room: room.to_owned(),
            user: user.to_owned(),
            online: false,
        });
        if idle {
            self.rooms.remove(room);
            self.effects.push_back(SubEffect::Unsubscribe { room: room.to_owned() });
        }
    }

    /// A room message (or, seq 0, a notice) from the room's owner shard, or from Redis
    /// through the pump: whether this shard's members of `room` get it now. Answered at
    /// once, with no effect queued unless a hole was seen ([`Fate::Repairing`]): this is
    /// the hot path.
    pub fn deliver(&mut self, room: &str, seq: u64, payload: &Bytes) -> Fate {
        let Some(r) = self.rooms.get_mut(room) else {
            return if seq == 0 { Fate::Members } else { Fate::Dropped };
        };
        if let Some(rep) = &mut r.repair {
            rep.hold(if seq == 0 {
                Held::Notice(payload.clone())
            } else {
                Held::Message(seq, payload.clone())
            });
            return Fate::Dropped;
        }
        if seq == 0 {
            return Fate::Members;
        }
        match r.feed.advance(seq, payload) {
            Advance::Next => Fate::Members,
            Advance::Repeat | Advance::Unknown => Fate::Dropped,
            Advance::Jump { after } => {
                self.start_repair(room, after, seq - 1, Held::Message(seq, payload.clone()));
                Fate::Repairing
            }
        }
    }

    /// The pump's `gap`: seqs `from..=to` of `room` are held nowhere; `notice` names them.
    /// The members are told of those they have not had (after a hole before them is read,
    /// or behind one being read), as a `Deliver` effect.
    pub fn skip(&mut self, room: &str, from: u64, to: u64, notice: &Bytes) {
        let notice = notice.clone();
        self.release(room, Held::Skip { from, to, notice });
    }

    /// Message `seq` of `room` changed: a feed whose ring holds it keeps `message`, its
    /// current version, so a later catch-up from the ring returns it. True: the members
    /// get `event` now; false: it is held, behind a hole being read.
    pub fn changed(&mut self, room: &str, seq: u64, message: Option<&Bytes>, event: &Bytes) -> bool {
        let Some(r) = self.rooms.get_mut(room) else { return true };
        if let Some(m) = message {
            r.feed.patch(seq, m.clone());
        }
        let Some(rep) = &mut r.repair else { return true };
        if let Some(m) = message {
            rep.patch(seq, m);
        }
        rep.hold(Held::Event(event.clone()));
        false
    }

    /// The last seq of `room` this shard delivered, when it knows the room's position.
    pub fn seen(&self, room: &str) -> Option<u64> {
        self.rooms.get(room).filter(|r| r.feed.is_known()).map(|r| r.feed.cursor())
    }

    /// Every ring entry of every room: (room, seq, rendered), for the harness's checks.
    #[cfg(test)]
    pub fn ring_entries(&self) -> Vec<(String, u64, Bytes)> {
        self.rooms
            .iter()
            .flat_map(|(room, r)| r.feed.ring_entries().into_iter().map(move |(s, b)| (room.clone(), s, b)))
            .collect()
    }

    /// Redis lost the room's sequence: the cursor restarts at `seq` in a new epoch; members get `notice`.
    pub fn reset(&mut self, room: &str, seq: u64, notice: &Bytes, now_ms: u64) {
        if let Some(r) = self.rooms.get_mut(room) {
            r.feed.reset(seq, now_ms);
            // What was held is of the sequence Redis lost; its read is dropped when answered.
            r.repair = None;
        }
        self.effects.push_back(SubEffect::Deliver {
            room: room.to_owned(),
            seq: 0,
            payload: notice.clone(),
        });
    }
}

#[cfg(test)]
mod repair_tests;
#[cfg(test)]
mod tests;
