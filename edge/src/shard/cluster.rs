//! Cluster mode, member side: the Redis sequencer's calls (each a task
//! bounded by `cluster_join_timeout_ms`, its answer fed back to the member
//! side, `RedisTimedOut` when late; a catch-up is a read of
//! `cluster_reads.rs`), ephemeral events, and a reply to a thread root this
//! shard has not seen.

use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use router::bridge::{BridgeError, BridgeHandle};

use super::members::JoinStep;
use super::{Conn, Shard};
use crate::engine::subscriber::SubEffect;
use crate::engine::Failure;
use crate::protocol::server;
use crate::protocol::ErrorCode;

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
            SubEffect::Fetch { token, room, after, count } => self.cluster_fetch(token, &room, after, count),
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
            answer @ (SubEffect::Joined { .. }
            | SubEffect::Refused { .. }
            | SubEffect::Cancelled { .. }
            | SubEffect::Deliver { .. }
            | SubEffect::Event { .. }) => {
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

/// A bridge call bounded by `limit`: its error kept, `RedisTimedOut` when late.
pub(super) async fn timed<T>(limit: Duration, call: impl Future<Output = Result<T, BridgeError>>) -> Result<T, Failure> {
    match monoio::time::timeout(limit, call).await {
        Ok(r) => r.map_err(Failure::Redis),
        Err(_) => Err(Failure::RedisTimedOut),
    }
}
