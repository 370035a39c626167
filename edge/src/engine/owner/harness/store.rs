//! The harness's store: an in-memory `MessageStore` stand-in whose answers
//! the harness hands back when it chooses, behind one `StorePort` per shard
//! with bounded queues, as the real store service admits requests.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;

use storage::{Answer, HistoryPage, Overloaded, Query, RoomState, StoredMessage};

use crate::engine::owner::StorePort;

/// The store as the harness keeps it: what is committed, and what waits for an answer.
#[derive(Default)]
pub(super) struct MemStore {
    pub(super) epochs: HashMap<String, u64>,
    pub(super) messages: HashMap<String, BTreeMap<u64, StoredMessage>>,
    /// (user, room) memberships, for `sync`.
    pub(super) user_rooms: std::collections::BTreeSet<(String, String)>,
    /// Submitted and not answered: (shard, ticket, request), oldest first.
    pub(super) writes: VecDeque<(usize, u64, StoredMessage)>,
    pub(super) queries: VecDeque<(usize, u64, Query)>,
    pub(super) write_cap: usize,
    pub(super) query_cap: usize,
}

impl MemStore {
    pub(super) fn answer(&mut self, q: Query) -> Answer {
        match q {
            Query::RoomState { room, new_epoch } => {
                let epoch = *self.epochs.entry(room.clone()).or_insert(new_epoch);
                let last_seq = self.messages.get(&room).and_then(|m| m.keys().next_back().copied()).unwrap_or(0);
                Answer::RoomState(RoomState { epoch, last_seq })
            }
            Query::SetEpoch { room, epoch } => {
                self.epochs.insert(room, epoch);
                Answer::EpochSet
            }
            Query::History { room, before, limit } => {
                let all = self.messages.get(&room);
                let below: Vec<&StoredMessage> = all
                    .into_iter()
                    .flat_map(|m| m.range(..before.unwrap_or(u64::MAX)))
                    .map(|(_, m)| m)
                    .collect();
                let page: Vec<StoredMessage> = below[below.len().saturating_sub(limit)..].iter().map(|m| (*m).clone()).collect();
                let more = below.len() > limit;
                let next_before = if more { page.first().map(|m| m.seq) } else { None };
                Answer::History(HistoryPage {
                    messages: page,
                    next_before,
                })
            }
            Query::RangeAfter { room, after, limit } => {
                let all = self.messages.get(&room);
                let msgs = all
                    .into_iter()
                    .flat_map(|m| m.range(after + 1..))
                    .take(limit)
                    .map(|(_, m)| m.clone())
                    .collect();
                Answer::RangeAfter(msgs)
            }
            Query::AddUserRoom { user, room } => {
                self.user_rooms.insert((user, room));
                Answer::UserRoomAdded
            }
            Query::ReplaceFrame { room, seq, frame } => {
                let m = self.messages.get_mut(&room).and_then(|m| m.get_mut(&seq));
                Answer::Replaced(m.map(|m| m.frame = frame).is_some())
            }
            // The harness makes no reactions: every page's count is empty.
            Query::ReactionCounts { .. } => Answer::ReactionCounts(Vec::new()),
            // Nor threads: no message has replies.
            Query::ReplyCounts { .. } => Answer::ReplyCounts(Vec::new()),
            other => panic!("the owner sent a query it does not use: {other:?}"),
        }
    }
}

/// One shard's admission into the shared in-memory store.
pub(super) struct Port {
    pub(super) shard: usize,
    pub(super) store: Rc<RefCell<MemStore>>,
}

impl StorePort for Port {
    fn write(&mut self, msg: StoredMessage, ticket: u64) -> Result<(), Overloaded> {
        let mut s = self.store.borrow_mut();
        if s.writes.len() >= s.write_cap {
            return Err(Overloaded);
        }
        s.writes.push_back((self.shard, ticket, msg));
        Ok(())
    }

    fn query(&mut self, query: Query, ticket: u64) -> Result<(), Overloaded> {
        let mut s = self.store.borrow_mut();
        if s.queries.len() >= s.query_cap {
            return Err(Overloaded);
        }
        s.queries.push_back((self.shard, ticket, query));
        Ok(())
    }
}

/// The room a query is about (one room's queries stay in order, as the store's lanes keep them).
pub(super) fn query_room(q: &Query) -> &str {
    match q {
        Query::RoomState { room, .. }
        | Query::SetEpoch { room, .. }
        | Query::History { room, .. }
        | Query::RangeAfter { room, .. }
        | Query::ReactionCounts { room, .. }
        | Query::ReplyCounts { room, .. }
        | Query::ReplaceFrame { room, .. } => room,
        _ => "",
    }
}
