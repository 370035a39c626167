//! Request bodies: what each POST must hold, checked before anything runs.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{ApiError, DEFAULT_TOKEN_TTL_S, MAX_TOKEN_TTL_S};
use crate::auth::{is_valid_user_id, Claims};

/// Sender of a published message when the body names none.
pub const DEFAULT_PUBLISHER: &str = "system";
/// Longest display name in a minted token, in characters.
const MAX_NAME_CHARS: usize = 64;
/// Most patterns in a minted token's `rooms` or `moderator`.
const MAX_PATTERNS: usize = 100;
/// Longest pattern, in bytes (a room id and a `*`).
const MAX_PATTERN_BYTES: usize = 133;
/// Longest disconnect reason, in bytes (it goes into a close frame, 123 bytes at most).
const MAX_REASON_BYTES: usize = 100;
/// Largest reconnect hint of a disconnect (one hour).
const MAX_RETRY_MS: u64 = 3_600_000;

/// A JSON body of type `T`, or a 400 that says what is wrong with it.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(&format!("invalid JSON body: {e}")))
}

/// A publish, as the WebSocket `send` frame the protocol parser checks, and its sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishFields {
    /// Who the message is from (`user` in the body, else [`DEFAULT_PUBLISHER`]).
    pub user: String,
    /// `{"type":"send","room":..,...}` with the body's other fields.
    pub frame: String,
}

/// Checks a `POST /api/rooms/{room}/messages` body (`body`, and optionally `user`, `kind`,
/// `file`, `reply_to`, `client_id`) and turns it into a `send` frame for `room`. The
/// `Idempotency-Key` header is the `client_id`; giving both with different values is an error.
pub fn publish_request(room: &str, body: &[u8], idempotency_key: Option<&str>) -> Result<PublishFields, ApiError> {
    let mut obj: Map<String, Value> = parse(body)?;
    for taken in ["type", "room", "to", "id"] {
        if obj.contains_key(taken) {
            return Err(ApiError::bad_request(&format!(
                "{taken:?} is not a field of a publish (the room is in the path)"
            )));
        }
    }
    let user = match obj.remove("user") {
        None => DEFAULT_PUBLISHER.to_owned(),
        Some(Value::String(u)) if is_valid_user_id(&u) => u,
        Some(_) => {
            return Err(ApiError::bad_request(
                "user must be a user id (1..=64 bytes of A-Z a-z 0-9 _ . @ -)",
            ))
        }
    };
    if let Some(key) = idempotency_key {
        match obj.get("client_id") {
            Some(Value::String(c)) if c != key => {
                return Err(ApiError::bad_request("Idempotency-Key and client_id differ: give one of them"));
            }
            _ => {
                obj.insert("client_id".into(), key.into());
            }
        }
    }
    obj.insert("type".into(), "send".into());
    obj.insert("room".into(), room.into());
    Ok(PublishFields {
        user,
        frame: Value::Object(obj).to_string(),
    })
}

/// `POST /api/tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenReq {
    pub user: String,
    #[serde(default)]
    pub rooms: Option<Vec<String>>,
    #[serde(default)]
    pub ttl_s: Option<u64>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub moderator: Option<Vec<String>>,
}

/// `POST /api/dev/token`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevTokenReq {
    pub user: String,
}

/// `POST /api/admin/users/{user}/disconnect` (every field optional; an empty body is `{}`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisconnectReq {
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub retry_ms: Option<u64>,
}

impl DisconnectReq {
    /// The body, checked: the reason fits a close frame, the hint is at most an hour.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let req: Self = if body.iter().all(u8::is_ascii_whitespace) {
            Self::default()
        } else {
            parse(body)?
        };
        if req.reason.as_ref().is_some_and(|r| r.len() > MAX_REASON_BYTES) {
            return Err(ApiError::bad_request(&format!("reason: at most {MAX_REASON_BYTES} bytes")));
        }
        if req.retry_ms.is_some_and(|ms| ms > MAX_RETRY_MS) {
            return Err(ApiError::bad_request(&format!("retry_ms: at most {MAX_RETRY_MS}")));
        }
        Ok(req)
    }
}

/// The claims of a token request, checked (`now_s`: the wall clock, unix seconds).
pub fn token_claims(req: TokenReq, now_s: u64) -> Result<Claims, ApiError> {
    if !is_valid_user_id(&req.user) {
        return Err(ApiError::bad_request(
            "user must be a user id (1..=64 bytes of A-Z a-z 0-9 _ . @ -)",
        ));
    }
    let ttl = req.ttl_s.unwrap_or(DEFAULT_TOKEN_TTL_S);
    if !(1..=MAX_TOKEN_TTL_S).contains(&ttl) {
        return Err(ApiError::bad_request(&format!("ttl_s must be 1..={MAX_TOKEN_TTL_S}")));
    }
    if req.name.as_ref().is_some_and(|n| n.chars().count() > MAX_NAME_CHARS) {
        return Err(ApiError::bad_request(&format!("name: at most {MAX_NAME_CHARS} characters")));
    }
    for (field, list) in [("rooms", &req.rooms), ("moderator", &req.moderator)] {
        let Some(list) = list else { continue };
        if list.len() > MAX_PATTERNS || list.iter().any(|p| p.is_empty() || p.len() > MAX_PATTERN_BYTES) {
            let msg = format!("{field}: at most {MAX_PATTERNS} patterns of 1..={MAX_PATTERN_BYTES} bytes");
            return Err(ApiError::bad_request(&msg));
        }
    }
    Ok(Claims {
        sub: req.user,
        exp: now_s.saturating_add(ttl),
        nbf: None,
        rooms: req.rooms.map(Vec::into_boxed_slice),
        name: req.name.map(String::into_boxed_str),
        moderator: req.moderator.map(Vec::into_boxed_slice),
    })
}
