//! What each call's answer leads to, chain by chain (`engine::cluster_state`).

use std::collections::VecDeque;

use bytes::Bytes;
use storage::{Answer, MarkKind, Query};

use super::{internal, to_senders, Asker, Chain, Failure, Next, State, StateAnswer, StateCall, StateEffect};
use crate::protocol::server;

impl State {
    pub(super) fn step(&mut self, chain: &mut Chain, answer: StateAnswer, now_ms: u64) -> Next {
        match (chain, answer) {
            (Chain::Write { what, member }, StateAnswer::Stored(result)) => {
                if let Err(e) = result {
                    tracing::warn!(what, ?member, error = %e, "cluster: not stored");
                    // A membership not written is written again at the user's next join.
                    if let Some(key) = member.take() {
                        self.members.remove(&key);
                    }
                }
                Next::Done
            }
            (Chain::Sync { to }, StateAnswer::Stored(result)) => Next::Reply(synced(to, result)),
            (Chain::Read { to, room, user, seq }, StateAnswer::RoomSeq(result)) => read_counted(to, room, user, seq, result),
            (Chain::Read { to, room, user, seq }, StateAnswer::Stored(result)) => self.mark_stored(to, room, user, *seq, result),
            (Chain::LastSeen { to, user }, StateAnswer::Subscribers(result)) => {
                let req = to.req.as_deref();
                match result {
                    Ok(n) if n > 0 => Next::Reply(server::presence_user(req, user, true, Some(now_ms))),
                    Ok(_) => Next::Call(StateCall::Store(Query::LastSeen { user: user.clone() })),
                    Err(f) => Next::Reply(f.reply(req, "presence not read")),
                }
            }
            (Chain::LastSeen { to, user }, StateAnswer::Stored(result)) => Next::Reply(last_seen(to, user, result)),
            (Chain::Delivered { room, payload, sizing }, StateAnswer::Stored(result)) if !*sizing => {
                self.delivered_stored(room, payload, sizing, result, now_ms)
            }
            (Chain::Delivered { room, payload, sizing }, StateAnswer::Online(result)) if *sizing => {
                match result {
                    Ok(online) => {
                        self.sizes.insert(room.clone(), (online.len(), now_ms));
                        self.receipts_to_senders(room, payload, online.len());
                    }
                    Err(_) => tracing::debug!(room, "cluster: delivered receipts not pushed: the room's size is unknown"),
                }
                Next::Done
            }
            (Chain::Receipts { rooms }, StateAnswer::Online(result)) => self.room_sized(rooms, result),
            (chain, other) => self.wrong_answer(chain, other),
        }
    }

    /// A `read`'s mark as the store now keeps it: moved (pushed at the tick) or not.
    fn mark_stored(&mut self, to: &Asker, room: &str, user: &str, seq: u64, result: Result<Answer, Failure>) -> Next {
        match result {
            Ok(Answer::Mark(now)) if now == seq => {
                let at = self.moved.entry((room.to_owned(), user.to_owned())).or_default();
                *at = (*at).max(seq);
                Next::Done
            }
            // The stored mark is ahead already: nothing moved, nobody is told.
            Ok(Answer::Mark(_)) => Next::Done,
            Ok(other) => {
                tracing::error!(?other, "set_mark answered with something else");
                Next::Done
            }
            Err(f) => Next::Reply(f.reply(to.req.as_deref(), "read mark not stored")),
        }
    }

    /// Delivered marks stored (or not: the next ones carry them); the room's size next,
    /// unless one was read lately.
    fn delivered_stored(&mut self, room: &str, payload: &Bytes, sizing: &mut bool, result: Result<Answer, Failure>, now_ms: u64) -> Next {
        match result {
            Ok(Answer::Marks(_)) => {}
            Ok(other) => tracing::error!(?other, "set_marks answered with something else"),
            Err(e) => tracing::warn!(room, error = %e, "cluster: delivered marks not stored: the next ones carry them"),
        }
        let fresh = self
            .sizes
            .get(room)
            .filter(|(_, at)| at.saturating_add(super::SIZE_KEPT_MS) >= now_ms);
        match fresh.map(|&(n, _)| n) {
            Some(n) => {
                self.receipts_to_senders(room, payload, n);
                Next::Done
            }
            None => {
                *sizing = true;
                Next::Call(StateCall::Online { room: room.to_owned() })
            }
        }
    }

    /// The tick's receipts: the first room's size came; its receipts go (or not), then the
    /// next room's size is read.
    fn room_sized(&mut self, rooms: &mut VecDeque<(String, Vec<(String, u64)>)>, result: Result<Vec<(String, u64)>, Failure>) -> Next {
        if let Some((room, marks)) = rooms.pop_front() {
            match result {
                Ok(online) if online.len() > self.cfg.receipts_room_max => {}
                Ok(_) => self.read_receipts(&room, marks),
                Err(_) => tracing::debug!(room, "cluster: receipts not pushed: the room's size is unknown"),
            }
        }
        match rooms.front() {
            Some((room, _)) => Next::Call(StateCall::Online { room: room.clone() }),
            None => Next::Done,
        }
    }

    /// An answer of another kind than the call out asked for (a shell's mistake): the chain
    /// ends as if the call had failed.
    fn wrong_answer(&mut self, chain: &mut Chain, answer: StateAnswer) -> Next {
        tracing::error!(?chain, ?answer, "cluster state: an answer to another call");
        match chain {
            Chain::Write { member, .. } => {
                if let Some(key) = member.take() {
                    self.members.remove(&key);
                }
                Next::Done
            }
            Chain::Sync { to } | Chain::Read { to, .. } | Chain::LastSeen { to, .. } => {
                Next::Reply(internal(to.req.as_deref(), "not done"))
            }
            Chain::Delivered { .. } | Chain::Receipts { .. } => Next::Done,
        }
    }

    /// The delivered receipt of `room`, if the room has at most `receipts_room_max` users
    /// online (`online`).
    fn receipts_to_senders(&mut self, room: &str, payload: &Bytes, online: usize) {
        if online > self.cfg.receipts_room_max {
            return;
        }
        for (channel, frame) in to_senders(room, payload) {
            self.effects.push_back(StateEffect::Notify { channel, frame });
        }
    }

    /// One read `receipt` per user of `marks` to `room`'s members (all of them: `from` is
    /// nobody).
    fn read_receipts(&mut self, room: &str, marks: Vec<(String, u64)>) {
        for (user, seq) in marks {
            let frame = router::encode(&router::Frame::Event {
                room: room.to_owned(),
                from: String::new(),
                payload: server::receipt(room, &user, seq, "read").to_vec(),
            });
            self.effects.push_back(StateEffect::Notify {
                channel: room.to_owned(),
                frame,
            });
        }
    }
}

/// `sync`'s answer.
fn synced(to: &Asker, result: Result<Answer, Failure>) -> Bytes {
    let req = to.req.as_deref();
    match result {
        Ok(Answer::UserRooms(rooms)) => server::sync(req, &rooms),
        Ok(other) => {
            tracing::error!(?other, "user_rooms answered with something else");
            internal(req, "sync not read")
        }
        Err(f) => f.reply(req, "sync not read"),
    }
}

/// A `read`'s seq against Redis's counter for the room: a `read` past the room's last message
/// marks that message; one of an empty room does nothing.
fn read_counted(to: &Asker, room: &str, user: &str, seq: &mut u64, result: Result<u64, Failure>) -> Next {
    match result {
        Err(f) => Next::Reply(f.reply(to.req.as_deref(), "read mark not stored")),
        Ok(top) if (*seq).min(top) == 0 => Next::Done,
        Ok(top) => {
            *seq = (*seq).min(top);
            Next::Call(StateCall::Store(Query::SetMark {
                room: room.to_owned(),
                user: user.to_owned(),
                kind: MarkKind::Read,
                seq: *seq,
            }))
        }
    }
}

/// A user's `presence` when no node holds a connection of theirs: the stored last seen.
fn last_seen(to: &Asker, user: &str, result: Result<Answer, Failure>) -> Bytes {
    let req = to.req.as_deref();
    match result {
        Ok(Answer::LastSeen(ts)) => server::presence_user(req, user, false, ts),
        Ok(other) => {
            tracing::error!(?other, "last_seen answered with something else");
            internal(req, "last seen not read")
        }
        Err(f) => f.reply(req, "last seen not read"),
    }
}
