//! Frames in from the other threads, and frames out to them.
//!
//! Inbound: one task drains the shard's inboxes in batches and dispatches each
//! frame: requests for rooms this shard owns to the owner (`local.rs`),
//! answers and deliveries to the member side (`members.rs`). Payloads of
//! Deliver/Reply/Fetched frames are zero-copy slices of the received buffer.
//!
//! Outbound: frames produced while handling other frames (responses, fan-out)
//! never wait: when the ring is full they go to a per-destination spill queue
//! that a second task flushes in order as the ring frees up. Client requests
//! never spill: `try_request` refuses (the client gets `overloaded`) once a
//! ring is half full, so requests can fill at most half of any ring and
//! responses always find room to make progress (no cross-shard deadlock).
//! The spill queue is bounded by refusing new work at its source: at
//! `mesh_spill_max_frames` the shard's rooms refuse new sends, history
//! pages, catch-up reads and changes until it drains to half
//! (`spill_refuses`); frames already queued are never dropped.

use std::future::poll_fn;
use std::rc::Rc;
use std::task::Poll;

use bytes::Bytes;
use router::{ArchivedFrame, Frame};

use super::local::{fetched_from_frame, refusal_from_frame};
use super::members::JoinStep;
use super::Shard;
use crate::engine::owner::{FetchArgs, HistoryArgs, SendArgs};
use crate::engine::subscriber::RoomPos;
use crate::engine::Failure;
use crate::metrics::ShardStats;

/// Frames handled per wake-up before yielding to connection tasks.
const DRAIN_BATCH: usize = 256;

pub(super) async fn run_inbox(shard: Rc<Shard>) {
    loop {
        shard.mesh.readable().await;
        let n = shard.mesh.drain(DRAIN_BATCH, |_from, buf| shard.on_frame(buf));
        if n == DRAIN_BATCH {
            monoio::time::sleep(std::time::Duration::ZERO).await;
        }
    }
}

pub(super) async fn run_spill(shard: Rc<Shard>) {
    loop {
        let (to, frame) = poll_fn(|cx| match shard.spill_front() {
            Some(v) => Poll::Ready(v),
            None => {
                shard.spill_waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await;
        // The frame stays at the front of its queue until the ring took it,
        // so frames sent meanwhile queue behind it and order is kept.
        shard.mesh.send(to, frame).await;
        shard.spill.borrow_mut()[to].pop_front();
        shard.spill_count(-1);
        ShardStats::inc(&shard.stats().mesh_frames_out_total);
    }
}

impl Shard {
    fn spill_front(&self) -> Option<(usize, Bytes)> {
        let spill = self.spill.borrow();
        spill.iter().enumerate().find_map(|(to, q)| q.front().map(|f| (to, f.clone())))
    }

    /// Sends a frame that must not be lost; spills when the ring is full.
    pub(super) fn send_frame(&self, to: usize, frame: &Frame) {
        let bytes = self.mesh_out.borrow_mut().encode(frame);
        self.send_encoded(to, bytes);
    }

    /// Sends an encoded frame that must not be lost; spills when the ring is full.
    pub(super) fn send_encoded(&self, to: usize, bytes: Bytes) {
        let mut spill = self.spill.borrow_mut();
        if spill[to].is_empty() {
            match self.mesh.try_send(to, bytes) {
                Ok(()) => {
                    ShardStats::inc(&self.stats().mesh_frames_out_total);
                    return;
                }
                Err(full) => spill[to].push_back(full.0),
            }
        } else {
            spill[to].push_back(bytes);
        }
        ShardStats::inc(&self.stats().mesh_spilled_total);
        drop(spill);
        self.spill_count(1);
        if let Some(w) = self.spill_waker.take() {
            w.wake();
        }
    }

    /// Counts frames into (+1) or out of (-1) the spill queue. At `mesh_spill_max_frames` the
    /// shard stops taking new work that adds to it (see [`Shard::spill_refuses`]) until it is
    /// back to half of that; nothing in it is dropped.
    fn spill_count(&self, delta: isize) {
        let n = self.spilled.get().saturating_add_signed(delta);
        self.spilled.set(n);
        ShardStats::set(&self.stats().mesh_spill_frames, n as u64);
        let max = self.cfg.mesh_spill_max_frames;
        if n >= max {
            self.spill_full.set(true);
        } else if n <= max / 2 {
            self.spill_full.set(false);
        }
    }

    /// Whether new work for this shard's rooms is refused now: its spill queue reached
    /// `mesh_spill_max_frames` and has not drained to half yet. Sends, history pages,
    /// catch-up reads and changes are then answered `overloaded` (counted in
    /// `edge_mesh_spill_refused_total`); what was taken before still goes out, in order.
    pub(super) fn spill_refuses(&self) -> bool {
        if self.spill_full.get() {
            ShardStats::inc(&self.stats().mesh_spill_refused_total);
            return true;
        }
        false
    }

    /// Sends a client request unless the ring to `to` is congested.
    pub(super) fn try_request(&self, to: usize, frame: &Frame) -> bool {
        self.has_room_for_request(to) && self.push_request(to, self.mesh_out.borrow_mut().encode(frame))
    }

    /// As [`try_request`](Self::try_request), for a frame already encoded.
    pub(super) fn try_request_encoded(&self, to: usize, frame: Bytes) -> bool {
        self.has_room_for_request(to) && self.push_request(to, frame)
    }

    fn has_room_for_request(&self, to: usize) -> bool {
        self.spill.borrow()[to].is_empty() && self.mesh.free_slots(to) >= self.cfg.mesh_ring_capacity / 2
    }

    fn push_request(&self, to: usize, frame: Bytes) -> bool {
        match self.mesh.try_send(to, frame) {
            Ok(()) => {
                ShardStats::inc(&self.stats().mesh_frames_out_total);
                true
            }
            Err(_) => false,
        }
    }

    /// Dispatches one frame from another thread.
    fn on_frame(self: &Rc<Self>, buf: Bytes) {
        let frame = match router::decode(&buf) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(shard = self.id, error = %e, "invalid mesh frame dropped");
                return;
            }
        };
        match frame {
            ArchivedFrame::Handoff { fd, head, peer } => {
                super::accept::adopt(self, fd.to_native(), head.as_slice(), peer.as_str());
            }
            ArchivedFrame::Subscribe { room, shard, token, user } => {
                let user = user.as_ref().map(|u| u.as_str());
                self.owner_subscribe(room.as_str(), usize::from(shard.to_native()), token.to_native(), user);
            }
            ArchivedFrame::Subscribed {
                token,
                seq,
                epoch,
                others,
                refusal,
            } => {
                let result = match refusal.as_ref() {
                    Some(r) => Err(Failure::Owner(refusal_from_frame(r))),
                    None => Ok(Some(RoomPos {
                        seq: seq.to_native(),
                        epoch: epoch.to_native(),
                        others: others.to_native(),
                    })),
                };
                self.join_answered(token.to_native(), JoinStep::Subscribed(result));
            }
            ArchivedFrame::Fetch {
                room,
                shard,
                token,
                after,
                count,
            } => self.owner_fetch(FetchArgs {
                room: room.as_str(),
                shard: usize::from(shard.to_native()),
                token: token.to_native(),
                after: after.to_native(),
                count: count.to_native(),
            }),
            ArchivedFrame::Fetched { token, messages, refusal } => {
                let result = fetched_from_frame(&buf, messages.as_slice(), refusal.as_ref());
                self.join_answered(token.to_native(), JoinStep::Fetched(result));
            }
            ArchivedFrame::Unsubscribe { room, shard } => {
                self.owner_unsubscribe(room.as_str(), usize::from(shard.to_native()));
            }
            ArchivedFrame::Presence { room, shard, user, online } => {
                self.owner_member(room.as_str(), usize::from(shard.to_native()), user.as_str(), *online);
            }
            ArchivedFrame::Online { room, conn, req } => {
                self.owner_presence(room.as_str(), conn.to_native(), req.as_ref().map(|r| r.as_str()));
            }
            ArchivedFrame::History { .. } => self.on_history_frame(frame),
            ArchivedFrame::Send(m) => self.seq_send(&SendArgs::of_archived(m)),
            ArchivedFrame::Reply { .. }
            | ArchivedFrame::Deliver { .. }
            | ArchivedFrame::Reset { .. }
            | ArchivedFrame::Gap { .. }
            | ArchivedFrame::UserDeliver { .. }
            | ArchivedFrame::Event { .. }
            | ArchivedFrame::Changed { .. }
            | ArchivedFrame::ToSenders { .. }
            | ArchivedFrame::EventTo { .. } => self.on_member_frame(&buf, frame),
            ArchivedFrame::Change(c) => match c.to_owned_msg() {
                Ok(change) => self.owner_change(change),
                Err(e) => tracing::error!(shard = self.id, error = %e, "a change frame could not be read"),
            },
            ArchivedFrame::Read {
                room,
                user,
                seq,
                conn,
                req,
            } => {
                let req = req.as_ref().map(|r| r.as_str());
                self.owner_read(room.as_str(), user.as_str(), seq.to_native(), conn.to_native(), req);
            }
            ArchivedFrame::Seen { user, shard, online } => {
                let (user, shard) = (user.as_str(), usize::from(shard.to_native()));
                self.with_owner(|o, now| o.user_seen(user, shard, *online, now));
            }
            ArchivedFrame::LastSeen { user, conn, req } => {
                let req = req.as_ref().map(|r| r.as_str());
                self.with_owner(|o, now| o.last_seen(user.as_str(), conn.to_native(), req, now));
            }
            ArchivedFrame::Delivered { room, seq, users } => {
                let users = users.iter().map(|u| u.as_str().to_owned()).collect();
                self.owner_delivered(room.as_str(), seq.to_native(), users);
            }
            ArchivedFrame::Typing { room, user, typing } => self.typing_update(room.as_str(), user.as_str(), *typing),
            ArchivedFrame::Disconnect {
                user,
                reason,
                retry_ms,
                conn,
            } => {
                let retry_ms = retry_ms.as_ref().map(|r| r.to_native());
                self.on_disconnect_frame(user.as_str(), reason.as_str(), retry_ms, conn.to_native());
            }
            ArchivedFrame::Shutdown { retry_ms_max } => self.begin_drain(u64::from(retry_ms_max.to_native())),
        }
    }

    /// A frame for this shard's connections: replies, room deliveries, DM deliveries, events.
    fn on_member_frame(&self, buf: &Bytes, frame: &ArchivedFrame) {
        match frame {
            ArchivedFrame::Reply { conn, payload } => {
                if let Some(c) = self.conn(conn.to_native()) {
                    c.out.push_text(router::payload_bytes(buf, payload.as_slice()));
                }
            }
            ArchivedFrame::Deliver { room, payload, seq, at_us } => {
                let payload = router::payload_bytes(buf, payload.as_slice());
                // 0: sequenced on another node (through Redis): timed from its arrival here.
                let at_us = match at_us.to_native() {
                    0 => super::latency::mono_us(),
                    at => at,
                };
                self.member_deliver(room.as_str(), seq.to_native(), &payload, at_us);
            }
            ArchivedFrame::Reset { room, seq, payload } => {
                self.member_reset(room.as_str(), seq.to_native(), &router::payload_bytes(buf, payload.as_slice()));
            }
            ArchivedFrame::Gap { room, from, to, payload } => {
                let notice = router::payload_bytes(buf, payload.as_slice());
                self.member_skip(room.as_str(), from.to_native(), to.to_native(), &notice);
            }
            ArchivedFrame::UserDeliver { user, room, seq, payload } => {
                let only = user.as_ref().map(|u| u.as_str());
                let payload = router::payload_bytes(buf, payload.as_slice());
                self.member_to_users(only, room.as_str(), seq.to_native(), &payload);
            }
            ArchivedFrame::Event { room, from, payload } => {
                self.member_event(room.as_str(), from.as_str(), &router::payload_bytes(buf, payload.as_slice()));
            }
            ArchivedFrame::EventTo { room, users, payload } => {
                let users: Vec<String> = users.iter().map(|u| u.as_str().to_owned()).collect();
                self.member_event_users(room.as_str(), &users, &router::payload_bytes(buf, payload.as_slice()));
            }
            ArchivedFrame::ToSenders { room, payload } => {
                self.member_to_senders(room.as_str(), &router::payload_bytes(buf, payload.as_slice()));
            }
            ArchivedFrame::Changed { room, seq, message, event } => {
                let message = message.as_ref().map(|m| router::payload_bytes(buf, m.as_slice()));
                let event = router::payload_bytes(buf, event.as_slice());
                self.member_changed(room.as_str(), seq.to_native(), message.as_ref(), &event);
            }
            other => tracing::error!(shard = self.id, ?other, "not a frame for the member side"),
        }
    }

    fn on_history_frame(&self, frame: &ArchivedFrame) {
        let ArchivedFrame::History {
            room,
            user,
            conn,
            req,
            before,
            limit,
            thread,
        } = frame
        else {
            return;
        };
        self.owner_history(HistoryArgs {
            room: room.as_str(),
            user: user.as_str(),
            conn: conn.to_native(),
            req: req.as_ref().map(|r| r.as_str()),
            before: before.as_ref().map(|b| b.to_native()),
            limit: limit.to_native(),
            thread: thread.as_ref().map(|t| t.to_native()),
        });
    }
}
