//! Server frames out, rendered straight into one `Bytes` each. `message` is
//! rendered once per message and shared by every recipient. `id` arguments
//! are the raw JSON text of the request's id, inserted verbatim.

use std::fmt::Write;

use bytes::{BufMut, Bytes, BytesMut};

use super::ErrorCode;

/// Limits advertised in `welcome`.
#[derive(Debug, Clone, Copy)]
pub struct AdvertisedLimits {
    /// Largest frame payload accepted.
    pub max_frame_bytes: u64,
    /// Longest `body` in characters.
    pub max_body_chars: u64,
    /// Rooms one connection may join.
    pub max_rooms_per_conn: u64,
    /// Sustained requests per second per connection.
    pub max_msgs_per_s: f64,
    /// Connections one user may hold on the node (0: no limit, advertised as null).
    pub max_conns_per_user: u64,
    /// Connections one client address may hold on the node (0: no limit, null).
    pub max_conns_per_ip: u64,
}

/// A message as fanned out.
#[derive(Debug, Clone, Copy)]
pub struct MessageOut<'a> {
    /// Room.
    pub room: &'a str,
    /// Its seq in the room.
    pub seq: u64,
    /// Stable message id.
    pub msg_id: &'a str,
    /// Sender's user id.
    pub from: &'a str,
    /// Sequencing time, ms since the epoch.
    pub ts: u64,
    /// Text.
    pub body: &'a str,
    /// `text` or `file`.
    pub kind: &'a str,
    /// With kind `file`.
    pub file: Option<FileOut<'a>>,
    /// Seq this replies to.
    pub reply_to: Option<u64>,
}

/// A file reference as fanned out.
#[derive(Debug, Clone, Copy)]
pub struct FileOut<'a> {
    /// Where the file is.
    pub url: &'a str,
    /// Display name.
    pub name: &'a str,
    /// Size in bytes.
    pub size: u64,
    /// MIME type.
    pub mime: &'a str,
}

/// A JSON object being written.
struct Obj(BytesMut);

impl Obj {
    fn new(ty: &str, cap: usize) -> Self {
        Self::into_buf(BytesMut::with_capacity(cap + 16), ty)
    }

    /// An object written into `buf` (emptied first): a pooled buffer, see [`FramePool`].
    fn into_buf(mut buf: BytesMut, ty: &str) -> Self {
        buf.clear();
        buf.extend_from_slice(b"{\"type\":\"");
        buf.extend_from_slice(ty.as_bytes());
        buf.put_u8(b'"');
        Self(buf)
    }

    fn key(&mut self, k: &str) -> &mut Self {
        self.0.extend_from_slice(b",\"");
        self.0.extend_from_slice(k.as_bytes());
        self.0.extend_from_slice(b"\":");
        self
    }

    fn str(&mut self, k: &str, v: &str) -> &mut Self {
        self.key(k);
        // Writing a &str into a BytesMut cannot fail.
        let _ = serde_json::to_writer((&mut self.0).writer(), v);
        self
    }

    fn num(&mut self, k: &str, v: u64) -> &mut Self {
        self.key(k);
        self.0.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
        self
    }

    fn raw(&mut self, k: &str, v: &str) -> &mut Self {
        self.key(k);
        self.0.extend_from_slice(v.as_bytes());
        self
    }

    fn id(&mut self, id: Option<&str>) -> &mut Self {
        if let Some(id) = id {
            self.raw("id", id);
        }
        self
    }

    fn done(&mut self) -> Bytes {
        self.0.put_u8(b'}');
        std::mem::take(&mut self.0).freeze()
    }
}

/// `welcome`: the first frame after authentication.
pub fn welcome(user: &str, conn: &str, node: &str, shard: u16, heartbeat_ms: u64, limits: &AdvertisedLimits) -> Bytes {
    let rate = if limits.max_msgs_per_s.is_finite() {
        format!("{:?}", limits.max_msgs_per_s)
    } else {
        "null".into()
    };
    let or_null = |n: u64| if n == 0 { "null".to_owned() } else { n.to_string() };
    let l = format!(
        "{{\"max_frame_bytes\":{},\"max_body_chars\":{},\"max_rooms_per_conn\":{},\"max_msgs_per_s\":{rate},\"max_conns_per_user\":{},\"max_conns_per_ip\":{}}}",
        limits.max_frame_bytes,
        limits.max_body_chars,
        limits.max_rooms_per_conn,
        or_null(limits.max_conns_per_user),
        or_null(limits.max_conns_per_ip)
    );
    Obj::new("welcome", 256)
        .str("user", user)
        .str("conn", conn)
        .str("node", node)
        .num("shard", u64::from(shard))
        .num("heartbeat_ms", heartbeat_ms)
        .raw("limits", &l)
        .done()
}

/// `error` for request `id`.
pub fn error(id: Option<&str>, code: ErrorCode, message: &str, retry_ms: Option<u64>) -> Bytes {
    let mut o = Obj::new("error", 64 + message.len());
    o.id(id).str("code", code.as_str()).str("message", message);
    if let Some(r) = retry_ms {
        o.num("retry_ms", r);
    }
    o.done()
}

/// `refreshed`: the session runs on a newer token, valid until `exp` (seconds).
pub fn refreshed(id: Option<&str>, exp: u64) -> Bytes {
    Obj::new("refreshed", 48).id(id).num("exp", exp).done()
}

/// `pong`.
pub fn pong(id: Option<&str>, ts: u64) -> Bytes {
    Obj::new("pong", 48).id(id).num("ts", ts).done()
}

/// `joined`.
pub fn joined(id: Option<&str>, room: &str, seq: u64, epoch: u64, members: u64) -> Bytes {
    Obj::new("joined", 96 + room.len())
        .id(id)
        .str("room", room)
        .num("seq", seq)
        .num("epoch", epoch)
        .num("members", members)
        .done()
}

/// `left`.
pub fn left(id: Option<&str>, room: &str) -> Bytes {
    Obj::new("left", 32 + room.len()).id(id).str("room", room).done()
}

/// `ack` of a send.
pub fn ack(id: Option<&str>, room: &str, seq: u64, msg_id: &str, ts: u64) -> Bytes {
    ack_into(BytesMut::with_capacity(ack_cap(id, room, msg_id)), id, room, seq, msg_id, ts)
}

/// Room for an `ack` frame: its fixed text and two full-width numbers (95 bytes), and slack.
pub fn ack_cap(id: Option<&str>, room: &str, msg_id: &str) -> usize {
    112 + id.map_or(0, str::len) + room.len() + msg_id.len()
}

/// `ack` of a send, written into `buf` (a [`FramePool`]'s).
pub fn ack_into(buf: BytesMut, id: Option<&str>, room: &str, seq: u64, msg_id: &str, ts: u64) -> Bytes {
    Obj::into_buf(buf, "ack")
        .id(id)
        .str("room", room)
        .num("seq", seq)
        .str("msg_id", msg_id)
        .num("ts", ts)
        .done()
}

/// `message`: rendered once, shared by all recipients.
pub fn message(m: &MessageOut<'_>) -> Bytes {
    render_message(m, false, None)
}

/// `message`, written into `buf` (a [`FramePool`]'s).
pub fn message_into(buf: BytesMut, m: &MessageOut<'_>) -> Bytes {
    render_into(Obj::into_buf(buf, "message"), m, false, None)
}

/// `message` for the cluster: the seq is a 20-space slot that Redis's sequencing script
/// fills in place (`"seq":` + right-aligned digits, valid JSON); `m.seq` is ignored.
pub fn message_unsequenced(m: &MessageOut<'_>) -> Bytes {
    render_message(m, true, None)
}

/// How a message was changed after it was sent: its current version carries this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Changed {
    /// Deleted: the message keeps its seq as a tombstone, without `body` or `file`.
    pub deleted: bool,
    /// When it was last edited or deleted, ms since the epoch.
    pub edited_ts: u64,
}

fn render_message(m: &MessageOut<'_>, seq_slot: bool, changed: Option<Changed>) -> Bytes {
    render_into(
        Obj::into_buf(BytesMut::with_capacity(message_cap(m)), "message"),
        m,
        seq_slot,
        changed,
    )
}

/// Room for a `message` frame's usual rendering (escapes may take more).
pub fn message_cap(m: &MessageOut<'_>) -> usize {
    144 + m.room.len() + m.msg_id.len() + m.from.len() + m.body.len() + m.file.map_or(0, |f| 64 + f.url.len() + f.name.len())
}

fn render_into(mut o: Obj, m: &MessageOut<'_>, seq_slot: bool, changed: Option<Changed>) -> Bytes {
    o.str("room", m.room);
    if seq_slot {
        o.raw("seq", &" ".repeat(router::bridge::SEQ_SLOT_WIDTH));
    } else {
        o.num("seq", m.seq);
    }
    o.str("msg_id", m.msg_id).str("from", m.from).num("ts", m.ts);
    let deleted = changed.is_some_and(|c| c.deleted);
    if !deleted {
        o.str("body", m.body);
    }
    o.str("kind", m.kind);
    if let Some(f) = m.file.filter(|_| !deleted) {
        o.key("file");
        o.0.put_u8(b'{');
        o.0.extend_from_slice(b"\"url\":");
        let _ = serde_json::to_writer((&mut o.0).writer(), f.url);
        o.str("name", f.name).num("size", f.size).str("mime", f.mime);
        o.0.put_u8(b'}');
    }
    if let Some(r) = m.reply_to {
        o.num("reply_to", r);
    }
    if let Some(c) = changed {
        if c.deleted {
            o.raw("deleted", "true");
        }
        o.num("edited_ts", c.edited_ts);
    }
    o.done()
}

mod changes;
mod pool;
pub use changes::{reaction, update, with_extras, StoredView};
pub use pool::FramePool;

/// `history`: a page of stored `message` frames (oldest first), inserted verbatim.
pub fn history(id: Option<&str>, room: &str, messages: &[Bytes], next_before: Option<u64>) -> Bytes {
    let cap = 64 + room.len() + messages.iter().map(|m| m.len() + 1).sum::<usize>();
    let mut o = Obj::new("history", cap);
    o.id(id).str("room", room).key("messages");
    o.0.put_u8(b'[');
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            o.0.put_u8(b',');
        }
        o.0.extend_from_slice(m);
    }
    o.0.put_u8(b']');
    match next_before {
        Some(n) => o.num("next_before", n),
        None => o.raw("next_before", "null"),
    };
    o.done()
}

/// `presence` answer: users online in a room, with the time they came online, and how many
/// are online in all (`online` may list fewer).
pub fn presence_list(id: Option<&str>, room: &str, online: &[(String, u64)], count: usize) -> Bytes {
    let mut o = Obj::new("presence", 64 + room.len() + online.len() * 48);
    o.id(id).str("room", room).key("online");
    o.0.put_u8(b'[');
    for (i, (user, since)) in online.iter().enumerate() {
        if i > 0 {
            o.0.put_u8(b',');
        }
        o.0.extend_from_slice(b"{\"user\":");
        let _ = serde_json::to_writer((&mut o.0).writer(), user.as_str());
        let _ = write!(o.0, ",\"since\":{since}}}");
    }
    o.0.put_u8(b']');
    o.num("count", count as u64).done()
}

/// `presence` event: `user` came online or went offline in `room`.
pub fn presence_event(room: &str, user: &str, online: bool, ts_ms: u64) -> Bytes {
    Obj::new("presence", 96 + room.len() + user.len())
        .str("room", room)
        .str("user", user)
        .str("status", if online { "online" } else { "offline" })
        .num("last_seen", ts_ms)
        .done()
}

/// `sync`: the user's rooms, each {room, seq, read, delivered, unread}.
pub fn sync(id: Option<&str>, rooms: &[storage::UserRoom]) -> Bytes {
    let mut o = Obj::new("sync", 32 + rooms.len() * 96);
    o.id(id).key("rooms");
    o.0.put_u8(b'[');
    for (i, r) in rooms.iter().enumerate() {
        if i > 0 {
            o.0.put_u8(b',');
        }
        o.0.extend_from_slice(b"{\"room\":");
        let _ = serde_json::to_writer((&mut o.0).writer(), r.room.as_str());
        let _ = write!(
            o.0,
            ",\"seq\":{},\"read\":{},\"delivered\":{},\"unread\":{}}}",
            r.seq, r.read, r.delivered, r.unread
        );
    }
    o.0.put_u8(b']');
    o.done()
}

/// `receipt`: `user`'s `status` (`read` or `delivered`) mark in `room` is at `seq`
/// (a watermark: everything up to it).
pub fn receipt(room: &str, user: &str, seq: u64, status: &str) -> Bytes {
    Obj::new("receipt", 80 + room.len() + user.len())
        .str("room", room)
        .str("user", user)
        .num("seq", seq)
        .str("status", status)
        .done()
}

/// `receipt` of several users at once (**extension**): the delivered marks of `users` in
/// `room` reached `seq` (one frame per room and tick, not one per user).
pub fn receipt_users(room: &str, users: &[String], seq: u64, status: &str) -> Bytes {
    let mut o = Obj::new("receipt", 80 + room.len() + users.iter().map(|u| u.len() + 3).sum::<usize>());
    o.str("room", room).key("users");
    o.0.put_u8(b'[');
    for (i, u) in users.iter().enumerate() {
        if i > 0 {
            o.0.put_u8(b',');
        }
        let _ = serde_json::to_writer((&mut o.0).writer(), u.as_str());
    }
    o.0.put_u8(b']');
    o.num("seq", seq).str("status", status).done()
}

/// `presence` of one user (the answer to `presence` with `user`): `online`, or `offline`
/// with the time it was last seen (`null`: never seen).
pub fn presence_user(id: Option<&str>, user: &str, online: bool, last_seen: Option<u64>) -> Bytes {
    let mut o = Obj::new("presence", 96 + user.len());
    o.id(id).str("user", user).str("status", if online { "online" } else { "offline" });
    match last_seen {
        Some(ts) => o.num("last_seen", ts),
        None => o.raw("last_seen", "null"),
    };
    o.done()
}

/// `presence` count (**extension**): a room above `presence_roster_max` users online tells
/// its members how many are online, coalesced, instead of every user's event.
pub fn presence_count(room: &str, count: usize) -> Bytes {
    Obj::new("presence", 48 + room.len())
        .str("room", room)
        .num("count", count as u64)
        .done()
}

/// `typing`: `user` started or stopped typing in `room`.
pub fn typing(room: &str, user: &str, typing: bool) -> Bytes {
    Obj::new("typing", 64 + room.len() + user.len())
        .str("room", room)
        .str("user", user)
        .str("state", if typing { "start" } else { "stop" })
        .done()
}

/// `epoch` (**extension**): the room's sequence restarted; `seq` is the last seq of the new
/// epoch before the next message. The client resyncs with `history`.
pub fn epoch(room: &str, epoch: u64, seq: u64) -> Bytes {
    Obj::new("epoch", 64 + room.len())
        .str("room", room)
        .num("epoch", epoch)
        .num("seq", seq)
        .done()
}

/// `gap`: seqs `from..=to` are no longer held.
pub fn gap(room: &str, from: u64, to: u64) -> Bytes {
    Obj::new("gap", 48 + room.len())
        .str("room", room)
        .num("from", from)
        .num("to", to)
        .done()
}

/// `reconnect`: the server asks the client to come back after `retry_ms`.
pub fn reconnect(retry_ms: u64, reason: &str) -> Bytes {
    Obj::new("reconnect", 48).num("retry_ms", retry_ms).str("reason", reason).done()
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn j(b: &Bytes) -> Value {
        serde_json::from_slice(b).expect("valid JSON")
    }

    #[test]
    fn message_escapes_and_omits_absent_fields() {
        let body = "quote \" backslash \\ nl \n ctrl \u{1} é 😀";
        let m = MessageOut {
            room: "r\"1",
            seq: 7,
            msg_id: "m",
            from: "u",
            ts: 9,
            body,
            kind: "text",
            file: None,
            reply_to: None,
        };
        let v = j(&message(&m));
        assert_eq!(v["type"], "message");
        assert_eq!(v["room"], "r\"1");
        assert_eq!(v["body"], body);
        assert_eq!(v["seq"], 7);
        assert!(v.get("file").is_none() && v.get("reply_to").is_none());
        let f = FileOut {
            url: "https://x/y",
            name: "a b",
            size: 10,
            mime: "image/png",
        };
        let v = j(&message(&MessageOut {
            file: Some(f),
            reply_to: Some(3),
            kind: "file",
            ..m
        }));
        assert_eq!(v["file"]["url"], "https://x/y");
        assert_eq!(v["file"]["size"], 10);
        assert_eq!(v["reply_to"], 3);
    }

    #[test]
    fn ids_are_echoed_verbatim() {
        let v = j(&error(Some("\"a\\\"1\""), ErrorCode::RateLimited, "slow down", Some(250)));
        assert_eq!(v["id"], "a\"1");
        assert_eq!(v["code"], "rate_limited");
        assert_eq!(v["retry_ms"], 250);
        assert_eq!(j(&pong(Some("42"), 5))["id"], 42);
        assert!(j(&pong(None, 5)).get("id").is_none());
    }

    #[test]
    fn every_frame_is_valid_json() {
        let lim = AdvertisedLimits {
            max_frame_bytes: 1,
            max_body_chars: 2,
            max_rooms_per_conn: 3,
            max_msgs_per_s: 20.0,
            max_conns_per_user: 8,
            max_conns_per_ip: 0,
        };
        let w = j(&welcome("u", "c", "n", 1, 25_000, &lim));
        assert_eq!(w["limits"]["max_msgs_per_s"], 20.0);
        assert_eq!(w["limits"]["max_conns_per_user"], 8);
        assert!(w["limits"]["max_conns_per_ip"].is_null(), "0 is no limit: null");
        assert_eq!(w["shard"], 1);
        let inf = AdvertisedLimits {
            max_msgs_per_s: f64::INFINITY,
            ..lim
        };
        assert!(j(&welcome("u", "c", "n", 1, 1, &inf))["limits"]["max_msgs_per_s"].is_null());
        assert_eq!(j(&joined(Some("1"), "r", 5, 6, 7))["members"], 7);
        assert_eq!(j(&left(None, "r"))["room"], "r");
        assert_eq!(j(&ack(None, "r", 5, "m", 6))["msg_id"], "m");
        assert_eq!(j(&gap("r", 1, 4))["to"], 4);
        assert_eq!(j(&reconnect(100, "drain"))["retry_ms"], 100);
    }

    #[test]
    fn cluster_frames_are_valid_json() {
        let m = MessageOut {
            room: "r",
            seq: 9,
            msg_id: "m",
            from: "u",
            ts: 1,
            body: "b",
            kind: "text",
            file: None,
            reply_to: None,
        };
        let slot = message_unsequenced(&m);
        let text = std::str::from_utf8(&slot).expect("utf8");
        assert!(text.contains(router::bridge::SEQ_PLACEHOLDER), "{text}");
        let filled = text.replace(router::bridge::SEQ_PLACEHOLDER, "\"seq\":                  42");
        let v: Value = serde_json::from_str(&filled).expect("valid JSON once filled");
        assert_eq!(v["seq"], 42);
        let p = j(&presence_list(Some("7"), "r", &[("a".into(), 5), ("b\"".into(), 6)], 2));
        assert_eq!((p["count"].as_u64(), p["online"][1]["user"].as_str()), (Some(2), Some("b\"")));
        assert_eq!(j(&presence_event("r", "u", false, 3))["status"], "offline");
        assert_eq!(j(&epoch("r", 10, 0))["epoch"], 10);
    }

    #[test]
    fn history_inserts_stored_frames_verbatim() {
        let m1 = Bytes::from_static(br#"{"type":"message","seq":1}"#);
        let m2 = Bytes::from_static(br#"{"type":"message","seq":2}"#);
        let h = j(&history(Some("\"h\""), "r", &[m1, m2], Some(1)));
        assert_eq!(h["id"], "h");
        assert_eq!(h["messages"][1]["seq"], 2);
        assert_eq!(h["next_before"], 1);
        let empty = j(&history(None, "r", &[], None));
        assert_eq!(empty["messages"].as_array().map(Vec::len), Some(0));
        assert!(empty["next_before"].is_null());
    }
}
