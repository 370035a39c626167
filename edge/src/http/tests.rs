use super::*;
use crate::ws::handshake::ApiHeaders;

fn keys() -> Vec<String> {
    vec!["key-one-0123456789".into(), "key-two-0123456789".into()]
}

#[test]
fn routes_name_their_room_and_method() {
    assert_eq!(
        route("GET", "/api/rooms/lobby/messages"),
        Ok(Route::History { room: "lobby".into() })
    );
    assert_eq!(
        route("POST", "/api/rooms/dm%3Aa%3Ab/messages"),
        Ok(Route::Publish { room: "dm:a:b".into() })
    );
    assert_eq!(route("GET", "/api/rooms/r/presence"), Ok(Route::RoomPresence { room: "r".into() }));
    assert_eq!(
        route("GET", "/api/users/bob/presence"),
        Ok(Route::UserPresence { user: "bob".into() })
    );
    assert_eq!(route("POST", "/api/tokens"), Ok(Route::Tokens));
    assert_eq!(route("POST", "/api/dev/token"), Ok(Route::DevToken));
    assert_eq!(route("GET", "/api/admin/shards"), Ok(Route::AdminShards));
    assert_eq!(
        route("POST", "/api/admin/users/bob/disconnect"),
        Ok(Route::Disconnect { user: "bob".into() })
    );
    assert_eq!(route("GET", "/api/openapi.json"), Ok(Route::OpenApi));
    assert!(matches!(route("GET", "/"), Ok(Route::Page(a)) if a.content_type.starts_with("text/html")));
    assert!(matches!(route("GET", "/app.js"), Ok(Route::Page(_))));
}

#[test]
fn unknown_paths_are_404_and_wrong_methods_405_with_allow() {
    for path in [
        "/api/",
        "/api/rooms//messages",
        "/api/rooms/r/messages/x",
        "/api/nope",
        "/favicon.ico",
    ] {
        let e = route("GET", path).unwrap_err();
        assert_eq!((e.status, e.code), (404, "not_found"), "{path}");
    }
    let e = route("DELETE", "/api/rooms/r/messages").unwrap_err();
    assert_eq!((e.status, e.allow), (405, Some("GET, POST")));
    let e = route("GET", "/api/tokens").unwrap_err();
    assert_eq!((e.status, e.allow), (405, Some("POST")));
    let bytes = e.response().to_bytes(false);
    let text = String::from_utf8(bytes).unwrap();
    assert!(text.contains("\r\nAllow: POST\r\n"), "{text}");
}

#[test]
fn every_route_is_in_the_openapi_document_and_no_other() {
    let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json parses");
    let paths = doc["paths"].as_object().expect("paths");
    for (path, ops) in paths {
        let concrete = path.replace("{room}", "lobby").replace("{user}", "bob");
        for method in ops.as_object().unwrap().keys().filter(|k| *k != "parameters") {
            let m = method.to_ascii_uppercase();
            assert!(route(&m, &concrete).is_ok(), "{m} {path} is documented but not routed");
        }
    }
    let served = [
        ("GET", "/api/rooms/{room}/messages"),
        ("POST", "/api/rooms/{room}/messages"),
        ("GET", "/api/rooms/{room}/presence"),
        ("GET", "/api/users/{user}/presence"),
        ("POST", "/api/tokens"),
        ("POST", "/api/dev/token"),
        ("GET", "/api/admin/shards"),
        ("POST", "/api/admin/users/{user}/disconnect"),
        ("GET", "/api/openapi.json"),
    ];
    for (m, p) in served {
        assert!(
            paths.get(p).and_then(|o| o.get(m.to_ascii_lowercase())).is_some(),
            "{m} {p} is routed but not documented"
        );
    }
}

fn headers(auth: Option<&str>, key: Option<&str>) -> ApiHeaders {
    ApiHeaders {
        authorization: auth.map(str::to_owned),
        api_key: key.map(str::to_owned),
        ..ApiHeaders::default()
    }
}

#[test]
fn callers_by_key_or_token() {
    let k = keys();
    assert_eq!(caller(&headers(Some("apikey key-two-0123456789"), None), &k), Ok(Caller::Key));
    assert_eq!(caller(&headers(Some("ApiKey  key-one-0123456789 "), None), &k), Ok(Caller::Key));
    assert_eq!(caller(&headers(None, Some("key-one-0123456789")), &k), Ok(Caller::Key));
    assert_eq!(
        caller(&headers(Some("Bearer abc.def.ghi"), None), &k),
        Ok(Caller::Bearer("abc.def.ghi".into()))
    );
    assert_eq!(caller(&headers(None, None), &k), Ok(Caller::Anonymous));
    for (auth, key) in [
        (Some("apikey key-one-012345678"), None),
        (None, Some("key-one-0123456789x")),
        (None, Some("")),
        (Some("Basic Zm9vOmJhcg=="), None),
        (Some("Bearer "), None),
        (Some("token"), None),
    ] {
        let e = caller(&headers(auth, key), &k).unwrap_err();
        assert_eq!(e.status, 401, "{auth:?} {key:?}");
    }
    // A key sent to a node with no keys is refused, and says why.
    let e = caller(&headers(None, Some("key-one-0123456789")), &[]).unwrap_err();
    assert!(e.message.contains("api_keys"), "{}", e.message);
}

#[test]
fn key_comparison_is_exact() {
    let k = keys();
    assert!(key_matches(&k, "key-one-0123456789"));
    assert!(!key_matches(&k, "key-one-012345678"));
    assert!(!key_matches(&k, "key-one-01234567890"));
    assert!(!key_matches(&k, ""));
    assert!(!key_matches(&[], "anything"));
}

fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect()
}

#[test]
fn history_queries_are_checked_like_the_websocket_request() {
    assert_eq!(history_query(&[]), Ok((None, DEFAULT_HISTORY_LIMIT, None)));
    assert_eq!(
        history_query(&q(&[("before", "10"), ("limit", "100"), ("thread", "3")])),
        Ok((Some(10), 100, Some(3)))
    );
    for bad in [
        ("limit", "0"),
        ("limit", "101"),
        ("limit", "x"),
        ("before", "0"),
        ("before", "-1"),
        ("thread", "9007199254740992"),
        ("page", "2"),
    ] {
        let e = history_query(&q(&[bad])).unwrap_err();
        assert_eq!(e.status, 400, "{bad:?}");
    }
}

#[test]
fn a_publish_becomes_a_send_frame() {
    let f = publish_request("lobby", br#"{"body":"hi"}"#, Some("k1")).unwrap();
    assert_eq!(f.user, DEFAULT_PUBLISHER);
    let v: serde_json::Value = serde_json::from_str(&f.frame).unwrap();
    assert_eq!(
        (v["type"].as_str(), v["room"].as_str(), v["client_id"].as_str()),
        (Some("send"), Some("lobby"), Some("k1"))
    );
    let f = publish_request("lobby", br#"{"body":"hi","user":"bot","client_id":"same"}"#, Some("same")).unwrap();
    assert_eq!(f.user, "bot");
    for bad in [
        &br#"{"body":"hi","client_id":"a"}"#[..],
        br#"{"body":"hi","to":"bob"}"#,
        br#"{"body":"hi","room":"other"}"#,
        br#"{"body":"hi","user":"no:colons"}"#,
        br#"{"body":"hi","user":7}"#,
        br#"[1,2]"#,
        br#"{"body":"#,
        b"",
    ] {
        let e = publish_request("lobby", bad, Some("b")).unwrap_err();
        assert_eq!(e.status, 400, "{}", String::from_utf8_lossy(bad));
    }
}

fn token_req(user: &str) -> TokenReq {
    TokenReq {
        user: user.into(),
        rooms: None,
        ttl_s: None,
        name: None,
        moderator: None,
    }
}

#[test]
fn token_requests_are_bounded() {
    let c = token_claims(token_req("bob"), 1000).unwrap();
    assert_eq!((c.sub.as_str(), c.exp), ("bob", 1000 + DEFAULT_TOKEN_TTL_S));
    assert!(token_claims(token_req("no:colon"), 0).is_err());
    assert!(token_claims(
        TokenReq {
            ttl_s: Some(0),
            ..token_req("bob")
        },
        0
    )
    .is_err());
    assert!(token_claims(
        TokenReq {
            ttl_s: Some(MAX_TOKEN_TTL_S + 1),
            ..token_req("bob")
        },
        0
    )
    .is_err());
    assert!(token_claims(
        TokenReq {
            name: Some("x".repeat(65)),
            ..token_req("bob")
        },
        0
    )
    .is_err());
    assert!(token_claims(
        TokenReq {
            rooms: Some(vec![String::new()]),
            ..token_req("bob")
        },
        0
    )
    .is_err());
    assert!(token_claims(
        TokenReq {
            moderator: Some(vec!["r".into(); 101]),
            ..token_req("bob")
        },
        0
    )
    .is_err());
    assert!(
        parse_body::<TokenReq>(br#"{"user":"bob","room":["typo"]}"#).is_err(),
        "unknown fields are refused"
    );
}

#[test]
fn engine_errors_keep_their_code_and_get_its_status() {
    let cases = [
        ("bad_request", 400),
        ("unauthorized", 401),
        ("forbidden", 403),
        ("not_found", 404),
        ("too_large", 413),
        ("rate_limited", 429),
        ("overloaded", 503),
        ("unavailable", 503),
        ("internal", 500),
    ];
    for (code, status) in cases {
        let frame = format!(r#"{{"type":"error","id":"http","code":"{code}","message":"m","retry_ms":1500}}"#);
        let r = from_ws_reply(frame.as_bytes());
        assert_eq!(r.status, status, "{code}");
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["error"]["code"], code);
        assert_eq!(v["error"]["retry_ms"], 1500);
        assert!(r.headers.iter().any(|(k, v)| *k == "Retry-After" && v == "2"));
    }
    let r = from_ws_reply(br#"{"type":"ack","id":"http","room":"r","seq":3}"#);
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], br#"{"room":"r","seq":3}"#);
    assert_eq!(from_ws_reply(b"not json").status, 500);
}

#[test]
fn responses_frame_their_body() {
    let r = json_response(200, &serde_json::json!({"a": 1}));
    let text = String::from_utf8(r.to_bytes(true)).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
    assert!(text.contains("\r\nContent-Length: 7\r\n"));
    assert!(text.contains("\r\nConnection: close\r\n\r\n{\"a\":1}"));
    let page = asset("/").unwrap().response();
    assert!(page
        .headers
        .iter()
        .any(|(k, v)| *k == "Content-Security-Policy" && v.contains("script-src 'self'")));
}
