//! The store service: group commit by size and by time, bounded queues, per-room order, failures
//! delivered to every ticket, shutdown flushing, per-shard completions. Assertions are on batch counts
//! and sizes; the only clocks are generous liveness bounds.

mod common;

use std::sync::atomic::Ordering;

use common::{collect, embedded_probe};
use storage::conformance::message;
use storage::embedded::{EmbeddedOptions, EmbeddedStore};
use storage::{spawn, Answer, Completion, MessageStore, Overloaded, Query, StoreConfig, StoreError};

fn cfg(batch_max: usize, flush_interval_us: u64) -> StoreConfig {
    StoreConfig {
        batch_max_messages: batch_max,
        flush_interval_us,
        write_retry_backoff_ms: 1,
        shutdown_timeout_ms: 20_000,
        ..StoreConfig::default()
    }
}

fn assert_all_written_ok(done: &[Completion]) {
    for c in done {
        assert!(matches!(c, Completion::Written { result: Ok(()), .. }), "{c:?}");
    }
}

#[tokio::test]
async fn flushes_on_size_before_the_timer() {
    let (_dir, probe, log) = embedded_probe();
    // A 10 s timer: the batch of 8 must go out because it is full, long before the timer.
    let (h, comps) = spawn(probe, &cfg(8, 10_000_000), 1).expect("spawn");
    for seq in 1..=8 {
        h.write(0, message("size", seq), seq).expect("write");
    }
    let done = tokio::time::timeout(std::time::Duration::from_secs(5), collect(&comps[0], 8))
        .await
        .expect("flushed by size, not by the 10 s timer");
    assert_all_written_ok(&done);
    assert_eq!(log.batch_sizes(), vec![8]);
    assert_eq!(h.stats().snapshot().batches_total, 1);
    assert_eq!(h.stats().snapshot().last_batch_messages, 8);
    h.shutdown().expect("shutdown");
}

#[tokio::test]
async fn a_write_that_fills_a_waiting_batch_wakes_the_writer() {
    let (_dir, probe, log) = embedded_probe();
    // A 10 s window: the writer sleeps on the first message's batch, off the channel.
    let (h, comps) = spawn(probe, &cfg(8, 10_000_000), 1).expect("spawn");
    h.write(0, message("fill", 1), 1).expect("write");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // Six more leave the batch one short: it keeps waiting.
    for seq in 2..=7 {
        h.write(0, message("fill", seq), seq).expect("write");
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(log.batch_sizes().is_empty(), "a batch one short of batch_max waits for its window");
    // The eighth fills it: written now, not when the 10 s window ends.
    h.write(0, message("fill", 8), 8).expect("write");
    let done = tokio::time::timeout(std::time::Duration::from_secs(5), collect(&comps[0], 8))
        .await
        .expect("the filling write woke the writer");
    assert_all_written_ok(&done);
    assert_eq!(log.batch_sizes(), vec![8]);
    h.shutdown().expect("shutdown");
}

#[tokio::test]
async fn flushes_on_time_a_lone_message() {
    let (_dir, probe, log) = embedded_probe();
    let (h, comps) = spawn(probe, &cfg(1000, 20_000), 1).expect("spawn");
    h.write(0, message("time", 1), 1).expect("write");
    let done = collect(&comps[0], 1).await;
    assert_all_written_ok(&done);
    assert_eq!(
        log.batch_sizes(),
        vec![1],
        "a batch far below batch_max is written when the interval ends"
    );
    h.shutdown().expect("shutdown");
}

#[tokio::test]
async fn messages_arriving_within_the_interval_share_a_batch() {
    let (_dir, probe, log) = embedded_probe();
    let (h, comps) = spawn(probe, &cfg(1000, 300_000), 1).expect("spawn");
    for seq in 1..=3 {
        h.write(0, message("group", seq), seq).expect("write");
    }
    // Submitted back to back, well inside the 300 ms window opened by the first.
    let done = collect(&comps[0], 3).await;
    assert_all_written_ok(&done);
    assert_eq!(log.batch_sizes(), vec![3]);
    h.shutdown().expect("shutdown");
}

#[tokio::test]
async fn full_queue_answers_overloaded() {
    let (_dir, probe, log) = embedded_probe();
    log.gated.store(true, Ordering::SeqCst);
    let config = StoreConfig {
        queue_capacity: 16,
        query_queue_capacity: 2,
        ..cfg(4, 0)
    };
    let (h, comps) = spawn(probe, &config, 1).expect("spawn");
    h.write(0, message("full", 1), 1).expect("first write");
    log.wait_entered(1); // the writer holds seq 1 inside write_batch; the queue is empty
    for seq in 2..=17 {
        h.write(0, message("full", seq), seq).expect("queue has room for 16");
    }
    assert_eq!(h.write(0, message("full", 18), 18), Err(Overloaded));
    let snap = h.stats().snapshot();
    assert_eq!((snap.write_queue_depth, snap.overloaded_total), (16, 1));

    // Queries have their own bound: the first is held at the gate inside `history`, the second waits.
    let history = || Query::History {
        room: "full".into(),
        before: None,
        limit: 10,
    };
    h.query(0, history(), 100).expect("query 1");
    log.wait_entered(2);
    h.query(0, history(), 101).expect("query 2");
    assert_eq!(h.query(0, history(), 102), Err(Overloaded));
    assert_eq!(h.stats().snapshot().overloaded_total, 2);

    log.release();
    let done = collect(&comps[0], 19).await;
    let written = done
        .iter()
        .filter(|c| matches!(c, Completion::Written { result: Ok(()), .. }))
        .count();
    assert_eq!(written, 17);
    h.write(0, message("full", 18), 18).expect("room again once drained");
    collect(&comps[0], 1).await;
    h.shutdown().expect("shutdown");
}

#[tokio::test]
async fn per_room_order_is_kept_across_batches() {
    let (_dir, probe, log) = embedded_probe();
    let (h, comps) = spawn(probe, &cfg(4, 0), 1).expect("spawn");
    let mut submitted = Vec::new();
    for seq in 1..=30 {
        for room in ["a", "b", "c"] {
            h.write(0, message(room, seq), submitted.len() as u64).expect("write");
            submitted.push((room.to_owned(), seq));
        }
    }
    let done = collect(&comps[0], 90).await;
    assert_all_written_ok(&done);
    let batches = log.batches.lock().expect("log").clone();
    assert!(batches.len() >= 23, "90 messages in batches of at most 4: {}", batches.len());
    assert!(batches.iter().all(|b| b.len() <= 4));
    assert_eq!(batches.concat(), submitted, "batches keep submission order");
    // A query submitted after the completions sees every write.
    h.query(
        0,
        Query::RangeAfter {
            room: "b".into(),
            after: 0,
            limit: 100,
        },
        7,
    )
    .expect("query");
    let answer = collect(&comps[0], 1).await.pop().expect("one answer");
    let Completion::Answered {
        ticket: 7,
        result: Ok(Answer::RangeAfter(msgs)),
    } = answer
    else {
        panic!("{answer:?}")
    };
    assert_eq!(msgs.iter().map(|m| m.seq).collect::<Vec<_>>(), (1..=30).collect::<Vec<_>>());
    h.shutdown().expect("shutdown");
}

#[tokio::test]
async fn a_failing_batch_completes_every_ticket_with_the_error() {
    let (_dir, probe, log) = embedded_probe();
    log.fail_next.store(usize::MAX, Ordering::SeqCst);
    let config = StoreConfig {
        write_attempts: 3,
        ..cfg(100, 200_000)
    };
    let (h, comps) = spawn(probe, &config, 1).expect("spawn");
    for seq in 1..=5 {
        h.write(0, message("fail", seq), seq).expect("write");
    }
    let done = collect(&comps[0], 5).await;
    assert_eq!(done.len(), 5);
    for c in &done {
        assert!(
            matches!(
                c,
                Completion::Written {
                    result: Err(StoreError::Injected(_)),
                    ..
                }
            ),
            "{c:?}"
        );
    }
    let batches = 1; // five writes inside one 200 ms window
    assert_eq!(
        log.attempts.load(Ordering::SeqCst),
        3 * batches,
        "3 attempts per batch, then give up"
    );
    let snap = h.stats().snapshot();
    assert_eq!((snap.write_errors_total, snap.write_retries_total, snap.batches_total), (5, 2, 0));
    h.shutdown().expect("shutdown");
}

#[tokio::test]
async fn a_batch_that_fails_twice_then_succeeds_is_written_once() {
    let (dir, probe, log) = embedded_probe();
    log.fail_next.store(2, Ordering::SeqCst);
    let (h, comps) = spawn(probe, &cfg(100, 200_000), 1).expect("spawn");
    for seq in 1..=5 {
        h.write(0, message("retry", seq), seq).expect("write");
    }
    assert_all_written_ok(&collect(&comps[0], 5).await);
    assert_eq!(log.attempts.load(Ordering::SeqCst), 3);
    assert_eq!(h.stats().snapshot().write_retries_total, 2);
    h.shutdown().expect("shutdown");
    let store = EmbeddedStore::open(dir.path(), &EmbeddedOptions::default()).expect("reopen");
    assert_eq!(store.range_after("retry", 0, 10).await.expect("read").len(), 5);
}

#[tokio::test]
async fn a_non_retryable_error_is_not_retried() {
    let (_dir, probe, log) = embedded_probe();
    let (h, comps) = spawn(probe, &cfg(100, 0), 1).expect("spawn");
    h.write(0, message("range", u64::MAX), 1).expect("write");
    let done = collect(&comps[0], 1).await;
    assert!(
        matches!(
            &done[0],
            Completion::Written {
                result: Err(StoreError::OutOfRange(_)),
                ..
            }
        ),
        "{done:?}"
    );
    assert_eq!(log.attempts.load(Ordering::SeqCst), 1);
    h.shutdown().expect("shutdown");
}

#[tokio::test]
async fn a_panicking_store_still_completes_every_ticket() {
    let (_dir, probe, log) = embedded_probe();
    log.panic.store(true, Ordering::SeqCst);
    let (h, comps) = spawn(probe, &cfg(100, 0), 1).expect("spawn");
    h.write(0, message("panic", 1), 1).expect("write");
    h.query(
        0,
        Query::History {
            room: "panic".into(),
            before: None,
            limit: 10,
        },
        2,
    )
    .expect("query");
    let mut done = collect(&comps[0], 2).await;
    done.sort_by_key(Completion::ticket);
    assert!(
        matches!(
            &done[0],
            Completion::Written {
                result: Err(StoreError::Internal(_)),
                ..
            }
        ),
        "{done:?}"
    );
    assert!(
        matches!(
            &done[1],
            Completion::Answered {
                result: Err(StoreError::Internal(_)),
                ..
            }
        ),
        "{done:?}"
    );
    log.panic.store(false, Ordering::SeqCst);
    h.write(0, message("panic", 2), 3).expect("the service keeps working");
    assert_all_written_ok(&collect(&comps[0], 1).await);
    h.shutdown().expect("shutdown");
}

#[tokio::test]
async fn shutdown_flushes_and_records_a_clean_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let open = || EmbeddedStore::open(dir.path(), &EmbeddedOptions::default()).expect("open");
    // Shutdown may wait 2 s: waiting for the 5 s window would fail it.
    let c = StoreConfig {
        shutdown_timeout_ms: 2_000,
        ..cfg(1000, 5_000_000)
    };
    let (h, comps) = spawn(open(), &c, 2).expect("spawn");
    assert!(h.previous_run_clean(), "a first run counts as clean");
    for seq in 1..=10 {
        h.write((seq % 2) as usize, message("bye", seq), seq).expect("write");
    }
    // The writer is asleep on the batch's window, off the channel, when the shutdown comes.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    h.shutdown().expect("shutdown flushes without waiting for the 5 s timer");
    assert_eq!(h.write(0, message("bye", 11), 11), Err(Overloaded), "no writes after shutdown");
    h.shutdown().expect("a second shutdown is a no-op");
    let (even, odd) = (collect(&comps[0], 5).await, collect(&comps[1], 5).await);
    assert_all_written_ok(&even);
    assert!(
        even.iter().all(|c| c.ticket() % 2 == 0) && odd.iter().all(|c| c.ticket() % 2 == 1),
        "completions go to their shard"
    );
    assert_eq!(open().range_after("bye", 0, 100).await.expect("read").len(), 10);

    let (h2, _c2) = spawn(open(), &cfg(1000, 0), 1).expect("spawn after a clean shutdown");
    assert!(h2.previous_run_clean());
    drop(h2); // no shutdown: the run stays open, like a crash
    std::thread::sleep(std::time::Duration::from_millis(100));
    let (h3, _c3) = spawn(open(), &cfg(1000, 0), 1).expect("spawn after an unclean end");
    assert!(!h3.previous_run_clean(), "a run without end_run is reported as unclean");
    h3.shutdown().expect("shutdown");
}

#[tokio::test]
async fn queries_answer_through_the_service() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path(), &EmbeddedOptions::default()).expect("open");
    let (h, comps) = spawn(store, &cfg(16, 0), 1).expect("spawn");
    h.query(
        0,
        Query::RoomState {
            room: "q".into(),
            new_epoch: 3,
        },
        1,
    )
    .expect("q");
    h.query(
        0,
        Query::React {
            room: "q".into(),
            seq: 1,
            user: "u".into(),
            emoji: "👍".into(),
            op: storage::ReactionOp::Add,
        },
        2,
    )
    .expect("q");
    h.query(0, Query::Reactions { room: "q".into(), seq: 1 }, 3).expect("q");
    let mut done = collect(&comps[0], 3).await;
    done.sort_by_key(Completion::ticket);
    let answers: Vec<Answer> = done
        .into_iter()
        .map(|c| match c {
            Completion::Answered { result: Ok(a), .. } => a,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(answers[0], Answer::RoomState(storage::RoomState { epoch: 3, last_seq: 0 }));
    assert_eq!(answers[1], Answer::Reacted);
    assert_eq!(
        answers[2],
        Answer::Reactions(vec![("👍".into(), "u".into())]),
        "same room: runs after the React"
    );
    assert_eq!(h.stats().snapshot().queries_total, 3);
    h.shutdown().expect("shutdown");
}

#[test]
fn spawn_refuses_bad_config_and_zero_shards() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path(), &EmbeddedOptions::default()).expect("open");
    let err = spawn(
        store.clone(),
        &StoreConfig {
            batch_max_messages: 0,
            ..StoreConfig::default()
        },
        1,
    )
    .expect_err("bad config");
    assert!(err.to_string().contains("batch_max_messages"));
    assert!(spawn(store, &StoreConfig::default(), 0).is_err());
}

/// Polls `cond` every 10 ms for up to 20 s (a liveness bound, not a speed check).
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn with_retry_forever_writes_are_held_while_the_store_is_down_and_all_land_once() {
    let (_dir, probe, log) = embedded_probe();
    // Eight failed attempts (backoff 1, 2, ... 128 ms): more than write_attempts allows.
    log.fail_next.store(8, Ordering::SeqCst);
    let config = StoreConfig {
        write_attempts: 2,
        write_retry_forever: true,
        ..cfg(4, 0)
    };
    let (h, comps) = spawn(probe, &config, 1).expect("spawn");
    h.write(0, message("held", 1), 1).expect("write");
    until("the store is seen unavailable", || h.stats().unavailable()).await;
    // Writes made while it is down wait in the queue, counted.
    for seq in 2..=10 {
        h.write(0, message("held", seq), seq).expect("write");
    }
    assert!(h.stats().write_queue_depth() > 0, "a held backlog");
    let done = collect(&comps[0], 10).await;
    assert_all_written_ok(&done);
    assert!(!h.stats().unavailable(), "available again after the write went through");
    let written: Vec<u64> = log.batches.lock().expect("log").iter().flatten().map(|(_, s)| *s).collect();
    assert_eq!(written, (1..=10).collect::<Vec<_>>(), "each once, in order");
    let snap = h.stats().snapshot();
    assert_eq!((snap.write_errors_total, snap.write_retries_total), (0, 8));
    h.shutdown().expect("shutdown");
}

#[tokio::test]
async fn an_unavailable_store_is_probed_back_while_no_write_waits() {
    let (_dir, probe, log) = embedded_probe();
    log.fail_next.store(1, Ordering::SeqCst);
    let config = StoreConfig {
        write_attempts: 1,
        ..cfg(4, 0)
    };
    let (h, comps) = spawn(probe, &config, 1).expect("spawn");
    h.write(0, message("probe", 1), 1).expect("write");
    let done = collect(&comps[0], 1).await;
    assert!(matches!(done[0], Completion::Written { result: Err(_), .. }), "{done:?}");
    assert!(h.stats().unavailable(), "a retryable failure marks the store unavailable");
    // No write comes: the writer's probe (a read every 2 s) sees the store back.
    until("the probe sees the store back", || !h.stats().unavailable()).await;
    h.shutdown().expect("shutdown");
}
