//! Typing indicators of the rooms one shard owns, for both sequencers, as a
//! sans-IO state machine.
//!
//! A member's `typing` start or stop comes in with `now_ms` ([`Typing::update`]);
//! what members must be told comes out of [`Typing::poll`] as [`TypingEvent`]s,
//! and the shell calls [`Typing::tick`] at [`Typing::next_deadline`]. The shell
//! renders each event and hands it to the sequencer, which fans it out to the
//! room's members without a seq (over the mesh on one node, over Redis in a
//! cluster). Nothing is stored.
//!
//! What must stay true:
//! - a `start` not refreshed within `ttl_ms` stops by itself;
//! - per room, events go out at most once per `interval_ms`: the first change
//!   goes at once, later ones wait for the interval and are coalesced (a user
//!   who started and stopped in between is never announced at all);
//! - members hear a user's state only when it differs from what they last
//!   heard, so every announced `start` is followed by one `stop`;
//! - memory is bounded: at most `max_per_room` typers per room, and a room's
//!   entry goes once nobody types and its interval has passed.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::rc::Rc;

/// How typing behaves (one immutable copy per shard).
#[derive(Debug, Clone, Copy)]
pub struct TypingConfig {
    /// A `start` lasts this long without a refresh.
    pub ttl_ms: u64,
    /// A room's events go out at most once per this many ms.
    pub interval_ms: u64,
    /// Users a room shows as typing at once; later starts are ignored until one stops.
    pub max_per_room: usize,
}

/// Something a room's members must hear: `user` started (`typing`) or stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypingEvent {
    /// The room.
    pub room: Rc<str>,
    /// Who is typing.
    pub user: Rc<str>,
    /// Started (true) or stopped.
    pub typing: bool,
}

/// One user's state in one room.
#[derive(Debug)]
struct Typer {
    /// Typing now.
    typing: bool,
    /// What the members last heard.
    announced: bool,
    /// When a `start` runs out.
    expires_at: u64,
}

/// One room's typers and its pacing.
#[derive(Debug, Default)]
struct RoomTyping {
    users: HashMap<Rc<str>, Typer>,
    /// When the room's events last went out.
    flushed_at: Option<u64>,
}

impl RoomTyping {
    fn changed(&self) -> bool {
        self.users.values().any(|t| t.typing != t.announced)
    }

    /// When the next flush may go (`None`: it may go now).
    fn paced_until(&self, interval_ms: u64) -> Option<u64> {
        self.flushed_at.map(|at| at.saturating_add(interval_ms))
    }
}

/// The typing state of the rooms a shard owns.
#[derive(Debug)]
pub struct Typing {
    cfg: TypingConfig,
    rooms: HashMap<Rc<str>, RoomTyping>,
    /// When a room must be looked at again (expiries, paced flushes, cleanup); stale
    /// entries are skipped when they come due.
    timers: BinaryHeap<Reverse<(u64, Rc<str>)>>,
    out: VecDeque<TypingEvent>,
}

impl Typing {
    /// No room has typers yet.
    pub fn new(cfg: TypingConfig) -> Self {
        Self {
            cfg,
            rooms: HashMap::new(),
            timers: BinaryHeap::new(),
            out: VecDeque::new(),
        }
    }

    /// `user` started (`typing`) or stopped typing in `room`.
    pub fn update(&mut self, room: &str, user: &str, typing: bool, now_ms: u64) {
        let ttl = self.cfg.ttl_ms;
        let room_key: Rc<str> = match self.rooms.get_key_value(room) {
            Some((k, _)) => k.clone(),
            None if !typing => return,
            None => {
                let k: Rc<str> = Rc::from(room);
                self.rooms.insert(k.clone(), RoomTyping::default());
                k
            }
        };
        let Some(r) = self.rooms.get_mut(&room_key) else { return };
        let room_full = r.users.values().filter(|t| t.typing).count() >= self.cfg.max_per_room;
        match (r.users.get_mut(user), typing) {
            (Some(t), true) => {
                t.typing = true;
                t.expires_at = now_ms.saturating_add(ttl);
            }
            (Some(t), false) => t.typing = false,
            (None, true) if !room_full => {
                let t = Typer {
                    typing: true,
                    announced: false,
                    expires_at: now_ms.saturating_add(ttl),
                };
                r.users.insert(Rc::from(user), t);
            }
            (None, _) => return,
        }
        if typing {
            self.timers.push(Reverse((now_ms.saturating_add(ttl), room_key.clone())));
        }
        self.settle(&room_key, now_ms);
    }

    /// Time passed: starts run out, paced events go, idle rooms are forgotten.
    pub fn tick(&mut self, now_ms: u64) {
        let mut due = Vec::new();
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now_ms {
                break;
            }
            let Some(Reverse((_, room))) = self.timers.pop() else { break };
            if !due.contains(&room) {
                due.push(room);
            }
        }
        for room in due {
            let Some(r) = self.rooms.get_mut(&room) else { continue };
            for t in r.users.values_mut() {
                if t.typing && t.expires_at <= now_ms {
                    t.typing = false;
                }
            }
            self.settle(&room, now_ms);
        }
    }

    /// The next event, in the order they were decided.
    pub fn poll(&mut self) -> Option<TypingEvent> {
        self.out.pop_front()
    }

    /// When [`Self::tick`] must run next (ms), if ever.
    pub fn next_deadline(&self) -> Option<u64> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// Rooms with typing state (for tests and metrics).
    pub fn rooms(&self) -> usize {
        self.rooms.len()
    }

    /// Flushes `room` if its pace allows, else makes sure a timer will; forgets it when idle.
    fn settle(&mut self, room: &Rc<str>, now_ms: u64) {
        let interval = self.cfg.interval_ms;
        let Some(r) = self.rooms.get_mut(room) else { return };
        // Stopped before anyone heard the start: nothing to tell.
        r.users.retain(|_, t| t.typing || t.announced);
        let paced = r.paced_until(interval).filter(|&at| at > now_ms);
        match paced {
            _ if !r.changed() => {}
            Some(at) => self.timers.push(Reverse((at, room.clone()))),
            None => {
                for (user, t) in &mut r.users {
                    if t.typing != t.announced {
                        t.announced = t.typing;
                        self.out.push_back(TypingEvent {
                            room: room.clone(),
                            user: user.clone(),
                            typing: t.typing,
                        });
                    }
                }
                r.users.retain(|_, t| t.typing);
                r.flushed_at = Some(now_ms);
                self.timers.push(Reverse((now_ms.saturating_add(interval), room.clone())));
            }
        }
        if r.users.is_empty() && r.paced_until(interval).is_none_or(|at| at <= now_ms) {
            self.rooms.remove(room);
        }
    }
}

#[cfg(test)]
mod tests;
