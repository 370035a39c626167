//! The cluster store on ScyllaDB (cargo feature `scylla`).
//!
//! Layout: messages are partitioned by `(room, bucket)` with
//! `bucket = seq / BUCKET_SIZE`, so no partition grows past [`BUCKET_SIZE`]
//! messages, clustered by seq descending so a history page is a slice of one
//! or two partitions; `room_buckets` lists the buckets of a room (written
//! before the messages), which history and catch-up walk. Schema in
//! `storage/schema/` (see [`migrate`]), statements in `statements.rs`.
//!
//! Writes: one unlogged batch per partition (never across partitions),
//! partitions written concurrently (at most [`PARTITION_CONCURRENCY`] at
//! once), every statement idempotent (ids are fixed before the write) and
//! retried with backoff on retryable errors. All statements run at the
//! configured consistency.
//!
//! Differences from the embedded store, documented rather than hidden:
//! `last_seq` is derived from the newest stored message (CQL cannot "set to
//! max" without a lightweight transaction); marks move forward through
//! `USING TIMESTAMP <mark>` (last-write-wins keeps the highest); a room's
//! first epoch is set with `IF NOT EXISTS` (a lightweight transaction, once per room).
//!
//! There is no Scylla server on the development machine: the statements are
//! checked offline against the schema (`cql_check`, in the unit tests) and
//! the conformance suite runs against a real cluster when `SCYLLA_URI` is set.

#[cfg(test)]
mod cql_check;
mod exec;
mod messages;
mod migrate;
mod ops;
mod statements;

use std::sync::Arc;

use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::frame::types::Consistency;

pub use migrate::{migrate, replication_map, split_statements, MigrationFile, MIGRATIONS, MIGRATIONS_TABLE};

use crate::StoreError;
use exec::{scylla_err, Prepared};

/// Seqs per message partition: partition `(room, seq / BUCKET_SIZE)`. With frames of ~0.5 KB a full
/// partition is ~0.5 MB, far below Scylla's large-partition warnings, and a 50-message history page
/// touches at most two partitions. Changing it requires a data migration.
pub const BUCKET_SIZE: u64 = 1000;

/// Message partitions (and bucket-index writes, client-id writes) written at once by one `write_batch`.
pub const PARTITION_CONCURRENCY: usize = 32;

/// Most statements in one unlogged batch (larger partitions of a batch are split).
pub const MAX_BATCH_STATEMENTS: usize = 64;

/// Most frame bytes in one unlogged batch (Scylla warns on batches above 128 KiB by default).
pub const MAX_BATCH_BYTES: usize = 96 * 1024;

/// How to reach the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScyllaConfig {
    /// Contact points, `host:port`.
    pub contact_points: Vec<String>,
    /// The keyspace holding the tables.
    pub keyspace: String,
    /// Consistency of every statement: `ONE`, `QUORUM`, `LOCAL_QUORUM`, ...
    pub consistency: String,
    /// Replication factor used when a migration creates the keyspace.
    pub replication_factor: u32,
}

impl ScyllaConfig {
    /// Checks the settings; the error names the field.
    pub fn validate(&self) -> Result<(), StoreError> {
        if self.contact_points.is_empty() || self.contact_points.iter().any(String::is_empty) {
            return Err(StoreError::Config("scylla_contact_points must list at least one host:port".into()));
        }
        if !migrate::valid_keyspace(&self.keyspace) {
            return Err(StoreError::Config(format!(
                "scylla_keyspace {:?} must be 1..=48 ASCII letters, digits or '_', starting with a letter",
                self.keyspace
            )));
        }
        parse_consistency(&self.consistency)?;
        if self.replication_factor == 0 {
            return Err(StoreError::Config("scylla_replication_factor must be at least 1".into()));
        }
        Ok(())
    }
}

/// Parses a consistency level name (case-insensitive).
pub fn parse_consistency(name: &str) -> Result<Consistency, StoreError> {
    Ok(match name.to_ascii_uppercase().as_str() {
        "ANY" => Consistency::Any,
        "ONE" => Consistency::One,
        "TWO" => Consistency::Two,
        "THREE" => Consistency::Three,
        "QUORUM" => Consistency::Quorum,
        "ALL" => Consistency::All,
        "LOCAL_QUORUM" => Consistency::LocalQuorum,
        "EACH_QUORUM" => Consistency::EachQuorum,
        "LOCAL_ONE" => Consistency::LocalOne,
        _ => {
            return Err(StoreError::Config(format!(
                "scylla_consistency {name:?} is not one of ANY, ONE, TWO, THREE, QUORUM, ALL, LOCAL_QUORUM, EACH_QUORUM, LOCAL_ONE"
            )))
        }
    })
}

/// Opens a session to the cluster (no keyspace selected). Must run inside the tokio runtime that will
/// use the session: the driver keeps its connections in tasks of that runtime.
pub async fn connect(cfg: &ScyllaConfig) -> Result<Session, StoreError> {
    cfg.validate()?;
    SessionBuilder::new()
        .known_nodes(&cfg.contact_points)
        .build()
        .await
        .map_err(|e| scylla_err("connect", true, e))
}

/// The Scylla-backed [`crate::MessageStore`]. Cheap to clone.
#[derive(Clone)]
pub struct ScyllaStore {
    prepared: Arc<Prepared>,
}

impl std::fmt::Debug for ScyllaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaStore")
            .field("keyspace", &self.prepared.session().get_keyspace())
            .finish()
    }
}

impl ScyllaStore {
    /// Connects, and prepares every statement in `cfg.keyspace` (which must be migrated already, see [`migrate`]).
    pub async fn connect(cfg: &ScyllaConfig) -> Result<Self, StoreError> {
        let session = connect(cfg).await?;
        Self::open(Arc::new(session), cfg).await
    }

    /// Uses an existing session: selects `cfg.keyspace` and prepares every statement.
    pub async fn open(session: Arc<Session>, cfg: &ScyllaConfig) -> Result<Self, StoreError> {
        let consistency = parse_consistency(&cfg.consistency)?;
        match session.use_keyspace(cfg.keyspace.as_str(), false).await {
            Ok(()) => {}
            Err(e) => return Err(scylla_err("use keyspace (run the migrations first)", false, e)),
        }
        let prepared = Prepared::prepare_all(session, consistency).await?;
        Ok(Self {
            prepared: Arc::new(prepared),
        })
    }
}
