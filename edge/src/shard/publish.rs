//! Cluster mode, owner side: the shell around `engine::publisher`. It feeds
//! the publisher this shard's sends for the rooms it owns, with the time,
//! and carries out its effects: replies, and batches to publish through the
//! bridge (one task per batch; its answer goes back to the publisher, which
//! then starts the room's next batch).

use std::rc::Rc;

use router::bridge::{keys, BridgeError, SeqRange};

use super::sequencer::Sequencer;
use super::Shard;
use crate::engine::owner::SendArgs;
use crate::engine::publisher::{PubEffect, Publisher, StoreState};

impl Shard {
    /// A send in cluster mode, on the room's owner shard.
    pub(super) fn cluster_send(self: &Rc<Self>, a: &SendArgs<'_>) {
        let stats = self.store.stats();
        let store = StoreState {
            unavailable: stats.unavailable(),
            backlog: stats.write_queue_depth(),
            capacity: self.cfg.store_queue_capacity as u64,
        };
        self.with_publisher(|p, now| {
            if p.admit(a, store) {
                p.send(a, now);
            }
        });
    }

    /// Runs `f` on the publisher with the time now, then carries out every effect it produced.
    fn with_publisher(self: &Rc<Self>, f: impl FnOnce(&mut Publisher, u64)) {
        let Sequencer::Redis(redis) = &self.sequencer else { return };
        f(&mut redis.publisher.borrow_mut(), Self::now_ms());
        self.carry_out_publisher();
    }

    /// Redis answered a batch: the publisher acks its senders and starts the room's next batch.
    fn batch_published(self: &Rc<Self>, room: &str, result: Result<SeqRange, BridgeError>) {
        let Sequencer::Redis(redis) = &self.sequencer else { return };
        redis.publisher.borrow_mut().published(room, result);
        self.carry_out_publisher();
    }

    fn carry_out_publisher(self: &Rc<Self>) {
        let Sequencer::Redis(redis) = &self.sequencer else { return };
        loop {
            // The borrow ends before the effect runs.
            let Some(effect) = redis.publisher.borrow_mut().poll() else { break };
            match effect {
                PubEffect::Reply { conn, payload } => self.to_conn(conn, payload),
                PubEffect::Store { msg, ack } => self.cluster_store_write(msg, ack),
                PubEffect::LoadFloor { room } => {
                    let shard = self.clone();
                    monoio::spawn(async move {
                        let query = storage::Query::RoomState {
                            room: room.clone(),
                            new_epoch: Self::now_ms(),
                        };
                        let floor = match shard.cluster_store_query(query).await {
                            Ok(storage::Answer::RoomState(s)) => Ok(s.last_seq),
                            Ok(other) => Err(storage::StoreError::Internal(format!("unexpected answer {other:?}")).into()),
                            Err(e) => Err(e),
                        };
                        shard.with_publisher(|p, _| p.floor_loaded(&room, floor));
                    });
                }
                PubEffect::Publish {
                    room,
                    batch,
                    floor,
                    notice,
                } => {
                    let (shard, bridge) = (self.clone(), redis.bridge.clone());
                    // A DM room's messages go to its users' channels too (the user channel).
                    let also: Vec<String> = match crate::auth::dm_participants(&room) {
                        Some((a, b)) if a == b => vec![keys::user(a)],
                        Some((a, b)) => vec![keys::user(a), keys::user(b)],
                        None => Vec::new(),
                    };
                    monoio::spawn(async move {
                        // The notice goes as an event of the room, to every member (no user excepted).
                        let notice = notice.map(|payload| {
                            router::encode(&router::Frame::Event {
                                room: room.clone(),
                                from: String::new(),
                                payload: payload.to_vec(),
                            })
                        });
                        let result = bridge.publish_noticed(&room, batch, also, floor, notice).await;
                        shard.batch_published(&room, result);
                    });
                }
            }
        }
    }
}
