//! Running statements: the prepared-statement table, bounded retries with exponential backoff, error
//! classification, and row decoding.
//!
//! Invariants:
//! - every statement is prepared once at open, marked idempotent (ids and
//!   values are fixed before the write, so running one twice is harmless) and
//!   given the configured consistency;
//! - a retryable error (timeouts, unavailable, overloaded, broken connection)
//!   is retried at most [`ATTEMPTS`] times in all, waiting [`FIRST_BACKOFF`]
//!   then doubling up to [`MAX_BACKOFF`]; anything else fails at once.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use scylla::client::session::Session;
use scylla::deserialize::row::DeserializeRow;
use scylla::errors::{ExecutionError, RequestAttemptError};
use scylla::frame::types::Consistency;
use scylla::response::query_result::QueryResult;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;

use super::statements::{Cql, ALL_TEXTS};
use crate::StoreError;

/// Attempts of one statement, the first included.
pub(crate) const ATTEMPTS: u32 = 4;
/// Wait before the second attempt.
pub(crate) const FIRST_BACKOFF: Duration = Duration::from_millis(20);
/// Longest wait between attempts.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_millis(1000);

/// Whether the driver's error may go away on another attempt.
pub(crate) fn is_retryable(e: &ExecutionError) -> bool {
    match e {
        ExecutionError::EmptyPlan | ExecutionError::ConnectionPoolError(_) | ExecutionError::RequestTimeout(_) => true,
        ExecutionError::LastAttemptError(attempt) => match attempt {
            RequestAttemptError::DbError(db, _) => db.can_speculative_retry(),
            RequestAttemptError::BrokenConnectionError(_) | RequestAttemptError::UnableToAllocStreamId => true,
            _ => false,
        },
        _ => false,
    }
}

/// Wraps any driver error as a `StoreError::Scylla`.
pub(crate) fn scylla_err(context: &'static str, retryable: bool, e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Scylla {
        context,
        retryable,
        source: Arc::new(e),
    }
}

/// Runs `attempt` until it succeeds, fails with a non-retryable error, or [`ATTEMPTS`] are used.
pub(crate) async fn with_retries<T, F, Fut>(context: &'static str, mut attempt: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ExecutionError>>,
{
    let mut backoff = FIRST_BACKOFF;
    let mut n = 1;
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if n < ATTEMPTS && is_retryable(&e) => {
                tracing::warn!(statement = context, attempt = n, error = %e, "scylla: retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                n += 1;
            }
            Err(e) => {
                let retryable = is_retryable(&e);
                return Err(scylla_err(context, retryable, e));
            }
        }
    }
}

/// Decodes every row of a result as `R`.
pub(crate) fn decode<R>(context: &'static str, result: QueryResult) -> Result<Vec<R>, StoreError>
where
    R: for<'f> DeserializeRow<'f, 'f>,
{
    let rows = result.into_rows_result().map_err(|e| scylla_err(context, false, e))?;
    let iter = rows.rows::<R>().map_err(|e| scylla_err(context, false, e))?;
    iter.collect::<Result<Vec<R>, _>>().map_err(|e| scylla_err(context, false, e))
}

/// The prepared statements of one session, by statement name.
pub(crate) struct Prepared {
    session: Arc<Session>,
    consistency: Consistency,
    by_name: HashMap<&'static str, PreparedStatement>,
}

impl Prepared {
    /// Prepares every statement of [`ALL_TEXTS`], idempotent, at `consistency`.
    pub(crate) async fn prepare_all(session: Arc<Session>, consistency: Consistency) -> Result<Self, StoreError> {
        let mut by_name = HashMap::with_capacity(ALL_TEXTS.len());
        for &(name, text) in ALL_TEXTS {
            let mut ps = session.prepare(text).await.map_err(|e| scylla_err(name, false, e))?;
            ps.set_is_idempotent(true);
            ps.set_consistency(consistency);
            by_name.insert(name, ps);
        }
        Ok(Self {
            session,
            consistency,
            by_name,
        })
    }

    pub(crate) fn session(&self) -> &Session {
        &self.session
    }

    /// The prepared form of `cql`.
    pub(crate) fn get<B, R>(&self, cql: &Cql<B, R>) -> Result<&PreparedStatement, StoreError> {
        // Every `Cql` constant is in ALL_TEXTS (the `statements!` macro declares both), so this finds it.
        self.by_name
            .get(cql.name)
            .ok_or_else(|| StoreError::Internal(format!("statement {} was not prepared", cql.name)))
    }

    /// Runs a statement that returns no rows we use.
    pub(crate) async fn run<B: SerializeRow, R>(&self, cql: &Cql<B, R>, values: &B) -> Result<QueryResult, StoreError> {
        let ps = self.get(cql)?;
        with_retries(cql.name, || self.session.execute_unpaged(ps, values)).await
    }

    /// Runs a select and decodes its rows.
    pub(crate) async fn rows<B: SerializeRow, R>(&self, cql: &Cql<B, R>, values: &B) -> Result<Vec<R>, StoreError>
    where
        R: for<'f> DeserializeRow<'f, 'f>,
    {
        let result = self.run(cql, values).await?;
        decode(cql.name, result)
    }

    /// Runs `cql` once per row as one UNLOGGED batch. The caller keeps the rows within one partition.
    pub(crate) async fn batch<B: SerializeRow>(&self, cql: &Cql<B, ()>, rows: &[&B]) -> Result<(), StoreError> {
        let ps = self.get(cql)?;
        let mut batch = Batch::new(BatchType::Unlogged);
        for _ in rows {
            batch.append_statement(ps.clone());
        }
        batch.set_is_idempotent(true);
        batch.set_consistency(self.consistency);
        with_retries(cql.name, || self.session.batch(&batch, rows)).await.map(drop)
    }
}
