//! Thread-per-core plumbing: one glommio executor per chosen CPU, shared
//! progress counters, a cross-core phase barrier, a per-core broadcast
//! signal, token minting and source-address spreading.
//!
//! Cores share nothing on their hot paths but a few relaxed atomic counters
//! (one cache-line-aligned block per core), read once a second by the main
//! thread for the progress line. Per-core results (histograms, trackers)
//! come back through the executors' join handles and are merged at the end.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use glommio::{LocalExecutorBuilder, Placement};

static START: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since loadgen started: the clock of send stamps, readable on every core.
pub fn now_ns() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Progress counters of one core.
#[repr(align(128))]
#[derive(Default)]
pub struct Counters {
    pub connected: AtomicU64,
    pub connect_errors: AtomicU64,
    pub sent: AtomicU64,
    pub delivered: AtomicU64,
    pub closed: AtomicU64,
}

impl Counters {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }
}

/// State the main thread and all cores share.
pub struct Shared {
    pub cores: Vec<Counters>,
    /// Cores that reached the current barrier.
    arrived: AtomicUsize,
    /// Set by the main thread: cores wind down.
    pub stop: AtomicBool,
    /// Set by the main thread: latency and rates count from now.
    pub measuring: AtomicBool,
}

impl Shared {
    pub fn new(cores: usize) -> Arc<Self> {
        Arc::new(Self {
            cores: (0..cores).map(|_| Counters::default()).collect(),
            arrived: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            measuring: AtomicBool::new(false),
        })
    }

    pub fn total(&self, f: impl Fn(&Counters) -> &AtomicU64) -> u64 {
        self.cores.iter().map(|c| f(c).load(Relaxed)).sum()
    }

    /// Waits (polling every millisecond) until every core arrived at barrier `round` (1, 2, ...).
    pub async fn barrier(&self, round: usize) {
        self.arrived.fetch_add(1, Relaxed);
        while self.arrived.load(Relaxed) < round * self.cores.len() {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Sleeps until `flag` is set, polling every `every`.
    pub async fn until(flag: &AtomicBool, every: Duration) {
        while !flag.load(Relaxed) {
            glommio::timer::sleep(every).await;
        }
    }
}

/// Runs `body(core_index)` on one glommio executor per CPU in `cpus`, printing
/// `progress()` to stderr every second until all are done; returns their results.
pub fn run_cores<R, F, Fut>(cpus: &[usize], body: F, progress: impl Fn() -> String) -> anyhow::Result<Vec<R>>
where
    R: Send + 'static,
    F: Fn(usize) -> Fut + Send + Clone + 'static,
    Fut: Future<Output = anyhow::Result<R>> + 'static,
{
    now_ns();
    /// Counts a finished core even when its body panics.
    struct Finished(Arc<AtomicUsize>);
    impl Drop for Finished {
        fn drop(&mut self) {
            self.0.fetch_add(1, Relaxed);
        }
    }
    let finished = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for (i, &cpu) in cpus.iter().enumerate() {
        let body = body.clone();
        let guard = Finished(finished.clone());
        let h = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("loadgen-{i}"))
            .spawn(move || async move {
                let _guard = guard;
                body(i).await
            })
            .map_err(|e| anyhow::anyhow!("cannot start an io_uring executor on CPU {cpu}: {e}"))?;
        handles.push(h);
    }
    let started = Instant::now();
    let mut next = 1u64;
    while finished.load(Relaxed) < handles.len() {
        std::thread::sleep(Duration::from_millis(50));
        if started.elapsed() >= Duration::from_secs(next) {
            eprintln!("[{next:>4}s] {}", progress());
            next += 1;
        }
    }
    let mut out = Vec::new();
    for (i, h) in handles.into_iter().enumerate() {
        let r = h.join().map_err(|e| anyhow::anyhow!("executor {i}: {e}"))?;
        out.push(r.with_context(|| format!("core {i}"))?);
    }
    Ok(out)
}

/// A one-core broadcast: tasks wait for the next `notify`.
#[derive(Default)]
pub struct Signal {
    generation: Cell<u64>,
    wakers: RefCell<Vec<Waker>>,
}

impl Signal {
    pub fn generation(&self) -> u64 {
        self.generation.get()
    }

    pub fn notify(&self) {
        self.generation.set(self.generation.get() + 1);
        for w in self.wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Resolves once the generation differs from `seen`.
    pub async fn changed(&self, seen: u64) {
        std::future::poll_fn(|cx| {
            if self.generation.get() != seen {
                Poll::Ready(())
            } else {
                self.wakers.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
    }
}

/// Mints HS256 tokens for loadgen's users.
pub struct Minter {
    key: jsonwebtoken::EncodingKey,
    exp: u64,
}

impl Minter {
    pub fn new(secret: &str, ttl_s: u64) -> anyhow::Result<Self> {
        if secret.len() < 32 {
            anyhow::bail!("--jwt-secret must be at least 32 bytes (the edge refuses shorter HS256 secrets)");
        }
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // Err only means a provider was installed already; that one is used.
            let _ = jsonwebtoken::crypto::CryptoProvider::install_default(&jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER);
        });
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        Ok(Self {
            key: jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
            exp: now + ttl_s,
        })
    }

    pub fn token(&self, user: &str) -> anyhow::Result<String> {
        let claims = serde_json::json!({ "sub": user, "exp": self.exp });
        Ok(jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &self.key)?)
    }
}

/// Client sockets per loopback source address before moving to the next
/// one. Loopback has ~28k ephemeral ports per source and destination, and
/// ports of recently closed sockets sit in TIME_WAIT for a minute, so a run
/// uses at most a third of them per source.
pub const CONNS_PER_SOURCE: usize = 10_000;

/// The source address of connection `index`: for loopback targets, spread
/// from `first` upward every [`CONNS_PER_SOURCE`] connections; otherwise the
/// kernel chooses.
pub fn source_for(first: Option<Ipv4Addr>, target_is_loopback: bool, index: usize) -> Option<IpAddr> {
    let first = first?;
    if !target_is_loopback {
        return Some(IpAddr::V4(first));
    }
    let step = (index / CONNS_PER_SOURCE) as u32;
    Some(IpAddr::V4(Ipv4Addr::from(u32::from(first).saturating_add(step))))
}

/// Raises the soft open-file limit to the hard one; returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return want.rlim_cur;
            }
        }
    }
    lim.rlim_cur
}

/// Fails with advice when `conns` sockets do not fit this process's file limit.
pub fn check_fd_budget(conns: usize) -> anyhow::Result<()> {
    let limit = raise_fd_limit();
    let needed = conns as u64 + 64;
    if needed > limit {
        anyhow::bail!(
            "{conns} connections need about {needed} open files, but this process may open only {limit} \
             (ulimit -n). Run several loadgen processes with at most {} connections each, giving each its own \
             --first-source (e.g. 127.0.0.1, 127.0.0.3, ...), or raise the limit",
            limit.saturating_sub(64)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_spread_over_loopback() {
        let first = Some(Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(source_for(first, true, 0), Some("127.0.0.1".parse().expect("ip")));
        assert_eq!(source_for(first, true, 9_999), Some("127.0.0.1".parse().expect("ip")));
        assert_eq!(source_for(first, true, 10_000), Some("127.0.0.2".parse().expect("ip")));
        assert_eq!(source_for(first, true, 45_000), Some("127.0.0.5".parse().expect("ip")));
        assert_eq!(source_for(first, false, 45_000), Some("127.0.0.1".parse().expect("ip")));
        assert_eq!(source_for(None, true, 45_000), None);
    }

    #[test]
    fn tokens_are_hs256_with_sub_and_exp() {
        let m = Minter::new("0123456789abcdef0123456789abcdef", 60).expect("minter");
        let t = m.token("lg-1").expect("token");
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.required_spec_claims = ["exp", "sub"].iter().map(|s| s.to_string()).collect();
        let key = jsonwebtoken::DecodingKey::from_secret(b"0123456789abcdef0123456789abcdef");
        let d = jsonwebtoken::decode::<serde_json::Value>(&t, &key, &v).expect("valid");
        assert_eq!(d.claims["sub"], "lg-1");
        assert!(Minter::new("short", 60).is_err());
    }
}
