//! PostgreSQL-specific behaviour beyond the conformance suite: migrations (once, concurrently, in a
//! transaction), `edge migrate`'s report, error classification (refused connections, killed
//! sessions, bad data), bytewise ordering under a non-C locale, the store service on top of it, and
//! (ignored by default) a `write_batch` throughput measurement.
//!
//! Each test gets a fresh database (`support/pg.rs`: `PG_URL`'s server, or a private one).
#![cfg(feature = "postgres")]

mod common;
#[path = "support/pg.rs"]
mod pg;

use std::time::{Duration, Instant};

use bytes::Bytes;
use storage::conformance::message;
use storage::postgres::{migrate_files, MigrationFile, PostgresConfig, PostgresStore, MIGRATIONS};
use storage::{Answer, AnyStore, Completion, ErrorSource, MessageStore, Query, ReactionOp, StoreConfig, StoreError, StoreKind};

fn cfg(url: &str) -> StoreConfig {
    StoreConfig {
        store: StoreKind::Postgres,
        postgres_url: url.to_owned(),
        postgres_pool_size: 4,
        ..StoreConfig::default()
    }
}

fn pg_cfg(url: &str) -> PostgresConfig {
    PostgresConfig {
        url: url.to_owned(),
        pool_size: 2,
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(conn);
    client
}

async fn table_exists(client: &tokio_postgres::Client, table: &str) -> bool {
    client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .expect("to_regclass")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_once_even_from_many_nodes_at_once() {
    let db = pg::TestDb::create();
    // Eight "nodes", each with its own pool, migrating the same empty database at the same time.
    let stores: Vec<PostgresStore> = (0..8).map(|_| PostgresStore::new(&pg_cfg(&db.url)).expect("pool")).collect();
    let results = futures_util::future::join_all(stores.iter().map(PostgresStore::migrate)).await;
    let applied: Vec<Vec<i32>> = results.into_iter().map(|r| r.expect("concurrent migrate")).collect();
    let all: Vec<i32> = (1..=MIGRATIONS.len() as i32).collect();
    assert_eq!(
        applied.iter().filter(|a| !a.is_empty()).count(),
        1,
        "exactly one node applies: {applied:?}"
    );
    assert!(applied.contains(&all), "{applied:?}");
    assert_eq!(stores[0].schema_versions().await.expect("versions"), all);
    assert!(stores[3].migrate().await.expect("again").is_empty(), "a second run is a no-op");
}

#[tokio::test]
async fn a_failing_migration_leaves_nothing_behind() {
    let db = pg::TestDb::create();
    let mut client = connect(&db.url).await;
    const FILES: &[MigrationFile] = &[
        MigrationFile {
            version: 1,
            name: "001_a.sql",
            sql: "CREATE TABLE t_one (x int);",
        },
        MigrationFile {
            version: 2,
            name: "002_b.sql",
            sql: "CREATE TABLE t_two (x int); INSERT INTO t_two VALUES (1); SELECT no_such_function();",
        },
    ];
    let err = migrate_files(&mut client, FILES).await.expect_err("002 fails");
    assert!(!err.is_retryable(), "{err}");
    assert!(err.to_string().contains("no_such_function"), "the server's message is kept: {err}");
    assert!(table_exists(&client, "t_one").await, "001 committed on its own");
    assert!(!table_exists(&client, "t_two").await, "002 rolled back whole");
    let versions: Vec<i32> = client
        .query("SELECT version FROM schema_migrations ORDER BY version", &[])
        .await
        .expect("versions")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, vec![1]);
    // A fixed 002 applies on the next run, and only it.
    let fixed = [
        FILES[0],
        MigrationFile {
            sql: "CREATE TABLE t_two (x int);",
            ..FILES[1]
        },
    ];
    assert_eq!(migrate_files(&mut client, &fixed).await.expect("fixed"), vec![2]);
}

#[test]
fn edge_migrate_reports_what_it_applied() {
    let db = pg::TestDb::create();
    let first = storage::migrate(&cfg(&db.url)).expect("migrate");
    assert!(first.contains("applied migrations [1]"), "{first}");
    let second = storage::migrate(&cfg(&db.url)).expect("migrate again");
    assert!(second.contains("up to date at version 1"), "{second}");
}

#[tokio::test]
async fn a_refused_connection_is_retryable() {
    // A port nothing listens on (bound then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/none");
    let err = AnyStore::open(&cfg(&url)).await.expect_err("nothing listens");
    assert!(err.is_retryable(), "{err}");
    assert_eq!(err.source_kind(), ErrorSource::Postgres);
    let store = PostgresStore::new(&pg_cfg(&url)).expect("a pool connects lazily");
    let err = store.write_batch(&[message("r", 1)]).await.expect_err("no server");
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("write batch"), "{err}");
}

#[tokio::test]
async fn a_missing_database_is_not_retryable() {
    let db = pg::TestDb::create();
    let url = pg::database_url(&db.url, "storage_no_such_database");
    let err = AnyStore::open(&cfg(&url)).await.expect_err("no such database");
    assert!(!err.is_retryable(), "3D000 will not go away by itself: {err}");
}

#[tokio::test]
async fn killed_sessions_fail_retryably_then_the_pool_reconnects() {
    let db = pg::TestDb::create();
    let store = PostgresStore::open(&pg_cfg(&db.url)).await.expect("open");
    store.write_batch(&[message("k", 1)]).await.expect("write");
    for round in 0..3 {
        pg::execute(
            db.admin_url(),
            &format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}' AND pid <> pg_backend_pid()",
                db.name
            ),
        )
        .expect("terminate the store's sessions");
        // Each pooled connection is replaced once its task has seen the server close it; until then
        // a call on it fails. Like the service's writer: retry retryable errors after a short wait.
        let mut attempt = 0;
        while let Err(e) = store.write_batch(&[message("k", 2 + round)]).await {
            assert!(e.is_retryable(), "{e}");
            attempt += 1;
            assert!(attempt < 4, "the pool did not reconnect: {e}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert_eq!(store.room_state("k", 1).await.expect("state").last_seq, 4);
}

#[tokio::test]
async fn bad_data_is_refused_whole_without_panicking() {
    let db = pg::TestDb::create();
    let store = PostgresStore::open(&pg_cfg(&db.url)).await.expect("open");
    let mut nul = message("bad", 2);
    nul.sender = "nul\0byte".into();
    let err = store.write_batch(&[message("bad", 1), nul]).await.expect_err("NUL in text");
    assert!(!err.is_retryable(), "{err}");
    assert_eq!(err.source_kind(), ErrorSource::Postgres);
    let mut huge = message("bad", 3);
    huge.seq = u64::MAX;
    let err = store.write_batch(&[message("bad", 1), huge]).await.expect_err("seq above i64::MAX");
    assert!(matches!(err, StoreError::OutOfRange(_)), "{err}");
    assert!(
        store.range_after("bad", 0, 10).await.expect("read").is_empty(),
        "nothing of either batch"
    );
    let err = store.set_last_seen("u", u64::MAX).await.expect_err("time above i64::MAX");
    assert!(matches!(err, StoreError::OutOfRange(_)), "{err}");
    // A negative number stored by someone else comes back as an error, not a wrapped u64.
    let client = connect(&db.url).await;
    client
        .execute("INSERT INTO last_seen (user_id, ts_ms) VALUES ('neg', -5)", &[])
        .await
        .expect("insert");
    let err = store.last_seen("neg").await.expect_err("negative stored time");
    assert!(matches!(err, StoreError::OutOfRange(_)), "{err}");
}

#[tokio::test]
async fn duplicates_inside_one_batch_keep_one_copy() {
    let db = pg::TestDb::create();
    let store = PostgresStore::open(&pg_cfg(&db.url)).await.expect("open");
    let batch = vec![message("d", 1), message("d", 2), message("d", 1), message("d", 2)];
    store.write_batch(&batch).await.expect("duplicates in one batch are not an error");
    assert_eq!(
        store.range_after("d", 0, 10).await.expect("read"),
        vec![message("d", 1), message("d", 2)]
    );
    let users: Vec<String> = ["b", "a", "b"].iter().map(|u| (*u).to_owned()).collect();
    let marks = store
        .set_marks("d", &users, storage::MarkKind::Read, 2)
        .await
        .expect("a user listed twice");
    assert_eq!(marks, vec![2, 2, 2]);
}

#[tokio::test]
async fn text_sorts_bytewise_whatever_the_database_locale() {
    // An ICU English collation sorts "a" before "B" and ignores case first; bytes put "B" first.
    let db = pg::TestDb::create_with("LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C'");
    let store = PostgresStore::open(&pg_cfg(&db.url)).await.expect("open");
    for user in ["b", "B", "a", "A", "é", "Z"] {
        store.react("r", 1, user, "👍", ReactionOp::Add).await.expect("react");
    }
    store.react("r", 1, "a", "A", ReactionOp::Add).await.expect("react");
    let got: Vec<(String, String)> = store.reactions("r", 1).await.expect("reactions");
    let mut want = got.clone();
    want.sort();
    assert_eq!(got, want, "Rust's (bytewise) order");
    assert_eq!(got[0], ("A".to_owned(), "a".to_owned()));
    for room in ["b", "B", "a", "_"] {
        store.add_user_room("u", room).await.expect("add");
    }
    let rooms: Vec<String> = store.user_rooms("u").await.expect("rooms").into_iter().map(|r| r.room).collect();
    assert_eq!(rooms, ["B", "_", "a", "b"]);
}

#[tokio::test]
async fn frames_of_any_size_round_trip() {
    let db = pg::TestDb::create();
    let store = PostgresStore::open(&pg_cfg(&db.url)).await.expect("open");
    let mut big = message("f", 1);
    big.frame = Bytes::from((0..=255_u8).cycle().take(3 << 20).collect::<Vec<u8>>());
    let mut empty = message("f", 2);
    empty.frame = Bytes::new();
    store.write_batch(&[big.clone(), empty.clone()]).await.expect("write");
    assert_eq!(store.range_after("f", 0, 10).await.expect("read"), vec![big, empty]);
}

#[tokio::test]
async fn the_store_service_runs_on_postgres() {
    let db = pg::TestDb::create();
    let config = StoreConfig {
        batch_max_messages: 64,
        ..cfg(&db.url)
    };
    let open_cfg = config.clone();
    let (h, comps) = storage::spawn_with(move || async move { AnyStore::open(&open_cfg).await }, &config, 1).expect("spawn");
    assert!(h.previous_run_clean(), "a first run");
    for seq in 1..=500 {
        h.write(0, message("svc", seq), seq).expect("write");
    }
    let done = common::collect(&comps[0], 500).await;
    for c in &done {
        assert!(matches!(c, Completion::Written { result: Ok(()), .. }), "{c:?}");
    }
    h.query(
        0,
        Query::History {
            room: "svc".into(),
            before: None,
            limit: 10,
        },
        1000,
    )
    .expect("query");
    let answer = common::collect(&comps[0], 1).await;
    match &answer[..] {
        [Completion::Answered {
            result: Ok(Answer::History(page)),
            ..
        }] => {
            assert_eq!(page.messages.first().map(|m| m.seq), Some(491));
            assert_eq!(page.next_before, Some(491));
        }
        other => panic!("unexpected answer {other:?}"),
    }
    h.shutdown().expect("shutdown");
    // The clean shutdown was recorded in the database.
    let store = PostgresStore::open(&pg_cfg(&db.url)).await.expect("open");
    assert!(store.begin_run(&config.node_id).await.expect("begin"), "end_run ran at shutdown");
}

/// `write_batch` throughput: one batch at a time (as the service's writer does), 200-byte frames
/// spread over 100 rooms, for batch sizes 1, 16 and 256, each for about 5 s. Run with
/// `cargo test -p storage --release --test postgres -- --ignored --nocapture write_batch_throughput`
/// (on the private server, default settings: fsync and synchronous_commit on; or set `PG_URL`).
#[tokio::test]
#[ignore = "a measurement, not a check: run it by name"]
async fn write_batch_throughput() {
    let db = pg::TestDb::create();
    let store = PostgresStore::open(&pg_cfg(&db.url)).await.expect("open");
    let frame = Bytes::from(vec![b'x'; 200]);
    let mut next_seq = vec![1_u64; 100];
    let mut report = Vec::new();
    for batch in [1_usize, 16, 256] {
        let budget = Duration::from_secs(5);
        let started = Instant::now();
        let (mut written, mut batches) = (0_u64, 0_u64);
        let mut i = 0_usize;
        while started.elapsed() < budget {
            let msgs: Vec<_> = (0..batch)
                .map(|_| {
                    let room = i % 100;
                    i += 1;
                    let seq = next_seq[room];
                    next_seq[room] += 1;
                    let mut m = message(&format!("bench-{room}"), seq);
                    m.frame = frame.clone();
                    m
                })
                .collect();
            store.write_batch(&msgs).await.expect("write");
            written += batch as u64;
            batches += 1;
        }
        let secs = started.elapsed().as_secs_f64();
        let line = format!(
            "batch {batch:>3}: {:>8.0} msg/s ({batches} batches, {:.2} ms per batch)",
            written as f64 / secs,
            secs * 1000.0 / batches as f64
        );
        eprintln!("{line}");
        report.push(line);
    }
    assert_eq!(report.len(), 3);
}
