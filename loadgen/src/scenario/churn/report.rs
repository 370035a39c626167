//! The churn run's summary: the counts merged over cores, the table and the JSON.

use serde_json::json;

use super::ChurnArgs;
use crate::output::{self, obj};
use crate::scenario::{histogram, Outcomes};

/// One core's counts.
pub(super) struct Tally {
    pub(super) connects: u64,
    pub(super) sessions_done: u64,
    pub(super) joins: u64,
    pub(super) fresh_joins: u64,
    pub(super) revisits: u64,
    pub(super) sends: u64,
    pub(super) acks: u64,
    pub(super) leaves: u64,
    pub(super) disconnects: u64,
    pub(super) storm_drops: u64,
    pub(super) storms: u64,
    pub(super) deliveries: u64,
    pub(super) highest_fresh: Option<u64>,
    pub(super) errors: Outcomes,
    pub(super) connect_us: hdrhistogram::Histogram<u64>,
    pub(super) ack_us: hdrhistogram::Histogram<u64>,
}

impl Tally {
    pub(super) fn new() -> Self {
        Self {
            connects: 0,
            sessions_done: 0,
            joins: 0,
            fresh_joins: 0,
            revisits: 0,
            sends: 0,
            acks: 0,
            leaves: 0,
            disconnects: 0,
            storm_drops: 0,
            storms: 0,
            deliveries: 0,
            highest_fresh: None,
            errors: Outcomes::default(),
            connect_us: histogram(),
            ack_us: histogram(),
        }
    }

    pub(super) fn merge(&mut self, o: &Self) {
        self.connects += o.connects;
        self.sessions_done += o.sessions_done;
        self.joins += o.joins;
        self.fresh_joins += o.fresh_joins;
        self.revisits += o.revisits;
        self.sends += o.sends;
        self.acks += o.acks;
        self.leaves += o.leaves;
        self.disconnects += o.disconnects;
        self.storm_drops += o.storm_drops;
        self.storms = self.storms.max(o.storms);
        self.deliveries += o.deliveries;
        self.highest_fresh = self.highest_fresh.max(o.highest_fresh);
        self.errors.merge(&o.errors);
        // Same bounds on every core: adding cannot fail.
        let _ = self.connect_us.add(&o.connect_us);
        let _ = self.ack_us.add(&o.ack_us);
    }
}

pub(super) fn report(a: &ChurnArgs, t: &Tally, driver: Option<String>, cpus: &[usize]) -> anyhow::Result<bool> {
    let secs = a.common.duration_s as f64;
    let rate = |n: u64| n as f64 / secs;
    let errors_total: u64 = t.errors.0.values().sum();
    let fresh_names = t.highest_fresh.map_or(0, |n| n + 1);
    let results = obj(vec![
        ("duration_s", json!(a.common.duration_s)),
        ("connects", json!(t.connects)),
        ("sessions_completed", json!(t.sessions_done)),
        ("joins", json!(t.joins)),
        ("fresh_joins", json!(t.fresh_joins)),
        ("revisits", json!(t.revisits)),
        ("fresh_room_names", json!(fresh_names)),
        ("sends", json!(t.sends)),
        ("acks", json!(t.acks)),
        ("leaves", json!(t.leaves)),
        ("disconnects", json!(t.disconnects)),
        ("storms", json!(t.storms)),
        ("storm_drops", json!(t.storm_drops)),
        ("deliveries", json!(t.deliveries)),
        ("connects_per_s", json!(rate(t.connects))),
        ("joins_per_s", json!(rate(t.joins))),
        ("acks_per_s", json!(rate(t.acks))),
        ("connect_latency_ms", output::latency_ms(&t.connect_us)),
        ("ack_latency_ms", output::latency_ms(&t.ack_us)),
        ("errors_total", json!(errors_total)),
        ("errors", t.errors.to_json()),
    ]);
    print_summary(a, t, errors_total, fresh_names);
    let params = json!({
        "clients": a.clients, "pool_rooms": a.pool_rooms, "pool_joins": a.pool_joins,
        "fresh_rooms_per_s": a.fresh_rooms_per_s, "revisit_pct": a.revisit_pct,
        "revisit_age_s": a.revisit_age_s, "revisit_band_s": a.revisit_band_s,
        "msgs_per_room": a.msgs_per_room, "hold_ms": a.hold_ms, "pause_ms": a.pause_ms,
        "frame_gap_ms": a.frame_gap_ms, "storm_every_s": a.storm_every_s, "storm_pct": a.storm_pct,
        "duration_s": a.common.duration_s, "urls": a.common.urls,
    });
    output::write_json(
        a.common.json.as_deref(),
        &output::envelope("churn", params, results, (driver, a.common.server_cpus.clone()), cpus),
    )?;
    Ok(errors_total == 0 && t.connects > 0)
}

fn print_summary(a: &ChurnArgs, t: &Tally, errors_total: u64, fresh_names: u64) {
    let secs = a.common.duration_s as f64;
    let ms = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let rows = vec![
        (
            "connects".into(),
            format!(
                "{} ({:.0}/s), sessions completed {}",
                t.connects,
                t.connects as f64 / secs,
                t.sessions_done
            ),
        ),
        (
            "joins".into(),
            format!(
                "{} ({:.0}/s; fresh rooms {}, of them revisits {}; {fresh_names} fresh names)",
                t.joins,
                t.joins as f64 / secs,
                t.fresh_joins,
                t.revisits
            ),
        ),
        (
            "sends / acks".into(),
            format!("{} / {} ({:.0} acks/s)", t.sends, t.acks, t.acks as f64 / secs),
        ),
        ("leaves / closes".into(), format!("{} / {}", t.leaves, t.disconnects)),
        ("storms".into(), format!("{}, {} connections dropped", t.storms, t.storm_drops)),
        ("deliveries".into(), t.deliveries.to_string()),
        (
            "latency".into(),
            format!(
                "connect p50 {:.2} ms p99 {:.2}; ack p50 {:.2} ms p99 {:.2}",
                ms(&t.connect_us, 0.5),
                ms(&t.connect_us, 0.99),
                ms(&t.ack_us, 0.5),
                ms(&t.ack_us, 0.99)
            ),
        ),
        ("errors".into(), format!("{errors_total} ({})", t.errors.describe())),
    ];
    let title = format!(
        "churn: {} clients, {} s, pool {} rooms x {} joins, {} fresh rooms/s, storm every {} s ({} %)",
        a.clients, a.common.duration_s, a.pool_rooms, a.pool_joins, a.fresh_rooms_per_s, a.storm_every_s, a.storm_pct
    );
    output::print_table(&title, &rows);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_merge() {
        let mut a = Tally::new();
        let mut b = Tally::new();
        a.connects = 2;
        b.connects = 3;
        b.storms = 4;
        b.highest_fresh = Some(9);
        b.errors.add("send_timeout", 1);
        let _ = b.ack_us.record(1000);
        a.merge(&b);
        assert_eq!((a.connects, a.storms, a.highest_fresh), (5, 4, Some(9)));
        assert_eq!(a.errors.get("send_timeout"), 1);
        assert_eq!(a.ack_us.len(), 1);
    }
}
