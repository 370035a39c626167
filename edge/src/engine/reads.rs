//! The reads a cluster answers from Redis and the shared store, sans-IO: a
//! `history` page, a thread's page, a room's `presence`, and a member
//! shard's catch-up fetch. Each is a short chain of calls (Redis's counter
//! for the room, its recent stream, then the store for what the stream no
//! longer holds and for the current version of what it does). The chain is
//! decided here; the shell (`shard/cluster_reads.rs`) makes each call and
//! hands its answer back with [`Reads::answered`].
//!
//! Events are method calls (a read with the id the shell gave it, each
//! call's answer, with `now_ms`); effects are pulled with [`Reads::poll`]:
//! calls to make (each with the time by which the shell answers it, failed
//! if it must), replies for connections, fetched catch-ups for the member
//! side.
//!
//! What must stay true:
//! - every read gets exactly one answer (a `Reply` for a client's read, a
//!   `Fetched` for a catch-up), whatever its calls answer, and one call of a
//!   read is out at a time;
//! - a Redis failure fails the read (`unavailable` with `retry_ms`); a store
//!   that fails or is late only leaves the page as the stream has it (the
//!   stream's part is right; the store adds older messages, edits and
//!   deletes, reactions and reply counts), and no further store call is made
//!   for that read;
//! - a client's read has one deadline for all its calls
//!   (`cluster_join_timeout_ms` from its start); a catch-up gives each call
//!   its own, as a join's other calls have.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use storage::{Answer, Query, ReactionCount};

use super::{change_rules, Failure};
use crate::protocol::{server, ErrorCode};
use crate::room::{fit_page, fit_page_seqs};

#[cfg(test)]
mod tests;

/// What the reads are configured with.
#[derive(Debug, Clone)]
pub struct ReadsConfig {
    /// How long a client's read, or one call of a catch-up, may take.
    pub timeout_ms: u64,
    /// Most bytes of messages in one history page (`history_page_max_bytes`).
    pub page_max_bytes: usize,
    /// Most users a presence list names (`presence_roster_max`).
    pub presence_roster_max: usize,
    /// The node writes to, and reads old history from, a shared store.
    pub shared_store: bool,
}

/// One call a read makes.
#[derive(Debug)]
pub enum ReadCall {
    /// Redis's counter for `room` (its last seq); answered [`ReadAnswer::RoomSeq`].
    RoomSeq { room: String },
    /// At most `count` messages after `after` from `room`'s stream; [`ReadAnswer::Recent`].
    Recent { room: String, after: u64, count: u32 },
    /// Who is online in `room`, with since when; [`ReadAnswer::Online`].
    Online { room: String },
    /// A shared-store query; [`ReadAnswer::Stored`].
    Store(Query),
}

/// A call's answer (a call not answered by its deadline is answered with a timeout failure).
#[derive(Debug)]
pub enum ReadAnswer {
    RoomSeq(Result<u64, Failure>),
    /// Ascending `(seq, message)`.
    Recent(Result<Vec<(u64, Bytes)>, Failure>),
    /// `(user, online since ms)`.
    Online(Result<Vec<(String, u64)>, Failure>),
    Stored(Result<Answer, Failure>),
}

/// What the shell must do.
#[derive(Debug)]
pub enum ReadEffect {
    /// Make `call` for read `id`, answered with [`Reads::answered`] by `deadline_ms` at the latest.
    Call { id: u64, call: ReadCall, deadline_ms: u64 },
    /// A client read's answer for connection `conn`.
    Reply { conn: u64, payload: Bytes },
    /// A catch-up read for the member side's join `token`.
    Fetched {
        token: u64,
        result: Result<Vec<(u64, Bytes)>, Failure>,
    },
}

/// Which page a client asks for.
#[derive(Debug, Clone, Copy)]
pub struct PageAt {
    /// Messages below this seq (the newest when absent).
    pub before: Option<u64>,
    /// At most this many.
    pub limit: u32,
}

/// Who asked for a client's read.
#[derive(Debug, Clone)]
pub struct Asker {
    pub conn: u64,
    /// The request's id (raw JSON).
    pub req: Option<String>,
    /// The asking user (reactions are counted as they see them).
    pub user: Option<String>,
}

/// A read in progress.
#[derive(Debug)]
struct Read {
    /// The client's read's deadline; `None` for a catch-up (each call has its own).
    deadline_ms: Option<u64>,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    History(Page),
    Thread(Thread),
    Presence { to: Asker, room: String },
    Fetch(Fetch),
}

/// What a read does next.
enum Step {
    Call(ReadCall),
    Reply(Bytes),
    Fetched(Result<Vec<(u64, Bytes)>, Failure>),
}

/// The reads of one shard in progress.
#[derive(Debug)]
pub struct Reads {
    cfg: ReadsConfig,
    reads: HashMap<u64, Read>,
    effects: VecDeque<ReadEffect>,
}

impl Reads {
    pub fn new(cfg: ReadsConfig) -> Self {
        Self {
            cfg,
            reads: HashMap::new(),
            effects: VecDeque::new(),
        }
    }

    /// The next effect to carry out.
    pub fn poll(&mut self) -> Option<ReadEffect> {
        self.effects.pop_front()
    }

    /// Reads waiting for a call's answer.
    pub fn in_flight(&self) -> usize {
        self.reads.len()
    }

    /// `history` of `room`: the newest `limit` messages below `before` (the newest when absent).
    pub fn history(&mut self, id: u64, to: Asker, room: &str, at: PageAt, now_ms: u64) {
        let PageAt { before, limit } = at;
        let mut page = Page {
            to,
            room: room.to_owned(),
            limit,
            top: 0,
            msgs: Vec::new(),
            next: None,
            step: PageStep::Top,
            reactions: Vec::new(),
        };
        let step = match before {
            Some(b) => page.stream(b.saturating_sub(1)),
            None => Step::Call(ReadCall::RoomSeq { room: room.to_owned() }),
        };
        self.begin(id, Some(now_ms + self.cfg.timeout_ms), Kind::History(page), step, now_ms);
    }

    /// `history` of `room` by `thread`: the replies to `root` from the shared store, once
    /// Redis's counter says the root exists.
    pub fn thread(&mut self, id: u64, to: Asker, room: &str, root: u64, at: PageAt, now_ms: u64) {
        let t = Thread {
            to,
            room: room.to_owned(),
            root,
            before: at.before,
            limit: at.limit,
        };
        let step = Step::Call(ReadCall::RoomSeq { room: room.to_owned() });
        self.begin(id, Some(now_ms + self.cfg.timeout_ms), Kind::Thread(t), step, now_ms);
    }

    /// `presence` of `room`: who is online on any node.
    pub fn presence(&mut self, id: u64, to: Asker, room: &str, now_ms: u64) {
        let step = Step::Call(ReadCall::Online { room: room.to_owned() });
        let kind = Kind::Presence { to, room: room.to_owned() };
        self.begin(id, Some(now_ms + self.cfg.timeout_ms), kind, step, now_ms);
    }

    /// The catch-up of join `token`: at most `count` messages of `room` after `after`, from the
    /// stream, completed from the shared store below where the stream was trimmed, each in its
    /// current version.
    pub fn fetch(&mut self, id: u64, token: u64, room: &str, after: u64, count: u32, now_ms: u64) {
        let f = Fetch {
            token,
            room: room.to_owned(),
            after,
            count,
            msgs: Vec::new(),
            step: FetchStep::Stream,
        };
        let step = Step::Call(ReadCall::Recent {
            room: room.to_owned(),
            after,
            count,
        });
        self.begin(id, None, Kind::Fetch(f), step, now_ms);
    }

    /// The answer to read `id`'s call. An answer for a read that is not waiting (finished, or
    /// never made) is dropped.
    pub fn answered(&mut self, id: u64, answer: ReadAnswer, now_ms: u64) {
        let Some(mut read) = self.reads.remove(&id) else {
            tracing::debug!(id, "reads: an answer for no read in progress");
            return;
        };
        let step = match &mut read.kind {
            Kind::History(p) => p.answered(&self.cfg, answer),
            Kind::Thread(t) => t.answered(&self.cfg, answer),
            Kind::Presence { to, room } => presence_answered(&self.cfg, to, room, answer),
            Kind::Fetch(f) => f.answered(&self.cfg, answer),
        };
        self.carry_on(id, read, step, now_ms);
    }

    fn begin(&mut self, id: u64, deadline_ms: Option<u64>, kind: Kind, step: Step, now_ms: u64) {
        if self.reads.contains_key(&id) {
            // The shell's ids are unique; a second read with one in use would take its answers.
            tracing::error!(id, "reads: a read id already in use");
            let read = Read { deadline_ms, kind };
            let failed = Step::Reply(server::error(None, ErrorCode::Internal, "read not made", None));
            return self.finish(read, failed);
        }
        self.carry_on(id, Read { deadline_ms, kind }, step, now_ms);
    }

    fn carry_on(&mut self, id: u64, read: Read, step: Step, now_ms: u64) {
        let Step::Call(call) = step else {
            return self.finish(read, step);
        };
        let deadline_ms = read.deadline_ms.unwrap_or(now_ms + self.cfg.timeout_ms);
        self.effects.push_back(ReadEffect::Call { id, call, deadline_ms });
        self.reads.insert(id, read);
    }

    fn finish(&mut self, read: Read, step: Step) {
        let effect = match (read.kind, step) {
            (Kind::Fetch(f), Step::Fetched(result)) => ReadEffect::Fetched { token: f.token, result },
            (Kind::Fetch(f), _) => ReadEffect::Fetched {
                token: f.token,
                result: Ok(f.msgs),
            },
            (Kind::History(Page { to, .. }) | Kind::Thread(Thread { to, .. }) | Kind::Presence { to, .. }, step) => {
                let payload = match step {
                    Step::Reply(p) => p,
                    _ => server::error(to.req.as_deref(), ErrorCode::Internal, "read not made", None),
                };
                ReadEffect::Reply { conn: to.conn, payload }
            }
        };
        self.effects.push_back(effect);
    }
}

/// A `history` page being read.
#[derive(Debug)]
struct Page {
    to: Asker,
    room: String,
    limit: u32,
    /// The highest seq the page may hold.
    top: u64,
    /// The page so far, ascending.
    msgs: Vec<(u64, Bytes)>,
    next: Option<u64>,
    step: PageStep,
    reactions: Vec<ReactionCount>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PageStep {
    /// Reading the room's counter (no `before`).
    Top,
    /// Reading the stream below `top`.
    Stream,
    /// Reading from the store what the stream no longer holds.
    Older,
    /// The store's versions of the page's messages, then the reactions, then reply counts.
    Versions,
    Reactions,
    Replies,
}

impl Page {
    fn req(&self) -> Option<&str> {
        self.to.req.as_deref()
    }

    fn stream(&mut self, top: u64) -> Step {
        self.top = top;
        self.step = PageStep::Stream;
        Step::Call(ReadCall::Recent {
            room: self.room.clone(),
            after: top.saturating_sub(u64::from(self.limit)),
            count: self.limit,
        })
    }

    fn answered(&mut self, cfg: &ReadsConfig, answer: ReadAnswer) -> Step {
        match (self.step, answer) {
            (PageStep::Top, ReadAnswer::RoomSeq(Ok(top))) => self.stream(top),
            (PageStep::Stream, ReadAnswer::Recent(Ok(msgs))) => {
                let top = self.top;
                self.msgs = msgs.into_iter().filter(|m| m.0 <= top).collect();
                self.next = self.msgs.first().map(|m| m.0).filter(|&s| s > 1);
                let lowest = self.msgs.first().map_or(top + 1, |m| m.0);
                let short = self.limit as usize - self.msgs.len().min(self.limit as usize);
                if cfg.shared_store && short > 0 && lowest > 1 {
                    self.step = PageStep::Older;
                    return Step::Call(ReadCall::Store(Query::History {
                        room: self.room.clone(),
                        before: Some(lowest),
                        limit: short,
                    }));
                }
                self.fit(cfg, cfg.shared_store)
            }
            (PageStep::Top | PageStep::Stream, ReadAnswer::RoomSeq(Err(f)) | ReadAnswer::Recent(Err(f))) => {
                Step::Reply(f.reply(self.req(), "cluster"))
            }
            (PageStep::Older, ReadAnswer::Stored(Ok(Answer::History(older)))) => {
                self.next = older.next_before;
                let newer = std::mem::take(&mut self.msgs);
                self.msgs = older.messages.into_iter().map(|m| (m.seq, m.frame)).chain(newer).collect();
                self.fit(cfg, true)
            }
            (PageStep::Older, ReadAnswer::Stored(other)) => {
                store_missed(&self.room, "older history not read from the store", &other);
                self.fit(cfg, false)
            }
            (PageStep::Versions, ReadAnswer::Stored(Ok(Answer::RangeAfter(stored)))) => {
                replace_versions(&mut self.msgs, stored);
                match self.to.user.clone() {
                    Some(user) => {
                        self.step = PageStep::Reactions;
                        let (from, to) = self.span();
                        Step::Call(ReadCall::Store(Query::ReactionCounts {
                            room: self.room.clone(),
                            from,
                            to,
                            user,
                        }))
                    }
                    None => self.reply_counts(),
                }
            }
            (PageStep::Reactions, ReadAnswer::Stored(Ok(Answer::ReactionCounts(counts)))) => {
                self.reactions = counts;
                self.reply_counts()
            }
            (PageStep::Replies, ReadAnswer::Stored(Ok(Answer::ReplyCounts(counts)))) => {
                let reactions = std::mem::take(&mut self.reactions);
                for (seq, m) in self.msgs.iter_mut() {
                    let replies = counts.binary_search_by_key(seq, |(root, _)| *root).map_or(0, |i| counts[i].1);
                    *m = server::with_extras(m, change_rules::of_message(&reactions, *seq), replies);
                }
                self.render()
            }
            (PageStep::Versions | PageStep::Reactions | PageStep::Replies, ReadAnswer::Stored(other)) => {
                store_missed(&self.room, "a history page went out as the stream has it", &other);
                self.render()
            }
            (step, other) => {
                tracing::error!(
                    room = self.room,
                    ?step,
                    ?other,
                    "reads: a history page got an answer to another call"
                );
                Step::Reply(server::error(self.req(), ErrorCode::Internal, "history not read", None))
            }
        }
    }

    /// Cuts the page to `page_max_bytes`, then (`versions`: the store is there) asks for the
    /// current versions of what it holds.
    fn fit(&mut self, cfg: &ReadsConfig, versions: bool) -> Step {
        let (msgs, next) = fit_page_seqs(std::mem::take(&mut self.msgs), self.next, cfg.page_max_bytes);
        (self.msgs, self.next) = (msgs, next);
        if !versions || self.msgs.is_empty() {
            return self.render();
        }
        self.step = PageStep::Versions;
        let (from, to) = self.span();
        Step::Call(ReadCall::Store(Query::RangeAfter {
            room: self.room.clone(),
            after: from - 1,
            limit: usize::try_from(to - from + 1).unwrap_or(usize::MAX),
        }))
    }

    fn reply_counts(&mut self) -> Step {
        self.step = PageStep::Replies;
        let (from, to) = self.span();
        Step::Call(ReadCall::Store(Query::ReplyCounts {
            room: self.room.clone(),
            from,
            to,
        }))
    }

    /// The page's lowest and highest seq (it is not empty when asked).
    fn span(&self) -> (u64, u64) {
        let first = self.msgs.first().map_or(1, |m| m.0);
        (first.max(1), self.msgs.last().map_or(first, |m| m.0))
    }

    fn render(&mut self) -> Step {
        let msgs: Vec<Bytes> = std::mem::take(&mut self.msgs).into_iter().map(|(_, m)| m).collect();
        Step::Reply(server::history(self.req(), &self.room, &msgs, self.next))
    }
}

/// A thread's page being read.
#[derive(Debug)]
struct Thread {
    to: Asker,
    room: String,
    root: u64,
    before: Option<u64>,
    limit: u32,
}

impl Thread {
    fn answered(&mut self, cfg: &ReadsConfig, answer: ReadAnswer) -> Step {
        let req = self.to.req.as_deref();
        match answer {
            ReadAnswer::RoomSeq(Ok(top)) if self.root == 0 || self.root > top => {
                let msg = format!("{} has no message {}", self.room, self.root);
                Step::Reply(server::error(req, ErrorCode::NotFound, &msg, None))
            }
            ReadAnswer::RoomSeq(Ok(_)) => Step::Call(ReadCall::Store(Query::Thread {
                room: self.room.clone(),
                root: self.root,
                before: self.before,
                limit: self.limit as usize,
            })),
            ReadAnswer::RoomSeq(Err(f)) => Step::Reply(f.reply(req, "cluster")),
            ReadAnswer::Stored(Ok(Answer::History(page))) => {
                let msgs = page.messages.into_iter().map(|m| (m.seq, m.frame)).collect();
                let (msgs, next) = fit_page(msgs, page.next_before, cfg.page_max_bytes);
                Step::Reply(server::history(req, &self.room, &msgs, next))
            }
            ReadAnswer::Stored(Err(f)) => Step::Reply(f.reply(req, "thread not read")),
            other => {
                tracing::error!(room = self.room, ?other, "reads: a thread page got an answer to another call");
                Step::Reply(server::error(req, ErrorCode::Internal, "thread not read", None))
            }
        }
    }
}

fn presence_answered(cfg: &ReadsConfig, to: &Asker, room: &str, answer: ReadAnswer) -> Step {
    let req = to.req.as_deref();
    match answer {
        ReadAnswer::Online(Ok(mut online)) => {
            let count = online.len();
            // As on one node: those online longest first, at most `presence_roster_max`.
            online.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
            online.truncate(cfg.presence_roster_max);
            Step::Reply(server::presence_list(req, room, &online, count))
        }
        ReadAnswer::Online(Err(f)) => Step::Reply(f.reply(req, "cluster")),
        other => {
            tracing::error!(room, ?other, "reads: presence got an answer to another call");
            Step::Reply(server::error(req, ErrorCode::Internal, "presence not read", None))
        }
    }
}

/// A join's catch-up being read.
#[derive(Debug)]
struct Fetch {
    token: u64,
    room: String,
    after: u64,
    count: u32,
    /// What was read so far, ascending.
    msgs: Vec<(u64, Bytes)>,
    step: FetchStep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FetchStep {
    Stream,
    /// Reading from the store what the stream lost below `first`, its first seq.
    Older {
        first: u64,
    },
    Versions,
}

impl Fetch {
    fn answered(&mut self, cfg: &ReadsConfig, answer: ReadAnswer) -> Step {
        match (self.step, answer) {
            (FetchStep::Stream, ReadAnswer::Recent(Ok(msgs))) => {
                self.msgs = msgs;
                // The stream starts above `after + 1`: it was trimmed there. A shared store holds
                // what it lost (the member side announces `gap` for what neither has).
                match self.msgs.first().map(|m| m.0).filter(|&f| f > self.after + 1) {
                    Some(first) if cfg.shared_store => {
                        self.step = FetchStep::Older { first };
                        let want = (first - self.after - 1).min(u64::from(self.count));
                        Step::Call(ReadCall::Store(Query::RangeAfter {
                            room: self.room.clone(),
                            after: self.after,
                            limit: usize::try_from(want).unwrap_or(usize::MAX),
                        }))
                    }
                    _ => self.versions(cfg),
                }
            }
            (FetchStep::Stream, ReadAnswer::Recent(Err(f))) => Step::Fetched(Err(f)),
            (FetchStep::Older { first }, ReadAnswer::Stored(Ok(Answer::RangeAfter(older)))) => {
                let newer = std::mem::take(&mut self.msgs);
                let older = older.into_iter().filter(|m| m.seq < first).map(|m| (m.seq, m.frame));
                self.msgs = older.chain(newer).take(self.count as usize).collect();
                self.versions(cfg)
            }
            (FetchStep::Older { .. }, ReadAnswer::Stored(other)) => {
                store_missed(&self.room, "a catch-up below the Redis stream was not read from the store", &other);
                Step::Fetched(Ok(std::mem::take(&mut self.msgs)))
            }
            (FetchStep::Versions, ReadAnswer::Stored(Ok(Answer::RangeAfter(stored)))) => {
                replace_versions(&mut self.msgs, stored);
                Step::Fetched(Ok(std::mem::take(&mut self.msgs)))
            }
            (FetchStep::Versions, ReadAnswer::Stored(other)) => {
                store_missed(&self.room, "a catch-up went out as the stream has it", &other);
                Step::Fetched(Ok(std::mem::take(&mut self.msgs)))
            }
            (step, other) => {
                tracing::error!(room = self.room, ?step, ?other, "reads: a catch-up got an answer to another call");
                Step::Fetched(Err(Failure::Store(storage::StoreError::Internal("catch-up not read".into()))))
            }
        }
    }

    /// The stream keeps messages as sent: edits and deletes are in the store.
    fn versions(&mut self, cfg: &ReadsConfig) -> Step {
        let (Some(&(from, _)), Some(&(to, _))) = (self.msgs.first(), self.msgs.last()) else {
            return Step::Fetched(Ok(Vec::new()));
        };
        if !cfg.shared_store {
            return Step::Fetched(Ok(std::mem::take(&mut self.msgs)));
        }
        self.step = FetchStep::Versions;
        Step::Call(ReadCall::Store(Query::RangeAfter {
            room: self.room.clone(),
            after: from - 1,
            limit: usize::try_from(to - from + 1).unwrap_or(usize::MAX),
        }))
    }
}

/// Replaces each of `msgs` (ascending seqs) by its version in the store, where the store holds
/// it: an edit or a delete changed the store's copy, never the stream's. A message the store
/// does not hold yet (its write is on its way) stays as the stream has it.
fn replace_versions(msgs: &mut [(u64, Bytes)], stored: Vec<storage::StoredMessage>) {
    for m in stored {
        if let Ok(i) = msgs.binary_search_by_key(&m.seq, |(seq, _)| *seq) {
            msgs[i].1 = m.frame;
        }
    }
}

/// Logs a store call that failed, was late, or answered something else.
fn store_missed(room: &str, what: &str, answer: &Result<Answer, Failure>) {
    match answer {
        Ok(other) => tracing::error!(room, ?other, "reads: {what}: the store answered something else"),
        Err(e) => tracing::warn!(room, error = %e, "cluster: {what}"),
    }
}
