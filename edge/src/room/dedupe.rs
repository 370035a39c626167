//! The bounded memory of `client_id`s a room has sequenced, so a retried send
//! gets its original ack instead of a second message. Oldest entries are
//! forgotten first once `cap` is reached.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use hashbrown::HashTable;

/// The ack a sequenced message got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckInfo {
    /// The room-wide sequence number.
    pub seq: u64,
    /// Unique id of the message (inline: making and cloning it allocates nothing).
    pub msg_id: storage::MsgId,
    /// Server time the message was sequenced (ms since the epoch).
    pub ts: u64,
}

/// One remembered id: its key (`user`, NUL, `client_id`: a NUL cannot appear in a user
/// id, validated at auth, so keys cannot collide) and its ack. A slot is written over in
/// place when the ring comes round, its key's buffer kept.
#[derive(Debug)]
struct Slot {
    key: String,
    user_len: usize,
    live: bool,
    ack: AckInfo,
}

impl Slot {
    fn is(&self, user: &str, client_id: &str) -> bool {
        self.live
            && self.user_len == user.len()
            && self.key.len() == user.len() + 1 + client_id.len()
            && self.key.starts_with(user)
            && self.key.ends_with(client_id)
    }

    fn parts(&self) -> (&str, &str) {
        (&self.key[..self.user_len], &self.key[self.user_len + 1..])
    }
}

/// `(user, client_id) -> ack`, FIFO-bounded: a ring of `cap` slots, oldest written over
/// first, and a table of slot indices by the key's hash. Once the ring is full, a send
/// with a client id allocates nothing (keys longer than the slot's buffer excepted).
#[derive(Debug)]
pub struct Dedupe {
    slots: Vec<Slot>,
    /// Where the next id goes once the ring is full: its oldest slot.
    oldest: usize,
    index: HashTable<u32>,
    hasher: RandomState,
    live: usize,
    cap: usize,
}

impl Dedupe {
    /// Remembers at most `cap` ids.
    pub fn new(cap: usize) -> Self {
        Self {
            slots: Vec::new(),
            oldest: 0,
            index: HashTable::new(),
            hasher: RandomState::new(),
            live: 0,
            cap,
        }
    }

    fn hash(&self, user: &str, client_id: &str) -> u64 {
        hash(&self.hasher, user, client_id)
    }

    fn find(&self, user: &str, client_id: &str) -> Option<usize> {
        let hash = self.hash(user, client_id);
        let i = self.index.find(hash, |&i| self.slots[i as usize].is(user, client_id))?;
        Some(*i as usize)
    }

    /// The ack of an earlier send with this id, if still remembered.
    pub fn get(&self, user: &str, client_id: &str) -> Option<AckInfo> {
        self.find(user, client_id).map(|i| self.slots[i].ack.clone())
    }

    /// Remembers an ack, forgetting the oldest beyond `cap`.
    pub fn insert(&mut self, user: &str, client_id: &str, ack: AckInfo) {
        if self.cap == 0 {
            return;
        }
        if let Some(i) = self.find(user, client_id) {
            self.slots[i].ack = ack;
            return;
        }
        let i = if self.slots.len() < self.cap {
            self.slots.push(Slot {
                key: String::with_capacity(user.len() + 1 + client_id.len()),
                user_len: 0,
                live: false,
                ack,
            });
            self.slots.len() - 1
        } else {
            let i = self.oldest;
            self.oldest = (i + 1) % self.cap;
            self.unindex(i);
            self.slots[i].ack = ack;
            i
        };
        let slot = &mut self.slots[i];
        slot.key.clear();
        slot.key.push_str(user);
        slot.key.push('\0');
        slot.key.push_str(client_id);
        slot.user_len = user.len();
        slot.live = true;
        self.live += 1;
        let (slots, hasher) = (&self.slots, &self.hasher);
        let rehash = |&j: &u32| {
            let (u, c) = slots[j as usize].parts();
            hash(hasher, u, c)
        };
        // `cap` is a room's setting, far below u32::MAX slots.
        self.index.insert_unique(hash(hasher, user, client_id), i as u32, rehash);
    }

    /// Takes slot `i` out of the table (it is forgotten, or about to be written over).
    fn unindex(&mut self, i: usize) {
        let slot = &self.slots[i];
        if !slot.live {
            return;
        }
        let (u, c) = slot.parts();
        let hash = self.hash(u, c);
        if let Ok(e) = self.index.find_entry(hash, |&j| j as usize == i) {
            e.remove();
        }
        self.slots[i].live = false;
        self.live -= 1;
    }

    /// Forgets one id (its message was not stored); its slot stays in the ring, empty.
    pub fn remove(&mut self, user: &str, client_id: &str) {
        if let Some(i) = self.find(user, client_id) {
            self.unindex(i);
        }
    }

    /// Ids remembered now.
    pub fn len(&self) -> usize {
        self.live
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }
}

/// A key's hash, taken over its two parts: the same for a stored key and for a probe.
fn hash(hasher: &RandomState, user: &str, client_id: &str) -> u64 {
    let mut h = hasher.build_hasher();
    h.write(user.as_bytes());
    h.write_u8(0);
    h.write(client_id.as_bytes());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(seq: u64) -> AckInfo {
        AckInfo {
            seq,
            msg_id: seq.to_string().into(),
            ts: 0,
        }
    }

    #[test]
    fn forgets_oldest_beyond_cap() {
        let mut d = Dedupe::new(2);
        d.insert("u", "a", ack(1));
        d.insert("u", "b", ack(2));
        d.insert("u", "c", ack(3));
        assert_eq!(d.len(), 2);
        assert!(d.get("u", "a").is_none());
        assert_eq!(d.get("u", "c"), Some(ack(3)));
    }

    #[test]
    fn keys_are_per_user() {
        let mut d = Dedupe::new(4);
        d.insert("u1", "x", ack(1));
        assert!(d.get("u2", "x").is_none());
        assert!(d.get("u1\0", "x").is_none() || d.get("u1", "x").is_some());
    }

    /// The FIFO the ring must behave as: the newest `cap` ids inserted, less those removed.
    #[derive(Default)]
    struct Model {
        order: std::collections::VecDeque<(String, String, Option<u64>)>,
    }

    impl Model {
        fn get(&self, u: &str, c: &str) -> Option<u64> {
            self.order
                .iter()
                .find(|(mu, mc, s)| mu == u && mc == c && s.is_some())
                .and_then(|e| e.2)
        }

        fn insert(&mut self, cap: usize, u: &str, c: &str, seq: u64) {
            if cap == 0 {
                return;
            }
            if let Some(e) = self.order.iter_mut().find(|(mu, mc, s)| mu == u && mc == c && s.is_some()) {
                e.2 = Some(seq);
                return;
            }
            self.order.push_back((u.to_owned(), c.to_owned(), Some(seq)));
            if self.order.len() > cap {
                self.order.pop_front();
            }
        }

        fn remove(&mut self, u: &str, c: &str) {
            if let Some(e) = self.order.iter_mut().find(|(mu, mc, s)| mu == u && mc == c && s.is_some()) {
                e.2 = None;
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn the_ring_remembers_what_a_bounded_fifo_would(
            cap in 0usize..6,
            ops in proptest::collection::vec((0u8..3, 0u8..3, 0u8..8), 0..200),
        ) {
            let (users, ids) = (["a", "ab", "a\u{0}b"], ["", "b", "\u{0}b", "x", "y", "zz", "b\u{0}", "w"]);
            let mut d = Dedupe::new(cap);
            let mut m = Model::default();
            for (n, (op, u, c)) in ops.into_iter().enumerate() {
                let (u, c) = (users[usize::from(u)], ids[usize::from(c)]);
                match op {
                    0 => {
                        d.insert(u, c, ack(n as u64));
                        m.insert(cap, u, c, n as u64);
                    }
                    1 => {
                        d.remove(u, c);
                        m.remove(u, c);
                    }
                    _ => {}
                }
                for (u, c) in users.iter().flat_map(|u| ids.iter().map(move |c| (*u, *c))) {
                    proptest::prop_assert_eq!(d.get(u, c).map(|a| a.seq), m.get(u, c), "{} {:?}", u, c);
                }
                proptest::prop_assert_eq!(d.len(), m.order.iter().filter(|e| e.2.is_some()).count());
            }
        }
    }

    #[test]
    fn a_full_ring_allocates_no_new_key_buffer() {
        let mut d = Dedupe::new(4);
        for i in 0..4 {
            d.insert("user", &format!("id-{i}"), ack(i));
        }
        let buffers: Vec<*const u8> = d.slots.iter().map(|s| s.key.as_ptr()).collect();
        for i in 4..40 {
            d.insert("user", &format!("id-{i}"), ack(i));
        }
        let after: Vec<*const u8> = d.slots.iter().map(|s| s.key.as_ptr()).collect();
        assert_eq!(buffers, after, "each slot kept its key's buffer");
        assert_eq!(d.get("user", "id-39").map(|a| a.seq), Some(39));
        assert!(d.get("user", "id-35").is_none());
    }
}
