//! A durable send between its sequencing and its commit: kept by store ticket, it is
//! published (ring, fan-out, every waiting ack) when the write lands, and given up with
//! a `gap` when it fails. Nothing in it is allocated per send: the names are the room's
//! and the roster's shared ones, ids are inline, and the sender's is the one waiter
//! kept in place (a retried `client_id` adds more).

use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use smallvec::{smallvec, SmallVec};
use storage::SmallStr;

use super::{Owner, SendArgs, StorePort, Wait};
use crate::engine::Failure;
use crate::protocol::server;
use crate::room::AckInfo;

/// A connection to ack once committed, with its request's id.
type Waiter = (u64, Option<SmallStr>);

/// When a sequenced send is published.
pub(super) enum Publish {
    /// Now (fast mode), with this ack.
    Now(Bytes),
    /// When its write commits (durable mode); the sender's shared name.
    OnCommit(Arc<str>),
}

/// A durable send waiting for its commit.
#[derive(Debug)]
pub(super) struct PendingSend {
    room: Rc<str>,
    user: Arc<str>,
    client_id: Option<SmallStr>,
    reply_to: Option<u64>,
    ack: AckInfo,
    rendered: Bytes,
    /// The sender, then retries of its client id.
    waiters: SmallVec<[Waiter; 1]>,
}

impl<S: StorePort> Owner<S> {
    /// Keeps sequenced send `a` until store ticket `ticket` commits it.
    pub(super) fn await_commit(&mut self, a: &SendArgs<'_>, room: Rc<str>, user: Arc<str>, ack: AckInfo, rendered: Bytes, ticket: u64) {
        let pending = PendingSend {
            room,
            user,
            client_id: a.client_id.map(SmallStr::from),
            reply_to: a.reply_to,
            ack,
            rendered,
            waiters: smallvec![(a.conn, a.req.map(SmallStr::from))],
        };
        self.durable.insert(ticket, pending);
        self.waits.insert(ticket, Wait::Durable);
    }

    /// A retried `client_id`: the original ack, now or (durable, still committing) when the commit lands.
    pub(super) fn answer_duplicate(&mut self, a: &SendArgs<'_>, ack: &AckInfo, committing: Option<u64>) {
        if let Some(p) = committing.and_then(|t| self.durable.get_mut(&t)) {
            p.waiters.push((a.conn, a.req.map(SmallStr::from)));
            return;
        }
        self.reply(a.conn, server::ack(a.req, a.room, ack.seq, &ack.msg_id, ack.ts));
    }

    /// Durable write `ticket` landed (`Ok`) or failed.
    pub(super) fn durable_written(&mut self, ticket: u64, result: Result<(), storage::StoreError>) {
        let Some(p) = self.durable.remove(&ticket) else { return };
        match result {
            Ok(()) => self.publish_durable(p),
            Err(e) => {
                crate::metrics::ShardStats::inc(&self.stats().store_write_failed_total);
                tracing::error!(shard = self.cfg.shard, room = %p.room, seq = p.ack.seq, error = %e, "durable write failed");
                self.fail_durable(p, &Failure::Store(e));
            }
        }
    }

    /// Publishes a committed durable send: ring, fan-out, then every waiting ack.
    fn publish_durable(&mut self, p: PendingSend) {
        let Some(r) = self.rooms.get_mut(&*p.room) else { return };
        r.committed(p.ack.seq);
        r.stored(p.ack.seq);
        r.publish_then(p.ack.seq, p.rendered.clone(), |old| self.frames.messages.retire(&old));
        if let Some(root) = p.reply_to {
            r.note_reply(p.ack.seq, root);
        }
        self.fan_out(&p.room, p.ack.seq, &p.rendered);
        self.note_sender(&p.room, &p.user, p.ack.ts);
        self.offer_to_users(&p.room, p.ack.seq, &p.rendered);
        for (conn, req) in &p.waiters {
            let ack = self.frames.ack(req.as_deref(), &p.room, p.ack.seq, &p.ack.msg_id, p.ack.ts);
            self.reply(*conn, ack);
        }
    }

    /// A durable send whose batch failed: the seq is given up, members are told with `gap`,
    /// the senders get the failure (`unavailable` when a retry may succeed), and the client id
    /// may be retried.
    fn fail_durable(&mut self, p: PendingSend, error: &Failure) {
        let Some(r) = self.rooms.get_mut(&*p.room) else { return };
        r.committed(p.ack.seq);
        r.skip(p.ack.seq);
        r.unstored(p.ack.seq);
        if let Some(cid) = &p.client_id {
            r.forget_client_id(&p.user, cid);
        }
        let gap = server::gap(&p.room, p.ack.seq, p.ack.seq);
        self.fan_out(&p.room, p.ack.seq, &gap);
        for (conn, req) in &p.waiters {
            self.reply(*conn, error.reply(req.as_deref(), "message not stored"));
        }
    }
}
