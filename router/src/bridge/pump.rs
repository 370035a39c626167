//! The receive path: every buffer from the subscriber connection is
//! checked, decoded in place and turned into an event.
//!
//! What must stay true:
//! - Nothing a third party publishes on a room channel can panic the node
//!   or reach clients unless it is a valid `Deliver` frame (or presence
//!   note) naming the channel's own room; everything else is counted in
//!   `rejected_total` and dropped.
//! - A room's messages are emitted in the order Redis sent them (seq
//!   order, since the script publishes in seq order); a seq that does not
//!   follow the last one is announced with a `Gap` first.
//! - Payloads are slices of the received buffer: no copy.
//! - If this task falls behind fred's bounded buffer, the loss is
//!   announced with a `Resync` of every subscribed room.

use std::sync::Arc;

use bytes::Bytes;
use fred::types::Message;
use tokio::sync::broadcast::{self, error::RecvError};

use super::core::Shared;
use super::metrics::BridgeMetrics;
use super::subs::SeqCheck;
use super::wire::{decode_incoming, Incoming};
use super::{keys, BridgeEvent};
use crate::payload_bytes;

/// Reads the subscriber connection's messages until it closes.
pub(crate) async fn run(shared: Arc<Shared>, mut rx: broadcast::Receiver<Message>) {
    loop {
        match rx.recv().await {
            Ok(msg) => {
                for e in on_message(&shared, msg).into_iter().flatten() {
                    shared.emit(e).await;
                }
            }
            Err(RecvError::Lagged(n)) => {
                shared.metrics.lagged_total.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                BridgeMetrics::inc(&shared.metrics.resyncs_total);
                let rooms = shared.subs().rooms();
                shared.emit(BridgeEvent::Resync { rooms, lost: false }).await;
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// Up to two events, in order, without allocating.
type Events = [Option<BridgeEvent>; 2];

/// The events one received message produces: none if it is rejected or
/// its room is no longer wanted; a `Gap` before a `Deliver` that jumps.
fn on_message(shared: &Shared, msg: Message) -> Events {
    let reject = || {
        BridgeMetrics::inc(&shared.metrics.rejected_total);
        [None, None]
    };
    let Some(room) = keys::room_of_channel(&msg.channel) else {
        return reject();
    };
    let Some(buf) = msg.value.into_bytes() else {
        return reject();
    };
    if buf.len() > shared.config.max_message_bytes as usize {
        return reject();
    }
    if let Some(user) = keys::user_of(room) {
        // A DM room's message; or its edit, delete, reaction or delivered receipt, as a seq-0
        // user delivery (an event, not a message). For the user's connections that are not
        // members of the room.
        let (r, seq, payload) = match decode_incoming(&buf) {
            Ok(Incoming::Message { room: r, seq, payload }) => (r, seq, payload),
            Ok(
                Incoming::Changed { room: r, event, .. }
                | Incoming::Event {
                    room: r, payload: event, ..
                },
            ) => (r, 0, event),
            Ok(Incoming::Disconnect { user: u }) if u == user => {
                BridgeMetrics::inc(&shared.metrics.received_total);
                let Some(shards) = shared.subs().shards(room) else {
                    return [None, None];
                };
                let frame = buf.clone();
                return [
                    Some(BridgeEvent::Disconnect {
                        user: u.to_owned(),
                        frame,
                        shards,
                    }),
                    None,
                ];
            }
            _ => return reject(),
        };
        BridgeMetrics::inc(&shared.metrics.received_total);
        let Some(shards) = shared.subs().shards(room) else {
            return [None, None];
        };
        let deliver = BridgeEvent::UserDeliver {
            user: user.to_owned(),
            room: r.to_owned(),
            seq,
            payload: payload_bytes(&buf, payload),
            shards,
        };
        return [Some(deliver), None];
    }
    let incoming = match decode_incoming(&buf) {
        Ok(i) if i.room() == room => i,
        Ok(_) | Err(_) => return reject(),
    };
    BridgeMetrics::inc(&shared.metrics.received_total);
    match incoming {
        Incoming::Message { seq, payload, .. } => deliver(shared, room, seq, payload_bytes(&buf, payload), buf.clone()),
        // Forwarded as is: the shards read it as the mesh frame it is.
        Incoming::Event { .. } | Incoming::Changed { .. } => match shared.subs().shards(room) {
            Some(shards) => [
                Some(BridgeEvent::Event {
                    room: room.to_owned(),
                    frame: buf.clone(),
                    shards,
                }),
                None,
            ],
            None => [None, None],
        },
        Incoming::Presence { user, node, online, .. } => [
            Some(BridgeEvent::PresenceChanged {
                room: room.to_owned(),
                user: user.to_owned(),
                node: node.to_owned(),
                online,
            }),
            None,
        ],
        // `room()` of a disconnect is empty: it never passed the check above.
        Incoming::Disconnect { .. } => reject(),
    }
}

fn deliver(shared: &Shared, room: &str, seq: u64, payload: Bytes, frame: Bytes) -> Events {
    let check = shared.subs().check_seq(room, seq);
    let (gap, shards, first) = match check {
        SeqCheck::NotWanted => return [None, None],
        SeqCheck::InOrder { shards, first } => (None, shards, first),
        SeqCheck::Jump { shards, expected } => {
            BridgeMetrics::inc(&shared.metrics.gaps_total);
            let gap = BridgeEvent::Gap {
                room: room.to_owned(),
                expected,
                got: seq,
            };
            (Some(gap), shards, false)
        }
    };
    let deliver = BridgeEvent::Deliver {
        room: room.to_owned(),
        seq,
        payload,
        frame,
        shards,
        first,
    };
    [gap, Some(deliver)]
}
