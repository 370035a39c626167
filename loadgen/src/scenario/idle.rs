//! `loadgen idle`: open N connections, hold them, and read what they cost
//! the server.
//!
//! Every connection is a real upgrade with its own token, counted open only
//! once its `welcome` arrived. Held connections answer pings; one that the
//! server closes during the hold is counted. With `--server-pid`, the
//! server's RSS is read before the first connection and after all are open
//! (after `--settle-s`), giving bytes per connection.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use super::{histogram, kind, run_tag, Dialer, Outcomes};
use crate::conn::{Conn, In};
use crate::output::{self, obj};
use crate::runner::{self, Counters, Shared};
use crate::Common;

#[derive(Args, Debug)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections to open and hold.
    #[arg(long, default_value_t = 10_000)]
    pub conns: usize,
    /// Seconds to wait after the last connection before reading the server's RSS.
    #[arg(long, default_value_t = 2)]
    pub settle_s: u64,
}

struct CoreResult {
    open: u64,
    outcomes: Outcomes,
    connect_us: hdrhistogram::Histogram<u64>,
    last_open_ns: u64,
    closed_during_hold: u64,
}

pub fn run(a: IdleArgs) -> anyhow::Result<bool> {
    anyhow::ensure!(a.conns > 0, "--conns must be at least 1");
    let dialer = Dialer::new(&a.common)?;
    runner::check_fd_budget(a.conns)?;
    let cpus = a.common.cpus()?;
    let driver = output::server_driver(dialer.first_addr());
    let shared = Shared::new(cpus.len());
    let rss_before = a.common.server_pid.map(output::rss_kib).transpose()?;
    let rss_after: Arc<Mutex<Option<u64>>> = Arc::default();
    let tag = run_tag();
    let started = Instant::now();
    let t0 = runner::now_ns();
    let (conns, conc, settle, hold, pid) = (a.conns, a.common.concurrency, a.settle_s, a.common.duration_s, a.common.server_pid);
    let body = {
        let (shared, rss_after, dialer) = (shared.clone(), rss_after.clone(), dialer.clone());
        move |core: usize| {
            let (shared, rss_after, dialer, tag) = (shared.clone(), rss_after.clone(), dialer.clone(), tag.clone());
            async move {
                let r = open_all(core, conns, conc, &dialer, &tag, &shared).await;
                shared.barrier(1).await;
                if core == 0 {
                    glommio::timer::sleep(Duration::from_secs(settle)).await;
                    *rss_after.lock().map_err(|_| anyhow::anyhow!("poisoned"))? = pid.map(output::rss_kib).transpose()?;
                }
                glommio::timer::sleep(Duration::from_secs(settle + hold)).await;
                let closed = shared.cores[core].closed.load(Relaxed);
                Ok(CoreResult {
                    closed_during_hold: closed,
                    ..r
                })
            }
        }
    };
    let progress = {
        let s = shared.clone();
        move || {
            format!(
                "open {} errors {} closed {}",
                s.total(|c| &c.connected),
                s.total(|c| &c.connect_errors),
                s.total(|c| &c.closed)
            )
        }
    };
    let results = runner::run_cores(&cpus, body, progress)?;
    let wall_s = started.elapsed().as_secs_f64();
    let mut outcomes = Outcomes::default();
    let mut connect_us = histogram();
    let (mut open, mut closed, mut last_ns) = (0, 0, t0);
    for r in &results {
        open += r.open;
        closed += r.closed_during_hold;
        last_ns = last_ns.max(r.last_open_ns);
        outcomes.merge(&r.outcomes);
        connect_us.add(&r.connect_us).map_err(|e| anyhow::anyhow!("histogram merge: {e}"))?;
    }
    let connect_s = (last_ns - t0) as f64 / 1e9;
    let rss_after = *rss_after.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let per_conn = match (rss_before, rss_after) {
        (Some(b), Some(r)) if open > 0 => Some(r.saturating_sub(b) as f64 * 1024.0 / open as f64),
        _ => None,
    };
    let errors = outcomes.total_except("101");
    let results_json = obj(vec![
        ("conns", json!(a.conns)),
        ("open", json!(open)),
        ("errors", json!(errors)),
        ("outcomes", outcomes.to_json()),
        ("connect_s", json!(connect_s)),
        ("connects_per_s", json!(open as f64 / connect_s.max(1e-9))),
        ("connect_latency_ms", output::latency_ms(&connect_us)),
        ("closed_during_hold", json!(closed)),
        ("server_rss_kib_before", json!(rss_before)),
        ("server_rss_kib_after", json!(rss_after)),
        ("server_rss_bytes_per_conn", json!(per_conn)),
        ("wall_s", json!(wall_s)),
    ]);
    let mut rows = vec![
        ("connections open".into(), format!("{open} of {}", a.conns)),
        (
            "time to open all".into(),
            format!("{connect_s:.2} s ({:.0}/s)", open as f64 / connect_s.max(1e-9)),
        ),
        ("outcomes".into(), outcomes.describe()),
        (
            "connect latency".into(),
            format!(
                "p50 {:.2} ms, p99 {:.2} ms",
                connect_us.value_at_quantile(0.5) as f64 / 1e3,
                connect_us.value_at_quantile(0.99) as f64 / 1e3
            ),
        ),
        ("closed by server during hold".into(), closed.to_string()),
    ];
    if let (Some(b), Some(r), Some(p)) = (rss_before, rss_after, per_conn) {
        rows.push(("server RSS".into(), format!("{b} KiB -> {r} KiB = {p:.0} bytes per connection")));
    }
    output::print_table(&format!("idle: {} connections over {} core(s)", a.conns, cpus.len()), &rows);
    let params = json!({"conns": a.conns, "settle_s": a.settle_s, "hold_s": a.common.duration_s, "concurrency_per_core": a.common.concurrency, "urls": a.common.urls});
    output::write_json(
        a.common.json.as_deref(),
        &output::envelope("idle", params, results_json, (driver, a.common.server_cpus.clone()), &cpus),
    )?;
    Ok(errors == 0 && closed == 0)
}

/// Opens this core's share of the connections with `conc` attempts in flight.
async fn open_all(core: usize, conns: usize, conc: usize, dialer: &Dialer, tag: &str, shared: &Arc<Shared>) -> CoreResult {
    let cores = shared.cores.len();
    let mine: Vec<usize> = (core..conns).step_by(cores).collect();
    let next = Rc::new(Cell::new(0usize));
    let result = Rc::new(RefCell::new(CoreResult {
        open: 0,
        outcomes: Outcomes::default(),
        connect_us: histogram(),
        last_open_ns: 0,
        closed_during_hold: 0,
    }));
    let mut workers = Vec::new();
    for _ in 0..conc.min(mine.len()).max(1) {
        let (next, result, mine, dialer, tag, shared) = (
            next.clone(),
            result.clone(),
            mine.clone(),
            dialer.clone(),
            tag.to_owned(),
            shared.clone(),
        );
        workers.push(glommio::spawn_local(async move {
            let counters = &shared.cores[core];
            while next.get() < mine.len() {
                let i = mine[next.get()];
                next.set(next.get() + 1);
                let begun = runner::now_ns();
                match dialer.dial(i, &format!("lg{tag}-{i}"), None).await {
                    Ok(c) => {
                        let now = runner::now_ns();
                        let mut r = result.borrow_mut();
                        r.open += 1;
                        r.outcomes.add("101", 1);
                        let _ = r.connect_us.record((now - begun) / 1000);
                        r.last_open_ns = r.last_open_ns.max(now);
                        Counters::add(&counters.connected, 1);
                        glommio::spawn_local(hold(c, shared.clone(), core)).detach();
                    }
                    Err(e) => {
                        result.borrow_mut().outcomes.add(kind(&e), 1);
                        Counters::add(&counters.connect_errors, 1);
                    }
                }
            }
        }));
    }
    for w in workers {
        w.await;
    }
    Rc::try_unwrap(result).map(RefCell::into_inner).unwrap_or_else(|rc| {
        // All workers are done, so nobody else holds the Rc; copy out defensively anyway.
        let r = rc.borrow();
        CoreResult {
            open: r.open,
            outcomes: r.outcomes.clone(),
            connect_us: r.connect_us.clone(),
            last_open_ns: r.last_open_ns,
            closed_during_hold: 0,
        }
    })
}

/// Holds a connection open, answering pings, until the server closes it.
async fn hold(mut c: Conn, shared: Arc<Shared>, core: usize) {
    while let Ok(Some(In::Text(_))) = c.reader.next(&c.writer).await {}
    Counters::add(&shared.cores[core].closed, 1);
}
