//! The query lanes: queries run concurrently with the writer and with each other, in a bounded number of lanes.
//!
//! Invariants:
//! - at most `query_concurrency` queries run at once (one per lane);
//! - queries with the same order key (the room, or the user for marks and room
//!   lists) go to the same lane and run one after another in submit order, so
//!   an `Add` then a `Remove` of a reaction cannot swap;
//! - every query gets exactly one `Answered` completion on its shard (a panic
//!   inside the store is caught and answered with `Internal`);
//! - a query runs after every write whose `Written` completion was delivered
//!   before it was submitted has been committed (the writer completes only
//!   after committing), so it sees those writes.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use futures_util::FutureExt;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::{Answer, Completion, Outbox, Query, QueryCmd};
use crate::{MessageStore, StoreError};

struct Job {
    shard: usize,
    query: Query,
    ticket: u64,
}

fn lane_of(key: &str, lanes: usize) -> usize {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % lanes as u64) as usize
}

/// Routes queries to lanes until a shutdown command; waits for the lanes to finish what they hold.
pub(super) async fn run<S: MessageStore>(
    store: Arc<S>,
    mut rx: UnboundedReceiver<QueryCmd>,
    outbox: Arc<Outbox>,
    concurrency: usize,
) -> UnboundedReceiver<QueryCmd> {
    let mut lanes: Vec<UnboundedSender<Job>> = Vec::with_capacity(concurrency);
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (tx, lane_rx) = unbounded_channel();
        lanes.push(tx);
        tasks.push(tokio::spawn(lane(Arc::clone(&store), lane_rx, Arc::clone(&outbox))));
    }
    while let Some(QueryCmd::Query { shard, query, ticket }) = rx.recv().await {
        let lane = lane_of(query.order_key(), lanes.len());
        // The lane tasks live until `lanes` is dropped below, so this send cannot fail.
        let _ = lanes[lane].send(Job { shard, query, ticket });
    }
    drop(lanes);
    for task in tasks {
        if let Err(e) = task.await {
            tracing::error!(error = %e, "store: a query lane failed");
        }
    }
    rx
}

async fn lane<S: MessageStore>(store: Arc<S>, mut rx: UnboundedReceiver<Job>, outbox: Arc<Outbox>) {
    while let Some(job) = rx.recv().await {
        // A panic inside the store must still answer the ticket: catch it as an error.
        let result = AssertUnwindSafe(answer(&*store, job.query)).catch_unwind().await;
        let result = result.unwrap_or_else(|_| Err(StoreError::Internal("store query panicked".into())));
        outbox.stats.queries_total.fetch_add(1, Relaxed);
        if let Err(e) = &result {
            outbox.stats.query_errors_total.fetch_add(1, Relaxed);
            // Unreachable: the writer's next success or probe says when it is back.
            if e.is_retryable() {
                outbox.stats.set_unavailable(true, Some(e));
            }
        }
        outbox.stats.query_queue_depth.fetch_sub(1, Relaxed);
        outbox.queues[job.shard].push_all([Completion::Answered {
            ticket: job.ticket,
            result,
        }]);
    }
}

/// Runs one query against the store.
pub(super) async fn answer<S: MessageStore>(store: &S, query: Query) -> Result<Answer, StoreError> {
    Ok(match query {
        Query::RoomState { room, new_epoch } => Answer::RoomState(store.room_state(&room, new_epoch).await?),
        Query::SetEpoch { room, epoch } => {
            store.set_epoch(&room, epoch).await?;
            Answer::EpochSet
        }
        Query::History { room, before, limit } => Answer::History(store.history(&room, before, limit).await?),
        Query::Thread { room, root, before, limit } => Answer::History(store.thread(&room, root, before, limit).await?),
        Query::ReplyCounts { room, from, to } => Answer::ReplyCounts(store.reply_counts(&room, from, to).await?),
        Query::RangeAfter { room, after, limit } => Answer::RangeAfter(store.range_after(&room, after, limit).await?),
        Query::FindClientId { room, sender, client_id } => Answer::ClientId(store.find_client_id(&room, &sender, &client_id).await?),
        Query::SetMark { room, user, kind, seq } => Answer::Mark(store.set_mark(&room, &user, kind, seq).await?),
        Query::SetMarks { room, users, kind, seq } => Answer::Marks(store.set_marks(&room, &users, kind, seq).await?),
        Query::React {
            room,
            seq,
            user,
            emoji,
            op,
        } => {
            store.react(&room, seq, &user, &emoji, op).await?;
            Answer::Reacted
        }
        Query::Reactions { room, seq } => Answer::Reactions(store.reactions(&room, seq).await?),
        Query::ReactionCounts { room, from, to, user } => Answer::ReactionCounts(store.reaction_counts(&room, from, to, &user).await?),
        Query::ReplaceFrame { room, seq, frame } => Answer::Replaced(store.replace_frame(&room, seq, &frame).await?),
        Query::SetLastSeen { user, ts_ms } => {
            store.set_last_seen(&user, ts_ms).await?;
            Answer::LastSeenSet
        }
        Query::LastSeen { user } => Answer::LastSeen(store.last_seen(&user).await?),
        Query::AddUserRoom { user, room } => {
            store.add_user_room(&user, &room).await?;
            Answer::UserRoomAdded
        }
        Query::UserRooms { user } => Answer::UserRooms(store.user_rooms(&user).await?),
    })
}
