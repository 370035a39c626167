//! Fuzzes the HTTP/1.1 request head parser, `edge::ws::handshake::parse_request`, and the
//! upgrade check on what it returns: arbitrary bytes never panic and respect the head
//! limit; a head built by a strategy parses to what was built (percent-encoded query,
//! header names in any case, padded values, trailing bytes kept out of the head);
//! every strict prefix of a head waits for more (or is too large); `validate_upgrade`
//! accepts exactly the well-formed upgrades.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use edge::ws::handshake::{parse_request, validate_upgrade, HandshakeError, Request};
use proptest::collection::vec;
use proptest::prelude::*;

/// A request head as a strategy builds it, with what the parser should read from it.
#[derive(Debug, Clone)]
struct Head {
    method: String,
    path: String,
    /// Decoded parameters, and how each is written (see [`encode_component`]).
    query: Vec<(String, String, bool)>,
    http10: bool,
    upgrade: Option<Vec<&'static str>>,
    connection: Option<Vec<&'static str>>,
    key: Option<String>,
    version: Option<String>,
    /// (lower-case name, value) of the single-valued headers that are copied as they are.
    copied: Vec<(&'static str, String)>,
    transfer_encoding: Option<String>,
    content_length: Vec<String>,
    extra: Vec<(String, String)>,
    /// Bit i (mod 64) sets the case of the i-th character of every header name.
    case_bits: u64,
    /// Optional whitespace written around every header value.
    pad: (&'static str, &'static str),
}

/// Percent-encodes `s` for a query: `+` for a space, `%XX` for everything else that the
/// query syntax or the request line reserves, and, with `all`, for every other byte too
/// (hex digits in either case); other characters, non-ASCII included, stay raw.
fn encode_component(s: &str, all: bool) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let reserved = matches!(c, '%' | '+' | '&' | '=' | '#' | '?') || c <= ' ' || c == '\u{7f}';
        if c == ' ' && !all {
            out.push('+');
        } else if reserved || all {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&if all { format!("%{b:02x}") } else { format!("%{b:02X}") });
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn flip_case(name: &str, bits: u64) -> String {
    name.chars()
        .enumerate()
        .map(|(i, c)| {
            if (bits >> (i % 64)) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

impl Head {
    fn headers(&self) -> Vec<(String, String)> {
        let mut h: Vec<(String, String)> = vec![("host".into(), "chat.example".into())];
        if let Some(t) = &self.upgrade {
            h.push(("upgrade".into(), t.join(", ")));
        }
        if let Some(t) = &self.connection {
            h.push(("connection".into(), t.join(",")));
        }
        if let Some(k) = &self.key {
            h.push(("sec-websocket-key".into(), k.clone()));
        }
        if let Some(v) = &self.version {
            h.push(("sec-websocket-version".into(), v.clone()));
        }
        h.extend(self.copied.iter().map(|(n, v)| ((*n).to_owned(), v.clone())));
        if let Some(te) = &self.transfer_encoding {
            h.push(("transfer-encoding".into(), te.clone()));
        }
        h.extend(self.content_length.iter().map(|v| ("content-length".to_owned(), v.clone())));
        h.extend(self.extra.iter().cloned());
        h
    }

    fn render(&self) -> Vec<u8> {
        let mut target = self.path.clone();
        if !self.query.is_empty() {
            let pairs: Vec<String> = self
                .query
                .iter()
                .map(|(k, v, all)| format!("{}={}", encode_component(k, *all), encode_component(v, *all)))
                .collect();
            target = format!("{target}?{}", pairs.join("&"));
        }
        let mut out = format!("{} {target} HTTP/1.{}\r\n", self.method, if self.http10 { 0 } else { 1 });
        for (name, value) in self.headers() {
            out.push_str(&format!(
                "{}:{}{value}{}\r\n",
                flip_case(&name, self.case_bits),
                self.pad.0,
                self.pad.1
            ));
        }
        out.push_str("\r\n");
        out.into_bytes()
    }

    /// Checks every field the parser read against what was built.
    fn check(&self, req: &Request, head_len: usize) -> Result<(), TestCaseError> {
        let has = |tokens: &Option<Vec<&str>>, want: &str| tokens.iter().flatten().any(|t| t.eq_ignore_ascii_case(want));
        let copied = |name: &str| self.copied.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone());
        prop_assert_eq!(req.head_len, head_len);
        prop_assert_eq!(&req.method, &self.method);
        prop_assert_eq!(&req.path, &self.path);
        let query: Vec<(String, String)> = self.query.iter().map(|(k, v, _)| (k.clone(), v.clone())).collect();
        prop_assert_eq!(&req.query, &query);
        prop_assert_eq!(&req.ws_key, &self.key);
        prop_assert_eq!(req.version_ok, self.version.as_deref() == Some("13"));
        prop_assert_eq!(req.upgrade, has(&self.upgrade, "websocket") && has(&self.connection, "upgrade"));
        prop_assert_eq!(&req.origin, &copied("origin"));
        prop_assert_eq!(&req.forwarded_for, &copied("x-forwarded-for"));
        prop_assert_eq!(&req.api.authorization, &copied("authorization"));
        prop_assert_eq!(&req.api.api_key, &copied("x-api-key"));
        prop_assert_eq!(&req.api.idempotency_key, &copied("idempotency-key"));
        prop_assert_eq!(req.api.transfer_encoding, self.transfer_encoding.is_some());
        let close = has(&self.connection, "close") || (self.http10 && !has(&self.connection, "keep-alive"));
        prop_assert_eq!(req.api.close, close);
        // Content-Length: one number when every header says the same number, else refused.
        let lengths: Vec<Result<u64, ()>> = self
            .content_length
            .iter()
            .map(|v| {
                if v.bytes().all(|b| b.is_ascii_digit()) {
                    v.parse().map_err(|_| ())
                } else {
                    Err(())
                }
            })
            .collect();
        let want = lengths
            .first()
            .map(|first| if lengths.iter().all(|l| l == first) { *first } else { Err(()) });
        prop_assert_eq!(req.api.content_length, want);
        // The upgrade check, in its order: method, upgrade headers, key.
        let key_ok = self
            .key
            .as_deref()
            .is_some_and(|k| STANDARD.decode(k).is_ok_and(|raw| raw.len() == 16));
        let want = if self.method != "GET" {
            Err(HandshakeError::Method)
        } else if !req.upgrade || !req.version_ok {
            Err(HandshakeError::UpgradeRequired)
        } else if !key_ok {
            Err(HandshakeError::BadKey)
        } else {
            Ok(self.key.as_deref().unwrap_or_default())
        };
        prop_assert_eq!(validate_upgrade(req), want);
        Ok(())
    }
}

/// A header value with no surrounding whitespace (the parser trims it).
fn value() -> impl Strategy<Value = String> {
    "[!-~]([ -~\t]{0,24}[!-~])?"
}

fn tokens(from: &'static [&'static str]) -> impl Strategy<Value = Option<Vec<&'static str>>> {
    proptest::option::of(vec(proptest::sample::select(from), 0..4))
}

fn head() -> impl Strategy<Value = Head> {
    let key = prop_oneof![any::<[u8; 16]>().prop_map(|k| STANDARD.encode(k)), "[A-Za-z0-9+/=]{0,30}", value(),];
    let copied = (
        proptest::option::of(value()),
        proptest::option::of(value()),
        proptest::option::of(value()),
        proptest::option::of(value()),
        proptest::option::of(value()),
    )
        .prop_map(|(o, x, a, k, i)| {
            let names = ["origin", "x-forwarded-for", "authorization", "x-api-key", "idempotency-key"];
            names
                .into_iter()
                .zip([o, x, a, k, i])
                .filter_map(|(n, v)| v.map(|v| (n, v)))
                .collect::<Vec<_>>()
        });
    let content_length = vec(prop_oneof![any::<u64>().prop_map(|n| n.to_string()), "[0-9]{19,22}", value()], 0..3);
    // Names no header the parser reads can take.
    let extra = vec(("x-z[a-z0-9-]{0,12}", value()), 0..6);
    let pads = proptest::sample::select(vec![("", ""), (" ", ""), (" ", " "), ("\t", "\t "), ("  ", "")]);
    (
        (
            prop_oneof![4 => Just("GET".to_owned()), 1 => "[A-Z]{1,7}"],
            "/[A-Za-z0-9._~/-]{0,24}",
        ),
        (vec((".{0,10}", ".{0,10}", any::<bool>()), 0..5), any::<bool>()),
        tokens(&["websocket", "WebSocket", "h2c", "foo/2"]),
        tokens(&["Upgrade", "upgrade", "keep-alive", "Keep-Alive", "close", "CLOSE", "x"]),
        (
            proptest::option::of(key),
            proptest::option::of(prop_oneof![Just("13".to_owned()), "[0-9]{1,3}"]),
        ),
        copied,
        (proptest::option::of(value()), content_length, extra),
        (any::<u64>(), pads),
    )
        .prop_map(
            |(
                (method, path),
                (query, http10),
                upgrade,
                connection,
                (key, version),
                copied,
                (te, content_length, extra),
                (case_bits, pad),
            )| Head {
                method,
                path,
                query,
                http10,
                upgrade,
                connection,
                key,
                version,
                copied,
                transfer_encoding: te,
                content_length,
                extra,
                case_bits,
                pad,
            },
        )
}

/// Bytes that look like the start of a request head, then anything.
fn head_like_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..300),
        (vec("[ -~\t]{0,40}", 0..12), any::<bool>()).prop_map(|(lines, end)| {
            let mut s = lines.join("\r\n");
            if end {
                s.push_str("\r\n\r\n");
            }
            s.into_bytes()
        }),
        (head(), vec(any::<u8>(), 0..64), any::<prop::sample::Index>()).prop_map(|(h, noise, at)| {
            // A valid head with random bytes spliced in somewhere.
            let mut wire = h.render();
            let at = at.index(wire.len() + 1);
            wire.splice(at..at, noise);
            wire
        }),
    ]
}

proptest! {
    #![proptest_config(crate::config())]

    /// Anything: no panic; a parsed head is within `max` and the buffer, ends its last line,
    /// and parses the same from its own bytes; "need more" only under the limit.
    #[test]
    fn arbitrary_bytes_respect_the_limit(buf in head_like_bytes(), max in 0usize..400) {
        match parse_request(&buf, max) {
            Ok(Some(req)) => {
                prop_assert!(req.head_len <= max && req.head_len <= buf.len(), "head_len {} of {}", req.head_len, buf.len());
                prop_assert_eq!(buf[..req.head_len].last(), Some(&b'\n'));
                prop_assert_eq!(parse_request(&buf[..req.head_len], max), Ok(Some(req)));
            }
            Ok(None) => prop_assert!(buf.len() <= max),
            Err(e) => prop_assert!([400, 405, 426, 431].contains(&e.status())),
        }
    }

    /// A built head, followed by any bytes, parses to what was built; `head_len` stops at
    /// its blank line.
    #[test]
    fn a_built_head_parses_to_what_was_built(h in head(), trailing in vec(any::<u8>(), 0..64)) {
        let head = h.render();
        let mut wire = head.clone();
        wire.extend_from_slice(&trailing);
        match parse_request(&wire, 8192) {
            Ok(Some(req)) => h.check(&req, head.len())?,
            other => prop_assert!(false, "{:?} for {:?}", other, String::from_utf8_lossy(&head)),
        }
    }

    /// Every strict prefix of a head waits for more bytes while within `max`, and is too
    /// large beyond it; the whole head over `max` is too large.
    #[test]
    fn prefixes_wait_and_the_limit_holds(h in head(), cuts in vec(any::<prop::sample::Index>(), 1..8), max in 0usize..600) {
        let head = h.render();
        for end in cuts.iter().map(|c| c.index(head.len())) {
            let want = if end > max { Err(HandshakeError::TooLarge) } else { Ok(None) };
            prop_assert_eq!(parse_request(&head[..end], max), want, "prefix of {} bytes", end);
        }
        let whole = parse_request(&head, max);
        if head.len() > max {
            prop_assert_eq!(whole, Err(HandshakeError::TooLarge));
        } else {
            prop_assert_eq!(whole.map(|r| r.map(|r| r.head_len)), Ok(Some(head.len())));
        }
    }

    /// More headers than the parser holds is "too large", never a partial parse.
    #[test]
    fn too_many_headers_are_too_large(n in 33usize..64) {
        let mut s = String::from("GET /ws HTTP/1.1\r\n");
        for i in 0..n {
            s.push_str(&format!("X-{i}: y\r\n"));
        }
        s.push_str("\r\n");
        prop_assert_eq!(parse_request(s.as_bytes(), 64 * 1024), Err(HandshakeError::TooLarge));
    }
}
