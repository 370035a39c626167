//! Coalesced presence counts for a cluster's rooms, sans-IO (the pump's
//! half; a single node's owner does the same from its roster). Above
//! `presence_roster_max` users online, a room's members get the online count
//! about once a second instead of every user's online/offline event.
//!
//! The pump tells [`PresenceCounts::changed`] of each presence change it
//! receives; the answer says to forward the user's event, to hold it (a count
//! goes out at the next tick instead), or that the room's count must be read
//! first ([`PresenceCounts::counted`], then ask again). [`PresenceCounts::due`]
//! at each tick names the rooms whose count must be read and sent.
//!
//! What must stay true: a room at or below the bound, before and after a
//! change, forwards every event; a change that crosses or stays above it is
//! part of a count sent at the next tick; the table is bounded (a room not
//! heard of for a while is forgotten, and its count read again when needed).

use std::collections::HashMap;

/// Rooms whose count is remembered; past it the table is cleared (counts are read again).
const MAX_ROOMS: usize = 100_000;

/// What to do with one presence change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Forward the user's event to the room's members.
    Forward,
    /// Hold it: a count goes out at the next tick.
    Coalesce,
    /// Read the room's online count, give it to [`PresenceCounts::counted`], then ask again.
    NeedCount,
}

#[derive(Debug, Default)]
struct Room {
    /// Users online, as last read and moved by the changes since.
    count: usize,
    /// A count is due at the next tick.
    due: bool,
}

/// The online counts of the rooms a pump has heard of.
#[derive(Debug)]
pub struct PresenceCounts {
    max: usize,
    rooms: HashMap<String, Room>,
}

impl PresenceCounts {
    /// Counts coalesce above `max` users online.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            rooms: HashMap::new(),
        }
    }

    /// A user of `room` came online (`online`) or went offline.
    pub fn changed(&mut self, room: &str, online: bool) -> Decision {
        let Some(r) = self.rooms.get_mut(room) else {
            return Decision::NeedCount;
        };
        let before = r.count;
        r.count = if online { before + 1 } else { before.saturating_sub(1) };
        if before.max(r.count) <= self.max && !r.due {
            return Decision::Forward;
        }
        r.due = true;
        Decision::Coalesce
    }

    /// `room` has `count` users online (read after the change that asked for it: the change
    /// is in it). Answers what to do with that change.
    pub fn counted(&mut self, room: &str, count: usize) -> Decision {
        if self.rooms.len() >= MAX_ROOMS && !self.rooms.contains_key(room) {
            self.rooms.clear();
        }
        let r = self.rooms.entry(room.to_owned()).or_default();
        r.count = count;
        // The change may have crossed the bound either way: at the bound or above, a count.
        if count < self.max && !r.due {
            return Decision::Forward;
        }
        r.due = true;
        Decision::Coalesce
    }

    /// The rooms whose count is due (cleared: their counts are read and sent now).
    pub fn due(&mut self) -> Vec<String> {
        self.rooms
            .iter_mut()
            .filter(|(_, r)| r.due)
            .map(|(name, r)| {
                r.due = false;
                name.clone()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_rooms_forward_and_large_ones_coalesce_until_the_next_tick() {
        let mut p = PresenceCounts::new(2);
        assert_eq!(p.changed("r", true), Decision::NeedCount);
        assert_eq!(p.counted("r", 1), Decision::Forward);
        assert_eq!(p.changed("r", true), Decision::Forward, "2 online: at the bound");
        assert_eq!(p.changed("r", true), Decision::Coalesce, "3 online: above it");
        assert_eq!(p.changed("r", false), Decision::Coalesce, "a count is due already");
        assert_eq!(p.due(), ["r"]);
        assert!(p.due().is_empty(), "sent once");
        // Back at 2 after the count: per-user events again.
        assert_eq!(p.changed("r", false), Decision::Forward);
        assert_eq!(p.changed("r", true), Decision::Forward);
        // Down from above the bound: still a count.
        assert_eq!(p.changed("r", true), Decision::Coalesce);
        p.due();
        assert_eq!(p.changed("r", false), Decision::Coalesce, "3 -> 2 crosses the bound");
    }

    #[test]
    fn a_count_read_at_the_bound_or_above_coalesces() {
        let mut p = PresenceCounts::new(2);
        assert_eq!(p.changed("big", false), Decision::NeedCount);
        assert_eq!(p.counted("big", 2), Decision::Coalesce, "it may have just come down from 3");
        assert_eq!(p.due(), ["big"]);
        assert_eq!(p.changed("other", true), Decision::NeedCount);
        assert_eq!(p.counted("other", 5), Decision::Coalesce);
    }
}
