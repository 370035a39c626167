//! A bounded, lock-free, single-producer single-consumer ring.
//!
//! One thread pushes through a [`Producer`], another pops through a
//! [`Consumer`]; nothing here blocks or allocates after [`channel`].
//!
//! What must stay true:
//! - `head` (next slot to pop) is written only by the consumer and `tail`
//!   (next slot to push) only by the producer. Both count up forever
//!   (wrapping), and `tail - head` is always in `0..=capacity`.
//! - Slots in `head..tail` (modulo capacity) hold initialised values; all
//!   others are uninitialised. The producer writes a slot before publishing
//!   `tail` with `Release`; the consumer reads `tail` with `Acquire` before
//!   reading the slot, and the same pairing runs the other way for `head`.
//! - `Producer` and `Consumer` are `Send` but neither `Sync` nor `Clone`, so
//!   each end is used by exactly one thread at a time.

use std::cell::{Cell, UnsafeCell};
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Keeps its content on its own cache line pair (adjacent-line prefetch
/// makes 128 bytes the unit of false sharing on current x86 and Apple cores).
#[repr(align(128))]
struct CachePadded<T>(T);

/// Marker that makes a type `!Sync` while leaving it `Send`.
type NotSync = PhantomData<Cell<()>>;

/// The storage shared by one [`Producer`] and one [`Consumer`].
///
/// It is only reachable through the two ends; it is public so that the
/// ends' documentation can name it.
pub struct Ring<T> {
    /// Next position to pop; written by the consumer only.
    head: CachePadded<AtomicUsize>,
    /// Next position to push; written by the producer only.
    tail: CachePadded<AtomicUsize>,
    /// `capacity - 1`; capacity is a power of two.
    mask: usize,
    slots: Box<[UnsafeCell<MaybeUninit<T>>]>,
}

// SAFETY: the ring hands each `T` from one thread to another exactly once
// (so `T: Send` is needed and enough); slot access is serialised by the
// head/tail protocol described in the module doc.
unsafe impl<T: Send> Send for Ring<T> {}
// SAFETY: as above; shared access from two threads only ever touches disjoint
// slots, with Acquire/Release on `head`/`tail` ordering the hand-over.
unsafe impl<T: Send> Sync for Ring<T> {}

impl<T> Ring<T> {
    fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.max(1).checked_next_power_of_two().unwrap_or(1 << (usize::BITS - 1));
        let slots = (0..capacity).map(|_| UnsafeCell::new(MaybeUninit::uninit())).collect();
        Self {
            head: CachePadded(AtomicUsize::new(0)),
            tail: CachePadded(AtomicUsize::new(0)),
            mask: capacity - 1,
            slots,
        }
    }

    /// How many values the ring holds when full (a power of two).
    pub fn capacity(&self) -> usize {
        self.mask + 1
    }

    fn slot(&self, pos: usize) -> *mut MaybeUninit<T> {
        self.slots[pos & self.mask].get()
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        let tail = *self.tail.0.get_mut();
        let mut head = *self.head.0.get_mut();
        while head != tail {
            // SAFETY: `&mut self` means both ends are gone; positions in
            // `head..tail` hold initialised values that nobody popped.
            unsafe { (*self.slot(head)).assume_init_drop() };
            head = head.wrapping_add(1);
        }
    }
}

/// Creates a ring holding at least `capacity` values (rounded up to a power
/// of two, at least 1) and returns its two ends. The slots are allocated
/// here, once; an absurd capacity fails like any oversized allocation.
pub fn channel<T: Send>(capacity: usize) -> (Producer<T>, Consumer<T>) {
    let ring = Arc::new(Ring::with_capacity(capacity));
    let producer = Producer {
        ring: Arc::clone(&ring),
        tail: 0,
        head_cache: 0,
        _not_sync: PhantomData,
    };
    let consumer = Consumer {
        ring,
        head: 0,
        tail_cache: 0,
        _not_sync: PhantomData,
    };
    (producer, consumer)
}

/// The pushing end of a ring.
pub struct Producer<T> {
    ring: Arc<Ring<T>>,
    /// Our own copy of `ring.tail` (we are its only writer).
    tail: usize,
    /// Last `ring.head` seen; refreshed only when the ring looks full.
    head_cache: usize,
    _not_sync: NotSync,
}

impl<T> Producer<T> {
    /// Appends `v`, or gives it back when the ring is full.
    pub fn push(&mut self, v: T) -> Result<(), T> {
        let ring = &*self.ring;
        let tail = self.tail;
        if tail.wrapping_sub(self.head_cache) >= ring.capacity() {
            self.head_cache = ring.head.0.load(Ordering::Acquire);
            if tail.wrapping_sub(self.head_cache) >= ring.capacity() {
                return Err(v);
            }
        }
        // SAFETY: `tail - head < capacity`, so the slot at `tail` is outside
        // `head..tail`: uninitialised and not read by the consumer until we
        // publish the new tail below.
        unsafe { (*ring.slot(tail)).write(v) };
        self.tail = tail.wrapping_add(1);
        ring.tail.0.store(self.tail, Ordering::Release);
        Ok(())
    }

    /// How many values can be pushed right now without failing.
    pub fn free_slots(&self) -> usize {
        let head = self.ring.head.0.load(Ordering::Acquire);
        self.ring.capacity() - self.tail.wrapping_sub(head)
    }

    /// How many values the ring holds when full.
    pub fn capacity(&self) -> usize {
        self.ring.capacity()
    }
}

/// The popping end of a ring.
pub struct Consumer<T> {
    ring: Arc<Ring<T>>,
    /// Our own copy of `ring.head` (we are its only writer).
    head: usize,
    /// Last `ring.tail` seen; refreshed only when the ring looks empty.
    tail_cache: usize,
    _not_sync: NotSync,
}

impl<T> Consumer<T> {
    /// Removes the oldest value, if any.
    pub fn pop(&mut self) -> Option<T> {
        let ring = &*self.ring;
        let head = self.head;
        if head == self.tail_cache {
            self.tail_cache = ring.tail.0.load(Ordering::Acquire);
            if head == self.tail_cache {
                return None;
            }
        }
        // SAFETY: `head != tail`, so the slot at `head` was initialised by
        // the producer before it published `tail` (Release, paired with our
        // Acquire); the producer won't touch it until we publish the new head.
        let v = unsafe { (*ring.slot(head)).assume_init_read() };
        self.head = head.wrapping_add(1);
        ring.head.0.store(self.head, Ordering::Release);
        Some(v)
    }

    /// How many values are waiting to be popped.
    pub fn len(&self) -> usize {
        self.ring.tail.0.load(Ordering::Acquire).wrapping_sub(self.head)
    }

    /// Whether no value is waiting to be popped.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many values the ring holds when full.
    pub fn capacity(&self) -> usize {
        self.ring.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_full_empty() {
        let (mut tx, mut rx) = channel::<u32>(3);
        assert_eq!(tx.capacity(), 4);
        assert_eq!(rx.capacity(), 4);
        assert!(rx.is_empty());
        assert_eq!(rx.pop(), None);
        for i in 0..4 {
            assert_eq!(tx.free_slots(), 4 - i as usize);
            tx.push(i).unwrap();
        }
        assert_eq!(tx.free_slots(), 0);
        assert_eq!(tx.push(9), Err(9));
        assert_eq!(rx.len(), 4);
        assert_eq!(rx.pop(), Some(0));
        assert_eq!(tx.free_slots(), 1);
        tx.push(4).unwrap();
        assert_eq!(tx.push(5), Err(5));
        for i in 1..5 {
            assert_eq!(rx.pop(), Some(i));
        }
        assert_eq!(rx.pop(), None);
        assert!(rx.is_empty());
        assert_eq!(tx.free_slots(), 4);
    }

    #[test]
    fn zero_capacity_rounds_up_to_one() {
        let (mut tx, mut rx) = channel::<u8>(0);
        assert_eq!(tx.capacity(), 1);
        tx.push(1).unwrap();
        assert_eq!(tx.push(2), Err(2));
        assert_eq!(rx.pop(), Some(1));
    }

    #[test]
    fn wraps_many_times() {
        let (mut tx, mut rx) = channel::<usize>(2);
        for i in 0..1000 {
            tx.push(i).unwrap();
            tx.push(i + 1).unwrap();
            assert_eq!(rx.pop(), Some(i));
            assert_eq!(rx.pop(), Some(i + 1));
        }
    }

    #[test]
    fn two_thread_stress_keeps_order() {
        const N: u64 = 1_000_000;
        let (mut tx, mut rx) = channel::<u64>(1024);
        let producer = std::thread::spawn(move || {
            let mut i = 0;
            while i < N {
                match tx.push(i) {
                    Ok(()) => i += 1,
                    Err(_) => std::hint::spin_loop(),
                }
            }
        });
        let mut expected = 0;
        while expected < N {
            match rx.pop() {
                Some(v) => {
                    assert_eq!(v, expected);
                    expected += 1;
                }
                None => std::hint::spin_loop(),
            }
        }
        producer.join().unwrap();
        assert_eq!(rx.pop(), None);
        assert_eq!(expected, N);
    }

    struct Counted(Arc<AtomicUsize>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn dropping_a_non_empty_ring_drops_its_items() {
        let drops = Arc::new(AtomicUsize::new(0));
        let (mut tx, mut rx) = channel(8);
        for _ in 0..5 {
            assert!(tx.push(Counted(Arc::clone(&drops))).is_ok());
        }
        drop(rx.pop());
        assert_eq!(drops.load(Ordering::Relaxed), 1);
        drop(tx);
        assert_eq!(drops.load(Ordering::Relaxed), 1);
        drop(rx);
        assert_eq!(drops.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn ends_are_send() {
        fn is_send<T: Send>() {}
        is_send::<Producer<Vec<u8>>>();
        is_send::<Consumer<Vec<u8>>>();
    }
}
