//! The scenarios, and what they share: who connects where, and how outcomes
//! are counted.

pub mod churn;
pub mod fanout;
pub mod idle;
pub mod inbox;
pub mod storm;
pub mod typing;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use crate::conn::{self, Conn, ConnectError, Target};
use crate::runner::{self, Minter};
use crate::Common;

/// Everything a core needs to open connection number `index`.
#[derive(Clone)]
pub struct Dialer {
    targets: Arc<Vec<Target>>,
    minter: Arc<Minter>,
    first_source: Option<Ipv4Addr>,
    timeout: Duration,
}

impl Dialer {
    pub fn new(c: &Common) -> anyhow::Result<Self> {
        c.validate()?;
        Ok(Self {
            targets: Arc::new(c.targets()?),
            minter: Arc::new(Minter::new(&c.jwt_secret, 24 * 3600)?),
            first_source: c.first_source()?,
            timeout: Duration::from_millis(c.connect_timeout_ms),
        })
    }

    pub fn first_addr(&self) -> std::net::SocketAddr {
        self.targets[0].addr
    }

    /// Connects client `index` as `user`, placed on `room`'s owner shard when given.
    pub async fn dial(&self, index: usize, user: &str, room: Option<&str>) -> Result<Conn, ConnectError> {
        let target = &self.targets[index % self.targets.len()];
        let source = runner::source_for(self.first_source, target.addr.ip().is_loopback(), index);
        let token = self.minter.token(user).map_err(|e| ConnectError::Protocol(e.to_string()))?;
        let query = match room {
            Some(r) => format!("token={token}&room={r}"),
            None => format!("token={token}"),
        };
        conn::connect(target, source, &query, self.timeout).await
    }
}

/// Counts of outcomes by kind (`101`, `http_503`, `close_1013`, `timeout`, ...).
#[derive(Default, Debug, Clone)]
pub struct Outcomes(pub BTreeMap<String, u64>);

impl Outcomes {
    pub fn add(&mut self, kind: impl Into<String>, n: u64) {
        *self.0.entry(kind.into()).or_default() += n;
    }

    pub fn merge(&mut self, o: &Self) {
        for (k, v) in &o.0 {
            self.add(k.clone(), *v);
        }
    }

    pub fn get(&self, k: &str) -> u64 {
        self.0.get(k).copied().unwrap_or(0)
    }

    pub fn total_except(&self, k: &str) -> u64 {
        self.0.iter().filter(|(n, _)| *n != k).map(|(_, v)| v).sum()
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.0).unwrap_or_default()
    }

    pub fn describe(&self) -> String {
        if self.0.is_empty() {
            return "none".into();
        }
        self.0.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ")
    }
}

/// The outcome kind of a failed attempt.
pub fn kind(e: &ConnectError) -> String {
    match e {
        ConnectError::Refused { status, .. } => format!("http_{status}"),
        ConnectError::Closed { code: Some(c), .. } => format!("close_{c}"),
        ConnectError::Closed { code: None, .. } => "closed".into(),
        ConnectError::Timeout => "timeout".into(),
        ConnectError::Io(e) => match e.raw_os_error() {
            Some(libc::ECONNREFUSED) => "refused".into(),
            Some(libc::ECONNRESET) => "reset".into(),
            Some(libc::EADDRNOTAVAIL) => "no_source_port".into(),
            Some(libc::EMFILE) | Some(libc::ENFILE) => "fd_limit".into(),
            _ => "io_error".into(),
        },
        ConnectError::Protocol(_) => "protocol".into(),
    }
}

/// The server's retry hint carried by a failed attempt.
pub fn retry_hint(e: &ConnectError) -> Option<u64> {
    match e {
        ConnectError::Refused { retry_ms, .. } | ConnectError::Closed { retry_ms, .. } => *retry_ms,
        _ => None,
    }
}

/// A fresh histogram of microseconds up to one minute, 3 significant digits.
pub fn histogram() -> hdrhistogram::Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts (low >= 1, high >= 2 * low).
    hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant histogram bounds are valid")
}

/// A random 6-hex-digit tag naming this run's rooms and users, so runs against
/// the same edge do not share rooms.
pub fn run_tag() -> String {
    format!("{:06x}", rand::random::<u32>() & 0xFF_FFFF)
}
