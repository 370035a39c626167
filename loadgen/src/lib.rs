//! `loadgen`: the companion load generator of the edge. It opens real
//! WebSocket connections over real sockets, one glommio (io_uring) executor
//! per CPU, and checks what it measures: every delivery is accounted for by
//! its room's `seq` (lost, duplicated, out of order), and a run with
//! correctness errors exits non-zero.
//!
//! - `idle`: open and hold N connections; connect rate, errors, server RSS per connection.
//! - `fanout`: rooms × members with paced senders; deliveries/s, send→deliver latency, correctness.
//! - `storm`: hold N connections, drop them all at once (or wait for a server
//!   restart), reconnect with full-jitter backoff honouring `retry_ms`;
//!   time to recover, accept rate, outcomes, messages lost across the storm.
//! - `typing`, `inbox`: CPU per typing event delivered; `sync` latency for a user in many rooms.
//! - `churn`: clients cycling connect, join (pool and fresh rooms), send, leave, close,
//!   reconnect, with periodic storms; every refusal or wrong answer counted (`scripts/soak.sh`).
//! - `compare A.json B.json`: the ratios of two runs' figures.
//! - `report`: regenerate results/README.md and the latency plot from results/*.json.

pub mod backoff;
pub mod conn;
pub mod msg;
pub mod output;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod seq;
pub mod ws;

use std::net::Ipv4Addr;
use std::path::PathBuf;

use clap::Args;

/// Options every scenario takes.
#[derive(Args, Clone, Debug)]
pub struct Common {
    /// Edge WebSocket URL; repeat to spread clients over several edges.
    #[arg(long = "url", default_value = "ws://127.0.0.1:8080/ws")]
    pub urls: Vec<String>,
    /// The edge's HS256 secret (loadgen mints its own tokens).
    #[arg(long, env = "EDGE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,
    /// Seconds of the measured (or held) phase.
    #[arg(long, default_value_t = 10)]
    pub duration_s: u64,
    /// Write the run's figures as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// CPUs to run loadgen's executors on, e.g. `1` or `0,1` (default: all).
    #[arg(long, value_delimiter = ',')]
    pub cpus: Vec<usize>,
    /// Server pid: read its RSS and CPU time from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// First loopback source address; every 10,000 connections move to the next one.
    /// `none` lets the kernel choose (limits one process to ~28k connections per edge).
    #[arg(long, default_value = "127.0.0.1")]
    pub first_source: String,
    /// Connection attempts in flight at once, per core.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Where the server runs, recorded in the JSON (e.g. `0` when it was pinned with `taskset -c 0`).
    #[arg(long)]
    pub server_cpus: Option<String>,
    /// Give up on one connection attempt (connect, upgrade, welcome) after this long.
    #[arg(long, default_value_t = 10_000)]
    pub connect_timeout_ms: u64,
}

impl Common {
    pub fn targets(&self) -> anyhow::Result<Vec<conn::Target>> {
        anyhow::ensure!(!self.urls.is_empty(), "--url: give at least one");
        self.urls
            .iter()
            .map(|u| conn::Target::parse(u).map_err(anyhow::Error::msg))
            .collect()
    }

    pub fn first_source(&self) -> anyhow::Result<Option<Ipv4Addr>> {
        if self.first_source == "none" {
            return Ok(None);
        }
        self.first_source
            .parse()
            .map(Some)
            .map_err(|_| anyhow::anyhow!("--first-source {}: not an IPv4 address (or `none`)", self.first_source))
    }

    pub fn cpus(&self) -> anyhow::Result<Vec<usize>> {
        let n = output::online_cpus();
        if self.cpus.is_empty() {
            return Ok((0..n).collect());
        }
        if let Some(bad) = self.cpus.iter().find(|&&c| c >= n) {
            anyhow::bail!("--cpus: CPU {bad} does not exist (this machine has {n})");
        }
        Ok(self.cpus.clone())
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.concurrency > 0, "--concurrency must be at least 1");
        anyhow::ensure!(self.connect_timeout_ms > 0, "--connect-timeout-ms must be at least 1");
        anyhow::ensure!(self.duration_s > 0, "--duration-s must be at least 1");
        self.targets()?;
        self.first_source()?;
        self.cpus()?;
        Ok(())
    }
}
