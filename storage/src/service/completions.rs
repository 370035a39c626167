//! The per-shard completion queue: filled by the store thread, drained by one shard under any executor.
//!
//! Invariants:
//! - no lost wake-ups: the producer publishes `len` (Release) *before* it wakes,
//!   and [`Completions::ready`] registers its waker *before* it re-reads `len`
//!   (Acquire); so either the re-read sees the new item or the wake finds the
//!   registered waker;
//! - the lock is held only to move items in or out, never while the shard's
//!   callback runs;
//! - the queue is bounded by what was admitted: each completion answers one
//!   write or query that passed the store's bounded queues.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;

use atomic_waker::AtomicWaker;

use super::Completion;

/// The shared half, owned by the store thread and by one [`Completions`].
#[derive(Default)]
pub(crate) struct CompletionQueue {
    items: Mutex<VecDeque<Completion>>,
    len: AtomicUsize,
    waker: AtomicWaker,
}

impl CompletionQueue {
    /// Appends the completions and wakes the shard once.
    pub(crate) fn push_all(&self, completions: impl IntoIterator<Item = Completion>) {
        {
            // Poison: pushing/popping a VecDeque cannot leave it inconsistent; a panic elsewhere must not stop delivery.
            let mut q = self.items.lock().unwrap_or_else(PoisonError::into_inner);
            q.extend(completions);
            self.len.store(q.len(), Ordering::Release);
        }
        self.waker.wake();
    }
}

/// One shard's completions: `Written` and `Answered` results of the writes and queries it submitted.
pub struct Completions {
    queue: Arc<CompletionQueue>,
}

impl std::fmt::Debug for Completions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Completions").field("len", &self.len()).finish()
    }
}

impl Completions {
    pub(crate) fn new(queue: Arc<CompletionQueue>) -> Self {
        Self { queue }
    }

    /// Completions waiting to be drained.
    pub fn len(&self) -> usize {
        self.queue.len.load(Ordering::Acquire)
    }

    /// Whether no completion is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes up to `max` waiting completions, oldest first, and calls `f` on each (outside the lock); returns how many.
    pub fn drain(&self, max: usize, mut f: impl FnMut(Completion)) -> usize {
        let taken: VecDeque<Completion> = {
            // Poison: see `push_all`.
            let mut q = self.queue.items.lock().unwrap_or_else(PoisonError::into_inner);
            let taken = if q.len() <= max {
                std::mem::take(&mut *q)
            } else {
                q.drain(..max).collect()
            };
            self.queue.len.store(q.len(), Ordering::Release);
            taken
        };
        let n = taken.len();
        taken.into_iter().for_each(&mut f);
        n
    }

    /// Resolves when at least one completion is waiting. Works under any executor (monoio, tokio, a test's `block_on`).
    pub async fn ready(&self) {
        poll_fn(|cx| {
            if !self.is_empty() {
                return Poll::Ready(());
            }
            self.queue.waker.register(cx.waker());
            // Re-check after registering: an item pushed before `register` will not wake us.
            if !self.is_empty() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(ticket: u64) -> Completion {
        Completion::Written { ticket, result: Ok(()) }
    }

    #[test]
    fn drain_respects_max_and_order() {
        let q = Arc::new(CompletionQueue::default());
        let c = Completions::new(Arc::clone(&q));
        q.push_all((1..=5).map(written));
        let mut seen = Vec::new();
        assert_eq!(c.drain(3, |x| seen.push(x.ticket())), 3);
        assert_eq!(c.len(), 2);
        assert_eq!(c.drain(10, |x| seen.push(x.ticket())), 2);
        assert_eq!(seen, vec![1, 2, 3, 4, 5]);
        assert!(c.is_empty());
    }

    #[test]
    fn ready_wakes_across_threads() {
        // A pusher thread races the waiting future many times; a lost wake-up would hang this test.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        for round in 0..200_u64 {
            let q = Arc::new(CompletionQueue::default());
            let c = Completions::new(Arc::clone(&q));
            let pusher = std::thread::spawn(move || q.push_all([written(round)]));
            rt.block_on(async {
                tokio::time::timeout(std::time::Duration::from_secs(10), c.ready())
                    .await
                    .expect("woken");
            });
            pusher.join().expect("pusher");
            assert_eq!(c.drain(1, |_| {}), 1);
        }
    }
}
