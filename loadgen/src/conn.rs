//! One WebSocket client connection on a glommio executor: connect (from a
//! chosen loopback source address when asked), upgrade, then a reader half
//! and a shared writer half.
//!
//! The reader hands out text payloads as slices of its own buffer (no copy
//! per message) and answers pings itself. The writer is shared by the tasks
//! of one connection (sender, reader's pongs) through `Rc<RefCell<..>>`,
//! taken for the duration of one write.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::time::Duration;

use futures_lite::io::{ReadHalf, WriteHalf};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::ws::{self, Answer};

/// Where clients connect: parsed from `--url ws://HOST:PORT/PATH`.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| format!("--url {url}: only ws:// URLs are supported (loadgen does not speak TLS)"))?;
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/ws"),
        };
        use std::net::ToSocketAddrs as _;
        let addr = host
            .to_socket_addrs()
            .map_err(|e| format!("--url {url}: cannot resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("--url {url}: {host} has no address"))?;
        if path.contains('?') {
            return Err(format!("--url {url}: give the path without a query; loadgen adds token and room"));
        }
        Ok(Self {
            url: url.to_owned(),
            addr,
            host: host.to_owned(),
            path: path.to_owned(),
        })
    }
}

/// Why a connection attempt failed, by the kinds a storm report counts.
#[derive(Debug)]
pub enum ConnectError {
    /// An HTTP answer other than 101 (503 from admission control, 401, ...).
    Refused {
        status: u16,
        retry_ms: Option<u64>,
    },
    /// Upgraded, then closed before `welcome` (1013 from admission control, ...).
    Closed {
        code: Option<u16>,
        retry_ms: Option<u64>,
    },
    Timeout,
    Io(std::io::Error),
    Protocol(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused { status, .. } => write!(f, "HTTP {status}"),
            Self::Closed { code, .. } => write!(f, "closed {code:?} before welcome"),
            Self::Timeout => write!(f, "timed out"),
            Self::Io(e) => write!(f, "{e}"),
            Self::Protocol(m) => write!(f, "protocol: {m}"),
        }
    }
}

/// The write half of a connection, shared by its tasks.
pub type Writer = Rc<RefCell<Slot>>;

/// Whether the write half is free, in use by a task, or gone.
pub enum Slot {
    Ready(WriteHalf<TcpStream>),
    Busy,
    Closed,
}

/// An upgraded connection that has received its `welcome`.
pub struct Conn {
    pub reader: Reader,
    pub writer: Writer,
}

/// Connects, upgrades with `query` and waits for `welcome`, all within `limit`.
pub async fn connect(target: &Target, source: Option<IpAddr>, query: &str, limit: Duration) -> Result<Conn, ConnectError> {
    let attempt = async {
        let stream = open_socket(target.addr, source).await.map_err(ConnectError::Io)?;
        stream.set_nodelay(true).map_err(|e| ConnectError::Io(e.into()))?;
        let (rd, mut wr) = futures_lite::io::split(stream);
        let path = format!("{}?{query}", target.path);
        let req = ws::upgrade_request(&target.host, &path, rand::random());
        wr.write_all(&req).await.map_err(ConnectError::Io)?;
        let mut reader = Reader::new(rd);
        reader.read_answer().await?;
        let writer: Writer = Rc::new(RefCell::new(Slot::Ready(wr)));
        match reader.next(&writer).await.map_err(ConnectError::Io)? {
            Some(In::Text(t)) if crate::msg::str_field(t, "type") == Some(b"welcome") => {}
            Some(In::Text(t)) => {
                return Err(ConnectError::Protocol(format!(
                    "expected welcome, got {}",
                    String::from_utf8_lossy(t)
                )))
            }
            Some(In::Close(code, reason)) => {
                return Err(ConnectError::Closed {
                    code,
                    retry_ms: retry_hint(&reason),
                })
            }
            None => {
                return Err(ConnectError::Closed {
                    code: None,
                    retry_ms: None,
                })
            }
        }
        Ok(Conn { reader, writer })
    };
    with_timeout(limit, attempt).await.unwrap_or(Err(ConnectError::Timeout))
}

/// `retry_ms=N` in a close reason or error message.
pub fn retry_hint(text: &str) -> Option<u64> {
    let at = text.find("retry_ms")? + "retry_ms".len();
    let digits: String = text[at..]
        .trim_start_matches(|c: char| c == '=' || c == ':' || c == '"' || c.is_whitespace())
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Runs `f`, or gives `None` after `limit`.
pub async fn with_timeout<T>(limit: Duration, f: impl std::future::Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(f.await) }, async {
        glommio::timer::sleep(limit).await;
        None
    })
    .await
}

/// A TCP socket connected to `addr`, bound to `source` when given.
///
/// With a source address the socket is bound (port chosen at connect time,
/// `IP_BIND_ADDRESS_NO_PORT`) and connected non-blocking, then handed to
/// glommio in blocking mode: io_uring waits for the connection to complete
/// on the first write (its internal poll), so the executor never blocks.
async fn open_socket(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let Some(src) = source else {
        return TcpStream::connect(addr).await.map_err(Into::into);
    };
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on our own fd with a valid int and its size.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    s.bind(&SocketAddr::new(src, 0).into())?;
    s.set_nonblocking(true)?;
    match s.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    s.set_nonblocking(false)?;
    // SAFETY: the fd is ours (into_raw_fd gave up the Socket's ownership).
    Ok(unsafe { TcpStream::from_raw_fd(s.into_raw_fd()) })
}

/// One frame, as the reader hands it out.
pub enum In<'a> {
    Text(&'a [u8]),
    Close(Option<u16>, String),
}

/// The read half: a buffer filled between `start` and `end`, frames handed
/// out as slices of it. The buffer is zeroed once when it grows, never per
/// read, and compacted only when its free tail runs short.
pub struct Reader {
    rd: ReadHalf<TcpStream>,
    buf: Vec<u8>,
    /// Bytes before `start` were handed out.
    start: usize,
    /// Bytes from `end` on are free.
    end: usize,
}

/// First size of a connection's read buffer; it doubles when a frame needs more.
const READ_BUF_BYTES: usize = 4 * 1024;
/// Compact when less than this is free at the tail.
const MIN_READ_BYTES: usize = 1024;

impl Reader {
    fn new(rd: ReadHalf<TcpStream>) -> Self {
        Self {
            rd,
            buf: vec![0; READ_BUF_BYTES],
            start: 0,
            end: 0,
        }
    }

    async fn fill(&mut self) -> std::io::Result<usize> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.buf.len() - self.end < MIN_READ_BYTES {
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
            if self.buf.len() - self.end < MIN_READ_BYTES {
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        let n = self.rd.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }

    /// The unread bytes.
    fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    async fn read_answer(&mut self) -> Result<(), ConnectError> {
        loop {
            match ws::parse_answer(self.data()).map_err(ConnectError::Protocol)? {
                Some(Answer::Upgraded { head_len }) => {
                    self.start += head_len;
                    return Ok(());
                }
                Some(Answer::Refused { status, retry_ms }) => return Err(ConnectError::Refused { status, retry_ms }),
                None => {}
            }
            if self.fill().await.map_err(ConnectError::Io)? == 0 {
                return Err(ConnectError::Closed {
                    code: None,
                    retry_ms: None,
                });
            }
        }
    }

    /// The next text or close frame; answers pings; `None` at end of stream.
    pub async fn next(&mut self, writer: &Writer) -> std::io::Result<Option<In<'_>>> {
        loop {
            let parsed = ws::parse_frame(self.data()).map_err(std::io::Error::other)?;
            let Some(f) = parsed else {
                if self.fill().await? == 0 {
                    return Ok(None);
                }
                continue;
            };
            let start = self.start + f.payload_start;
            let end = self.start + f.payload_end;
            self.start = end;
            match f.opcode {
                ws::OP_TEXT => return Ok(Some(In::Text(&self.buf[start..end]))),
                ws::OP_CLOSE => {
                    let (code, reason) = ws::close_parts(&self.buf[start..end]);
                    return Ok(Some(In::Close(code, reason.to_owned())));
                }
                ws::OP_PING => {
                    let payload = self.buf[start..end].to_vec();
                    // A pong lost because the writer is busy is answered at the next ping.
                    let _ = send(writer, ws::OP_PONG, &payload).await;
                }
                _ => {}
            }
        }
    }
}

/// Sends one masked frame (waiting while another task of the connection
/// writes); `Err` when the connection is gone.
pub async fn send(writer: &Writer, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    ws::encode_frame(&mut frame, opcode, payload, rand::random());
    let mut w = loop {
        let state = std::mem::replace(&mut *writer.borrow_mut(), Slot::Busy);
        match state {
            Slot::Ready(w) => break w,
            // Another task of this connection is mid-write: let it finish.
            Slot::Busy => futures_lite::future::yield_now().await,
            Slot::Closed => {
                *writer.borrow_mut() = Slot::Closed;
                return Err(std::io::Error::new(std::io::ErrorKind::NotConnected, "writer closed"));
            }
        }
    };
    let r = w.write_all(&frame).await;
    let mut slot = writer.borrow_mut();
    // `close` may have run meanwhile (it leaves Closed): keep that.
    if matches!(*slot, Slot::Busy) {
        *slot = if r.is_ok() { Slot::Ready(w) } else { Slot::Closed };
    }
    drop(slot);
    r
}

/// Closes the writing side (the server sees the socket end).
pub async fn close(writer: &Writer) {
    let state = std::mem::replace(&mut *writer.borrow_mut(), Slot::Closed);
    if let Slot::Ready(mut w) = state {
        let _ = w.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse("ws://127.0.0.1:8080/ws").expect("valid");
        assert_eq!((t.addr.port(), t.path.as_str()), (8080, "/ws"));
        assert_eq!(Target::parse("ws://127.0.0.1:9").expect("valid").path, "/ws");
        assert!(Target::parse("wss://127.0.0.1:8080/ws").expect_err("tls").contains("only ws://"));
        assert!(Target::parse("ws://127.0.0.1:8080/ws?x=1").is_err());
    }

    #[test]
    fn retry_hints() {
        assert_eq!(retry_hint("retry_ms=250"), Some(250));
        assert_eq!(retry_hint(r#"{"code":"overloaded","retry_ms":1200}"#), Some(1200));
        assert_eq!(retry_hint("try later"), None);
    }
}
