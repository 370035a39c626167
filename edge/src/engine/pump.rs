//! The cluster pump's logic, sans-IO: what a node does with each event of
//! its Redis bridge, for the node's shards. The shell (`edge/src/pump.rs`,
//! one thread) feeds in the bridge's events and the presence tick, makes the
//! Redis reads asked for and answers them with [`Pump::answered`], and sends
//! each frame to its shard's mesh ring.
//!
//! - `Deliver`: the received frame is already a mesh `Deliver` frame (the
//!   bytes Redis published); it goes as is to each subscribed shard.
//! - A delivery past the one after the last seq forwarded (checked against
//!   the pump's own last seq: the bridge's `Gap` cannot see a skip after
//!   Redis lost data, since its last seq is from before; a room's first
//!   delivery since the node subscribed it is checked only against what
//!   Redis itself told the pump, as a last seq the pump took from
//!   deliveries may predate the subscription): the missed messages are read
//!   from the room's recent stream and forwarded first, in order; what the
//!   stream no longer holds goes as a mesh `Gap` frame (each shard's feed
//!   moves past it, and its members get the `gap` notice). A
//!   delivery at or below the last seq forwarded was forwarded already (a
//!   resync's read got it first) and is dropped.
//! - `Gap` backward (`got < expected`): Redis lost the room's sequence;
//!   shards get a `Reset` (cursor and an `epoch` notice for members).
//! - `Resync` (Redis reconnect, or the event reader fell behind): for each
//!   room, the seq in Redis is compared with the last one forwarded: missed
//!   messages are read and forwarded, or announced, and a sequence that went
//!   back is reset; with `lost`, members hear of a new epoch first.
//! - `UserDeliver` (a DM room's message on a user's channel): a mesh
//!   `UserDeliver` frame to the shards holding that user's connections.
//! - `Event` and `Disconnect`: the received mesh frame, as is, to each shard.
//! - `PresenceChanged`: a `presence` event for the room's members, or above
//!   `presence_roster_max` users online (`presence_counts`) the room's online
//!   count at the next tick.
//!
//! What must stay true: events are handled one at a time, in bridge order: an
//! event waits while a read for an earlier one is out ([`Pump::waiting`]: the
//! shell takes no new event then), so a room's frames reach each shard in seq
//! order, and a message forwarded after a gap's recovery comes after the
//! recovered ones; each shard gets every seq in order, as a message or within
//! a gap notice, from a room's first delivery since the node subscribed it
//! (a reset starts the count again), and once, but around a resubscription:
//! that first delivery is checked only against what a read of the stream
//! told the pump last, else forwarded unchecked, so it may repeat what the
//! old subscription's deliveries carried (a shard's feed drops a repeat);
//! the room table is bounded (`MAX_ROOMS`, then it is cleared, and a room's
//! next message is forwarded to the shards the bridge names).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use router::bridge::{BridgeEvent, RecentMessage};
use router::Frame;

use super::catch_up::{self, Piece};
use super::presence_counts::{Decision, PresenceCounts};
use crate::protocol::server;

#[cfg(test)]
mod tests;

/// Rooms the pump remembers (last seq forwarded, shards); past it the table is cleared.
const MAX_ROOMS: usize = 100_000;

/// A read the pump asks of Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PumpCall {
    /// At most `count` messages of `room` after `after`; answered [`PumpAnswer::Recent`].
    Recent { room: String, after: u64, count: u32 },
    /// `room`'s last seq; [`PumpAnswer::RoomSeq`].
    RoomSeq { room: String },
    /// How many users are online in `room`; [`PumpAnswer::Online`].
    Online { room: String },
}

/// A read's answer: `None` when it failed or was late (the shell logs why).
#[derive(Debug)]
pub enum PumpAnswer {
    Recent(Option<Vec<RecentMessage>>),
    RoomSeq(Option<u64>),
    Online(Option<usize>),
}

/// What the shell must do.
#[derive(Debug, PartialEq, Eq)]
pub enum PumpEffect {
    /// `frame` (a mesh frame) to shard `shard`'s ring.
    Send { shard: u16, frame: Bytes },
    /// Make the read, then give its answer to [`Pump::answered`].
    Call(PumpCall),
}

/// What the pump knows of a room: the last seq forwarded and the shards subscribed.
#[derive(Debug)]
struct RoomCursor {
    seq: u64,
    shards: Arc<[u16]>,
    /// `seq` came from Redis itself (a recovery's read, or a reset), not from a delivery.
    read: bool,
}

/// Work waiting its turn.
#[derive(Debug)]
enum Work {
    Event(BridgeEvent),
    /// Compare one room's seq in Redis with the last one forwarded.
    Resync {
        room: String,
        lost: bool,
    },
    /// Send one room's online count (it is due).
    Count {
        room: String,
    },
}

/// The read the pump waits for.
#[derive(Debug)]
enum Wait {
    /// `resync`: the read is a resync's (messages up to Redis's seq may still be on their
    /// way as deliveries), else a bridge gap's (the missed messages never come).
    Recover {
        room: String,
        after: u64,
        upto: u64,
        resync: bool,
    },
    Resync {
        room: String,
        lost: bool,
    },
    Presence {
        room: String,
        user: String,
        online: bool,
    },
    Count {
        room: String,
    },
}

/// A node's pump.
#[derive(Debug)]
pub struct Pump {
    shards: usize,
    rooms: HashMap<String, RoomCursor>,
    presence: PresenceCounts,
    work: VecDeque<Work>,
    wait: Option<Wait>,
    effects: VecDeque<PumpEffect>,
}

impl Pump {
    /// A pump for `shards` shards; presence counts coalesce above `roster_max` users online.
    pub fn new(shards: usize, roster_max: usize) -> Self {
        Self {
            shards,
            rooms: HashMap::new(),
            presence: PresenceCounts::new(roster_max),
            work: VecDeque::new(),
            wait: None,
            effects: VecDeque::new(),
        }
    }

    /// The next effect to carry out.
    pub fn poll(&mut self) -> Option<PumpEffect> {
        self.effects.pop_front()
    }

    /// A read is out: the shell answers it before it takes the next event.
    pub fn waiting(&self) -> bool {
        self.wait.is_some()
    }

    /// The last seq forwarded in `room`, if the pump knows the room.
    pub fn forwarded(&self, room: &str) -> Option<u64> {
        self.rooms.get(room).map(|r| r.seq)
    }

    /// An event from the bridge (handled after the work before it).
    pub fn event(&mut self, ev: BridgeEvent, now_ms: u64) {
        self.work.push_back(Work::Event(ev));
        self.run(now_ms);
    }

    /// The presence tick (once a second): the rooms whose count is due get it.
    pub fn tick(&mut self, now_ms: u64) {
        for room in self.presence.due() {
            self.work.push_back(Work::Count { room });
        }
        self.run(now_ms);
    }

    /// The answer to the read the pump waits for.
    pub fn answered(&mut self, answer: PumpAnswer, now_ms: u64) {
        let Some(wait) = self.wait.take() else {
            tracing::error!(?answer, "cluster pump: an answer for no read");
            return;
        };
        match (wait, answer) {
            (Wait::Recover { room, after, upto, .. }, PumpAnswer::Recent(Some(msgs))) => self.recovered(&room, after, upto, &msgs),
            // A resync's read failed: a quiet room waits for the next resync, a busy one for
            // its next message (the bridge's gap check then names what was missed).
            (Wait::Recover { resync: true, .. }, PumpAnswer::Recent(None)) => {}
            (Wait::Recover { room, after, upto, .. }, PumpAnswer::Recent(None)) => self.recovered(&room, after, upto, &[]),
            (Wait::Resync { room, lost }, PumpAnswer::RoomSeq(Some(now))) => self.resynced(&room, lost, now, now_ms),
            // The shell logged why; the room is compared again at the next resync.
            (Wait::Resync { .. }, PumpAnswer::RoomSeq(None)) => {}
            (Wait::Presence { room, user, online }, PumpAnswer::Online(count)) => match count {
                Some(count) => {
                    if self.presence.counted(&room, count) == Decision::Forward {
                        let payload = server::presence_event(&room, &user, online, now_ms);
                        self.tell_members(room, payload);
                    }
                }
                // Unknown: the event goes as it is, and the count is read again next time.
                None => {
                    let payload = server::presence_event(&room, &user, online, now_ms);
                    self.tell_members(room, payload);
                }
            },
            (Wait::Count { room }, PumpAnswer::Online(count)) => match count {
                Some(count) => {
                    self.presence.counted(&room, count);
                    self.tell_members(room.clone(), server::presence_count(&room, count));
                }
                None => tracing::debug!(room, "cluster pump: a presence count was not read"),
            },
            (wait, answer) => tracing::error!(?wait, ?answer, "cluster pump: an answer to another read"),
        }
        self.run(now_ms);
    }

    /// Handles the work in order until it is done or a read is out.
    fn run(&mut self, now_ms: u64) {
        while self.wait.is_none() {
            let Some(work) = self.work.pop_front() else { return };
            match work {
                Work::Event(ev) => self.handle(ev, now_ms),
                Work::Resync { room, lost } => {
                    if self.rooms.contains_key(&room) {
                        self.call(Wait::Resync { room: room.clone(), lost }, PumpCall::RoomSeq { room });
                    }
                }
                Work::Count { room } => self.call(Wait::Count { room: room.clone() }, PumpCall::Online { room }),
            }
        }
    }

    fn call(&mut self, wait: Wait, call: PumpCall) {
        self.wait = Some(wait);
        self.effects.push_back(PumpEffect::Call(call));
    }

    fn handle(&mut self, ev: BridgeEvent, now_ms: u64) {
        match ev {
            BridgeEvent::Deliver {
                room,
                seq,
                payload,
                frame,
                shards,
                first,
            } => match self.forwarded(&room) {
                // A room the pump does not know: nothing to check it against.
                None => self.forward(&room, seq, frame, shards, false),
                // The first since the node subscribed the room, and what the pump knows came
                // from a delivery, maybe of an older subscription: not checked. (What Redis
                // told the pump itself, a read or a reset, is checked against as usual.)
                Some(_) if first && !self.rooms.get(&room).is_some_and(|r| r.read) => self.forward(&room, seq, frame, shards, false),
                // Forwarded already: a resync's read got it first.
                Some(last) if seq <= last => {}
                Some(last) if seq > last + 1 => {
                    // Missed since the last one forwarded (the bridge's check may not see it: its
                    // last seq can be from before Redis lost data): read them, then this again.
                    let again = BridgeEvent::Deliver {
                        room: room.clone(),
                        seq,
                        payload,
                        frame,
                        shards,
                        first,
                    };
                    self.work.push_front(Work::Event(again));
                    self.recover(room, last, seq - 1, false);
                }
                Some(_) => self.forward(&room, seq, frame, shards, false),
            },
            // The delivery that follows is checked against the pump's own last seq, if it knows
            // the room; else the bridge's is all there is.
            BridgeEvent::Gap { room, expected, got } if got > expected => {
                if self.forwarded(&room).is_none() {
                    self.recover(room, expected - 1, got - 1, false);
                }
            }
            BridgeEvent::Gap { room, got, .. } => self.reset(&room, got.saturating_sub(1), now_ms),
            BridgeEvent::Resync { rooms, lost } => {
                // Each room in turn, ahead of the events that came after the resync.
                for (i, room) in rooms.into_iter().enumerate() {
                    self.work.insert(i, Work::Resync { room, lost });
                }
            }
            BridgeEvent::UserDeliver {
                user,
                room,
                seq,
                payload,
                shards,
            } => {
                let frame = router::encode(&Frame::UserDeliver {
                    user: Some(user),
                    room,
                    seq,
                    payload: payload.to_vec(),
                });
                self.send_all(&shards, &frame);
            }
            BridgeEvent::Event { frame, shards, .. } | BridgeEvent::Disconnect { frame, shards, .. } => self.send_all(&shards, &frame),
            BridgeEvent::PresenceChanged { room, user, online, .. } => match self.presence.changed(&room, online) {
                Decision::NeedCount => self.call(
                    Wait::Presence {
                        room: room.clone(),
                        user,
                        online,
                    },
                    PumpCall::Online { room },
                ),
                Decision::Forward => {
                    let payload = server::presence_event(&room, &user, online, now_ms);
                    self.tell_members(room, payload);
                }
                Decision::Coalesce => {}
            },
        }
    }

    /// Forwards message `seq` of `room` (the callers checked it comes next); `read`: it was
    /// read from the stream.
    fn forward(&mut self, room: &str, seq: u64, frame: Bytes, shards: Arc<[u16]>, read: bool) {
        if self.rooms.len() >= MAX_ROOMS && !self.rooms.contains_key(room) {
            self.rooms.clear();
        }
        self.send_all(&shards, &frame);
        self.rooms.insert(room.to_owned(), RoomCursor { seq, shards, read });
    }

    /// Reads `after+1..=upto` from the recent stream, to forward it.
    fn recover(&mut self, room: String, after: u64, upto: u64, resync: bool) {
        let count = (upto - after).min(u64::from(u32::MAX)) as u32;
        let call = PumpCall::Recent {
            room: room.clone(),
            after,
            count,
        };
        self.call(Wait::Recover { room, after, upto, resync }, call);
    }

    /// Forwards what the stream held of `after+1..=upto`, and announces what it no longer holds.
    fn recovered(&mut self, room: &str, after: u64, upto: u64, msgs: &[RecentMessage]) {
        let shards = self.shards_of(room);
        for piece in catch_up::merge(after, upto, msgs.iter().map(|m| (m.seq, &m.frame))) {
            match piece {
                Piece::Message(seq, frame) => self.forward(room, seq, frame.clone(), shards.clone(), true),
                Piece::Gap(from, to) => {
                    // A frame of its own: each shard's feed moves past what it names.
                    let frame = router::encode(&Frame::Gap {
                        room: room.to_owned(),
                        from,
                        to,
                        payload: server::gap(room, from, to).to_vec(),
                    });
                    self.send_all(&shards, &frame);
                    if let Some(r) = self.rooms.get_mut(room) {
                        (r.seq, r.read) = (r.seq.max(to), true);
                    }
                }
            }
        }
    }

    /// Redis says `room` is at `now`: a sequence that went back is reset; with `lost` (Redis
    /// lost its data) a sequence that went on after a shared store's floor is announced as a
    /// new epoch after the last seq forwarded, before what is read.
    fn resynced(&mut self, room: &str, lost: bool, now: u64, now_ms: u64) {
        let Some(last) = self.forwarded(room) else { return };
        if now < last {
            return self.reset(room, now, now_ms);
        }
        if lost {
            tracing::warn!(
                room,
                seq = last,
                "cluster: Redis lost its data; the room's sequence goes on: new epoch"
            );
            self.notify(room, &server::epoch(room, now_ms, last));
        }
        if now > last {
            self.recover(room.to_owned(), last, now, true);
        }
    }

    /// Redis lost the room's sequence: every shard restarts its cursor at `seq`, members hear of a new epoch.
    fn reset(&mut self, room: &str, seq: u64, now_ms: u64) {
        tracing::warn!(room, seq, "cluster: the room's sequence went back (Redis lost data): new epoch");
        let frame = router::encode(&Frame::Reset {
            room: room.to_owned(),
            seq,
            payload: server::epoch(room, now_ms, seq).to_vec(),
        });
        self.send_all(&self.shards_of(room), &frame);
        if let Some(r) = self.rooms.get_mut(room) {
            // What Redis holds now: as fresh as a read.
            (r.seq, r.read) = (seq, true);
        }
    }

    /// A rendered notice (seq 0: not a room message) to the room's shards.
    fn notify(&mut self, room: &str, payload: &Bytes) {
        let frame = router::encode(&Frame::Deliver {
            room: room.to_owned(),
            seq: 0,
            payload: payload.to_vec(),
            at_us: 0,
        });
        self.send_all(&self.shards_of(room), &frame);
    }

    /// A presence event or count for every member of `room`, ephemeral: shed for a backed-up member.
    fn tell_members(&mut self, room: String, payload: Bytes) {
        let shards = self.shards_of(&room);
        let frame = router::encode(&Frame::Event {
            payload: payload.to_vec(),
            room,
            from: String::new(),
        });
        self.send_all(&shards, &frame);
    }

    fn send_all(&mut self, shards: &[u16], frame: &Bytes) {
        for &shard in shards {
            self.effects.push_back(PumpEffect::Send {
                shard,
                frame: frame.clone(),
            });
        }
    }

    /// The shards subscribed to `room` as last reported, or every shard when unknown.
    fn shards_of(&self, room: &str) -> Arc<[u16]> {
        match self.rooms.get(room) {
            Some(r) => r.shards.clone(),
            None => (0..self.shards as u16).collect(),
        }
    }
}
