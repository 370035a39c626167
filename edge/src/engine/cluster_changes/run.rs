//! A running change's steps: what each call's answer leads to (the chain of
//! `engine::cluster_changes`, steps 1 to 6), with the rules of `change_rules.rs`.

use std::collections::VecDeque;

use bytes::Bytes;
use router::bridge::keys;
use router::{ChangeMsg, Frame};
use storage::{Answer, Query, StoreError};

use super::{ChangeAnswer, ChangeCall, BACKOFF_MS, LOCK_TTL_MS, LOCK_WAIT_MS, STORED_WAIT_MS};
use crate::engine::change_rules::{self as rules, Plan};
use crate::engine::{Busy, Failure};
use crate::protocol::{server, ErrorCode};

/// A change running.
#[derive(Debug)]
pub(super) struct Run {
    pub(super) id: u64,
    pub(super) c: ChangeMsg,
    /// The lock's value for this change (unique cluster-wide: the shell picks it).
    pub(super) token: u64,
    /// When the change must be answered at the latest.
    pub(super) deadline_ms: u64,
    pub(super) answered: bool,
    /// The room's lock may be this change's: asked for, and not answered false.
    pub(super) may_hold_lock: bool,
    pub(super) step: Step,
}

/// Where a change is: the call out, or the pause running.
#[derive(Debug)]
pub(super) enum Step {
    /// Reading the room's counter.
    Top,
    /// Asking for the lock; the first try was at `since_ms`, the next pause is `pause_ms`.
    Lock { since_ms: u64, pause_ms: u64 },
    /// Waiting until `until_ms` to try the lock again.
    LockPause { since_ms: u64, pause_ms: u64, until_ms: u64 },
    /// Reading the message from the store.
    Lookup { since_ms: u64, pause_ms: u64 },
    /// Waiting until `until_ms` to read it again.
    LookupPause { since_ms: u64, pause_ms: u64, until_ms: u64 },
    /// Reading a reaction's bounds: the message's reactions.
    Bounds { msg_id: String, ts_ms: u64 },
    /// Writing the new version (`message`) or the reaction (`None`).
    Write {
        msg_id: String,
        message: Option<Bytes>,
        ts_ms: u64,
    },
    /// Publishing `frame` on `channel`, then on the channels `left`; `ack` answers the change.
    Publish {
        frame: Bytes,
        channel: String,
        left: VecDeque<String>,
        ack: Bytes,
    },
    /// Releasing the lock; `reply` answers the change once it is released.
    Unlock { reply: Option<Bytes> },
}

/// What a change does next.
pub(super) enum Next {
    Call(ChangeCall),
    /// Wait until this time (ms).
    Pause(u64),
    /// Answer now, release the lock (if the change may hold it), and end.
    AnswerThenRelease(Bytes),
    /// Release the lock (if the change may hold it), then answer (unless answered) and end.
    ReleaseThenAnswer(Option<Bytes>),
    /// Answer (unless answered) and end.
    Done(Option<Bytes>),
}

impl Run {
    pub(super) fn req(&self) -> Option<&str> {
        self.c.req.as_deref()
    }

    /// A change answered at its deadline starts no step before its write: it releases the
    /// lock it may hold and ends. Publishing a landed write's event, and releasing, go on.
    pub(super) fn wind_down(&self, next: Next) -> Next {
        match next {
            Next::Call(ChangeCall::Publish { .. } | ChangeCall::Unlock { .. }) => next,
            Next::Call(_) | Next::Pause(_) if self.answered => Next::ReleaseThenAnswer(None),
            next => next,
        }
    }

    /// A pause ended: the lock, or the message, is tried again.
    pub(super) fn resume(&mut self) -> Next {
        match self.step {
            Step::LockPause { since_ms, pause_ms, .. } => {
                self.step = Step::Lock { since_ms, pause_ms };
                Next::Call(self.lock_call())
            }
            Step::LookupPause { since_ms, pause_ms, .. } => {
                self.step = Step::Lookup { since_ms, pause_ms };
                Next::Call(ChangeCall::Store(rules::lookup_query(&self.c)))
            }
            _ => Next::Done(None),
        }
    }

    fn lock_call(&self) -> ChangeCall {
        ChangeCall::Lock {
            room: self.c.room.clone(),
            token: self.token,
            ttl_ms: LOCK_TTL_MS,
        }
    }

    fn not_found(&self) -> Bytes {
        let msg = format!("{} has no message {}", self.c.room, self.c.seq);
        server::error(self.req(), ErrorCode::NotFound, &msg, None)
    }

    /// Steps 1 to 6: what the answer to the call out leads to.
    pub(super) fn answered(&mut self, answer: ChangeAnswer, now_ms: u64) -> Next {
        let step = std::mem::replace(&mut self.step, Step::Top);
        match (step, answer) {
            (Step::Top, ChangeAnswer::RoomSeq(result)) => self.counted(result, now_ms),
            (Step::Lock { since_ms, pause_ms }, ChangeAnswer::Locked(result)) => self.locked(result, since_ms, pause_ms, now_ms),
            (Step::Lookup { since_ms, pause_ms }, ChangeAnswer::Stored(Ok(Answer::RangeAfter(msgs)))) => {
                match msgs.into_iter().find(|m| m.seq == self.c.seq) {
                    Some(m) => self.plan(Some(&m.frame), now_ms),
                    None if now_ms.saturating_sub(since_ms) >= STORED_WAIT_MS => self.plan(None, now_ms),
                    None => self.pause(now_ms, since_ms, pause_ms, false),
                }
            }
            (Step::Bounds { msg_id, ts_ms }, ChangeAnswer::Stored(Ok(Answer::ReactionCounts(counts)))) => {
                self.bounded(&counts, msg_id, ts_ms)
            }
            (Step::Write { msg_id, message, ts_ms }, ChangeAnswer::Stored(result)) => self.written(result, msg_id, message, ts_ms),
            (Step::Lookup { .. } | Step::Bounds { .. }, ChangeAnswer::Stored(other)) => {
                Next::ReleaseThenAnswer(Some(store_failed(self.req(), other)))
            }
            (Step::Publish { frame, channel, left, ack }, ChangeAnswer::Published(result)) => {
                self.published(frame, &channel, left, ack, result)
            }
            (Step::Unlock { reply }, ChangeAnswer::Unlocked(result)) => {
                if let Err(e) = result {
                    // It expires by itself after LOCK_TTL_MS.
                    tracing::warn!(room = self.c.room, error = %e, "cluster: a change's lock was not released");
                }
                Next::Done(reply)
            }
            (step, other) => self.wrong_answer(step, other),
        }
    }

    /// Step 1: Redis's counter for the room.
    fn counted(&mut self, result: Result<u64, Failure>, now_ms: u64) -> Next {
        match result {
            Ok(top) if self.c.seq == 0 || self.c.seq > top => Next::Done(Some(self.not_found())),
            Ok(_) => {
                self.step = Step::Lock {
                    since_ms: now_ms,
                    pause_ms: BACKOFF_MS,
                };
                Next::Call(self.lock_call())
            }
            Err(f) => Next::Done(Some(f.reply(self.req(), "message change"))),
        }
    }

    /// Step 2: the room's lock, this change's or not.
    fn locked(&mut self, result: Result<bool, Failure>, since_ms: u64, pause_ms: u64, now_ms: u64) -> Next {
        match result {
            Ok(true) => {
                self.step = Step::Lookup {
                    since_ms: now_ms,
                    pause_ms: BACKOFF_MS,
                };
                Next::Call(ChangeCall::Store(rules::lookup_query(&self.c)))
            }
            Ok(false) => {
                self.may_hold_lock = false;
                if now_ms.saturating_sub(since_ms) >= LOCK_WAIT_MS {
                    let msg = "another change of this room is running, retry";
                    return Next::Done(Some(Busy::Store.reply(self.req(), msg)));
                }
                self.pause(now_ms, since_ms, pause_ms, true)
            }
            // The lock may have been taken before the call failed: released after the answer.
            Err(f) => Next::AnswerThenRelease(f.reply(self.req(), "message change")),
        }
    }

    /// Step 4 of a reaction: its bounds checked against the message's reactions.
    fn bounded(&mut self, counts: &[storage::ReactionCount], msg_id: String, ts_ms: u64) -> Next {
        match rules::react_write(&self.c, counts) {
            Err(refused) => Next::ReleaseThenAnswer(Some(refused)),
            // Already there, or already gone: an ack, and nobody is told.
            Ok(None) => Next::ReleaseThenAnswer(Some(server::ack(self.req(), &self.c.room, self.c.seq, &msg_id, ts_ms))),
            Ok(Some(query)) => {
                self.step = Step::Write {
                    msg_id,
                    message: None,
                    ts_ms,
                };
                Next::Call(ChangeCall::Store(query))
            }
        }
    }

    /// Step 4's write: the new version (`message`) or the reaction, landed or not.
    fn written(&mut self, result: Result<Answer, Failure>, msg_id: String, message: Option<Bytes>, ts_ms: u64) -> Next {
        match (result, message) {
            (Ok(Answer::Replaced(true)), Some(frame)) => self.publish(msg_id, Some(frame), ts_ms),
            (Ok(Answer::Replaced(false)), Some(_)) => Next::ReleaseThenAnswer(Some(self.not_found())),
            (Ok(Answer::Reacted), None) => self.publish(msg_id, None, ts_ms),
            // A write that was late may still land: the lock is left to expire by itself.
            (Err(f @ Failure::StoreTimedOut), _) => {
                tracing::warn!(
                    room = self.c.room,
                    seq = self.c.seq,
                    "cluster: a change's write was late: its lock is left to expire"
                );
                Next::Done(Some(f.reply(self.req(), "message not changed")))
            }
            (other, _) => Next::ReleaseThenAnswer(Some(store_failed(self.req(), other))),
        }
    }

    /// Waits before trying the lock (`lock`) or the message again.
    fn pause(&mut self, now_ms: u64, since_ms: u64, pause_ms: u64, lock: bool) -> Next {
        let until_ms = now_ms + pause_ms;
        let pause_ms = (pause_ms * 2).min(BACKOFF_MS * 8);
        self.step = if lock {
            Step::LockPause {
                since_ms,
                pause_ms,
                until_ms,
            }
        } else {
            Step::LookupPause {
                since_ms,
                pause_ms,
                until_ms,
            }
        };
        Next::Pause(until_ms)
    }

    /// Step 4: the message as stored (`None`: still not stored) and what the rules make of it.
    fn plan(&mut self, frame: Option<&Bytes>, ts_ms: u64) -> Next {
        match rules::plan(&self.c, frame, ts_ms) {
            Err(refused) => Next::ReleaseThenAnswer(Some(refused)),
            Ok(Plan::React { msg_id }) => {
                self.step = Step::Bounds { msg_id, ts_ms };
                Next::Call(ChangeCall::Store(rules::bounds_query(&self.c)))
            }
            Ok(Plan::Replace { frame, msg_id }) => {
                let query = Query::ReplaceFrame {
                    room: self.c.room.clone(),
                    seq: self.c.seq,
                    frame: frame.clone(),
                };
                self.step = Step::Write {
                    msg_id,
                    message: Some(frame),
                    ts_ms,
                };
                Next::Call(ChangeCall::Store(query))
            }
        }
    }

    /// Step 5: the write landed; its `Changed` frame goes to the room's channel, then to a DM's
    /// users' channels.
    fn publish(&mut self, msg_id: String, message: Option<Bytes>, ts_ms: u64) -> Next {
        let c = &self.c;
        let frame = router::encode(&Frame::Changed {
            room: c.room.clone(),
            seq: c.seq,
            message: message.map(|m| m.to_vec()),
            event: rules::event(c, ts_ms).to_vec(),
        });
        let left: VecDeque<String> = match crate::auth::dm_participants(&c.room) {
            Some((a, b)) if a == b => VecDeque::from([keys::user(a)]),
            Some((a, b)) => VecDeque::from([keys::user(a), keys::user(b)]),
            None => VecDeque::new(),
        };
        let ack = server::ack(c.req.as_deref(), &c.room, c.seq, &msg_id, ts_ms);
        let channel = c.room.clone();
        self.publish_on(frame, channel, left, ack)
    }

    /// Publishes `frame` on `channel`, then on each channel `left`, then answers `ack`.
    fn publish_on(&mut self, frame: Bytes, channel: String, left: VecDeque<String>, ack: Bytes) -> Next {
        self.step = Step::Publish {
            frame: frame.clone(),
            channel: channel.clone(),
            left,
            ack,
        };
        Next::Call(ChangeCall::Publish { channel, frame })
    }

    fn published(&mut self, frame: Bytes, channel: &str, mut left: VecDeque<String>, ack: Bytes, result: Result<(), Failure>) -> Next {
        if let Err(e) = result {
            if channel == self.c.room {
                tracing::warn!(room = self.c.room, seq = self.c.seq, error = %e, "cluster: a change was stored but its event not published");
            } else {
                tracing::debug!(room = self.c.room, channel, error = %e, "cluster: a DM change not published to its user");
            }
        }
        let Some(channel) = left.pop_front() else {
            return Next::ReleaseThenAnswer(Some(ack));
        };
        self.publish_on(frame, channel, left, ack)
    }

    /// An answer of another kind than the call out asked for (a shell's mistake): the change
    /// ends as if the call had failed.
    fn wrong_answer(&mut self, step: Step, answer: ChangeAnswer) -> Next {
        tracing::error!(room = self.c.room, ?step, ?answer, "changes: an answer to another call");
        let internal = server::error(self.req(), ErrorCode::Internal, "message not changed", None);
        match step {
            Step::Top => Next::Done(Some(internal)),
            // A write may still land: the lock is left to expire.
            Step::Write { .. } => Next::Done(Some(internal)),
            Step::Publish { frame, channel, left, ack } => self.published(frame, &channel, left, ack, Ok(())),
            Step::Unlock { reply } => Next::Done(reply),
            _ => Next::ReleaseThenAnswer(Some(internal)),
        }
    }
}

/// The reply to a store call that failed, or answered something else.
fn store_failed(req: Option<&str>, result: Result<Answer, Failure>) -> Bytes {
    let f = match result {
        Err(f) => f,
        Ok(other) => {
            tracing::error!(?other, "cluster: a change step got the wrong store answer");
            Failure::Store(StoreError::Internal("unexpected store answer".into()))
        }
    };
    f.reply(req, "message not changed")
}
