//! Fuzzes rkyv frame access, `router::decode`: any frame round-trips through `encode`, at
//! any buffer offset; arbitrary bytes and mutated encodings give an error or a frame that
//! reads back whole (and re-encodes to itself), never a panic or an out-of-bounds read.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use rkyv::rancor;
use router::{decode, encode, try_encode, Frame, FrameError, FRAME_VERSION};

use super::{any_frame, mutated_frame, variant, VARIANTS};

/// The owned frame an archive reads as.
fn read_back(buf: &[u8]) -> Result<Frame, String> {
    let archived = decode(buf).map_err(|e| e.to_string())?;
    rkyv::deserialize::<Frame, rancor::Error>(archived).map_err(|e| e.to_string())
}

/// Whatever `buf` is: no panic; a frame it decodes to reads back, and encoding that frame
/// gives bytes that read back to it again.
fn check_any(buf: &[u8]) -> Result<(), TestCaseError> {
    match decode(buf) {
        Ok(archived) => {
            let frame = rkyv::deserialize::<Frame, rancor::Error>(archived).map_err(|e| TestCaseError::fail(format!("{e}: {buf:02x?}")))?;
            prop_assert_eq!(read_back(&encode(&frame)), Ok(frame));
        }
        Err(FrameError::Empty) => prop_assert!(buf.is_empty()),
        Err(FrameError::Version { got }) => prop_assert!(buf.first() == Some(&got) && got != FRAME_VERSION),
        Err(FrameError::Invalid(_)) => prop_assert_eq!(buf.first(), Some(&FRAME_VERSION)),
    }
    Ok(())
}

/// The strategy yields every variant (so the properties below cover them all).
#[test]
fn any_frame_generates_every_variant() {
    let mut runner = TestRunner::deterministic();
    let strategy = any_frame();
    let mut seen = [false; VARIANTS];
    for _ in 0..5_000 {
        let frame = strategy.new_tree(&mut runner).expect("a frame").current();
        seen[variant(&frame)] = true;
    }
    let missing: Vec<usize> = (0..VARIANTS).filter(|&v| !seen[v]).collect();
    assert!(missing.is_empty(), "variants never generated: {missing:?}");
}

proptest! {
    #![proptest_config(crate::config())]

    /// Every frame encodes (version byte first) and reads back equal, at any offset of a
    /// buffer; `encode` and `try_encode` agree.
    #[test]
    fn frames_round_trip_at_any_offset(frame in any_frame(), offset in 0usize..16) {
        let buf = encode(&frame);
        prop_assert_eq!(buf[0], FRAME_VERSION);
        prop_assert_eq!(try_encode(&frame), Ok(buf.clone()));
        prop_assert_eq!(read_back(&buf), Ok(frame.clone()));
        let mut shifted = vec![0xA5; offset];
        shifted.extend_from_slice(&buf);
        prop_assert_eq!(read_back(&shifted[offset..]), Ok(frame));
    }

    /// Arbitrary bytes, with and without the version byte in front.
    #[test]
    fn arbitrary_bytes_are_refused_or_read_whole(bytes in vec(any::<u8>(), 0..400), versioned in any::<bool>()) {
        let mut buf = bytes;
        if versioned {
            buf.insert(0, FRAME_VERSION);
        }
        check_any(&buf)?;
    }

    /// Valid encodings with random byte edits.
    #[test]
    fn mutated_frames_are_refused_or_read_whole(buf in mutated_frame()) {
        check_any(&buf)?;
    }

    /// Every cut of a valid encoding (that is not the whole) is refused or reads whole.
    #[test]
    fn cut_frames_are_refused_or_read_whole(frame in any_frame(), cut in any::<prop::sample::Index>()) {
        let buf = encode(&frame);
        check_any(&buf[..cut.index(buf.len())])?;
    }
}
