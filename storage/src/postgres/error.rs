//! Turning driver and pool errors into [`StoreError::Postgres`], deciding which are retryable.
//!
//! Retryable (the service tries the batch again, see `service::writer`): the connection could not
//! be made or broke (I/O errors, a closed connection, a connect or pool timeout, the whole
//! operation timing out), and the server answers that mean "not now": SQLSTATE classes 08
//! (connection exception), 53 (insufficient resources: disk full, out of memory, too many
//! connections) and 58 (system / I/O error), plus serialization failure (40001), deadlock (40P01),
//! lock not available (55P03), query canceled (57014, e.g. `statement_timeout`), the server shutting
//! down or starting (57P01, 57P02, 57P03), and a read-only transaction (25006, a replica during
//! failover). Everything else — constraint violations, invalid data (class 22, e.g. a NUL byte in
//! a text), SQL errors, values that do not decode — is not retryable.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::PoolError;
use tokio_postgres::error::SqlState;

use crate::StoreError;

/// Whether a SQLSTATE says the same statement may succeed later.
pub(crate) fn retryable_sqlstate(code: &SqlState) -> bool {
    let code = code.code();
    matches!(code.get(..2), Some("08" | "53" | "58"))
        || matches!(code, "40001" | "40P01" | "55P03" | "57014" | "57P01" | "57P02" | "57P03" | "25006")
}

/// Whether an error of a statement on an established connection may go away on another attempt.
fn retryable(e: &tokio_postgres::Error) -> bool {
    if let Some(code) = e.code() {
        return retryable_sqlstate(code);
    }
    e.is_closed() || has_io_cause(e)
}

/// Whether an `std::io::Error` is somewhere in the chain of causes.
fn has_io_cause(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = e.source();
    while let Some(c) = cause {
        if c.is::<std::io::Error>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// A driver or pool error shown with its whole chain of causes: the driver's own message is terse
/// ("db error", "error connecting to server") and keeps the server's message in its cause.
#[derive(Debug)]
struct Chain<E>(E);

impl<E: std::error::Error> std::fmt::Display for Chain<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

// No `source()`: the causes are part of the message already.
impl<E: std::error::Error> std::error::Error for Chain<E> {}

/// Wraps an error of a statement run on an established connection.
pub(crate) fn pg_err(context: &'static str, e: tokio_postgres::Error) -> StoreError {
    StoreError::Postgres {
        context,
        retryable: retryable(&e),
        source: Arc::new(Chain(e)),
    }
}

/// Wraps an error of taking a client from the pool, which may have had to open a connection. A
/// connection that could not be made (refused, timed out, server starting) is retryable; the server
/// refusing us for good (authentication failed, no such database: a SQLSTATE outside the retryable
/// ones) is not, nor is a closed pool.
pub(crate) fn pool_err(context: &'static str, e: PoolError) -> StoreError {
    let (retryable, source): (bool, Arc<dyn std::error::Error + Send + Sync>) = match e {
        // The driver's error alone: the pool's message for it repeats it.
        PoolError::Backend(b) => (b.code().is_none_or(retryable_sqlstate), Arc::new(Chain(b))),
        e @ PoolError::Timeout(_) => (true, Arc::new(Chain(e))),
        e @ (PoolError::Closed | PoolError::NoRuntimeSpecified | PoolError::PostCreateHook(_)) => (false, Arc::new(Chain(e))),
    };
    StoreError::Postgres {
        context,
        retryable,
        source,
    }
}

/// The error of an operation that did not finish within `limit` (retryable: the server or the
/// network may be slow or gone; every write is idempotent, so trying again is safe).
pub(crate) fn timeout_err(context: &'static str, limit: Duration) -> StoreError {
    StoreError::Postgres {
        context,
        retryable: true,
        source: Arc::new(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {} ms", limit.as_millis()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_classified() {
        for retry in [
            SqlState::CONNECTION_FAILURE,
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::DISK_FULL,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::QUERY_CANCELED,
            SqlState::IO_ERROR,
            SqlState::READ_ONLY_SQL_TRANSACTION,
        ] {
            assert!(retryable_sqlstate(&retry), "{retry:?} must be retryable");
        }
        for fail in [
            SqlState::UNIQUE_VIOLATION,
            SqlState::NOT_NULL_VIOLATION,
            SqlState::CHARACTER_NOT_IN_REPERTOIRE,
            SqlState::UNTRANSLATABLE_CHARACTER,
            SqlState::NUMERIC_VALUE_OUT_OF_RANGE,
            SqlState::SYNTAX_ERROR,
            SqlState::UNDEFINED_TABLE,
            SqlState::INVALID_PASSWORD,
            SqlState::INVALID_CATALOG_NAME,
        ] {
            assert!(!retryable_sqlstate(&fail), "{fail:?} must not be retryable");
        }
    }

    #[test]
    fn timeouts_are_retryable() {
        let e = timeout_err("write batch", Duration::from_secs(3));
        assert!(e.is_retryable());
        assert!(e.to_string().contains("write batch"), "{e}");
    }
}
