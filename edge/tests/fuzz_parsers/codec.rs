//! Fuzzes the WebSocket frame decoder, `edge::ws::codec::Decoder::decode`: arbitrary and
//! frame-shaped bytes never panic, give the same messages and violation however they are
//! split across calls, and respect the limits; a valid client frame sequence (fragments,
//! interleaved pings and pongs, a close) decodes to exactly its messages, whole or in
//! random chunks; over-limit messages are 1009 and invalid UTF-8 is 1007.

use bytes::{Bytes, BytesMut};
use edge::ws::codec::{CloseFrame, Decoder, Limits, Message, Violation, CLOSE_INVALID_UTF8, CLOSE_PROTOCOL, CLOSE_TOO_BIG};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

const LIMITS: Limits = Limits {
    max_frame_bytes: 512,
    max_message_bytes: 2048,
};

/// A masked client frame: `first` is FIN, RSV and the opcode; the length in its shortest form.
fn frame(first: u8, mask: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n < 65536 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// What feeding a byte stream gave: the messages, the violation that ended it, and
/// whether the decoder produced anything (or kept bytes) after that violation.
#[derive(Debug, PartialEq)]
struct Fed {
    messages: Vec<Message>,
    violation: Option<Violation>,
    after_violation: bool,
}

/// Feeds `wire` to a new decoder, cut at `cuts` (indexes into it), decoding all it can
/// after every chunk, and checks the bounds every message must respect.
fn feed(wire: &[u8], cuts: &[Index]) -> Result<Fed, TestCaseError> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
    at.push(0);
    at.push(wire.len());
    at.sort_unstable();
    let mut dec = Decoder::new(LIMITS);
    let mut buf = BytesMut::new();
    let mut fed = Fed {
        messages: Vec::new(),
        violation: None,
        after_violation: false,
    };
    for w in at.windows(2) {
        buf.extend_from_slice(&wire[w[0]..w[1]]);
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(m)) if fed.violation.is_some() => {
                    fed.after_violation = true;
                    fed.messages.push(m);
                }
                Ok(Some(m)) => fed.messages.push(m),
                Ok(None) => break,
                Err(v) if fed.violation.is_some() => {
                    fed.after_violation = true;
                    fed.violation = Some(v);
                }
                Err(v) => fed.violation = Some(v),
            }
        }
        fed.after_violation |= fed.violation.is_some() && !buf.is_empty();
    }
    for m in &fed.messages {
        match m {
            Message::Text(t) => {
                prop_assert!(t.len() <= LIMITS.max_message_bytes);
                prop_assert!(std::str::from_utf8(t).is_ok(), "a text message is UTF-8");
            }
            Message::Binary(b) => prop_assert!(b.len() <= LIMITS.max_message_bytes),
            Message::Ping(p) | Message::Pong(p) => prop_assert!(p.len() <= 125),
            Message::Close(c) => prop_assert!(c.as_ref().is_none_or(|c| c.reason.len() <= 123)),
        }
    }
    let closes = fed.messages.iter().position(|m| matches!(m, Message::Close(_)));
    prop_assert!(closes.is_none_or(|i| i + 1 == fed.messages.len()), "nothing after a close");
    if let Some(v) = &fed.violation {
        prop_assert!([CLOSE_PROTOCOL, CLOSE_INVALID_UTF8, CLOSE_TOO_BIG].contains(&v.code), "{:?}", v);
    }
    prop_assert!(!fed.after_violation, "the decoder went on after a violation");
    Ok(fed)
}

/// One frame that may break any rule: any first byte, masked or not, a declared length
/// that may differ from the payload's.
fn rough_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u8>(),
        any::<bool>(),
        any::<[u8; 4]>(),
        vec(any::<u8>(), 0..200),
        prop::option::of(prop_oneof![0u64..300, any::<u64>()]),
    )
        .prop_map(|(first, masked, mask, payload, declared)| {
            let mut f = frame(first, mask, &payload);
            if !masked {
                f[1] &= 0x7f;
            }
            if let Some(len) = declared {
                // Overwrite the length with any value in the 64-bit form.
                let mut head = vec![f[0], (f[1] & 0x80) | 127];
                head.extend_from_slice(&len.to_be_bytes());
                let skip = match f[1] & 0x7f {
                    126 => 4,
                    127 => 10,
                    _ => 2,
                };
                head.extend_from_slice(&f[skip..]);
                f = head;
            }
            f
        })
}

fn rough_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![vec(any::<u8>(), 0..400), vec(rough_frame(), 1..6).prop_map(|fs| fs.concat())]
}

/// A message of a valid sequence, as the client sends it.
#[derive(Debug, Clone)]
enum Item {
    /// A text or binary message in fragments, with a ping or pong after some of them.
    Data {
        text: bool,
        payload: Vec<u8>,
        cuts: Vec<Index>,
        between: Vec<Option<(bool, Vec<u8>)>>,
    },
    /// A ping (`true`) or pong.
    Control(bool, Vec<u8>),
}

fn item() -> impl Strategy<Value = Item> {
    let control = (any::<bool>(), vec(any::<u8>(), 0..=125));
    let payload = prop_oneof![
        ".{0,200}".prop_map(|s: String| (true, s.into_bytes())),
        vec(any::<u8>(), 0..=LIMITS.max_message_bytes).prop_map(|b| (false, b)),
    ];
    prop_oneof![
        4 => (payload, vec(any::<Index>(), 0..5), vec(prop::option::of(control.clone()), 5))
            .prop_map(|((text, payload), cuts, between)| Item::Data { text, payload, cuts, between }),
        1 => control.prop_map(|(ping, p)| Item::Control(ping, p)),
    ]
}

/// The wire bytes of `items` then `close`, and the messages they must decode to.
fn render(items: &[Item], close: &Option<(u16, String)>, mask: [u8; 4]) -> (Vec<u8>, Vec<Message>) {
    let control = |ping: bool, p: &[u8], wire: &mut Vec<u8>, want: &mut Vec<Message>| {
        wire.extend(frame(if ping { 0x89 } else { 0x8A }, mask, p));
        let p = Bytes::copy_from_slice(p);
        want.push(if ping { Message::Ping(p) } else { Message::Pong(p) });
    };
    let (mut wire, mut want) = (Vec::new(), Vec::new());
    for item in items {
        match item {
            Item::Control(ping, p) => control(*ping, p, &mut wire, &mut want),
            Item::Data {
                text,
                payload,
                cuts,
                between,
            } => {
                // Fragments of at most `max_frame_bytes`, also cut at `cuts` (empty ones too).
                let mut at: Vec<usize> = cuts.iter().map(|c| c.index(payload.len() + 1)).collect();
                at.extend((1..).map(|i| i * LIMITS.max_frame_bytes).take_while(|&i| i < payload.len()));
                at.push(0);
                at.sort_unstable();
                at.push(payload.len());
                let n = at.len() - 1;
                for (i, w) in at.windows(2).enumerate() {
                    let opcode = if i > 0 {
                        0x0
                    } else if *text {
                        0x1
                    } else {
                        0x2
                    };
                    let fin = if i + 1 == n { 0x80 } else { 0 };
                    wire.extend(frame(fin | opcode, mask, &payload[w[0]..w[1]]));
                    if let Some(Some((ping, p))) = between.get(i).filter(|_| i + 1 < n) {
                        control(*ping, p, &mut wire, &mut want);
                    }
                }
                let b = Bytes::copy_from_slice(payload);
                want.push(if *text { Message::Text(b) } else { Message::Binary(b) });
            }
        }
    }
    if let Some((code, reason)) = close {
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(reason.as_bytes());
        wire.extend(frame(0x88, mask, &p));
        let allowed = matches!(code, 1000..=1003 | 1007..=1013 | 3000..=4999);
        want.push(Message::Close(Some(if allowed {
            CloseFrame {
                code: *code,
                reason: reason.clone(),
            }
        } else {
            CloseFrame {
                code: CLOSE_PROTOCOL,
                reason: "Protocol violation".into(),
            }
        })));
        // Whatever follows the close is never decoded.
        wire.extend(frame(0x81, mask, b"after the close"));
    }
    (wire, want)
}

fn close() -> impl Strategy<Value = Option<(u16, String)>> {
    let reason = "[a-z é€]{0,40}".prop_map(|s: String| {
        let mut end = s.len().min(123);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s[..end].to_owned()
    });
    prop::option::of((prop_oneof![Just(1000u16), 1000u16..1016, 2990u16..5010, any::<u16>()], reason))
}

proptest! {
    #![proptest_config(crate::config())]

    /// Any bytes: no panic, the bounds hold, and the outcome does not depend on how the
    /// bytes were cut into reads.
    #[test]
    fn arbitrary_bytes_decode_the_same_however_cut(wire in rough_bytes(), cuts in vec(any::<Index>(), 0..8)) {
        let whole = feed(&wire, &[])?;
        let chunked = feed(&wire, &cuts)?;
        prop_assert_eq!(whole, chunked);
    }

    /// A valid sequence decodes to exactly its messages, whole, in random chunks, and byte
    /// by byte, consuming every byte.
    #[test]
    fn valid_sequences_decode_to_their_messages(
        items in vec(item(), 0..6),
        close in close(),
        mask in any::<[u8; 4]>(),
        cuts in vec(any::<Index>(), 0..12),
    ) {
        let (wire, want) = render(&items, &close, mask);
        let expected = Fed { messages: want, violation: None, after_violation: false };
        prop_assert_eq!(&feed(&wire, &[])?, &expected);
        prop_assert_eq!(&feed(&wire, &cuts)?, &expected);
        if wire.len() < 600 {
            let mut dec = Decoder::new(LIMITS);
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for b in &wire {
                buf.extend_from_slice(&[*b]);
                while let Some(m) = dec.decode(&mut buf).map_err(|v| TestCaseError::fail(format!("{v:?}")))? {
                    got.push(m);
                }
            }
            prop_assert_eq!(got, expected.messages);
        }
    }

    /// A message over `max_message_bytes` (in frames within `max_frame_bytes`) is 1009 after
    /// the messages before it, however cut.
    #[test]
    fn over_the_message_limit_is_1009(
        before in vec(item(), 0..3),
        extra in 1usize..600,
        text in any::<bool>(),
        cuts in vec(any::<Index>(), 0..8),
    ) {
        let (mut wire, want) = render(&before, &None, [1, 2, 3, 4]);
        let big = Item::Data {
            text,
            payload: vec![b'a'; LIMITS.max_message_bytes + extra],
            cuts: Vec::new(),
            between: Vec::new(),
        };
        wire.extend(render(&[big], &None, [5, 6, 7, 8]).0);
        let fed = feed(&wire, &cuts)?;
        prop_assert_eq!(fed.messages, want);
        prop_assert_eq!(fed.violation.map(|v| v.code), Some(CLOSE_TOO_BIG));
    }

    /// A frame declaring more than `max_frame_bytes` is 1009 from its header alone, data or
    /// control; a control frame of 126..=`max_frame_bytes` bytes is 1002 once it arrives.
    #[test]
    fn oversized_frames_are_refused(
        len in (LIMITS.max_frame_bytes as u64 + 1)..=u64::MAX,
        control_len in 126usize..=LIMITS.max_frame_bytes,
        opcode in prop::sample::select(vec![0x1u8, 0x2, 0x9, 0xA]),
        fin in any::<bool>(),
    ) {
        let first = if fin { 0x80 } else { 0 } | opcode;
        let mut wire = vec![first, 0x80 | 127];
        wire.extend_from_slice(&len.to_be_bytes());
        wire.extend_from_slice(&[9, 9, 9, 9]);
        let fed = feed(&wire, &[])?;
        prop_assert!(fed.messages.is_empty());
        prop_assert_eq!(fed.violation.map(|v| v.code), Some(CLOSE_TOO_BIG));

        let control = frame(0x80 | if opcode == 0x9 { 0x9 } else { 0xA }, [1, 2, 3, 4], &vec![7u8; control_len]);
        let fed = feed(&control, &[])?;
        prop_assert!(fed.messages.is_empty());
        prop_assert_eq!(fed.violation.map(|v| v.code), Some(CLOSE_PROTOCOL));
    }

    /// Text that is not UTF-8, in one frame or in fragments, is 1007.
    #[test]
    fn invalid_utf8_text_is_1007(text in ".{0,100}", at in any::<Index>(), cuts in vec(any::<Index>(), 0..4)) {
        let mut payload = text.into_bytes();
        payload.insert(at.index(payload.len() + 1), 0xFF);
        let item = Item::Data { text: true, payload, cuts, between: Vec::new() };
        let (wire, _) = render(&[item], &None, [0x11, 0x22, 0x33, 0x44]);
        let fed = feed(&wire, &[])?;
        prop_assert!(fed.messages.is_empty());
        prop_assert_eq!(fed.violation.map(|v| v.code), Some(CLOSE_INVALID_UTF8));
    }
}
