//! Starting and stopping a node: choose the driver, bind one SO_REUSEPORT
//! listener per shard, build the mesh, start the pinned shard threads, wait
//! for SIGTERM/SIGINT, drain, exit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use router::Frame;

use crate::auth::Verifier;
use crate::config::{Config, DriverChoice};
use crate::limits::conns::ConnTable;
use crate::metrics::ShardStats;
use crate::shard::{self, ShardSetup};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("io_uring was requested (--driver io_uring) but is not available on this kernel or is blocked (seccomp?)")]
    NoUring,
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("invalid config: {field}: {message}")]
    Config { field: &'static str, message: String },
    #[error("cannot start shard thread: {0}")]
    Thread(std::io::Error),
    #[error("cluster (redis_url): {0}")]
    Bridge(router::bridge::BridgeError),
    #[error("message store ({store:?}): {source}")]
    Store {
        store: storage::StoreKind,
        source: storage::StoreError,
    },
}

/// Resolves `auto` to the driver this machine supports.
pub fn resolve_driver(choice: DriverChoice) -> Result<&'static str, NodeError> {
    let uring = monoio::utils::detect_uring();
    match (choice, uring) {
        (DriverChoice::Epoll, _) | (DriverChoice::Auto, false) => Ok("epoll"),
        (DriverChoice::IoUring, false) => Err(NodeError::NoUring),
        (_, true) => Ok("io_uring"),
    }
}

/// A started node; `wait` blocks until it has drained.
pub struct Node {
    threads: Vec<std::thread::JoinHandle<()>>,
    control: router::Endpoint,
    shards: usize,
    cfg: Arc<Config>,
    store: storage::StoreHandle,
    bridge: Option<router::bridge::BridgeHandle>,
    /// The address the shards listen on (the real port when 0 was asked).
    pub local_addr: SocketAddr,
    /// "io_uring" or "epoll".
    pub driver: &'static str,
}

/// Binds and starts every shard.
pub fn start(cfg: Config, verifier: Verifier) -> Result<Node, NodeError> {
    let driver = resolve_driver(cfg.driver)?;
    let shards = cfg.shard_count();
    let listeners = bind_all(&cfg.listen, shards)?;
    let local_addr = listeners[0].local_addr().map_err(|e| NodeError::Bind {
        addr: cfg.listen.clone(),
        source: e,
    })?;
    let (store, completions) = start_store(&cfg, shards)?;
    let run_epoch = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    if !store.previous_run_clean() {
        tracing::warn!("the previous run of this node did not end cleanly: rooms get a new epoch as they load");
    }
    let cfg = Arc::new(cfg);
    let stats: Arc<Vec<ShardStats>> = Arc::new((0..shards).map(|_| ShardStats::default()).collect());
    let bridge = match cfg.bridge_config() {
        Some(bc) => Some(router::bridge::start(bc).map_err(NodeError::Bridge)?),
        None => None,
    };
    // Threads on the mesh: the shards, the control thread, and (cluster mode) the pump.
    let mut endpoints = router::mesh(shards + 1 + usize::from(bridge.is_some()), cfg.mesh_ring_capacity);
    let bridge_handle = match bridge {
        Some(b) => {
            let pump_mesh = endpoints.pop().ok_or(NodeError::Thread(std::io::Error::other("empty mesh")))?;
            let handle = b.handle.clone();
            let (events, roster_max) = (b.events, cfg.presence_roster_max);
            std::thread::Builder::new()
                .name("pump".into())
                .spawn(move || crate::pump::run(pump_mesh, handle, events, shards, roster_max))
                .map_err(NodeError::Thread)?;
            tracing::info!(redis = cfg.redis_url.as_deref().unwrap_or(""), node = %cfg.node_id, "cluster mode: joined through Redis");
            if cfg.durability == crate::config::Durability::Durable && cfg.store == storage::StoreKind::Embedded {
                tracing::warn!("cluster mode on the embedded store acks once Redis sequenced the message (it is then in the room's stream); durability = \"durable\" needs a shared store (postgres, scylla) in a cluster");
            }
            Some(b.handle)
        }
        None => None,
    };
    let control = endpoints.pop().ok_or(NodeError::Thread(std::io::Error::other("empty mesh")))?;
    let mut admin = match &cfg.admin_listen {
        Some(addr) => Some(bind_admin(addr)?),
        None => None,
    };
    let conn_table = Arc::new(ConnTable::new(cfg.conn_limits(open_file_limit())));
    tracing::info!(max_conns = conn_table.limits().max_total, "connection limit of the node");
    let trusted_proxies = cfg.trusted_proxy_nets().map_err(|message| NodeError::Config {
        field: "trusted_proxies",
        message,
    })?;
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut threads = Vec::with_capacity(shards);
    for (id, ((mesh, listener), completions)) in endpoints.into_iter().zip(listeners).zip(completions).enumerate() {
        let setup = ShardSetup {
            store: store.clone(),
            completions,
            run_epoch,
            bridge: bridge_handle.clone(),
            id,
            shards,
            cfg: cfg.clone(),
            verifier: verifier.clone(),
            mesh,
            stats: stats.clone(),
            driver,
            conn_table: conn_table.clone(),
            trusted_proxies: trusted_proxies.clone(),
        };
        let core = if cfg.pin_threads && !cores.is_empty() {
            Some(cores[id % cores.len()])
        } else {
            None
        };
        let admin = admin.take(); // the first shard serves it
        let handle = std::thread::Builder::new()
            .name(format!("shard-{id}"))
            .spawn(move || {
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                shard::run(setup, listener, admin);
            })
            .map_err(NodeError::Thread)?;
        threads.push(handle);
    }
    Ok(Node {
        threads,
        control,
        shards,
        cfg,
        store,
        bridge: bridge_handle,
        local_addr,
        driver,
    })
}

/// Opens the configured store on its own thread (the Scylla driver needs the runtime it runs on).
fn start_store(cfg: &Config, shards: usize) -> Result<(storage::StoreHandle, Vec<storage::Completions>), NodeError> {
    let scfg = cfg.store_config();
    let open_cfg = scfg.clone();
    let open = move || async move { storage::AnyStore::open(&open_cfg).await };
    let (store, completions) = storage::spawn_with(open, &scfg, shards).map_err(|source| NodeError::Store { store: scfg.store, source })?;
    tracing::info!(store = ?scfg.store, data_dir = %scfg.data_dir.display(), durability = ?cfg.durability, "message store open");
    Ok((store, completions))
}

/// The `admin_listen` listener (one, served by the first shard).
fn bind_admin(addr: &str) -> Result<std::net::TcpListener, NodeError> {
    let bind_err = |e| NodeError::Bind {
        addr: addr.to_owned(),
        source: e,
    };
    let l = std::net::TcpListener::bind(addr).map_err(bind_err)?;
    l.set_nonblocking(true).map_err(bind_err)?;
    tracing::info!(admin = %l.local_addr().map_err(bind_err)?, "admin endpoints (/metrics, /healthz, /readyz) served here only");
    Ok(l)
}

/// One listener per shard on the same port (port 0 resolves once, then the
/// other shards bind the port the first one got).
fn bind_all(listen: &str, shards: usize) -> Result<Vec<std::net::TcpListener>, NodeError> {
    let bind_err = |source| NodeError::Bind {
        addr: listen.to_owned(),
        source,
    };
    let mut addr: SocketAddr = listen.parse().map_err(|_| bind_err(std::io::Error::other("not an IP:port")))?;
    let mut out = Vec::with_capacity(shards);
    for _ in 0..shards {
        let l = shard::bind_listener(addr).map_err(bind_err)?;
        addr = l.local_addr().map_err(bind_err)?;
        out.push(l);
    }
    Ok(out)
}

impl Node {
    /// Asks every shard to drain (reconnect hints, close 1012).
    pub fn shutdown(&self) {
        let frame = router::encode(&Frame::Shutdown {
            retry_ms_max: self.cfg.drain_retry_ms_max.min(u64::from(u32::MAX)) as u32,
        });
        for to in 0..self.shards {
            let mut f = frame.clone();
            // The control thread is not a runtime: retry briefly if a ring is full.
            for _ in 0..1000 {
                match self.control.try_send(to, f) {
                    Ok(()) => break,
                    Err(full) => {
                        f = full.0;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        }
    }

    /// Waits for SIGTERM or SIGINT, drains, and returns once every shard
    /// stopped or the drain timeout passed.
    pub fn run_until_signal(self) -> Result<(), NodeError> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).map_err(NodeError::Signals)?;
        if let Some(sig) = signals.forever().next() {
            tracing::info!(signal = sig, "draining on signal");
        }
        self.shutdown();
        self.join();
        Ok(())
    }

    /// Joins the shard threads, giving up after the drain timeout + 2 s, then flushes
    /// the store (every write queued is committed) and marks the run as cleanly ended.
    pub fn join(self) {
        let deadline = Instant::now() + Duration::from_millis(self.cfg.drain_timeout_ms) + Duration::from_secs(2);
        for t in self.threads {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
        if let Some(b) = &self.bridge {
            // Leaves this node's presence entries (others see the users go offline now, not at lease expiry).
            match block_on_bridge(b.shutdown(), Duration::from_secs(3)) {
                Some(Ok(())) => tracing::info!("cluster bridge stopped"),
                Some(Err(e)) => tracing::warn!(error = %e, "cluster bridge did not stop cleanly"),
                None => tracing::warn!("cluster bridge did not stop within 3 s"),
            }
        }
        match self.store.shutdown() {
            Ok(()) => tracing::info!("message store flushed and closed"),
            Err(e) => tracing::error!(error = %e, "message store did not close cleanly"),
        }
    }
}

/// Runs one bridge call on this (non-runtime) thread, at most `limit`.
fn block_on_bridge<T>(f: impl std::future::Future<Output = T>, limit: Duration) -> Option<T> {
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build().ok()?;
    rt.block_on(async { monoio::time::timeout(limit, f).await.ok() })
}

/// The open-file limit of this process, after raising its soft `RLIMIT_NOFILE` to the hard
/// one (as Go's runtime does at start): `max_conns = 0` is derived from it.
fn open_file_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct we pass and reads nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass; raising the soft limit up to the hard
        // one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return raised.rlim_cur;
        }
    }
    lim.rlim_cur
}
