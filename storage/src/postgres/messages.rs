//! The SQL of the `messages` and `rooms` tables: writing batches, history and thread pages,
//! catch-up ranges, client-id lookups, reply counts, frame replacement, room epochs.
//!
//! Invariants: every statement is one of [`ALL`], prepared through the connection's statement cache;
//! each operation is a single statement (one transaction); numbers cross the boundary through
//! `to_i64` / `to_u64`, so a value above `i64::MAX` is refused before it is sent and a negative stored
//! value is an error, never a wrapped number; rows are decoded with `try_get`, never panicking.

use bytes::Bytes;
use deadpool_postgres::Client;
use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::Row;

use super::error::pg_err;
use crate::error::{to_i64, to_u64};
use crate::{HistoryPage, RoomState, StoreError, StoredMessage, MAX_PAGE_MESSAGES};

/// The columns of a message, in the order [`message_from_row`] reads them.
macro_rules! message_columns {
    () => {
        "room, seq, msg_id, sender, ts_ms, client_id, frame, reply_to"
    };
}

/// A whole batch in one statement: one array per column, unnested into rows.
const INSERT_MESSAGES: &str = concat!(
    "INSERT INTO messages (",
    message_columns!(),
    ") SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::bytea[], $8::bigint[]) \
     ON CONFLICT (room, seq) DO NOTHING"
);
/// The newest messages below a seq (history pages).
const HISTORY: &str = concat!(
    "SELECT ",
    message_columns!(),
    " FROM messages WHERE room = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3"
);
/// The newest replies to a root below a seq (thread pages).
const THREAD: &str = concat!(
    "SELECT ",
    message_columns!(),
    " FROM messages WHERE room = $1 AND reply_to = $2 AND seq < $3 ORDER BY seq DESC LIMIT $4"
);
/// The oldest messages above a seq (catch-up).
const RANGE_AFTER: &str = concat!(
    "SELECT ",
    message_columns!(),
    " FROM messages WHERE room = $1 AND seq > $2 ORDER BY seq ASC LIMIT $3"
);
/// A message by its client id (the oldest, should a client have reused one).
const FIND_CLIENT_ID: &str = concat!(
    "SELECT ",
    message_columns!(),
    " FROM messages WHERE room = $1 AND sender = $2 AND client_id = $3 ORDER BY seq ASC LIMIT 1"
);
/// A room's epoch (NULL when the room is new) and highest stored seq, in one snapshot.
const ROOM_STATE: &str = "SELECT (SELECT epoch FROM rooms WHERE room = $1), coalesce((SELECT max(seq) FROM messages WHERE room = $1), 0)";
/// Creates a room; returns its epoch when this statement created it.
const CREATE_ROOM: &str = "INSERT INTO rooms (room, epoch) VALUES ($1, $2) ON CONFLICT (room) DO NOTHING RETURNING epoch";
/// A room's epoch.
const ROOM_EPOCH: &str = "SELECT epoch FROM rooms WHERE room = $1";
/// Sets (creating the room if needed) a room's epoch.
const SET_EPOCH: &str = "INSERT INTO rooms (room, epoch) VALUES ($1, $2) ON CONFLICT (room) DO UPDATE SET epoch = excluded.epoch";
/// Replies per root over a range of roots.
const REPLY_COUNTS: &str = "SELECT reply_to, count(*) FROM messages WHERE room = $1 AND reply_to BETWEEN $2 AND $3 \
     GROUP BY reply_to ORDER BY reply_to";
/// An edit or a delete.
const REPLACE_FRAME: &str = "UPDATE messages SET frame = $3 WHERE room = $1 AND seq = $2";

/// Every statement of this file (prepared once when the store opens).
pub(super) const ALL: &[&str] = &[
    INSERT_MESSAGES,
    HISTORY,
    THREAD,
    RANGE_AFTER,
    FIND_CLIENT_ID,
    ROOM_STATE,
    CREATE_ROOM,
    ROOM_EPOCH,
    SET_EPOCH,
    REPLY_COUNTS,
    REPLACE_FRAME,
];

/// Runs a prepared (cached) statement and returns its rows.
pub(super) async fn query(c: &Client, context: &'static str, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, StoreError> {
    let statement = c.prepare_cached(sql).await.map_err(|e| pg_err(context, e))?;
    c.query(&statement, params).await.map_err(|e| pg_err(context, e))
}

/// Runs a prepared (cached) statement and returns the number of rows it changed.
pub(super) async fn execute(c: &Client, context: &'static str, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
    let statement = c.prepare_cached(sql).await.map_err(|e| pg_err(context, e))?;
    c.execute(&statement, params).await.map_err(|e| pg_err(context, e))
}

/// Column `idx` of `row`, or a (non-retryable) error when it does not decode as `T`.
pub(super) fn get<'a, T: FromSql<'a>>(row: &'a Row, idx: usize, context: &'static str) -> Result<T, StoreError> {
    row.try_get(idx).map_err(|e| pg_err(context, e))
}

fn message_from_row(row: &Row) -> Result<StoredMessage, StoreError> {
    const CTX: &str = "read message row";
    let frame: &[u8] = get(row, 6, CTX)?;
    Ok(StoredMessage {
        room: get::<&str>(row, 0, CTX)?.into(),
        seq: to_u64("seq", get(row, 1, CTX)?)?,
        msg_id: get::<&str>(row, 2, CTX)?.into(),
        sender: get::<&str>(row, 3, CTX)?.into(),
        ts_ms: to_u64("ts_ms", get(row, 4, CTX)?)?,
        client_id: get::<Option<&str>>(row, 5, CTX)?.map(Into::into),
        frame: Bytes::copy_from_slice(frame),
        reply_to: get::<Option<i64>>(row, 7, CTX)?.map(|r| to_u64("reply_to", r)).transpose()?,
    })
}

fn messages_from_rows(rows: &[Row]) -> Result<Vec<StoredMessage>, StoreError> {
    rows.iter().map(message_from_row).collect()
}

pub(super) async fn write_batch(c: &Client, msgs: &[StoredMessage]) -> Result<(), StoreError> {
    let n = msgs.len();
    let (mut rooms, mut seqs, mut msg_ids, mut senders) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut ts, mut client_ids, mut frames, mut reply_to) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for m in msgs {
        rooms.push(&*m.room);
        seqs.push(to_i64("seq", m.seq)?);
        msg_ids.push(m.msg_id.as_str());
        senders.push(&*m.sender);
        ts.push(to_i64("ts_ms", m.ts_ms)?);
        client_ids.push(m.client_id.as_deref());
        frames.push(&m.frame[..]);
        reply_to.push(m.reply_to.map(|r| to_i64("reply_to", r)).transpose()?);
    }
    execute(
        c,
        "insert messages",
        INSERT_MESSAGES,
        &[&rooms, &seqs, &msg_ids, &senders, &ts, &client_ids, &frames, &reply_to],
    )
    .await
    .map(drop)
}

pub(super) async fn room_state(c: &Client, room: &str, new_epoch: u64) -> Result<RoomState, StoreError> {
    let new_epoch = to_i64("epoch", new_epoch)?;
    let rows = query(c, "read room state", ROOM_STATE, &[&room]).await?;
    let row = rows
        .first()
        .ok_or_else(|| StoreError::Internal("room state returned no row".into()))?;
    let last_seq = to_u64("seq", get(row, 1, "read room state")?)?;
    let epoch = match get::<Option<i64>>(row, 0, "read room state")? {
        Some(epoch) => epoch,
        None => {
            // A new room: create it, unless another node just did, whose epoch then wins (read in a
            // new statement, so its committed row is visible).
            let created = query(c, "create room", CREATE_ROOM, &[&room, &new_epoch]).await?;
            match created.first() {
                Some(row) => get(row, 0, "create room")?,
                None => {
                    let rows = query(c, "read room epoch", ROOM_EPOCH, &[&room]).await?;
                    let row = rows
                        .first()
                        .ok_or_else(|| StoreError::Internal(format!("room {room:?} vanished")))?;
                    get(row, 0, "read room epoch")?
                }
            }
        }
    };
    Ok(RoomState {
        epoch: to_u64("epoch", epoch)?,
        last_seq,
    })
}

pub(super) async fn set_epoch(c: &Client, room: &str, epoch: u64) -> Result<(), StoreError> {
    let epoch = to_i64("epoch", epoch)?;
    execute(c, "set epoch", SET_EPOCH, &[&room, &epoch]).await.map(drop)
}

/// A page of the room's messages (`root` None), or of one thread's replies.
pub(super) async fn page(c: &Client, room: &str, root: Option<u64>, before: Option<u64>, limit: usize) -> Result<HistoryPage, StoreError> {
    let limit = limit.min(MAX_PAGE_MESSAGES);
    let before = match before {
        Some(b) => to_i64("before", b)?,
        None => i64::MAX,
    };
    if limit == 0 || before <= 0 {
        return Ok(HistoryPage {
            messages: Vec::new(),
            next_before: None,
        });
    }
    // One more than asked tells whether an older message exists.
    let more_than = limit as i64 + 1;
    let rows = match root {
        None => query(c, "read history", HISTORY, &[&room, &before, &more_than]).await?,
        Some(root) => {
            let root = to_i64("root", root)?;
            query(c, "read thread", THREAD, &[&room, &root, &before, &more_than]).await?
        }
    };
    let mut newest_first = messages_from_rows(&rows)?;
    let more = newest_first.len() > limit;
    newest_first.truncate(limit);
    newest_first.reverse();
    let next_before = if more { newest_first.first().map(|m| m.seq) } else { None };
    Ok(HistoryPage {
        messages: newest_first,
        next_before,
    })
}

pub(super) async fn range_after(c: &Client, room: &str, after: u64, limit: usize) -> Result<Vec<StoredMessage>, StoreError> {
    let limit = limit.min(MAX_PAGE_MESSAGES) as i64;
    let after = to_i64("after", after)?;
    let rows = query(c, "read range after", RANGE_AFTER, &[&room, &after, &limit]).await?;
    messages_from_rows(&rows)
}

pub(super) async fn find_client_id(c: &Client, room: &str, sender: &str, client_id: &str) -> Result<Option<StoredMessage>, StoreError> {
    let rows = query(c, "find client id", FIND_CLIENT_ID, &[&room, &sender, &client_id]).await?;
    rows.first().map(message_from_row).transpose()
}

pub(super) async fn reply_counts(c: &Client, room: &str, from: u64, to: u64) -> Result<Vec<(u64, u64)>, StoreError> {
    let from = to_i64("from", from)?;
    let to = to_i64("to", to)?.min(from.saturating_add(MAX_PAGE_MESSAGES as i64 - 1));
    let rows = query(c, "read reply counts", REPLY_COUNTS, &[&room, &from, &to]).await?;
    rows.iter()
        .map(|r| {
            let root = to_u64("root", get(r, 0, "read reply counts")?)?;
            Ok((root, to_u64("count", get(r, 1, "read reply counts")?)?))
        })
        .collect()
}

pub(super) async fn replace_frame(c: &Client, room: &str, seq: u64, frame: &[u8]) -> Result<bool, StoreError> {
    let seq = to_i64("seq", seq)?;
    let changed = execute(c, "replace frame", REPLACE_FRAME, &[&room, &seq, &frame]).await?;
    Ok(changed == 1)
}
