//! The `edge` binary's commands and flags: `migrate` on the embedded store,
//! and clear errors (naming the flag or field) for bad store and cluster settings.

mod common;

use std::process::{Command, Output};

fn edge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run edge")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn migrate_creates_the_embedded_store_and_is_idempotent() {
    let dir = common::temp_data_dir("migrate").join("nested");
    let d = dir.to_str().expect("utf-8 path");
    for round in 0..2 {
        let out = edge(&["migrate", "--data-dir", d]);
        assert!(out.status.success(), "round {round}: {}", stderr(&out));
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(said.contains("embedded store ready"), "round {round}: {said}");
        assert!(dir.join("edge.sqlite3").exists(), "the database file is created in --data-dir");
    }
}

#[test]
fn migrate_against_an_unreachable_scylla_fails_with_a_clear_error() {
    // Port 1 on loopback: nothing listens there, so the connect is refused at once.
    let out = edge(&["migrate", "--scylla-uri", "127.0.0.1:1"]);
    assert!(!out.status.success(), "must fail without a Scylla node");
    let err = stderr(&out);
    assert!(err.contains("edge migrate"), "{err}");
}

#[test]
fn bad_store_and_cluster_flags_are_named() {
    let out = edge(&["serve", "--store", "postgres"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--store"), "{}", stderr(&out));
    let out = edge(&["serve", "--durability", "sometimes"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--durability"), "{}", stderr(&out));
    let out = edge(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--redis-url",
        "not-a-url",
        "--jwt-secret",
        common::SECRET,
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("redis_url"), "{}", stderr(&out));
}
