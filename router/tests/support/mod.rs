//! Test support for the bridge: a private redis-server per test, bridge
//! configs with short timings, and waiting helpers with deadlines.
//!
//! Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use router::bridge::{self, Bridge, BridgeConfig, BridgeEvent, BridgeEvents, PreparedMessage, SEQ_PLACEHOLDER};

/// A redis-server on a free loopback port, killed on drop.
pub(crate) struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server with no persistence and waits until it answers PING.
    pub(crate) fn start() -> Self {
        // Port 0 asks the kernel for a free port; it is released just
        // before redis-server binds it.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut server = Self { port, child: None };
        server.restart();
        server
    }

    /// The URL bridges connect to.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server (again) on the same port; all data is gone.
    pub(crate) fn restart(&mut self) {
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

/// A config for `node` against `redis`, with timings short enough for tests.
pub(crate) fn config(redis: &RedisServer, node: &str) -> BridgeConfig {
    BridgeConfig {
        redis_url: redis.url(),
        node_id: node.into(),
        recent_len: 1000,
        batch_max: 64,
        presence_lease_ms: 1500,
        heartbeat_ms: 300,
        reconnect_min_ms: 50,
        reconnect_max_ms: 400,
        command_timeout_ms: 3000,
        connect_timeout_ms: 1000,
        ..BridgeConfig::default()
    }
}

/// Starts a bridge and waits until it is ready.
pub(crate) async fn node(config: BridgeConfig) -> Bridge {
    let bridge = bridge::start(config).expect("bridge starts");
    let h = bridge.handle.clone();
    wait_until("bridge ready", || h.is_ready()).await;
    bridge
}

/// Polls `cond` every 20 ms for up to 10 s; panics naming `what` if it
/// never holds.
pub(crate) async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next event, within 10 s.
pub(crate) async fn next_event(events: &mut BridgeEvents) -> BridgeEvent {
    tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("an event within 10 s")
        .expect("bridge still running")
}

/// Events until (and including) the first one `pick` accepts, within 10 s.
pub(crate) async fn until_event(events: &mut BridgeEvents, mut pick: impl FnMut(&BridgeEvent) -> bool) -> Vec<BridgeEvent> {
    let mut seen = Vec::new();
    loop {
        let e = next_event(events).await;
        let done = pick(&e);
        seen.push(e);
        if done {
            return seen;
        }
    }
}

/// `n` Deliver events of `room` (other events are kept in the result too).
pub(crate) async fn deliveries(events: &mut BridgeEvents, room: &str, n: usize) -> Vec<BridgeEvent> {
    let mut seen = Vec::new();
    let mut got = 0;
    while got < n {
        let e = next_event(events).await;
        if matches!(&e, BridgeEvent::Deliver { room: r, .. } if r == room) {
            got += 1;
        }
        seen.push(e);
    }
    seen
}

/// A client JSON message with the seq placeholder.
pub(crate) fn message(room: &str, body: &str) -> PreparedMessage {
    let json = format!(r#"{{"type":"message","room":"{room}",{SEQ_PLACEHOLDER},"from":"u1","body":"{body}"}}"#);
    PreparedMessage::new(room, json.into_bytes()).expect("placeholder present")
}

/// A plain fred client for checks and for playing a third party.
pub(crate) async fn probe(redis: &RedisServer) -> fred::clients::Client {
    use fred::interfaces::ClientLike;
    let config = fred::types::config::Config::from_url(&redis.url()).expect("url");
    let client = fred::types::Builder::from_config(config).build().expect("client");
    client.init().await.expect("probe connects");
    client
}

/// Runs a future on the current thread with no runtime at all, parking
/// while it is pending: what a non-tokio caller (a monoio shard) amounts to.
pub(crate) fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let mut f = std::pin::pin!(f);
    let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}
