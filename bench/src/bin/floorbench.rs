//! `floorbench`: the kernel's floor under a WebSocket server's deliveries.
//!
//! Whatever a server does per message, it ends in a `write`/`writev` to a
//! socket, and on loopback that call also runs the receiving side's TCP
//! stack. This measures that floor on this machine, today: one writer
//! thread sends pre-built WebSocket text frames round-robin over
//! `--sockets` loopback connections at `--rate` frames per second, and the
//! readers drain them on another core. Two ways of writing:
//!
//! - `single`: one frame per `write` (what a server pays at light load,
//!   when every frame goes out alone);
//! - `batch8`: eight frames per `writev` to one socket (what a server pays
//!   when frames queue up and it writes them together).
//!
//! The writer wakes every `--tick-ms` (10: as often as the fan-out bench's
//! senders wake a server) and writes that tick's frames, so a wake-up's cost
//! is shared by a tick's frames, as it is in a server.
//!
//! The figure is the writer thread's CPU time (user + system,
//! `CLOCK_THREAD_CPUTIME_ID`) per frame, the median of `--rounds`
//! interleaved rounds. `scripts/bench.sh` runs it first and prints the
//! server's CPU per delivery as a ratio to it, so a day when the hypervisor
//! is slow shows as a slow floor, not as a slow server.
//!
//! Bounded: `--rounds` × 2 × `--round-s` seconds (default 3 × 2 × 3 s).

use std::io::{IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "floorbench",
    about = "Writer CPU per WebSocket frame on loopback: one frame per write vs eight per writev"
)]
struct Cli {
    /// Loopback connections the frames are spread over (round-robin).
    #[arg(long, default_value_t = 1_000)]
    sockets: usize,
    /// Size of one frame on the wire, header included, bytes (3..=65,539).
    #[arg(long, default_value_t = 102)]
    frame_bytes: usize,
    /// Frames per second, in both modes.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Seconds each mode runs per round.
    #[arg(long, default_value_t = 3.0)]
    round_s: f64,
    /// The writer wakes every this many ms and writes that tick's share of frames (the
    /// fan-out bench's 10 senders at 10/s wake a server 100 times a second).
    #[arg(long, default_value_t = 10)]
    tick_ms: u64,
    /// Rounds; the modes alternate within each round, and each figure is the median.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// CPU of the writer thread.
    #[arg(long, default_value_t = 0)]
    writer_cpu: usize,
    /// CPU of the reader thread.
    #[arg(long, default_value_t = 1)]
    reader_cpu: usize,
    /// Write the figures as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

fn pin(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it for cpu <
    // CPU_SETSIZE (checked); sched_setaffinity(0, ...) pins the calling thread.
    unsafe {
        if cpu >= libc::CPU_SETSIZE as usize {
            bail!("CPU {cpu} is out of range");
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!("cannot pin to CPU {cpu}: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// This thread's CPU time so far (user + system), ns.
fn thread_cpu_ns() -> u64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid timespec to write; CLOCK_THREAD_CPUTIME_ID exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// A server-to-client text frame (FIN, opcode 1, unmasked) of `bytes` in all, header included.
fn frame(bytes: usize) -> Vec<u8> {
    let mut f = if bytes - 2 <= 125 {
        vec![0x81, (bytes - 2) as u8]
    } else {
        let [hi, lo] = ((bytes - 4) as u16).to_be_bytes();
        vec![0x81, 126, hi, lo]
    };
    f.resize(bytes, b'x');
    f
}

/// Reads every socket until `stop`, counting bytes: the other core's side of the floor. It
/// waits in `epoll_wait` as a client's event loop does, so each write pays for waking it.
fn readers(listener: TcpListener, sockets: usize, cpu: usize, stop: Arc<AtomicBool>, read: Arc<AtomicU64>) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    pin(cpu)?;
    let mut conns = Vec::with_capacity(sockets);
    // SAFETY: epoll_create1 takes flags only; the fd is closed at the end of this function.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        bail!("epoll_create1: {}", std::io::Error::last_os_error());
    }
    for i in 0..sockets {
        let (s, _) = listener.accept().context("accept")?;
        s.set_nonblocking(true)?;
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        // SAFETY: `ep` and the socket's fd are open; `ev` is a valid event to copy.
        if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev) } != 0 {
            bail!("epoll_ctl: {}", std::io::Error::last_os_error());
        }
        conns.push(s);
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let result = (|| {
        while !stop.load(Ordering::Relaxed) {
            // SAFETY: `events` has room for `events.len()` entries; a 100 ms timeout lets the
            // loop see `stop`.
            let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 100) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e).context("epoll_wait");
            }
            let mut got = 0u64;
            for ev in &events[..n as usize] {
                let s = &mut conns[ev.u64 as usize];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => got += n as u64,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e).context("read"),
                    }
                }
            }
            read.fetch_add(got, Ordering::Relaxed);
        }
        Ok(())
    })();
    // SAFETY: `ep` is the epoll fd opened above, closed once.
    unsafe { libc::close(ep) };
    result
}

/// Writes `rate` frames/s for `secs`, `batch` frames per call, waking every `tick_ms`;
/// returns writer CPU ns per frame (the wake-ups included, shared by a tick's frames).
fn run(conns: &mut [TcpStream], frame: &[u8], batch: usize, (rate, tick_ms): (u64, u64), secs: f64) -> anyhow::Result<f64> {
    // Paced: each tick writes its share of frames, then sleeps to the next.
    let per_tick = (rate as f64 * tick_ms as f64 / 1_000.0).max(1.0);
    let ticks = ((secs * 1_000.0) as u64 / tick_ms).max(1);
    let slices: Vec<IoSlice<'_>> = (0..batch).map(|_| IoSlice::new(frame)).collect();
    let (mut owed, mut frames, mut next) = (0.0f64, 0u64, 0usize);
    let start = Instant::now();
    let cpu0 = thread_cpu_ns();
    for tick in 0..ticks {
        owed += per_tick;
        while owed >= batch as f64 {
            owed -= batch as f64;
            let count = conns.len();
            let s = &mut conns[next];
            next = (next + 1) % count;
            if batch == 1 {
                s.write_all(frame).context("write")?;
            } else {
                let mut left = frame.len() * batch;
                let n = s.write_vectored(&slices).context("writev")?;
                left -= n;
                if left > 0 {
                    // A short write (a full socket buffer): finish it, as a server would later.
                    let all: Vec<u8> = slices.iter().flat_map(|s| s.iter().copied()).collect();
                    s.write_all(&all[n..]).context("write")?;
                }
            }
            frames += batch as u64;
        }
        let due = Duration::from_millis((tick + 1) * tick_ms);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    Ok((thread_cpu_ns() - cpu0) as f64 / frames.max(1) as f64)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if !(3..=65_539).contains(&cli.frame_bytes) || (128..=129).contains(&cli.frame_bytes) {
        bail!(
            "--frame-bytes must be 3..=127 or 130..=65,539 (one frame with a 7- or 16-bit length), not {}",
            cli.frame_bytes
        );
    }
    if cli.sockets == 0 || cli.rounds == 0 || cli.rate == 0 || cli.tick_ms == 0 || cli.round_s <= 0.0 {
        bail!("--sockets, --rounds, --rate, --tick-ms and --round-s must be above 0");
    }
    let listener = TcpListener::bind("127.0.0.1:0").context("bind")?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let read = Arc::new(AtomicU64::new(0));
    let reader = {
        let (stop, read, n, cpu) = (stop.clone(), read.clone(), cli.sockets, cli.reader_cpu);
        std::thread::spawn(move || readers(listener, n, cpu, stop, read))
    };
    pin(cli.writer_cpu)?;
    let mut conns = (0..cli.sockets)
        .map(|_| {
            let s = TcpStream::connect(addr)?;
            s.set_nodelay(true)?;
            Ok(s)
        })
        .collect::<std::io::Result<Vec<_>>>()
        .context("connect")?;
    let frame = frame(cli.frame_bytes);
    // A short warm-up: the connections' buffers and the reader's loop.
    let pace = (cli.rate, cli.tick_ms);
    run(&mut conns, &frame, 1, pace, 0.5)?;
    let (mut single, mut batch8) = (Vec::new(), Vec::new());
    for round in 0..cli.rounds {
        let s = run(&mut conns, &frame, 1, pace, cli.round_s)?;
        let b = run(&mut conns, &frame, 8, pace, cli.round_s)?;
        eprintln!("floorbench: round {}: single {s:.0} ns/frame, batch8 {b:.0} ns/frame", round + 1);
        single.push(s);
        batch8.push(b);
    }
    stop.store(true, Ordering::Relaxed);
    drop(conns);
    reader.join().map_err(|_| anyhow::anyhow!("the reader thread panicked"))??;
    let (s, b) = (median(&mut single.clone()), median(&mut batch8.clone()));
    println!("floor: {s:.0} ns of writer CPU per frame written alone, {b:.0} ns per frame eight to a writev ({} B frames, {} sockets, {} frames/s)", cli.frame_bytes, cli.sockets, cli.rate);
    if let Some(path) = cli.json {
        let doc = serde_json::json!({
            "tool": "floorbench",
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "params": {
                "sockets": cli.sockets, "frame_bytes": cli.frame_bytes, "rate": cli.rate,
                "tick_ms": cli.tick_ms, "round_s": cli.round_s, "rounds": cli.rounds,
                "writer_cpu": cli.writer_cpu, "reader_cpu": cli.reader_cpu,
            },
            "results": {
                "single_ns_per_frame": s,
                "batch8_ns_per_frame": b,
                "single_rounds": single,
                "batch8_rounds": batch8,
                "bytes_read": read.load(Ordering::Relaxed),
            },
        });
        std::fs::write(&path, serde_json::to_string_pretty(&doc)? + "\n").with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}
