//! `history` pages of the rooms a shard owns, on a single node: a room's
//! page, or one thread's (the replies to a root seq). The newest messages
//! come from the recent ring, older ones from the store; then the page's
//! reactions and reply counts, each one store query per page.
//!
//! What must stay true:
//! - a page never reaches past `published` and holds each message's current
//!   version (edits and deletes replace the ring's entry and the stored frame);
//! - a thread page holds only replies to its root, and the ring part is
//!   always the newest (the ring holds the room's newest messages, and it
//!   knows which of them are replies to what);
//! - every message with reactions carries them, counted per emoji, with `me`
//!   for the asking user (not a tombstone), and every message with replies
//!   carries their count (the store's: a reply counts once it is stored);
//! - a page is bounded in messages and bytes (`fit_page_seqs`), and every
//!   request gets exactly one answer.

use bytes::Bytes;
use storage::{Answer, Query, ReactionCount, StoreError};

use super::load::{unexpected, Readiness};
use super::{load, HistoryArgs, Owner, StorePort, Wait};
use crate::engine::{Busy, Failure};
use crate::protocol::{server, ErrorCode};
use crate::room::fit_page_seqs;

/// A history request waiting for the store.
#[derive(Debug)]
pub(super) struct PageWait {
    room: String,
    user: String,
    conn: u64,
    req: Option<String>,
    /// Waiting for the older part: the page's newest messages, from the ring when the
    /// store was asked (fast mode writes after publishing, so the store may not hold them
    /// yet). Waiting for the reactions or reply counts: the whole page, bounded.
    messages: Vec<(u64, Bytes)>,
    /// The page's `next_before` (once the page is read).
    next: Option<u64>,
    /// The page's reactions (once read).
    reactions: Vec<ReactionCount>,
}

impl PageWait {
    fn new(h: &HistoryArgs<'_>) -> Self {
        Self {
            room: h.room.to_owned(),
            user: h.user.to_owned(),
            conn: h.conn,
            req: h.req.map(str::to_owned),
            messages: Vec::new(),
            next: None,
            reactions: Vec::new(),
        }
    }
}

impl<S: StorePort> Owner<S> {
    /// A page of history: from the recent ring when it holds the page; else the older part
    /// from the store and the newer part from the ring, never past `published`.
    pub fn history(&mut self, h: HistoryArgs<'_>, now_ms: u64) {
        if h.thread.is_none() && !self.rooms.contains_key(h.room) && !self.loading.has(h.room) {
            // Not in memory: a room leaves memory only once its writes have settled, so the
            // store holds all of it. Read it there, without loading the room (or creating it).
            let query = Query::History {
                room: h.room.to_owned(),
                before: h.before,
                limit: h.limit as usize,
            };
            return self.read_older(PageWait::new(&h), query);
        }
        match self.room_ready(h.room, Some(h.user), load::Op::history(&h), now_ms) {
            Readiness::Ready => {}
            Readiness::Queued => return,
            Readiness::Refused(msg) => return self.reply(h.conn, Busy::Store.reply(h.req, msg)),
        }
        let Some(r) = self.rooms.get(h.room) else { return };
        let mut w = PageWait::new(&h);
        let top = h.before.unwrap_or(u64::MAX).min(r.published() + 1);
        let limit = h.limit as usize;
        let (query, below) = match h.thread {
            None => {
                if let Some((messages, next)) = r.recent_page(h.before, limit) {
                    return self.page_read(w, messages, next);
                }
                // The ring holds fewer than `limit` below `before`: they are the page's newest.
                w.messages = r.ring().after(0).filter(|(s, _)| *s < top).map(|(s, b)| (s, b.clone())).collect();
                let below = w.messages.first().map_or(top, |(s, _)| *s);
                let query = Query::History {
                    room: h.room.to_owned(),
                    before: Some(below),
                    limit: limit.saturating_sub(w.messages.len()),
                };
                (query, below)
            }
            Some(root) if root == 0 || root > r.published() => {
                let msg = format!("{} has no message {root}", h.room);
                return self.reply(h.conn, server::error(h.req, ErrorCode::NotFound, &msg, None));
            }
            Some(root) => {
                let mut held = r.ring_replies(root, top);
                if held.len() >= limit {
                    // The newest `limit` replies are all in the ring; older ones may exist.
                    let page = held.split_off(held.len() - limit);
                    let next = page.first().map(|(s, _)| *s);
                    return self.page_read(w, page, next);
                }
                w.messages = held;
                let below = w.messages.first().map_or(top, |(s, _)| *s);
                let query = Query::Thread {
                    room: h.room.to_owned(),
                    root,
                    before: Some(below),
                    limit: limit - w.messages.len(),
                };
                (query, below)
            }
        };
        // Fast mode: what is below `below` must be in the store before the store is read.
        if r.settled_seq().saturating_add(1) < below {
            let Some(r) = self.rooms.get_mut(h.room) else { return };
            r.hold();
            self.deferred_pages
                .entry(h.room.to_owned())
                .or_default()
                .push((below, Box::new(w), query));
            return;
        }
        self.read_older(w, query);
    }

    /// Reads a page's older part from the store.
    fn read_older(&mut self, w: PageWait, query: Query) {
        let (conn, req) = (w.conn, w.req.clone());
        if !self.submit_query(query, Wait::History(Box::new(w))) {
            self.reply(conn, Busy::Store.reply(req.as_deref(), "store busy, retry"));
        }
    }

    /// A write of `room` settled: the pages that waited for it read the store now.
    pub(super) fn read_deferred_pages(&mut self, room: &str) {
        let Some(r) = self.rooms.get_mut(room) else { return };
        let settled = r.settled_seq();
        let Some(waiting) = self.deferred_pages.get_mut(room) else { return };
        let ready: Vec<(u64, Box<PageWait>, Query)> = waiting
            .extract_if(.., |(below, _, _)| settled.saturating_add(1) >= *below)
            .collect();
        if waiting.is_empty() {
            self.deferred_pages.remove(room);
        }
        for (_, w, query) in ready {
            if let Some(r) = self.rooms.get_mut(room) {
                r.release();
            }
            self.read_older(*w, query);
        }
    }

    /// The store answered a page's older part: with the ring's newer part, the page is read.
    pub(super) fn history_answered(&mut self, mut w: PageWait, result: Result<Answer, StoreError>) {
        match result {
            Ok(Answer::History(page)) => {
                let tail = std::mem::take(&mut w.messages);
                let messages = page.messages.into_iter().map(|m| (m.seq, m.frame)).chain(tail).collect();
                self.page_read(w, messages, page.next_before);
            }
            Ok(other) => self.page_failed(&w, unexpected(&other)),
            Err(e) => self.page_failed(&w, e),
        }
    }

    /// The page is read: bounded in bytes, then its reactions are read (none to read for an empty page).
    fn page_read(&mut self, mut w: PageWait, messages: Vec<(u64, Bytes)>, next: Option<u64>) {
        let (messages, next) = fit_page_seqs(messages, next, self.cfg.history_page_max_bytes);
        let Some((from, to)) = span(&messages) else {
            return self.reply(w.conn, server::history(w.req.as_deref(), &w.room, &[], next));
        };
        let query = Query::ReactionCounts {
            room: w.room.clone(),
            from,
            to,
            user: w.user.clone(),
        };
        (w.messages, w.next) = (messages, next);
        self.page_step(w, query, Wait::Reactions);
    }

    /// The store answered a page's reactions: then its reply counts.
    pub(super) fn reactions_answered(&mut self, mut w: PageWait, result: Result<Answer, StoreError>) {
        w.reactions = match result {
            Ok(Answer::ReactionCounts(c)) => c,
            Ok(other) => return self.page_failed(&w, unexpected(&other)),
            Err(e) => return self.page_failed(&w, e),
        };
        let Some((from, to)) = span(&w.messages) else { return };
        let query = Query::ReplyCounts {
            room: w.room.clone(),
            from,
            to,
        };
        self.page_step(w, query, Wait::Replies);
    }

    /// The store answered a page's reply counts: the page goes out, each message with its extras.
    pub(super) fn replies_answered(&mut self, w: PageWait, result: Result<Answer, StoreError>) {
        let replies = match result {
            Ok(Answer::ReplyCounts(c)) => c,
            Ok(other) => return self.page_failed(&w, unexpected(&other)),
            Err(e) => return self.page_failed(&w, e),
        };
        let frames: Vec<Bytes> = w
            .messages
            .iter()
            .map(|(seq, f)| {
                let n = replies.binary_search_by_key(seq, |(root, _)| *root).map_or(0, |i| replies[i].1);
                server::with_extras(f, crate::engine::change_rules::of_message(&w.reactions, *seq), n)
            })
            .collect();
        self.reply(w.conn, server::history(w.req.as_deref(), &w.room, &frames, w.next));
    }

    fn page_step(&mut self, w: PageWait, query: Query, wait: fn(Box<PageWait>) -> Wait) {
        let (conn, req) = (w.conn, w.req.clone());
        if !self.submit_query(query, wait(Box::new(w))) {
            self.reply(conn, Busy::Store.reply(req.as_deref(), "store busy, retry"));
        }
    }

    fn page_failed(&mut self, w: &PageWait, e: StoreError) {
        self.reply(w.conn, Failure::Store(e).reply(w.req.as_deref(), "history store unavailable"));
    }
}

/// The first and last seq of a page.
fn span(messages: &[(u64, Bytes)]) -> Option<(u64, u64)> {
    Some((messages.first()?.0, messages.last()?.0))
}

#[cfg(test)]
mod tests;

/// A catch-up read of a member shard, owned (it may wait for the room's writes).
#[derive(Debug, Clone)]
pub(super) struct FetchWait {
    pub(super) room: String,
    pub(super) shard: usize,
    pub(super) token: u64,
    pub(super) after: u64,
    pub(super) count: u32,
}

impl FetchWait {
    pub(super) fn args(&self) -> super::FetchArgs<'_> {
        super::FetchArgs {
            room: &self.room,
            shard: self.shard,
            token: self.token,
            after: self.after,
            count: self.count,
        }
    }
}
