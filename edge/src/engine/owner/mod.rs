//! The local sequencer: the owner side of the rooms one shard owns on a
//! single node, as a sans-IO state machine.
//!
//! Events come in as method calls with `now_ms` passed in (a member shard
//! subscribes to a room, reads a catch-up, counts a member in or out, or
//! unsubscribes; a connection sends or asks for history or who is online; a
//! store completion arrives); what the shard must do comes out of [`Owner::poll`] as
//! [`Effect`]s, in order: replies for connections, answers to member shards
//! (`Subscribed` with the room's position, `Fetched`), and deliveries for
//! every subscribed shard. Joins themselves are the member side's
//! (`engine::subscriber`), the same code as in a cluster. The store is reached through
//! [`StorePort`], whose calls only admit a request into a bounded queue (the
//! answer comes back later as a completion), so the owner never waits.
//!
//! It holds no sockets, no runtime, no clock and no spawned tasks: the
//! deterministic harness (`harness.rs`) drives several owners with an
//! in-memory store and seeded interleavings, and checks the invariants of
//! ARCHITECTURE.md.
//!
//! Invariants:
//! - a room is loaded from the store before the owner acts on it; requests
//!   that arrive meanwhile wait in a bounded queue and are replayed in order;
//! - seq starts after the stored one and has no gap within an epoch; a
//!   store refusal takes the seq back; a room is evicted only when nothing
//!   is pending for it, so a reload never reuses a seq;
//! - `fast`: published (ring, fan-out, ack) when sequenced; `durable`:
//!   published when the store's completion arrives, in seq order;
//! - every subscribe, fetch, send and history request gets exactly one
//!   answer; a subscribed shard gets every message published after the seq
//!   it was told, in order, until it unsubscribes.

mod args;
mod changes;
mod config;
mod delivered;
mod durable;
mod history;
mod load;
mod presence;
mod receipts;
mod seen;
mod sync;

#[cfg(test)]
mod harness;
#[cfg(test)]
mod store_model;

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use storage::{MarkKind, Overloaded, Query, SmallStr, StoreError, StoredMessage};

use super::subscriber::RoomPos;
use super::{Busy, Failure};
use crate::config::Durability;
use crate::metrics::ShardStats;
use crate::protocol::server;
use crate::room::{OwnedRoom, Sequenced};

pub use args::{render_unsequenced, FetchArgs, HistoryArgs, SendArgs};
pub use changes::{MAX_EMOJIS_PER_MESSAGE, MAX_EMOJIS_PER_USER};
pub use config::OwnerConfig;
pub use delivered::SENDER_WINDOW_MS;
use load::Readiness;
use router::Refusal;

/// Admission into the store's bounded queues (the store service's handle on a shard).
pub trait StorePort {
    /// Queues a message write; its completion comes back with `ticket`.
    fn write(&mut self, msg: StoredMessage, ticket: u64) -> Result<(), Overloaded>;
    /// Queues a query; its answer comes back with `ticket`.
    fn query(&mut self, query: Query, ticket: u64) -> Result<(), Overloaded>;
}

/// What the shard must do, in the order the owner produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Bytes for connection `conn`, which may live on any shard (replies, catch-up).
    Reply { conn: u64, payload: Bytes },
    /// The answer to member shard `shard`'s subscribe for join `token`: from now on it gets
    /// every message after `RoomPos::seq`, in order.
    Subscribed {
        shard: usize,
        token: u64,
        result: Result<RoomPos, Refusal>,
    },
    /// The answer to member shard `shard`'s catch-up read for join `token`: messages ascending.
    Fetched {
        shard: usize,
        token: u64,
        result: Result<Vec<(u64, Bytes)>, Refusal>,
    },
    /// `payload` for the members of `room` on subscribed shard `shard` (a message, or a `gap` notice).
    Deliver {
        shard: usize,
        room: Rc<str>,
        seq: u64,
        payload: Bytes,
    },
    /// A DM room's message for every shard's connections of the room's two users that are
    /// not members of it (one effect per message: the shell offers it to every shard).
    ToUsers { room: Rc<str>, seq: u64, payload: Bytes },
    /// Message `seq` of `room` changed: `event` (`update`, `reaction`) for the members on
    /// subscribed shard `shard`, never shed, and `message`, its current version, for the
    /// shard's ring (an edit or a delete).
    Changed {
        shard: usize,
        room: Rc<str>,
        seq: u64,
        message: Option<Bytes>,
        event: Bytes,
    },
    /// `payload`, an event without a seq (a delivered receipt), for the connections of
    /// `users` among the members of `room` on subscribed shard `shard`.
    EventTo {
        shard: usize,
        room: Rc<str>,
        users: Rc<[String]>,
        payload: Bytes,
    },
    /// `payload`, an event without a seq (typing), for the members of `room` on subscribed
    /// shard `shard`, except the connections of `from`.
    Event {
        shard: usize,
        room: Rc<str>,
        from: Rc<str>,
        payload: Bytes,
    },
}

/// What a store ticket is waiting for.
#[derive(Debug)]
enum Wait {
    /// A step of a room load.
    Load(load::Step),
    /// A fast-mode write (already published).
    Write { room: Rc<str>, seq: u64 },
    /// A durable-mode write (published when committed): its send waits in `Owner::durable`.
    Durable,
    /// A history page for a connection: its older part from the store.
    History(Box<history::PageWait>),
    /// A history page's reactions.
    Reactions(Box<history::PageWait>),
    /// A history page's reply counts.
    Replies(Box<history::PageWait>),
    /// A `read` whose mark the store is setting.
    Mark(Box<receipts::MarkWait>),
    /// A user's last-seen time the store is writing.
    LastSeenSet { user: String, ts_ms: u64 },
    /// A user's last-seen time the store is reading, for a connection.
    LastSeen { user: String, conn: u64, req: Option<String> },
    /// A flush of delivered marks the store is writing.
    Delivered { room: String },
    /// A membership (for `sync`) the store is writing.
    Member { room: String, user: String },
    /// A step of an edit, delete or reaction.
    Change(Box<changes::ChangeWait>),
    /// A `sync` the store is reading.
    Sync { conn: u64, req: Option<String> },
    /// A member shard's catch-up read.
    Fetch {
        room: String,
        shard: usize,
        token: u64,
        after: u64,
        count: u32,
    },
}

/// The owner side of one shard's rooms.
pub struct Owner<S> {
    cfg: OwnerConfig,
    store: S,
    stats: Arc<Vec<ShardStats>>,
    rooms: HashMap<String, OwnedRoom>,
    loading: load::Loading,
    waits: HashMap<u64, Wait>,
    next_ticket: u64,
    effects: VecDeque<Effect>,
    /// Rooms above `presence_roster_max` whose online count changed since the last tick.
    presence_counts: Vec<Rc<str>>,
    /// Marks that moved since the last tick: (room, user, kind) -> seq.
    receipts: HashMap<(String, String, MarkKind), u64>,
    /// Edits, deletes and reactions running or waiting, per room.
    changes: changes::Changes,
    /// Who sent to each room lately, with when (the audience of its delivered receipts).
    delivered_senders: HashMap<String, Vec<(String, u64)>>,
    /// Delivered marks reported since the last flush: (room, user) -> seq.
    delivered_unstored: HashMap<(String, String), u64>,
    /// When delivered marks were last flushed to the store.
    delivered_flushed_ms: u64,
    /// Users whose home shard this is and who are online: the shards holding a connection of each.
    seen: HashMap<Box<str>, smallvec::SmallVec<[usize; 2]>>,
    /// Last-seen times the store has not taken yet (its queue was full, or the write failed):
    /// user → time, written again at the next ticks.
    seen_unstored: HashMap<String, u64>,
    /// History pages whose older part waits for the room's writes to settle (fast mode):
    /// (the seq below which the store must hold everything, the page, its query).
    deferred_pages: HashMap<String, Vec<(u64, Box<history::PageWait>, Query)>>,
    /// Catch-up reads waiting the same way: (the seq below which the store must hold
    /// everything, the member shard's fetch).
    deferred_fetches: HashMap<String, Vec<(u64, history::FetchWait)>>,
    /// Buffers of sent acks and evicted messages, rendered into again.
    frames: args::Frames,
    /// Durable sends waiting for their commit, by store ticket.
    durable: HashMap<u64, durable::PendingSend>,
}

impl<S: StorePort> Owner<S> {
    /// An owner with no room loaded; `stats[cfg.shard]` is its stats line.
    pub fn new(cfg: OwnerConfig, store: S, stats: Arc<Vec<ShardStats>>) -> Self {
        Self {
            loading: load::Loading::new(cfg.rooms_per_user_per_s, cfg.rooms_per_user_burst),
            cfg,
            store,
            stats,
            rooms: HashMap::new(),
            waits: HashMap::new(),
            next_ticket: 0,
            effects: VecDeque::new(),
            presence_counts: Vec::new(),
            receipts: HashMap::new(),
            changes: HashMap::new(),
            deferred_pages: HashMap::new(),
            deferred_fetches: HashMap::new(),
            seen: HashMap::new(),
            seen_unstored: HashMap::new(),
            delivered_unstored: HashMap::new(),
            delivered_senders: HashMap::new(),
            delivered_flushed_ms: 0,
            frames: args::Frames::new(),
            durable: HashMap::new(),
        }
    }

    /// The next effect to carry out, oldest first.
    pub fn poll(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// The store port (for a shell or a test that answers its requests).
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// This shard's stats line.
    pub(crate) fn stats(&self) -> &ShardStats {
        &self.stats[self.cfg.shard]
    }

    pub(super) fn reply(&mut self, conn: u64, payload: Bytes) {
        self.effects.push_back(Effect::Reply { conn, payload });
    }

    pub(super) fn take_ticket(&mut self) -> u64 {
        self.next_ticket += 1;
        self.next_ticket
    }

    /// Submits a query and remembers what it waits for; false when the store refused it.
    fn submit_query(&mut self, query: Query, wait: Wait) -> bool {
        let ticket = self.take_ticket();
        if self.store.query(query, ticket).is_err() {
            ShardStats::inc(&self.stats().store_overloaded_total);
            return false;
        }
        self.waits.insert(ticket, wait);
        true
    }

    /// Member shard `shard` delivers `room` from now on (for join `token`): the answer
    /// carries the room's position, and every message published after it follows. With
    /// `user`, a member of that user is counted in before the answer goes (the member side
    /// counts it out when it leaves, or when its join fails or is cancelled), so a `joined`
    /// the member side sends later is already in every later join's member count.
    pub fn subscribe(&mut self, room: &str, shard: usize, token: u64, user: Option<&str>, now_ms: u64) {
        let op = || load::Op::Subscribe {
            shard,
            token,
            user: user.map(str::to_owned),
        };
        let result = match self.room_ready(room, user, op, now_ms) {
            Readiness::Queued => return,
            Readiness::Refused(msg) => Err(Busy::Store.refusal(msg)),
            Readiness::Ready => {
                let Some(r) = self.rooms.get_mut(room) else { return };
                r.subscribe(shard);
                let pos = RoomPos {
                    seq: r.published(),
                    epoch: r.epoch(),
                    others: r.others(shard),
                };
                if let Some(user) = user {
                    self.member(room, shard, user, true, now_ms);
                    self.record_member(room, user);
                }
                Ok(pos)
            }
        };
        self.effects.push_back(Effect::Subscribed { shard, token, result });
    }

    /// Member shard `shard` has no member and no join left in `room`.
    pub fn unsubscribe(&mut self, room: &str, shard: usize) {
        if let Some(r) = self.rooms.get_mut(room) {
            r.unsubscribe(shard);
        }
    }

    /// An event without a seq about `from` (typing, presence) for the members of `room` but
    /// `from`'s connections (`from` empty: all of them), on every subscribed shard; a room
    /// not in memory has no members to tell.
    pub fn event(&mut self, room: &str, from: &str, payload: &Bytes) {
        let Some(r) = self.rooms.get(room) else { return };
        let (name, from) = (r.name(), Rc::<str>::from(from));
        for shard in r.subscribers(self.cfg.shard) {
            self.effects.push_back(Effect::Event {
                shard,
                room: name.clone(),
                from: from.clone(),
                payload: payload.clone(),
            });
        }
    }

    /// A member shard's catch-up read: from the ring when it holds everything after
    /// `after`, else from the store, then the ring for what the store may not hold yet.
    pub fn fetch(&mut self, f: FetchArgs<'_>, now_ms: u64) {
        let op = || load::Op::Fetch {
            shard: f.shard,
            token: f.token,
            after: f.after,
            count: f.count,
        };
        match self.room_ready(f.room, None, op, now_ms) {
            Readiness::Ready => {}
            Readiness::Queued => return,
            Readiness::Refused(msg) => return self.fetched(&f, Err(Busy::Store.refusal(msg))),
        }
        let Some(r) = self.rooms.get_mut(f.room) else { return };
        if r.ring().covers(f.after, r.published()) {
            let msgs = r
                .ring()
                .after(f.after)
                .take(f.count as usize)
                .map(|(s, b)| (s, b.clone()))
                .collect();
            return self.fetched(&f, Ok(msgs));
        }
        r.hold();
        let wait = history::FetchWait {
            room: f.room.to_owned(),
            shard: f.shard,
            token: f.token,
            after: f.after,
            count: f.count,
        };
        // Fast mode: what the ring no longer holds must be in the store before the store is
        // read (else a message written a moment ago would be announced as a gap).
        let below = r.ring().first_seq().unwrap_or(r.published().saturating_add(1));
        if r.settled_seq().saturating_add(1) < below {
            self.deferred_fetches.entry(f.room.to_owned()).or_default().push((below, wait));
            return;
        }
        self.read_fetch(wait);
    }

    /// Reads a catch-up's older part from the store (the room is held until it answers).
    fn read_fetch(&mut self, w: history::FetchWait) {
        let query = Query::RangeAfter {
            room: w.room.clone(),
            after: w.after,
            limit: w.count as usize,
        };
        let wait = Wait::Fetch {
            room: w.room.clone(),
            shard: w.shard,
            token: w.token,
            after: w.after,
            count: w.count,
        };
        if !self.submit_query(query, wait) {
            if let Some(r) = self.rooms.get_mut(&w.room) {
                r.release();
            }
            self.fetched(&w.args(), Err(Busy::Store.refusal("store busy, retry")));
        }
    }

    /// A write of `room` settled: the catch-ups that waited for it read the store now.
    pub(super) fn read_deferred_fetches(&mut self, room: &str) {
        let Some(r) = self.rooms.get(room) else { return };
        let settled = r.settled_seq();
        let Some(waiting) = self.deferred_fetches.get_mut(room) else {
            return;
        };
        let ready: Vec<(u64, history::FetchWait)> = waiting.extract_if(.., |(below, _)| settled.saturating_add(1) >= *below).collect();
        if waiting.is_empty() {
            self.deferred_fetches.remove(room);
        }
        for (_, w) in ready {
            self.read_fetch(w);
        }
    }

    /// The store answered a catch-up read: what it holds, then the ring past it.
    fn finish_fetch(&mut self, f: FetchArgs<'_>, stored: Result<Vec<StoredMessage>, StoreError>) {
        let Some(r) = self.rooms.get_mut(f.room) else { return };
        r.release();
        let stored = match stored {
            Ok(s) => s,
            Err(e) => return self.fetched(&f, Err(Failure::Store(e).refusal("history store unavailable"))),
        };
        let mut msgs: Vec<(u64, Bytes)> = stored.into_iter().filter(|m| m.seq > f.after).map(|m| (m.seq, m.frame)).collect();
        let high = msgs.last().map_or(f.after, |m| m.0);
        msgs.extend(r.ring().after(high).map(|(s, b)| (s, b.clone())));
        msgs.truncate(f.count as usize);
        self.fetched(&f, Ok(msgs));
    }

    fn fetched(&mut self, f: &FetchArgs<'_>, result: Result<Vec<(u64, Bytes)>, Refusal>) {
        self.effects.push_back(Effect::Fetched {
            shard: f.shard,
            token: f.token,
            result,
        });
    }

    /// Sequences a send, hands it to the store, and publishes it as the durability mode says.
    pub fn send(&mut self, a: &SendArgs<'_>, now_ms: u64) {
        match self.room_ready(a.room, Some(a.user), load::Op::send(a), now_ms) {
            Readiness::Ready => {}
            Readiness::Queued => return,
            Readiness::Refused(msg) => return self.reply(a.conn, Busy::Store.reply(a.req, msg)),
        }
        let Some(r) = self.rooms.get_mut(a.room) else { return };
        if let Some(root) = a.reply_to.filter(|&t| t == 0 || t > r.seq()) {
            let msg = format!("{} has no message {root} to reply to", a.room);
            return self.reply(a.conn, server::error(a.req, crate::protocol::ErrorCode::NotFound, &msg, None));
        }
        let ack = match r.sequence(a.user, a.client_id, now_ms) {
            Sequenced::New(ack) => ack,
            Sequenced::Duplicate(ack) => {
                let ticket = (ack.seq > r.published()).then(|| r.commit_ticket(ack.seq)).flatten();
                return self.answer_duplicate(a, &ack, ticket);
            }
        };
        let (name, durable) = (r.name(), self.cfg.durability == Durability::Durable);
        let (stored_room, sender) = (r.shared_name(), r.roster().name(a.user));
        let rendered = self.frames.message(a, ack.seq, &ack.msg_id, ack.ts);
        // Fast mode acks at once, before the store has the message.
        let when = if durable {
            durable::Publish::OnCommit(sender.clone())
        } else {
            durable::Publish::Now(self.frames.ack(a.req, a.room, ack.seq, &ack.msg_id, ack.ts))
        };
        let msg_id = ack.msg_id.clone();
        let stored = StoredMessage {
            room: stored_room,
            seq: ack.seq,
            msg_id,
            sender,
            ts_ms: ack.ts,
            client_id: a.client_id.map(SmallStr::from),
            frame: rendered.clone(),
            reply_to: a.reply_to,
        };
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        if self.store.write(stored, ticket).is_err() {
            // Nothing happened since `sequence`: take the seq back, so the room has no gap.
            if let Some(r) = self.rooms.get_mut(a.room) {
                r.unsequence(ack.seq, a.user, a.client_id);
            }
            ShardStats::inc(&self.stats().store_overloaded_total);
            return self.reply(a.conn, Busy::Store.reply(a.req, "message store busy, retry"));
        }
        ShardStats::inc(&self.stats().messages_total);
        let Some(r) = self.rooms.get_mut(a.room) else { return };
        let ack_now = match when {
            durable::Publish::Now(ack) => ack,
            durable::Publish::OnCommit(user) => {
                r.committing(ack.seq, ticket);
                return self.await_commit(a, name, user, ack, rendered, ticket);
            }
        };
        r.hold();
        r.publish_then(ack.seq, rendered.clone(), |old| self.frames.messages.retire(&old));
        if let Some(root) = a.reply_to {
            r.note_reply(ack.seq, root);
        }
        self.waits.insert(ticket, Wait::Write { room: name, seq: ack.seq });
        self.fan_out(a.room, ack.seq, &rendered);
        self.note_sender(a.room, a.user, now_ms);
        self.offer_to_users(a.room, ack.seq, &rendered);
        self.reply(a.conn, ack_now);
    }

    /// A DM room's message also goes to its two users' connections that did not join it.
    fn offer_to_users(&mut self, room: &str, seq: u64, payload: &Bytes) {
        let Some((a, b)) = crate::auth::dm_participants(room) else { return };
        // Both users belong to the DM room from its first message on (`sync`).
        self.record_member(room, a);
        self.record_member(room, b);
        let Some(r) = self.rooms.get(room) else { return };
        self.effects.push_back(Effect::ToUsers {
            room: r.name(),
            seq,
            payload: payload.clone(),
        });
    }

    /// `payload` to every subscribed shard of `room` (this one first): one effect per shard, never per member.
    pub(super) fn fan_out(&mut self, room: &str, seq: u64, payload: &Bytes) {
        let Some(r) = self.rooms.get(room) else { return };
        let name = r.name();
        for shard in r.subscribers(self.cfg.shard) {
            self.effects.push_back(Effect::Deliver {
                shard,
                room: name.clone(),
                seq,
                payload: payload.clone(),
            });
        }
    }
}
