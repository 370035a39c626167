//! Test support: the real `edge` binary on a free loopback port, and real
//! WebSocket clients (tungstenite over std sockets, or raw bytes).
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

pub const SECRET: &str = "integration-test-secret-0123456789abcdef";

/// A running edge node, killed on drop.
pub struct Server {
    child: Child,
    pub addr: String,
    pub driver: String,
    /// The node's data directory (the embedded store lives here).
    pub data_dir: PathBuf,
}

/// Reads a starting node's banner line from its piped stdout: the line and the address it serves.
pub fn read_banner(child: &mut Child) -> (String, String) {
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read banner");
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ws://"))
        .and_then(|w| w.strip_suffix("/ws"))
        .unwrap_or_else(|| panic!("no address in banner {line:?}"))
        .to_owned();
    (line, addr)
}

/// A fresh, empty directory under the system temp dir, unique to this test process and call.
pub fn temp_data_dir(tag: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("edge-it-{}-{tag}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create data dir");
    dir
}

impl Server {
    /// A node with 2 shards and a fresh data directory.
    pub fn start(driver: &str, envs: &[(&str, &str)]) -> Self {
        Self::start_with(driver, envs, &[], &temp_data_dir("node"))
    }

    /// A node with 2 shards on `data_dir` (reuse a directory to restart on the same store),
    /// with extra `serve` flags such as `["--durability", "durable"]`.
    pub fn start_with(driver: &str, envs: &[(&str, &str)], args: &[&str], data_dir: &Path) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_edge"));
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--cores",
            "2",
            "--jwt-secret",
            SECRET,
            "--driver",
            driver,
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn edge");
        let (line, addr) = read_banner(&mut child);
        let driver = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("driver="))
            .unwrap_or("")
            .to_owned();
        Self {
            child,
            addr,
            driver,
            data_dir: data_dir.to_owned(),
        }
    }

    /// Kills the node with SIGKILL (no drain, no store flush) and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal and waits for the exit status (at most `limit`).
    /// Stops the node cleanly (SIGTERM: drain, flush the store, end the run) and checks it
    /// exited 0 within 15 s.
    pub fn stop_clean(mut self) {
        let status = self.signal_and_wait(libc::SIGTERM, Duration::from_secs(15));
        assert!(status.is_some_and(|st| st.success()), "clean stop: {status:?}");
    }

    pub fn signal_and_wait(&mut self, sig: i32, limit: Duration) -> Option<std::process::ExitStatus> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HS256 token for `user`, signed with the test secret.
pub fn token(user: &str) -> String {
    token_with(user, None)
}

pub fn token_with(user: &str, rooms: Option<Vec<String>>) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    edge::auth::mint_hs256(SECRET, user, 3600, rooms, None, now).expect("mint")
}

/// A WebSocket client over a real socket.
pub struct Client {
    pub ws: WebSocket<TcpStream>,
    pub welcome: Value,
    /// Frames read while waiting for something else, returned by `recv` first.
    pub backlog: std::collections::VecDeque<Value>,
}

impl Client {
    /// Connects with `?token=` (+ extra query) and reads `welcome`.
    pub fn connect(addr: &str, user: &str, query: &str) -> Self {
        let mut c = Self::connect_raw_query(addr, &format!("token={}{query}", token(user))).expect("upgrade");
        c.welcome = c.recv_type("welcome");
        c
    }

    pub fn connect_raw_query(addr: &str, query: &str) -> Result<Self, tungstenite::Error> {
        let stream = TcpStream::connect(addr).expect("tcp connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let url = format!("ws://{addr}/ws?{query}");
        let (ws, _) = tungstenite::client(url.as_str(), stream).map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => e,
            tungstenite::HandshakeError::Interrupted(_) => tungstenite::Error::ConnectionClosed,
        })?;
        Ok(Self {
            ws,
            welcome: Value::Null,
            backlog: Default::default(),
        })
    }

    pub fn shard(&self) -> u64 {
        self.welcome["shard"].as_u64().expect("welcome.shard")
    }

    pub fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).expect("send");
    }

    /// Next JSON frame (control frames skipped); panics on timeout or close.
    pub fn recv(&mut self) -> Value {
        if let Some(v) = self.backlog.pop_front() {
            return v;
        }
        loop {
            match self.ws.read().expect("read frame") {
                Message::Text(t) => return serde_json::from_str(t.as_str()).expect("json"),
                Message::Close(c) => panic!("closed: {c:?}"),
                _ => {}
            }
        }
    }

    /// The next room frame: like [`Self::recv`], but passes over `presence` events, which
    /// members get whenever users come and go and which may fall between any two frames.
    pub fn recv_chat(&mut self) -> Value {
        loop {
            let v = self.recv();
            if v["type"] != "presence" {
                return v;
            }
        }
    }

    /// Reads frames until one of type `ty` (others are returned in order via `skipped`).
    pub fn recv_type(&mut self, ty: &str) -> Value {
        for _ in 0..10_000 {
            let v = self.recv();
            if v["type"] == ty {
                return v;
            }
        }
        panic!("no {ty} frame");
    }

    /// Sends a request with `id` and returns its reply (the frame with that id).
    pub fn request(&mut self, mut v: Value, id: &str) -> Value {
        v["id"] = json!(id);
        self.send(v);
        let mut skipped = Vec::new();
        for _ in 0..10_000 {
            let r = self.recv();
            if r["id"] == id {
                // Frames that arrived before the reply stay readable, in order.
                for v in skipped.into_iter().rev() {
                    self.backlog.push_front(v);
                }
                return r;
            }
            skipped.push(r);
        }
        panic!("no reply to {id}");
    }

    pub fn join(&mut self, room: &str) -> Value {
        let r = self.request(json!({"type": "join", "room": room}), &format!("j-{room}"));
        assert_eq!(r["type"], "joined", "join reply {r}");
        r
    }

    /// Reads until the close frame; returns its code.
    pub fn close_code(&mut self) -> Option<u16> {
        loop {
            match self.ws.read() {
                Ok(Message::Close(Some(f))) => return Some(u16::from(f.code)),
                Ok(Message::Close(None)) => return Some(1005),
                Ok(_) => {}
                Err(tungstenite::Error::Protocol(_)) | Err(tungstenite::Error::ConnectionClosed) => return None,
                Err(e) => panic!("read error before close: {e}"),
            }
        }
    }
}

pub fn close_code_u16(c: CloseCode) -> u16 {
    u16::from(c)
}

/// A raw socket that has completed the upgrade: write any bytes, read frames.
pub struct Raw {
    pub s: TcpStream,
}

impl Raw {
    pub fn connect(addr: &str, query: &str) -> Self {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let req = format!(
            "GET /ws?{query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        s.write_all(req.as_bytes()).expect("write");
        let head = read_head(&mut s);
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade failed: {head}");
        Self { s }
    }

    /// A masked client frame.
    pub fn frame(opcode: u8, fin: bool, payload: &[u8], masked: bool) -> Vec<u8> {
        let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let m = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => f.push(m | n as u8),
            n if n < 65536 => {
                f.push(m | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(m | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let key = [0x11, 0x22, 0x33, 0x44];
        if masked {
            f.extend_from_slice(&key);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            f.extend_from_slice(payload);
        }
        f
    }

    pub fn write(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("write");
    }

    /// The next server frame: its opcode and payload; `None` when the socket ends.
    pub fn next_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut h = [0u8; 2];
        self.s.read_exact(&mut h).ok()?;
        let mut len = u64::from(h[1] & 0x7f);
        if len == 126 {
            let mut b = [0u8; 2];
            self.s.read_exact(&mut b).ok()?;
            len = u64::from(u16::from_be_bytes(b));
        } else if len == 127 {
            let mut b = [0u8; 8];
            self.s.read_exact(&mut b).ok()?;
            len = u64::from_be_bytes(b);
        }
        let mut payload = vec![0u8; len as usize];
        self.s.read_exact(&mut payload).ok()?;
        Some((h[0] & 0x0f, payload))
    }

    /// The next text frame's JSON (other frames skipped); panics if the socket ends first.
    pub fn next_json(&mut self) -> Value {
        loop {
            let (op, payload) = self.next_frame().expect("a text frame before the socket ended");
            match op {
                0x1 => return serde_json::from_slice(&payload).expect("JSON"),
                0x8 => panic!("closed: {payload:?}"),
                _ => {}
            }
        }
    }

    /// Reads server frames until a close frame; returns its code.
    pub fn close_code(&mut self) -> Option<u16> {
        loop {
            let (op, payload) = self.next_frame()?;
            if op == 0x8 {
                return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
    }
}

/// Reads an HTTP response head.
pub fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Raw HTTP GET; returns status line + body.
pub fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// The drivers the io tests run on.
pub fn drivers() -> Vec<&'static str> {
    vec!["io_uring", "epoll"]
}

/// A private redis-server on a free loopback port (no persistence), killed on drop.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server and waits until it answers PING.
    pub fn start() -> Self {
        // Port 0 asks the kernel for a free port; it is released just before redis-server binds it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut server = Self { port, child: None };
        server.restart();
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL nodes connect to.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server (again) on the same port; all data is gone.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut child = Command::new("redis-server")
                .args([
                    "--port",
                    &self.port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server (apt-get install redis-server)");
            while Instant::now() < deadline {
                if self.ping() {
                    self.child = Some(child);
                    return;
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // exited (port not free yet?): try again
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(Instant::now() < deadline, "redis-server did not answer PING on port {}", self.port);
        }
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends one command to the Redis on `port` (RESP2) and returns the raw reply text
/// (e.g. `*2\r\n$12\r\nchat:{r}:ch\r\n:1\r\n`). Panics if Redis does not answer within 2 s.
pub fn redis_cmd(port: u16, args: &[&str]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connect to redis on {port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).expect("write to redis");
    let mut r = BufReader::new(s);
    let mut out = String::new();
    read_resp(&mut r, &mut out);
    out
}

/// Reads one complete RESP2 value, appending its raw text to `out`.
pub fn read_resp(r: &mut impl BufRead, out: &mut String) {
    let mut line = String::new();
    r.read_line(&mut line).unwrap_or_else(|e| panic!("redis reply after {out:?}: {e}"));
    assert!(line.ends_with("\r\n"), "truncated redis reply: {out:?} + {line:?}");
    out.push_str(&line);
    let n: i64 = line[1..line.len() - 2].parse().unwrap_or(0);
    match line.as_bytes()[0] {
        b'$' if n >= 0 => {
            let mut buf = vec![0u8; n as usize + 2];
            r.read_exact(&mut buf).expect("redis bulk string");
            out.push_str(&String::from_utf8_lossy(&buf));
        }
        b'*' => {
            for _ in 0..n.max(0) {
                read_resp(r, out);
            }
        }
        _ => {}
    }
}

/// The sum over shards of metric `edge_<name>` from `/metrics`.
pub fn metric_sum(addr: &str, name: &str) -> u64 {
    let text = http_get(addr, "/metrics");
    let prefix = format!("edge_{name}{{");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}
