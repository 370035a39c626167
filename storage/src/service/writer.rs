//! The group-commit writer: collects queued writes into batches and writes them one after another.
//!
//! Batching rule: wait for a first write; then take everything already queued,
//! and keep waiting for more until the batch holds `batch_max_messages` or
//! `flush_interval_us` has passed since the first one arrived (0: don't wait).
//! One `write_batch` per batch.
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
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::mpsc::UnboundedReceiver;
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
}

impl<S: MessageStore> Writer<S> {
    pub(super) fn new(store: Arc<S>, rx: UnboundedReceiver<WriteCmd>, outbox: Arc<Outbox>, settings: Settings) -> Self {
        Self {
            store,
            rx,
            outbox,
            settings,
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
        while batch.msgs.len() < self.settings.batch_max {
            let cmd = match self.rx.try_recv() {
                Ok(cmd) => cmd,
                Err(TryRecvError::Disconnected) => return true,
                Err(TryRecvError::Empty) if self.settings.flush_interval.is_zero() => return false,
                Err(TryRecvError::Empty) => match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                    Ok(Some(cmd)) => cmd,
                    Ok(None) => return true,
                    Err(_elapsed) => return false,
                },
            };
            if self.take(cmd, batch) {
                return true;
            }
        }
        false
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
