//! `storebench`: write throughput and commit latency of the embedded store through the real store
//! service, by batch size (`batch_max_messages`).
//!
//! One monoio thread plays a shard: it keeps `window_batches × batch_max` writes in flight, submits with
//! [`storage::StoreHandle::write`], and waits on its [`storage::Completions`] exactly as an edge shard
//! does. Latency is submit → `Written` completion (queueing + group commit + delivery); the store's own
//! `write_batch` duration is reported beside it. Each batch size gets a fresh data directory.
//! Bounded: at most `--messages` per size and `--max-s-per-size` seconds per size.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Parser;
use serde::Serialize;
use storage::embedded::{sqlite_version, EmbeddedOptions, EmbeddedStore};
use storage::{Completion, LatencyHistogram, StoreConfig, StoredMessage};

#[derive(Parser, Debug, Clone)]
#[command(name = "storebench", about = "Embedded store write throughput and commit latency by batch size")]
struct Cli {
    /// Batch sizes (`batch_max_messages`) to measure.
    #[arg(long, value_delimiter = ',', default_values_t = [1_usize, 16, 64, 256, 1024])]
    batch_sizes: Vec<usize>,
    /// Measured messages per batch size (after the warm-up).
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Messages written before measuring, per batch size.
    #[arg(long, default_value_t = 2_000)]
    warmup_messages: u64,
    /// Longest measuring time per batch size, seconds (stops early when reached).
    #[arg(long, default_value_t = 6)]
    max_s_per_size: u64,
    /// Writes kept in flight, in batches of `batch_max_messages`.
    #[arg(long, default_value_t = 2)]
    window_batches: usize,
    /// Group-commit timer, microseconds.
    #[arg(long, default_value_t = 1000)]
    flush_interval_us: u64,
    /// Size of each message frame, bytes.
    #[arg(long, default_value_t = 200)]
    frame_bytes: usize,
    /// Rooms the messages are spread over.
    #[arg(long, default_value_t = 100)]
    rooms: u64,
    /// `synchronous=FULL` (fsync per commit) instead of NORMAL.
    #[arg(long)]
    sync_full: bool,
    /// Parent of the per-size data directories (removed afterwards).
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: PathBuf,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The figures of one batch size.
#[derive(Debug, Serialize)]
struct Row {
    batch_max_messages: usize,
    in_flight: usize,
    messages: u64,
    seconds: f64,
    messages_per_s: f64,
    latency_us_p50: u64,
    latency_us_p99: u64,
    latency_us_max: u64,
    latency_us_mean: u64,
    batches: u64,
    mean_batch_messages: f64,
    commit_us_p50: u64,
    commit_us_p99: u64,
    commit_us_max: u64,
    write_errors: u64,
}

/// A message frame of `size` bytes (at least the JSON envelope).
fn frame(room: &str, seq: u64, size: usize) -> Vec<u8> {
    let mut f = format!(r#"{{"type":"message","room":"{room}","seq":{seq},"from":"bench","text":""#).into_bytes();
    f.resize(size.saturating_sub(2).max(f.len()), b'x');
    f.extend_from_slice(b"\"}");
    f
}

fn message(cli: &Cli, n: u64) -> StoredMessage {
    let room = format!("bench-{}", n % cli.rooms);
    let seq = n / cli.rooms + 1;
    StoredMessage {
        frame: frame(&room, seq, cli.frame_bytes).into(),
        msg_id: storage::MsgId::format(format_args!("m{n}")),
        sender: "bench".into(),
        ts_ms: 1_700_000_000_000 + n,
        client_id: None,
        room: room.into(),
        seq,
        reply_to: None,
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.batch_sizes.is_empty() || cli.rooms == 0 || cli.window_batches == 0 {
        bail!("--batch-sizes, --rooms and --window-batches must not be empty or zero");
    }
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .context("monoio runtime")?;
    let mut rows = Vec::new();
    for &b in &cli.batch_sizes {
        let row = rt.block_on(run_size(&cli, b))?;
        eprintln!("batch {b}: {:.0} msg/s", row.messages_per_s);
        rows.push(row);
    }
    print_table(&cli, &rows);
    if let Some(path) = &cli.json {
        write_json(&cli, &rows, path)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

async fn run_size(cli: &Cli, batch: usize) -> anyhow::Result<Row> {
    let dir = cli.dir.join(format!("storebench-{}-{batch}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let opts = EmbeddedOptions {
        sync_full: cli.sync_full,
        ..EmbeddedOptions::default()
    };
    let store = EmbeddedStore::open(&dir, &opts).context("open the embedded store")?;
    let in_flight = batch * cli.window_batches;
    let cfg = StoreConfig {
        batch_max_messages: batch,
        flush_interval_us: cli.flush_interval_us,
        queue_capacity: in_flight.max(batch).max(1024),
        ..StoreConfig::default()
    };
    let (handle, comps) = storage::spawn(store, &cfg, 1).context("spawn the store service")?;
    let total = cli.warmup_messages + cli.messages;
    let mut submitted_at: Vec<Option<Instant>> = vec![None; total as usize];
    let latency = LatencyHistogram::default();
    let (mut next, mut done, mut pending, mut errors) = (0_u64, 0_u64, 0_usize, 0_u64);
    let mut started: Option<(Instant, u64, u64)> = None; // (time, batches, messages) when the warm-up ended
    let mut deadline = Instant::now() + Duration::from_secs(cli.max_s_per_size + 30);
    while done < total {
        while pending < in_flight && next < total && Instant::now() < deadline {
            if handle.write(0, message(cli, next), next).is_err() {
                break;
            }
            submitted_at[next as usize] = Some(Instant::now());
            next += 1;
            pending += 1;
        }
        if pending == 0 {
            break; // deadline reached and everything answered
        }
        comps[0].ready().await;
        comps[0].drain(usize::MAX, |c| {
            if let Completion::Written { ticket, result } = c {
                pending -= 1;
                done += 1;
                errors += u64::from(result.is_err());
                let at = submitted_at[ticket as usize].take();
                if let (Some(at), true) = (at, ticket >= cli.warmup_messages) {
                    latency.record_us(at.elapsed().as_micros() as u64);
                }
            }
        });
        if started.is_none() && done >= cli.warmup_messages {
            let s = handle.stats().snapshot();
            started = Some((Instant::now(), s.batches_total, s.messages_written_total));
            deadline = Instant::now() + Duration::from_secs(cli.max_s_per_size);
        }
    }
    let (t0, batches0, msgs0) = started.context("warm-up never finished")?;
    let seconds = t0.elapsed().as_secs_f64();
    let s = handle.stats().snapshot();
    handle.shutdown().context("store shutdown")?;
    let _ = std::fs::remove_dir_all(&dir);
    let (batches, messages) = (s.batches_total - batches0, s.messages_written_total - msgs0);
    Ok(Row {
        batch_max_messages: batch,
        in_flight,
        messages,
        seconds,
        messages_per_s: messages as f64 / seconds,
        latency_us_p50: latency.p50_us(),
        latency_us_p99: latency.p99_us(),
        latency_us_max: latency.max_us(),
        latency_us_mean: latency.mean_us(),
        batches,
        mean_batch_messages: messages as f64 / batches.max(1) as f64,
        commit_us_p50: s.commit_p50_us,
        commit_us_p99: s.commit_p99_us,
        commit_us_max: s.commit_max_us,
        write_errors: errors,
    })
}

fn print_table(cli: &Cli, rows: &[Row]) {
    let sync = if cli.sync_full { "FULL" } else { "NORMAL" };
    println!(
        "embedded store (SQLite {}, WAL, synchronous={sync}), {} B frames, {} rooms, {} batches in flight",
        sqlite_version(),
        cli.frame_bytes,
        cli.rooms,
        cli.window_batches
    );
    println!(
        "{:>9} {:>9} {:>11} {:>11} {:>11} {:>11} {:>9} {:>10} {:>11} {:>11}",
        "batch_max", "messages", "msg/s", "lat p50 µs", "lat p99 µs", "lat max µs", "batches", "mean batch", "commit p50", "commit p99"
    );
    for r in rows {
        println!(
            "{:>9} {:>9} {:>11.0} {:>11} {:>11} {:>11} {:>9} {:>10.1} {:>11} {:>11}",
            r.batch_max_messages,
            r.messages,
            r.messages_per_s,
            r.latency_us_p50,
            r.latency_us_p99,
            r.latency_us_max,
            r.batches,
            r.mean_batch_messages,
            r.commit_us_p50,
            r.commit_us_p99
        );
    }
    println!("latency = submit → Written completion; commit = one write_batch (SQLite transaction) on the store thread");
}

fn write_json(cli: &Cli, rows: &[Row], path: &PathBuf) -> anyhow::Result<()> {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let unix_s = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let doc = serde_json::json!({
        "tool": "storebench",
        "scenario": "store-embedded-write",
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "unix_time_s": unix_s,
        "machine": { "cores": cores, "kernel": kernel },
        "store": { "backend": "embedded", "sqlite": sqlite_version(), "journal_mode": "WAL",
                   "synchronous": if cli.sync_full { "FULL" } else { "NORMAL" } },
        "params": {
            "frame_bytes": cli.frame_bytes, "rooms": cli.rooms, "window_batches": cli.window_batches,
            "flush_interval_us": cli.flush_interval_us, "messages_per_size": cli.messages,
            "warmup_messages": cli.warmup_messages, "max_s_per_size": cli.max_s_per_size,
        },
        "latency": "submit -> Written completion, microseconds; commit = write_batch duration on the store thread",
        "results": rows,
    });
    std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n").with_context(|| format!("write {}", path.display()))
}
