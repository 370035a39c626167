//! `framebench`: what reading a node-to-node frame costs at the receive boundary.
//!
//! A cluster message arrives from Redis as a `Deliver` frame (version byte +
//! rkyv archive) at whatever address the Redis client's buffer put it. The
//! workspace builds rkyv with `unaligned` (archives have alignment 1), so the
//! receiver validates and reads the frame in place. The alternative the
//! issue names is one copy into an aligned buffer at the boundary (what
//! rkyv's default, aligned format needs); both are measured here, on a frame
//! placed at an odd offset, with serde_json parsing the same message as the
//! baseline a JSON inter-node protocol would pay.
//!
//! Bounded: `--iterations` per variant (default 2 million), a few seconds in all.

use std::hint::black_box;
use std::time::Instant;

use clap::Parser;
use router::bridge::PreparedMessage;

#[derive(Parser, Debug)]
#[command(
    name = "framebench",
    about = "Cost of reading a Deliver frame in place vs copied into an aligned buffer"
)]
struct Cli {
    /// Reads per variant.
    #[arg(long, default_value_t = 2_000_000)]
    iterations: u64,
    /// Size of the client JSON inside the frame, bytes (at least 128).
    #[arg(long, default_value_t = 200)]
    payload_bytes: usize,
    /// Write the figures as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

fn payload(bytes: usize) -> Vec<u8> {
    let head = r#"{"type":"message","room":"lobby","seq":                    ,"msg_id":"n1-0-1","from":"u1","ts":1764600000000,"body":""#;
    let tail = r#"","kind":"text"}"#;
    let fill = bytes.saturating_sub(head.len() + tail.len()).max(1);
    let mut p = Vec::with_capacity(bytes);
    p.extend_from_slice(head.as_bytes());
    p.extend(std::iter::repeat_n(b'x', fill));
    p.extend_from_slice(tail.as_bytes());
    p
}

/// ns per call of `f` over `n` calls.
fn time(n: u64, mut f: impl FnMut() -> usize) -> f64 {
    let mut sink = 0usize;
    let start = Instant::now();
    for _ in 0..n {
        sink = sink.wrapping_add(f());
    }
    black_box(sink);
    start.elapsed().as_nanos() as f64 / n as f64
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    anyhow::ensure!(cli.payload_bytes >= 128, "--payload-bytes must be at least 128");
    anyhow::ensure!(cli.iterations > 0, "--iterations must be at least 1");
    let json_payload = payload(cli.payload_bytes);
    let msg = PreparedMessage::new("lobby", json_payload.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let frame = msg.patched(42);
    // The frame at an odd offset, as a receive buffer may hold it.
    let mut recv = vec![0u8; frame.len() + 1];
    recv[1..].copy_from_slice(&frame);
    let at_odd = &recv[1..];
    let read_in_place = || match router::decode(black_box(at_odd)) {
        Ok(router::ArchivedFrame::Deliver { seq, payload, .. }) => payload.len() + seq.to_native() as usize,
        _ => 0,
    };
    anyhow::ensure!(read_in_place() == json_payload.len() + 42, "the frame did not decode in place");
    let in_place = time(cli.iterations, read_in_place);
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(frame.len());
    let copied = time(cli.iterations, || {
        aligned.clear();
        aligned.extend_from_slice(black_box(at_odd));
        match router::decode(&aligned) {
            Ok(router::ArchivedFrame::Deliver { seq, payload, .. }) => payload.len() + seq.to_native() as usize,
            _ => 0,
        }
    });
    let filled = String::from_utf8(json_payload)?.replace(router::bridge::SEQ_PLACEHOLDER, "\"seq\":42");
    let json_bytes = filled.as_bytes();
    let serde = time(cli.iterations / 4, || {
        match serde_json::from_slice::<serde_json::Value>(black_box(json_bytes)) {
            Ok(v) => v["seq"].as_u64().unwrap_or(0) as usize,
            Err(_) => 0,
        }
    });
    println!(
        "frame {} bytes (payload {}), {} reads each",
        frame.len(),
        cli.payload_bytes,
        cli.iterations
    );
    println!("  in place (unaligned archive, odd offset)   {in_place:8.1} ns/read");
    println!("  copy into an aligned buffer, then read     {copied:8.1} ns/read");
    println!("  baseline: serde_json parse of the message  {serde:8.1} ns/read");
    if let Some(path) = cli.json {
        let out = serde_json::json!({
            "tool": "framebench", "scenario": "deliver-frame-read",
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "frame_bytes": frame.len(), "payload_bytes": cli.payload_bytes, "iterations": cli.iterations,
            "results": {"in_place_ns": in_place, "aligned_copy_ns": copied, "serde_json_baseline_ns": serde},
        });
        std::fs::write(&path, serde_json::to_vec_pretty(&out)?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
