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
    let out = edge(&["serve", "--store", "mysql"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--store"), "{}", stderr(&out));
    let out = edge(&["serve", "--listen", "127.0.0.1:0", "--store", "postgres"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("postgres_url must be set"), "{}", stderr(&out));
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

/// Runs `edge` with `args` and waits at most 20 s for it to exit (a refusal must not hang).
fn edge_exits(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run edge");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("edge {args:?} did not exit");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

#[test]
fn a_second_serve_on_a_taken_address_or_data_dir_is_refused() {
    let dir = common::temp_data_dir("taken");
    let s = common::Server::start_with("epoll", &[], &[], &dir);
    let other = common::temp_data_dir("other");
    let (o, d) = (other.to_str().expect("utf-8"), dir.to_str().expect("utf-8"));
    let out = edge_exits(&["serve", "--listen", &s.addr, "--data-dir", o, "--jwt-secret", common::SECRET]);
    assert!(!out.status.success(), "a second node on {} started", s.addr);
    assert!(
        stderr(&out).contains("another server already accepts connections"),
        "{}",
        stderr(&out)
    );
    let out = edge_exits(&["serve", "--listen", "127.0.0.1:0", "--data-dir", d, "--jwt-secret", common::SECRET]);
    assert!(!out.status.success(), "a second node on the same data dir started");
    assert!(stderr(&out).contains("is in use by another edge (pid"), "{}", stderr(&out));
}

/// Starts a dev-mode node (no secret) on `dir`; returns it and its address.
fn dev_node(dir: &std::path::Path) -> (std::process::Child, String) {
    dev_node_with(dir, &[])
}

fn dev_node_with(dir: &std::path::Path, envs: &[(&str, &str)]) -> (std::process::Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["serve", "--listen", "127.0.0.1:0", "--cores", "1", "--data-dir"])
        .arg(dir)
        .envs(envs.iter().copied())
        .env("RUST_LOG", "warn")
        .env_remove("EDGE_JWT_SECRET")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn edge");
    let (_, addr) = common::read_banner(&mut child);
    (child, addr)
}

/// `THP_enabled` of a running process (`/proc/<pid>/status`, Linux 5.0 and later).
fn thp_enabled(pid: u32) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(|v| v.trim().to_owned())
}

#[test]
fn serve_turns_transparent_huge_pages_off_unless_configured() {
    // The kernel's own setting for this test process: the node must differ from it only when
    // it turns THP off.
    let Some(inherited) = thp_enabled(std::process::id()) else {
        eprintln!("skipped: this kernel has no THP_enabled in /proc/<pid>/status");
        return;
    };
    assert_eq!(
        inherited, "1",
        "the test process itself runs with THP off; the check below would prove nothing"
    );
    for (envs, want) in [(&[][..], "0"), (&[("EDGE_TRANSPARENT_HUGE_PAGES", "true")][..], "1")] {
        let dir = common::temp_data_dir("thp");
        let (mut node, _) = dev_node_with(&dir, envs);
        let got = thp_enabled(node.id());
        let _ = node.kill();
        let _ = node.wait();
        assert_eq!(got.as_deref(), Some(want), "THP_enabled of a node started with {envs:?}");
    }
}

#[test]
fn dev_mode_keeps_its_secret_so_edge_token_mints_for_any_user() {
    let dir = common::temp_data_dir("dev");
    let d = dir.to_str().expect("utf-8");
    let (mut node, addr) = dev_node(&dir);
    let out = edge(&["token", "--user", "bob", "--data-dir", d]);
    assert!(out.status.success(), "{}", stderr(&out));
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let c = common::Client::connect_raw_query(&addr, &format!("token={token}")).expect("upgrade");
    drop(c);
    let _ = node.kill();
    let _ = node.wait();
    // The same secret after a restart: the token minted before still works.
    let (mut node, addr) = dev_node(&dir);
    let mut c = common::Client::connect_raw_query(&addr, &format!("token={token}")).expect("upgrade after a restart");
    assert_eq!(c.recv_type("welcome")["user"], "bob");
    let _ = node.kill();
    let _ = node.wait();
    let empty = common::temp_data_dir("no-dev");
    let out = edge(&["token", "--user", "bob", "--data-dir", empty.to_str().expect("utf-8")]);
    assert!(
        !out.status.success() && stderr(&out).contains("--jwt-secret is required"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn config_check_validates_as_serve_does() {
    let out = edge(&["config", "--check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "config ok (dev mode: no jwt_secret)");
    let out = Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["config", "--check"])
        .env("EDGE_JWT_SECRET", common::SECRET)
        .output()
        .expect("run edge");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "config ok", "{}", stderr(&out));
    let short = Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["config", "--check"])
        .env("EDGE_JWT_SECRET", "too-short")
        .output()
        .expect("run edge");
    assert!(!short.status.success(), "a secret serve refuses is refused here too");
    let bad = Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["config", "--check"])
        .env("EDGE_TYPING_INTERVAL_MS", "999999")
        .output()
        .expect("run edge");
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("typing_interval_ms"), "{}", stderr(&bad));
    // Without --check the printed config is validated too.
    let bad = Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["config"])
        .env("EDGE_TYPING_INTERVAL_MS", "999999")
        .output()
        .expect("run edge");
    assert!(!bad.status.success() && bad.stdout.is_empty(), "{}", stderr(&bad));
}

/// The first `n` stderr lines of a node started with `envs` (then it is stopped).
fn serve_log_lines(envs: &[(&str, &str)], n: usize) -> Vec<String> {
    use std::io::BufRead;
    let dir = common::temp_data_dir("logs");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edge"));
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--cores",
        "1",
        "--jwt-secret",
        common::SECRET,
        "--data-dir",
    ])
    .arg(&dir)
    .env("RUST_LOG", "info")
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn edge");
    let lines: Vec<String> = std::io::BufReader::new(child.stderr.take().expect("stderr"))
        .lines()
        .take(n)
        .map(|l| l.expect("a log line"))
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    lines
}

#[test]
fn logs_are_plain_text_off_a_terminal_or_json_when_asked() {
    let text = serve_log_lines(&[], 2);
    assert_eq!(text.len(), 2, "{text:?}");
    assert!(text.iter().all(|l| !l.contains('\u{1b}')), "no ANSI codes into a pipe: {text:?}");
    let json = serve_log_lines(&[("EDGE_LOG_FORMAT", "json")], 2);
    for line in &json {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string() && v["fields"].is_object(),
            "{v}"
        );
    }
    let bad = Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["config", "--check"])
        .env("EDGE_LOG_FORMAT", "xml")
        .output()
        .expect("run edge");
    assert!(!bad.status.success() && stderr(&bad).contains("log_format"), "{}", stderr(&bad));
}

#[test]
fn the_example_production_config_is_valid() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/production.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["config", "--check", "--config", config])
        .env("EDGE_JWT_SECRET", common::SECRET)
        .output()
        .expect("run edge");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "config ok", "{}", stderr(&out));
}
