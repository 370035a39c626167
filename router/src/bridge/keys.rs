//! Redis key and channel names for one room.
//!
//! Every name of a room carries the room in a hash tag (`{room}`), so all
//! of a room's keys and its shard channel hash to one slot: the sequencing
//! script touches several of them in one call, which Redis Cluster allows
//! only within one slot.
//!
//! What must stay true:
//! - Every key of a room is `chat:{<room>}:<suffix>`. Redis takes the hash
//!   tag up to the first `}`; whatever the room contains, that prefix is the
//!   same for all of the room's names, so they still share a slot.
//! - [`room_of_channel`] is the exact inverse of [`channel`].

/// The prefix of every name.
const PREFIX: &str = "chat:{";
/// The suffix of a room's pub/sub channel.
const CHANNEL_SUFFIX: &str = "}:ch";

fn key(room: &str, suffix: &str) -> String {
    let mut k = String::with_capacity(PREFIX.len() + room.len() + suffix.len() + 2);
    k.push_str(PREFIX);
    k.push_str(room);
    k.push_str("}:");
    k.push_str(suffix);
    k
}

/// The room's sequence counter (a string holding the last assigned seq).
pub fn seq(room: &str) -> String {
    key(room, "seq")
}

/// The room's lock for changes of sent messages (a string holding its holder's token).
pub fn lock(room: &str) -> String {
    key(room, "lock")
}

/// The room's bounded recent-history stream; entry ids are `<seq>-0`.
pub fn recent(room: &str) -> String {
    key(room, "recent")
}

/// The room's pub/sub channel (a shard channel in sharded mode).
pub fn channel(room: &str) -> String {
    key(room, "ch")
}

/// The room's presence leases: a sorted set of `user|node`, scored by the
/// lease's expiry in ms (Redis server time).
pub fn presence(room: &str) -> String {
    key(room, "presence")
}

/// The room's online users: a hash `user -> "<entries>:<since_ms>"`, kept
/// by the presence script in step with [`presence`].
pub fn presence_users(room: &str) -> String {
    key(room, "presence_users")
}

/// A key each node sets for itself and never deletes: missing after the node's reconnect, it
/// says Redis lost its data (a restart without persistence, a flush), so every room's
/// sequence may have gone. One per node, so a node that reconnected first and set its own
/// cannot hide the loss from the others.
pub fn sentinel(node_id: &str) -> String {
    format!("chat:sentinel:{node_id}")
}

/// The key that remembers, for the dedupe time to live, that `user` sent `client_id` in the
/// room: its value is `"<seq> <receipt>"`. The user's length goes first, so no two
/// (user, client_id) pairs share a key.
pub fn dedupe(room: &str, user: &str, client_id: &str) -> String {
    key(room, &format!("cid:{}:{user}{client_id}", user.len()))
}

/// What a user's name starts with where a room's would be (`user/<id>`): no room id
/// holds a `/`, so no client can join a user's channel as a room.
pub const USER_PREFIX: &str = "user/";

/// The name whose channel carries what is published for `user` (the messages of the
/// user's DM rooms): subscribe to it like a room.
pub fn user(user: &str) -> String {
    let mut n = String::with_capacity(USER_PREFIX.len() + user.len());
    n.push_str(USER_PREFIX);
    n.push_str(user);
    n
}

/// The user a name belongs to, if it is a user's (see [`user`]).
pub fn user_of(name: &str) -> Option<&str> {
    name.strip_prefix(USER_PREFIX).filter(|u| !u.is_empty())
}

/// The room a channel name belongs to, if it is a room channel.
pub fn room_of_channel(channel: &str) -> Option<&str> {
    let room = channel.strip_prefix(PREFIX)?.strip_suffix(CHANNEL_SUFFIX)?;
    (!room.is_empty()).then_some(room)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_share_the_hash_tag() {
        assert_eq!(seq("lobby"), "chat:{lobby}:seq");
        assert_eq!(recent("lobby"), "chat:{lobby}:recent");
        assert_eq!(channel("lobby"), "chat:{lobby}:ch");
        assert_eq!(presence("lobby"), "chat:{lobby}:presence");
        assert_eq!(presence_users("lobby"), "chat:{lobby}:presence_users");
        assert_eq!(dedupe("lobby", "ann", "c1"), "chat:{lobby}:cid:3:annc1");
        assert_ne!(dedupe("r", "ab", "c"), dedupe("r", "a", "bc"));
    }

    #[test]
    fn user_names_round_trip_and_are_no_room_ids() {
        assert_eq!(user("ann"), "user/ann");
        assert_eq!(user_of(&user("ann")), Some("ann"));
        assert_eq!(user_of("user/"), None);
        assert_eq!(user_of("lobby"), None);
        assert_eq!(room_of_channel(&channel(&user("ann"))), Some("user/ann"));
    }

    #[test]
    fn channel_round_trips() {
        for room in ["lobby", "dm:a:b", "a}b", "{x}", "ü"] {
            assert_eq!(room_of_channel(&channel(room)), Some(room));
        }
        assert_eq!(room_of_channel("chat:{}:ch"), None);
        assert_eq!(room_of_channel("chat:{lobby}:seq"), None);
        assert_eq!(room_of_channel("other"), None);
    }
}
