//! The session's checks, request by request.

use serde_json::Value;

use super::*;
use crate::auth::{mint_hs256, AuthSettings};

const SECRET: &str = "a-session-test-secret-of-32-bytes-at-least";
const NOW_MS: u64 = 1_700_000_000_000;

fn limits() -> SessionLimits {
    SessionLimits {
        max_body_chars: 100,
        max_rooms_per_conn: 2,
        max_msgs_per_s: 1.0,
        msgs_burst: 1000,
        rate_limit_strikes: 3,
        reply_budget_bytes: 1000,
    }
}

struct World {
    limits: SessionLimits,
    verifier: Verifier,
    stats: ShardStats,
    mono_ns: u64,
    reply_bytes: usize,
}

impl World {
    fn new(limits: SessionLimits) -> Self {
        let settings = AuthSettings {
            secret: Some(SECRET.into()),
            ..AuthSettings::default()
        };
        Self {
            limits,
            verifier: Verifier::new(&settings).expect("verifier"),
            stats: ShardStats::default(),
            mono_ns: 0,
            reply_bytes: 0,
        }
    }

    fn frame<'a>(&self, s: &mut Session, text: &'a str) -> (Option<&'a str>, Step<'a>) {
        let cx = FrameCtx {
            limits: &self.limits,
            verifier: &self.verifier,
            mono_ns: self.mono_ns,
            now_ms: NOW_MS,
            reply_bytes: self.reply_bytes,
            stats: &self.stats,
        };
        s.frame(text, &cx)
    }
}

fn token(user: &str, rooms: Option<Vec<String>>) -> String {
    mint_hs256(SECRET, user, 3600, rooms, None, NOW_MS / 1000).expect("token")
}

fn json(b: &Bytes) -> Value {
    serde_json::from_slice(b).expect("json")
}

fn refusal(step: &Step<'_>) -> Value {
    match step {
        Step::Reply(b) => json(b),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn authed(w: &World, user: &str) -> Session {
    let mut s = Session::new(&w.limits, vec![("lobby".into(), Some(3))]);
    let auth = format!(r#"{{"type":"auth","token":"{}"}}"#, token(user, None));
    let (_, step) = w.frame(&mut s, &auth);
    let Step::Welcome { joins } = step else { panic!("{step:?}") };
    assert_eq!(joins, [("lobby".to_owned(), Some(3))], "the URL's joins run after auth");
    s
}

#[test]
fn nothing_but_auth_before_authentication_and_a_bad_token_closes_1008() {
    let w = World::new(limits());
    let mut s = Session::new(&w.limits, Vec::new());
    let (id, step) = w.frame(&mut s, r#"{"type":"join","room":"r","id":"1"}"#);
    assert_eq!(id, Some("\"1\""));
    let Step::Close { reply, code: 1008, .. } = step else {
        panic!("{step:?}")
    };
    assert_eq!(json(&reply)["code"], "unauthorized");
    let (_, step) = w.frame(&mut s, r#"{"type":"auth","token":"not.a.jwt"}"#);
    assert!(matches!(step, Step::Close { code: 1008, .. }), "{step:?}");
    assert!(s.user().is_none());
}

#[test]
fn joins_are_checked_and_the_session_keeps_its_rooms() {
    let w = World::new(limits());
    let mut s = authed(&w, "ann");
    assert!(matches!(w.frame(&mut s, r#"{"type":"join","room":"a"}"#).1, Step::Join { .. }));
    assert_eq!(
        refusal(&w.frame(&mut s, r#"{"type":"join","room":"a","id":2}"#).1)["code"],
        "bad_request"
    );
    assert!(matches!(
        w.frame(&mut s, r#"{"type":"join","room":"b","since":4}"#).1,
        Step::Join { since: Some(4), .. }
    ));
    let over = refusal(&w.frame(&mut s, r#"{"type":"join","room":"c"}"#).1);
    assert_eq!(over["code"], "forbidden", "max_rooms_per_conn is 2: {over}");
    assert_eq!(
        refusal(&w.frame(&mut s, r#"{"type":"join","room":"dm:bob:cat"}"#).1)["code"],
        "forbidden"
    );
    assert_eq!(s.rooms(), ["a", "b"]);
    let Step::Leave { room } = w.frame(&mut s, r#"{"type":"leave","room":"a"}"#).1 else {
        panic!()
    };
    assert_eq!(room, "a");
    assert_eq!(refusal(&w.frame(&mut s, r#"{"type":"leave","room":"a"}"#).1)["code"], "not_found");
    s.forget_room("b");
    assert!(s.rooms().is_empty());
}

#[test]
fn a_catch_up_or_history_waits_while_replies_are_over_budget() {
    let mut w = World::new(limits());
    let mut s = authed(&w, "ann");
    w.reply_bytes = 1001;
    let r = refusal(&w.frame(&mut s, r#"{"type":"join","room":"a","since":1}"#).1);
    assert_eq!(
        (r["code"].as_str(), r["retry_ms"].as_u64()),
        (Some("overloaded"), Some(Busy::Shard.retry_ms()))
    );
    assert_eq!(
        refusal(&w.frame(&mut s, r#"{"type":"history","room":"a"}"#).1)["code"],
        "overloaded"
    );
    assert!(
        matches!(w.frame(&mut s, r#"{"type":"join","room":"a"}"#).1, Step::Join { .. }),
        "no catch-up: no budget needed"
    );
    assert_eq!(w.stats.reply_budget_refused_total.load(std::sync::atomic::Ordering::Relaxed), 2);
}

#[test]
fn sends_go_to_joined_rooms_or_a_dm_room() {
    let w = World::new(limits());
    let mut s = authed(&w, "ann");
    let r = refusal(&w.frame(&mut s, r#"{"type":"send","room":"a","body":"x"}"#).1);
    assert_eq!(r["code"], "forbidden");
    w.frame(&mut s, r#"{"type":"join","room":"a"}"#);
    let Step::Send { room, .. } = w.frame(&mut s, r#"{"type":"send","room":"a","body":"x"}"#).1 else {
        panic!()
    };
    assert_eq!(room, "a");
    let Step::Send { room, .. } = w.frame(&mut s, r#"{"type":"send","to":"bob","body":"x"}"#).1 else {
        panic!()
    };
    assert_eq!(room, auth::dm_room("ann", "bob"));
    // Seq 0 is no message: refused here, in both modes, before any sequencer sees it.
    let r = refusal(&w.frame(&mut s, r#"{"type":"send","room":"a","body":"x","reply_to":0}"#).1);
    assert_eq!(r["code"], "not_found", "{r}");
    let Step::Send { send, .. } = w.frame(&mut s, r#"{"type":"send","room":"a","body":"x","reply_to":1}"#).1 else {
        panic!()
    };
    assert_eq!(send.reply_to, Some(1));
}

#[test]
fn over_the_rate_is_refused_and_the_last_strike_closes_4029() {
    // A burst of 2 (the auth frame takes one), two strikes close.
    let w = World::new(SessionLimits {
        msgs_burst: 2,
        rate_limit_strikes: 2,
        ..limits()
    });
    let mut s = authed(&w, "ann");
    let (_, first) = w.frame(&mut s, r#"{"type":"ping","id":1}"#);
    let (_, second) = w.frame(&mut s, r#"{"type":"ping","id":2}"#);
    assert_eq!(
        json(match &first {
            Step::Reply(b) => b,
            o => panic!("{o:?}"),
        })["type"],
        "pong"
    );
    assert_eq!(refusal(&second)["code"], "rate_limited");
    assert!(matches!(
        w.frame(&mut s, r#"{"type":"ping"}"#).1,
        Step::Close {
            code: CLOSE_RATE_LIMIT,
            ..
        }
    ));
}

#[test]
fn refused_frames_are_not_free_malformed_ones_count_toward_the_rate_and_a_run_of_them_closes_4029() {
    // Three refusals in a row close (rate_limit_strikes); anything accepted in between resets.
    let w = World::new(limits());
    let mut s = authed(&w, "ann");
    for bad in ["{}", "not json"] {
        assert!(matches!(w.frame(&mut s, bad).1, Step::Reply(_)), "{bad}: refused, not yet closed");
    }
    assert!(matches!(w.frame(&mut s, r#"{"type":"ping"}"#).1, Step::Reply(_)));
    for bad in [r#"{"type":"nope"}"#, r#"{"type":"leave","room":"never-joined"}"#] {
        assert!(matches!(w.frame(&mut s, bad).1, Step::Reply(_)), "{bad}: the count started again");
    }
    let (_, last) = w.frame(&mut s, "{}");
    assert!(
        matches!(
            last,
            Step::Close {
                code: CLOSE_RATE_LIMIT,
                ..
            }
        ),
        "the third refusal in a row closes: {last:?}"
    );
    assert_eq!(w.stats.frames_refused_total.load(std::sync::atomic::Ordering::Relaxed), 5);

    // A malformed frame spends the rate like any frame: the burst of 2 is gone after it.
    let w = World::new(SessionLimits {
        msgs_burst: 2,
        rate_limit_strikes: 10,
        ..limits()
    });
    let mut s = authed(&w, "bob");
    let _ = w.frame(&mut s, "{}");
    assert_eq!(refusal(&w.frame(&mut s, "{}").1)["code"], "rate_limited");
}

#[test]
fn a_refusal_shows_at_most_128_bytes_of_what_the_client_sent() {
    let w = World::new(limits());
    let mut s = authed(&w, "ann");
    let huge = "x".repeat(60_000);
    for frame in [
        format!(r#"{{"type":"typing","room":"r","state":"{huge}"}}"#),
        format!(r#"{{"type":"history","room":"r","before":"{huge}"}}"#),
        format!(r#"{{"type":"leave","room":"{huge}"}}"#),
        format!(r#"{{"type":"react","room":"r","seq":1,"emoji":"a","op":"{huge}"}}"#),
    ] {
        let (_, step) = w.frame(&mut s, &frame);
        let Step::Reply(reply) = step else {
            panic!("refused with a reply: {step:?}")
        };
        assert!(
            reply.len() < 400,
            "a {}-byte reply to a 60 KB field: {}",
            reply.len(),
            String::from_utf8_lossy(&reply[..200])
        );
        assert_eq!(json(&reply)["type"], "error");
        let _ = w.frame(&mut s, r#"{"type":"ping"}"#); // not three refusals in a row
    }
    let cut = client::echo("é".repeat(100).as_str()).into_owned();
    assert!(
        cut.len() <= 128 + '…'.len_utf8() && cut.ends_with('…'),
        "cut on a character boundary: {cut}"
    );
}

#[test]
fn joins_from_the_url_count_toward_the_rate() {
    let w = World::new(SessionLimits {
        msgs_burst: 3,
        max_rooms_per_conn: 10,
        rate_limit_strikes: 10,
        ..limits()
    });
    let mut s = Session::new(&w.limits, Vec::new());
    let claims = w.verifier.verify(&token("ann", None), NOW_MS / 1000).expect("claims");
    let _ = s.authenticated(claims);
    let cx = FrameCtx {
        limits: &w.limits,
        verifier: &w.verifier,
        mono_ns: 0,
        now_ms: NOW_MS,
        reply_bytes: 0,
        stats: &w.stats,
    };
    let steps: Vec<Step<'_>> = (0..5).map(|i| s.url_join(Cow::Owned(format!("r{i}")), Some(0), &cx)).collect();
    let joined = steps.iter().filter(|st| matches!(st, Step::Join { .. })).count();
    assert_eq!(joined, 3, "the burst of 3 covers three joins: {steps:?}");
    assert_eq!(refusal(&steps[4])["code"], "rate_limited");
    // The frames after them find the burst spent.
    assert_eq!(refusal(&w.frame(&mut s, r#"{"type":"ping"}"#).1)["code"], "rate_limited");
}

#[test]
fn a_session_lives_as_long_as_its_token_unless_refreshed_by_the_same_user() {
    let w = World::new(limits());
    let now_s = NOW_MS / 1000;
    let short = mint_hs256(SECRET, "ann", 60, None, None, now_s).expect("token");
    let mut s = Session::new(&w.limits, Vec::new());
    let auth = format!(r#"{{"type":"auth","token":"{short}"}}"#);
    let (_, step) = w.frame(&mut s, &auth);
    assert!(matches!(step, Step::Welcome { .. }), "{step:?}");
    // Expired past exp plus the verifier's leeway.
    assert!(!s.expired(&w.verifier, now_s + 30));
    assert!(s.expired(&w.verifier, now_s + 3600), "an hour on, the 60 s token is expired");
    // Another user's token, or garbage, is refused; the session keeps its token.
    let bob = mint_hs256(SECRET, "bob", 3600, None, None, now_s).expect("token");
    let other_frame = format!(r#"{{"type":"refresh","token":"{bob}","id":1}}"#);
    let (_, other) = w.frame(&mut s, &other_frame);
    assert_eq!(refusal(&other)["code"], "forbidden");
    let (_, bad) = w.frame(&mut s, r#"{"type":"refresh","token":"nope","id":2}"#);
    assert_eq!(refusal(&bad)["code"], "unauthorized");
    assert!(s.expired(&w.verifier, now_s + 3600));
    // The same user's newer token moves the expiry.
    let long = mint_hs256(SECRET, "ann", 7200, None, None, now_s).expect("token");
    let ok_frame = format!(r#"{{"type":"refresh","token":"{long}","id":3}}"#);
    let (_, ok) = w.frame(&mut s, &ok_frame);
    let Step::Reply(reply) = ok else { panic!("{ok:?}") };
    let v = json(&reply);
    assert_eq!(
        (v["type"].as_str(), v["id"].as_u64(), v["exp"].as_u64()),
        (Some("refreshed"), Some(3), Some(now_s + 7200))
    );
    assert!(!s.expired(&w.verifier, now_s + 3600), "refreshed: good for two hours");
}
