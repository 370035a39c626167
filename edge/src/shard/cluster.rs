//! Cluster mode, member side: the shell around `engine::subscriber` (joins,
//! leaves, deliveries and resets of the rooms this shard receives from
//! Redis), and history and presence read from Redis.
//!
//! The subscriber decides; this file carries out its effects: each bridge
//! call runs as a task bounded by `cluster_join_timeout_ms` whose answer
//! goes back to the subscriber (`RedisTimedOut` when late); answers and
//! deliveries go to the connections of this shard.

use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use router::bridge::{BridgeError, BridgeHandle, RecentMessage};

use super::sequencer::Sequencer;
use super::{Conn, Shard};
use crate::engine::owner::JOIN_CANCELLED;
use crate::engine::subscriber::{JoinReq, SubEffect, Subscriber};
use crate::engine::Failure;
use crate::protocol::server;
use crate::protocol::ErrorCode;
use crate::room::{fit_page, Page};

/// A bridge answer for a join in progress.
enum JoinStep {
    Subscribed(Result<(), Failure>),
    RoomSeq(Result<u64, Failure>),
    Fetched(Result<Vec<RecentMessage>, Failure>),
}

impl Shard {
    fn bridge(&self) -> Option<BridgeHandle> {
        self.sequencer.bridge().cloned()
    }

    /// The bridge, for metrics.
    pub(super) fn bridge_handle(&self) -> Option<&BridgeHandle> {
        self.sequencer.bridge()
    }

    /// Runs `f` on the subscriber, then carries out every effect it produced.
    fn with_subscriber(self: &Rc<Self>, f: impl FnOnce(&mut Subscriber)) {
        let Sequencer::Redis(redis) = &self.sequencer else { return };
        f(&mut redis.subscriber.borrow_mut());
        self.carry_out_subscriber();
    }

    fn carry_out_subscriber(self: &Rc<Self>) {
        let Sequencer::Redis(redis) = &self.sequencer else { return };
        loop {
            // The borrow ends before the effect runs.
            let Some(effect) = redis.subscriber.borrow_mut().poll() else {
                break;
            };
            self.carry_out_sub(&redis.bridge, effect);
        }
    }

    fn carry_out_sub(self: &Rc<Self>, bridge: &BridgeHandle, effect: SubEffect) {
        let (b, shard) = (bridge.clone(), self.id as u16);
        let limit = Duration::from_millis(self.cfg.cluster_join_timeout_ms);
        match effect {
            SubEffect::Subscribe { token, room } => {
                self.join_step(
                    token,
                    async move { JoinStep::Subscribed(timed(limit, b.subscribe(&room, shard)).await) },
                );
            }
            SubEffect::RoomSeq { token, room } => {
                self.join_step(token, async move { JoinStep::RoomSeq(timed(limit, b.room_seq(&room)).await) });
            }
            SubEffect::Fetch { token, room, after, count } => {
                self.join_step(token, async move {
                    JoinStep::Fetched(timed(limit, b.recent_after(&room, after, count)).await)
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
            SubEffect::Joined {
                conn,
                room,
                payload,
                catch_up,
            } => {
                let Some(c) = self.conn(conn) else { return };
                c.out.push_text(payload);
                for frame in catch_up {
                    c.out.push_text(frame);
                }
                self.members.borrow_mut().insert(&room, conn);
            }
            SubEffect::Refused { conn, room, payload } => self.on_join_refused(&room, conn, None, payload),
            SubEffect::Cancelled { conn, req } => {
                if let Some(c) = self.conn(conn) {
                    c.out
                        .push_text(server::error(req.as_deref(), ErrorCode::BadRequest, JOIN_CANCELLED, None));
                }
            }
            SubEffect::Deliver { room, payload } => self.deliver_local(&room, &payload),
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

    fn join_answered(self: &Rc<Self>, token: u64, step: JoinStep) {
        self.with_subscriber(|s| match step {
            JoinStep::Subscribed(r) => s.subscribed(token, r),
            JoinStep::RoomSeq(r) => s.room_seq(token, r),
            JoinStep::Fetched(r) => s.fetched(token, r),
        });
    }

    /// A join in cluster mode (the checks of `on_join` passed).
    pub(super) fn cluster_join(self: &Rc<Self>, conn: &Rc<Conn>, req: Option<&str>, room: &str, since: Option<u64>) {
        let Some(claims) = conn.user() else { return };
        conn.rooms.borrow_mut().push(room.to_owned());
        let token = self.take_ticket();
        let j = JoinReq {
            room,
            conn: conn.id,
            token,
            req,
            since,
            user: &claims.sub,
        };
        self.with_subscriber(|s| s.join(j));
    }

    /// A member leaves (or its connection closed); `was_member` says whether it was in the fan-out list.
    pub(super) fn cluster_leave(self: &Rc<Self>, conn: &Conn, room: &str, was_member: bool) {
        let user = conn.user().map(|c| c.sub.clone()).unwrap_or_default();
        self.with_subscriber(|s| s.leave(room, conn.id, &user, was_member));
    }

    /// A room message (or, seq 0, a notice) from Redis, through the pump.
    pub(super) fn on_cluster_deliver(self: &Rc<Self>, room: &str, seq: u64, payload: &Bytes) {
        self.with_subscriber(|s| s.deliver(room, seq, payload));
    }

    /// Redis lost the room's sequence: restart the cursor at `seq`, new epoch, tell the members.
    pub(super) fn on_cluster_reset(self: &Rc<Self>, room: &str, seq: u64, notice: &Bytes) {
        let now = Self::now_ms();
        self.with_subscriber(|s| s.reset(room, seq, notice, now));
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
}

/// A bridge call bounded by `limit`: its error kept, `RedisTimedOut` when late.
async fn timed<T>(limit: Duration, call: impl Future<Output = Result<T, BridgeError>>) -> Result<T, Failure> {
    match monoio::time::timeout(limit, call).await {
        Ok(r) => r.map_err(Failure::Redis),
        Err(_) => Err(Failure::RedisTimedOut),
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
