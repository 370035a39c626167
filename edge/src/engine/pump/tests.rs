//! The pump against a model of Redis (one room's counter and trimmed stream,
//! lost deliveries, each followed by the bridge's resync, lost data,
//! reconnects, the room subscribed again) and of the bridge's seq check.
//! Its reads are answered late, right or failed; each shard's frames must
//! account for every seq in order.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use router::bridge::{BridgeEvent, RecentMessage};
use router::{ArchivedFrame, Frame};

use super::*;

const ROOM: &str = "r";
const NOW: u64 = 1_000;

fn deliver_frame(seq: u64) -> Bytes {
    router::encode(&Frame::Deliver {
        room: ROOM.into(),
        seq,
        payload: format!("m{seq}").into_bytes(),
        at_us: 0,
    })
}

fn shards() -> Arc<[u16]> {
    Arc::from(vec![0u16, 1])
}

/// What a shard got, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Got {
    Message(u64),
    Gap(u64, u64),
    Epoch,
    Reset(u64),
    Event,
    /// Not a frame: the model's mark that the node subscribed the room again (the shard's
    /// feed starts again too).
    Resubscribed,
}

fn read(frame: &Bytes) -> Got {
    match router::decode(frame).expect("a valid mesh frame") {
        ArchivedFrame::Deliver { seq, payload, .. } if seq.to_native() == 0 => {
            let v: serde_json::Value = serde_json::from_slice(payload.as_slice()).unwrap();
            match v["type"].as_str() {
                Some("epoch") => Got::Epoch,
                other => panic!("a notice of type {other:?}"),
            }
        }
        ArchivedFrame::Deliver { seq, .. } => Got::Message(seq.to_native()),
        ArchivedFrame::Reset { seq, .. } => Got::Reset(seq.to_native()),
        ArchivedFrame::Gap { from, to, payload, .. } => {
            let v: serde_json::Value = serde_json::from_slice(payload.as_slice()).unwrap();
            assert_eq!(v["type"], "gap", "a gap frame carries the gap notice");
            assert_eq!(
                (v["from"].as_u64(), v["to"].as_u64()),
                (Some(from.to_native()), Some(to.to_native()))
            );
            Got::Gap(from.to_native(), to.to_native())
        }
        ArchivedFrame::Event { .. } => Got::Event,
        _ => panic!("an unexpected frame"),
    }
}

/// Redis and the bridge, for one room.
struct Model {
    /// Redis's counter.
    counter: u64,
    /// The stream's seqs (the last `keep`).
    stream: VecDeque<u64>,
    keep: usize,
    /// The bridge's last seq received (its gap check).
    last: Option<u64>,
    /// Events the bridge has not handed over yet.
    queue: VecDeque<BridgeEvent>,
    /// The read the pump asked for and has not been answered.
    out: Option<PumpCall>,
    /// What each shard got.
    got: [Vec<Got>; 2],
}

impl Model {
    fn new(keep: usize) -> Self {
        Self {
            counter: 0,
            stream: VecDeque::new(),
            keep,
            last: None,
            queue: VecDeque::new(),
            out: None,
            got: [Vec::new(), Vec::new()],
        }
    }

    fn publish(&mut self, delivered: bool) {
        self.counter += 1;
        let seq = self.counter;
        self.stream.push_back(seq);
        while self.stream.len() > self.keep {
            self.stream.pop_front();
        }
        if !delivered {
            // Pub/sub loses a message only when the connection drops (or the reader fell
            // behind): the bridge resyncs once it is back.
            self.resync(false);
            return;
        }
        let last = self.last.replace(seq);
        let first = last.is_none();
        if let Some(last) = last.filter(|&l| l + 1 != seq) {
            self.queue.push_back(BridgeEvent::Gap {
                room: ROOM.into(),
                expected: last + 1,
                got: seq,
            });
        }
        self.queue.push_back(BridgeEvent::Deliver {
            room: ROOM.into(),
            seq,
            payload: Bytes::from(format!("m{seq}")),
            frame: deliver_frame(seq),
            shards: shards(),
            first,
        });
    }

    /// A message the bridge never sees, and no resync follows (the named cases below check
    /// the bridge's gap and the pump's own check without one).
    fn publish_unseen(&mut self) {
        self.counter += 1;
        self.stream.push_back(self.counter);
        while self.stream.len() > self.keep {
            self.stream.pop_front();
        }
    }

    /// Redis restarts without its data: the counter starts again (or, on a shared store,
    /// goes on from its floor), the stream is empty, and the bridge resyncs with `lost`.
    fn lose_data(&mut self, floor: bool) {
        if !floor {
            self.counter = 0;
        }
        self.stream.clear();
        self.resync(true);
    }

    fn resync(&mut self, lost: bool) {
        self.queue.push_back(BridgeEvent::Resync {
            rooms: vec![ROOM.into()],
            lost,
        });
    }

    fn answer(&self, call: &PumpCall, fail: bool) -> PumpAnswer {
        match call {
            PumpCall::Recent { after, count, .. } => PumpAnswer::Recent((!fail).then(|| {
                self.stream
                    .iter()
                    .filter(|&&s| s > *after && s <= after + u64::from(*count))
                    .map(|&seq| RecentMessage {
                        seq,
                        payload: Bytes::from(format!("m{seq}")),
                        frame: deliver_frame(seq),
                    })
                    .collect()
            })),
            PumpCall::RoomSeq { .. } => PumpAnswer::RoomSeq((!fail).then_some(self.counter)),
            PumpCall::Online { .. } => PumpAnswer::Online((!fail).then_some(1)),
        }
    }

    /// Carries out the pump's effects: frames to the shards, a read to answer later.
    fn collect(&mut self, pump: &mut Pump) {
        while let Some(e) = pump.poll() {
            match e {
                PumpEffect::Send { shard, frame } => self.got[usize::from(shard)].push(read(&frame)),
                PumpEffect::Call(call) => {
                    assert!(self.out.is_none(), "a second read while one is out");
                    self.out = Some(call);
                }
            }
        }
        assert_eq!(pump.waiting(), self.out.is_some());
    }

    /// Hands the bridge's next event over, if no read is out (as the shell does).
    fn feed(&mut self, pump: &mut Pump) {
        if pump.waiting() {
            return;
        }
        if let Some(ev) = self.queue.pop_front() {
            pump.event(ev, NOW);
            self.collect(pump);
        }
    }

    fn reply(&mut self, pump: &mut Pump, fail: bool) {
        if let Some(call) = self.out.take() {
            let answer = self.answer(&call, fail);
            pump.answered(answer, NOW);
            self.collect(pump);
        }
    }

    /// Everything handed over and answered right.
    fn settle(&mut self, pump: &mut Pump) {
        while self.out.is_some() || !self.queue.is_empty() {
            self.reply(pump, false);
            self.feed(pump);
        }
    }
}

/// Each seq a shard got is accounted for in order, once: within an epoch (from a reset on) a
/// message is the one after the last seq accounted for, or a gap notice covers the seqs from
/// there; a repeat (only after the room was subscribed again) is dropped as a shard's feed
/// drops it. Returns the last seq accounted for.
fn check_order(got: &[Got]) -> Result<Option<u64>, String> {
    let mut at: Option<u64> = None;
    for (i, g) in got.iter().enumerate() {
        match *g {
            // Repeats come only around a resubscription (see `Pump`); the shard's feed drops
            // them, as here.
            Got::Message(s) if at.is_some_and(|a| s <= a) => {
                if !got[..i].contains(&Got::Resubscribed) {
                    return Err(format!("frame {i}: message {s} again, after {at:?}: {got:?}"));
                }
            }
            Got::Message(s) => {
                if at.is_some_and(|a| s != a + 1) {
                    return Err(format!("frame {i}: message {s} after {at:?}: {got:?}"));
                }
                at = Some(s);
            }
            Got::Gap(from, to) => {
                if from > to || at.is_some_and(|a| from != a + 1) {
                    return Err(format!("frame {i}: gap {from}-{to} after {at:?}: {got:?}"));
                }
                at = Some(to);
            }
            Got::Reset(s) => at = Some(s),
            Got::Resubscribed => at = None,
            Got::Epoch | Got::Event => {}
        }
    }
    Ok(at)
}

#[test]
fn a_lost_delivery_is_read_from_the_stream_and_forwarded_before_the_next() {
    let mut m = Model::new(10);
    let mut pump = Pump::new(2, 100);
    m.publish(true);
    m.publish_unseen();
    m.publish_unseen();
    m.publish(true);
    for _ in 0..3 {
        // 1, the bridge's gap (the pump checks the delivery itself), 4.
        m.feed(&mut pump);
    }
    assert!(pump.waiting(), "the gap's read is out");
    assert_eq!(
        m.out,
        Some(PumpCall::Recent {
            room: ROOM.into(),
            after: 1,
            count: 2
        })
    );
    m.feed(&mut pump);
    assert_eq!(m.got[0], [Got::Message(1)], "the next delivery waits for the read");
    m.settle(&mut pump);
    assert_eq!(m.got[0], [1, 2, 3, 4].map(Got::Message));
    assert_eq!(m.got[0], m.got[1]);
}

#[test]
fn what_the_stream_no_longer_holds_is_a_gap_and_a_failed_read_is_one_too() {
    let mut m = Model::new(2);
    let mut pump = Pump::new(2, 100);
    m.publish(true);
    for _ in 0..4 {
        m.publish_unseen();
    }
    m.publish(true);
    m.settle(&mut pump);
    assert_eq!(m.got[0], [Got::Message(1), Got::Gap(2, 4), Got::Message(5), Got::Message(6)]);
    m.publish_unseen();
    m.publish(true);
    m.feed(&mut pump);
    m.feed(&mut pump);
    assert!(pump.waiting());
    m.reply(&mut pump, true);
    m.settle(&mut pump);
    assert_eq!(&m.got[0][4..], [Got::Gap(7, 7), Got::Message(8)]);
}

#[test]
fn a_sequence_that_went_back_resets_the_shards_and_a_lost_store_floor_is_a_new_epoch() {
    let mut m = Model::new(10);
    let mut pump = Pump::new(2, 100);
    m.publish(true);
    m.publish(true);
    m.settle(&mut pump);
    m.lose_data(false);
    m.publish(true);
    m.settle(&mut pump);
    assert_eq!(&m.got[0][2..], [Got::Reset(1), Got::Reset(0), Got::Message(1)], "{:?}", m.got[0]);
    // On a shared store the counter goes on: members hear of the new epoch, the rest is a gap.
    let mut m = Model::new(10);
    let mut pump = Pump::new(2, 100);
    m.publish(true);
    m.settle(&mut pump);
    m.lose_data(true);
    m.settle(&mut pump);
    assert_eq!(&m.got[0][1..], [Got::Epoch]);
    m.publish_unseen();
    m.resync(false);
    m.settle(&mut pump);
    assert_eq!(&m.got[0][2..], [Got::Message(2)]);
}

/// Found by the property test: a resync reads up to Redis's seq, and the delivery of that
/// message is queued behind the resync: it went a second time, and the bridge's gap, which
/// the resync covered, was announced twice.
#[test]
fn a_resync_read_overlapping_the_deliveries_behind_it_sends_nothing_twice() {
    let mut m = Model::new(1);
    let mut pump = Pump::new(2, 100);
    m.publish(true);
    m.resync(false);
    m.publish_unseen();
    m.publish_unseen();
    m.publish(true);
    m.settle(&mut pump);
    assert_eq!(m.got[0], [Got::Message(1), Got::Gap(2, 3), Got::Message(4)]);
}

/// Found by the property test: after Redis lost the room (reset to 0), the bridge's own last
/// seq (1, from before) made seq 2 look in order, and seq 1 went missing without a gap.
#[test]
fn after_a_reset_a_skipped_seq_the_bridge_thinks_in_order_is_read_from_the_stream() {
    let mut m = Model::new(1);
    let mut pump = Pump::new(2, 100);
    m.publish(true);
    m.feed(&mut pump);
    m.lose_data(false);
    m.feed(&mut pump);
    m.reply(&mut pump, false);
    assert_eq!(m.got[0], [Got::Message(1), Got::Reset(0)]);
    m.publish_unseen();
    m.publish(true);
    m.settle(&mut pump);
    assert_eq!(
        &m.got[0][2..],
        [Got::Gap(1, 1), Got::Message(2)],
        "1 was trimmed from the stream (keep = 1)"
    );
}

#[test]
fn presence_above_the_bound_is_counted_at_the_tick() {
    let mut m = Model::new(10);
    let mut pump = Pump::new(2, 0);
    m.queue.push_back(BridgeEvent::PresenceChanged {
        room: ROOM.into(),
        user: "ann".into(),
        node: "n1".into(),
        online: true,
    });
    m.settle(&mut pump);
    assert!(m.got[0].is_empty(), "above the bound: a count at the next tick");
    pump.tick(NOW);
    m.collect(&mut pump);
    m.settle(&mut pump);
    assert_eq!(m.got[0], [Got::Event]);
}

/// One step of the property test.
#[derive(Debug, Clone, Copy)]
enum Op {
    Publish { delivered: bool },
    LoseData { floor: bool },
    Reconnect,
    Resubscribe,
    Feed,
    Answer { fail: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => any::<bool>().prop_map(|d| Op::Publish { delivered: d }),
        1 => any::<bool>().prop_map(|floor| Op::LoseData { floor }),
        1 => Just(Op::Reconnect),
        1 => Just(Op::Resubscribe),
        6 => Just(Op::Feed),
        4 => prop::bool::weighted(0.2).prop_map(|fail| Op::Answer { fail }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Whatever is lost and whenever reads are answered, each shard gets every seq in order,
    /// once, or a gap notice for it (a reset starts an epoch), both shards the same; once
    /// everything is handed over, answered and resynced, the pump has forwarded up to
    /// Redis's counter.
    #[test]
    fn every_seq_reaches_each_shard_in_order_or_as_a_gap(
        keep in 1usize..8,
        ops in prop::collection::vec(op(), 1..120),
    ) {
        let mut m = Model::new(keep);
        let mut pump = Pump::new(2, 100);
        for op in ops {
            match op {
                Op::Publish { delivered } => m.publish(delivered),
                // Not while events received before it still wait: a pump that lags behind a
                // data loss reads the new sequence for those events (a resync resets the
                // shards, then the old events go out, then the loss's resync resets again).
                Op::LoseData { floor } if m.queue.is_empty() => {
                    m.lose_data(floor);
                    if !floor {
                        // A sequence that restarts is told apart from one that goes on only by
                        // being behind: the resync runs before the new one passes the old.
                        m.settle(&mut pump);
                    }
                }
                Op::LoseData { .. } => m.feed(&mut pump),
                Op::Reconnect => m.resync(false),
                // Only once what was received under the old subscription is handed over.
                Op::Resubscribe if m.queue.is_empty() && m.out.is_none() => {
                    m.last = None;
                    m.got.iter_mut().for_each(|g| g.push(Got::Resubscribed));
                }
                Op::Resubscribe => m.feed(&mut pump),
                Op::Feed => m.feed(&mut pump),
                Op::Answer { fail } => m.reply(&mut pump, fail),
            }
            for got in &m.got {
                check_order(got).map_err(TestCaseError::fail)?;
            }
        }
        m.settle(&mut pump);
        m.resync(false);
        m.settle(&mut pump);
        prop_assert_eq!(&m.got[0], &m.got[1]);
        let at = check_order(&m.got[0]).map_err(TestCaseError::fail)?;
        if pump.forwarded(ROOM).is_some() {
            prop_assert_eq!(pump.forwarded(ROOM), Some(m.counter), "caught up: {:?}", m.got[0]);
            // (`None`: nothing came since the node subscribed the room again.)
            prop_assert!(at.is_none_or(|at| at == m.counter), "shard at {:?}, Redis at {}", at, m.counter);
        }
    }
}
