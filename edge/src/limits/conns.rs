//! Connection limits of a node: upgraded WebSocket connections in total
//! (`max_conns`), per client address (`max_conns_per_ip`) and per user
//! (`max_conns_per_user`).
//!
//! Every shard asks the one [`ConnTable`] of the node, because a user's or an
//! address's sockets land on any shard (SO_REUSEPORT). It is the node's one
//! lock outside start-up, taken when a connection is upgraded, when it
//! authenticates, and when it closes; never per message. The counting itself
//! ([`Counts`]) is plain data, tested without the lock.
//!
//! Invariants: a count never exceeds its limit (a check and its increment
//! are one step under the lock); every acquired slot is released exactly once
//! (the socket slot by `Drop`, the user slot by the connection's close); a
//! key whose count reaches 0 is removed, so the maps hold only live keys.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The limits; 0 means none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnLimits {
    /// Upgraded connections on the node.
    pub max_total: usize,
    /// Connections of one client address.
    pub max_per_ip: usize,
    /// Authenticated connections of one user.
    pub max_per_user: usize,
}

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnRefusal {
    /// The node holds `max_conns`.
    Node,
    /// The client address holds `max_conns_per_ip`.
    Ip,
    /// The user holds `max_conns_per_user`.
    User,
}

impl ConnRefusal {
    /// The HTTP status of a refusal before the upgrade: the node is full (503), or this
    /// client has too many (429).
    pub fn status(self) -> u16 {
        match self {
            Self::Node => 503,
            Self::Ip | Self::User => 429,
        }
    }

    /// What the client is told.
    pub fn message(self) -> &'static str {
        match self {
            Self::Node => "the node holds its maximum of connections",
            Self::Ip => "too many connections from this address",
            Self::User => "too many connections for this user",
        }
    }

    /// The label of `edge_conns_refused_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Node => "node",
            Self::Ip => "ip",
            Self::User => "user",
        }
    }
}

/// Live counts per key, each bounded by one limit.
#[derive(Debug)]
pub struct Counts<K> {
    map: HashMap<K, u32>,
}

impl<K: Hash + Eq> Default for Counts<K> {
    fn default() -> Self {
        Self { map: HashMap::new() }
    }
}

impl<K: Hash + Eq> Counts<K> {
    /// Counts one more for `key` unless it already holds `max` (0: no limit).
    pub fn try_add(&mut self, key: K, max: usize) -> bool {
        let n = self.map.entry(key).or_insert(0);
        if max > 0 && *n as usize >= max {
            return false;
        }
        *n += 1;
        true
    }

    /// Counts one less for `key`, forgetting it at 0.
    pub fn remove<Q>(&mut self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(n) = self.map.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                self.map.remove(key);
            }
        }
    }

    /// The count of `key`.
    pub fn get<Q>(&self, key: &Q) -> u32
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.get(key).copied().unwrap_or(0)
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// No key held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// The node's connection counts, shared by its shards.
#[derive(Debug, Default)]
pub struct ConnTable {
    limits: ConnLimits,
    total: AtomicUsize,
    ips: Mutex<Counts<IpAddr>>,
    users: Mutex<Counts<Box<str>>>,
}

/// A counted socket (the node total and its address): released when dropped.
#[derive(Debug)]
pub struct SocketSlot {
    table: Arc<ConnTable>,
    /// The counted address (canonical), an IPv4 one IPv4-mapped: 16 bytes where an
    /// `IpAddr` takes 17, so the slot, kept for a connection's life, takes 24 bytes, not 32.
    ip: Ipv6Addr,
}

impl SocketSlot {
    /// The address counted, as `open_socket` counted it.
    fn ip(&self) -> IpAddr {
        IpAddr::V6(self.ip).to_canonical()
    }
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        self.table.total.fetch_sub(1, Ordering::Relaxed);
        lock(&self.table.ips).remove(&self.ip());
    }
}

impl ConnTable {
    /// A table enforcing `limits`.
    pub fn new(limits: ConnLimits) -> Self {
        Self { limits, ..Self::default() }
    }

    /// The limits enforced.
    pub fn limits(&self) -> ConnLimits {
        self.limits
    }

    /// Counts a socket about to be upgraded, from client address `ip`. An IPv4 client seen
    /// through a dual-stack socket (`::ffff:a.b.c.d`) counts as its IPv4 address.
    pub fn open_socket(self: &Arc<Self>, ip: IpAddr) -> Result<SocketSlot, ConnRefusal> {
        let ip = ip.to_canonical();
        let mut ips = lock(&self.ips);
        let max = self.limits.max_total;
        if max > 0 && self.total.load(Ordering::Relaxed) >= max {
            return Err(ConnRefusal::Node);
        }
        if !ips.try_add(ip, self.limits.max_per_ip) {
            return Err(ConnRefusal::Ip);
        }
        // Under the `ips` lock, so the check above and this increment are one step.
        self.total.fetch_add(1, Ordering::Relaxed);
        let ip = match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        Ok(SocketSlot { table: self.clone(), ip })
    }

    /// Counts an authenticated connection of `user`; pair each success with [`Self::close_user`].
    pub fn open_user(&self, user: &str) -> Result<(), ConnRefusal> {
        let mut users = lock(&self.users);
        if self.limits.max_per_user > 0 && users.get(user) as usize >= self.limits.max_per_user {
            return Err(ConnRefusal::User);
        }
        users.try_add(user.into(), 0);
        Ok(())
    }

    /// Releases a connection counted by [`Self::open_user`].
    pub fn close_user(&self, user: &str) {
        lock(&self.users).remove(user);
    }

    /// Upgraded connections counted now.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Connections counted for `user` now.
    pub fn user_count(&self, user: &str) -> u32 {
        lock(&self.users).get(user)
    }
}

/// Takes a lock; a panic elsewhere while it was held leaves counts that are still consistent
/// (each update is one step), so a poisoned lock is used as it is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn counts_hold_their_limit_and_forget_released_keys() {
        let mut c = Counts::default();
        assert!(c.try_add("a", 2));
        assert!(c.try_add("a", 2));
        assert!(!c.try_add("a", 2), "third over a limit of 2");
        assert!(c.try_add("b", 2), "another key is unaffected");
        c.remove("a");
        assert!(c.try_add("a", 2), "a released slot is reusable");
        c.remove("a");
        c.remove("a");
        c.remove("b");
        assert!(c.is_empty(), "keys at 0 are forgotten");
        c.remove("never");
        assert!(c.try_add("z", 0) && c.try_add("z", 0) && c.try_add("z", 0), "0 is no limit");
        assert_eq!(c.get("z"), 3);
    }

    #[test]
    fn sockets_are_limited_per_address_and_per_node_and_released_on_drop() {
        let t = Arc::new(ConnTable::new(ConnLimits {
            max_total: 3,
            max_per_ip: 2,
            max_per_user: 0,
        }));
        let a1 = t.open_socket(ip(1)).expect("first");
        let a2 = t.open_socket(ip(1)).expect("second");
        assert_eq!(t.open_socket(ip(1)).unwrap_err(), ConnRefusal::Ip);
        let b1 = t.open_socket(ip(2)).expect("another address");
        assert_eq!(t.open_socket(ip(3)).unwrap_err(), ConnRefusal::Node);
        assert_eq!(t.total(), 3);
        drop(a1);
        assert_eq!(t.total(), 2);
        let a3 = t.open_socket(ip(1)).expect("a slot came back");
        drop((a2, a3, b1));
        assert_eq!(t.total(), 0);
        assert!(lock(&t.ips).is_empty());
    }

    #[test]
    fn an_ipv4_client_through_a_dual_stack_socket_counts_as_its_ipv4_address() {
        let t = Arc::new(ConnTable::new(ConnLimits {
            max_total: 0,
            max_per_ip: 2,
            max_per_user: 0,
        }));
        let mapped = IpAddr::V6(std::net::Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped());
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let a = t.open_socket(ip(1)).expect("first");
        let b = t.open_socket(mapped).expect("second, the same address");
        assert_eq!(t.open_socket(ip(1)).unwrap_err(), ConnRefusal::Ip);
        assert_eq!(t.open_socket(mapped).unwrap_err(), ConnRefusal::Ip);
        let c = t.open_socket(v6).expect("::1 is another address");
        assert_eq!((a.ip(), b.ip(), c.ip()), (ip(1), ip(1), v6));
        drop(b);
        assert_eq!(lock(&t.ips).get(&ip(1)), 1, "the mapped slot released the IPv4 count");
        drop((a, c));
        assert!(lock(&t.ips).is_empty());
    }

    #[test]
    fn users_are_limited_and_released() {
        let t = ConnTable::new(ConnLimits {
            max_per_user: 2,
            ..ConnLimits::default()
        });
        assert!(t.open_user("u").is_ok() && t.open_user("u").is_ok());
        assert_eq!(t.open_user("u"), Err(ConnRefusal::User));
        assert!(t.open_user("v").is_ok());
        t.close_user("u");
        assert!(t.open_user("u").is_ok());
        assert_eq!(t.user_count("u"), 2);
        t.close_user("u");
        t.close_user("u");
        t.close_user("v");
        assert!(lock(&t.users).is_empty());
    }

    #[test]
    fn concurrent_opens_never_exceed_the_limit() {
        let t = Arc::new(ConnTable::new(ConnLimits {
            max_total: 50,
            max_per_ip: 0,
            max_per_user: 0,
        }));
        let held: Vec<Vec<SocketSlot>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|i| {
                    let t = t.clone();
                    s.spawn(move || (0..100).filter_map(|_| t.open_socket(ip(i)).ok()).collect::<Vec<_>>())
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("no panic")).collect()
        });
        assert_eq!(held.iter().map(Vec::len).sum::<usize>(), 50);
        assert_eq!(t.total(), 50);
        drop(held);
        assert_eq!(t.total(), 0);
    }
}
