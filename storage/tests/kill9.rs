//! Durability across kill -9: a child process (this test binary re-executed with an env var) writes
//! batches through the real store service and prints each seq once its `Written` completion says it is
//! committed; the parent SIGKILLs it mid-stream, reopens the directory, and checks that every seq the
//! child reported is there.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use storage::conformance::message;
use storage::embedded::{EmbeddedOptions, EmbeddedStore};
use storage::{spawn, Completion, MessageStore, StoreConfig};

const CHILD_DIR_ENV: &str = "STORAGE_KILL9_CHILD_DIR";
const ROOMS: u64 = 4;
/// The parent kills the child after this many reported commits.
const KILL_AFTER: usize = 20_000;
/// The child stops by itself after this long if nobody kills it.
const CHILD_MAX_RUN: Duration = Duration::from_secs(60);

fn room_seq(ticket: u64) -> (String, u64) {
    (format!("k{}", ticket % ROOMS), ticket / ROOMS + 1)
}

/// The child's body; a no-op unless run as the child.
#[test]
fn kill9_child_writer() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else { return };
    let store = EmbeddedStore::open(dir.as_ref(), &EmbeddedOptions::default()).expect("child: open");
    let cfg = StoreConfig {
        batch_max_messages: 64,
        flush_interval_us: 200,
        ..StoreConfig::default()
    };
    let (h, comps) = spawn(store, &cfg, 1).expect("child: spawn");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("child: runtime");
    let started = Instant::now();
    rt.block_on(async {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let (mut next, mut in_flight) = (0_u64, 0_usize);
        while started.elapsed() < CHILD_MAX_RUN {
            while in_flight < 512 {
                let (room, seq) = room_seq(next);
                if h.write(0, message(&room, seq), next).is_err() {
                    break;
                }
                next += 1;
                in_flight += 1;
            }
            comps[0].ready().await;
            comps[0].drain(usize::MAX, |c| {
                in_flight -= 1;
                if let Completion::Written { ticket, result: Ok(()) } = c {
                    let _ = writeln!(out, "COMMITTED {ticket}");
                }
            });
            // Reported only now, after the commits: every line the parent reads is a committed message.
            out.flush().expect("child: stdout");
        }
    });
}

#[cfg(unix)]
#[tokio::test]
async fn kill9_loses_no_committed_message() {
    use std::os::unix::process::ExitStatusExt;

    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["kill9_child_writer", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start child");
    let lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let mut committed: Vec<u64> = Vec::new();
    let mut killed = false;
    for line in lines {
        let line = line.expect("read child stdout");
        if let Some(ticket) = line.strip_prefix("COMMITTED ") {
            committed.push(ticket.parse().expect("ticket"));
        }
        if !killed && committed.len() >= KILL_AFTER {
            child.kill().expect("SIGKILL the child"); // std's kill is SIGKILL on Unix
            killed = true;
        }
    }
    let status = child.wait().expect("wait child");
    assert!(killed, "the child ended before reporting {KILL_AFTER} commits: {status:?}");
    assert_eq!(status.signal(), Some(9), "the child must die by SIGKILL, not exit: {status:?}");

    let store = EmbeddedStore::open(dir.path(), &EmbeddedOptions::default()).expect("reopen after kill -9");
    let mut stored = std::collections::HashSet::new();
    for r in 0..ROOMS {
        let room = format!("k{r}");
        let mut after = 0;
        loop {
            let page = store.range_after(&room, after, 1000).await.expect("read back");
            let Some(last) = page.last() else { break };
            after = last.seq;
            stored.extend(page.iter().map(|m| (m.room.to_string(), m.seq)));
        }
    }
    let missing: Vec<u64> = committed.iter().copied().filter(|&t| !stored.contains(&room_seq(t))).collect();
    assert!(
        missing.is_empty(),
        "{} of {} committed messages lost after kill -9: {:?}",
        missing.len(),
        committed.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(stored.len() >= committed.len());
    assert!(
        !store.begin_run("edge-1").await.expect("begin_run"),
        "the killed run never ended: unclean"
    );
    println!(
        "kill -9 after {} reported commits: all present ({} stored)",
        committed.len(),
        stored.len()
    );
}
