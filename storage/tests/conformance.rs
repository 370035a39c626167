//! The conformance suite against each backend: the embedded store always (a fresh temp dir per case),
//! PostgreSQL always (a fresh database per case, on `PG_URL`'s server or on a private server started
//! for this binary, see `support/pg.rs`), Scylla when `SCYLLA_URI` (`host:port`) is set.

#[cfg(feature = "postgres")]
#[path = "support/pg.rs"]
mod pg;

use storage::conformance;
use storage::embedded::{EmbeddedOptions, EmbeddedStore};

fn open_embedded() -> (tempfile::TempDir, EmbeddedStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path(), &EmbeddedOptions::default()).expect("open embedded store");
    (dir, store)
}

/// A fresh database, and the store on it opened as a node opens it (`AnyStore::open`: validate,
/// connect, migrate, prepare). Declare the database first so the store's pool closes before it is dropped.
#[cfg(feature = "postgres")]
async fn open_postgres() -> (pg::TestDb, storage::AnyStore) {
    let db = pg::TestDb::create();
    let cfg = storage::StoreConfig {
        store: storage::StoreKind::Postgres,
        postgres_url: db.url.clone(),
        postgres_pool_size: 4,
        ..storage::StoreConfig::default()
    };
    let store = storage::AnyStore::open(&cfg).await.expect("open the postgres store");
    (db, store)
}

macro_rules! conformance_cases {
    ($($case:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let (_dir, store) = open_embedded();
                conformance::$case(&store, "t").await;
            }
        )+

        /// Every case again on PostgreSQL, each in a database of its own.
        #[cfg(feature = "postgres")]
        mod postgres {
            use storage::conformance;

            $(
                #[tokio::test]
                async fn $case() {
                    let (_db, store) = super::open_postgres().await;
                    conformance::$case(&store, "t").await;
                }
            )+
        }

        #[test]
        fn every_case_runs_here() {
            let here = [$(stringify!($case)),+];
            assert_eq!(here.as_slice(), conformance::CASES, "add new conformance cases to this file");
        }
    };
}

conformance_cases!(
    verbatim_frames,
    idempotent_rewrite,
    history_paging,
    history_edges,
    range_after_catch_up,
    room_state_and_epoch,
    client_id_lookup,
    marks_move_forward,
    reactions_are_a_set,
    reaction_counts_per_message,
    replace_frame_in_place,
    thread_pages_and_reply_counts,
    user_rooms_with_marks,
    last_seen_moves_forward,
    run_flags,
    many_rooms_interleaved,
);

#[tokio::test]
async fn all_cases_share_one_embedded_store() {
    // Prefixes keep the cases apart, as they must on a shared Scylla cluster.
    let (_dir, store) = open_embedded();
    conformance::run_all(&store, "shared").await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn all_cases_share_one_postgres_database() {
    // As on a shared cluster: the prefixes alone keep the cases apart.
    let (_db, store) = open_postgres().await;
    conformance::run_all(&store, "shared").await;
}

#[cfg(feature = "scylla")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scylla_conformance() {
    use std::io::Write;
    use std::sync::Arc;
    use storage::scylla::{connect, migrate, replication_map, ScyllaConfig, ScyllaStore};

    let Ok(uri) = std::env::var("SCYLLA_URI") else {
        // Straight to stderr: libtest's capture would hide a println! of a passing test.
        let _ = writeln!(std::io::stderr(), "skipped: SCYLLA_URI not set");
        return;
    };
    let cfg = ScyllaConfig {
        contact_points: vec![uri],
        keyspace: "edge_conformance".into(),
        consistency: "ONE".into(),
        replication_factor: 1,
    };
    let session = Arc::new(connect(&cfg).await.expect("connect to SCYLLA_URI"));
    migrate(&session, &cfg.keyspace, &replication_map(1)).await.expect("migrate");
    migrate(&session, &cfg.keyspace, &replication_map(1))
        .await
        .expect("migrate again is a no-op");
    let store = ScyllaStore::open(session, &cfg).await.expect("prepare statements");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    conformance::run_all(&store, &format!("run{nanos}")).await;
}
