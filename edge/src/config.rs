//! The node's configuration: one serde struct, every field defaulted and
//! documented, loaded from TOML, then `EDGE_*` environment overrides, then
//! CLI flags (merged by the binary), then [`Config::validate`].
//!
//! Each shard gets its own immutable copy (an `Arc<Config>` cloned at start);
//! nothing here changes after the node starts.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use storage::{StoreConfig, StoreKind};

use crate::auth::JwtAlgorithm;

/// When a `send` is acknowledged (DESIGN.md "Life of a message", step 4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Ack and fan out as soon as the owner sequenced the message; the store write
    /// follows in the next batch. A crash can lose the last batch (the room's
    /// epoch changes on restart so clients know).
    #[default]
    Fast,
    /// Ack and fan out only after the batch holding the message is committed:
    /// an acked or delivered message survives a crash of the node.
    Durable,
}

/// How the node writes its logs (to stderr).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Lines for people, coloured only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Which io driver the shards run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum DriverChoice {
    /// io_uring when the kernel allows it, epoll otherwise.
    #[default]
    Auto,
    /// io_uring only: start fails when it is unavailable.
    #[value(name = "io_uring", alias = "iouring")]
    IoUring,
    /// epoll (monoio's legacy driver).
    Epoll,
}

/// How admission control refuses an upgrade.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdmissionRefusal {
    /// HTTP 503 before the upgrade, with `Retry-After` and `Retry-Ms`.
    #[default]
    Http503,
    /// Upgrade, then close 1013 with reason `retry_ms=N`.
    Close1013,
}

/// Every setting of an edge node. Units are in the names.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address every shard listens on (SO_REUSEPORT, one listener per shard).
    pub listen: String,
    /// Number of shards (one pinned thread each); 0 means one per core.
    pub cores: usize,
    /// io driver: auto, io_uring or epoll.
    pub driver: DriverChoice,
    /// Log lines on stderr: `text` (coloured only on a terminal) or `json`. What is logged
    /// is set by `RUST_LOG` (e.g. `info`, `edge=debug`; default `info`).
    pub log_format: LogFormat,
    /// Let the kernel back this process's memory with transparent huge pages. Off by default:
    /// the node then asks for none (`prctl(PR_SET_THP_DISABLE)`). With THP `always` and
    /// khugepaged's default `max_ptes_none` (511), a 2 MiB range the allocator uses only
    /// sparsely is collapsed into a whole huge page, so RSS climbs in steps while the live heap
    /// stays flat (a 30-minute churn soak grew 10%; results/NOTES.md "Soak").
    pub transparent_huge_pages: bool,
    /// Pin each shard thread to a core.
    pub pin_threads: bool,
    /// Directory of the embedded store (SQLite `edge.sqlite3` and its WAL); created if missing.
    pub data_dir: PathBuf,
    /// Message store backend: `embedded` (SQLite in `data_dir`, nothing to install, one
    /// node), `postgres` (a PostgreSQL database) or `scylla` (a Scylla cluster).
    pub store: StoreKind,
    /// When sends are acked: `fast` (when sequenced) or `durable` (after the store commit).
    pub durability: Durability,
    /// Most messages the store writer commits in one batch (group commit).
    pub store_batch_max_messages: usize,
    /// Longest wait for more messages after the first one of a batch, in microseconds. Unset: 10 ms
    /// in `fast` mode (fewer, larger commits; the crash-loss window) and 1 ms in `durable` mode
    /// (it is added to every ack).
    pub store_flush_interval_us: Option<u64>,
    /// Writes waiting for the store at most; a send beyond it gets `overloaded`.
    pub store_queue_capacity: usize,
    /// Store queries (history, room loads, catch-up) waiting or running at most; beyond it, `overloaded`.
    pub store_query_queue_capacity: usize,
    /// Embedded store: fsync every commit (survives power loss), instead of surviving process crashes only.
    pub store_sync_full: bool,
    /// Embedded store: SQLite page cache, MiB, of all its connections together (half to the
    /// writer, half shared by the read connections). Each cache fills up to its share as the
    /// database grows past it and then stays there; `edge_store_sqlite_memory_bytes` shows it.
    pub store_cache_mib: u64,
    /// Scylla contact points, `host:port` (flag `--scylla-uri host:port[,host:port]`).
    pub scylla_contact_points: Vec<String>,
    /// Scylla keyspace.
    pub scylla_keyspace: String,
    /// Scylla consistency of every statement (`ONE`, `QUORUM`, `LOCAL_QUORUM`, ...).
    pub scylla_consistency: String,
    /// Scylla replication factor used when `edge migrate` creates the keyspace.
    pub scylla_replication_factor: u32,
    /// PostgreSQL (`store = "postgres"`): the URL, `postgres://user[:password]@host:port/db`
    /// (flag `--postgres-url`, env `EDGE_POSTGRES_URL`). Pending migrations of
    /// `storage/schema/postgres/` are applied when the store opens, and by `edge migrate`.
    pub postgres_url: String,
    /// PostgreSQL: most connections the node keeps open to the database.
    pub postgres_pool_size: usize,
    /// Most messages one `join` with `since` replays from the store; older ones are announced with `gap`.
    pub max_catch_up_messages: usize,
    /// Requests queued on a room whose state is still being loaded from the store; beyond it, `overloaded`.
    pub room_load_queue_max: usize,
    /// Redis URL (`redis://host:port`); when set the node joins a cluster through it
    /// (flag `--redis-url`, env `EDGE_REDIS_URL`). Unset: the node runs alone.
    pub redis_url: Option<String>,
    /// Cluster: sharded pub/sub (SSUBSCRIBE/SPUBLISH) for Redis Cluster; keys are hash-tagged by room either way.
    pub redis_sharded_pubsub: bool,
    /// Cluster: messages kept per room in Redis for catch-up and history (approximate trim).
    pub redis_recent_len: u32,
    /// Cluster: how long Redis remembers a sent `client_id` (per room and user), in ms: a
    /// retry through any node within it is answered with the original ack, never sequenced
    /// twice. 0 turns the cluster-wide check off (each node still remembers its own).
    pub redis_dedupe_ttl_ms: u64,
    /// Cluster: most messages of one room sequenced and published by one script call.
    pub redis_batch_max: u32,
    /// Cluster: timeout of one Redis command, in ms.
    pub redis_command_timeout_ms: u64,
    /// Cluster: a presence entry lives this long without renewal, in ms; a dead node's users go
    /// offline within this plus `presence_heartbeat_ms`.
    pub presence_lease_ms: u64,
    /// Cluster: how often a node renews its presence leases and sweeps expired ones, in ms.
    pub presence_heartbeat_ms: u64,
    /// A `presence` answer lists at most this many users of a room (those online
    /// longest), with the full `count`. Single node: in a room with more users online,
    /// members get the online `count` (coalesced, about once a second) instead of each
    /// user's online/offline event.
    pub presence_roster_max: usize,
    /// Rooms with more users online than this push no `receipt` events (read marks are
    /// still stored).
    pub receipts_room_max: usize,
    /// Single node: keep delivered marks (a message handed to one of a user's live
    /// connections moves the user's delivered mark, stored and pushed as `receipt`).
    /// `false` saves their cost on the fan-out path; `sync` then reports 0.
    pub delivered_marks: bool,
    /// Single node: delivered marks reach the store at most this often (ms), each
    /// (room, user) once per flush; pushes still go out every second. A crash loses at
    /// most this much of them.
    pub delivered_flush_ms: u64,
    /// A `typing` start stops by itself after this many ms without a refresh.
    pub typing_ttl_ms: u64,
    /// A room's typing events go out at most once per this many ms; changes in between
    /// are coalesced.
    pub typing_interval_ms: u64,
    /// Cluster: longest wait for each Redis step of a join (the subscription, the room's seq,
    /// the catch-up read), for a history or presence read, and for each Redis or
    /// shared-store call of a `read`, `sync` or a user's `presence` (each Redis call of an
    /// edit, delete or reaction too; the change as a whole has 3 times this plus 3.5 s), in
    /// ms; then the request answers `unavailable`.
    pub cluster_join_timeout_ms: u64,
    /// This node's id, shown in `welcome.node`.
    pub node_id: String,
    /// JWT algorithm, pinned: hs256, rs256 or eddsa.
    pub jwt_algorithm: JwtAlgorithm,
    /// Shared secret for HS256. Empty with no public key means dev mode.
    pub jwt_secret: String,
    /// PEM file with the public key for RS256 / EdDSA.
    pub jwt_public_key_file: Option<PathBuf>,
    /// Required `iss` claim, when set.
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim, when set.
    pub jwt_audience: Option<String>,
    /// Clock skew allowed on `exp` / `nbf`, in seconds.
    pub jwt_leeway_s: u64,
    /// Origins allowed to upgrade (exact match); empty allows all.
    pub allowed_origins: Vec<String>,
    /// Keys of the HTTP API's backend routes (publish, tokens, admin), sent as
    /// `Authorization: apikey <key>` or `X-API-Key: <key>`; each at least 16 bytes. Env
    /// `EDGE_API_KEYS` takes them comma-separated. Empty: those routes answer 401.
    pub api_keys: Vec<String>,
    /// Largest HTTP API request body, in bytes (then 413).
    pub api_max_body_bytes: usize,
    /// Longest an HTTP API request waits for the chat engine's answer (then 504).
    pub api_timeout_ms: u64,
    /// Set by `serve` when it runs without a configured secret (never read from a file).
    #[serde(skip)]
    pub dev_mode: bool,
    /// Time a new socket has to send a complete upgrade request.
    pub handshake_timeout_ms: u64,
    /// Time a client upgraded without `?token=` has to send its `auth` frame.
    pub auth_timeout_ms: u64,
    /// Largest HTTP request head accepted, in bytes (then 431).
    pub max_head_bytes: usize,
    /// Largest WebSocket frame payload accepted (then close 1009).
    pub max_frame_bytes: usize,
    /// Largest assembled WebSocket message accepted (then close 1009).
    pub max_message_bytes: usize,
    /// Largest `send.body`, in characters (then `too_large`).
    pub max_body_chars: usize,
    /// Rooms one connection may be in at once (then `forbidden`).
    pub max_rooms_per_conn: usize,
    /// Sustained client frames per second per connection (GCRA).
    pub max_msgs_per_s: f64,
    /// Burst of client frames above the sustained rate.
    pub msgs_burst: u32,
    /// Rate-limit hits in a row, or frames refused in a row (malformed, not allowed), before
    /// the connection is closed 4029.
    pub rate_limit_strikes: u32,
    /// Bytes queued for one socket before it is closed 4008 (slow consumer).
    pub outbound_queue_max_bytes: usize,
    /// Frames queued for one socket before it is closed 4008.
    pub outbound_queue_max_frames: usize,
    /// Bytes of replies (history pages, catch-up, acks) a connection may
    /// have queued before new `history` or `join`+`since` requests are
    /// answered `overloaded` with `retry_ms`. Replies never count against
    /// `outbound_queue_max_bytes`: a page the client asked for never closes it 4008.
    pub reply_budget_bytes: usize,
    /// Largest `history` page, in bytes of messages: a page over it keeps its
    /// newest messages (at least one) and `next_before` continues it.
    pub history_page_max_bytes: usize,
    /// A socket write that makes no progress for this long (the peer stopped
    /// reading) shuts the socket down, found by a sweep once a second (so within
    /// this plus about two seconds); counted in `edge_write_stalled_total`.
    pub write_stall_timeout_ms: u64,
    /// Interval at which clients should ping; advertised in `welcome`.
    pub heartbeat_ms: u64,
    /// A connection that sends no complete frame (a request, a ping or pong) for this long is
    /// closed (1001); bytes of an unfinished frame do not count; 0 disables.
    pub idle_timeout_ms: u64,
    /// Capacity of each cross-core ring, in frames (rounded to a power of two).
    pub mesh_ring_capacity: usize,
    /// Frames a shard's spill queue (frames whose ring was full) holds before the shard
    /// refuses new sends, history pages, catch-up reads and changes of its rooms
    /// (`overloaded`) until it drains to half; frames of work already taken are never dropped.
    pub mesh_spill_max_frames: usize,
    /// Rooms one shard keeps state for (seq, epoch, dedupe); empty rooms
    /// beyond it are evicted and come back with a new epoch.
    pub max_rooms_per_shard: usize,
    /// A room with no member left leaves memory after this long without a request (its
    /// messages stay in the store and it loads again when named); 0 keeps rooms until
    /// `max_rooms_per_shard`.
    pub room_idle_evict_ms: u64,
    /// Rooms one user may bring into a shard's memory per second (a join, send, edit or
    /// thread page naming a room not in memory); over it the request is answered
    /// `overloaded` with `retry_ms`. 0: no limit.
    pub rooms_per_user_per_s: f64,
    /// Rooms one user may bring into a shard's memory back to back before the rate applies.
    pub rooms_per_user_burst: u32,
    /// `client_id`s remembered per room for idempotent retries.
    pub dedupe_per_room: usize,
    /// Recent messages kept in memory per room.
    pub recent_per_room: usize,
    /// Bytes of rendered messages a room's recent ring keeps at most (the oldest go first;
    /// older history and catch-up then come from the store, or the Redis stream in a cluster).
    pub recent_per_room_bytes: usize,
    /// New WebSocket upgrades admitted per second per shard (token bucket);
    /// over it, upgrades are refused with `retry_ms`. 0 admits everything.
    pub admission_rate_per_shard: f64,
    /// Upgrades a shard admits back to back before the rate applies.
    pub admission_burst: u32,
    /// How a refused upgrade is answered: `http503` (before the upgrade, with
    /// `Retry-After` and `Retry-Ms` headers) or `close1013` (upgrade, then
    /// close 1013 "try again later" with reason `retry_ms=N`).
    pub admission_refusal: AdmissionRefusal,
    /// Largest `retry_ms` hint given to a refused client.
    pub admission_retry_max_ms: u64,
    /// Upgraded WebSocket connections the node holds at most; past it an upgrade is refused
    /// (503, or close 1013, with `retry_ms`). 0: the open-file limit (the node raises its soft
    /// limit to the hard one at start) less 1,024, or a quarter of a smaller limit, left for
    /// the store, Redis, the mesh and HTTP requests, so a full node refuses instead of
    /// failing `accept`.
    pub max_conns: usize,
    /// Connections one client address may hold (behind `trusted_proxies`, the address
    /// `X-Forwarded-For` names); past it, 429 (or close 1013). 0: no limit, the default,
    /// because many users can share one address behind NAT.
    pub max_conns_per_ip: usize,
    /// Authenticated connections one user may hold on the node; past it, 429 before the
    /// upgrade (token in the URL) or close 1013 after `auth`. 0: no limit.
    pub max_conns_per_user: usize,
    /// `retry_ms` told to a connection refused by `max_conns*`.
    pub conn_limit_retry_ms: u64,
    /// Proxies (addresses or CIDR blocks, e.g. `10.0.0.0/8`) whose `X-Forwarded-For` names
    /// the client address for `max_conns_per_ip`; from any other peer the header is ignored.
    pub trusted_proxies: Vec<String>,
    /// Upper bound of the jittered `reconnect.retry_ms` sent on drain.
    pub drain_retry_ms_max: u64,
    /// Time allowed for a drain (SIGTERM) before the node exits anyway.
    pub drain_timeout_ms: u64,
    /// Serve `/metrics`, `/healthz` and `/readyz` on this address only (e.g. `127.0.0.1:9090`),
    /// not on the public `listen` port (flag `--admin-listen`). Metrics show the node's load
    /// and internals: keep them off the public network.
    pub admin_listen: Option<String>,
    /// Path of the conformance echo endpoint (Autobahn); off when unset.
    pub echo_path: Option<String>,
    /// Largest message on the echo endpoint (Autobahn sends 16 MiB).
    pub echo_max_message_bytes: usize,
    /// Serve the echo endpoint on a listener that is not a loopback address. It is a
    /// conformance-testing tool (no authentication, large messages): refused there otherwise.
    pub echo_allow_public: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            cores: 0,
            driver: DriverChoice::Auto,
            log_format: LogFormat::Text,
            transparent_huge_pages: false,
            pin_threads: true,
            data_dir: PathBuf::from("data"),
            store: StoreKind::Embedded,
            durability: Durability::Fast,
            store_batch_max_messages: 256,
            store_flush_interval_us: None,
            store_queue_capacity: 65_536,
            store_query_queue_capacity: 4096,
            store_sync_full: false,
            store_cache_mib: 128,
            scylla_contact_points: vec!["127.0.0.1:9042".into()],
            scylla_keyspace: "edge".into(),
            scylla_consistency: "LOCAL_QUORUM".into(),
            scylla_replication_factor: 1,
            postgres_url: String::new(),
            postgres_pool_size: 8,
            max_catch_up_messages: 1000,
            room_load_queue_max: 1024,
            redis_url: None,
            redis_sharded_pubsub: false,
            redis_recent_len: 1000,
            redis_dedupe_ttl_ms: 300_000,
            redis_batch_max: 64,
            redis_command_timeout_ms: 2_000,
            presence_lease_ms: 15_000,
            presence_heartbeat_ms: 5_000,
            presence_roster_max: 200,
            receipts_room_max: 100,
            delivered_marks: true,
            delivered_flush_ms: 10_000,
            typing_ttl_ms: 5_000,
            typing_interval_ms: 500,
            cluster_join_timeout_ms: 5_000,
            node_id: "edge-1".into(),
            jwt_algorithm: JwtAlgorithm::Hs256,
            jwt_secret: String::new(),
            jwt_public_key_file: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_leeway_s: 5,
            allowed_origins: Vec::new(),
            api_keys: Vec::new(),
            api_max_body_bytes: 64 * 1024,
            api_timeout_ms: 10_000,
            dev_mode: false,
            handshake_timeout_ms: 5_000,
            auth_timeout_ms: 5_000,
            max_head_bytes: 8 * 1024,
            max_frame_bytes: 64 * 1024,
            max_message_bytes: 64 * 1024,
            max_body_chars: 4096,
            max_rooms_per_conn: 64,
            max_msgs_per_s: 50.0,
            msgs_burst: 100,
            rate_limit_strikes: 20,
            outbound_queue_max_bytes: 1024 * 1024,
            outbound_queue_max_frames: 8192,
            reply_budget_bytes: 4 * 1024 * 1024,
            history_page_max_bytes: 1024 * 1024,
            write_stall_timeout_ms: 10_000,
            heartbeat_ms: 25_000,
            idle_timeout_ms: 90_000,
            mesh_ring_capacity: 8192,
            mesh_spill_max_frames: 16_384,
            max_rooms_per_shard: 200_000,
            room_idle_evict_ms: 300_000,
            rooms_per_user_per_s: 5.0,
            rooms_per_user_burst: 100,
            dedupe_per_room: 1024,
            recent_per_room: 256,
            recent_per_room_bytes: 1 << 20,
            admission_rate_per_shard: 0.0,
            admission_burst: 256,
            admission_refusal: AdmissionRefusal::Http503,
            admission_retry_max_ms: 10_000,
            max_conns: 0,
            max_conns_per_ip: 0,
            max_conns_per_user: 64,
            conn_limit_retry_ms: 5_000,
            trusted_proxies: Vec::new(),
            drain_retry_ms_max: 5_000,
            drain_timeout_ms: 5_000,
            admin_listen: None,
            echo_path: None,
            echo_max_message_bytes: 32 * 1024 * 1024,
            echo_allow_public: false,
        }
    }
}

/// A configuration that cannot be used; the message names the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("config field `{field}`: {message}")]
    Invalid { field: &'static str, message: String },
}

impl Config {
    /// Loads `path` (or the defaults when `None`), then applies `EDGE_*` overrides.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let base = match path {
            Some(p) => Self::from_file(p)?,
            None => Self::default(),
        };
        base.with_env(std::env::vars())
    }

    fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Applies `EDGE_<FIELD>` variables: the field's name upper-cased. Values
    /// are parsed as TOML values when they parse, else taken as strings; list
    /// fields take comma-separated strings.
    pub fn with_env(self, vars: impl Iterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let mut table = toml::Table::try_from(&self).map_err(|e| ConfigError::Env {
            var: "EDGE_*".into(),
            message: e.to_string(),
        })?;
        let fields = field_names();
        let mut touched = false;
        for (var, raw) in vars {
            let Some(name) = var.strip_prefix("EDGE_") else { continue };
            let key = name.to_ascii_lowercase();
            if !fields.contains(&key) {
                continue;
            }
            let is_list = matches!(table.get(&key), Some(toml::Value::Array(_)));
            table.insert(key, env_value(&raw, is_list));
            touched = true;
        }
        if !touched {
            return Ok(self);
        }
        Self::deserialize(table).map_err(|e| ConfigError::Env {
            var: "EDGE_*".into(),
            message: e.to_string(),
        })
    }

    /// The Redis bridge's settings, when the node is in a cluster (`redis_url` set).
    pub fn bridge_config(&self) -> Option<router::bridge::BridgeConfig> {
        let url = self.redis_url.as_ref()?;
        Some(router::bridge::BridgeConfig {
            redis_url: url.clone(),
            node_id: self.node_id.clone(),
            sharded_pubsub: self.redis_sharded_pubsub,
            recent_len: self.redis_recent_len,
            dedupe_ttl_ms: self.redis_dedupe_ttl_ms,
            batch_max: self.redis_batch_max,
            max_message_bytes: (self.max_message_bytes as u64 * 2 + 4096).min(u64::from(u32::MAX)) as u32,
            presence_lease_ms: self.presence_lease_ms,
            heartbeat_ms: self.presence_heartbeat_ms,
            command_timeout_ms: self.redis_command_timeout_ms,
            ..router::bridge::BridgeConfig::default()
        })
    }

    /// The store's settings, taken from this config.
    pub fn store_config(&self) -> StoreConfig {
        StoreConfig {
            store: self.store,
            data_dir: self.data_dir.clone(),
            node_id: self.node_id.clone(),
            batch_max_messages: self.store_batch_max_messages,
            flush_interval_us: self.store_flush_interval_us.unwrap_or(match self.durability {
                Durability::Fast => 10_000,
                Durability::Durable => 1_000,
            }),
            queue_capacity: self.store_queue_capacity,
            // A shared store that goes away in fast mode: hold the acked writes (bounded by the
            // queue) until it is back, rather than give them up after a few attempts.
            write_retry_forever: self.store != StoreKind::Embedded && self.durability == Durability::Fast,
            query_queue_capacity: self.store_query_queue_capacity,
            embedded_sync_full: self.store_sync_full,
            embedded_cache_mib: self.store_cache_mib,
            scylla_contact_points: self.scylla_contact_points.clone(),
            scylla_keyspace: self.scylla_keyspace.clone(),
            scylla_consistency: self.scylla_consistency.clone(),
            scylla_replication_factor: self.scylla_replication_factor,
            postgres_url: self.postgres_url.clone(),
            postgres_pool_size: self.postgres_pool_size,
            ..StoreConfig::default()
        }
    }

    /// `trusted_proxies`, parsed.
    pub fn trusted_proxy_nets(&self) -> Result<Vec<crate::limits::client_ip::IpNet>, String> {
        self.trusted_proxies.iter().map(|s| s.parse()).collect()
    }

    /// The node's connection limits, with `max_conns = 0` resolved against the open-file
    /// limit `nofile`: less 1,024 descriptors (a quarter of a smaller limit) kept for the
    /// store, Redis, the mesh and HTTP requests.
    pub fn conn_limits(&self, nofile: u64) -> crate::limits::conns::ConnLimits {
        let reserve = (nofile / 4).min(1024);
        let auto = usize::try_from(nofile.saturating_sub(reserve)).unwrap_or(usize::MAX).max(1);
        crate::limits::conns::ConnLimits {
            max_total: if self.max_conns == 0 { auto } else { self.max_conns },
            max_per_ip: self.max_conns_per_ip,
            max_per_user: self.max_conns_per_user,
        }
    }

    /// The number of shards to run: `cores`, or one per available core.
    pub fn shard_count(&self) -> usize {
        if self.cores > 0 {
            return self.cores;
        }
        std::thread::available_parallelism().map_or(1, usize::from)
    }
}

fn field_names() -> Vec<String> {
    match toml::Table::try_from(Config::default()) {
        Ok(t) => t.keys().cloned().collect(),
        Err(_) => Vec::new(),
    }
    .into_iter()
    .chain(
        [
            "jwt_public_key_file",
            "jwt_issuer",
            "jwt_audience",
            "echo_path",
            "admin_listen",
            "store_flush_interval_us",
            "redis_url",
        ]
        .map(String::from),
    )
    .collect()
}

fn env_value(raw: &str, is_list: bool) -> toml::Value {
    if is_list {
        let items = raw.split(',').map(str::trim).filter(|s| !s.is_empty());
        return toml::Value::Array(items.map(|s| toml::Value::String(s.into())).collect());
    }
    let probe = format!("v = {raw}");
    match probe.parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    }
}

#[path = "config_check.rs"]
mod check;

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
