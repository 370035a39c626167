//! Fuzzes what the Redis bridge decodes, `router::bridge::decode_incoming`, and the seq
//! patching of published frames: any frame decodes to its own fields when it is a `Deliver`,
//! `Event` or `Disconnect` and is refused otherwise (bytes from Redis never become a
//! `Handoff`); presence notes and prepared messages round-trip, seq written in both places;
//! arbitrary, mutated and misplaced bytes are refused or read in place within the buffer,
//! never a panic.

use proptest::collection::vec;
use proptest::prelude::*;
use router::bridge::{
    decode_incoming, patch_seq, Incoming, PreparedMessage, PresenceNote, PRESENCE_VERSION, SEQ_PLACEHOLDER, SEQ_SLOT_WIDTH,
};
use router::{decode, encode, ArchivedFrame, Frame, FRAME_VERSION};

use super::{any_frame, mutated_frame, text};

/// Whether `inner` lies within `outer` (an empty slice anywhere counts: it reads nothing).
fn within(outer: &[u8], inner: &[u8]) -> bool {
    let (o, i) = (outer.as_ptr_range(), inner.as_ptr_range());
    inner.is_empty() || (o.start <= i.start && i.end <= o.end)
}

/// Whatever `buf` is: no panic; what is accepted is read in place, within `buf`, and is
/// one of the kinds Redis may carry, under the version byte of its kind.
fn check_any(buf: &[u8]) -> Result<(), TestCaseError> {
    let Ok(incoming) = decode_incoming(buf) else { return Ok(()) };
    let slices: Vec<&[u8]> = match incoming {
        Incoming::Message { room, payload, .. } => vec![room.as_bytes(), payload],
        Incoming::Event { room, from, payload } => vec![room.as_bytes(), from.as_bytes(), payload],
        Incoming::Changed { room, event, .. } => vec![room.as_bytes(), event],
        Incoming::Disconnect { user } => vec![user.as_bytes()],
        Incoming::Presence { room, user, node, .. } => vec![room.as_bytes(), user.as_bytes(), node.as_bytes()],
    };
    prop_assert!(slices.iter().all(|s| within(buf, s)), "read outside the buffer");
    if matches!(incoming, Incoming::Presence { .. }) {
        prop_assert_eq!(buf.first(), Some(&PRESENCE_VERSION));
    } else {
        let kind_ok = matches!(
            decode(buf),
            Ok(ArchivedFrame::Deliver { .. }
                | ArchivedFrame::Event { .. }
                | ArchivedFrame::ToSenders { .. }
                | ArchivedFrame::Changed { .. }
                | ArchivedFrame::Disconnect { .. })
        );
        prop_assert!(kind_ok, "accepted a frame Redis must not carry");
    }
    Ok(())
}

/// Client JSON with the seq placeholder somewhere in it.
fn json_with_slot() -> impl Strategy<Value = Vec<u8>> {
    ("(?s).{0,40}", "(?s).{0,40}").prop_map(|(before, after)| {
        format!(
            "{{\"type\":\"message\",{},{SEQ_PLACEHOLDER},\"body\":{}}}",
            serde_like(&before),
            serde_like(&after)
        )
        .into_bytes()
    })
}

/// A JSON string literal of `s` (quotes and backslashes escaped: no placeholder inside).
fn serde_like(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

proptest! {
    #![proptest_config(crate::config())]

    /// Any frame: a `Deliver`, `Event` or `Disconnect` decodes to its fields, read in place;
    /// every other variant is refused.
    #[test]
    fn only_the_frames_redis_carries_are_accepted(frame in any_frame()) {
        let buf = encode(&frame);
        let got = decode_incoming(&buf);
        match &frame {
            Frame::Deliver { room, seq, payload, .. } => {
                prop_assert_eq!(got, Ok(Incoming::Message { room, seq: *seq, payload }));
            }
            Frame::Event { room, from, payload } => prop_assert_eq!(got, Ok(Incoming::Event { room, from, payload })),
            Frame::ToSenders { room, payload } => prop_assert_eq!(got, Ok(Incoming::Event { room, from: "", payload })),
            Frame::Changed { room, seq, event, .. } => prop_assert_eq!(got, Ok(Incoming::Changed { room, seq: *seq, event })),
            Frame::Disconnect { user, .. } => prop_assert_eq!(got, Ok(Incoming::Disconnect { user })),
            other => prop_assert!(got.is_err(), "{:?} accepted", other),
        }
        check_any(&buf)?;
    }

    /// A presence note decodes to its fields, at any offset of a buffer.
    #[test]
    fn presence_notes_round_trip(room in text(), user in text(), node in text(), online in any::<bool>(), offset in 0usize..8) {
        let note = PresenceNote { room: room.clone(), user: user.clone(), node: node.clone(), online };
        let mut buf = vec![0x5A; offset];
        buf.extend_from_slice(&note.encode());
        let want = Incoming::Presence { room: &room, user: &user, node: &node, online };
        prop_assert_eq!(decode_incoming(&buf[offset..]), Ok(want));
    }

    /// A prepared message patched with any seq decodes with that seq in the archive and,
    /// right-aligned, in the JSON slot; nothing else changes, nor the length.
    #[test]
    fn patched_messages_carry_their_seq(room in text(), json in json_with_slot(), seq in prop_oneof![0..(1u64 << 53), Just(u64::MAX)]) {
        let m = PreparedMessage::new(&room, json.clone()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let buf = m.patched(seq);
        prop_assert_eq!(buf.len(), m.frame().len());
        let at = json.windows(SEQ_PLACEHOLDER.len()).position(|w| w == SEQ_PLACEHOLDER.as_bytes()).unwrap_or_default();
        let mut want = json;
        let slot = at + SEQ_PLACEHOLDER.len() - SEQ_SLOT_WIDTH;
        want[slot..slot + SEQ_SLOT_WIDTH].copy_from_slice(format!("{seq:>20}").as_bytes());
        prop_assert_eq!(decode_incoming(&buf), Ok(Incoming::Message { room: &room, seq, payload: &want }));
        check_any(&buf)?;
    }

    /// A slot at any offset of any payload: refused unless it is 20 spaces inside it, and
    /// then patched and decoded with the seq.
    #[test]
    fn slots_anywhere_are_checked(payload in vec(prop_oneof![Just(b' '), any::<u8>()], 0..64), slot in prop_oneof![0usize..70, Just(usize::MAX - 5)], seq in any::<u64>()) {
        let fits = slot.checked_add(SEQ_SLOT_WIDTH).and_then(|end| payload.get(slot..end)).is_some_and(|s| s.iter().all(|&b| b == b' '));
        match PreparedMessage::with_slot("r", payload.clone(), slot) {
            Ok(m) => {
                prop_assert!(fits);
                let buf = m.patched(seq);
                let Ok(Incoming::Message { seq: got, payload: p, .. }) = decode_incoming(&buf) else {
                    return Err(TestCaseError::fail("a patched message did not decode"));
                };
                prop_assert_eq!(got, seq);
                prop_assert_eq!(&p[slot..slot + SEQ_SLOT_WIDTH], format!("{seq:>20}").into_bytes());
            }
            Err(_) => prop_assert!(!fits),
        }
    }

    /// `patch_seq` at any offsets never panics and writes nothing outside its two fields.
    #[test]
    fn patch_seq_stays_in_bounds(len in 0usize..80, seq_at in prop_oneof![0usize..90, Just(usize::MAX - 3)], slot_at in prop_oneof![0usize..90, Just(usize::MAX)], seq in any::<u64>()) {
        let mut buf = vec![0xEE; len];
        patch_seq(&mut buf, seq_at, slot_at, seq);
        let seq_field = seq_at.checked_add(8).filter(|&end| end <= len).map(|end| seq_at..end);
        let slot_field = slot_at.checked_add(SEQ_SLOT_WIDTH).filter(|&end| end <= len).map(|end| slot_at..end);
        for (i, b) in buf.iter().enumerate() {
            let inside = seq_field.as_ref().is_some_and(|r| r.contains(&i)) || slot_field.as_ref().is_some_and(|r| r.contains(&i));
            prop_assert!(inside || *b == 0xEE, "byte {} written", i);
        }
        let apart = match (&seq_field, &slot_field) {
            (Some(a), Some(b)) => a.end <= b.start || b.end <= a.start,
            _ => true,
        };
        if let (Some(r), true) = (seq_field, apart) {
            prop_assert_eq!(&buf[r], &seq.to_le_bytes()[..]);
        }
        if let (Some(r), true) = (slot_field, apart) {
            prop_assert_eq!(&buf[r], format!("{seq:>20}").into_bytes());
        }
    }

    /// Arbitrary bytes, under either version byte or none.
    #[test]
    fn arbitrary_bytes_are_refused_or_read_in_place(bytes in vec(any::<u8>(), 0..300), version in prop::option::of(prop::sample::select(vec![FRAME_VERSION, PRESENCE_VERSION]))) {
        let mut buf = bytes;
        if let Some(v) = version {
            buf.insert(0, v);
        }
        check_any(&buf)?;
    }

    /// Valid frames and presence notes with random byte edits.
    #[test]
    fn mutated_messages_are_refused_or_read_in_place(
        frame in mutated_frame(),
        note in (text(), text(), any::<bool>()).prop_map(|(room, user, online)| PresenceNote { room, user, node: "n1".into(), online }.encode()),
        edits in vec((any::<prop::sample::Index>(), any::<u8>(), any::<u8>()), 1..5),
    ) {
        check_any(&frame)?;
        check_any(&super::mutate(&note, &edits))?;
    }
}
