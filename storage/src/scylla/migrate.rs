//! Schema migrations of the cluster store: the files of `storage/schema/`, applied in order, each recorded
//! in `schema_migrations` once all its statements succeeded.
//!
//! Invariants: migrations are numbered 1, 2, ... without gaps and never
//! edited once released (add a new file instead); every statement in them is
//! idempotent, because a migration interrupted halfway runs again from its
//! start; the schema agrees across the cluster before the next file starts.

use std::time::{SystemTime, UNIX_EPOCH};

use scylla::client::session::Session;

use super::exec::{decode, scylla_err, with_retries};
use super::statements::{Migration, VersionRow, INSERT_MIGRATION, SELECT_MIGRATIONS};
use crate::StoreError;

/// One schema file.
#[derive(Debug, Clone, Copy)]
pub struct MigrationFile {
    /// Its number (applied in ascending order).
    pub version: i32,
    /// Its file name.
    pub name: &'static str,
    /// Its CQL, `;`-separated statements.
    pub cql: &'static str,
}

/// The migrations, in order.
pub const MIGRATIONS: &[MigrationFile] = &[
    MigrationFile {
        version: 1,
        name: "001_init.cql",
        cql: include_str!("../../schema/001_init.cql"),
    },
    MigrationFile {
        version: 2,
        name: "002_threads.cql",
        cql: include_str!("../../schema/002_threads.cql"),
    },
    MigrationFile {
        version: 3,
        name: "003_last_seen.cql",
        cql: include_str!("../../schema/003_last_seen.cql"),
    },
];

/// The (table, column) an `ALTER TABLE <table> ADD <column> <type>` statement adds; `None`
/// for any other statement. CQL has no `ADD IF NOT EXISTS`: the runner skips such a
/// statement when the column exists, which makes a re-run migration idempotent.
pub(crate) fn added_column(statement: &str) -> Option<(String, String)> {
    let words: Vec<String> = statement.split_whitespace().map(str::to_ascii_lowercase).collect();
    match words.as_slice() {
        [alter, table, name, add, column, _ty] if alter == "alter" && table == "table" && add == "add" => {
            let name = name.rsplit('.').next().unwrap_or(name).to_owned();
            Some((name, column.clone()))
        }
        _ => None,
    }
}

async fn column_exists(session: &Session, keyspace: &str, table: &str, column: &str) -> Result<bool, StoreError> {
    const TEXT: &str = "SELECT column_name FROM system_schema.columns WHERE keyspace_name = ? AND table_name = ? AND column_name = ?";
    let result = with_retries("read system_schema.columns", || {
        session.query_unpaged(TEXT, (keyspace, table, column))
    })
    .await?;
    let rows = result
        .into_rows_result()
        .map_err(|e| scylla_err("read system_schema.columns", false, e))?;
    Ok(rows.rows_num() > 0)
}

/// The table recording applied migrations (created before any migration runs).
pub const MIGRATIONS_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS schema_migrations (version int PRIMARY KEY, name text, applied_at_ms bigint)";

/// The replication map for a keyspace with `replication_factor` replicas in each datacenter.
pub fn replication_map(replication_factor: u32) -> String {
    format!("{{'class': 'NetworkTopologyStrategy', 'replication_factor': {replication_factor}}}")
}

/// Splits a migration file into statements: drops `--` comments, splits on `;`, skips empty pieces.
/// (The schema files hold no string literal containing `;` or `--`.)
pub fn split_statements(cql: &str) -> Vec<String> {
    let without_comments: String = cql
        .lines()
        .map(|line| match line.find("--") {
            Some(i) => &line[..i],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    without_comments
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Whether `name` is a valid unquoted keyspace name.
pub(crate) fn valid_keyspace(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic()) && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') && name.len() <= 48
}

async fn run_ddl(session: &Session, context: &'static str, text: &str) -> Result<(), StoreError> {
    with_retries(context, || session.query_unpaged(text.to_owned(), ())).await?;
    session
        .await_schema_agreement()
        .await
        .map_err(|e| scylla_err("await schema agreement", true, e))?;
    Ok(())
}

/// Creates `keyspace` (with `replication`, a CQL map such as [`replication_map`]'s) if absent, switches
/// the session to it, and applies the migrations not yet recorded. Returns the versions applied now.
pub async fn migrate(session: &Session, keyspace: &str, replication: &str) -> Result<Vec<i32>, StoreError> {
    if !valid_keyspace(keyspace) {
        return Err(StoreError::Config(format!("invalid keyspace name {keyspace:?}")));
    }
    let create = format!("CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {replication}");
    run_ddl(session, "create keyspace", &create).await?;
    session
        .use_keyspace(keyspace, false)
        .await
        .map_err(|e| scylla_err("use keyspace", false, e))?;
    run_ddl(session, "create schema_migrations", MIGRATIONS_TABLE).await?;
    let result = with_retries(SELECT_MIGRATIONS.name, || session.query_unpaged(SELECT_MIGRATIONS.text, ())).await?;
    let done: Vec<VersionRow> = decode(SELECT_MIGRATIONS.name, result)?;
    let record = session
        .prepare(INSERT_MIGRATION.text)
        .await
        .map_err(|e| scylla_err(INSERT_MIGRATION.name, false, e))?;
    let mut applied = Vec::new();
    for m in MIGRATIONS {
        if done.iter().any(|d| d.version == m.version) {
            continue;
        }
        for statement in split_statements(m.cql) {
            if let Some((table, column)) = added_column(&statement) {
                if column_exists(session, keyspace, &table, &column).await? {
                    continue;
                }
            }
            run_ddl(session, "apply migration", &statement).await?;
        }
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let row = Migration {
            version: m.version,
            name: m.name.to_owned(),
            applied_at_ms: now_ms,
        };
        with_retries(INSERT_MIGRATION.name, || session.execute_unpaged(&record, &row)).await?;
        tracing::info!(version = m.version, name = m.name, "scylla: applied schema migration");
        applied.push(m.version);
    }
    Ok(applied)
}
