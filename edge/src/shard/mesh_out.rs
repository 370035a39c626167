//! Frames a shard sends to other shards, encoded with nothing allocated per send.
//!
//! The frames a send makes on one node (the `Send` to the room's owner shard, the
//! `Reply` with its ack back, a `Deliver` to each member shard) are filled into
//! scratch frames kept here, whose strings keep their capacity, and encoded into
//! buffers of a [`FramePool`]: each encoded frame is retired as it leaves, and its
//! buffer is encoded into again once the receiving shard has dropped it and every
//! outbox has written the payload it shared. The other frames are encoded into
//! pooled buffers too.

use bytes::Bytes;
use router::{FileRef, Frame, SendMsg};

use crate::engine::owner::SendArgs;
use crate::protocol::server::FramePool;

/// How many sent frames the pool keeps to encode into again. A member shard's ring keeps
/// the payloads it was delivered, and with them their frames' buffers, for as many
/// messages as it holds (256 per room by default): the pool reaches past one busy room's
/// ring. Frames still held when their turn comes are let go and a fresh buffer is made.
const POOLED_FRAMES: usize = 1_024;

/// A shard's outgoing mesh frames: scratch frames and the pool they are encoded into.
#[derive(Debug)]
pub struct MeshOut {
    pool: FramePool,
    deliver: Frame,
    reply: Frame,
    send: Frame,
}

impl Default for MeshOut {
    fn default() -> Self {
        Self::new()
    }
}

impl MeshOut {
    /// Empty scratch frames and pool.
    pub fn new() -> Self {
        Self::keeping(POOLED_FRAMES)
    }

    /// With a pool that keeps `keep` sent frames.
    fn keeping(keep: usize) -> Self {
        Self {
            pool: FramePool::new(keep),
            deliver: Frame::Deliver {
                room: String::new(),
                seq: 0,
                payload: Vec::new(),
                at_us: 0,
            },
            reply: Frame::Reply {
                conn: 0,
                payload: Vec::new(),
            },
            send: Frame::Send(SendMsg {
                room: String::new(),
                shard: 0,
                conn: 0,
                user: String::new(),
                req: None,
                client_id: None,
                body: String::new(),
                kind: String::new(),
                file: None,
                reply_to: None,
            }),
        }
    }

    /// Encodes any frame into a pooled buffer.
    pub fn encode(&mut self, frame: &Frame) -> Bytes {
        encode(&mut self.pool, frame)
    }

    /// A message `payload` of `room` for a member shard.
    pub fn deliver(&mut self, room: &str, seq: u64, payload: &[u8], at_us: u64) -> Bytes {
        if let Frame::Deliver {
            room: r,
            seq: s,
            payload: p,
            at_us: t,
        } = &mut self.deliver
        {
            set(r, room);
            *s = seq;
            p.clear();
            p.extend_from_slice(payload);
            *t = at_us;
        }
        encode(&mut self.pool, &self.deliver)
    }

    /// A rendered frame for connection `conn` on another shard.
    pub fn reply(&mut self, conn: u64, payload: &[u8]) -> Bytes {
        if let Frame::Reply { conn: c, payload: p } = &mut self.reply {
            *c = conn;
            p.clear();
            p.extend_from_slice(payload);
        }
        encode(&mut self.pool, &self.reply)
    }

    /// A connection's send, for the room's owner shard.
    pub fn send(&mut self, a: &SendArgs<'_>) -> Bytes {
        if let Frame::Send(m) = &mut self.send {
            set(&mut m.room, a.room);
            m.shard = a.shard as u16;
            m.conn = a.conn;
            set(&mut m.user, a.user);
            set_opt(&mut m.req, a.req);
            set_opt(&mut m.client_id, a.client_id);
            set(&mut m.body, a.body);
            set(&mut m.kind, a.kind);
            // A file reference is rare: it is made anew (the strings of a message's text are kept).
            m.file = a.file.map(|f| FileRef {
                url: f.url.to_owned(),
                name: f.name.to_owned(),
                size: f.size,
                mime: f.mime.to_owned(),
            });
            m.reply_to = a.reply_to;
        }
        encode(&mut self.pool, &self.send)
    }
}

fn encode(pool: &mut FramePool, frame: &Frame) -> Bytes {
    let buf = pool.buffer(router::encoded_size_hint(frame));
    // Encoding fails only if rkyv cannot serialize the frame (no frame of ours): the
    // receiver drops what it cannot read, as it does any invalid frame.
    let bytes = router::encode_in(frame, buf).unwrap_or_else(|_| Bytes::from_static(&[router::FRAME_VERSION]));
    pool.retire(&bytes);
    bytes
}

fn set(s: &mut String, v: &str) {
    s.clear();
    s.push_str(v);
}

fn set_opt(s: &mut Option<String>, v: Option<&str>) {
    match (s.as_mut(), v) {
        (Some(s), Some(v)) => set(s, v),
        (None, Some(v)) => *s = Some(v.to_owned()),
        (_, None) => *s = None,
    }
}

#[cfg(test)]
mod tests {
    use router::{ArchivedFrame, FileRef};

    use super::*;

    fn args<'a>(room: &'a str, req: Option<&'a str>, client_id: Option<&'a str>, body: &'a str) -> SendArgs<'a> {
        SendArgs {
            room,
            shard: 1,
            conn: 42,
            user: "ann",
            req,
            client_id,
            body,
            kind: "text",
            file: None,
            reply_to: Some(3),
        }
    }

    #[test]
    fn scratch_frames_encode_the_same_bytes_as_fresh_frames() {
        let mut out = MeshOut::new();
        let long = "a longer body than the first one, to make the strings grow";
        for (room, req, cid, body) in [
            ("lobby", Some("1"), Some("c1"), long),
            ("x", None, None, "hi"),
            ("lobby", Some("\"q\""), None, ""),
        ] {
            let a = args(room, req, cid, body);
            assert_eq!(out.send(&a), router::encode(&Frame::Send(a.to_msg())));
        }
        let with_file = SendArgs {
            file: Some(crate::protocol::server::FileOut {
                url: "https://f/a.png",
                name: "a.png",
                size: 9,
                mime: "image/png",
            }),
            ..args("r", None, None, "")
        };
        let fresh = Frame::Send(with_file.to_msg());
        assert!(
            matches!(&fresh, Frame::Send(m) if m.file == Some(FileRef { url: "https://f/a.png".into(), name: "a.png".into(), size: 9, mime: "image/png".into() }))
        );
        assert_eq!(out.send(&with_file), router::encode(&fresh));
        for (room, seq, payload) in [("lobby", 7, &b"{\"type\":\"message\"}"[..]), ("r", 8, b"")] {
            let fresh = Frame::Deliver {
                room: room.into(),
                seq,
                payload: payload.to_vec(),
                at_us: 5,
            };
            assert_eq!(out.deliver(room, seq, payload, 5), router::encode(&fresh));
        }
        let reply = out.reply(9, b"{\"type\":\"ack\"}");
        assert_eq!(
            reply,
            router::encode(&Frame::Reply {
                conn: 9,
                payload: b"{\"type\":\"ack\"}".to_vec()
            })
        );
        assert!(matches!(router::decode(&reply), Ok(ArchivedFrame::Reply { .. })));
    }

    #[test]
    fn a_frame_the_receiver_dropped_is_encoded_into_again_and_a_held_one_is_not_written_over() {
        let mut out = MeshOut::keeping(1);
        let first = out.deliver("lobby", 1, b"one", 0);
        let ptr = first.as_ptr();
        // The receiver shares the payload with an outbox that has not written it yet.
        let frame = router::decode(&first).expect("a frame");
        let ArchivedFrame::Deliver { payload, .. } = frame else {
            panic!("a deliver")
        };
        let queued = router::payload_bytes(&first, payload.as_slice());
        drop(first);
        let second = out.deliver("lobby", 2, b"two", 0);
        let second_ptr = second.as_ptr();
        assert_ne!(second_ptr, ptr, "the held buffer is not used");
        assert_eq!(&queued[..], b"one");
        drop((queued, second));
        // The pool let the held frame go; the second frame's buffer comes round now.
        let third = out.deliver("lobby", 3, b"three", 0);
        assert_eq!(third.as_ptr(), second_ptr);
        assert!(matches!(router::decode(&third), Ok(ArchivedFrame::Deliver { seq, .. }) if seq.to_native() == 3));
    }
}
