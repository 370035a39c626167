//! Which route a method and path name, and who may call it.

use super::{assets, ApiError, Asset};
use crate::ws::handshake::percent_decode;

/// A request the API serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A file of the web page (`/`, `/app.js`, `/style.css`).
    Page(&'static Asset),
    /// `GET /api/openapi.json`.
    OpenApi,
    /// `GET /api/rooms/{room}/messages`: a history page.
    History { room: String },
    /// `POST /api/rooms/{room}/messages`: server-side publish.
    Publish { room: String },
    /// `GET /api/rooms/{room}/presence`.
    RoomPresence { room: String },
    /// `GET /api/users/{user}/presence`: online, last seen.
    UserPresence { user: String },
    /// `POST /api/tokens`: a JWT for a user.
    Tokens,
    /// `POST /api/dev/token`: a token for any user name, on a dev-mode node only.
    DevToken,
    /// `GET /api/admin/shards`: connections and rooms per shard.
    AdminShards,
    /// `POST /api/admin/users/{user}/disconnect`.
    Disconnect { user: String },
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone.
    Open,
    /// An API key, or a user's token (then the WebSocket rules apply).
    KeyOrUser,
    /// An API key only.
    Key,
}

impl Route {
    /// Who may call it.
    pub fn access(&self) -> Access {
        match self {
            Self::Page(_) | Self::OpenApi | Self::DevToken => Access::Open,
            Self::History { .. } | Self::RoomPresence { .. } | Self::UserPresence { .. } => Access::KeyOrUser,
            Self::Publish { .. } | Self::Tokens | Self::AdminShards | Self::Disconnect { .. } => Access::Key,
        }
    }

    /// Whether it carries a JSON body.
    pub fn takes_body(&self) -> bool {
        matches!(self, Self::Publish { .. } | Self::Tokens | Self::DevToken | Self::Disconnect { .. })
    }
}

/// The route of `method path`, or 404 / 405 (with the allowed methods).
pub fn route(method: &str, path: &str) -> Result<Route, ApiError> {
    if let Some(asset) = assets::asset(path) {
        return only(method, "GET", Route::Page(asset));
    }
    let Some(rest) = path.strip_prefix("/api/") else {
        return Err(ApiError::not_found(path));
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let seg = |i: usize| percent_decode(parts[i]).into_owned();
    match parts.as_slice() {
        ["openapi.json"] => only(method, "GET", Route::OpenApi),
        ["tokens"] => only(method, "POST", Route::Tokens),
        ["dev", "token"] => only(method, "POST", Route::DevToken),
        ["admin", "shards"] => only(method, "GET", Route::AdminShards),
        ["admin", "users", u, "disconnect"] if !u.is_empty() => only(method, "POST", Route::Disconnect { user: seg(2) }),
        ["users", u, "presence"] if !u.is_empty() => only(method, "GET", Route::UserPresence { user: seg(1) }),
        ["rooms", r, "presence"] if !r.is_empty() => only(method, "GET", Route::RoomPresence { room: seg(1) }),
        ["rooms", r, "messages"] if !r.is_empty() => match method {
            "GET" => Ok(Route::History { room: seg(1) }),
            "POST" => Ok(Route::Publish { room: seg(1) }),
            _ => Err(ApiError::method("GET, POST")),
        },
        _ => Err(ApiError::not_found(path)),
    }
}

fn only(method: &str, allowed: &'static str, r: Route) -> Result<Route, ApiError> {
    if method == allowed {
        Ok(r)
    } else {
        Err(ApiError::method(allowed))
    }
}
