//! Frame buffers used again: a frame that went out (an ack written, a message evicted
//! from the recent ring) is retired here, and its buffer is rendered into again once
//! every other holder (outboxes, member shards' rings, the store) has dropped its copy.
//!
//! The buffers are `BytesMut` with a shared header from the start, so `freeze`, every
//! clone of the frame, and taking the buffer back all keep that one header: a frame
//! rendered into a pooled buffer costs no allocation. A retired frame still held when
//! its turn comes is let go (its last holder frees it, as any frame), and a fresh
//! buffer is made instead: the pool never waits and never holds more than `keep`.
//!
//! A buffer is taken back only once `keep` frames are retired, so the one taken is the
//! frame retired `keep` frames ago: an ack lent at once is still queued in its outbox
//! for a while, and a mesh frame's payload stays in a member shard's ring.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

/// Buffers larger than this are not kept (one huge message must not stay pinned): a pool
/// holds at most `keep` times this.
const MAX_KEPT_CAPACITY: usize = 4 * 1024;

/// Retired frames of one renderer, oldest first; see the module's note.
#[derive(Debug)]
pub struct FramePool {
    retired: VecDeque<Bytes>,
    keep: usize,
}

impl FramePool {
    /// A pool that keeps at most `keep` retired frames (0: none, every buffer is fresh).
    pub fn new(keep: usize) -> Self {
        Self {
            retired: VecDeque::with_capacity(keep),
            keep,
        }
    }

    /// An empty buffer: the oldest retired frame's once `keep` are retired, if nothing else
    /// holds it any more (it grows if a frame outgrows it), else a fresh one with room for
    /// `cap` bytes.
    pub fn buffer(&mut self, cap: usize) -> BytesMut {
        if self.retired.len() < self.keep {
            return fresh(cap);
        }
        if let Some(old) = self.retired.pop_front() {
            if let Ok(mut b) = old.try_into_mut() {
                b.clear();
                return b;
            }
        }
        fresh(cap)
    }

    /// Keeps `frame` (one more handle on it) to render into again when it is free.
    pub fn retire(&mut self, frame: &Bytes) {
        if self.keep == 0 || frame.len() > MAX_KEPT_CAPACITY {
            return;
        }
        if self.retired.len() == self.keep {
            self.retired.pop_front();
        }
        self.retired.push_back(frame.clone());
    }

    /// Retired frames held.
    pub fn len(&self) -> usize {
        self.retired.len()
    }

    /// True when no retired frame is held.
    pub fn is_empty(&self) -> bool {
        self.retired.is_empty()
    }
}

/// A buffer whose header is shared from the start: `BytesMut` makes it at the first
/// split, and `freeze`, clones and `try_into_mut` then all keep it (a `Vec`-backed
/// buffer would get a new header at each `freeze`).
fn fresh(cap: usize) -> BytesMut {
    let mut b = BytesMut::with_capacity(cap);
    drop(b.split_to(0));
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(pool: &mut FramePool, text: &str) -> Bytes {
        let mut b = pool.buffer(64);
        b.extend_from_slice(text.as_bytes());
        b.freeze()
    }

    #[test]
    fn a_retired_frame_no_one_holds_is_rendered_into_again_keep_frames_later() {
        let mut pool = FramePool::new(3);
        let mut lent = Vec::new();
        for n in 0..3 {
            let f = frame(&mut pool, &format!("frame {n}"));
            pool.retire(&f);
            lent.push(f.as_ptr());
        }
        // Written and dropped by every holder: the oldest of the three comes round first.
        let b = frame(&mut pool, "fourth");
        assert_eq!(b.as_ptr(), lent[0], "the frame retired three frames ago");
        assert_eq!(&b[..], b"fourth");
        pool.retire(&b);
        assert_eq!(frame(&mut pool, "fifth").as_ptr(), lent[1]);
    }

    #[test]
    fn below_keep_retired_frames_every_buffer_is_fresh() {
        let mut pool = FramePool::new(2);
        let a = frame(&mut pool, "first");
        pool.retire(&a);
        let ptr = a.as_ptr();
        drop(a);
        assert_ne!(frame(&mut pool, "second").as_ptr(), ptr, "one retired of two: not yet");
        assert_eq!(pool.len(), 1);
    }

    #[test]
    fn a_retired_frame_still_held_is_let_go_and_never_written_over() {
        let mut pool = FramePool::new(1);
        let a = frame(&mut pool, "held");
        let reader = a.clone();
        pool.retire(&a);
        drop(a);
        let b = frame(&mut pool, "other");
        assert_ne!(b.as_ptr(), reader.as_ptr(), "a fresh buffer");
        assert_eq!(&reader[..], b"held", "the held copy is intact");
        assert!(pool.is_empty(), "the pool let it go");
        drop(reader);
    }

    #[test]
    fn the_pool_keeps_at_most_keep_and_never_huge_buffers() {
        let mut pool = FramePool::new(2);
        let frames: Vec<Bytes> = (0..5).map(|_| frame(&mut pool, "x")).collect();
        for f in &frames {
            pool.retire(f);
        }
        assert_eq!(pool.len(), 2);
        let big = Bytes::from(vec![b'x'; MAX_KEPT_CAPACITY + 1]);
        pool.retire(&big);
        assert_eq!(pool.len(), 2, "a huge frame is not kept");
        let mut none = FramePool::new(0);
        let f = frame(&mut none, "x");
        none.retire(&f);
        assert!(none.is_empty());
    }

    #[test]
    fn a_frame_dropped_on_another_thread_is_taken_back() {
        let mut pool = FramePool::new(1);
        let a = frame(&mut pool, "across");
        let ptr = a.as_ptr();
        pool.retire(&a);
        std::thread::spawn(move || drop(a)).join().expect("the thread ran");
        let b = frame(&mut pool, "again");
        assert_eq!(b.as_ptr(), ptr);
    }
}
