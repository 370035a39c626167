//! The member side of the harness: each shard's `Subscriber` (the member
//! side both modes run) fed with the owners' answers and deliveries, what it
//! decides carried out as `shard/members.rs` and `shard/local.rs` do, and
//! the checks on what clients receive.

use bytes::Bytes;
use serde_json::Value;

use super::{json, shard_of, trace, Frame, World};
use crate::config::Durability;
use crate::engine::owner::Effect;
use crate::engine::subscriber::{Fate, SubEffect, JOIN_CANCELLED};
use crate::engine::Failure;

impl World {
    /// An owner's effect reaches member shard `to`.
    pub(super) fn on_effect(&mut self, to: usize, e: Effect) {
        trace(|| format!("shard {to} <- {e:?}"));
        match e {
            Effect::Reply { conn, payload } => self.deliver_to_client(conn, &payload),
            Effect::Subscribed { token, result, .. } => {
                self.subscribers[to].subscribed(token, result.map(Some).map_err(Failure::Owner));
            }
            Effect::Fetched { token, result, .. } => {
                self.subscribers[to].fetched(token, result.map_err(Failure::Owner));
            }
            Effect::Deliver { room, seq, payload, .. } => {
                let v = json(&payload);
                if v["type"] == "gap" {
                    let (from, to) = (v["from"].as_u64().expect("from"), v["to"].as_u64().expect("to"));
                    for seq in from..=to {
                        assert!(
                            !self.names.contains_key(&(room.to_string(), seq)),
                            "{room}/{seq} given up after it was seen"
                        );
                        self.given_up.insert((room.to_string(), seq));
                    }
                }
                if self.subscribers[to].deliver(&room, seq, &payload) == Fate::Members {
                    self.deliver_to_members(to, &room, &payload);
                }
            }
            Effect::Event { room, from, payload, .. } => {
                // Presence (the harness makes no typing): for every member of the room there.
                assert!(from.is_empty(), "an event about {from} in the harness: {payload:?}");
                self.deliver_to_members(to, &room, &payload);
            }
            Effect::ToUsers { .. } => unreachable!("the harness has no DM rooms"),
            Effect::Changed {
                room, seq, message, event, ..
            } => {
                // As `shard/changes.rs` does: false, a hole before it is being read, and the
                // event waits its turn (a `SubEffect::Event`).
                if self.subscribers[to].changed(&room, seq, message.as_ref(), &event) {
                    self.deliver_to_members(to, &room, &event);
                }
            }
            Effect::EventTo { .. } => unreachable!("the harness's shards report no delivered marks"),
        }
        self.drain_member(to);
    }

    /// A `joined` counts the member itself and every member whose `joined` had arrived
    /// before its join was asked for and who is still a member.
    fn check_member_count(&mut self, conn: u64, room: &str, req: &str, joined: &Value) {
        let before = self
            .clients
            .get_mut(&conn)
            .and_then(|c| c.members_before.remove(req))
            .unwrap_or_default();
        let still = before
            .iter()
            .filter(|(d, n)| {
                let other = &self.clients[d];
                other.member.contains_key(room) && other.membership.get(room) == Some(n)
            })
            .count() as u64;
        let members = joined["members"].as_u64().expect("joined.members");
        assert!(
            members > still,
            "{room}: joined says {members} members, but {still} others (of {before:?}) were members before the join"
        );
    }

    /// Carries out what member shard `shard`'s subscriber decided.
    pub(super) fn drain_member(&mut self, shard: usize) {
        while let Some(e) = self.subscribers[shard].poll() {
            trace(|| format!("shard {shard} member side -> {e:?}"));
            self.member_effect(shard, e);
        }
    }

    fn member_effect(&mut self, shard: usize, e: SubEffect) {
        match e {
            SubEffect::Subscribe { token, room, user } => {
                let frame = Frame::Subscribe {
                    room: room.clone(),
                    shard,
                    token,
                    user: Some(user),
                };
                self.send_to_owner(shard, &room, frame);
            }
            SubEffect::RoomSeq { token, room } => {
                let frame = Frame::Subscribe {
                    room: room.clone(),
                    shard,
                    token,
                    user: None,
                };
                self.send_to_owner(shard, &room, frame);
            }
            SubEffect::Fetch { token, room, after, count } => {
                let frame = Frame::Fetch {
                    room: room.clone(),
                    shard,
                    token,
                    after,
                    count,
                };
                self.send_to_owner(shard, &room, frame);
            }
            SubEffect::Unsubscribe { room } => {
                let frame = Frame::Unsubscribe { room: room.clone(), shard };
                self.send_to_owner(shard, &room, frame);
            }
            SubEffect::Presence { room, user, online } => {
                let frame = Frame::Presence {
                    room: room.clone(),
                    shard,
                    user,
                    online,
                };
                self.send_to_owner(shard, &room, frame);
            }
            SubEffect::Joined {
                conn,
                room,
                payload,
                catch_up,
            } => {
                let v = json(&payload);
                assert_eq!(v["type"], "joined", "{v}");
                self.count(&v);
                let req = format!("\"{}\"", v["id"].as_str().expect("joined id"));
                self.answered(&req);
                self.check_member_count(conn, &room, &req, &v);
                let c = self.clients.get_mut(&conn).expect("client");
                assert!(c.session.rooms().contains(&room), "joined {room} after leaving it");
                let since = c.since.remove(&req).flatten();
                let seq = v["seq"].as_u64().expect("joined.seq");
                c.member.insert(room.clone(), since.unwrap_or(seq).min(seq));
                c.membership.insert(room.clone(), self.next_req);
                c.presence.retain(|(r, _), _| *r != room);
                for frame in &catch_up {
                    self.check_catch_up_gap(&room, seq, frame);
                }
                for frame in catch_up {
                    self.deliver_to_client(conn, &frame);
                }
            }
            SubEffect::Refused { conn, room, payload } => {
                let v = json(&payload);
                assert_eq!(v["type"], "error", "{v}");
                self.count(&v);
                self.answered(&format!("\"{}\"", v["id"].as_str().expect("refusal id")));
                // As the shell does: the session forgets the refused room (a later join of it
                // would otherwise be refused "already joined", failing the seed).
                let c = self.clients.get_mut(&conn).expect("client");
                c.session.forget_room(&room);
            }
            SubEffect::Cancelled { req, .. } => {
                // Counted as the join's one answer (`settle` checks there is exactly one).
                self.answered(&req.expect("the harness gives every join an id"));
                *self.tally.entry("join cancelled".to_owned()).or_default() += 1;
            }
            SubEffect::Deliver { room, payload, .. } | SubEffect::Event { room, payload } => {
                self.deliver_to_members(shard, &room, &payload);
            }
        }
    }

    /// `payload` to every member of `room` on `shard` (its fan-out list).
    fn deliver_to_members(&mut self, shard: usize, room: &str, payload: &Bytes) {
        let members: Vec<u64> = self
            .clients
            .iter()
            .filter(|(id, c)| shard_of(**id) == shard && c.member.contains_key(room))
            .map(|(id, _)| *id)
            .collect();
        for conn in members {
            self.deliver_to_client(conn, payload);
        }
    }

    /// A frame reaches a client: replies are counted, room traffic is checked for order.
    pub(super) fn deliver_to_client(&mut self, conn: u64, payload: &Bytes) {
        let v = json(payload);
        self.count(&v);
        if let Some(id) = v["id"].as_str() {
            self.answered(&format!("\"{id}\""));
        }
        let room = v["room"].as_str().unwrap_or_default().to_owned();
        match v["type"].as_str() {
            Some("message") => {
                let seq = v["seq"].as_u64().expect("seq");
                self.name(&room, seq, v["msg_id"].as_str().expect("msg_id"));
                self.check_stored(&room, seq, "delivered");
                let Some(last) = self.clients.get_mut(&conn).and_then(|c| c.member.get_mut(&room)) else {
                    return; // a catch-up frame of a join that was cancelled
                };
                assert_eq!(seq, *last + 1, "conn {conn:x} in {room}: message {seq} after {last}");
                *last = seq;
                self.clients.get_mut(&conn).expect("client").seen.insert(room, seq);
            }
            Some("gap") => {
                let (from, to) = (v["from"].as_u64().expect("from"), v["to"].as_u64().expect("to"));
                let Some(last) = self.clients.get_mut(&conn).and_then(|c| c.member.get_mut(&room)) else {
                    return;
                };
                assert_eq!(from, *last + 1, "conn {conn:x} in {room}: gap {from}..={to} after {last}");
                assert!(to >= from);
                *last = to;
            }
            Some("ack") => {
                let seq = v["seq"].as_u64().expect("seq");
                self.name(&room, seq, v["msg_id"].as_str().expect("msg_id"));
                self.check_stored(&room, seq, "acked");
                let id = format!("\"{}\"", v["id"].as_str().expect("ack id"));
                if let Some((user, Some(cid))) = self.sends.get(&id).cloned() {
                    self.check_client_ids(&v, &user, &cid);
                }
            }
            Some("presence") if v["id"].is_string() => {
                let listed = v["online"].as_array().expect("online").len() as u64;
                assert!(listed <= v["count"].as_u64().expect("count"), "{v}");
            }
            Some("presence") if v.get("user").is_none() => {
                // A coalesced count (above presence_roster_max): what each user did since the
                // last event is in it, so the alternation starts afresh.
                assert!(v["count"].as_u64().is_some(), "{v}");
                if let Some(c) = self.clients.get_mut(&conn) {
                    c.presence.retain(|(r, _), _| *r != room);
                }
            }
            Some("presence") => {
                // Events reach a member in the owner's order: each user's alternate.
                let Some(c) = self.clients.get_mut(&conn) else { return };
                if !c.member.contains_key(&room) {
                    return;
                }
                let user = v["user"].as_str().expect("user").to_owned();
                let online = v["status"] == "online";
                let before = c.presence.insert((room.clone(), user.clone()), online);
                assert_ne!(
                    before,
                    Some(online),
                    "conn {conn:x} in {room}: {user} {} twice in a row",
                    v["status"]
                );
            }
            Some("update") => {
                let seq = v["seq"].as_u64().expect("seq");
                if let Some(last) = self.clients.get(&conn).and_then(|c| c.member.get(&room)) {
                    assert!(
                        seq <= *last,
                        "conn {conn:x} in {room}: update of {seq} before the message (last {last})"
                    );
                }
            }
            // Answers to a leave and to a token's refresh: counted above.
            Some("left" | "refreshed") => {}
            Some("history") => {
                for m in v["messages"].as_array().expect("messages") {
                    self.name(&room, m["seq"].as_u64().expect("seq"), m["msg_id"].as_str().expect("msg_id"));
                }
            }
            Some("error") => {
                assert!(v["id"].is_string(), "an error without a request id: {v}");
                assert_ne!(v["message"], JOIN_CANCELLED, "only the member side cancels a join: {v}");
            }
            other => panic!("unexpected frame {other:?}: {v}"),
        }
    }

    /// Counts a frame a client got in the tally: its type, an error's code too.
    fn count(&mut self, v: &Value) {
        let kind = match v["type"].as_str() {
            Some("error") => format!("error {}", v["code"].as_str().unwrap_or_default()),
            kind => kind.unwrap_or_default().to_owned(),
        };
        *self.tally.entry(kind).or_default() += 1;
    }

    /// Durable mode: a catch-up's `gap` names only seqs the store does not hold (given up:
    /// a durable message is published only once stored, so any read after it has it), or
    /// older than the catch-up bound below the member's `joined` seq. (Fast mode may also
    /// miss messages still being written, which the harness cannot time exactly.)
    fn check_catch_up_gap(&self, room: &str, joined: u64, frame: &Bytes) {
        let v = json(frame);
        if self.durability != Durability::Durable || v["type"] != "gap" {
            return;
        }
        let (from, to) = (v["from"].as_u64().expect("from"), v["to"].as_u64().expect("to"));
        let store = self.store.borrow();
        let held = store.messages.get(room);
        for seq in from..=to {
            let old = seq + self.max_catch_up <= joined;
            assert!(
                old || !held.is_some_and(|m| m.contains_key(&seq)),
                "{room}: catch-up gap {from}..={to} names {seq}, which the store holds (joined at {joined})"
            );
        }
    }

    /// Records that `(room, seq)` names `msg_id`; a second name is a reused seq.
    fn name(&mut self, room: &str, seq: u64, msg_id: &str) {
        assert!(
            !self.given_up.contains(&(room.to_owned(), seq)),
            "{room}/{seq} was given up (gap), then reused"
        );
        let prev = self.names.entry((room.to_owned(), seq)).or_insert_with(|| msg_id.to_owned());
        assert_eq!(prev, msg_id, "seq {seq} of {room} was reused");
    }

    /// Durable mode: a message is seen only once the store committed it.
    fn check_stored(&self, room: &str, seq: u64, what: &str) {
        if self.durability == Durability::Durable {
            let held = self.store.borrow().messages.get(room).is_some_and(|m| m.contains_key(&seq));
            assert!(held, "durable: {room}/{seq} {what} before the store committed it");
        }
    }

    /// Every ack of one `(user, room, client_id)` carries the same seq.
    pub(super) fn check_client_ids(&mut self, payload: &Value, user: &str, client_id: &str) {
        let seq = payload["seq"].as_u64().expect("seq");
        let key = (
            user.to_owned(),
            payload["room"].as_str().unwrap_or_default().to_owned(),
            client_id.to_owned(),
        );
        if self.durability == Durability::Fast && self.unstored_ids.contains(&key) {
            return;
        }
        let first = *self.client_ids.entry(key).or_insert(seq);
        assert_eq!(first, seq, "a retried client_id {client_id} got another seq");
    }
}
