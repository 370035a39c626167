//! The values the store keeps and returns. Plain data, no behaviour.
//!
//! Invariants: `seq` starts at 1 in each room (0 means "nothing yet" in marks
//! and `last_seq`); `frame` is the complete outgoing `message` JSON, stored and
//! returned verbatim.

use std::sync::Arc;

use bytes::Bytes;

use crate::{MsgId, SmallStr};

/// One chat message as stored: its identity, its metadata for lookups, and the exact frame sent to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// The room the message belongs to (shared: the sequencer keeps one per room, so a send
    /// does not copy it).
    pub room: Arc<str>,
    /// Its sequence number in the room (1, 2, ...); `(room, seq)` identifies the message.
    pub seq: u64,
    /// The message id given to clients.
    pub msg_id: MsgId,
    /// The sending user (shared, like `room`).
    pub sender: Arc<str>,
    /// Server time of sequencing, milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// The client's idempotency key, if it sent one (inline up to 62 bytes).
    pub client_id: Option<SmallStr>,
    /// The seq of the thread root it replies to, when it is a reply.
    pub reply_to: Option<u64>,
    /// The complete `message` JSON exactly as sent to clients; stored verbatim and returned verbatim.
    pub frame: Bytes,
}

/// What the store knows of a room when its owner loads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomState {
    /// The room's epoch: changes when seqs may have been lost (an unclean restart in fast mode).
    pub epoch: u64,
    /// The highest stored seq, 0 when the room has no message.
    pub last_seq: u64,
}

/// One page of a room's history, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// The messages, ascending seq.
    pub messages: Vec<StoredMessage>,
    /// The seq to pass as `before` for the next older page; `None` when this page reaches the room's first stored message.
    pub next_before: Option<u64>,
}

/// Which per-user mark of a room to move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MarkKind {
    /// The highest seq the user has read.
    Read,
    /// The highest seq delivered to one of the user's connections.
    Delivered,
}

/// A room in a user's room list, with the user's marks there (0 when never set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRoom {
    /// The room.
    pub room: String,
    /// The room's last stored seq (0 when none).
    pub seq: u64,
    /// The read mark.
    pub read: u64,
    /// The delivered mark.
    pub delivered: u64,
    /// Messages after the read mark that someone else sent, counted up to [`crate::MAX_UNREAD`].
    pub unread: u64,
}

/// Add or remove one user's reaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReactionOp {
    /// Add the reaction (adding it twice keeps one).
    Add,
    /// Remove the reaction (removing an absent one is not an error).
    Remove,
}

/// How many users reacted to one message with one emoji, and whether the asking user is one of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReactionCount {
    /// The message.
    pub seq: u64,
    /// The emoji.
    pub emoji: String,
    /// Users who reacted with it (at least 1).
    pub count: u64,
    /// Whether the asking user is one of them.
    pub me: bool,
}
