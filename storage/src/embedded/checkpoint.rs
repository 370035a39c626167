//! The background checkpointer: copies the WAL back into the database file off the commit path.
//!
//! Why: with SQLite's default auto-checkpoint, the commit that pushes the WAL
//! past 1000 pages runs the checkpoint itself (copy + two fsyncs), which put
//! tens of milliseconds into that one batch's commit. Here the writer's
//! auto-checkpoint threshold is raised to [`WRITER_AUTOCHECKPOINT_PAGES`] (a
//! safety net that bounds the WAL if this thread falls behind) and this
//! thread runs `PRAGMA wal_checkpoint(PASSIVE)` every [`INTERVAL`]. A PASSIVE
//! checkpoint never blocks the writer or readers; once it has copied every
//! frame, the writer's next transaction restarts the WAL from its beginning,
//! so the file does not grow.
//!
//! Invariants: the thread owns its own connection; dropping [`Checkpointer`]
//! stops and joins it.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

use crate::StoreError;

/// How often the thread checkpoints.
pub(super) const INTERVAL: Duration = Duration::from_millis(50);

/// The writer's own auto-checkpoint threshold, in pages (4 KiB each): reached only if this thread falls behind.
pub(super) const WRITER_AUTOCHECKPOINT_PAGES: u32 = 16_384;

type StopFlag = Arc<(Mutex<bool>, Condvar)>;

/// A running checkpointer thread; stops when dropped.
pub(super) struct Checkpointer {
    stop: StopFlag,
    join: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Opens a connection to `path` and starts the thread.
    pub(super) fn start(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(|e| StoreError::sqlite("open checkpoint connection", e))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(|e| StoreError::sqlite("set busy_timeout", e))?;
        let stop: StopFlag = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = Arc::clone(&stop);
        let join = std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || run(&conn, &flag))
            .map_err(|e| StoreError::io("start the checkpoint thread", e))?;
        Ok(Self { stop, join: Some(join) })
    }
}

fn run(conn: &Connection, stop: &StopFlag) {
    let (lock, cvar) = &**stop;
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
