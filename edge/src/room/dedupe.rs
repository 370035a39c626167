//! The bounded memory of `client_id`s a room has sequenced, so a retried send
//! gets its original ack instead of a second message. Oldest entries are
//! forgotten first once `cap` is reached.

use std::collections::{HashMap, VecDeque};

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

/// What the dedupe memory keeps of an ack: its msg_id boxed to its length (an inline
/// `MsgId` would make every slot of the table 48 bytes wider, and the table keeps up to
/// four slots per id: hashbrown's load factor and the tombstones of the FIFO's removals).
#[derive(Debug)]
struct Kept {
    seq: u64,
    ts: u64,
    msg_id: Box<str>,
}

/// `(user, client_id) -> ack`, FIFO-bounded.
#[derive(Debug)]
pub struct Dedupe {
    map: HashMap<String, Kept>,
    order: VecDeque<String>,
    cap: usize,
}

impl Dedupe {
    /// Remembers at most `cap` ids.
    pub fn new(cap: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap,
        }
    }

    /// The ack of an earlier send with this id, if still remembered.
    pub fn get(&self, user: &str, client_id: &str) -> Option<AckInfo> {
        self.map.get(&key(user, client_id)).map(|k| AckInfo {
            seq: k.seq,
            msg_id: (*k.msg_id).into(),
            ts: k.ts,
        })
    }

    /// Remembers an ack, forgetting the oldest beyond `cap`.
    pub fn insert(&mut self, user: &str, client_id: &str, ack: AckInfo) {
        if self.cap == 0 {
            return;
        }
        let k = key(user, client_id);
        let kept = Kept {
            seq: ack.seq,
            ts: ack.ts,
            msg_id: ack.msg_id.as_str().into(),
        };
        if self.map.insert(k.clone(), kept).is_none() {
            self.order.push_back(k);
        }
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }

    /// Forgets one id (its message was not stored); the FIFO order entry is dropped lazily.
    pub fn remove(&mut self, user: &str, client_id: &str) {
        self.map.remove(&key(user, client_id));
    }

    /// Ids remembered now.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

// A NUL cannot appear in a user id (validated at auth), so keys cannot collide.
fn key(user: &str, client_id: &str) -> String {
    let mut k = String::with_capacity(user.len() + client_id.len() + 1);
    k.push_str(user);
    k.push('\0');
    k.push_str(client_id);
    k
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
}
