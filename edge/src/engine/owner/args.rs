//! What the owner is asked, as borrowed views: a send (from a local connection,
//! a mesh frame read in place, or a loading room's queue), a member shard's
//! catch-up read, a history page; and the one rendering of a send's `message`
//! JSON.

use bytes::Bytes;
use router::{ArchivedSendMsg, FileRef, SendMsg};

use crate::protocol::client::SendReq;
use crate::protocol::server::{self, FileOut, FramePool, MessageOut};

/// A send, as the owner receives it (from a local connection or a mesh frame).
#[derive(Debug, Clone, Copy)]
pub struct SendArgs<'a> {
    pub room: &'a str,
    pub shard: usize,
    pub conn: u64,
    pub user: &'a str,
    pub req: Option<&'a str>,
    pub client_id: Option<&'a str>,
    pub body: &'a str,
    pub kind: &'a str,
    pub file: Option<FileOut<'a>>,
    pub reply_to: Option<u64>,
}

impl<'a> SendArgs<'a> {
    /// The owned form: what the mesh carries, and what waits in a loading room's queue.
    pub fn to_msg(&self) -> SendMsg {
        SendMsg {
            room: self.room.to_owned(),
            shard: self.shard as u16,
            conn: self.conn,
            user: self.user.to_owned(),
            req: self.req.map(str::to_owned),
            client_id: self.client_id.map(str::to_owned),
            body: self.body.to_owned(),
            kind: self.kind.to_owned(),
            file: self.file.map(|f| FileRef {
                url: f.url.to_owned(),
                name: f.name.to_owned(),
                size: f.size,
                mime: f.mime.to_owned(),
            }),
            reply_to: self.reply_to,
        }
    }

    /// A client's `send` as the session passed it (`Step::Send`), from connection `conn` of
    /// `user` on shard `shard`, request `req`.
    pub fn of_req(room: &'a str, at: (usize, u64), user: &'a str, req: Option<&'a str>, s: &'a SendReq<'a>) -> Self {
        Self {
            room,
            shard: at.0,
            conn: at.1,
            user,
            req,
            client_id: s.client_id.as_deref(),
            body: &s.body,
            kind: s.kind.as_str(),
            file: s.file.as_ref().map(|f| FileOut {
                url: &f.url,
                name: &f.name,
                size: f.size,
                mime: &f.mime,
            }),
            reply_to: s.reply_to,
        }
    }

    /// A view of an owned send.
    pub fn of_msg(m: &'a SendMsg) -> Self {
        Self {
            room: &m.room,
            shard: usize::from(m.shard),
            conn: m.conn,
            user: &m.user,
            req: m.req.as_deref(),
            client_id: m.client_id.as_deref(),
            body: &m.body,
            kind: &m.kind,
            file: m.file.as_ref().map(|f| FileOut {
                url: &f.url,
                name: &f.name,
                size: f.size,
                mime: &f.mime,
            }),
            reply_to: m.reply_to,
        }
    }

    /// A view of a send read in place from a mesh frame (no copy).
    pub fn of_archived(m: &'a ArchivedSendMsg) -> Self {
        Self {
            room: m.room.as_str(),
            shard: usize::from(m.shard.to_native()),
            conn: m.conn.to_native(),
            user: m.user.as_str(),
            req: m.req.as_ref().map(|r| r.as_str()),
            client_id: m.client_id.as_ref().map(|c| c.as_str()),
            body: m.body.as_str(),
            kind: m.kind.as_str(),
            file: m.file.as_ref().map(|f| FileOut {
                url: f.url.as_str(),
                name: f.name.as_str(),
                size: f.size.to_native(),
                mime: f.mime.as_str(),
            }),
            reply_to: m.reply_to.as_ref().map(|r| r.to_native()),
        }
    }
}

/// A member shard's catch-up read for a join, as the owner receives it.
#[derive(Debug, Clone, Copy)]
pub struct FetchArgs<'a> {
    pub room: &'a str,
    /// The member shard.
    pub shard: usize,
    /// The join's token, echoed in the answer.
    pub token: u64,
    /// Messages with seq above this one,
    pub after: u64,
    /// at most this many.
    pub count: u32,
}

/// A history request, as the owner receives it.
#[derive(Debug, Clone, Copy)]
pub struct HistoryArgs<'a> {
    pub room: &'a str,
    /// The asking user: its own reactions are marked `me`.
    pub user: &'a str,
    pub conn: u64,
    pub req: Option<&'a str>,
    pub before: Option<u64>,
    pub limit: u32,
    /// A thread's page: the replies to this root seq.
    pub thread: Option<u64>,
}

/// The `message` JSON of a cluster's send, rendered once, with the seq slot Redis fills.
pub fn render_unsequenced(a: &SendArgs<'_>, msg_id: &str, ts: u64) -> Bytes {
    server::message_unsequenced(&message_out(a, 0, msg_id, ts))
}

fn message_out<'a>(a: &SendArgs<'a>, seq: u64, msg_id: &'a str, ts: u64) -> MessageOut<'a> {
    MessageOut {
        room: a.room,
        seq,
        msg_id,
        from: a.user,
        ts,
        body: a.body,
        kind: a.kind,
        file: a.file,
        reply_to: a.reply_to,
    }
}

/// How many retired frames each of the owner's pools keeps.
const POOLED_FRAMES: usize = 128;

/// The owner's renderings of sends and acks, into buffers used again: a message's once the
/// room's recent ring lets it go, an ack's once it is written (see [`FramePool`]). In the
/// steady state a send allocates nothing for either.
#[derive(Debug)]
pub(super) struct Frames {
    /// Messages evicted from the owner's recent rings.
    pub(super) messages: FramePool,
    acks: FramePool,
}

impl Frames {
    pub(super) fn new() -> Self {
        Self {
            messages: FramePool::new(POOLED_FRAMES),
            acks: FramePool::new(POOLED_FRAMES),
        }
    }

    /// A sequenced send's `message`.
    pub(super) fn message(&mut self, a: &SendArgs<'_>, seq: u64, msg_id: &str, ts: u64) -> Bytes {
        let m = message_out(a, seq, msg_id, ts);
        server::message_into(self.messages.buffer(server::message_cap(&m)), &m)
    }

    /// A send's `ack`, retired at once: its buffer is used again once the connection wrote it.
    pub(super) fn ack(&mut self, req: Option<&str>, room: &str, seq: u64, msg_id: &str, ts: u64) -> Bytes {
        let buf = self.acks.buffer(server::ack_cap(req, room, msg_id));
        let ack = server::ack_into(buf, req, room, seq, msg_id, ts);
        self.acks.retire(&ack);
        ack
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_send_keeps_every_field_through_the_mesh_and_the_load_queue() {
        let file = FileOut {
            url: "https://files.example/a.png",
            name: "a.png",
            size: 1234,
            mime: "image/png",
        };
        let a = SendArgs {
            room: "lobby",
            shard: 3,
            conn: 42,
            user: "ann",
            req: Some("\"7\""),
            client_id: Some("c1"),
            body: "hello",
            kind: "file",
            file: Some(file),
            reply_to: Some(9),
        };
        let mut frames = Frames::new();
        let mut render = |a: &SendArgs<'_>| frames.message(a, 5, "m", 1);
        let msg = a.to_msg();
        assert_eq!(render(&SendArgs::of_msg(&msg)), render(&a), "the load queue's copy");
        let buf = router::encode(&router::Frame::Send(msg));
        let Ok(router::ArchivedFrame::Send(archived)) = router::decode(&buf) else {
            panic!("a Send frame")
        };
        let read = SendArgs::of_archived(archived);
        assert_eq!(render(&read), render(&a), "read in place from the mesh frame");
        assert_eq!(
            (read.shard, read.conn, read.req, read.client_id),
            (3, 42, Some("\"7\""), Some("c1"))
        );
    }
}
