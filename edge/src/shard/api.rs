//! The HTTP API and the web page on the shard that accepted the socket
//! (`http` renders and checks; this carries out). A request that reads or
//! writes chat runs on the same paths as a WebSocket request: the shell
//! opens a connection with no socket (an API connection: authenticated, in
//! no room, not online), starts the request on it, and answers with the one
//! reply the engine queues for it, or 504 after `api_timeout_ms`.
//!
//! Bounds: the body is read within `handshake_timeout_ms` and is at most
//! `api_max_body_bytes`; a response write that stalls for
//! `write_stall_timeout_ms` drops the socket; a kept-alive connection waits
//! `handshake_timeout_ms` for its next request.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use router::Frame;
use serde_json::{json, Value};

use super::outbox::Outbox;
use super::sequencer::Page;
use super::{Conn, Shard};
use crate::auth::{self, Claims};
use crate::engine::liveness::Liveness;
use crate::engine::session::Session;
use crate::http::{self, Access, ApiError, Caller, Response, Route};
use crate::metrics::ShardStats;
use crate::protocol::client::{self, ParseLimits, Request as ClientRequest};
use crate::protocol::server;
use crate::ws::handshake::Request;

/// The request id an API connection's request carries (raw JSON), so its answer is told
/// apart from anything else queued to it.
const REQ_ID: &str = "\"http\"";
/// Close code of a connection an operator disconnected (`POST .../disconnect`).
pub(super) const CLOSE_DISCONNECTED: u16 = 4001;

/// Whether the HTTP API or the page serves `path`.
pub(super) fn serves(path: &str) -> bool {
    path.starts_with("/api/") || http::asset(path).is_some()
}

/// Serves one request whose head is in `buf`; the bytes after its body when the connection
/// stays open for another request, `None` when it closes.
pub(super) async fn serve(shard: &Rc<Shard>, stream: &mut TcpStream, req: Request, mut buf: BytesMut) -> Option<BytesMut> {
    ShardStats::inc(&shard.stats().api_requests_total);
    let _ = buf.split_to(req.head_len);
    let (body, rest) = match read_body(shard, stream, &req, buf).await {
        Ok(v) => v,
        Err(e) => {
            write(shard, stream, e.response().to_bytes(true)).await;
            return None;
        }
    };
    let response = match answer(shard, &req, &body).await {
        Ok(r) => r,
        Err(e) => e.response(),
    };
    if response.status >= 500 {
        ShardStats::inc(&shard.stats().api_failed_total);
    }
    let close = req.api.close || shard.is_draining();
    let written = write(shard, stream, response.to_bytes(close)).await;
    (written && !close).then_some(rest)
}

/// Reads the `Content-Length` body after the head (the API takes no chunked bodies).
async fn read_body(shard: &Shard, stream: &mut TcpStream, req: &Request, mut buf: BytesMut) -> Result<(Bytes, BytesMut), ApiError> {
    if req.api.transfer_encoding {
        return Err(ApiError::new(
            411,
            "length_required",
            "send the body with Content-Length (chunked bodies are not accepted)",
        ));
    }
    let len = match req.api.content_length {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(())) => return Err(ApiError::bad_request("Content-Length is not a number, or is given twice")),
    };
    let max = shard.cfg.api_max_body_bytes;
    if len > max as u64 {
        return Err(ApiError::new(
            413,
            "too_large",
            &format!("the body is over api_max_body_bytes ({max} bytes)"),
        ));
    }
    let len = len as usize;
    let limit = Duration::from_millis(shard.cfg.handshake_timeout_ms);
    let read = monoio::time::timeout(limit, async move {
        while buf.len() < len {
            buf.reserve(len - buf.len());
            let (l, c) = (buf.len(), buf.capacity());
            let (res, slice) = stream.read(buf.slice_mut(l..c)).await;
            buf = slice.into_inner();
            if !matches!(res, Ok(n) if n > 0) {
                return Err(ApiError::bad_request("the connection closed inside the body"));
            }
        }
        Ok(buf)
    })
    .await;
    match read {
        Ok(Ok(mut buf)) => Ok((buf.split_to(len).freeze(), buf)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ApiError::new(408, "timeout", "the body did not arrive within handshake_timeout_ms")),
    }
}

/// Writes a response; false when the socket failed or stalled.
async fn write(shard: &Shard, stream: &mut TcpStream, bytes: Vec<u8>) -> bool {
    let limit = Duration::from_millis(shard.cfg.write_stall_timeout_ms);
    matches!(monoio::time::timeout(limit, stream.write_all(bytes)).await, Ok((Ok(_), _)))
}

async fn answer(shard: &Rc<Shard>, req: &Request, body: &Bytes) -> Result<Response, ApiError> {
    let route = http::route(&req.method, &req.path)?;
    let claims = authorize(shard, req, &route)?;
    let user = |c: &Option<Claims>| c.clone().unwrap_or_else(|| api_claims(http::DEFAULT_PUBLISHER));
    match route {
        Route::Page(asset) => Ok(asset.response()),
        Route::OpenApi => Ok(Response {
            status: 200,
            content_type: "application/json",
            headers: Vec::new(),
            body: Bytes::from_static(http::OPENAPI.as_bytes()),
        }),
        Route::History { room } => {
            let (before, limit, thread) = http::history_query(&req.query)?;
            may_read(claims.as_ref(), &room)?;
            let page = Page { before, limit, thread };
            Ok(engine_call(shard, user(&claims), |conn, id| shard.seq_history(conn, id, &room, page)).await)
        }
        Route::RoomPresence { room } => {
            may_read(claims.as_ref(), &room)?;
            Ok(engine_call(shard, user(&claims), |conn, id| shard.seq_presence(conn, id, &room)).await)
        }
        Route::UserPresence { user: who } => {
            if !auth::is_valid_user_id(&who) {
                return Err(ApiError::bad_request("not a user id (1..=64 bytes of A-Z a-z 0-9 _ . @ -)"));
            }
            Ok(engine_call(shard, user(&claims), |conn, id| shard.seq_last_seen(conn, id, &who)).await)
        }
        Route::Publish { room } => publish(shard, &room, req, body).await,
        Route::Tokens => {
            let claims = http::token_claims(http::parse_body(body)?, Shard::now_ms() / 1000)?;
            mint(shard, &claims)
        }
        Route::DevToken => {
            if !shard.cfg.dev_mode {
                return Err(ApiError::not_found(&req.path));
            }
            let dev: http::DevTokenReq = http::parse_body(body)?;
            let asked = http::TokenReq {
                user: dev.user,
                rooms: None,
                ttl_s: Some(24 * 3600),
                name: None,
                moderator: None,
            };
            mint(shard, &http::token_claims(asked, Shard::now_ms() / 1000)?)
        }
        Route::AdminShards => Ok(admin_shards(shard)),
        Route::Disconnect { user } => {
            if !auth::is_valid_user_id(&user) {
                return Err(ApiError::bad_request("not a user id (1..=64 bytes of A-Z a-z 0-9 _ . @ -)"));
            }
            let asked = http::DisconnectReq::parse(body)?;
            Ok(disconnect(shard, &user, asked.reason.as_deref().unwrap_or("disconnected"), asked.retry_ms).await)
        }
    }
}

/// Who may call `route`: `None` for an API key (or an open route), the verified claims
/// for a user's token.
fn authorize(shard: &Shard, req: &Request, route: &Route) -> Result<Option<Claims>, ApiError> {
    if route.access() == Access::Open {
        return Ok(None);
    }
    match (http::caller(&req.api, &shard.cfg.api_keys)?, route.access()) {
        (Caller::Key, _) | (_, Access::Open) => Ok(None),
        (Caller::Bearer(_), Access::Key) => Err(ApiError::forbidden(
            "this endpoint takes an API key (Authorization: apikey <key>), not a user token",
        )),
        (Caller::Anonymous, Access::Key) => Err(ApiError::unauthorized(
            "an API key is required: Authorization: apikey <key>, or X-API-Key: <key>",
        )),
        (Caller::Anonymous, Access::KeyOrUser) => Err(ApiError::unauthorized(
            "a user token (Authorization: Bearer <jwt>) or an API key is required",
        )),
        (Caller::Bearer(token), Access::KeyOrUser) => shard
            .verifier
            .verify(&token, Shard::now_ms() / 1000)
            .map(Some)
            .map_err(|e| ApiError::unauthorized(&format!("invalid token: {e}"))),
    }
}

/// The WebSocket rules for a user's token; any valid room for an API key.
fn may_read(claims: Option<&Claims>, room: &str) -> Result<(), ApiError> {
    let denied = match claims {
        Some(c) => auth::may_join(c, room).err(),
        None => (!auth::is_valid_room_id(room)).then(|| auth::Denied::InvalidRoom(room.chars().take(140).collect())),
    };
    match denied {
        None => Ok(()),
        Some(d) if d.code() == "bad_request" => Err(ApiError::bad_request(&d.to_string())),
        Some(d) => Err(ApiError::forbidden(&d.to_string())),
    }
}

/// The claims an API connection acts with for an API key: `user`, every public room.
fn api_claims(user: &str) -> Claims {
    Claims {
        sub: user.to_owned(),
        exp: u64::MAX,
        nbf: None,
        rooms: None,
        name: None,
        moderator: None,
    }
}

/// `POST /api/rooms/{room}/messages`: the body checked as a WebSocket `send` is, then sent
/// as the body's `user` through the room's sequencer, answered with the `ack`.
async fn publish(shard: &Rc<Shard>, room: &str, req: &Request, body: &Bytes) -> Result<Response, ApiError> {
    may_read(None, room)?;
    let fields = http::publish_request(room, body, req.api.idempotency_key.as_deref())?;
    let limits = ParseLimits {
        max_body_chars: shard.cfg.max_body_chars,
        max_client_id_bytes: crate::engine::session::MAX_CLIENT_ID_BYTES,
    };
    let send = match client::parse(&fields.frame, &limits) {
        Ok(env) => match env.request {
            ClientRequest::Send(s) => s,
            _ => return Err(ApiError::new(500, "internal", "a publish did not parse as a send")),
        },
        Err(e) => return Ok(http::from_ws_reply(&server::error(None, e.code, &e.message, None))),
    };
    Ok(engine_call(shard, api_claims(&fields.user), |conn, id| shard.on_send(conn, id, room, send)).await)
}

fn mint(shard: &Shard, claims: &Claims) -> Result<Response, ApiError> {
    if shard.cfg.jwt_algorithm != auth::JwtAlgorithm::Hs256 || shard.cfg.jwt_secret.is_empty() {
        return Err(ApiError::new(
            501,
            "not_implemented",
            "this node verifies tokens with a public key: it cannot mint them",
        ));
    }
    let token = auth::mint_for_node(
        &shard.cfg.jwt_secret,
        claims,
        shard.cfg.jwt_issuer.as_deref(),
        shard.cfg.jwt_audience.as_deref(),
    )
    .map_err(|e| ApiError::bad_request(&format!("cannot mint: {e}")))?;
    Ok(http::json_response(
        200,
        &json!({"token": token, "user": claims.sub, "expires_at": claims.exp}),
    ))
}

fn admin_shards(shard: &Shard) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    let shards: Vec<Value> = shard
        .all_stats
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({
                "shard": i,
                "connections": s.connections_open.load(Relaxed),
                "rooms_owned": s.rooms_owned.load(Relaxed),
                "messages_total": s.messages_total.load(Relaxed),
                "deliveries_total": s.deliveries_total.load(Relaxed),
            })
        })
        .collect();
    let connections: u64 = shard.all_stats.iter().map(|s| s.connections_open.load(Relaxed)).sum();
    let body = json!({
        "node": shard.cfg.node_id,
        "draining": shard.is_draining(),
        "connections": connections,
        "shards": shards,
    });
    http::json_response(200, &body)
}

/// Closes `user`'s connections on every shard of this node; answers how many.
async fn disconnect(shard: &Rc<Shard>, user: &str, reason: &str, retry_ms: Option<u64>) -> Response {
    let conn = shard.open_api_conn(api_claims(http::DEFAULT_PUBLISHER));
    let mut closed = shard.disconnect_user(user, reason, retry_ms);
    let mut waiting = 0;
    for to in (0..shard.shards).filter(|s| *s != shard.id) {
        let frame = Frame::Disconnect {
            user: user.to_owned(),
            reason: reason.to_owned(),
            retry_ms,
            conn: conn.id,
        };
        if shard.try_request(to, &frame) {
            waiting += 1;
        }
    }
    let wait = Duration::from_millis(shard.cfg.api_timeout_ms);
    let answered = monoio::time::timeout(wait, async {
        while waiting > 0 {
            let Some(p) = answer_of(&conn).await else { return false };
            closed += serde_json::from_slice::<Value>(&p)
                .ok()
                .and_then(|v| v["closed"].as_u64())
                .unwrap_or(0);
            waiting -= 1;
        }
        true
    })
    .await;
    shard.close_api_conn(&conn);
    if !matches!(answered, Ok(true)) {
        return ApiError::new(504, "timeout", "not every shard answered within api_timeout_ms").response();
    }
    // In a cluster, the nodes holding the user's connections hear it on the user's channel.
    let Some(bridge) = shard.bridge_handle().cloned() else {
        return http::json_response(200, &json!({"user": user, "closed": closed}));
    };
    let frame = router::encode(&Frame::Disconnect {
        user: user.to_owned(),
        reason: reason.to_owned(),
        retry_ms,
        conn: 0,
    });
    let asked = bridge.notify(&router::bridge::keys::user(user), frame).await.is_ok();
    http::json_response(200, &json!({"user": user, "closed": closed, "other_nodes_asked": asked}))
}

/// Starts a request on a new API connection acting as `claims`, and answers with its reply.
async fn engine_call(shard: &Rc<Shard>, claims: Claims, start: impl FnOnce(&Rc<Conn>, Option<&str>)) -> Response {
    if shard.is_draining() {
        return ApiError::unavailable("the node is shutting down: retry on another node", 1000).response();
    }
    let conn = shard.open_api_conn(claims);
    start(&conn, Some(REQ_ID));
    let wait = Duration::from_millis(shard.cfg.api_timeout_ms);
    let reply = monoio::time::timeout(wait, answer_of(&conn)).await;
    shard.close_api_conn(&conn);
    match reply {
        Ok(Some(frame)) => http::from_ws_reply(&frame),
        Ok(None) => ApiError::unavailable("the node is shutting down: retry on another node", 1000).response(),
        Err(_) => ApiError::new(504, "timeout", "the request got no answer within api_timeout_ms").response(),
    }
}

/// The next frame queued to `conn` that answers its request (`None`: it was closed).
async fn answer_of(conn: &Conn) -> Option<Bytes> {
    #[derive(serde::Deserialize)]
    struct Id<'a> {
        #[serde(borrow)]
        id: Option<&'a str>,
    }
    loop {
        let payload = conn.out.next_payload().await?;
        if serde_json::from_slice::<Id<'_>>(&payload).is_ok_and(|v| v.id == Some("http")) {
            return Some(payload);
        }
    }
}

impl Shard {
    /// A connection with no socket for one API request, authenticated as `claims`: in no
    /// room, never online, not counted in `connections_open`.
    fn open_api_conn(&self, claims: Claims) -> Rc<Conn> {
        let now = Self::now_ms();
        let mut session = Session::new(&self.session_limits, Vec::new());
        session.authenticated(claims);
        let conn = Rc::new(Conn {
            id: self.new_conn_id(),
            out: Rc::new(Outbox::new(
                -1,
                self.cfg.outbound_queue_max_bytes,
                self.cfg.outbound_queue_max_frames,
            )),
            session: RefCell::new(session),
            liveness: Cell::new(Liveness::new(now)),
            user_counted: Cell::new(false),
            decoder: Cell::new(None),
            read: super::conn::ReadSide::none(),
            mode: super::conn::Mode::Chat,
        });
        self.conns.borrow_mut().insert(conn.id, conn.clone());
        self.api_conns.set(self.api_conns.get() + 1);
        conn
    }

    fn close_api_conn(&self, conn: &Conn) {
        self.conns.borrow_mut().remove(&conn.id);
        self.api_conns.set(self.api_conns.get() - 1);
    }

    /// Closes this shard's open connections of `user` (with a `reconnect` hint first when
    /// `retry_ms` is given); how many (one already closing is not counted again).
    pub(super) fn disconnect_user(&self, user: &str, reason: &str, retry_ms: Option<u64>) -> u64 {
        let ids: Vec<u64> = self.users.borrow().get(user).to_vec();
        let mut closed = 0;
        for conn in ids.iter().filter_map(|id| self.conn(*id)).filter(|c| !c.out.is_closing()) {
            if let Some(ms) = retry_ms {
                conn.out.push_text(server::reconnect(ms, reason));
            }
            conn.out.close(CLOSE_DISCONNECTED, reason);
            closed += 1;
        }
        closed
    }

    /// Another shard (or, `conn` 0, another node through the user's channel) asks this one
    /// to disconnect `user`: done, and answered to the asking API connection.
    pub(super) fn on_disconnect_frame(&self, user: &str, reason: &str, retry_ms: Option<u64>, conn: u64) {
        let closed = self.disconnect_user(user, reason, retry_ms);
        if conn == 0 {
            return;
        }
        let answer = format!(r#"{{"type":"disconnected","id":"http","closed":{closed}}}"#);
        self.to_conn(conn, Bytes::from(answer));
    }
}
