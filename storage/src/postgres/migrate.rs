//! Schema migrations of the PostgreSQL store: the files of `storage/schema/postgres/`, applied in order,
//! each in its own transaction together with its row in `schema_migrations`.
//!
//! Invariants:
//! - migrations are numbered 1, 2, ... without gaps and never edited once released (add a file);
//! - a migration and its `schema_migrations` row commit together or not at all (PostgreSQL DDL is
//!   transactional), so a crash leaves the database at one version or the next, never between;
//! - every migration transaction first takes the same transaction-scoped advisory lock
//!   ([`MIGRATION_LOCK`]), so nodes migrating one database at once run one after another: each
//!   re-reads the applied versions under the lock and applies only what is still missing;
//! - versions recorded in the database that this binary does not know (a newer binary migrated
//!   it) are left alone: migrations must keep the schema usable by the previous release.

use tokio_postgres::Client;

use super::error::pg_err;
use crate::StoreError;

/// One schema file.
#[derive(Debug, Clone, Copy)]
pub struct MigrationFile {
    /// Its number (applied in ascending order).
    pub version: i32,
    /// Its file name in `storage/schema/postgres/`.
    pub name: &'static str,
    /// Its SQL: any number of `;`-separated statements, run as one simple-query batch.
    pub sql: &'static str,
}

/// The migrations, in order.
pub const MIGRATIONS: &[MigrationFile] = &[MigrationFile {
    version: 1,
    name: "001_init.sql",
    sql: include_str!("../../schema/postgres/001_init.sql"),
}];

/// The key of the advisory lock every migration transaction takes (`pg_advisory_xact_lock`), the
/// bytes of "edgemigr". Advisory locks are per database, so only migrations of the same database wait.
pub const MIGRATION_LOCK: i64 = 0x6564_6765_6d69_6772;

/// The table recording applied migrations (created, under the lock, before any migration runs).
pub const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

/// Applies the migrations of [`MIGRATIONS`] the database lacks, in order, each in its own transaction
/// under [`MIGRATION_LOCK`]. Returns the versions applied by this call (empty when up to date).
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, StoreError> {
    migrate_files(client, MIGRATIONS).await
}

/// [`migrate`] with an explicit list of files (sorted by version); used by the tests.
pub async fn migrate_files(client: &mut Client, files: &[MigrationFile]) -> Result<Vec<i32>, StoreError> {
    check_numbering(files)?;
    // A first look without the lock: an up-to-date database (the common case) takes no lock at all.
    let before = applied_versions(client).await?;
    let mut applied = Vec::new();
    for m in files.iter().filter(|m| !before.contains(&m.version)) {
        let tx = client.transaction().await.map_err(|e| pg_err("begin migration", e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(|e| pg_err("take the migration lock", e))?;
        tx.batch_execute(MIGRATIONS_TABLE)
            .await
            .map_err(|e| pg_err("create schema_migrations", e))?;
        let done = tx
            .query_opt("SELECT 1 FROM schema_migrations WHERE version = $1", &[&m.version])
            .await
            .map_err(|e| pg_err("read schema_migrations", e))?
            .is_some();
        if done {
            // Another node applied it since the first look. Dropping the transaction would roll it
            // back as well; say so explicitly.
            tx.rollback().await.map_err(|e| pg_err("end migration check", e))?;
            continue;
        }
        tx.batch_execute(m.sql).await.map_err(|e| pg_err("apply migration", e))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&m.version, &m.name],
        )
        .await
        .map_err(|e| pg_err("record migration", e))?;
        tx.commit().await.map_err(|e| pg_err("commit migration", e))?;
        tracing::info!(version = m.version, name = m.name, "postgres: applied schema migration");
        applied.push(m.version);
    }
    warn_about_unknown_versions(client, files).await?;
    Ok(applied)
}

/// The versions recorded in `schema_migrations`, ascending (empty when the table does not exist).
pub async fn applied_versions(client: &Client) -> Result<Vec<i32>, StoreError> {
    let exists = client
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
        .await
        .map_err(|e| pg_err("look for schema_migrations", e))?
        .try_get::<_, bool>(0)
        .map_err(|e| pg_err("look for schema_migrations", e))?;
    if !exists {
        return Ok(Vec::new());
    }
    let rows = client
        .query("SELECT version FROM schema_migrations ORDER BY version", &[])
        .await
        .map_err(|e| pg_err("read schema_migrations", e))?;
    rows.iter()
        .map(|r| r.try_get::<_, i32>(0).map_err(|e| pg_err("read schema_migrations", e)))
        .collect()
}

async fn warn_about_unknown_versions(client: &Client, files: &[MigrationFile]) -> Result<(), StoreError> {
    let known = files.last().map_or(0, |m| m.version);
    let newer: Vec<i32> = applied_versions(client).await?.into_iter().filter(|v| *v > known).collect();
    if !newer.is_empty() {
        tracing::warn!(
            ?newer,
            known,
            "postgres: the database has schema migrations this binary does not know (a newer release applied them)"
        );
    }
    Ok(())
}

/// Refuses a list whose versions are not 1, 2, 3, ... in order.
fn check_numbering(files: &[MigrationFile]) -> Result<(), StoreError> {
    for (i, m) in files.iter().enumerate() {
        if usize::try_from(m.version).ok() != Some(i + 1) {
            return Err(StoreError::Internal(format!(
                "postgres migration {} has version {}, expected {}",
                m.name,
                m.version,
                i + 1
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_file_is_listed_in_order() {
        check_numbering(MIGRATIONS).expect("numbered 1, 2, ...");
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/postgres");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .expect("schema/postgres")
            .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        on_disk.sort();
        let listed: Vec<&str> = MIGRATIONS.iter().map(|m| m.name).collect();
        assert_eq!(on_disk, listed, "list every file of schema/postgres in MIGRATIONS");
        for m in MIGRATIONS {
            assert!(
                m.name.starts_with(&format!("{:03}_", m.version)),
                "{} must start with its version",
                m.name
            );
        }
    }

    #[test]
    fn gaps_are_refused() {
        let files = [
            MigrationFile {
                version: 1,
                name: "001_a.sql",
                sql: "",
            },
            MigrationFile {
                version: 3,
                name: "003_b.sql",
                sql: "",
            },
        ];
        assert!(check_numbering(&files).is_err());
    }
}
