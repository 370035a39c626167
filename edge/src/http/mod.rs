//! The HTTP API and the web page, sans-IO: which route a request head names,
//! who is asking (an API key or a user's JWT), what a body must hold, and
//! the response bytes. The shell (`shard/api.rs`) reads the body, carries
//! the request into the chat engine on the same paths a WebSocket request
//! takes, and writes what this module renders.
//!
//! What must stay true: every error is `{"error":{"code","message"}}` with
//! the status of its code; API keys are compared in constant time; no input
//! panics; a route that needs a key never runs on a user's token.

mod assets;
mod body;
mod reply;
mod route;

pub use assets::{asset, Asset, OPENAPI};
pub use body::{
    parse as parse_body, publish_request, token_claims, DevTokenReq, DisconnectReq, PublishFields, TokenReq, DEFAULT_PUBLISHER,
};
pub use reply::{from_ws_reply, json_response, ApiError, Response};
pub use route::{route, Access, Route};

use crate::ws::handshake::ApiHeaders;

/// Largest `ttl_s` of a token minted by `POST /api/tokens` (30 days).
pub const MAX_TOKEN_TTL_S: u64 = 30 * 24 * 3600;
/// `ttl_s` when the request gives none (one hour).
pub const DEFAULT_TOKEN_TTL_S: u64 = 3600;
/// History page size when `limit` is absent.
pub const DEFAULT_HISTORY_LIMIT: u32 = 50;

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Caller {
    /// A backend holding one of the node's API keys: every room, the admin routes.
    Key,
    /// A user's bearer token (verified by the shell): the WebSocket rules.
    Bearer(String),
    /// No credentials.
    Anonymous,
}

/// Reads the credentials of a request: `Authorization: apikey <key>` or `X-API-Key: <key>`
/// (checked against `keys`), or `Authorization: Bearer <jwt>` (returned for the shell to
/// verify). A key that matches none is an error, never a fall-through to anonymous.
pub fn caller(h: &ApiHeaders, keys: &[String]) -> Result<Caller, ApiError> {
    let auth = h.authorization.as_deref().map(str::trim);
    let key = match (auth, h.api_key.as_deref()) {
        (Some(a), _) if scheme(a, "apikey").is_some() => scheme(a, "apikey"),
        (_, Some(k)) => Some(k.trim()),
        _ => None,
    };
    if let Some(key) = key {
        if keys.is_empty() {
            return Err(ApiError::unauthorized(
                "this node has no api_keys configured (config api_keys, env EDGE_API_KEYS)",
            ));
        }
        return if key_matches(keys, key) {
            Ok(Caller::Key)
        } else {
            Err(ApiError::unauthorized("invalid API key"))
        };
    }
    match auth {
        Some(a) => match scheme(a, "bearer") {
            Some(token) if !token.is_empty() => Ok(Caller::Bearer(token.to_owned())),
            _ => Err(ApiError::unauthorized("Authorization must be \"Bearer <jwt>\" or \"apikey <key>\"")),
        },
        None => Ok(Caller::Anonymous),
    }
}

/// The credentials after `<name> ` in an Authorization value (scheme case-insensitive).
fn scheme<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    let (s, rest) = value.split_once(' ')?;
    s.eq_ignore_ascii_case(name).then(|| rest.trim())
}

/// Whether `given` equals one of `keys`, in time that depends only on the lengths (every
/// key is compared, every byte of it).
pub fn key_matches(keys: &[String], given: &str) -> bool {
    let mut any = 0u8;
    for key in keys {
        any |= u8::from(ct_eq(key.as_bytes(), given.as_bytes()));
    }
    any == 1
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

/// The `before`, `limit` and `thread` of a history request's query, checked as the
/// WebSocket `history` request is.
pub fn history_query(query: &[(String, String)]) -> Result<(Option<u64>, u32, Option<u64>), ApiError> {
    let mut out = (None, DEFAULT_HISTORY_LIMIT, None);
    for (k, v) in query {
        let n = || {
            v.parse::<u64>()
                .ok()
                .filter(|n| *n >= 1 && *n <= crate::protocol::client::MAX_SEQ)
                .ok_or_else(|| ApiError::bad_request(&format!("{k} must be a seq (1..={})", crate::protocol::client::MAX_SEQ)))
        };
        match k.as_str() {
            "before" => out.0 = Some(n()?),
            "thread" => out.2 = Some(n()?),
            "limit" => {
                let max = crate::protocol::client::MAX_HISTORY_LIMIT;
                out.1 = v
                    .parse::<u64>()
                    .ok()
                    .filter(|n| (1..=max).contains(n))
                    .ok_or_else(|| ApiError::bad_request(&format!("limit must be 1..={max}")))? as u32;
            }
            other => {
                return Err(ApiError::bad_request(&format!(
                    "unknown query parameter {other:?} (before, limit, thread)"
                )))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
