use super::*;

fn samples() -> Vec<Frame> {
    vec![
        Frame::Handoff {
            fd: 17,
            head: b"GET /ws?room=a HTTP/1.1\r\n\r\n".to_vec(),
            peer: "127.0.0.1:5555".into(),
        },
        Frame::Subscribe {
            room: "lobby".into(),
            shard: 3,
            token: 5,
            user: Some("ann".into()),
        },
        Frame::Subscribe {
            room: "lobby".into(),
            shard: 0,
            token: 6,
            user: None,
        },
        Frame::Subscribed {
            token: u64::MAX,
            seq: 9,
            epoch: 1_700_000_000_000,
            others: 2,
            refusal: None,
        },
        Frame::Subscribed {
            token: 1,
            seq: 0,
            epoch: 0,
            others: 0,
            refusal: Some(Refusal {
                code: RefusalCode::Overloaded,
                retry_ms: Some(200),
                message: "room is loading, retry".into(),
            }),
        },
        Frame::Fetch {
            room: "a-much-longer-room-name".into(),
            shard: 0,
            token: 7,
            after: 3,
            count: 1000,
        },
        Frame::Fetched {
            token: 7,
            messages: vec![
                SeqPayload {
                    seq: 4,
                    payload: br#"{"type":"message","seq":4}"#.to_vec(),
                },
                SeqPayload {
                    seq: 5,
                    payload: Vec::new(),
                },
            ],
            refusal: None,
        },
        Frame::Fetched {
            token: 8,
            messages: Vec::new(),
            refusal: Some(Refusal {
                code: RefusalCode::Internal,
                retry_ms: None,
                message: "history store unavailable: corrupt".into(),
            }),
        },
        Frame::Unsubscribe {
            room: "lobby".into(),
            shard: 65535,
        },
        Frame::Online {
            room: "lobby".into(),
            conn: 12,
            req: Some("\"p\"".into()),
        },
        Frame::Presence {
            room: "lobby".into(),
            shard: 1,
            user: "ann".into(),
            online: true,
        },
        Frame::Send(SendMsg {
            room: "lobby".into(),
            shard: 2,
            conn: 7,
            user: "bob".into(),
            req: Some("r2".into()),
            client_id: Some("c-123".into()),
            body: "hello, world — ünïcode".into(),
            kind: "text".into(),
            file: Some(FileRef {
                url: "https://files.example/x".into(),
                name: "x.png".into(),
                size: 1234,
                mime: "image/png".into(),
            }),
            reply_to: Some(5),
        }),
        Frame::Send(SendMsg {
            room: "r".into(),
            shard: 0,
            conn: 0,
            user: "u".into(),
            req: None,
            client_id: None,
            body: String::new(),
            kind: "text".into(),
            file: None,
            reply_to: None,
        }),
        Frame::Reply {
            conn: 99,
            payload: vec![b'x'; 5000],
        },
        Frame::Deliver {
            room: "lobby".into(),
            seq: 10,
            payload: br#"{"type":"message"}"#.to_vec(),
            at_us: 123_456,
        },
        Frame::Deliver {
            room: String::new(),
            seq: 0,
            payload: Vec::new(),
            at_us: 0,
        },
        Frame::Shutdown { retry_ms_max: 30_000 },
        Frame::Disconnect {
            user: "frank".into(),
            reason: "moved".into(),
            retry_ms: Some(500),
            conn: 1 << 48,
        },
        Frame::History {
            room: "lobby".into(),
            user: "ann".into(),
            conn: 5,
            req: Some("\"h1\"".into()),
            before: Some(40),
            limit: 50,
            thread: Some(3),
        },
        Frame::Reset {
            room: "lobby".into(),
            seq: 3,
            payload: br#"{"type":"epoch"}"#.to_vec(),
        },
        Frame::Typing {
            room: "lobby".into(),
            user: "ann".into(),
            typing: true,
        },
        Frame::Read {
            room: "lobby".into(),
            user: "ann".into(),
            seq: 42,
            conn: 9,
            req: Some("\"r\"".into()),
        },
        Frame::Event {
            room: "lobby".into(),
            from: "ann".into(),
            payload: br#"{"type":"typing"}"#.to_vec(),
        },
        Frame::UserDeliver {
            user: Some("bob".into()),
            room: "dm:ann:bob".into(),
            seq: 4,
            payload: br#"{"type":"message"}"#.to_vec(),
        },
        Frame::EventTo {
            room: "lobby".into(),
            users: vec!["ann".into()],
            payload: br#"{"type":"receipt"}"#.to_vec(),
        },
        Frame::Seen {
            user: "ann".into(),
            shard: 1,
            online: false,
        },
        Frame::LastSeen {
            user: "ann".into(),
            conn: 4,
            req: Some("\"ls\"".into()),
        },
        Frame::Delivered {
            room: "lobby".into(),
            seq: 12,
            users: vec!["ann".into(), "bob".into()],
        },
        Frame::Change(ChangeMsg {
            room: "lobby".into(),
            seq: 7,
            user: "ann".into(),
            moderator: true,
            conn: 3,
            req: Some("1".into()),
            op: ChangeOp::Edit { body: "fixed ✓".into() },
        }),
        Frame::Change(ChangeMsg {
            room: "lobby".into(),
            seq: 7,
            user: "ann".into(),
            moderator: false,
            conn: 3,
            req: None,
            op: ChangeOp::React {
                emoji: "👍".into(),
                add: false,
            },
        }),
        Frame::Change(ChangeMsg {
            room: "r".into(),
            seq: 1,
            user: "u".into(),
            moderator: false,
            conn: 0,
            req: None,
            op: ChangeOp::Delete,
        }),
        Frame::Changed {
            room: "lobby".into(),
            seq: 7,
            message: Some(br#"{"type":"message"}"#.to_vec()),
            event: br#"{"type":"update"}"#.to_vec(),
        },
        Frame::Changed {
            room: "lobby".into(),
            seq: 7,
            message: None,
            event: br#"{"type":"reaction"}"#.to_vec(),
        },
        Frame::ToSenders {
            room: "lobby".into(),
            payload: br#"{"type":"receipt"}"#.to_vec(),
        },
        Frame::Gap {
            room: "lobby".into(),
            from: 4,
            to: 6,
            payload: br#"{"type":"gap"}"#.to_vec(),
        },
    ]
}

fn round_trip(buf: &[u8]) -> Frame {
    let archived = decode(buf).unwrap();
    rkyv::deserialize::<Frame, rancor::Error>(archived).unwrap()
}

#[test]
fn every_variant_round_trips() {
    for frame in samples() {
        let buf = encode(&frame);
        assert_eq!(buf[0], FRAME_VERSION);
        assert_eq!(round_trip(&buf), frame);
        assert_eq!(try_encode(&frame).unwrap(), buf);
    }
}

#[test]
fn encoding_matches_a_plain_rkyv_archive() {
    for frame in samples() {
        let plain = rkyv::to_bytes::<rancor::Error>(&frame).unwrap();
        assert_eq!(&encode(&frame)[1..], &plain[..]);
    }
}

#[test]
fn archived_fields_read_in_place() {
    let buf = encode(&Frame::Fetch {
        room: "lobby".into(),
        shard: 3,
        token: 42,
        after: 9,
        count: 100,
    });
    let ArchivedFrame::Fetch {
        room,
        shard,
        token,
        after,
        count,
    } = decode(&buf).unwrap()
    else {
        panic!("wrong variant");
    };
    assert_eq!(room.as_str(), "lobby");
    assert_eq!(shard.to_native(), 3);
    assert_eq!(token.to_native(), 42);
    assert_eq!(after.to_native(), 9);
    assert_eq!(count.to_native(), 100);
}

#[test]
fn decodes_at_odd_offsets() {
    for frame in samples() {
        let enc = encode(&frame);
        for offset in [1, 3, 7] {
            let mut big = vec![0xAA; offset];
            big.extend_from_slice(&enc);
            big.extend_from_slice(&[0x55; 5]);
            let buf = &big[offset..offset + enc.len()];
            assert_eq!(round_trip(buf), frame, "offset {offset}");
        }
    }
}

#[test]
fn payload_bytes_is_a_view_into_the_frame() {
    let payload = br#"{"type":"message","body":"hi"}"#.to_vec();
    let buf = encode(&Frame::Deliver {
        room: "lobby".into(),
        seq: 1,
        payload: payload.clone(),
        at_us: 7,
    });
    let ArchivedFrame::Deliver { payload: archived, .. } = decode(&buf).unwrap() else {
        panic!("wrong variant");
    };
    let view = payload_bytes(&buf, archived.as_slice());
    assert_eq!(&view[..], &payload[..]);
    let range = buf.as_ptr_range();
    assert!(range.start <= view.as_ptr() && view.as_ptr_range().end <= range.end);
}

#[test]
fn payload_bytes_copies_foreign_slices() {
    let buf = encode(&Frame::Shutdown { retry_ms_max: 1 });
    let other = b"elsewhere".to_vec();
    let view = payload_bytes(&buf, &other);
    assert_eq!(&view[..], b"elsewhere");
    assert!(payload_bytes(&buf, &[]).is_empty());
}

#[test]
fn rejects_empty_and_bad_version() {
    assert_eq!(decode(&[]).unwrap_err(), FrameError::Empty);
    let mut buf = encode(&Frame::Shutdown { retry_ms_max: 5 }).to_vec();
    buf[0] = 3; // version 3 carried a send's fields in the variant itself
    assert_eq!(decode(&buf).unwrap_err(), FrameError::Version { got: 3 });
    assert!(matches!(decode(&[FRAME_VERSION]), Err(FrameError::Invalid(_))));
}

/// Decoding must not panic; when it succeeds, reading the frame must not either.
fn decode_does_not_panic(buf: &[u8]) {
    if let Ok(archived) = decode(buf) {
        let _ = rkyv::deserialize::<Frame, rancor::Error>(archived);
    }
}

#[test]
fn truncated_frames_are_rejected_or_harmless() {
    for frame in samples() {
        let enc = encode(&frame);
        for len in 0..enc.len() {
            decode_does_not_panic(&enc[..len]);
        }
        // Most truncations must be caught outright.
        let ok = (1..enc.len()).filter(|&len| decode(&enc[..len]).is_ok()).count();
        assert!(ok * 2 < enc.len(), "{ok} of {} truncations of {frame:?} decoded", enc.len());
    }
}

#[test]
fn corrupted_and_random_bytes_never_panic() {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for frame in samples() {
        let enc = encode(&frame).to_vec();
        for i in 1..enc.len() {
            let mut bad = enc.clone();
            bad[i] ^= (next() as u8) | 1;
            decode_does_not_panic(&bad);
        }
    }
    for _ in 0..20_000 {
        let len = (next() % 300) as usize;
        let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if let Some(b) = buf.first_mut() {
            *b = FRAME_VERSION;
        }
        decode_does_not_panic(&buf);
    }
}
