//! A PostgreSQL database for tests: a fresh database with a random name, dropped at the end, on
//! the server `PG_URL` names or, without it, on a private server this module starts.
//!
//! Use: `let db = pg::TestDb::create();` then connect to `db.url`. Blocking, no runtime needed (it
//! runs its few async calls on a thread of its own), so monoio tests can use it as well as tokio ones.
//!
//! - `PG_URL` set (e.g. `postgres://postgres@127.0.0.1:5432/postgres`): an admin connection to an
//!   existing server; each [`TestDb`] is `CREATE DATABASE storage_test_<random>` there and is dropped
//!   (`WITH (FORCE)`) when the `TestDb` is. Nothing else on that server is touched.
//! - otherwise: a private server, [`PgServer`]: `initdb` into a temp dir (as the `postgres` user
//!   when running as root, since initdb refuses root), `postgres -D <dir>/data -p <free port>
//!   -k <dir> -c listen_addresses=127.0.0.1`, trust auth, shared by the tests of one binary that
//!   overlap in time and stopped (then its directory removed) when the last [`TestDb`] using it is
//!   dropped — at the end of a test, including when it panics.
//! - a watchdog keeps the server from outliving the test process however it ends (even SIGKILL):
//!   the server runs under a small `sh` that holds the read end of a pipe from this process; when
//!   the pipe closes (the guard dropped it, or the process died), the shell stops the server (fast
//!   shutdown) and removes the directory.
//!
//! Binaries: `PG_BINDIR` if set, else the newest `/usr/lib/postgresql/<ver>/bin` (Debian), else the
//! `bin` directory of `pg_config --bindir`, else `initdb` / `postgres` from `PATH`.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::chown;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

/// The environment variable naming an existing server's admin URL.
pub const PG_URL_ENV: &str = "PG_URL";

/// How long the private server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopping server may take before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// The watchdog: starts the server given as its arguments, waits for EOF on its stdin, then stops
/// the server (SIGINT = fast shutdown) and removes `$PG_TEST_DIR`.
const WATCHDOG: &str = r#"
"$@" </dev/null &
pid=$!
while read -r _line; do :; done
kill -INT "$pid" 2>/dev/null
wait "$pid"
rm -rf "$PG_TEST_DIR"
"#;

/// Runs `f` to completion on a fresh single-threaded tokio runtime on its own thread (so it works
/// from inside another runtime, or without one).
pub fn block_on<T: Send + 'static>(f: impl Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("test runtime")
            .block_on(f)
    })
    .join()
    .expect("test runtime thread")
}

/// Runs one statement on `url` (a fresh connection, closed afterwards).
pub fn execute(url: &str, sql: &str) -> Result<(), tokio_postgres::Error> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    block_on(async move {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        let task = tokio::spawn(conn);
        let result = client.batch_execute(&sql).await;
        drop(client);
        let _ = task.await;
        result
    })
}

/// How many messages the database at `url` holds for `room` (a fresh connection, read committed).
pub fn message_count(url: &str, room: &str) -> i64 {
    let (url, room) = (url.to_owned(), room.to_owned());
    block_on(async move {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect");
        let task = tokio::spawn(conn);
        let row = client
            .query_one("SELECT count(*) FROM messages WHERE room = $1", &[&room])
            .await
            .expect("count the room's messages");
        drop(client);
        let _ = task.await;
        row.get::<_, i64>(0)
    })
}

/// A private PostgreSQL server in a temp dir; stopped and removed on drop.
pub struct PgServer {
    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    admin_url: String,
    port: u16,
    dir: PathBuf,
    /// The watchdog shell (parent of the postmaster).
    watchdog: Child,
    /// Our end of the watchdog's pipe: closing it stops the server.
    stdin: Option<ChildStdin>,
}

impl std::fmt::Debug for PgServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgServer")
            .field("port", &self.port)
            .field("dir", &self.dir)
            .finish()
    }
}

/// The directory of the server binaries.
pub fn bindir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    debian.sort();
    if let Some((_, bin)) = debian.pop() {
        return bin;
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    PathBuf::new() // bare names, found on PATH
}

/// The uid and gid to run the server as: the `postgres` user when we are root, else ourselves.
fn server_user() -> Option<(u32, u32)> {
    let id = |args: &[&str]| -> Option<u32> {
        let out = Command::new("id").args(args).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    if id(&["-u"])? != 0 {
        return None;
    }
    let uid = id(&["-u", "postgres"]).expect("running as root: a `postgres` user is needed to run initdb and postgres");
    let gid = id(&["-g", "postgres"]).expect("gid of the postgres user");
    Some((uid, gid))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

fn command(bin: &Path, name: &str, user: Option<(u32, u32)>, cwd: &Path) -> Command {
    let mut cmd = Command::new(bin.join(name));
    cmd.current_dir(cwd).env("LC_ALL", "C").env_remove("PGDATA");
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

impl PgServer {
    /// Initializes a cluster in a temp dir and starts a server on a free port, waiting until it
    /// answers queries. Panics (with the server's log) if it cannot.
    pub fn start() -> Self {
        let mut last_log = String::new();
        for _ in 0..3 {
            match Self::try_start() {
                Ok(server) => return server,
                // Most likely another process took the port between our probe and the bind.
                Err(log) => last_log = log,
            }
        }
        panic!("the test PostgreSQL server did not start:\n{last_log}");
    }

    fn try_start() -> Result<Self, String> {
        let bin = bindir();
        let user = server_user();
        let parent = if Path::new("/tmp").is_dir() {
            PathBuf::from("/tmp")
        } else {
            std::env::temp_dir()
        };
        let dir = tempfile::Builder::new()
            .prefix("storage-pg-")
            .tempdir_in(parent)
            .expect("temp dir for the test server");
        if let Some((uid, gid)) = user {
            chown(dir.path(), Some(uid), Some(gid)).expect("hand the temp dir to the postgres user");
        }
        let data = dir.path().join("data");
        let out = command(&bin, "initdb", user, dir.path())
            .args(["-D"])
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"])
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {}: {e}. Install PostgreSQL (apt-get install postgresql) or set {PG_URL_ENV}",
                    bin.join("initdb").display()
                )
            });
        assert!(
            out.status.success(),
            "initdb failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // From here on the server (its Drop, or its watchdog) removes the directory.
        Self::spawn(&bin, user, &dir.keep(), &data)
    }

    fn spawn(bin: &Path, user: Option<(u32, u32)>, dir: &Path, data: &Path) -> Result<Self, String> {
        let port = free_port();
        let log_path = dir.join(format!("server-{port}.log"));
        let log = std::fs::File::create(&log_path).map_err(|e| format!("create the server log: {e}"))?;
        if let Some((uid, gid)) = user {
            chown(&log_path, Some(uid), Some(gid)).map_err(|e| format!("chown the server log: {e}"))?;
        }
        let mut cmd = Command::new("sh");
        cmd.current_dir(dir)
            .env("PG_TEST_DIR", dir)
            .env("LC_ALL", "C")
            .args(["-c", WATCHDOG, "pg-test-watchdog"])
            .arg(bin.join("postgres"))
            .arg("-D")
            .arg(data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200"])
            .stdin(Stdio::piped())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        if let Some((uid, gid)) = user {
            cmd.uid(uid).gid(gid);
        }
        let mut watchdog = cmd.spawn().map_err(|e| format!("spawn the server: {e}"))?;
        let stdin = watchdog.stdin.take();
        let server = Self {
            admin_url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            port,
            dir: dir.to_owned(),
            watchdog,
            stdin,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if execute(&server.admin_url, "SELECT 1").is_ok() {
                return Ok(server);
            }
            // The postmaster exits at once when it cannot bind; the watchdog then waits on its pipe.
            let postmaster_gone = !data.join("postmaster.pid").exists() && log_tail(&log_path).contains("FATAL");
            if postmaster_gone || Instant::now() > deadline {
                // Dropping `server` stops the watchdog and removes the directory.
                return Err(log_tail(&log_path));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The admin URL: user `postgres`, database `postgres`, trust auth.
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// The TCP port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (closing the watchdog's pipe, SIGKILL after [`STOP_TIMEOUT`]) and removes its directory.
    fn stop(&mut self) {
        let postmaster = std::fs::read_to_string(self.dir.join("data/postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()));
        drop(self.stdin.take());
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if matches!(self.watchdog.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !matches!(self.watchdog.try_wait(), Ok(Some(_))) {
            if let Some(pid) = postmaster {
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            }
            let _ = self.watchdog.kill();
            let _ = self.watchdog.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The private server the overlapping tests of this binary share; started on first use, stopped
/// when the last user drops it.
fn shared_server() -> Arc<PgServer> {
    static SHARED: Mutex<Weak<PgServer>> = Mutex::new(Weak::new());
    // A panicking test never holds this lock while panicking (nothing below panics while the server
    // is half made), but if one did, the Weak inside is still valid.
    let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(server) = shared.upgrade() {
        return server;
    }
    let server = Arc::new(PgServer::start());
    *shared = Arc::downgrade(&server);
    server
}

/// A fresh database with a random name; dropped (and, when it was the last user, the private
/// server stopped) when this is dropped.
pub struct TestDb {
    /// The URL of the new database.
    pub url: String,
    /// Its name.
    pub name: String,
    admin_url: String,
    server: Option<Arc<PgServer>>,
}

impl std::fmt::Debug for TestDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDb")
            .field("name", &self.name)
            .field("server", &self.server)
            .finish()
    }
}

impl TestDb {
    /// Creates a database (UTF8) on `PG_URL`'s server, or on the private server.
    pub fn create() -> Self {
        Self::create_with("")
    }

    /// [`Self::create`] with more `CREATE DATABASE` options (e.g. `LOCALE_PROVIDER icu ICU_LOCALE 'en-US'`).
    pub fn create_with(options: &str) -> Self {
        let (admin_url, server) = match std::env::var(PG_URL_ENV) {
            Ok(url) if !url.is_empty() => (url, None),
            _ => {
                let server = shared_server();
                (server.admin_url().to_owned(), Some(server))
            }
        };
        let name = random_name();
        execute(
            &admin_url,
            &format!("CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' {options}"),
        )
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name} on the test server: {}", error_chain(&e)));
        let url = database_url(&admin_url, &name);
        Self {
            url,
            name,
            admin_url,
            server,
        }
    }

    /// The admin URL of the server holding the database.
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // FORCE ends the sessions still connected (a store's pool may outlive the test's last use).
        if let Err(e) = execute(&self.admin_url, &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)) {
            let _ = writeln!(
                std::io::stderr(),
                "warning: could not drop test database {}: {}",
                self.name,
                error_chain(&e)
            );
        }
    }
}

/// `storage_test_<pid>_<random>`: unique per process and call, safe unquoted.
fn random_name() -> String {
    use std::hash::{BuildHasher, RandomState};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let random = RandomState::new().hash_one((nanos, n));
    format!("storage_test_{}_{random:016x}", std::process::id())
}

/// `admin_url` with its database replaced by `name` (URL or `key=value` form).
pub fn database_url(admin_url: &str, name: &str) -> String {
    if admin_url.starts_with("postgres://") || admin_url.starts_with("postgresql://") {
        let (base, query) = match admin_url.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (admin_url, None),
        };
        let scheme_end = base.find("://").map_or(0, |i| i + 3);
        let authority_end = base[scheme_end..].find('/').map_or(base.len(), |i| scheme_end + i);
        let mut url = format!("{}/{name}", &base[..authority_end]);
        if let Some(q) = query {
            url.push('?');
            url.push_str(q);
        }
        url
    } else {
        format!("{admin_url} dbname={name}")
    }
}

/// An error with its causes (the driver's top-level message is terse).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

#[test]
fn database_urls_keep_everything_but_the_database() {
    assert_eq!(
        database_url("postgres://postgres@127.0.0.1:5432/postgres", "x"),
        "postgres://postgres@127.0.0.1:5432/x"
    );
    assert_eq!(
        database_url("postgres://u:p@h:1?sslmode=disable", "x"),
        "postgres://u:p@h:1/x?sslmode=disable"
    );
    assert_eq!(database_url("host=/tmp user=postgres", "x"), "host=/tmp user=postgres dbname=x");
}
