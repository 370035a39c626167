//! An all-to-all mesh of SPSC rings between the threads of one node, with
//! asynchronous wake-ups.
//!
//! [`mesh`] builds one [`spsc`](crate::spsc) ring per ordered pair of
//! threads; [`Endpoint`] `i` owns the producers `i → *` and the consumers
//! `* → i`. An endpoint lives on one thread and is used from one
//! single-threaded async runtime (methods take `&self`).
//!
//! What must stay true:
//! - **No lost wake-ups.** A waiter registers its waker, sets its signal's
//!   `armed` flag, issues a `SeqCst` fence and only then re-checks the rings
//!   before returning `Pending`. The other side changes a ring, issues a
//!   `SeqCst` fence, and wakes when it finds the flag set (clearing it with a
//!   swap). The two fences order the two threads, so either the waiter sees
//!   the change or the other side sees the flag.
//! - Two signals exist: "data arrived" per endpoint (armed by
//!   [`Endpoint::readable`], fired by every producer into that endpoint) and
//!   "space freed" per ring (armed by [`Endpoint::send`], fired by the ring's
//!   consumer after [`Endpoint::drain`] popped something).
//! - A signal holds one waker. When a second local task waits on the same
//!   signal, the waker it displaces is kept and woken when the newer wait
//!   ends (completes or is dropped), so no local waiter is stranded.
//! - No `RefCell` borrow is held across a call to user code or an `.await`.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::future::poll_fn;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};

use atomic_waker::AtomicWaker;
use bytes::Bytes;

use crate::spsc::{self, Consumer, Producer};

/// A message that could not be sent: the ring was full (or the destination
/// does not exist). The message is given back.
#[derive(Debug, thiserror::Error)]
#[error("mesh ring full (or no such destination)")]
pub struct Full(pub Bytes);

/// A wake-up shared between two threads: one waits, the other fires.
#[derive(Default)]
struct Signal {
    waker: AtomicWaker,
    /// Set by the waiter after registering its waker; cleared by whoever wakes it.
    armed: AtomicBool,
}

impl Signal {
    /// Wakes the waiter if it is armed. Call after changing a ring.
    fn notify(&self) {
        fence(Ordering::SeqCst);
        self.notify_fenced();
    }

    /// As [`Self::notify`], for callers that already issued the fence after
    /// their last ring change.
    fn notify_fenced(&self) {
        if self.armed.load(Ordering::Relaxed) && self.armed.swap(false, Ordering::AcqRel) {
            self.waker.wake();
        }
    }
}

/// The waiting side of a [`Signal`], on the thread that owns it.
struct Waiters {
    signal: Arc<Signal>,
    /// Wakers of local tasks whose registration a later wait replaced.
    displaced: RefCell<Vec<Waker>>,
}

impl Waiters {
    fn new(signal: Arc<Signal>) -> Self {
        Self {
            signal,
            displaced: RefCell::new(Vec::new()),
        }
    }

    /// Registers `waker` and arms the signal. The caller must re-check its
    /// condition afterwards and only then return `Pending`.
    fn arm(&self, waker: &Waker) {
        if let Some(old) = self.signal.waker.take() {
            if !old.will_wake(waker) {
                self.displaced.borrow_mut().push(old);
            }
        }
        self.signal.waker.register(waker);
        self.signal.armed.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// Undoes [`Self::arm`]'s flag when the re-check found the condition met.
    fn disarm(&self) {
        self.signal.armed.store(false, Ordering::Relaxed);
    }

    fn wake_displaced(&self) {
        let displaced = self.displaced.take();
        for w in displaced {
            w.wake();
        }
    }
}

/// Wakes the displaced waiters when a wait ends, however it ends.
struct WakeDisplacedOnDrop<'a>(&'a Waiters);

impl Drop for WakeDisplacedOnDrop<'_> {
    fn drop(&mut self) {
        self.0.wake_displaced();
    }
}

/// The sending half of the ring from this endpoint to one other.
struct Outbound {
    tx: RefCell<Producer<Bytes>>,
    /// The destination's "data arrived" signal.
    peer_inbox: Arc<Signal>,
    /// This ring's "space freed" signal.
    space: Waiters,
}

/// The receiving half of the ring from one other endpoint to this one.
struct Inbound {
    rx: RefCell<Consumer<Bytes>>,
    /// The ring's "space freed" signal, fired after popping.
    space: Arc<Signal>,
}

/// One thread's end of the mesh: it sends to every other thread and
/// receives from every other thread.
///
/// `Send` (it is built on one thread and moved to its own), not `Sync`.
pub struct Endpoint {
    id: usize,
    /// Indexed by destination; `None` at `id`.
    outs: Box<[Option<Outbound>]>,
    /// Indexed by source; `None` at `id`.
    ins: Box<[Option<Inbound>]>,
    /// This endpoint's "data arrived" signal.
    inbox: Waiters,
    /// Source that [`Self::drain`] looks at first, for fairness.
    next: Cell<usize>,
}

/// Builds the mesh for `threads` threads with rings of at least `capacity`
/// messages each (rounded up to a power of two). Endpoint `i` is at index `i`.
pub fn mesh(threads: usize, capacity: usize) -> Vec<Endpoint> {
    let inboxes: Vec<Arc<Signal>> = (0..threads).map(|_| Arc::default()).collect();
    let mut outs: Vec<Vec<Option<Outbound>>> = (0..threads).map(|_| (0..threads).map(|_| None).collect()).collect();
    let mut ins: Vec<Vec<Option<Inbound>>> = (0..threads).map(|_| (0..threads).map(|_| None).collect()).collect();
    for from in 0..threads {
        for to in (0..threads).filter(|&to| to != from) {
            let (tx, rx) = spsc::channel(capacity);
            let space = Arc::new(Signal::default());
            outs[from][to] = Some(Outbound {
                tx: RefCell::new(tx),
                peer_inbox: Arc::clone(&inboxes[to]),
                space: Waiters::new(Arc::clone(&space)),
            });
            ins[to][from] = Some(Inbound {
                rx: RefCell::new(rx),
                space,
            });
        }
    }
    outs.into_iter()
        .zip(ins)
        .zip(inboxes)
        .enumerate()
        .map(|(id, ((outs, ins), inbox))| Endpoint {
            id,
            outs: outs.into_boxed_slice(),
            ins: ins.into_boxed_slice(),
            inbox: Waiters::new(inbox),
            next: Cell::new(0),
        })
        .collect()
}

impl Endpoint {
    /// This endpoint's index in the mesh.
    pub fn id(&self) -> usize {
        self.id
    }

    /// How many endpoints the mesh has (this one included).
    pub fn threads(&self) -> usize {
        self.outs.len()
    }

    fn outbound(&self, to: usize) -> Option<&Outbound> {
        self.outs.get(to).and_then(Option::as_ref)
    }

    /// Sends `msg` to endpoint `to` unless its ring is full. Sending to
    /// oneself or to a nonexistent endpoint is a bug and also gives the
    /// message back.
    pub fn try_send(&self, to: usize, msg: Bytes) -> Result<(), Full> {
        let Some(out) = self.outbound(to) else {
            return Err(Full(msg));
        };
        // The borrow ends inside this statement; no other borrow of `tx`
        // outlives a method of this type, so it cannot conflict.
        out.tx.borrow_mut().push(msg).map_err(Full)?;
        out.peer_inbox.notify();
        Ok(())
    }

    /// How many messages can be sent to `to` right now without waiting
    /// (0 for oneself or a nonexistent endpoint).
    pub fn free_slots(&self, to: usize) -> usize {
        self.outbound(to).map_or(0, |out| out.tx.borrow().free_slots())
    }

    /// Sends `msg` to endpoint `to`, waiting (without spinning) until its
    /// ring has space. Dropping the future before it completes drops `msg`.
    ///
    /// Sending to oneself or to a nonexistent endpoint is a bug: it asserts
    /// in debug builds and drops the message otherwise.
    pub async fn send(&self, to: usize, msg: Bytes) {
        debug_assert!(to != self.id && to < self.threads(), "endpoint {} cannot send to {to}", self.id);
        let Some(out) = self.outbound(to) else {
            return;
        };
        let _wake = WakeDisplacedOnDrop(&out.space);
        let mut msg = Some(msg);
        poll_fn(|cx| loop {
            let Some(m) = msg.take() else {
                return Poll::Ready(());
            };
            match self.try_send(to, m) {
                Ok(()) => return Poll::Ready(()),
                Err(Full(m)) => msg = Some(m),
            }
            out.space.arm(cx.waker());
            if out.tx.borrow().free_slots() == 0 {
                return Poll::Pending;
            }
            // Space appeared between the push and arming: retry (at most
            // once more, as only this thread pushes to the ring).
            out.space.disarm();
        })
        .await;
    }

    /// Whether any inbound ring holds a message.
    pub fn has_inbound(&self) -> bool {
        self.ins.iter().flatten().any(|inb| !inb.rx.borrow().is_empty())
    }

    /// Resolves once at least one inbound ring holds a message.
    pub async fn readable(&self) {
        let _wake = WakeDisplacedOnDrop(&self.inbox);
        poll_fn(|cx| {
            if self.has_inbound() {
                return Poll::Ready(());
            }
            self.inbox.arm(cx.waker());
            if self.has_inbound() {
                self.inbox.disarm();
                return Poll::Ready(());
            }
            Poll::Pending
        })
        .await;
    }

    /// Pops up to `max` messages, taking one from each non-empty inbound
    /// ring in turn (continuing where the previous call stopped), and calls
    /// `f(from, msg)` for each. Returns how many were popped.
    ///
    /// `f` may call back into this endpoint (to send, or even to drain).
    pub fn drain(&self, max: usize, mut f: impl FnMut(usize, Bytes)) -> usize {
        let n = self.ins.len();
        if n == 0 {
            return 0;
        }
        let mut done = 0;
        let mut empty_in_a_row = 0;
        let mut from = self.next.get() % n;
        while done < max && empty_in_a_row < n {
            let msg = self.ins[from].as_ref().and_then(|inb| inb.rx.borrow_mut().pop());
            let src = from;
            from = (from + 1) % n;
            match msg {
                Some(msg) => {
                    empty_in_a_row = 0;
                    done += 1;
                    self.next.set(from);
                    f(src, msg);
                }
                None => empty_in_a_row += 1,
            }
        }
        if done > 0 {
            // One fence for all the pops above, then wake blocked senders.
            fence(Ordering::SeqCst);
            for inb in self.ins.iter().flatten() {
                inb.space.notify_fenced();
            }
        }
        done
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("id", &self.id)
            .field("threads", &self.threads())
            .finish_non_exhaustive()
    }
}
