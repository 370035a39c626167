//! The Redis bridge when things go wrong: Redis killed and restarted, and
//! a node that dies without leaving (presence leases expire).
#![cfg(feature = "redis")]

mod support;

use std::time::{Duration, Instant};

use fred::interfaces::PubsubInterface;
use fred::types::Value;
use router::bridge::{Bridge, BridgeEvent};
use support::{config, deliveries, message, node, probe, until_event, wait_until, RedisServer};

#[tokio::test]
async fn redis_restart_flips_readiness_resubscribes_and_resyncs() {
    let mut redis = RedisServer::start();
    let mut a = node(config(&redis, "a")).await;
    a.handle.subscribe("lobby", 0).await.unwrap();
    a.handle.subscribe("side", 1).await.unwrap();
    a.handle
        .publish("lobby", vec![message("lobby", "1"), message("lobby", "2")])
        .await
        .unwrap();
    deliveries(&mut a.events, "lobby", 2).await;

    redis.kill();
    let h = a.handle.clone();
    wait_until("not ready while Redis is down", || !h.is_ready()).await;
    let err = a.handle.publish("lobby", vec![message("lobby", "lost")]).await.unwrap_err();
    assert!(err.retryable(), "{err}");

    redis.restart();
    wait_until("ready again after the restart", || h.is_ready()).await;
    let seen = until_event(&mut a.events, |e| matches!(e, BridgeEvent::Resync { .. })).await;
    let Some(BridgeEvent::Resync { rooms, lost }) = seen.last() else {
        unreachable!("until_event ends on the match")
    };
    assert_eq!(rooms, &["lobby".to_owned(), "side".to_owned()]);
    assert!(*lost, "the restarted Redis is empty: the node's sentinel key is gone");
    assert!(a.handle.metrics().reconnects_total >= 1);
    assert!(a.handle.metrics().resyncs_total >= 1);

    let p = probe(&redis).await;
    let numsub: Vec<Value> = p.pubsub_numsub(vec!["chat:{lobby}:ch", "chat:{side}:ch"]).await.unwrap();
    assert_eq!(numsub[1].as_i64(), Some(1));
    assert_eq!(numsub[3].as_i64(), Some(1));

    // The restarted Redis lost everything: seqs start over (a new epoch),
    // which the node hears as a gap backwards, then the message.
    let range = a.handle.publish("lobby", vec![message("lobby", "again")]).await.unwrap();
    assert_eq!(range.first, 1);
    let seen = deliveries(&mut a.events, "lobby", 1).await;
    let tail: Vec<_> = seen.iter().filter(|e| !matches!(e, BridgeEvent::Resync { .. })).collect();
    assert!(
        matches!(
            tail[..],
            [BridgeEvent::Gap { expected: 3, got: 1, .. }, BridgeEvent::Deliver { seq: 1, .. }]
        ),
        "{tail:?}"
    );
}

/// Presence events for `user` in the events seen.
fn presence_of(events: &[BridgeEvent], user: &str) -> Vec<(String, bool)> {
    events
        .iter()
        .filter_map(|e| match e {
            BridgeEvent::PresenceChanged { user: u, node, online, .. } if u == user => Some((node.clone(), *online)),
            _ => None,
        })
        .collect()
}

fn users(online: &[(String, u64)]) -> Vec<&str> {
    online.iter().map(|(u, _)| u.as_str()).collect()
}

#[tokio::test]
async fn a_node_that_stops_heartbeating_has_its_users_go_offline() {
    let redis = RedisServer::start();
    let a = node(config(&redis, "a")).await;
    let mut b = node(config(&redis, "b")).await;
    a.handle.subscribe("lobby", 0).await.unwrap();
    b.handle.subscribe("lobby", 0).await.unwrap();

    // Two connections of ann on node a, one of bob on node b.
    a.handle.presence_join("lobby", "ann").await.unwrap();
    a.handle.presence_join("lobby", "ann").await.unwrap();
    b.handle.presence_join("lobby", "bob").await.unwrap();
    let mut pending = 2;
    let all = until_event(&mut b.events, |e| {
        pending -= usize::from(matches!(e, BridgeEvent::PresenceChanged { online: true, .. }));
        pending == 0
    })
    .await;
    assert_eq!(presence_of(&all, "bob"), [("b".to_owned(), true)]);
    let online = b.handle.presence_online("lobby").await.unwrap();
    assert_eq!(users(&online), ["ann", "bob"]);
    assert!(online.iter().all(|&(_, since)| since > 1_600_000_000_000), "{online:?}");
    assert_eq!(presence_of(&all, "ann"), [("a".to_owned(), true)]);

    // One of ann's connections leaves: she is still online.
    a.handle.presence_leave("lobby", "ann").await.unwrap();
    assert_eq!(users(&b.handle.presence_online("lobby").await.unwrap()), ["ann", "bob"]);

    // Node a dies without leaving; its heartbeat stops.
    let Bridge { handle, events, thread } = a;
    drop((handle, events));
    thread.join().unwrap();
    let died = Instant::now();
    let seen = until_event(
        &mut b.events,
        |e| matches!(e, BridgeEvent::PresenceChanged { user, online: false, .. } if user == "ann"),
    )
    .await;
    let cfg = config(&redis, "b");
    let bound = Duration::from_millis(cfg.presence_lease_ms + cfg.heartbeat_ms);
    eprintln!("ann offline on node b {:?} after node a stopped", died.elapsed());
    // Slack for a loaded machine; the lease alone is 1.5 s.
    assert!(
        died.elapsed() < bound + Duration::from_secs(2),
        "offline after {:?}",
        died.elapsed()
    );
    assert_eq!(presence_of(&seen, "ann").last(), Some(&("a".to_owned(), false)));
    assert_eq!(users(&b.handle.presence_online("lobby").await.unwrap()), ["bob"]);

    // A clean shutdown removes the node's entries at once.
    let mut c = node(config(&redis, "c")).await;
    c.handle.subscribe("lobby", 0).await.unwrap();
    b.handle.shutdown().await.unwrap();
    assert!(c.handle.presence_online("lobby").await.unwrap().is_empty());
    let seen = until_event(
        &mut c.events,
        |e| matches!(e, BridgeEvent::PresenceChanged { user, .. } if user == "bob"),
    )
    .await;
    assert_eq!(presence_of(&seen, "bob"), [("b".to_owned(), false)]);
    b.thread.join().unwrap();
    assert!(matches!(
        b.handle.room_seq("lobby").await,
        Err(router::bridge::BridgeError::Stopped)
    ));
}
