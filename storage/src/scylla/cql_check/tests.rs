//! The offline checker's tests: every real statement passes, and each kind of mismatch is caught.

use super::super::statements::{cql_row, Cql, CqlColumns, CqlType, CqlTyped, MessageRow};
use super::parse::{parse_schema, parse_statement, tokenize, Kind};
use super::*;
use crate::scylla::migrate::MIGRATIONS;
use crate::scylla::statements::all;

#[test]
fn every_statement_matches_the_schema() {
    let schema = full_schema();
    let statements = all();
    assert!(
        statements.len() >= 20,
        "the list of statements looks truncated: {}",
        statements.len()
    );
    let mut failures = Vec::new();
    for info in &statements {
        for e in check(info, &schema) {
            failures.push(format!("{}: {e}\n    {}", info.name, info.text));
        }
    }
    assert!(
        failures.is_empty(),
        "CQL statements disagree with the schema:\n{}",
        failures.join("\n")
    );
}

#[test]
fn only_the_migrations_select_scans_a_whole_table() {
    let scans: Vec<&str> = all()
        .iter()
        .filter(|i| {
            parse_statement(i.text)
                .map(|p| p.kind == Kind::Select && p.restrictions.is_empty())
                .unwrap_or(false)
        })
        .map(|i| i.name)
        .collect();
    assert_eq!(scans, vec!["SELECT_MIGRATIONS"]);
}

#[test]
fn schema_files_are_numbered_and_idempotent() {
    for (i, m) in MIGRATIONS.iter().enumerate() {
        assert_eq!(m.version as usize, i + 1, "migration {} is out of order", m.name);
        assert!(
            m.name.starts_with(&format!("{:03}_", m.version)),
            "file name {} does not match its version",
            m.name
        );
    }
    let files: Vec<&str> = MIGRATIONS.iter().map(|m| m.cql).collect();
    let (schema, not_idempotent) = parse_schema(&files).expect("schema parses");
    assert!(not_idempotent.is_empty(), "statements without IF NOT EXISTS: {not_idempotent:?}");
    let messages = &schema["messages"];
    assert_eq!(messages.partition_key, vec!["room", "bucket"]);
    assert_eq!(messages.clustering, vec!["seq"]);
    assert_eq!(messages.column("frame"), Some(CqlType::Blob));
    assert_eq!(messages.column("reply_to"), Some(CqlType::BigInt), "added by 002");
    assert_eq!(schema["thread_replies"].partition_key, vec!["room", "root"]);
    for t in [
        "room_buckets",
        "rooms",
        "client_ids",
        "marks",
        "reactions",
        "user_rooms",
        "node_runs",
        "last_seen",
    ] {
        assert!(schema.contains_key(t), "table {t} missing");
    }
}

cql_row!(WrongBucketType {
    room: String,
    bucket: i32,
    seq: i64
});
cql_row!(FrameAsText { room: String, bucket: i64, seq: i64, msg_id: String, sender: String, ts_ms: i64, client_id: Option<String>, frame: String, reply_to: Option<i64> });
cql_row!(SwappedEpoch { room: String, epoch: i64 });
cql_row!(RoomOnly { room: String });

fn errors_of<B: CqlColumns, R: CqlColumns>(text: &'static str) -> Vec<String> {
    check(&Cql::<B, R>::new("TEST", text).info(), &full_schema())
}

#[test]
fn checker_catches_a_wrong_bind_type() {
    let errs = errors_of::<WrongBucketType, MessageRow>(
        "SELECT room, bucket, seq, msg_id, sender, ts_ms, client_id, frame, reply_to FROM messages WHERE room = ? AND bucket = ? AND seq = ?",
    );
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("`bucket`") && errs[0].contains("BigInt") && errs[0].contains("Int"),
        "{errs:?}"
    );
    // The same statement with the right type passes: the failure above is the type, nothing else.
    let ok = errors_of::<super::super::statements::MessageKey, MessageRow>(
        "SELECT room, bucket, seq, msg_id, sender, ts_ms, client_id, frame, reply_to FROM messages WHERE room = ? AND bucket = ? AND seq = ?",
    );
    assert!(ok.is_empty(), "{ok:?}");
}

#[test]
fn checker_catches_a_wrong_row_type() {
    let errs = errors_of::<super::super::statements::MessageKey, FrameAsText>(
        "SELECT room, bucket, seq, msg_id, sender, ts_ms, client_id, frame, reply_to FROM messages WHERE room = ? AND bucket = ? AND seq = ?",
    );
    assert!(errs.iter().any(|e| e.contains("`frame`") && e.contains("Blob")), "{errs:?}");
}

#[test]
fn checker_catches_swapped_fields_and_wrong_counts() {
    let errs = errors_of::<SwappedEpoch, ()>("UPDATE rooms SET epoch = ? WHERE room = ?");
    assert!(!errs.is_empty(), "swapped fields must fail");
    let errs = errors_of::<RoomOnly, ()>("UPDATE rooms SET epoch = ? WHERE room = ?");
    assert!(
        errs.iter().any(|e| e.contains("2 bind markers but the Rust type has 1")),
        "{errs:?}"
    );
}

#[test]
fn checker_catches_schema_misuse() {
    let errs = errors_of::<RoomOnly, ()>("SELECT room FROM rooms WHERE nosuch = ?");
    assert!(errs.iter().any(|e| e.contains("no column `nosuch`")), "{errs:?}");
    let errs = errors_of::<RoomOnly, super::super::statements::SeqRow>("SELECT seq FROM messages WHERE room = ?");
    assert!(errs.iter().any(|e| e.contains("`bucket` is not restricted")), "{errs:?}");
    let errs = errors_of::<RoomOnly, ()>("SELECT room FROM nosuch WHERE room = ?");
    assert!(errs.iter().any(|e| e.contains("no table")), "{errs:?}");
    let errs = errors_of::<RoomOnly, ()>("INSERT INTO room_buckets (room) VALUES (?)");
    assert!(errs.iter().any(|e| e.contains("lacks primary key column `bucket`")), "{errs:?}");
}

#[test]
fn tokenizer_and_parser_basics() {
    assert_eq!(
        tokenize("SELECT a,b FROM ks.t WHERE x <= ? LIMIT ?"),
        vec!["select", "a", ",", "b", "from", "ks", ".", "t", "where", "x", "<=", "?", "limit", "?"]
    );
    let p = parse_statement("UPDATE marks USING TIMESTAMP ? SET read_seq = ? WHERE user_id = ? AND room = ?").expect("parse");
    assert_eq!(p.binds, vec!["write_timestamp", "read_seq", "user_id", "room"]);
    assert!(parse_statement("SELECT * FROM messages").is_err(), "`*` must be refused");
    assert_eq!(<Option<String> as CqlTyped>::CQL, CqlType::Text);
}

#[test]
fn added_columns_are_recognised_for_the_runner() {
    use super::super::migrate::added_column;
    assert_eq!(
        added_column("ALTER TABLE messages ADD reply_to bigint"),
        Some(("messages".into(), "reply_to".into()))
    );
    assert_eq!(
        added_column("alter table ks.messages add x text"),
        Some(("messages".into(), "x".into()))
    );
    assert_eq!(added_column("CREATE TABLE IF NOT EXISTS t (a int PRIMARY KEY)"), None);
    assert_eq!(added_column("ALTER TABLE messages DROP x"), None);
}
