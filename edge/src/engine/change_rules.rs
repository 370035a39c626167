//! What an edit, delete or reaction of a sent message may do: decided the same
//! way on one node (the room's owner, `owner/changes.rs`) and in a cluster on a
//! shared store (`shard/cluster_changes.rs`). Pure: the callers read the
//! message and its reactions from the store, and write what these decide.
//!
//! What must stay true (both modes):
//! - a deleted message stays a tombstone: it keeps its seq and cannot be
//!   edited, deleted again or reacted to;
//! - only the author, or a moderator, edits or deletes;
//! - a message carries at most [`MAX_EMOJIS_PER_MESSAGE`] distinct emojis, and
//!   one user puts at most [`MAX_EMOJIS_PER_USER`] on one message;
//! - a reaction already there (or already gone) is acked and tells nobody.

use bytes::Bytes;
use router::{ChangeMsg, ChangeOp};
use storage::{Query, ReactionCount, ReactionOp};

use crate::protocol::server::{self, StoredView};
use crate::protocol::ErrorCode;

/// Distinct emojis one message may carry.
pub const MAX_EMOJIS_PER_MESSAGE: usize = 20;
/// Emojis one user may put on one message.
pub const MAX_EMOJIS_PER_USER: usize = 5;

/// What a change does once its message is read.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// A reaction: the message's reactions are read next, for the bounds.
    React {
        /// The message's id (for the ack).
        msg_id: String,
    },
    /// An edit or a delete: `frame` is the new version to store.
    Replace {
        /// The new stored frame (a tombstone for a delete).
        frame: Bytes,
        /// The message's id (for the ack).
        msg_id: String,
    },
}

/// Step 1: what change `c` does to its message as stored (`frame`; `None`: not stored), or
/// the error that answers it.
pub fn plan(c: &ChangeMsg, frame: Option<&Bytes>, now_ms: u64) -> Result<Plan, Bytes> {
    let view = frame.and_then(|f| StoredView::parse(f));
    let Some(view) = view.filter(|v| !v.deleted) else {
        let what = if frame.is_some() { "was deleted" } else { "is not stored" };
        let msg = format!("message {} of {} {what}", c.seq, c.room);
        return Err(server::error(c.req.as_deref(), ErrorCode::NotFound, &msg, None));
    };
    let msg_id = view.msg_id().to_owned();
    let frame = match &c.op {
        ChangeOp::React { .. } => return Ok(Plan::React { msg_id }),
        _ if view.from != c.user && !c.moderator => {
            let msg = format!(
                "message {} of {} is {}'s: only its author or a moderator may change it",
                c.seq, c.room, view.from
            );
            return Err(server::error(c.req.as_deref(), ErrorCode::Forbidden, &msg, None));
        }
        ChangeOp::Edit { body } => view.edited(body, now_ms),
        ChangeOp::Delete => view.deleted(now_ms),
    };
    Ok(Plan::Replace { frame, msg_id })
}

/// Step 2 of a reaction, given the message's reactions as `c.user` sees them: the write to
/// make (`None`: it is already so), or the error that refuses it.
pub fn react_write(c: &ChangeMsg, counts: &[ReactionCount]) -> Result<Option<Query>, Bytes> {
    let ChangeOp::React { emoji, add } = &c.op else {
        return Ok(None);
    };
    let mine = counts.iter().any(|r| r.me && r.emoji == *emoji);
    if mine == *add {
        return Ok(None);
    }
    let known = counts.iter().any(|r| r.emoji == *emoji);
    if *add && !known && counts.len() >= MAX_EMOJIS_PER_MESSAGE {
        let msg = format!(
            "message {} has {MAX_EMOJIS_PER_MESSAGE} different reactions, the most a message may have",
            c.seq
        );
        return Err(server::error(c.req.as_deref(), ErrorCode::TooLarge, &msg, None));
    }
    if *add && counts.iter().filter(|r| r.me).count() >= MAX_EMOJIS_PER_USER {
        let msg = format!(
            "you have {MAX_EMOJIS_PER_USER} reactions on message {}, the most one user may put on a message",
            c.seq
        );
        return Err(server::error(c.req.as_deref(), ErrorCode::TooLarge, &msg, None));
    }
    Ok(Some(Query::React {
        room: c.room.clone(),
        seq: c.seq,
        user: c.user.clone(),
        emoji: emoji.clone(),
        op: if *add { ReactionOp::Add } else { ReactionOp::Remove },
    }))
}

/// The query that reads a reaction's bounds: the message's reactions as `c.user` sees them.
pub fn bounds_query(c: &ChangeMsg) -> Query {
    Query::ReactionCounts {
        room: c.room.clone(),
        from: c.seq,
        to: c.seq,
        user: c.user.clone(),
    }
}

/// The query that reads change `c`'s message.
pub fn lookup_query(c: &ChangeMsg) -> Query {
    Query::RangeAfter {
        room: c.room.clone(),
        after: c.seq.saturating_sub(1),
        limit: 1,
    }
}

/// The event the members get once the store holds change `c`.
pub fn event(c: &ChangeMsg, now_ms: u64) -> Bytes {
    match &c.op {
        ChangeOp::Edit { body } => server::update(&c.room, c.seq, Some(body), now_ms),
        ChangeOp::Delete => server::update(&c.room, c.seq, None, now_ms),
        ChangeOp::React { emoji, add } => server::reaction(&c.room, c.seq, &c.user, emoji, *add),
    }
}

/// The reactions of message `seq` among `counts` (sorted by seq, as the store answers them).
pub fn of_message(counts: &[ReactionCount], seq: u64) -> &[ReactionCount] {
    let start = counts.partition_point(|c| c.seq < seq);
    let end = counts.partition_point(|c| c.seq <= seq);
    &counts[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(user: &str, op: ChangeOp) -> ChangeMsg {
        ChangeMsg {
            room: "r".into(),
            seq: 3,
            user: user.into(),
            moderator: false,
            conn: 1,
            // The request id as the client sent it (raw JSON).
            req: Some("\"q\"".into()),
            op,
        }
    }

    fn stored() -> Bytes {
        server::message(&server::MessageOut {
            room: "r",
            seq: 3,
            msg_id: "m3",
            from: "ann",
            ts: 5,
            body: "hi",
            kind: "text",
            file: None,
            reply_to: None,
        })
    }

    fn code(reply: &Bytes) -> String {
        let v: serde_json::Value = serde_json::from_slice(reply).expect("json");
        v["code"].as_str().unwrap_or_default().to_owned()
    }

    #[test]
    fn only_the_author_or_a_moderator_edits_and_a_tombstone_stays() {
        let edit = change("bob", ChangeOp::Edit { body: "x".into() });
        assert_eq!(code(&plan(&edit, Some(&stored()), 9).expect_err("not bob's")), "forbidden");
        let edit = ChangeMsg { moderator: true, ..edit };
        let Ok(Plan::Replace { frame, msg_id }) = plan(&edit, Some(&stored()), 9) else {
            panic!("a moderator may edit");
        };
        assert_eq!(msg_id, "m3");
        assert!(StoredView::parse(&frame).is_some_and(|v| !v.deleted));
        let delete = change("ann", ChangeOp::Delete);
        let Ok(Plan::Replace { frame: gone, .. }) = plan(&delete, Some(&stored()), 9) else {
            panic!("the author may delete");
        };
        assert_eq!(code(&plan(&delete, Some(&gone), 10).expect_err("deleted")), "not_found");
        let react = change(
            "bob",
            ChangeOp::React {
                emoji: "👍".into(),
                add: true,
            },
        );
        assert_eq!(
            code(&plan(&react, Some(&gone), 10).expect_err("no reactions on a tombstone")),
            "not_found"
        );
        assert_eq!(code(&plan(&react, None, 10).expect_err("not stored")), "not_found");
        assert_eq!(plan(&react, Some(&stored()), 10), Ok(Plan::React { msg_id: "m3".into() }));
    }

    #[test]
    fn reactions_are_bounded_and_idempotent() {
        let count = |emoji: &str, me: bool| ReactionCount {
            seq: 3,
            emoji: emoji.into(),
            count: 1,
            me,
        };
        let add = change(
            "bob",
            ChangeOp::React {
                emoji: "a".into(),
                add: true,
            },
        );
        let remove = change(
            "bob",
            ChangeOp::React {
                emoji: "a".into(),
                add: false,
            },
        );
        assert_eq!(react_write(&add, &[count("a", true)]), Ok(None), "already there");
        assert_eq!(react_write(&remove, &[count("a", false)]), Ok(None), "not mine");
        assert!(matches!(react_write(&add, &[]), Ok(Some(Query::React { op: ReactionOp::Add, .. }))));
        assert!(matches!(
            react_write(&remove, &[count("a", true)]),
            Ok(Some(Query::React {
                op: ReactionOp::Remove,
                ..
            }))
        ));
        let full: Vec<_> = (0..MAX_EMOJIS_PER_MESSAGE).map(|i| count(&format!("e{i}"), false)).collect();
        assert_eq!(code(&react_write(&add, &full).expect_err("per message")), "too_large");
        let mut known = full.clone();
        known[0] = count("a", false);
        assert!(
            react_write(&add, &known).is_ok_and(|q| q.is_some()),
            "an emoji already there adds no kind"
        );
        let mine: Vec<_> = (0..MAX_EMOJIS_PER_USER).map(|i| count(&format!("e{i}"), true)).collect();
        assert_eq!(code(&react_write(&add, &mine).expect_err("per user")), "too_large");
    }
}
