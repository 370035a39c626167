//! Cluster-wide `client_id` dedupe in the publish script, against a real, private
//! redis-server: a retry through another node gets the original seq and receipt back and is
//! neither sequenced nor published again; the others of its batch keep consecutive seqs.
#![cfg(feature = "redis")]

mod support;

use std::time::Duration;

use fred::interfaces::KeysInterface;
use router::bridge::{BridgeEvent, Sequenced};
use support::{config, deliveries, message, next_event, node, probe, RedisServer};

/// The seqs of the Deliver events of `room` in `events`.
fn seqs(events: &[BridgeEvent], room: &str) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            BridgeEvent::Deliver { room: r, seq, .. } if r == room => Some(*seq),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_client_id_retried_through_another_node_is_sequenced_and_published_once() {
    let redis = RedisServer::start();
    let a = node(config(&redis, "a")).await;
    let b = node(config(&redis, "b")).await;
    let mut watcher = node(config(&redis, "w")).await;
    watcher.handle.subscribe("r", 0).await.unwrap();

    // Node a sequences ann's "c1" (and a message without a key).
    let first = a
        .handle
        .publish(
            "r",
            vec![
                message("r", "plain").with_dedupe("ann", "", "ignored"),
                message("r", "original").with_dedupe("ann", "c1", "a-1 1000"),
            ],
        )
        .await
        .unwrap();
    assert_eq!((first.first, first.count, first.duplicates.len()), (1, 2, 0));

    // The retry goes through node b, in a batch between two new messages: it gets seq 2 and
    // node a's receipt and frame back; the new ones get 3 and 4.
    let retry = b
        .handle
        .publish(
            "r",
            vec![
                message("r", "before").with_dedupe("bob", "c1", "b-1 2000"),
                message("r", "retry").with_dedupe("ann", "c1", "b-2 2001"),
                message("r", "after"),
            ],
        )
        .await
        .unwrap();
    let outcomes: Vec<_> = retry.outcomes().collect();
    assert_eq!(outcomes.len(), 3, "{retry:?}");
    assert_eq!(outcomes[0], Sequenced::New(3));
    assert_eq!(outcomes[2], Sequenced::New(4));
    let Sequenced::Duplicate(d) = outcomes[1] else {
        panic!("the retry is a duplicate: {retry:?}")
    };
    assert_eq!((d.index, d.seq, d.receipt.as_str()), (1, 2, "a-1 1000"));
    let frame = d.frame.as_ref().expect("the stream still holds the original");
    assert_eq!(frame, &message("r", "original").patched(2), "the original frame, not the retry's");

    // The same key twice in one batch: the second is the first's duplicate.
    let twice = a
        .handle
        .publish(
            "r",
            vec![
                message("r", "once").with_dedupe("cy", "k", "a-2 3000"),
                message("r", "again").with_dedupe("cy", "k", "a-3 3001"),
            ],
        )
        .await
        .unwrap();
    let outcomes: Vec<_> = twice.outcomes().collect();
    assert_eq!(outcomes[0], Sequenced::New(5));
    assert!(
        matches!(outcomes[1], Sequenced::Duplicate(d) if d.seq == 5 && d.receipt == "a-2 3000"),
        "{twice:?}"
    );

    // Every node saw each message once: seqs 1..=5, no sixth delivery.
    let seen = deliveries(&mut watcher.events, "r", 5).await;
    assert_eq!(seqs(&seen, "r"), [1, 2, 3, 4, 5]);
    let extra = tokio::time::timeout(Duration::from_millis(300), next_event(&mut watcher.events)).await;
    assert!(
        !matches!(&extra, Ok(BridgeEvent::Deliver { .. })),
        "a duplicate was published: {extra:?}"
    );

    // The key lives only for the configured time.
    let p = probe(&redis).await;
    let ttl: i64 = p.pttl("chat:{r}:cid:3:annc1").await.unwrap();
    assert!(ttl > 0 && ttl <= 300_000, "pttl {ttl}");
}

#[tokio::test]
async fn a_retry_after_the_ttl_or_without_dedupe_is_a_new_message() {
    let redis = RedisServer::start();
    let short = router::bridge::BridgeConfig {
        dedupe_ttl_ms: 50,
        ..config(&redis, "a")
    };
    let a = node(short).await;
    let off = node(router::bridge::BridgeConfig {
        dedupe_ttl_ms: 0,
        ..config(&redis, "b")
    })
    .await;
    let r = a
        .handle
        .publish("t", vec![message("t", "x").with_dedupe("u", "c", "a-1 1")])
        .await
        .unwrap();
    assert_eq!(r.first, 1);
    // A node with dedupe off neither checks nor sets keys.
    let r = off
        .handle
        .publish("t", vec![message("t", "x").with_dedupe("u", "c", "b-1 2")])
        .await
        .unwrap();
    assert_eq!((r.first, r.duplicates.len()), (2, 0));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = a
        .handle
        .publish("t", vec![message("t", "x").with_dedupe("u", "c", "a-2 3")])
        .await
        .unwrap();
    assert_eq!((r.first, r.duplicates.len()), (3, 0), "the key expired: a new message");
}
