//! Every CQL statement the Scylla backend runs, in one place, each tied at compile time to the Rust
//! types it binds and reads; plus the row types themselves.
//!
//! Invariants:
//! - a statement is a [`Cql<B, R>`]: executing it takes a `&B` and decodes `R`
//!   rows, so the compiler keeps call sites and declarations in agreement;
//! - row types are declared with `cql_row!`, which derives the driver's
//!   `SerializeRow`/`DeserializeRow` in *positional* mode and records each
//!   field's name and CQL type ([`CqlColumns`]); the offline checker
//!   (`cql_check`, tests only) parses the schema files and every statement in
//!   [`all`] and checks each bound `?` and each selected column against them,
//!   by position, name and type;
//! - field names are the column names; the pseudo-binds are `limit` (int, for
//!   `LIMIT ?`) and `write_timestamp` (bigint, for `USING TIMESTAMP ?`).

use std::marker::PhantomData;

use bytes::Bytes;

/// The CQL types the schema uses.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CqlType {
    Text,
    BigInt,
    Int,
    Blob,
    Boolean,
}

/// The CQL type a Rust type is bound to or read from (`Option<T>`: a nullable `T`).
#[cfg(test)]
pub(crate) trait CqlTyped {
    const CQL: CqlType;
}

#[cfg(test)]
impl CqlTyped for String {
    const CQL: CqlType = CqlType::Text;
}
#[cfg(test)]
impl CqlTyped for i64 {
    const CQL: CqlType = CqlType::BigInt;
}
#[cfg(test)]
impl CqlTyped for i32 {
    const CQL: CqlType = CqlType::Int;
}
#[cfg(test)]
impl CqlTyped for Bytes {
    const CQL: CqlType = CqlType::Blob;
}
#[cfg(test)]
impl CqlTyped for bool {
    const CQL: CqlType = CqlType::Boolean;
}
#[cfg(test)]
impl<T: CqlTyped> CqlTyped for Option<T> {
    const CQL: CqlType = T::CQL;
}

/// The fields of a row type, in order, with their CQL types (used by the offline checker only).
#[cfg(test)]
pub(crate) trait CqlColumns {
    const COLUMNS: &'static [(&'static str, CqlType)];
}

#[cfg(test)]
impl CqlColumns for () {
    const COLUMNS: &'static [(&'static str, CqlType)] = &[];
}

/// Declares a row type: positional (de)serialization plus (in tests) its `CqlColumns`.
macro_rules! cql_row {
    ($(#[$doc:meta])* $name:ident { $($field:ident : $ty:ty),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, ::scylla::SerializeRow, ::scylla::DeserializeRow)]
        #[scylla(flavor = "enforce_order", skip_name_checks)]
        pub(crate) struct $name {
            $(pub(crate) $field: $ty,)+
        }
        #[cfg(test)]
        impl CqlColumns for $name {
            const COLUMNS: &'static [(&'static str, CqlType)] = &[$((stringify!($field), <$ty as CqlTyped>::CQL),)+];
        }
    };
}
#[cfg(test)]
pub(crate) use cql_row;

cql_row!(
    /// A message row: bound by inserts, read by every message select.
    MessageRow { room: String, bucket: i64, seq: i64, msg_id: String, sender: String, ts_ms: i64, client_id: Option<String>, frame: Bytes, reply_to: Option<i64> }
);
cql_row!(RoomBucket { room: String, bucket: i64 });
cql_row!(BucketsFrom {
    room: String,
    bucket: i64,
    limit: i32
});
cql_row!(BucketRow { bucket: i64 });
cql_row!(MessagesFrom {
    room: String,
    bucket: i64,
    seq: i64,
    limit: i32
});
cql_row!(MessageKey {
    room: String,
    bucket: i64,
    seq: i64
});
cql_row!(FrameUpdate {
    frame: Bytes,
    room: String,
    bucket: i64,
    seq: i64
});
cql_row!(ClientIdRow {
    room: String,
    sender: String,
    client_id: String,
    seq: i64
});
cql_row!(ClientIdKey {
    room: String,
    sender: String,
    client_id: String
});
cql_row!(SeqRow { seq: i64 });
cql_row!(ThreadRow {
    room: String,
    root: i64,
    seq: i64
});
cql_row!(ThreadFrom {
    room: String,
    root: i64,
    seq: i64,
    limit: i32
});
cql_row!(ThreadKey {
    room: String,
    root: i64,
    limit: i32
});
cql_row!(RoomKey { room: String });
cql_row!(RoomEpoch { room: String, epoch: i64 });
cql_row!(EpochUpdate { epoch: i64, room: String });
cql_row!(EpochRow { epoch: Option<i64> });
cql_row!(ReadMarkUpdate {
    write_timestamp: i64,
    read_seq: i64,
    user_id: String,
    room: String
});
cql_row!(DeliveredMarkUpdate {
    write_timestamp: i64,
    delivered_seq: i64,
    user_id: String,
    room: String
});
cql_row!(MarkKey {
    user_id: String,
    room: String
});
cql_row!(MarkRow { read_seq: Option<i64>, delivered_seq: Option<i64> });
cql_row!(UserKey {
    user_id: String,
    limit: i32
});
cql_row!(UserMarkRow { room: String, read_seq: Option<i64>, delivered_seq: Option<i64> });
cql_row!(Reaction {
    room: String,
    seq: i64,
    emoji: String,
    user_id: String
});
cql_row!(ReactionsKey {
    room: String,
    seq: i64,
    limit: i32
});
cql_row!(ReactionPair {
    emoji: String,
    user_id: String
});
cql_row!(UserRoomRow {
    user_id: String,
    room: String
});
cql_row!(RoomRow { room: String });
cql_row!(LastSeenRow {
    write_timestamp: i64,
    ts_ms: i64,
    user_id: String
});
cql_row!(TsRow { ts_ms: Option<i64> });
cql_row!(UserIdKey { user_id: String });
cql_row!(NodeKey { node_id: String });
cql_row!(NodeRun {
    node_id: String,
    open: bool
});
cql_row!(OpenRow { open: Option<bool> });
cql_row!(Migration {
    version: i32,
    name: String,
    applied_at_ms: i64
});
cql_row!(VersionRow { version: i32 });

/// A CQL statement that binds a `B` and returns `R` rows.
pub(crate) struct Cql<B, R> {
    pub(crate) name: &'static str,
    pub(crate) text: &'static str,
    _types: PhantomData<fn() -> (B, R)>,
}

impl<B, R> Cql<B, R> {
    pub(crate) const fn new(name: &'static str, text: &'static str) -> Self {
        Self {
            name,
            text,
            _types: PhantomData,
        }
    }
}

/// A statement's text with the columns of its bind and row types, for the offline checker.
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct StatementInfo {
    pub(crate) name: &'static str,
    pub(crate) text: &'static str,
    pub(crate) binds: &'static [(&'static str, CqlType)],
    pub(crate) row: &'static [(&'static str, CqlType)],
}

#[cfg(test)]
impl<B: CqlColumns, R: CqlColumns> Cql<B, R> {
    pub(crate) fn info(&self) -> StatementInfo {
        StatementInfo {
            name: self.name,
            text: self.text,
            binds: B::COLUMNS,
            row: R::COLUMNS,
        }
    }
}

/// Declares the statements and [`all`], the list the backend prepares and the checker checks.
macro_rules! statements {
    ($($(#[$doc:meta])* $name:ident : $bind:ty => $row:ty = $text:expr;)+) => {
        $($(#[$doc])* pub(crate) const $name: Cql<$bind, $row> = Cql::new(stringify!($name), $text);)+

        /// The name and text of every statement the store prepares.
        pub(crate) const ALL_TEXTS: &[(&str, &str)] = &[$((stringify!($name), $text),)+];

        /// Every statement with its types, for the offline checker.
        #[cfg(test)]
        pub(crate) fn all() -> Vec<StatementInfo> {
            vec![$($name.info(),)+]
        }
    };
}

/// The columns of [`MessageRow`], in its field order.
macro_rules! message_columns {
    () => {
        "room, bucket, seq, msg_id, sender, ts_ms, client_id, frame, reply_to"
    };
}

statements! {
    INSERT_MESSAGE: MessageRow => () =
        concat!("INSERT INTO messages (", message_columns!(), ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)");
    INSERT_ROOM_BUCKET: RoomBucket => () = "INSERT INTO room_buckets (room, bucket) VALUES (?, ?)";
    /// Buckets at or below `bucket`, newest first.
    SELECT_BUCKETS_DOWN: BucketsFrom => BucketRow = "SELECT bucket FROM room_buckets WHERE room = ? AND bucket <= ? LIMIT ?";
    /// Buckets at or above `bucket`, oldest first.
    SELECT_BUCKETS_UP: BucketsFrom => BucketRow =
        "SELECT bucket FROM room_buckets WHERE room = ? AND bucket >= ? ORDER BY bucket ASC LIMIT ?";
    /// Messages of one partition below `seq`, newest first.
    SELECT_MESSAGES_BEFORE: MessagesFrom => MessageRow =
        concat!("SELECT ", message_columns!(), " FROM messages WHERE room = ? AND bucket = ? AND seq < ? LIMIT ?");
    /// Messages of one partition above `seq`, oldest first.
    SELECT_MESSAGES_AFTER: MessagesFrom => MessageRow =
        concat!("SELECT ", message_columns!(), " FROM messages WHERE room = ? AND bucket = ? AND seq > ? ORDER BY seq ASC LIMIT ?");
    SELECT_MESSAGE: MessageKey => MessageRow =
        concat!("SELECT ", message_columns!(), " FROM messages WHERE room = ? AND bucket = ? AND seq = ?");
    /// An edit or delete: the stored frame of one message (checked to exist first).
    UPDATE_FRAME: FrameUpdate => () = "UPDATE messages SET frame = ? WHERE room = ? AND bucket = ? AND seq = ?";
    INSERT_THREAD_REPLY: ThreadRow => () = "INSERT INTO thread_replies (room, root, seq) VALUES (?, ?, ?)";
    /// A thread's replies below `seq`, newest first.
    SELECT_THREAD_BEFORE: ThreadFrom => SeqRow = "SELECT seq FROM thread_replies WHERE room = ? AND root = ? AND seq < ? LIMIT ?";
    /// A thread's replies (counted).
    SELECT_THREAD: ThreadKey => SeqRow = "SELECT seq FROM thread_replies WHERE room = ? AND root = ? LIMIT ?";
    INSERT_CLIENT_ID: ClientIdRow => () = "INSERT INTO client_ids (room, sender, client_id, seq) VALUES (?, ?, ?, ?)";
    SELECT_CLIENT_ID: ClientIdKey => SeqRow = "SELECT seq FROM client_ids WHERE room = ? AND sender = ? AND client_id = ?";
    /// Creates the room with its first epoch unless it exists (a lightweight transaction, run once per room).
    INSERT_ROOM_IF_ABSENT: RoomEpoch => () = "INSERT INTO rooms (room, epoch) VALUES (?, ?) IF NOT EXISTS";
    SELECT_EPOCH: RoomKey => EpochRow = "SELECT epoch FROM rooms WHERE room = ?";
    UPDATE_EPOCH: EpochUpdate => () = "UPDATE rooms SET epoch = ? WHERE room = ?";
    /// The write timestamp is the mark itself: the highest mark wins.
    UPDATE_READ_MARK: ReadMarkUpdate => () = "UPDATE marks USING TIMESTAMP ? SET read_seq = ? WHERE user_id = ? AND room = ?";
    UPDATE_DELIVERED_MARK: DeliveredMarkUpdate => () =
        "UPDATE marks USING TIMESTAMP ? SET delivered_seq = ? WHERE user_id = ? AND room = ?";
    SELECT_MARK: MarkKey => MarkRow = "SELECT read_seq, delivered_seq FROM marks WHERE user_id = ? AND room = ?";
    SELECT_USER_MARKS: UserKey => UserMarkRow = "SELECT room, read_seq, delivered_seq FROM marks WHERE user_id = ? LIMIT ?";
    INSERT_REACTION: Reaction => () = "INSERT INTO reactions (room, seq, emoji, user_id) VALUES (?, ?, ?, ?)";
    DELETE_REACTION: Reaction => () = "DELETE FROM reactions WHERE room = ? AND seq = ? AND emoji = ? AND user_id = ?";
    SELECT_REACTIONS: ReactionsKey => ReactionPair = "SELECT emoji, user_id FROM reactions WHERE room = ? AND seq = ? LIMIT ?";
    /// The write timestamp is the time itself: the latest wins, as with marks.
    UPDATE_LAST_SEEN: LastSeenRow => () = "UPDATE last_seen USING TIMESTAMP ? SET ts_ms = ? WHERE user_id = ?";
    SELECT_LAST_SEEN: UserIdKey => TsRow = "SELECT ts_ms FROM last_seen WHERE user_id = ?";
    INSERT_USER_ROOM: UserRoomRow => () = "INSERT INTO user_rooms (user_id, room) VALUES (?, ?)";
    SELECT_USER_ROOMS: UserKey => RoomRow = "SELECT room FROM user_rooms WHERE user_id = ? LIMIT ?";
    SELECT_NODE_RUN: NodeKey => OpenRow = "SELECT open FROM node_runs WHERE node_id = ?";
    UPSERT_NODE_RUN: NodeRun => () = "INSERT INTO node_runs (node_id, open) VALUES (?, ?)";
    SELECT_MIGRATIONS: () => VersionRow = "SELECT version FROM schema_migrations";
    INSERT_MIGRATION: Migration => () = "INSERT INTO schema_migrations (version, name, applied_at_ms) VALUES (?, ?, ?)";
}
