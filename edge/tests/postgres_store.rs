//! A node on the PostgreSQL store (`--postgres-url`), against a real PostgreSQL: a private
//! server on a free port, or `PG_URL`'s (a fresh database either way, dropped at the end).

mod common;
#[path = "../../storage/tests/support/pg.rs"]
mod pg;

use std::process::Command;

use common::{temp_data_dir, Client, Server};
use serde_json::json;

#[test]
fn history_and_seq_live_in_postgres_across_restarts_and_data_dirs() {
    let db = pg::TestDb::create();
    let out = Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["migrate", "--postgres-url", &db.url])
        .output()
        .expect("edge migrate");
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.contains("postgres"), "edge migrate: {said}");

    let server = Server::start_with("io_uring", &[], &["--postgres-url", &db.url], &temp_data_dir("pg1"));
    let mut ann = Client::connect(&server.addr, "ann", "");
    ann.join("pg-room");
    for i in 1..=5 {
        let ack = ann.request(
            json!({"type": "send", "room": "pg-room", "body": format!("m{i}")}),
            &format!("s{i}"),
        );
        assert_eq!(ack["seq"].as_u64(), Some(i), "{ack}");
    }
    drop(ann);
    server.stop_clean();

    // Another data dir: whatever survives is in PostgreSQL, not in the embedded store.
    let server = Server::start_with("epoll", &[], &["--postgres-url", &db.url], &temp_data_dir("pg2"));
    let mut bob = Client::connect(&server.addr, "bob", "");
    let page = bob.request(json!({"type": "history", "room": "pg-room", "limit": 10}), "h");
    let bodies: Vec<&str> = page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["body"].as_str())
        .collect();
    assert_eq!(bodies, ["m1", "m2", "m3", "m4", "m5"], "{page}");
    bob.join("pg-room");
    let ack = bob.request(json!({"type": "send", "room": "pg-room", "body": "after"}), "s6");
    assert_eq!(ack["seq"].as_u64(), Some(6), "the seq continues from the store: {ack}");
    server.stop_clean();
}

#[test]
fn a_bad_postgres_url_is_refused_naming_the_field_and_the_password_is_never_printed() {
    let out = Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["serve", "--listen", "127.0.0.1:0", "--postgres-url", "not a url"])
        .arg("--data-dir")
        .arg(temp_data_dir("pgbad"))
        .output()
        .expect("edge serve");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("postgres_url"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_edge"))
        .arg("config")
        .env("EDGE_STORE", "postgres")
        .env("EDGE_POSTGRES_URL", "postgres://app:s3cret-pw@db.internal:5432/chat")
        .output()
        .expect("edge config");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("postgres://app:<not printed>@db.internal:5432/chat") && !text.contains("s3cret"),
        "{text}"
    );
}
