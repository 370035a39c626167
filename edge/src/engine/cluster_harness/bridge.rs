//! A node's Redis bridge, modelled for the cluster harness's pump mode: what
//! pub/sub hands the node (its own seq check, as `router::bridge::SubTable`
//! does: `first` since the node subscribed the room, a `Gap` for a jump),
//! a lost delivery followed by a `Resync` of every room the node subscribes
//! (pub/sub loses messages only when its connection drops, or its reader
//! fell behind), and the node's `Pump`, fed one event at a time while no
//! read is out, as the shell does.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use router::bridge::BridgeEvent;

use crate::engine::pump::{Pump, PumpAnswer, PumpCall, PumpEffect};

/// A message in a room's stream.
#[derive(Clone)]
pub(super) struct Stored {
    pub(super) seq: u64,
    /// The rendered JSON.
    pub(super) payload: Bytes,
    /// The mesh `Deliver` frame Redis published.
    pub(super) frame: Bytes,
}

/// One node's bridge and pump.
pub(super) struct NodeBridge {
    pump: Pump,
    /// Per room the node subscribes: the last seq pub/sub handed over since it subscribed.
    last_seq: HashMap<String, u64>,
    queue: VecDeque<BridgeEvent>,
}

impl NodeBridge {
    pub(super) fn new(shards: usize) -> Self {
        Self {
            pump: Pump::new(shards, 1_000),
            last_seq: HashMap::new(),
            queue: VecDeque::new(),
        }
    }

    /// The node subscribes `room` anew (none of its shards wanted it): nothing to check
    /// the next delivery against.
    pub(super) fn subscribed(&mut self, room: &str) {
        self.last_seq.remove(room);
    }

    /// Pub/sub hands over message `seq` of `room` (`frame`: the mesh `Deliver` frame Redis
    /// published) for `shards`, the node's shards that want it.
    pub(super) fn receive(&mut self, room: &str, seq: u64, payload: Bytes, frame: Bytes, shards: Vec<u16>) {
        let last = self.last_seq.insert(room.to_owned(), seq);
        if let Some(last) = last.filter(|&l| l + 1 != seq) {
            self.queue.push_back(BridgeEvent::Gap {
                room: room.to_owned(),
                expected: last + 1,
                got: seq,
            });
        }
        self.queue.push_back(BridgeEvent::Deliver {
            room: room.to_owned(),
            seq,
            payload,
            frame,
            shards: Arc::from(shards),
            first: last.is_none(),
        });
    }

    /// The connection dropped with a message on its way: once back, the bridge resyncs
    /// every room the node subscribes.
    pub(super) fn lost(&mut self, rooms: Vec<String>) {
        self.queue.push_back(BridgeEvent::Resync { rooms, lost: false });
    }

    /// Whether the shell would hand the pump an event now.
    pub(super) fn ready(&self) -> bool {
        !self.queue.is_empty() && !self.pump.waiting()
    }

    pub(super) fn idle(&self) -> bool {
        self.queue.is_empty() && !self.pump.waiting()
    }

    /// Hands the next event to the pump; its effects.
    pub(super) fn step(&mut self, now_ms: u64) -> Vec<PumpEffect> {
        if let Some(ev) = self.queue.pop_front() {
            self.pump.event(ev, now_ms);
        }
        self.effects()
    }

    /// The answer to the pump's read; its effects.
    pub(super) fn answered(&mut self, answer: PumpAnswer, now_ms: u64) -> Vec<PumpEffect> {
        self.pump.answered(answer, now_ms);
        self.effects()
    }

    fn effects(&mut self) -> Vec<PumpEffect> {
        let out: Vec<PumpEffect> = std::iter::from_fn(|| self.pump.poll()).collect();
        let reads = out.iter().filter(|e| matches!(e, PumpEffect::Call(_))).count();
        assert!(reads <= 1 && (reads == 0 || self.pump.waiting()), "one read out at a time: {out:?}");
        out
    }
}

/// The fake Redis's answer to a pump's read.
pub(super) fn answer(call: &PumpCall, seqs: &HashMap<String, u64>, streams: &HashMap<String, VecDeque<Stored>>) -> PumpAnswer {
    match call {
        PumpCall::Recent { room, after, count } => {
            let msgs = streams
                .get(room)
                .into_iter()
                .flatten()
                .filter(|m| m.seq > *after && m.seq <= after + u64::from(*count))
                .map(|m| router::bridge::RecentMessage {
                    seq: m.seq,
                    payload: m.payload.clone(),
                    frame: m.frame.clone(),
                })
                .collect();
            PumpAnswer::Recent(Some(msgs))
        }
        PumpCall::RoomSeq { room } => PumpAnswer::RoomSeq(Some(seqs.get(room).copied().unwrap_or(0))),
        PumpCall::Online { .. } => PumpAnswer::Online(Some(1)),
    }
}

/// A failed (or late) answer to `call`.
pub(super) fn failed(call: &PumpCall) -> PumpAnswer {
    match call {
        PumpCall::Recent { .. } => PumpAnswer::Recent(None),
        PumpCall::RoomSeq { .. } => PumpAnswer::RoomSeq(None),
        PumpCall::Online { .. } => PumpAnswer::Online(None),
    }
}
