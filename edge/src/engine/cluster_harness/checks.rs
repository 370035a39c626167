//! What the cluster harness's clients check in every frame they get: one answer per
//! request, each room gap-free from the member's `joined` (or `since`), a `gap` only for
//! what no source holds (or what every read failed to get), and one message per
//! `(room, seq)`.

use bytes::Bytes;

use super::{json, sid_of, Sid, World, MAX_REPAIR_READS, SHARDS};

impl World {
    /// `payload` to every member of `room` on shard `sid` (its fan-out list).
    pub(super) fn deliver_to_members(&mut self, sid: Sid, room: &str, payload: &Bytes) {
        let members: Vec<u64> = self
            .clients
            .iter()
            .filter(|(id, c)| sid_of(**id) == sid && c.member.contains_key(room))
            .map(|(id, _)| *id)
            .collect();
        for conn in members {
            self.deliver_to_client(conn, payload);
        }
    }

    pub(super) fn deliver_to_client(&mut self, conn: u64, payload: &Bytes) {
        let v = json(payload);
        let room = v["room"].as_str().unwrap_or_default().to_owned();
        match v["type"].as_str() {
            Some("ack") => {
                self.answered(v["id"].as_str().expect("ack id"));
                self.name(&room, v["seq"].as_u64().expect("seq"), v["msg_id"].as_str().expect("msg_id"));
            }
            Some("error") => self.answered(v["id"].as_str().expect("error id")),
            Some("message") => {
                let seq = v["seq"].as_u64().expect("seq");
                self.name(&room, seq, v["msg_id"].as_str().expect("msg_id"));
                let Some(last) = self.clients.get_mut(&conn).and_then(|c| c.member.get_mut(&room)) else {
                    return;
                };
                assert_eq!(seq, *last + 1, "conn {conn:x} in {room}: message {seq} after {last}");
                *last = seq;
            }
            Some("gap") => {
                let (from, to) = (v["from"].as_u64().expect("from"), v["to"].as_u64().expect("to"));
                let oldest = self.streams.get(&room).and_then(|s| s.front()).map_or(u64::MAX, |m| m.seq);
                let failed = self.failed_holes.get(&(sid_of(conn), room.clone(), to)) >= Some(&MAX_REPAIR_READS)
                    || self.failed_recoveries.contains(&(sid_of(conn) / SHARDS, room.clone(), to));
                assert!(
                    to < oldest || failed,
                    "{room}: gap {from}..={to} while the stream still holds from {oldest}"
                );
                let Some(last) = self.clients.get_mut(&conn).and_then(|c| c.member.get_mut(&room)) else {
                    return;
                };
                assert_eq!(from, *last + 1, "conn {conn:x} in {room}: gap {from}..={to} after {last}");
                *last = to;
            }
            other => panic!("unexpected {other:?}: {v}"),
        }
    }

    pub(super) fn name(&mut self, room: &str, seq: u64, msg_id: &str) {
        let prev = self.names.entry((room.to_owned(), seq)).or_insert_with(|| msg_id.to_owned());
        assert_eq!(prev, msg_id, "{room}/{seq} names two messages");
    }
}
