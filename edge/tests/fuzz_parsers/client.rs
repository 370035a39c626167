//! Fuzzes client input: JSON frames, `edge::protocol::client::parse`, and the `?resume=`
//! list, `initial_joins`. Arbitrary text, arbitrary JSON objects over the protocol's field
//! names, and mutated valid frames never panic; whatever parses respects the limits passed
//! and the protocol's bounds (seqs, emoji, history limit, `id`), and every refusal is short;
//! a request built by a strategy, serialized, parses back to itself with its `id` echoed
//! byte for byte; a built `resume` list parses back to its rooms and seqs.

use std::borrow::Cow;

use edge::protocol::client::{
    initial_joins, parse, type_name, FileRef, ParseError, ParseLimits, ReactOp, Request, SendReq, Target, TypingState, MAX_EMOJI_BYTES,
    MAX_HISTORY_LIMIT, MAX_SEQ,
};
use edge::protocol::{ErrorCode, Kind};
use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// The longest refusal message: an echo of client input is at most 128 bytes, even with
/// every character escaped, plus the fixed text around it.
const MAX_REFUSAL_BYTES: usize = 1024;

const TYPES: [&str; 15] = [
    "auth", "refresh", "join", "leave", "send", "typing", "read", "react", "edit", "delete", "history", "presence", "sync", "ping", "nope",
];

/// An `id` as the wire carries it: a short string or an integer.
fn id_is_small(raw: &str) -> bool {
    let digits = raw.strip_prefix('-').unwrap_or(raw);
    (raw.starts_with('"') && raw.len() <= 66) || (!digits.is_empty() && digits.len() <= 20 && digits.bytes().all(|b| b.is_ascii_digit()))
}

fn seq_ok(v: Option<u64>) -> bool {
    v.is_none_or(|s| s <= MAX_SEQ)
}

/// What must hold of any outcome of `parse(text, limits)`.
fn check(text: &str, limits: &ParseLimits) -> Result<(), TestCaseError> {
    let env = match parse(text, limits) {
        Ok(env) => env,
        Err(ParseError { id, code, message }) => {
            prop_assert!(matches!(code, ErrorCode::BadRequest | ErrorCode::TooLarge), "{:?}", code);
            prop_assert!(
                message.len() <= MAX_REFUSAL_BYTES,
                "a refusal of {} bytes: {:.200}",
                message.len(),
                message
            );
            prop_assert!(id.as_deref().is_none_or(|i| id_is_small(i.get())), "{:?}", id);
            return Ok(());
        }
    };
    prop_assert!(env.id.is_none_or(|i| id_is_small(i.get())), "{:?}", env.id);
    let body_ok = |b: &str| b.chars().count() <= limits.max_body_chars;
    match &env.request {
        Request::Send(s) => {
            prop_assert!(body_ok(&s.body));
            prop_assert!(s
                .client_id
                .as_ref()
                .is_none_or(|c| (1..=limits.max_client_id_bytes).contains(&c.len())));
            prop_assert!(seq_ok(s.reply_to));
            prop_assert_eq!(s.kind == Kind::File, s.file.is_some());
        }
        Request::Edit { body, seq, .. } => prop_assert!(body_ok(body) && seq_ok(Some(*seq))),
        Request::React { emoji, seq, .. } => {
            prop_assert!((1..=MAX_EMOJI_BYTES).contains(&emoji.len()), "{:?}", emoji);
            prop_assert!(!emoji.chars().any(|c| c.is_whitespace() || c.is_control()), "{:?}", emoji);
            prop_assert!(seq_ok(Some(*seq)));
        }
        Request::History { limit, before, thread, .. } => {
            prop_assert!((1..=MAX_HISTORY_LIMIT).contains(&u64::from(*limit)));
            prop_assert!(seq_ok(*before) && seq_ok(*thread));
        }
        Request::Join { since, .. } => prop_assert!(seq_ok(*since)),
        Request::Read { seq, .. } | Request::Delete { seq, .. } => prop_assert!(seq_ok(Some(*seq))),
        _ => {}
    }
    Ok(())
}

fn limits() -> impl Strategy<Value = ParseLimits> {
    (0usize..80, 0usize..80).prop_map(|(max_body_chars, max_client_id_bytes)| ParseLimits {
        max_body_chars,
        max_client_id_bytes,
    })
}

/// A long string (one character repeated, escapes and multi-byte ones included): what
/// a refusal must not send back whole.
fn long_text() -> impl Strategy<Value = String> {
    (any::<char>(), 300usize..3000).prop_map(|(c, n)| c.to_string().repeat(n))
}

/// A frame whose `id` or another field opens arrays or objects thousands deep.
pub(crate) fn nested() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["id", "room", "file", "x"]),
        prop::sample::select(vec!["[", "{\"a\":", "[{\"b\":"]),
        1usize..20_000,
    )
        .prop_map(|(key, open, depth)| format!("{{\"type\":\"join\",\"{key}\":{}", open.repeat(depth)))
}

/// Any JSON value, numbers near the protocol's bounds included.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        prop::sample::select(vec![0, 1, 50, 100, 101, MAX_SEQ, MAX_SEQ + 1, u64::MAX]).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "(?s).{0,40}".prop_map(Value::String),
        long_text().prop_map(Value::String),
        prop::sample::select(TYPES.to_vec()).prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec(("[a-z]{1,4}", inner), 0..4).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A value of the type the protocol gives field `key` (a string or a number), with any
/// content: extreme numbers, long strings, the words the protocol knows.
fn typed(key: &'static str) -> BoxedStrategy<Value> {
    let number = prop_oneof![
        6 => 0u64..200,
        2 => prop::sample::select(vec![0, 1, 50, 100, 101, MAX_SEQ, MAX_SEQ + 1, u64::MAX]),
        1 => any::<u64>(),
    ]
    .prop_map(Value::from);
    let words = [
        "start", "stop", "add", "remove", "text", "file", "+1", ":)", " ", "\u{0}", "\u{200b}",
    ];
    let string = prop_oneof![
        "(?s).{0,12}",
        prop::sample::select(words.to_vec()).prop_map(str::to_owned),
        long_text(),
    ]
    .prop_map(Value::String);
    match key {
        "since" | "seq" | "before" | "reply_to" | "limit" | "thread" => number.boxed(),
        "id" => prop_oneof![number, any::<i64>().prop_map(Value::from), string].boxed(),
        "file" => ("(?s).{0,8}", "(?s).{0,8}", any::<u64>(), "(?s).{0,8}")
            .prop_map(|(url, name, size, mime)| json!({"url": url, "name": name, "size": size, "mime": mime}))
            .boxed(),
        _ => string.boxed(),
    }
}

/// A JSON object over the protocol's field names: each field present 40% of the time,
/// mostly with a value of its type (so that frames get past typing into the checks),
/// sometimes with any value.
fn json_object() -> impl Strategy<Value = Value> {
    let keys = [
        "id",
        "token",
        "room",
        "to",
        "user",
        "body",
        "client_id",
        "kind",
        "file",
        "state",
        "emoji",
        "op",
        "since",
        "seq",
        "before",
        "reply_to",
        "limit",
        "thread",
        "url",
    ];
    let fields: Vec<BoxedStrategy<Option<Value>>> = keys
        .iter()
        .map(|&k| prop::option::weighted(0.4, prop_oneof![29 => typed(k), 1 => json_value()]).boxed())
        .collect();
    let ty = prop_oneof![
        6 => prop::sample::select(TYPES.to_vec()).prop_map(Value::from),
        1 => json_value(),
        1 => typed("type"),
    ];
    (prop::option::weighted(0.95, ty), fields).prop_map(move |(ty, values)| {
        let mut m: Map<String, Value> = keys.iter().zip(values).filter_map(|(k, v)| Some(((*k).to_owned(), v?))).collect();
        if let Some(ty) = ty {
            m.insert("type".into(), ty);
        }
        Value::Object(m)
    })
}

fn cow(s: String) -> Cow<'static, str> {
    Cow::Owned(s)
}

fn seq() -> impl Strategy<Value = u64> {
    prop_oneof![0..=MAX_SEQ, Just(MAX_SEQ), 0u64..10]
}

/// Strings as clients send them: any characters, escapes included.
fn text(max: usize) -> impl Strategy<Value = Cow<'static, str>> {
    proptest::string::string_regex(&format!("(?s).{{0,{max}}}"))
        .expect("regex")
        .prop_map(cow)
}

/// The limits every [`request`] is within.
const ROUND_TRIP_LIMITS: ParseLimits = ParseLimits {
    max_body_chars: 64,
    max_client_id_bytes: 96,
};

/// A valid request of every type, within [`ROUND_TRIP_LIMITS`].
fn request() -> impl Strategy<Value = Request<'static>> {
    let file = (text(16), text(16), any::<u64>(), text(16)).prop_map(|(url, name, size, mime)| FileRef { url, name, size, mime });
    let send = (
        any::<bool>(),
        text(12),
        text(64),
        prop::option::of("(?s).{1,24}".prop_map(cow)),
        prop::option::of(seq()),
        prop::option::of(file),
    )
        .prop_map(|(to_user, target, body, client_id, reply_to, file)| {
            Request::Send(SendReq {
                target: if to_user { Target::User(target) } else { Target::Room(target) },
                body,
                client_id,
                reply_to,
                kind: if file.is_some() { Kind::File } else { Kind::Text },
                file,
            })
        });
    let emoji = "[a-z0-9:_+\\-\u{1F600}-\u{1F64F}]{1,8}".prop_map(cow);
    prop_oneof![
        text(40).prop_map(|token| Request::Auth { token }),
        text(40).prop_map(|token| Request::Refresh { token }),
        (text(12), prop::option::of(seq())).prop_map(|(room, since)| Request::Join { room, since }),
        text(12).prop_map(|room| Request::Leave { room }),
        send,
        (text(12), any::<bool>()).prop_map(|(room, start)| Request::Typing {
            room,
            state: if start { TypingState::Start } else { TypingState::Stop },
        }),
        (text(12), seq()).prop_map(|(room, seq)| Request::Read { room, seq }),
        (text(12), seq(), emoji, any::<bool>()).prop_map(|(room, seq, emoji, add)| Request::React {
            room,
            seq,
            emoji,
            op: if add { ReactOp::Add } else { ReactOp::Remove },
        }),
        (text(12), seq(), text(64)).prop_map(|(room, seq, body)| Request::Edit { room, seq, body }),
        (text(12), seq()).prop_map(|(room, seq)| Request::Delete { room, seq }),
        (text(12), prop::option::of(seq()), 1u32..=100, prop::option::of(seq())).prop_map(|(room, before, limit, thread)| {
            Request::History {
                room,
                before,
                limit,
                thread,
            }
        }),
        text(12).prop_map(|room| Request::Presence { room }),
        text(12).prop_map(|user| Request::LastSeen { user }),
        Just(Request::Sync),
        Just(Request::Ping),
    ]
}

/// The JSON object a client sends for `r` (optional fields left out when absent; a
/// history `limit` of 50, the default, left out too).
fn to_json(r: &Request<'_>) -> Value {
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_owned(), v);
    };
    let opt = |v: Option<u64>| v.map(Value::from);
    let ty = type_name(r);
    put("type", ty.into());
    match r {
        Request::Auth { token } | Request::Refresh { token } => put("token", json!(token)),
        Request::Join { room, since } => {
            put("room", json!(room));
            opt(*since).into_iter().for_each(|s| put("since", s));
        }
        Request::Leave { room } | Request::Presence { room } => put("room", json!(room)),
        Request::LastSeen { user } => put("user", json!(user)),
        Request::Send(s) => {
            match &s.target {
                Target::Room(room) => put("room", json!(room)),
                Target::User(user) => put("to", json!(user)),
            }
            put("body", json!(s.body));
            s.client_id.iter().for_each(|c| put("client_id", json!(c)));
            opt(s.reply_to).into_iter().for_each(|v| put("reply_to", v));
            if let Some(f) = &s.file {
                put("kind", "file".into());
                put("file", json!({"url": f.url, "name": f.name, "size": f.size, "mime": f.mime}));
            }
        }
        Request::Typing { room, state } => {
            put("room", json!(room));
            put("state", if *state == TypingState::Start { "start" } else { "stop" }.into());
        }
        Request::Read { room, seq } | Request::Delete { room, seq } => {
            put("room", json!(room));
            put("seq", (*seq).into());
        }
        Request::React { room, seq, emoji, op } => {
            put("room", json!(room));
            put("seq", (*seq).into());
            put("emoji", json!(emoji));
            put("op", if *op == ReactOp::Add { "add" } else { "remove" }.into());
        }
        Request::Edit { room, seq, body } => {
            put("room", json!(room));
            put("seq", (*seq).into());
            put("body", json!(body));
        }
        Request::History {
            room,
            before,
            limit,
            thread,
        } => {
            put("room", json!(room));
            opt(*before).into_iter().for_each(|v| put("before", v));
            opt(*thread).into_iter().for_each(|v| put("thread", v));
            if *limit != 50 {
                put("limit", (*limit).into());
            }
        }
        Request::Sync | Request::Ping => {}
    }
    Value::Object(m)
}

/// Applies byte edits to `s` (replace, insert, delete, truncate), kept valid UTF-8.
fn mutate(s: &str, edits: &[(prop::sample::Index, u8, u8)]) -> String {
    let mut b = s.as_bytes().to_vec();
    for (at, op, byte) in edits {
        let i = at.index(b.len() + 1);
        match op % 4 {
            0 if i < b.len() => b[i] = *byte,
            1 => b.insert(i, *byte),
            2 if i < b.len() => {
                b.remove(i);
            }
            3 => b.truncate(i),
            _ => {}
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

/// A built `resume` list: distinct rooms (any text but `,`, `:` inside included) with seqs.
fn resume_entries() -> impl Strategy<Value = Vec<(String, u64)>> {
    vec(("[^,]{1,12}", seq()), 0..12).prop_map(|mut v| {
        let mut seen = std::collections::HashSet::new();
        v.retain(|(r, _)| seen.insert(r.clone()));
        v
    })
}

/// Found by `json_objects_respect_the_bounds`: a seq over `MAX_SEQ` in a frame whose `type`
/// is long and unknown was refused with the whole `type` in the message (1,025 bytes here;
/// as long as the frame in general), not the 128-byte echo every refusal shows.
#[test]
fn regression_a_long_unknown_type_with_a_big_seq_is_echoed_short() {
    let text = format!(r#"{{"before":9007199254740992,"type":"{}"}}"#, "A".repeat(990));
    let limits = ParseLimits {
        max_body_chars: 0,
        max_client_id_bytes: 0,
    };
    let Err(e) = parse(&text, &limits) else { panic!("parsed") };
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(e.message.len() < 300, "{} bytes: {}", e.message.len(), e.message);
    assert!(e.message.contains("`before` must be at most 9007199254740991"), "{}", e.message);
}

proptest! {
    #![proptest_config(crate::config())]

    /// Any text, JSON or not, deeply nested too: no panic (nor stack overflow), the bounds hold.
    #[test]
    fn arbitrary_text_respects_the_bounds(text in prop_oneof!["(?s).{0,300}", "\\{(?s).{0,300}", nested()], limits in limits()) {
        check(&text, &limits)?;
    }

    /// Any JSON object over the protocol's fields: no panic, the bounds hold, a parsed
    /// request is of the type the frame names, and the `id` is echoed verbatim.
    #[test]
    fn json_objects_respect_the_bounds(obj in json_object(), limits in limits()) {
        let text = obj.to_string();
        check(&text, &limits)?;
        let id = obj.get("id").map(Value::to_string).filter(|raw| id_is_small(raw));
        match parse(&text, &limits) {
            Ok(env) => {
                prop_assert_eq!(Some(type_name(&env.request)), obj.get("type").and_then(Value::as_str));
                prop_assert_eq!(env.id.map(|i| i.get().to_owned()), id);
            }
            Err(e) => prop_assert!(e.id.is_none_or(|i| Some(i.get().to_owned()) == id)),
        }
    }

    /// A built request parses back to itself, its `id` echoed byte for byte; unknown
    /// fields are ignored.
    #[test]
    fn built_requests_round_trip(
        req in request(),
        id in prop::option::of(prop_oneof![any::<i64>().prop_map(Value::from), "[A-Za-z0-9 _.:-]{0,64}".prop_map(Value::from)]),
        extra in vec(("zz[a-z]{0,4}", json_value()), 0..3),
    ) {
        let mut obj = to_json(&req);
        if let (Value::Object(m), Some(id)) = (&mut obj, &id) {
            m.insert("id".into(), id.clone());
        }
        if let Value::Object(m) = &mut obj {
            m.extend(extra);
        }
        let text = obj.to_string();
        match parse(&text, &ROUND_TRIP_LIMITS) {
            Ok(env) => {
                prop_assert_eq!(&env.request, &req);
                prop_assert_eq!(env.id.map(|i| i.get().to_owned()), id.map(|i| i.to_string()));
            }
            Err(e) => prop_assert!(false, "{} refused: {}", text, e.message),
        }
    }

    /// Limits are enforced exactly: a send parses iff its body and client_id are within them.
    #[test]
    fn send_limits_are_exact(body in "(?s).{0,40}", client_id in prop::option::of("(?s).{0,12}"), limits in limits()) {
        let mut obj = json!({"type": "send", "room": "r", "body": body});
        if let Some(c) = &client_id {
            obj["client_id"] = json!(c);
        }
        let body_fits = body.chars().count() <= limits.max_body_chars;
        let id_fits = client_id.as_ref().is_none_or(|c| (1..=limits.max_client_id_bytes).contains(&c.len()));
        match parse(&obj.to_string(), &limits) {
            Ok(_) => prop_assert!(body_fits && id_fits),
            Err(e) => {
                prop_assert!(!body_fits || !id_fits, "refused: {}", e.message);
                prop_assert_eq!(e.code == ErrorCode::TooLarge, !body_fits);
            }
        }
    }

    /// Valid frames with random byte edits: no panic, the bounds hold.
    #[test]
    fn mutated_frames_respect_the_bounds(
        req in request(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>(), any::<u8>()), 1..6),
        limits in limits(),
    ) {
        check(&mutate(&to_json(&req).to_string(), &edits), &limits)?;
    }

    /// Any `room` and `resume`: no panic; the result holds at most `max_rooms` rooms (the
    /// `room` itself always), each once, seqs within bounds; refusals are short.
    #[test]
    fn resume_respects_the_bounds(
        room in prop::option::of("(?s).{0,12}"),
        resume in prop::option::of(prop_oneof!["(?s).{0,200}", "([a-z:]{0,6}:[0-9]{0,17},?){0,40}", long_text()]),
        max_rooms in 0usize..12,
    ) {
        match initial_joins(room.as_deref(), resume.as_deref(), max_rooms) {
            Ok(joins) => {
                prop_assert!(joins.len() <= max_rooms.max(usize::from(room.is_some())), "{} rooms", joins.len());
                let distinct: std::collections::HashSet<&String> = joins.iter().map(|(r, _)| r).collect();
                prop_assert_eq!(distinct.len(), joins.len());
                if let Some(room) = &room {
                    prop_assert_eq!(&joins[0].0, room);
                }
                for (r, since) in joins.iter().skip(usize::from(room.is_some())) {
                    prop_assert!(!r.is_empty() && since.is_some_and(|s| s <= MAX_SEQ));
                }
            }
            Err(msg) => prop_assert!(msg.len() <= MAX_REFUSAL_BYTES, "{} bytes", msg.len()),
        }
    }

    /// A built list parses back to its rooms and seqs, in order, after `room`; one room too
    /// many is refused; a repeated room keeps its first place and its last seq.
    #[test]
    fn built_resume_lists_round_trip(entries in resume_entries(), room in prop::option::of("[a-z]{1,6}"), repeat in any::<prop::sample::Index>()) {
        let mut want: Vec<(String, Option<u64>)> = room.iter().map(|r| (r.clone(), None)).collect();
        for (r, s) in &entries {
            match want.iter_mut().find(|(w, _)| w == r) {
                Some(w) => w.1 = Some(*s),
                None => want.push((r.clone(), Some(*s))),
            }
        }
        let mut list: Vec<String> = entries.iter().map(|(r, s)| format!("{r}:{s}")).collect();
        let resume = list.join(",");
        prop_assert_eq!(initial_joins(room.as_deref(), Some(&resume), want.len()), Ok(want.clone()));
        if !entries.is_empty() && want.len() > usize::from(room.is_some()) {
            prop_assert!(initial_joins(room.as_deref(), Some(&resume), want.len() - 1).is_err());
            // Naming a room again moves its seq, not its place.
            let (r, _) = &entries[repeat.index(entries.len())];
            list.push(format!("{r}:7"));
            let again = initial_joins(room.as_deref(), Some(&list.join(",")), want.len());
            let mut moved = want.clone();
            if let Some(w) = moved.iter_mut().find(|(w, _)| w == r) {
                w.1 = Some(7);
            }
            prop_assert_eq!(again, Ok(moved));
        }
    }
}
