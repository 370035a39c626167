//! The client protocol v1 (`shared/PROTOCOL.md`), sans-IO: [`client`] parses
//! client frames (borrowing from the input where it can), [`server`] renders
//! server frames straight to bytes. What must stay true: no client input
//! panics; a request's `id` is echoed byte for byte; renderers emit valid JSON.

pub mod client;
pub mod server;

/// The protocol's error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// Malformed or unsupported request.
    BadRequest,
    /// Not authenticated or bad token.
    Unauthorized,
    /// Authenticated but not allowed.
    Forbidden,
    /// The target does not exist (e.g. leaving a room not joined).
    NotFound,
    /// Over a size limit.
    TooLarge,
    /// Over the rate limit; carries `retry_ms`.
    RateLimited,
    /// The server is busy; carries `retry_ms`.
    Overloaded,
    /// A dependency is down; retry.
    Unavailable,
    /// A bug on our side.
    Internal,
}

impl ErrorCode {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::TooLarge => "too_large",
            Self::RateLimited => "rate_limited",
            Self::Overloaded => "overloaded",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }
}

/// What a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Plain text (the default).
    Text,
    /// A file reference in `file`.
    File,
}

impl Kind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::File => "file",
        }
    }
}
