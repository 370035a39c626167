//! A connection after its upgrade: the reader loop that turns socket bytes
//! into WebSocket messages and requests, the echo mode for conformance tests,
//! the idle/heartbeat sweep, and the drain on shutdown.
//!
//! Memory: an idle connection holds no read buffer. The reader waits for
//! readiness (a poll op, no buffer), reads with one non-blocking `recv` (no read op
//! in the task's state, and no second trip through the runtime) into a fresh 4 KiB
//! buffer, and frees it as soon as every complete frame in it is decoded. Its decoder (with
//! tungstenite's own buffer) is kept in the connection, not in the reader task, and the
//! once-a-second sweep drops it when the connection was silent since the sweep before
//! and the decoder holds nothing partial (`Decoder::at_rest`); the next bytes get a new
//! one. The sweep also has the outbox give back its queue's and write batch's buffers
//! when nothing was written since the sweep before (`Outbox::release_idle`).

use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use std::io::ErrorKind;

use monoio::io::{OwnedReadHalf, OwnedWriteHalf, Splitable};
use monoio::net::TcpStream;

use super::outbox::{self, Outbox};
use super::{Conn, Shard};
use crate::auth::Claims;
use crate::engine::liveness::{Liveness, LivenessCfg, SweepCtx, Verdict};
use crate::engine::session::Session;
use crate::limits::conns::SocketSlot;
use crate::metrics::ShardStats;
use crate::ws::codec::{self, Decoder, Limits, Message};

const READ_CHUNK: usize = 4096;

/// Starts an upgraded connection: its state, its writer task, its session (a token in
/// the URL is welcomed now, else `auth` is awaited until `auth_timeout_ms`), and its reader
/// task, which holds `slot` (its count in `max_conns`) until the connection ends.
/// `joins` are the rooms of `?room=` / `?resume=` (with their `since`).
pub(super) fn start_connection(
    shard: Rc<Shard>,
    stream: TcpStream,
    claims: Option<Claims>,
    joins: Vec<(String, Option<u64>)>,
    rest: BytesMut,
    slot: SocketSlot,
) {
    let fd = stream.as_raw_fd();
    let (rd, wr) = stream.into_split();
    // The writer task starts with the first frame queued (the welcome, or an answer to
    // `auth`), and leaves while the connection is idle (`outbox.rs`).
    let conn = shard.open_conn(fd, wr, shard.cfg.outbound_queue_max_bytes, joins);
    // A token in the URL was counted for its user before the upgrade (`accept`).
    conn.user_counted.set(claims.is_some());
    match claims {
        Some(c) => {
            let joins = conn.session.borrow_mut().authenticated(c);
            shard.welcome(&conn, joins);
        }
        None => {
            monoio::spawn(auth_deadline(shard.clone(), conn.clone()));
        }
    }
    monoio::spawn(Reader::task(Reader {
        shard,
        conn,
        rd,
        buf: rest,
        mode: Mode::Chat,
        _slot: Some(slot),
    }));
}

/// Starts a connection of the conformance endpoint: echoes every message through the
/// same framing path.
pub(super) fn start_echo(shard: Rc<Shard>, stream: TcpStream, rest: BytesMut) {
    // An echo peer may have a whole large message in flight while it is
    // still sending the next: the queue holds a few of the largest.
    let max = shard.cfg.echo_max_message_bytes;
    let fd = stream.as_raw_fd();
    let (rd, wr) = stream.into_split();
    let conn = shard.open_conn(fd, wr, max.saturating_mul(4), Vec::new());
    monoio::spawn(Reader::task(Reader {
        shard,
        conn,
        rd,
        buf: rest,
        mode: Mode::Echo,
        _slot: None,
    }));
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Chat,
    Echo,
}

/// A connection's reader: its task's state, kept for the connection's life.
///
/// The task is an `async` block that owns this struct and awaits [`Reader::run`] on it,
/// not an `async fn` with these as arguments: an `async fn`'s state keeps its arguments
/// twice (as given, and moved into its body), and a task's state is kept, sized by its
/// largest await point, for as long as the connection lives
/// (results/idle-breakdown-20261205.txt, part 7).
struct Reader {
    shard: Rc<Shard>,
    conn: Rc<Conn>,
    rd: OwnedReadHalf<TcpStream>,
    /// Bytes read and not yet decoded; empty, with no capacity, while idle.
    buf: BytesMut,
    mode: Mode,
    /// The connection's count in `max_conns`, released with the task.
    _slot: Option<SocketSlot>,
}

/// What one `recv` found.
#[derive(PartialEq, Eq)]
enum Recv {
    Got,
    Nothing,
    End,
}

impl Reader {
    /// The reader task: reads to the connection's end, then closes it here.
    // Not an `async fn`: that would keep `r` twice in the task's state (see the type's doc).
    #[allow(clippy::manual_async_fn)]
    fn task(mut r: Self) -> impl std::future::Future<Output = ()> {
        async move {
            r.run().await;
            r.conn.out.reader_finished();
            r.shard.close_conn(&r.conn);
        }
    }

    fn limits(&self) -> Limits {
        match self.mode {
            Mode::Chat => Limits {
                max_frame_bytes: self.shard.cfg.max_frame_bytes,
                max_message_bytes: self.shard.cfg.max_message_bytes,
            },
            Mode::Echo => Limits {
                max_frame_bytes: self.shard.cfg.echo_max_message_bytes,
                max_message_bytes: self.shard.cfg.echo_max_message_bytes,
            },
        }
    }

    fn fd(&self) -> RawFd {
        // SAFETY: as in `readable`: a shared borrow of the stream, for its fd only.
        unsafe { &*self.rd.0.get() }.as_raw_fd()
    }

    /// Reads until the peer's end, a socket error, a close or a protocol violation.
    async fn run(&mut self) {
        loop {
            if !self.decode() {
                return;
            }
            if self.buf.is_empty() {
                self.buf = BytesMut::new(); // release the buffer while idle
                if !self.readable().await {
                    return;
                }
            }
            // Readable, or a partial frame waits for more: one `recv` takes what is there,
            // with no io_uring op and no second trip through the runtime; nothing there yet
            // (a relaxed readiness, or the rest of a frame still on its way) waits again.
            loop {
                match self.recv() {
                    Recv::Got => break,
                    Recv::End => return,
                    Recv::Nothing => {
                        if self.buf.is_empty() {
                            self.buf = BytesMut::new();
                        }
                        if !self.readable().await {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Decodes and handles every complete message in the buffer; false when the connection
    /// is done reading.
    fn decode(&mut self) -> bool {
        if self.buf.is_empty() {
            return true;
        }
        // Liveness counts complete frames, not bytes: a peer that trickles a byte now and
        // then is as silent as one that sends nothing (`idle_timeout_ms`).
        let mut complete = false;
        // The decoder lives in the connection between reads (the sweep may drop a silent
        // connection's); none is kept in this task's state.
        let mut dec = self.conn.decoder.take().unwrap_or_else(|| Box::new(Decoder::new(self.limits())));
        let go_on = loop {
            match dec.decode(&mut self.buf) {
                Ok(Some(msg)) => {
                    complete = true;
                    if !on_message(&self.shard, &self.conn, msg, self.mode) {
                        break false;
                    }
                }
                Ok(None) => break true,
                Err(v) => {
                    tracing::debug!(conn = self.conn.id, code = v.code, reason = v.reason, "protocol violation");
                    self.conn.out.close(v.code, v.reason);
                    break false;
                }
            }
        };
        if go_on {
            self.conn.decoder.set(Some(dec));
        }
        if complete {
            let mut l = self.conn.liveness.get();
            l.heard(Shard::now_ms());
            self.conn.liveness.set(l);
        }
        go_on
    }

    /// One non-blocking `recv` into the buffer.
    fn recv(&mut self) -> Recv {
        let fd = self.fd();
        loop {
            if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
                self.buf.reserve(READ_CHUNK);
            }
            return match recv_now(fd, &mut self.buf) {
                Ok(0) => Recv::End,
                Ok(_) => Recv::Got,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => Recv::Nothing,
                Err(_) => Recv::End,
            };
        }
    }

    /// Waits until the socket is readable (a poll op, no buffer); false when it failed.
    ///
    /// Not relaxed: on the epoll driver a relaxed wait returns at once while monoio's cached
    /// readiness is set, and only a monoio read that meets `EAGAIN` clears it; `recv_now`
    /// is not one, so the reader would spin. Strict, the epoll driver checks with `poll`
    /// and clears the readiness itself; io_uring's poll op is the same either way.
    async fn readable(&self) -> bool {
        // SAFETY: the read half is used by its reader task only; `readable` takes `&self` and
        // only polls the fd, which outlives this borrow.
        let stream = unsafe { &*self.rd.0.get() };
        stream.readable(false).await.is_ok()
    }
}

/// Appends what the socket holds now to `buf`'s spare capacity, without waiting
/// (`MSG_DONTWAIT`, whatever the fd's mode): `Ok(0)` is the peer's end of stream.
fn recv_now(fd: RawFd, buf: &mut BytesMut) -> std::io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    // SAFETY: `recv` writes at most `spare.len()` bytes at `spare`'s start, memory `buf`
    // owns and does not read until `set_len` below covers exactly the bytes written.
    let n = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), spare.len(), libc::MSG_DONTWAIT) };
    let n = usize::try_from(n).map_err(|_| std::io::Error::last_os_error())?;
    // SAFETY: the first `n` bytes of the spare capacity were written by `recv`.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// Handles one message; false when the connection is done reading.
fn on_message(shard: &Rc<Shard>, conn: &Rc<Conn>, msg: Message, mode: Mode) -> bool {
    match msg {
        Message::Text(bytes) if mode == Mode::Echo => {
            conn.out.push_live(bytes);
        }
        Message::Binary(bytes) if mode == Mode::Echo => {
            conn.out.push_shared(codec::binary_header(bytes.len()), bytes);
        }
        Message::Text(bytes) => match std::str::from_utf8(&bytes) {
            Ok(text) => shard.handle_text(conn, text),
            Err(_) => conn.out.close(1007, "invalid utf-8"),
        },
        Message::Binary(_) => shard.reply_error(
            conn,
            None,
            crate::protocol::ErrorCode::BadRequest,
            "binary frames are not supported: send JSON text frames",
            None,
        ),
        Message::Ping(p) => {
            conn.out.push_frame(codec::control_frame(codec::ControlKind::Pong, &p));
        }
        Message::Pong(_) => {}
        Message::Close(frame) => {
            let code = frame.map_or(1000, |f| f.code);
            conn.out.close(code, "");
            return false;
        }
    }
    true
}

async fn auth_deadline(shard: Rc<Shard>, conn: Rc<Conn>) {
    monoio::time::sleep(Duration::from_millis(shard.cfg.auth_timeout_ms)).await;
    if conn.user().is_none() && !conn.out.is_closing() {
        conn.out.close(1008, "auth timeout");
    }
}

/// Every second: the engine's ticks (delivered marks, coalesced presence counts,
/// receipts), then each connection's liveness (`engine::liveness` decides: an expired
/// session closed, a stalled write cut, a silent connection pinged or closed).
pub(super) async fn run_idle_sweep(shard: Rc<Shard>) {
    let cfg = LivenessCfg {
        idle_ms: shard.cfg.idle_timeout_ms,
        heartbeat_ms: shard.cfg.heartbeat_ms,
    };
    let stall_ms = shard.cfg.write_stall_timeout_ms;
    let ping = codec::control_frame(codec::ControlKind::Ping, b"hb");
    loop {
        monoio::time::sleep(Duration::from_secs(1)).await;
        shard.delivered_tick();
        shard.owner_tick();
        shard.cluster_state_tick();
        shard.cluster_receipts_tick();
        let now = Shard::now_ms();
        for conn in shard.conns.borrow().values() {
            // A session lives as long as its token: past `exp` (and the leeway) without a
            // `refresh`, it is closed.
            let cx = SweepCtx {
                expired: conn.session.borrow().expired(&shard.verifier, now / 1000),
                write_stalled: conn.out.write_stalled(outbox::mono_ms(), stall_ms),
                closing: conn.out.is_closing(),
            };
            let mut l = conn.liveness.get();
            let verdict = l.sweep(cfg, now, cx);
            conn.liveness.set(l);
            match verdict {
                Verdict::Keep | Verdict::CutStalled { first: false } => {}
                Verdict::Ping => {
                    conn.out.push_frame(ping.clone());
                }
                Verdict::Close(code, reason) => conn.out.close(code, reason),
                Verdict::CutStalled { first: true } => {
                    ShardStats::inc(&shard.stats().write_stalled_total);
                    tracing::debug!(conn = conn.id, "write stalled: socket shut down");
                    conn.out.shutdown_socket();
                }
            }
            conn.out.release_idle();
            // A connection silent since the sweep before, its decoder holding nothing
            // partial, gives the decoder back (about 520 bytes with tungstenite's buffer).
            if now.saturating_sub(l.last_heard_ms()) >= 1_000 {
                if let Some(dec) = conn.decoder.take() {
                    if !dec.at_rest() {
                        conn.decoder.set(Some(dec));
                    }
                }
            }
        }
    }
}

impl Shard {
    /// A connection's state, with the `?room=`/`?resume=` joins its session runs after `auth`.
    fn open_conn(&self, fd: RawFd, wr: OwnedWriteHalf<TcpStream>, max_queued_bytes: usize, joins: Vec<(String, Option<u64>)>) -> Rc<Conn> {
        let out = Outbox::for_socket(wr, fd, max_queued_bytes, self.cfg.outbound_queue_max_frames);
        let now = Self::now_ms();
        let conn = Rc::new(Conn {
            id: self.new_conn_id(),
            out,
            session: RefCell::new(Session::new(&self.session_limits, joins)),
            liveness: Cell::new(Liveness::new(now)),
            user_counted: Cell::new(false),
            decoder: Cell::new(None),
        });
        self.conns.borrow_mut().insert(conn.id, conn.clone());
        ShardStats::set(
            &self.stats().connections_open,
            self.conns.borrow().len() as u64 - self.api_conns.get(),
        );
        conn
    }

    fn close_conn(&self, conn: &Rc<Conn>) {
        if conn.out.was_slow() {
            ShardStats::inc(&self.stats().slow_consumer_total);
        }
        self.leave_all(conn);
        self.user_offline(conn);
        if conn.user_counted.replace(false) {
            if let Some(user) = conn.user() {
                self.conn_table.close_user(&user.sub);
            }
        }
        self.conns.borrow_mut().remove(&conn.id);
        ShardStats::set(
            &self.stats().connections_open,
            self.conns.borrow().len() as u64 - self.api_conns.get(),
        );
    }

    /// Resolves once a drain was requested.
    pub(super) async fn drain_requested(&self) {
        std::future::poll_fn(|cx| {
            if self.draining.get() {
                return std::task::Poll::Ready(());
            }
            self.drain_waker.set(Some(cx.waker().clone()));
            std::task::Poll::Pending
        })
        .await;
    }

    /// Starts the drain: the accept loop stops, then [`Shard::drain`] runs.
    pub(super) fn begin_drain(&self, retry_ms_max: u64) {
        self.drain_retry_ms_max.set(retry_ms_max);
        self.draining.set(true);
        if let Some(w) = self.drain_waker.take() {
            w.wake();
        }
    }

    /// Tells every client to reconnect (jittered), closes them 1012, and
    /// waits for them to go, at most `drain_timeout_ms`.
    pub(super) async fn drain(&self) {
        let max = self.drain_retry_ms_max.get().max(1);
        let conns: Vec<Rc<Conn>> = self.conns.borrow().values().cloned().collect();
        tracing::info!(shard = self.id, connections = conns.len(), "draining");
        self.seq_stopping();
        for conn in &conns {
            let retry_ms = rand::random_range(0..max);
            conn.out.push_text(crate::protocol::server::reconnect(retry_ms, "drain"));
            conn.out.close(1012, "service restart");
        }
        drop(conns);
        let deadline = monoio::time::Instant::now() + Duration::from_millis(self.cfg.drain_timeout_ms);
        while !self.conns.borrow().is_empty() && monoio::time::Instant::now() < deadline {
            monoio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
