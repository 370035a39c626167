//! Cluster mode, member side: the Redis sequencer's calls (each a task
//! bounded by `cluster_join_timeout_ms`, its answer fed back to the member
//! side, `RedisTimedOut` when late), and history and presence read from
//! Redis.

use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use router::bridge::{BridgeError, BridgeHandle, RecentMessage};

use super::members::JoinStep;
use super::{Conn, Shard};
use crate::engine::subscriber::SubEffect;
use crate::engine::{change_rules, Failure};
use crate::protocol::server;
use crate::protocol::ErrorCode;
use crate::room::{fit_page, fit_page_seqs};

impl Shard {
    pub(super) fn bridge(&self) -> Option<BridgeHandle> {
        self.sequencer.bridge().cloned()
    }

    /// The bridge, for metrics.
    pub(super) fn bridge_handle(&self) -> Option<&BridgeHandle> {
        self.sequencer.bridge()
    }

    /// Carries out a member side's call to Redis.
    pub(super) fn redis_call(self: &Rc<Self>, bridge: &BridgeHandle, effect: SubEffect) {
        let (b, shard) = (bridge.clone(), self.id as u16);
        let limit = Duration::from_millis(self.cfg.cluster_join_timeout_ms);
        match effect {
            SubEffect::Subscribe { token, room, user } => {
                let member = self.clone();
                self.join_step(token, async move {
                    // Redis does not say the room's position: the member side reads it next.
                    let subscribed = timed(limit, b.subscribe(&room, shard)).await.map(|()| None);
                    if subscribed.is_ok() {
                        member.cluster_member(&room, &user);
                    }
                    // The member counts as online from here (the member side counts it out).
                    if subscribed.is_ok() {
                        if let Err(e) = timed(limit, b.presence_join(&room, &user)).await {
                            tracing::debug!(room, user, error = %e, "cluster: presence update deferred to the next heartbeat");
                        }
                    }
                    JoinStep::Subscribed(subscribed)
                });
            }
            SubEffect::RoomSeq { token, room } => {
                self.join_step(token, async move { JoinStep::RoomSeq(timed(limit, b.room_seq(&room)).await) });
            }
            SubEffect::Fetch { token, room, after, count } => {
                let store = self.shared_store().then(|| self.clone());
                self.join_step(token, async move {
                    let read = timed(limit, b.recent_after(&room, after, count)).await;
                    let mut msgs: Vec<(u64, Bytes)> = match read {
                        Ok(msgs) => msgs.into_iter().map(|m| (m.seq, m.payload)).collect(),
                        Err(e) => return JoinStep::Fetched(Err(e)),
                    };
                    // The stream starts above `after + 1`: it was trimmed there. A shared store
                    // holds what it lost (the member side announces `gap` for what neither has).
                    let first = msgs.first().map(|m| m.0);
                    if let (Some(shard), Some(first)) = (&store, first.filter(|&f| f > after + 1)) {
                        let want = (first - after - 1).min(u64::from(count)) as usize;
                        let query = storage::Query::RangeAfter {
                            room: room.clone(),
                            after,
                            limit: want,
                        };
                        match timed_store(limit, shard.cluster_store_query(query)).await {
                            Some(storage::Answer::RangeAfter(older)) => {
                                let older = older.into_iter().filter(|m| m.seq < first).map(|m| (m.seq, m.frame));
                                msgs = older.chain(msgs).take(count as usize).collect();
                            }
                            _ => tracing::warn!(
                                room,
                                after,
                                "cluster: a catch-up below the Redis stream was not read from the store"
                            ),
                        }
                    }
                    // The stream keeps messages as sent: edits and deletes are in the store.
                    if let Some(shard) = &store {
                        if monoio::time::timeout(limit, shard.current_versions(&room, &mut msgs))
                            .await
                            .is_err()
                        {
                            tracing::warn!(room, "cluster: a catch-up went out as the stream has it: the store was late");
                        }
                    }
                    JoinStep::Fetched(Ok(msgs))
                });
            }
            SubEffect::Unsubscribe { room } => {
                monoio::spawn(async move {
                    if let Err(e) = b.unsubscribe(&room, shard).await {
                        tracing::warn!(room, error = %e, "cluster: unsubscribe failed");
                    }
                });
            }
            SubEffect::Presence { room, user, online } => {
                monoio::spawn(async move {
                    let r = if online {
                        b.presence_join(&room, &user).await
                    } else {
                        b.presence_leave(&room, &user).await
                    };
                    if let Err(e) = r {
                        tracing::debug!(room, user, error = %e, "cluster: presence update deferred to the next heartbeat");
                    }
                });
            }
            answer @ (SubEffect::Joined { .. } | SubEffect::Refused { .. } | SubEffect::Cancelled { .. } | SubEffect::Deliver { .. }) => {
                tracing::error!(?answer, "a member-side answer reached the Redis call path");
            }
        }
    }

    /// Runs a join's bridge call as a task and hands its answer to the subscriber.
    fn join_step(self: &Rc<Self>, token: u64, call: impl Future<Output = JoinStep> + 'static) {
        let shard = self.clone();
        monoio::spawn(async move {
            let step = call.await;
            shard.join_answered(token, step);
        });
    }

    /// An event without a seq about `from`, published on the room's channel (best effort:
    /// an ephemeral event is not retried).
    pub(super) fn cluster_event(bridge: &BridgeHandle, room: &str, from: &str, payload: &Bytes) {
        let frame = router::encode(&router::Frame::Event {
            room: room.to_owned(),
            from: from.to_owned(),
            payload: payload.to_vec(),
        });
        let (b, room) = (bridge.clone(), room.to_owned());
        monoio::spawn(async move {
            if let Err(e) = b.notify(&room, frame).await {
                tracing::debug!(room, error = %e, "cluster: event not published");
            }
        });
    }

    /// `history` in cluster mode: a page from the room's recent stream in Redis, completed
    /// from the shared store below what the stream still holds (`cluster_store.rs`).
    pub(super) fn cluster_history(&self, conn: &Rc<Conn>, req: Option<&str>, room: &str, before: Option<u64>, limit: u32) {
        let Some(bridge) = self.bridge() else { return };
        let r = room.to_owned();
        let max_bytes = self.cfg.history_page_max_bytes;
        let store = self.shared_store().then(|| self.rc()).flatten();
        let user = conn.user().map(|u| u.sub.clone());
        self.reply_from_redis(conn, req, async move {
            let (mut msgs, mut next, top) = history_page(&bridge, &r, before, limit).await?;
            let lowest = msgs.first().map_or(top + 1, |m| m.0);
            if let Some(shard) = store.as_ref().filter(|_| msgs.len() < limit as usize && lowest > 1) {
                let query = storage::Query::History {
                    room: r.clone(),
                    before: Some(lowest),
                    limit: limit as usize - msgs.len(),
                };
                match shard.cluster_store_query(query).await {
                    Ok(storage::Answer::History(page)) => {
                        next = page.next_before;
                        let older = page.messages.into_iter().map(|m| (m.seq, m.frame));
                        msgs = older.chain(msgs).collect();
                    }
                    Ok(_) => tracing::error!(room = r, "cluster: the store answered a history query with something else"),
                    // The stream's part is still right: serve it, and say where it stops.
                    Err(e) => tracing::warn!(room = r, error = %e, "cluster: older history not read from the store"),
                }
            }
            let (mut msgs, next) = fit_page_seqs(msgs, next, max_bytes);
            if let Some(shard) = store {
                shard.with_store_versions(&r, user.as_deref(), &mut msgs).await;
            }
            let msgs: Vec<Bytes> = msgs.into_iter().map(|(_, m)| m).collect();
            Ok(move |req: Option<&str>| server::history(req, &r, &msgs, next))
        });
    }

    /// Brings a page read (partly) from the Redis stream up to date from the shared store: each
    /// message the store holds in its current version (edited, or a tombstone), with its
    /// reactions as `user` sees them and, for a thread root, `"replies":N`. A message the store
    /// does not hold yet (its write is on its way) stays as the stream has it. Without the
    /// store (it failed) the page is served as it is.
    async fn with_store_versions(&self, room: &str, user: Option<&str>, msgs: &mut [(u64, Bytes)]) {
        let (Some(&(from, _)), Some(&(to, _))) = (msgs.first(), msgs.last()) else {
            return;
        };
        self.current_versions(room, msgs).await;
        let reactions = match user {
            Some(user) => {
                let query = storage::Query::ReactionCounts {
                    room: room.to_owned(),
                    from,
                    to,
                    user: user.to_owned(),
                };
                match self.cluster_store_query(query).await {
                    Ok(storage::Answer::ReactionCounts(c)) => c,
                    Ok(_) => return tracing::error!(room, "cluster: the store answered reactions with something else"),
                    Err(e) => return tracing::warn!(room, error = %e, "cluster: reactions not read from the store"),
                }
            }
            None => Vec::new(),
        };
        let query = storage::Query::ReplyCounts {
            room: room.to_owned(),
            from,
            to,
        };
        let counts = match self.cluster_store_query(query).await {
            Ok(storage::Answer::ReplyCounts(c)) => c,
            Ok(_) => return tracing::error!(room, "cluster: the store answered reply counts with something else"),
            Err(e) => return tracing::warn!(room, error = %e, "cluster: reply counts not read from the store"),
        };
        for (seq, m) in msgs.iter_mut() {
            let replies = counts.binary_search_by_key(seq, |(root, _)| *root).map_or(0, |i| counts[i].1);
            *m = server::with_extras(m, change_rules::of_message(&reactions, *seq), replies);
        }
    }

    /// Replaces each of `msgs` (ascending seqs) by its version in the shared store, where the
    /// store holds it: an edit or a delete changed the store's copy, never the stream's.
    pub(super) async fn current_versions(&self, room: &str, msgs: &mut [(u64, Bytes)]) {
        let (Some(&(from, _)), Some(&(to, _))) = (msgs.first(), msgs.last()) else {
            return;
        };
        let query = storage::Query::RangeAfter {
            room: room.to_owned(),
            after: from - 1,
            limit: usize::try_from(to - from + 1).unwrap_or(usize::MAX),
        };
        let stored = match self.cluster_store_query(query).await {
            Ok(storage::Answer::RangeAfter(stored)) => stored,
            Ok(_) => return tracing::error!(room, "cluster: the store answered a range with something else"),
            Err(e) => return tracing::warn!(room, error = %e, "cluster: current versions not read from the store"),
        };
        for m in stored {
            if let Ok(i) = msgs.binary_search_by_key(&m.seq, |(seq, _)| *seq) {
                msgs[i].1 = m.frame;
            }
        }
    }

    /// `history` by `thread` in a cluster on a shared store: the root's replies from the store
    /// (in `fast` mode a reply sent in the last batch interval may not be there yet). A root
    /// that is 0 or past Redis's counter for the room is `not_found`, as on one node.
    pub(super) fn cluster_thread(&self, conn: &Rc<Conn>, req: Option<&str>, room: &str, root: u64, before: Option<u64>, limit: u32) {
        let (Some(bridge), Some(shard)) = (self.bridge(), self.rc()) else {
            return;
        };
        let r = room.to_owned();
        let max_bytes = self.cfg.history_page_max_bytes;
        type Render = Box<dyn FnOnce(Option<&str>) -> Bytes>;
        self.reply_from_redis(conn, req, async move {
            let top = bridge.room_seq(&r).await?;
            if root == 0 || root > top {
                let msg = format!("{r} has no message {root}");
                return Ok(Box::new(move |req: Option<&str>| server::error(req, ErrorCode::NotFound, &msg, None)) as Render);
            }
            let query = storage::Query::Thread {
                room: r.clone(),
                root,
                before,
                limit: limit as usize,
            };
            let render: Render = match shard.cluster_store_query(query).await {
                Ok(storage::Answer::History(page)) => {
                    let msgs = page.messages.into_iter().map(|m| (m.seq, m.frame)).collect();
                    let (msgs, next) = fit_page(msgs, page.next_before, max_bytes);
                    Box::new(move |req: Option<&str>| server::history(req, &r, &msgs, next))
                }
                Ok(other) => {
                    tracing::error!(room = r, ?other, "cluster: the store answered a thread query with something else");
                    Box::new(|req: Option<&str>| server::error(req, ErrorCode::Internal, "thread not read", None))
                }
                Err(e) => Box::new(move |req: Option<&str>| Failure::Store(e).reply(req, "thread not read")),
            };
            Ok(render)
        });
    }

    /// A reply (`frame`, a `Frame::Send`) to `root`, a seq past what this shard delivered in
    /// the room: sent on to the room's owner shard once Redis's counter says the root exists,
    /// else refused `not_found` (it takes no seq). This rare path may let a later send of the
    /// same connection be sequenced first.
    pub(super) fn cluster_reply_send(self: &Rc<Self>, conn: &Rc<Conn>, root: u64, owner: usize, frame: router::Frame) {
        let (Some(bridge), router::Frame::Send(m)) = (self.bridge(), &frame) else {
            return;
        };
        let (me, conn, room) = (self.clone(), conn.clone(), m.room.clone());
        let req = m.req.clone();
        let limit = Duration::from_millis(self.cfg.cluster_join_timeout_ms);
        monoio::spawn(async move {
            let req = req.as_deref();
            match timed(limit, bridge.room_seq(&room)).await {
                Err(f) => {
                    conn.out.push_text(f.reply(req, "message not sent"));
                }
                Ok(top) if root > top => {
                    let msg = format!("{room} has no message {root} to reply to");
                    conn.out.push_text(server::error(req, ErrorCode::NotFound, &msg, None));
                }
                Ok(_) if owner == me.id => {
                    let bytes = router::encode(&frame);
                    if let Ok(router::ArchivedFrame::Send(m)) = router::decode(&bytes) {
                        me.seq_send(&crate::engine::owner::SendArgs::of_archived(m));
                    }
                }
                Ok(_) => {
                    if !me.try_request(owner, &frame) {
                        me.overloaded(&conn, req);
                    }
                }
            }
        });
    }

    /// `presence` in cluster mode: who is online in the room on any node.
    pub(super) fn cluster_presence(&self, conn: &Rc<Conn>, req: Option<&str>, room: &str) {
        let Some(bridge) = self.bridge() else { return };
        let (r, cap) = (room.to_owned(), self.cfg.presence_roster_max);
        self.reply_from_redis(conn, req, async move {
            let mut online = bridge.presence_online(&r).await?;
            let count = online.len();
            // As on one node: those online longest first, at most `presence_roster_max`.
            online.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
            online.truncate(cap);
            Ok(move |req: Option<&str>| server::presence_list(req, &r, &online, count))
        });
    }

    /// Answers request `req` with what `work` renders, or `unavailable` when Redis fails or is late.
    fn reply_from_redis<F, R>(&self, conn: &Rc<Conn>, req: Option<&str>, work: F)
    where
        F: Future<Output = Result<R, BridgeError>> + 'static,
        R: FnOnce(Option<&str>) -> Bytes,
    {
        let (c, req) = (conn.clone(), req.map(str::to_owned));
        let timeout = Duration::from_millis(self.cfg.cluster_join_timeout_ms);
        monoio::spawn(async move {
            let req = req.as_deref();
            let reply = match monoio::time::timeout(timeout, work).await {
                Ok(Ok(render)) => render(req),
                Ok(Err(e)) => Failure::Redis(e).reply(req, "cluster"),
                Err(_) => Failure::RedisTimedOut.reply(req, "cluster"),
            };
            c.out.push_text(reply);
        });
    }

    /// Whether the node's cluster link is up (always true for a single node).
    pub(crate) fn cluster_ready(&self) -> bool {
        self.sequencer.bridge().is_none_or(BridgeHandle::is_ready)
    }

    /// Why `/readyz` answers 503, naming each dependency that is down; `None`: ready.
    pub(crate) fn unready_because(&self) -> Option<String> {
        if self.is_draining() {
            return Some("draining".into());
        }
        let down: Vec<&str> = [
            (!self.cluster_ready()).then_some("redis unreachable"),
            self.store.stats().unavailable().then_some("store unavailable"),
        ]
        .into_iter()
        .flatten()
        .collect();
        (!down.is_empty()).then(|| down.join(", "))
    }
}

/// A shared-store query bounded by `limit`: its answer, or `None` on an error or when late.
async fn timed_store(limit: Duration, call: impl Future<Output = Result<storage::Answer, storage::StoreError>>) -> Option<storage::Answer> {
    match monoio::time::timeout(limit, call).await {
        Ok(Ok(answer)) => Some(answer),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cluster: a store query failed");
            None
        }
        Err(_) => None,
    }
}

/// A bridge call bounded by `limit`: its error kept, `RedisTimedOut` when late.
pub(super) async fn timed<T>(limit: Duration, call: impl Future<Output = Result<T, BridgeError>>) -> Result<T, Failure> {
    match monoio::time::timeout(limit, call).await {
        Ok(r) => r.map_err(Failure::Redis),
        Err(_) => Err(Failure::RedisTimedOut),
    }
}

/// The newest `limit` messages below `before` from the recent stream (with their seqs), the next
/// cursor, and the highest seq the page could hold.
async fn history_page(
    bridge: &BridgeHandle,
    room: &str,
    before: Option<u64>,
    limit: u32,
) -> Result<(Vec<(u64, Bytes)>, Option<u64>, u64), BridgeError> {
    let top = match before {
        Some(b) => b.saturating_sub(1),
        None => bridge.room_seq(room).await?,
    };
    let after = top.saturating_sub(u64::from(limit));
    let msgs = bridge.recent_after(room, after, limit).await?;
    let page: Vec<&RecentMessage> = msgs.iter().filter(|m| m.seq <= top).collect();
    let next = page.first().map(|m| m.seq).filter(|&s| s > 1);
    Ok((page.iter().map(|m| (m.seq, m.payload.clone())).collect(), next, top))
}
