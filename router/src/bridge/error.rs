//! The bridge's error type: where an error came from and whether trying
//! again may help.
//!
//! What must stay true: every fallible bridge call returns [`BridgeError`];
//! [`BridgeError::retryable`] is `true` only when the same call, made again
//! later, may succeed unchanged.

use fred::error::{Error as RedisError, ErrorKind};

/// Where a [`BridgeError`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// The caller passed something unusable (config, message, batch).
    Caller,
    /// Redis, or the network to it.
    Redis,
    /// The bridge itself (stopped, or could not start).
    Internal,
}

/// Why a bridge call failed.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The configuration cannot be used; the message names the field.
    #[error("bridge config `{field}`: {message}")]
    Config {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// A message or batch the bridge cannot publish (a caller bug).
    #[error("bad message: {0}")]
    BadMessage(String),
    /// Redis is unreachable right now; the call was not sent.
    #[error("redis is unreachable (bridge not ready)")]
    Unavailable,
    /// A Redis command failed. For a publish that failed with an I/O error
    /// or a timeout, the script may or may not have run.
    #[error("redis {op}: {source}")]
    Redis {
        /// The operation that failed.
        op: &'static str,
        /// fred's error.
        #[source]
        source: RedisError,
    },
    /// Redis answered with a reply the bridge does not understand.
    #[error("redis {op}: unexpected reply: {detail}")]
    Reply {
        /// The operation whose reply was wrong.
        op: &'static str,
        /// What was wrong with it.
        detail: String,
    },
    /// Redis holds no sequence for the room and the publish asked for a floor
    /// ([`super::SeqFloor::Unknown`]): nothing was published; read the store's highest seq
    /// and publish again with it.
    #[error("redis holds no sequence for this room: the store's highest seq is needed first")]
    FloorNeeded,
    /// The bridge has stopped: its command queue is closed.
    #[error("bridge stopped")]
    Stopped,
    /// The bridge thread could not be started.
    #[error("cannot start the bridge thread: {0}")]
    Thread(#[source] std::io::Error),
}

impl BridgeError {
    /// Wraps a fred error from operation `op`.
    pub(crate) fn redis(op: &'static str, source: RedisError) -> Self {
        Self::Redis { op, source }
    }

    /// A copy for one more waiter (fred's errors clone; an I/O error is
    /// rebuilt from its kind and message).
    pub(crate) fn duplicate(&self) -> Self {
        match self {
            Self::Config { field, message } => Self::Config {
                field,
                message: message.clone(),
            },
            Self::BadMessage(m) => Self::BadMessage(m.clone()),
            Self::Unavailable => Self::Unavailable,
            Self::Redis { op, source } => Self::Redis {
                op,
                source: source.clone(),
            },
            Self::Reply { op, detail } => Self::Reply {
                op,
                detail: detail.clone(),
            },
            Self::Stopped => Self::Stopped,
            Self::FloorNeeded => Self::FloorNeeded,
            Self::Thread(e) => Self::Thread(std::io::Error::new(e.kind(), e.to_string())),
        }
    }

    /// Where the error came from.
    pub fn source_kind(&self) -> ErrorSource {
        match self {
            Self::Config { .. } | Self::BadMessage(_) => ErrorSource::Caller,
            Self::Unavailable | Self::Redis { .. } | Self::Reply { .. } | Self::FloorNeeded => ErrorSource::Redis,
            Self::Stopped | Self::Thread(_) => ErrorSource::Internal,
        }
    }

    /// Whether the same call may succeed if made again later.
    pub fn retryable(&self) -> bool {
        match self {
            Self::Unavailable | Self::FloorNeeded => true,
            Self::Redis { source, .. } => matches!(
                source.kind(),
                ErrorKind::IO
                    | ErrorKind::Timeout
                    | ErrorKind::Canceled
                    | ErrorKind::Backpressure
                    | ErrorKind::Cluster
                    | ErrorKind::Routing
            ),
            Self::Config { .. } | Self::BadMessage(_) | Self::Reply { .. } | Self::Stopped | Self::Thread(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let io = BridgeError::redis("publish", RedisError::new(ErrorKind::IO, "reset"));
        assert!(io.retryable());
        assert_eq!(io.source_kind(), ErrorSource::Redis);
        let bad = BridgeError::redis("publish", RedisError::new(ErrorKind::InvalidArgument, "ERR"));
        assert!(!bad.retryable());
        assert!(BridgeError::Unavailable.retryable());
        assert!(!BridgeError::Stopped.retryable());
        assert_eq!(BridgeError::BadMessage("x".into()).source_kind(), ErrorSource::Caller);
    }
}
