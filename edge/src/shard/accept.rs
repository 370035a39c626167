//! The listener side of a shard: accept, read the HTTP request head (bounded
//! in size and time), route it (`/ws`, the echo path, `/healthz`, `/readyz`,
//! `/metrics`), check origin and token, hand the socket to the room's owner
//! shard when `?room=` names a room owned elsewhere, and upgrade.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, Splitable};
use monoio::net::{TcpListener, TcpStream};
use router::Frame;

use super::{conn, Shard};
use crate::auth::Claims;
use crate::config::AdmissionRefusal;
use crate::limits::client_ip::client_ip;
use crate::limits::conns::{ConnRefusal, SocketSlot};
use crate::metrics::ShardStats;
use crate::ws::codec::close_frame;
use crate::ws::handshake::{self, Request};

/// Binds one SO_REUSEPORT listener (each shard binds its own).
pub fn bind_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

pub(super) async fn run_accept(shard: Rc<Shard>, listener: std::net::TcpListener) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(shard = shard.id, error = %e, "cannot register listener");
            return;
        }
    };
    loop {
        let accepted = monoio::select! {
            r = listener.accept() => Some(r),
            _ = shard.drain_requested() => None,
        };
        match accepted {
            None => break,
            Some(Ok((stream, peer))) => {
                ShardStats::inc(&shard.stats().accepted_total);
                let _ = stream.set_nodelay(true);
                monoio::spawn(serve_socket(shard.clone(), stream, peer, BytesMut::new(), false));
            }
            Some(Err(e)) => {
                tracing::warn!(shard = shard.id, error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// A socket handed over by another shard: the upgrade continues here.
pub(super) fn adopt(shard: &Rc<Shard>, fd: i32, head: &[u8], peer: &str) {
    // SAFETY: the sending shard dup'ed this fd for us and gave up its copy's
    // ownership in the Handoff frame; nothing else closes it.
    let std_stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    let peer = peer.parse().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    match TcpStream::from_std(std_stream) {
        Ok(stream) => {
            let buf = BytesMut::from(head);
            monoio::spawn(serve_socket(shard.clone(), stream, peer, buf, true));
        }
        Err(e) => tracing::warn!(shard = shard.id, error = %e, "cannot adopt handed-off socket"),
    }
}

async fn serve_socket(shard: Rc<Shard>, mut stream: TcpStream, peer: SocketAddr, mut buf: BytesMut, handed: bool) {
    let limit = Duration::from_millis(shard.cfg.handshake_timeout_ms);
    // HTTP API requests may keep the connection for the next one; anything else ends it.
    let mut served = 0u32;
    let (req, buf) = loop {
        let head = monoio::time::timeout(limit, read_head(&mut stream, buf, shard.cfg.max_head_bytes)).await;
        let (req, rest) = match head {
            Ok(Ok(Some(v))) => v,
            Ok(Ok(None)) => return, // closed before a full head
            Ok(Err(status)) => return reject(&shard, stream, status, "bad request").await,
            Err(_) if served > 0 => return, // a kept-alive connection went quiet
            Err(_) => return reject(&shard, stream, 408, "handshake timeout").await,
        };
        if !super::api::serves(&req.path) {
            break (req, rest);
        }
        served += 1;
        match super::api::serve(&shard, &mut stream, req, rest).await {
            Some(rest) => buf = rest,
            None => return,
        }
    };
    match req.path.as_str() {
        "/ws" => upgrade(shard, stream, peer, req, buf, handed).await,
        p if is_admin_path(p) && shard.cfg.admin_listen.is_some() => respond(stream, 404, "not found").await,
        "/healthz" | "/readyz" | "/metrics" => serve_admin_path(&shard, stream, &req.path).await,
        p if shard.cfg.echo_path.as_deref() == Some(p) => upgrade_echo(shard, stream, req, buf).await,
        _ => respond(stream, 404, "not found").await,
    }
}

/// The operator's endpoints: on the public port, or only on `admin_listen` when it is set.
fn is_admin_path(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// Answers `/healthz`, `/readyz` or `/metrics`.
async fn serve_admin_path(shard: &Rc<Shard>, stream: TcpStream, path: &str) {
    match path {
        "/healthz" => respond(stream, 200, "ok").await,
        "/readyz" => match shard.unready_because() {
            Some(why) => respond(stream, 503, &why).await,
            None => respond(stream, 200, "ready").await,
        },
        "/metrics" => {
            let mut body = crate::metrics::render(&shard.all_stats, shard.driver);
            crate::metrics::render_store(&mut body, shard.store.stats());
            crate::metrics::render_process(&mut body);
            if let Some(b) = shard.bridge_handle() {
                crate::metrics::render_bridge(&mut body, &b.metrics(), b.is_ready());
            }
            respond(stream, 200, &body).await;
        }
        _ => respond(stream, 404, "not found").await,
    }
}

/// The `admin_listen` listener (first shard): `/healthz`, `/readyz` and `/metrics` only, one
/// request per connection, served through a drain (so `/readyz` can say `draining`).
pub(super) async fn run_admin(shard: Rc<Shard>, listener: std::net::TcpListener) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => return tracing::error!(shard = shard.id, error = %e, "cannot register the admin listener"),
    };
    loop {
        match listener.accept().await {
            Ok((mut stream, _)) => {
                let shard = shard.clone();
                monoio::spawn(async move {
                    let limit = Duration::from_millis(shard.cfg.handshake_timeout_ms);
                    let head = monoio::time::timeout(limit, read_head(&mut stream, BytesMut::new(), shard.cfg.max_head_bytes)).await;
                    match head {
                        Ok(Ok(Some((req, _)))) => serve_admin_path(&shard, stream, &req.path).await,
                        Ok(Err(status)) => reject(&shard, stream, status, "bad request").await,
                        _ => {}
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Reads until a complete request head; `Err(status)` for a bad one.
async fn read_head(stream: &mut TcpStream, mut buf: BytesMut, max: usize) -> Result<Option<(Request, BytesMut)>, u16> {
    loop {
        if !buf.is_empty() {
            match handshake::parse_request(&buf, max) {
                Ok(Some(req)) => return Ok(Some((req, buf))),
                Ok(None) => {}
                Err(e) => return Err(e.status()),
            }
        }
        if buf.capacity() - buf.len() < 256 {
            buf.reserve(1024.min(max + 1));
        }
        let len = buf.len();
        let cap = buf.capacity();
        let (res, slice) = stream.read(buf.slice_mut(len..cap)).await;
        buf = slice.into_inner();
        match res {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

async fn upgrade(shard: Rc<Shard>, mut stream: TcpStream, peer: SocketAddr, req: Request, buf: BytesMut, handed: bool) {
    if shard.is_draining() {
        return reject(&shard, stream, 503, "draining").await;
    }
    // A handed-off socket was admitted by the shard that accepted it.
    if !handed {
        let admitted = shard.admission.borrow_mut().check(shard.mono_ns(), rand::random::<f64>());
        if let Err(retry_ms) = admitted {
            ShardStats::inc(&shard.stats().admission_refused_total);
            return refuse_admission(&shard, stream, &req, retry_ms).await;
        }
    }
    if let Some(room) = req.query_param("room") {
        let owner = crate::room::owner(room, shard.shards);
        if owner != shard.id && !handed && crate::auth::is_valid_room_id(room) {
            return hand_off(&shard, stream, peer, buf, owner).await;
        }
    }
    if !origin_allowed(&shard, &req) {
        return reject(&shard, stream, 403, "origin not allowed").await;
    }
    let claims = match req.query_param("token") {
        Some(token) => match shard.verifier.verify(token, Shard::now_ms() / 1000) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::debug!(shard = shard.id, %peer, error = %e, "upgrade refused: bad token");
                return reject(&shard, stream, 401, "invalid token").await;
            }
        },
        None => None,
    };
    let key = match handshake::validate_upgrade(&req) {
        Ok(k) => k.to_owned(),
        Err(e) => return reject(&shard, stream, e.status(), "not a websocket upgrade").await,
    };
    let joins = crate::protocol::client::initial_joins(req.query_param("room"), req.query_param("resume"), shard.cfg.max_rooms_per_conn);
    let joins = match joins {
        Ok(j) => j,
        Err(e) => {
            tracing::debug!(shard = shard.id, %peer, error = %e, "upgrade refused: bad resume");
            return reject(&shard, stream, 400, "bad resume: expected resume=<room>:<seq>,...").await;
        }
    };
    // Counted until the connection ends (the slot goes with the connection's task).
    let slot = match count_connection(&shard, peer, &req, claims.as_ref()) {
        Ok(slot) => slot,
        Err(refusal) => return refuse_connection(&shard, stream, &req, refusal).await,
    };
    let (res, _) = stream.write_all(handshake::switching_protocols(&key)).await;
    if res.is_err() {
        if let Some(c) = &claims {
            shard.conn_table.close_user(&c.sub);
        }
        return;
    }
    let mut rest = buf;
    let _ = rest.split_to(req.head_len);
    // The connection runs as tasks of its own: this one (accept, request head, HTTP API,
    // upgrade) ends here, and its state machine, sized by its largest await point, is not
    // kept for the connection's life (3.8 KB of an idle connection's 7.7 KB;
    // results/idle-breakdown-20261205.txt). The request goes with it.
    drop(req);
    conn::start_connection(shard, stream, claims, joins, rest, slot);
}

/// Counts an upgrade against `max_conns` and `max_conns_per_ip` (the client address behind
/// `trusted_proxies`) and, with a token in the URL, its user against `max_conns_per_user`.
fn count_connection(shard: &Shard, peer: SocketAddr, req: &Request, claims: Option<&Claims>) -> Result<SocketSlot, ConnRefusal> {
    let ip = client_ip(peer.ip(), req.forwarded_for.as_deref(), &shard.trusted_proxies);
    let slot = shard.conn_table.open_socket(ip)?;
    if let Some(c) = claims {
        shard.conn_table.open_user(&c.sub)?; // on refusal, `slot` is dropped: released
    }
    Ok(slot)
}

/// Refuses an upgrade over a connection limit: 429 (this client has too many) or 503 (the
/// node is full) with `Retry-After` and `Retry-Ms`, or close 1013 as `admission_refusal` says.
async fn refuse_connection(shard: &Shard, stream: TcpStream, req: &Request, refusal: ConnRefusal) {
    shard.count_conn_refusal(refusal);
    let retry_ms = shard.cfg.conn_limit_retry_ms;
    let code = if refusal == ConnRefusal::Node {
        "overloaded"
    } else {
        "rate_limited"
    };
    let body = format!(
        r#"{{"type":"error","code":"{code}","message":"{}","retry_ms":{retry_ms}}}"#,
        refusal.message()
    );
    refuse_with_retry(shard, stream, req, refusal.status(), &body, retry_ms).await;
}

/// The conformance echo endpoint: no authentication and its own message size
/// (`echo_max_message_bytes`), but drain, admission control and Origin apply as on `/ws`.
async fn upgrade_echo(shard: Rc<Shard>, mut stream: TcpStream, req: Request, buf: BytesMut) {
    if shard.is_draining() {
        return reject(&shard, stream, 503, "draining").await;
    }
    let admitted = shard.admission.borrow_mut().check(shard.mono_ns(), rand::random::<f64>());
    if let Err(retry_ms) = admitted {
        ShardStats::inc(&shard.stats().admission_refused_total);
        return refuse_admission(&shard, stream, &req, retry_ms).await;
    }
    if !origin_allowed(&shard, &req) {
        return reject(&shard, stream, 403, "origin not allowed").await;
    }
    let key = match handshake::validate_upgrade(&req) {
        Ok(k) => k.to_owned(),
        Err(e) => return reject(&shard, stream, e.status(), "not a websocket upgrade").await,
    };
    let (res, _) = stream.write_all(handshake::switching_protocols(&key)).await;
    if res.is_err() {
        return;
    }
    let mut rest = buf;
    let _ = rest.split_to(req.head_len);
    conn::start_echo(shard, stream, rest);
}

async fn hand_off(shard: &Shard, stream: TcpStream, peer: SocketAddr, buf: BytesMut, owner: usize) {
    // SAFETY: dup(2) on our own open socket; the new fd is owned by the frame
    // until the owner shard adopts it (or we close it below on failure).
    let fd = unsafe { libc::dup(stream.as_raw_fd()) };
    if fd < 0 {
        return reject(shard, stream, 503, "cannot hand off").await;
    }
    let frame = Frame::Handoff {
        fd,
        head: buf.to_vec(),
        peer: peer.to_string(),
    };
    if shard.try_request(owner, &frame) {
        ShardStats::inc(&shard.stats().handoffs_total);
        drop(stream); // the owner's copy of the fd keeps the socket open
        return;
    }
    // SAFETY: the frame was not sent, so `fd` is still ours to close.
    unsafe { libc::close(fd) };
    ShardStats::inc(&shard.stats().overloaded_total);
    let extra = [("Retry-After", "1")];
    let (_, _) = stream_write(stream, handshake::http_response(503, "overloaded", &extra)).await;
}

/// Refuses an upgrade over the admission rate, telling the client when to retry.
async fn refuse_admission(shard: &Shard, stream: TcpStream, req: &Request, retry_ms: u64) {
    let body = format!(r#"{{"type":"error","code":"overloaded","message":"too many new connections","retry_ms":{retry_ms}}}"#);
    refuse_with_retry(shard, stream, req, 503, &body, retry_ms).await;
}

/// An HTTP `status` with `body`, `Retry-After` and `Retry-Ms`; or, with `admission_refusal =
/// "close1013"`, the upgrade and at once close 1013 with reason `retry_ms=N`.
async fn refuse_with_retry(shard: &Shard, stream: TcpStream, req: &Request, status: u16, body: &str, retry_ms: u64) {
    match shard.cfg.admission_refusal {
        AdmissionRefusal::Http503 => {
            let (secs, ms) = (retry_ms.div_ceil(1000).to_string(), retry_ms.to_string());
            let extra = [("Retry-After", secs.as_str()), ("Retry-Ms", ms.as_str())];
            let _ = stream_write(stream, handshake::http_response(status, body, &extra)).await;
        }
        AdmissionRefusal::Close1013 => {
            let Ok(key) = handshake::validate_upgrade(req) else {
                return reject(shard, stream, 503, "overloaded").await;
            };
            let mut out = handshake::switching_protocols(key);
            out.extend_from_slice(&close_frame(1013, &format!("retry_ms={retry_ms}")));
            let _ = stream_write(stream, out).await;
        }
    }
}

fn origin_allowed(shard: &Shard, req: &Request) -> bool {
    let allowed = &shard.cfg.allowed_origins;
    if allowed.is_empty() {
        return true;
    }
    req.origin.as_deref().is_some_and(|o| allowed.iter().any(|a| a == o))
}

async fn reject(shard: &Shard, stream: TcpStream, status: u16, body: &str) {
    ShardStats::inc(&shard.stats().handshake_rejected_total);
    let extra: &[(&str, &str)] = if status == 426 { &[("Sec-WebSocket-Version", "13")] } else { &[] };
    let _ = stream_write(stream, handshake::http_response(status, body, extra)).await;
}

async fn respond(stream: TcpStream, status: u16, body: &str) {
    let _ = stream_write(stream, handshake::http_response(status, body, &[])).await;
}

async fn stream_write(mut stream: TcpStream, bytes: Vec<u8>) -> (std::io::Result<usize>, Vec<u8>) {
    let r = stream.write_all(bytes).await;
    let (_, w) = stream.into_split();
    drop(w); // shutdown(write) so the client sees the end of the response
    r
}
