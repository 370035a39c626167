use super::*;

const LIMITS: Limits = Limits {
    max_frame_bytes: 1024,
    max_message_bytes: 2048,
};

/// A masked client frame.
fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x11, 0x22, 0x33, 0x44];
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

fn decode_all(bytes: &[u8]) -> (Vec<Message>, Option<Violation>) {
    let mut dec = Decoder::new(LIMITS);
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    loop {
        match dec.decode(&mut buf) {
            Ok(Some(m)) => out.push(m),
            Ok(None) => return (out, None),
            Err(v) => return (out, Some(v)),
        }
    }
}

#[test]
fn text_message_decodes() {
    let (msgs, err) = decode_all(&client_frame(0x81, b"hello"));
    assert_eq!(err, None);
    assert_eq!(msgs, vec![Message::Text(Bytes::from_static(b"hello"))]);
}

#[test]
fn bytes_split_anywhere_give_the_same_messages() {
    let mut wire = client_frame(0x01, b"hel");
    wire.extend(client_frame(0x89, b"p"));
    wire.extend(client_frame(0x80, b"lo"));
    wire.extend(client_frame(0x82, &[0, 1, 2]));
    for split in 0..wire.len() {
        let mut dec = Decoder::new(LIMITS);
        let mut buf = BytesMut::from(&wire[..split]);
        let mut got = Vec::new();
        while let Some(m) = dec.decode(&mut buf).expect("valid") {
            got.push(m);
        }
        buf.extend_from_slice(&wire[split..]);
        while let Some(m) = dec.decode(&mut buf).expect("valid") {
            got.push(m);
        }
        assert_eq!(
            got,
            vec![
                Message::Ping(Bytes::from_static(b"p")),
                Message::Text(Bytes::from_static(b"hello")),
                Message::Binary(Bytes::from_static(&[0, 1, 2])),
            ],
            "split at {split}"
        );
    }
}

#[test]
fn unmasked_client_frame_is_1002() {
    let (_, err) = decode_all(&[0x81, 0x02, b'h', b'i']);
    assert_eq!(err.map(|v| v.code), Some(CLOSE_PROTOCOL));
}

#[test]
fn invalid_utf8_is_1007() {
    let (_, err) = decode_all(&client_frame(0x81, &[0xC3, 0x28]));
    assert_eq!(err.map(|v| v.code), Some(CLOSE_INVALID_UTF8));
}

#[test]
fn frame_over_limit_is_1009_before_its_payload_arrives() {
    // Only the header of a 4 KiB frame: rejected without buffering the payload.
    let wire = client_frame(0x82, &[0u8; 4096]);
    let (_, err) = decode_all(&wire[..8]);
    assert_eq!(err.map(|v| v.code), Some(CLOSE_TOO_BIG));
}

#[test]
fn message_over_limit_across_fragments_is_1009() {
    let mut wire = Vec::new();
    wire.extend(client_frame(0x02, &[0u8; 1000]));
    wire.extend(client_frame(0x00, &[0u8; 1000]));
    wire.extend(client_frame(0x80, &[0u8; 1000]));
    let (msgs, err) = decode_all(&wire);
    assert!(msgs.is_empty());
    assert_eq!(err.map(|v| v.code), Some(CLOSE_TOO_BIG));
}

#[test]
fn control_frame_rules_are_1002() {
    for wire in [
        client_frame(0x09, b"fragmented ping"),
        client_frame(0x89, &[0u8; 126]),
        client_frame(0x8B, b""),         // reserved control opcode
        client_frame(0x83, b""),         // reserved data opcode
        client_frame(0xC1, b"rsv1"),     // reserved bit
        client_frame(0x80, b"continue"), // continuation with nothing to continue
    ] {
        let (_, err) = decode_all(&wire);
        assert_eq!(err.map(|v| v.code), Some(CLOSE_PROTOCOL), "{wire:02x?}");
    }
    let mut two_starts = client_frame(0x01, b"a");
    two_starts.extend(client_frame(0x81, b"b"));
    assert_eq!(decode_all(&two_starts).1.map(|v| v.code), Some(CLOSE_PROTOCOL));
}

#[test]
fn close_frames() {
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bye");
    let (msgs, err) = decode_all(&client_frame(0x88, &payload));
    assert_eq!(err, None);
    assert_eq!(
        msgs,
        vec![Message::Close(Some(CloseFrame {
            code: 1000,
            reason: "bye".into()
        }))]
    );

    let (msgs, _) = decode_all(&client_frame(0x88, b""));
    assert_eq!(msgs, vec![Message::Close(None)]);

    // A code no peer may send is answered as a protocol error.
    let (msgs, _) = decode_all(&client_frame(0x88, &1005u16.to_be_bytes()));
    assert!(
        matches!(&msgs[..], [Message::Close(Some(CloseFrame { code: 1002, .. }))]),
        "{msgs:?}"
    );

    assert_eq!(decode_all(&client_frame(0x88, &[0x03])).1.map(|v| v.code), Some(CLOSE_PROTOCOL));
    let mut bad_reason = 1000u16.to_be_bytes().to_vec();
    bad_reason.extend_from_slice(&[0xFF, 0xFE]);
    assert_eq!(
        decode_all(&client_frame(0x88, &bad_reason)).1.map(|v| v.code),
        Some(CLOSE_INVALID_UTF8)
    );
}

#[test]
fn nothing_is_decoded_after_close() {
    let mut wire = client_frame(0x88, b"");
    wire.extend(client_frame(0x81, b"late"));
    let (msgs, err) = decode_all(&wire);
    assert_eq!((msgs, err), (vec![Message::Close(None)], None));
}

#[test]
fn garbage_never_panics() {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..2000 {
        let len = (x % 64) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let _ = decode_all(&bytes);
    }
}

#[test]
fn headers_encode_every_length_form() {
    assert_eq!(text_header(5).as_bytes(), &[0x81, 5]);
    assert_eq!(binary_header(300).as_bytes(), &[0x82, 126, 1, 44]);
    assert_eq!(text_header(70_000).as_bytes(), &[0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
}

#[test]
fn control_and_close_frames_encode() {
    assert_eq!(&control_frame(ControlKind::Pong, b"x")[..], &[0x8A, 1, b'x']);
    assert_eq!(&control_frame(ControlKind::Ping, &[7u8; 200])[..2], &[0x89, 125]);
    assert_eq!(&close_frame(4008, "slow consumer")[..4], &[0x88, 15, 0x0F, 0xA8]);
    let long = "é".repeat(100);
    let f = close_frame(1000, &long);
    assert!(f.len() - 2 <= 125);
    assert!(std::str::from_utf8(&f[4..]).is_ok());
}

/// Client frames: each message text or binary, whole or in up to 3 fragments, pings
/// between fragments; with each frame's end offset in the wire and whether a message is
/// still open after it.
fn wire_of(messages: &[(bool, Vec<u8>, usize, bool)]) -> (Vec<u8>, Vec<(usize, bool)>) {
    let (mut wire, mut ends) = (Vec::new(), Vec::new());
    for (text, body, parts, ping) in messages {
        let parts = (*parts).clamp(1, body.len().max(1));
        let step = body.len().div_ceil(parts).max(1);
        let chunks: Vec<&[u8]> = if body.is_empty() { vec![&[]] } else { body.chunks(step).collect() };
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            let op = if i > 0 {
                0x0
            } else if *text {
                0x1
            } else {
                0x2
            };
            wire.extend(client_frame(op | if last { 0x80 } else { 0 }, chunk));
            ends.push((wire.len(), !last));
            if *ping && !last {
                wire.extend(client_frame(0x89, b"pp"));
                ends.push((wire.len(), true));
            }
        }
    }
    (wire, ends)
}

proptest::proptest! {
    /// A decoder dropped whenever it says it is at rest, and made again for the next
    /// bytes, decodes the same messages as one kept throughout; and it is at rest exactly
    /// at frame boundaries with no message open.
    #[test]
    fn a_decoder_at_rest_can_be_dropped_and_made_again(
        messages in proptest::collection::vec(
            (proptest::bool::ANY, proptest::collection::vec(b'a'..=b'z', 0..400), 1..4usize, proptest::bool::ANY),
            1..6,
        ),
        cuts in proptest::collection::vec(0..2000usize, 0..8),
    ) {
        let (wire, ends) = wire_of(&messages);
        let (expected, err) = decode_all(&wire);
        proptest::prop_assert_eq!(err, None);
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (wire.len() + 1)).collect();
        cuts.push(wire.len());
        cuts.sort_unstable();
        let (mut got, mut fed, mut dropped) = (Vec::new(), 0, 0);
        let mut dec = Some(Decoder::new(LIMITS));
        for cut in cuts {
            let mut buf = BytesMut::from(&wire[fed..cut]);
            fed = cut;
            if buf.is_empty() {
                continue;
            }
            let d = dec.get_or_insert_with(|| Decoder::new(LIMITS));
            while let Some(m) = d.decode(&mut buf).expect("valid") {
                got.push(m);
            }
            let rest = fed == 0 || ends.iter().any(|&(end, open)| end == fed && !open);
            proptest::prop_assert_eq!(d.at_rest(), rest, "at byte {}", fed);
            if d.at_rest() {
                dec = None;
                dropped += 1;
            }
        }
        proptest::prop_assert!(dropped >= 1, "the whole wire ends at rest");
        proptest::prop_assert_eq!(got, expected);
    }
}

#[test]
fn every_header_form_is_followed_to_its_frame_end() {
    let mut edge = FrameEdge::default();
    // A 127-form header (8-byte length), masked, and its payload, a byte at a time.
    let mut wire = vec![0x82, 0x80 | 127];
    wire.extend_from_slice(&70_000u64.to_be_bytes());
    wire.extend_from_slice(&[1, 2, 3, 4]);
    wire.extend(std::iter::repeat_n(0u8, 70_000));
    for (i, b) in wire.iter().enumerate() {
        assert!(!edge.at_rest() || i == 0, "inside the frame at {i}");
        edge.pass(std::slice::from_ref(b));
    }
    assert!(edge.at_rest());
    // A 126-form text fragment leaves its message open; a final continuation closes it.
    let mut open = vec![0x01, 0x80 | 126, 0, 200, 9, 9, 9, 9];
    open.extend([0u8; 200]);
    edge.pass(&open);
    assert!(!edge.at_rest(), "a fragmented message is open");
    edge.pass(&[0x89, 0x80, 1, 2, 3, 4]);
    assert!(!edge.at_rest(), "a ping between fragments does not close it");
    edge.pass(&[0x80, 0x80, 1, 2, 3, 4]);
    assert!(edge.at_rest());
}
