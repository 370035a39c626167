//! RFC 6455 framing, sans-IO, on tungstenite's protocol state machine.
//!
//! Inbound: the shard reads socket bytes into a `BytesMut` and hands them to
//! [`Decoder::decode`], which feeds tungstenite's `WebSocketContext` through
//! an in-memory `Read` (never a socket) and returns whole messages or a
//! [`Violation`] naming the close code (1002 protocol, 1007 UTF-8, 1009 too
//! big). tungstenite checks masking, reserved bits, opcodes, control-frame
//! rules, fragmentation, frame and message size limits and UTF-8.
//!
//! Outbound: the shard writes frames itself (vectored, payloads shared across
//! sockets), so this module only renders headers and small control frames
//! with tungstenite's `FrameHeader`/`Frame` formatting. The context's own
//! automatic replies (pong, close echo) go to a sink: the connection answers
//! those itself, in order with the rest of its outbound queue.
//!
//! What must stay true: no input makes `decode` panic or buffer more than
//! the configured limits; every rejected input maps to exactly one close code.

use std::io::{self, Cursor, Read, Write};

use bytes::{Buf, Bytes, BytesMut};
use tungstenite::error::{CapacityError, Error, ProtocolError};
use tungstenite::protocol::frame::coding::{Data, OpCode as WireOp};
use tungstenite::protocol::frame::{CloseFrame as WireClose, Frame, FrameHeader};
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};

/// Close codes this module decides.
pub const CLOSE_PROTOCOL: u16 = 1002;
/// Invalid UTF-8 in a text message or close reason.
pub const CLOSE_INVALID_UTF8: u16 = 1007;
/// A frame or message over the limit.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// The longest control-frame payload RFC 6455 allows.
const MAX_CONTROL_PAYLOAD: usize = 125;
/// tungstenite's read buffer per connection, and the most it copies from the shard's
/// buffer per step; kept small because an idle connection holds it (the shard's own
/// read buffer is released when idle). A frame larger than this grows it to the frame's
/// size; a chat frame (a few hundred bytes) fits in one or two steps.
const CONTEXT_READ_BUFFER: usize = 256;

/// Inbound size limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload of one frame.
    pub max_frame_bytes: usize,
    /// Largest message after reassembling fragments.
    pub max_message_bytes: usize,
}

/// A close frame's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// The status code (already checked to be one a peer may send).
    pub code: u16,
    /// The UTF-8 reason.
    pub reason: String,
}

/// One complete inbound message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message; the bytes are valid UTF-8.
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
    /// A ping with its payload (≤ 125 bytes); answer with a pong.
    Ping(Bytes),
    /// A pong.
    Pong(Bytes),
    /// The peer's close, `None` when it carried no status code.
    Close(Option<CloseFrame>),
}

/// Why the connection must be failed, and with which close code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// 1002, 1007 or 1009.
    pub code: u16,
    /// A short reason for the close frame and the log.
    pub reason: &'static str,
}

/// The inbound state of one connection.
pub struct Decoder {
    ctx: WebSocketContext,
    closed: bool,
    /// Where the bytes handed to `ctx` stand in the peer's frames.
    edge: FrameEdge,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").field("closed", &self.closed).finish_non_exhaustive()
    }
}

impl Decoder {
    /// A server-side decoder with the given limits.
    pub fn new(limits: Limits) -> Self {
        let config = WebSocketConfig::default()
            .read_buffer_size(CONTEXT_READ_BUFFER)
            .write_buffer_size(0)
            .max_frame_size(Some(limits.max_frame_bytes))
            .max_message_size(Some(limits.max_message_bytes))
            .accept_unmasked_frames(false);
        Self {
            ctx: WebSocketContext::new(Role::Server, Some(config)),
            closed: false,
            edge: FrameEdge::default(),
        }
    }

    /// Whether every byte this decoder was given has been decoded into whole messages:
    /// no partial frame and no fragmented message open, and the peer's close not seen.
    /// Such a decoder may be dropped (an idle connection's, to free its memory) and a new
    /// one made for the next bytes: the two decode the same.
    pub fn at_rest(&self) -> bool {
        !self.closed && self.edge.at_rest()
    }

    /// Decodes the next message from `input`, consuming the bytes it used.
    /// `Ok(None)`: more bytes are needed (or the peer's close was seen).
    pub fn decode(&mut self, input: &mut BytesMut) -> Result<Option<Message>, Violation> {
        if self.closed {
            input.clear();
            return Ok(None);
        }
        let mut io = Feed {
            input,
            edge: &mut self.edge,
        };
        match self.ctx.read(&mut io) {
            Ok(msg) => Ok(convert(msg, &mut self.closed)),
            Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(Error::ConnectionClosed | Error::AlreadyClosed) => {
                self.closed = true;
                Ok(None)
            }
            Err(e) => {
                self.closed = true;
                Err(violation(&e))
            }
        }
    }
}

fn convert(msg: tungstenite::Message, closed: &mut bool) -> Option<Message> {
    use tungstenite::Message as M;
    Some(match msg {
        M::Text(t) => Message::Text(t.into()),
        M::Binary(b) => Message::Binary(b),
        M::Ping(p) => Message::Ping(p),
        M::Pong(p) => Message::Pong(p),
        M::Close(c) => {
            *closed = true;
            Message::Close(c.map(|c| CloseFrame {
                code: c.code.into(),
                reason: c.reason.as_str().to_owned(),
            }))
        }
        M::Frame(_) => return None,
    })
}

fn violation(e: &Error) -> Violation {
    match e {
        Error::Capacity(CapacityError::MessageTooLong { .. }) => Violation {
            code: CLOSE_TOO_BIG,
            reason: "message too big",
        },
        Error::Capacity(_) => Violation {
            code: CLOSE_TOO_BIG,
            reason: "too big",
        },
        Error::Utf8(_) => Violation {
            code: CLOSE_INVALID_UTF8,
            reason: "invalid utf-8",
        },
        Error::Protocol(p) => Violation {
            code: CLOSE_PROTOCOL,
            reason: protocol_reason(p),
        },
        _ => Violation {
            code: CLOSE_PROTOCOL,
            reason: "protocol error",
        },
    }
}

fn protocol_reason(p: &ProtocolError) -> &'static str {
    match p {
        ProtocolError::UnmaskedFrameFromClient => "unmasked client frame",
        ProtocolError::NonZeroReservedBits => "reserved bits set",
        ProtocolError::FragmentedControlFrame => "fragmented control frame",
        ProtocolError::ControlFrameTooBig => "control frame too big",
        ProtocolError::UnknownControlFrameType(_) | ProtocolError::UnknownDataFrameType(_) => "unknown opcode",
        ProtocolError::UnexpectedContinueFrame => "unexpected continuation",
        ProtocolError::ExpectedFragment(_) => "expected continuation",
        ProtocolError::InvalidCloseSequence => "invalid close payload",
        _ => "protocol error",
    }
}

/// The decoder's byte source and reply sink: reads come from the shard's
/// buffer (WouldBlock when it is empty); writes are discarded (see module doc).
struct Feed<'a> {
    input: &'a mut BytesMut,
    edge: &'a mut FrameEdge,
}

impl Read for Feed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.input.len());
        buf[..n].copy_from_slice(&self.input[..n]);
        self.edge.pass(&self.input[..n]);
        self.input.advance(n);
        Ok(n)
    }
}

/// Follows the frame boundaries in the bytes handed to tungstenite (it keeps a partial
/// frame, and a fragmented message, to itself): only the headers are read, to know where
/// each frame ends and whether a data message is still open.
#[derive(Debug, Default, Clone, Copy)]
struct FrameEdge {
    /// The header of the frame being read, as far as it came (empty: between frames).
    head: [u8; 14],
    head_len: u8,
    /// Payload bytes of the current frame still to come.
    left: u64,
    /// A data frame without FIN came, and no final continuation yet.
    open_message: bool,
}

impl FrameEdge {
    fn at_rest(&self) -> bool {
        self.head_len == 0 && self.left == 0 && !self.open_message
    }

    fn pass(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.left > 0 {
                let n = self.left.min(bytes.len() as u64) as usize;
                self.left -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            let have = usize::from(self.head_len);
            let want = if have < 2 { 2 } else { header_len(self.head[1]) };
            let n = (want - have).min(bytes.len());
            self.head[have..have + n].copy_from_slice(&bytes[..n]);
            self.head_len += n as u8;
            bytes = &bytes[n..];
            let have = usize::from(self.head_len);
            if have >= 2 && have == header_len(self.head[1]) {
                self.frame_header();
            }
        }
    }

    /// A whole header is in `head`: the frame's payload follows.
    fn frame_header(&mut self) {
        let (b0, b1) = (self.head[0], self.head[1]);
        self.left = match b1 & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
            127 => u64::from_be_bytes(self.head[2..10].try_into().expect("8 bytes")),
            n => u64::from(n),
        };
        let fin = b0 & 0x80 != 0;
        match b0 & 0x0f {
            0x1 | 0x2 => self.open_message = !fin,
            0x0 if fin => self.open_message = false,
            _ => {} // a continuation that is not the last, or a control frame
        }
        self.head_len = 0;
    }
}

/// A frame header's length from its second byte: 2, the extended length, the mask key.
fn header_len(b1: u8) -> usize {
    let ext = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 }
}

impl Write for Feed<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A server frame header (unmasked, at most 10 bytes) kept inline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    buf: [u8; 10],
    len: u8,
}

impl Header {
    /// The header's wire bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

fn header(opcode: WireOp, payload_len: usize) -> Header {
    let h = FrameHeader {
        is_final: true,
        opcode,
        ..FrameHeader::default()
    };
    let mut buf = [0u8; 10];
    let mut cur = Cursor::new(&mut buf[..]);
    // An unmasked header is at most 10 bytes, so formatting into 10 cannot fail.
    let ok = h.format(payload_len as u64, &mut cur).is_ok();
    debug_assert!(ok);
    let len = cur.position() as u8;
    Header { buf, len }
}

/// The header of a final text frame carrying `payload_len` bytes.
pub fn text_header(payload_len: usize) -> Header {
    header(WireOp::Data(Data::Text), payload_len)
}

/// The header of a final binary frame carrying `payload_len` bytes.
pub fn binary_header(payload_len: usize) -> Header {
    header(WireOp::Data(Data::Binary), payload_len)
}

/// The two control frames a server sends besides close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlKind {
    /// A heartbeat.
    Ping,
    /// The answer to a ping.
    Pong,
}

/// A complete ping or pong frame; payloads over 125 bytes are truncated.
pub fn control_frame(kind: ControlKind, payload: &[u8]) -> Bytes {
    let payload = Bytes::copy_from_slice(&payload[..payload.len().min(MAX_CONTROL_PAYLOAD)]);
    let frame = match kind {
        ControlKind::Ping => Frame::ping(payload),
        ControlKind::Pong => Frame::pong(payload),
    };
    format(frame)
}

/// A complete close frame. The reason is cut (at a char boundary) to fit
/// the 125-byte control payload.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let close = WireClose {
        code: code.into(),
        reason: reason[..end].to_owned().into(),
    };
    format(Frame::close(Some(close)))
}

fn format(frame: Frame) -> Bytes {
    let mut out = Vec::with_capacity(frame.len());
    // Formatting into a Vec cannot fail.
    let ok = frame.format(&mut out).is_ok();
    debug_assert!(ok);
    Bytes::from(out)
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
