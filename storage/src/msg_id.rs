//! [`SmallStr`]: a short string kept inline, and [`MsgId`], the message id that is one.
//!
//! Every sent message gets an id (`<room hash>-<epoch>-<seq>` on one node,
//! `<node>-<shard>-<n>` in a cluster), which travels with its ack, its
//! dedupe entry and its stored row. Ids that fit in [`SmallStr::INLINE`] bytes
//! (all of one node's, and a cluster's unless its node ids are very long)
//! live inside the value, so making, cloning and storing one allocates
//! nothing; a longer id is kept on the heap, so any string is still a valid
//! id. A request's id (at most 66 bytes of JSON text) is kept the same way
//! while its answer waits.

use std::fmt;
use std::ops::Deref;

/// A string, inline up to [`SmallStr::INLINE`] bytes, on the heap past that.
#[derive(Clone)]
pub struct SmallStr(Repr);

/// A message id.
pub type MsgId = SmallStr;

#[derive(Clone)]
enum Repr {
    Inline { len: u8, buf: [u8; SmallStr::INLINE] },
    Heap(Box<str>),
}

impl SmallStr {
    /// The longest string kept inline, in bytes.
    pub const INLINE: usize = 62;

    /// Formats a string (as `format!` would) into the value, on the heap only when it is longer
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

    /// The string slice.
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
    buf: [u8; SmallStr::INLINE],
    spill: Option<String>,
}

impl fmt::Write for Writer {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if let Some(spill) = &mut self.spill {
            spill.push_str(s);
        } else if self.len + s.len() <= SmallStr::INLINE {
            self.buf[self.len..self.len + s.len()].copy_from_slice(s.as_bytes());
            self.len += s.len();
        } else {
            let mut spill = String::with_capacity(self.len + s.len() + 16);
            // SAFETY: as in `SmallStr::as_str`: whole `&str`s only.
            spill.push_str(unsafe { std::str::from_utf8_unchecked(&self.buf[..self.len]) });
            spill.push_str(s);
            self.spill = Some(spill);
        }
        Ok(())
    }
}

impl Deref for SmallStr {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for SmallStr {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for SmallStr {
    fn from(s: &str) -> Self {
        Self::format(format_args!("{s}"))
    }
}

impl From<String> for SmallStr {
    fn from(s: String) -> Self {
        if s.len() <= Self::INLINE {
            Self::from(s.as_str())
        } else {
            Self(Repr::Heap(s.into_boxed_str()))
        }
    }
}

impl PartialEq for SmallStr {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for SmallStr {}

impl PartialEq<str> for SmallStr {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for SmallStr {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Debug for SmallStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for SmallStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids_stay_inline_and_long_ones_go_to_the_heap_unchanged() {
        let id = SmallStr::format(format_args!("{:016x}-{:x}-{}", u64::MAX, 1_764_600_000_000u64, u64::MAX));
        assert!(id.len() <= SmallStr::INLINE && matches!(id.0, Repr::Inline { .. }), "{id}");
        assert_eq!(id, "ffffffffffffffff-19ada5b2e00-18446744073709551615");
        let long = "n".repeat(SmallStr::INLINE - 3) + "-ab-1234";
        let spilled = SmallStr::format(format_args!("{}-{}", &long[..SmallStr::INLINE - 3], "ab-1234"));
        assert!(matches!(spilled.0, Repr::Heap(_)));
        assert_eq!(spilled, long.as_str());
        assert_eq!(SmallStr::from(long.clone()), SmallStr::from(long.as_str()));
        assert_eq!(SmallStr::from("é-ü-1").as_str(), "é-ü-1");
        let exact = "x".repeat(SmallStr::INLINE);
        assert!(matches!(SmallStr::from(exact.as_str()).0, Repr::Inline { .. }));
        assert_eq!(format!("{:?}", SmallStr::from("a\"b")), "\"a\\\"b\"");
    }
}
