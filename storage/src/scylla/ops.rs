//! [`MessageStore`] for [`ScyllaStore`]: rooms, marks, reactions, room lists and node runs; messages
//! are in `messages.rs`.
//!
//! Invariants: every call is a fixed, small number of single-partition
//! statements; marks go forward through `USING TIMESTAMP <mark>`; a room's
//! first epoch is set once with `IF NOT EXISTS`.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use futures_util::stream::{self, StreamExt, TryStreamExt};

use super::messages::{bucket_of, clamp_limit, from_row};
use super::statements::*;
use super::{ScyllaStore, PARTITION_CONCURRENCY};
use crate::error::{to_i64, to_u64};
use crate::{
    HistoryPage, MarkKind, MessageStore, ReactionCount, ReactionOp, RoomState, StoreError, StoredMessage, UserRoom, MAX_LIST_ITEMS,
    MAX_PAGE_MESSAGES, MAX_UNREAD,
};

impl MessageStore for ScyllaStore {
    async fn write_batch(&self, msgs: &[StoredMessage]) -> Result<(), StoreError> {
        self.write_messages(msgs).await
    }

    async fn room_state(&self, room: &str, new_epoch: u64) -> Result<RoomState, StoreError> {
        let p = &*self.prepared;
        let key = RoomKey { room: room.to_owned() };
        let mut epoch = p.rows(&SELECT_EPOCH, &key).await?.pop().and_then(|r| r.epoch);
        if epoch.is_none() {
            let create = RoomEpoch {
                room: room.to_owned(),
                epoch: to_i64("epoch", new_epoch)?,
            };
            p.run(&INSERT_ROOM_IF_ABSENT, &create).await?;
            epoch = p.rows(&SELECT_EPOCH, &key).await?.pop().and_then(|r| r.epoch);
        }
        let epoch = epoch.ok_or_else(|| StoreError::Internal(format!("room {room}: epoch missing right after creating it")))?;
        let last = self.newest_before(room, i64::MAX, 1).await?;
        let last_seq = match last.first() {
            Some(r) => to_u64("seq", r.seq)?,
            None => 0,
        };
        Ok(RoomState {
            epoch: to_u64("epoch", epoch)?,
            last_seq,
        })
    }

    async fn set_epoch(&self, room: &str, epoch: u64) -> Result<(), StoreError> {
        let update = EpochUpdate {
            epoch: to_i64("epoch", epoch)?,
            room: room.to_owned(),
        };
        self.prepared.run(&UPDATE_EPOCH, &update).await.map(drop)
    }

    async fn history(&self, room: &str, before: Option<u64>, limit: usize) -> Result<HistoryPage, StoreError> {
        self.page(room, None, before, limit).await
    }

    async fn range_after(&self, room: &str, after: u64, limit: usize) -> Result<Vec<StoredMessage>, StoreError> {
        let limit = clamp_limit(limit);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rows = self.oldest_after(room, to_i64("after", after)?, limit).await?;
        rows.into_iter().map(from_row).collect()
    }

    async fn thread(&self, room: &str, root: u64, before: Option<u64>, limit: usize) -> Result<HistoryPage, StoreError> {
        self.page(room, Some(to_i64("root", root)?), before, limit).await
    }

    async fn reply_counts(&self, room: &str, from: u64, to: u64) -> Result<Vec<(u64, u64)>, StoreError> {
        let from = to_i64("from", from)?;
        let to = to_i64("to", to)?.min(from.saturating_add(MAX_PAGE_MESSAGES as i64 - 1));
        // One partition per root: read them concurrently, bounded, and count here.
        let counts: Vec<(i64, usize)> = stream::iter(from..=to)
            .map(|root| async move {
                let key = ThreadKey {
                    room: room.to_owned(),
                    root,
                    limit: MAX_LIST_ITEMS as i32,
                };
                Ok::<_, StoreError>((root, self.prepared.rows(&SELECT_THREAD, &key).await?.len()))
            })
            .buffered(PARTITION_CONCURRENCY)
            .try_collect()
            .await?;
        counts
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(root, n)| Ok((to_u64("root", root)?, n as u64)))
            .collect()
    }

    async fn find_client_id(&self, room: &str, sender: &str, client_id: &str) -> Result<Option<StoredMessage>, StoreError> {
        let p = &*self.prepared;
        let key = ClientIdKey {
            room: room.to_owned(),
            sender: sender.to_owned(),
            client_id: client_id.to_owned(),
        };
        let Some(found) = p.rows(&SELECT_CLIENT_ID, &key).await?.pop() else {
            return Ok(None);
        };
        let key = MessageKey {
            room: room.to_owned(),
            bucket: bucket_of(found.seq),
            seq: found.seq,
        };
        p.rows(&SELECT_MESSAGE, &key).await?.pop().map(from_row).transpose()
    }

    async fn set_mark(&self, room: &str, user: &str, kind: MarkKind, seq: u64) -> Result<u64, StoreError> {
        let p = &*self.prepared;
        let seq = to_i64("mark", seq)?;
        let (user_id, room_s) = (user.to_owned(), room.to_owned());
        match kind {
            MarkKind::Read => {
                p.run(
                    &UPDATE_READ_MARK,
                    &ReadMarkUpdate {
                        write_timestamp: seq,
                        read_seq: seq,
                        user_id,
                        room: room_s,
                    },
                )
                .await?
            }
            MarkKind::Delivered => {
                let update = DeliveredMarkUpdate {
                    write_timestamp: seq,
                    delivered_seq: seq,
                    user_id,
                    room: room_s,
                };
                p.run(&UPDATE_DELIVERED_MARK, &update).await?
            }
        };
        let row = p
            .rows(
                &SELECT_MARK,
                &MarkKey {
                    user_id: user.to_owned(),
                    room: room.to_owned(),
                },
            )
            .await?
            .pop();
        let mark = row.and_then(|r| match kind {
            MarkKind::Read => r.read_seq,
            MarkKind::Delivered => r.delivered_seq,
        });
        to_u64("mark", mark.unwrap_or(seq).max(seq))
    }

    async fn set_marks(&self, room: &str, users: &[String], kind: MarkKind, seq: u64) -> Result<Vec<u64>, StoreError> {
        // One partition per user: concurrently, bounded, in `users` order.
        let mut marks = Vec::with_capacity(users.len());
        for chunk in users.chunks(PARTITION_CONCURRENCY) {
            marks.extend(futures_util::future::try_join_all(chunk.iter().map(|u| self.set_mark(room, u, kind, seq))).await?);
        }
        Ok(marks)
    }

    async fn react(&self, room: &str, seq: u64, user: &str, emoji: &str, op: ReactionOp) -> Result<(), StoreError> {
        let row = Reaction {
            room: room.to_owned(),
            seq: to_i64("seq", seq)?,
            emoji: emoji.to_owned(),
            user_id: user.to_owned(),
        };
        let cql = match op {
            ReactionOp::Add => &INSERT_REACTION,
            ReactionOp::Remove => &DELETE_REACTION,
        };
        self.prepared.run(cql, &row).await.map(drop)
    }

    async fn reactions(&self, room: &str, seq: u64) -> Result<Vec<(String, String)>, StoreError> {
        let key = ReactionsKey {
            room: room.to_owned(),
            seq: to_i64("seq", seq)?,
            limit: MAX_LIST_ITEMS as i32,
        };
        let rows = self.prepared.rows(&SELECT_REACTIONS, &key).await?;
        Ok(rows.into_iter().map(|r| (r.emoji, r.user_id)).collect())
    }

    async fn reaction_counts(&self, room: &str, from: u64, to: u64, user: &str) -> Result<Vec<ReactionCount>, StoreError> {
        let from = to_i64("from", from)?;
        let to = to_i64("to", to)?.min(from.saturating_add(MAX_PAGE_MESSAGES as i64 - 1));
        // One partition per message: read them concurrently, bounded, and count here.
        let keys = (from..=to).map(|seq| ReactionsKey {
            room: room.to_owned(),
            seq,
            limit: MAX_LIST_ITEMS as i32,
        });
        let pages: Vec<(i64, Vec<ReactionPair>)> = stream::iter(keys)
            .map(|key| async move { Ok::<_, StoreError>((key.seq, self.prepared.rows(&SELECT_REACTIONS, &key).await?)) })
            .buffered(PARTITION_CONCURRENCY)
            .try_collect()
            .await?;
        let mut out = Vec::new();
        for (seq, pairs) in pages {
            let mut by_emoji: BTreeMap<String, (u64, bool)> = BTreeMap::new();
            for pair in pairs {
                let e = by_emoji.entry(pair.emoji).or_default();
                e.0 += 1;
                e.1 |= pair.user_id == user;
            }
            let seq = to_u64("seq", seq)?;
            out.extend(
                by_emoji
                    .into_iter()
                    .map(|(emoji, (count, me))| ReactionCount { seq, emoji, count, me }),
            );
        }
        Ok(out)
    }

    async fn replace_frame(&self, room: &str, seq: u64, frame: &Bytes) -> Result<bool, StoreError> {
        let p = &*self.prepared;
        let seq = to_i64("seq", seq)?;
        let key = MessageKey {
            room: room.to_owned(),
            bucket: bucket_of(seq),
            seq,
        };
        // A plain UPDATE would create a row: only a stored message is replaced.
        if p.rows(&SELECT_MESSAGE, &key).await?.is_empty() {
            return Ok(false);
        }
        let update = FrameUpdate {
            frame: frame.clone(),
            room: key.room,
            bucket: key.bucket,
            seq,
        };
        p.run(&UPDATE_FRAME, &update).await?;
        Ok(true)
    }

    async fn set_last_seen(&self, user: &str, ts_ms: u64) -> Result<(), StoreError> {
        let ts = to_i64("ts_ms", ts_ms)?;
        let row = LastSeenRow {
            // Microseconds, as Scylla's own write timestamps are.
            write_timestamp: ts.saturating_mul(1000),
            ts_ms: ts,
            user_id: user.to_owned(),
        };
        self.prepared.run(&UPDATE_LAST_SEEN, &row).await.map(drop)
    }

    async fn last_seen(&self, user: &str) -> Result<Option<u64>, StoreError> {
        let key = UserIdKey { user_id: user.to_owned() };
        let row = self.prepared.rows(&SELECT_LAST_SEEN, &key).await?.pop();
        row.and_then(|r| r.ts_ms).map(|t| to_u64("ts_ms", t)).transpose()
    }

    async fn add_user_room(&self, user: &str, room: &str) -> Result<(), StoreError> {
        self.prepared
            .run(
                &INSERT_USER_ROOM,
                &UserRoomRow {
                    user_id: user.to_owned(),
                    room: room.to_owned(),
                },
            )
            .await
            .map(drop)
    }

    async fn user_rooms(&self, user: &str) -> Result<Vec<UserRoom>, StoreError> {
        let p = &*self.prepared;
        let key = UserKey {
            user_id: user.to_owned(),
            limit: MAX_LIST_ITEMS as i32,
        };
        let rooms = p.rows(&SELECT_USER_ROOMS, &key).await?;
        let marks: HashMap<String, (Option<i64>, Option<i64>)> = p
            .rows(&SELECT_USER_MARKS, &key)
            .await?
            .into_iter()
            .map(|m| (m.room, (m.read_seq, m.delivered_seq)))
            .collect();
        // Each room's last stored seq, read concurrently (one partition read each).
        let lasts = futures_util::future::try_join_all(rooms.iter().map(|r| self.newest_before(&r.room, i64::MAX, 1))).await?;
        let mark = |room: &str| marks.get(room).copied().unwrap_or((None, None));
        // Each room's unread: what follows the read mark, walked up to MAX_UNREAD rows.
        let unread = futures_util::future::try_join_all(rooms.iter().map(|r| async {
            let after = self.oldest_after(&r.room, mark(&r.room).0.unwrap_or(0), MAX_UNREAD as i32).await?;
            Ok::<_, StoreError>(after.iter().filter(|m| m.sender != user).count() as u64)
        }))
        .await?;
        rooms
            .into_iter()
            .zip(lasts.into_iter().zip(unread))
            .map(|(r, (last, unread))| {
                let (read, delivered) = mark(&r.room);
                Ok(UserRoom {
                    seq: last.first().map_or(Ok(0), |m| to_u64("seq", m.seq))?,
                    read: to_u64("mark", read.unwrap_or(0))?,
                    delivered: to_u64("mark", delivered.unwrap_or(0))?,
                    unread,
                    room: r.room,
                })
            })
            .collect()
    }

    async fn begin_run(&self, node_id: &str) -> Result<bool, StoreError> {
        let p = &*self.prepared;
        let open = p
            .rows(
                &SELECT_NODE_RUN,
                &NodeKey {
                    node_id: node_id.to_owned(),
                },
            )
            .await?
            .pop()
            .and_then(|r| r.open);
        p.run(
            &UPSERT_NODE_RUN,
            &NodeRun {
                node_id: node_id.to_owned(),
                open: true,
            },
        )
        .await?;
        Ok(!open.unwrap_or(false))
    }

    async fn end_run(&self, node_id: &str) -> Result<(), StoreError> {
        self.prepared
            .run(
                &UPSERT_NODE_RUN,
                &NodeRun {
                    node_id: node_id.to_owned(),
                    open: false,
                },
            )
            .await
            .map(drop)
    }
}

impl ScyllaStore {
    /// A page of the room's messages (or of one thread's replies, with `root`): the newest
    /// `limit` below `before`, ascending, and the next cursor.
    async fn page(&self, room: &str, root: Option<i64>, before: Option<u64>, limit: usize) -> Result<HistoryPage, StoreError> {
        let limit = clamp_limit(limit);
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
        let mut rows = match root {
            None => self.newest_before(room, before, limit + 1).await?,
            Some(root) => self.thread_before(room, root, before, limit + 1).await?,
        };
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        rows.reverse();
        let messages = rows.into_iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
        let next_before = if more { messages.first().map(|m| m.seq) } else { None };
        Ok(HistoryPage { messages, next_before })
    }
}
