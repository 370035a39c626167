//! One connection's outbound queue and the task that writes it.
//!
//! Fan-out pushes `(header, shared payload)` pairs: the payload `Bytes` is the
//! one rendering every member shares; only the 2–10 byte WebSocket header is
//! per socket. The writer task wakes once per burst and writes every queued
//! frame with one `writev` (corking: all frames queued while the shard was
//! busy go out in one syscall).
//!
//! Bounds: `max_bytes` and `max_frames`; a push past either closes the
//! connection with 4008 (slow consumer) after dropping what was queued —
//! messages are never shed silently, the client catches up on reconnect.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use monoio::buf::IoVecBuf;
use monoio::io::{AsyncWriteRent, OwnedWriteHalf};
use monoio::net::TcpStream;

use crate::ws::codec::{self, Header};

/// Close code for a consumer too slow to take its messages.
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;
/// Frames written by one `writev` at most (IOV_MAX is 1024; two iovecs a frame).
const MAX_FRAMES_PER_WRITE: usize = 256;
/// Time the writer waits for the peer's close reply before cutting the socket.
const CLOSE_LINGER: Duration = Duration::from_millis(1_000);

/// One queued frame: a header plus a shared payload, or a complete frame.
#[derive(Debug)]
enum OutFrame {
    Shared(Header, Bytes),
    Whole(Bytes),
}

impl OutFrame {
    fn len(&self) -> usize {
        match self {
            Self::Shared(h, p) => h.as_bytes().len() + p.len(),
            Self::Whole(b) => b.len(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// A close frame is queued; nothing more is accepted.
    Closing,
    /// The socket failed or the writer finished.
    Done,
}

/// The outbound side of one connection, shared by its reader and writer
/// tasks and by the shard's fan-out (all on one thread).
pub struct Outbox {
    queue: RefCell<VecDeque<OutFrame>>,
    queued_bytes: Cell<usize>,
    state: Cell<State>,
    writer: Cell<Option<Waker>>,
    reader_done: Cell<bool>,
    slow: Cell<bool>,
    reader_waiter: Cell<Option<Waker>>,
    max_bytes: usize,
    max_frames: usize,
    fd: RawFd,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("queued_bytes", &self.queued_bytes.get())
            .field("state", &self.state.get())
            .finish_non_exhaustive()
    }
}

impl Outbox {
    /// An empty queue for the socket `fd` with the configured bounds.
    pub fn new(fd: RawFd, max_bytes: usize, max_frames: usize) -> Self {
        Self {
            queue: RefCell::new(VecDeque::new()),
            queued_bytes: Cell::new(0),
            state: Cell::new(State::Open),
            writer: Cell::new(None),
            reader_done: Cell::new(false),
            slow: Cell::new(false),
            reader_waiter: Cell::new(None),
            max_bytes,
            max_frames,
            fd,
        }
    }

    /// Queues a text message whose rendered payload is shared with others.
    /// Returns false when the connection is closing or was just closed 4008.
    pub fn push_text(&self, payload: Bytes) -> bool {
        let frame = OutFrame::Shared(codec::text_header(payload.len()), payload);
        self.push(frame)
    }

    /// Queues a payload behind a header the caller chose (binary echo).
    pub fn push_shared(&self, header: Header, payload: Bytes) -> bool {
        self.push(OutFrame::Shared(header, payload))
    }

    /// Queues a complete, already-framed control frame (pong).
    pub fn push_frame(&self, frame: Bytes) -> bool {
        self.push(OutFrame::Whole(frame))
    }

    /// Queues a close frame; later pushes are refused. A second close is ignored.
    pub fn close(&self, code: u16, reason: &str) {
        if self.state.get() != State::Open {
            return;
        }
        self.queue_frame(OutFrame::Whole(codec::close_frame(code, reason)));
        self.state.set(State::Closing);
        self.wake_writer();
    }

    /// True once a close is queued or the socket is gone.
    pub fn is_closing(&self) -> bool {
        self.state.get() != State::Open
    }

    /// True when the connection was closed 4008.
    pub fn was_slow(&self) -> bool {
        self.slow.get()
    }

    /// Bytes queued and not yet written (a metric and the 4008 bound).
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.get()
    }

    /// Called by the reader when it has stopped reading for good.
    pub fn reader_finished(&self) {
        self.reader_done.set(true);
        if let Some(w) = self.reader_waiter.take() {
            w.wake();
        }
        if self.state.get() == State::Open {
            self.state.set(State::Closing);
            self.wake_writer();
        }
    }

    /// Cuts the socket in both directions: the reader's pending wait ends.
    pub fn shutdown_socket(&self) {
        // SAFETY: `fd` is the connection's socket, alive while either half is;
        // shutdown(2) on it only changes socket state and cannot touch memory.
        unsafe {
            libc::shutdown(self.fd, libc::SHUT_RDWR);
        }
    }

    fn push(&self, frame: OutFrame) -> bool {
        if self.state.get() != State::Open {
            return false;
        }
        let len = frame.len();
        let q_len = self.queue.borrow().len();
        if self.queued_bytes.get() + len > self.max_bytes || q_len >= self.max_frames {
            self.drop_queued();
            self.slow.set(true);
            self.close(CLOSE_SLOW_CONSUMER, "slow consumer");
            return false;
        }
        self.queue_frame(frame);
        self.wake_writer();
        true
    }

    fn queue_frame(&self, frame: OutFrame) {
        self.queued_bytes.set(self.queued_bytes.get() + frame.len());
        self.queue.borrow_mut().push_back(frame);
    }

    fn drop_queued(&self) {
        self.queue.borrow_mut().clear();
        self.queued_bytes.set(0);
    }

    fn wake_writer(&self) {
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }

    /// Waits until there is something to write or the queue is finished.
    async fn ready(&self) {
        poll_fn(|cx| {
            if !self.queue.borrow().is_empty() || self.state.get() != State::Open {
                return Poll::Ready(());
            }
            self.writer.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await;
    }

    async fn reader_gone(&self) {
        poll_fn(|cx| {
            if self.reader_done.get() {
                return Poll::Ready(());
            }
            self.reader_waiter.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await;
    }

    /// Moves up to `MAX_FRAMES_PER_WRITE` frames into `batch`.
    fn take_into(&self, batch: &mut WriteBatch) {
        let mut q = self.queue.borrow_mut();
        let n = q.len().min(MAX_FRAMES_PER_WRITE);
        let mut bytes = 0;
        for frame in q.drain(..n) {
            bytes += frame.len();
            batch.push(frame);
        }
        self.queued_bytes.set(self.queued_bytes.get() - bytes);
        batch.seal();
    }

    fn has_queued(&self) -> bool {
        !self.queue.borrow().is_empty()
    }
}

/// The writer task of one connection: runs until the close frame is written
/// or the socket fails, then lingers for the peer's close and cuts the socket.
pub async fn run_writer(mut half: OwnedWriteHalf<TcpStream>, out: Rc<Outbox>) {
    let mut batch = WriteBatch::default();
    loop {
        out.ready().await;
        if !out.has_queued() {
            break; // closing with nothing left, or done
        }
        out.take_into(&mut batch);
        let ok;
        (ok, batch) = write_all(&mut half, batch).await;
        batch.clear();
        if !ok {
            out.state.set(State::Done);
            out.drop_queued();
            break;
        }
        if out.state.get() == State::Closing && !out.has_queued() {
            break;
        }
    }
    out.state.set(State::Done);
    let _ = monoio::time::timeout(CLOSE_LINGER, out.reader_gone()).await;
    out.shutdown_socket();
}

async fn write_all(half: &mut OwnedWriteHalf<TcpStream>, mut batch: WriteBatch) -> (bool, WriteBatch) {
    while !batch.is_done() {
        let (res, b) = half.writev(batch).await;
        batch = b;
        match res {
            Ok(0) | Err(_) => return (false, batch),
            Ok(n) => batch.advance(n),
        }
    }
    (true, batch)
}

/// The iovecs of one `writev`: headers and shared payloads, kept alive (and
/// at stable addresses) while the kernel owns the batch.
#[derive(Default)]
pub struct WriteBatch {
    frames: Vec<OutFrame>,
    iov: Vec<libc::iovec>,
    start: usize,
}

impl WriteBatch {
    fn push(&mut self, frame: OutFrame) {
        self.frames.push(frame);
    }

    /// Builds the iovec array; `frames` must not change until `clear`.
    fn seal(&mut self) {
        self.iov.clear();
        self.start = 0;
        for f in &self.frames {
            let parts: [&[u8]; 2] = match f {
                OutFrame::Shared(h, p) => [h.as_bytes(), p],
                OutFrame::Whole(b) => [b, &[]],
            };
            for part in parts.into_iter().filter(|p| !p.is_empty()) {
                self.iov.push(libc::iovec {
                    iov_base: part.as_ptr() as *mut _,
                    iov_len: part.len(),
                });
            }
        }
    }

    fn is_done(&self) -> bool {
        self.start >= self.iov.len()
    }

    /// Skips `n` written bytes.
    fn advance(&mut self, mut n: usize) {
        while n > 0 && self.start < self.iov.len() {
            let v = &mut self.iov[self.start];
            if n >= v.iov_len {
                n -= v.iov_len;
                self.start += 1;
            } else {
                // SAFETY: n < iov_len, so the new base stays inside the same buffer.
                v.iov_base = unsafe { v.iov_base.cast::<u8>().add(n).cast() };
                v.iov_len -= n;
                n = 0;
            }
        }
    }

    fn clear(&mut self) {
        self.iov.clear();
        self.frames.clear();
        self.start = 0;
    }
}

// SAFETY: the iovecs point into `frames` (headers stored inline in
// `OutFrame::Shared` live in the Vec's heap buffer, payloads in `Bytes` heap
// buffers), and neither `frames` nor `iov` is touched while the runtime owns
// the batch, so the pointers stay valid and stable; `start <= iov.len()`.
unsafe impl IoVecBuf for WriteBatch {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        // SAFETY: start <= iov.len(), so the pointer is in bounds or one past the end.
        unsafe { self.iov.as_ptr().add(self.start) }
    }

    fn read_iovec_len(&self) -> usize {
        self.iov.len() - self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &'static str) -> OutFrame {
        OutFrame::Shared(codec::text_header(s.len()), Bytes::from_static(s.as_bytes()))
    }

    fn flatten(b: &WriteBatch) -> Vec<u8> {
        let mut out = Vec::new();
        for v in &b.iov[b.start..] {
            // SAFETY: the test's batch owns the memory behind every iovec.
            out.extend_from_slice(unsafe { std::slice::from_raw_parts(v.iov_base.cast::<u8>(), v.iov_len) });
        }
        out
    }

    #[test]
    fn batch_advances_across_partial_writes() {
        let mut b = WriteBatch::default();
        b.push(text("hello"));
        b.push(OutFrame::Whole(Bytes::from_static(b"\x8a\x00")));
        b.push(text("world"));
        b.seal();
        let all = flatten(&b);
        assert_eq!(all.len(), 7 + 2 + 7);
        assert_eq!(&all[..2], &[0x81, 5]);
        for cut in [1, 3, 6, 2] {
            let before = flatten(&b);
            b.advance(cut);
            assert_eq!(flatten(&b), before[cut..]);
        }
        b.advance(100);
        assert!(b.is_done());
    }

    #[test]
    fn slow_consumer_is_closed_4008_and_nothing_more_is_queued() {
        let out = Outbox::new(-1, 64, 100);
        assert!(out.push_text(Bytes::from(vec![b'a'; 40])));
        assert!(!out.push_text(Bytes::from(vec![b'b'; 40])), "over 64 bytes");
        assert!(out.is_closing());
        let q = out.queue.borrow();
        assert_eq!(q.len(), 1, "only the close frame is left");
        let OutFrame::Whole(close) = &q[0] else { panic!("close frame") };
        assert_eq!(&close[2..4], &CLOSE_SLOW_CONSUMER.to_be_bytes());
        drop(q);
        assert!(!out.push_text(Bytes::from_static(b"x")));
    }

    #[test]
    fn frame_count_bound_applies_too() {
        let out = Outbox::new(-1, 1 << 20, 2);
        assert!(out.push_text(Bytes::from_static(b"1")));
        assert!(out.push_text(Bytes::from_static(b"2")));
        assert!(!out.push_text(Bytes::from_static(b"3")));
        assert!(out.is_closing());
    }
}
