//! `history` pages of the rooms a shard owns, on a single node: the newest
//! messages from the recent ring, older ones from the store, then the
//! page's reactions from the store.
//!
//! What must stay true:
//! - a page never reaches past `published` and holds each message's current
//!   version (edits and deletes replace the ring's entry and the stored frame);
//! - every message with reactions carries them, counted per emoji, with `me`
//!   for the asking user (read in one store query per page, after the page);
//! - a page is bounded in messages and bytes (`fit_page_seqs`), and every
//!   request gets exactly one answer.

use bytes::Bytes;
use storage::{Answer, Query, ReactionCount, StoreError};

use super::load::{unexpected, Readiness};
use super::{load, HistoryArgs, Owner, StorePort, Wait};
use crate::engine::{Busy, Failure};
use crate::protocol::server;
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
    /// yet). Waiting for the reactions: the whole page, bounded.
    messages: Vec<(u64, Bytes)>,
    /// The page's `next_before` (once the page is read).
    next: Option<u64>,
}

impl<S: StorePort> Owner<S> {
    /// A page of history: from the recent ring when it holds the page; else the older part
    /// from the store and the newer part from the ring, never past `published`.
    pub fn history(&mut self, h: HistoryArgs<'_>, now_ms: u64) {
        match self.room_ready(h.room, load::Op::history(&h), now_ms) {
            Readiness::Ready => {}
            Readiness::Queued => return,
            Readiness::Refused(msg) => return self.reply(h.conn, Busy::Store.reply(h.req, msg)),
        }
        let Some(r) = self.rooms.get(h.room) else { return };
        let mut w = PageWait {
            room: h.room.to_owned(),
            user: h.user.to_owned(),
            conn: h.conn,
            req: h.req.map(str::to_owned),
            messages: Vec::new(),
            next: None,
        };
        if let Some((messages, next)) = r.recent_page(h.before, h.limit as usize) {
            return self.page_read(w, messages, next);
        }
        // The ring holds fewer than `limit` below `before`: they are the page's newest.
        let top = h.before.unwrap_or(u64::MAX).min(r.published() + 1);
        w.messages = r.ring().after(0).filter(|(s, _)| *s < top).map(|(s, b)| (s, b.clone())).collect();
        let query = Query::History {
            room: h.room.to_owned(),
            before: Some(w.messages.first().map_or(top, |(s, _)| *s)),
            limit: (h.limit as usize).saturating_sub(w.messages.len()),
        };
        if !self.submit_query(query, Wait::History(Box::new(w))) {
            self.reply(h.conn, Busy::Store.reply(h.req, "store busy, retry"));
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
        let (Some(&(from, _)), Some(&(to, _))) = (messages.first(), messages.last()) else {
            return self.reply(w.conn, server::history(w.req.as_deref(), &w.room, &[], next));
        };
        let query = Query::ReactionCounts {
            room: w.room.clone(),
            from,
            to,
            user: w.user.clone(),
        };
        (w.messages, w.next) = (messages, next);
        let (conn, req) = (w.conn, w.req.clone());
        if !self.submit_query(query, Wait::Reactions(Box::new(w))) {
            self.reply(conn, Busy::Store.reply(req.as_deref(), "store busy, retry"));
        }
    }

    /// The store answered a page's reactions: each message carries its own.
    pub(super) fn reactions_answered(&mut self, w: PageWait, result: Result<Answer, StoreError>) {
        let counts = match result {
            Ok(Answer::ReactionCounts(c)) => c,
            Ok(other) => return self.page_failed(&w, unexpected(&other)),
            Err(e) => return self.page_failed(&w, e),
        };
        let frames: Vec<Bytes> = w
            .messages
            .iter()
            .map(|(seq, f)| server::with_reactions(f, of_message(&counts, *seq)))
            .collect();
        self.reply(w.conn, server::history(w.req.as_deref(), &w.room, &frames, w.next));
    }

    fn page_failed(&mut self, w: &PageWait, e: StoreError) {
        self.reply(w.conn, Failure::Store(e).reply(w.req.as_deref(), "history store unavailable"));
    }
}

/// The counts of message `seq`, from counts sorted by seq.
fn of_message(counts: &[ReactionCount], seq: u64) -> &[ReactionCount] {
    let start = counts.partition_point(|c| c.seq < seq);
    let end = counts.partition_point(|c| c.seq <= seq);
    &counts[start..end]
}
