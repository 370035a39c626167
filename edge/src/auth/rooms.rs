//! Room and user ids, direct-message rooms, and who may join which room.
//!
//! What must stay true: user ids never contain `:`, so `dm:<a>:<b>` splits
//! one way only; a DM room is joinable by its two participants and nobody
//! else, and only in the canonical (sorted) spelling, so one pair of users
//! has exactly one DM room; the `rooms` claim governs public rooms only.

use super::jwt::Claims;

/// Longest room id in bytes (except DM rooms, see [`is_valid_room_id`]).
const MAX_ROOM_BYTES: usize = 128;
/// Longest user id in bytes.
const MAX_USER_BYTES: usize = 64;
/// Prefix of direct-message rooms.
const DM_PREFIX: &str = "dm:";

fn is_user_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'-')
}

/// User ids: 1..=64 bytes of `[A-Za-z0-9_.@-]` (no `:`).
pub fn is_valid_user_id(user: &str) -> bool {
    (1..=MAX_USER_BYTES).contains(&user.len()) && user.bytes().all(is_user_byte)
}

/// Room ids: 1..=128 bytes of `[A-Za-z0-9_.:@-]`; no leading/trailing `:`.
///
/// A DM room `dm:<a>:<b>` of two valid user ids is also valid when longer
/// than 128 bytes (up to 132), so that every pair of users has a DM room.
pub fn is_valid_room_id(room: &str) -> bool {
    if room.len() > MAX_ROOM_BYTES {
        return dm_participants(room).is_some();
    }
    !room.is_empty() && !room.starts_with(':') && !room.ends_with(':') && room.bytes().all(|b| is_user_byte(b) || b == b':')
}

/// The direct-message room of two users: `"dm:<a>:<b>"` with the ids sorted (byte order).
pub fn dm_room(a: &str, b: &str) -> String {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    format!("{DM_PREFIX}{lo}:{hi}")
}

/// The two user ids of `dm:<a>:<b>` if both are valid (in either order).
pub fn dm_participants(room: &str) -> Option<(&str, &str)> {
    let (a, b) = room.strip_prefix(DM_PREFIX)?.split_once(':')?;
    (is_valid_user_id(a) && is_valid_user_id(b)).then_some((a, b))
}

/// Why a join is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// Not a valid room id, or a `dm:` room not in canonical form (`bad_request`).
    #[error("invalid room id {0:?}")]
    InvalidRoom(String),
    /// A public room not matched by the token's `rooms` claim (`forbidden`).
    #[error("room {0:?} is not allowed by this token")]
    NotAllowed(String),
    /// A DM room of other users (`forbidden`).
    #[error("not a participant of {0:?}")]
    NotParticipant(String),
}

impl Denied {
    /// "bad_request" or "forbidden" — the protocol error code to answer with.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRoom(_) => "bad_request",
            Self::NotAllowed(_) | Self::NotParticipant(_) => "forbidden",
        }
    }
}

/// The room id as quoted in a refusal: at most [`MAX_ROOM_BYTES`] + a few
/// bytes of it, so an oversized id is not echoed back whole.
fn quoted(room: &str) -> String {
    const LIMIT: usize = MAX_ROOM_BYTES + 8;
    if room.len() <= LIMIT {
        return room.to_owned();
    }
    let mut end = LIMIT;
    while !room.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &room[..end])
}

/// May the holder of `claims` join (and therefore read/send in) `room`?
///
/// - `dm:<a>:<b>` rooms: only a and b, and only the canonical sorted form
///   with two valid user ids; the `rooms` claim does not apply to dm rooms.
/// - Public rooms: the `rooms` claim (list of patterns; a trailing `*` is a
///   prefix wildcard, otherwise exact; a lone "*" matches all) must match when
///   present; absent = all public rooms.
pub fn may_join(claims: &Claims, room: &str) -> Result<(), Denied> {
    if !is_valid_room_id(room) {
        return Err(Denied::InvalidRoom(quoted(room)));
    }
    if room.starts_with(DM_PREFIX) {
        return match dm_participants(room) {
            Some((a, b)) if a <= b => {
                if claims.sub == a || claims.sub == b {
                    Ok(())
                } else {
                    Err(Denied::NotParticipant(room.to_owned()))
                }
            }
            _ => Err(Denied::InvalidRoom(room.to_owned())),
        };
    }
    match &claims.rooms {
        None => Ok(()),
        Some(patterns) if patterns.iter().any(|p| pattern_matches(p, room)) => Ok(()),
        Some(_) => Err(Denied::NotAllowed(room.to_owned())),
    }
}

/// May the holder of `claims` edit and delete other users' messages in `room`? Only where a
/// `moderator` claim pattern matches it, and never in a DM room.
pub fn may_moderate(claims: &Claims, room: &str) -> bool {
    !room.starts_with(DM_PREFIX)
        && claims
            .moderator
            .as_ref()
            .is_some_and(|p| p.iter().any(|p| pattern_matches(p, room)))
}

/// One `rooms` claim pattern: `*` matches everything, `prefix*` any room
/// starting with `prefix`, anything else exactly itself.
fn pattern_matches(pattern: &str, room: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => room.starts_with(prefix),
        None => pattern == room,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(sub: &str, rooms: Option<&[&str]>) -> Claims {
        Claims {
            sub: sub.to_owned(),
            exp: 0,
            nbf: None,
            rooms: rooms.map(|r| r.iter().map(|s| (*s).to_owned()).collect()),
            name: None,
            moderator: None,
        }
    }

    #[test]
    fn moderators_moderate_the_rooms_their_claim_names_and_no_dm() {
        let mut c = claims("mod", None);
        assert!(!may_moderate(&c, "lobby"), "no claim, no moderation");
        c.moderator = Some(["team:*".into(), "lobby".into()].into());
        assert!(may_moderate(&c, "lobby") && may_moderate(&c, "team:eng"));
        assert!(!may_moderate(&c, "lobby2") && !may_moderate(&c, "other"));
        c.moderator = Some(["*".into()].into());
        assert!(may_moderate(&c, "anything"));
        assert!(!may_moderate(&c, "dm:a:mod"), "a DM room has no moderator");
    }

    #[test]
    fn user_ids() {
        for ok in ["a", "alice", "Bob_1.x@example.com", "x-y", &"u".repeat(64)] {
            assert!(is_valid_user_id(ok), "{ok:?}");
        }
        for bad in ["", "a:b", "a b", "ä", "a/b", "a\0", &"u".repeat(65), "*"] {
            assert!(!is_valid_user_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn room_ids() {
        for ok in ["lobby", "team:eng", "a.b-c_d@e", "x", "dm:a:b", "a::b", &"r".repeat(128)] {
            assert!(is_valid_room_id(ok), "{ok:?}");
        }
        for bad in ["", ":lobby", "lobby:", ":", "a b", "room/1", "ro\u{e9}m", "a*", &"r".repeat(129)] {
            assert!(!is_valid_room_id(bad), "{bad:?}");
        }
        // The DM room of two longest user ids is 132 bytes and still valid.
        let long = dm_room(&"a".repeat(64), &"b".repeat(64));
        assert_eq!(long.len(), 132);
        assert!(is_valid_room_id(&long));
        assert!(!is_valid_room_id(&format!("dm:{}:{}", "a".repeat(65), "b".repeat(64))));
    }

    #[test]
    fn dm_room_sorts() {
        assert_eq!(dm_room("bob", "alice"), "dm:alice:bob");
        assert_eq!(dm_room("alice", "bob"), "dm:alice:bob");
        assert_eq!(dm_room("Zed", "adam"), "dm:Zed:adam"); // byte order: 'Z' < 'a'
        assert_eq!(dm_room("me", "me"), "dm:me:me");
    }

    #[test]
    fn public_rooms_without_rooms_claim() {
        let c = claims("alice", None);
        assert_eq!(may_join(&c, "lobby"), Ok(()));
        assert_eq!(may_join(&c, "team:eng"), Ok(()));
    }

    #[test]
    fn rooms_claim_patterns() {
        let c = claims("alice", Some(&["lobby", "team:*"]));
        assert_eq!(may_join(&c, "lobby"), Ok(()));
        assert_eq!(may_join(&c, "team:eng"), Ok(()));
        assert_eq!(may_join(&c, "team:"), Err(Denied::InvalidRoom("team:".into())));
        assert_eq!(may_join(&c, "lobby2"), Err(Denied::NotAllowed("lobby2".into())));
        assert_eq!(may_join(&c, "team"), Err(Denied::NotAllowed("team".into())));
        assert_eq!(may_join(&c, "other").map_err(|d| d.code()), Err("forbidden"));

        let all = claims("alice", Some(&["*"]));
        assert_eq!(may_join(&all, "anything.at-all"), Ok(()));

        let none = claims("alice", Some(&[]));
        assert_eq!(may_join(&none, "lobby"), Err(Denied::NotAllowed("lobby".into())));
    }

    #[test]
    fn dm_participants_only() {
        let alice = claims("alice", None);
        let carol = claims("carol", Some(&["*"]));
        let room = dm_room("alice", "bob");
        assert_eq!(may_join(&alice, &room), Ok(()));
        assert_eq!(
            may_join(&claims("bob", Some(&[])), &room),
            Ok(()),
            "rooms claim does not apply to dm rooms"
        );
        let denied = may_join(&carol, &room);
        assert_eq!(denied, Err(Denied::NotParticipant(room.clone())), "a lone * does not open dm rooms");
        assert_eq!(denied.map_err(|d| d.code()), Err("forbidden"));
        let dm_pattern = claims("carol", Some(&["dm:*"]));
        assert!(matches!(may_join(&dm_pattern, &room), Err(Denied::NotParticipant(_))));
        assert_eq!(may_join(&claims("me", None), "dm:me:me"), Ok(()));
    }

    #[test]
    fn dm_rooms_must_be_canonical() {
        let alice = claims("alice", None);
        for bad in ["dm:bob:alice", "dm:alice", "dm:alice:bob:carol", "dm:alice:", "dm::alice", "dm:"] {
            let got = may_join(&alice, bad);
            assert!(matches!(got, Err(Denied::InvalidRoom(_))), "{bad:?}: {got:?}");
            assert_eq!(got.map_err(|d| d.code()), Err("bad_request"));
        }
    }

    #[test]
    fn invalid_room_ids_refused() {
        let c = claims("alice", None);
        for bad in ["", "a b", ":x", "x:", "<script>"] {
            let got = may_join(&c, bad);
            assert!(matches!(got, Err(Denied::InvalidRoom(_))), "{bad:?}: {got:?}");
        }
        let huge = "é".repeat(1000);
        match may_join(&c, &huge) {
            Err(Denied::InvalidRoom(quoted)) => assert!(quoted.len() <= MAX_ROOM_BYTES + 8 + '…'.len_utf8()),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn denied_display() {
        assert_eq!(
            Denied::NotAllowed("x".into()).to_string(),
            "room \"x\" is not allowed by this token"
        );
        assert_eq!(Denied::InvalidRoom("x y".into()).code(), "bad_request");
    }
}
