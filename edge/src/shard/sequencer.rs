//! The one place where the two modes differ: the sequencer the node started
//! with. The member side (`members.rs` around `engine::subscriber`, one code
//! for both) hands it calls to make (subscribe, read the room's seq, fetch a
//! catch-up, unsubscribe, presence); `requests.rs` asks it to send, page
//! history and list presence. Nobody else asks which one it is.
//!
//! - `Local` (one node): a room's owner shard sequences (`engine::owner`,
//!   driven by `local.rs`), reached over the mesh; the store keeps history.
//! - `Redis` (a cluster): Redis sequences and carries messages between nodes
//!   (`cluster.rs` for the calls, `publish.rs` owner side, `pump.rs`).

use std::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;
use router::bridge::BridgeHandle;

use super::local::LocalOwner;
use super::{Conn, Shard};
use crate::engine::owner::SendArgs;
use crate::engine::publisher::Publisher;
use crate::engine::subscriber::SubEffect;

/// Which page of history a connection asks for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Page {
    /// Messages below this seq (the newest when absent).
    pub(crate) before: Option<u64>,
    /// At most this many.
    pub(crate) limit: u32,
    /// Only the replies to this root seq.
    pub(crate) thread: Option<u64>,
}

/// Which sequencer this node runs with: chosen once, at start.
pub(crate) enum Sequencer {
    /// One node: the owner shard of each room (this shard's owned rooms), with the store.
    Local(Box<RefCell<LocalOwner>>),
    /// A cluster: Redis, through the bridge.
    Redis(Box<RedisSequencer>),
}

/// The Redis sequencer of one shard.
pub(crate) struct RedisSequencer {
    pub(crate) bridge: BridgeHandle,
    /// The owner side of this shard's rooms: sends batched to Redis.
    pub(crate) publisher: RefCell<Publisher>,
    /// History, threads, presence and catch-ups read from Redis and the shared store
    /// (`cluster_reads.rs`).
    pub(crate) reads: RefCell<crate::engine::reads::Reads>,
    /// Shared-store queries in flight, by ticket (`cluster_store.rs`).
    pub(crate) store_queries: super::cluster_store::StoreQueries,
    /// A user's state on the shared store: memberships and `sync`, read and delivered marks
    /// with their receipts, last seen (`engine::cluster_state`, shell `cluster_state.rs`).
    pub(crate) state: RefCell<crate::engine::cluster_state::State>,
    /// Changes of sent messages running and waiting, per room (`engine::cluster_changes`,
    /// shell `cluster_changes.rs`).
    pub(crate) changes: RefCell<crate::engine::cluster_changes::Changes>,
    /// When the changes' timer is armed for (ms; 0: not armed).
    pub(crate) changes_timer: std::cell::Cell<u64>,
    /// Who sent to each room from this shard lately (`cluster_receipts.rs`).
    pub(crate) senders: super::cluster_receipts::RecentSenders,
}

impl Sequencer {
    /// The bridge, in a cluster.
    pub(crate) fn bridge(&self) -> Option<&BridgeHandle> {
        match self {
            Self::Local(_) => None,
            Self::Redis(r) => Some(&r.bridge),
        }
    }
}

impl Shard {
    /// A call the member side makes to the sequencer (the subscriber's effects that are
    /// not for this shard's connections); its answer comes back through `join_answered`.
    pub(super) fn sequencer_call(&self, call: SubEffect) {
        match &self.sequencer {
            Sequencer::Local(_) => self.local_call(call),
            Sequencer::Redis(r) => {
                if let Some(me) = self.rc() {
                    me.redis_call(&r.bridge, call);
                }
            }
        }
    }

    /// A send to a room this shard owns (a local connection's, or one from the mesh).
    pub(super) fn seq_send(&self, a: &SendArgs<'_>) {
        match &self.sequencer {
            Sequencer::Local(_) => self.owner_send(a),
            Sequencer::Redis(_) => {
                if let Some(me) = self.rc() {
                    me.cluster_send(a);
                }
            }
        }
    }

    /// A member's send from this shard, before it goes to the room's owner shard: a cluster
    /// notes the sender (the audience of the room's delivered receipts, `cluster_receipts.rs`)
    /// and checks a `reply_to` past what this shard delivered in the room against Redis's
    /// counter, taking the send over (true) until Redis answers. One node does neither: the
    /// owner knows its senders and its room's seq.
    pub(super) fn seq_before_send(&self, conn: &Rc<Conn>, a: &SendArgs<'_>, owner: usize) -> bool {
        let Sequencer::Redis(r) = &self.sequencer else { return false };
        r.senders.note(a.room, a.user, Self::now_ms());
        let Some(root) = a.reply_to else { return false };
        if self.subscriber.borrow().seen(a.room).is_some_and(|c| root <= c) {
            return false;
        }
        if let Some(me) = self.rc() {
            me.cluster_reply_send(conn, root, owner, router::Frame::Send(a.to_msg()));
        }
        true
    }

    /// A history page for a connection of this shard. A cluster reads a thread's page from the
    /// shared store (the Redis stream has no thread index); on the embedded store (one per
    /// node) it is refused.
    pub(super) fn seq_history(&self, conn: &Rc<Conn>, id: Option<&str>, room: &str, page: Page) {
        match &self.sequencer {
            Sequencer::Local(_) => self.local_history(conn, id, room, page),
            Sequencer::Redis(_) if page.thread.is_some() && self.shared_store() => {
                let root = page.thread.unwrap_or(0);
                self.cluster_thread(conn, id, room, root, page.before, page.limit);
            }
            Sequencer::Redis(_) if page.thread.is_some() => {
                let msg = "history by thread needs a shared store in cluster mode (store = \"postgres\" or \"scylla\")";
                self.reply_error(conn, id, crate::protocol::ErrorCode::BadRequest, msg, None);
            }
            Sequencer::Redis(_) => self.cluster_history(conn, id, room, page.before, page.limit),
        }
    }

    /// An event without a seq about `from` (typing) for the members of a room this shard
    /// owns: to the subscribed shards over the mesh, or to every node through Redis.
    pub(super) fn seq_event(&self, room: &str, from: &str, payload: Bytes) {
        match &self.sequencer {
            Sequencer::Local(_) => self.owner_event(room, from, &payload),
            Sequencer::Redis(r) => Self::cluster_event(&r.bridge, room, from, &payload),
        }
    }

    /// A member's `read` of a room: to the room's owner on one node; in a cluster on a shared
    /// store, from this shard to the store. A cluster on the embedded store (one per node)
    /// keeps no marks: the client is told so.
    pub(super) fn seq_read(&self, conn: &Rc<Conn>, id: Option<&str>, room: &str, seq: u64) {
        match &self.sequencer {
            Sequencer::Local(_) => self.local_read(conn, id, room, seq),
            Sequencer::Redis(_) if self.shared_store() => {
                if let Some(me) = self.rc() {
                    me.cluster_read(conn, id, room, seq);
                }
            }
            Sequencer::Redis(_) => {
                let msg = "read needs a shared store in cluster mode (store = \"postgres\" or \"scylla\")";
                self.reply_error(conn, id, crate::protocol::ErrorCode::BadRequest, msg, None);
            }
        }
    }

    /// A member's edit, delete or reaction: to the room's owner on one node; in a cluster on a
    /// shared store, run by this shard under the room's lock in Redis (`cluster_changes.rs`).
    /// A cluster on the embedded store (one per node) has no one copy to change: the client
    /// is told so.
    pub(super) fn seq_change(&self, conn: &Rc<Conn>, id: Option<&str>, change: router::ChangeMsg) {
        match &self.sequencer {
            Sequencer::Local(_) => self.local_change(conn, id, change),
            Sequencer::Redis(_) if self.shared_store() => {
                if let Some(me) = self.rc() {
                    me.cluster_change(change);
                }
            }
            Sequencer::Redis(_) => {
                let msg = "edit, delete and react need a shared store in cluster mode (store = \"postgres\" or \"scylla\")";
                self.reply_error(conn, id, crate::protocol::ErrorCode::BadRequest, msg, None);
            }
        }
    }

    /// The users a room's message `seq` reached on this shard (coalesced, once a second): to
    /// the room's owner on one node, which stores their delivered marks and pushes receipts;
    /// in a cluster on a shared store, stored from this shard, and the receipt goes through
    /// Redis to the room's recent senders (`cluster_receipts.rs`).
    pub(super) fn seq_delivered(&self, room: String, seq: u64, users: Vec<String>) {
        if let Sequencer::Redis(_) = &self.sequencer {
            if let Some(me) = self.rc().filter(|s| s.shared_store()) {
                me.cluster_delivered(room, seq, users);
            }
            return;
        }
        let owner = crate::room::owner(&room, self.shards);
        if owner == self.id {
            return self.owner_delivered(&room, seq, users);
        }
        // Marks move forward only: one shed when the ring is congested is carried by the next.
        if !self.try_request(owner, &router::Frame::Delivered { room, seq, users }) {
            crate::metrics::ShardStats::inc(&self.stats().events_shed_total);
        }
    }

    /// This shard holds its first connection of `user` (`online`) or closed its last one: on
    /// one node, to the user's home shard, which keeps its last seen. A cluster keeps it in
    /// each room's presence leases instead.
    pub(super) fn seq_seen(&self, user: &str, online: bool) {
        if let Sequencer::Redis(_) = &self.sequencer {
            if let Some(me) = self.rc().filter(|s| s.shared_store()) {
                me.cluster_seen(user);
            }
            return;
        }
        let home = crate::room::owner(user, self.shards);
        if home == self.id {
            return self.with_owner(|o, now| o.user_seen(user, home, online, now));
        }
        // Never shed: a lost report would leave the user online, or offline, for good.
        let frame = router::Frame::Seen {
            user: user.to_owned(),
            shard: self.id as u16,
            online,
        };
        self.send_frame(home, &frame);
    }

    /// The node is stopping: on one node, the users this shard holds are seen now.
    pub(super) fn seq_stopping(&self) {
        let Sequencer::Local(_) = &self.sequencer else { return };
        let users = self.users.borrow().keys();
        self.with_owner(|o, now| o.stopping(&users, now));
    }

    /// `presence` of one user: on one node, from the user's home shard; in a cluster on a
    /// shared store, from Redis (online anywhere) and the store (last seen). A cluster on the
    /// embedded store keeps no last seen: the client is told so.
    pub(super) fn seq_last_seen(&self, conn: &Rc<Conn>, id: Option<&str>, user: &str) {
        if let Sequencer::Redis(_) = &self.sequencer {
            if let Some(me) = self.rc().filter(|s| s.shared_store()) {
                return me.cluster_last_seen(conn, id, user);
            }
            let msg = "presence of a user needs a shared store in cluster mode (store = \"postgres\" or \"scylla\"); ask a room's presence";
            return self.reply_error(conn, id, crate::protocol::ErrorCode::BadRequest, msg, None);
        }
        let home = crate::room::owner(user, self.shards);
        if home == self.id {
            return self.with_owner(|o, now| o.last_seen(user, conn.id, id, now));
        }
        let frame = router::Frame::LastSeen {
            user: user.to_owned(),
            conn: conn.id,
            req: id.map(str::to_owned),
        };
        if !self.try_request(home, &frame) {
            self.overloaded(conn, id);
        }
    }

    /// `sync`: on one node this shard's owner reads the user's rooms from the store (no mesh
    /// hop); in a cluster on a shared store this shard reads them from it. A cluster on the
    /// embedded store (one per node) keeps no memberships: the client is told so.
    pub(super) fn seq_sync(&self, conn: &Rc<Conn>, id: Option<&str>) {
        match &self.sequencer {
            Sequencer::Local(_) => self.local_sync(conn, id),
            Sequencer::Redis(_) if self.shared_store() => {
                if let Some(me) = self.rc() {
                    me.cluster_sync(conn, id);
                }
            }
            Sequencer::Redis(_) => {
                let msg = "sync needs a shared store in cluster mode (store = \"postgres\" or \"scylla\")";
                self.reply_error(conn, id, crate::protocol::ErrorCode::BadRequest, msg, None);
            }
        }
    }

    /// Who is online in a room.
    pub(super) fn seq_presence(&self, conn: &Rc<Conn>, id: Option<&str>, room: &str) {
        match &self.sequencer {
            Sequencer::Local(_) => self.local_presence(conn, id, room),
            Sequencer::Redis(_) => self.cluster_presence(conn, id, room),
        }
    }
}
