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
