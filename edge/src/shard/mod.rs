//! A shard: one monoio runtime on one pinned thread, owning its listener,
//! its connections and the rooms whose hash maps to it.
//!
//! Nothing is shared with other shards but the mesh (bounded SPSC rings of
//! rkyv frames) and the shard's own stats line. All state below lives in
//! `RefCell`s touched by this thread's tasks only; no borrow is ever held
//! across an `.await`.
//!
//! Files: `accept` (listener, HTTP routing, upgrade, handoff), `conn` (a
//! connection's reading: WebSocket frames to requests), `readiness` (the
//! shard's one reader task over an epoll set of its sockets), `requests` (client
//! requests), `members` (the member side around `engine::subscriber`, both
//! modes), `sequencer` (the one mode choice), `local` (the owner side
//! around `engine::owner`, and calls to it), `cluster`/`publish` (the same
//! for Redis), `events` (typing: events without a seq, both modes), `users`
//! (the user channel: DMs to connections outside the DM room), `mesh_io`
//! (frames in from other shards, spill out), `outbox` (the writer side of a
//! connection).

mod accept;
mod api;
mod changes;
mod cluster;
mod cluster_changes;
mod cluster_reads;
mod cluster_receipts;
mod cluster_state;
mod cluster_store;
mod conn;
mod delivered;
mod events;
mod latency;
mod local;
mod members;
mod mesh_io;
pub mod mesh_out;
pub mod outbox;
mod publish;
mod readiness;
mod requests;
mod sequencer;
mod users;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use router::bridge::BridgeHandle;
use router::Endpoint;
use storage::{Completions, StoreHandle};

use crate::auth::{Claims, Verifier};
use crate::config::Config;
use crate::engine::cluster_changes::{Changes, ChangesConfig};
use crate::engine::cluster_state::{State, StateConfig};
use crate::engine::liveness::Liveness;
use crate::engine::owner::{Owner, OwnerConfig};
use crate::engine::publisher::{Publisher, PublisherConfig};
use crate::engine::session::{Session, SessionLimits};
use crate::engine::subscriber::{Subscriber, SubscriberConfig};
use crate::engine::typing::{Typing, TypingConfig};
use crate::limits::admission::Admission;
use crate::limits::client_ip::IpNet;
use crate::limits::conns::ConnTable;
use crate::metrics::ShardStats;
use crate::room::MemberIndex;
use local::ShardStore;
use outbox::Outbox;

pub use accept::bind_listener;

/// Users a room shows as typing at once (later starts wait until one stops).
const TYPERS_PER_ROOM: usize = 50;

/// What every shard is started with.
pub struct ShardSetup {
    /// Index of this shard, `0..shards`.
    pub id: usize,
    /// Number of shards of the node.
    pub shards: usize,
    /// The node's configuration (immutable).
    pub cfg: Arc<Config>,
    /// JWT verifier with the pinned algorithm.
    pub verifier: Verifier,
    /// This thread's end of the mesh.
    pub mesh: Endpoint,
    /// Every shard's stats; this shard writes `stats[id]` only.
    pub stats: Arc<Vec<ShardStats>>,
    /// Driver in use, for logs and metrics ("io_uring" or "epoll").
    pub driver: &'static str,
    /// The node's way into the message store.
    pub store: StoreHandle,
    /// This shard's store completions.
    pub completions: Completions,
    /// This run's epoch (ms at node start): rooms re-epoched after an unclean previous run get it.
    pub run_epoch: u64,
    /// The Redis bridge, in cluster mode.
    pub bridge: Option<BridgeHandle>,
    /// The node's connection counts (`max_conns*`), shared by every shard.
    pub conn_table: Arc<ConnTable>,
    /// `trusted_proxies`, parsed.
    pub trusted_proxies: Vec<IpNet>,
}

/// One connection as its shard sees it.
pub(crate) struct Conn {
    pub(crate) id: u64,
    pub(crate) out: Rc<Outbox>,
    /// Who it is, its rooms, its rate (`engine::session`).
    pub(crate) session: RefCell<Session>,
    /// When it was last heard and pinged (`engine::liveness`).
    pub(crate) liveness: Cell<Liveness>,
    /// Counted in the node's `ConnTable` for its user (released at close).
    pub(crate) user_counted: Cell<bool>,
    /// Its WebSocket decoder, between reads: the sweep drops a silent connection's when it
    /// holds nothing partial, and the reader makes one again for the next bytes
    /// (`conn.rs`).
    pub(crate) decoder: Cell<Option<Box<crate::ws::codec::Decoder>>>,
    /// Its read half, buffer and `max_conns` slot while it reads (`conn.rs`).
    read: conn::ReadSide,
    mode: conn::Mode,
}

impl Conn {
    fn user(&self) -> Option<Rc<Claims>> {
        self.session.borrow().user().cloned()
    }
}

/// A shard's state, shared by its tasks through `Rc`.
pub(crate) struct Shard {
    pub(crate) id: usize,
    pub(crate) shards: usize,
    pub(crate) cfg: Arc<Config>,
    pub(crate) verifier: Verifier,
    /// What every connection's session checks against.
    session_limits: SessionLimits,
    pub(crate) mesh: Endpoint,
    pub(crate) all_stats: Arc<Vec<ShardStats>>,
    pub(crate) driver: &'static str,
    conns: RefCell<HashMap<u64, Rc<Conn>>>,
    /// Of `conns`, the API connections (no socket; not in `connections_open`).
    api_conns: Cell<u64>,
    members: RefCell<MemberIndex>,
    /// user -> this shard's authenticated connections of that user (`users.rs`).
    users: RefCell<MemberIndex>,
    next_conn: Cell<u64>,
    draining: Cell<bool>,
    drain_waker: Cell<Option<std::task::Waker>>,
    drain_retry_ms_max: Cell<u64>,
    /// Frames whose ring was full, per destination, oldest first.
    spill: RefCell<Vec<VecDeque<Bytes>>>,
    /// Frames to other shards: scratch frames and the buffers they are encoded into.
    mesh_out: RefCell<mesh_out::MeshOut>,
    spill_waker: Cell<Option<std::task::Waker>>,
    /// Frames in `spill`, over every destination, and whether they reached
    /// `mesh_spill_max_frames` (until they fall to half of it: new work is refused meanwhile).
    spilled: Cell<usize>,
    spill_full: Cell<bool>,
    /// Token bucket on new upgrades.
    pub(crate) admission: RefCell<Admission>,
    /// The node's connection counts, and the proxies whose `X-Forwarded-For` names the client.
    pub(crate) conn_table: Arc<ConnTable>,
    pub(crate) trusted_proxies: Vec<IpNet>,
    /// Monotonic clock origin of this shard (admission control runs on it).
    started: std::time::Instant,
    /// The message store (its figures for /metrics).
    pub(crate) store: StoreHandle,
    /// This shard's store completions (fed to the owner by `local`).
    completions: Completions,
    next_ticket: Cell<u64>,
    /// The member side: the rooms this shard delivers, and its connections' joins.
    subscriber: RefCell<Subscriber>,
    /// The sequencer this node started with (the only difference between the modes).
    sequencer: sequencer::Sequencer,
    /// Typing in the rooms this shard owns (`events`), and when its timer is armed (0: not).
    typing: RefCell<Typing>,
    typing_timer: Cell<u64>,
    /// Rooms whose messages reached this shard's connections since the last tick, with the
    /// highest seq (`delivered.rs`).
    delivered: RefCell<HashMap<String, u64>>,
    /// Its connections' sockets, for the one reader task (`readiness.rs`).
    readiness: readiness::Readiness,
    /// This shard itself, for handlers that spawn tasks.
    me: Weak<Self>,
}

impl Shard {
    fn new(s: ShardSetup, readiness: readiness::Readiness, me: Weak<Self>) -> Self {
        let threads = s.mesh.threads();
        let admission = Admission::new(s.cfg.admission_rate_per_shard, s.cfg.admission_burst, s.cfg.admission_retry_max_ms);
        let sequencer = match s.bridge {
            Some(bridge) => {
                let cfg = PublisherConfig {
                    node_id: s.cfg.node_id.clone(),
                    shard: s.id,
                    dedupe_per_room: s.cfg.dedupe_per_room,
                    room_queue_max: s.cfg.room_load_queue_max,
                    batch_max: s.cfg.redis_batch_max as usize,
                    max_rooms: s.cfg.max_rooms_per_shard,
                    room_idle_evict_ms: s.cfg.room_idle_evict_ms,
                    store_writes: s.cfg.store != storage::StoreKind::Embedded,
                    ack_on_commit: s.cfg.store != storage::StoreKind::Embedded && s.cfg.durability == crate::config::Durability::Durable,
                };
                let publisher = RefCell::new(Publisher::new(cfg, s.stats.clone()));
                let reads = crate::engine::reads::ReadsConfig {
                    timeout_ms: s.cfg.cluster_join_timeout_ms,
                    page_max_bytes: s.cfg.history_page_max_bytes,
                    presence_roster_max: s.cfg.presence_roster_max,
                    shared_store: s.cfg.store != storage::StoreKind::Embedded,
                };
                sequencer::Sequencer::Redis(Box::new(sequencer::RedisSequencer {
                    bridge,
                    publisher,
                    reads: RefCell::new(crate::engine::reads::Reads::new(reads)),
                    store_queries: Default::default(),
                    state: RefCell::new(State::new(StateConfig {
                        timeout_ms: s.cfg.cluster_join_timeout_ms,
                        receipts_room_max: s.cfg.receipts_room_max,
                    })),
                    changes: RefCell::new(Changes::new(ChangesConfig {
                        timeout_ms: s.cfg.cluster_join_timeout_ms,
                    })),
                    changes_timer: Default::default(),
                    senders: Default::default(),
                }))
            }
            None => {
                let owner_cfg = OwnerConfig::new(&s.cfg, s.id, s.shards, s.store.previous_run_clean(), s.run_epoch);
                let port = ShardStore {
                    handle: s.store.clone(),
                    shard: s.id,
                };
                sequencer::Sequencer::Local(Box::new(RefCell::new(Owner::new(owner_cfg, port, s.stats.clone()))))
            }
        };
        let typing = Typing::new(TypingConfig {
            ttl_ms: s.cfg.typing_ttl_ms,
            interval_ms: s.cfg.typing_interval_ms,
            max_per_room: TYPERS_PER_ROOM,
        });
        let subscriber = RefCell::new(Subscriber::new(SubscriberConfig {
            ring_cap: s.cfg.recent_per_room,
            ring_max_bytes: s.cfg.recent_per_room_bytes,
            max_catch_up_messages: s.cfg.max_catch_up_messages,
            run_epoch: s.run_epoch,
        }));
        Self {
            id: s.id,
            shards: s.shards,
            session_limits: SessionLimits::new(&s.cfg),
            cfg: s.cfg,
            verifier: s.verifier,
            mesh: s.mesh,
            all_stats: s.stats,
            driver: s.driver,
            conns: RefCell::new(HashMap::new()),
            api_conns: Cell::new(0),
            members: RefCell::new(MemberIndex::default()),
            users: RefCell::new(MemberIndex::default()),
            next_conn: Cell::new(0),
            draining: Cell::new(false),
            drain_waker: Cell::new(None),
            drain_retry_ms_max: Cell::new(0),
            spill: RefCell::new(vec![VecDeque::new(); threads]),
            mesh_out: RefCell::new(mesh_out::MeshOut::new()),
            spill_waker: Cell::new(None),
            spilled: Cell::new(0),
            spill_full: Cell::new(false),
            admission: RefCell::new(admission),
            conn_table: s.conn_table,
            trusted_proxies: s.trusted_proxies,
            started: std::time::Instant::now(),
            store: s.store,
            completions: s.completions,
            next_ticket: Cell::new(0),
            subscriber,
            sequencer,
            typing: RefCell::new(typing),
            typing_timer: Cell::new(0),
            delivered: RefCell::new(HashMap::new()),
            readiness,
            me,
        }
    }

    /// This shard's stats line.
    pub(crate) fn stats(&self) -> &ShardStats {
        &self.all_stats[self.id]
    }

    /// Wall-clock milliseconds, read by the io shell and passed to the core.
    pub(crate) fn now_ms() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }

    /// Monotonic nanoseconds since the shard started.
    pub(crate) fn mono_ns(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    /// A fresh number for this shard (join tokens, message ids in cluster mode).
    pub(super) fn take_ticket(&self) -> u64 {
        let t = self.next_ticket.get() + 1;
        self.next_ticket.set(t);
        t
    }

    fn new_conn_id(&self) -> u64 {
        let n = self.next_conn.get() + 1;
        self.next_conn.set(n);
        ((self.id as u64) << 48) | n
    }

    /// The shard a connection id was issued by.
    pub(crate) fn shard_of(conn: u64) -> usize {
        (conn >> 48) as usize
    }

    fn conn(&self, id: u64) -> Option<Rc<Conn>> {
        self.conns.borrow().get(&id).cloned()
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.get()
    }

    /// This shard as an `Rc`, for handlers that spawn tasks. The shard lives as long as its
    /// runtime, so the upgrade only fails during teardown.
    fn rc(&self) -> Option<Rc<Self>> {
        self.me.upgrade()
    }
}

/// Runs one shard on the current thread until it has drained.
pub fn run(setup: ShardSetup, listener: std::net::TcpListener, admin: Option<std::net::TcpListener>) {
    let readiness = match readiness::Readiness::new() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(shard = setup.id, error = %e, "shard cannot create its epoll set");
            return;
        }
    };
    let shard = Rc::new_cyclic(|me| Shard::new(setup, readiness, me.clone()));
    let id = shard.id;
    crate::metrics::set_thread_shard(shard.all_stats.clone(), id);
    let driver = shard.driver;
    let result = match driver {
        "io_uring" => block_on_uring(shard, listener, admin),
        _ => block_on_legacy(shard, listener, admin),
    };
    if let Err(e) = result {
        tracing::error!(shard = id, driver, error = %e, "shard runtime failed to start");
    }
}

fn block_on_uring(shard: Rc<Shard>, l: std::net::TcpListener, admin: Option<std::net::TcpListener>) -> std::io::Result<()> {
    let entries = 4096;
    let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(entries)
        .enable_timer()
        .build()?;
    rt.block_on(main_task(shard, l, admin));
    Ok(())
}

fn block_on_legacy(shard: Rc<Shard>, l: std::net::TcpListener, admin: Option<std::net::TcpListener>) -> std::io::Result<()> {
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build()?;
    rt.block_on(main_task(shard, l, admin));
    Ok(())
}

/// `admin`: the `admin_listen` listener, on the first shard only.
async fn main_task(shard: Rc<Shard>, listener: std::net::TcpListener, admin: Option<std::net::TcpListener>) {
    if let Some(admin) = admin {
        monoio::spawn(accept::run_admin(shard.clone(), admin));
    }
    monoio::spawn(mesh_io::run_inbox(shard.clone()));
    monoio::spawn(mesh_io::run_spill(shard.clone()));
    monoio::spawn(local::run_completions(shard.clone()));
    monoio::spawn(conn::run_idle_sweep(shard.clone()));
    monoio::spawn(readiness::run_readers(shard.clone()));
    tracing::info!(shard = shard.id, driver = shard.driver, "shard started");
    accept::run_accept(shard.clone(), listener).await;
    shard.drain().await;
    tracing::info!(shard = shard.id, "shard stopped");
}
