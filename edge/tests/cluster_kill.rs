//! `durable` cluster mode on a shared PostgreSQL store, one node SIGKILLed mid-stream: every
//! message a client got an `ack` for is in the room's history, on every surviving node, and in
//! PostgreSQL. Three real nodes through a private Redis, a real PostgreSQL (private server or
//! `PG_URL`, a fresh database either way), real clients.
//!
//! Four senders on n1 pipeline sends into one room (up to `WINDOW` each in flight) while a
//! sender on n2 does the same; once `KILL_AFTER` of n1's sends are acked, n1 gets SIGKILL with
//! sends still in flight. The Redis stream keeps only the newest messages (`redis_recent_len`
//! 50, trimmed approximately), and n2 sends `FILLER` more afterwards, so every message of the
//! dead node's run is below the stream: its history comes from PostgreSQL alone.

mod cluster_support;
mod common;
#[path = "../../storage/tests/support/pg.rs"]
mod pg;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cluster_support::{start_cluster_with, Member, Next, ENVS};
use common::{redis_cmd, RedisServer};
use serde_json::{json, Value};
use tungstenite::Message;

const ROOM: &str = "crash";
/// Senders on the node that is killed.
const SENDERS: usize = 4;
/// Sends each of them would make if its node lived (2,000 in all).
const PER_SENDER: usize = 500;
/// Sends each sender on n1 keeps in flight.
const WINDOW: usize = 32;
/// n1 is killed once this many of its senders' sends are acked.
const KILL_AFTER: usize = 400;
/// The surviving sender's window, its cap, and how many it sends after the kill.
const SURVIVOR_WINDOW: usize = 4;
const SURVIVOR_MAX: usize = 3000;
const SURVIVOR_AFTER_KILL: usize = 50;
/// Pipelined sends on n2 after the run, to push every earlier message out of the Redis stream.
const FILLER: usize = 300;
const RECENT_LEN: &str = "50";
const REPLY_WAIT: Duration = Duration::from_secs(10);

/// Counters one or more sender threads share with the main thread.
#[derive(Default)]
struct Progress {
    /// Send frames written to the socket.
    sent: AtomicUsize,
    /// Acks read from it.
    acked: AtomicUsize,
    /// Sender loops that have ended.
    ended: AtomicUsize,
}

/// How a sender's loop ended.
#[derive(Debug)]
enum End {
    /// Every send was answered.
    Done,
    /// The socket failed or closed (the node died).
    Closed(String),
    /// Nothing arrived for `REPLY_WAIT` with sends outstanding.
    Timeout,
}

impl End {
    /// Whether the socket failed or closed, and why.
    fn closed(&self) -> Option<&str> {
        match self {
            Self::Closed(why) => Some(why),
            Self::Done | Self::Timeout => None,
        }
    }
}

/// What one sender did.
struct Run {
    who: String,
    tag: String,
    sent: usize,
    /// (send index, acked seq) in arrival order.
    acks: Vec<(usize, u64)>,
    /// Replies to its sends that were not acks.
    errors: Vec<Value>,
    /// The seqs of the room's `message` frames it received live.
    delivered: BTreeSet<u64>,
    end: End,
}

fn body(tag: &str, i: usize) -> String {
    format!("{tag} body #{i}")
}

/// Sends `body(tag, i)` with id `{tag}-{i}` for i = 0, 1, … while `i < limit` (read before every
/// send, so another thread may move it), keeping up to `window` sends unanswered, and reads
/// replies (skipping the room's `message` frames) until every send is answered or the socket
/// fails. Never panics on a dead node.
fn pipeline(m: &mut Member, tag: &str, limit: &AtomicUsize, window: usize, progress: &Progress) -> Run {
    let _ = m.c.ws.get_ref().set_write_timeout(Some(REPLY_WAIT));
    let prefix = format!("{tag}-");
    let mut run = Run {
        who: m.who(),
        tag: tag.to_owned(),
        sent: 0,
        acks: Vec::new(),
        errors: Vec::new(),
        delivered: BTreeSet::new(),
        end: End::Done,
    };
    let end = 'run: loop {
        let answered = run.acks.len() + run.errors.len();
        while run.sent < limit.load(Ordering::SeqCst) && run.sent - answered < window {
            let i = run.sent;
            let frame = json!({"type": "send", "room": ROOM, "body": body(tag, i), "id": format!("{prefix}{i}")});
            if let Err(e) = m.c.ws.send(Message::text(frame.to_string())) {
                break 'run End::Closed(format!("writing send {i}: {e}"));
            }
            run.sent += 1;
            progress.sent.fetch_add(1, Ordering::SeqCst);
        }
        if answered == run.sent && run.sent >= limit.load(Ordering::SeqCst) {
            break End::Done;
        }
        match m.next(REPLY_WAIT) {
            Next::Frame(v) => {
                let Some(i) = v["id"]
                    .as_str()
                    .and_then(|id| id.strip_prefix(&prefix))
                    .and_then(|i| i.parse::<usize>().ok())
                else {
                    // A `message` (or `presence`) frame of the room.
                    if v["type"] == "message" && v["room"] == ROOM {
                        run.delivered.extend(v["seq"].as_u64());
                    }
                    continue;
                };
                assert!(i < run.sent, "{}: a reply to send {i}, never sent: {v}", run.who);
                if v["type"] == "ack" {
                    assert_eq!(v["room"], ROOM, "{}: ack of another room: {v}", run.who);
                    let seq = v["seq"].as_u64().unwrap_or_else(|| panic!("{}: ack without a seq: {v}", run.who));
                    run.acks.push((i, seq));
                    progress.acked.fetch_add(1, Ordering::SeqCst);
                } else {
                    run.errors.push(v);
                }
            }
            Next::Timeout => break End::Timeout,
            Next::Closed => break End::Closed(m.closed.clone().unwrap_or_default()),
        }
    };
    run.end = end;
    progress.ended.fetch_add(1, Ordering::SeqCst);
    run
}

/// Adds `run`'s acks to `acked` (seq → body); no seq may be acked twice.
fn add_acks(run: &Run, acked: &mut BTreeMap<u64, String>) {
    for &(i, seq) in &run.acks {
        let b = body(&run.tag, i);
        if let Some(other) = acked.insert(seq, b.clone()) {
            panic!("seq {seq} acked twice: to {other:?} and to {b:?}");
        }
    }
}

/// Every message of `room` that PostgreSQL holds: seq → body (from the stored frame).
fn stored_in_postgres(url: &str, room: &str) -> BTreeMap<u64, String> {
    let (url, room) = (url.to_owned(), room.to_owned());
    let rows: Vec<(i64, Vec<u8>)> = pg::block_on(async move {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect");
        let task = tokio::spawn(conn);
        let rows = client
            .query("SELECT seq, frame FROM messages WHERE room = $1 ORDER BY seq", &[&room])
            .await
            .expect("query");
        drop(client);
        let _ = task.await;
        rows.iter().map(|r| (r.get(0), r.get(1))).collect()
    });
    let mut out = BTreeMap::new();
    for (seq, frame) in rows {
        let v: Value = serde_json::from_slice(&frame)
            .unwrap_or_else(|e| panic!("stored frame of seq {seq} is not JSON ({e}): {}", String::from_utf8_lossy(&frame)));
        let body = v["body"]
            .as_str()
            .unwrap_or_else(|| panic!("stored frame of seq {seq} without a body: {v}"));
        assert_eq!(v["seq"].as_i64(), Some(seq), "the stored frame's seq is its row's: {v}");
        out.insert(u64::try_from(seq).expect("seq >= 0"), body.to_owned());
    }
    out
}

/// Pages `room`'s whole history on `m` (newest first, 100 at a time, back to seq 1): every
/// message as (seq, body), oldest first, as the pages gave them.
fn page_history(m: &mut Member, room: &str) -> Vec<(u64, String)> {
    let mut pages: Vec<Vec<(u64, String)>> = Vec::new();
    let mut before: Option<u64> = None;
    for page_no in 0.. {
        assert!(page_no < 500, "{}: history of {room} never reached next_before null", m.who());
        let mut q = json!({"type": "history", "room": room, "limit": 100});
        if let Some(b) = before {
            q["before"] = json!(b);
        }
        let page = m.request(q, &format!("h{page_no}"), REPLY_WAIT);
        assert_eq!(
            page["type"],
            "history",
            "{}: history page {page_no} (before {before:?}): {page}",
            m.who()
        );
        let msgs = page["messages"]
            .as_array()
            .unwrap_or_else(|| panic!("{}: a history page without messages: {page}", m.who()));
        let got: Vec<(u64, String)> = msgs
            .iter()
            .map(|v| {
                let seq = v["seq"].as_u64().unwrap_or_else(|| panic!("history entry without a seq: {v}"));
                let body = v["body"].as_str().unwrap_or_else(|| panic!("history entry without a body: {v}"));
                if let Some(b) = before {
                    assert!(seq < b, "{}: page before {b} holds seq {seq}", m.who());
                }
                (seq, body.to_owned())
            })
            .collect();
        pages.push(got);
        match page["next_before"].as_u64() {
            Some(b) => {
                assert!(
                    before.is_none_or(|old| b < old),
                    "{}: next_before {b} does not go back (was {before:?})",
                    m.who()
                );
                before = Some(b);
            }
            None => break,
        }
    }
    pages.into_iter().rev().flatten().collect()
}

/// Sorted seqs as ranges, `3-5 8 10-11`.
fn ranges(seqs: &[u64]) -> String {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &s in seqs {
        match out.last_mut() {
            Some((_, hi)) if *hi + 1 == s => *hi = s,
            _ => out.push((s, s)),
        }
    }
    let parts: Vec<String> = out
        .iter()
        .map(|&(lo, hi)| if lo == hi { lo.to_string() } else { format!("{lo}-{hi}") })
        .collect();
    parts.join(" ")
}

/// The oldest seq the room's Redis stream still holds (ids `<seq>-0`).
fn oldest_in_stream(redis: &RedisServer, room: &str) -> Option<u64> {
    let key = format!("chat:{{{room}}}:recent");
    let raw = redis_cmd(redis.port(), &["XRANGE", &key, "-", "+", "COUNT", "1"]);
    raw.split("\r\n")
        .find_map(|l| l.strip_suffix("-0").and_then(|s| s.parse::<u64>().ok()))
}

#[test]
fn a_node_killed_mid_stream_loses_no_acked_message_in_durable_mode() {
    let started = Instant::now();
    let redis = RedisServer::start();
    let db = pg::TestDb::create();
    let mut envs = ENVS.to_vec();
    envs.extend([
        ("EDGE_DURABILITY", "durable"),
        ("EDGE_STORE", "postgres"),
        ("EDGE_POSTGRES_URL", db.url.as_str()),
        ("EDGE_REDIS_RECENT_LEN", RECENT_LEN),
    ]);
    let mut nodes = start_cluster_with(3, &redis, &envs);
    let mut doomed: Vec<Member> = (0..SENDERS).map(|i| Member::connect(&nodes[0], "n1", &format!("k{i}"))).collect();
    for m in &mut doomed {
        m.join(ROOM);
    }
    let mut survivor = Member::connect(&nodes[1], "n2", "live");
    survivor.join(ROOM);
    eprintln!("cluster up and joined in {:?}", started.elapsed());

    let (on_n1, on_n2) = (Progress::default(), Progress::default());
    let per_sender: Vec<AtomicUsize> = (0..SENDERS).map(|_| AtomicUsize::new(PER_SENDER)).collect();
    let survivor_limit = AtomicUsize::new(SURVIVOR_MAX);
    let stream_start = Instant::now();
    let (runs, live, at_kill) = std::thread::scope(|scope| {
        let doomed_threads: Vec<_> = doomed
            .iter_mut()
            .enumerate()
            .map(|(i, m)| {
                let (limit, progress) = (&per_sender[i], &on_n1);
                scope.spawn(move || pipeline(m, &format!("k{i}"), limit, WINDOW, progress))
            })
            .collect();
        let (limit, progress) = (&survivor_limit, &on_n2);
        let survivor_thread = scope.spawn(|| pipeline(&mut survivor, "live", limit, SURVIVOR_WINDOW, progress));

        // Kill n1 once KILL_AFTER of its sends are acked, with the rest in flight.
        let deadline = Instant::now() + Duration::from_secs(30);
        while on_n1.acked.load(Ordering::SeqCst) < KILL_AFTER {
            assert!(
                on_n1.ended.load(Ordering::SeqCst) == 0 && Instant::now() < deadline,
                "n1's senders did not get {KILL_AFTER} acks: {} acked of {} sent, {} loops ended",
                on_n1.acked.load(Ordering::SeqCst),
                on_n1.sent.load(Ordering::SeqCst),
                on_n1.ended.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        let at_kill = (
            on_n1.sent.load(Ordering::SeqCst),
            on_n1.acked.load(Ordering::SeqCst),
            on_n2.acked.load(Ordering::SeqCst),
            stream_start.elapsed(),
        );
        nodes[0].kill9();
        // The survivor goes on a little past the kill, then finishes.
        let more = on_n2.sent.load(Ordering::SeqCst) + SURVIVOR_AFTER_KILL;
        survivor_limit.store(more.min(SURVIVOR_MAX), Ordering::SeqCst);
        let runs: Vec<Run> = doomed_threads.into_iter().map(|t| t.join().expect("sender thread")).collect();
        let live = survivor_thread.join().expect("survivor thread");
        (runs, live, at_kill)
    });
    let (sent_at_kill, acked_at_kill, live_acked_at_kill, kill_after) = at_kill;
    eprintln!(
        "n1 killed {kill_after:?} into the stream: {sent_at_kill} of its sends written, {acked_at_kill} acked; \
         n2's sender had {live_acked_at_kill} acks"
    );

    // The run was not vacuous: acks came before the kill, sends were in flight at the kill, and
    // every sender on n1 lost its connection (none finished, none stalled).
    assert!(acked_at_kill >= KILL_AFTER, "{acked_at_kill} acks before the kill");
    assert!(
        sent_at_kill > acked_at_kill,
        "sends in flight at the kill: {sent_at_kill} sent, {acked_at_kill} acked"
    );
    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    let (mut n1_sent, mut n1_acked) = (0, 0);
    for run in &runs {
        eprintln!(
            "{}: {} sent, {} acked, {} errors, ended {:?}",
            run.who,
            run.sent,
            run.acks.len(),
            run.errors.len(),
            run.end
        );
        assert!(
            run.end.closed().is_some(),
            "{}: n1's sender ended {:?}, not by the kill",
            run.who,
            run.end
        );
        assert!(
            run.errors.is_empty(),
            "{}: error replies before the kill: {:?}",
            run.who,
            run.errors
        );
        n1_sent += run.sent;
        n1_acked += run.acks.len();
        add_acks(run, &mut acked);
    }
    let n1_acked_seqs: BTreeSet<u64> = acked.keys().copied().collect();
    assert!(
        n1_sent > n1_acked,
        "some of n1's sends were never acked ({n1_sent} sent, {n1_acked} acked)"
    );
    eprintln!(
        "{}: {} sent, {} acked, {} errors, ended {:?}",
        live.who,
        live.sent,
        live.acks.len(),
        live.errors.len(),
        live.end
    );
    assert!(
        matches!(live.end, End::Done) && live.errors.is_empty() && live.acks.len() == live.sent,
        "n2's sender: every send acked through n1's death: {} sent, {} acked, ended {:?}, errors {:?}",
        live.sent,
        live.acks.len(),
        live.end,
        live.errors
    );
    add_acks(&live, &mut acked);

    // n2 sends on, so the stream holds only newer messages.
    let filler_limit = AtomicUsize::new(FILLER);
    let filler = pipeline(&mut survivor, "after", &filler_limit, 16, &Progress::default());
    assert!(
        matches!(filler.end, End::Done) && filler.acks.len() == FILLER && filler.errors.is_empty(),
        "the filler sends on n2: {} acked, ended {:?}, errors {:?}",
        filler.acks.len(),
        filler.end,
        filler.errors
    );
    add_acks(&filler, &mut acked);
    let oldest = oldest_in_stream(&redis, ROOM).expect("the room's stream holds messages");
    let n1_last = *n1_acked_seqs.last().expect("n1 acks");
    assert!(
        oldest > n1_last,
        "every acked message of n1 must be below the stream (oldest in stream {oldest}, n1's last ack {n1_last}), \
         so history has to read it from PostgreSQL"
    );
    let top = *acked.keys().last().expect("acks");

    // PostgreSQL holds every acked message, with its body.
    let stored = stored_in_postgres(&db.url, ROOM);
    let missing_in_pg: Vec<u64> = acked.keys().filter(|s| !stored.contains_key(s)).copied().collect();
    assert!(
        missing_in_pg.is_empty(),
        "{} acked messages are not in PostgreSQL (of {} acked): {missing_in_pg:?}",
        missing_in_pg.len(),
        acked.len()
    );
    for (seq, b) in &acked {
        assert_eq!(&stored[seq], b, "PostgreSQL's body of acked seq {seq}");
    }
    let unacked_n1_in_pg = stored.len() - acked.len();
    eprintln!(
        "seqs 1..={top}: {} acked ({} from n1), {} in PostgreSQL ({unacked_n1_in_pg} sequenced on n1 but never acked); \
         stream starts at {oldest}",
        acked.len(),
        n1_acked_seqs.len(),
        stored.len()
    );

    // Every surviving node pages the whole history: each acked message once, with its body,
    // and everything PostgreSQL holds.
    for (n, node) in nodes.iter().enumerate().skip(1) {
        let mut reader = Member::connect(node, &format!("n{}", n + 1), &format!("reader{n}"));
        let history = page_history(&mut reader, ROOM);
        let mut seen = BTreeSet::new();
        let dups: Vec<u64> = history.iter().filter(|(s, _)| !seen.insert(*s)).map(|(s, _)| *s).collect();
        assert!(dups.is_empty(), "n{}: history repeats seqs {dups:?}", n + 1);
        assert!(history.windows(2).all(|w| w[0].0 < w[1].0), "n{}: history is in seq order", n + 1);
        let by_seq: BTreeMap<u64, &str> = history.iter().map(|(s, b)| (*s, b.as_str())).collect();
        let lost: Vec<u64> = acked.keys().filter(|s| !by_seq.contains_key(s)).copied().collect();
        let lost_n1: Vec<u64> = lost.iter().filter(|s| n1_acked_seqs.contains(s)).copied().collect();
        assert!(
            lost.is_empty(),
            "n{}: {} acked messages missing from history ({} of them n1's): {lost:?}",
            n + 1,
            lost.len(),
            lost_n1.len()
        );
        for (seq, b) in &acked {
            assert_eq!(by_seq[seq], b, "n{}: history's body of acked seq {seq}", n + 1);
        }
        let not_shown: Vec<u64> = stored.keys().filter(|s| !by_seq.contains_key(s)).copied().collect();
        assert!(
            not_shown.is_empty(),
            "n{}: stored messages missing from history: {not_shown:?}",
            n + 1
        );
        assert_eq!(
            history.last().map(|(s, _)| *s),
            Some(top),
            "n{}: history ends at the last ack",
            n + 1
        );
        // Seqs Redis gave n1's messages that never reached PostgreSQL: not acked, so allowed to
        // be gone (the protocol says members may get a durable message before its commit).
        let absent: Vec<u64> = (1..top).filter(|s| !by_seq.contains_key(s)).collect();
        let seen_live = absent.iter().filter(|s| live.delivered.contains(s)).count();
        eprintln!(
            "n{}: history holds {} messages up to seq {top}; {} seqs absent (sequenced for n1, never stored), \
             {seen_live} of them delivered live to n2's sender: {}",
            n + 1,
            history.len(),
            absent.len(),
            ranges(&absent)
        );
    }
    eprintln!("total {:?}", started.elapsed());
}
