//! The message side of the Scylla backend: rows ↔ messages, the partition-grouped batched write, and
//! the bucket walks of history and catch-up.
//!
//! Invariants:
//! - `room_buckets` rows are written (and acknowledged) before the messages
//!   of those buckets, so a walk over `room_buckets` never misses a stored message;
//! - an unlogged batch only holds rows of one `(room, bucket)` partition;
//! - history/range walks stop as soon as they hold enough rows, and read
//!   [`BUCKET_PAGE`] index rows at a time, so a request's cost is bounded by its limit.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;

use futures_util::stream::{self, StreamExt, TryStreamExt};

use super::statements::*;
use super::{ScyllaStore, BUCKET_SIZE, MAX_BATCH_BYTES, MAX_BATCH_STATEMENTS, PARTITION_CONCURRENCY};
use crate::error::{to_i64, to_u64};
use crate::{StoreError, StoredMessage, MAX_PAGE_MESSAGES};

/// Index rows read per step of a bucket walk.
const BUCKET_PAGE: i32 = 16;

type Step<'a> = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'a>>;

/// Runs the steps with at most [`PARTITION_CONCURRENCY`] in flight; the first error wins.
async fn run_bounded(steps: Vec<Step<'_>>) -> Result<(), StoreError> {
    stream::iter(steps)
        .buffer_unordered(PARTITION_CONCURRENCY)
        .try_collect::<()>()
        .await
}

pub(super) fn bucket_of(seq: i64) -> i64 {
    seq / BUCKET_SIZE as i64
}

fn to_row(m: &StoredMessage) -> Result<MessageRow, StoreError> {
    let seq = to_i64("seq", m.seq)?;
    Ok(MessageRow {
        room: m.room.to_string(),
        bucket: bucket_of(seq),
        seq,
        msg_id: m.msg_id.to_string(),
        sender: m.sender.to_string(),
        ts_ms: to_i64("ts_ms", m.ts_ms)?,
        client_id: m.client_id.as_deref().map(str::to_owned),
        frame: m.frame.clone(),
        reply_to: m.reply_to.map(|r| to_i64("reply_to", r)).transpose()?,
    })
}

pub(super) fn from_row(r: MessageRow) -> Result<StoredMessage, StoreError> {
    Ok(StoredMessage {
        seq: to_u64("seq", r.seq)?,
        ts_ms: to_u64("ts_ms", r.ts_ms)?,
        room: r.room.into(),
        msg_id: r.msg_id.into(),
        sender: r.sender.into(),
        client_id: r.client_id.map(Into::into),
        frame: r.frame,
        reply_to: r.reply_to.map(|v| to_u64("reply_to", v)).transpose()?,
    })
}

/// Splits one partition's rows into unlogged batches of bounded count and bytes.
fn chunk_partition<'a>(rows: &[&'a MessageRow], out: &mut Vec<Vec<&'a MessageRow>>) {
    let mut current: Vec<&MessageRow> = Vec::new();
    let mut bytes = 0;
    for &row in rows {
        let size = row.frame.len() + row.msg_id.len() + row.sender.len() + row.room.len() + 64;
        if !current.is_empty() && (current.len() == MAX_BATCH_STATEMENTS || bytes + size > MAX_BATCH_BYTES) {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(row);
    }
    if !current.is_empty() {
        out.push(current);
    }
}

pub(super) fn clamp_limit(limit: usize) -> i32 {
    // MAX_PAGE_MESSAGES fits an i32.
    limit.min(MAX_PAGE_MESSAGES) as i32
}

impl ScyllaStore {
    /// Indexes the buckets, then writes one unlogged batch per partition chunk and the client ids, concurrently.
    pub(super) async fn write_messages(&self, msgs: &[StoredMessage]) -> Result<(), StoreError> {
        let p = &*self.prepared;
        let rows = msgs.iter().map(to_row).collect::<Result<Vec<_>, _>>()?;
        let buckets: BTreeSet<(&str, i64)> = rows.iter().map(|r| (r.room.as_str(), r.bucket)).collect();
        let index: Vec<RoomBucket> = buckets
            .into_iter()
            .map(|(room, bucket)| RoomBucket {
                room: room.to_owned(),
                bucket,
            })
            .collect();
        run_bounded(
            index
                .iter()
                .map(|v| Box::pin(async move { p.run(&INSERT_ROOM_BUCKET, v).await.map(drop) }) as Step<'_>)
                .collect(),
        )
        .await?;

        let mut partitions: BTreeMap<(&str, i64), Vec<&MessageRow>> = BTreeMap::new();
        for r in &rows {
            partitions.entry((r.room.as_str(), r.bucket)).or_default().push(r);
        }
        let mut chunks = Vec::new();
        for part in partitions.values() {
            chunk_partition(part, &mut chunks);
        }
        let client_ids: Vec<ClientIdRow> = rows
            .iter()
            .filter_map(|r| {
                let client_id = r.client_id.clone()?;
                Some(ClientIdRow {
                    room: r.room.clone(),
                    sender: r.sender.clone(),
                    client_id,
                    seq: r.seq,
                })
            })
            .collect();
        let replies: Vec<ThreadRow> = rows
            .iter()
            .filter_map(|r| {
                Some(ThreadRow {
                    room: r.room.clone(),
                    root: r.reply_to?,
                    seq: r.seq,
                })
            })
            .collect();
        let mut steps: Vec<Step<'_>> = chunks.iter().map(|c| Box::pin(p.batch(&INSERT_MESSAGE, c)) as Step<'_>).collect();
        steps.extend(
            client_ids
                .iter()
                .map(|v| Box::pin(async move { p.run(&INSERT_CLIENT_ID, v).await.map(drop) }) as Step<'_>),
        );
        steps.extend(
            replies
                .iter()
                .map(|v| Box::pin(async move { p.run(&INSERT_THREAD_REPLY, v).await.map(drop) }) as Step<'_>),
        );
        run_bounded(steps).await
    }

    /// The newest `want` replies to `root` with seq < `before`, newest first: the thread's
    /// index, then each message (concurrently, bounded); a reply whose message row is not
    /// written yet is left out.
    pub(super) async fn thread_before(&self, room: &str, root: i64, before: i64, want: i32) -> Result<Vec<MessageRow>, StoreError> {
        let p = &*self.prepared;
        let key = ThreadFrom {
            room: room.to_owned(),
            root,
            seq: before,
            limit: want,
        };
        let seqs = p.rows(&SELECT_THREAD_BEFORE, &key).await?;
        let found: Vec<Option<MessageRow>> = stream::iter(seqs)
            .map(|s| async move {
                let key = MessageKey {
                    room: room.to_owned(),
                    bucket: bucket_of(s.seq),
                    seq: s.seq,
                };
                Ok::<_, StoreError>(p.rows(&SELECT_MESSAGE, &key).await?.pop())
            })
            .buffered(PARTITION_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(found.into_iter().flatten().collect())
    }

    /// The newest `want` messages with seq < `before`, newest first, walking buckets downwards.
    pub(super) async fn newest_before(&self, room: &str, before: i64, want: i32) -> Result<Vec<MessageRow>, StoreError> {
        let p = &*self.prepared;
        let mut out: Vec<MessageRow> = Vec::new();
        let mut top = bucket_of(before.saturating_sub(1));
        loop {
            let buckets = p
                .rows(
                    &SELECT_BUCKETS_DOWN,
                    &BucketsFrom {
                        room: room.to_owned(),
                        bucket: top,
                        limit: BUCKET_PAGE,
                    },
                )
                .await?;
            for b in &buckets {
                let left = want - out.len() as i32;
                let key = MessagesFrom {
                    room: room.to_owned(),
                    bucket: b.bucket,
                    seq: before,
                    limit: left,
                };
                out.extend(p.rows(&SELECT_MESSAGES_BEFORE, &key).await?);
                if out.len() as i32 >= want {
                    return Ok(out);
                }
            }
            match buckets.last() {
                Some(last) if buckets.len() as i32 == BUCKET_PAGE && last.bucket > 0 => top = last.bucket - 1,
                _ => return Ok(out),
            }
        }
    }

    /// The oldest `want` messages with seq > `after`, oldest first, walking buckets upwards.
    pub(super) async fn oldest_after(&self, room: &str, after: i64, want: i32) -> Result<Vec<MessageRow>, StoreError> {
        let p = &*self.prepared;
        let mut out: Vec<MessageRow> = Vec::new();
        let mut bottom = bucket_of(after);
        loop {
            let buckets = p
                .rows(
                    &SELECT_BUCKETS_UP,
                    &BucketsFrom {
                        room: room.to_owned(),
                        bucket: bottom,
                        limit: BUCKET_PAGE,
                    },
                )
                .await?;
            for b in &buckets {
                let left = want - out.len() as i32;
                let key = MessagesFrom {
                    room: room.to_owned(),
                    bucket: b.bucket,
                    seq: after,
                    limit: left,
                };
                out.extend(p.rows(&SELECT_MESSAGES_AFTER, &key).await?);
                if out.len() as i32 >= want {
                    return Ok(out);
                }
            }
            match buckets.last() {
                Some(last) if buckets.len() as i32 == BUCKET_PAGE => bottom = last.bucket + 1,
                _ => return Ok(out),
            }
        }
    }
}
