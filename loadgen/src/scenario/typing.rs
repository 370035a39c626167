//! `loadgen typing`: one room of M members where everyone types. Each member
//! types in bursts: a `start` every `--refresh-ms` (a client refreshes its
//! typing while keys are pressed) for `--burst-ms`, then a `stop`, then a
//! pause of `--pause-ms`; phases are random, so bursts overlap. Every member
//! counts the `typing` events it receives; with `--server-pid` the run
//! reports the server's CPU per typing event delivered. Run it against an
//! edge with the default `typing_interval_ms` (coalesced) and with
//! `EDGE_TYPING_INTERVAL_MS=0` (every change at once) to see what pacing
//! saves.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde_json::json;

use super::{kind, run_tag, Dialer, Outcomes};
use crate::conn::{self, Conn, In};
use crate::msg;
use crate::output::{self, obj};
use crate::runner::{self, Counters, Shared};
use crate::ws::OP_TEXT;
use crate::Common;

#[derive(Args, Debug, Clone)]
pub struct TypingArgs {
    #[command(flatten)]
    pub common: Common,
    /// Members of the room (every one of them types).
    #[arg(long, default_value_t = 100)]
    pub members: usize,
    /// A typing member sends `start` this often.
    #[arg(long, default_value_t = 300)]
    pub refresh_ms: u64,
    /// How long a member types before it sends `stop`.
    #[arg(long, default_value_t = 3000)]
    pub burst_ms: u64,
    /// How long a member pauses between bursts.
    #[arg(long, default_value_t = 1000)]
    pub pause_ms: u64,
    /// Seconds of typing before the measured window.
    #[arg(long, default_value_t = 2)]
    pub warmup_s: u64,
}

/// The server's CPU time (ns) at the start and end of the measured window, and its length (s).
type CpuWindow = std::sync::Mutex<(Option<u64>, Option<u64>, f64)>;

/// One core's counts.
#[derive(Default)]
struct Core {
    frames_sent_window: u64,
    events_window: u64,
    events_total: u64,
    errors: Outcomes,
    connects: Outcomes,
}

pub fn run(a: TypingArgs) -> anyhow::Result<bool> {
    anyhow::ensure!(a.members >= 2, "--members must be at least 2");
    anyhow::ensure!(a.refresh_ms > 0, "--refresh-ms must be positive");
    anyhow::ensure!(a.burst_ms >= a.refresh_ms, "--burst-ms must be at least --refresh-ms");
    let dialer = Dialer::new(&a.common)?;
    runner::check_fd_budget(a.members)?;
    let cpus = a.common.cpus()?;
    let driver = output::server_driver(dialer.first_addr());
    let shared = Shared::new(cpus.len());
    let cpu_window: Arc<CpuWindow> = Arc::default();
    let tag = run_tag();
    let body = {
        let (shared, a, w) = (shared.clone(), a.clone(), cpu_window.clone());
        move |core: usize| {
            let (shared, a, dialer, tag, w) = (shared.clone(), a.clone(), dialer.clone(), tag.clone(), w.clone());
            async move { run_core(core, &a, &dialer, &tag, &shared, &w).await }
        }
    };
    let progress = {
        let s = shared.clone();
        move || {
            format!(
                "members {} typing frames sent {} events {}",
                s.total(|c| &c.connected),
                s.total(|c| &c.sent),
                s.total(|c| &c.delivered)
            )
        }
    };
    let cores = runner::run_cores(&cpus, body, progress)?;
    let (cpu_start, cpu_end, secs) = *cpu_window.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    report(&a, &cores, (cpu_start, cpu_end, secs), driver, &cpus)
}

async fn run_core(
    core: usize,
    a: &TypingArgs,
    dialer: &Dialer,
    tag: &str,
    shared: &Arc<Shared>,
    cpu_window: &CpuWindow,
) -> anyhow::Result<Core> {
    let state = Rc::new(RefCell::new(Core::default()));
    let room = format!("lg{tag}-typing");
    let mine: Vec<usize> = (core..a.members).step_by(shared.cores.len()).collect();
    let mut writers = Vec::new();
    for g in mine {
        match join(dialer, g, &format!("lg{tag}-u{g}"), &room).await {
            Ok(c) => {
                Counters::add(&shared.cores[core].connected, 1);
                state.borrow_mut().connects.add("101", 1);
                writers.push(c.writer.clone());
                glommio::spawn_local(receive(c, state.clone(), shared.clone(), core)).detach();
            }
            Err(k) => {
                Counters::add(&shared.cores[core].connect_errors, 1);
                state.borrow_mut().connects.add(k, 1);
            }
        }
    }
    shared.barrier(1).await;
    let stop = Rc::new(Cell::new(false));
    let tasks: Vec<_> = writers
        .into_iter()
        .map(|w| {
            let (room, a, state, stop, shared) = (room.clone(), a.clone(), state.clone(), stop.clone(), shared.clone());
            glommio::spawn_local(async move { type_loop(&room, &w, &a, &state, &stop, &shared, core).await })
        })
        .collect();
    if core == 0 {
        glommio::timer::sleep(Duration::from_secs(a.warmup_s)).await;
        let pid = a.common.server_pid;
        let cpu_start = pid.map(output::cpu_ns).transpose()?;
        shared.measuring.store(true, Relaxed);
        let start = runner::now_ns();
        glommio::timer::sleep(Duration::from_secs(a.common.duration_s)).await;
        shared.measuring.store(false, Relaxed);
        let secs = (runner::now_ns() - start) as f64 / 1e9;
        let cpu_end = pid.map(output::cpu_ns).transpose()?;
        *cpu_window.lock().map_err(|_| anyhow::anyhow!("poisoned"))? = (cpu_start, cpu_end, secs);
        shared.stop.store(true, Relaxed);
    }
    Shared::until(&shared.stop, Duration::from_millis(5)).await;
    stop.set(true);
    for t in tasks {
        t.await;
    }
    shared.barrier(2).await;
    let out = std::mem::take(&mut *state.borrow_mut());
    Ok(out)
}

/// Connects with `?room=` (which joins it) and waits for `joined`.
async fn join(dialer: &Dialer, index: usize, user: &str, room: &str) -> Result<Conn, String> {
    let mut c = dialer.dial(index, user, Some(room)).await.map_err(|e| kind(&e))?;
    loop {
        match c.reader.next(&c.writer).await {
            Ok(Some(In::Text(t))) => match msg::str_field(t, "type") {
                Some(b"joined") => return Ok(c),
                Some(b"error") => return Err("join_error".into()),
                _ => {}
            },
            Ok(Some(In::Close(code, _))) => return Err(format!("close_{}", code.unwrap_or(0))),
            Ok(None) | Err(_) => return Err("closed".into()),
        }
    }
}

/// Counts the `typing` events one member receives.
async fn receive(mut c: Conn, state: Rc<RefCell<Core>>, shared: Arc<Shared>, core: usize) {
    loop {
        let frame = c.reader.next(&c.writer).await;
        let mut s = state.borrow_mut();
        match frame {
            Ok(Some(In::Text(t))) => match msg::str_field(t, "type") {
                Some(b"typing") => {
                    s.events_total += 1;
                    Counters::add(&shared.cores[core].delivered, 1);
                    if shared.measuring.load(Relaxed) {
                        s.events_window += 1;
                    }
                }
                Some(b"error") => {
                    let code = String::from_utf8_lossy(msg::str_field(t, "code").unwrap_or(b"unknown")).into_owned();
                    s.errors.add(format!("error_{code}"), 1);
                }
                _ => {}
            },
            Ok(Some(In::Close(code, _))) => {
                s.errors.add(format!("closed_{}", code.unwrap_or(0)), 1);
                break;
            }
            Ok(None) | Err(_) => {
                if !shared.stop.load(Relaxed) {
                    s.errors.add("connection_lost", 1);
                }
                break;
            }
        }
    }
}

/// One member typing in bursts until `stop`.
async fn type_loop(
    room: &str,
    w: &conn::Writer,
    a: &TypingArgs,
    state: &Rc<RefCell<Core>>,
    stop: &Cell<bool>,
    shared: &Shared,
    core: usize,
) {
    let start = format!(r#"{{"type":"typing","room":"{room}","state":"start"}}"#);
    let end = format!(r#"{{"type":"typing","room":"{room}","state":"stop"}}"#);
    // A random phase, so bursts overlap as they would in a busy room.
    glommio::timer::sleep(Duration::from_millis(rand::random::<u64>() % (a.burst_ms + a.pause_ms))).await;
    while !stop.get() {
        let burst_end = runner::now_ns() + a.burst_ms * 1_000_000;
        while runner::now_ns() < burst_end && !stop.get() {
            if !send(w, &start, state, shared, core).await {
                return;
            }
            glommio::timer::sleep(Duration::from_millis(a.refresh_ms)).await;
        }
        if !send(w, &end, state, shared, core).await {
            return;
        }
        glommio::timer::sleep(Duration::from_millis(a.pause_ms)).await;
    }
}

async fn send(w: &conn::Writer, frame: &str, state: &Rc<RefCell<Core>>, shared: &Shared, core: usize) -> bool {
    if conn::send(w, OP_TEXT, frame.as_bytes()).await.is_err() {
        state.borrow_mut().errors.add("send_failed", 1);
        return false;
    }
    Counters::add(&shared.cores[core].sent, 1);
    if shared.measuring.load(Relaxed) {
        state.borrow_mut().frames_sent_window += 1;
    }
    true
}

fn report(
    a: &TypingArgs,
    cores: &[Core],
    cpu: (Option<u64>, Option<u64>, f64),
    driver: Option<String>,
    cpus: &[usize],
) -> anyhow::Result<bool> {
    let (mut errors, mut connects) = (Outcomes::default(), Outcomes::default());
    let (mut sent, mut events, mut events_total) = (0u64, 0u64, 0u64);
    for c in cores {
        errors.merge(&c.errors);
        connects.merge(&c.connects);
        sent += c.frames_sent_window;
        events += c.events_window;
        events_total += c.events_total;
    }
    let (cpu_start, cpu_end, secs) = cpu;
    let per_s = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let cpu_ns = match (cpu_start, cpu_end) {
        (Some(x), Some(y)) => Some(y.saturating_sub(x)),
        _ => None,
    };
    let server_cores = cpu_ns.filter(|_| secs > 0.0).map(|n| n as f64 / 1e9 / secs);
    let ns_per_event = cpu_ns.filter(|_| events > 0).map(|n| n as f64 / events as f64);
    let ns_per_frame_in = cpu_ns.filter(|_| sent > 0).map(|n| n as f64 / sent as f64);
    let joined = connects.get("101");
    let results = obj(vec![
        ("members_joined", json!(joined)),
        ("connect_outcomes", connects.to_json()),
        ("window_s", json!(secs)),
        ("typing_frames_sent_per_s", json!(per_s(sent))),
        ("typing_events_delivered_per_s", json!(per_s(events))),
        ("typing_events_total", json!(events_total)),
        ("errors", errors.to_json()),
        ("server_cpu_cores", json!(server_cores)),
        ("server_cpu_ns_per_event_delivered", json!(ns_per_event)),
        ("server_cpu_ns_per_frame_sent", json!(ns_per_frame_in)),
    ]);
    let mut rows = vec![
        (
            "members joined".into(),
            format!("{joined} of {} ({})", a.members, connects.describe()),
        ),
        ("typing frames sent".into(), format!("{:.0}/s", per_s(sent))),
        ("typing events delivered".into(), format!("{:.0}/s", per_s(events))),
        ("errors".into(), errors.describe()),
    ];
    if let (Some(c), Some(n)) = (server_cores, ns_per_event) {
        rows.push(("server CPU".into(), format!("{c:.3} cores, {n:.0} ns per typing event delivered")));
    }
    let title = format!(
        "typing: 1 room x {} members, start every {} ms for {} ms, pause {} ms, {} s measured",
        a.members, a.refresh_ms, a.burst_ms, a.pause_ms, a.common.duration_s
    );
    output::print_table(&title, &rows);
    let params = json!({
        "members": a.members, "refresh_ms": a.refresh_ms, "burst_ms": a.burst_ms, "pause_ms": a.pause_ms,
        "warmup_s": a.warmup_s, "duration_s": a.common.duration_s, "urls": a.common.urls,
    });
    output::write_json(
        a.common.json.as_deref(),
        &output::envelope("typing", params, results, (driver, a.common.server_cpus.clone()), cpus),
    )?;
    Ok(joined == a.members as u64 && errors.0.is_empty())
}
