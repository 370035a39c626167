//! Test helpers: a [`Probe`] store wrapper that records batches, can hold `write_batch` (and `history`)
//! at a gate until released, and can fail a number of attempts; and a completion collector.
#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use storage::embedded::{EmbeddedOptions, EmbeddedStore};
use storage::{
    Completion, Completions, HistoryPage, MarkKind, MessageStore, ReactionCount, ReactionOp, RoomState, StoreError, StoredMessage, UserRoom,
};

/// What the probe saw, shared with the test.
pub struct ProbeLog {
    /// `(room, seq)` of every batch that was written successfully, in order.
    pub batches: Mutex<Vec<Vec<(String, u64)>>>,
    /// Calls of `write_batch` (attempts, failed or not).
    pub attempts: AtomicUsize,
    /// Upcoming attempts to fail with a retryable injected error.
    pub fail_next: AtomicUsize,
    /// Whether `write_batch` and `history` wait at the gate.
    pub gated: AtomicBool,
    /// The gate: calls take one permit each.
    pub gate: tokio::sync::Semaphore,
    /// Calls that reached the gate (or would have).
    pub entered: AtomicUsize,
    /// Whether `write_batch` and `history` panic (a store bug the service must survive).
    pub panic: AtomicBool,
}

impl Default for ProbeLog {
    fn default() -> Self {
        Self {
            batches: Mutex::default(),
            attempts: AtomicUsize::new(0),
            fail_next: AtomicUsize::new(0),
            gated: AtomicBool::new(false),
            gate: tokio::sync::Semaphore::new(0),
            entered: AtomicUsize::new(0),
            panic: AtomicBool::new(false),
        }
    }
}

impl ProbeLog {
    pub fn release(&self) {
        self.gated.store(false, Ordering::SeqCst);
        self.gate.add_permits(1 << 20);
    }

    pub fn batch_sizes(&self) -> Vec<usize> {
        self.batches.lock().expect("log").iter().map(Vec::len).collect()
    }

    /// Waits (polling, up to 20 s) until `n` calls reached the gate.
    pub fn wait_entered(&self, n: usize) {
        for _ in 0..2000 {
            if self.entered.load(Ordering::SeqCst) >= n {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("only {} calls reached the gate, expected {n}", self.entered.load(Ordering::SeqCst));
    }

    async fn pass_gate(&self) {
        assert!(!self.panic.load(Ordering::SeqCst), "probe: injected panic");
        self.entered.fetch_add(1, Ordering::SeqCst);
        if self.gated.load(Ordering::SeqCst) {
            self.gate.acquire().await.expect("gate never closes").forget();
        }
    }
}

/// A store wrapper for the service tests.
pub struct Probe<S> {
    pub inner: S,
    pub log: Arc<ProbeLog>,
}

/// A probe around a fresh embedded store in a temp dir.
pub fn embedded_probe() -> (tempfile::TempDir, Probe<EmbeddedStore>, Arc<ProbeLog>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let inner = EmbeddedStore::open(dir.path(), &EmbeddedOptions::default()).expect("open");
    let log = Arc::new(ProbeLog::default());
    (
        dir,
        Probe {
            inner,
            log: Arc::clone(&log),
        },
        log,
    )
}

/// Collects at least `n` completions (waiting up to 20 s, a liveness bound, not a speed check).
pub async fn collect(c: &Completions, n: usize) -> Vec<Completion> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    loop {
        c.drain(usize::MAX, |x| out.push(x));
        if out.len() >= n {
            return out;
        }
        if tokio::time::timeout_at(deadline, c.ready()).await.is_err() {
            panic!("got {} of {n} completions in 20 s", out.len());
        }
    }
}

impl<S: MessageStore> MessageStore for Probe<S> {
    async fn write_batch(&self, msgs: &[StoredMessage]) -> Result<(), StoreError> {
        self.log.attempts.fetch_add(1, Ordering::SeqCst);
        self.log.pass_gate().await;
        let fail = self
            .log
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            return Err(StoreError::Injected("probe failure"));
        }
        self.inner.write_batch(msgs).await?;
        self.log
            .batches
            .lock()
            .expect("log")
            .push(msgs.iter().map(|m| (m.room.to_string(), m.seq)).collect());
        Ok(())
    }
    async fn room_state(&self, room: &str, new_epoch: u64) -> Result<RoomState, StoreError> {
        self.inner.room_state(room, new_epoch).await
    }
    async fn set_epoch(&self, room: &str, epoch: u64) -> Result<(), StoreError> {
        self.inner.set_epoch(room, epoch).await
    }
    async fn history(&self, room: &str, before: Option<u64>, limit: usize) -> Result<HistoryPage, StoreError> {
        self.log.pass_gate().await;
        self.inner.history(room, before, limit).await
    }
    async fn range_after(&self, room: &str, after: u64, limit: usize) -> Result<Vec<StoredMessage>, StoreError> {
        self.inner.range_after(room, after, limit).await
    }
    async fn find_client_id(&self, room: &str, sender: &str, client_id: &str) -> Result<Option<StoredMessage>, StoreError> {
        self.inner.find_client_id(room, sender, client_id).await
    }
    async fn thread(&self, room: &str, root: u64, before: Option<u64>, limit: usize) -> Result<HistoryPage, StoreError> {
        self.inner.thread(room, root, before, limit).await
    }
    async fn reply_counts(&self, room: &str, from: u64, to: u64) -> Result<Vec<(u64, u64)>, StoreError> {
        self.inner.reply_counts(room, from, to).await
    }
    async fn set_mark(&self, room: &str, user: &str, kind: MarkKind, seq: u64) -> Result<u64, StoreError> {
        self.inner.set_mark(room, user, kind, seq).await
    }
    async fn set_marks(&self, room: &str, users: &[String], kind: MarkKind, seq: u64) -> Result<Vec<u64>, StoreError> {
        self.inner.set_marks(room, users, kind, seq).await
    }
    async fn react(&self, room: &str, seq: u64, user: &str, emoji: &str, op: ReactionOp) -> Result<(), StoreError> {
        self.inner.react(room, seq, user, emoji, op).await
    }
    async fn reactions(&self, room: &str, seq: u64) -> Result<Vec<(String, String)>, StoreError> {
        self.inner.reactions(room, seq).await
    }
    async fn reaction_counts(&self, room: &str, from: u64, to: u64, user: &str) -> Result<Vec<ReactionCount>, StoreError> {
        self.inner.reaction_counts(room, from, to, user).await
    }
    async fn replace_frame(&self, room: &str, seq: u64, frame: &Bytes) -> Result<bool, StoreError> {
        self.inner.replace_frame(room, seq, frame).await
    }
    async fn set_last_seen(&self, user: &str, ts_ms: u64) -> Result<(), StoreError> {
        self.inner.set_last_seen(user, ts_ms).await
    }
    async fn last_seen(&self, user: &str) -> Result<Option<u64>, StoreError> {
        self.inner.last_seen(user).await
    }
    async fn add_user_room(&self, user: &str, room: &str) -> Result<(), StoreError> {
        self.inner.add_user_room(user, room).await
    }
    async fn user_rooms(&self, user: &str) -> Result<Vec<UserRoom>, StoreError> {
        self.inner.user_rooms(user).await
    }
    async fn begin_run(&self, node_id: &str) -> Result<bool, StoreError> {
        self.inner.begin_run(node_id).await
    }
    async fn end_run(&self, node_id: &str) -> Result<(), StoreError> {
        self.inner.end_run(node_id).await
    }
}
