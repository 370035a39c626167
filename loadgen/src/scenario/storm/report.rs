//! The storm's summary: merges the cores' tallies, prints the table and writes the JSON.

use std::collections::HashMap;

use serde_json::json;

use super::{CoreOut, StormArgs};
use crate::output::{self, obj};
use crate::scenario::Outcomes;
use crate::seq::Tally;

/// The most events within any one-second window of sorted times (ns).
fn peak_per_s(sorted_ns: &[u64]) -> usize {
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..sorted_ns.len() {
        while sorted_ns[hi] - sorted_ns[lo] >= 1_000_000_000 {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

pub(super) fn report(a: &StormArgs, cores: Vec<CoreOut>, driver: Option<String>, cpus: &[usize]) -> anyhow::Result<bool> {
    let mut last_acked: HashMap<usize, u64> = HashMap::new();
    for c in &cores {
        for (&r, &s) in &c.last_acked {
            let e = last_acked.entry(r).or_default();
            *e = (*e).max(s);
        }
    }
    let mut tally = Tally::default();
    let (mut initial, mut storm, mut sender_errors) = (Outcomes::default(), Outcomes::default(), Outcomes::default());
    let (mut reconnects, mut caught_up) = (Vec::new(), Vec::new());
    let mut not_recovered = 0;
    // Each core measured from its own view of the storm start; for `server`
    // the start is the first close any core saw.
    let start_min = cores
        .iter()
        .filter_map(|c| c.first_close_ns.or(Some(c.storm_start_ns)))
        .filter(|&s| s > 0)
        .min()
        .unwrap_or(0);
    for c in &cores {
        let shift = c.storm_start_ns.saturating_sub(start_min);
        for (room, t) in &c.trackers {
            tally.add(&t.finish(last_acked.get(room).copied().unwrap_or(0)));
        }
        initial.merge(&c.initial);
        storm.merge(&c.storm);
        sender_errors.merge(&c.sender_errors);
        reconnects.extend(c.reconnect_ns.iter().map(|n| n + shift));
        caught_up.extend(c.caught_up_ns.iter().map(|n| n + shift));
        not_recovered += c.not_recovered;
    }
    reconnects.sort_unstable();
    caught_up.sort_unstable();
    let secs = |v: &[u64]| v.last().map(|&n| n as f64 / 1e9);
    let peak = peak_per_s(&reconnects);
    let all_back = reconnects.len() == a.conns && caught_up.len() == a.conns;
    let results = obj(vec![
        ("conns", json!(a.conns)),
        ("initial_outcomes", initial.to_json()),
        ("reconnected", json!(reconnects.len())),
        ("caught_up", json!(caught_up.len())),
        ("not_recovered", json!(not_recovered)),
        (
            "time_to_all_reconnected_s",
            json!(if reconnects.len() == a.conns { secs(&reconnects) } else { None }),
        ),
        (
            "time_to_all_caught_up_s",
            json!(if caught_up.len() == a.conns { secs(&caught_up) } else { None }),
        ),
        (
            "reconnect_p50_s",
            json!(reconnects.get(reconnects.len() / 2).map(|&n| n as f64 / 1e9)),
        ),
        ("peak_accepted_per_s", json!(peak)),
        ("storm_outcomes", storm.to_json()),
        ("messages_delivered", json!(tally.delivered)),
        ("messages_lost", json!(tally.lost)),
        ("messages_duplicated", json!(tally.duplicated)),
        ("messages_out_of_order", json!(tally.out_of_order)),
        ("messages_announced_lost", json!(tally.announced_lost)),
        ("sender_errors", sender_errors.to_json()),
    ]);
    let fmt_s = |v: Option<f64>| v.map_or("not all".to_owned(), |s| format!("{s:.2} s"));
    let rows = vec![
        ("initial connects".into(), initial.describe()),
        (
            "reconnected".into(),
            format!("{} of {} (not recovered {not_recovered})", reconnects.len(), a.conns),
        ),
        (
            "time to all reconnected".into(),
            fmt_s(if reconnects.len() == a.conns { secs(&reconnects) } else { None }),
        ),
        (
            "time to all caught up".into(),
            fmt_s(if caught_up.len() == a.conns { secs(&caught_up) } else { None }),
        ),
        ("peak accepted".into(), format!("{peak}/s")),
        ("storm outcomes".into(), storm.describe()),
        (
            "messages across the storm".into(),
            format!(
                "delivered {}, lost {}, duplicated {}, out of order {}, announced gaps {}",
                tally.delivered, tally.lost, tally.duplicated, tally.out_of_order, tally.announced_lost
            ),
        ),
        ("sender errors".into(), sender_errors.describe()),
    ];
    output::print_table(&format!("storm: {} connections, trigger {:?}", a.conns, a.trigger), &rows);
    let params = json!({
        "conns": a.conns, "rooms": a.rooms, "rate_per_room": a.rate_per_room, "trigger": format!("{:?}", a.trigger).to_lowercase(),
        "hold_s": a.hold_s, "storm_timeout_s": a.storm_timeout_s, "backoff_base_ms": a.backoff_base_ms, "backoff_cap_ms": a.backoff_cap_ms,
        "concurrency_per_core": a.common.concurrency, "urls": a.common.urls,
    });
    output::write_json(
        a.common.json.as_deref(),
        &output::envelope("storm", params, results, (driver, a.common.server_cpus.clone()), cpus),
    )?;
    Ok(all_back && tally.lost == 0 && tally.duplicated == 0)
}

#[cfg(test)]
mod tests {
    use super::peak_per_s;

    #[test]
    fn peak_counts_the_busiest_second() {
        let s = 1_000_000_000u64;
        assert_eq!(peak_per_s(&[]), 0);
        assert_eq!(peak_per_s(&[0, 1, 2]), 3);
        assert_eq!(peak_per_s(&[0, s / 2, s, s + 1, s + 2, 3 * s]), 4);
    }
}
