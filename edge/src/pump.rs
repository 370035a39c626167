//! The cluster pump: one thread that takes the Redis bridge's events and
//! hands them to the shards over the mesh (its own mesh endpoint), so the
//! shards never touch Redis. This is its shell: what each event means is
//! decided by `engine::pump` (sans-IO); here the bridge's events and the
//! presence tick go in, the reads it asks for are made (each bounded by
//! `FETCH_TIMEOUT`; a failed or late read is logged and answered `None`),
//! and its frames go to the shards' rings. An event is taken from the bridge
//! only when no read is out, so events are handled one at a time, in bridge
//! order.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use router::bridge::{BridgeEvents, BridgeHandle};
use router::Endpoint;

use crate::engine::pump::{Pump, PumpAnswer, PumpCall, PumpEffect};

/// Longest wait for a read from Redis (then a catch-up is announced as a gap).
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the pump sends the coalesced presence counts that are due.
const PRESENCE_TICK: Duration = Duration::from_secs(1);

struct Shell {
    mesh: Endpoint,
    bridge: BridgeHandle,
    pump: Pump,
}

/// Runs the pump on the current thread until the bridge stops.
pub fn run(mesh: Endpoint, bridge: BridgeHandle, events: BridgeEvents, shards: usize, roster_max: usize) {
    let rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build();
    let mut rt = match rt {
        Ok(rt) => rt,
        Err(e) => return tracing::error!(error = %e, "cluster pump: cannot start its runtime"),
    };
    let shell = Shell {
        mesh,
        bridge,
        pump: Pump::new(shards, roster_max),
    };
    rt.block_on(shell.main(events));
}

impl Shell {
    async fn main(mut self, mut events: BridgeEvents) {
        let mut tick = monoio::time::Instant::now() + PRESENCE_TICK;
        loop {
            let ev = monoio::select! {
                ev = events.recv() => ev,
                () = monoio::time::sleep_until(tick) => {
                    tick += PRESENCE_TICK;
                    self.pump.tick(now_ms());
                    self.carry_out().await;
                    continue;
                }
            };
            let Some(ev) = ev else { break };
            self.pump.event(ev, now_ms());
            self.carry_out().await;
        }
        tracing::info!("cluster pump stopped: the bridge is gone");
    }

    /// Carries out the pump's effects, answering each read before the next event is taken.
    async fn carry_out(&mut self) {
        while let Some(effect) = self.pump.poll() {
            match effect {
                PumpEffect::Send { shard, frame } => self.mesh.send(usize::from(shard), frame).await,
                PumpEffect::Call(call) => {
                    let answer = self.read(call).await;
                    self.pump.answered(answer, now_ms());
                }
            }
        }
        debug_assert!(!self.pump.waiting(), "every read was answered");
    }

    async fn read(&self, call: PumpCall) -> PumpAnswer {
        let b = &self.bridge;
        match call {
            PumpCall::Recent { room, after, count } => {
                PumpAnswer::Recent(bounded(&room, "cannot read missed messages", b.recent_after(&room, after, count)).await)
            }
            PumpCall::RoomSeq { room } => PumpAnswer::RoomSeq(bounded(&room, "cannot read the room's seq", b.room_seq(&room)).await),
            PumpCall::Online { room } => PumpAnswer::Online(
                bounded(&room, "cannot read who is online", b.presence_online(&room))
                    .await
                    .map(|o| o.len()),
            ),
        }
    }
}

/// A bridge read bounded by [`FETCH_TIMEOUT`]; `None` (logged) when it failed or was late.
async fn bounded<T>(room: &str, what: &str, read: impl std::future::Future<Output = Result<T, router::bridge::BridgeError>>) -> Option<T> {
    match monoio::time::timeout(FETCH_TIMEOUT, read).await {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            tracing::warn!(room, error = %e, "cluster pump: {what}");
            None
        }
        Err(_) => {
            tracing::warn!(room, "cluster pump: {what}: Redis did not answer in time");
            None
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
