//! Loading a room before its owner acts on it, and the store completions.
//!
//! 1. `RoomState` gives the epoch and the last stored seq (the room is
//!    created in the store with the current time as epoch if new);
//! 2. after an unclean previous run, `SetEpoch` moves the room to this run's
//!    epoch (fast mode may have acked messages the store never got, so old
//!    seqs past the stored ones may have been seen with other content);
//! 3. `History` of the newest messages warms the recent ring and the
//!    `client_id` memory, so retries across a restart are still deduplicated;
//! 4. the requests queued meanwhile are replayed in order.
//!
//! Invariants: every submitted ticket has exactly one `Wait` until its
//! completion arrives (the store service answers every admitted request); a
//! room's load queue is bounded by `room_load_queue_max`; a failed load
//! answers every queued request and forgets the room, so the next request
//! tries again.

use std::collections::HashMap;

use bytes::Bytes;
use router::{ChangeMsg, Refusal, SendMsg};
use storage::{Answer, Completion, HistoryPage, Query, RoomState, StoreError, StoredMessage};

use super::{Effect, FetchArgs, HistoryArgs, Owner, SendArgs, StorePort, Wait};
use crate::engine::{Busy, Failure};
use crate::limits::gcra::KeyedGcra;
use crate::metrics::ShardStats;
use crate::room::OwnedRoom;

/// Whether the owner can act on a room now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Readiness {
    /// Loaded: go ahead.
    Ready,
    /// Being loaded: the request waits in the room's queue.
    Queued,
    /// Cannot be loaded now (a bound is reached): answer `overloaded` with this message.
    Refused(&'static str),
}

/// A load step waiting for the store.
#[derive(Debug)]
pub(super) enum Step {
    /// Step 1: the room's state.
    State { room: String },
    /// Step 2: the new epoch is being written.
    Epoch { room: String, state: RoomState },
    /// Step 3: the newest messages, to warm the ring and the dedupe memory.
    Warm { room: String, state: RoomState },
}

/// A request waiting for its room to load (owned: it outlives the frame it came in).
#[derive(Debug)]
pub(super) enum Op {
    Subscribe {
        shard: usize,
        token: u64,
        user: Option<String>,
    },
    Fetch {
        shard: usize,
        token: u64,
        after: u64,
        count: u32,
    },
    Send(Box<SendMsg>),
    Change(Box<ChangeMsg>),
    History {
        user: String,
        conn: u64,
        req: Option<String>,
        before: Option<u64>,
        limit: u32,
        thread: Option<u64>,
    },
}

impl Op {
    pub(super) fn send<'a>(a: &'a SendArgs<'a>) -> impl FnOnce() -> Self + 'a {
        move || Self::Send(Box::new(a.to_msg()))
    }

    pub(super) fn history(h: &HistoryArgs<'_>) -> impl FnOnce() -> Self {
        let (user, conn, req, before, limit, thread) = (h.user.to_owned(), h.conn, h.req.map(str::to_owned), h.before, h.limit, h.thread);
        move || Self::History {
            user,
            conn,
            req,
            before,
            limit,
            thread,
        }
    }
}

/// Rooms being loaded, with the requests waiting for each (bounded).
#[derive(Debug)]
pub(super) struct Loading {
    rooms: HashMap<String, Vec<Op>>,
    /// When the idle rooms were last looked for.
    last_idle_sweep_ms: u64,
    /// Rooms each user brought into memory lately (`rooms_per_user_per_s`).
    per_user: KeyedGcra,
}

impl Loading {
    pub(super) fn new(rate_per_s: f64, burst: u32) -> Self {
        Self {
            rooms: HashMap::new(),
            last_idle_sweep_ms: 0,
            per_user: KeyedGcra::new(rate_per_s, burst),
        }
    }

    /// Whether `room` is being loaded.
    pub(super) fn has(&self, room: &str) -> bool {
        self.rooms.contains_key(room)
    }
}

/// Why a room could not be loaded.
enum LoadFailed {
    /// The store's query queue was full.
    StoreBusy,
    /// The store answered with an error.
    Store(Failure),
}

impl LoadFailed {
    const BUSY: &'static str = "room state unavailable: message store busy, retry";
    const WHAT: &'static str = "room state unavailable";

    fn reply(&self, req: Option<&str>) -> Bytes {
        match self {
            Self::StoreBusy => Busy::Store.reply(req, Self::BUSY),
            Self::Store(f) => f.reply(req, Self::WHAT),
        }
    }

    /// The same, for a member shard's request.
    fn refusal(&self) -> Refusal {
        match self {
            Self::StoreBusy => Busy::Store.refusal(Self::BUSY),
            Self::Store(f) => f.refusal(Self::WHAT),
        }
    }
}

impl std::fmt::Display for LoadFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::StoreBusy => f.write_str("message store busy"),
            Self::Store(e) => e.fmt(f),
        }
    }
}

/// A store answer of the wrong kind for its request: a bug, reported as a non-retryable store error.
pub(super) fn unexpected(answer: &Answer) -> StoreError {
    StoreError::Internal(format!("unexpected answer {answer:?}"))
}

impl<S: StorePort> Owner<S> {
    /// Whether `room` is loaded; if not, queues `op` (built only then) and starts the load,
    /// counted against `user`'s `rooms_per_user_per_s`.
    pub(super) fn room_ready(&mut self, room: &str, user: Option<&str>, op: impl FnOnce() -> Op, now_ms: u64) -> Readiness {
        if let Some(r) = self.rooms.get_mut(room) {
            r.touch(now_ms);
            return Readiness::Ready;
        }
        if let Some(queue) = self.loading.rooms.get_mut(room) {
            if queue.len() >= self.cfg.room_load_queue_max {
                return Readiness::Refused("room is loading, retry");
            }
            queue.push(op());
            return Readiness::Queued;
        }
        if self.rooms.len() + self.loading.rooms.len() >= self.cfg.max_rooms_per_shard && !self.evict_one() {
            return Readiness::Refused("too many rooms on this shard");
        }
        if let Some(user) = user {
            if self.loading.per_user.check(user, now_ms.saturating_mul(1_000_000)).is_err() {
                ShardStats::inc(&self.stats().room_loads_refused_total);
                return Readiness::Refused("too many new rooms for this user, retry");
            }
        }
        let query = Query::RoomState {
            room: room.to_owned(),
            new_epoch: now_ms,
        };
        if !self.submit_query(query, Wait::Load(Step::State { room: room.to_owned() })) {
            return Readiness::Refused("message store busy, retry");
        }
        self.loading.rooms.insert(room.to_owned(), vec![op()]);
        Readiness::Queued
    }

    /// Drops one room that has no members and no store work out; false when none can go.
    fn evict_one(&mut self) -> bool {
        let Some(victim) = self.rooms.iter().find(|(_, r)| r.is_evictable()).map(|(k, _)| k.clone()) else {
            return false;
        };
        self.rooms.remove(&victim);
        ShardStats::set(&self.stats().rooms_owned, self.rooms.len() as u64);
        true
    }

    /// Drops the rooms that are evictable and idle for `room_idle_evict_ms` (0: never); they
    /// load again from the store when next named. The same sweep forgets the per-user room
    /// load buckets that refilled and the senders past the delivered-receipt window.
    pub(super) fn evict_idle(&mut self, now_ms: u64) {
        let idle_ms = self.cfg.room_idle_evict_ms;
        // Every quarter of the idle time (every minute when rooms are never idle-evicted).
        let every_ms = if idle_ms == 0 { 60_000 } else { idle_ms.div_ceil(4) };
        if now_ms.saturating_sub(self.loading.last_idle_sweep_ms) < every_ms {
            return;
        }
        self.loading.last_idle_sweep_ms = now_ms;
        self.loading.per_user.prune(now_ms.saturating_mul(1_000_000));
        self.forget_old_senders(now_ms);
        if idle_ms == 0 {
            return;
        }
        let before = self.rooms.len();
        self.rooms.retain(|_, r| !r.is_idle(now_ms, idle_ms));
        let evicted = before - self.rooms.len();
        if evicted > 0 {
            ShardStats::add(&self.stats().rooms_evicted_total, evicted as u64);
            ShardStats::set(&self.stats().rooms_owned, self.rooms.len() as u64);
        }
    }

    /// A store completion for this shard.
    pub fn completion(&mut self, c: Completion, now_ms: u64) {
        let ticket = c.ticket();
        let Some(wait) = self.waits.remove(&ticket) else {
            tracing::error!(shard = self.cfg.shard, ticket, "store completion for an unknown ticket");
            return;
        };
        match (wait, c) {
            (Wait::Write { room, seq }, Completion::Written { result, .. }) => {
                self.fast_written(&room, seq, result);
                // A change or a page that waited for this write to settle may go on now.
                self.next_change(&room, now_ms);
                self.read_deferred_pages(&room);
                self.read_deferred_fetches(&room);
            }
            (Wait::Durable, Completion::Written { result, .. }) => self.durable_written(ticket, result),
            (wait, Completion::Answered { result, .. }) => self.on_answer(wait, result, now_ms),
            (_, Completion::Written { .. }) => tracing::error!(shard = self.cfg.shard, ticket, "write completion for a query ticket"),
        }
    }

    fn fast_written(&mut self, room: &str, seq: u64, result: Result<(), StoreError>) {
        if let Some(r) = self.rooms.get_mut(room) {
            r.release();
            match result {
                Ok(()) => r.stored(seq),
                Err(_) => r.unstored(seq),
            }
        }
        if let Err(e) = result {
            // Fast mode: the message was already delivered and acked; it is missing from history.
            ShardStats::inc(&self.stats().store_write_failed_total);
            tracing::error!(shard = self.cfg.shard, room, error = %e, "store write failed (fast mode: message delivered, not stored)");
        }
    }

    fn on_answer(&mut self, wait: Wait, result: Result<Answer, StoreError>, now_ms: u64) {
        match (wait, result) {
            (Wait::Load(Step::State { room }), Ok(Answer::RoomState(state))) => self.loaded_state(&room, state, now_ms),
            (Wait::Load(Step::Epoch { room, state }), Ok(Answer::EpochSet)) => self.warm_room(&room, state, now_ms),
            (Wait::Load(Step::Warm { room, state }), Ok(Answer::History(page))) => self.finish_load(&room, state, page, now_ms),
            (Wait::Load(Step::State { room } | Step::Epoch { room, .. } | Step::Warm { room, .. }), result) => {
                let e = match result {
                    Err(e) => e,
                    Ok(other) => unexpected(&other),
                };
                self.fail_load(&room, &LoadFailed::Store(Failure::Store(e)));
            }
            (Wait::History(w), result) => self.history_answered(*w, result),
            (Wait::Reactions(w), result) => self.reactions_answered(*w, result),
            (Wait::Replies(w), result) => self.replies_answered(*w, result),
            (Wait::Mark(mark), result) => self.marked(*mark, result),
            (Wait::LastSeenSet { user, ts_ms }, result) => self.last_seen_stored(user, ts_ms, result),
            (Wait::LastSeen { user, conn, req }, result) => self.last_seen_read(&user, conn, req.as_deref(), result),
            (Wait::Delivered { room }, result) => self.delivered_stored(&room, result),
            (Wait::Member { room, user }, result) => self.member_recorded(&room, &user, result),
            (Wait::Sync { conn, req }, result) => self.synced(conn, req.as_deref(), result),
            (Wait::Change(w), result) => self.change_answered(*w, result, now_ms),
            (
                Wait::Fetch {
                    room,
                    shard,
                    token,
                    after,
                    count,
                },
                result,
            ) => {
                let stored = match result {
                    Ok(Answer::RangeAfter(msgs)) => Ok(msgs),
                    Ok(other) => Err(unexpected(&other)),
                    Err(e) => Err(e),
                };
                let f = FetchArgs {
                    room: &room,
                    shard,
                    token,
                    after,
                    count,
                };
                self.finish_fetch(f, stored);
            }
            (wait @ (Wait::Write { .. } | Wait::Durable), result) => {
                tracing::error!(shard = self.cfg.shard, ?wait, ?result, "query answer for a write ticket");
            }
        }
    }

    /// Load step 1 done: re-epoch after an unclean previous run, else warm.
    fn loaded_state(&mut self, room: &str, state: RoomState, now_ms: u64) {
        if self.cfg.previous_run_clean || state.epoch >= self.cfg.run_epoch {
            return self.warm_room(room, state, now_ms);
        }
        let state = RoomState {
            epoch: self.cfg.run_epoch,
            ..state
        };
        let query = Query::SetEpoch {
            room: room.to_owned(),
            epoch: state.epoch,
        };
        let step = Step::Epoch {
            room: room.to_owned(),
            state,
        };
        if !self.submit_query(query, Wait::Load(step)) {
            self.fail_load(room, &LoadFailed::StoreBusy);
        }
    }

    /// Load step 3: read the newest messages (none to read in a new room).
    fn warm_room(&mut self, room: &str, state: RoomState, now_ms: u64) {
        if state.last_seq == 0 {
            let empty = HistoryPage {
                messages: Vec::new(),
                next_before: None,
            };
            return self.finish_load(room, state, empty, now_ms);
        }
        let limit = self
            .cfg
            .dedupe_per_room
            .max(self.cfg.recent_per_room)
            .clamp(1, storage::MAX_PAGE_MESSAGES);
        let query = Query::History {
            room: room.to_owned(),
            before: None,
            limit,
        };
        let step = Step::Warm {
            room: room.to_owned(),
            state,
        };
        if !self.submit_query(query, Wait::Load(step)) {
            self.fail_load(room, &LoadFailed::StoreBusy);
        }
    }

    /// Load step 4: the room is in memory; replay what waited for it.
    fn finish_load(&mut self, room: &str, state: RoomState, page: HistoryPage, now_ms: u64) {
        let mut r = OwnedRoom::restore(
            room,
            self.cfg.shards,
            state.epoch,
            state.last_seq,
            self.cfg.dedupe_per_room,
            self.cfg.recent_per_room,
        )
        .with_recent_max_bytes(self.cfg.recent_per_room_bytes);
        r.touch(now_ms);
        for m in page.messages {
            let StoredMessage {
                seq,
                msg_id,
                sender,
                ts_ms,
                client_id,
                frame,
                reply_to,
                ..
            } = m;
            r.warm(seq, &sender, client_id.as_deref(), &msg_id, ts_ms, frame);
            if let Some(root) = reply_to.filter(|_| seq <= state.last_seq) {
                r.note_reply(seq, root);
            }
        }
        self.rooms.insert(room.to_owned(), r);
        ShardStats::set(&self.stats().rooms_owned, self.rooms.len() as u64);
        let queued = self.loading.rooms.remove(room).unwrap_or_default();
        for op in queued {
            self.replay(room, op, now_ms);
        }
    }

    fn replay(&mut self, room: &str, op: Op, now_ms: u64) {
        match op {
            Op::Subscribe { shard, token, user } => self.subscribe(room, shard, token, user.as_deref(), now_ms),
            Op::Fetch {
                shard,
                token,
                after,
                count,
            } => {
                let f = FetchArgs {
                    room,
                    shard,
                    token,
                    after,
                    count,
                };
                self.fetch(f, now_ms);
            }
            Op::History {
                user,
                conn,
                req,
                before,
                limit,
                thread,
            } => {
                let h = HistoryArgs {
                    room,
                    user: &user,
                    conn,
                    req: req.as_deref(),
                    before,
                    limit,
                    thread,
                };
                self.history(h, now_ms);
            }
            Op::Send(s) => self.send(&SendArgs::of_msg(&s), now_ms),
            Op::Change(c) => self.change(*c, now_ms),
        }
    }

    /// A load failed: answer everything queued and forget the room.
    fn fail_load(&mut self, room: &str, why: &LoadFailed) {
        ShardStats::inc(&self.stats().store_load_failed_total);
        tracing::warn!(shard = self.cfg.shard, room, error = %why, "room load from the store failed");
        let queued = self.loading.rooms.remove(room).unwrap_or_default();
        for op in queued {
            let answer = match op {
                Op::Subscribe { shard, token, .. } => Effect::Subscribed {
                    shard,
                    token,
                    result: Err(why.refusal()),
                },
                Op::Fetch { shard, token, .. } => Effect::Fetched {
                    shard,
                    token,
                    result: Err(why.refusal()),
                },
                Op::Send(s) => Effect::Reply {
                    conn: s.conn,
                    payload: why.reply(s.req.as_deref()),
                },
                Op::Change(c) => Effect::Reply {
                    conn: c.conn,
                    payload: why.reply(c.req.as_deref()),
                },
                Op::History { conn, req, .. } => Effect::Reply {
                    conn,
                    payload: why.reply(req.as_deref()),
                },
            };
            self.effects.push_back(answer);
        }
    }
}
