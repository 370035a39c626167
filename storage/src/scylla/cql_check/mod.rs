//! Offline checks of the Scylla backend's CQL (tests only): no server runs here, so a small parser reads
//! the schema files' `CREATE TABLE`s into column → type maps, and every statement of
//! `statements::all()` is checked against them.
//!
//! What a check proves, per statement: its table exists; each `?` maps (by
//! position) to a field of the bind type with the column's name and CQL type;
//! each selected column maps to a field of the row type the same way; the
//! partition key is fully restricted by `=` (or the select is a deliberate full
//! scan); inserts name the whole primary key; updates and deletes name one row;
//! ranges and ORDER BY use clustering columns only (no ALLOW FILTERING needed).
//! The negative tests in `tests.rs` show each kind of mismatch makes the check fail.

mod parse;

use super::migrate::{MIGRATIONS, MIGRATIONS_TABLE};
use super::statements::{CqlType, StatementInfo};
use parse::{parse_schema, parse_statement, Kind, Parsed, Schema, Table};

/// The type of a bind marker: a pseudo-bind's, or its column's.
fn bind_type(table: &Table, marker: &str) -> Option<CqlType> {
    match marker {
        "limit" | "ttl" => Some(CqlType::Int),
        "write_timestamp" => Some(CqlType::BigInt),
        col => table.column(col),
    }
}

/// Compares markers/columns with a Rust type's fields by position, name and type.
fn match_fields(what: &str, names: &[String], fields: &[(&str, CqlType)], table: &Table, errors: &mut Vec<String>) {
    if names.len() != fields.len() {
        errors.push(format!("{} {what}s but the Rust type has {} fields", names.len(), fields.len()));
    }
    for (i, (name, (field, ty))) in names.iter().zip(fields).enumerate() {
        match bind_type(table, name) {
            None => errors.push(format!("{what} {i}: no column `{name}`")),
            Some(col_ty) if col_ty != *ty => errors.push(format!(
                "{what} {i} (`{name}`): schema type {col_ty:?}, Rust type {ty:?} (field `{field}`)"
            )),
            Some(_) if name != field => errors.push(format!("{what} {i} is column `{name}` but the field there is `{field}`")),
            Some(_) => {}
        }
    }
}

fn check_keys(p: &Parsed, t: &Table, errors: &mut Vec<String>) {
    let eq: Vec<&str> = p.restrictions.iter().filter(|(_, op)| op == "=").map(|(c, _)| c.as_str()).collect();
    let full_scan = p.kind == Kind::Select && p.restrictions.is_empty();
    if !full_scan {
        for k in &t.partition_key {
            if p.kind != Kind::Insert && !eq.contains(&k.as_str()) {
                errors.push(format!("partition key column `{k}` is not restricted by `=`"));
            }
        }
    }
    for (col, op) in &p.restrictions {
        if !t.partition_key.contains(col) && !t.clustering.contains(col) {
            errors.push(format!("WHERE on non-key column `{col}` needs ALLOW FILTERING"));
        } else if op != "=" && !t.clustering.contains(col) {
            errors.push(format!("range `{col} {op} ?` on a partition key column"));
        }
    }
    match p.kind {
        Kind::Insert => {
            for k in t.partition_key.iter().chain(&t.clustering).filter(|k| !p.written.contains(k)) {
                errors.push(format!("insert lacks primary key column `{k}`"));
            }
        }
        Kind::Update | Kind::Delete => {
            for k in t.clustering.iter().filter(|k| !eq.contains(&k.as_str())) {
                errors.push(format!("clustering column `{k}` not restricted by `=`: not a single-row write"));
            }
        }
        Kind::Select => {}
    }
    for w in p.written.iter().filter(|w| t.column(w).is_none()) {
        errors.push(format!("no column `{w}`"));
    }
    if let Some(o) = p.order_by.as_ref().filter(|o| !t.clustering.contains(o)) {
        errors.push(format!("ORDER BY `{o}` is not a clustering column"));
    }
}

/// Checks one statement; returns its errors (empty when it is consistent with the schema and its types).
fn check(info: &StatementInfo, schema: &Schema) -> Vec<String> {
    let p = match parse_statement(info.text) {
        Ok(p) => p,
        Err(e) => return vec![format!("cannot parse: {e}")],
    };
    let Some(t) = schema.get(&p.table) else {
        return vec![format!("no table `{}`", p.table)];
    };
    let mut errors = Vec::new();
    match_fields("bind marker", &p.binds, info.binds, t, &mut errors);
    if p.kind == Kind::Select {
        match_fields("selected column", &p.selected, info.row, t, &mut errors);
    } else if !info.row.is_empty() {
        errors.push("a non-select statement declares a row type".to_owned());
    }
    check_keys(&p, t, &mut errors);
    errors
}

fn full_schema() -> Schema {
    let mut files: Vec<&str> = MIGRATIONS.iter().map(|m| m.cql).collect();
    files.push(MIGRATIONS_TABLE);
    parse_schema(&files).expect("schema parses").0
}

#[cfg(test)]
mod tests;
