//! Versioned rkyv frames exchanged between shards (and later between nodes).
//!
//! A frame on the wire is one version byte ([`FRAME_VERSION`]) followed by
//! the rkyv archive of a [`Frame`]. [`decode`] validates the archive and reads
//! it in place; [`payload_bytes`] turns a payload inside a received frame
//! into a `Bytes` view without copying.
//!
//! What must stay true:
//! - Any change to [`Frame`] or [`FileRef`] that changes the archive layout
//!   bumps [`FRAME_VERSION`].
//! - The archive has alignment 1 (rkyv's `unaligned` feature), so a frame
//!   can be read at any offset of any buffer, such as just past the version
//!   byte.
//! - Decoding never panics and never reads outside the buffer, whatever the
//!   bytes: everything goes through rkyv's validation.

use bytes::{BufMut, Bytes, BytesMut};
use rkyv::rancor;

/// The version byte that starts every encoded frame.
pub const FRAME_VERSION: u8 = 17;

/// A message between shards.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub enum Frame {
    /// A connection handed to the room owner's shard before the 101: dup'ed fd, bytes already read.
    Handoff {
        /// The duplicated socket, now owned by the receiving shard.
        fd: i32,
        /// Bytes already read from the socket (the request head and any more).
        head: Vec<u8>,
        /// The peer address, for logs.
        peer: String,
    },
    /// A member shard counts itself in a room's fan-out (one per join; the owner loads
    /// the room first), and with `user` a member of that user too (version 7). Answered
    /// with [`Frame::Subscribed`].
    Subscribe {
        /// The room.
        room: String,
        /// The member shard.
        shard: u16,
        /// The member shard's number for the join, echoed in the answer.
        token: u64,
        /// The joining member's user, counted in before the answer.
        user: Option<String>,
    },
    /// The owner's answer to [`Frame::Subscribe`]: from now on the member shard gets
    /// every message after `seq`, in order.
    Subscribed {
        /// The join's token (from `Subscribe`).
        token: u64,
        /// The room's last published seq.
        seq: u64,
        /// The room's epoch.
        epoch: u64,
        /// Members of the room on other shards.
        others: u64,
        /// Why the room could not be served (then the other fields are 0).
        refusal: Option<Refusal>,
    },
    /// A member shard asks the owner for up to `count` messages after `after` (a catch-up).
    Fetch {
        /// The room.
        room: String,
        /// The member shard.
        shard: u16,
        /// The join's token, echoed in the answer.
        token: u64,
        /// Messages with seq above this one.
        after: u64,
        /// At most this many.
        count: u32,
    },
    /// The owner's answer to [`Frame::Fetch`]: messages ascending by seq.
    Fetched {
        /// The join's token (from `Fetch`).
        token: u64,
        /// The messages read, each the rendered JSON members got.
        messages: Vec<SeqPayload>,
        /// Why they could not be read.
        refusal: Option<Refusal>,
    },
    /// The member shard has no member and no join left in a room: stop delivering it.
    Unsubscribe {
        /// The room.
        room: String,
        /// The member shard.
        shard: u16,
    },
    /// A member (one connection of `user`) joined (`online`) or left a room.
    Presence {
        /// The room.
        room: String,
        /// The member shard.
        shard: u16,
        /// The member's user.
        user: String,
        /// Joined, or left.
        online: bool,
    },
    /// A client's send for the room's owner shard.
    Send(SendMsg),
    /// A member shard asks the room's owner who is online, for one connection.
    Online {
        /// The room.
        room: String,
        /// The connection on the member shard.
        conn: u64,
        /// The client's request id, echoed in the answer.
        req: Option<String>,
    },
    /// The owner's answer to one connection: rendered JSON.
    Reply {
        /// The connection on the member shard.
        conn: u64,
        /// Rendered JSON for the client.
        payload: Vec<u8>,
    },
    /// A sequenced room message for the receiving shard's members.
    Deliver {
        /// The room.
        room: String,
        /// The message's seq in the room.
        seq: u64,
        /// Rendered JSON, sent as is to every member.
        payload: Vec<u8>,
        /// When the owner shard sequenced it (the process's monotonic µs, for the
        /// delivery-latency histogram); 0 on frames that came through Redis (version 15).
        at_us: u64,
    },
    /// The node is draining: close connections with a reconnect hint.
    Shutdown {
        /// Upper bound of the random reconnect delay to suggest.
        retry_ms_max: u32,
    },
    /// A member shard asks the room owner for a page of history (version 2).
    History {
        /// The room.
        room: String,
        /// The asking user (its own reactions are marked `me`; version 9).
        user: String,
        /// The connection on the member shard.
        conn: u64,
        /// The client's request id, echoed in the answer.
        req: Option<String>,
        /// Messages with seq below this one (the newest when absent).
        before: Option<u64>,
        /// Page size, 1..=100.
        limit: u32,
        /// A thread's page: the replies to this root seq (version 10).
        thread: Option<u64>,
    },
    /// Cluster: a room's sequence restarted (Redis lost its data): the receiving shard
    /// resets its cursor to `seq` and sends `payload` (a rendered notice) to the room's members (version 2).
    Reset {
        /// The room.
        room: String,
        /// The last seq Redis now holds for the room.
        seq: u64,
        /// Rendered JSON for the members.
        payload: Vec<u8>,
    },
    /// A member's `read`: `user` read `room` up to `seq`, for the room's owner shard (version 8).
    Read {
        /// The room.
        room: String,
        /// Who read.
        user: String,
        /// Up to this seq.
        seq: u64,
        /// The reading connection on the member shard (told only if the mark is not stored).
        conn: u64,
        /// The client's request id.
        req: Option<String>,
    },
    /// A member (`user`) started (`typing`) or stopped typing: for the room's owner shard
    /// (version 7).
    Typing {
        /// The room.
        room: String,
        /// Who types.
        user: String,
        /// Started, or stopped.
        typing: bool,
    },
    /// A DM room's message for the receiving shard's connections of the room's two users
    /// (or of `user` alone) that are not members of it (version 8).
    UserDeliver {
        /// The one user it is for (from that user's Redis channel), or both.
        user: Option<String>,
        /// The DM room.
        room: String,
        /// The message's seq.
        seq: u64,
        /// Rendered JSON.
        payload: Vec<u8>,
    },
    /// An event without a seq (typing) for the receiving shard's members of `room`, except
    /// the connections of `from`; in a cluster, also the bytes published on the room's
    /// Redis channel (version 7).
    Event {
        /// The room.
        room: String,
        /// The user it is about, who does not get it.
        from: String,
        /// Rendered JSON for the members.
        payload: Vec<u8>,
    },
    /// Message `seq` of `room` reached connections of `users` on a member shard (coalesced,
    /// once a second): for the room's owner, which moves their delivered marks (version 11).
    Delivered {
        /// The room.
        room: String,
        /// The highest seq delivered.
        seq: u64,
        /// The users reached.
        users: Vec<String>,
    },
    /// An event without a seq (a delivered receipt) for the connections of `users` among
    /// the room's members on the receiving shard (version 13).
    EventTo {
        /// The room.
        room: String,
        /// The users whose connections get it.
        users: Vec<String>,
        /// Rendered JSON.
        payload: Vec<u8>,
    },
    /// Shard `shard` holds its first connection of `user` (`online`), or closed its last
    /// one: for the user's home shard, which keeps the user's last seen (version 12).
    Seen {
        /// The user.
        user: String,
        /// The reporting shard.
        shard: u16,
        /// First connection (else last one gone).
        online: bool,
    },
    /// A connection asks whether `user` is online and when it was last seen: for the user's
    /// home shard, answered with a [`Frame::Reply`] (version 12).
    LastSeen {
        /// The user asked about.
        user: String,
        /// The asking connection.
        conn: u64,
        /// The client's request id.
        req: Option<String>,
    },
    /// A member's edit, delete or reaction of a sent message, for the room's owner shard
    /// (version 9); answered with a [`Frame::Reply`].
    Change(ChangeMsg),
    /// A sent message changed: from the room's owner to a subscribed shard, after the
    /// message's own delivery (version 9). Its members get `event` (never shed); a ring
    /// that holds `seq` keeps `message`, the current version, when there is one.
    Changed {
        /// The room.
        room: String,
        /// The message that changed.
        seq: u64,
        /// Its current version (an edit or a delete; none for a reaction).
        message: Option<Vec<u8>>,
        /// The `update` or `reaction` event for the members.
        event: Vec<u8>,
    },
    /// Close `user`'s connections on this shard (an operator's `disconnect` through the HTTP
    /// API, version 14); answered to the API connection `conn` with a [`Frame::Reply`].
    Disconnect {
        /// The user.
        user: String,
        /// The close reason (at most 100 bytes).
        reason: String,
        /// A `reconnect` hint sent before the close.
        retry_ms: Option<u64>,
        /// The asking API connection.
        conn: u64,
    },
    /// A delivered receipt of a room, through Redis in a cluster (version 16): for the
    /// connections, among the room's members on the receiving shard, of the users who sent
    /// to the room from that shard lately (every member, in a DM room). On a user's channel:
    /// for that user's connections that are not members of the (DM) room.
    ToSenders {
        /// The room.
        room: String,
        /// The rendered `receipt` event.
        payload: Vec<u8>,
    },
    /// Cluster, from the node's pump: seqs `from..=to` of `room` were missed and no longer
    /// held by the stream; the receiving shard moves its cursor past them and sends
    /// `payload` (the rendered `gap`) to the room's members (version 17).
    Gap {
        /// The room.
        room: String,
        /// The first seq missed.
        from: u64,
        /// The last seq missed.
        to: u64,
        /// Rendered JSON for the members.
        payload: Vec<u8>,
    },
}

/// A member's change to a sent message, on its way to the room's owner.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct ChangeMsg {
    /// The room.
    pub room: String,
    /// The message.
    pub seq: u64,
    /// The asking user.
    pub user: String,
    /// Whether the user moderates the room (may edit and delete anyone's messages).
    pub moderator: bool,
    /// The asking connection on its member shard (answered with a [`Frame::Reply`]).
    pub conn: u64,
    /// The client's request id.
    pub req: Option<String>,
    /// What to change.
    pub op: ChangeOp,
}

impl ArchivedChangeMsg {
    /// The owned change (it waits in its room's queue at the owner).
    pub fn to_owned_msg(&self) -> Result<ChangeMsg, FrameError> {
        rkyv::deserialize::<ChangeMsg, rancor::Error>(self).map_err(|e| FrameError::Invalid(e.to_string()))
    }
}

/// What a [`ChangeMsg`] changes.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub enum ChangeOp {
    /// A new body.
    Edit {
        /// The new text.
        body: String,
    },
    /// A delete (the seq stays, as a tombstone).
    Delete,
    /// A reaction added or removed.
    React {
        /// The emoji.
        emoji: String,
        /// Added (else removed).
        add: bool,
    },
}

/// A client's send on its way to the room's owner: the one owned shape of a send
/// (the mesh carries it archived and the owner reads it in place; a room still
/// loading keeps it in its queue as it is).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct SendMsg {
    /// The room.
    pub room: String,
    /// The member shard.
    pub shard: u16,
    /// The sending connection on the member shard.
    pub conn: u64,
    /// The authenticated user.
    pub user: String,
    /// The client's request id, echoed in the answer.
    pub req: Option<String>,
    /// The client's dedupe id.
    pub client_id: Option<String>,
    /// The message text.
    pub body: String,
    /// The message kind.
    pub kind: String,
    /// An attached file, if any.
    pub file: Option<FileRef>,
    /// The seq this message replies to, if any.
    pub reply_to: Option<u64>,
}

/// A message read for a catch-up: its seq and the rendered JSON members got.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct SeqPayload {
    /// The message's seq in the room.
    pub seq: u64,
    /// Rendered JSON.
    pub payload: Vec<u8>,
}

/// Why a room's owner could not serve a member shard's request, as the client is told.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Refusal {
    /// What kind of refusal it is.
    pub code: RefusalCode,
    /// When a retry may succeed: after about this long.
    pub retry_ms: Option<u64>,
    /// What happened, for the client.
    pub message: String,
}

/// The client-facing kind of a [`Refusal`].
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum RefusalCode {
    /// A bounded queue was full (`overloaded`).
    Overloaded,
    /// A dependency failed; a retry may succeed (`unavailable`).
    Unavailable,
    /// A dependency failed; a retry will not help (`internal`).
    Internal,
}

/// A file attached to a message.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct FileRef {
    /// Where the file can be fetched.
    pub url: String,
    /// The file's name.
    pub name: String,
    /// The file's size in bytes.
    pub size: u64,
    /// The file's MIME type.
    pub mime: String,
}

/// Why a buffer is not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The buffer has no bytes at all.
    #[error("empty frame")]
    Empty,
    /// The version byte is not [`FRAME_VERSION`].
    #[error("frame version {got}, expected {FRAME_VERSION}")]
    Version {
        /// The version byte found.
        got: u8,
    },
    /// The archive failed validation (or, from [`try_encode`], serialization).
    #[error("invalid frame: {0}")]
    Invalid(String),
}

/// Encodes `frame`: the version byte, then the rkyv archive.
///
/// Serialization only fails if a field exceeds rkyv's 32-bit offsets (about
/// 4 GiB), far beyond the node's limits. Should it happen, the result is a
/// bare version byte, which [`decode`] rejects as invalid; use
/// [`try_encode`] to see the error instead.
pub fn encode(frame: &Frame) -> Bytes {
    try_encode(frame).unwrap_or_else(|_| Bytes::from_static(&[FRAME_VERSION]))
}

/// Encodes `frame` like [`encode`], reporting a serialization failure.
pub fn try_encode(frame: &Frame) -> Result<Bytes, FrameError> {
    let mut buf = Vec::with_capacity(size_hint(frame));
    buf.push(FRAME_VERSION);
    // Positions in the archive are relative, so serializing after the
    // version byte yields the same bytes as serializing alone.
    let buf = rkyv::api::high::to_bytes_in::<_, rancor::Error>(frame, buf).map_err(|e| FrameError::Invalid(e.to_string()))?;
    Ok(Bytes::from(buf))
}

/// Encodes `frame` like [`encode`], into `buf` (emptied first; it grows if the frame
/// does not fit): a caller that keeps its frames' buffers to use again (`FramePool` in
/// the edge) encodes with no allocation. [`encoded_size_hint`] sizes a fresh buffer.
pub fn encode_in(frame: &Frame, mut buf: BytesMut) -> Result<Bytes, FrameError> {
    buf.clear();
    buf.put_u8(FRAME_VERSION);
    // As in `try_encode`: the writer's positions start after the version byte.
    let out = rkyv::api::high::to_bytes_in::<_, rancor::Error>(frame, BufWriter(buf)).map_err(|e| FrameError::Invalid(e.to_string()))?;
    Ok(out.0.freeze())
}

/// A `BytesMut` as rkyv's output.
struct BufWriter(BytesMut);

impl rkyv::ser::Positional for BufWriter {
    fn pos(&self) -> usize {
        self.0.len()
    }
}

impl<E> rkyv::ser::Writer<E> for BufWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

/// Checks the version byte and validates the archive, then gives read
/// access to the frame in place (no copy, no allocation on success).
pub fn decode(buf: &[u8]) -> Result<&ArchivedFrame, FrameError> {
    let (&version, archive) = buf.split_first().ok_or(FrameError::Empty)?;
    if version != FRAME_VERSION {
        return Err(FrameError::Version { got: version });
    }
    rkyv::access::<ArchivedFrame, rancor::Error>(archive).map_err(|e| FrameError::Invalid(e.to_string()))
}

/// Returns `payload` as a zero-copy view into `frame_buf`, the buffer the
/// frame was decoded from, so it can be written to sockets as is.
///
/// If `payload` does not lie inside `frame_buf` (a caller bug), it is copied
/// rather than panicking.
pub fn payload_bytes(frame_buf: &Bytes, payload: &[u8]) -> Bytes {
    let outer = frame_buf.as_ptr_range();
    let inner = payload.as_ptr_range();
    if outer.start <= inner.start && inner.end <= outer.end {
        frame_buf.slice_ref(payload)
    } else {
        Bytes::copy_from_slice(payload)
    }
}

/// A rough upper estimate of `frame`'s encoded size, to allocate once.
pub fn encoded_size_hint(frame: &Frame) -> usize {
    size_hint(frame)
}

/// A rough upper estimate of the encoded size, to allocate once.
fn size_hint(frame: &Frame) -> usize {
    fn opt(s: &Option<String>) -> usize {
        s.as_ref().map_or(0, String::len)
    }
    let variable = match frame {
        Frame::Handoff { head, peer, .. } => head.len() + peer.len(),
        Frame::Subscribe { room, user, .. } => room.len() + opt(user),
        Frame::Unsubscribe { room, .. } => room.len(),
        Frame::Subscribed { refusal, .. } => refusal.as_ref().map_or(0, |r| r.message.len()),
        Frame::Fetch { room, .. } => room.len(),
        Frame::Fetched { messages, refusal, .. } => {
            messages.iter().map(|m| m.payload.len() + 16).sum::<usize>() + refusal.as_ref().map_or(0, |r| r.message.len())
        }
        Frame::Presence { room, user, .. } => room.len() + user.len(),
        Frame::Online { room, req, .. } => room.len() + opt(req),
        Frame::Deliver { room, payload, .. } => room.len() + payload.len(),
        Frame::Send(SendMsg {
            room,
            user,
            req,
            client_id,
            body,
            kind,
            file,
            ..
        }) => {
            let file = file.as_ref().map_or(0, |f| 64 + f.url.len() + f.name.len() + f.mime.len());
            room.len() + user.len() + opt(req) + opt(client_id) + body.len() + kind.len() + file
        }
        Frame::Reply { payload, .. } => payload.len(),
        Frame::Shutdown { .. } => 0,
        Frame::History { room, user, req, .. } => room.len() + user.len() + opt(req),
        Frame::Reset { room, payload, .. } => room.len() + payload.len(),
        Frame::Typing { room, user, .. } => room.len() + user.len(),
        Frame::Read { room, user, req, .. } => room.len() + user.len() + opt(req),
        Frame::UserDeliver { user, room, payload, .. } => opt(user) + room.len() + payload.len(),
        Frame::Event { room, from, payload } => room.len() + from.len() + payload.len(),
        Frame::Seen { user, .. } => user.len(),
        Frame::Disconnect { user, reason, .. } => user.len() + reason.len(),
        Frame::EventTo { room, users, payload } => room.len() + users.iter().map(|u| u.len() + 8).sum::<usize>() + payload.len(),
        Frame::LastSeen { user, req, .. } => user.len() + opt(req),
        Frame::Delivered { room, users, .. } => room.len() + users.iter().map(|u| u.len() + 8).sum::<usize>(),
        Frame::Change(c) => {
            let op = match &c.op {
                ChangeOp::Edit { body } => body.len(),
                ChangeOp::Delete => 0,
                ChangeOp::React { emoji, .. } => emoji.len(),
            };
            c.room.len() + c.user.len() + opt(&c.req) + op
        }
        Frame::Changed { room, message, event, .. } => room.len() + message.as_ref().map_or(0, Vec::len) + event.len(),
        Frame::ToSenders { room, payload } | Frame::Gap { room, payload, .. } => room.len() + payload.len(),
    };
    1 + 160 + variable
}

#[cfg(test)]
mod tests;
