//! What a run leaves behind: the summary table on stdout, the JSON file
//! (command, git commit, machine, parameters, every figure), `compare`, and
//! the server-side readings taken from /proc.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

/// The JSON document of one run.
pub fn envelope(scenario: &str, params: Value, results: Value, server: (Option<String>, Option<String>), cpus: &[usize]) -> Value {
    let (server_driver, server_cpus) = server;
    json!({
        "tool": "loadgen",
        "scenario": scenario,
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "git_commit": git_commit(),
        "unix_time_s": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "machine": {
            "cores": online_cpus(),
            "kernel": kernel(),
            "loadgen_driver": "io_uring (glommio)",
            "loadgen_cpus": cpus,
            "server_driver": server_driver,
            "server_cpus": server_cpus,
            "cpu_steal_pct": steal_pct_since_start(),
        },
        "params": params,
        "results": results,
    })
}

pub fn write_json(path: Option<&Path>, doc: &Value) -> anyhow::Result<()> {
    if let Some(p) = path {
        let text = serde_json::to_string_pretty(doc)? + "\n";
        std::fs::write(p, text).with_context(|| format!("--json {}", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

static START_STAT: std::sync::OnceLock<Option<(u64, u64)>> = std::sync::OnceLock::new();

/// (steal, total) jiffies of all CPUs from /proc/stat.
fn cpu_stat() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let f: Vec<u64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal ...
    Some((*f.get(7)?, f.iter().take(8).sum()))
}

/// Remembers the CPU counters at the start of the run.
pub fn mark_start() {
    START_STAT.get_or_init(cpu_stat);
}

/// Share of CPU time the hypervisor gave to others during the run (steal):
/// on a virtual machine this is why figures vary between runs.
fn steal_pct_since_start() -> Option<f64> {
    let (s0, t0) = (*START_STAT.get()?)?;
    let (s1, t1) = cpu_stat()?;
    (t1 > t0).then(|| (s1 - s0) as f64 * 100.0 / (t1 - t0) as f64)
}

/// CPUs online on the machine (not only those this process may run on).
pub fn online_cpus() -> usize {
    // SAFETY: sysconf has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 {
        n as usize
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn kernel() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|s| s.trim().to_owned())
}

/// The driver the edge reports on /metrics (`edge_info{driver="..."}`), if it answers.
pub fn server_driver(addr: std::net::SocketAddr) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let timeout = std::time::Duration::from_secs(2);
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    let at = body.find("driver=\"")? + 8;
    Some(body[at..].split('"').next()?.to_owned())
}

/// Resident set size of a process, in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("--server-pid {pid}: no such process"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS line")?;
    Ok(line.split_whitespace().nth(1).context("VmRSS")?.parse()?)
}

/// utime + stime of a process, in nanoseconds.
pub fn cpu_ns(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("--server-pid {pid}: no such process"))?;
    let after_comm = stat.rsplit_once(')').context("stat")?.1;
    let f: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks: u64 = f.get(11).context("utime")?.parse::<u64>()? + f.get(12).context("stime")?.parse::<u64>()?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(ticks * 1_000_000_000 / hz)
}

/// Latency percentiles in milliseconds from a histogram in microseconds.
pub fn latency_ms(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({"count": 0});
    }
    let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    json!({
        "count": h.len(),
        "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999),
        "max": h.max() as f64 / 1000.0, "mean": h.mean() / 1000.0,
    })
}

/// Prints `rows` as an aligned two-column table.
pub fn print_table(title: &str, rows: &[(String, String)]) {
    println!("{title}");
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        println!("  {k:<w$}  {v}");
    }
}

/// Every numeric leaf under `results`, by dotted path.
fn numbers(doc: &Value) -> BTreeMap<String, f64> {
    fn walk(prefix: &str, v: &Value, out: &mut BTreeMap<String, f64>) {
        match v {
            Value::Number(n) => {
                if let Some(f) = n.as_f64() {
                    out.insert(prefix.to_owned(), f);
                }
            }
            Value::Object(m) => {
                for (k, v) in m {
                    let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&p, v, out);
                }
            }
            _ => {}
        }
    }
    let mut out = BTreeMap::new();
    walk("", doc.get("results").unwrap_or(&Value::Null), &mut out);
    out
}

/// `loadgen compare A.json B.json`: every figure of both runs and the ratio B/A.
pub fn compare(a_path: &Path, b_path: &Path) -> anyhow::Result<()> {
    let read = |p: &Path| -> anyhow::Result<Value> {
        let text = std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
        let v: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", p.display()))?;
        anyhow::ensure!(v.get("tool") == Some(&json!("loadgen")), "{} is not a loadgen result", p.display());
        Ok(v)
    };
    let (a, b) = (read(a_path)?, read(b_path)?);
    if a["scenario"] != b["scenario"] {
        println!("note: comparing different scenarios ({} vs {})", a["scenario"], b["scenario"]);
    }
    let (na, nb) = (numbers(&a), numbers(&b));
    let w = na.keys().chain(nb.keys()).map(String::len).max().unwrap_or(6);
    println!("{:<w$}  {:>14}  {:>14}  {:>8}", "figure", "A", "B", "B/A");
    let keys: std::collections::BTreeSet<&String> = na.keys().chain(nb.keys()).collect();
    for k in keys {
        let (x, y) = (na.get(k), nb.get(k));
        let ratio = match (x, y) {
            (Some(x), Some(y)) if *x != 0.0 => format!("{:.3}", y / x),
            _ => "-".into(),
        };
        let fmt = |v: Option<&f64>| v.map_or("-".into(), |v| format!("{v:.3}"));
        println!("{k:<w$}  {:>14}  {:>14}  {ratio:>8}", fmt(x), fmt(y));
    }
    Ok(())
}

/// A JSON object from pairs (keeps insertion order readable in files).
pub fn obj(pairs: Vec<(&str, Value)>) -> Value {
    let mut m = Map::new();
    for (k, v) in pairs {
        m.insert(k.to_owned(), v);
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_flatten_results_only() {
        let doc = json!({"params": {"x": 1}, "results": {"a": 2, "lat": {"p99": 1.5}, "s": "text"}});
        let n = numbers(&doc);
        assert_eq!(n.len(), 2);
        assert_eq!(n["a"], 2.0);
        assert_eq!(n["lat.p99"], 1.5);
    }

    #[test]
    fn latency_percentiles_in_ms() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("hist");
        for us in 1..=1000u64 {
            h.record(us).expect("record");
        }
        let v = latency_ms(&h);
        assert_eq!(v["count"], 1000);
        let p50 = v["p50"].as_f64().expect("p50");
        assert!((0.49..0.51).contains(&p50), "{p50}");
        assert!((v["max"].as_f64().expect("max") - 1.0).abs() < 0.01);
    }
}
