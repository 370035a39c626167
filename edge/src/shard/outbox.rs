//! One connection's outbound queue and the task that writes it.
//!
//! Fan-out pushes `(header, shared payload)` pairs: the payload `Bytes` is the
//! one rendering every member shares; only the 2–10 byte WebSocket header is
//! per socket. The writer task wakes once per burst and writes every queued
//! frame with one `writev` (corking: all frames queued while the shard was
//! busy go out in one syscall).
//!
//! Two classes of frames share one FIFO queue, so order is kept:
//! - *live* frames (fan-out of room traffic the client did not ask for) are
//!   bounded by `max_bytes` and `max_frames`; a push past either closes the
//!   connection with 4008 (slow consumer) after dropping what was queued —
//!   messages are never shed silently, the client catches up on reconnect;
//! - *replies* (anything answering the client's own request: `joined` and
//!   its catch-up, history pages, acks, errors) do not count against that
//!   bound, so a large page the client asked for never closes it 4008. They
//!   are flow-controlled where requests are admitted instead: the member
//!   side refuses a new history or catch-up request (`overloaded`, with
//!   `retry_ms`) while more than `reply_budget_bytes` of replies wait.
//!
//! Stalls: the writer records when a `writev` started that has not made
//! progress yet; the shard's sweep cuts a socket whose write has made no
//! progress for `write_stall_timeout_ms` (`write_stalled`), so a client
//! that stops reading cannot pin its fd and kernel buffers forever.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::os::fd::RawFd;
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::Bytes;

use super::latency::{mono_us, Sample};
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

/// One queued frame: a header plus a shared payload, or a complete frame, with the
/// class it counts against (kept inside, so an entry stays 48 bytes).
#[derive(Debug)]
enum OutFrame {
    Shared(Class, Header, Bytes),
    Whole(Class, Bytes),
}

impl OutFrame {
    fn len(&self) -> usize {
        match self {
            Self::Shared(_, h, p) => h.as_bytes().len() + p.len(),
            Self::Whole(_, b) => b.len(),
        }
    }

    fn class(&self) -> Class {
        match self {
            Self::Shared(c, ..) | Self::Whole(c, _) => *c,
        }
    }
}

/// Which bound a queued frame counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Room traffic pushed to the client: the slow-consumer bound.
    Live,
    /// An answer to the client's own request: flow-controlled at the request.
    Reply,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// A close frame is queued; nothing more is accepted.
    Closing,
    /// The socket failed or the writer finished.
    Done,
}

/// The outbound side of one connection, shared by its reading (`conn.rs`), its writer
/// task and the shard's fan-out (all on one thread).
pub struct Outbox {
    queue: RefCell<VecDeque<OutFrame>>,
    /// Bytes of live frames queued (the 4008 bound).
    live_bytes: Cell<usize>,
    /// Live frames queued (the 4008 bound).
    live_frames: Cell<usize>,
    /// Bytes of reply frames queued (the request-side flow control).
    reply_bytes: Cell<usize>,
    /// Whether the writer is inside a `writev` (set and cleared by the writer).
    writing: Cell<bool>,
    /// `writev` calls completed (the writer's progress; no clock on the write path).
    writes_done: Cell<u64>,
    /// The sweep's view: `writes_done` when it last looked, and since when (monotonic
    /// ms) it has seen no progress while writing; 0 when it has.
    swept: Cell<(u64, u64)>,
    /// `writes_done` at the sweep before, for [`Outbox::release_idle`].
    idle_seen: Cell<u64>,
    state: Cell<State>,
    /// The parked writer task's waker: waiting for frames, or, at the end, for the reader.
    writer: Cell<Option<Waker>>,
    /// The socket's write half while no writer task runs (it goes with the task).
    half: Cell<Option<OwnedWriteHalf<TcpStream>>>,
    /// This outbox, for the writer task it starts; none for a queue with no socket of its
    /// own (an HTTP API request's, a test's).
    me: Weak<Self>,
    /// A writer task runs (or ran to the socket's end).
    writer_up: Cell<bool>,
    /// The queue has a socket of its own to write to (`for_socket`).
    own_socket: bool,
    /// The writer is asked to leave once nothing is queued (its task's memory freed).
    retire: Cell<bool>,
    /// Nothing was written yet: the first write retires the writer.
    fresh: Cell<bool>,
    reader_done: Cell<bool>,
    slow: Cell<bool>,
    /// The delivery-latency sample followed to its write (see [`Sample`]); 0: none.
    sample: Cell<u64>,
    max_bytes: usize,
    max_frames: usize,
    fd: RawFd,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("live_bytes", &self.live_bytes.get())
            .field("reply_bytes", &self.reply_bytes.get())
            .field("state", &self.state.get())
            .finish_non_exhaustive()
    }
}

impl Outbox {
    /// An empty queue for the socket `fd` with the configured bounds.
    pub fn new(fd: RawFd, max_bytes: usize, max_frames: usize) -> Self {
        Self {
            queue: RefCell::new(VecDeque::new()),
            live_bytes: Cell::new(0),
            live_frames: Cell::new(0),
            reply_bytes: Cell::new(0),
            writing: Cell::new(false),
            writes_done: Cell::new(0),
            swept: Cell::new((0, 0)),
            idle_seen: Cell::new(0),
            state: Cell::new(State::Open),
            writer: Cell::new(None),
            half: Cell::new(None),
            me: Weak::new(),
            writer_up: Cell::new(false),
            own_socket: false,
            retire: Cell::new(false),
            fresh: Cell::new(true),
            reader_done: Cell::new(false),
            slow: Cell::new(false),
            sample: Cell::new(0),
            max_bytes,
            max_frames,
            fd,
        }
    }

    /// The queue of socket `fd`, written through `half` by a writer task it starts when a
    /// frame is queued.
    pub fn for_socket(half: OwnedWriteHalf<TcpStream>, fd: RawFd, max_bytes: usize, max_frames: usize) -> Rc<Self> {
        Rc::new_cyclic(|me| Self {
            half: Cell::new(Some(half)),
            me: me.clone(),
            own_socket: true,
            ..Self::new(fd, max_bytes, max_frames)
        })
    }

    /// Queues room traffic (a delivery the client did not ask for) whose
    /// rendered payload is shared with others. Returns false when the
    /// connection is closing or was just closed 4008 (over the live bound).
    pub fn push_live(&self, payload: Bytes) -> bool {
        self.push(OutFrame::Shared(Class::Live, codec::text_header(payload.len()), payload))
    }

    /// Follows the live frame just queued to its write, to measure its delivery latency,
    /// unless another frame is followed already. `at_us`: when it was sequenced ([`mono_us`]).
    pub fn sample_latency(&self, at_us: u64) {
        if self.sample.get() == 0 {
            self.sample.set(Sample::queued(self.queue.borrow().len(), at_us));
        }
    }

    /// Queues an event without a seq (typing) whose rendered payload is shared with
    /// others, unless live traffic already fills half the bound: such an event may be
    /// shed, and never closes the connection. False when shed or closing.
    pub fn push_ephemeral(&self, payload: Bytes) -> bool {
        let backed_up = self.live_bytes.get() + payload.len() > self.max_bytes / 2 || self.live_frames.get() >= self.max_frames / 2;
        !backed_up && self.push_live(payload)
    }

    /// Queues a text frame that answers the client's own request (exempt
    /// from the slow-consumer bound; see the module doc). False when closing.
    pub fn push_text(&self, payload: Bytes) -> bool {
        self.push(OutFrame::Shared(Class::Reply, codec::text_header(payload.len()), payload))
    }

    /// Queues an echoed payload behind a header the caller chose (the echo
    /// endpoint: bounded like live traffic, since the peer may never read).
    pub fn push_shared(&self, header: Header, payload: Bytes) -> bool {
        self.push(OutFrame::Shared(Class::Live, header, payload))
    }

    /// Queues a complete, already-framed control frame (pong, heartbeat ping);
    /// bounded like live traffic, since a peer can send pings without reading.
    pub fn push_frame(&self, frame: Bytes) -> bool {
        self.push(OutFrame::Whole(Class::Live, frame))
    }

    /// Queues a close frame; later pushes are refused. A second close is ignored.
    pub fn close(&self, code: u16, reason: &str) {
        if self.state.get() != State::Open {
            return;
        }
        self.queue_frame(OutFrame::Whole(Class::Reply, codec::close_frame(code, reason)));
        self.state.set(State::Closing);
        self.wake_writer();
    }

    /// The socket's fd (-1 for a queue with no socket of its own).
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// True once a close is queued or the socket is gone.
    pub fn is_closing(&self) -> bool {
        self.state.get() != State::Open
    }

    /// True when the connection was closed 4008.
    pub fn was_slow(&self) -> bool {
        self.slow.get()
    }

    /// Bytes of replies queued and not yet written (request flow control).
    pub fn reply_bytes(&self) -> usize {
        self.reply_bytes.get()
    }

    /// Called by the shard's sweep (about once a second, `now_ms` monotonic): whether
    /// the writer has been inside a `writev` without completing one for more than
    /// `limit_ms` (the peer stopped reading). The writer only counts its writes; the
    /// sweep keeps the time, so the write path reads no clock.
    pub fn write_stalled(&self, now_ms: u64, limit_ms: u64) -> bool {
        let (seen, since) = self.swept.get();
        let done = self.writes_done.get();
        if !self.writing.get() || done != seen {
            self.swept.set((done, 0));
            return false;
        }
        if since == 0 {
            self.swept.set((done, now_ms.max(1)));
            return false;
        }
        now_ms.saturating_sub(since) > limit_ms
    }

    /// Called by the shard's sweep (about once a second): a connection that has written
    /// nothing since the sweep before and has nothing queued gives back its queue's and its
    /// write batch's buffers (a few hundred bytes an idle connection would otherwise keep
    /// for its life; results/idle-breakdown-20261205.txt). The next write allocates them
    /// again: at most once per sweep per connection, never per frame.
    pub fn release_idle(&self) {
        let done = self.writes_done.get();
        if self.idle_seen.replace(done) != done || self.writing.get() {
            return;
        }
        self.release_buffers();
        if self.writer_up.get() {
            self.retire.set(true);
            self.wake_writer();
        }
    }

    /// Frees the write batch's buffers, and the queue's if nothing is queued.
    fn release_buffers(&self) {
        let mut queue = self.queue.borrow_mut();
        if queue.is_empty() && queue.capacity() > 0 {
            *queue = VecDeque::new();
        }
    }

    /// Called by the reader when it has stopped reading for good.
    pub fn reader_finished(&self) {
        self.reader_done.set(true);
        if let Some(w) = self.writer.take() {
            w.wake();
        }
        if self.state.get() == State::Open {
            self.state.set(State::Closing);
            self.wake_writer();
        }
    }

    /// Cuts the socket in both directions: the reader sees its end at the next readiness.
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
        if frame.class() == Class::Live
            && (self.live_bytes.get() + frame.len() > self.max_bytes || self.live_frames.get() >= self.max_frames)
        {
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
        self.count(&frame, true);
        self.queue.borrow_mut().push_back(frame);
    }

    /// Adds (or, `added == false`, takes away) a frame from its class's counters.
    fn count(&self, frame: &OutFrame, added: bool) {
        let len = frame.len();
        let apply = |c: &Cell<usize>, n: usize| c.set(if added { c.get() + n } else { c.get() - n });
        match frame.class() {
            Class::Live => {
                apply(&self.live_bytes, len);
                apply(&self.live_frames, 1);
            }
            Class::Reply => apply(&self.reply_bytes, len),
        }
    }

    fn drop_queued(&self) {
        self.sample.set(0);
        self.queue.borrow_mut().clear();
        self.live_bytes.set(0);
        self.live_frames.set(0);
        self.reply_bytes.set(0);
    }

    /// Wakes the parked writer, or starts one if none runs and the socket is here.
    #[inline]
    fn wake_writer(&self) {
        if let Some(w) = self.writer.take() {
            return w.wake();
        }
        if !self.writer_up.get() && self.own_socket {
            self.start_writer();
        }
    }

    /// Starts the writer task, if the socket is here (out of line: once per burst at most,
    /// not per frame).
    #[cold]
    #[inline(never)]
    fn start_writer(&self) {
        let Some(me) = self.me.upgrade() else { return };
        let Some(half) = self.half.take() else { return };
        self.writer_up.set(true);
        monoio::spawn(run_writer(half, me));
    }

    /// Waits until there is something to write or the queue is finished.
    async fn ready(&self) {
        poll_fn(|cx| {
            if !self.queue.borrow().is_empty() || self.state.get() != State::Open || self.retire.get() {
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
            self.writer.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await;
    }

    /// Moves up to `MAX_FRAMES_PER_WRITE` frames into `batch`.
    fn take_into(&self, batch: &mut WriteBatch) {
        let mut q = self.queue.borrow_mut();
        let n = q.len().min(MAX_FRAMES_PER_WRITE);
        for frame in q.drain(..n) {
            self.count(&frame, false);
            batch.push(frame);
        }
        self.sample.set(Sample::taken(self.sample.get(), n));
        batch.seal();
    }

    /// The next text or shared payload queued to a connection with no socket (an HTTP API
    /// request's), skipping control frames; `None` once it is closing with nothing queued.
    pub async fn next_payload(&self) -> Option<Bytes> {
        loop {
            self.ready().await;
            let frame = self.queue.borrow_mut().pop_front();
            let frame = frame?;
            self.count(&frame, false);
            match frame {
                OutFrame::Shared(_, _, payload) => return Some(payload),
                OutFrame::Whole(..) if self.state.get() != State::Open && !self.has_queued() => return None,
                OutFrame::Whole(..) => {}
            }
        }
    }

    fn has_queued(&self) -> bool {
        !self.queue.borrow().is_empty()
    }
}

/// The writer task of one connection, started by the first frame queued: writes until
/// the close frame is written or the socket fails, then lingers for the peer's close and
/// cuts the socket. Asked to retire (after the connection's first write, or by the sweep when nothing
/// was written for a second), it leaves once nothing is queued and gives the socket's
/// half back: an idle connection holds no writer task (its state is sized by its largest
/// await point, a `writev`), and the next frame starts one again.
async fn run_writer(mut half: OwnedWriteHalf<TcpStream>, out: Rc<Outbox>) {
    // The batch's buffers live as long as this task: an idle connection has neither.
    let mut batch = WriteBatch::default();
    loop {
        out.ready().await;
        if !out.has_queued() {
            if out.state.get() == State::Open {
                // Asked to retire, with nothing to write.
                out.retire.set(false);
                out.half.set(Some(half));
                out.writer_up.set(false);
                return;
            }
            break; // closing with nothing left, or done
        }
        out.take_into(&mut batch);
        let ok;
        (ok, batch) = write_all(&mut half, batch, &out).await;
        batch.clear();
        if out.fresh.replace(false) {
            // The welcome (with a URL's joins) is often all a connection gets for a while:
            // its buffers and this task go now, while the allocator can hand them to the
            // next connection, rather than at the sweep, when they are holes between
            // connections.
            out.release_buffers();
            out.retire.set(true);
        }
        if ok {
            if let Some(us) = Sample::written(&out.sample, mono_us()) {
                crate::metrics::observe_delivery_latency(us);
            }
        }
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
    // Boxed: a timer's future is the largest state of this task, and a task's state is
    // kept (sized by its largest await point) for the connection's life; this one is
    // reached once, at the end.
    let _ = Box::pin(monoio::time::timeout(CLOSE_LINGER, out.reader_gone())).await;
    out.shutdown_socket();
}

/// Writes the whole batch, counting each completed `writev` in `out` (the shard's
/// sweep compares the count over time to cut stalled sockets).
async fn write_all(half: &mut OwnedWriteHalf<TcpStream>, mut batch: WriteBatch, out: &Outbox) -> (bool, WriteBatch) {
    let mut ok = true;
    out.writing.set(true);
    while ok && !batch.is_done() {
        let (res, b) = half.writev(batch).await;
        batch = b;
        out.writes_done.set(out.writes_done.get().wrapping_add(1));
        match res {
            Ok(0) | Err(_) => ok = false,
            Ok(n) => batch.advance(n),
        }
    }
    out.writing.set(false);
    (ok, batch)
}

/// Monotonic milliseconds since the process first asked (never 0): the sweep's clock
/// for stalls, so a wall-clock step cannot make a moving write look stalled.
pub fn mono_ms() -> u64 {
    super::latency::start().elapsed().as_millis() as u64 + 1
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
                OutFrame::Shared(_, h, p) => [h.as_bytes(), p],
                OutFrame::Whole(_, b) => [b, &[]],
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
mod tests;
