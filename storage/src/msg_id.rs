//! [`MsgId`]: a message id, kept inline.
//!
//! Every sent message gets an id (`<room hash>-<epoch>-<seq>` on one node,
//! `<node>-<shard>-<n>` in a cluster), which travels with its ack, its
//! dedupe entry and its stored row. Ids that fit in [`MsgId::INLINE`] bytes
//! (all of one node's, and a cluster's unless its node ids are very long)
//! live inside the value, so making, cloning and storing one allocates
//! nothing; a longer id is kept on the heap, so any string is still a valid
//! id.

use std::fmt;
use std::ops::Deref;

/// A message id: a string, inline up to [`MsgId::INLINE`] bytes.
#[derive(Clone)]
pub struct MsgId(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, buf: [u8; MsgId::INLINE] },
    Heap(Box<str>),
}

impl MsgId {
    /// The longest id kept inline, in bytes.
    pub const INLINE: usize = 62;

    /// Formats an id (as `format!` would) into the value, on the heap only when it is longer
    /// than [`Self::INLINE`].
    pub fn format(args: fmt::Arguments<'_>) -> Self {
        let mut w = Writer {
            len: 0,
            buf: [0; Self::INLINE],
            spill: None,
        };
        // Writing to the writer cannot fail (an overflow moves to the heap).
        let _ = fmt::Write::write_fmt(&mut w, args);
        match w.spill {
            Some(s) => Self(Repr::Heap(s.into_boxed_str())),
            None => Self(Repr::Inline {
                len: w.len as u8,
                buf: w.buf,
            }),
        }
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // SAFETY: `buf[..len]` was written only from `&str`s, whole, by `Writer`, and
            // `len` counts exactly those bytes, so it is valid UTF-8.
            Repr::Inline { len, buf } => unsafe { std::str::from_utf8_unchecked(&buf[..usize::from(*len)]) },
            Repr::Heap(s) => s,
        }
    }
}

struct Writer {
    len: usize,
    buf: [u8; MsgId::INLINE],
    spill: Option<String>,
}

impl fmt::Write for Writer {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if let Some(spill) = &mut self.spill {
            spill.push_str(s);
        } else if self.len + s.len() <= MsgId::INLINE {
            self.buf[self.len..self.len + s.len()].copy_from_slice(s.as_bytes());
            self.len += s.len();
        } else {
            let mut spill = String::with_capacity(self.len + s.len() + 16);
            // SAFETY: as in `MsgId::as_str`: whole `&str`s only.
            spill.push_str(unsafe { std::str::from_utf8_unchecked(&self.buf[..self.len]) });
            spill.push_str(s);
            self.spill = Some(spill);
        }
        Ok(())
    }
}

impl Deref for MsgId {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for MsgId {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for MsgId {
    fn from(s: &str) -> Self {
        Self::format(format_args!("{s}"))
    }
}

impl From<String> for MsgId {
    fn from(s: String) -> Self {
        if s.len() <= Self::INLINE {
            Self::from(s.as_str())
        } else {
            Self(Repr::Heap(s.into_boxed_str()))
        }
    }
}

impl PartialEq for MsgId {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for MsgId {}

impl PartialEq<str> for MsgId {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for MsgId {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Debug for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids_stay_inline_and_long_ones_go_to_the_heap_unchanged() {
        let id = MsgId::format(format_args!("{:016x}-{:x}-{}", u64::MAX, 1_764_600_000_000u64, u64::MAX));
        assert!(id.len() <= MsgId::INLINE && matches!(id.0, Repr::Inline { .. }), "{id}");
        assert_eq!(id, "ffffffffffffffff-19ada5b2e00-18446744073709551615");
        let long = "n".repeat(MsgId::INLINE - 3) + "-ab-1234";
        let spilled = MsgId::format(format_args!("{}-{}", &long[..MsgId::INLINE - 3], "ab-1234"));
        assert!(matches!(spilled.0, Repr::Heap(_)));
        assert_eq!(spilled, long.as_str());
        assert_eq!(MsgId::from(long.clone()), MsgId::from(long.as_str()));
        assert_eq!(MsgId::from("é-ü-1").as_str(), "é-ü-1");
        let exact = "x".repeat(MsgId::INLINE);
        assert!(matches!(MsgId::from(exact.as_str()).0, Repr::Inline { .. }));
        assert_eq!(format!("{:?}", MsgId::from("a\"b")), "\"a\\\"b\"");
    }
}
