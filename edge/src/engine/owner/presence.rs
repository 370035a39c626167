//! Who is online in the rooms a shard owns, on a single node: the members the
//! member shards count in (at a join's subscribe) and out, the `presence`
//! answer, and the events members get.
//!
//! Up to `presence_roster_max` users online, members get one event per user
//! who comes online or goes offline. Above it (before or after the change),
//! per-user events would cost O(n) deliveries per join in an O(n) room, so
//! the changes are coalesced instead: at the next tick the members get one
//! `{"type":"presence","room","count"}` with the room's online count, and
//! the full list stays one `presence` request away. Presence is ephemeral:
//! it goes out as an `Effect::Event` for everyone (`from` empty), which a
//! member whose queue is backed up is shed, before any message is delayed. Changes made while such
//! a count waits are part of it, so a member never hears a user's events out
//! of order: after a count, per-user events say what changed since.

use bytes::Bytes;

use super::{Owner, StorePort};
use crate::protocol::server;

impl<S: StorePort> Owner<S> {
    /// A member (a connection of `user`) on `shard` joined (`online`) or left `room`: when
    /// the user came online or went offline with it, the members are told (an event, or
    /// above `presence_roster_max` a count at the next tick).
    pub fn member(&mut self, room: &str, shard: usize, user: &str, online: bool, now_ms: u64) {
        let cap = self.cfg.presence_roster_max;
        let Some(r) = self.rooms.get_mut(room) else { return };
        if !r.member(shard, user, online, now_ms) {
            return;
        }
        let before = if online { r.roster().len() - 1 } else { r.roster().len() + 1 };
        // While a count waits for the tick, per-user events wait too: members never hear a
        // user's event out of the order of what changed.
        if before.max(r.roster().len()) > cap || r.roster().count_pending() {
            if r.roster_mut().mark_count_changed() {
                self.presence_counts.push(r.name());
            }
            return;
        }
        let event = server::presence_event(room, user, online, now_ms);
        self.event(room, "", &event);
    }

    /// Who is online in `room` (the first `presence_roster_max`, with the full count), for
    /// connection `conn`; a room not in memory has nobody.
    pub fn presence(&mut self, room: &str, conn: u64, req: Option<&str>) {
        let (online, count) = match self.rooms.get(room) {
            Some(r) => (r.roster().online(self.cfg.presence_roster_max), r.roster().len()),
            None => (Vec::new(), 0),
        };
        self.reply(conn, server::presence_list(req, room, &online, count));
    }

    /// The shell's periodic tick (about once a second): idle rooms leave memory, and coalesced
    /// online counts and read receipts go out.
    pub fn tick(&mut self, now_ms: u64) {
        self.evict_idle(now_ms);
        self.flush_receipts(now_ms);
        self.flush_delivered(now_ms, false);
        self.retry_last_seen();
        for room in std::mem::take(&mut self.presence_counts) {
            let Some(r) = self.rooms.get_mut(&*room) else { continue };
            if r.roster_mut().take_count_changed() {
                let count: Bytes = server::presence_count(&room, r.roster().len());
                self.event(&room, "", &count);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::Value;
    use storage::{Answer, Completion, Overloaded, Query, RoomState, StoredMessage};

    use super::super::{Effect, OwnerConfig};
    use super::*;
    use crate::metrics::ShardStats;

    #[derive(Default)]
    struct Port(Vec<u64>);

    impl StorePort for Port {
        fn write(&mut self, _msg: StoredMessage, _ticket: u64) -> Result<(), Overloaded> {
            Ok(())
        }

        fn query(&mut self, _query: Query, ticket: u64) -> Result<(), Overloaded> {
            self.0.push(ticket);
            Ok(())
        }
    }

    /// An owner of room `r` (loaded, shard 1 subscribed) showing at most `cap` users.
    fn owner(cap: usize) -> Owner<Port> {
        let cfg = OwnerConfig {
            presence_roster_max: cap,
            ..super::super::store_model::config(8)
        };
        let stats = Arc::new((0..2).map(|_| ShardStats::default()).collect::<Vec<_>>());
        let mut o = Owner::new(cfg, Port::default(), stats);
        o.subscribe("r", 1, 1, None, 1_000);
        let ticket = o.store_mut().0[0];
        let state = Answer::RoomState(RoomState { epoch: 1, last_seq: 0 });
        o.completion(Completion::Answered { ticket, result: Ok(state) }, 1_000);
        while o.poll().is_some() {}
        o
    }

    /// What members were told, as "user:status" or "count:N".
    fn told(o: &mut Owner<Port>) -> Vec<String> {
        std::iter::from_fn(|| o.poll())
            .filter_map(|e| match e {
                Effect::Event { from, payload, .. } if from.is_empty() => Some(payload),
                _ => None,
            })
            .map(|p| {
                let v: Value = serde_json::from_slice(&p).expect("json");
                match v["user"].as_str() {
                    Some(u) => format!("{u}:{}", v["status"].as_str().unwrap_or_default()),
                    None => format!("count:{}", v["count"]),
                }
            })
            .collect()
    }

    #[test]
    fn up_to_the_cap_every_change_is_told_above_it_a_count_per_tick() {
        let mut o = owner(2);
        o.member("r", 1, "a", true, 1);
        o.member("r", 1, "b", true, 2);
        assert_eq!(told(&mut o), ["a:online", "b:online"]);
        o.member("r", 1, "c", true, 3);
        o.member("r", 1, "d", true, 4);
        o.member("r", 1, "d", false, 5);
        assert_eq!(told(&mut o), Vec::<String>::new(), "above the cap: nothing until the tick");
        o.tick(6);
        assert_eq!(told(&mut o), ["count:3"]);
        o.tick(7);
        assert_eq!(told(&mut o), Vec::<String>::new(), "no change, no count");
    }

    #[test]
    fn changes_while_a_count_waits_go_with_it_so_no_user_is_told_out_of_order() {
        let mut o = owner(2);
        for (i, u) in ["a", "b", "c"].into_iter().enumerate() {
            o.member("r", 1, u, true, i as u64);
        }
        o.tick(10);
        assert_eq!(told(&mut o), ["a:online", "b:online", "count:3"]);
        // a goes (3 -> 2: above the cap before), b goes (2 -> 1: at the cap), a comes back.
        o.member("r", 1, "a", false, 11);
        o.member("r", 1, "b", false, 12);
        o.member("r", 1, "a", true, 13);
        assert_eq!(
            told(&mut o),
            Vec::<String>::new(),
            "while a count waits, per-user events wait too (else members hear a:online twice)"
        );
        o.tick(14);
        assert_eq!(told(&mut o), ["count:2"]);
        o.member("r", 1, "c", false, 15);
        assert_eq!(told(&mut o), ["c:offline"], "back at the cap with nothing waiting: events again");
    }
}
