//! The HTTP/1.1 request head and the WebSocket upgrade (RFC 6455 §4), sans-IO.
//!
//! [`parse_request`] is called on the bytes read so far; it answers "need
//! more", a parsed [`Request`] (with `head_len`, so bytes the client sent
//! after the head are kept), or an error with the HTTP status to answer.
//! What must stay true: the head is bounded by `max_head_bytes` whether or
//! not it is complete, and no input panics.

use std::borrow::Cow;

use base64::Engine;
use thiserror::Error;

/// Most headers a request may carry.
const MAX_HEADERS: usize = 32;

/// Why a request head is refused, with the HTTP status to answer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HandshakeError {
    /// The head exceeded `max_head_bytes` (431).
    #[error("request head too large")]
    TooLarge,
    /// Not parseable HTTP/1.x (400).
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// Not a GET (405).
    #[error("method not allowed")]
    Method,
    /// A plain request to a WebSocket path, or a version other than 13 (426).
    #[error("upgrade required")]
    UpgradeRequired,
    /// Missing or invalid `Sec-WebSocket-Key` (400).
    #[error("bad Sec-WebSocket-Key")]
    BadKey,
}

impl HandshakeError {
    /// The HTTP status that answers this error.
    pub fn status(&self) -> u16 {
        match self {
            Self::TooLarge => 431,
            Self::Malformed(_) | Self::BadKey => 400,
            Self::Method => 405,
            Self::UpgradeRequired => 426,
        }
    }
}

/// A parsed request head: what the edge needs of it, nothing more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, ...
    pub method: String,
    /// The path without the query.
    pub path: String,
    /// Query parameters, percent-decoded, in order.
    pub query: Vec<(String, String)>,
    /// Bytes of the head including the final CRLFCRLF.
    pub head_len: usize,
    /// `Sec-WebSocket-Key`.
    pub ws_key: Option<String>,
    /// `Origin`.
    pub origin: Option<String>,
    /// `Upgrade: websocket` and `Connection: upgrade` both present.
    pub upgrade: bool,
    /// `Sec-WebSocket-Version: 13`.
    pub version_ok: bool,
    /// `X-Forwarded-For`, every header line joined with `, ` (read only from trusted proxies).
    pub forwarded_for: Option<String>,
    /// What the HTTP API reads of the head.
    pub api: ApiHeaders,
}

/// The headers of an HTTP API request (`/api/...`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiHeaders {
    /// `Authorization`.
    pub authorization: Option<String>,
    /// `X-API-Key`.
    pub api_key: Option<String>,
    /// `Content-Length`; `Err(())` when unparsable or given twice with different values.
    pub content_length: Option<Result<u64, ()>>,
    /// `Transfer-Encoding` present (the API takes `Content-Length` bodies only).
    pub transfer_encoding: bool,
    /// `Idempotency-Key`.
    pub idempotency_key: Option<String>,
    /// `Connection: close`, or HTTP/1.0 without `Connection: keep-alive`.
    pub close: bool,
}

impl Request {
    /// The first value of query parameter `name`.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Parses the head in `buf`: `Ok(None)` while incomplete and under `max`.
pub fn parse_request(buf: &[u8], max: usize) -> Result<Option<Request>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > max => return Err(HandshakeError::TooLarge),
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > max => return Err(HandshakeError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::TooLarge),
        Err(_) => return Err(HandshakeError::Malformed("not an HTTP/1.1 request")),
    };
    let target = req.path.ok_or(HandshakeError::Malformed("no path"))?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut out = Request {
        method: req.method.unwrap_or_default().to_owned(),
        path: path.to_owned(),
        query: parse_query(query),
        head_len,
        ws_key: None,
        origin: None,
        upgrade: false,
        version_ok: false,
        forwarded_for: None,
        api: ApiHeaders {
            close: req.version == Some(0),
            ..ApiHeaders::default()
        },
    };
    let (mut upgrade_ws, mut connection_upgrade) = (false, false);
    for h in req.headers.iter() {
        let Ok(value) = std::str::from_utf8(h.value) else { continue };
        let value = value.trim();
        let name = h.name;
        if name.eq_ignore_ascii_case("upgrade") {
            upgrade_ws |= value.split(',').any(|t| t.trim().eq_ignore_ascii_case("websocket"));
        } else if name.eq_ignore_ascii_case("connection") {
            connection_upgrade |= value.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
            let has = |token: &str| value.split(',').any(|t| t.trim().eq_ignore_ascii_case(token));
            out.api.close = has("close") || (out.api.close && !has("keep-alive"));
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            out.ws_key = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            out.version_ok = value == "13";
        } else if name.eq_ignore_ascii_case("origin") {
            out.origin = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("x-forwarded-for") {
            // Proxies may each add their own header line: one list, in order.
            match &mut out.forwarded_for {
                Some(list) => {
                    list.push_str(", ");
                    list.push_str(value);
                }
                None => out.forwarded_for = Some(value.to_owned()),
            }
        } else {
            api_header(&mut out.api, name, value);
        }
    }
    out.upgrade = upgrade_ws && connection_upgrade;
    Ok(Some(out))
}

fn api_header(api: &mut ApiHeaders, name: &str, value: &str) {
    if name.eq_ignore_ascii_case("authorization") {
        api.authorization = Some(value.to_owned());
    } else if name.eq_ignore_ascii_case("x-api-key") {
        api.api_key = Some(value.to_owned());
    } else if name.eq_ignore_ascii_case("idempotency-key") {
        api.idempotency_key = Some(value.to_owned());
    } else if name.eq_ignore_ascii_case("transfer-encoding") {
        api.transfer_encoding = true;
    } else if name.eq_ignore_ascii_case("content-length") {
        let parsed = if value.bytes().all(|b| b.is_ascii_digit()) {
            value.parse::<u64>().map_err(|_| ())
        } else {
            Err(())
        };
        // Two lengths that disagree are how requests get smuggled: refuse them.
        api.content_length = match api.content_length {
            Some(prev) if prev != parsed => Some(Err(())),
            _ => Some(parsed),
        };
    }
}

/// Checks the upgrade headers; returns the `Sec-WebSocket-Key`.
pub fn validate_upgrade(req: &Request) -> Result<&str, HandshakeError> {
    if req.method != "GET" {
        return Err(HandshakeError::Method);
    }
    if !req.upgrade || !req.version_ok {
        return Err(HandshakeError::UpgradeRequired);
    }
    let key = req.ws_key.as_deref().ok_or(HandshakeError::BadKey)?;
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(raw) if raw.len() == 16 => Ok(key),
        _ => Err(HandshakeError::BadKey),
    }
}

/// The 101 response for a validated key.
pub fn switching_protocols(key: &str) -> Vec<u8> {
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n")
        .into_bytes()
}

/// A complete plain-text HTTP response that closes the connection.
pub fn http_response(status: u16, body: &str, extra_headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\n",
        reason(status)
    );
    for (k, v) in extra_headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()));
    out.into_bytes()
}

/// The reason phrase of an HTTP status.
pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k).into_owned(), percent_decode(v).into_owned())
        })
        .collect()
}

/// `%XX` and `+` decoding; malformed escapes are kept literally, and a result
/// that is not UTF-8 is decoded lossily (it then fails id validation).
pub(crate) fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains(['%', '+']) {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &str = "GET /ws?token=abc.def&room=lobby%3A1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: https://chat.example\r\n\r\n";

    #[test]
    fn parses_an_upgrade_and_keeps_trailing_bytes_out_of_the_head() {
        let mut wire = UPGRADE.as_bytes().to_vec();
        wire.extend_from_slice(b"\x81\x85extra");
        let req = parse_request(&wire, 8192).unwrap().unwrap();
        assert_eq!(req.head_len, UPGRADE.len());
        assert_eq!(req.path, "/ws");
        assert_eq!(req.query_param("token"), Some("abc.def"));
        assert_eq!(req.query_param("room"), Some("lobby:1"));
        assert_eq!(req.origin.as_deref(), Some("https://chat.example"));
        assert_eq!(validate_upgrade(&req), Ok("dGhlIHNhbXBsZSBub25jZQ=="));
    }

    #[test]
    fn the_accept_key_is_the_rfc_example() {
        let resp = String::from_utf8(switching_protocols("dGhlIHNhbXBsZSBub25jZQ==")).unwrap();
        assert!(resp.starts_with("HTTP/1.1 101 "));
        assert!(resp.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(resp.ends_with("\r\n\r\n"));
    }

    #[test]
    fn incomplete_heads_wait_until_the_limit() {
        let half = &UPGRADE.as_bytes()[..40];
        assert_eq!(parse_request(half, 8192), Ok(None));
        assert_eq!(parse_request(half, 30), Err(HandshakeError::TooLarge));
        assert_eq!(parse_request(UPGRADE.as_bytes(), 100).map_err(|e| e.status()), Err(431));
    }

    #[test]
    fn refusals_carry_their_status() {
        let parse = |s: &str| parse_request(s.as_bytes(), 8192);
        assert_eq!(parse("\x16\x03\x01garbage\r\n\r\n").map_err(|e| e.status()), Err(400));
        let plain = parse("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n").unwrap().unwrap();
        assert_eq!(validate_upgrade(&plain).map_err(|e| e.status()), Err(426));
        let post = parse(&UPGRADE.replace("GET", "POST")).unwrap().unwrap();
        assert_eq!(validate_upgrade(&post).map_err(|e| e.status()), Err(405));
        let v8 = parse(&UPGRADE.replace("Version: 13", "Version: 8")).unwrap().unwrap();
        assert_eq!(validate_upgrade(&v8).map_err(|e| e.status()), Err(426));
        let short_key = parse(&UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ=")).unwrap().unwrap();
        assert_eq!(validate_upgrade(&short_key), Err(HandshakeError::BadKey));
        let mut many = String::from("GET /ws HTTP/1.1\r\n");
        for i in 0..40 {
            many.push_str(&format!("X-{i}: y\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(parse(&many), Err(HandshakeError::TooLarge));
    }

    #[test]
    fn percent_decoding_is_lenient_and_never_panics() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%E2%82%AC"), "€");
        assert_eq!(percent_decode("%FF"), "\u{FFFD}");
    }

    #[test]
    fn http_responses_are_complete() {
        let r = String::from_utf8(http_response(503, "draining", &[("Retry-After", "1")])).unwrap();
        assert!(r.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(r.contains("Retry-After: 1\r\n"));
        assert!(r.contains("Content-Length: 8\r\n"));
        assert!(r.ends_with("\r\n\r\ndraining"));
    }
}
