//! Who is online in a room on a single node: each user's member connections
//! (on any shard) and since when. A user comes online with their first
//! connection in the room and goes offline with their last.
//!
//! Invariant: a user is listed exactly while their count of connections,
//! counted in once and out once each, is above zero.

use std::collections::HashMap;
use std::sync::Arc;

/// A room's online users.
#[derive(Debug, Default)]
pub struct Roster {
    /// User -> (connections in the room, online since ms). The name is shared: a member's
    /// send hands it to the store without copying it ([`Self::name`]).
    users: HashMap<Arc<str>, (u32, u64)>,
    /// The online count changed since members were last told (large rooms, coalesced).
    count_changed: bool,
}

impl Roster {
    /// A connection of `user` joined at `now_ms`; true when the user came online with it.
    pub fn joined(&mut self, user: &str, now_ms: u64) -> bool {
        if let Some((n, _)) = self.users.get_mut(user) {
            *n += 1;
            return false;
        }
        self.users.insert(Arc::from(user), (1, now_ms));
        true
    }

    /// The shared name of `user` when online here, else a new one.
    pub fn name(&self, user: &str) -> Arc<str> {
        self.users.get_key_value(user).map_or_else(|| Arc::from(user), |(u, _)| u.clone())
    }

    /// A connection of `user` left; true when it was the user's last (they went offline).
    pub fn left(&mut self, user: &str) -> bool {
        let Some((n, _)) = self.users.get_mut(user) else {
            return false;
        };
        *n -= 1;
        if *n > 0 {
            return false;
        }
        self.users.remove(user);
        true
    }

    /// Notes that the count changed; true when it had not since members were last told.
    pub fn mark_count_changed(&mut self) -> bool {
        !std::mem::replace(&mut self.count_changed, true)
    }

    /// Whether a coalesced count change waits to be told.
    pub fn count_pending(&self) -> bool {
        self.count_changed
    }

    /// Whether the count changed since members were last told; they are being told now.
    pub fn take_count_changed(&mut self) -> bool {
        std::mem::take(&mut self.count_changed)
    }

    /// How many users are online.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether nobody is online.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The first `limit` online users with the time they came online, earliest first.
    pub fn online(&self, limit: usize) -> Vec<(String, u64)> {
        let mut list: Vec<(&str, u64)> = self.users.iter().map(|(u, (_, since))| (&**u, *since)).collect();
        list.sort_by(|a, b| (a.1, a.0).cmp(&(b.1, b.0)));
        list.into_iter().take(limit).map(|(u, since)| (u.to_owned(), since)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_is_online_from_their_first_connection_to_their_last() {
        let mut r = Roster::default();
        assert!(r.joined("bob", 5));
        assert!(!r.joined("bob", 6), "a second connection: still online since 5");
        assert!(r.joined("ann", 7));
        assert_eq!(r.online(10), [("bob".to_owned(), 5), ("ann".to_owned(), 7)]);
        assert_eq!((r.online(1), r.len()), (vec![("bob".to_owned(), 5)], 2), "the earliest first");
        assert!(!r.left("bob"));
        assert!(r.left("bob"), "the last connection");
        assert!(!r.left("bob"), "a leave never counted changes nothing");
        assert!(!r.left("nobody"));
        assert_eq!(r.online(10), [("ann".to_owned(), 7)]);
    }
}
