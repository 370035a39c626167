//! The crate's one error type, [`StoreError`], and the queue-full answer [`Overloaded`].
//!
//! Invariants: every error says where it came from ([`ErrorSource`]) and whether
//! trying again may succeed ([`StoreError::is_retryable`]). Errors are `Clone`
//! because one failed batch completes every ticket in it with the same error;
//! underlying errors are therefore kept behind an `Arc`.

use std::sync::Arc;

/// Where an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// The embedded SQLite store or its files.
    Embedded,
    /// The Scylla cluster or its driver.
    Scylla,
    /// The PostgreSQL server, its connection pool or its driver.
    Postgres,
    /// The configuration given to the store.
    Config,
    /// The store service itself (its thread, its queues, shutdown).
    Internal,
}

/// An error of the message store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// SQLite returned an error.
    #[error("embedded store: {context}: {source}")]
    Embedded {
        /// What the store was doing.
        context: &'static str,
        /// Whether the operation may succeed when tried again (busy, locked, I/O).
        retryable: bool,
        /// The SQLite error.
        #[source]
        source: Arc<rusqlite::Error>,
    },
    /// A file-system operation failed.
    #[error("embedded store: {context}: {source}")]
    Io {
        /// What the store was doing.
        context: &'static str,
        /// The I/O error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The Scylla driver returned an error.
    #[error("scylla: {context}: {source}")]
    Scylla {
        /// What the store was doing.
        context: &'static str,
        /// Whether the operation may succeed when tried again (timeouts, unavailable, broken connections).
        retryable: bool,
        /// The driver's error.
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// The PostgreSQL server, the connection pool or the driver returned an error.
    #[error("postgres: {context}: {source}")]
    Postgres {
        /// What the store was doing.
        context: &'static str,
        /// Whether the operation may succeed when tried again (connection failures, timeouts,
        /// serialization failures, deadlocks, a server shutting down or out of resources).
        retryable: bool,
        /// The driver's (or the pool's) error.
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// The configuration is invalid.
    #[error("invalid store config: {0}")]
    Config(String),
    /// A value could not be stored or read back as it is (a seq above `i64::MAX`, a negative stored number).
    #[error("store data out of range: {0}")]
    OutOfRange(String),
    /// The store service is shutting down and did not run the request.
    #[error("store is shutting down")]
    ShuttingDown,
    /// The store service failed (its thread could not start, panicked, or did not stop in time).
    #[error("store service: {0}")]
    Internal(String),
    /// A test double failed on purpose (used by the test suites' wrappers).
    #[error("injected failure: {0}")]
    Injected(&'static str),
}

impl StoreError {
    /// Where the error came from.
    pub fn source_kind(&self) -> ErrorSource {
        match self {
            Self::Embedded { .. } | Self::Io { .. } => ErrorSource::Embedded,
            Self::Scylla { .. } => ErrorSource::Scylla,
            Self::Postgres { .. } => ErrorSource::Postgres,
            Self::Config(_) => ErrorSource::Config,
            Self::OutOfRange(_) | Self::ShuttingDown | Self::Internal(_) | Self::Injected(_) => ErrorSource::Internal,
        }
    }

    /// Whether trying the same operation again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Embedded { retryable, .. } | Self::Scylla { retryable, .. } | Self::Postgres { retryable, .. } => *retryable,
            Self::Io { .. } | Self::Injected(_) => true,
            Self::Config(_) | Self::OutOfRange(_) | Self::ShuttingDown | Self::Internal(_) => false,
        }
    }

    /// Wraps a SQLite error, classifying busy/locked/I/O/full as retryable.
    pub(crate) fn sqlite(context: &'static str, e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode as C;
        let retryable = matches!(
            e.sqlite_error_code(),
            Some(C::DatabaseBusy | C::DatabaseLocked | C::SystemIoFailure | C::DiskFull | C::OutOfMemory)
        );
        Self::Embedded {
            context,
            retryable,
            source: Arc::new(e),
        }
    }

    /// Wraps an I/O error.
    pub(crate) fn io(context: &'static str, e: std::io::Error) -> Self {
        Self::Io {
            context,
            source: Arc::new(e),
        }
    }
}

/// The store's queue for this kind of request is full (or the store is shutting down); the request was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("store overloaded: queue full")]
pub struct Overloaded;

/// Converts a `u64` seq/mark/time to the `i64` every backend stores, refusing values above `i64::MAX`.
pub(crate) fn to_i64(what: &'static str, v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::OutOfRange(format!("{what} {v} is above i64::MAX")))
}

/// Converts a stored `i64` back to `u64`, refusing negative values (which the store never writes).
pub(crate) fn to_u64(what: &'static str, v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::OutOfRange(format!("stored {what} {v} is negative")))
}
