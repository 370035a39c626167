//! Delivered marks, the member side's half: a room message handed to one of
//! this shard's live connections (queued to its socket writer) moves that
//! user's delivered mark. On the hot path a delivery only raises the room's
//! entry in `delivered` (one map update per delivery, never per member);
//! once a second the shard turns each room's entry into the users it
//! reached here (its members of the room, and a DM room's two users'
//! connections) and hands them to the room's sequencer: on one node the
//! room's owner stores the marks and pushes `receipt`s; a cluster on a
//! shared store stores them from this shard (`cluster_state.rs`).
//!
//! What must stay true: a mark is never ahead of what reached one of the
//! user's connections (a member that joins later caught up to the room's
//! cursor first, so it holds every seq up to it); marks are coalesced to one
//! per user and room per second.

use std::collections::BTreeSet;

use super::Shard;

impl Shard {
    /// Message `seq` of `room` reached this shard's connections (hot path).
    pub(super) fn note_delivered(&self, room: &str, seq: u64) {
        if !self.cfg.delivered_marks {
            return;
        }
        let mut d = self.delivered.borrow_mut();
        match d.get_mut(room) {
            Some(s) => *s = (*s).max(seq),
            None => {
                d.insert(room.to_owned(), seq);
            }
        }
    }

    /// Once a second: each room delivered since, with the users it reached here, to its sequencer.
    pub(super) fn delivered_tick(&self) {
        let rooms = std::mem::take(&mut *self.delivered.borrow_mut());
        for (room, seq) in rooms {
            let users = self.users_reached(&room);
            if !users.is_empty() {
                self.seq_delivered(room, seq, users);
            }
        }
    }

    /// The users with a connection here that gets `room`'s messages: its members, and for a
    /// DM room the two users' connections (they get its messages without joining).
    fn users_reached(&self, room: &str) -> Vec<String> {
        let conns = self.conns.borrow();
        let mut users: BTreeSet<String> = self
            .members
            .borrow()
            .get(room)
            .iter()
            .filter_map(|id| conns.get(id).and_then(|c| c.user()).map(|u| u.sub.clone()))
            .collect();
        if let Some((a, b)) = crate::auth::dm_participants(room) {
            let here = self.users.borrow();
            users.extend([a, b].into_iter().filter(|u| !here.get(u).is_empty()).map(str::to_owned));
        }
        users.into_iter().collect()
    }

    /// The delivered marks of a room this shard owns.
    pub(super) fn owner_delivered(&self, room: &str, seq: u64, users: Vec<String>) {
        self.with_owner(|o, _| o.delivered(room, seq, users));
    }
}
