//! [`StoreConfig`]: every setting of the store, with defaults, and its `validate()`.
//!
//! Invariants after `validate()` returns `Ok`: every bound is at least 1, the
//! write queue holds at least one full batch, and the chosen backend is built
//! into this binary with the settings it needs.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::StoreError;

/// Which backend stores the messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// SQLite in `data_dir`: one node, nothing to install.
    #[default]
    Embedded,
    /// A ScyllaDB cluster shared by the nodes.
    Scylla,
    /// A PostgreSQL database shared by the nodes (`postgres_url`).
    Postgres,
}

/// The store's configuration (the `[store]` table of the node's config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// The backend: `"embedded"`, `"scylla"` or `"postgres"`.
    pub store: StoreKind,
    /// Directory of the embedded store (holds `edge.sqlite3` and its WAL).
    pub data_dir: PathBuf,
    /// This node's id, used to tell a clean shutdown from a crash (`begin_run` / `end_run`).
    pub node_id: String,
    /// Most messages written in one batch (one transaction / one round of partition batches).
    pub batch_max_messages: usize,
    /// Longest wait, after the first message of a batch, for more messages before committing, in microseconds
    /// (0 commits whatever is queued at once). The timer has millisecond granularity.
    pub flush_interval_us: u64,
    /// Most writes waiting in the queue; one more is answered `Overloaded`.
    pub queue_capacity: usize,
    /// Most queries waiting or running; one more is answered `Overloaded`.
    pub query_queue_capacity: usize,
    /// Queries run at once (queries on the same room or user run one after another, in order).
    pub query_concurrency: usize,
    /// Attempts of a failing batch (the first included) before every ticket in it completes with the error.
    pub write_attempts: u32,
    /// Keep trying a batch that fails with a retryable error (the store unreachable) until it is
    /// written, instead of failing it after `write_attempts`: later writes wait behind it, up to
    /// `queue_capacity` (a held backlog, for `fast` durability on a shared store).
    pub write_retry_forever: bool,
    /// Wait before the second attempt of a failed batch, in milliseconds; doubles per attempt.
    pub write_retry_backoff_ms: u64,
    /// Longest time `shutdown` waits for the queue to be flushed and the store thread to stop, in milliseconds.
    pub shutdown_timeout_ms: u64,
    /// Embedded: fsync every commit (`synchronous=FULL`, survives power loss) instead of NORMAL (survives process crash).
    pub embedded_sync_full: bool,
    /// Embedded: read-only SQLite connections serving reads alongside the writer.
    pub embedded_read_connections: usize,
    /// Embedded: SQLite page cache of all connections together, MiB (half to the writer).
    pub embedded_cache_mib: u64,
    /// Scylla: contact points, `host:port`.
    pub scylla_contact_points: Vec<String>,
    /// Scylla: the keyspace holding the tables.
    pub scylla_keyspace: String,
    /// Scylla: consistency of every statement (`ONE`, `QUORUM`, `LOCAL_QUORUM`, `ALL`, ...).
    pub scylla_consistency: String,
    /// Scylla: replication factor used when the keyspace is created by a migration.
    pub scylla_replication_factor: u32,
    /// Scylla: apply pending schema migrations when the store opens.
    pub scylla_migrate_on_start: bool,
    /// PostgreSQL: the connection URL, `postgres://user[:password]@host:port/db` (or libpq
    /// `key=value` pairs). Empty by default: required when `store = "postgres"`. Pending
    /// migrations of `storage/schema/postgres/` are applied whenever the store opens.
    pub postgres_url: String,
    /// PostgreSQL: most connections the node keeps open to the database.
    pub postgres_pool_size: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            store: StoreKind::Embedded,
            data_dir: PathBuf::from("data"),
            node_id: "edge-1".to_owned(),
            batch_max_messages: 256,
            flush_interval_us: 1000,
            queue_capacity: 65_536,
            query_queue_capacity: 4096,
            query_concurrency: 16,
            write_attempts: 4,
            write_retry_forever: false,
            write_retry_backoff_ms: 10,
            shutdown_timeout_ms: 10_000,
            embedded_sync_full: false,
            embedded_read_connections: 4,
            embedded_cache_mib: 128,
            scylla_contact_points: vec!["127.0.0.1:9042".to_owned()],
            scylla_keyspace: "edge".to_owned(),
            scylla_consistency: "LOCAL_QUORUM".to_owned(),
            scylla_replication_factor: 1,
            scylla_migrate_on_start: true,
            postgres_url: String::new(),
            postgres_pool_size: 8,
        }
    }
}

fn check(ok: bool, msg: impl FnOnce() -> String) -> Result<(), StoreError> {
    if ok {
        Ok(())
    } else {
        Err(StoreError::Config(msg()))
    }
}

impl StoreConfig {
    /// Checks every bound and the settings of the chosen backend; the error names the field.
    pub fn validate(&self) -> Result<(), StoreError> {
        check(!self.node_id.is_empty(), || "node_id must not be empty".into())?;
        check((1..=65_535).contains(&self.batch_max_messages), || {
            format!("batch_max_messages must be 1..=65535, got {}", self.batch_max_messages)
        })?;
        check(self.flush_interval_us <= 10_000_000, || {
            format!("flush_interval_us must be at most 10000000 (10 s), got {}", self.flush_interval_us)
        })?;
        check(self.queue_capacity >= self.batch_max_messages, || {
            format!(
                "queue_capacity ({}) must be at least batch_max_messages ({})",
                self.queue_capacity, self.batch_max_messages
            )
        })?;
        check(self.query_queue_capacity >= 1, || "query_queue_capacity must be at least 1".into())?;
        check((1..=1024).contains(&self.query_concurrency), || {
            format!("query_concurrency must be 1..=1024, got {}", self.query_concurrency)
        })?;
        check((1..=20).contains(&self.write_attempts), || {
            format!("write_attempts must be 1..=20, got {}", self.write_attempts)
        })?;
        check(self.write_retry_backoff_ms <= 60_000, || {
            "write_retry_backoff_ms must be at most 60000".into()
        })?;
        check(self.shutdown_timeout_ms >= 1, || "shutdown_timeout_ms must be at least 1".into())?;
        match self.store {
            StoreKind::Embedded => {
                check(!self.data_dir.as_os_str().is_empty(), || {
                    "data_dir must not be empty for store = \"embedded\"".into()
                })?;
                check((1..=64).contains(&self.embedded_read_connections), || {
                    format!("embedded_read_connections must be 1..=64, got {}", self.embedded_read_connections)
                })
            }
            StoreKind::Scylla => self.validate_scylla(),
            StoreKind::Postgres => self.validate_postgres(),
        }
    }

    #[cfg(feature = "postgres")]
    fn validate_postgres(&self) -> Result<(), StoreError> {
        self.postgres().validate()
    }

    #[cfg(not(feature = "postgres"))]
    fn validate_postgres(&self) -> Result<(), StoreError> {
        Err(StoreError::Config(
            "store = \"postgres\" but this binary was built without the `postgres` feature".into(),
        ))
    }

    /// The PostgreSQL settings of this config.
    #[cfg(feature = "postgres")]
    pub fn postgres(&self) -> crate::postgres::PostgresConfig {
        crate::postgres::PostgresConfig {
            url: self.postgres_url.clone(),
            pool_size: self.postgres_pool_size,
        }
    }

    #[cfg(feature = "scylla")]
    fn validate_scylla(&self) -> Result<(), StoreError> {
        self.scylla().validate()
    }

    #[cfg(not(feature = "scylla"))]
    fn validate_scylla(&self) -> Result<(), StoreError> {
        Err(StoreError::Config(
            "store = \"scylla\" but this binary was built without the `scylla` feature".into(),
        ))
    }

    /// The Scylla settings of this config.
    #[cfg(feature = "scylla")]
    pub fn scylla(&self) -> crate::scylla::ScyllaConfig {
        crate::scylla::ScyllaConfig {
            contact_points: self.scylla_contact_points.clone(),
            keyspace: self.scylla_keyspace.clone(),
            consistency: self.scylla_consistency.clone(),
            replication_factor: self.scylla_replication_factor,
        }
    }

    /// The embedded settings of this config.
    pub fn embedded(&self) -> crate::embedded::EmbeddedOptions {
        crate::embedded::EmbeddedOptions {
            sync_full: self.embedded_sync_full,
            read_connections: self.embedded_read_connections,
            cache_kib: self.embedded_cache_mib.saturating_mul(1024),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        StoreConfig::default().validate().expect("defaults validate");
    }

    #[test]
    fn errors_name_the_field() {
        let cfg = StoreConfig {
            batch_max_messages: 0,
            ..StoreConfig::default()
        };
        assert!(cfg.validate().expect_err("0 batch").to_string().contains("batch_max_messages"));
        let cfg = StoreConfig {
            queue_capacity: 10,
            batch_max_messages: 100,
            ..StoreConfig::default()
        };
        assert!(cfg.validate().expect_err("queue < batch").to_string().contains("queue_capacity"));
        let cfg = StoreConfig {
            data_dir: PathBuf::new(),
            ..StoreConfig::default()
        };
        assert!(cfg.validate().expect_err("empty dir").to_string().contains("data_dir"));
    }

    #[cfg(feature = "scylla")]
    #[test]
    fn scylla_settings_are_checked() {
        let base = StoreConfig {
            store: StoreKind::Scylla,
            ..StoreConfig::default()
        };
        base.validate().expect("default scylla settings validate");
        let bad = StoreConfig {
            scylla_consistency: "SOMETIMES".into(),
            ..base.clone()
        };
        assert!(bad.validate().expect_err("consistency").to_string().contains("consistency"));
        let bad = StoreConfig {
            scylla_keyspace: "no-dashes".into(),
            ..base.clone()
        };
        assert!(bad.validate().expect_err("keyspace").to_string().contains("keyspace"));
        let bad = StoreConfig {
            scylla_contact_points: vec![],
            ..base
        };
        assert!(bad.validate().expect_err("contact points").to_string().contains("contact_points"));
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn postgres_settings_are_checked() {
        let base = StoreConfig {
            store: StoreKind::Postgres,
            postgres_url: "postgres://edge@127.0.0.1:5432/edge".into(),
            ..StoreConfig::default()
        };
        base.validate().expect("a postgres URL validates");
        assert_eq!(base.postgres_pool_size, 8, "default pool size");
        for url in ["", "not a url", "postgres://edge@127.0.0.1:99999/edge"] {
            let bad = StoreConfig {
                postgres_url: url.into(),
                ..base.clone()
            };
            assert!(bad.validate().expect_err(url).to_string().contains("postgres_url"), "{url:?}");
        }
        let bad = StoreConfig {
            postgres_pool_size: 0,
            ..base.clone()
        };
        assert!(bad.validate().expect_err("pool 0").to_string().contains("postgres_pool_size"));
        let embedded = StoreConfig {
            postgres_url: "not a url".into(),
            ..StoreConfig::default()
        };
        embedded.validate().expect("postgres settings are not checked for another backend");
        let cfg: StoreConfig =
            toml::from_str("store = \"postgres\"\npostgres_url = \"postgres://u@h/db\"\npostgres_pool_size = 3").expect("parse");
        assert_eq!(
            (cfg.store, cfg.postgres_url.as_str(), cfg.postgres_pool_size),
            (StoreKind::Postgres, "postgres://u@h/db", 3)
        );
    }

    #[test]
    fn partial_toml_keeps_defaults_and_rejects_unknown_fields() {
        let cfg: StoreConfig = toml::from_str("batch_max_messages = 64\nstore = \"embedded\"").expect("parse");
        assert_eq!(cfg.batch_max_messages, 64);
        assert_eq!(cfg.queue_capacity, StoreConfig::default().queue_capacity);
        assert!(
            toml::from_str::<StoreConfig>("batch_max = 64").is_err(),
            "a misspelt field must not be ignored"
        );
    }
}
