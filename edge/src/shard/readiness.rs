//! The shard's readers: one epoll set per shard, not one task per connection.
//!
//! Every upgraded socket is in its shard's epoll set (level-triggered, the connection id as
//! its token). One task waits for the set to become readable, takes up to
//! [`EVENTS_PER_TURN`] ready sockets with a non-blocking `epoll_wait`, and gives each one
//! `recv` and its decode (`conn::on_readable`), synchronously. Nothing in a connection's
//! reading waits on anything but readiness, so it needs no task of its own: an idle
//! connection keeps its read side in its `Conn` (32 bytes) rather than a task
//! (296 bytes, with monoio's poll op in it; results/idle-breakdown-20261205.txt, part 10).
//!
//! The wait itself is monoio's: on io_uring a poll op on the epoll fd, on the epoll driver
//! the set nested in monoio's own. Level-triggered, a socket still holding bytes after its
//! one `recv` is reported again on the next turn, after the other ready sockets had theirs:
//! the same one-`recv`-per-turn fairness the per-connection tasks had.
//!
//! Invariant: a socket leaves the set (`remove`) before its read half is dropped, so a
//! token never outlives its fd and a reused fd number is never read for a closed connection.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;

use super::{conn, Shard};

/// Ready sockets handled per turn before the shard's other tasks run again.
const EVENTS_PER_TURN: usize = 256;

/// A shard's epoll set of upgraded sockets.
pub(super) struct Readiness {
    epoll: OwnedFd,
}

impl Readiness {
    pub(super) fn new() -> io::Result<Self> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is a new fd we own.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        Ok(Self {
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Watches `fd` for reading (and the peer's end), reported with `token`.
    pub(super) fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: token,
        };
        // SAFETY: `ev` is a valid epoll_event for the call's duration; the kernel copies it.
        let r = unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Stops watching `fd`. Called before the socket's read half is dropped.
    pub(super) fn remove(&self, fd: RawFd) {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: as in `add`; the event is ignored for a delete (kernels before 2.6.9 needed
        // it non-null). An fd not in the set (ENOENT) is no harm.
        unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, &mut ev) };
    }

    /// The ready sockets' tokens, without waiting; 0 when none.
    fn ready(&self, events: &mut [libc::epoll_event]) -> usize {
        let max = i32::try_from(events.len()).unwrap_or(i32::MAX);
        // SAFETY: `events` is valid for `max` entries, which the kernel writes at most.
        let n = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), max, 0) };
        usize::try_from(n).unwrap_or(0) // an error (EINTR) reads as nothing ready this turn
    }

    /// The set's fd as something monoio can wait on. monoio only exposes readiness on its
    /// own socket types; the wait is a poll of the fd, whatever the file behind it (an
    /// epoll fd is readable while any of its sockets is), so a duplicate of the epoll fd
    /// is wrapped as a `TcpStream` and only `readable` is ever called on it.
    fn waiter(&self) -> io::Result<monoio::net::TcpStream> {
        let dup = self.epoll.try_clone()?;
        // SAFETY: `dup` is an fd we own, handed over whole; only `readable` is used on it.
        let std = unsafe { std::net::TcpStream::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(dup)) };
        monoio::net::TcpStream::from_std(std)
    }
}

/// The shard's reader task: every ready socket gets one `recv` and its decode.
pub(super) async fn run_readers(shard: Rc<Shard>) {
    let waiter = match shard.readiness.waiter() {
        Ok(w) => Some(w),
        Err(e) => {
            // Not expected (it needs one more fd); reading still goes on, polled.
            tracing::error!(shard = shard.id, error = %e, "cannot wait on the epoll set: polling it every 10 ms");
            None
        }
    };
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_TURN];
    // Every socket's `recv` lands here, and its decode uses it up: no connection holds a buffer.
    let mut buf = BytesMut::new();
    let mut warned = false;
    loop {
        let waited = match &waiter {
            Some(w) => w.readable(false).await,
            None => Err(io::ErrorKind::Unsupported.into()),
        };
        if let Err(e) = waited {
            // Logged once: while the wait keeps failing, the set is polled every 10 ms.
            if waiter.is_some() && !std::mem::replace(&mut warned, true) {
                tracing::warn!(shard = shard.id, error = %e, "waiting on the epoll set failed: polling it every 10 ms");
            }
            monoio::time::sleep(Duration::from_millis(10)).await;
        }
        let n = shard.readiness.ready(&mut events);
        for ev in &events[..n] {
            let token = ev.u64;
            // A connection closed earlier in this turn is gone from the map (and the set).
            if let Some(c) = shard.conn(token) {
                conn::on_readable(&shard, &c, &mut buf);
            }
        }
    }
}
