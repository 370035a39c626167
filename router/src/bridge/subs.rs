//! Which room channels this node subscribes to: a reference count across
//! shards (sans-IO), and the task that makes Redis match it.
//!
//! [`SubTable`] holds the *desired* set (rooms with at least one shard
//! that asked) and the *actual* set (channels Redis confirmed on the
//! current subscriber connection). [`reconcile`] repeatedly issues the
//! difference: SUBSCRIBE for desired-but-not-actual, UNSUBSCRIBE for the
//! reverse. A reconnect empties the actual set, so the same loop restores
//! every subscription and then emits one `Resync`.
//!
//! What must stay true:
//! - A channel is subscribed on a room's first shard (0→1) and
//!   unsubscribed after its last (1→0); repeated calls by one shard count
//!   once, so churn leaves no stale subscription.
//! - A confirmation counts only for the connection generation it was sent
//!   on: a reply that raced a reconnect is ignored and re-planned.
//! - No lock is held across an `.await`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fred::interfaces::PubsubInterface;

use super::core::Shared;
use super::handle::Reply;
use super::metrics::BridgeMetrics;
use super::{keys, BridgeEvent};

/// Channels per SUBSCRIBE/UNSUBSCRIBE command.
const CHUNK: usize = 256;

/// One room this node wants.
#[derive(Debug)]
struct Wanted {
    shards: BTreeSet<u16>,
    /// The shards as handed out with each delivery (rebuilt on change).
    snapshot: Arc<[u16]>,
    /// The last seq delivered for the room, to spot gaps.
    last_seq: Option<u64>,
}

/// Desired and actual subscriptions.
#[derive(Debug, Default)]
pub(crate) struct SubTable {
    wanted: HashMap<String, Wanted>,
    actual: HashSet<String>,
    /// Bumped on every reconnect of the subscriber connection.
    generation: u64,
    /// A reconnect happened and `Resync` is owed once subscriptions are back.
    resync_owed: bool,
    /// Callers waiting for a room's subscription to be confirmed.
    waiters: HashMap<String, Vec<Reply<()>>>,
}

/// What [`SubTable::check_seq`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SeqCheck {
    /// The room is not wanted: drop the message.
    NotWanted,
    /// In order, or (`first`) the first seen since the room became wanted, with nothing to
    /// check it against: deliver to these shards.
    InOrder { shards: Arc<[u16]>, first: bool },
    /// Deliver, after telling of the jump from `expected` to the seq.
    Jump { shards: Arc<[u16]>, expected: u64 },
}

impl SubTable {
    /// Adds `shard` to `room`; true if the room became wanted. `waiter` is
    /// answered once the channel is subscribed (at once if it already is).
    pub(crate) fn add(&mut self, room: &str, shard: u16, waiter: Option<Reply<()>>) -> bool {
        if let Some(w) = waiter {
            if self.actual.contains(room) {
                let _ = w.send(Ok(()));
            } else {
                self.waiters.entry(room.to_owned()).or_default().push(w);
            }
        }
        let fresh = !self.wanted.contains_key(room);
        let w = self.wanted.entry(room.to_owned()).or_insert_with(|| Wanted {
            shards: BTreeSet::new(),
            snapshot: Arc::from([]),
            last_seq: None,
        });
        if w.shards.insert(shard) {
            w.snapshot = w.shards.iter().copied().collect();
        }
        fresh
    }

    /// Removes `shard` from `room`; true if the room is no longer wanted.
    pub(crate) fn remove(&mut self, room: &str, shard: u16) -> bool {
        let Some(w) = self.wanted.get_mut(room) else {
            return false;
        };
        if w.shards.remove(&shard) {
            w.snapshot = w.shards.iter().copied().collect();
        }
        if w.shards.is_empty() {
            self.wanted.remove(room);
            // Superseded before it was confirmed: nothing left to wait for.
            self.answer(room);
            return true;
        }
        false
    }

    /// How many rooms are wanted.
    pub(crate) fn len(&self) -> usize {
        self.wanted.len()
    }

    /// The wanted rooms, sorted.
    pub(crate) fn rooms(&self) -> Vec<String> {
        let mut rooms: Vec<String> = self.wanted.keys().cloned().collect();
        rooms.sort_unstable();
        rooms
    }

    /// Channels to subscribe and to unsubscribe, and the generation the
    /// plan belongs to.
    pub(crate) fn plan(&self) -> (Vec<String>, Vec<String>, u64) {
        let sub = self.wanted.keys().filter(|r| !self.actual.contains(*r)).cloned().collect();
        let unsub = self.actual.iter().filter(|r| !self.wanted.contains_key(*r)).cloned().collect();
        (sub, unsub, self.generation)
    }

    /// Records that `rooms` were (un)subscribed on connection `generation`.
    pub(crate) fn confirm(&mut self, rooms: &[String], subscribed: bool, generation: u64) {
        if generation != self.generation {
            return;
        }
        for r in rooms {
            if subscribed {
                self.actual.insert(r.clone());
                self.answer(r);
            } else {
                self.actual.remove(r);
            }
        }
    }

    fn answer(&mut self, room: &str) {
        for w in self.waiters.remove(room).unwrap_or_default() {
            let _ = w.send(Ok(()));
        }
    }

    /// The subscriber connection was re-established: nothing is subscribed.
    /// `resync`: whether a `Resync` is owed (not for the first connection).
    pub(crate) fn reset(&mut self, resync: bool) {
        self.actual.clear();
        self.generation += 1;
        self.resync_owed |= resync;
    }

    /// Takes the owed `Resync`, if any.
    pub(crate) fn take_resync(&mut self) -> bool {
        std::mem::take(&mut self.resync_owed)
    }

    /// Checks a received seq against the last one of its room and records it.
    pub(crate) fn check_seq(&mut self, room: &str, seq: u64) -> SeqCheck {
        let Some(w) = self.wanted.get_mut(room) else {
            return SeqCheck::NotWanted;
        };
        let last = w.last_seq.replace(seq);
        match last {
            Some(last) if last.checked_add(1) != Some(seq) => SeqCheck::Jump {
                shards: Arc::clone(&w.snapshot),
                expected: last.saturating_add(1),
            },
            _ => SeqCheck::InOrder {
                shards: Arc::clone(&w.snapshot),
                first: last.is_none(),
            },
        }
    }

    /// The shards subscribed to `room`, if any.
    pub(crate) fn shards(&self, room: &str) -> Option<Arc<[u16]>> {
        self.wanted.get(room).map(|w| Arc::clone(&w.snapshot))
    }
}

/// Makes Redis match the table, forever: woken by changes and reconnects,
/// retrying failures with backoff.
pub(crate) async fn reconcile(shared: Arc<Shared>) {
    let min = Duration::from_millis(u64::from(shared.config.reconnect_min_ms));
    let max = Duration::from_millis(u64::from(shared.config.reconnect_max_ms));
    let mut backoff = min;
    loop {
        let (sub, unsub, generation) = shared.subs().plan();
        if sub.is_empty() && unsub.is_empty() {
            backoff = min;
            finish_round(&shared).await;
            shared.sub_changed.notified().await;
            continue;
        }
        let ok = apply(&shared, &unsub, false, generation).await && apply(&shared, &sub, true, generation).await;
        if !ok {
            tokio::select! {
                () = shared.sub_changed.notified() => {}
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(max);
        }
    }
}

/// After a round with nothing left to do: mark subscriptions restored and
/// pay any owed `Resync`.
async fn finish_round(shared: &Shared) {
    let (owed, rooms) = {
        let mut t = shared.subs();
        (t.take_resync(), t.rooms())
    };
    shared.restored.store(true, Ordering::Release);
    // The sentinel is set once the first subscriptions are in place; after a reconnect, its
    // absence says Redis lost its data.
    let lost = owed && sentinel_gone(shared).await;
    if lost || !shared.sentinel_set.load(Ordering::Acquire) {
        set_sentinel(shared).await;
    }
    if owed {
        BridgeMetrics::inc(&shared.metrics.resyncs_total);
        shared.emit(BridgeEvent::Resync { rooms, lost }).await;
    }
}

/// Whether Redis no longer holds the sentinel (an error reads as "not gone": no false alarm).
async fn sentinel_gone(shared: &Shared) -> bool {
    use fred::interfaces::KeysInterface;
    matches!(shared.client.exists::<i64, _>(keys::sentinel(&shared.config.node_id)).await, Ok(0))
}

async fn set_sentinel(shared: &Shared) {
    use fred::interfaces::KeysInterface;
    let set: Result<(), _> = shared
        .client
        .set(keys::sentinel(&shared.config.node_id), "1", None, None, false)
        .await;
    match set {
        Ok(()) => shared.sentinel_set.store(true, Ordering::Release),
        Err(e) => tracing::debug!(error = %e, "bridge: the sentinel key was not set"),
    }
}

/// (Un)subscribes `rooms` in chunks; false on the first failure.
async fn apply(shared: &Shared, rooms: &[String], subscribe: bool, generation: u64) -> bool {
    for chunk in rooms.chunks(CHUNK) {
        let channels: Vec<String> = chunk.iter().map(|r| keys::channel(r)).collect();
        let started = std::time::Instant::now();
        let result = send(shared, channels, subscribe).await;
        shared.metrics.record_rtt(started.elapsed());
        if let Err(e) = result {
            BridgeMetrics::inc(&shared.metrics.errors_total);
            tracing::warn!(error = %e, subscribe, "redis (un)subscribe failed; will retry");
            return false;
        }
        shared.subs().confirm(chunk, subscribe, generation);
    }
    true
}

async fn send(shared: &Shared, channels: Vec<String>, subscribe: bool) -> Result<(), fred::error::Error> {
    let sub = &shared.sub;
    if !shared.config.sharded_pubsub {
        return if subscribe {
            sub.subscribe(channels).await
        } else {
            sub.unsubscribe(channels).await
        };
    }
    // Shard channels of different rooms may live on different cluster
    // nodes: one command per channel, all in flight together.
    let calls = channels.into_iter().map(|c| async move {
        if subscribe {
            sub.ssubscribe(c).await
        } else {
            sub.sunsubscribe(c).await
        }
    });
    futures::future::try_join_all(calls).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refcount_across_shards() {
        let mut t = SubTable::default();
        assert!(t.add("r", 1, None));
        assert!(!t.add("r", 2, None));
        assert!(!t.add("r", 2, None));
        assert_eq!(&*t.shards("r").unwrap(), &[1, 2]);
        assert!(!t.remove("r", 1));
        assert!(!t.remove("r", 1));
        assert!(t.remove("r", 2));
        assert!(!t.remove("r", 2));
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn plan_is_the_difference() {
        let mut t = SubTable::default();
        t.add("a", 0, None);
        t.add("b", 0, None);
        let (mut sub, unsub, g) = t.plan();
        sub.sort();
        assert_eq!((sub.clone(), unsub.len()), (vec!["a".to_owned(), "b".to_owned()], 0));
        t.confirm(&sub, true, g);
        t.remove("a", 0);
        assert_eq!(t.plan(), (vec![], vec!["a".to_owned()], g));
        t.confirm(&["a".to_owned()], false, g);
        assert_eq!(t.plan(), (vec![], vec![], g));
    }

    #[test]
    fn reconnect_replans_everything_and_ignores_stale_replies() {
        let mut t = SubTable::default();
        t.add("a", 0, None);
        let (sub, _, g) = t.plan();
        t.reset(true);
        t.confirm(&sub, true, g);
        assert_eq!(t.plan().0, vec!["a".to_owned()]);
        assert!(t.take_resync());
        assert!(!t.take_resync());
    }

    #[test]
    fn waiters_are_answered_on_confirm_or_removal() {
        let mut t = SubTable::default();
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        t.add("a", 0, Some(tx));
        assert!(rx.try_recv().is_err());
        let (sub, _, g) = t.plan();
        t.confirm(&sub, true, g);
        assert!(matches!(rx.try_recv(), Ok(Ok(()))));
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        t.add("a", 1, Some(tx));
        assert!(matches!(rx.try_recv(), Ok(Ok(()))));
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        t.add("b", 0, Some(tx));
        t.remove("b", 0);
        assert!(matches!(rx.try_recv(), Ok(Ok(()))));
    }

    #[test]
    fn seq_checks() {
        let mut t = SubTable::default();
        assert_eq!(t.check_seq("r", 1), SeqCheck::NotWanted);
        t.add("r", 3, None);
        assert!(matches!(t.check_seq("r", 5), SeqCheck::InOrder { first: true, .. }));
        assert!(matches!(t.check_seq("r", 6), SeqCheck::InOrder { first: false, .. }));
        assert!(matches!(t.check_seq("r", 9), SeqCheck::Jump { expected: 7, .. }));
        assert!(matches!(t.check_seq("r", 1), SeqCheck::Jump { expected: 10, .. }));
    }
}
