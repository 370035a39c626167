//! The cluster pump: one thread that takes the Redis bridge's events and
//! hands them to the shards over the mesh (its own mesh endpoint), so the
//! shards never touch Redis.
//!
//! - `Deliver`: the received frame is already a mesh `Deliver` frame (the
//!   bytes Redis published); it goes as is to each subscribed shard, no copy.
//! - `Gap` forward (`got > expected`): the missed messages are fetched from
//!   the room's recent stream and forwarded first, in order; what the stream
//!   no longer holds is announced to members with a `gap` frame.
//! - `Gap` backward (`got < expected`) or a smaller seq after `Resync`:
//!   Redis lost the room's sequence; shards get a `Reset` (cursor and an
//!   `epoch` notice for members).
//! - `Resync` (Redis reconnect, or the event reader fell behind): for each
//!   room, the seq in Redis is compared with the last one forwarded, and the
//!   difference is fetched and forwarded, or announced.
//! - `UserDeliver` (a DM room's message on a user's channel): as a mesh
//!   `UserDeliver` frame to the shards holding that user's connections.
//! - `Event` (typing): the received frame is already a mesh `Event` frame; it
//!   goes as is to each subscribed shard.
//! - `PresenceChanged`: a rendered `presence` event to the room's shards, as
//!   an `Event` for every member (ephemeral: shed for a backed-up member);
//!   above `presence_roster_max` users online (`engine::presence_counts`),
//!   the room's online count instead, at the next tick (once a second).
//!
//! What must stay true: events are handled one at a time in bridge order,
//! so a room's frames reach each shard in seq order (one ring per shard);
//! the room table is bounded (`MAX_ROOMS`, then rooms not seen recently are
//! forgotten, and their next message is forwarded to every shard).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use router::bridge::{BridgeEvent, BridgeEvents, BridgeHandle};
use router::{Endpoint, Frame};

use crate::engine::catch_up::{self, Piece};
use crate::engine::presence_counts::{Decision, PresenceCounts};
use crate::protocol::server;

/// Rooms the pump remembers (last seq forwarded, shards); past it the table is cleared.
const MAX_ROOMS: usize = 100_000;
/// Longest wait for a catch-up read from Redis before announcing a gap.
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);

/// What the pump knows of a room: the last seq forwarded and the shards subscribed.
struct RoomCursor {
    seq: u64,
    shards: Arc<[u16]>,
}

struct Pump {
    mesh: Endpoint,
    bridge: BridgeHandle,
    shards: usize,
    rooms: HashMap<String, RoomCursor>,
    presence: PresenceCounts,
}

/// How often the pump sends the coalesced presence counts that are due.
const PRESENCE_TICK: Duration = Duration::from_secs(1);

/// Runs the pump on the current thread until the bridge stops.
pub fn run(mesh: Endpoint, bridge: BridgeHandle, events: BridgeEvents, shards: usize, roster_max: usize) {
    let rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build();
    let mut rt = match rt {
        Ok(rt) => rt,
        Err(e) => return tracing::error!(error = %e, "cluster pump: cannot start its runtime"),
    };
    let pump = Pump {
        mesh,
        bridge,
        shards,
        rooms: HashMap::new(),
        presence: PresenceCounts::new(roster_max),
    };
    rt.block_on(pump.main(events));
}

impl Pump {
    async fn main(mut self, mut events: BridgeEvents) {
        let mut tick = monoio::time::Instant::now() + PRESENCE_TICK;
        loop {
            let ev = monoio::select! {
                ev = events.recv() => ev,
                () = monoio::time::sleep_until(tick) => {
                    tick += PRESENCE_TICK;
                    self.send_counts().await;
                    continue;
                }
            };
            let Some(ev) = ev else { break };
            match ev {
                BridgeEvent::Deliver {
                    room, seq, frame, shards, ..
                } => self.forward(&room, seq, frame, shards).await,
                BridgeEvent::Gap { room, expected, got } if got > expected => self.recover(&room, expected - 1, got - 1).await,
                BridgeEvent::Gap { room, got, .. } => self.reset(&room, got.saturating_sub(1)).await,
                BridgeEvent::Resync { rooms, lost } => {
                    for room in rooms {
                        self.resync(&room, lost).await;
                    }
                }
                BridgeEvent::UserDeliver {
                    user,
                    room,
                    seq,
                    payload,
                    shards,
                } => {
                    let frame = router::encode(&Frame::UserDeliver {
                        user: Some(user),
                        room,
                        seq,
                        payload: payload.to_vec(),
                    });
                    for &s in shards.iter() {
                        self.mesh.send(usize::from(s), frame.clone()).await;
                    }
                }
                BridgeEvent::Event { frame, shards, .. } | BridgeEvent::Disconnect { frame, shards, .. } => {
                    for &s in shards.iter() {
                        self.mesh.send(usize::from(s), frame.clone()).await;
                    }
                }
                BridgeEvent::PresenceChanged { room, user, online, .. } => self.presence_changed(room, &user, online).await,
            }
        }
        tracing::info!("cluster pump stopped: the bridge is gone");
    }

    /// A user's presence changed in `room`: its event for every member, or (above the
    /// bound) part of a count at the next tick.
    async fn presence_changed(&mut self, room: String, user: &str, online: bool) {
        let mut decision = self.presence.changed(&room, online);
        if decision == Decision::NeedCount {
            let count = match monoio::time::timeout(FETCH_TIMEOUT, self.bridge.presence_online(&room)).await {
                Ok(Ok(online)) => online.len(),
                // Unknown: the event goes as it is, and the count is read again next time.
                _ => {
                    let payload = server::presence_event(&room, user, online, now_ms());
                    return self.presence_event(room, payload).await;
                }
            };
            decision = self.presence.counted(&room, count);
        }
        if decision == Decision::Forward {
            let payload = server::presence_event(&room, user, online, now_ms());
            self.presence_event(room, payload).await;
        }
    }

    /// At the tick: each room whose count is due gets its count, read from Redis.
    async fn send_counts(&mut self) {
        for room in self.presence.due() {
            let Ok(Ok(online)) = monoio::time::timeout(FETCH_TIMEOUT, self.bridge.presence_online(&room)).await else {
                tracing::debug!(room, "cluster pump: a presence count was not read");
                continue;
            };
            self.presence.counted(&room, online.len());
            let payload = server::presence_count(&room, online.len());
            self.presence_event(room, payload).await;
        }
    }

    /// A presence event for every member of `room` (`from` empty), ephemeral: shed for a
    /// backed-up member.
    async fn presence_event(&mut self, room: String, payload: Bytes) {
        let shards = self.shards_of(&room);
        let frame = router::encode(&Frame::Event {
            payload: payload.to_vec(),
            room,
            from: String::new(),
        });
        for s in shards.iter() {
            self.mesh.send(usize::from(*s), frame.clone()).await;
        }
    }

    async fn forward(&mut self, room: &str, seq: u64, frame: Bytes, shards: Arc<[u16]>) {
        if self.rooms.len() >= MAX_ROOMS && !self.rooms.contains_key(room) {
            self.rooms.clear();
        }
        for &s in shards.iter() {
            self.mesh.send(usize::from(s), frame.clone()).await;
        }
        self.rooms.insert(room.to_owned(), RoomCursor { seq, shards });
    }

    /// Forwards `after+1..=upto` from the recent stream; announces what it no longer holds.
    async fn recover(&mut self, room: &str, after: u64, upto: u64) {
        let want = (upto - after).min(u64::from(u32::MAX)) as u32;
        let fetched = monoio::time::timeout(FETCH_TIMEOUT, self.bridge.recent_after(room, after, want)).await;
        let msgs = match fetched {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                tracing::warn!(room, error = %e, "cluster pump: cannot fetch missed messages");
                Vec::new()
            }
            Err(_) => Vec::new(),
        };
        let shards = self.shards_of(room);
        for piece in catch_up::merge(after, upto, msgs.iter().map(|m| (m.seq, &m.frame))) {
            match piece {
                Piece::Message(seq, frame) => self.forward(room, seq, frame.clone(), shards.clone()).await,
                Piece::Gap(from, to) => {
                    self.notify(room, &server::gap(room, from, to)).await;
                    if let Some(r) = self.rooms.get_mut(room) {
                        r.seq = r.seq.max(to);
                    }
                }
            }
        }
    }

    /// After a reconnect (or a lag): what the room missed is fetched, a sequence that went
    /// back is reset; with `lost` (Redis lost its data) a sequence that went on after a shared
    /// store's floor is announced too, as a new epoch after the last seq delivered, before
    /// what is fetched.
    async fn resync(&mut self, room: &str, lost: bool) {
        let Some(last) = self.rooms.get(room).map(|r| r.seq) else { return };
        match monoio::time::timeout(FETCH_TIMEOUT, self.bridge.room_seq(room)).await {
            Ok(Ok(now)) if now < last => self.reset(room, now).await,
            Ok(Ok(now)) => {
                if lost {
                    tracing::warn!(
                        room,
                        seq = last,
                        "cluster: Redis lost its data; the room's sequence goes on: new epoch"
                    );
                    self.notify(room, &server::epoch(room, now_ms(), last)).await;
                }
                if now > last {
                    self.recover(room, last, now).await;
                }
            }
            Ok(Err(e)) => tracing::warn!(room, error = %e, "cluster pump: resync could not read the room's seq"),
            Err(_) => tracing::warn!(room, "cluster pump: resync timed out"),
        }
    }

    /// Redis lost the room's sequence: every shard restarts its cursor at `seq`, members hear of a new epoch.
    async fn reset(&mut self, room: &str, seq: u64) {
        tracing::warn!(room, seq, "cluster: the room's sequence went back (Redis lost data): new epoch");
        let frame = router::encode(&Frame::Reset {
            room: room.to_owned(),
            seq,
            payload: server::epoch(room, now_ms(), seq).to_vec(),
        });
        for s in self.shards_of(room).iter() {
            self.mesh.send(usize::from(*s), frame.clone()).await;
        }
        if let Some(r) = self.rooms.get_mut(room) {
            r.seq = seq;
        }
    }

    /// Sends a rendered notice (seq 0: not a room message) to the room's shards.
    async fn notify(&self, room: &str, payload: &Bytes) {
        let frame = router::encode(&Frame::Deliver {
            room: room.to_owned(),
            seq: 0,
            payload: payload.to_vec(),
            at_us: 0,
        });
        for s in self.shards_of(room).iter() {
            self.mesh.send(usize::from(*s), frame.clone()).await;
        }
    }

    /// The shards subscribed to `room` as last reported, or every shard when unknown.
    fn shards_of(&self, room: &str) -> Arc<[u16]> {
        match self.rooms.get(room) {
            Some(r) => r.shards.clone(),
            None => (0..self.shards as u16).collect(),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
