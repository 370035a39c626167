//! `loadgen fanout`: R rooms × M members, K senders per room each sending X
//! messages/s; deliveries/s, send→deliver latency and per-room correctness.
//!
//! Senders are open-loop: message k of a sender is due at `start + k/X`, and
//! its body carries that due time, so latency includes any time the sender
//! fell behind (no coordinated omission). Members are connected with
//! `?room=` (placed on the room owner's shard), join, and account for every
//! delivery by seq (see [`crate::seq`]). After the measured window the
//! senders stop and loadgen waits for the last deliveries and acks, then
//! checks every member against the highest seq acked in its room.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use serde_json::json;

use super::{histogram, kind, run_tag, Dialer, Outcomes};
use crate::conn::{self, Conn, In};
use crate::msg;
use crate::output::{self, obj};
use crate::runner::{self, Counters, Shared};
use crate::seq::{SeqTracker, Tally};
use crate::ws::OP_TEXT;
use crate::Common;

#[derive(Args, Debug, Clone)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,
    /// Rooms.
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Members per room (senders included).
    #[arg(long, default_value_t = 100)]
    pub members: usize,
    /// Senders per room (the first K members of each room).
    #[arg(long, default_value_t = 1)]
    pub senders: usize,
    /// Messages per second from each sender (the edge's default per-connection limit is 50).
    #[arg(long, default_value_t = 10.0)]
    pub rate_per_sender: f64,
    /// Bytes of each message body (at least the send stamp).
    #[arg(long, default_value_t = 64)]
    pub payload_bytes: usize,
    /// Seconds of traffic before the measured window.
    #[arg(long, default_value_t = 2)]
    pub warmup_s: u64,
    /// Longest wait for the last deliveries and acks after the senders stop.
    #[arg(long, default_value_t = 10_000)]
    pub drain_ms: u64,
}

/// One core's share of the run.
#[derive(Default)]
struct Core {
    trackers: Vec<(usize, SeqTracker)>,
    last_acked: HashMap<usize, u64>,
    latency_us: Option<hdrhistogram::Histogram<u64>>,
    /// Send (due time) → `ack`: what the sender waits for (the group commit in `durable` mode).
    ack_latency_us: Option<hdrhistogram::Histogram<u64>>,
    /// How late senders sent (actual send time - due time): loadgen's own lag.
    sender_lag_us: Option<hdrhistogram::Histogram<u64>>,
    sent_window: u64,
    delivered_window: u64,
    sent_total: u64,
    acked_total: u64,
    errors: Outcomes,
    connects: Outcomes,
}

/// Readings core 0 takes at the edges of the measured window.
#[derive(Default, Clone, Copy)]
struct Window {
    start_ns: u64,
    end_ns: u64,
    cpu_start_ns: Option<u64>,
    cpu_end_ns: Option<u64>,
}

pub fn run(a: FanoutArgs) -> anyhow::Result<bool> {
    validate(&a)?;
    let dialer = Dialer::new(&a.common)?;
    runner::check_fd_budget(a.rooms * a.members)?;
    let cpus = a.common.cpus()?;
    let driver = output::server_driver(dialer.first_addr());
    let shared = Shared::new(cpus.len());
    let window: Arc<Mutex<Window>> = Arc::default();
    let tag = run_tag();
    let body = {
        let (shared, window, a) = (shared.clone(), window.clone(), a.clone());
        move |core: usize| {
            let (shared, window, a, dialer, tag) = (shared.clone(), window.clone(), a.clone(), dialer.clone(), tag.clone());
            async move { run_core(core, &a, &dialer, &tag, &shared, &window).await }
        }
    };
    let progress = {
        let s = shared.clone();
        move || {
            format!(
                "members {} errors {} sent {} delivered {}",
                s.total(|c| &c.connected),
                s.total(|c| &c.connect_errors),
                s.total(|c| &c.sent),
                s.total(|c| &c.delivered)
            )
        }
    };
    let cores = runner::run_cores(&cpus, body, progress)?;
    let w = *window.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    report(&a, &cores, w, driver, &cpus)
}

fn validate(a: &FanoutArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.rooms > 0, "--rooms must be at least 1");
    anyhow::ensure!(a.members > 0, "--members must be at least 1");
    anyhow::ensure!(
        a.senders > 0 && a.senders <= a.members,
        "--senders must be between 1 and --members ({})",
        a.members
    );
    anyhow::ensure!(
        a.rate_per_sender.is_finite() && a.rate_per_sender > 0.0,
        "--rate-per-sender must be a positive number"
    );
    anyhow::ensure!(
        (24..=60_000).contains(&a.payload_bytes),
        "--payload-bytes must be between 24 and 60000"
    );
    Ok(())
}

async fn run_core(
    core: usize,
    a: &FanoutArgs,
    dialer: &Dialer,
    tag: &str,
    shared: &Arc<Shared>,
    window: &Mutex<Window>,
) -> anyhow::Result<Core> {
    let state = Rc::new(RefCell::new(Core {
        latency_us: Some(histogram()),
        ack_latency_us: Some(histogram()),
        sender_lag_us: Some(histogram()),
        ..Core::default()
    }));
    let senders = join_members(core, a, dialer, tag, shared, &state).await;
    shared.barrier(1).await;
    let stop = Rc::new(std::cell::Cell::new(false));
    let mut tasks = Vec::new();
    for (room, w) in senders {
        let (state, stop, shared, a) = (state.clone(), stop.clone(), shared.clone(), a.clone());
        let name = format!("lg{tag}-{room}");
        tasks.push(glommio::spawn_local(async move {
            send_loop(&name, &w, &a, &state, &stop, &shared, core).await
        }));
    }
    if core == 0 {
        glommio::timer::sleep(Duration::from_secs(a.warmup_s)).await;
        let pid = a.common.server_pid;
        let cpu_start_ns = pid.map(output::cpu_ns).transpose()?;
        shared.measuring.store(true, Relaxed);
        let start_ns = runner::now_ns();
        glommio::timer::sleep(Duration::from_secs(a.common.duration_s)).await;
        shared.measuring.store(false, Relaxed);
        let end_ns = runner::now_ns();
        let cpu_end_ns = pid.map(output::cpu_ns).transpose()?;
        *window.lock().map_err(|_| anyhow::anyhow!("poisoned"))? = Window {
            start_ns,
            end_ns,
            cpu_start_ns,
            cpu_end_ns,
        };
        shared.stop.store(true, Relaxed);
    }
    Shared::until(&shared.stop, Duration::from_millis(5)).await;
    stop.set(true);
    for t in tasks {
        t.await;
    }
    drain(core, a, shared, &state).await;
    shared.barrier(2).await;
    let core_state = std::mem::take(&mut *state.borrow_mut());
    Ok(core_state)
}

/// Connects and joins this core's members; returns the senders' (room, writer).
async fn join_members(
    core: usize,
    a: &FanoutArgs,
    dialer: &Dialer,
    tag: &str,
    shared: &Arc<Shared>,
    state: &Rc<RefCell<Core>>,
) -> Vec<(usize, conn::Writer)> {
    let cores = shared.cores.len();
    let mine: Vec<usize> = (core..a.rooms * a.members).step_by(cores).collect();
    let senders = Rc::new(RefCell::new(Vec::new()));
    let next = Rc::new(std::cell::Cell::new(0usize));
    let mut workers = Vec::new();
    for _ in 0..a.common.concurrency.min(mine.len()).max(1) {
        let (mine, next, senders, state, shared, dialer, tag, a) = (
            mine.clone(),
            next.clone(),
            senders.clone(),
            state.clone(),
            shared.clone(),
            dialer.clone(),
            tag.to_owned(),
            a.clone(),
        );
        workers.push(glommio::spawn_local(async move {
            while next.get() < mine.len() {
                let g = mine[next.get()];
                next.set(next.get() + 1);
                let (room, member) = (g / a.members, g % a.members);
                let name = format!("lg{tag}-{room}");
                match join_one(&dialer, g, &format!("lg{tag}-u{g}"), &name).await {
                    Ok((c, seq)) => {
                        Counters::add(&shared.cores[core].connected, 1);
                        if member < a.senders {
                            senders.borrow_mut().push((room, c.writer.clone()));
                        }
                        let slot = {
                            let mut s = state.borrow_mut();
                            let mut t = SeqTracker::default();
                            t.begin(seq);
                            s.trackers.push((room, t));
                            s.connects.add("101", 1);
                            s.trackers.len() - 1
                        };
                        glommio::spawn_local(receive(c, room, slot, state.clone(), shared.clone(), core)).detach();
                    }
                    Err(k) => {
                        Counters::add(&shared.cores[core].connect_errors, 1);
                        state.borrow_mut().connects.add(k, 1);
                    }
                }
            }
        }));
    }
    for w in workers {
        w.await;
    }
    senders.take()
}

/// Connects with `?room=` (which joins it) and returns the connection with the room's seq at join.
async fn join_one(dialer: &Dialer, index: usize, user: &str, room: &str) -> Result<(Conn, u64), String> {
    // `?room=` places the connection on the owner shard and joins it there.
    let mut c = dialer.dial(index, user, Some(room)).await.map_err(|e| kind(&e))?;
    loop {
        match c.reader.next(&c.writer).await {
            Ok(Some(In::Text(t))) => match msg::str_field(t, "type") {
                Some(b"joined") => return msg::u64_field(t, "seq").map(|s| (c, s)).ok_or_else(|| "protocol".to_owned()),
                Some(b"error") => {
                    return Err(format!(
                        "join_{}",
                        String::from_utf8_lossy(msg::str_field(t, "code").unwrap_or(b"error"))
                    ))
                }
                _ => {}
            },
            Ok(Some(In::Close(code, _))) => return Err(format!("close_{}", code.unwrap_or(0))),
            Ok(None) | Err(_) => return Err("closed".into()),
        }
    }
}

/// Reads one member's frames until the connection ends.
async fn receive(mut c: Conn, room: usize, slot: usize, state: Rc<RefCell<Core>>, shared: Arc<Shared>, core: usize) {
    let counters = &shared.cores[core];
    loop {
        let frame = c.reader.next(&c.writer).await;
        let mut s = state.borrow_mut();
        match frame {
            Ok(Some(In::Text(t))) => match msg::str_field(t, "type") {
                Some(b"message") => {
                    let Some(seq) = msg::u64_field(t, "seq") else {
                        s.errors.add("unparsable_message", 1);
                        continue;
                    };
                    s.trackers[slot].1.receive(seq);
                    Counters::add(&counters.delivered, 1);
                    if shared.measuring.load(Relaxed) {
                        s.delivered_window += 1;
                        if let (Some(stamp), Some(h)) = (msg::body_stamp_ns(t), s.latency_us.as_mut()) {
                            let _ = h.record(runner::now_ns().saturating_sub(stamp) / 1000);
                        }
                    }
                }
                Some(b"ack") => {
                    if let Some(seq) = msg::u64_field(t, "seq") {
                        let e = s.last_acked.entry(room).or_default();
                        *e = (*e).max(seq);
                        s.acked_total += 1;
                    }
                    // The request id is the send's due time (see `render_send`).
                    if shared.measuring.load(Relaxed) {
                        if let (Some(due), Some(h)) = (msg::u64_field(t, "id"), s.ack_latency_us.as_mut()) {
                            let _ = h.record(runner::now_ns().saturating_sub(due) / 1000);
                        }
                    }
                }
                Some(b"gap") => {
                    let (from, to) = (msg::u64_field(t, "from").unwrap_or(0), msg::u64_field(t, "to").unwrap_or(0));
                    s.trackers[slot].1.gap(from, to);
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
    Counters::add(&counters.closed, 1);
}

/// One sender: message k is due at start + k / rate and carries that due time.
async fn send_loop(
    room: &str,
    w: &conn::Writer,
    a: &FanoutArgs,
    state: &Rc<RefCell<Core>>,
    stop: &std::cell::Cell<bool>,
    shared: &Shared,
    core: usize,
) {
    let interval_ns = (1e9 / a.rate_per_sender) as u64;
    // Spread senders' phases so they do not all fire on the same tick.
    let start = runner::now_ns() + rand::random::<u64>() % interval_ns.max(1);
    let mut k = 0u64;
    let mut frame = Vec::with_capacity(a.payload_bytes + 64);
    while !stop.get() {
        let due = start + k * interval_ns;
        let now = runner::now_ns();
        if due > now {
            glommio::timer::sleep(Duration::from_nanos(due - now)).await;
            continue;
        }
        frame.clear();
        render_send(&mut frame, room, due, a.payload_bytes);
        if conn::send(w, OP_TEXT, &frame).await.is_err() {
            state.borrow_mut().errors.add("send_failed", 1);
            return;
        }
        k += 1;
        Counters::add(&shared.cores[core].sent, 1);
        let mut s = state.borrow_mut();
        s.sent_total += 1;
        if shared.measuring.load(Relaxed) {
            s.sent_window += 1;
            if let Some(h) = s.sender_lag_us.as_mut() {
                let _ = h.record(now.saturating_sub(due) / 1000);
            }
        }
    }
}

/// `{"type":"send","room":R,"body":"<due ns>:xxxx..."}` with a body of `payload_bytes`.
pub(super) fn render_send(out: &mut Vec<u8>, room: &str, due_ns: u64, payload_bytes: usize) {
    use std::io::Write as _;
    let _ = write!(out, r#"{{"type":"send","id":{due_ns},"room":"{room}","body":""#);
    let body_start = out.len();
    let _ = write!(out, "{due_ns}:");
    let pad = payload_bytes.saturating_sub(out.len() - body_start);
    out.extend(std::iter::repeat_n(b'x', pad));
    out.extend_from_slice(b"\"}");
}

/// Waits until this core's senders have their acks and deliveries stopped coming.
async fn drain(core: usize, a: &FanoutArgs, shared: &Shared, state: &Rc<RefCell<Core>>) {
    let deadline = runner::now_ns() + a.drain_ms * 1_000_000;
    let mut last = u64::MAX;
    let mut quiet_since = runner::now_ns();
    while runner::now_ns() < deadline {
        let delivered = shared.cores[core].delivered.load(Relaxed);
        let all_acked = {
            let s = state.borrow();
            s.acked_total + s.errors.get("error_rate_limited") + s.errors.get("error_overloaded") >= s.sent_total
        };
        if delivered != last {
            last = delivered;
            quiet_since = runner::now_ns();
        } else if all_acked && runner::now_ns() - quiet_since > 300_000_000 {
            return;
        }
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
}

fn report(a: &FanoutArgs, cores: &[Core], w: Window, driver: Option<String>, cpus: &[usize]) -> anyhow::Result<bool> {
    let mut last_acked: HashMap<usize, u64> = HashMap::new();
    for c in cores {
        for (&room, &s) in &c.last_acked {
            let e = last_acked.entry(room).or_default();
            *e = (*e).max(s);
        }
    }
    let mut tally = Tally::default();
    let mut hist = histogram();
    let mut lag = histogram();
    let mut acks = histogram();
    let (mut errors, mut connects) = (Outcomes::default(), Outcomes::default());
    let (mut sent_w, mut deliv_w, mut sent_total) = (0, 0, 0);
    for c in cores {
        for (room, t) in &c.trackers {
            tally.add(&t.finish(last_acked.get(room).copied().unwrap_or(0)));
        }
        if let Some(h) = &c.latency_us {
            hist.add(h).map_err(|e| anyhow::anyhow!("histogram merge: {e}"))?;
        }
        if let Some(h) = &c.sender_lag_us {
            lag.add(h).map_err(|e| anyhow::anyhow!("histogram merge: {e}"))?;
        }
        if let Some(h) = &c.ack_latency_us {
            acks.add(h).map_err(|e| anyhow::anyhow!("histogram merge: {e}"))?;
        }
        errors.merge(&c.errors);
        connects.merge(&c.connects);
        sent_w += c.sent_window;
        deliv_w += c.delivered_window;
        sent_total += c.sent_total;
    }
    let secs = (w.end_ns.saturating_sub(w.start_ns)) as f64 / 1e9;
    let per_s = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let server_cores = match (w.cpu_start_ns, w.cpu_end_ns) {
        (Some(x), Some(y)) if secs > 0.0 => Some((y - x) as f64 / 1e9 / secs),
        _ => None,
    };
    let ns_per_delivery = match (w.cpu_start_ns, w.cpu_end_ns) {
        (Some(x), Some(y)) if deliv_w > 0 => Some((y - x) as f64 / deliv_w as f64),
        _ => None,
    };
    let members = (a.rooms * a.members) as u64;
    let joined = connects.get("101");
    let offered = a.rooms as f64 * a.senders as f64 * a.rate_per_sender * a.members as f64;
    let lat = output::latency_ms(&hist);
    let results = obj(vec![
        ("members_joined", json!(joined)),
        ("connect_outcomes", connects.to_json()),
        ("window_s", json!(secs)),
        ("sent_per_s", json!(per_s(sent_w))),
        ("deliveries_per_s", json!(per_s(deliv_w))),
        ("offered_deliveries_per_s", json!(offered)),
        ("latency_ms", lat.clone()),
        ("sender_lag_ms", output::latency_ms(&lag)),
        ("ack_latency_ms", output::latency_ms(&acks)),
        ("sent_total", json!(sent_total)),
        ("delivered_total", json!(tally.delivered)),
        ("lost", json!(tally.lost)),
        ("duplicated", json!(tally.duplicated)),
        ("out_of_order", json!(tally.out_of_order)),
        ("announced_lost", json!(tally.announced_lost)),
        ("errors", errors.to_json()),
        ("server_cpu_cores", json!(server_cores)),
        ("server_cpu_ns_per_delivery", json!(ns_per_delivery)),
    ]);
    let f = |k: &str| lat.get(k).and_then(serde_json::Value::as_f64).unwrap_or(f64::NAN);
    let mut rows = vec![
        ("members joined".into(), format!("{joined} of {members} ({})", connects.describe())),
        ("sent".into(), format!("{:.0}/s", per_s(sent_w))),
        ("deliveries".into(), format!("{:.0}/s (offered {offered:.0}/s)", per_s(deliv_w))),
        (
            "latency".into(),
            format!(
                "p50 {:.3} ms, p90 {:.3}, p99 {:.3}, p99.9 {:.3}, max {:.3}",
                f("p50"),
                f("p90"),
                f("p99"),
                f("p999"),
                f("max")
            ),
        ),
        (
            "ack latency".into(),
            format!(
                "p50 {:.3} ms, p99 {:.3} ms (send -> ack)",
                acks.value_at_quantile(0.5) as f64 / 1e3,
                acks.value_at_quantile(0.99) as f64 / 1e3
            ),
        ),
        (
            "correctness".into(),
            format!(
                "lost {}, duplicated {}, out of order {} (announced gaps {})",
                tally.lost, tally.duplicated, tally.out_of_order, tally.announced_lost
            ),
        ),
        (
            "sender lag".into(),
            format!(
                "p50 {:.3} ms, p99 {:.3} ms (how late loadgen sent; included in latency)",
                lag.value_at_quantile(0.5) as f64 / 1e3,
                lag.value_at_quantile(0.99) as f64 / 1e3
            ),
        ),
        ("errors".into(), errors.describe()),
    ];
    if let (Some(c), Some(n)) = (server_cores, ns_per_delivery) {
        rows.push(("server CPU".into(), format!("{c:.2} cores, {n:.0} ns per delivery")));
    }
    let title = format!(
        "fanout: {} rooms x {} members, {} sender(s)/room at {}/s, {} s measured",
        a.rooms, a.members, a.senders, a.rate_per_sender, a.common.duration_s
    );
    output::print_table(&title, &rows);
    let params = json!({
        "rooms": a.rooms, "members": a.members, "senders_per_room": a.senders, "rate_per_sender": a.rate_per_sender,
        "payload_bytes": a.payload_bytes, "warmup_s": a.warmup_s, "duration_s": a.common.duration_s, "urls": a.common.urls,
    });
    output::write_json(
        a.common.json.as_deref(),
        &output::envelope("fanout", params, results, (driver, a.common.server_cpus.clone()), cpus),
    )?;
    Ok(tally.is_clean() && joined == members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_frames_carry_the_stamp_and_the_payload_size() {
        let mut out = Vec::new();
        render_send(&mut out, "lg-1", 123_456, 64);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(v["room"], "lg-1");
        assert_eq!(v["id"], 123_456, "the id is the due time: the ack's latency is read from it");
        let body = v["body"].as_str().expect("body");
        assert_eq!(body.len(), 64);
        assert!(body.starts_with("123456:x"));
        // the receiver's fast path reads the stamp back from a message carrying this body
        let echoed = format!(r#"{{"type":"message","room":"lg-1","seq":1,"body":"{body}"}}"#);
        assert_eq!(msg::body_stamp_ns(echoed.as_bytes()), Some(123_456));
    }
}
