//! A hole in a room's deliveries, being read: what a member shard holds back
//! meanwhile so its members get the room in seq order.
//!
//! A room's deliveries reach a shard in order, but Redis pub/sub may lose
//! some (a reconnect, a lagging reader), and its pump recovers only rooms it
//! has forwarded before. So a member shard that sees a delivery past the next
//! seq reads what it missed (from the room's owner shard on one node, from
//! the stream and the shared store in a cluster), and holds what arrives
//! meanwhile (messages, notices, change events, the pump's gaps) in arrival
//! order, to be given after the missed seqs.
//!
//! Bounds: at most [`HELD_MAX`] messages are held (a message past the bound is
//! let go: it is above the cursor once the hole is filled, so it makes a
//! hole of its own and is read again); notices and events are always kept
//! (they are rare, and a read ends within its timeout); a failed read is
//! made again while its failure is retryable, at most [`MAX_REPAIR_READS`]
//! times, then what it was for is named to members as a `gap`.

use std::collections::VecDeque;

use bytes::Bytes;

use super::{Advance, Failure, SubEffect, Subscriber};
use crate::engine::catch_up::{self, Piece};
use crate::protocol::server;

/// Messages one repair holds at most.
pub(super) const HELD_MAX: usize = 4096;

/// Reads a repair makes at most before it names the hole a `gap`.
pub(crate) const MAX_REPAIR_READS: u32 = 3;

/// Repair reads are numbered from here: join tokens (the shell's tickets) stay below.
pub(super) const FIRST_REPAIR_TOKEN: u64 = 1 << 62;

/// Something that reached the shard while a hole was read, in arrival order.
#[derive(Debug)]
pub(super) enum Held {
    /// A room message.
    Message(u64, Bytes),
    /// A notice for members (seq 0).
    Notice(Bytes),
    /// A change's event (`update`, `reaction`).
    Event(Bytes),
    /// The pump's `gap`: seqs `from..=to` are held nowhere; `notice` names them.
    Skip { from: u64, to: u64, notice: Bytes },
}

/// One room's hole being read.
#[derive(Debug)]
pub(super) struct Repair {
    /// The read out.
    pub(super) token: u64,
    /// The cursor when the hole was seen: the hole starts after it.
    pub(super) after: u64,
    /// The last seq missed.
    pub(super) upto: u64,
    /// Reads made.
    pub(super) reads: u32,
    held: VecDeque<Held>,
    messages: usize,
}

impl Repair {
    /// A hole of `after+1..=upto`, read with `token`, seen when `first` arrived.
    pub(super) fn new(token: u64, after: u64, upto: u64, first: Held) -> Self {
        let mut r = Self {
            token,
            after,
            upto,
            reads: 1,
            held: VecDeque::new(),
            messages: 0,
        };
        r.hold(first);
        r
    }

    /// Keeps `h` to give after the hole; false when a message is let go (the bound).
    pub(super) fn hold(&mut self, h: Held) -> bool {
        if let Held::Message(..) = h {
            if self.messages >= HELD_MAX {
                return false;
            }
            self.messages += 1;
        }
        self.held.push_back(h);
        true
    }

    /// Message `seq` changed while held: it is given in its new version.
    pub(super) fn patch(&mut self, seq: u64, message: &Bytes) {
        for h in &mut self.held {
            if let Held::Message(s, m) = h {
                if *s == seq {
                    *m = message.clone();
                }
            }
        }
    }

    /// What was held, in arrival order.
    pub(super) fn into_held(self) -> VecDeque<Held> {
        self.held
    }

    /// The read to make: at most `max` messages, the newest of the hole.
    pub(super) fn read(&self, max: usize) -> (u64, u32) {
        let count = (self.upto - self.after).min(max.max(1) as u64) as u32;
        (self.upto - u64::from(count), count)
    }
}

impl Subscriber {
    /// A hole after `after` in `room` (the room's cursor): `first`, what showed it, is held
    /// and the hole read.
    pub(super) fn start_repair(&mut self, room: &str, after: u64, upto: u64, first: Held) {
        let token = self.next_repair;
        self.next_repair += 1;
        let rep = Repair::new(token, after, upto, first);
        self.read_hole(room, &rep);
        if let Some(r) = self.rooms.get_mut(room) {
            r.repair = Some(Box::new(rep));
        }
    }

    /// The read of a hole in `room` was answered: the messages read go to the members, a
    /// `gap` for what it did not find, then what was held meanwhile, in arrival order. A
    /// retryable failure reads again, up to [`MAX_REPAIR_READS`] reads.
    pub(super) fn repaired(&mut self, room: &str, token: u64, result: Result<Vec<(u64, Bytes)>, Failure>) {
        let Some(r) = self.rooms.get_mut(room) else { return };
        let Some(rep) = r.repair.take_if(|rep| rep.token == token) else {
            return; // A reset or a resubscription since: the hole is someone else's now.
        };
        let msgs = match result {
            Ok(msgs) => msgs,
            Err(e) if e.retryable() && rep.reads < MAX_REPAIR_READS => {
                let mut rep = rep;
                rep.token = self.next_repair;
                rep.reads += 1;
                self.next_repair += 1;
                self.read_hole(room, &rep);
                if let Some(r) = self.rooms.get_mut(room) {
                    r.repair = Some(rep);
                }
                return;
            }
            Err(e) => {
                tracing::warn!(room, after = rep.after, upto = rep.upto, error = %e, "missed messages could not be read: members are told a gap");
                Vec::new()
            }
        };
        for piece in catch_up::merge(rep.after, rep.upto, msgs.iter().map(|(seq, m)| (*seq, m))) {
            let (seq, payload) = match piece {
                Piece::Message(seq, m) => {
                    r.feed.advance(seq, m);
                    (seq, m.clone())
                }
                Piece::Gap(from, to) => {
                    r.feed.skip_to(to);
                    (0, server::gap(room, from, to))
                }
            };
            self.effects.push_back(SubEffect::Deliver {
                room: room.to_owned(),
                seq,
                payload,
            });
        }
        for held in rep.into_held() {
            self.release(room, held);
        }
    }

    /// Something held during a repair (or the pump's gap as it arrives), given now in
    /// order: it may be held again, behind a hole it shows.
    pub(super) fn release(&mut self, room: &str, held: Held) {
        let Some(r) = self.rooms.get_mut(room) else { return };
        if let Some(rep) = &mut r.repair {
            if !rep.hold(held) {
                tracing::debug!(room, "a repair holds its most messages: one is let go, and read again");
            }
            return;
        }
        let room_s = room.to_owned();
        let effect = match held {
            Held::Message(seq, m) => match r.feed.advance(seq, &m) {
                Advance::Next => SubEffect::Deliver {
                    room: room_s,
                    seq,
                    payload: m,
                },
                Advance::Repeat | Advance::Unknown => return,
                Advance::Jump { after } => return self.start_repair(room, after, seq - 1, Held::Message(seq, m)),
            },
            Held::Notice(n) => SubEffect::Deliver {
                room: room_s,
                seq: 0,
                payload: n,
            },
            Held::Event(e) => SubEffect::Event { room: room_s, payload: e },
            Held::Skip { from, to, notice } => {
                let cursor = r.feed.cursor();
                if !r.feed.is_known() || to <= cursor {
                    return;
                }
                if from > cursor + 1 {
                    return self.start_repair(room, cursor, from - 1, Held::Skip { from, to, notice });
                }
                r.feed.skip_to(to);
                // Members had the seqs up to the cursor (read by a repair of this shard).
                let payload = if from == cursor + 1 {
                    notice
                } else {
                    server::gap(room, cursor + 1, to)
                };
                SubEffect::Deliver {
                    room: room_s,
                    seq: 0,
                    payload,
                }
            }
        };
        self.effects.push_back(effect);
    }

    /// Queues the read of `rep`'s hole.
    fn read_hole(&mut self, room: &str, rep: &Repair) {
        let (after, count) = rep.read(self.cfg.max_catch_up_messages);
        self.repairs.insert(rep.token, room.to_owned());
        self.effects.push_back(SubEffect::Fetch {
            token: rep.token,
            room: room.to_owned(),
            after,
            count,
        });
    }
}
