//! What crosses Redis: sequenced room messages and presence notes, and how
//! the sequencing script writes a seq into bytes that are already encoded.
//!
//! A room message is an ordinary mesh frame, [`Frame::Deliver`] (version
//! byte + rkyv archive), whose client JSON holds the seq twice over: in the
//! archive's `seq` field and in the JSON text. The edge renders the JSON
//! once with [`SEQ_PLACEHOLDER`] (`"seq":` followed by 20 spaces; JSON
//! allows whitespace before a value) and [`PreparedMessage`] encodes the
//! frame and records two byte offsets: the archived little-endian `u64` seq
//! and the 20-byte JSON slot. The script overwrites both in place with the
//! seq Redis assigned (8 bytes LE; the decimal right-aligned in the slot),
//! so the length never changes and the bytes every node receives are the
//! bytes it writes to clients, and can forward over the mesh as they are.
//!
//! A presence note is a separate small archive, [`PresenceNote`], behind
//! its own version byte [`PRESENCE_VERSION`]. Room messages reuse
//! `Frame::Deliver` rather than a new `Frame` variant so the mesh frame's
//! layout (and every exhaustive match on it) stays as it is.
//!
//! What must stay true:
//! - Archives have alignment 1 (rkyv's `unaligned` feature, asserted at
//!   compile time below), so a received buffer is validated and read in
//!   place at whatever address the Redis client put it.
//! - [`decode_incoming`] accepts only `Deliver` frames and presence notes:
//!   bytes from Redis never become a `Handoff` (which carries an fd) or any
//!   other in-node frame, and never panic the node.
//! - Seqs stay below 2^53: Redis Lua numbers are doubles.

use bytes::Bytes;
use rkyv::rancor;

use super::BridgeError;
use crate::{decode, try_encode, ArchivedFrame, Frame, FRAME_VERSION};

/// Width of the JSON seq slot: the digits of `u64::MAX`.
pub const SEQ_SLOT_WIDTH: usize = 20;

/// What the edge renders where the seq goes: the key, then 20 spaces that
/// the script fills with the right-aligned decimal seq.
pub const SEQ_PLACEHOLDER: &str = "\"seq\":                    ";

/// The version byte of a [`PresenceNote`]; distinct from [`FRAME_VERSION`].
pub const PRESENCE_VERSION: u8 = 0xB1;

const _: () = assert!(PRESENCE_VERSION != FRAME_VERSION);
const _: () = assert!(SEQ_PLACEHOLDER.len() == 6 + SEQ_SLOT_WIDTH);
// The finding the zero-copy receive path rests on: archives need no
// alignment, so validating in place works at any buffer offset.
const _: () = assert!(align_of::<ArchivedFrame>() == 1);
const _: () = assert!(align_of::<ArchivedPresenceNote>() == 1);
const _: () = assert!(size_of::<rkyv::Archived<u64>>() == 8);

/// A room message encoded once, waiting for its seq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedMessage {
    room: String,
    frame: Bytes,
    seq_at: usize,
    slot_at: usize,
    dedupe: Option<Box<Dedupe>>,
}

/// A message's idempotency key across the cluster: who sent which `client_id`, and the
/// receipt the script keeps with its seq for a retry (through any node) to get back.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Dedupe {
    user: String,
    client_id: String,
    receipt: String,
}

impl PreparedMessage {
    /// Encodes `payload`, the client JSON, as a `Deliver` frame for `room`.
    /// The payload must contain [`SEQ_PLACEHOLDER`]; its first occurrence
    /// receives the seq. (A placeholder cannot occur inside a JSON string:
    /// its quotes would be escaped.)
    pub fn new(room: &str, payload: Vec<u8>) -> Result<Self, BridgeError> {
        let key = SEQ_PLACEHOLDER.as_bytes();
        let at = payload
            .windows(key.len())
            .position(|w| w == key)
            .ok_or_else(|| BridgeError::BadMessage("payload has no seq placeholder".into()))?;
        Self::with_slot(room, payload, at + key.len() - SEQ_SLOT_WIDTH)
    }

    /// As [`Self::new`], with the slot's offset in `payload` given: the
    /// [`SEQ_SLOT_WIDTH`] bytes there must be spaces.
    pub fn with_slot(room: &str, payload: Vec<u8>, slot_in_payload: usize) -> Result<Self, BridgeError> {
        let slot = slot_in_payload
            .checked_add(SEQ_SLOT_WIDTH)
            .and_then(|end| payload.get(slot_in_payload..end));
        if !slot.is_some_and(|s| s.iter().all(|&b| b == b' ')) {
            return Err(BridgeError::BadMessage("seq slot is not 20 spaces inside the payload".into()));
        }
        let frame = try_encode(&Frame::Deliver {
            room: room.to_owned(),
            seq: 0,
            payload,
            at_us: 0,
        })
        .map_err(|e| BridgeError::BadMessage(e.to_string()))?;
        let (seq_at, payload_at) = match decode(&frame) {
            Ok(ArchivedFrame::Deliver { seq, payload, .. }) => {
                let base = frame.as_ptr().addr();
                (std::ptr::from_ref(seq).addr() - base, payload.as_slice().as_ptr().addr() - base)
            }
            _ => return Err(BridgeError::BadMessage("frame did not encode as Deliver".into())),
        };
        Ok(Self {
            room: room.to_owned(),
            frame,
            seq_at,
            slot_at: payload_at + slot_in_payload,
            dedupe: None,
        })
    }

    /// Sequences the message at most once per (`user`, `client_id`) in its room while the
    /// dedupe key lives (`dedupe_ttl_ms`), across all nodes: a retry gets the original seq
    /// and `receipt` back instead (see [`crate::bridge::Duplicate`]). Empty ids, or a receipt
    /// the script could not keep whole, leave the message without a key.
    #[must_use]
    pub fn with_dedupe(mut self, user: &str, client_id: &str, receipt: &str) -> Self {
        if !user.is_empty() && !client_id.is_empty() && !receipt.is_empty() {
            self.dedupe = Some(Box::new(Dedupe {
                user: user.to_owned(),
                client_id: client_id.to_owned(),
                receipt: receipt.to_owned(),
            }));
        }
        self
    }

    /// The message's dedupe key and receipt, if it has one.
    pub(crate) fn dedupe_key(&self) -> Option<(String, &str)> {
        self.dedupe
            .as_ref()
            .map(|d| (super::keys::dedupe(&self.room, &d.user, &d.client_id), d.receipt.as_str()))
    }

    /// The room the message is for.
    pub fn room(&self) -> &str {
        &self.room
    }

    /// The encoded frame, seq not yet written (0, and spaces).
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }

    /// Offset in [`Self::frame`] of the archived little-endian `u64` seq.
    pub fn seq_offset(&self) -> usize {
        self.seq_at
    }

    /// Offset in [`Self::frame`] of the 20-byte JSON seq slot.
    pub fn slot_offset(&self) -> usize {
        self.slot_at
    }

    /// The frame with `seq` written in, exactly as the script writes it
    /// (for a node without Redis, and for tests).
    pub fn patched(&self, seq: u64) -> Bytes {
        let mut buf = self.frame.to_vec();
        patch_seq(&mut buf, self.seq_at, self.slot_at, seq);
        Bytes::from(buf)
    }
}

/// Writes `seq` into an encoded frame at the two offsets of a
/// [`PreparedMessage`]. Offsets outside `frame` are ignored (not a panic).
pub fn patch_seq(frame: &mut [u8], seq_at: usize, slot_at: usize, seq: u64) {
    if let Some(field) = seq_at.checked_add(8).and_then(|end| frame.get_mut(seq_at..end)) {
        field.copy_from_slice(&seq.to_le_bytes());
    }
    if let Some(slot) = slot_at.checked_add(SEQ_SLOT_WIDTH).and_then(|end| frame.get_mut(slot_at..end)) {
        write_seq_slot(slot, seq);
    }
}

/// Fills `slot` (20 bytes) with `seq` in decimal, right-aligned, spaces
/// before it: what Lua's `string.format('%20d', seq)` produces.
pub fn write_seq_slot(slot: &mut [u8], seq: u64) {
    let digits = seq.to_string();
    let pad = slot.len().saturating_sub(digits.len());
    slot[..pad].fill(b' ');
    let take = slot.len() - pad;
    slot[pad..].copy_from_slice(&digits.as_bytes()[digits.len() - take..]);
}

/// A presence change between nodes: `user` went online or offline in
/// `room` as seen through `node`'s entry.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct PresenceNote {
    /// The room.
    pub room: String,
    /// The user whose presence changed.
    pub user: String,
    /// The node whose entry caused the change (joined, left, or expired).
    pub node: String,
    /// Whether the user is now online in the room (on any node).
    pub online: bool,
}

impl PresenceNote {
    /// The version byte, then the archive.
    pub fn encode(&self) -> Bytes {
        let buf = vec![PRESENCE_VERSION];
        // Serializing strings into a Vec cannot fail below rkyv's 4 GiB
        // offset limit, which names never approach; fall back to a bare
        // version byte that every reader rejects.
        rkyv::api::high::to_bytes_in::<_, rancor::Error>(self, buf).map_or_else(|_| Bytes::from_static(&[PRESENCE_VERSION]), Bytes::from)
    }
}

/// A validated message received from a room channel, read in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// A sequenced room message; `payload` is the client JSON.
    Message {
        /// The room named inside the frame.
        room: &'a str,
        /// The seq written by the script.
        seq: u64,
        /// The client JSON, a slice of the received buffer.
        payload: &'a [u8],
    },
    /// An event without a seq (typing), a mesh `Event` frame, or a delivered receipt for
    /// the room's recent senders, a mesh `ToSenders` frame.
    Event {
        /// The room named inside the frame.
        room: &'a str,
        /// The user it is about.
        from: &'a str,
        /// The client JSON, a slice of the received buffer.
        payload: &'a [u8],
    },
    /// An edit, delete or reaction of a sent message (a mesh `Changed` frame): forwarded
    /// as is, so each shard's ring keeps the new version and its members get the event.
    Changed {
        /// The room named inside the frame.
        room: &'a str,
        /// The message changed.
        seq: u64,
        /// The client event (`update` or `reaction`), a slice of the received buffer.
        event: &'a [u8],
    },
    /// An operator's disconnect of a user's connections (a mesh `Disconnect` frame), on the
    /// user's channel.
    Disconnect {
        /// The user named inside the frame.
        user: &'a str,
    },
    /// A presence change.
    Presence {
        /// The room named inside the note.
        room: &'a str,
        /// The user.
        user: &'a str,
        /// The node whose entry changed.
        node: &'a str,
        /// Online or offline.
        online: bool,
    },
}

impl Incoming<'_> {
    /// The room named inside the message.
    pub fn room(&self) -> &str {
        match self {
            Self::Message { room, .. } | Self::Event { room, .. } | Self::Changed { room, .. } | Self::Presence { room, .. } => room,
            // Not about a room: never matches a room channel's room.
            Self::Disconnect { .. } => "",
        }
    }
}

/// Validates a buffer received from a room or user channel. Anything but a `Deliver`,
/// `Event`, `ToSenders`, `Changed` or `Disconnect` frame or a presence note is rejected
/// with a reason.
pub fn decode_incoming(buf: &[u8]) -> Result<Incoming<'_>, String> {
    match buf.first() {
        Some(&FRAME_VERSION) => match decode(buf).map_err(|e| e.to_string())? {
            ArchivedFrame::Deliver { room, seq, payload, .. } => Ok(Incoming::Message {
                room: room.as_str(),
                seq: seq.to_native(),
                payload: payload.as_slice(),
            }),
            ArchivedFrame::Event { room, from, payload } => Ok(Incoming::Event {
                room: room.as_str(),
                from: from.as_str(),
                payload: payload.as_slice(),
            }),
            // Forwarded as is, like an event without a seq about nobody.
            ArchivedFrame::ToSenders { room, payload } => Ok(Incoming::Event {
                room: room.as_str(),
                from: "",
                payload: payload.as_slice(),
            }),
            ArchivedFrame::Changed { room, seq, event, .. } => Ok(Incoming::Changed {
                room: room.as_str(),
                seq: seq.to_native(),
                event: event.as_slice(),
            }),
            ArchivedFrame::Disconnect { user, .. } => Ok(Incoming::Disconnect { user: user.as_str() }),
            _ => Err("frame is not a Deliver, an Event, a ToSenders, a Changed or a Disconnect".into()),
        },
        Some(&PRESENCE_VERSION) => {
            let note = rkyv::access::<ArchivedPresenceNote, rancor::Error>(&buf[1..]).map_err(|e| e.to_string())?;
            Ok(Incoming::Presence {
                room: note.room.as_str(),
                user: note.user.as_str(),
                node: note.node.as_str(),
                online: note.online,
            })
        }
        Some(v) => Err(format!("unknown version byte {v:#x}")),
        None => Err("empty message".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(body: &str) -> Vec<u8> {
        format!(r#"{{"type":"message","room":"lobby",{SEQ_PLACEHOLDER},"body":"{body}"}}"#).into_bytes()
    }

    #[test]
    fn a_disconnect_frame_reads_as_its_user_and_matches_no_room() {
        let frame = crate::encode(&Frame::Disconnect {
            user: "zed".into(),
            reason: "ban".into(),
            retry_ms: None,
            conn: 0,
        });
        let incoming = decode_incoming(&frame).expect("valid");
        assert_eq!(incoming, Incoming::Disconnect { user: "zed" });
        assert_eq!(incoming.room(), "", "never taken for a room channel's message");
    }

    #[test]
    fn slot_is_right_aligned_decimal() {
        let mut slot = [b'x'; SEQ_SLOT_WIDTH];
        write_seq_slot(&mut slot, 42);
        assert_eq!(&slot, b"                  42");
        write_seq_slot(&mut slot, u64::MAX);
        assert_eq!(&slot, b"18446744073709551615");
        write_seq_slot(&mut slot, 0);
        assert_eq!(&slot, b"                   0");
    }

    #[test]
    fn patched_frame_decodes_with_the_seq_in_both_places() {
        for seq in [1, 9, 10, 123_456_789, (1 << 53) - 1] {
            let m = PreparedMessage::new("lobby", json("hi")).unwrap();
            let buf = m.patched(seq);
            assert_eq!(buf.len(), m.frame().len());
            let Ok(Incoming::Message { room, seq: got, payload }) = decode_incoming(&buf) else {
                panic!("not a message");
            };
            assert_eq!((room, got), ("lobby", seq));
            let text = std::str::from_utf8(payload).unwrap();
            assert!(text.contains(&format!("\"seq\":{seq:>20},")), "{text}");
        }
    }

    #[test]
    fn offsets_point_into_the_frame() {
        let m = PreparedMessage::new("a-room-name-longer-than-inline", json("x")).unwrap();
        assert!(m.seq_offset() + 8 <= m.frame().len());
        assert_eq!(&m.frame()[m.seq_offset()..m.seq_offset() + 8], &[0; 8]);
        assert_eq!(
            &m.frame()[m.slot_offset()..m.slot_offset() + SEQ_SLOT_WIDTH],
            &[b' '; SEQ_SLOT_WIDTH]
        );
    }

    #[test]
    fn rejects_payloads_without_a_slot() {
        assert!(PreparedMessage::new("r", b"{\"seq\":1}".to_vec()).is_err());
        assert!(PreparedMessage::with_slot("r", b"short".to_vec(), 2).is_err());
        assert!(PreparedMessage::with_slot("r", vec![b'x'; 40], 0).is_err());
        assert!(PreparedMessage::with_slot("r", vec![b' '; 40], usize::MAX - 3).is_err());
        let mut small = [0u8; 4];
        patch_seq(&mut small, usize::MAX - 2, usize::MAX, 1);
        assert_eq!(small, [0; 4]);
    }

    #[test]
    fn presence_notes_round_trip() {
        let note = PresenceNote {
            room: "lobby".into(),
            user: "ann|x".into(),
            node: "n1".into(),
            online: true,
        };
        let buf = note.encode();
        assert_eq!(buf[0], PRESENCE_VERSION);
        let got = decode_incoming(&buf).unwrap();
        assert_eq!(
            got,
            Incoming::Presence {
                room: "lobby",
                user: "ann|x",
                node: "n1",
                online: true
            }
        );
    }

    #[test]
    fn event_frames_are_read_in_place_and_cut_ones_refused() {
        let buf = crate::encode(&Frame::Event {
            room: "lobby".into(),
            from: "ann".into(),
            payload: br#"{"type":"typing"}"#.to_vec(),
        });
        assert_eq!(
            decode_incoming(&buf).unwrap(),
            Incoming::Event {
                room: "lobby",
                from: "ann",
                payload: br#"{"type":"typing"}"#,
            }
        );
        for len in 0..buf.len() {
            assert!(decode_incoming(&buf[..len]).is_err(), "a frame cut at {len} bytes");
        }
    }

    #[test]
    fn decodes_at_odd_offsets() {
        let m = PreparedMessage::new("lobby", json("odd")).unwrap();
        let buf = m.patched(7);
        for offset in [1, 3, 5] {
            let mut big = vec![0u8; offset];
            big.extend_from_slice(&buf);
            assert!(matches!(decode_incoming(&big[offset..]), Ok(Incoming::Message { seq: 7, .. })));
        }
    }

    #[test]
    fn rejects_other_frames_and_garbage() {
        let handoff = crate::encode(&Frame::Handoff {
            fd: 3,
            head: vec![],
            peer: String::new(),
        });
        assert!(decode_incoming(&handoff).is_err());
        assert!(decode_incoming(&[]).is_err());
        assert!(decode_incoming(b"hello").is_err());
        assert!(decode_incoming(&[PRESENCE_VERSION, 1, 2]).is_err());
        let good = PreparedMessage::new("lobby", json("x")).unwrap().patched(3);
        for len in 0..good.len() {
            let _ = decode_incoming(&good[..len]);
        }
    }
}
