//! The member side of the harness: what a member shard does with an owner's
//! effects (as `shard/members.rs` does: a join answer matched by its token,
//! deliveries to the fan-out list), and the checks on what clients receive.

use bytes::Bytes;
use serde_json::Value;

use super::{json, shard_of, trace, World};
use crate::config::Durability;
use crate::engine::owner::{Effect, JOIN_CANCELLED};

impl World {
    /// The member shard's side of an owner's effect, with the checks.
    pub(super) fn on_effect(&mut self, e: Effect) {
        trace(|| format!("member side <- {e:?}"));
        match e {
            Effect::Reply { conn, payload } => self.deliver_to_client(conn, &payload),
            Effect::Joined {
                room,
                conn,
                req,
                token,
                payload,
                catch_up,
                ..
            } => {
                let req = req.expect("the harness gives every join an id");
                self.answered(&req);
                let c = self.clients.get_mut(&conn).expect("client");
                let since = c.since.remove(&req).flatten();
                if !take_join(&mut c.joins, &room, token) {
                    // A leave overtook it: the member side answers "join cancelled" and
                    // drops the catch-up (shard/members.rs).
                    return;
                }
                let v = json(&payload);
                assert_eq!(v["type"], "joined", "{v}");
                let seq = v["seq"].as_u64().expect("joined.seq");
                c.member.insert(room.to_string(), since.unwrap_or(seq).min(seq));
                for frame in catch_up {
                    self.deliver_to_client(conn, &frame);
                }
            }
            Effect::JoinRefused {
                room,
                conn,
                token,
                payload,
                ..
            } => {
                let v = json(&payload);
                assert_eq!(v["type"], "error", "{v}");
                self.answered(&format!("\"{}\"", v["id"].as_str().expect("refusal id")));
                let c = self.clients.get_mut(&conn).expect("client");
                if take_join(&mut c.joins, &room, token) {
                    c.rooms.retain(|r| **r != *room);
                }
            }
            Effect::Deliver { shard, room, payload, .. } => {
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
                let members: Vec<u64> = self
                    .clients
                    .iter()
                    .filter(|(id, c)| shard_of(**id) == shard && c.member.contains_key(&*room))
                    .map(|(id, _)| *id)
                    .collect();
                for conn in members {
                    self.deliver_to_client(conn, &payload);
                }
            }
        }
    }

    /// A frame reaches a client: replies are counted, room traffic is checked for order.
    pub(super) fn deliver_to_client(&mut self, conn: u64, payload: &Bytes) {
        let v = json(payload);
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
            Some("history") => {
                for m in v["messages"].as_array().expect("messages") {
                    self.name(&room, m["seq"].as_u64().expect("seq"), m["msg_id"].as_str().expect("msg_id"));
                }
            }
            Some("error") => {
                let msg = v["message"].as_str().unwrap_or_default();
                assert!(v["id"].is_string(), "an error without a request id: {v}");
                if msg == JOIN_CANCELLED {
                    let c = self.clients.get(&conn).expect("client");
                    assert!(!c.member.contains_key(&room));
                }
            }
            other => panic!("unexpected frame {other:?}: {v}"),
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

/// Removes the pending join `(room, token)`; false when it no longer stands.
pub(super) fn take_join(joins: &mut Vec<(String, u64)>, room: &str, token: u64) -> bool {
    let Some(pos) = joins.iter().position(|(r, t)| r == room && *t == token) else {
        return false;
    };
    joins.swap_remove(pos);
    true
}
