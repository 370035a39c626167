//! `probe`: the simple measurement client used for the edge node's first
//! figures, until loadgen (issue #2) replaces it. One thread, one monoio
//! runtime, real sockets, a minimal RFC 6455 client (masked frames out,
//! unmasked frames in). Run it pinned apart from the server (`taskset`).
//!
//! - `probe idle`: opens and holds N authenticated connections; reports the
//!   connect rate and, with `--server-pid`, the server's RSS per connection.
//! - `probe fanout`: R rooms × M members, one sender per room at a fixed rate;
//!   reports deliveries/s, send→deliver latency percentiles, per-room seq
//!   correctness (lost / duplicated / out of order) and, with
//!   `--server-pid`, the server CPU time per delivered message.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable};
use monoio::net::TcpStream;
use serde::Deserialize;
use serde_json::json;

#[derive(Parser)]
#[command(name = "probe", about = "Simple WebSocket measurement client for the edge node")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Open and hold idle connections.
    Idle(IdleArgs),
    /// Steady room traffic: deliveries/s, latency, seq correctness.
    Fanout(FanoutArgs),
}

#[derive(Args, Clone)]
struct Common {
    /// Edge address (loopback only).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// HS256 secret of the edge (the probe mints its tokens).
    #[arg(long, env = "EDGE_JWT_SECRET")]
    jwt_secret: String,
    /// Server pid, to read its RSS and CPU time from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Write the figures as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Args)]
struct IdleArgs {
    #[command(flatten)]
    common: Common,
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    conns: usize,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// Seconds to hold the connections after the last one is up.
    #[arg(long, default_value_t = 3)]
    hold_s: u64,
}

#[derive(Args)]
struct FanoutArgs {
    #[command(flatten)]
    common: Common,
    /// Rooms.
    #[arg(long, default_value_t = 10)]
    rooms: usize,
    /// Members per room (the sender is one of them).
    #[arg(long, default_value_t = 100)]
    members: usize,
    /// Messages per second sent into each room.
    #[arg(long, default_value_t = 50)]
    rate_per_room: u64,
    /// Bytes of each message body (at least the timestamp).
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,
    /// Seconds of traffic before measuring.
    #[arg(long, default_value_t = 2)]
    warmup_s: u64,
    /// Seconds measured.
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .context("runtime")?;
    match cli.cmd {
        Cmd::Idle(a) => rt.block_on(idle(a)),
        Cmd::Fanout(a) => rt.block_on(fanout(a)),
    }
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn write_json(path: Option<&std::path::Path>, v: &serde_json::Value) -> anyhow::Result<()> {
    if let Some(p) = path {
        std::fs::write(p, serde_json::to_string_pretty(v)? + "\n").with_context(|| format!("--json {}", p.display()))?;
    }
    Ok(())
}

// ---------------------------------------------------------------- /proc

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("--server-pid {pid}"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("VmRSS")?.parse()?)
}

/// utime + stime of a process, in nanoseconds.
fn cpu_ns(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("--server-pid {pid}"))?;
    let after_comm = stat.rsplit_once(')').context("stat")?.1;
    let f: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    Ok(ticks * 1_000_000_000 / 100)
}

// ---------------------------------------------------------------- client

/// A minimal WebSocket client connection.
struct Ws {
    rd: OwnedReadHalf<TcpStream>,
    wr: Rc<RefCell<Option<OwnedWriteHalf<TcpStream>>>>,
    buf: Vec<u8>,
    chunk: Vec<u8>,
}

/// One frame from the server.
enum In {
    Text(Vec<u8>),
    Ping(Vec<u8>),
    Close,
}

async fn connect(addr: SocketAddr, query: &str) -> anyhow::Result<Ws> {
    let mut stream = TcpStream::connect(addr).await.context("connect")?;
    stream.set_nodelay(true)?;
    let req = format!(
        "GET /ws?{query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let (r, _) = stream.write_all(req.into_bytes()).await;
    r?;
    let mut buf = Vec::new();
    let mut chunk = Vec::with_capacity(4096);
    let head_end = loop {
        let (r, c) = stream.read(chunk).await;
        chunk = c;
        if r? == 0 {
            bail!("closed during handshake");
        }
        buf.extend_from_slice(&chunk);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    if !buf.starts_with(b"HTTP/1.1 101") {
        let line = String::from_utf8_lossy(&buf[..buf.iter().position(|&b| b == b'\r').unwrap_or(buf.len())]).into_owned();
        bail!("upgrade refused: {line}");
    }
    buf.drain(..head_end);
    let (rd, wr) = stream.into_split();
    Ok(Ws {
        rd,
        wr: Rc::new(RefCell::new(Some(wr))),
        buf,
        chunk,
    })
}

impl Ws {
    async fn next(&mut self) -> anyhow::Result<In> {
        loop {
            if let Some((op, start, end)) = parse_frame(&self.buf) {
                let payload = self.buf[start..end].to_vec();
                self.buf.drain(..end);
                match op {
                    0x1 => return Ok(In::Text(payload)),
                    0x9 => return Ok(In::Ping(payload)),
                    0x8 => return Ok(In::Close),
                    _ => continue,
                }
            }
            let chunk = std::mem::take(&mut self.chunk);
            let (r, c) = self.rd.read(chunk).await;
            self.chunk = c;
            if r? == 0 {
                return Ok(In::Close);
            }
            self.buf.extend_from_slice(&self.chunk);
        }
    }

    /// The next text frame, answering pings on the way.
    async fn next_text(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        loop {
            match self.next().await? {
                In::Text(t) => return Ok(Some(t)),
                In::Ping(p) => send(&self.wr, 0xA, &p).await?,
                In::Close => return Ok(None),
            }
        }
    }
}

/// (opcode, payload start, payload end) of the first complete frame.
fn parse_frame(b: &[u8]) -> Option<(u8, usize, usize)> {
    if b.len() < 2 {
        return None;
    }
    let op = b[0] & 0x0F;
    let (len, hdr) = match b[1] & 0x7F {
        126 if b.len() >= 4 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
        127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().ok()?) as usize, 10),
        126 | 127 => return None,
        n => (usize::from(n), 2),
    };
    (b.len() >= hdr + len).then_some((op, hdr, hdr + len))
}

/// Sends one masked frame.
async fn send(wr: &Rc<RefCell<Option<OwnedWriteHalf<TcpStream>>>>, op: u8, payload: &[u8]) -> anyhow::Result<()> {
    let mask: [u8; 4] = rand::random();
    let mut f = Vec::with_capacity(payload.len() + 14);
    f.push(0x80 | op);
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n < 65536 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    let Some(mut w) = wr.borrow_mut().take() else {
        bail!("writer busy")
    };
    let (r, _) = w.write_all(f).await;
    *wr.borrow_mut() = Some(w);
    r?;
    Ok(())
}

#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type")]
    ty: &'a str,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    body: Option<&'a str>,
    #[serde(default)]
    message: Option<&'a str>,
}

async fn expect_type(ws: &mut Ws, ty: &str) -> anyhow::Result<()> {
    let Some(t) = ws.next_text().await? else {
        bail!("closed while waiting for {ty}")
    };
    let m: Incoming<'_> = serde_json::from_slice(&t)?;
    if m.ty != ty {
        bail!("expected {ty}, got {}: {}", m.ty, m.message.unwrap_or(""));
    }
    Ok(())
}

// ---------------------------------------------------------------- idle

async fn idle(a: IdleArgs) -> anyhow::Result<()> {
    let c = &a.common;
    let base_rss = c.server_pid.map(rss_kib).transpose()?;
    let token = edge::auth::mint_hs256(&c.jwt_secret, "idle", 3600, None, None, now_s())?;
    let query = Rc::new(format!("token={token}"));
    let held: Rc<RefCell<Vec<Ws>>> = Rc::new(RefCell::new(Vec::with_capacity(a.conns)));
    let errors = Rc::new(RefCell::new(Vec::<String>::new()));
    let next = Rc::new(std::cell::Cell::new(0usize));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..a.concurrency.max(1) {
        let (held, errors, next, query, addr, total) = (held.clone(), errors.clone(), next.clone(), query.clone(), c.addr, a.conns);
        workers.push(monoio::spawn(async move {
            loop {
                let i = next.get();
                if i >= total {
                    break;
                }
                next.set(i + 1);
                let r = async {
                    let mut ws = connect(addr, &query).await?;
                    expect_type(&mut ws, "welcome").await?;
                    anyhow::Ok(ws)
                }
                .await;
                match r {
                    Ok(ws) => held.borrow_mut().push(ws),
                    Err(e) => errors.borrow_mut().push(format!("{e:#}")),
                }
            }
        }));
    }
    for w in workers {
        w.await;
    }
    let connect_s = started.elapsed().as_secs_f64();
    let open = held.borrow().len();
    monoio::time::sleep(Duration::from_secs(a.hold_s)).await;
    let rss = c.server_pid.map(rss_kib).transpose()?;
    let per_conn = match (base_rss, rss) {
        (Some(b), Some(r)) if open > 0 => Some((r.saturating_sub(b)) as f64 * 1024.0 / open as f64),
        _ => None,
    };
    let errs = errors.borrow();
    println!(
        "idle: {open}/{} connections open in {connect_s:.2} s ({:.0}/s), {} errors",
        a.conns,
        open as f64 / connect_s,
        errs.len()
    );
    if let Some(e) = errs.first() {
        println!("  first error: {e}");
    }
    if let (Some(b), Some(r), Some(p)) = (base_rss, rss, per_conn) {
        println!("  server RSS {b} KiB -> {r} KiB: {p:.0} bytes per connection");
    }
    let v = json!({
        "scenario": "idle", "conns": a.conns, "open": open, "errors": errs.len(),
        "connect_s": connect_s, "connects_per_s": open as f64 / connect_s,
        "server_rss_kib_before": base_rss, "server_rss_kib_after": rss, "server_rss_bytes_per_conn": per_conn,
    });
    write_json(c.json.as_deref(), &v)?;
    drop(errs);
    held.borrow_mut().clear();
    Ok(())
}

// ---------------------------------------------------------------- fanout

#[derive(Default)]
struct Tally {
    measuring: bool,
    deliveries: u64,
    lost: u64,
    duplicated: u64,
    reordered: u64,
    latencies_us: Vec<u32>,
    sent: u64,
    errors: u64,
}

async fn fanout(a: FanoutArgs) -> anyhow::Result<()> {
    let c = a.common.clone();
    let tally = Rc::new(RefCell::new(Tally::default()));
    let epoch = Instant::now();
    let mut senders = Vec::new();
    let mut readers = Vec::new();
    for r in 0..a.rooms {
        let room = format!("bench-{r}");
        for m in 0..a.members {
            let token = edge::auth::mint_hs256(&c.jwt_secret, &format!("u{r}-{m}"), 3600, None, None, now_s())?;
            let mut ws = connect(c.addr, &format!("token={token}"))
                .await
                .with_context(|| format!("member {m} of {room}"))?;
            expect_type(&mut ws, "welcome").await?;
            send(&ws.wr, 0x1, json!({"type": "join", "room": room}).to_string().as_bytes()).await?;
            expect_type(&mut ws, "joined").await?;
            if m == 0 {
                senders.push((room.clone(), ws.wr.clone()));
            }
            readers.push(monoio::spawn(read_member(ws, tally.clone(), epoch)));
        }
    }
    eprintln!(
        "probe: {} members in {} rooms joined; warming up {} s",
        a.rooms * a.members,
        a.rooms,
        a.warmup_s
    );
    let stop = Rc::new(std::cell::Cell::new(false));
    let mut tasks = Vec::new();
    for (room, wr) in senders {
        tasks.push(monoio::spawn(run_sender(
            room,
            wr,
            a.rate_per_room,
            a.payload_bytes,
            epoch,
            stop.clone(),
            tally.clone(),
        )));
    }
    monoio::time::sleep(Duration::from_secs(a.warmup_s)).await;
    let cpu0 = c.server_pid.map(cpu_ns).transpose()?;
    let t0 = Instant::now();
    {
        let mut t = tally.borrow_mut();
        *t = Tally {
            measuring: true,
            ..Tally::default()
        };
    }
    monoio::time::sleep(Duration::from_secs(a.duration_s)).await;
    let mut t = std::mem::take(&mut *tally.borrow_mut());
    let secs = t0.elapsed().as_secs_f64();
    let cpu1 = c.server_pid.map(cpu_ns).transpose()?;
    stop.set(true);
    for task in tasks {
        task.await;
    }
    let cpu_per_delivery_ns = match (cpu0, cpu1) {
        (Some(x), Some(y)) if t.deliveries > 0 => Some((y - x) as f64 / t.deliveries as f64),
        _ => None,
    };
    let server_cpu_util = match (cpu0, cpu1) {
        (Some(x), Some(y)) => Some((y - x) as f64 / 1e9 / secs),
        _ => None,
    };
    t.latencies_us.sort_unstable();
    let pct = |p: f64| -> Option<f64> {
        let n = t.latencies_us.len();
        (n > 0).then(|| f64::from(t.latencies_us[((n as f64 * p) as usize).min(n - 1)]) / 1000.0)
    };
    let expected_per_s = (a.rooms as u64 * a.rate_per_room * a.members as u64) as f64;
    println!(
        "fanout: {} rooms x {} members, {} msg/s per room, {} s measured",
        a.rooms, a.members, a.rate_per_room, a.duration_s
    );
    println!(
        "  sent {:.0}/s, deliveries {:.0}/s (offered {:.0}/s)",
        t.sent as f64 / secs,
        t.deliveries as f64 / secs,
        expected_per_s
    );
    println!(
        "  latency ms: p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}",
        pct(0.5).unwrap_or(f64::NAN),
        pct(0.9).unwrap_or(f64::NAN),
        pct(0.99).unwrap_or(f64::NAN),
        pct(0.999).unwrap_or(f64::NAN),
        pct(1.0).unwrap_or(f64::NAN)
    );
    println!(
        "  lost {} duplicated {} out-of-order {} errors {}",
        t.lost, t.duplicated, t.reordered, t.errors
    );
    if let (Some(ns), Some(u)) = (cpu_per_delivery_ns, server_cpu_util) {
        println!("  server CPU {:.2} cores, {ns:.0} ns per delivered message", u);
    }
    let v = json!({
        "scenario": "fanout", "rooms": a.rooms, "members": a.members, "rate_per_room": a.rate_per_room,
        "payload_bytes": a.payload_bytes, "duration_s": secs,
        "sent_per_s": t.sent as f64 / secs, "deliveries_per_s": t.deliveries as f64 / secs, "offered_deliveries_per_s": expected_per_s,
        "latency_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "p999": pct(0.999), "max": pct(1.0)},
        "lost": t.lost, "duplicated": t.duplicated, "out_of_order": t.reordered, "errors": t.errors,
        "server_cpu_cores": server_cpu_util, "server_cpu_ns_per_delivery": cpu_per_delivery_ns,
    });
    write_json(c.json.as_deref(), &v)?;
    drop(readers);
    if t.lost + t.duplicated + t.reordered + t.errors > 0 {
        bail!("correctness check failed");
    }
    Ok(())
}

async fn run_sender(
    room: String,
    wr: Rc<RefCell<Option<OwnedWriteHalf<TcpStream>>>>,
    rate: u64,
    payload_bytes: usize,
    epoch: Instant,
    stop: Rc<std::cell::Cell<bool>>,
    tally: Rc<RefCell<Tally>>,
) {
    let start = Instant::now();
    let mut sent = 0u64;
    while !stop.get() {
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due {
            let ts = epoch.elapsed().as_nanos() as u64;
            let mut body = format!("{ts}:");
            while body.len() < payload_bytes {
                body.push('x');
            }
            let frame = json!({"type": "send", "room": room, "body": body}).to_string();
            if send(&wr, 0x1, frame.as_bytes()).await.is_err() {
                tally.borrow_mut().errors += 1;
                return;
            }
            sent += 1;
            tally.borrow_mut().sent += 1;
        }
        monoio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn read_member(mut ws: Ws, tally: Rc<RefCell<Tally>>, epoch: Instant) {
    let mut last_seq = 0u64;
    while let Ok(Some(text)) = ws.next_text().await {
        let Ok(m) = serde_json::from_slice::<Incoming<'_>>(&text) else {
            continue;
        };
        let mut t = tally.borrow_mut();
        match m.ty {
            "message" => {
                let seq = m.seq.unwrap_or(0);
                if last_seq != 0 {
                    if seq == last_seq + 1 {
                    } else if seq > last_seq + 1 {
                        t.lost += seq - last_seq - 1;
                    } else if seq == last_seq {
                        t.duplicated += 1;
                    } else {
                        t.reordered += 1;
                    }
                }
                last_seq = last_seq.max(seq);
                if !t.measuring {
                    continue;
                }
                t.deliveries += 1;
                let sent_ns = m.body.and_then(|b| b.split(':').next()).and_then(|s| s.parse::<u64>().ok());
                if let Some(s) = sent_ns {
                    let now = epoch.elapsed().as_nanos() as u64;
                    t.latencies_us.push((now.saturating_sub(s) / 1000).min(u64::from(u32::MAX)) as u32);
                }
            }
            "ack" | "pong" => {}
            _ => t.errors += 1,
        }
    }
}
