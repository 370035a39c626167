//! One-shot requests on the command connection: publishing a batch, and
//! the catch-up queries (room seq, recent messages, who is online).
//!
//! What must stay true: a batch is checked completely before anything is
//! sent; a publish is sent at most once; every reply read from Redis is
//! validated (frames through rkyv) before it reaches the caller.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use fred::interfaces::{ClientLike, KeysInterface, LuaInterface, PubsubInterface, StreamsInterface};
use fred::types::{Expiration, SetOptions, Value};

use super::core::Shared;
use super::handle::{Command, Duplicate, RecentMessage, SeqFloor, SeqRange};
use super::metrics::BridgeMetrics;
use super::wire::{decode_incoming, Incoming};
use super::{keys, presence, BridgeError, PreparedMessage};
use crate::payload_bytes;

/// Other names a batch may also be published to (a DM room's two users).
const MAX_ALSO: usize = 2;

/// Runs one request and answers it.
pub(crate) async fn run(shared: Arc<Shared>, cmd: Command) {
    match cmd {
        Command::Publish {
            room,
            batch,
            also,
            floor,
            notice,
            reply,
        } => {
            let _ = reply.send(publish(&shared, &room, &batch, &also, floor, notice.as_ref()).await);
        }
        Command::RoomSeq { room, reply } => {
            let _ = reply.send(room_seq(&shared, &room).await);
        }
        Command::Subscribers { name, reply } => {
            let _ = reply.send(subscribers(&shared, &name).await);
        }
        Command::RecentAfter { room, after, limit, reply } => {
            let _ = reply.send(recent_after(&shared, &room, after, limit).await);
        }
        Command::PresenceOnline { room, reply } => {
            let _ = reply.send(presence::online(&shared, &room).await);
        }
        Command::Notify { room, frame } => notify(&shared, &room, frame).await,
        Command::PublishEvent { room, frame, reply } => {
            let _ = reply.send(publish_event(&shared, &room, frame).await);
        }
        Command::Lock {
            room,
            token,
            ttl_ms,
            reply,
        } => {
            let _ = reply.send(lock(&shared, &room, token, ttl_ms).await);
        }
        Command::Unlock { room, token, reply } => {
            let _ = reply.send(unlock(&shared, &room, token).await);
        }
        // Handled by the command loop itself.
        Command::Subscribe { .. } | Command::Unsubscribe { .. } | Command::Presence { .. } | Command::Shutdown { .. } => {}
    }
}

/// Awaits one Redis call, recording its round trip and any failure.
pub(crate) async fn timed<T>(
    shared: &Shared,
    op: &'static str,
    call: impl Future<Output = Result<T, fred::error::Error>>,
) -> Result<T, BridgeError> {
    let started = Instant::now();
    let result = call.await;
    shared.metrics.record_rtt(started.elapsed());
    result.map_err(|e| {
        BridgeMetrics::inc(&shared.metrics.errors_total);
        BridgeError::redis(op, e)
    })
}

fn check_batch(shared: &Shared, room: &str, batch: &[PreparedMessage]) -> Result<(), BridgeError> {
    let max = shared.config.batch_max as usize;
    if batch.is_empty() || batch.len() > max {
        return Err(BridgeError::BadMessage(format!(
            "batch of {} messages (1..={max} allowed)",
            batch.len()
        )));
    }
    if room.is_empty() {
        return Err(BridgeError::BadMessage("empty room".into()));
    }
    for m in batch {
        if m.frame().len() > shared.config.max_message_bytes as usize {
            return Err(BridgeError::BadMessage(format!("frame of {} bytes", m.frame().len())));
        }
        if m.room() != room {
            return Err(BridgeError::BadMessage(format!(
                "message for room {:?} in a batch for {room:?}",
                m.room()
            )));
        }
    }
    Ok(())
}

async fn publish(
    shared: &Shared,
    room: &str,
    batch: &[PreparedMessage],
    also: &[String],
    floor: SeqFloor,
    notice: Option<&Bytes>,
) -> Result<SeqRange, BridgeError> {
    check_batch(shared, room, batch)?;
    if let Some(frame) = notice {
        if !matches!(decode_incoming(frame), Ok(Incoming::Event { room: r, .. }) if r == room) {
            return Err(BridgeError::BadMessage("a notice must be an Event frame of its room".into()));
        }
    }
    if also.len() > MAX_ALSO || also.iter().any(|n| n.is_empty() || n == room) {
        return Err(BridgeError::BadMessage(format!("{} other channels for {room:?}", also.len())));
    }
    if !shared.client.is_connected() {
        return Err(BridgeError::Unavailable);
    }
    let mut keys = vec![keys::seq(room), keys::recent(room)];
    let mut args = Vec::with_capacity(7 + also.len() + 4 * batch.len());
    args.push(Value::from(keys::channel(room)));
    args.push(Value::from(i64::from(shared.config.recent_len)));
    args.push(Value::from(if shared.config.sharded_pubsub { "1" } else { "0" }));
    args.push(Value::from(match floor {
        SeqFloor::Off => String::new(),
        SeqFloor::Unknown => "?".to_owned(),
        SeqFloor::At(n) => n.to_string(),
    }));
    args.push(Value::from(shared.config.dedupe_ttl_ms.max(1) as i64));
    args.push(match notice {
        Some(frame) => Value::Bytes(frame.clone()),
        None => Value::from(""),
    });
    // A script may only publish on its own slot's shard channels: with sharded pub/sub the
    // other names' channels (another slot) are left out.
    let also = if shared.config.sharded_pubsub { &[][..] } else { also };
    args.push(Value::from(also.len() as i64));
    args.extend(also.iter().map(|name| Value::from(keys::channel(name))));
    for m in batch {
        args.push(Value::Bytes(m.frame().clone()));
        args.push(Value::from(m.seq_offset() as i64));
        args.push(Value::from(m.slot_offset() as i64));
        match m.dedupe_key().filter(|_| shared.config.dedupe_ttl_ms > 0) {
            Some((key, receipt)) => {
                keys.push(key);
                args.push(Value::from(receipt));
            }
            None => args.push(Value::from("")),
        }
    }
    BridgeMetrics::inc(&shared.metrics.script_calls_total);
    let reply = timed(shared, "publish", shared.publish_script.call(&shared.client, keys, args)).await?;
    let range = published_range(reply, room, batch.len())?;
    shared
        .metrics
        .published_total
        .fetch_add(u64::from(range.count), std::sync::atomic::Ordering::Relaxed);
    Ok(range)
}

/// Reads the publish script's answer for a batch of `n` messages (see [`super::scripts::PUBLISH`]).
fn published_range(reply: Value, room: &str, n: usize) -> Result<SeqRange, BridgeError> {
    let bad = |reply: &Value| BridgeError::Reply {
        op: "publish",
        detail: format!("{reply:?}"),
    };
    if reply.as_u64() == Some(0) {
        return Err(BridgeError::FloorNeeded);
    }
    if let Some(first) = reply.as_u64() {
        return Ok(SeqRange::new(first, n as u32));
    }
    let Value::Array(items) = &reply else { return Err(bad(&reply)) };
    let Some((first, rest)) = items.split_first() else {
        return Err(bad(&reply));
    };
    let first = first.as_u64().ok_or_else(|| bad(&reply))?;
    if rest.len() % 4 != 0 {
        return Err(bad(&reply));
    }
    let mut duplicates: Vec<Duplicate> = Vec::with_capacity(rest.len() / 4);
    for d in rest.chunks_exact(4) {
        let index = d[0].as_u64().filter(|&i| (i as usize) < n).ok_or_else(|| bad(&reply))? as u32;
        if duplicates.last().is_some_and(|p| p.index >= index) {
            return Err(bad(&reply));
        }
        let seq = d[1].as_u64().filter(|&s| s > 0).ok_or_else(|| bad(&reply))?;
        let receipt = d[2].as_str().map(|s| s.into_owned()).ok_or_else(|| bad(&reply))?;
        let frame = match d[3].as_bytes() {
            Some([]) => None,
            Some(f) => match decode_incoming(f) {
                Ok(Incoming::Message { room: r, seq: s, .. }) if r == room && s == seq => Some(Bytes::copy_from_slice(f)),
                _ => return Err(bad(&reply)),
            },
            None => return Err(bad(&reply)),
        };
        duplicates.push(Duplicate {
            index,
            seq,
            receipt,
            frame,
        });
    }
    let count = (n - duplicates.len()) as u32;
    if count > 0 && first == 0 {
        return Err(bad(&reply));
    }
    Ok(SeqRange { first, count, duplicates })
}

/// Publishes an event frame on the room's channel, best effort.
async fn notify(shared: &Shared, room: &str, frame: Bytes) {
    if let Err(e) = publish_event(shared, room, frame).await {
        tracing::debug!(room, error = %e, "bridge: event not published");
    }
}

/// Publishes an event frame on `room`'s channel (see [`super::BridgeHandle::notify`] for
/// what it may be): an error if it is not valid there, or Redis refused it.
async fn publish_event(shared: &Shared, room: &str, frame: Bytes) -> Result<(), BridgeError> {
    let fits = match decode_incoming(&frame) {
        // On the room's channel, or on a user's channel (a DM room's change or receipt for
        // its users).
        Ok(Incoming::Event { room: r, .. } | Incoming::Changed { room: r, .. }) => r == room || keys::user_of(room).is_some(),
        Ok(Incoming::Disconnect { user }) => keys::user_of(room) == Some(user),
        _ => false,
    };
    if !fits || frame.len() > shared.config.max_message_bytes as usize {
        BridgeMetrics::inc(&shared.metrics.errors_total);
        tracing::error!(
            room,
            "bridge: a frame that is not a valid Event or Changed of its room, or Changed or Disconnect for a user, was not published"
        );
        return Err(BridgeError::Reply {
            op: "notify",
            detail: "not an event frame of this channel".into(),
        });
    }
    let (client, channel) = (&shared.client, keys::channel(room));
    let sent: Result<i64, BridgeError> = if shared.config.sharded_pubsub {
        timed(shared, "notify", client.spublish(channel, Value::Bytes(frame))).await
    } else {
        timed(shared, "notify", client.publish(channel, Value::Bytes(frame))).await
    };
    sent.map(drop)
}

/// `SET <room's lock> token NX PX ttl_ms`: whether this caller holds the lock now.
async fn lock(shared: &Shared, room: &str, token: u64, ttl_ms: u64) -> Result<bool, BridgeError> {
    let set = shared.client.set::<Value, _, _>(
        keys::lock(room),
        token.to_string(),
        Some(Expiration::PX(ttl_ms.max(1) as i64)),
        Some(SetOptions::NX),
        false,
    );
    let v = timed(shared, "lock", set).await?;
    Ok(!v.is_null())
}

/// Deletes the room's lock if `token` still holds it (a lock that expired and was taken by
/// another caller stays theirs).
async fn unlock(shared: &Shared, room: &str, token: u64) -> Result<(), BridgeError> {
    const UNLOCK: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";
    let call = shared
        .client
        .eval::<Value, _, _, _>(UNLOCK, vec![keys::lock(room)], vec![token.to_string()]);
    timed(shared, "unlock", call).await.map(drop)
}

async fn room_seq(shared: &Shared, room: &str) -> Result<u64, BridgeError> {
    let v: Option<u64> = timed(shared, "room_seq", shared.client.get(keys::seq(room))).await?;
    Ok(v.unwrap_or(0))
}

async fn subscribers(shared: &Shared, name: &str) -> Result<u64, BridgeError> {
    let channel = keys::channel(name);
    let reply: Value = if shared.config.sharded_pubsub {
        timed(shared, "subscribers", shared.client.pubsub_shardnumsub(channel)).await?
    } else {
        timed(shared, "subscribers", shared.client.pubsub_numsub(channel)).await?
    };
    // `[channel, count]`.
    match reply.into_array().as_slice() {
        [_, count] => count.as_u64().ok_or_else(|| BridgeError::Reply {
            op: "subscribers",
            detail: format!("{count:?}"),
        }),
        other => Err(BridgeError::Reply {
            op: "subscribers",
            detail: format!("{other:?}"),
        }),
    }
}

async fn recent_after(shared: &Shared, room: &str, after: u64, limit: u32) -> Result<Vec<RecentMessage>, BridgeError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let start = format!("{}-0", after.saturating_add(1));
    let reply: Value = timed(
        shared,
        "recent_after",
        shared.client.xrange(keys::recent(room), start, "+", Some(u64::from(limit))),
    )
    .await?;
    let bad = |detail: &str| BridgeError::Reply {
        op: "recent_after",
        detail: detail.into(),
    };
    let mut out = Vec::new();
    for entry in reply.into_array() {
        let mut parts = entry.into_array().into_iter();
        let (Some(id), Some(fields)) = (parts.next(), parts.next()) else {
            return Err(bad("stream entry without id and fields"));
        };
        let frame = field_value(fields, b"f").ok_or_else(|| bad("stream entry without field f"))?;
        let id_seq = id.as_str().and_then(|s| s.split('-').next()?.parse::<u64>().ok());
        match decode_incoming(&frame) {
            Ok(Incoming::Message { room: r, seq, payload }) if r == room && Some(seq) == id_seq => {
                let payload = payload_bytes(&frame, payload);
                out.push(RecentMessage { seq, payload, frame });
            }
            _ => return Err(bad("stream entry is not a valid Deliver frame of this room")),
        }
    }
    Ok(out)
}

/// The value of `name` in a stream entry's fields (a flat array or a map).
fn field_value(fields: Value, name: &[u8]) -> Option<Bytes> {
    if let Value::Map(map) = fields {
        return map
            .inner()
            .into_iter()
            .find(|(k, _)| k.as_bytes() == name)
            .and_then(|(_, v)| v.into_bytes());
    }
    let items = fields.into_array();
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        if k.as_bytes() == Some(name) {
            return v.into_bytes();
        }
    }
    None
}
