//! The SQL of per-user and per-node state: marks, reactions, last seen, room lists, node runs.
//!
//! Invariants: as in `messages.rs` — one statement per operation, prepared through the statement
//! cache, numbers checked both ways. Marks and last-seen times move forward inside the statement
//! (`greatest`), so concurrent writers from several nodes never move one back.

use std::collections::HashMap;

use deadpool_postgres::Client;

use super::messages::{execute, get, query};
use crate::error::{to_i64, to_u64};
use crate::{MarkKind, ReactionCount, ReactionOp, StoreError, UserRoom, MAX_LIST_ITEMS, MAX_PAGE_MESSAGES, MAX_UNREAD};

/// Moves the read marks of many users forward; returns each user's resulting mark.
const SET_READ_MARKS: &str = "INSERT INTO marks (user_id, room, read_seq) SELECT u, $2::text, $3::bigint FROM unnest($1::text[]) AS u \
     ON CONFLICT (user_id, room) DO UPDATE SET read_seq = greatest(marks.read_seq, excluded.read_seq) \
     RETURNING user_id, read_seq";
/// Moves the delivered marks of many users forward; returns each user's resulting mark.
const SET_DELIVERED_MARKS: &str =
    "INSERT INTO marks (user_id, room, delivered_seq) SELECT u, $2::text, $3::bigint FROM unnest($1::text[]) AS u \
     ON CONFLICT (user_id, room) DO UPDATE SET delivered_seq = greatest(marks.delivered_seq, excluded.delivered_seq) \
     RETURNING user_id, delivered_seq";
const ADD_REACTION: &str = "INSERT INTO reactions (room, seq, emoji, user_id) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";
const REMOVE_REACTION: &str = "DELETE FROM reactions WHERE room = $1 AND seq = $2 AND emoji = $3 AND user_id = $4";
const REACTIONS: &str = "SELECT emoji, user_id FROM reactions WHERE room = $1 AND seq = $2 ORDER BY emoji, user_id LIMIT $3";
const REACTION_COUNTS: &str = "SELECT seq, emoji, count(*), bool_or(user_id = $4) FROM reactions \
     WHERE room = $1 AND seq BETWEEN $2 AND $3 GROUP BY seq, emoji ORDER BY seq, emoji";
/// Only a later time replaces the stored one (an older write changes nothing, not even a row version).
const SET_LAST_SEEN: &str = "INSERT INTO last_seen (user_id, ts_ms) VALUES ($1, $2) \
     ON CONFLICT (user_id) DO UPDATE SET ts_ms = excluded.ts_ms WHERE last_seen.ts_ms < excluded.ts_ms";
const LAST_SEEN: &str = "SELECT ts_ms FROM last_seen WHERE user_id = $1";
const ADD_USER_ROOM: &str = "INSERT INTO user_rooms (user_id, room) VALUES ($1, $2) ON CONFLICT DO NOTHING";
/// The user's rooms with their last seq, the user's marks and the unread count (capped: the inner
/// LIMIT stops the count after `MAX_UNREAD` rows of the primary key range).
const USER_ROOMS: &str = "SELECT ur.room, coalesce(m.read_seq, 0), coalesce(m.delivered_seq, 0), \
     coalesce((SELECT max(seq) FROM messages WHERE room = ur.room), 0), \
     (SELECT count(*) FROM (SELECT 1 FROM messages WHERE room = ur.room AND seq > coalesce(m.read_seq, 0) \
       AND sender <> ur.user_id LIMIT $3) AS unread) \
     FROM user_rooms ur LEFT JOIN marks m ON m.user_id = ur.user_id AND m.room = ur.room \
     WHERE ur.user_id = $1 ORDER BY ur.room LIMIT $2";
/// Opens a node's run, returning whether the previous one was open (NULL: the node never ran). The
/// CTE reads the row as it was before this statement (a statement never sees its own changes); no
/// `FOR UPDATE` there: locking a row the same statement updates makes PostgreSQL skip it.
const BEGIN_RUN: &str = "WITH prev AS (SELECT open FROM node_runs WHERE node_id = $1) \
     INSERT INTO node_runs (node_id, open) VALUES ($1, true) ON CONFLICT (node_id) DO UPDATE SET open = true \
     RETURNING (SELECT open FROM prev)";
const END_RUN: &str = "INSERT INTO node_runs (node_id, open) VALUES ($1, false) ON CONFLICT (node_id) DO UPDATE SET open = false";

/// Every statement of this file (prepared once when the store opens).
pub(super) const ALL: &[&str] = &[
    SET_READ_MARKS,
    SET_DELIVERED_MARKS,
    ADD_REACTION,
    REMOVE_REACTION,
    REACTIONS,
    REACTION_COUNTS,
    SET_LAST_SEEN,
    LAST_SEEN,
    ADD_USER_ROOM,
    USER_ROOMS,
    BEGIN_RUN,
    END_RUN,
];

/// Moves the marks of `users` forward in one statement. Users are deduplicated and sorted first: a
/// user listed twice would make `ON CONFLICT DO UPDATE` touch a row twice (an error), and one row
/// order for every caller means two concurrent calls lock rows in the same order (no deadlock).
pub(super) async fn set_marks(c: &Client, room: &str, users: &[String], kind: MarkKind, seq: u64) -> Result<Vec<u64>, StoreError> {
    let seq = to_i64("mark", seq)?;
    let mut unique: Vec<&str> = users.iter().map(String::as_str).collect();
    unique.sort_unstable();
    unique.dedup();
    let sql = match kind {
        MarkKind::Read => SET_READ_MARKS,
        MarkKind::Delivered => SET_DELIVERED_MARKS,
    };
    let rows = query(c, "set marks", sql, &[&unique, &room, &seq]).await?;
    let mut marks = HashMap::with_capacity(rows.len());
    for row in &rows {
        let user: &str = get(row, 0, "read marks")?;
        marks.insert(user, to_u64("mark", get(row, 1, "read marks")?)?);
    }
    users
        .iter()
        .map(|u| {
            marks
                .get(u.as_str())
                .copied()
                .ok_or_else(|| StoreError::Internal(format!("set marks returned no mark for user {u:?}")))
        })
        .collect()
}

pub(super) async fn react(c: &Client, room: &str, seq: u64, user: &str, emoji: &str, op: ReactionOp) -> Result<(), StoreError> {
    let seq = to_i64("seq", seq)?;
    let sql = match op {
        ReactionOp::Add => ADD_REACTION,
        ReactionOp::Remove => REMOVE_REACTION,
    };
    execute(c, "react", sql, &[&room, &seq, &emoji, &user]).await.map(drop)
}

pub(super) async fn reactions(c: &Client, room: &str, seq: u64) -> Result<Vec<(String, String)>, StoreError> {
    let seq = to_i64("seq", seq)?;
    let rows = query(c, "read reactions", REACTIONS, &[&room, &seq, &(MAX_LIST_ITEMS as i64)]).await?;
    rows.iter()
        .map(|r| Ok((get(r, 0, "read reactions")?, get(r, 1, "read reactions")?)))
        .collect()
}

pub(super) async fn reaction_counts(c: &Client, room: &str, from: u64, to: u64, user: &str) -> Result<Vec<ReactionCount>, StoreError> {
    const CTX: &str = "read reaction counts";
    let from = to_i64("from", from)?;
    let to = to_i64("to", to)?.min(from.saturating_add(MAX_PAGE_MESSAGES as i64 - 1));
    let rows = query(c, CTX, REACTION_COUNTS, &[&room, &from, &to, &user]).await?;
    rows.iter()
        .map(|r| {
            Ok(ReactionCount {
                seq: to_u64("seq", get(r, 0, CTX)?)?,
                emoji: get(r, 1, CTX)?,
                count: to_u64("count", get(r, 2, CTX)?)?,
                me: get(r, 3, CTX)?,
            })
        })
        .collect()
}

pub(super) async fn set_last_seen(c: &Client, user: &str, ts_ms: u64) -> Result<(), StoreError> {
    let ts = to_i64("ts_ms", ts_ms)?;
    execute(c, "set last seen", SET_LAST_SEEN, &[&user, &ts]).await.map(drop)
}

pub(super) async fn last_seen(c: &Client, user: &str) -> Result<Option<u64>, StoreError> {
    let rows = query(c, "read last seen", LAST_SEEN, &[&user]).await?;
    rows.first().map(|r| to_u64("ts_ms", get(r, 0, "read last seen")?)).transpose()
}

pub(super) async fn add_user_room(c: &Client, user: &str, room: &str) -> Result<(), StoreError> {
    execute(c, "add user room", ADD_USER_ROOM, &[&user, &room]).await.map(drop)
}

pub(super) async fn user_rooms(c: &Client, user: &str) -> Result<Vec<UserRoom>, StoreError> {
    const CTX: &str = "read user rooms";
    let rows = query(c, CTX, USER_ROOMS, &[&user, &(MAX_LIST_ITEMS as i64), &(MAX_UNREAD as i64)]).await?;
    rows.iter()
        .map(|r| {
            Ok(UserRoom {
                room: get(r, 0, CTX)?,
                read: to_u64("mark", get(r, 1, CTX)?)?,
                delivered: to_u64("mark", get(r, 2, CTX)?)?,
                seq: to_u64("seq", get(r, 3, CTX)?)?,
                unread: to_u64("unread", get(r, 4, CTX)?)?,
            })
        })
        .collect()
}

pub(super) async fn begin_run(c: &Client, node_id: &str) -> Result<bool, StoreError> {
    let rows = query(c, "begin run", BEGIN_RUN, &[&node_id]).await?;
    let row = rows
        .first()
        .ok_or_else(|| StoreError::Internal("begin run returned no row".into()))?;
    let was_open: Option<bool> = get(row, 0, "begin run")?;
    Ok(!was_open.unwrap_or(false))
}

pub(super) async fn end_run(c: &Client, node_id: &str) -> Result<(), StoreError> {
    execute(c, "end run", END_RUN, &[&node_id]).await.map(drop)
}
