//! The group-commit writer: collects queued writes into batches and writes them one after another.
//!
//! Batching rule: wait for a first write; then take everything already queued,
//! and keep waiting for more until the batch holds `batch_max_messages` or
//! `flush_interval_us` has passed since the first one arrived (0: don't wait).
//! One `write_batch` per batch.
//!
//! Wake-ups: only the first write of a batch wakes this thread. It then sleeps
//! to the batch's deadline, not waiting on the channel, so later writes wake
//! nothing; a write that fills the batch wakes it early ([`Fill`]). Woken per
//! write, the store thread cost a context switch on the serving core for every
//! message (results/store-wakeups-20261205.txt).
//!
//! Invariants:
//! - batches are written strictly in sequence (the next batch is collected
//!   only after the previous one completed), and a batch keeps queue order,
//!   so messages of a room are committed in the order they were submitted;
//! - a failed batch is tried again, up to `write_attempts` in all, waiting
//!   `write_retry_backoff_ms` and doubling, when the error is retryable; then
//!   every ticket of the batch completes with the error. With
//!   `write_retry_forever` a retryable failure is tried until it succeeds:
//!   later writes wait in the queue (bounded by `queue_capacity`);
//! - a retryable failure marks the store unavailable (`StoreStats::unavailable`)
//!   until a write succeeds, or, while nothing waits, a probe (`ping`, every
//!   `MAX_BACKOFF`) does;
//! - every ticket gets exactly one `Written` completion, after the outcome is known
//!   (a panic inside the store is caught and completes the batch with `Internal`);
//! - a shutdown command is seen after every write submitted before it, so the
//!   final batch flushes them all.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Completion, Outbox, WriteCmd};
use crate::{MessageStore, StoreConfig, StoreError, StoredMessage};

/// Longest wait between two attempts of a failing batch.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The writer's part of [`StoreConfig`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Settings {
    batch_max: usize,
    flush_interval: Duration,
    attempts: u32,
    forever: bool,
    backoff: Duration,
}

impl Settings {
    pub(super) fn from_config(cfg: &StoreConfig) -> Self {
        Self {
            batch_max: cfg.batch_max_messages,
            flush_interval: Duration::from_micros(cfg.flush_interval_us),
            attempts: cfg.write_attempts,
            forever: cfg.write_retry_forever,
            backoff: Duration::from_millis(cfg.write_retry_backoff_ms),
        }
    }
}

/// How a write that fills the batch being collected wakes the writer, which sleeps to the
/// batch's deadline meanwhile (shared with the senders, [`super::StoreHandle::write`]).
#[derive(Debug)]
pub(super) struct Fill {
    /// Queued writes (`write_queue_depth`) at which the batch is full; `u64::MAX` while
    /// the writer is not sleeping on a batch.
    wake_at: AtomicU64,
    full: Notify,
}

impl Default for Fill {
    fn default() -> Self {
        Self {
            wake_at: AtomicU64::new(u64::MAX),
            full: Notify::new(),
        }
    }
}

impl Fill {
    /// A write was queued, making `depth` queued: wakes the writer when that fills its batch.
    pub(super) fn queued(&self, depth: u64) {
        if depth >= self.wake_at.load(SeqCst) {
            self.full.notify_one();
        }
    }

    /// Ends the writer's wait for its batch now (a shutdown was queued: it commits at once).
    pub(super) fn wake(&self) {
        self.full.notify_one();
    }
}

/// One batch being collected: the messages and, in the same order, who to answer.
#[derive(Default)]
struct Batch {
    msgs: Vec<StoredMessage>,
    tickets: Vec<(usize, u64)>,
}

pub(super) struct Writer<S> {
    store: Arc<S>,
    rx: UnboundedReceiver<WriteCmd>,
    outbox: Arc<Outbox>,
    settings: Settings,
    fill: Arc<Fill>,
}

impl<S: MessageStore> Writer<S> {
    pub(super) fn new(store: Arc<S>, rx: UnboundedReceiver<WriteCmd>, outbox: Arc<Outbox>, settings: Settings, fill: Arc<Fill>) -> Self {
        Self {
            store,
            rx,
            outbox,
            settings,
            fill,
        }
    }

    /// Runs until a shutdown command (or a closed channel); returns the receiver so late arrivals can be failed.
    pub(super) async fn run(mut self) -> UnboundedReceiver<WriteCmd> {
        let mut batch = Batch {
            msgs: Vec::with_capacity(self.settings.batch_max),
            tickets: Vec::with_capacity(self.settings.batch_max),
        };
        loop {
            let stop = self.collect(&mut batch).await;
            if !batch.msgs.is_empty() {
                self.commit(&mut batch).await;
            }
            if stop {
                return self.rx;
            }
        }
    }

    /// Adds a command to the batch; returns true when it is the shutdown command.
    fn take(&self, cmd: WriteCmd, batch: &mut Batch) -> bool {
        match cmd {
            WriteCmd::Write { shard, msg, ticket } => {
                self.outbox.stats.write_queue_depth.fetch_sub(1, Relaxed);
                batch.msgs.push(msg);
                batch.tickets.push((shard, ticket));
                false
            }
            WriteCmd::Shutdown => true,
        }
    }

    /// Fills `batch` by the batching rule; returns true when the writer must stop after committing it.
    async fn collect(&mut self, batch: &mut Batch) -> bool {
        let first = loop {
            if !self.outbox.stats.unavailable() {
                break self.rx.recv().await;
            }
            // Unreachable and idle: probe now and then, so the store is seen back without a write.
            match tokio::time::timeout(MAX_BACKOFF, self.rx.recv()).await {
                Ok(cmd) => break cmd,
                Err(_elapsed) => {
                    let probe = AssertUnwindSafe(self.store.ping()).catch_unwind().await;
                    if matches!(probe, Ok(Ok(()))) {
                        self.outbox.stats.set_unavailable(false, None);
                    }
                }
            }
        };
        let Some(first) = first else { return true };
        if self.take(first, batch) {
            return true;
        }
        let deadline = Instant::now() + self.settings.flush_interval;
        loop {
            while batch.msgs.len() < self.settings.batch_max {
                let cmd = match self.rx.try_recv() {
                    Ok(cmd) => cmd,
                    Err(TryRecvError::Disconnected) => return true,
                    Err(TryRecvError::Empty) => break,
                };
                if self.take(cmd, batch) {
                    return true;
                }
            }
            if batch.msgs.len() >= self.settings.batch_max || Instant::now() >= deadline {
                return false;
            }
            // Sleep to the deadline, off the channel: a send to a receiver that is not waiting
            // on it wakes nothing. Only the write that fills the batch wakes it early.
            let left = (self.settings.batch_max - batch.msgs.len()) as u64;
            self.fill.wake_at.store(left, SeqCst);
            if self.outbox.stats.write_queue_depth.load(SeqCst) < left {
                let _ = tokio::time::timeout_at(deadline, self.fill.full.notified()).await;
            }
            self.fill.wake_at.store(u64::MAX, SeqCst);
        }
    }

    /// Writes the batch (with retries), records the outcome, completes every ticket, and empties the batch.
    async fn commit(&self, batch: &mut Batch) {
        let stats = &self.outbox.stats;
        let n = batch.msgs.len() as u64;
        let result = self.write_with_retries(&batch.msgs).await;
        match &result {
            Ok(()) => {
                stats.batches_total.fetch_add(1, Relaxed);
                stats.messages_written_total.fetch_add(n, Relaxed);
                stats.last_batch_messages.store(n, Relaxed);
            }
            Err(e) => {
                stats.write_errors_total.fetch_add(n, Relaxed);
                tracing::error!(messages = n, error = %e, "store: batch failed; completing its writes with the error");
            }
        }
        let mut per_shard: Vec<Vec<Completion>> = vec![Vec::new(); self.outbox.queues.len()];
        for &(shard, ticket) in &batch.tickets {
            per_shard[shard].push(Completion::Written {
                ticket,
                result: result.clone(),
            });
        }
        for (shard, completions) in per_shard.into_iter().enumerate() {
            if !completions.is_empty() {
                self.outbox.queues[shard].push_all(completions);
            }
        }
        batch.msgs.clear();
        batch.tickets.clear();
    }

    async fn write_with_retries(&self, msgs: &[StoredMessage]) -> Result<(), StoreError> {
        let stats = &self.outbox.stats;
        let mut backoff = self.settings.backoff;
        let mut attempt = 1;
        loop {
            let started = Instant::now();
            // A panic inside the store must still complete the batch's tickets: catch it as an error.
            let outcome = AssertUnwindSafe(self.store.write_batch(msgs)).catch_unwind().await;
            match outcome.unwrap_or_else(|_| Err(StoreError::Internal("write_batch panicked".into()))) {
                Ok(()) => {
                    let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                    stats.commit_latency.record_us(us);
                    stats.last_commit_us.store(us, Relaxed);
                    self.outbox.stats.set_unavailable(false, None);
                    return Ok(());
                }
                Err(e) if e.is_retryable() && (self.settings.forever || attempt < self.settings.attempts) => {
                    self.outbox.stats.set_unavailable(true, Some(&e));
                    stats.write_retries_total.fetch_add(1, Relaxed);
                    let held = stats.write_queue_depth.load(Relaxed) + msgs.len() as u64;
                    tracing::warn!(attempt, held, error = %e, "store: batch failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    attempt += 1;
                }
                Err(e) => {
                    if e.is_retryable() {
                        self.outbox.stats.set_unavailable(true, Some(&e));
                    }
                    return Err(e);
                }
            }
        }
    }
}
