//! Edits and deletes in the harness: members change messages of rooms they
//! joined (their own or not, as a moderator or not), with `edit` and `delete`
//! frames through their sessions to the owner, while everything else
//! interleaves. Checked:
//! - every change gets one answer (counted with every request);
//! - a member gets a message's `update` only after the message itself;
//! - at rest, every ring (an owner's, and each member shard's feed) holds the
//!   version of each message the store holds: an edit never leaves an old
//!   version behind where a catch-up or a history page would read it.

use rand::Rng;
use serde_json::json;

use super::{World, SHARDS};

impl World {
    /// A member of `room` edits or deletes a message it has seen there, as a moderator or
    /// not (its token says which: a `refresh` changes it first when it says otherwise).
    pub(super) fn client_change(&mut self, conn: u64, room: String) {
        let Some(&last) = self.clients[&conn].seen.get(&room) else { return };
        if last == 0 {
            return;
        }
        let seq = self.rng.random_range(1..=last);
        let req = self.req();
        let op = if self.rng.random_bool(0.2) {
            json!({"type": "delete", "room": room, "seq": seq})
        } else {
            json!({"type": "edit", "room": room, "seq": seq, "body": format!("edited ({req})")})
        };
        let moderator = self.rng.random_bool(0.7);
        self.moderate(conn, moderator);
        self.request(conn, &super::clients::frame(op, &req));
    }

    /// At rest: every ring holds the store's version of each message it holds.
    pub(super) fn check_versions(&self) {
        let store = self.store.borrow();
        let stored = |room: &str, seq: u64| store.messages.get(room).and_then(|m| m.get(&seq)).map(|m| m.frame.clone());
        for owner in &self.owners {
            for (room, r) in &owner.rooms {
                for (seq, frame) in r.ring().after(0) {
                    if let Some(s) = stored(room, seq) {
                        assert_eq!(frame, &s, "owner ring {room}/{seq} holds another version than the store");
                    }
                }
            }
        }
        for (shard, sub) in self.subscribers.iter().enumerate().take(SHARDS) {
            for (room, seq, frame) in sub.ring_entries() {
                if let Some(s) = stored(&room, seq) {
                    assert_eq!(frame, s, "shard {shard}'s ring {room}/{seq} holds another version than the store");
                }
            }
        }
    }
}
