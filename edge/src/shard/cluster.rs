//! Cluster mode, member side: joins, leaves, deliveries, history and
//! presence for rooms whose messages come from Redis.
//!
//! In a cluster every shard subscribes (through the bridge, counted per
//! shard) to the rooms its connections are in, and the pump hands it each
//! room's messages in Redis seq order. A shard keeps, per such room, its
//! cursor (the last seq it delivered), an epoch, and a small ring of recent
//! messages. A join is answered by the member's own shard:
//!
//! 1. subscribe (waits for Redis to confirm), and, if the shard has no cursor
//!    for the room yet, read the room's seq from Redis;
//! 2. with `since`, fetch what the ring does not hold from the recent stream;
//! 3. then, in one go on the shard: `joined` {seq: cursor}, the catch-up
//!    (fetched, then ring, `gap` for what neither holds), and the connection
//!    joins the fan-out list, so no live message overtakes its catch-up.
//!
//! What must stay true: a delivery with seq <= cursor is dropped (a
//! duplicate from a resync or a catch-up race); seq 0 frames are notices
//! (`gap`, presence) passed to members as they are; the subscription of a
//! room is dropped once it has no member and no join in progress.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use router::bridge::{BridgeError, BridgeHandle, RecentMessage};

use super::{Conn, Shard};
use crate::engine::{Failure, RoomFeed};
use crate::protocol::server;
use crate::protocol::ErrorCode;
use crate::room::{fit_page, Page};

/// A room this shard receives from Redis: its feed (cursor, epoch, ring)
/// and the connections that hold its subscription.
pub(crate) struct ClusterRoom {
    feed: RoomFeed,
    /// Connections in the fan-out list.
    members: u32,
    /// Join tasks still waiting for Redis (the subscription stays while any is out).
    joining: u32,
    /// The joins still wanted, as (connection, join token): a leave before Redis answered drops its entry.
    wanted: Vec<(u64, u64)>,
}

impl ClusterRoom {
    fn new(epoch: u64, ring_cap: usize) -> Self {
        Self {
            feed: RoomFeed::new(epoch, ring_cap),
            members: 0,
            joining: 0,
            wanted: Vec::new(),
        }
    }

    fn idle(&self) -> bool {
        self.members == 0 && self.joining == 0
    }
}

impl Shard {
    fn bridge(&self) -> Option<BridgeHandle> {
        self.sequencer.bridge().cloned()
    }

    /// The bridge, for metrics.
    pub(super) fn bridge_handle(&self) -> Option<&BridgeHandle> {
        self.sequencer.bridge()
    }

    /// A join in cluster mode (the checks of `on_join` passed).
    pub(super) fn cluster_join(self: &Rc<Self>, conn: &Rc<Conn>, req: Option<&str>, room: &str, since: Option<u64>) {
        let Some(bridge) = self.bridge() else { return };
        conn.rooms.borrow_mut().push(room.to_owned());
        let token = self.take_ticket();
        {
            let mut rooms = self.cluster.borrow_mut();
            let ring_cap = self.cfg.recent_per_room;
            let r = rooms
                .entry(room.to_owned())
                .or_insert_with(|| ClusterRoom::new(self.run_epoch, ring_cap));
            r.joining += 1;
            r.wanted.push((conn.id, token));
        }
        let (shard, conn, req, room) = (self.clone(), conn.clone(), req.map(str::to_owned), room.to_owned());
        monoio::spawn(async move {
            let limit = Duration::from_millis(shard.cfg.cluster_join_timeout_ms);
            let prepared = match monoio::time::timeout(limit, shard.cluster_prepare(&bridge, &room, since)).await {
                Ok(r) => r.map_err(Failure::Redis),
                Err(_) => Err(Failure::RedisTimedOut),
            };
            shard.cluster_joined(&conn, token, req.as_deref(), &room, since, prepared);
        });
    }

    /// Subscribes, learns the room's seq if unknown, and fetches the catch-up the ring lacks.
    async fn cluster_prepare(&self, bridge: &BridgeHandle, room: &str, since: Option<u64>) -> Result<Vec<RecentMessage>, BridgeError> {
        bridge.subscribe(room, self.id as u16).await?;
        let known = self.cluster.borrow().get(room).is_some_and(|r| r.feed.is_known());
        if !known {
            let seq = bridge.room_seq(room).await?;
            if let Some(r) = self.cluster.borrow_mut().get_mut(room) {
                r.feed.learn(seq);
            }
        }
        let Some(since) = since else { return Ok(Vec::new()) };
        let (covered, cursor) = match self.cluster.borrow().get(room) {
            Some(r) => (r.feed.covers(since), r.feed.cursor()),
            None => (true, 0),
        };
        if covered {
            return Ok(Vec::new());
        }
        let want = (cursor - since).min(self.cfg.max_catch_up_messages as u64) as u32;
        bridge.recent_after(room, cursor - u64::from(want), want).await
    }

    /// The join's Redis work is done: answer it (or refuse it) in one go on the shard.
    fn cluster_joined(
        &self,
        conn: &Rc<Conn>,
        token: u64,
        req: Option<&str>,
        room: &str,
        since: Option<u64>,
        prepared: Result<Vec<RecentMessage>, Failure>,
    ) {
        let mut rooms = self.cluster.borrow_mut();
        let Some(r) = rooms.get_mut(room) else { return };
        r.joining -= 1;
        let wanted = r
            .wanted
            .iter()
            .position(|&w| w == (conn.id, token))
            .map(|i| r.wanted.swap_remove(i));
        let alive = wanted.is_some() && self.conn(conn.id).is_some() && conn.in_room(room);
        let fetched = match (alive, prepared) {
            (true, Ok(f)) => f,
            (alive, result) => {
                let idle = r.idle();
                drop(rooms);
                if idle {
                    self.cluster_unsubscribe(room);
                }
                match (alive, result) {
                    (true, Err(e)) => self.on_join_refused(room, conn.id, None, e.reply(req, "cluster")),
                    // Left before Redis answered: the join still gets its one reply.
                    _ if wanted.is_none() && self.conn(conn.id).is_some() => {
                        conn.out.push_text(server::error(
                            req,
                            ErrorCode::BadRequest,
                            crate::engine::owner::JOIN_CANCELLED,
                            None,
                        ));
                    }
                    _ => {}
                }
                return;
            }
        };
        r.members += 1;
        let joined = server::joined(req, room, r.feed.cursor(), r.feed.epoch(), u64::from(r.members));
        let read = fetched.iter().map(|m| (m.seq, &m.payload));
        let frames = since.map_or_else(Vec::new, |s| r.feed.catch_up(room, s, read));
        drop(rooms);
        conn.out.push_text(joined);
        for f in frames {
            conn.out.push_text(f);
        }
        self.members.borrow_mut().insert(room, conn.id);
        self.presence_op(room, conn, true);
    }

    /// A member leaves (or its connection closed); `was_member` says whether it was in the fan-out list.
    pub(super) fn cluster_leave(&self, conn: &Conn, room: &str, was_member: bool) {
        if !was_member {
            // Its join is still waiting for Redis: it must not count when it lands
            // (`cluster_joined` drops the subscription if nothing else holds it).
            if let Some(r) = self.cluster.borrow_mut().get_mut(room) {
                r.wanted.retain(|&(c, _)| c != conn.id);
            }
            return;
        }
        let idle = match self.cluster.borrow_mut().get_mut(room) {
            Some(r) => {
                r.members = r.members.saturating_sub(1);
                r.idle()
            }
            None => false,
        };
        self.presence_op(room, conn, false);
        if idle {
            self.cluster_unsubscribe(room);
        }
    }

    fn cluster_unsubscribe(&self, room: &str) {
        self.cluster.borrow_mut().remove(room);
        let Some(bridge) = self.bridge() else { return };
        let (room, shard) = (room.to_owned(), self.id as u16);
        monoio::spawn(async move {
            if let Err(e) = bridge.unsubscribe(&room, shard).await {
                tracing::warn!(room, error = %e, "cluster: unsubscribe failed");
            }
        });
    }

    /// Counts the connection's user in (or out of) the room's presence, cluster-wide.
    fn presence_op(&self, room: &str, conn: &Conn, join: bool) {
        let (Some(bridge), Some(claims)) = (self.bridge(), conn.user()) else {
            return;
        };
        let (room, user) = (room.to_owned(), claims.sub.clone());
        monoio::spawn(async move {
            let r = if join {
                bridge.presence_join(&room, &user).await
            } else {
                bridge.presence_leave(&room, &user).await
            };
            if let Err(e) = r {
                tracing::debug!(room, user, error = %e, "cluster: presence update deferred to the next heartbeat");
            }
        });
    }

    /// A room message (or, seq 0, a notice) from Redis, through the pump.
    pub(super) fn on_cluster_deliver(&self, room: &str, seq: u64, payload: &Bytes) {
        if seq != 0 {
            let mut rooms = self.cluster.borrow_mut();
            let Some(r) = rooms.get_mut(room) else { return };
            if !r.feed.advance(seq, payload) {
                return;
            }
        }
        self.deliver_local(room, payload);
    }

    /// Redis lost the room's sequence: restart the cursor at `seq`, new epoch, tell the members.
    pub(super) fn on_cluster_reset(&self, room: &str, seq: u64, notice: &Bytes) {
        if let Some(r) = self.cluster.borrow_mut().get_mut(room) {
            r.feed.reset(seq, Self::now_ms());
        }
        self.deliver_local(room, notice);
    }

    /// `history` in cluster mode: a page from the room's recent stream in Redis.
    pub(super) fn cluster_history(&self, conn: &Rc<Conn>, req: Option<&str>, room: &str, before: Option<u64>, limit: u32) {
        let Some(bridge) = self.bridge() else { return };
        let r = room.to_owned();
        let max_bytes = self.cfg.history_page_max_bytes;
        self.reply_from_redis(conn, req, async move {
            let (msgs, next) = history_page(&bridge, &r, before, limit).await?;
            let (msgs, next) = fit_page(msgs, next, max_bytes);
            Ok(move |req: Option<&str>| server::history(req, &r, &msgs, next))
        });
    }

    /// `presence` in cluster mode: who is online in the room on any node.
    pub(super) fn cluster_presence(&self, conn: &Rc<Conn>, req: Option<&str>, room: &str) {
        let Some(bridge) = self.bridge() else { return };
        let r = room.to_owned();
        self.reply_from_redis(conn, req, async move {
            let online = bridge.presence_online(&r).await?;
            Ok(move |req: Option<&str>| server::presence_list(req, &r, &online))
        });
    }

    /// Answers request `req` with what `work` renders, or `unavailable` when Redis fails or is late.
    fn reply_from_redis<F, R>(&self, conn: &Rc<Conn>, req: Option<&str>, work: F)
    where
        F: std::future::Future<Output = Result<R, BridgeError>> + 'static,
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
}

/// The newest `limit` messages below `before` from the recent stream (with their seqs), and the next cursor.
async fn history_page(bridge: &BridgeHandle, room: &str, before: Option<u64>, limit: u32) -> Result<Page, BridgeError> {
    let top = match before {
        Some(b) => b.saturating_sub(1),
        None => bridge.room_seq(room).await?,
    };
    let after = top.saturating_sub(u64::from(limit));
    let msgs = bridge.recent_after(room, after, limit).await?;
    let page: Vec<&RecentMessage> = msgs.iter().filter(|m| m.seq <= top).collect();
    let next = page.first().map(|m| m.seq).filter(|&s| s > 1);
    Ok((page.iter().map(|m| (m.seq, m.payload.clone())).collect(), next))
}
