//! The deterministic harness for the Redis sequencer: two nodes of two
//! shards, each shard with its `Publisher` (owner side) and `Subscriber`
//! (member side), and a fake Redis that sequences each room, keeps its
//! stream and fans messages out in publish order. Every bridge call is
//! answered when the seeded RNG says so (sometimes with an error);
//! deliveries reach each shard in order, at random times. Each seed runs in
//! two modes:
//! - direct: Redis delivers to the subscribed shards, and on half the seeds
//!   loses some on their way to a shard (which then sees a hole, reads it
//!   and holds what follows);
//! - through the pump, as a node does: Redis delivers to each subscribed
//!   node's bridge (`bridge.rs`: its seq check, and a resync after each
//!   lost delivery), whose `Pump` forwards to the node's shards, recovers
//!   jumps and resyncs with reads of the stream answered (or failed) at
//!   random times; pub/sub loses deliveries on half the seeds.
//!
//! Clients are authenticated sessions: every join, leave and send is a JSON
//! frame through `engine::session`, as on a shard.
//!
//! A failure prints its seed and mode; `HARNESS_SEED=N` replays it.
//!
//! Checked: every join and send gets exactly one answer; each member sees
//! its room gap-free from its `joined` (or `since`) on, and a `gap` names
//! only seqs the stream no longer holds (or a hole whose every read failed,
//! or a pump's recovery whose read failed); a `(room, seq)` names one
//! message.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use router::bridge::{BridgeError, PreparedMessage, SeqRange};
use router::ArchivedFrame;
use serde_json::Value;

use super::owner::SendArgs;
use super::publisher::{PubEffect, Publisher, PublisherConfig};
use super::pump::{PumpCall, PumpEffect};
use super::session::Step;
use super::subscriber::{Fate, JoinReq, SubEffect, Subscriber, SubscriberConfig, MAX_REPAIR_READS};
use super::Failure;
use crate::metrics::ShardStats;
use crate::room::owner as owner_of;

mod bridge;
mod checks;
mod clients;
mod seeds;

use super::harness_sessions::SessionCtx;
use bridge::{NodeBridge, Stored};
use clients::Client;

const NODES: usize = 2;
const SHARDS: usize = 2;
const ROOMS: [&str; 3] = ["a", "b", "c"];
const STREAM_LEN: usize = 6;

/// A shard, global index `node * SHARDS + shard`.
type Sid = usize;

/// A bridge call waiting for its answer.
enum Call {
    Publish {
        sid: Sid,
        room: String,
        batch: Vec<PreparedMessage>,
    },
    Subscribe {
        sid: Sid,
        token: u64,
    },
    RoomSeq {
        sid: Sid,
        token: u64,
        room: String,
    },
    Fetch {
        sid: Sid,
        token: u64,
        room: String,
        after: u64,
        count: u32,
    },
    /// A node's pump reads Redis.
    Pump {
        node: usize,
        call: PumpCall,
    },
}

struct World {
    rng: StdRng,
    sessions: SessionCtx,
    /// Leaves made.
    leaves: u64,
    /// Pub/sub's losses, drawn apart so `rng`'s draws (and the recorded seeds) stay as they were.
    loss: Option<StdRng>,
    /// Failed reads of a hole, by (shard, room, last seq of the hole): a hole whose every
    /// read failed may be named a gap.
    failed_holes: HashMap<(Sid, String, u64), u32>,
    /// Reads of a hole made by shards.
    repair_reads: u64,
    /// Reads of the stream made by pumps.
    recovery_reads: u64,
    publishers: Vec<Publisher>,
    subscribers: Vec<Subscriber>,
    /// Redis: per room, the last seq and the stream (newest `STREAM_LEN`).
    seqs: HashMap<String, u64>,
    streams: HashMap<String, VecDeque<Stored>>,
    /// Redis pub/sub: which shards receive each room.
    subscribed: HashMap<String, BTreeSet<Sid>>,
    calls: Vec<Call>,
    /// Per shard, the mesh frames on its way (room deliveries, the pump's gaps), in order.
    inbox: Vec<VecDeque<Bytes>>,
    /// Pump mode: each node's bridge and pump.
    nodes: Option<Vec<NodeBridge>>,
    /// Pump reads that failed, by (node, room, last seq read): a gap of that node may
    /// name what they were for.
    failed_recoveries: HashSet<(usize, String, u64)>,
    clients: BTreeMap<u64, Client>,
    next: u64,
    answers: BTreeMap<String, u32>,
    names: HashMap<(String, u64), String>,
}

/// `HARNESS_TRACE=1` prints every step (use with `HARNESS_SEED`).
fn trace(what: impl FnOnce() -> String) {
    thread_local!(static ON: bool = std::env::var_os("HARNESS_TRACE").is_some());
    if ON.with(|on| *on) {
        eprintln!("{}", what());
    }
}

fn sid_of(conn: u64) -> Sid {
    (conn >> 48) as usize
}

fn json(b: &Bytes) -> Value {
    serde_json::from_slice(b).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(b)))
}

impl World {
    fn new(seed: u64, via_pump: bool) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let stats: Arc<Vec<ShardStats>> = Arc::new((0..NODES * SHARDS).map(|_| ShardStats::default()).collect());
        let ring_cap = rng.random_range(0..5);
        // Half the seeds bound the rings in bytes too (a few messages' worth), without a draw
        // from `rng`: the seeds recorded below keep exercising what they found.
        let ring_max_bytes = if seed.is_multiple_of(2) {
            usize::MAX
        } else {
            150 + (seed as usize % 400)
        };
        let publishers = (0..NODES * SHARDS)
            .map(|sid| {
                let cfg = PublisherConfig {
                    node_id: format!("n{}", sid / SHARDS),
                    shard: sid,
                    dedupe_per_room: 64,
                    room_queue_max: 4,
                    batch_max: 3,
                    max_rooms: 100,
                    room_idle_evict_ms: if seed % 3 == 1 { 5 } else { 0 },
                    store_writes: false,
                    ack_on_commit: false,
                };
                Publisher::new(cfg, stats.clone())
            })
            .collect();
        let subscribers = (0..NODES * SHARDS)
            .map(|_| {
                Subscriber::new(SubscriberConfig {
                    ring_cap,
                    ring_max_bytes,
                    max_catch_up_messages: 20,
                    run_epoch: 1,
                })
            })
            .collect();
        let sessions = SessionCtx::new(ROOMS.len());
        let session = sessions.authenticated("u");
        let mut clients = BTreeMap::new();
        for sid in 0..NODES * SHARDS {
            for n in 1..=2u64 {
                clients.insert(((sid as u64) << 48) | n, Client::new(&session));
            }
        }
        Self {
            rng,
            sessions,
            leaves: 0,
            loss: matches!(seed % 4, 1 | 2).then(|| StdRng::seed_from_u64(seed ^ 0x5eed_1055)),
            failed_holes: HashMap::new(),
            repair_reads: 0,
            recovery_reads: 0,
            publishers,
            subscribers,
            seqs: HashMap::new(),
            streams: HashMap::new(),
            subscribed: HashMap::new(),
            calls: Vec::new(),
            inbox: vec![VecDeque::new(); NODES * SHARDS],
            nodes: via_pump.then(|| (0..NODES).map(|_| NodeBridge::new(SHARDS)).collect()),
            failed_recoveries: HashSet::new(),
            clients,
            next: 0,
            answers: BTreeMap::new(),
            names: HashMap::new(),
        }
    }

    fn req(&mut self) -> String {
        self.next += 1;
        let id = format!("\"r{}\"", self.next);
        self.answers.insert(id.clone(), 0);
        id
    }

    fn answered(&mut self, id: &str) {
        *self
            .answers
            .get_mut(&format!("\"{id}\""))
            .unwrap_or_else(|| panic!("answer to unknown {id}")) += 1;
    }

    fn drain(&mut self, sid: Sid) {
        while let Some(e) = self.publishers[sid].poll() {
            match e {
                PubEffect::Publish { room, batch, .. } => self.calls.push(Call::Publish { sid, room, batch }),
                PubEffect::LoadFloor { .. } => unreachable!("the harness's publishers keep no store"),
                PubEffect::Reply { conn, payload } => self.deliver_to_client(conn, &payload),
                PubEffect::Store { .. } => unreachable!("the harness's publishers keep no store"),
            }
        }
        while let Some(e) = self.subscribers[sid].poll() {
            self.sub_effect(sid, e);
        }
    }

    fn sub_effect(&mut self, sid: Sid, e: SubEffect) {
        trace(|| format!("shard {sid} subscriber -> {e:?}"));
        match e {
            SubEffect::Subscribe { token, room, .. } => {
                // Redis routes the room's messages to the shard (or its node) from the moment
                // it asks.
                let subs = self.subscribed.entry(room.clone()).or_default();
                let node_had_it = subs.iter().any(|&s| s / SHARDS == sid / SHARDS);
                subs.insert(sid);
                if let (Some(nodes), false) = (&mut self.nodes, node_had_it) {
                    nodes[sid / SHARDS].subscribed(&room);
                }
                self.calls.push(Call::Subscribe { sid, token });
            }
            SubEffect::RoomSeq { token, room } => self.calls.push(Call::RoomSeq { sid, token, room }),
            SubEffect::Fetch { token, room, after, count } => self.calls.push(Call::Fetch {
                sid,
                token,
                room,
                after,
                count,
            }),
            SubEffect::Unsubscribe { room } => {
                self.subscribed.entry(room).or_default().remove(&sid);
            }
            SubEffect::Presence { .. } => {}
            SubEffect::Joined {
                conn,
                room,
                payload,
                catch_up,
            } => {
                let v = json(&payload);
                self.answered(v["id"].as_str().expect("joined id"));
                let c = self.clients.get_mut(&conn).expect("client");
                let token = c.joins.remove(&room).expect("a Joined answers a standing join");
                let since = c.since.remove(&token).flatten();
                let seq = v["seq"].as_u64().expect("seq");
                c.member.insert(room, since.unwrap_or(seq).min(seq));
                for f in catch_up {
                    self.deliver_to_client(conn, &f);
                }
            }
            SubEffect::Refused { conn, room, payload } => {
                self.answered(json(&payload)["id"].as_str().expect("refusal id"));
                // As the shell does: the session forgets the refused room.
                let c = self.clients.get_mut(&conn).expect("client");
                c.joins.remove(&room);
                c.session.forget_room(&room);
            }
            SubEffect::Cancelled { req, .. } => {
                let req = req.expect("every join has an id");
                self.answered(req.trim_matches('"'));
            }
            SubEffect::Deliver { room, payload, .. } | SubEffect::Event { room, payload } => {
                self.deliver_to_members(sid, &room, &payload);
            }
        }
    }

    /// A client sends a request; its session checks it (the harness makes only requests
    /// the checks let through) and the shard acts on what comes out, as `shard/requests.rs`
    /// does.
    fn client_step(&mut self) {
        let ids: Vec<u64> = self.clients.keys().copied().collect();
        let conn = ids[self.rng.random_range(0..ids.len())];
        let sid = sid_of(conn);
        let room = ROOMS[self.rng.random_range(0..ROOMS.len())].to_owned();
        let joined = self.clients[&conn].session.rooms().contains(&room);
        match (joined, self.rng.random_range(0..10)) {
            (false, _) => {
                let since = self.rng.random_bool(0.5).then(|| self.rng.random_range(0..12));
                let req = self.req();
                let token = self.next;
                let text = match since {
                    Some(s) => format!(r#"{{"type":"join","room":"{room}","id":{req},"since":{s}}}"#),
                    None => format!(r#"{{"type":"join","room":"{room}","id":{req}}}"#),
                };
                let (id, step) = self.request(conn, &text);
                let Step::Join { room: r, since: s } = step else {
                    panic!("conn {conn:x}: the session refused {text}: {step:?}")
                };
                assert_eq!((id, r.as_ref(), s), (Some(req.as_str()), room.as_str(), since));
                let c = self.clients.get_mut(&conn).expect("client");
                c.joins.insert(room.clone(), token);
                c.since.insert(token, since);
                let j = JoinReq {
                    room: &room,
                    conn,
                    token,
                    req: id,
                    since,
                    user: "u",
                };
                trace(|| format!("shard {sid}: {j:?}"));
                self.subscribers[sid].join(j);
            }
            (true, 0..=2) => {
                // Numbered apart from the request counter, which is also the harness's clock.
                self.leaves += 1;
                let req = format!("\"l{}\"", self.leaves);
                self.answers.insert(req.clone(), 0);
                let text = format!(r#"{{"type":"leave","room":"{room}","id":{req}}}"#);
                let (id, step) = self.request(conn, &text);
                let Step::Leave { room: r } = step else {
                    panic!("conn {conn:x}: the session refused {text}: {step:?}")
                };
                assert_eq!((id, r.as_ref()), (Some(req.as_str()), room.as_str()));
                assert!(
                    !self.clients[&conn].session.rooms().contains(&room),
                    "a leave takes the room off the session"
                );
                // The shell answers `left` at once.
                self.answered(req.trim_matches('"'));
                let c = self.clients.get_mut(&conn).expect("client");
                c.joins.remove(&room);
                let was_member = c.member.remove(&room).is_some();
                trace(|| format!("shard {sid}: conn {conn:x} leaves {room} (member: {was_member})"));
                self.subscribers[sid].leave(&room, conn, "u", was_member);
            }
            _ => {
                let req = self.req();
                let text = format!(r#"{{"type":"send","room":"{room}","body":"m{}","id":{req}}}"#, self.next);
                let (id, step) = self.request(conn, &text);
                let Step::Send { room: r, send } = step else {
                    panic!("conn {conn:x}: the session refused {text}: {step:?}")
                };
                assert_eq!(r, room);
                let a = SendArgs::of_req(&r, (sid, conn), "u", id, &send);
                // The room's owner shard on this node (the mesh hop is in order, modelled as direct).
                let owner = (sid / SHARDS) * SHARDS + owner_of(&room, SHARDS);
                self.publishers[owner].send(&a, self.next);
                self.drain(owner);
            }
        }
        self.drain(sid);
    }

    /// `text` from client `conn` through its session, at the request counter's clock.
    fn request<'a>(&mut self, conn: u64, text: &'a str) -> (Option<&'a str>, Step<'a>) {
        let mono_ns = self.next * 1_000_000;
        let c = self.clients.get_mut(&conn).expect("client");
        self.sessions.frame(&mut c.session, text, mono_ns)
    }

    /// Redis answers one pending call.
    fn answer_step(&mut self) {
        if self.calls.is_empty() {
            return;
        }
        let i = self.rng.random_range(0..self.calls.len());
        let fail = self.rng.random_bool(0.05);
        let sid = match self.calls.swap_remove(i) {
            Call::Publish { sid, room, batch } => {
                let result = if fail {
                    Err(BridgeError::Unavailable)
                } else {
                    Ok(self.sequence(&room, &batch))
                };
                self.publishers[sid].published(&room, result);
                sid
            }
            Call::Subscribe { sid, token } => {
                trace(|| format!("shard {sid} <- subscribed {token} (fail {fail})"));
                let r = if fail {
                    Err(Failure::Redis(BridgeError::Unavailable))
                } else {
                    Ok(None)
                };
                self.subscribers[sid].subscribed(token, r);
                sid
            }
            Call::RoomSeq { sid, token, room } => {
                trace(|| format!("shard {sid} <- room seq {token} {room}: {:?} (fail {fail})", self.seqs.get(&room)));
                let r = if fail {
                    Err(Failure::RedisTimedOut)
                } else {
                    Ok(self.seqs.get(&room).copied().unwrap_or(0))
                };
                self.subscribers[sid].room_seq(token, r);
                sid
            }
            Call::Fetch {
                sid,
                token,
                room,
                after,
                count,
            } => {
                let stream = self.streams.get(&room).cloned().unwrap_or_default();
                let msgs: Vec<(u64, Bytes)> = stream
                    .into_iter()
                    .filter(|m| m.seq > after)
                    .take(count as usize)
                    .map(|m| (m.seq, m.payload))
                    .collect();
                trace(|| {
                    format!(
                        "shard {sid} <- fetched {token} {room} after {after} (fail {fail}): {:?}",
                        msgs.iter().map(|m| m.0).collect::<Vec<_>>()
                    )
                });
                self.repair_reads += u64::from(token >= 1 << 62);
                if fail && token >= 1 << 62 {
                    // A repair's read: once all its reads fail, its hole may be named a gap.
                    *self.failed_holes.entry((sid, room.clone(), after + u64::from(count))).or_default() += 1;
                }
                self.subscribers[sid].fetched(token, if fail { Err(Failure::RedisTimedOut) } else { Ok(msgs) });
                sid
            }
            Call::Pump { node, call } => {
                trace(|| format!("node {node} pump <- {call:?} (fail {fail})"));
                self.recovery_reads += u64::from(matches!(call, PumpCall::Recent { .. }));
                let answer = if fail {
                    if let PumpCall::Recent { room, after, count } = &call {
                        self.failed_recoveries.insert((node, room.clone(), after + u64::from(*count)));
                    }
                    bridge::failed(&call)
                } else {
                    bridge::answer(&call, &self.seqs, &self.streams)
                };
                let effects = self.nodes.as_mut().expect("pump mode")[node].answered(answer, self.next);
                return self.pump_effects(node, effects);
            }
        };
        self.drain(sid);
    }

    /// Carries out a node's pump effects: frames onto its shards' rings, a read for Redis.
    fn pump_effects(&mut self, node: usize, effects: Vec<PumpEffect>) {
        for e in effects {
            trace(|| format!("node {node} pump -> {e:?}"));
            match e {
                PumpEffect::Send { shard, frame } => self.inbox[node * SHARDS + usize::from(shard)].push_back(frame),
                PumpEffect::Call(call) => self.calls.push(Call::Pump { node, call }),
            }
        }
    }

    /// The sequencing script: seqs, the stream, and the fan-out to every subscribed shard.
    fn sequence(&mut self, room: &str, batch: &[PreparedMessage]) -> SeqRange {
        let seq = self.seqs.entry(room.to_owned()).or_insert(0);
        let first = *seq + 1;
        for m in batch {
            *seq += 1;
            trace(|| format!("redis: {room}/{seq} to {:?}", self.subscribed.get(room)));
            let frame = m.patched(*seq);
            let Ok(ArchivedFrame::Deliver { payload, .. }) = router::decode(&frame) else {
                panic!("a Deliver frame")
            };
            let payload = Bytes::copy_from_slice(payload.as_slice());
            let stored = Stored {
                seq: *seq,
                payload: payload.clone(),
                frame: frame.clone(),
            };
            let stream = self.streams.entry(room.to_owned()).or_default();
            stream.push_back(stored);
            if stream.len() > STREAM_LEN {
                stream.pop_front();
            }
            let subs: Vec<Sid> = self.subscribed.get(room).into_iter().flatten().copied().collect();
            let Some(nodes) = &mut self.nodes else {
                for sid in subs {
                    if self.loss.as_mut().is_some_and(|l| l.random_bool(0.15)) {
                        trace(|| format!("redis: {room}/{seq} lost on its way to shard {sid}"));
                        continue;
                    }
                    self.inbox[sid].push_back(frame.clone());
                }
                continue;
            };
            for (node, bridge) in nodes.iter_mut().enumerate() {
                let shards: Vec<u16> = subs.iter().filter(|&&s| s / SHARDS == node).map(|&s| (s % SHARDS) as u16).collect();
                if shards.is_empty() {
                    continue;
                }
                if self.loss.as_mut().is_some_and(|l| l.random_bool(0.15)) {
                    trace(|| format!("redis: {room}/{seq} lost on its way to node {node}"));
                    let rooms = self
                        .subscribed
                        .iter()
                        .filter(|(_, s)| s.iter().any(|&sid| sid / SHARDS == node))
                        .map(|(r, _)| r.clone())
                        .collect::<BTreeSet<_>>();
                    bridge.lost(rooms.into_iter().collect());
                    continue;
                }
                bridge.receive(room, *seq, payload.clone(), frame.clone(), shards);
            }
        }
        SeqRange::new(first, batch.len() as u32)
    }

    /// A shard takes the next frame on its ring, or (pump mode) a node's pump the next
    /// event of its bridge.
    fn deliver_step(&mut self) {
        let mut busy: Vec<usize> = (0..self.inbox.len()).filter(|&s| !self.inbox[s].is_empty()).collect();
        if let Some(nodes) = &self.nodes {
            busy.extend((0..NODES).filter(|&n| nodes[n].ready()).map(|n| NODES * SHARDS + n));
        }
        if busy.is_empty() {
            return;
        }
        let pick = busy[self.rng.random_range(0..busy.len())];
        if let Some(node) = pick.checked_sub(NODES * SHARDS) {
            let effects = self.nodes.as_mut().expect("pump mode")[node].step(self.next);
            return self.pump_effects(node, effects);
        }
        let sid = pick;
        let frame = self.inbox[sid].pop_front().expect("non-empty");
        match router::decode(&frame) {
            Ok(ArchivedFrame::Deliver { room, seq, payload, .. }) => {
                let (room, seq) = (room.as_str(), seq.to_native());
                let payload = Bytes::copy_from_slice(payload.as_slice());
                trace(|| format!("shard {sid} <- deliver {room}/{seq}"));
                if self.subscribers[sid].deliver(room, seq, &payload) == Fate::Members {
                    self.deliver_to_members(sid, room, &payload);
                }
            }
            Ok(ArchivedFrame::Gap { room, from, to, payload }) => {
                let (room, from, to) = (room.as_str(), from.to_native(), to.to_native());
                let notice = Bytes::copy_from_slice(payload.as_slice());
                trace(|| format!("shard {sid} <- gap {room}/{from}..={to}"));
                self.subscribers[sid].skip(room, from, to, &notice);
            }
            other => panic!("shard {sid}: a frame the harness does not make: {other:?}"),
        }
        self.drain(sid);
    }

    fn run(&mut self, steps: usize) {
        for _ in 0..steps {
            match self.rng.random_range(0..10) {
                0..=3 => self.client_step(),
                4..=6 => self.answer_step(),
                _ => self.deliver_step(),
            }
            // The shell's tick, on the request counter's clock: idle rooms are forgotten
            // (configured on a third of the seeds; no draw, so recorded seeds replay).
            for p in &mut self.publishers {
                p.evict_idle(self.next);
            }
        }
        for _ in 0..100_000 {
            let pumps_idle = self.nodes.as_ref().is_none_or(|n| n.iter().all(NodeBridge::idle));
            if self.calls.is_empty() && self.inbox.iter().all(VecDeque::is_empty) && pumps_idle {
                break;
            }
            self.answer_step();
            self.deliver_step();
        }
        for (id, n) in &self.answers {
            assert_eq!(*n, 1, "request {id} got {n} answers");
        }
    }
}
