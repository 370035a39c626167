//! Edits, deletes and reactions in a cluster on a shared store (PostgreSQL or
//! Scylla), sans-IO. No node owns a room there, so the shard holding the
//! asking connection runs the change, under the room's cluster-wide lock in
//! Redis. The rules are the one node's (`change_rules.rs`); the chain of calls
//! is decided here, and the shell (`shard/cluster_changes.rs`) makes each call
//! and hands its answer back with [`Changes::answered`].
//!
//! Events are method calls with `now_ms` (the wall clock, ms: it stamps the
//! edit, the event and the ack, and the deadlines are in it): a change with
//! the id and lock token the shell gave it, each call's answer, and
//! [`Changes::tick`] at [`Changes::next_deadline`] (a pause between two tries
//! ends, or a change's deadline comes). Effects are pulled with
//! [`Changes::poll`]: calls to make, each with the time by which the shell
//! answers it (failed if it must), and replies for connections.
//!
//! A change runs in steps:
//! 0. a room's changes from one shard run one at a time, in arrival order (at
//!    most [`QUEUE_MAX`] waiting, then `overloaded`);
//! 1. Redis's counter for the room: a seq of 0 or past it is `not_found`;
//! 2. the room's lock (`SET NX PX`, [`LOCK_TTL_MS`]), so a room's changes run
//!    one at a time across nodes: a delete cannot be overtaken by an edit read
//!    before it, and a reaction's bound check holds when its write lands. A
//!    lock another change holds is tried again after a pause ([`BACKOFF_MS`],
//!    doubled each time to at most 8 times that) for up to [`LOCK_WAIT_MS`],
//!    then the change is refused `overloaded` with a retry hint;
//! 3. the message, from the store. In `fast` mode a send is acked before its
//!    write commits, so a message not stored yet is read again, with the same
//!    pauses, for up to [`STORED_WAIT_MS`] before the change is refused
//!    `not_found`;
//! 4. the rules decide, and the store takes the new version or the reaction;
//! 5. the `Changed` frame (the new version and the `update`/`reaction` event)
//!    is published on the room's Redis channel, and awaited, so a room's
//!    events reach Redis in the order of its changes. A DM room's change also
//!    goes on its two users' channels (one, for a DM with oneself), for their
//!    connections that did not join it. A failed publish is logged: the store
//!    holds the change, the ack is owed;
//! 6. the lock is released, and the asker gets its answer.
//!
//! What must stay true:
//! - every change gets exactly one answer: `ack`, or an error naming why;
//! - the store is written only under the lock (a write is asked for only
//!   after `Lock` answered true, and the lock is released only once no write
//!   of the change can still land); an event is published only after its
//!   write landed;
//! - one call of a change is out at a time; a room's next change starts once
//!   the one before it released the lock (or left it to expire);
//! - a change is answered by its deadline, [`Changes::budget_ms`] after it
//!   started (Redis or the store is slow): with its decided answer if it has
//!   one (the store holds the change: `ack`), else `unavailable` naming the
//!   call that was late. It may still land; retrying it is safe: an edit
//!   writes the same body, a delete of a tombstone is `not_found`, and a
//!   reaction already there is acked. A change past its deadline starts no
//!   step before its write, releases the lock it may hold, and one whose write
//!   landed still publishes its event. A write whose answer never came (late)
//!   keeps the lock until it expires: it may land later.

use std::collections::{BTreeSet, HashMap, VecDeque};

use bytes::Bytes;
use router::ChangeMsg;
use storage::{Answer, Query};

use super::{Busy, Failure};
use run::{Next, Run, Step};

mod run;
#[cfg(test)]
mod tests;

/// How long a room's lock lives if its holder never releases it (the node died).
pub const LOCK_TTL_MS: u64 = 10_000;
/// How long a change tries the room's lock before it is refused `overloaded`.
pub const LOCK_WAIT_MS: u64 = 2_000;
/// How long a change waits for its message to reach the store before `not_found`.
pub const STORED_WAIT_MS: u64 = 1_500;
/// The first pause between two tries (of the lock, or of the store); doubled each time, to
/// at most 8 times this.
pub const BACKOFF_MS: u64 = 10;
/// Changes one shard may hold waiting in one room, behind the one running.
pub const QUEUE_MAX: usize = 256;

/// What the changes are configured with.
#[derive(Debug, Clone, Copy)]
pub struct ChangesConfig {
    /// How long one Redis call may take (`cluster_join_timeout_ms`).
    pub timeout_ms: u64,
}

/// One call a change makes.
#[derive(Debug)]
pub enum ChangeCall {
    /// Redis's counter for `room`; answered [`ChangeAnswer::RoomSeq`].
    RoomSeq { room: String },
    /// Take `room`'s lock with `token` for `ttl_ms` (`SET NX PX`); [`ChangeAnswer::Locked`].
    Lock { room: String, token: u64, ttl_ms: u64 },
    /// Release `room`'s lock if `token` holds it; [`ChangeAnswer::Unlocked`].
    Unlock { room: String, token: u64 },
    /// A shared-store query; [`ChangeAnswer::Stored`].
    Store(Query),
    /// Publish `frame` on `channel` (a room, or a user's channel) and wait until Redis took
    /// it; [`ChangeAnswer::Published`].
    Publish { channel: String, frame: Bytes },
}

/// A call's answer (a call not answered by its deadline is answered with a timeout failure).
#[derive(Debug)]
pub enum ChangeAnswer {
    RoomSeq(Result<u64, Failure>),
    /// Whether the lock is this change's now.
    Locked(Result<bool, Failure>),
    Unlocked(Result<(), Failure>),
    Stored(Result<Answer, Failure>),
    Published(Result<(), Failure>),
}

/// What the shell must do.
#[derive(Debug)]
pub enum ChangeEffect {
    /// Make `call` for change `id`, answered with [`Changes::answered`] by `deadline_ms` at
    /// the latest.
    Call { id: u64, call: ChangeCall, deadline_ms: u64 },
    /// A change's answer for connection `conn`.
    Reply { conn: u64, payload: Bytes },
}

/// A change waiting for its room's change before it to end.
#[derive(Debug)]
struct Queued {
    id: u64,
    change: ChangeMsg,
    token: u64,
}

/// The changes of one shard: running (one per room) and waiting.
#[derive(Debug)]
pub struct Changes {
    cfg: ChangesConfig,
    /// The changes waiting in each room where one runs.
    rooms: HashMap<String, VecDeque<Queued>>,
    running: HashMap<u64, Run>,
    /// When running changes must be woken, (time, id): their deadlines and pauses.
    timers: BTreeSet<(u64, u64)>,
    effects: VecDeque<ChangeEffect>,
}

impl Changes {
    pub fn new(cfg: ChangesConfig) -> Self {
        Self {
            cfg,
            rooms: HashMap::new(),
            running: HashMap::new(),
            timers: BTreeSet::new(),
            effects: VecDeque::new(),
        }
    }

    /// How long a change may take from its start until it is answered: three Redis calls'
    /// time, the lock wait and the stored wait.
    pub fn budget_ms(&self) -> u64 {
        self.cfg.timeout_ms * 3 + LOCK_WAIT_MS + STORED_WAIT_MS
    }

    /// The next effect to carry out.
    pub fn poll(&mut self) -> Option<ChangeEffect> {
        self.effects.pop_front()
    }

    /// When [`Self::tick`] must run next (ms), if ever.
    pub fn next_deadline(&self) -> Option<u64> {
        self.timers.first().map(|&(at, _)| at)
    }

    /// Changes running (each a call out or a pause).
    pub fn in_flight(&self) -> usize {
        self.running.len()
    }

    /// Change `c` (its id unique among this shard's changes; `lock_token` unique cluster-wide):
    /// run now if its room runs none, else queued behind the room's changes.
    pub fn change(&mut self, id: u64, c: ChangeMsg, lock_token: u64, now_ms: u64) {
        let queued = Queued {
            id,
            change: c,
            token: lock_token,
        };
        let Some(waiting) = self.rooms.get_mut(&queued.change.room) else {
            self.rooms.insert(queued.change.room.clone(), VecDeque::new());
            return self.start(queued, now_ms);
        };
        if waiting.len() >= QUEUE_MAX {
            let msg = "too many changes waiting in this room, retry";
            let payload = Busy::Store.reply(queued.change.req.as_deref(), msg);
            return self.effects.push_back(ChangeEffect::Reply {
                conn: queued.change.conn,
                payload,
            });
        }
        waiting.push_back(queued);
    }

    /// The answer to change `id`'s call. An answer for a change with no call out is dropped.
    pub fn answered(&mut self, id: u64, answer: ChangeAnswer, now_ms: u64) {
        let Some(mut run) = self.running.remove(&id) else {
            tracing::debug!(id, "changes: an answer for no change running");
            return;
        };
        if matches!(run.step, Step::LockPause { .. } | Step::LookupPause { .. }) {
            tracing::error!(id, ?answer, "changes: an answer for a change with no call out");
            self.running.insert(id, run);
            return;
        }
        self.answer_if_late(&mut run, now_ms);
        let next = run.answered(answer, now_ms);
        self.carry_on(run, next, now_ms);
    }

    /// Time passed: pauses that ended go on, changes at their deadline are answered.
    pub fn tick(&mut self, now_ms: u64) {
        while let Some(&(at, id)) = self.timers.first() {
            if at > now_ms {
                break;
            }
            self.timers.remove(&(at, id));
            self.woken(id, now_ms);
        }
    }

    fn woken(&mut self, id: u64, now_ms: u64) {
        let Some(mut run) = self.running.remove(&id) else { return };
        self.answer_if_late(&mut run, now_ms);
        let resumed = match run.step {
            Step::LockPause { until_ms, .. } | Step::LookupPause { until_ms, .. } if until_ms <= now_ms || run.answered => {
                self.timers.remove(&(until_ms, id));
                run.resume()
            }
            _ => {
                self.running.insert(id, run);
                return;
            }
        };
        self.carry_on(run, resumed, now_ms);
    }

    fn start(&mut self, q: Queued, now_ms: u64) {
        let run = Run {
            id: q.id,
            deadline_ms: now_ms + self.budget_ms(),
            c: q.change,
            token: q.token,
            answered: false,
            may_hold_lock: false,
            step: Step::Top,
        };
        self.timers.insert((run.deadline_ms, run.id));
        let call = ChangeCall::RoomSeq { room: run.c.room.clone() };
        self.carry_on(run, Next::Call(call), now_ms);
    }

    /// Answers `run` if its deadline came and it is not answered yet.
    fn answer_if_late(&mut self, run: &mut Run, now_ms: u64) {
        if run.answered || now_ms < run.deadline_ms {
            return;
        }
        let req = run.c.req.as_deref();
        let payload = match &run.step {
            Step::Publish { ack, .. } => ack.clone(),
            Step::Unlock { reply: Some(reply) } => reply.clone(),
            Step::Unlock { reply: None } => return,
            Step::Top | Step::Lock { .. } | Step::LockPause { .. } => Failure::RedisTimedOut.reply(req, "message change"),
            Step::Lookup { .. } | Step::LookupPause { .. } | Step::Bounds { .. } | Step::Write { .. } => {
                Failure::StoreTimedOut.reply(req, "message not changed")
            }
        };
        self.reply(run, payload);
    }

    fn carry_on(&mut self, mut run: Run, next: Next, now_ms: u64) {
        match run.wind_down(next) {
            Next::Call(call) => {
                let deadline_ms = match call {
                    // A store call has no limit of its own (the store's queue bounds it), only
                    // the change's.
                    ChangeCall::Store(_) => run.deadline_ms,
                    ChangeCall::Lock { .. } => {
                        run.may_hold_lock = true;
                        now_ms + self.cfg.timeout_ms
                    }
                    _ => now_ms + self.cfg.timeout_ms,
                };
                let id = run.id;
                self.effects.push_back(ChangeEffect::Call { id, call, deadline_ms });
                self.running.insert(id, run);
            }
            Next::Pause(until_ms) => {
                self.timers.insert((until_ms, run.id));
                self.running.insert(run.id, run);
            }
            Next::AnswerThenRelease(reply) => {
                self.reply(&mut run, reply);
                self.release(run, None, now_ms);
            }
            Next::ReleaseThenAnswer(reply) => self.release(run, reply, now_ms),
            Next::Done(reply) => {
                if let Some(reply) = reply {
                    self.reply(&mut run, reply);
                }
                self.end(run, now_ms);
            }
        }
    }

    /// Releases the lock `run` may hold, then answers with `reply`; or answers at once.
    fn release(&mut self, mut run: Run, reply: Option<Bytes>, now_ms: u64) {
        if !run.may_hold_lock {
            return self.carry_on(run, Next::Done(reply), now_ms);
        }
        run.step = Step::Unlock { reply };
        let call = ChangeCall::Unlock {
            room: run.c.room.clone(),
            token: run.token,
        };
        self.carry_on(run, Next::Call(call), now_ms);
    }

    fn reply(&mut self, run: &mut Run, payload: Bytes) {
        if run.answered {
            return;
        }
        run.answered = true;
        self.effects.push_back(ChangeEffect::Reply { conn: run.c.conn, payload });
    }

    /// `run` is over: its room's next change starts.
    fn end(&mut self, run: Run, now_ms: u64) {
        self.timers.remove(&(run.deadline_ms, run.id));
        let next = self.rooms.get_mut(&run.c.room).and_then(VecDeque::pop_front);
        match next {
            Some(q) => self.start(q, now_ms),
            None => {
                self.rooms.remove(&run.c.room);
            }
        }
    }
}
