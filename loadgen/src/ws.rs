//! The client side of RFC 6455, sans-IO: the upgrade request, the answer to
//! it, masked frames out and unmasked frames in.
//!
//! Deliberately small: loadgen talks to one server it knows, so it needs
//! text, ping/pong and close, and it needs them fast. What must stay true:
//! malformed input from the server is an error, never a panic; a frame is
//! only returned once all of its bytes are in.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// Opcodes loadgen sends or acts on.
pub const OP_TEXT: u8 = 0x1;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Largest frame loadgen accepts from the server (history pages are the largest).
const MAX_FRAME_BYTES: usize = 4 << 20;

/// The upgrade request for `path_and_query` on `host`.
pub fn upgrade_request(host: &str, path_and_query: &str, key_seed: u64) -> Vec<u8> {
    let key = STANDARD.encode(key_seed.to_le_bytes().repeat(2));
    format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// What the server answered to the upgrade request.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// 101: the rest of the buffer after `head_len` is WebSocket data.
    Upgraded { head_len: usize },
    /// Any other status, with the server's retry hint when it gave one
    /// (`Retry-Ms` header, else `Retry-After` seconds).
    Refused { status: u16, retry_ms: Option<u64> },
}

/// Parses the response head in `buf`; `Ok(None)` while incomplete.
pub fn parse_answer(buf: &[u8]) -> Result<Option<Answer>, String> {
    let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") else {
        return if buf.len() > 16 * 1024 {
            Err("response head too large".into())
        } else {
            Ok(None)
        };
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| "response head is not UTF-8".to_owned())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    if status == 101 {
        return Ok(Some(Answer::Upgraded { head_len: end + 4 }));
    }
    let mut retry_ms = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("retry-ms") {
            retry_ms = value.parse().ok().or(retry_ms);
        } else if name.eq_ignore_ascii_case("retry-after") && retry_ms.is_none() {
            retry_ms = value.parse::<u64>().ok().map(|s| s * 1000);
        }
    }
    Ok(Some(Answer::Refused { status, retry_ms }))
}

/// Appends one masked client frame to `out`.
pub fn encode_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    for (i, b) in out[start..].iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// One frame from the server: its opcode and where its payload lies in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub opcode: u8,
    pub fin: bool,
    pub payload_start: usize,
    pub payload_end: usize,
}

/// The first complete frame in `buf`, `Ok(None)` while incomplete.
pub fn parse_frame(buf: &[u8]) -> Result<Option<Frame>, String> {
    if buf.len() < 2 {
        return Ok(None);
    }
    if buf[1] & 0x80 != 0 {
        return Err("server frame is masked".into());
    }
    if buf[0] & 0x70 != 0 {
        return Err("reserved bits set".into());
    }
    let (len, header) = match buf[1] & 0x7F {
        126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        126 | 127 => return Ok(None),
        n => (u64::from(n), 2),
    };
    if len > MAX_FRAME_BYTES as u64 {
        return Err(format!("server frame of {len} bytes is over the {MAX_FRAME_BYTES} byte limit"));
    }
    let end = header + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some(Frame {
        opcode: buf[0] & 0x0F,
        fin: buf[0] & 0x80 != 0,
        payload_start: header,
        payload_end: end,
    }))
}

/// The close code and reason of a close frame's payload.
pub fn close_parts(payload: &[u8]) -> (Option<u16>, &str) {
    if payload.len() < 2 {
        return (None, "");
    }
    let code = u16::from_be_bytes([payload[0], payload[1]]);
    (Some(code), std::str::from_utf8(&payload[2..]).unwrap_or(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_frames_round_trip_through_tungstenite() {
        // Encode here, decode with tungstenite as a server would.
        let mut wire = Vec::new();
        encode_frame(&mut wire, OP_TEXT, b"hello", [1, 2, 3, 4]);
        let long = vec![b'x'; 70_000];
        encode_frame(&mut wire, OP_TEXT, &long, [9, 8, 7, 6]);
        let mut ctx = tungstenite::protocol::WebSocketContext::new(tungstenite::protocol::Role::Server, None);
        let mut stream = std::io::Cursor::new(wire);
        struct Rw<'a>(&'a mut std::io::Cursor<Vec<u8>>);
        impl std::io::Read for Rw<'_> {
            fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
                self.0.read(b)
            }
        }
        impl std::io::Write for Rw<'_> {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let m1 = ctx.read(&mut Rw(&mut stream)).expect("first frame");
        assert_eq!(m1.into_text().expect("text").as_str(), "hello");
        let m2 = ctx.read(&mut Rw(&mut stream)).expect("second frame");
        assert_eq!(m2.into_data().len(), 70_000);
    }

    #[test]
    fn server_frames_parse_incrementally() {
        let mut buf = vec![0x81, 126, 0x01, 0x00];
        buf.extend(std::iter::repeat_n(b'a', 256));
        for cut in 0..buf.len() {
            assert_eq!(parse_frame(&buf[..cut]), Ok(None), "cut at {cut}");
        }
        let f = parse_frame(&buf).expect("valid").expect("complete");
        assert_eq!((f.opcode, f.fin, f.payload_start, f.payload_end), (OP_TEXT, true, 4, 260));
    }

    #[test]
    fn bad_server_frames_are_errors() {
        assert!(parse_frame(&[0x81, 0x85, 0, 0, 0, 0]).is_err(), "masked");
        assert!(parse_frame(&[0xC1, 0x00]).is_err(), "rsv1");
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(parse_frame(&huge).is_err(), "oversized");
    }

    #[test]
    fn answers() {
        assert_eq!(
            parse_answer(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\nXY"),
            Ok(Some(Answer::Upgraded { head_len: 56 }))
        );
        assert_eq!(parse_answer(b"HTTP/1.1 101 Switching"), Ok(None));
        assert_eq!(
            parse_answer(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 2\r\nRetry-Ms: 1234\r\n\r\n"),
            Ok(Some(Answer::Refused {
                status: 503,
                retry_ms: Some(1234)
            }))
        );
        assert_eq!(
            parse_answer(b"HTTP/1.1 503 x\r\nRetry-After: 2\r\n\r\n"),
            Ok(Some(Answer::Refused {
                status: 503,
                retry_ms: Some(2000)
            }))
        );
        assert!(parse_answer(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn close_payload() {
        let mut p = 1013u16.to_be_bytes().to_vec();
        p.extend_from_slice(b"retry_ms=250");
        assert_eq!(close_parts(&p), (Some(1013), "retry_ms=250"));
        assert_eq!(close_parts(&[]), (None, ""));
    }
}
