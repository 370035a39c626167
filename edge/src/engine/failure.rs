//! Why a request could not be served, with the error's type kept all the way
//! to the reply, and the one retry policy: whether a client should retry
//! (read from the error's own `retryable` classification, never from its
//! text) and after how long.
//!
//! Refusals come in two kinds:
//! - [`Busy`]: a bounded queue or budget on the way is full right now
//!   (`overloaded`, always worth a retry after the kind's hint);
//! - [`Failure`]: a dependency answered with an error or not at all
//!   (`unavailable` with `retry_ms` when trying again may succeed,
//!   `internal` without it when it cannot).

use bytes::Bytes;
use router::bridge::BridgeError;
use router::{Refusal, RefusalCode};
use storage::StoreError;

use crate::protocol::{server, ErrorCode};

/// A bounded queue or budget that refused a request for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// A cross-core ring is congested, or the connection's replies are still being written.
    Shard,
    /// The store's queue is full, or the room is loading from it.
    Store,
    /// A room's publish queue to Redis is full, or its `client_id` is being sequenced.
    Publish,
}

impl Busy {
    /// The `retry_ms` hint for this kind of refusal: the one table of them.
    pub const fn retry_ms(self) -> u64 {
        match self {
            Self::Shard => 100,
            Self::Store => 200,
            Self::Publish => 300,
        }
    }

    /// The `overloaded` error frame for request `req`.
    pub fn reply(self, req: Option<&str>, message: &str) -> Bytes {
        server::error(req, ErrorCode::Overloaded, message, Some(self.retry_ms()))
    }

    /// The refusal as a room's owner sends it to a member shard (see [`Failure::Owner`]).
    pub fn refusal(self, message: &str) -> Refusal {
        Refusal {
            code: RefusalCode::Overloaded,
            retry_ms: Some(self.retry_ms()),
            message: message.to_owned(),
        }
    }
}

/// The `retry_ms` hint when Redis failed or did not answer in time.
pub const REDIS_RETRY_MS: u64 = 500;

/// A dependency that failed a request.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The message store answered with an error.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The Redis bridge answered with an error.
    #[error("{0}")]
    Redis(#[from] BridgeError),
    /// Redis did not answer within the configured time.
    #[error("Redis did not answer in time")]
    RedisTimedOut,
    /// The shared store did not answer a cluster's read or change within the configured time.
    #[error("the store did not answer in time")]
    StoreTimedOut,
    /// The room's owner shard refused (its store failed or a queue there was full), as
    /// it decided and worded it on its side of the mesh.
    #[error("{}", .0.message)]
    Owner(Refusal),
    /// A bounded queue on the way (a shard's queue to the shared store) was full: `overloaded`.
    #[error("its queue is full, retry")]
    Busy(Busy),
}

impl Failure {
    /// Whether the same request, made again later, may succeed.
    pub fn retryable(&self) -> bool {
        match self {
            Self::Store(e) => e.is_retryable(),
            Self::Redis(e) => e.retryable(),
            Self::RedisTimedOut | Self::StoreTimedOut | Self::Busy(_) => true,
            Self::Owner(r) => r.code != RefusalCode::Internal,
        }
    }

    /// The `retry_ms` hint, for a retryable failure.
    pub fn retry_ms(&self) -> Option<u64> {
        match self {
            _ if !self.retryable() => None,
            Self::Store(_) | Self::StoreTimedOut => Some(Busy::Store.retry_ms()),
            Self::Redis(_) | Self::RedisTimedOut => Some(REDIS_RETRY_MS),
            Self::Owner(r) => r.retry_ms,
            Self::Busy(b) => Some(b.retry_ms()),
        }
    }

    /// The error frame for request `req`: `what` says what could not be done (an owner's
    /// refusal already says it).
    pub fn reply(&self, req: Option<&str>, what: &str) -> Bytes {
        if let Self::Owner(r) = self {
            let code = match r.code {
                RefusalCode::Overloaded => ErrorCode::Overloaded,
                RefusalCode::Unavailable => ErrorCode::Unavailable,
                RefusalCode::Internal => ErrorCode::Internal,
            };
            return server::error(req, code, &r.message, r.retry_ms);
        }
        let code = match self {
            Self::Busy(_) => ErrorCode::Overloaded,
            _ if self.retryable() => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        };
        server::error(req, code, &format!("{what}: {self}"), self.retry_ms())
    }

    /// The failure as a room's owner sends it to a member shard, worded with `what`.
    pub fn refusal(&self, what: &str) -> Refusal {
        let code = match self {
            Self::Busy(_) => RefusalCode::Overloaded,
            _ if self.retryable() => RefusalCode::Unavailable,
            _ => RefusalCode::Internal,
        };
        Refusal {
            code,
            retry_ms: self.retry_ms(),
            message: format!("{what}: {self}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(b: &Bytes) -> serde_json::Value {
        serde_json::from_slice(b).expect("json")
    }

    #[test]
    fn retry_is_decided_by_the_errors_own_classification() {
        let busy = Failure::Store(StoreError::Injected("disk busy"));
        assert!(busy.retryable());
        let v = frame(&busy.reply(Some("7"), "history store unavailable"));
        assert_eq!(v["code"], "unavailable");
        assert_eq!(v["retry_ms"], Busy::Store.retry_ms());
        assert_eq!(v["id"], 7, "the id is echoed as the raw JSON it came as");
        assert!(v["message"].as_str().is_some_and(|m| m.starts_with("history store unavailable: ")));

        let broken = Failure::Store(StoreError::OutOfRange("seq".into()));
        assert!(!broken.retryable());
        let v = frame(&broken.reply(None, "message not stored"));
        assert_eq!(v["code"], "internal");
        assert!(v.get("retry_ms").is_none(), "no retry hint when a retry cannot help: {v}");

        assert!(Failure::Redis(BridgeError::Unavailable).retryable());
        assert!(!Failure::Redis(BridgeError::Stopped).retryable());
        assert_eq!(Failure::RedisTimedOut.retry_ms(), Some(REDIS_RETRY_MS));
    }

    #[test]
    fn an_owners_refusal_reads_on_the_member_side_as_it_would_have_on_the_owners() {
        let store = Failure::Store(StoreError::Injected("disk busy"));
        let remote = Failure::Owner(store.refusal("history store unavailable"));
        assert_eq!(
            frame(&remote.reply(Some("1"), "ignored")),
            frame(&store.reply(Some("1"), "history store unavailable"))
        );
        let broken = Failure::Owner(Failure::Store(StoreError::OutOfRange("seq".into())).refusal("x"));
        assert!(!broken.retryable());
        assert_eq!(frame(&broken.reply(None, "y"))["code"], "internal");
        let busy = Failure::Owner(Busy::Store.refusal("room is loading, retry"));
        assert_eq!(
            frame(&busy.reply(Some("2"), "z")),
            frame(&Busy::Store.reply(Some("2"), "room is loading, retry"))
        );
    }

    #[test]
    fn busy_is_always_overloaded_with_its_hint() {
        let v = frame(&Busy::Publish.reply(Some("\"x\""), "queue full"));
        assert_eq!((v["code"].as_str(), v["retry_ms"].as_u64()), (Some("overloaded"), Some(300)));
        // A full queue met as a failure on the way (a shard's queue to the shared store).
        let full = Failure::Busy(Busy::Store);
        let v = frame(&full.reply(Some("3"), "message not changed"));
        assert_eq!((v["code"].as_str(), v["retry_ms"].as_u64()), (Some("overloaded"), Some(200)));
        assert_eq!(v["message"], "message not changed: its queue is full, retry");
        let remote = Failure::Owner(full.refusal("read mark not stored"));
        assert_eq!(frame(&remote.reply(Some("3"), "ignored"))["code"], "overloaded");
    }
}
