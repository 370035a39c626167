//! [`MessageStore`]: the one trait every backend implements, run from the store thread.
//!
//! Invariants (checked by [`crate::conformance`] for every backend):
//! - `write_batch` is idempotent by `(room, seq)`;
//! - `room_state().last_seq` is the highest stored seq of the room;
//! - `history` pages are ascending, never overlap, and `next_before` is `None`
//!   exactly when the page holds the room's first stored message (or the page is empty);
//! - marks only move forward; reactions and room lists are sets.
//!
//! The futures are `Send` because the Scylla driver's are and the store thread
//! spawns them as tasks; implementations may write `async fn` in their impls.

use std::future::Future;

use bytes::Bytes;

use crate::{HistoryPage, MarkKind, ReactionCount, ReactionOp, RoomState, StoreError, StoredMessage, UserRoom};

/// A durable store of rooms' messages and per-user state.
pub trait MessageStore: Send + Sync + 'static {
    /// Writes the messages, all or (on error) possibly some of them; writing a message again keeps one copy.
    fn write_batch(&self, msgs: &[StoredMessage]) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The room's epoch and highest stored seq; creates the room with `new_epoch` if the store has never seen it.
    fn room_state(&self, room: &str, new_epoch: u64) -> impl Future<Output = Result<RoomState, StoreError>> + Send;

    /// Sets the room's epoch (after an unclean restart in fast mode); creates the room if absent.
    fn set_epoch(&self, room: &str, epoch: u64) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The newest `limit` (at most [`crate::MAX_PAGE_MESSAGES`]) messages with seq < `before` (or the newest), ascending.
    fn history(&self, room: &str, before: Option<u64>, limit: usize) -> impl Future<Output = Result<HistoryPage, StoreError>> + Send;

    /// Messages with seq > `after`, ascending, at most `limit` (capped at [`crate::MAX_PAGE_MESSAGES`]).
    fn range_after(&self, room: &str, after: u64, limit: usize) -> impl Future<Output = Result<Vec<StoredMessage>, StoreError>> + Send;

    /// The message `sender` sent to `room` with this `client_id`, if stored.
    fn find_client_id(
        &self,
        room: &str,
        sender: &str,
        client_id: &str,
    ) -> impl Future<Output = Result<Option<StoredMessage>, StoreError>> + Send;

    /// One page of the replies to message `root` (its thread): the newest `limit` (at most
    /// [`crate::MAX_PAGE_MESSAGES`]) with seq < `before` (or the newest), ascending.
    fn thread(
        &self,
        room: &str,
        root: u64,
        before: Option<u64>,
        limit: usize,
    ) -> impl Future<Output = Result<HistoryPage, StoreError>> + Send;

    /// How many replies each message `from..=to` (at most [`crate::MAX_PAGE_MESSAGES`] seqs) has,
    /// as `(root seq, count)` ascending, for the messages with at least one.
    fn reply_counts(&self, room: &str, from: u64, to: u64) -> impl Future<Output = Result<Vec<(u64, u64)>, StoreError>> + Send;

    /// Moves the user's mark in the room forward to `seq` (never back) and returns the resulting mark.
    fn set_mark(&self, room: &str, user: &str, kind: MarkKind, seq: u64) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// [`Self::set_mark`] for each of `users` (all or, on error, possibly some); the resulting
    /// marks in `users` order.
    fn set_marks(
        &self,
        room: &str,
        users: &[String],
        kind: MarkKind,
        seq: u64,
    ) -> impl Future<Output = Result<Vec<u64>, StoreError>> + Send;

    /// Adds or removes `user`'s `emoji` on message `seq`; both are idempotent.
    fn react(&self, room: &str, seq: u64, user: &str, emoji: &str, op: ReactionOp) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The reactions on message `seq` as `(emoji, user)` pairs, sorted, at most [`crate::MAX_LIST_ITEMS`].
    fn reactions(&self, room: &str, seq: u64) -> impl Future<Output = Result<Vec<(String, String)>, StoreError>> + Send;

    /// The reactions on the messages `from..=to` (at most [`crate::MAX_PAGE_MESSAGES`] seqs), one
    /// entry per message and emoji, ascending by (seq, emoji), with `me` saying whether `user` is among them.
    fn reaction_counts(
        &self,
        room: &str,
        from: u64,
        to: u64,
        user: &str,
    ) -> impl Future<Output = Result<Vec<ReactionCount>, StoreError>> + Send;

    /// Replaces the frame of stored message `seq` (an edit or a delete); false when the store
    /// holds no such message. Nothing else of the message changes.
    fn replace_frame(&self, room: &str, seq: u64, frame: &Bytes) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Records that `user` was last seen at `ts_ms` (a later time than the stored one wins).
    fn set_last_seen(&self, user: &str, ts_ms: u64) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// When `user` was last seen, if ever.
    fn last_seen(&self, user: &str) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send;

    /// Adds `room` to `user`'s room list (idempotent).
    fn add_user_room(&self, user: &str, room: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The user's rooms, sorted by room, with the user's marks there (at most [`crate::MAX_LIST_ITEMS`]).
    fn user_rooms(&self, user: &str) -> impl Future<Output = Result<Vec<UserRoom>, StoreError>> + Send;

    /// Marks a run of `node_id` as open; returns whether the previous run ended with `end_run`
    /// (true also when the node never ran before).
    fn begin_run(&self, node_id: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Marks the current run of `node_id` as cleanly ended.
    fn end_run(&self, node_id: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Whether the store answers: one cheap read (the writer probes an unreachable store with
    /// it while no write is waiting).
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        let read = self.last_seen("");
        async move { read.await.map(|_| ()) }
    }
}
