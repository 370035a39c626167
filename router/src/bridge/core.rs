//! The bridge's state shared by its tasks, how it starts, and the command
//! loop that dispatches callers' requests.
//!
//! Tasks, all on one tokio runtime: the command loop (here); the
//! subscription reconciler ([`subs`]); the receive pump ([`pump`]); the
//! presence task with its heartbeat and sweeper ([`presence`]); and one
//! reconnect watcher per Redis connection. Publishes and queries run as
//! their own short tasks, so batches of different rooms are in flight
//! together (fred pipelines them on the command connection).
//!
//! Two connections: one for commands and scripts, one that only
//! subscribes (a RESP2 subscriber connection can do nothing else).
//!
//! What must stay true: no `std` lock is held across an `.await`; the
//! command connection never retries a command (the publish script is not
//! idempotent), the subscriber connection may.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::{ClientLike, EventInterface};
use fred::types::config::{Config as RedisConfig, ReconnectPolicy};
use fred::types::Builder;
use tokio::sync::{broadcast, mpsc, Notify};

use super::handle::{BridgeEvents, BridgeHandle, Command};
use super::metrics::BridgeMetrics;
use super::presence::{self, PresenceMsg};
use super::scripts::{self, Script};
use super::subs::{self, SubTable};
use super::{ops, pump, BridgeConfig, BridgeError, BridgeEvent};

/// What the bridge's tasks share.
pub(crate) struct Shared {
    pub(crate) config: BridgeConfig,
    /// Commands and scripts.
    pub(crate) client: Client,
    /// Subscriptions only.
    pub(crate) sub: Client,
    pub(crate) metrics: BridgeMetrics,
    subs: Mutex<SubTable>,
    /// Wakes the reconciler.
    pub(crate) sub_changed: Notify,
    /// Subscriptions are in place on the current subscriber connection.
    pub(crate) restored: AtomicBool,
    /// This bridge set its sentinel key (`keys::sentinel`) since it started.
    pub(crate) sentinel_set: AtomicBool,
    pub(crate) publish_script: Script,
    pub(crate) presence_script: Script,
    events: mpsc::Sender<BridgeEvent>,
}

impl Shared {
    /// The subscription table. Never held across an `.await`.
    pub(crate) fn subs(&self) -> MutexGuard<'_, SubTable> {
        // A panic while holding the lock cannot leave the table half
        // changed in a way later calls cannot handle; keep going.
        self.subs.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Hands an event to the node, waiting while its queue is full.
    pub(crate) async fn emit(&self, event: BridgeEvent) {
        // Fails only when the receiver is gone: nobody to tell.
        let _ = self.events.send(event).await;
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.client.is_connected() && self.sub.is_connected() && self.restored.load(Ordering::Acquire)
    }
}

/// A bridge running on its own thread (see [`start`]).
#[derive(Debug)]
pub struct Bridge {
    /// Sends commands.
    pub handle: BridgeHandle,
    /// Receives events.
    pub events: BridgeEvents,
    /// The bridge thread; it ends after [`BridgeHandle::shutdown`] or once
    /// every handle is dropped.
    pub thread: std::thread::JoinHandle<()>,
}

/// Starts the bridge on a new thread with its own single-threaded tokio
/// runtime, for callers that have none (such as monoio shards). Returns at
/// once; [`BridgeHandle::is_ready`] turns true when Redis is reached.
pub fn start(config: BridgeConfig) -> Result<Bridge, BridgeError> {
    config.validate()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(BridgeError::Thread)?;
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(format!("bridge-{}", config.node_id))
        .spawn(move || {
            runtime.block_on(async move {
                let (started, done) = match spawn_inner(config) {
                    Ok((handle, events, done)) => (Ok((handle, events)), Some(done)),
                    Err(e) => (Err(e), None),
                };
                let _ = tx.send(started);
                if let Some(done) = done {
                    let _ = done.await;
                }
            });
        })
        .map_err(BridgeError::Thread)?;
    let (handle, events) = rx.recv().map_err(|_| BridgeError::Stopped)??;
    Ok(Bridge { handle, events, thread })
}

/// Starts the bridge's tasks on the current tokio runtime (call it from
/// inside one, e.g. the node's bridge thread that also runs other tokio
/// drivers). Returns at once, like [`start`].
pub fn spawn(config: BridgeConfig) -> Result<(BridgeHandle, BridgeEvents), BridgeError> {
    config.validate()?;
    let (handle, events, _done) = spawn_inner(config)?;
    Ok((handle, events))
}

fn spawn_inner(config: BridgeConfig) -> Result<(BridgeHandle, BridgeEvents, tokio::task::JoinHandle<()>), BridgeError> {
    let client = build_client(&config, false)?;
    let sub = build_client(&config, true)?;
    let (ev_tx, ev_rx) = mpsc::channel(config.event_queue_len as usize);
    let (cmd_tx, cmd_rx) = mpsc::channel(config.command_queue_len as usize);
    let (pres_tx, pres_rx) = mpsc::channel(config.command_queue_len as usize);
    let shared = Arc::new(Shared {
        config,
        client,
        sub,
        metrics: BridgeMetrics::default(),
        subs: Mutex::new(SubTable::default()),
        sub_changed: Notify::new(),
        restored: AtomicBool::new(false),
        sentinel_set: AtomicBool::new(false),
        publish_script: Script::new(scripts::PUBLISH),
        presence_script: Script::new(scripts::PRESENCE),
        events: ev_tx,
    });
    // Take fred's broadcast receivers before connecting, so no event is missed.
    let messages = shared.sub.message_rx();
    let tasks = vec![
        tokio::spawn(watch_reconnects(Arc::clone(&shared), shared.client.reconnect_rx(), false)),
        tokio::spawn(watch_reconnects(Arc::clone(&shared), shared.sub.reconnect_rx(), true)),
        tokio::spawn(pump::run(Arc::clone(&shared), messages)),
        tokio::spawn(subs::reconcile(Arc::clone(&shared))),
        tokio::spawn(presence::run(Arc::clone(&shared), pres_rx)),
    ];
    let connections = [shared.client.connect(), shared.sub.connect()];
    let handle = BridgeHandle {
        tx: cmd_tx,
        shared: Arc::clone(&shared),
    };
    let done = tokio::spawn(async move {
        run(&shared, cmd_rx, pres_tx).await;
        for t in tasks {
            t.abort();
        }
        let _ = shared.client.quit().await;
        let _ = shared.sub.quit().await;
        for c in connections {
            c.abort();
        }
    });
    Ok((handle, BridgeEvents { rx: ev_rx }, done))
}

fn build_client(config: &BridgeConfig, subscriber: bool) -> Result<Client, BridgeError> {
    let mut redis = RedisConfig::from_url(&config.redis_url).map_err(|e| BridgeError::Config {
        field: "redis_url",
        message: e.to_string(),
    })?;
    // Start without Redis: keep retrying in the background, not ready.
    redis.fail_fast = false;
    let timeout = config.command_timeout();
    let mut builder = Builder::from_config(redis);
    builder
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_millis(config.connect_timeout_ms);
            c.internal_command_timeout = timeout;
            c.max_command_attempts = if subscriber { 3 } else { 1 };
            c.unresponsive.max_timeout = Some(timeout * 2);
            c.unresponsive.interval = (timeout / 4).max(Duration::from_millis(50));
        })
        .with_performance_config(|p| {
            p.default_command_timeout = timeout;
            p.broadcast_channel_capacity = config.event_queue_len as usize;
        })
        .set_policy(ReconnectPolicy::new_exponential(
            0,
            config.reconnect_min_ms,
            config.reconnect_max_ms,
            2,
        ));
    builder.build().map_err(|e| BridgeError::Config {
        field: "redis_url",
        message: e.to_string(),
    })
}

/// Counts reconnects; on the subscriber connection, also marks every
/// subscription lost so the reconciler restores them.
async fn watch_reconnects(shared: Arc<Shared>, mut rx: broadcast::Receiver<fred::types::config::Server>, subscriber: bool) {
    let mut first = true;
    loop {
        match rx.recv().await {
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
        if !first {
            BridgeMetrics::inc(&shared.metrics.reconnects_total);
        }
        if subscriber {
            shared.restored.store(false, Ordering::Release);
            shared.subs().reset(!first);
            shared.sub_changed.notify_one();
        }
        first = false;
    }
}

/// Dispatches commands until every handle is gone or one asks to stop.
async fn run(shared: &Arc<Shared>, mut rx: mpsc::Receiver<Command>, presence: mpsc::Sender<PresenceMsg>) {
    while let Some(cmd) = rx.recv().await {
        match cmd {
            Command::Subscribe { room, shard, reply } => {
                let mut t = shared.subs();
                let fresh = t.add(&room, shard, Some(reply));
                shared.metrics.subscriptions.store(t.len() as u64, Ordering::Relaxed);
                drop(t);
                if fresh {
                    shared.sub_changed.notify_one();
                }
            }
            Command::Unsubscribe { room, shard } => {
                let mut t = shared.subs();
                let gone = t.remove(&room, shard);
                shared.metrics.subscriptions.store(t.len() as u64, Ordering::Relaxed);
                drop(t);
                if gone {
                    shared.sub_changed.notify_one();
                }
            }
            Command::Presence { room, user, join, reply } => {
                let _ = presence.send(PresenceMsg::Op { room, user, join, reply }).await;
            }
            Command::Shutdown { reply } => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let _ = presence.send(PresenceMsg::LeaveAll { reply: tx }).await;
                let result = rx.await.unwrap_or(Err(BridgeError::Stopped));
                let _ = reply.send(result);
                return;
            }
            other => {
                tokio::spawn(ops::run(Arc::clone(shared), other));
            }
        }
    }
}
