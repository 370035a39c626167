//! The background checkpointer: copies the WAL back into the database file off the commit path.
//!
//! Why: with SQLite's default auto-checkpoint, the commit that pushes the WAL
//! past 1000 pages runs the checkpoint itself (copy + two fsyncs), which put
//! tens of milliseconds into that one batch's commit. Here the writer's
//! auto-checkpoint threshold is raised to [`WRITER_AUTOCHECKPOINT_PAGES`] (a
//! safety net that bounds the WAL if this thread falls behind) and this
//! thread runs `PRAGMA wal_checkpoint(PASSIVE)`. A PASSIVE checkpoint never
//! blocks the writer or readers; once it has copied every frame, the writer's
//! next transaction restarts the WAL from its beginning, so the file does not
//! grow.
//!
//! When: the thread looks every [`INTERVAL`] at what the writer did since the
//! last checkpoint ([`WalGrowth`]) and checkpoints when it is due ([`due`]):
//! a large write backlog at once, a trickle at most every [`MAX_DELAY`],
//! nothing written never. A checkpoint's cost is mostly fixed (two fsyncs of
//! which the disk's write-back is most), so under a trickle of commits one
//! every 50 ms was most of the store's CPU (results/light-load-profile-20261205.txt).
//! The promised durability does not depend on it: with `synchronous=NORMAL` a
//! commit survives a process crash once it is in the WAL, and with FULL it is
//! synced at commit. What NORMAL does not promise, surviving an OS crash or a
//! power loss, depends on the WAL's sync, which SQLite does at checkpoints: under
//! a trickle of commits that window is now up to [`MAX_DELAY`], not 50 ms.
//!
//! Invariants: the thread owns its own connection; dropping [`Checkpointer`]
//! stops and joins it.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::StoreError;

/// How often the thread looks whether a checkpoint is due.
pub(super) const INTERVAL: Duration = Duration::from_millis(50);

/// The longest a written commit waits for its checkpoint.
pub(super) const MAX_DELAY: Duration = Duration::from_secs(1);

/// Message bytes written since the last checkpoint that make one due at once (the WAL
/// then holds at least this much, about 256 pages).
pub(super) const DUE_BYTES: u64 = 1 << 20;

/// Commits since the last checkpoint that make one due at once (each writes at least a page).
pub(super) const DUE_COMMITS: u64 = 256;

/// What the writer connection did, counted as it commits: the checkpointer's measure of
/// the WAL's growth.
#[derive(Debug, Default)]
pub(super) struct WalGrowth {
    commits: AtomicU64,
    bytes: AtomicU64,
}

impl WalGrowth {
    /// A write transaction was run, with `bytes` of message frames.
    pub(super) fn wrote(&self, bytes: u64) {
        self.commits.fetch_add(1, Relaxed);
        self.bytes.fetch_add(bytes, Relaxed);
    }

    fn now(&self) -> (u64, u64) {
        (self.commits.load(Relaxed), self.bytes.load(Relaxed))
    }
}

/// Whether a checkpoint is due, given the commits and bytes written since the last one
/// and the time since it.
pub(super) fn due(commits: u64, bytes: u64, since_last: Duration) -> bool {
    commits > 0 && (bytes >= DUE_BYTES || commits >= DUE_COMMITS || since_last >= MAX_DELAY)
}

/// The writer's own auto-checkpoint threshold, in pages (4 KiB each): reached only if this thread falls behind.
pub(super) const WRITER_AUTOCHECKPOINT_PAGES: u32 = 16_384;

type StopFlag = Arc<(Mutex<bool>, Condvar)>;

/// A running checkpointer thread; stops when dropped.
pub(super) struct Checkpointer {
    stop: StopFlag,
    join: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Opens a connection to `path` and starts the thread, which follows the writer's
    /// `growth`.
    pub(super) fn start(path: &Path, growth: Arc<WalGrowth>) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(|e| StoreError::sqlite("open checkpoint connection", e))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(|e| StoreError::sqlite("set busy_timeout", e))?;
        let stop: StopFlag = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = Arc::clone(&stop);
        let join = std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || run(&conn, &flag, &growth))
            .map_err(|e| StoreError::io("start the checkpoint thread", e))?;
        Ok(Self { stop, join: Some(join) })
    }
}

fn run(conn: &Connection, stop: &StopFlag, growth: &WalGrowth) {
    let (lock, cvar) = &**stop;
    let mut last = (0, 0);
    let mut last_at = Instant::now();
    loop {
        {
            // Poison: the flag is a plain bool; a panic elsewhere cannot leave it half-written.
            let stopped = lock.lock().unwrap_or_else(PoisonError::into_inner);
            let (stopped, _) = cvar
                .wait_timeout_while(stopped, INTERVAL, |s| !*s)
                .unwrap_or_else(PoisonError::into_inner);
            if *stopped {
                return;
            }
        }
        let now = growth.now();
        if !due(now.0 - last.0, now.1 - last.1, last_at.elapsed()) {
            continue;
        }
        last = now;
        last_at = Instant::now();
        let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, "embedded store: background checkpoint failed; the writer's auto-checkpoint still bounds the WAL");
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        *self.stop.0.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.stop.1.notify_all();
        if let Some(join) = self.join.take() {
            let _ = join.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_written_is_never_due() {
        assert!(!due(0, 0, Duration::from_secs(3600)));
    }

    #[test]
    fn a_trickle_waits_for_the_delay() {
        assert!(!due(3, 600, Duration::from_millis(50)));
        assert!(!due(DUE_COMMITS - 1, DUE_BYTES - 1, MAX_DELAY - Duration::from_millis(1)));
        assert!(due(1, 100, MAX_DELAY));
    }

    #[test]
    fn a_backlog_is_due_at_once() {
        assert!(due(1, DUE_BYTES, Duration::ZERO));
        assert!(due(DUE_COMMITS, 0, Duration::ZERO));
    }
}
