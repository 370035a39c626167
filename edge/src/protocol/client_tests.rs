use super::*;

const LIM: ParseLimits = ParseLimits {
    max_body_chars: 10,
    max_client_id_bytes: 8,
};

fn ok(t: &str) -> Envelope<'_> {
    parse(t, &LIM).unwrap_or_else(|e| panic!("{t}: {}", e.message))
}

fn err(t: &str) -> ParseError {
    match parse(t, &LIM) {
        Ok(e) => panic!("{t} parsed: {:?}", e.request),
        Err(e) => e,
    }
}

#[test]
fn every_type_parses() {
    assert!(matches!(ok(r#"{"type":"auth","token":"t"}"#).request, Request::Auth { .. }));
    assert_eq!(
        ok(r#"{"type":"join","room":"r","since":4}"#).request,
        Request::Join {
            room: "r".into(),
            since: Some(4)
        }
    );
    assert_eq!(ok(r#"{"type":"leave","room":"r"}"#).request, Request::Leave { room: "r".into() });
    assert_eq!(
        ok(r#"{"type":"typing","room":"r","state":"stop"}"#).request,
        Request::Typing {
            room: "r".into(),
            state: TypingState::Stop
        }
    );
    assert_eq!(
        ok(r#"{"type":"read","room":"r","seq":3}"#).request,
        Request::Read { room: "r".into(), seq: 3 }
    );
    assert!(matches!(
        ok(r#"{"type":"react","room":"r","seq":3,"emoji":"+1","op":"add"}"#).request,
        Request::React { op: ReactOp::Add, .. }
    ));
    assert_eq!(
        ok(r#"{"type":"history","room":"r"}"#).request,
        Request::History {
            room: "r".into(),
            before: None,
            limit: 50,
            thread: None
        }
    );
    assert_eq!(
        ok(r#"{"type":"history","room":"r","thread":4,"before":9,"limit":5}"#).request,
        Request::History {
            room: "r".into(),
            before: Some(9),
            limit: 5,
            thread: Some(4)
        }
    );
    assert_eq!(
        ok(r#"{"type":"presence","room":"r"}"#).request,
        Request::Presence { room: "r".into() }
    );
    assert_eq!(
        ok(r#"{"type":"presence","user":"bob"}"#).request,
        Request::LastSeen { user: "bob".into() }
    );
    assert_eq!(
        err(r#"{"type":"presence","user":"bob","room":"r"}"#).message,
        "presence: exactly one of `room` or `user` is required"
    );
    assert_eq!(ok(r#"{"type":"sync"}"#).request, Request::Sync);
    let p = ok(r#"{"type":"ping","id":7,"future_field":[1,2]}"#);
    assert_eq!((p.request, p.id.map(|i| i.get())), (Request::Ping, Some("7")));
    assert_eq!(type_name(&Request::Sync), "sync");
}

#[test]
fn send_variants() {
    let Request::Send(s) = ok(r#"{"type":"send","room":"r","body":"hi","client_id":"c1","reply_to":2}"#).request else {
        panic!()
    };
    assert_eq!(s.target, Target::Room("r".into()));
    assert_eq!((s.client_id.as_deref(), s.reply_to, s.kind), (Some("c1"), Some(2), Kind::Text));
    let Request::Send(s) =
        ok(r#"{"type":"send","to":"bob","body":"x","kind":"file","file":{"url":"u","name":"n","size":1,"mime":"m"}}"#).request
    else {
        panic!()
    };
    assert_eq!(s.target, Target::User("bob".into()));
    assert_eq!(s.file.map(|f| f.size), Some(1));
}

#[test]
fn strings_borrow_unless_escaped() {
    let Request::Join { room, .. } = ok(r#"{"type":"join","room":"plain"}"#).request else {
        panic!()
    };
    assert!(matches!(room, Cow::Borrowed("plain")));
    let Request::Join { room, .. } = ok(r#"{"type":"join","room":"a\"b"}"#).request else {
        panic!()
    };
    assert!(matches!(room, Cow::Owned(ref s) if s == "a\"b"));
}

#[test]
fn errors_name_the_problem_and_keep_the_id() {
    let e = err(r#"{"type":"join","id":"q1"}"#);
    assert_eq!((e.code, e.id.as_ref().map(|i| i.get())), (ErrorCode::BadRequest, Some("\"q1\"")));
    assert!(e.message.contains("room"), "{}", e.message);
    let e = err(r#"{"type":"join","id":5,"room":"r","since":-1}"#);
    assert_eq!(e.id.as_ref().map(|i| i.get()), Some("5"));
    assert!(err(r#"{"type":"nope"}"#).message.contains("unknown type"));
    assert!(err(r#"{"id":1}"#).message.contains("type"));
    assert_eq!(err(r#"{"type":"send","room":"r","body":"12345678901"}"#).code, ErrorCode::TooLarge);
    assert!(ok(r#"{"type":"send","room":"r","body":"éééééééééé"}"#).id.is_none()); // 10 chars, 20 bytes
    assert!(err(r#"{"type":"send","room":"r","to":"u","body":"x"}"#)
        .message
        .contains("exactly one"));
    assert!(err(r#"{"type":"send","body":"x"}"#).message.contains("exactly one"));
    assert!(err(r#"{"type":"send","room":"r","body":"x","client_id":"123456789"}"#)
        .message
        .contains("client_id"));
    assert!(err(r#"{"type":"send","room":"r","body":"x","kind":"file"}"#)
        .message
        .contains("file"));
    assert!(
        err(r#"{"type":"send","room":"r","body":"x","file":{"url":"u","name":"n","size":1,"mime":"m"}}"#)
            .message
            .contains("kind")
    );
    assert!(err(r#"{"type":"send","room":"r","body":"x","kind":"gif"}"#)
        .message
        .contains("kind"));
    assert!(err(r#"{"type":"history","room":"r","limit":101}"#).message.contains("limit"));
    assert!(err(r#"{"type":"typing","room":"r","state":"maybe"}"#).message.contains("state"));
    assert!(err(r#"{"type":"ping","id":{"a":1}}"#).message.contains("id"));
    assert!(err(r#"{"type":"ping","id":1.5}"#).message.contains("id"));
    let long_id = format!(r#"{{"type":"ping","id":"{}"}}"#, "x".repeat(65));
    assert!(err(&long_id).message.contains("id"));
    assert!(err("[1,2]").message.contains("object"));
    assert!(err("").message.contains("object"));
}

#[test]
fn garbage_never_panics() {
    let alphabet = br#"{}[]":,0123456789-.etypasndroombdy\u "#;
    let mut x: u64 = 88172645463325252;
    for _ in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = (x % 48) as usize;
        let s: String = (0..len)
            .map(|i| alphabet[((x >> (i % 50)) as usize + i * 7) % alphabet.len()] as char)
            .collect();
        let _ = parse(&format!("{{\"type\":\"send\",{s}"), &LIM);
        let _ = parse(&s, &LIM);
    }
}

#[test]
fn initial_joins_take_room_then_resume_entries() {
    let j = initial_joins(Some("lobby"), Some("dm:a:b:7,lobby:3,x:0"), 8).expect("valid");
    assert_eq!(
        j,
        [
            ("lobby".to_owned(), Some(3)),
            ("dm:a:b".to_owned(), Some(7)),
            ("x".to_owned(), Some(0))
        ]
    );
    assert_eq!(initial_joins(None, None, 8).expect("empty"), []);
    assert_eq!(
        initial_joins(Some("r"), Some(""), 8).expect("empty resume"),
        [("r".to_owned(), None)]
    );
    for bad in ["nocolon", "r:x", ":5", "r:-1"] {
        let err = initial_joins(None, Some(bad), 8).expect_err(bad);
        assert!(err.contains("resume entry"), "{bad}: {err}");
    }
    assert!(initial_joins(None, Some("a:1,b:2,c:3"), 2)
        .expect_err("too many")
        .contains("at most 2"));
    // A room named twice counts once and takes its last seq; ?room= counts too.
    assert_eq!(
        initial_joins(Some("a"), Some("a:1,b:2,a:5"), 2).expect("two rooms"),
        [("a".to_owned(), Some(5)), ("b".to_owned(), Some(2))]
    );
    assert!(initial_joins(Some("z"), Some("a:1,b:2"), 2).is_err(), "?room= is one of the rooms");
    // Long lists: refused at the first room too many, or (one room repeated) one entry.
    let many: String = (0..100_000).map(|i| format!("r{i}:1,")).collect();
    assert!(initial_joins(None, Some(&many), 64)
        .expect_err("100k rooms")
        .contains("more than 64"));
    let same = "r:1,".repeat(100_000);
    assert_eq!(initial_joins(None, Some(&same), 64).expect("one room").len(), 1);
}

#[test]
fn seqs_beyond_2_pow_53_are_refused_by_name() {
    for (frame, field) in [
        (r#"{"type":"join","room":"r","since":9007199254740992}"#, "since"),
        (r#"{"type":"history","room":"r","before":18446744073709551615}"#, "before"),
        (r#"{"type":"read","room":"r","seq":9007199254740992}"#, "seq"),
        (r#"{"type":"send","room":"r","body":"b","reply_to":9007199254740993}"#, "reply_to"),
    ] {
        let e = parse(frame, &LIM).expect_err(frame);
        assert!(e.message.contains(field), "{frame}: {}", e.message);
    }
    assert!(parse(r#"{"type":"join","room":"r","since":9007199254740991}"#, &LIM).is_ok());
    assert!(initial_joins(None, Some("r:9007199254740992"), 4).is_err());
}

#[test]
fn edits_deletes_and_reactions_parse_and_bad_ones_are_named() {
    assert_eq!(
        ok(r#"{"type":"edit","room":"r","seq":3,"body":"fixed"}"#).request,
        Request::Edit {
            room: "r".into(),
            seq: 3,
            body: "fixed".into()
        }
    );
    assert_eq!(
        ok(r#"{"type":"delete","room":"r","seq":3}"#).request,
        Request::Delete { room: "r".into(), seq: 3 }
    );
    let e = err(r#"{"type":"edit","room":"r","seq":3,"body":"much too long a body"}"#);
    assert_eq!(
        (e.code, e.message.as_str()),
        (ErrorCode::TooLarge, "edit: body has 20 characters, the limit is 10")
    );
    assert_eq!(err(r#"{"type":"edit","room":"r","seq":3}"#).message, "edit: missing field `body`");
    assert_eq!(err(r#"{"type":"delete","room":"r"}"#).message, "delete: missing field `seq`");
    let long = format!(r#"{{"type":"react","room":"r","seq":1,"op":"add","emoji":"{}"}}"#, "🙂".repeat(9));
    assert_eq!(err(&long).message, "react: emoji must be 1..=32 bytes, not 36");
    let e = err(r#"{"type":"react","room":"r","seq":1,"op":"add","emoji":""}"#);
    assert_eq!(
        (e.code, e.message.as_str()),
        (ErrorCode::BadRequest, "react: emoji must be 1..=32 bytes, not 0")
    );
    let e = err(r#"{"type":"react","room":"r","seq":1,"op":"add","emoji":"a b"}"#);
    assert_eq!(e.message, "react: emoji must not hold spaces or control characters");
    let ok_emoji = ok(r#"{"type":"react","room":"r","seq":1,"op":"remove","emoji":"👍🏽"}"#).request;
    assert!(matches!(ok_emoji, Request::React { op: ReactOp::Remove, ref emoji, .. } if emoji == "👍🏽"));
}
