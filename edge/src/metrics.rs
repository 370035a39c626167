//! Node metrics in Prometheus text format.
//!
//! Each shard writes only its own `ShardStats` (relaxed atomics on its own
//! cache lines, so no line is shared between writers); `/metrics`, served by
//! whichever shard accepted the scrape, reads them all.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! stats {
    ($( $(#[doc = $doc:literal])* $name:ident : $kind:literal ),* $(,)?) => {
        /// Counters and gauges of one shard.
        #[derive(Debug, Default)]
        #[repr(align(128))]
        pub struct ShardStats {
            $( $(#[doc = $doc])* pub $name: AtomicU64, )*
            /// Sequenced → written to the socket, sampled per connection.
            pub delivery_latency: LatencyHistogram,
        }

        impl ShardStats {
            fn describe() -> &'static [(&'static str, &'static str, &'static str)] {
                &[$( (stringify!($name), $kind, concat!($($doc),*)) ),*]
            }

            fn values(&self) -> Vec<u64> {
                vec![$( self.$name.load(Relaxed) ),*]
            }
        }
    };
}

stats! {
    /// Open WebSocket connections.
    connections_open: "gauge",
    /// Sockets accepted.
    accepted_total: "counter",
    /// Upgrades refused (bad request, auth, origin, timeout).
    handshake_rejected_total: "counter",
    /// Upgrades refused by admission control (over the handshake rate).
    admission_refused_total: "counter",
    /// Connections refused because the node held `max_conns`.
    conns_refused_node_total: "counter",
    /// Connections refused because their client address held `max_conns_per_ip`.
    conns_refused_ip_total: "counter",
    /// Connections refused because their user held `max_conns_per_user`.
    conns_refused_user_total: "counter",
    /// Connections handed to the room's owner shard before the upgrade.
    handoffs_total: "counter",
    /// Client frames received.
    frames_in_total: "counter",
    /// Messages sequenced by this shard (owner side).
    messages_total: "counter",
    /// Message frames queued to local sockets.
    deliveries_total: "counter",
    /// Events without a seq (typing) queued to local sockets.
    events_total: "counter",
    /// Events without a seq (typing) shed: the member's queue was backed up, or the ring to the room's owner congested.
    events_shed_total: "counter",
    /// Connections closed 4008 (slow consumer).
    slow_consumer_total: "counter",
    /// Sockets cut because a write made no progress for `write_stall_timeout_ms` (the peer stopped reading).
    write_stalled_total: "counter",
    /// History and catch-up requests refused `overloaded` while the connection's earlier replies were still queued.
    reply_budget_refused_total: "counter",
    /// Requests refused with rate_limited.
    rate_limited_total: "counter",
    /// Client frames answered with an error by the session's checks (malformed, not allowed, over the rate).
    frames_refused_total: "counter",
    /// Requests refused with overloaded.
    overloaded_total: "counter",
    /// Frames sent over the cross-core mesh.
    mesh_frames_out_total: "counter",
    /// Mesh frames that found their ring full and waited in the spill queue.
    mesh_spilled_total: "counter",
    /// Frames waiting in the spill queue now (bounded by `mesh_spill_max_frames` plus the frames of work already taken).
    mesh_spill_frames: "gauge",
    /// Sends, history pages, catch-up reads and changes refused `overloaded` while the spill queue was full.
    mesh_spill_refused_total: "counter",
    /// Rooms whose state this shard owns.
    rooms_owned: "gauge",
    /// Rooms dropped from memory after `room_idle_evict_ms` without a request (they load again from the store).
    rooms_evicted_total: "counter",
    /// Requests refused because their user brought rooms into memory over `rooms_per_user_per_s`.
    room_loads_refused_total: "counter",
    /// HTTP API and web page requests served.
    api_requests_total: "counter",
    /// HTTP API requests answered with a 5xx status (timeouts, shutdown, internal).
    api_failed_total: "counter",
    /// Sends and store queries refused because the store's queue was full (answered `overloaded`).
    store_overloaded_total: "counter",
    /// Store writes that failed after the writer's retries.
    store_write_failed_total: "counter",
    /// Room loads from the store that failed (requests answered `unavailable`).
    store_load_failed_total: "counter",
}

impl ShardStats {
    /// Adds one to a counter.
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }

    /// Adds `n` to a counter.
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    /// Sets a gauge.
    pub fn set(c: &AtomicU64, v: u64) {
        c.store(v, Relaxed);
    }
}

/// One unlabelled metric per row: (name, kind, help, value).
fn write_unlabelled(out: &mut String, rows: &[(&str, &str, &str, u64)]) {
    for (name, kind, help, v) in rows {
        let _ = writeln!(out, "# HELP edge_{name} {help}\n# TYPE edge_{name} {kind}\nedge_{name} {v}");
    }
}

/// Renders the store service's figures (queue depths, batches, commit latency).
pub fn render_store(out: &mut String, s: &storage::StoreStats) {
    let snap = s.snapshot();
    let rows: [(&str, &str, &str, u64); 10] = [
        (
            "store_unavailable",
            "gauge",
            "1 while the store is unreachable (writes held and retried, or failing).",
            u64::from(snap.unavailable),
        ),
        (
            "store_write_queue_depth",
            "gauge",
            "Writes waiting for the store writer.",
            snap.write_queue_depth,
        ),
        (
            "store_query_queue_depth",
            "gauge",
            "Store queries waiting or running.",
            snap.query_queue_depth,
        ),
        ("store_batches_total", "counter", "Batches committed.", snap.batches_total),
        (
            "store_messages_written_total",
            "counter",
            "Messages committed.",
            snap.messages_written_total,
        ),
        (
            "store_write_errors_total",
            "counter",
            "Messages whose write failed after retries.",
            snap.write_errors_total,
        ),
        (
            "store_write_retries_total",
            "counter",
            "Batch attempts retried.",
            snap.write_retries_total,
        ),
        (
            "store_refused_total",
            "counter",
            "Writes and queries refused with overloaded.",
            snap.overloaded_total,
        ),
        ("store_queries_total", "counter", "Queries answered.", snap.queries_total),
        (
            "store_last_batch_messages",
            "gauge",
            "Messages in the last committed batch.",
            snap.last_batch_messages,
        ),
    ];
    write_unlabelled(out, &rows);
    let lat = s.commit_latency();
    let _ = writeln!(
        out,
        "# HELP edge_store_commit_latency_us Batch commit latency.\n# TYPE edge_store_commit_latency_us summary"
    );
    for (q, v) in [("0.5", lat.p50_us()), ("0.99", lat.p99_us())] {
        let _ = writeln!(out, "edge_store_commit_latency_us{{quantile=\"{q}\"}} {v}");
    }
    let _ = writeln!(out, "edge_store_commit_latency_us_count {}", lat.count());
}

/// Renders the Redis bridge's figures (cluster mode).
pub fn render_bridge(out: &mut String, m: &router::bridge::MetricsSnapshot, ready: bool) {
    let rows: [(&str, &str, &str, u64); 13] = [
        (
            "redis_ready",
            "gauge",
            "1 while Redis is reachable and every subscription is in place.",
            u64::from(ready),
        ),
        ("redis_rtt_us_p50", "gauge", "Median Redis round trip, us.", m.rtt_us_p50),
        ("redis_rtt_us_p99", "gauge", "99th percentile Redis round trip, us.", m.rtt_us_p99),
        ("redis_reconnects_total", "counter", "Reconnections to Redis.", m.reconnects_total),
        (
            "redis_subscriptions",
            "gauge",
            "Room channels this node subscribes to.",
            m.subscriptions,
        ),
        (
            "redis_published_total",
            "counter",
            "Messages published by this node.",
            m.published_total,
        ),
        (
            "redis_received_total",
            "counter",
            "Messages and presence notes received from Redis.",
            m.received_total,
        ),
        (
            "redis_rejected_total",
            "counter",
            "Received buffers rejected as malformed.",
            m.rejected_total,
        ),
        (
            "redis_script_calls_total",
            "counter",
            "Sequencing script calls (one per batch).",
            m.script_calls_total,
        ),
        ("redis_errors_total", "counter", "Failed Redis calls.", m.errors_total),
        ("redis_gaps_total", "counter", "Seq jumps seen on room channels.", m.gaps_total),
        (
            "redis_lagged_total",
            "counter",
            "Messages lost because the event reader fell behind.",
            m.lagged_total,
        ),
        (
            "redis_resyncs_total",
            "counter",
            "Resyncs after a reconnect or a lag.",
            m.resyncs_total,
        ),
    ];
    write_unlabelled(out, &rows);
}

/// The process's own figures, as Prometheus' process collector names them: resident
/// memory, open file descriptors (every connection is one), CPU time; read from /proc.
pub fn render_process(out: &mut String) {
    let page = page_size();
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let rss_pages: u64 = statm.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // After the command name (in parentheses, which may hold spaces): utime and stime are
    // fields 14 and 15 of the line, 12 and 13 after the ")".
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    let cpu_s = ticks as f64 / clock_ticks() as f64;
    let rows = [
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            (rss_pages * page).to_string(),
        ),
        (
            "process_open_fds",
            "gauge",
            "Open file descriptors (sockets included).",
            fds.to_string(),
        ),
        (
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time, seconds.",
            format!("{cpu_s:.3}"),
        ),
        (
            "edge_store_sqlite_memory_bytes",
            "gauge",
            "Heap the embedded store's SQLite holds (page caches, bounded by store_cache_mib; statements); 0 with another store.",
            storage::embedded::EmbeddedStore::memory_used().to_string(),
        ),
    ];
    for (name, kind, help, value) in rows {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 reads glibc's arena statistics under their locks; it takes no
        // pointer and is safe to call from any thread.
        let m = unsafe { libc::mallinfo2() };
        let rows = [
            (
                "edge_c_heap_in_use_bytes",
                "C heap (glibc: SQLite's) in use.",
                m.uordblks + m.hblkhd,
            ),
            ("edge_c_heap_free_bytes", "C heap (glibc) free but kept by the process.", m.fordblks),
        ];
        for (name, help, value) in rows {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        }
    }
    if let Some(live) = crate::heap::live_bytes() {
        let name = "edge_heap_live_bytes";
        let help = "Heap the program holds (allocated, not freed), counted by a heap-stats build.";
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {live}");
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf reads a constant of the running system; no memory is touched.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).unwrap_or(4096)
}

fn clock_ticks() -> u64 {
    // SAFETY: as above.
    let n = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(n).ok().filter(|&t| t > 0).unwrap_or(100)
}

thread_local! {
    /// The stats of the shard running on this thread (set once at its start).
    static THIS_SHARD: std::cell::OnceCell<(std::sync::Arc<Vec<ShardStats>>, usize)> = const { std::cell::OnceCell::new() };
}

/// Tells the metrics which shard runs on this thread.
pub fn set_thread_shard(all: std::sync::Arc<Vec<ShardStats>>, id: usize) {
    THIS_SHARD.with(|s| {
        let _ = s.set((all, id));
    });
}

/// Counts a delivery latency on this thread's shard (none outside a shard thread).
pub fn observe_delivery_latency(us: u64) {
    THIS_SHARD.with(|s| {
        if let Some((all, id)) = s.get() {
            all[*id].delivery_latency.observe(us);
        }
    });
}

/// Upper bounds of the delivery-latency buckets, in microseconds.
const LATENCY_BOUNDS_US: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
];

/// A Prometheus histogram of latencies in microseconds, written by one shard.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Observations at or below each bound of [`LATENCY_BOUNDS_US`] (not cumulative), then above all.
    buckets: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

impl LatencyHistogram {
    /// Counts one latency.
    pub fn observe(&self, us: u64) {
        let i = LATENCY_BOUNDS_US.iter().position(|b| us <= *b).unwrap_or(LATENCY_BOUNDS_US.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    /// Writes `name`'s cumulative buckets, sum and count for `shard`, in seconds.
    fn render(&self, out: &mut String, name: &str, shard: usize) {
        let mut cumulative = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Relaxed);
            let le = LATENCY_BOUNDS_US
                .get(i)
                .map_or("+Inf".to_owned(), |us| format!("{}", *us as f64 / 1e6));
            let _ = writeln!(out, "{name}_bucket{{shard=\"{shard}\",le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_sum{{shard=\"{shard}\"}} {}", self.sum_us.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count{{shard=\"{shard}\"}} {cumulative}");
    }
}

/// Renders every shard's stats, labelled by shard.
pub fn render(all: &[ShardStats], driver: &str) -> String {
    let mut out = String::with_capacity(4096);
    let _ = writeln!(out, "# HELP edge_info Build and runtime facts.\n# TYPE edge_info gauge");
    let _ = writeln!(
        out,
        "edge_info{{version=\"{}\",driver=\"{driver}\",shards=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        all.len()
    );
    let _ = writeln!(
        out,
        "# HELP edge_ring_bytes_evicted_total Messages dropped from rooms' recent rings to keep them within recent_per_room_bytes.\n# TYPE edge_ring_bytes_evicted_total counter\nedge_ring_bytes_evicted_total {}",
        crate::engine::ring::EVICTED_FOR_BYTES.load(Relaxed)
    );
    let rows: Vec<Vec<u64>> = all.iter().map(ShardStats::values).collect();
    for (i, (name, kind, help)) in ShardStats::describe().iter().enumerate() {
        let _ = writeln!(out, "# HELP edge_{name} {}", help.trim());
        let _ = writeln!(out, "# TYPE edge_{name} {kind}");
        for (shard, row) in rows.iter().enumerate() {
            let _ = writeln!(out, "edge_{name}{{shard=\"{shard}\"}} {}", row[i]);
        }
    }
    let name = "edge_delivery_latency_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} From a message's sequencing (on this node) to its write to a member's socket, sampled: one message in flight per connection.\n# TYPE {name} histogram"
    );
    for (shard, s) in all.iter().enumerate() {
        s.delivery_latency.render(&mut out, name, shard);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_metric_per_shard() {
        let stats = [ShardStats::default(), ShardStats::default()];
        ShardStats::add(&stats[1].deliveries_total, 7);
        let text = render(&stats, "io_uring");
        assert!(text.contains("edge_deliveries_total{shard=\"1\"} 7"));
        assert!(text.contains("edge_deliveries_total{shard=\"0\"} 0"));
        assert!(text.contains("# TYPE edge_connections_open gauge"));
        assert!(text.contains("driver=\"io_uring\""));
        stats[0].delivery_latency.observe(40);
        stats[0].delivery_latency.observe(700);
        stats[0].delivery_latency.observe(2_000_000);
        let text = render(&stats, "io_uring");
        for line in [
            "edge_delivery_latency_seconds_bucket{shard=\"0\",le=\"0.00005\"} 1",
            "edge_delivery_latency_seconds_bucket{shard=\"0\",le=\"0.0005\"} 1",
            "edge_delivery_latency_seconds_bucket{shard=\"0\",le=\"0.001\"} 2",
            "edge_delivery_latency_seconds_bucket{shard=\"0\",le=\"1\"} 2",
            "edge_delivery_latency_seconds_bucket{shard=\"0\",le=\"+Inf\"} 3",
            "edge_delivery_latency_seconds_count{shard=\"0\"} 3",
            "edge_delivery_latency_seconds_sum{shard=\"0\"} 2.00074",
            "edge_delivery_latency_seconds_count{shard=\"1\"} 0",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        assert!(text.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))), "{text}");
        let mut text = String::new();
        render_process(&mut text);
        let value = |name: &str| -> f64 {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name}: {text}"));
            line.rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{line}"))
        };
        assert!(value("process_resident_memory_bytes") > 1_000_000.0, "{text}");
        assert!(value("process_open_fds") >= 3.0, "{text}");
        assert!(value("process_cpu_seconds_total") >= 0.0, "{text}");
        let mut text = String::new();
        render_store(&mut text, &storage::StoreStats::default());
        assert!(text.contains("edge_store_write_queue_depth 0"), "{text}");
        assert!(text.contains("edge_store_commit_latency_us{quantile=\"0.99\"} 0"), "{text}");
    }
}
