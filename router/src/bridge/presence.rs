//! Presence with leases: this node's entries, their renewal every
//! heartbeat, and the sweep that turns other nodes' expired entries into
//! offline notes.
//!
//! Redis holds, per room, a sorted set of `user|node` scored by lease
//! expiry (Redis server time, so node clocks do not matter) and a hash of
//! online users with their entry count and `since`; the presence script
//! keeps both in step and reports each online/offline transition once.
//! The node that caused a transition publishes a [`PresenceNote`] on the
//! room channel, so every subscribed node emits `PresenceChanged`.
//!
//! What must stay true:
//! - This node counts its own joins per (room, user): Redis sees one entry
//!   per user and node, added on the first join and removed after the
//!   last leave, whatever the number of connections.
//! - Every heartbeat renews all of this node's entries and sweeps every
//!   room it has entries in or is subscribed to, so a node that stops
//!   heartbeating has its users offline within lease + heartbeat on every
//!   node that still has members in those rooms.
//! - Joins and leaves are applied in order per room (one batch at a time).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use fred::interfaces::{ClientLike, PubsubInterface};
use fred::types::Value;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::MissedTickBehavior;

use super::core::Shared;
use super::handle::Reply;
use super::ops::timed;
use super::wire::PresenceNote;
use super::{keys, BridgeError};

/// Presence requests handed over by the command loop.
pub(crate) enum PresenceMsg {
    /// One connection joined (`join`) or left a room.
    Op {
        room: String,
        user: String,
        join: bool,
        reply: Reply<()>,
    },
    /// Leave every entry of this node (shutdown).
    LeaveAll { reply: oneshot::Sender<Result<(), BridgeError>> },
}

/// Requests taken in one batch.
const BATCH_MAX: usize = 1024;
/// Rooms renewed concurrently per heartbeat.
const ROOMS_IN_FLIGHT: usize = 64;

/// This node's entries: room -> user -> joins counted.
type Local = HashMap<String, HashMap<String, u32>>;

/// Script operations for one room, and who waits for them.
#[derive(Default)]
struct RoomOps {
    ops: Vec<(&'static str, String)>,
    replies: Vec<Reply<()>>,
}

/// A user who went online or offline, and the node whose entry did it.
type Transition = (String, String, bool);

/// Serves presence requests and runs the heartbeat until the bridge stops.
pub(crate) async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<PresenceMsg>) {
    let mut local = Local::new();
    let mut tick = tokio::time::interval(shared.config.heartbeat());
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = rx.recv() => {
                let Some(msg) = msg else { return };
                let mut batch = vec![msg];
                while batch.len() < BATCH_MAX {
                    match rx.try_recv() {
                        Ok(m) => batch.push(m),
                        Err(_) => break,
                    }
                }
                handle_batch(&shared, &mut local, batch).await;
            }
            _ = tick.tick() => heartbeat(&shared, &local).await,
        }
    }
}

/// Counts a join or leave; returns the script op if Redis must change.
fn count(local: &mut Local, room: &str, user: &str, join: bool) -> Option<&'static str> {
    if join {
        let n = local.entry(room.to_owned()).or_default().entry(user.to_owned()).or_insert(0);
        *n += 1;
        return (*n == 1).then_some("+");
    }
    let users = local.get_mut(room)?;
    let n = users.get_mut(user)?;
    *n -= 1;
    if *n > 0 {
        return None;
    }
    users.remove(user);
    if users.is_empty() {
        local.remove(room);
    }
    Some("-")
}

async fn handle_batch(shared: &Shared, local: &mut Local, batch: Vec<PresenceMsg>) {
    let mut rooms: HashMap<String, RoomOps> = HashMap::new();
    let mut stops = Vec::new();
    for msg in batch {
        match msg {
            PresenceMsg::Op { room, user, join, reply } => match count(local, &room, &user, join) {
                Some(op) => {
                    let r = rooms.entry(room).or_default();
                    r.ops.push((op, user));
                    r.replies.push(reply);
                }
                None => {
                    let _ = reply.send(Ok(()));
                }
            },
            PresenceMsg::LeaveAll { reply } => {
                for (room, users) in local.drain() {
                    let r = rooms.entry(room).or_default();
                    r.ops.extend(users.into_keys().map(|u| ("-", u)));
                }
                stops.push(reply);
            }
        }
    }
    let calls = rooms.into_iter().map(|(room, r)| async move {
        let result = update(shared, &room, "ops", &r.ops).await.map(|_| ());
        for reply in r.replies {
            let _ = reply.send(result.as_ref().copied().map_err(BridgeError::duplicate));
        }
        result
    });
    let results = futures::future::join_all(calls).await;
    let outcome = results.into_iter().find_map(Result::err).map_or(Ok(()), Err);
    for reply in stops {
        let _ = reply.send(outcome.as_ref().copied().map_err(BridgeError::duplicate));
    }
}

/// Renews this node's entries and sweeps every room it knows of.
async fn heartbeat(shared: &Shared, local: &Local) {
    if !shared.client.is_connected() {
        return;
    }
    let mut rooms: BTreeSet<String> = shared.subs().rooms().into_iter().collect();
    rooms.extend(local.keys().cloned());
    futures::stream::iter(rooms)
        .map(|room| async move {
            let ops: Vec<(&'static str, String)> = local
                .get(&room)
                .map(|users| users.keys().map(|u| ("+", u.clone())).collect())
                .unwrap_or_default();
            // Failures are counted in `timed`; the next heartbeat retries.
            let _ = update(shared, &room, "ops", &ops).await;
        })
        .buffer_unordered(ROOMS_IN_FLIGHT)
        .collect::<Vec<()>>()
        .await;
}

/// Who is online in `room` (sweeping first).
pub(crate) async fn online(shared: &Shared, room: &str) -> Result<Vec<(String, u64)>, BridgeError> {
    let reply = call(shared, room, "list", &[]).await?;
    let mut parts = array(reply).into_iter();
    let transitions = parse_transitions(parts.next().unwrap_or(Value::Null))?;
    publish_notes(shared, room, transitions).await;
    let flat = array(parts.next().unwrap_or(Value::Null));
    let mut users = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(user), Some(v)) = (it.next(), it.next()) {
        let user = user.as_string().ok_or_else(|| bad_reply("user is not a string"))?;
        let since = v
            .as_string()
            .and_then(|s| s.split(':').nth(1)?.parse().ok())
            .ok_or_else(|| bad_reply("bad users entry"))?;
        users.push((user, since));
    }
    users.sort_unstable();
    Ok(users)
}

/// Runs the script in `mode` with `ops`, then publishes the transitions.
async fn update(shared: &Shared, room: &str, mode: &str, ops: &[(&'static str, String)]) -> Result<(), BridgeError> {
    let reply = call(shared, room, mode, ops).await?;
    let transitions = parse_transitions(reply)?;
    publish_notes(shared, room, transitions).await;
    Ok(())
}

async fn call(shared: &Shared, room: &str, mode: &str, ops: &[(&'static str, String)]) -> Result<Value, BridgeError> {
    let keys = vec![keys::presence(room), keys::presence_users(room)];
    let lease = i64::try_from(shared.config.presence_lease_ms).unwrap_or(i64::MAX);
    let mut args = Vec::with_capacity(3 + 2 * ops.len());
    args.push(Value::from(mode));
    args.push(Value::from(lease));
    args.push(Value::from(shared.config.node_id.as_str()));
    for (op, user) in ops {
        args.push(Value::from(*op));
        args.push(Value::from(user.as_str()));
    }
    timed(shared, "presence", shared.presence_script.call(&shared.client, keys, args)).await
}

/// The items of an array reply (nil and a missing reply are empty).
fn array(v: Value) -> Vec<Value> {
    match v {
        Value::Null => Vec::new(),
        v => v.into_array(),
    }
}

fn bad_reply(detail: &str) -> BridgeError {
    BridgeError::Reply {
        op: "presence",
        detail: detail.into(),
    }
}

/// Reads the script's flat `user, node, 1|0` list.
fn parse_transitions(reply: Value) -> Result<Vec<Transition>, BridgeError> {
    let flat = array(reply);
    if !flat.len().is_multiple_of(3) {
        return Err(bad_reply("transition list not in triples"));
    }
    let mut out = Vec::with_capacity(flat.len() / 3);
    let mut it = flat.into_iter();
    while let (Some(user), Some(node), Some(online)) = (it.next(), it.next(), it.next()) {
        let (Some(user), Some(node)) = (user.as_string(), node.as_string()) else {
            return Err(bad_reply("transition names are not strings"));
        };
        out.push((user, node, online.as_string().as_deref() == Some("1")));
    }
    Ok(out)
}

/// Publishes one note per transition on the room channel.
async fn publish_notes(shared: &Shared, room: &str, transitions: Vec<Transition>) {
    if transitions.is_empty() {
        return;
    }
    let channel = keys::channel(room);
    let sends = transitions.into_iter().map(|(user, node, online)| {
        let note = PresenceNote {
            room: room.to_owned(),
            user,
            node,
            online,
        }
        .encode();
        let channel = channel.clone();
        async move {
            let client = &shared.client;
            let sent: Result<i64, _> = if shared.config.sharded_pubsub {
                timed(shared, "presence note", client.spublish(channel, Value::Bytes(note))).await
            } else {
                timed(shared, "presence note", client.publish(channel, Value::Bytes(note))).await
            };
            if let Err(e) = sent {
                tracing::warn!(error = %e, "presence note not published");
            }
        }
    });
    futures::future::join_all(sends).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_are_counted_per_room_and_user() {
        let mut l = Local::new();
        assert_eq!(count(&mut l, "r", "u", true), Some("+"));
        assert_eq!(count(&mut l, "r", "u", true), None);
        assert_eq!(count(&mut l, "r", "v", true), Some("+"));
        assert_eq!(count(&mut l, "r", "u", false), None);
        assert_eq!(count(&mut l, "r", "u", false), Some("-"));
        assert_eq!(count(&mut l, "r", "u", false), None);
        assert_eq!(count(&mut l, "r", "v", false), Some("-"));
        assert!(l.is_empty());
    }

    #[test]
    fn transitions_parse() {
        let v = Value::Array(vec!["ann".into(), "n1".into(), "1".into(), "bob".into(), "n2".into(), "0".into()]);
        assert_eq!(
            parse_transitions(v).unwrap(),
            vec![("ann".into(), "n1".into(), true), ("bob".into(), "n2".into(), false)]
        );
        assert!(parse_transitions(Value::Array(vec!["x".into()])).is_err());
        assert!(parse_transitions(Value::Null).unwrap().is_empty());
    }
}
