//! Client frames in. One serde pass over a flat borrowed struct (no
//! `Value` tree); strings without escapes stay borrowed from the frame.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{ErrorCode, Kind};

/// Most bytes of a string `id`.
const MAX_ID_BYTES: usize = 64;
/// Longest `emoji` of a `react`, in bytes (a multi-codepoint emoji with skin tone and ZWJs fits).
pub const MAX_EMOJI_BYTES: usize = 32;
/// `history` page size bounds.
pub const MAX_HISTORY_LIMIT: u64 = 100;
const DEFAULT_HISTORY_LIMIT: u32 = 50;

/// Limits applied while parsing.
#[derive(Debug, Clone, Copy)]
pub struct ParseLimits {
    /// Longest `body`, in characters.
    pub max_body_chars: usize,
    /// Longest `client_id`, in bytes.
    pub max_client_id_bytes: usize,
}

/// A parsed client frame.
#[derive(Debug)]
pub struct Envelope<'a> {
    /// The raw JSON text of `id`, echoed verbatim in the reply.
    pub id: Option<&'a RawValue>,
    /// What the client asks for.
    pub request: Request<'a>,
}

/// A refused frame: the error to answer, with the `id` when it was readable.
#[derive(Debug)]
pub struct ParseError {
    /// The request's `id`, if it could be extracted.
    pub id: Option<Box<RawValue>>,
    /// The error code to answer with.
    pub code: ErrorCode,
    /// Human-readable reason naming the field.
    pub message: String,
}

/// `typing` state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypingState {
    /// Started typing.
    Start,
    /// Stopped typing.
    Stop,
}

/// `react` operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReactOp {
    /// Add a reaction.
    Add,
    /// Remove a reaction.
    Remove,
}

/// Where a `send` goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target<'a> {
    /// A room the sender joined.
    Room(Cow<'a, str>),
    /// A user: a direct message.
    User(Cow<'a, str>),
}

/// A file reference carried by a `kind: "file"` message.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FileRef<'a> {
    /// Where the file is.
    #[serde(borrow)]
    pub url: Cow<'a, str>,
    /// Its display name.
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    /// Its size in bytes.
    pub size: u64,
    /// Its MIME type.
    #[serde(borrow)]
    pub mime: Cow<'a, str>,
}

/// A `send` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendReq<'a> {
    /// Room or user.
    pub target: Target<'a>,
    /// The text.
    pub body: Cow<'a, str>,
    /// Idempotency key.
    pub client_id: Option<Cow<'a, str>>,
    /// Seq of the message this replies to.
    pub reply_to: Option<u64>,
    /// Text or file.
    pub kind: Kind,
    /// With `kind: file`.
    pub file: Option<FileRef<'a>>,
}

/// Every client request of protocol v1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// Authenticate with a JWT.
    Auth { token: Cow<'a, str> },
    /// Replace the session's token with a newer one of the same user before it expires.
    Refresh { token: Cow<'a, str> },
    /// Join a room, optionally catching up after `since`.
    Join { room: Cow<'a, str>, since: Option<u64> },
    /// Leave a room.
    Leave { room: Cow<'a, str> },
    /// Send a message.
    Send(SendReq<'a>),
    /// Typing indicator.
    Typing { room: Cow<'a, str>, state: TypingState },
    /// Move the read mark.
    Read { room: Cow<'a, str>, seq: u64 },
    /// React to a message.
    React {
        room: Cow<'a, str>,
        seq: u64,
        emoji: Cow<'a, str>,
        op: ReactOp,
    },
    /// Replace the body of one's own message.
    Edit { room: Cow<'a, str>, seq: u64, body: Cow<'a, str> },
    /// Delete one's own message (its seq stays, as a tombstone).
    Delete { room: Cow<'a, str>, seq: u64 },
    /// A page of history (of one thread's replies, with `thread`: its root's seq).
    History {
        room: Cow<'a, str>,
        before: Option<u64>,
        limit: u32,
        thread: Option<u64>,
    },
    /// Who is online.
    Presence { room: Cow<'a, str> },
    /// Whether a user is online, and when it was last seen (`presence` with `user`).
    LastSeen { user: Cow<'a, str> },
    /// Offline inbox summary.
    Sync,
    /// Liveness check.
    Ping,
}

/// Most bytes of the client's own input an error message shows back.
pub const MAX_ECHO_BYTES: usize = 128;

/// `text` as an error message shows it: at most [`MAX_ECHO_BYTES`] bytes (cut on a character
/// boundary, then `…`), so a refusal never sends an attacker's bulk back.
pub fn echo(text: &str) -> Cow<'_, str> {
    if text.len() <= MAX_ECHO_BYTES {
        return text.into();
    }
    let mut end = MAX_ECHO_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end]).into()
}

/// The rooms to join when a connection opens: `?room=` first, then every
/// `?resume=<room>:<seq>,...` entry, each with the `since` to catch up from.
/// Room ids may hold `:` (`dm:a:b`), so an entry splits at its last `:`.
/// At most `max_rooms` entries, counted while parsing (a longer list is refused at the first
/// room too many); a malformed entry is an error naming it. Linear in the input: a repeated
/// room is found through an index, not by a scan.
pub fn initial_joins(room: Option<&str>, resume: Option<&str>, max_rooms: usize) -> Result<Vec<(String, Option<u64>)>, String> {
    let mut out: Vec<(String, Option<u64>)> = room.map(|r| (r.to_owned(), None)).into_iter().collect();
    let mut index: std::collections::HashMap<String, usize> = out.iter().enumerate().map(|(i, (r, _))| (r.clone(), i)).collect();
    for item in resume.unwrap_or("").split(',').filter(|i| !i.is_empty()) {
        let (r, seq) = item
            .rsplit_once(':')
            .ok_or_else(|| format!("resume entry {:?} is not <room>:<seq>", echo(item)))?;
        let seq: u64 = seq
            .parse()
            .ok()
            .filter(|&n| n <= MAX_SEQ)
            .ok_or_else(|| format!("resume entry {:?}: {:?} is not a seq (0..={MAX_SEQ})", echo(item), echo(seq)))?;
        if r.is_empty() {
            return Err(format!("resume entry {:?} has no room", echo(item)));
        }
        match index.get(r) {
            Some(&i) => out[i].1 = Some(seq),
            None if out.len() >= max_rooms => {
                return Err(format!(
                    "resume names more than {max_rooms} rooms, at most {max_rooms} per connection"
                ));
            }
            None => {
                index.insert(r.to_owned(), out.len());
                out.push((r.to_owned(), Some(seq)));
            }
        }
    }
    Ok(out)
}

/// The wire `type` of a request.
pub fn type_name(r: &Request<'_>) -> &'static str {
    match r {
        Request::Auth { .. } => "auth",
        Request::Refresh { .. } => "refresh",
        Request::Join { .. } => "join",
        Request::Leave { .. } => "leave",
        Request::Send(_) => "send",
        Request::Typing { .. } => "typing",
        Request::Read { .. } => "read",
        Request::React { .. } => "react",
        Request::Edit { .. } => "edit",
        Request::Delete { .. } => "delete",
        Request::History { .. } => "history",
        Request::Presence { .. } | Request::LastSeen { .. } => "presence",
        Request::Sync => "sync",
        Request::Ping => "ping",
    }
}

/// A string that stays borrowed when it has no escapes (serde borrows a
/// `Cow` only when it is not nested in an `Option`).
#[derive(Deserialize)]
struct Str<'a>(#[serde(borrow)] Cow<'a, str>);

#[derive(Deserialize)]
struct RawIn<'a> {
    #[serde(rename = "type", borrow)]
    ty: Option<Str<'a>>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    token: Option<Str<'a>>,
    #[serde(borrow)]
    room: Option<Str<'a>>,
    #[serde(borrow)]
    to: Option<Str<'a>>,
    #[serde(borrow)]
    user: Option<Str<'a>>,
    #[serde(borrow)]
    body: Option<Str<'a>>,
    #[serde(borrow)]
    client_id: Option<Str<'a>>,
    #[serde(borrow)]
    kind: Option<Str<'a>>,
    #[serde(borrow)]
    file: Option<FileRef<'a>>,
    #[serde(borrow)]
    state: Option<Str<'a>>,
    #[serde(borrow)]
    emoji: Option<Str<'a>>,
    #[serde(borrow)]
    op: Option<Str<'a>>,
    since: Option<u64>,
    seq: Option<u64>,
    before: Option<u64>,
    reply_to: Option<u64>,
    limit: Option<u64>,
    thread: Option<u64>,
}

struct Raw<'a> {
    ty: Option<Cow<'a, str>>,
    id: Option<&'a RawValue>,
    token: Option<Cow<'a, str>>,
    room: Option<Cow<'a, str>>,
    to: Option<Cow<'a, str>>,
    user: Option<Cow<'a, str>>,
    body: Option<Cow<'a, str>>,
    client_id: Option<Cow<'a, str>>,
    kind: Option<Cow<'a, str>>,
    file: Option<FileRef<'a>>,
    state: Option<Cow<'a, str>>,
    emoji: Option<Cow<'a, str>>,
    op: Option<Cow<'a, str>>,
    since: Option<u64>,
    seq: Option<u64>,
    before: Option<u64>,
    reply_to: Option<u64>,
    limit: Option<u64>,
    thread: Option<u64>,
}

impl<'a> From<RawIn<'a>> for Raw<'a> {
    fn from(r: RawIn<'a>) -> Self {
        Self {
            ty: r.ty.map(|s| s.0),
            id: r.id,
            token: r.token.map(|s| s.0),
            room: r.room.map(|s| s.0),
            to: r.to.map(|s| s.0),
            user: r.user.map(|s| s.0),
            body: r.body.map(|s| s.0),
            client_id: r.client_id.map(|s| s.0),
            kind: r.kind.map(|s| s.0),
            file: r.file,
            state: r.state.map(|s| s.0),
            emoji: r.emoji.map(|s| s.0),
            op: r.op.map(|s| s.0),
            since: r.since,
            seq: r.seq,
            before: r.before,
            reply_to: r.reply_to,
            limit: r.limit,
            thread: r.thread,
        }
    }
}

#[derive(Deserialize)]
struct IdOnly<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
}

/// Parses one client text frame.
pub fn parse<'a>(text: &'a str, limits: &ParseLimits) -> Result<Envelope<'a>, ParseError> {
    let raw: Raw<'a> = match serde_json::from_str::<RawIn<'a>>(text) {
        Ok(r) => r.into(),
        Err(e) => {
            let id = serde_json::from_str::<IdOnly<'_>>(text)
                .ok()
                .and_then(|i| i.id)
                .filter(|i| id_ok(i))
                .map(boxed);
            let message = if text.trim_start().starts_with('{') {
                // serde's message quotes the offending value: shown cut short.
                format!("invalid frame: {}", echo(&e.to_string()))
            } else {
                "a frame must be one JSON object".into()
            };
            return Err(ParseError {
                id,
                code: ErrorCode::BadRequest,
                message,
            });
        }
    };
    if let Some(id) = raw.id {
        if !id_ok(id) {
            return Err(bad(None, "id must be a string of at most 64 bytes or an integer".into()));
        }
    }
    let id = raw.id;
    let request = request(raw, limits).map_err(|(code, message)| ParseError {
        id: id.map(boxed),
        code,
        message,
    })?;
    Ok(Envelope { id, request })
}

fn boxed(r: &RawValue) -> Box<RawValue> {
    r.to_owned()
}

fn bad(id: Option<Box<RawValue>>, message: String) -> ParseError {
    ParseError {
        id,
        code: ErrorCode::BadRequest,
        message,
    }
}

fn id_ok(id: &RawValue) -> bool {
    let t = id.get();
    if t.starts_with('"') {
        return t.len() <= MAX_ID_BYTES + 2;
    }
    let digits = t.strip_prefix('-').unwrap_or(t);
    !digits.is_empty() && digits.len() <= 20 && digits.bytes().all(|b| b.is_ascii_digit())
}

type Refusal = (ErrorCode, String);

fn need<T>(v: Option<T>, ty: &str, field: &str) -> Result<T, Refusal> {
    v.ok_or_else(|| (ErrorCode::BadRequest, format!("{ty}: missing field `{field}`")))
}

/// The largest seq a client may name: 2^53 - 1, exact in JavaScript numbers and in Redis's Lua.
pub const MAX_SEQ: u64 = (1 << 53) - 1;

/// Refuses a seq-valued field beyond [`MAX_SEQ`], naming it.
fn seq_ok(ty: &str, field: &str, v: Option<u64>) -> Result<(), Refusal> {
    match v {
        // `ty` is not checked yet: shown cut short, like all client input.
        Some(n) if n > MAX_SEQ => Err((ErrorCode::BadRequest, format!("{}: `{field}` must be at most {MAX_SEQ}", echo(ty)))),
        _ => Ok(()),
    }
}

fn request<'a>(mut r: Raw<'a>, limits: &ParseLimits) -> Result<Request<'a>, Refusal> {
    let ty = need(r.ty.take(), "frame", "type")?;
    let t = ty.as_ref();
    seq_ok(t, "since", r.since)?;
    seq_ok(t, "before", r.before)?;
    seq_ok(t, "seq", r.seq)?;
    seq_ok(t, "reply_to", r.reply_to)?;
    seq_ok(t, "thread", r.thread)?;
    Ok(match t {
        "auth" => Request::Auth {
            token: need(r.token, t, "token")?,
        },
        "refresh" => Request::Refresh {
            token: need(r.token, t, "token")?,
        },
        "join" => Request::Join {
            room: need(r.room, t, "room")?,
            since: r.since,
        },
        "leave" => Request::Leave {
            room: need(r.room, t, "room")?,
        },
        "send" => Request::Send(send(r, limits)?),
        "typing" => {
            let state = match need(r.state, t, "state")?.as_ref() {
                "start" => TypingState::Start,
                "stop" => TypingState::Stop,
                s => {
                    return Err((
                        ErrorCode::BadRequest,
                        format!("typing: state must be start or stop, not {:?}", echo(s)),
                    ))
                }
            };
            Request::Typing {
                room: need(r.room, t, "room")?,
                state,
            }
        }
        "read" => Request::Read {
            room: need(r.room, t, "room")?,
            seq: need(r.seq, t, "seq")?,
        },
        "react" => {
            let op = match need(r.op, t, "op")?.as_ref() {
                "add" => ReactOp::Add,
                "remove" => ReactOp::Remove,
                s => return Err((ErrorCode::BadRequest, format!("react: op must be add or remove, not {:?}", echo(s)))),
            };
            Request::React {
                room: need(r.room, t, "room")?,
                seq: need(r.seq, t, "seq")?,
                emoji: emoji(need(r.emoji, t, "emoji")?)?,
                op,
            }
        }
        "edit" => {
            let body = need(r.body, t, "body")?;
            body_ok(t, &body, limits)?;
            Request::Edit {
                room: need(r.room, t, "room")?,
                seq: need(r.seq, t, "seq")?,
                body,
            }
        }
        "delete" => Request::Delete {
            room: need(r.room, t, "room")?,
            seq: need(r.seq, t, "seq")?,
        },
        "history" => {
            let limit = r.limit.unwrap_or(u64::from(DEFAULT_HISTORY_LIMIT));
            if !(1..=MAX_HISTORY_LIMIT).contains(&limit) {
                return Err((ErrorCode::BadRequest, format!("history: limit must be 1..={MAX_HISTORY_LIMIT}")));
            }
            Request::History {
                room: need(r.room, t, "room")?,
                before: r.before,
                limit: limit as u32,
                thread: r.thread,
            }
        }
        "presence" => match (r.room, r.user) {
            (Some(room), None) => Request::Presence { room },
            (None, Some(user)) => Request::LastSeen { user },
            _ => {
                return Err((
                    ErrorCode::BadRequest,
                    "presence: exactly one of `room` or `user` is required".into(),
                ))
            }
        },
        "sync" => Request::Sync,
        "ping" => Request::Ping,
        other => {
            let shown: String = other.chars().take(32).collect();
            return Err((ErrorCode::BadRequest, format!("unknown type {shown:?}")));
        }
    })
}

/// A `body` within the length limit (`too_large` names the count and the limit).
fn body_ok(ty: &str, body: &str, limits: &ParseLimits) -> Result<(), Refusal> {
    let chars = body.chars().count();
    if chars > limits.max_body_chars {
        return Err((
            ErrorCode::TooLarge,
            format!("{ty}: body has {chars} characters, the limit is {}", limits.max_body_chars),
        ));
    }
    Ok(())
}

/// A `react` emoji: 1..=[`MAX_EMOJI_BYTES`] bytes with no whitespace or control character
/// (any other text is allowed: custom `:shortcodes:` as well as Unicode emoji).
fn emoji(e: Cow<'_, str>) -> Result<Cow<'_, str>, Refusal> {
    if e.is_empty() || e.len() > MAX_EMOJI_BYTES {
        let msg = format!("react: emoji must be 1..={MAX_EMOJI_BYTES} bytes, not {}", e.len());
        return Err((ErrorCode::BadRequest, msg));
    }
    if e.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err((
            ErrorCode::BadRequest,
            "react: emoji must not hold spaces or control characters".into(),
        ));
    }
    Ok(e)
}

fn send<'a>(r: Raw<'a>, limits: &ParseLimits) -> Result<SendReq<'a>, Refusal> {
    let target = match (r.room, r.to) {
        (Some(room), None) => Target::Room(room),
        (None, Some(to)) => Target::User(to),
        _ => return Err((ErrorCode::BadRequest, "send: exactly one of `room` or `to` is required".into())),
    };
    let body = need(r.body, "send", "body")?;
    body_ok("send", &body, limits)?;
    if let Some(c) = &r.client_id {
        if c.is_empty() || c.len() > limits.max_client_id_bytes {
            return Err((
                ErrorCode::BadRequest,
                format!("send: client_id must be 1..={} bytes", limits.max_client_id_bytes),
            ));
        }
    }
    let kind = match r.kind.as_deref() {
        None | Some("text") => Kind::Text,
        Some("file") => Kind::File,
        Some(k) => {
            return Err((
                ErrorCode::BadRequest,
                format!("send: unknown kind {:?}", k.chars().take(32).collect::<String>()),
            ))
        }
    };
    match (kind, &r.file) {
        (Kind::File, None) => {
            return Err((
                ErrorCode::BadRequest,
                "send: kind file requires `file` {url, name, size, mime}".into(),
            ))
        }
        (Kind::Text, Some(_)) => return Err((ErrorCode::BadRequest, "send: `file` requires kind file".into())),
        _ => {}
    }
    Ok(SendReq {
        target,
        body,
        client_id: r.client_id,
        reply_to: r.reply_to,
        kind,
        file: r.file,
    })
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
