//! The store thread's body: build the runtime, open the store, `begin_run`, run the writer and the
//! query lanes until shutdown, `end_run`, and fail whatever arrived too late.
//!
//! Invariants: `spawn` learns the outcome of opening the store and of
//! `begin_run` before it returns; `end_run` runs only on a requested shutdown
//! (a dropped handle or a crash leaves the run open, so the next start sees an
//! unclean end); requests that raced the shutdown are completed with
//! [`StoreError::ShuttingDown`], after their channels are closed so no more can arrive.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;

use super::{queries, writer, Completion, Outbox, QueryCmd, WriteCmd};
use crate::{MessageStore, StoreError};

/// Longest wait for blocking-pool threads (SQLite calls) when the runtime is dropped.
const RUNTIME_DROP_TIMEOUT: Duration = Duration::from_secs(5);

/// Blocking-pool threads beyond `query_concurrency`: the writer's calls, and the store's
/// own (room states, marks, last seen) that do not go through the query lanes.
const BLOCKING_SPARE: usize = 8;

/// How long an idle blocking-pool thread stays (tokio's default is 10 s): a pool that
/// shrinks and grows again with every burst leaves the exited threads' allocator pages behind.
const BLOCKING_KEEP_ALIVE: Duration = Duration::from_secs(300);

pub(super) struct Ctx {
    pub(super) writer: writer::Settings,
    pub(super) query_concurrency: usize,
    pub(super) node_id: String,
    pub(super) outbox: Arc<Outbox>,
    pub(super) shutdown_requested: Arc<AtomicBool>,
    pub(super) fill: Arc<writer::Fill>,
}

pub(super) fn main<S, F, Fut>(
    open: F,
    ctx: Ctx,
    write_rx: UnboundedReceiver<WriteCmd>,
    query_rx: UnboundedReceiver<QueryCmd>,
    ready: SyncSender<Result<bool, StoreError>>,
    done: SyncSender<Result<(), StoreError>>,
) where
    S: MessageStore,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<S, StoreError>>,
{
    // The blocking pool runs the embedded store's SQLite calls. Without a bound it grew to one
    // thread per call waiting on a connection's lock (148 threads after 15 minutes of churn,
    // each with its own stack and allocator heap: resident memory rose in steps with each
    // burst). More threads than queries and the writer can run at once only wait.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("store-blocking")
        .max_blocking_threads(ctx.query_concurrency + BLOCKING_SPARE)
        .thread_keep_alive(BLOCKING_KEEP_ALIVE)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(StoreError::Internal(format!("cannot build the store runtime: {e}"))));
            return;
        }
    };
    let end = rt.block_on(async move {
        let store = match open().await {
            Ok(store) => Arc::new(store),
            Err(e) => {
                let _ = ready.send(Err(e));
                return None;
            }
        };
        match store.begin_run(&ctx.node_id).await {
            Ok(clean) => {
                let _ = ready.send(Ok(clean));
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                return None;
            }
        }
        Some(serve(store, ctx, write_rx, query_rx).await)
    });
    rt.shutdown_timeout(RUNTIME_DROP_TIMEOUT);
    if let Some(end) = end {
        let _ = done.send(end);
    }
}

/// Runs until both the writer and the query lanes have seen their shutdown (or their channel closed).
async fn serve<S: MessageStore>(
    store: Arc<S>,
    ctx: Ctx,
    write_rx: UnboundedReceiver<WriteCmd>,
    query_rx: UnboundedReceiver<QueryCmd>,
) -> Result<(), StoreError> {
    let w = writer::Writer::new(
        Arc::clone(&store),
        write_rx,
        Arc::clone(&ctx.outbox),
        ctx.writer,
        Arc::clone(&ctx.fill),
    );
    let writer_task = tokio::spawn(w.run());
    let query_task = tokio::spawn(queries::run(
        Arc::clone(&store),
        query_rx,
        Arc::clone(&ctx.outbox),
        ctx.query_concurrency,
    ));
    let write_rx = writer_task
        .await
        .map_err(|e| StoreError::Internal(format!("store writer failed: {e}")))?;
    let query_rx = query_task
        .await
        .map_err(|e| StoreError::Internal(format!("store query lanes failed: {e}")))?;
    let end = if ctx.shutdown_requested.load(Ordering::Acquire) {
        store.end_run(&ctx.node_id).await
    } else {
        Ok(())
    };
    fail_late_arrivals(write_rx, query_rx, &ctx.outbox);
    end
}

/// Closes both channels and completes anything still in them with `ShuttingDown`.
fn fail_late_arrivals(mut write_rx: UnboundedReceiver<WriteCmd>, mut query_rx: UnboundedReceiver<QueryCmd>, outbox: &Outbox) {
    write_rx.close();
    query_rx.close();
    while let Ok(cmd) = write_rx.try_recv() {
        if let WriteCmd::Write { shard, ticket, .. } = cmd {
            outbox.stats.write_queue_depth.fetch_sub(1, Ordering::Relaxed);
            outbox.stats.write_errors_total.fetch_add(1, Ordering::Relaxed);
            outbox.queues[shard].push_all([Completion::Written {
                ticket,
                result: Err(StoreError::ShuttingDown),
            }]);
        }
    }
    while let Ok(cmd) = query_rx.try_recv() {
        if let QueryCmd::Query { shard, ticket, .. } = cmd {
            outbox.stats.query_queue_depth.fetch_sub(1, Ordering::Relaxed);
            outbox.queues[shard].push_all([Completion::Answered {
                ticket,
                result: Err(StoreError::ShuttingDown),
            }]);
        }
    }
}
