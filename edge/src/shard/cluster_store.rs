//! Cluster mode with a shared store (PostgreSQL or Scylla; `store_writes`): the node whose
//! shard published a message writes it to the store once Redis gave it its seq (the batching
//! writer groups them), and `history` reads what the room's Redis stream no longer holds from
//! the store. With the embedded store (one per node) a cluster keeps only the stream.
//!
//! A store query from a task waits on its ticket here; the shard's completion loop hands it
//! the answer. A failed write is counted (`edge_store_write_failed_total`) and logged. In
//! fast mode acks come when Redis sequenced the message and the writer holds the writes of a
//! store that is down (see `Publisher::admit` for the bound); in durable mode an ack waits for
//! its write's commit, and a failed write answers its sender `unavailable`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::task::{Poll, Waker};

use storage::{Answer, Completion, Query, StoreError, StoredMessage};

use bytes::Bytes;

use super::sequencer::RedisSequencer;
use super::Shard;
use crate::engine::{Busy, Failure};
use crate::metrics::ShardStats;
use crate::protocol::server;
use crate::protocol::ErrorCode;

/// One query's answer, and the task waiting for it.
#[derive(Default)]
struct Slot {
    answer: Cell<Option<Result<Answer, StoreError>>>,
    waker: Cell<Option<Waker>>,
}

/// Shared-store queries in flight on one shard, by ticket; and the acks that wait for their
/// message's commit (`durable`), by the write's ticket.
#[derive(Default)]
pub(crate) struct StoreQueries(RefCell<HashMap<u64, Rc<Slot>>>, RefCell<HashMap<u64, (u64, Bytes)>>);

impl Shard {
    /// Whether this cluster node writes its messages to, and reads old history from, a shared store.
    pub(super) fn shared_store(&self) -> bool {
        self.cfg.store != storage::StoreKind::Embedded
    }

    /// A message Redis sequenced on this shard, for the shared store; `ack` (durable mode)
    /// goes to its connection once the write is committed.
    pub(super) fn cluster_store_write(&self, msg: StoredMessage, ack: Option<(u64, Bytes)>) {
        let super::sequencer::Sequencer::Redis(r) = &self.sequencer else {
            return;
        };
        // A DM's two users belong to its room, joined or not (`sync` lists it for both).
        if let (Some((a, b)), Some(me)) = (crate::auth::dm_participants(&msg.room), self.rc()) {
            me.cluster_member(&msg.room, a);
            me.cluster_member(&msg.room, b);
        }
        let ticket = self.take_ticket();
        if let Some(ack) = ack {
            r.store_queries.1.borrow_mut().insert(ticket, ack);
        }
        if self.store.write(self.id, msg, ticket).is_err() {
            ShardStats::inc(&self.stats().store_overloaded_total);
            tracing::warn!(
                shard = self.id,
                "cluster: the store's write queue is full: a sequenced message was not stored"
            );
            if let Some((conn, ack)) = r.store_queries.1.borrow_mut().remove(&ticket) {
                let msg = "sequenced and delivered, but the store's write queue is full: not stored";
                self.to_conn(
                    conn,
                    server::error(request_id(&ack).as_deref(), ErrorCode::Overloaded, msg, Some(1000)),
                );
            }
        }
    }

    /// A store completion in cluster mode: a query's answer to its waiting task, a failed
    /// write counted.
    pub(super) fn cluster_store_completion(&self, r: &RedisSequencer, c: Completion) {
        match c {
            Completion::Written { ticket, result: Ok(()) } => {
                if let Some((conn, ack)) = r.store_queries.1.borrow_mut().remove(&ticket) {
                    self.to_conn(conn, ack);
                }
            }
            Completion::Written { ticket, result: Err(e) } => {
                ShardStats::inc(&self.stats().store_write_failed_total);
                tracing::warn!(shard = self.id, error = %e, "cluster: a sequenced message could not be stored");
                if let Some((conn, ack)) = r.store_queries.1.borrow_mut().remove(&ticket) {
                    let msg = "sequenced and delivered, but not stored: the store failed";
                    self.to_conn(
                        conn,
                        server::error(request_id(&ack).as_deref(), ErrorCode::Unavailable, msg, Some(1000)),
                    );
                }
            }
            Completion::Answered { ticket, result } => {
                if let Some(slot) = r.store_queries.0.borrow_mut().remove(&ticket) {
                    slot.answer.set(Some(result));
                    if let Some(w) = slot.waker.take() {
                        w.wake();
                    }
                }
            }
        }
    }

    /// Runs `query` on the shared store and waits for its answer; a full queue to the store
    /// is `Busy::Store` (`overloaded`, with its retry hint).
    pub(super) async fn cluster_store_query(&self, query: Query) -> Result<Answer, Failure> {
        let super::sequencer::Sequencer::Redis(r) = &self.sequencer else {
            return Err(StoreError::Internal("a store query from a task needs cluster mode".into()).into());
        };
        let ticket = self.take_ticket();
        let slot = Rc::new(Slot::default());
        r.store_queries.0.borrow_mut().insert(ticket, slot.clone());
        if self.store.query(self.id, query, ticket).is_err() {
            r.store_queries.0.borrow_mut().remove(&ticket);
            return Err(Failure::Busy(Busy::Store));
        }
        std::future::poll_fn(|cx| match slot.answer.take() {
            Some(a) => Poll::Ready(a.map_err(Failure::Store)),
            None => {
                slot.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}

/// A shared-store query bounded by `limit`: its error kept, `StoreTimedOut` when late.
pub(super) async fn timed_store(shard: &Shard, limit: std::time::Duration, query: Query) -> Result<Answer, Failure> {
    match monoio::time::timeout(limit, shard.cluster_store_query(query)).await {
        Ok(answer) => answer,
        Err(_) => Err(Failure::StoreTimedOut),
    }
}

/// The request id (raw JSON) an ack answers, read back from the ack.
fn request_id(ack: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(ack).ok()?;
    v.get("id").map(serde_json::Value::to_string)
}
