//! The parser of the offline checker: just enough CQL for the schema files (`CREATE TABLE`) and the
//! backend's statements (INSERT, UPDATE, DELETE, SELECT with `?` markers).
//!
//! Invariant: anything outside that subset is an error, never silently skipped,
//! so a statement the checker cannot read fails the test instead of passing it.

use std::collections::HashMap;

use super::super::migrate::split_statements;
use super::super::statements::CqlType;

#[derive(Debug, Clone, Default)]
pub(super) struct Table {
    pub(super) columns: Vec<(String, CqlType)>,
    pub(super) partition_key: Vec<String>,
    pub(super) clustering: Vec<String>,
}

impl Table {
    pub(super) fn column(&self, name: &str) -> Option<CqlType> {
        self.columns.iter().find(|(n, _)| n == name).map(|(_, t)| *t)
    }
}

pub(super) type Schema = HashMap<String, Table>;

pub(super) fn parse_type_name(name: &str) -> Option<CqlType> {
    Some(match name {
        "text" | "varchar" => CqlType::Text,
        "bigint" => CqlType::BigInt,
        "int" => CqlType::Int,
        "blob" => CqlType::Blob,
        "boolean" => CqlType::Boolean,
        _ => return None,
    })
}

/// Splits CQL into lower-cased identifiers, `?`, literals and punctuation.
pub(super) fn tokenize(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        if c.is_whitespace() {
            i += 1;
            continue;
        } else if c.is_ascii_alphanumeric() || c == '_' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(chars[start..i].iter().collect::<String>().to_ascii_lowercase());
            continue;
        } else if c == '\'' {
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                i += 1;
            }
            i += 1;
        } else if (c == '<' || c == '>' || c == '!') && chars.get(i + 1) == Some(&'=') {
            i += 2;
        } else {
            i += 1;
        }
        out.push(chars[start..i.min(chars.len())].iter().collect());
    }
    out
}

pub(super) struct Cursor {
    toks: Vec<String>,
    at: usize,
}

impl Cursor {
    fn new(text: &str) -> Self {
        Self {
            toks: tokenize(text),
            at: 0,
        }
    }
    fn peek(&self) -> Option<&str> {
        self.toks.get(self.at).map(String::as_str)
    }
    fn next(&mut self) -> Result<String, String> {
        let t = self.toks.get(self.at).cloned().ok_or("unexpected end of statement")?;
        self.at += 1;
        Ok(t)
    }
    fn eat(&mut self, tok: &str) -> bool {
        let hit = self.peek() == Some(tok);
        self.at += usize::from(hit);
        hit
    }
    fn expect(&mut self, tok: &str) -> Result<(), String> {
        let got = self.next()?;
        if got == tok {
            Ok(())
        } else {
            Err(format!("expected `{tok}`, found `{got}`"))
        }
    }
    fn ident(&mut self) -> Result<String, String> {
        let t = self.next()?;
        if t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !t.is_empty() {
            Ok(t)
        } else {
            Err(format!("expected a name, found `{t}`"))
        }
    }
    /// `name` or `keyspace.name`; returns `name`.
    fn table_name(&mut self) -> Result<String, String> {
        let mut name = self.ident()?;
        if self.eat(".") {
            name = self.ident()?;
        }
        Ok(name)
    }
    fn ident_list(&mut self) -> Result<Vec<String>, String> {
        let mut names = vec![self.ident()?];
        while self.eat(",") {
            names.push(self.ident()?);
        }
        Ok(names)
    }
    fn done(&self) -> Result<(), String> {
        match self.peek() {
            None => Ok(()),
            Some(t) => Err(format!("unexpected `{t}` after the statement")),
        }
    }
}

/// Parses `CREATE TABLE [IF NOT EXISTS] name (...)`, after `CREATE TABLE`; returns (name, table, if_not_exists).
pub(super) fn parse_create_table(c: &mut Cursor) -> Result<(String, Table, bool), String> {
    let if_not_exists = c.eat("if");
    if if_not_exists {
        c.expect("not")?;
        c.expect("exists")?;
    }
    let name = c.table_name()?;
    let mut t = Table::default();
    c.expect("(")?;
    loop {
        if c.eat("primary") {
            c.expect("key")?;
            c.expect("(")?;
            t.partition_key = if c.eat("(") {
                let pk = c.ident_list()?;
                c.expect(")")?;
                pk
            } else {
                vec![c.ident()?]
            };
            while c.eat(",") {
                t.clustering.push(c.ident()?);
            }
            c.expect(")")?;
        } else {
            let col = c.ident()?;
            let ty_name = c.ident()?;
            if c.peek() == Some("<") {
                return Err(format!("{name}.{col}: collection types are not supported by this checker"));
            }
            let ty = parse_type_name(&ty_name).ok_or(format!("{name}.{col}: unknown type `{ty_name}`"))?;
            if c.eat("primary") {
                c.expect("key")?;
                t.partition_key = vec![col.clone()];
            }
            t.columns.push((col, ty));
        }
        if !c.eat(",") {
            c.expect(")")?;
            break;
        }
    }
    for k in t.partition_key.iter().chain(&t.clustering) {
        t.column(k).ok_or(format!("{name}: key column `{k}` is not declared"))?;
    }
    if t.partition_key.is_empty() {
        return Err(format!("{name}: no primary key"));
    }
    Ok((name, t, if_not_exists))
}

/// Parses the migration files (and the migrations table); also returns the statements lacking `IF NOT EXISTS`.
pub(super) fn parse_schema(files: &[&str]) -> Result<(Schema, Vec<String>), String> {
    let mut schema = Schema::new();
    let mut not_idempotent = Vec::new();
    for file in files {
        for stmt in split_statements(file) {
            let mut c = Cursor::new(&stmt);
            if c.eat("alter") {
                // `ALTER TABLE t ADD c type`: the runner skips it when the column exists.
                c.expect("table")?;
                let name = c.table_name()?;
                c.expect("add")?;
                let (col, ty_name) = (c.ident()?, c.ident()?);
                let ty = parse_type_name(&ty_name).ok_or_else(|| format!("unknown type {ty_name} in `{stmt}`"))?;
                c.done()?;
                let table = schema.get_mut(&name).ok_or_else(|| format!("ALTER of unknown table {name}"))?;
                if table.column(&col).is_some() {
                    return Err(format!("column {name}.{col} added twice"));
                }
                table.columns.push((col, ty));
                continue;
            }
            c.expect("create")
                .map_err(|e| format!("{e} in `{stmt}` (only CREATE ... IF NOT EXISTS and ALTER TABLE ... ADD are allowed)"))?;
            let what = c.ident()?;
            if what != "table" {
                not_idempotent.extend((!stmt.to_ascii_lowercase().contains("if not exists")).then(|| stmt.clone()));
                continue;
            }
            let (name, table, idempotent) = parse_create_table(&mut c)?;
            if !idempotent {
                not_idempotent.push(stmt.clone());
            }
            if schema.insert(name.clone(), table).is_some() {
                return Err(format!("table {name} created twice"));
            }
        }
    }
    Ok((schema, not_idempotent))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Insert,
    Update,
    Delete,
    Select,
}

#[derive(Debug)]
pub(super) struct Parsed {
    pub(super) kind: Kind,
    pub(super) table: String,
    /// The column (or pseudo-bind) of each `?`, in order.
    pub(super) binds: Vec<String>,
    pub(super) selected: Vec<String>,
    /// Inserted or assigned columns.
    pub(super) written: Vec<String>,
    /// `(column, operator)` of the WHERE clause.
    pub(super) restrictions: Vec<(String, String)>,
    pub(super) order_by: Option<String>,
}

fn parse_using(c: &mut Cursor, binds: &mut Vec<String>) -> Result<(), String> {
    loop {
        let what = c.ident()?;
        c.expect("?")?;
        binds.push(match what.as_str() {
            "timestamp" => "write_timestamp".to_owned(),
            "ttl" => "ttl".to_owned(),
            other => return Err(format!("unknown USING `{other}`")),
        });
        if !c.eat("and") {
            return Ok(());
        }
    }
}

fn parse_where(c: &mut Cursor, p: &mut Parsed) -> Result<(), String> {
    loop {
        let col = c.ident()?;
        let op = c.next()?;
        if !["=", "<", ">", "<=", ">="].contains(&op.as_str()) {
            return Err(format!("unsupported operator `{op}`"));
        }
        c.expect("?")?;
        p.binds.push(col.clone());
        p.restrictions.push((col, op));
        if !c.eat("and") {
            return Ok(());
        }
    }
}

fn parse_if_not_exists(c: &mut Cursor) -> Result<(), String> {
    if c.eat("if") {
        c.expect("not")?;
        c.expect("exists")?;
    }
    Ok(())
}

fn parse_insert(c: &mut Cursor, p: &mut Parsed) -> Result<(), String> {
    p.kind = Kind::Insert;
    c.expect("into")?;
    p.table = c.table_name()?;
    c.expect("(")?;
    p.written = c.ident_list()?;
    c.expect(")")?;
    c.expect("values")?;
    c.expect("(")?;
    for (i, col) in p.written.iter().enumerate() {
        if i > 0 {
            c.expect(",")?;
        }
        if c.next()? == "?" {
            p.binds.push(col.clone());
        }
    }
    c.expect(")")?;
    parse_if_not_exists(c)?;
    if c.eat("using") {
        parse_using(c, &mut p.binds)?;
    }
    Ok(())
}

fn parse_update(c: &mut Cursor, p: &mut Parsed) -> Result<(), String> {
    p.kind = Kind::Update;
    p.table = c.table_name()?;
    if c.eat("using") {
        parse_using(c, &mut p.binds)?;
    }
    c.expect("set")?;
    loop {
        let col = c.ident()?;
        c.expect("=")?;
        c.expect("?")?;
        p.binds.push(col.clone());
        p.written.push(col);
        if !c.eat(",") {
            break;
        }
    }
    c.expect("where")?;
    parse_where(c, p)
}

fn parse_select(c: &mut Cursor, p: &mut Parsed) -> Result<(), String> {
    p.kind = Kind::Select;
    p.selected = c.ident_list().map_err(|e| format!("{e} (name the columns; `*` is not allowed)"))?;
    c.expect("from")?;
    p.table = c.table_name()?;
    if c.eat("where") {
        parse_where(c, p)?;
    }
    if c.eat("order") {
        c.expect("by")?;
        p.order_by = Some(c.ident()?);
        let _ = c.eat("asc") || c.eat("desc");
    }
    if c.eat("limit") {
        c.expect("?")?;
        p.binds.push("limit".to_owned());
    }
    Ok(())
}

/// Parses one INSERT, UPDATE, DELETE or SELECT of the supported subset.
pub(super) fn parse_statement(text: &str) -> Result<Parsed, String> {
    let mut c = Cursor::new(text);
    let mut p = Parsed {
        kind: Kind::Select,
        table: String::new(),
        binds: vec![],
        selected: vec![],
        written: vec![],
        restrictions: vec![],
        order_by: None,
    };
    match c.next()?.as_str() {
        "insert" => parse_insert(&mut c, &mut p)?,
        "update" => parse_update(&mut c, &mut p)?,
        "delete" => {
            p.kind = Kind::Delete;
            c.expect("from")?;
            p.table = c.table_name()?;
            c.expect("where")?;
            parse_where(&mut c, &mut p)?;
        }
        "select" => parse_select(&mut c, &mut p)?,
        other => return Err(format!("unsupported statement `{other}`")),
    }
    c.done()?;
    Ok(p)
}
