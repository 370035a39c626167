//! `loadgen inbox`: the latency of `sync` for a user who belongs to many
//! rooms. A reader joins `--rooms` rooms (the edge must allow that many per
//! connection: `EDGE_MAX_ROOMS_PER_CONN`), a writer sends one message to
//! each, and once the reader's `sync` lists every room with its unread
//! message, the reader asks `sync` `--requests` times, one after another;
//! each answer must list every room.

use std::time::Duration;

use clap::Args;
use serde_json::{json, Value};

use super::{histogram, kind, run_tag, Dialer};
use crate::conn::{self, Conn, In};
use crate::msg;
use crate::output::{self, obj};
use crate::runner;
use crate::ws::OP_TEXT;
use crate::Common;

#[derive(Args, Debug, Clone)]
pub struct InboxArgs {
    #[command(flatten)]
    pub common: Common,
    /// Rooms the reader belongs to.
    #[arg(long, default_value_t = 500)]
    pub rooms: usize,
    /// `sync` requests timed.
    #[arg(long, default_value_t = 200)]
    pub requests: usize,
}

pub fn run(a: InboxArgs) -> anyhow::Result<bool> {
    anyhow::ensure!(a.rooms > 0 && a.requests > 0, "--rooms and --requests must be at least 1");
    let dialer = Dialer::new(&a.common)?;
    let cpus: Vec<usize> = a.common.cpus()?.into_iter().take(1).collect();
    let driver = output::server_driver(dialer.first_addr());
    let tag = run_tag();
    let body = {
        let a = a.clone();
        move |_core: usize| {
            let (a, dialer, tag) = (a.clone(), dialer.clone(), tag.clone());
            async move { measure(&a, &dialer, &tag).await }
        }
    };
    let mut out = runner::run_cores(&cpus, body, || "filling the inbox, then timing sync".to_owned())?;
    let m = out.pop().ok_or_else(|| anyhow::anyhow!("no result"))?;
    report(&a, m, driver, &cpus)
}

/// What the run measured.
struct Measured {
    latency_us: hdrhistogram::Histogram<u64>,
    cpu_ns: Option<u64>,
    listed: usize,
    wrong: usize,
}

async fn measure(a: &InboxArgs, dialer: &Dialer, tag: &str) -> anyhow::Result<Measured> {
    let mut reader = connect(dialer, 0, &format!("lg{tag}-reader")).await?;
    let mut writer = connect(dialer, 1, &format!("lg{tag}-writer")).await?;
    for k in 0..a.rooms {
        let room = format!("lg{tag}-i{k}");
        request(&mut reader, &json!({"type": "join", "room": room}), "joined").await?;
        request(&mut writer, &json!({"type": "join", "room": room}), "joined").await?;
        request(&mut writer, &json!({"type": "send", "room": room, "body": "hi"}), "ack").await?;
        request(&mut writer, &json!({"type": "leave", "room": room}), "left").await?;
    }
    // Memberships and messages reach the store a moment after their answers.
    let deadline = runner::now_ns() + 10_000_000_000;
    let mut listed = 0;
    while runner::now_ns() < deadline {
        let v: Value = serde_json::from_slice(&request(&mut reader, &json!({"type": "sync"}), "sync").await?)?;
        listed = inbox(&v).iter().filter(|e| e["unread"] == 1).count();
        if listed == a.rooms {
            break;
        }
        glommio::timer::sleep(Duration::from_millis(50)).await;
    }
    anyhow::ensure!(
        listed == a.rooms,
        "sync lists {listed} of {} rooms with their message after 10 s",
        a.rooms
    );
    let mut latency_us = histogram();
    let mut wrong = 0;
    let cpu_start = a.common.server_pid.map(output::cpu_ns).transpose()?;
    for _ in 0..a.requests {
        let t0 = runner::now_ns();
        let answer = request(&mut reader, &json!({"type": "sync"}), "sync").await?;
        let _ = latency_us.record((runner::now_ns() - t0) / 1000);
        let v: Value = serde_json::from_slice(&answer)?;
        wrong += usize::from(inbox(&v).len() != a.rooms);
    }
    let cpu_end = a.common.server_pid.map(output::cpu_ns).transpose()?;
    Ok(Measured {
        latency_us,
        cpu_ns: cpu_start.zip(cpu_end).map(|(x, y)| y.saturating_sub(x)),
        listed,
        wrong,
    })
}

fn inbox(v: &Value) -> &[Value] {
    v["rooms"].as_array().map_or(&[], Vec::as_slice)
}

async fn connect(dialer: &Dialer, index: usize, user: &str) -> anyhow::Result<Conn> {
    dialer
        .dial(index, user, None)
        .await
        .map_err(|e| anyhow::anyhow!("connect {user}: {}", kind(&e)))
}

/// Sends `v` and returns the first frame of type `want` (an `error` fails the run).
async fn request(c: &mut Conn, v: &Value, want: &str) -> anyhow::Result<Vec<u8>> {
    conn::send(&c.writer, OP_TEXT, v.to_string().as_bytes()).await?;
    loop {
        match c.reader.next(&c.writer).await? {
            Some(In::Text(t)) => match msg::str_field(t, "type") {
                Some(ty) if ty == want.as_bytes() => return Ok(t.to_vec()),
                Some(b"error") => anyhow::bail!("{v} answered {}", String::from_utf8_lossy(t)),
                _ => {}
            },
            Some(In::Close(code, _)) => anyhow::bail!("closed {code:?} while waiting for {want}"),
            None => anyhow::bail!("connection ended while waiting for {want}"),
        }
    }
}

fn report(a: &InboxArgs, m: Measured, driver: Option<String>, cpus: &[usize]) -> anyhow::Result<bool> {
    let lat = output::latency_ms(&m.latency_us);
    let cpu_per_sync = m.cpu_ns.map(|n| n as f64 / a.requests as f64);
    let results = obj(vec![
        ("rooms_listed", json!(m.listed)),
        ("answers_missing_rooms", json!(m.wrong)),
        ("sync_latency_ms", lat.clone()),
        ("server_cpu_ns_per_sync", json!(cpu_per_sync)),
    ]);
    let f = |k: &str| lat.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let mut rows = vec![
        ("rooms listed".into(), format!("{} of {}", m.listed, a.rooms)),
        (
            "sync latency".into(),
            format!(
                "p50 {:.3} ms, p90 {:.3}, p99 {:.3}, max {:.3}",
                f("p50"),
                f("p90"),
                f("p99"),
                f("max")
            ),
        ),
        ("answers missing rooms".into(), m.wrong.to_string()),
    ];
    if let Some(n) = cpu_per_sync {
        rows.push(("server CPU".into(), format!("{:.3} ms per sync", n / 1e6)));
    }
    output::print_table(
        &format!("inbox: sync of a user in {} rooms, {} requests", a.rooms, a.requests),
        &rows,
    );
    let params = json!({"rooms": a.rooms, "requests": a.requests, "urls": a.common.urls});
    output::write_json(
        a.common.json.as_deref(),
        &output::envelope("inbox", params, results, (driver, a.common.server_cpus.clone()), cpus),
    )?;
    Ok(m.wrong == 0)
}
