use super::*;

fn typing() -> Typing {
    Typing::new(TypingConfig {
        ttl_ms: 5_000,
        interval_ms: 500,
        max_per_room: 3,
    })
}

/// Every event, as (room, user, typing), sorted (one flush has no order among users).
fn drain(t: &mut Typing) -> Vec<(String, String, bool)> {
    let mut v: Vec<_> = std::iter::from_fn(|| t.poll())
        .map(|e| (e.room.to_string(), e.user.to_string(), e.typing))
        .collect();
    v.sort();
    v
}

fn ev(room: &str, user: &str, typing: bool) -> (String, String, bool) {
    (room.into(), user.into(), typing)
}

#[test]
fn first_start_goes_at_once_and_a_refresh_says_nothing() {
    let mut t = typing();
    t.update("r", "a", true, 1_000);
    assert_eq!(drain(&mut t), vec![ev("r", "a", true)]);
    t.update("r", "a", true, 1_100);
    t.tick(1_600);
    assert_eq!(drain(&mut t), vec![]);
}

#[test]
fn changes_within_the_interval_are_coalesced() {
    let mut t = typing();
    t.update("r", "a", true, 1_000);
    drain(&mut t);
    t.update("r", "b", true, 1_100);
    t.update("r", "c", true, 1_200);
    t.update("r", "a", false, 1_300);
    assert_eq!(drain(&mut t), vec![], "paced until 1,500");
    assert_eq!(t.next_deadline(), Some(1_500));
    t.tick(1_499);
    assert_eq!(drain(&mut t), vec![]);
    t.tick(1_500);
    assert_eq!(drain(&mut t), vec![ev("r", "a", false), ev("r", "b", true), ev("r", "c", true)]);
}

#[test]
fn a_start_stopped_before_anyone_heard_it_is_never_announced() {
    let mut t = typing();
    t.update("r", "a", true, 1_000);
    drain(&mut t);
    t.update("r", "b", true, 1_100);
    t.update("r", "b", false, 1_200);
    t.tick(1_500);
    assert_eq!(drain(&mut t), vec![]);
    // A stop of someone never heard typing says nothing either.
    t.update("r", "z", false, 1_600);
    t.update("q", "z", false, 1_600);
    t.tick(2_200);
    assert_eq!(drain(&mut t), vec![]);
}

#[test]
fn a_start_runs_out_after_the_ttl_unless_refreshed() {
    let mut t = typing();
    t.update("r", "a", true, 1_000);
    t.update("r", "b", true, 1_000);
    t.tick(1_500);
    assert_eq!(drain(&mut t), vec![ev("r", "a", true), ev("r", "b", true)]);
    t.update("r", "b", true, 4_000);
    t.tick(5_999);
    assert_eq!(drain(&mut t), vec![]);
    t.tick(6_000);
    assert_eq!(drain(&mut t), vec![ev("r", "a", false)]);
    t.tick(9_000);
    assert_eq!(drain(&mut t), vec![ev("r", "b", false)]);
    t.tick(10_000);
    assert_eq!(t.rooms(), 0, "an idle room is forgotten");
    assert_eq!(t.next_deadline(), None);
}

#[test]
fn rooms_are_paced_apart_and_typers_per_room_are_bounded() {
    let mut t = typing();
    t.update("r", "a", true, 1_000);
    t.update("q", "a", true, 1_000);
    for u in ["b", "c", "d", "e"] {
        t.update("r", u, true, 1_000);
    }
    t.tick(1_500);
    let got = drain(&mut t);
    assert!(got.contains(&ev("q", "a", true)) && got.contains(&ev("r", "a", true)));
    let in_r = got.iter().filter(|e| e.0 == "r").count();
    assert_eq!(in_r, 3, "at most max_per_room typers: {got:?}");
    // A slot frees up when someone stops; then the next start fits.
    t.update("r", "a", false, 2_000);
    t.update("r", "e", true, 2_000);
    assert_eq!(drain(&mut t), vec![ev("r", "a", false)]);
    t.tick(2_500);
    assert_eq!(drain(&mut t), vec![ev("r", "e", true)]);
}

/// Random updates and ticks: members hear strictly alternating start/stop per user,
/// never two flushes of a room closer than the interval, and everything stops in the end.
#[test]
fn random_runs_keep_the_rules() {
    use rand::{rngs::StdRng, Rng, SeedableRng};
    for seed in 0..200u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut t = typing();
        let mut heard: HashMap<(String, String), bool> = HashMap::new();
        let mut last_flush: HashMap<String, u64> = HashMap::new();
        let mut now = 0;
        for _ in 0..300 {
            now += rng.random_range(0..400);
            let room = ["r", "q"][rng.random_range(0..2)];
            let user = ["a", "b", "c", "d"][rng.random_range(0..4)];
            match rng.random_range(0..3) {
                0 => t.update(room, user, true, now),
                1 => t.update(room, user, false, now),
                _ => t.tick(now),
            }
            let events: Vec<_> = std::iter::from_fn(|| t.poll()).collect();
            let mut flushed = Vec::new();
            for e in events {
                let was = heard.insert((e.room.to_string(), e.user.to_string()), e.typing).unwrap_or(false);
                assert_ne!(was, e.typing, "seed {seed}: {e:?} repeats what members heard");
                flushed.push(e.room.to_string());
            }
            flushed.dedup();
            for room in flushed {
                if let Some(prev) = last_flush.insert(room.clone(), now) {
                    assert!(now >= prev + 500, "seed {seed}: {room} flushed at {prev} and {now}");
                }
            }
        }
        while let Some(at) = t.next_deadline() {
            t.tick(at);
            for e in std::iter::from_fn(|| t.poll()) {
                heard.insert((e.room.to_string(), e.user.to_string()), e.typing);
            }
        }
        assert!(heard.values().all(|typing| !typing), "seed {seed}: someone still types");
        assert_eq!(t.rooms(), 0, "seed {seed}");
    }
}
