//! `loadgen churn`: connection and membership churn for soak runs.
//!
//! For `--duration-s`, `--clients` clients each loop: connect, join a few
//! rooms (`--pool-joins` from a fixed pool of `--pool-rooms`, plus one
//! fresh `soak-<tag>-<n>` room: `--fresh-rooms-per-s` new names a second,
//! and for `--revisit-pct` of the sessions a name `--revisit-age-s` old
//! instead, so rooms are created, left empty, dropped by the edge and come
//! back from the store), send `--msgs-per-room` messages to
//! each and check their acks, hold, leave, close (close frame 1000, echo
//! awaited), pause, reconnect. Every `--storm-every-s` a storm drops
//! `--storm-pct` % of the connected clients at once (no leave, no close
//! frame) and they reconnect at once.
//!
//! Requests go one at a time, `--frame-gap-ms` apart, under the edge's
//! per-connection rate. Every refusal, timeout, unexpected close and wrong
//! answer is counted by kind (`join_error_rate_limited`, `send_timeout`,
//! ...), and a run with any exits 1. One correctness check crosses
//! connections: a `joined` seq below a seq already acked in that room (on
//! this core, before the join was sent) is `seq_went_back` (a room's state
//! lost when it was dropped and loaded again).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use futures_lite::future::or;

use super::{kind, retry_hint, run_tag, Dialer};
use crate::backoff::Backoff;
use crate::conn::{self, Conn, In};
use crate::msg;
use crate::output;
use crate::runner::{self, Counters, Shared, Signal, CONNS_PER_SOURCE};
use crate::ws::{OP_CLOSE, OP_TEXT};
use crate::Common;

mod report;
use report::{report, Tally};

#[derive(Args, Debug, Clone)]
pub struct ChurnArgs {
    #[command(flatten)]
    pub common: Common,
    /// Clients cycling through sessions at once (each holds at most one connection).
    #[arg(long, default_value_t = 400)]
    pub clients: usize,
    /// Rooms in the fixed pool, reused by every session.
    #[arg(long, default_value_t = 50)]
    pub pool_rooms: usize,
    /// Pool rooms each session joins.
    #[arg(long, default_value_t = 2)]
    pub pool_joins: usize,
    /// New room names a second; each session joins one of the current second's (0: none).
    #[arg(long, default_value_t = 10.0)]
    pub fresh_rooms_per_s: f64,
    /// Percentage of sessions whose fresh room is an older name instead (none before one is old enough).
    #[arg(long, default_value_t = 10)]
    pub revisit_pct: u8,
    /// A revisited name was new this many seconds ago, or up to `--revisit-band-s` more: make it
    /// longer than the edge's `room_idle_evict_ms`, so the room comes back from the store. A
    /// fixed age band keeps the rooms held steady over a long run.
    #[arg(long, default_value_t = 310)]
    pub revisit_age_s: u64,
    /// Width of the band of ages revisited, in seconds.
    #[arg(long, default_value_t = 60)]
    pub revisit_band_s: u64,
    /// Messages sent to each joined room per session (each waits for its ack).
    #[arg(long, default_value_t = 1)]
    pub msgs_per_room: usize,
    /// A session stays joined up to this long (uniform) before it leaves.
    #[arg(long, default_value_t = 3000)]
    pub hold_ms: u64,
    /// Pause up to this long (uniform) between a disconnect and the next connect.
    #[arg(long, default_value_t = 1000)]
    pub pause_ms: u64,
    /// Gap before each request of a connection, keeping it under the edge's rate.
    #[arg(long, default_value_t = 25)]
    pub frame_gap_ms: u64,
    /// Seconds between storms (0: none).
    #[arg(long, default_value_t = 60)]
    pub storm_every_s: u64,
    /// Percentage of clients a storm drops at once (those connected then).
    #[arg(long, default_value_t = 50)]
    pub storm_pct: u8,
    /// Give up on one request (or on the close echo) after this long: counted as an error.
    #[arg(long, default_value_t = 10_000)]
    pub request_timeout_ms: u64,
    /// Loopback source addresses a client rotates over from one connection to the next.
    #[arg(long, default_value_t = 4)]
    pub sources: usize,
}

/// One core's state.
struct Ctx {
    a: ChurnArgs,
    dialer: Dialer,
    tag: String,
    shared: Arc<Shared>,
    core: usize,
    /// When the run started and when it ends (ns on the runner's clock).
    t0: u64,
    end: u64,
    storm: Signal,
    stop: Signal,
    tally: RefCell<Tally>,
    /// Per room, the highest seq acked on this core.
    acked: RefCell<HashMap<String, u64>>,
}

impl Ctx {
    fn counters(&self) -> &Counters {
        &self.shared.cores[self.core]
    }

    fn error(&self, what: impl Into<String>) {
        self.tally.borrow_mut().errors.add(what, 1);
        Counters::add(&self.counters().connect_errors, 1);
    }

    fn stopped(&self) -> bool {
        self.stop.generation() > 0
    }

    /// Sleeps `ms`, or less when the run stops.
    async fn sleep(&self, ms: u64) {
        or(glommio::timer::sleep(Duration::from_millis(ms)), self.stop.changed(0)).await;
    }
}

pub fn run(a: ChurnArgs) -> anyhow::Result<bool> {
    validate(&a)?;
    let dialer = Dialer::new(&a.common)?;
    runner::check_fd_budget(a.clients)?;
    let cpus = a.common.cpus()?;
    let driver = output::server_driver(dialer.first_addr());
    let shared = Shared::new(cpus.len());
    let tag = run_tag();
    let t0 = runner::now_ns();
    let end = t0 + a.common.duration_s * 1_000_000_000;
    let body = {
        let (shared, a) = (shared.clone(), a.clone());
        move |core: usize| {
            let ctx = Rc::new(Ctx {
                a: a.clone(),
                dialer: dialer.clone(),
                tag: tag.clone(),
                shared: shared.clone(),
                core,
                t0,
                end,
                storm: Signal::default(),
                stop: Signal::default(),
                tally: RefCell::new(Tally::new()),
                acked: RefCell::default(),
            });
            async move { run_core(ctx).await }
        }
    };
    let progress = {
        let s = shared.clone();
        move || {
            let (c, d) = (s.total(|c| &c.connected), s.total(|c| &c.closed));
            format!(
                "open {} connects {c} acks {} deliveries {} errors {}",
                c.saturating_sub(d),
                s.total(|c| &c.sent),
                s.total(|c| &c.delivered),
                s.total(|c| &c.connect_errors)
            )
        }
    };
    let cores = runner::run_cores(&cpus, body, progress)?;
    let mut all = Tally::new();
    for c in &cores {
        all.merge(c);
    }
    report(&a, &all, driver, &cpus)
}

fn validate(a: &ChurnArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.clients > 0, "--clients must be at least 1");
    anyhow::ensure!(a.pool_joins <= a.pool_rooms, "--pool-joins must not exceed --pool-rooms");
    anyhow::ensure!(
        a.fresh_rooms_per_s.is_finite() && a.fresh_rooms_per_s >= 0.0,
        "--fresh-rooms-per-s must be a number >= 0"
    );
    anyhow::ensure!(
        a.pool_joins > 0 || a.fresh_rooms_per_s > 0.0,
        "a session needs a room: give --pool-joins or --fresh-rooms-per-s"
    );
    anyhow::ensure!(a.storm_pct <= 100 && a.revisit_pct <= 100, "percentages are 0 to 100");
    anyhow::ensure!(a.sources > 0, "--sources must be at least 1");
    anyhow::ensure!(a.request_timeout_ms > 0, "--request-timeout-ms must be at least 1");
    Ok(())
}

async fn run_core(ctx: Rc<Ctx>) -> anyhow::Result<Tally> {
    let cores = ctx.shared.cores.len();
    let clients: Vec<_> = (ctx.core..ctx.a.clients)
        .step_by(cores)
        .map(|i| glommio::spawn_local(client(ctx.clone(), i)))
        .collect();
    let storms = glommio::spawn_local(storms(ctx.clone()));
    let now = runner::now_ns();
    glommio::timer::sleep(Duration::from_nanos(ctx.end.saturating_sub(now))).await;
    ctx.stop.notify();
    storms.await;
    for c in clients {
        c.await;
    }
    let t = std::mem::replace(&mut *ctx.tally.borrow_mut(), Tally::new());
    Ok(t)
}

/// Drops the storm's share of the connected clients every `--storm-every-s`.
async fn storms(ctx: Rc<Ctx>) {
    let every = ctx.a.storm_every_s * 1_000_000_000;
    if every == 0 {
        return;
    }
    let mut due = ctx.t0 + every;
    while due < ctx.end {
        ctx.sleep(due.saturating_sub(runner::now_ns()) / 1_000_000).await;
        if ctx.stopped() {
            return;
        }
        ctx.tally.borrow_mut().storms += 1;
        ctx.storm.notify();
        due += every;
    }
}

/// How a connected session ended.
enum Ended {
    /// Left and closed, or failed (the error is counted).
    Session,
    /// Dropped by a storm.
    Storm,
}

/// One client: sessions until the run stops.
async fn client(ctx: Rc<Ctx>, i: usize) {
    let user = format!("lg{}-u{i}", ctx.tag);
    let backoff = Backoff {
        base_ms: 100,
        cap_ms: 5_000,
    };
    ctx.sleep(random_ms(ctx.a.hold_ms + ctx.a.pause_ms)).await; // spread the first connects
    let (mut cycle, mut attempt) = (0usize, 0u32);
    let in_storms = i % 100 < usize::from(ctx.a.storm_pct);
    while !ctx.stopped() {
        let index = i + CONNS_PER_SOURCE * (cycle % ctx.a.sources);
        cycle += 1;
        let c = match dial(&ctx, index, &user).await {
            Ok(c) => c,
            Err(hint) => {
                ctx.sleep(backoff.delay_ms(attempt, rand::random::<f64>(), hint)).await;
                attempt += 1;
                continue;
            }
        };
        attempt = 0;
        let seen = ctx.storm.generation();
        let ended = if in_storms {
            or(async { session(&ctx, c).await }, async {
                ctx.storm.changed(seen).await;
                Ended::Storm
            })
            .await
        } else {
            session(&ctx, c).await
        };
        Counters::add(&ctx.counters().closed, 1);
        match ended {
            Ended::Storm => ctx.tally.borrow_mut().storm_drops += 1,
            Ended::Session => ctx.sleep(random_ms(ctx.a.pause_ms)).await,
        }
    }
}

fn random_ms(max: u64) -> u64 {
    if max == 0 {
        0
    } else {
        rand::random::<u64>() % max
    }
}

/// Connects; on failure counts it and gives the server's retry hint.
async fn dial(ctx: &Ctx, index: usize, user: &str) -> Result<Conn, Option<u64>> {
    let t = runner::now_ns();
    match ctx.dialer.dial(index, user, None).await {
        Ok(c) => {
            let mut tally = ctx.tally.borrow_mut();
            tally.connects += 1;
            let _ = tally.connect_us.record((runner::now_ns() - t) / 1000);
            Counters::add(&ctx.counters().connected, 1);
            Ok(c)
        }
        Err(e) => {
            ctx.error(format!("connect_{}", kind(&e)));
            Err(retry_hint(&e))
        }
    }
}

/// A connection, its next request id, and when its last request went out.
struct Session {
    c: Conn,
    next_id: u64,
    sent_ns: u64,
}

async fn session(ctx: &Ctx, c: Conn) -> Ended {
    let mut s = Session { c, next_id: 0, sent_ns: 0 };
    let rooms = pick_rooms(ctx);
    if run_session(ctx, &mut s, &rooms).await.is_ok() {
        ctx.tally.borrow_mut().sessions_done += 1;
    }
    Ended::Session
}

/// A failed step; its error is counted already.
struct Failed;

async fn run_session(ctx: &Ctx, s: &mut Session, rooms: &[(String, bool)]) -> Result<(), Failed> {
    for (room, fresh) in rooms {
        join(ctx, s, room, *fresh).await?;
    }
    for (room, _) in rooms {
        for _ in 0..ctx.a.msgs_per_room {
            send(ctx, s, room).await?;
        }
    }
    ctx.sleep(random_ms(ctx.a.hold_ms)).await;
    for (room, _) in rooms {
        request(ctx, s, "leave", &format!(r#""room":"{room}""#), b"left").await?;
        ctx.tally.borrow_mut().leaves += 1;
    }
    close(ctx, s).await
}

/// The session's rooms: `--pool-joins` consecutive pool rooms from a random
/// one, then a fresh room (`true`) when fresh rooms are asked for.
fn pick_rooms(ctx: &Ctx) -> Vec<(String, bool)> {
    let a = &ctx.a;
    let first = rand::random::<u64>() as usize;
    let mut rooms: Vec<(String, bool)> = (0..a.pool_joins)
        .map(|k| (format!("lg{}-pool-{}", ctx.tag, (first + k) % a.pool_rooms), false))
        .collect();
    if a.fresh_rooms_per_s > 0.0 {
        let elapsed_s = runner::now_ns().saturating_sub(ctx.t0) as f64 / 1e9;
        let age = revisit_age(a, elapsed_s).filter(|_| rand::random::<u8>() % 100 < a.revisit_pct);
        let n = ((elapsed_s - age.unwrap_or(0.0) + rand::random::<f64>()) * a.fresh_rooms_per_s) as u64;
        let mut t = ctx.tally.borrow_mut();
        t.revisits += u64::from(age.is_some());
        t.highest_fresh = t.highest_fresh.max(Some(n));
        rooms.push((format!("soak-{}-{n}", ctx.tag), true));
    }
    rooms
}

/// A random age in the revisited band that names existed at, `elapsed_s` into the run.
fn revisit_age(a: &ChurnArgs, elapsed_s: f64) -> Option<f64> {
    let lo = a.revisit_age_s as f64;
    let hi = (lo + a.revisit_band_s as f64).min(elapsed_s);
    (hi >= lo).then(|| lo + (hi - lo) * rand::random::<f64>())
}

async fn join(ctx: &Ctx, s: &mut Session, room: &str, fresh: bool) -> Result<(), Failed> {
    // Seqs acked before the join is sent must be in the room's seq then.
    let floor = ctx.acked.borrow().get(room).copied().unwrap_or(0);
    let reply = request(ctx, s, "join", &format!(r#""room":"{room}""#), b"joined").await?;
    let seq = msg::u64_field(&reply, "seq").unwrap_or(0);
    if seq < floor {
        ctx.error("seq_went_back");
        eprintln!("churn: {room} joined at seq {seq}, but seq {floor} was acked in it before the join");
    }
    let mut t = ctx.tally.borrow_mut();
    t.joins += 1;
    t.fresh_joins += u64::from(fresh);
    Ok(())
}

async fn send(ctx: &Ctx, s: &mut Session, room: &str) -> Result<(), Failed> {
    let cid = format!("{:016x}", rand::random::<u64>());
    let fields = format!(r#""room":"{room}","body":"churn {cid}","client_id":"{cid}""#);
    ctx.tally.borrow_mut().sends += 1;
    let reply = request(ctx, s, "send", &fields, b"ack").await?;
    let seq = msg::u64_field(&reply, "seq").unwrap_or(0);
    if msg::str_field(&reply, "room") != Some(room.as_bytes()) || seq == 0 {
        ctx.error("ack_mismatch");
        return Err(Failed);
    }
    let e = ctx.acked.borrow().get(room).copied().unwrap_or(0);
    ctx.acked.borrow_mut().insert(room.to_owned(), e.max(seq));
    let mut tally = ctx.tally.borrow_mut();
    tally.acks += 1;
    let _ = tally.ack_us.record((runner::now_ns() - s.sent_ns) / 1000);
    Counters::add(&ctx.counters().sent, 1);
    Ok(())
}

/// Sends `{"type":what,"id":N,fields}` after the pacing gap and returns the
/// reply with that id, which must be of type `want`.
async fn request(ctx: &Ctx, s: &mut Session, what: &str, fields: &str, want: &[u8]) -> Result<Vec<u8>, Failed> {
    glommio::timer::sleep(Duration::from_millis(ctx.a.frame_gap_ms)).await;
    s.next_id += 1;
    let id = s.next_id;
    let frame = format!(r#"{{"type":"{what}","id":{id},{fields}}}"#);
    s.sent_ns = runner::now_ns();
    if conn::send(&s.c.writer, OP_TEXT, frame.as_bytes()).await.is_err() {
        ctx.error(format!("{what}_write_failed"));
        return Err(Failed);
    }
    let limit = Duration::from_millis(ctx.a.request_timeout_ms);
    match conn::with_timeout(limit, reply(ctx, &mut s.c, id, what, want)).await {
        Some(r) => r,
        None => {
            ctx.error(format!("{what}_timeout"));
            Err(Failed)
        }
    }
}

/// Reads until the reply with `id`, counting deliveries and anything unexpected.
async fn reply(ctx: &Ctx, c: &mut Conn, id: u64, what: &str, want: &[u8]) -> Result<Vec<u8>, Failed> {
    loop {
        let t = match c.reader.next(&c.writer).await {
            Ok(Some(In::Text(t))) => t,
            Ok(Some(In::Close(code, reason))) => {
                ctx.error(format!("{what}_closed_{}", code.unwrap_or(0)));
                eprintln!("churn: closed {code:?} {reason:?} while waiting for the answer to {what}");
                return Err(Failed);
            }
            Ok(None) | Err(_) => {
                ctx.error(format!("{what}_connection_lost"));
                return Err(Failed);
            }
        };
        let ty = msg::str_field(t, "type").unwrap_or(b"");
        if ty == b"message" {
            ctx.tally.borrow_mut().deliveries += 1;
            Counters::add(&ctx.counters().delivered, 1);
            continue;
        }
        let mine = msg::u64_field(t, "id") == Some(id);
        if mine && ty == want {
            return Ok(t.to_vec());
        }
        if mine || ty == b"error" || ty == b"reconnect" {
            note_unexpected(ctx, t, ty, what, mine);
            if mine {
                return Err(Failed);
            }
        }
    }
}

/// Counts a refusal of a request (`mine`), an error frame about something
/// else, or a `reconnect` notice; prints the first few of each kind.
fn note_unexpected(ctx: &Ctx, t: &[u8], ty: &[u8], what: &str, mine: bool) {
    let code = String::from_utf8_lossy(msg::str_field(t, "code").unwrap_or(b"none")).into_owned();
    let k = match (mine, ty) {
        (true, b"error") => format!("{what}_error_{code}"),
        (true, _) => format!("{what}_answered_{}", String::from_utf8_lossy(ty)),
        (false, b"error") => format!("unsolicited_error_{code}"),
        _ => "reconnect_notice".to_owned(),
    };
    if ctx.tally.borrow().errors.get(&k) < 3 {
        eprintln!("churn: {k}: {}", String::from_utf8_lossy(t));
    }
    ctx.error(k);
}

/// Sends close 1000 and waits for the server's echo.
async fn close(ctx: &Ctx, s: &mut Session) -> Result<(), Failed> {
    if conn::send(&s.c.writer, OP_CLOSE, &1000u16.to_be_bytes()).await.is_err() {
        ctx.error("close_write_failed");
        return Err(Failed);
    }
    let echoed = async {
        loop {
            match s.c.reader.next(&s.c.writer).await {
                Ok(Some(In::Text(t))) => {
                    if msg::str_field(t, "type") == Some(b"message") {
                        ctx.tally.borrow_mut().deliveries += 1;
                    }
                }
                Ok(Some(In::Close(code, _))) => return code,
                Ok(None) | Err(_) => return None,
            }
        }
    };
    let limit = Duration::from_millis(ctx.a.request_timeout_ms);
    match conn::with_timeout(limit, echoed).await {
        Some(Some(1000)) => {
            ctx.tally.borrow_mut().disconnects += 1;
            Ok(())
        }
        Some(code) => {
            ctx.error(format!("close_echo_{}", code.unwrap_or(0)));
            Err(Failed)
        }
        None => {
            ctx.error("close_timeout");
            Err(Failed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisits_stay_in_their_age_band() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            a: ChurnArgs,
        }
        let cli = Cli::try_parse_from(["t", "--jwt-secret", "x", "--revisit-age-s", "10", "--revisit-band-s", "5"]);
        let a = cli.expect("flags").a;
        assert_eq!(revisit_age(&a, 9.9), None, "no name is old enough yet");
        for _ in 0..100 {
            let age = revisit_age(&a, 12.0).expect("in the band");
            assert!((10.0..=12.0).contains(&age), "{age}");
            let age = revisit_age(&a, 100.0).expect("in the band");
            assert!((10.0..=15.0).contains(&age), "{age}");
        }
    }

    #[test]
    fn random_ms_stays_below_its_bound() {
        assert_eq!(random_ms(0), 0);
        assert!((0..100).all(|_| random_ms(7) < 7));
    }
}
