//! `loadgen storm`: hold N connections in rooms with live traffic, then make
//! them all reconnect at once, and measure how the server comes back.
//!
//! Triggers: `drop` (loadgen drops every client socket at the same instant)
//! or `server` (clients wait for the server to close them: a drain with
//! `reconnect`, a restart, a crash; restart the edge meanwhile).
//! Reconnects use full-jitter exponential backoff ([`crate::backoff`]) with
//! the server's `retry_ms` as a floor, and rejoin with `since` so nothing is
//! missed. One stable sender per room (not part of the storm) keeps messages
//! flowing throughout, and every client accounts for every seq across the
//! storm: messages lost across it must be 0.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::fanout::render_send;
use super::{kind, retry_hint, run_tag, Dialer, Outcomes};
use crate::backoff::Backoff;
use crate::conn::{self, Conn, In};
use crate::msg;
use crate::output;
use crate::runner::{self, Counters, Shared, Signal};
use crate::seq::SeqTracker;
use crate::ws::OP_TEXT;
use crate::Common;

mod report;
use report::report;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Trigger {
    /// loadgen drops every client socket at once.
    Drop,
    /// Wait for the server to close the connections (drain, restart, crash).
    Server,
}

#[derive(Args, Debug, Clone)]
pub struct StormArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections in the storm.
    #[arg(long, default_value_t = 10_000)]
    pub conns: usize,
    /// Rooms the connections are spread over (one stable sender each).
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// Messages per second sent into each room throughout.
    #[arg(long, default_value_t = 2.0)]
    pub rate_per_room: f64,
    /// What makes the connections reconnect.
    #[arg(long, value_enum, default_value_t = Trigger::Drop)]
    pub trigger: Trigger,
    /// Seconds to hold all connections before the storm (trigger `drop`).
    #[arg(long, default_value_t = 2)]
    pub hold_s: u64,
    /// Give up waiting for the storm to settle after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub storm_timeout_s: u64,
    /// Backoff window of the first retry; it doubles per attempt.
    #[arg(long, default_value_t = 100)]
    pub backoff_base_ms: u64,
    /// Largest backoff window.
    #[arg(long, default_value_t = 10_000)]
    pub backoff_cap_ms: u64,
}

/// What one core brings back.
#[derive(Default)]
struct CoreOut {
    trackers: Vec<(usize, SeqTracker)>,
    last_acked: HashMap<usize, u64>,
    initial: Outcomes,
    storm: Outcomes,
    /// Per client: ns from the storm to its reconnect / to being caught up.
    reconnect_ns: Vec<u64>,
    caught_up_ns: Vec<u64>,
    not_recovered: u64,
    first_close_ns: Option<u64>,
    storm_start_ns: u64,
    sender_errors: Outcomes,
}

/// One core's shared state.
struct Ctx {
    a: StormArgs,
    dialer: Dialer,
    tag: String,
    shared: Arc<Shared>,
    core: usize,
    storm: Signal,
    /// Senders stop first, so every acked message can still reach the clients.
    stop_senders: Signal,
    /// Then the clients stop reading.
    stop: Signal,
    storm_start_ns: std::cell::Cell<u64>,
    /// Clients of this core whose first connection is settled (joined or given up).
    settled: std::cell::Cell<usize>,
    out: RefCell<CoreOut>,
    backoff: Backoff,
}

pub fn run(a: StormArgs) -> anyhow::Result<bool> {
    anyhow::ensure!(a.conns > 0 && a.rooms > 0, "--conns and --rooms must be at least 1");
    anyhow::ensure!(a.rooms <= a.conns, "--rooms ({}) must not exceed --conns ({})", a.rooms, a.conns);
    anyhow::ensure!(
        a.rate_per_room.is_finite() && a.rate_per_room > 0.0,
        "--rate-per-room must be a positive number"
    );
    anyhow::ensure!(
        a.backoff_base_ms > 0 && a.backoff_cap_ms >= a.backoff_base_ms,
        "--backoff-cap-ms must be >= --backoff-base-ms > 0"
    );
    let dialer = Dialer::new(&a.common)?;
    runner::check_fd_budget(a.conns + a.rooms)?;
    let cpus = a.common.cpus()?;
    let driver = output::server_driver(dialer.first_addr());
    let shared = Shared::new(cpus.len());
    let tag = run_tag();
    let storm_at: Arc<Mutex<u64>> = Arc::default();
    let body = {
        let (shared, a, storm_at) = (shared.clone(), a.clone(), storm_at.clone());
        move |core: usize| {
            let ctx = Rc::new(Ctx {
                a: a.clone(),
                dialer: dialer.clone(),
                tag: tag.clone(),
                shared: shared.clone(),
                core,
                storm: Signal::default(),
                stop_senders: Signal::default(),
                stop: Signal::default(),
                storm_start_ns: std::cell::Cell::new(0),
                settled: std::cell::Cell::new(0),
                out: RefCell::default(),
                backoff: Backoff {
                    base_ms: a.backoff_base_ms,
                    cap_ms: a.backoff_cap_ms,
                },
            });
            let storm_at = storm_at.clone();
            async move { run_core(ctx, &storm_at).await }
        }
    };
    let progress = {
        let s = shared.clone();
        move || {
            format!(
                "connected {} failed attempts {} dropped {} delivered {}",
                s.total(|c| &c.connected),
                s.total(|c| &c.connect_errors),
                s.total(|c| &c.closed),
                s.total(|c| &c.delivered)
            )
        }
    };
    let cores = runner::run_cores(&cpus, body, progress)?;
    report(&a, cores, driver, &cpus)
}

async fn run_core(ctx: Rc<Ctx>, storm_at: &Mutex<u64>) -> anyhow::Result<CoreOut> {
    let (a, shared, core) = (&ctx.a, &ctx.shared, ctx.core);
    let cores = shared.cores.len();
    let mut senders = Vec::new();
    for room in (core..a.rooms).step_by(cores) {
        senders.push(glommio::spawn_local(sender(ctx.clone(), room)));
    }
    let mut clients = Vec::new();
    let gate = Rc::new(glommio::sync::Semaphore::new(a.common.concurrency as u64));
    for i in (core..a.conns).step_by(cores) {
        clients.push(glommio::spawn_local(client(ctx.clone(), i, i % a.rooms, gate.clone())));
    }
    while ctx.settled.get() < clients.len() {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    shared.barrier(1).await; // everyone connected and joined (or given up)
    if let Trigger::Drop = a.trigger {
        if core == 0 {
            glommio::timer::sleep(Duration::from_secs(a.hold_s)).await;
            *storm_at.lock().map_err(|_| anyhow::anyhow!("poisoned"))? = runner::now_ns();
            shared.measuring.store(true, Relaxed);
        }
        Shared::until(&shared.measuring, Duration::from_millis(1)).await;
        ctx.storm_start_ns.set(*storm_at.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
        ctx.storm.notify();
    }
    let deadline = runner::now_ns() + a.storm_timeout_s * 1_000_000_000;
    let mine = clients.len();
    while runner::now_ns() < deadline && ctx.out.borrow().caught_up_ns.len() < mine {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    shared.barrier(2).await; // the storm settled everywhere (or timed out)
    glommio::timer::sleep(Duration::from_secs(1)).await; // traffic after the storm
    ctx.stop_senders.notify();
    for s in senders {
        s.await; // each waits for its last acks
    }
    shared.barrier(3).await; // all senders everywhere are done
    glommio::timer::sleep(Duration::from_millis(500)).await; // last deliveries
    ctx.stop.notify();
    for c in clients {
        if let Some(t) = c.await {
            ctx.out.borrow_mut().trackers.push(t);
        }
    }
    shared.barrier(4).await;
    let mut out = std::mem::take(&mut *ctx.out.borrow_mut());
    out.storm_start_ns = ctx.storm_start_ns.get();
    Ok(out)
}

/// Why a connection's read loop ended.
enum End {
    Storm,
    Stop,
    Closed(Option<u64>),
}

/// One storm client: connect, join, hold; on the storm reconnect and rejoin
/// with `since`; runs until stop and returns its room's tally.
async fn client(ctx: Rc<Ctx>, i: usize, room: usize, gate: Rc<glommio::sync::Semaphore>) -> Option<(usize, SeqTracker)> {
    let name = format!("lg{}-{room}", ctx.tag);
    let user = format!("lg{}-u{i}", ctx.tag);
    let mut t = SeqTracker::default();
    let mut in_storm = false;
    let mut marks = Marks::default();
    let mut hint = None;
    loop {
        let conn = if in_storm {
            // The herd: storm reconnects are not throttled by loadgen.
            reconnect(&ctx, i, &user, true, hint).await
        } else {
            let _permit = gate.acquire_permit(1).await.ok()?;
            reconnect(&ctx, i, &user, false, hint).await
        };
        let Some(mut c) = conn else {
            marks.settle(&ctx);
            ctx.out.borrow_mut().not_recovered += u64::from(in_storm);
            return Some((room, t));
        };
        if in_storm && !marks.reconnected {
            marks.reconnected = true;
            ctx.out
                .borrow_mut()
                .reconnect_ns
                .push(runner::now_ns().saturating_sub(ctx.storm_start_ns.get()));
        }
        let end = pump(&ctx, &mut c, &name, &mut t, in_storm, &mut marks).await;
        Counters::add(&ctx.shared.cores[ctx.core].closed, 1);
        match end {
            End::Stop => return Some((room, t)),
            End::Storm => {
                marks.settle(&ctx);
                drop(c); // the storm: every socket is dropped at this instant
                in_storm = true;
                hint = None;
            }
            End::Closed(h) => {
                marks.settle(&ctx);
                if !in_storm {
                    in_storm = true;
                    let now = runner::now_ns();
                    let mut out = ctx.out.borrow_mut();
                    if out.first_close_ns.is_none_or(|f| now < f) {
                        out.first_close_ns = Some(now);
                    }
                    if ctx.storm_start_ns.get() == 0 {
                        ctx.storm_start_ns.set(now);
                    }
                }
                hint = h;
            }
        }
    }
}

/// What a storm client has reached since the storm began (each counted once).
#[derive(Default)]
struct Marks {
    settled: bool,
    reconnected: bool,
    caught_up: bool,
}

impl Marks {
    /// Counts this client's first connection as settled, once.
    fn settle(&mut self, ctx: &Ctx) {
        if !self.settled {
            self.settled = true;
            ctx.settled.set(ctx.settled.get() + 1);
        }
    }
}

/// Connects with backoff; `None` once the storm timeout passed or stop came.
async fn reconnect(ctx: &Ctx, i: usize, user: &str, in_storm: bool, mut hint: Option<u64>) -> Option<Conn> {
    let deadline = runner::now_ns() + ctx.a.storm_timeout_s * 1_000_000_000;
    let mut attempt = 0u32;
    loop {
        if hint.is_some() || attempt > 0 {
            let delay = ctx.backoff.delay_ms(attempt.saturating_sub(1), rand::random::<f64>(), hint);
            glommio::timer::sleep(Duration::from_millis(delay)).await;
        }
        if runner::now_ns() > deadline || ctx.stop.generation() > 0 {
            return None;
        }
        // No `?room=`: that joins without `since`; the client joins with
        // `since` itself once connected.
        // Storm reconnects dial from the source addresses after the initial
        // ones, so the dropped sockets' TIME_WAIT ports are not in the way.
        let index = if in_storm { i + ctx.a.conns + ctx.a.rooms } else { i };
        let r = ctx.dialer.dial(index, user, None).await;
        let counters = &ctx.shared.cores[ctx.core];
        let mut out = ctx.out.borrow_mut();
        let outcomes = if in_storm { &mut out.storm } else { &mut out.initial };
        match r {
            Ok(c) => {
                outcomes.add("101", 1);
                if !in_storm {
                    Counters::add(&counters.connected, 1);
                }
                return Some(c);
            }
            Err(e) => {
                outcomes.add(kind(&e), 1);
                Counters::add(&counters.connect_errors, 1);
                hint = retry_hint(&e);
                attempt += 1;
            }
        }
    }
}

/// Reads a client's frames into its tracker until the storm, stop, or close.
async fn pump(ctx: &Ctx, c: &mut Conn, room: &str, t: &mut SeqTracker, in_storm: bool, marks: &mut Marks) -> End {
    let mut target: Option<u64> = None;
    let mut retry = None;
    let mut joined = false;
    let mut join_attempt = 0u32;
    if send_join(c, room, t).await.is_err() {
        return End::Closed(None);
    }
    let counters = &ctx.shared.cores[ctx.core];
    loop {
        let interrupt = async {
            if in_storm {
                ctx.stop.changed(0).await;
                End::Stop
            } else {
                futures_lite::future::or(
                    async {
                        ctx.storm.changed(0).await;
                        End::Storm
                    },
                    async {
                        ctx.stop.changed(0).await;
                        End::Stop
                    },
                )
                .await
            }
        };
        let read = async { Ok::<_, End>(c.reader.next(&c.writer).await) };
        let frame = match futures_lite::future::or(read, async { Err(interrupt.await) }).await {
            Ok(f) => f,
            Err(end) => return end,
        };
        match frame {
            Ok(Some(In::Text(txt))) => match msg::str_field(txt, "type") {
                Some(b"message") => {
                    if let Some(seq) = msg::u64_field(txt, "seq") {
                        t.receive(seq);
                        Counters::add(&counters.delivered, 1);
                    }
                }
                Some(b"joined") => {
                    joined = true;
                    let seq = msg::u64_field(txt, "seq").unwrap_or(0);
                    t.begin(seq);
                    target = Some(seq);
                    marks.settle(ctx);
                }
                Some(b"gap") => t.gap(msg::u64_field(txt, "from").unwrap_or(0), msg::u64_field(txt, "to").unwrap_or(0)),
                Some(b"reconnect") => retry = msg::u64_field(txt, "retry_ms"),
                Some(b"error") if !joined => {
                    // The join was refused (e.g. `overloaded` while the server
                    // is busy): count it, wait as told, and join again.
                    let code = String::from_utf8_lossy(msg::str_field(txt, "code").unwrap_or(b"unknown")).into_owned();
                    let hint = msg::u64_field(txt, "retry_ms");
                    {
                        let mut out = ctx.out.borrow_mut();
                        let o = if in_storm { &mut out.storm } else { &mut out.initial };
                        o.add(format!("join_{code}"), 1);
                    }
                    let delay = ctx.backoff.delay_ms(join_attempt, rand::random::<f64>(), hint);
                    join_attempt += 1;
                    glommio::timer::sleep(Duration::from_millis(delay)).await;
                    if send_join(c, room, t).await.is_err() {
                        return End::Closed(None);
                    }
                }
                _ => {}
            },
            Ok(Some(In::Close(_, reason))) => return End::Closed(retry.or_else(|| conn::retry_hint(&reason))),
            Ok(None) | Err(_) => return End::Closed(retry),
        }
        if let Some(s) = target {
            if t.caught_up(s) {
                target = None;
                if in_storm && !marks.caught_up {
                    marks.caught_up = true;
                    let since_storm = runner::now_ns().saturating_sub(ctx.storm_start_ns.get());
                    ctx.out.borrow_mut().caught_up_ns.push(since_storm);
                }
            }
        }
    }
}

/// Joins `room`, asking for everything after what the tracker has (`since`)
/// once it has a starting point.
async fn send_join(c: &Conn, room: &str, t: &SeqTracker) -> std::io::Result<()> {
    let join = if t.started() {
        format!(r#"{{"type":"join","room":"{room}","since":{}}}"#, t.since())
    } else {
        format!(r#"{{"type":"join","room":"{room}"}}"#)
    };
    conn::send(&c.writer, OP_TEXT, join.as_bytes()).await
}

/// The stable sender of one room: its own connection, not part of the storm.
async fn sender(ctx: Rc<Ctx>, room: usize) {
    let name = format!("lg{}-{room}", ctx.tag);
    let index = ctx.a.conns + room;
    let c = match ctx.dialer.dial(index, &format!("lg{}-s{room}", ctx.tag), None).await {
        Ok(c) => c,
        Err(e) => {
            ctx.out.borrow_mut().sender_errors.add(kind(&e), 1);
            return;
        }
    };
    let Conn { mut reader, writer } = c;
    let join = format!(r#"{{"type":"join","room":"{name}"}}"#);
    if conn::send(&writer, OP_TEXT, join.as_bytes()).await.is_err() {
        ctx.out.borrow_mut().sender_errors.add("send_failed", 1);
        return;
    }
    // Sends answered (ack or error), to wait for the last ones at the end.
    let answered = Rc::new(std::cell::Cell::new(0u64));
    let acks = {
        let (ctx, writer, answered) = (ctx.clone(), writer.clone(), answered.clone());
        glommio::spawn_local(async move {
            while let Ok(Some(f)) = reader.next(&writer).await {
                if let In::Text(t) = f {
                    let ty = msg::str_field(t, "type");
                    if ty == Some(b"ack") || ty == Some(b"error") {
                        answered.set(answered.get() + 1);
                    }
                    if ty == Some(b"ack") {
                        let seq = msg::u64_field(t, "seq").unwrap_or(0);
                        let mut out = ctx.out.borrow_mut();
                        let e = out.last_acked.entry(room).or_default();
                        *e = (*e).max(seq);
                    } else if msg::str_field(t, "type") == Some(b"error") {
                        let code = String::from_utf8_lossy(msg::str_field(t, "code").unwrap_or(b"unknown")).into_owned();
                        ctx.out.borrow_mut().sender_errors.add(format!("error_{code}"), 1);
                    }
                }
            }
        })
    };
    let interval_ns = (1e9 / ctx.a.rate_per_room) as u64;
    let start = runner::now_ns() + rand::random::<u64>() % interval_ns.max(1);
    let mut frame = Vec::new();
    let mut k = 0;
    while ctx.stop_senders.generation() == 0 {
        let due = start + k * interval_ns;
        let now = runner::now_ns();
        if due > now {
            futures_lite::future::or(glommio::timer::sleep(Duration::from_nanos(due - now)), ctx.stop_senders.changed(0)).await;
            continue;
        }
        frame.clear();
        render_send(&mut frame, &name, due, 32);
        if conn::send(&writer, OP_TEXT, &frame).await.is_err() {
            ctx.out.borrow_mut().sender_errors.add("send_failed", 1);
            break;
        }
        Counters::add(&ctx.shared.cores[ctx.core].sent, 1);
        k += 1;
    }
    let deadline = runner::now_ns() + 5_000_000_000;
    while answered.get() < k && runner::now_ns() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await; // last acks
    }
    drop(acks);
    conn::close(&writer).await;
}
