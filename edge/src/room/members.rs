//! The rooms each local connection is in, as one shard sees them: the list a
//! fan-out walks. A room is present only while it has local members.
//!
//! Lists are plain vectors: iterating them is the hot path (every delivery),
//! removal is a linear scan (a leave), which is cheap at the room sizes one
//! core serves; see ARCHITECTURE.md. Up to two ids are held inline (a user's
//! one or two connections in the user index, a DM's two members), and keys
//! are boxed strings: an entry is 40 bytes and most allocate nothing but
//! their key (results/idle-breakdown-20261205.txt, part 9).

use std::collections::HashMap;

use smallvec::SmallVec;

/// room -> local connection ids.
#[derive(Debug, Default)]
pub struct MemberIndex {
    rooms: HashMap<Box<str>, SmallVec<[u64; 2]>>,
}

impl MemberIndex {
    /// Adds `conn` to `room`; returns false when it was already there.
    pub fn insert(&mut self, room: &str, conn: u64) -> bool {
        // Looked up first: the key is allocated only for a room new to the index.
        let Some(list) = self.rooms.get_mut(room) else {
            self.rooms.insert(room.into(), SmallVec::from_elem(conn, 1));
            return true;
        };
        if list.contains(&conn) {
            return false;
        }
        list.push(conn);
        true
    }

    /// Removes `conn` from `room`; returns true when it was there.
    pub fn remove(&mut self, room: &str, conn: u64) -> bool {
        let Some(list) = self.rooms.get_mut(room) else { return false };
        let Some(pos) = list.iter().position(|&c| c == conn) else {
            return false;
        };
        list.swap_remove(pos);
        if list.is_empty() {
            self.rooms.remove(room);
        }
        true
    }

    /// Local members of `room`.
    pub fn get(&self, room: &str) -> &[u64] {
        self.rooms.get(room).map_or(&[], |ids| ids.as_slice())
    }

    /// The keys with at least one local member (rooms, or users in the user index).
    pub fn keys(&self) -> Vec<String> {
        self.rooms.keys().map(|k| k.to_string()).collect()
    }

    /// Rooms with at least one local member.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_remove_and_cleanup() {
        let mut m = MemberIndex::default();
        assert!(m.insert("r", 1));
        assert!(!m.insert("r", 1));
        assert!(m.insert("r", 2));
        assert_eq!(m.get("r").len(), 2);
        assert!(m.remove("r", 1));
        assert!(!m.remove("r", 1));
        assert_eq!(m.get("r"), [2]);
        assert!(m.remove("r", 2));
        assert_eq!(m.room_count(), 0);
        assert!(m.get("r").is_empty());
    }
}
