//! The owner side of a room: membership counts per shard, sequencing,
//! idempotent retries, the recent ring, and fan-out.
//!
//! Fan-out renders the `message` JSON once; local members get a reference to
//! those bytes, every other shard with members gets one Deliver frame (never
//! one per member), and the sender gets its `ack` after the fan-out is queued.

use bytes::Bytes;
use router::{FileRef, Frame};

use super::Shard;
use crate::metrics::ShardStats;
use crate::protocol::server::{self, FileOut, MessageOut};
use crate::protocol::ErrorCode;
use crate::room::{OwnedRoom, Sequenced};

/// A send, as the owner receives it (from a local connection or a frame).
pub(super) struct SendArgs<'a> {
    pub(super) room: &'a str,
    pub(super) shard: usize,
    pub(super) conn: u64,
    pub(super) user: &'a str,
    pub(super) req: Option<&'a str>,
    pub(super) client_id: Option<&'a str>,
    pub(super) body: &'a str,
    pub(super) kind: &'a str,
    /// url, name, size, mime
    pub(super) file: Option<(&'a str, &'a str, u64, &'a str)>,
    pub(super) reply_to: Option<u64>,
}

impl SendArgs<'_> {
    pub(super) fn to_frame(&self) -> Frame {
        Frame::Send {
            room: self.room.to_owned(),
            shard: self.shard as u16,
            conn: self.conn,
            user: self.user.to_owned(),
            req: self.req.map(str::to_owned),
            client_id: self.client_id.map(str::to_owned),
            body: self.body.to_owned(),
            kind: self.kind.to_owned(),
            file: self.file.map(|(url, name, size, mime)| FileRef {
                url: url.to_owned(),
                name: name.to_owned(),
                size,
                mime: mime.to_owned(),
            }),
            reply_to: self.reply_to,
        }
    }
}

impl Shard {
    /// A member on `shard` joins `room`; answers `joined`, then catch-up.
    pub(super) fn owner_join(&self, room: &str, shard: usize, conn: u64, req: Option<&str>, since: Option<u64>) {
        let Some((joined, catch_up)) = self.with_room(room, |r| {
            let members = r.join(shard);
            let joined = server::joined(req, room, r.seq(), r.epoch(), members);
            (joined, since.map(|s| catch_up(room, r, s)))
        }) else {
            return self.to_conn(
                conn,
                server::error(req, ErrorCode::Overloaded, "too many rooms on this shard", Some(1000)),
            );
        };
        if shard == self.id {
            self.on_joined(room, conn, joined);
        } else {
            self.send_frame(
                shard,
                &Frame::Joined {
                    room: room.to_owned(),
                    conn,
                    payload: joined.to_vec(),
                },
            );
        }
        for payload in catch_up.into_iter().flatten() {
            self.to_conn(conn, payload);
        }
    }

    /// A member on `shard` left `room`.
    pub(super) fn owner_leave(&self, room: &str, shard: usize) {
        if let Some(r) = self.owned.borrow_mut().get_mut(room) {
            r.leave(shard);
        }
    }

    /// The member side of a join: the owner has counted the member, so it is
    /// added to the fan-out list (unless it left or closed meanwhile).
    pub(super) fn on_joined(&self, room: &str, conn: u64, payload: Bytes) {
        let Some(c) = self.conn(conn) else { return };
        if !c.in_room(room) {
            return;
        }
        self.members.borrow_mut().insert(room, conn);
        c.out.push_text(payload);
    }

    /// Sequences a send and fans it out.
    pub(super) fn owner_send(&self, a: &SendArgs<'_>) {
        let now = Self::now_ms();
        let Some(outcome) = self.with_room(a.room, |r| {
            let seq = r.sequence(a.user, a.client_id, now);
            if let Sequenced::New(ack) = &seq {
                let rendered = render_message(a, ack.seq, &ack.msg_id, ack.ts);
                r.record(ack.seq, rendered.clone());
                let remote: Vec<usize> = r.remote_shards(self.id).collect();
                return (seq, Some((rendered, remote)));
            }
            (seq, None)
        }) else {
            return self.to_conn(
                a.conn,
                server::error(a.req, ErrorCode::Overloaded, "too many rooms on this shard", Some(1000)),
            );
        };
        let (ack, fanout) = match outcome {
            (Sequenced::New(ack), fanout) => (ack, fanout),
            (Sequenced::Duplicate(ack), _) => (ack, None),
        };
        if let Some((rendered, remote)) = fanout {
            ShardStats::inc(&self.stats().messages_total);
            self.deliver_local(a.room, &rendered);
            for shard in remote {
                let frame = Frame::Deliver {
                    room: a.room.to_owned(),
                    seq: ack.seq,
                    payload: rendered.to_vec(),
                };
                self.send_frame(shard, &frame);
            }
        }
        self.to_conn(a.conn, server::ack(a.req, a.room, ack.seq, &ack.msg_id, ack.ts));
    }

    /// Queues `payload` to every local member of `room`.
    pub(super) fn deliver_local(&self, room: &str, payload: &Bytes) {
        let members = self.members.borrow();
        let conns = self.conns.borrow();
        let mut n = 0;
        for id in members.get(room) {
            if let Some(c) = conns.get(id) {
                if c.out.push_text(payload.clone()) {
                    n += 1;
                }
            }
        }
        ShardStats::add(&self.stats().deliveries_total, n);
    }

    /// Runs `f` on the room's state, creating it (evicting an empty room
    /// when the shard is at `max_rooms_per_shard`); `None` when full.
    fn with_room<T>(&self, room: &str, f: impl FnOnce(&mut OwnedRoom) -> T) -> Option<T> {
        let mut owned = self.owned.borrow_mut();
        if !owned.contains_key(room) {
            if owned.len() >= self.cfg.max_rooms_per_shard {
                let victim = owned.iter().find(|(_, r)| r.is_empty()).map(|(k, _)| k.clone())?;
                owned.remove(&victim);
            }
            let r = OwnedRoom::new(
                room,
                self.shards,
                Self::now_ms(),
                self.cfg.dedupe_per_room,
                self.cfg.recent_per_room,
            );
            owned.insert(room.to_owned(), r);
            ShardStats::set(&self.stats().rooms_owned, owned.len() as u64);
        }
        owned.get_mut(room).map(f)
    }
}

/// Messages after `since` from the recent ring, or a `gap` frame first when
/// the ring no longer holds all of them.
fn catch_up(room: &str, r: &OwnedRoom, since: u64) -> Vec<Bytes> {
    if since >= r.seq() {
        return Vec::new();
    }
    match r.recent_after(since) {
        Some(held) => held.cloned().collect(),
        None => {
            let first_held = r.first_recent_seq();
            let mut out = vec![server::gap(room, since + 1, first_held - 1)];
            out.extend(r.recent_after(first_held - 1).into_iter().flatten().cloned());
            out
        }
    }
}

fn render_message(a: &SendArgs<'_>, seq: u64, msg_id: &str, ts: u64) -> Bytes {
    server::message(&MessageOut {
        room: a.room,
        seq,
        msg_id,
        from: a.user,
        ts,
        body: a.body,
        kind: a.kind,
        file: a.file.map(|(url, name, size, mime)| FileOut { url, name, size, mime }),
        reply_to: a.reply_to,
    })
}
