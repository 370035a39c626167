//! The shard's side of the store service: tickets, what each ticket waits
//! for, the completions task, and loading a room's state before its owner
//! acts on it.
//!
//! Loading a room (first request for it on its owner shard):
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
//! completion arrives (the store service answers every admitted request);
//! a room's load queue is bounded by `room_load_queue_max`; a failed load
//! answers every queued request (`unavailable`) and forgets the room, so the
//! next request tries again.

use std::rc::Rc;

use bytes::Bytes;
use router::Frame;
use storage::{Answer, Completion, HistoryPage, Query, RoomState, StoreError, StoredMessage};

use super::owner::{CatchUpDone, SendArgs, JOIN_CANCELLED};
use super::Shard;
use crate::engine::{Busy, Failure};
use crate::metrics::ShardStats;
use crate::protocol::server;
use crate::protocol::ErrorCode;
use crate::room::{fit_page, AckInfo, OwnedRoom};

/// Completions handled per wake-up before yielding to connection tasks.
const DRAIN_BATCH: usize = 512;

/// A durable send waiting for its commit.
pub(super) struct PendingSend {
    pub(super) room: String,
    pub(super) user: String,
    pub(super) client_id: Option<String>,
    pub(super) ack: AckInfo,
    pub(super) rendered: Bytes,
    /// Connections (and request ids) to ack once committed: the sender, and retries of its client id.
    pub(super) waiters: Vec<(u64, Option<String>)>,
}

/// What a store ticket is waiting for.
pub(super) enum Wait {
    /// Step 1 of a room load.
    Load { room: String },
    /// Step 2: the new epoch is being written.
    Epoch { room: String, state: RoomState },
    /// Step 3: the newest messages, to warm the ring and the dedupe memory.
    Warm { room: String, state: RoomState },
    /// A fast-mode write (already published).
    Write { room: String },
    /// A durable-mode write (published when committed).
    Durable(Box<PendingSend>),
    /// A history page for a connection.
    History { room: String, conn: u64, req: Option<String> },
    /// Catch-up for a join with `since`.
    CatchUp {
        room: String,
        shard: usize,
        conn: u64,
        req: Option<String>,
        since: u64,
    },
}

/// Whether the owner can act on a room now.
pub(super) enum Readiness {
    /// Loaded: go ahead.
    Ready,
    /// Being loaded: the request waits in the room's queue.
    Queued,
    /// Cannot be loaded now (a bound is reached): answer `overloaded` with this message.
    Refused(&'static str),
}

/// Why a room could not be loaded.
enum LoadFailed {
    /// The store's query queue was full.
    StoreBusy,
    /// The store answered with an error.
    Store(Failure),
}

impl LoadFailed {
    fn reply(&self, req: Option<&str>) -> Bytes {
        match self {
            Self::StoreBusy => Busy::Store.reply(req, "room state unavailable: message store busy, retry"),
            Self::Store(f) => f.reply(req, "room state unavailable"),
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
fn unexpected(answer: &Answer) -> StoreError {
    StoreError::Internal(format!("unexpected answer {answer:?}"))
}

pub(super) async fn run_completions(shard: Rc<Shard>) {
    loop {
        shard.completions.ready().await;
        let n = shard.completions.drain(DRAIN_BATCH, |c| shard.on_completion(c));
        if n == DRAIN_BATCH {
            monoio::time::sleep(std::time::Duration::ZERO).await;
        }
    }
}

impl Shard {
    /// A fresh ticket for a store request of this shard.
    pub(super) fn take_ticket(&self) -> u64 {
        let t = self.next_ticket.get() + 1;
        self.next_ticket.set(t);
        t
    }

    /// Submits a query and remembers what it waits for; false when the store refused it (overloaded).
    pub(super) fn submit_query(&self, query: Query, wait: Wait) -> bool {
        let ticket = self.take_ticket();
        if self.store.query(self.id, query, ticket).is_err() {
            ShardStats::inc(&self.stats().store_overloaded_total);
            return false;
        }
        self.waits.borrow_mut().insert(ticket, wait);
        true
    }

    /// Whether `room` is loaded; if not, queues `op` (built only then) and starts the load.
    pub(super) fn room_ready(&self, room: &str, op: impl FnOnce() -> Frame) -> Readiness {
        if self.owned.borrow().contains_key(room) {
            return Readiness::Ready;
        }
        let mut loading = self.loading.borrow_mut();
        if let Some(queue) = loading.get_mut(room) {
            if queue.len() >= self.cfg.room_load_queue_max {
                return Readiness::Refused("room is loading, retry");
            }
            queue.push(op());
            return Readiness::Queued;
        }
        if self.owned.borrow().len() + loading.len() >= self.cfg.max_rooms_per_shard && !self.evict_one() {
            return Readiness::Refused("too many rooms on this shard");
        }
        loading.insert(room.to_owned(), vec![op()]);
        drop(loading);
        let query = Query::RoomState {
            room: room.to_owned(),
            new_epoch: Self::now_ms(),
        };
        if !self.submit_query(query, Wait::Load { room: room.to_owned() }) {
            self.loading.borrow_mut().remove(room);
            return Readiness::Refused("message store busy, retry");
        }
        Readiness::Queued
    }

    /// Drops one room that has no members and no store work out; false when none can go.
    fn evict_one(&self) -> bool {
        let mut owned = self.owned.borrow_mut();
        let Some(victim) = owned.iter().find(|(_, r)| r.is_evictable()).map(|(k, _)| k.clone()) else {
            return false;
        };
        owned.remove(&victim);
        ShardStats::set(&self.stats().rooms_owned, owned.len() as u64);
        true
    }

    /// Removes a join of `conn` still queued behind a room load (answering it as cancelled);
    /// true when there was one.
    pub(super) fn drop_queued_join(&self, room: &str, conn: u64) -> bool {
        let dropped: Vec<Frame> = {
            let mut loading = self.loading.borrow_mut();
            let Some(queue) = loading.get_mut(room) else { return false };
            let (dropped, kept) = std::mem::take(queue)
                .into_iter()
                .partition(|f| matches!(f, Frame::Join { conn: c, .. } if *c == conn));
            *queue = kept;
            dropped
        };
        for f in &dropped {
            if let Frame::Join { req, .. } = f {
                self.to_conn(conn, server::error(req.as_deref(), ErrorCode::BadRequest, JOIN_CANCELLED, None));
            }
        }
        !dropped.is_empty()
    }

    fn on_completion(&self, c: Completion) {
        let ticket = c.ticket();
        let Some(wait) = self.waits.borrow_mut().remove(&ticket) else {
            tracing::error!(shard = self.id, ticket, "store completion for an unknown ticket");
            return;
        };
        match (wait, c) {
            (Wait::Write { room }, Completion::Written { result, .. }) => self.fast_written(&room, result),
            (Wait::Durable(p), Completion::Written { result, .. }) => match result {
                Ok(()) => self.publish_durable(*p),
                Err(e) => {
                    ShardStats::inc(&self.stats().store_write_failed_total);
                    tracing::error!(shard = self.id, room = %p.room, seq = p.ack.seq, error = %e, "durable write failed");
                    self.fail_durable(*p, &Failure::Store(e));
                }
            },
            (wait, Completion::Answered { result, .. }) => self.on_answer(wait, result),
            (_, Completion::Written { .. }) => tracing::error!(shard = self.id, ticket, "write completion for a query ticket"),
        }
    }

    fn fast_written(&self, room: &str, result: Result<(), StoreError>) {
        self.with_loaded(room, OwnedRoom::release);
        if let Err(e) = result {
            // Fast mode: the message was already delivered and acked; it is missing from history.
            ShardStats::inc(&self.stats().store_write_failed_total);
            tracing::error!(shard = self.id, room, error = %e, "store write failed (fast mode: message delivered, not stored)");
        }
    }

    fn on_answer(&self, wait: Wait, result: Result<Answer, StoreError>) {
        match (wait, result) {
            (Wait::Load { room }, Ok(Answer::RoomState(state))) => self.loaded_state(&room, state),
            (Wait::Epoch { room, state }, Ok(Answer::EpochSet)) => self.warm_room(&room, state),
            (Wait::Warm { room, state }, Ok(Answer::History(page))) => self.finish_load(&room, state, page),
            (Wait::History { room, conn, req }, Ok(Answer::History(page))) => {
                let messages = page.messages.into_iter().map(|m| (m.seq, m.frame)).collect();
                let (frames, next) = fit_page(messages, page.next_before, self.cfg.history_page_max_bytes);
                self.to_conn(conn, server::history(req.as_deref(), &room, &frames, next));
            }
            (Wait::History { conn, req, .. }, Err(e)) => {
                self.to_conn(conn, Failure::Store(e).reply(req.as_deref(), "history store unavailable"));
            }
            (
                Wait::CatchUp {
                    room,
                    shard,
                    conn,
                    req,
                    since,
                },
                result,
            ) => {
                let stored = match result {
                    Ok(Answer::RangeAfter(msgs)) => Ok(msgs),
                    Ok(other) => Err(unexpected(&other)),
                    Err(e) => Err(e),
                };
                let done = CatchUpDone {
                    room: &room,
                    shard,
                    conn,
                    req: req.as_deref(),
                    since,
                };
                self.finish_catch_up(done, stored);
            }
            (Wait::Load { room } | Wait::Epoch { room, .. } | Wait::Warm { room, .. }, result) => {
                let e = match result {
                    Err(e) => e,
                    Ok(other) => unexpected(&other),
                };
                self.fail_load(&room, &LoadFailed::Store(Failure::Store(e)));
            }
            (_, result) => tracing::error!(shard = self.id, ?result, "store answer does not match its request"),
        }
    }

    /// Load step 1 done: re-epoch after an unclean previous run, else warm.
    fn loaded_state(&self, room: &str, state: RoomState) {
        if self.previous_run_clean || state.epoch >= self.run_epoch {
            return self.warm_room(room, state);
        }
        let state = RoomState {
            epoch: self.run_epoch,
            ..state
        };
        let query = Query::SetEpoch {
            room: room.to_owned(),
            epoch: state.epoch,
        };
        if !self.submit_query(
            query,
            Wait::Epoch {
                room: room.to_owned(),
                state,
            },
        ) {
            self.fail_load(room, &LoadFailed::StoreBusy);
        }
    }

    /// Load step 3: read the newest messages (none to read in a new room).
    fn warm_room(&self, room: &str, state: RoomState) {
        if state.last_seq == 0 {
            let empty = HistoryPage {
                messages: Vec::new(),
                next_before: None,
            };
            return self.finish_load(room, state, empty);
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
        if !self.submit_query(
            query,
            Wait::Warm {
                room: room.to_owned(),
                state,
            },
        ) {
            self.fail_load(room, &LoadFailed::StoreBusy);
        }
    }

    /// Load step 4: the room is in memory; replay what waited for it.
    fn finish_load(&self, room: &str, state: RoomState, page: HistoryPage) {
        let mut r = OwnedRoom::restore(
            room,
            self.shards,
            state.epoch,
            state.last_seq,
            self.cfg.dedupe_per_room,
            self.cfg.recent_per_room,
        );
        for m in page.messages {
            let StoredMessage {
                seq,
                msg_id,
                sender,
                ts_ms,
                client_id,
                frame,
                ..
            } = m;
            r.warm(seq, &sender, client_id.as_deref(), &msg_id, ts_ms, frame);
        }
        {
            let mut owned = self.owned.borrow_mut();
            owned.insert(room.to_owned(), r);
            ShardStats::set(&self.stats().rooms_owned, owned.len() as u64);
        }
        let queued = self.loading.borrow_mut().remove(room).unwrap_or_default();
        for op in &queued {
            self.replay(op);
        }
    }

    fn replay(&self, op: &Frame) {
        match op {
            Frame::Join {
                room,
                shard,
                conn,
                req,
                since,
                ..
            } => self.owner_join(room, usize::from(*shard), *conn, req.as_deref(), *since),
            Frame::History {
                room,
                conn,
                req,
                before,
                limit,
            } => self.owner_history(room, *conn, req.as_deref(), *before, *limit),
            Frame::Send { .. } => {
                if let Some(a) = SendArgs::from_frame(op) {
                    self.owner_send(&a);
                }
            }
            other => tracing::error!(shard = self.id, ?other, "unexpected frame in a room load queue"),
        }
    }

    /// A load failed: answer everything queued and forget the room.
    fn fail_load(&self, room: &str, why: &LoadFailed) {
        ShardStats::inc(&self.stats().store_load_failed_total);
        tracing::warn!(shard = self.id, room, error = %why, "room load from the store failed");
        let queued = self.loading.borrow_mut().remove(room).unwrap_or_default();
        for op in queued {
            match op {
                Frame::Join { shard, conn, req, .. } => {
                    self.refuse_join(room, usize::from(shard), conn, why.reply(req.as_deref()));
                }
                Frame::Send { conn, req, .. } | Frame::History { conn, req, .. } => {
                    self.to_conn(conn, why.reply(req.as_deref()));
                }
                _ => {}
            }
        }
    }
}
