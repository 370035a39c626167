//! A connection after its upgrade: its read side, which turns socket bytes into WebSocket
//! messages and requests, the echo mode for conformance tests, the idle/heartbeat sweep,
//! and the drain on shutdown.
//!
//! A connection has no reader task: its socket is in the shard's epoll set
//! (`readiness.rs`), and each time it is ready the shard's one reader task calls
//! [`on_readable`] on it: one non-blocking `recv`, then every complete frame decoded and
//! handled, synchronously (nothing in reading waits on anything but readiness).
//!
//! Memory: a connection holds no read buffer. A `recv` reads into the shard reader's one
//! buffer (4 KiB), and decoding uses it all up: tungstenite keeps a partial frame to
//! itself, in the decoder. The decoder (with
//! tungstenite's own buffer) is kept in the connection, and the once-a-second sweep drops
//! it when the connection was silent since the sweep before and the decoder holds nothing
//! partial (`Decoder::at_rest`); the next bytes get a new one. The sweep also has the
//! outbox give back its queue's and write batch's buffers when nothing was written since
//! the sweep before (`Outbox::release_idle`).

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
/// the URL is welcomed now, else `auth` is awaited until `auth_timeout_ms`), and its
/// reading, which holds `slot` (its count in `max_conns`) until the connection ends.
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
    let read = ReadSide::new(rd, Some(slot));
    // The writer task starts with the first frame queued (the welcome, or an answer to
    // `auth`), and leaves while the connection is idle (`outbox.rs`).
    let conn = shard.open_conn(fd, wr, shard.cfg.outbound_queue_max_bytes, joins, read, Mode::Chat);
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
    start_reading(&shard, &conn, rest);
}

/// Starts a connection of the conformance endpoint: echoes every message through the
/// same framing path.
pub(super) fn start_echo(shard: Rc<Shard>, stream: TcpStream, rest: BytesMut) {
    // An echo peer may have a whole large message in flight while it is
    // still sending the next: the queue holds a few of the largest.
    let max = shard.cfg.echo_max_message_bytes;
    let fd = stream.as_raw_fd();
    let (rd, wr) = stream.into_split();
    let read = ReadSide::new(rd, None);
    let conn = shard.open_conn(fd, wr, max.saturating_mul(4), Vec::new(), read, Mode::Echo);
    start_reading(&shard, &conn, rest);
}

/// What a connection's messages are for: chat requests, or the conformance endpoint's echo.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Chat,
    Echo,
}

/// A connection's read side, kept in its `Conn` for its life (no task of its own).
pub(super) struct ReadSide {
    /// The socket's read half, until reading ends: it keeps the socket open while the fd
    /// is in the shard's epoll set. None for a connection with no socket (an API request's).
    rd: Cell<Option<OwnedReadHalf<TcpStream>>>,
    /// The connection's count in `max_conns`, released when reading ends.
    slot: Cell<Option<SocketSlot>>,
}

impl ReadSide {
    fn new(rd: OwnedReadHalf<TcpStream>, slot: Option<SocketSlot>) -> Self {
        Self {
            rd: Cell::new(Some(rd)),
            slot: Cell::new(slot),
        }
    }

    /// The read side of a connection with no socket: nothing is ever read.
    pub(super) fn none() -> Self {
        Self {
            rd: Cell::new(None),
            slot: Cell::new(None),
        }
    }
}

/// What one `recv` found.
#[derive(PartialEq, Eq)]
enum Recv {
    Got,
    Nothing,
    End,
}

/// Decodes what came with the upgrade (`rest`), then puts the socket in the shard's epoll set.
fn start_reading(shard: &Rc<Shard>, conn: &Rc<Conn>, mut rest: BytesMut) {
    if !decode(shard, conn, &mut rest) {
        finish_reading(shard, conn, false);
        return;
    }
    if let Err(e) = shard.readiness.add(conn.out.fd(), conn.id) {
        // The set is bounded by the user's `max_user_watches` (about 4% of memory).
        tracing::warn!(conn = conn.id, error = %e, "cannot watch the socket: closing it");
        conn.out.close(1011, "server cannot watch the socket");
        finish_reading(shard, conn, false);
    }
}

/// The shard's reader found the socket ready: one `recv` takes what is there (one per
/// turn, so a busy peer waits its turn behind the other ready sockets), then every
/// complete message in it is handled. `buf` is the shard reader's, empty on entry and left
/// empty.
///
/// Only sockets are in the set, and a connection leaves it (and the shard's map) when its
/// reading ends, so `conn` has its read half.
pub(super) fn on_readable(shard: &Rc<Shard>, conn: &Rc<Conn>, buf: &mut BytesMut) {
    let go_on = match recv(conn.out.fd(), buf) {
        Recv::Got => decode(shard, conn, buf),
        Recv::Nothing => true, // a spurious wakeup
        Recv::End => false,
    };
    // Decoding used every byte (see `decode`); anything left is past the peer's close,
    // which the decoder would drop too.
    buf.clear();
    if !go_on {
        finish_reading(shard, conn, true);
    }
}

/// Reading ended (the peer's end, a socket error, a close or a protocol violation): the
/// socket leaves the epoll set, the writer is told, the connection closes here, and the
/// read half and the `max_conns` slot go.
fn finish_reading(shard: &Shard, conn: &Rc<Conn>, watched: bool) {
    if watched {
        shard.readiness.remove(conn.out.fd());
    }
    conn.out.reader_finished();
    shard.close_conn(conn);
    drop(conn.read.rd.take());
    drop(conn.read.slot.take());
}

fn limits(shard: &Shard, mode: Mode) -> Limits {
    match mode {
        Mode::Chat => Limits {
            max_frame_bytes: shard.cfg.max_frame_bytes,
            max_message_bytes: shard.cfg.max_message_bytes,
        },
        Mode::Echo => Limits {
            max_frame_bytes: shard.cfg.echo_max_message_bytes,
            max_message_bytes: shard.cfg.echo_max_message_bytes,
        },
    }
}

/// Decodes and handles every complete message in `buf`; false when the connection is
/// done reading. It uses `buf` up: the decoder returns nothing more only once its input is
/// empty (tungstenite keeps a partial frame in the decoder) or it has closed.
fn decode(shard: &Rc<Shard>, conn: &Rc<Conn>, buf: &mut BytesMut) -> bool {
    if buf.is_empty() {
        return true;
    }
    let mode = conn.mode;
    // Liveness counts complete frames, not bytes: a peer that trickles a byte now and
    // then is as silent as one that sends nothing (`idle_timeout_ms`).
    let mut complete = false;
    // The decoder lives in the connection between reads (the sweep may drop a silent
    // connection's).
    let mut dec = conn.decoder.take().unwrap_or_else(|| Box::new(Decoder::new(limits(shard, mode))));
    let go_on = loop {
        match dec.decode(buf) {
            Ok(Some(msg)) => {
                complete = true;
                if !on_message(shard, conn, msg, mode) {
                    break false;
                }
            }
            Ok(None) => break true,
            Err(v) => {
                tracing::debug!(conn = conn.id, code = v.code, reason = v.reason, "protocol violation");
                conn.out.close(v.code, v.reason);
                break false;
            }
        }
    };
    if go_on {
        conn.decoder.set(Some(dec));
    }
    if complete {
        let mut l = conn.liveness.get();
        l.heard(Shard::now_ms());
        conn.liveness.set(l);
    }
    go_on
}

/// One non-blocking `recv` into `buf`.
fn recv(fd: RawFd, buf: &mut BytesMut) -> Recv {
    loop {
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        return match recv_now(fd, buf) {
            Ok(0) => Recv::End,
            Ok(_) => Recv::Got,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => Recv::Nothing,
            Err(_) => Recv::End,
        };
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
        // What the sweep (and the last second) freed goes back to the OS once its purge delay passed.
        crate::heap::collect_freed();
    }
}

impl Shard {
    /// A connection's state, with the `?room=`/`?resume=` joins its session runs after `auth`.
    fn open_conn(
        &self,
        fd: RawFd,
        wr: OwnedWriteHalf<TcpStream>,
        max_queued_bytes: usize,
        joins: Vec<(String, Option<u64>)>,
        read: ReadSide,
        mode: Mode,
    ) -> Rc<Conn> {
        let out = Outbox::for_socket(wr, fd, max_queued_bytes, self.cfg.outbound_queue_max_frames);
        let now = Self::now_ms();
        let conn = Rc::new(Conn {
            id: self.new_conn_id(),
            out,
            session: RefCell::new(Session::new(&self.session_limits, joins)),
            liveness: Cell::new(Liveness::new(now)),
            user_counted: Cell::new(false),
            decoder: Cell::new(None),
            read,
            mode,
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
