//! The frames of a message's life after it was sent: its current version
//! after an edit or a delete, the `update` and `reaction` events, and a
//! history message with its aggregated reactions.
//!
//! What must stay true: an edited or deleted message is rendered by the one
//! `message` renderer, so it keeps every field but the changed ones (a
//! tombstone keeps its seq, msg_id, sender, time and `reply_to`, and loses
//! `body` and `file`); reactions are added to a copy of a stored frame, never
//! stored in it (the `me` flag is the asking user's).

use bytes::Bytes;
use serde::Deserialize;
use storage::ReactionCount;

use super::{render_message, Changed, FileOut, MessageOut, Obj};

/// A file reference read back from a stored frame.
#[derive(Debug, Clone, Deserialize)]
struct StoredFile {
    url: String,
    name: String,
    size: u64,
    mime: String,
}

/// A stored `message` frame read back: what an edit or a delete needs to render its new version.
#[derive(Debug, Clone, Deserialize)]
pub struct StoredView {
    /// The sender.
    pub from: String,
    /// Its seq.
    pub seq: u64,
    /// Whether it was deleted already.
    #[serde(default)]
    pub deleted: bool,
    room: String,
    msg_id: String,
    ts: u64,
    kind: String,
    #[serde(default)]
    file: Option<StoredFile>,
    #[serde(default)]
    reply_to: Option<u64>,
}

impl StoredView {
    /// Reads a stored `message` frame; `None` when it is not one (a frame this server did not write).
    pub fn parse(frame: &[u8]) -> Option<Self> {
        #[derive(Deserialize)]
        struct Tagged<'a> {
            #[serde(rename = "type")]
            ty: &'a str,
        }
        let tag: Tagged<'_> = serde_json::from_slice(frame).ok()?;
        if tag.ty != "message" {
            return None;
        }
        serde_json::from_slice(frame).ok()
    }

    /// The message id.
    pub fn msg_id(&self) -> &str {
        &self.msg_id
    }

    /// The message with `body` instead of its own, edited at `ts`.
    pub fn edited(&self, body: &str, ts: u64) -> Bytes {
        self.render(
            body,
            Changed {
                deleted: false,
                edited_ts: ts,
            },
        )
    }

    /// The message's tombstone, deleted at `ts`.
    pub fn deleted(&self, ts: u64) -> Bytes {
        self.render(
            "",
            Changed {
                deleted: true,
                edited_ts: ts,
            },
        )
    }

    fn render(&self, body: &str, changed: Changed) -> Bytes {
        let m = MessageOut {
            room: &self.room,
            seq: self.seq,
            msg_id: &self.msg_id,
            from: &self.from,
            ts: self.ts,
            body,
            kind: &self.kind,
            file: self.file.as_ref().map(|f| FileOut {
                url: &f.url,
                name: &f.name,
                size: f.size,
                mime: &f.mime,
            }),
            reply_to: self.reply_to,
        };
        render_message(&m, false, Some(changed))
    }
}

/// `update`: message `seq` of `room` was edited (`body`) or deleted (`body: None`) at `edited_ts`.
pub fn update(room: &str, seq: u64, body: Option<&str>, edited_ts: u64) -> Bytes {
    let mut o = Obj::new("update", 80 + room.len() + body.map_or(0, str::len));
    o.str("room", room).num("seq", seq);
    if let Some(b) = body {
        o.str("body", b);
    }
    o.raw("deleted", if body.is_none() { "true" } else { "false" });
    o.num("edited_ts", edited_ts).done()
}

/// `reaction`: `user` added (`add`) or removed `emoji` on message `seq` of `room`.
pub fn reaction(room: &str, seq: u64, user: &str, emoji: &str, add: bool) -> Bytes {
    Obj::new("reaction", 96 + room.len() + user.len() + emoji.len())
        .str("room", room)
        .num("seq", seq)
        .str("user", user)
        .str("emoji", emoji)
        .str("op", if add { "add" } else { "remove" })
        .done()
}

/// Whether a stored message frame is a tombstone. Sound on the bytes: inside a JSON string
/// every `"` is escaped, so this key sequence only occurs as the renderer's own keys.
fn is_tombstone(frame: &[u8]) -> bool {
    const KEYS: &[u8] = b"\"deleted\":true,\"edited_ts\":";
    frame.windows(KEYS.len()).any(|w| w == KEYS)
}

/// A stored message frame as `history` shows it: with its reactions (`counts`, this
/// message's, ascending by emoji) as `"reactions":[{"emoji","count","me"}]` and, for a
/// thread root, its reply count as `"replies"`; the frame itself when it has neither. A
/// tombstone shows no reactions.
pub fn with_extras(frame: &Bytes, counts: &[ReactionCount], replies: u64) -> Bytes {
    let Some(body) = frame.strip_suffix(b"}") else {
        return frame.clone();
    };
    let counts = if is_tombstone(frame) { &[][..] } else { counts };
    if counts.is_empty() && replies == 0 {
        return frame.clone();
    }
    let mut v = Vec::with_capacity(frame.len() + 32 + counts.len() * 48);
    v.extend_from_slice(body);
    if !counts.is_empty() {
        v.extend_from_slice(b",\"reactions\":[");
        for (i, c) in counts.iter().enumerate() {
            if i > 0 {
                v.push(b',');
            }
            v.extend_from_slice(b"{\"emoji\":");
            let _ = serde_json::to_writer(&mut v, &c.emoji);
            v.extend_from_slice(format!(",\"count\":{},\"me\":{}}}", c.count, c.me).as_bytes());
        }
        v.push(b']');
    }
    if replies > 0 {
        v.extend_from_slice(format!(",\"replies\":{replies}").as_bytes());
    }
    v.push(b'}');
    Bytes::from(v)
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::protocol::server::message;

    fn sent() -> Bytes {
        let file = FileOut {
            url: "https://x/f",
            name: "f.png",
            size: 3,
            mime: "image/png",
        };
        message(&MessageOut {
            room: "r",
            seq: 4,
            msg_id: "m4",
            from: "alice",
            ts: 10,
            body: "hello \"you\"",
            kind: "file",
            file: Some(file),
            reply_to: Some(2),
        })
    }

    fn json(b: &Bytes) -> Value {
        serde_json::from_slice(b).expect("valid JSON")
    }

    #[test]
    fn an_edit_keeps_every_field_but_the_body_and_a_delete_leaves_a_tombstone() {
        let view = StoredView::parse(&sent()).expect("a message");
        assert_eq!((view.from.as_str(), view.seq, view.deleted), ("alice", 4, false));
        let mut want = json(&sent());
        want["body"] = json!("better");
        want["edited_ts"] = json!(20);
        assert_eq!(json(&view.edited("better", 20)), want);
        let gone = view.deleted(30);
        let v = json(&gone);
        assert_eq!(v["deleted"], json!(true));
        assert_eq!(v["edited_ts"], json!(30));
        assert!(
            v.get("body").is_none() && v.get("file").is_none(),
            "a tombstone carries no content: {v}"
        );
        assert_eq!(
            (v["seq"].clone(), v["msg_id"].clone(), v["reply_to"].clone()),
            (json!(4), json!("m4"), json!(2))
        );
        assert!(StoredView::parse(&gone).expect("a tombstone is a message").deleted);
        assert!(StoredView::parse(b"{\"type\":\"gap\",\"room\":\"r\"}").is_none());
        assert!(StoredView::parse(b"\x00not json").is_none());
    }

    #[test]
    fn events_and_reactions_render_as_the_protocol_says() {
        let u = json(&update("r", 4, Some("b"), 9));
        assert_eq!(
            u,
            json!({"type":"update","room":"r","seq":4,"body":"b","deleted":false,"edited_ts":9})
        );
        let d = json(&update("r", 4, None, 9));
        assert_eq!(d, json!({"type":"update","room":"r","seq":4,"deleted":true,"edited_ts":9}));
        let r = json(&reaction("r", 4, "bob", "👍", false));
        assert_eq!(
            r,
            json!({"type":"reaction","room":"r","seq":4,"user":"bob","emoji":"👍","op":"remove"})
        );
        let count = |emoji: &str, count, me| ReactionCount {
            seq: 4,
            emoji: emoji.into(),
            count,
            me,
        };
        let both = [count("🎉", 1, false), count("👍", 2, true)];
        let with = json(&with_extras(&sent(), &both, 0));
        assert_eq!(
            with["reactions"],
            json!([{"emoji":"🎉","count":1,"me":false},{"emoji":"👍","count":2,"me":true}])
        );
        assert_eq!(with["body"], json!("hello \"you\""));
        assert!(with.get("replies").is_none());
        assert_eq!(with_extras(&sent(), &[], 0), sent(), "no reactions: the frame as stored");
        assert_eq!(json(&with_extras(&sent(), &[], 3))["replies"], json!(3));
        let view = StoredView::parse(&sent()).expect("message");
        let gone = view.deleted(9);
        assert!(is_tombstone(&gone) && !is_tombstone(&sent()));
        let shown = json(&with_extras(&gone, &both, 2));
        assert!(shown.get("reactions").is_none(), "a tombstone shows no reactions: {shown}");
        assert_eq!(shown["replies"], json!(2), "its thread is still there");
        // A body that spells the keys is escaped in the frame: no tombstone.
        assert!(!is_tombstone(&view.edited(r#""deleted":true,"edited_ts":1"#, 5)));
    }
}
