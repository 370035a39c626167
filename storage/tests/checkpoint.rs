//! The background checkpointer copies what the writer committed into the database file:
//! in WAL mode only a checkpoint writes the main file, so its growth after a burst of
//! writes shows that the checkpointer ran (with the adaptive cadence of
//! `embedded/checkpoint.rs`, within about a second of the last commit).

use std::time::{Duration, Instant};

use storage::conformance::message;
use storage::embedded::{EmbeddedOptions, EmbeddedStore, DB_FILE};
use storage::MessageStore;

#[test]
fn written_batches_reach_the_database_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(dir.path(), &EmbeddedOptions::default()).expect("open embedded store");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let db = dir.path().join(DB_FILE);
    let size = || std::fs::metadata(&db).expect("database file").len();
    // Whatever the open wrote (the schema) is checkpointed first, so the next growth is the batches'.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut before = size();
    std::thread::sleep(Duration::from_millis(1_500));
    while size() != before && Instant::now() < deadline {
        before = size();
        std::thread::sleep(Duration::from_millis(1_500));
    }
    rt.block_on(async {
        for batch in 0..20_u64 {
            let msgs: Vec<_> = (1..=50).map(|i| message("cp", batch * 50 + i)).collect();
            store.write_batch(&msgs).await.expect("write batch");
        }
    });
    while size() <= before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = size();
    assert!(
        after > before,
        "the database file did not grow within 10 s of 1,000 committed messages ({before} -> {after} bytes): no checkpoint ran"
    );
}
