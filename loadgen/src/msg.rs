//! Fast reads of the few fields loadgen needs from the server's JSON.
//!
//! The server's frames are flat JSON objects it renders itself; loadgen
//! reads `type`, `room`, `seq` and a few more by scanning for `"key":`
//! instead of building a DOM, so reading a delivery costs far less than the
//! server spent sending it. Anything unexpected yields `None`, never a panic;
//! the full serde parser is used where speed does not matter.

/// The value of a string field (no unescaping: loadgen's own ids never need it).
pub fn str_field<'a>(json: &'a [u8], key: &str) -> Option<&'a [u8]> {
    let at = find_key(json, key)?;
    let rest = json.get(at..)?;
    let rest = rest.strip_prefix(b"\"")?;
    let end = memchr::memchr(b'"', rest)?;
    Some(&rest[..end])
}

/// The value of an unsigned integer field.
pub fn u64_field(json: &[u8], key: &str) -> Option<u64> {
    let at = find_key(json, key)?;
    let digits = json.get(at..)?;
    let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 || n > 19 {
        return None;
    }
    std::str::from_utf8(&digits[..n]).ok()?.parse().ok()
}

/// Offset of the value of `"key":`, skipping whitespace after the colon.
fn find_key(json: &[u8], key: &str) -> Option<usize> {
    let mut pat = Vec::with_capacity(key.len() + 3);
    pat.push(b'"');
    pat.extend_from_slice(key.as_bytes());
    pat.extend_from_slice(b"\":");
    let at = memchr::memmem::find(json, &pat)? + pat.len();
    let ws = json.get(at..)?.iter().take_while(|b| b.is_ascii_whitespace()).count();
    Some(at + ws)
}

/// The send timestamp loadgen puts at the start of a message body:
/// `"body":"<ns since loadgen start>:..."`.
pub fn body_stamp_ns(json: &[u8]) -> Option<u64> {
    let body = str_field(json, "body")?;
    let n = body.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 || body.get(n) != Some(&b':') {
        return None;
    }
    std::str::from_utf8(&body[..n]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = br#"{"type":"message","room":"lg-3","seq":  42,"msg_id":"m1","from":"u1","ts":1700000000000,"body":"123456789:xxxx","kind":"text"}"#;

    #[test]
    fn reads_fields() {
        assert_eq!(str_field(MSG, "type"), Some(&b"message"[..]));
        assert_eq!(str_field(MSG, "room"), Some(&b"lg-3"[..]));
        assert_eq!(u64_field(MSG, "seq"), Some(42));
        assert_eq!(body_stamp_ns(MSG), Some(123_456_789));
    }

    #[test]
    fn missing_or_odd_fields_are_none() {
        assert_eq!(u64_field(MSG, "nope"), None);
        assert_eq!(u64_field(br#"{"seq":"7"}"#, "seq"), None);
        assert_eq!(u64_field(br#"{"seq":99999999999999999999999}"#, "seq"), None);
        assert_eq!(str_field(br#"{"room":"unterminated"#, "room"), None);
        assert_eq!(body_stamp_ns(br#"{"body":"hello"}"#), None);
        assert_eq!(u64_field(b"", "seq"), None);
    }
}
