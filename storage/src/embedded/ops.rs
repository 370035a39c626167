//! The SQL of the embedded store: one plain function per operation, on a `Connection`, run on a blocking thread.
//!
//! Invariants: every statement is prepared through the connection's statement
//! cache; `write_batch` is one IMMEDIATE transaction (all of the batch or none
//! of it); writes and read-modify-writes (`room_state`, `set_mark`,
//! `begin_run`) run on the single writer connection, plain reads on reader
//! connections, which in WAL mode see every transaction committed before
//! their statement started.

use bytes::Bytes;
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

use crate::error::{to_i64, to_u64};
use crate::{
    HistoryPage, MarkKind, ReactionCount, ReactionOp, RoomState, StoreError, StoredMessage, UserRoom, MAX_LIST_ITEMS, MAX_PAGE_MESSAGES,
    MAX_UNREAD,
};

/// The columns of a message, in the order [`message_from_row`] reads them.
macro_rules! message_columns {
    () => {
        "room, seq, msg_id, sender, ts_ms, client_id, frame, reply_to"
    };
}

/// The newest messages below a seq (history pages).
const HISTORY_SQL: &str = concat!(
    "SELECT ",
    message_columns!(),
    " FROM messages WHERE room = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3"
);
/// The oldest messages above a seq (catch-up).
const RANGE_AFTER_SQL: &str = concat!(
    "SELECT ",
    message_columns!(),
    " FROM messages WHERE room = ?1 AND seq > ?2 ORDER BY seq ASC LIMIT ?3"
);
/// The newest replies to a root below a seq (thread pages).
const THREAD_SQL: &str = concat!(
    "SELECT ",
    message_columns!(),
    " FROM messages WHERE room = ?1 AND reply_to = ?2 AND seq < ?3 ORDER BY seq DESC LIMIT ?4"
);
/// A message by its client id.
const FIND_CLIENT_ID_SQL: &str = concat!(
    "SELECT ",
    message_columns!(),
    " FROM messages WHERE room = ?1 AND sender = ?2 AND client_id = ?3 ORDER BY seq ASC LIMIT 1"
);
/// The highest stored seq of a room.
const LAST_SEQ_SQL: &str = "SELECT max(seq) FROM messages WHERE room = ?1";

fn sql(context: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |e| StoreError::sqlite(context, e)
}

fn message_from_row(row: &Row<'_>) -> rusqlite::Result<(StoredMessage, i64, i64, Option<i64>)> {
    let frame: Vec<u8> = row.get(6)?;
    let msg = StoredMessage {
        room: row.get(0)?,
        seq: 0,
        msg_id: row.get::<_, String>(2)?.into(),
        sender: row.get(3)?,
        ts_ms: 0,
        client_id: row.get::<_, Option<String>>(5)?.map(Into::into),
        frame: Bytes::from(frame),
        reply_to: None,
    };
    Ok((msg, row.get(1)?, row.get(4)?, row.get(7)?))
}

/// Reads the messages a statement returns, checking the stored integers are in range.
fn collect_messages(stmt: &mut rusqlite::CachedStatement<'_>, args: impl rusqlite::Params) -> Result<Vec<StoredMessage>, StoreError> {
    let rows = stmt.query_map(args, message_from_row).map_err(sql("read messages"))?;
    let mut out = Vec::new();
    for row in rows {
        let (mut msg, seq, ts_ms, reply_to) = row.map_err(sql("read message row"))?;
        msg.seq = to_u64("seq", seq)?;
        msg.ts_ms = to_u64("ts_ms", ts_ms)?;
        msg.reply_to = reply_to.map(|r| to_u64("reply_to", r)).transpose()?;
        out.push(msg);
    }
    Ok(out)
}

pub(super) fn write_batch(conn: &mut Connection, msgs: &[StoredMessage]) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql("begin write batch"))?;
    {
        let mut insert = tx
            .prepare_cached(concat!(
                "INSERT INTO messages (",
                message_columns!(),
                ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (room, seq) DO NOTHING"
            ))
            .map_err(sql("prepare insert message"))?;
        for m in msgs {
            let seq = to_i64("seq", m.seq)?;
            let ts_ms = to_i64("ts_ms", m.ts_ms)?;
            let reply_to = m.reply_to.map(|r| to_i64("reply_to", r)).transpose()?;
            insert
                .execute(params![
                    m.room,
                    seq,
                    m.msg_id.as_str(),
                    m.sender,
                    ts_ms,
                    m.client_id.as_deref(),
                    &m.frame[..],
                    reply_to
                ])
                .map_err(sql("insert message"))?;
        }
    }
    tx.commit().map_err(sql("commit write batch"))
}

pub(super) fn room_state(conn: &Connection, room: &str, new_epoch: u64) -> Result<RoomState, StoreError> {
    let new_epoch = to_i64("epoch", new_epoch)?;
    conn.prepare_cached("INSERT INTO rooms (room, epoch) VALUES (?1, ?2) ON CONFLICT (room) DO NOTHING")
        .and_then(|mut s| s.execute(params![room, new_epoch]))
        .map_err(sql("create room"))?;
    let epoch: i64 = conn
        .prepare_cached("SELECT epoch FROM rooms WHERE room = ?1")
        .and_then(|mut s| s.query_row([room], |r| r.get(0)))
        .map_err(sql("read room epoch"))?;
    let last: Option<i64> = conn
        .prepare_cached(LAST_SEQ_SQL)
        .and_then(|mut s| s.query_row([room], |r| r.get(0)))
        .map_err(sql("read last seq"))?;
    Ok(RoomState {
        epoch: to_u64("epoch", epoch)?,
        last_seq: to_u64("seq", last.unwrap_or(0))?,
    })
}

pub(super) fn set_epoch(conn: &Connection, room: &str, epoch: u64) -> Result<(), StoreError> {
    let epoch = to_i64("epoch", epoch)?;
    conn.prepare_cached("INSERT INTO rooms (room, epoch) VALUES (?1, ?2) ON CONFLICT (room) DO UPDATE SET epoch = excluded.epoch")
        .and_then(|mut s| s.execute(params![room, epoch]))
        .map_err(sql("set epoch"))?;
    Ok(())
}

pub(super) fn history(conn: &Connection, room: &str, before: Option<u64>, limit: usize) -> Result<HistoryPage, StoreError> {
    page(conn, room, None, before, limit)
}

pub(super) fn thread(conn: &Connection, room: &str, root: u64, before: Option<u64>, limit: usize) -> Result<HistoryPage, StoreError> {
    page(conn, room, Some(to_i64("root", root)?), before, limit)
}

/// A page of the room's messages, or of one thread's replies.
fn page(conn: &Connection, room: &str, root: Option<i64>, before: Option<u64>, limit: usize) -> Result<HistoryPage, StoreError> {
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
    let mut newest_first = match root {
        None => {
            let mut stmt = conn.prepare_cached(HISTORY_SQL).map_err(sql("prepare history"))?;
            collect_messages(&mut stmt, params![room, before, more_than])?
        }
        Some(root) => {
            let mut stmt = conn.prepare_cached(THREAD_SQL).map_err(sql("prepare thread"))?;
            collect_messages(&mut stmt, params![room, root, before, more_than])?
        }
    };
    let more = newest_first.len() > limit;
    newest_first.truncate(limit);
    newest_first.reverse();
    let next_before = if more { newest_first.first().map(|m| m.seq) } else { None };
    Ok(HistoryPage {
        messages: newest_first,
        next_before,
    })
}

pub(super) fn range_after(conn: &Connection, room: &str, after: u64, limit: usize) -> Result<Vec<StoredMessage>, StoreError> {
    let limit = limit.min(MAX_PAGE_MESSAGES);
    let after = to_i64("after", after)?;
    let mut stmt = conn.prepare_cached(RANGE_AFTER_SQL).map_err(sql("prepare range_after"))?;
    collect_messages(&mut stmt, params![room, after, limit as i64])
}

pub(super) fn find_client_id(conn: &Connection, room: &str, sender: &str, client_id: &str) -> Result<Option<StoredMessage>, StoreError> {
    let mut stmt = conn.prepare_cached(FIND_CLIENT_ID_SQL).map_err(sql("prepare find_client_id"))?;
    Ok(collect_messages(&mut stmt, params![room, sender, client_id])?.pop())
}

pub(super) fn set_mark(conn: &Connection, room: &str, user: &str, kind: MarkKind, seq: u64) -> Result<u64, StoreError> {
    let seq = to_i64("mark", seq)?;
    let text = match kind {
        MarkKind::Read => {
            "INSERT INTO marks (user_id, room, read_seq) VALUES (?1, ?2, ?3) ON CONFLICT (user_id, room) \
             DO UPDATE SET read_seq = max(read_seq, excluded.read_seq) RETURNING read_seq"
        }
        MarkKind::Delivered => {
            "INSERT INTO marks (user_id, room, delivered_seq) VALUES (?1, ?2, ?3) ON CONFLICT (user_id, room) \
             DO UPDATE SET delivered_seq = max(delivered_seq, excluded.delivered_seq) RETURNING delivered_seq"
        }
    };
    let mark: i64 = conn
        .prepare_cached(text)
        .and_then(|mut s| s.query_row(params![user, room, seq], |r| r.get(0)))
        .map_err(sql("set mark"))?;
    to_u64("mark", mark)
}

pub(super) fn set_marks(conn: &mut Connection, room: &str, users: &[String], kind: MarkKind, seq: u64) -> Result<Vec<u64>, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql("begin set marks"))?;
    let marks = users
        .iter()
        .map(|u| set_mark(&tx, room, u, kind, seq))
        .collect::<Result<Vec<_>, _>>()?;
    tx.commit().map_err(sql("commit set marks"))?;
    Ok(marks)
}

pub(super) fn react(conn: &Connection, room: &str, seq: u64, user: &str, emoji: &str, op: ReactionOp) -> Result<(), StoreError> {
    let seq = to_i64("seq", seq)?;
    let text = match op {
        ReactionOp::Add => "INSERT INTO reactions (room, seq, emoji, user_id) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
        ReactionOp::Remove => "DELETE FROM reactions WHERE room = ?1 AND seq = ?2 AND emoji = ?3 AND user_id = ?4",
    };
    conn.prepare_cached(text)
        .and_then(|mut s| s.execute(params![room, seq, emoji, user]))
        .map_err(sql("react"))?;
    Ok(())
}

pub(super) fn reactions(conn: &Connection, room: &str, seq: u64) -> Result<Vec<(String, String)>, StoreError> {
    let seq = to_i64("seq", seq)?;
    let mut stmt = conn
        .prepare_cached("SELECT emoji, user_id FROM reactions WHERE room = ?1 AND seq = ?2 ORDER BY emoji, user_id LIMIT ?3")
        .map_err(sql("prepare reactions"))?;
    let rows = stmt
        .query_map(params![room, seq, MAX_LIST_ITEMS as i64], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(sql("read reactions"))?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(sql("read reaction row"))
}

pub(super) fn reaction_counts(conn: &Connection, room: &str, from: u64, to: u64, user: &str) -> Result<Vec<ReactionCount>, StoreError> {
    let from = to_i64("from", from)?;
    let to = to_i64("to", to)?.min(from.saturating_add(MAX_PAGE_MESSAGES as i64 - 1));
    let mut stmt = conn
        .prepare_cached(
            "SELECT seq, emoji, count(*), max(user_id = ?4) FROM reactions WHERE room = ?1 AND seq BETWEEN ?2 AND ?3 \
             GROUP BY seq, emoji ORDER BY seq, emoji",
        )
        .map_err(sql("prepare reaction_counts"))?;
    let rows = stmt
        .query_map(params![room, from, to, user], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, bool>(3)?,
            ))
        })
        .map_err(sql("read reaction counts"))?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, emoji, count, me) = row.map_err(sql("read reaction count row"))?;
        out.push(ReactionCount {
            seq: to_u64("seq", seq)?,
            emoji,
            count: to_u64("count", count)?,
            me,
        });
    }
    Ok(out)
}

pub(super) fn reply_counts(conn: &Connection, room: &str, from: u64, to: u64) -> Result<Vec<(u64, u64)>, StoreError> {
    let from = to_i64("from", from)?;
    let to = to_i64("to", to)?.min(from.saturating_add(MAX_PAGE_MESSAGES as i64 - 1));
    let mut stmt = conn
        .prepare_cached(
            "SELECT reply_to, count(*) FROM messages WHERE room = ?1 AND reply_to BETWEEN ?2 AND ?3 \
             GROUP BY reply_to ORDER BY reply_to",
        )
        .map_err(sql("prepare reply_counts"))?;
    let rows = stmt
        .query_map(params![room, from, to], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
        .map_err(sql("read reply counts"))?;
    let mut out = Vec::new();
    for row in rows {
        let (root, n) = row.map_err(sql("read reply count row"))?;
        out.push((to_u64("root", root)?, to_u64("count", n)?));
    }
    Ok(out)
}

pub(super) fn replace_frame(conn: &Connection, room: &str, seq: u64, frame: &[u8]) -> Result<bool, StoreError> {
    let seq = to_i64("seq", seq)?;
    let changed = conn
        .prepare_cached("UPDATE messages SET frame = ?3 WHERE room = ?1 AND seq = ?2")
        .and_then(|mut s| s.execute(params![room, seq, frame]))
        .map_err(sql("replace frame"))?;
    Ok(changed == 1)
}

pub(super) fn set_last_seen(conn: &Connection, user: &str, ts_ms: u64) -> Result<(), StoreError> {
    let ts = to_i64("ts_ms", ts_ms)?;
    conn.prepare_cached(
        "INSERT INTO last_seen (user_id, ts_ms) VALUES (?1, ?2) ON CONFLICT (user_id) DO UPDATE SET ts_ms = max(ts_ms, excluded.ts_ms)",
    )
    .and_then(|mut s| s.execute(params![user, ts]))
    .map_err(sql("set last seen"))?;
    Ok(())
}

pub(super) fn last_seen(conn: &Connection, user: &str) -> Result<Option<u64>, StoreError> {
    let ts: Option<i64> = conn
        .prepare_cached("SELECT ts_ms FROM last_seen WHERE user_id = ?1")
        .and_then(|mut s| s.query_row([user], |r| r.get(0)).optional())
        .map_err(sql("read last seen"))?;
    ts.map(|t| to_u64("ts_ms", t)).transpose()
}

pub(super) fn add_user_room(conn: &Connection, user: &str, room: &str) -> Result<(), StoreError> {
    conn.prepare_cached("INSERT INTO user_rooms (user_id, room) VALUES (?1, ?2) ON CONFLICT DO NOTHING")
        .and_then(|mut s| s.execute(params![user, room]))
        .map_err(sql("add user room"))?;
    Ok(())
}

pub(super) fn user_rooms(conn: &Connection, user: &str) -> Result<Vec<UserRoom>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT ur.room, coalesce(m.read_seq, 0), coalesce(m.delivered_seq, 0), \
             coalesce((SELECT max(seq) FROM messages WHERE room = ur.room), 0), \
             (SELECT count(*) FROM (SELECT 1 FROM messages WHERE room = ur.room AND seq > coalesce(m.read_seq, 0) \
               AND sender != ur.user_id LIMIT ?3)) \
             FROM user_rooms ur LEFT JOIN marks m ON m.user_id = ur.user_id AND m.room = ur.room \
             WHERE ur.user_id = ?1 ORDER BY ur.room LIMIT ?2",
        )
        .map_err(sql("prepare user_rooms"))?;
    let rows = stmt
        .query_map(params![user, MAX_LIST_ITEMS as i64, MAX_UNREAD as i64], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })
        .map_err(sql("read user rooms"))?;
    let mut out = Vec::new();
    for row in rows {
        let (room, read, delivered, seq, unread) = row.map_err(sql("read user room row"))?;
        out.push(UserRoom {
            room,
            seq: to_u64("seq", seq)?,
            read: to_u64("mark", read)?,
            delivered: to_u64("mark", delivered)?,
            unread: to_u64("unread", unread)?,
        });
    }
    Ok(out)
}

pub(super) fn begin_run(conn: &mut Connection, node_id: &str) -> Result<bool, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql("begin run"))?;
    let open: Option<bool> = tx
        .prepare_cached("SELECT open FROM node_runs WHERE node_id = ?1")
        .and_then(|mut s| s.query_row([node_id], |r| r.get(0)).optional())
        .map_err(sql("read node run"))?;
    set_run_open(&tx, node_id, true)?;
    tx.commit().map_err(sql("commit begin run"))?;
    Ok(!open.unwrap_or(false))
}

pub(super) fn set_run_open(conn: &Connection, node_id: &str, open: bool) -> Result<(), StoreError> {
    conn.prepare_cached("INSERT INTO node_runs (node_id, open) VALUES (?1, ?2) ON CONFLICT (node_id) DO UPDATE SET open = excluded.open")
        .and_then(|mut s| s.execute(params![node_id, open]))
        .map_err(sql("write node run"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each message read must search an index, never scan the room or the table: without ANALYZE
    /// statistics SQLite once chose to walk a whole room for the client-id lookup.
    #[test]
    fn message_reads_use_their_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = super::super::schema::open_writer(&dir.path().join("t.sqlite3"), false, 2048).expect("open");
        let cases = [
            (HISTORY_SQL, "sqlite_autoindex_messages_1 (room=? AND seq<?)"),
            (RANGE_AFTER_SQL, "sqlite_autoindex_messages_1 (room=? AND seq>?)"),
            (FIND_CLIENT_ID_SQL, "messages_client_id (room=? AND sender=? AND client_id=?)"),
            (LAST_SEQ_SQL, "sqlite_autoindex_messages_1 (room=?)"),
        ];
        for (sql, want) in cases {
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).expect("explain");
            let plan: Vec<String> = stmt
                .query_map(params!["r", "s", "c"].get(..stmt.parameter_count()).expect("params"), |r| r.get(3))
                .expect("plan")
                .collect::<rusqlite::Result<_>>()
                .expect("rows");
            let plan = plan.join(" / ");
            assert!(plan.contains(want) && !plan.contains("TEMP B-TREE"), "{sql}\n  plan: {plan}");
        }
    }
}
