use super::*;

fn env(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect::<Vec<_>>()
        .into_iter()
}

#[test]
fn defaults_are_valid() {
    Config::default().validate().expect("defaults validate");
}

#[test]
fn env_overrides_numbers_strings_lists_and_enums() {
    let c = Config::default()
        .with_env(env(&[
            ("EDGE_LISTEN", "0.0.0.0:9000"),
            ("EDGE_CORES", "3"),
            ("EDGE_ALLOWED_ORIGINS", "https://a.example, https://b.example"),
            ("EDGE_DRIVER", "epoll"),
            ("EDGE_JWT_ISSUER", "me"),
            ("EDGE_ECHO_PATH", "/echo"),
            ("OTHER", "x"),
        ]))
        .expect("env applies");
    assert_eq!(c.listen, "0.0.0.0:9000");
    assert_eq!(c.cores, 3);
    assert_eq!(c.allowed_origins, ["https://a.example", "https://b.example"]);
    assert_eq!(c.driver, DriverChoice::Epoll);
    assert_eq!(c.jwt_issuer.as_deref(), Some("me"));
    assert_eq!(c.echo_path.as_deref(), Some("/echo"));
}

#[test]
fn bad_env_value_names_the_problem() {
    let err = Config::default()
        .with_env(env(&[("EDGE_CORES", "many")]))
        .expect_err("not a number");
    assert!(err.to_string().contains("cores"), "{err}");
}

#[test]
fn toml_file_round_trip_and_unknown_field() {
    let text = toml::to_string(&Config::default()).expect("serializes");
    let back: Config = toml::from_str(&text).expect("parses");
    assert_eq!(back.listen, "127.0.0.1:8080");
    let err = toml::from_str::<Config>("listne = \"x\"").expect_err("unknown field");
    assert!(err.to_string().contains("listne"), "{err}");
}

#[test]
fn store_settings_come_from_env_and_are_checked() {
    let c = Config::default()
        .with_env(env(&[
            ("EDGE_DURABILITY", "durable"),
            ("EDGE_STORE", "scylla"),
            ("EDGE_SCYLLA_CONTACT_POINTS", "10.0.0.1:9042,10.0.0.2:9042"),
        ]))
        .expect("env applies");
    assert_eq!(c.durability, Durability::Durable);
    let sc = c.store_config();
    assert_eq!(sc.store, StoreKind::Scylla);
    assert_eq!(sc.scylla_contact_points, ["10.0.0.1:9042", "10.0.0.2:9042"]);
    assert_eq!(sc.flush_interval_us, 1_000, "durable mode waits 1 ms for a batch by default");
    assert_eq!(Config::default().store_config().flush_interval_us, 10_000, "fast mode: 10 ms");
    let c = Config::default()
        .with_env(env(&[("EDGE_STORE_FLUSH_INTERVAL_US", "250")]))
        .expect("env applies");
    assert_eq!(c.store_config().flush_interval_us, 250);
    let c = Config {
        store_queue_capacity: 1,
        ..Config::default()
    };
    let err = c.validate().expect_err("queue smaller than a batch");
    assert!(err.to_string().contains("queue_capacity"), "{err}");
    let c = Config {
        max_catch_up_messages: 0,
        ..Config::default()
    };
    assert!(c.validate().expect_err("bad").to_string().contains("max_catch_up_messages"));
}

#[test]
fn cluster_settings_need_a_usable_redis_url_and_lease() {
    assert!(Config::default().bridge_config().is_none(), "no redis_url: a single node");
    let c = Config::default()
        .with_env(env(&[("EDGE_REDIS_URL", "redis://127.0.0.1:6390"), ("EDGE_NODE_ID", "n2")]))
        .expect("env applies");
    let b = c.bridge_config().expect("cluster mode");
    assert_eq!((b.redis_url.as_str(), b.node_id.as_str()), ("redis://127.0.0.1:6390", "n2"));
    c.validate().expect("valid cluster config");
    let c = Config {
        redis_url: Some("redis://127.0.0.1:6390".into()),
        presence_lease_ms: 1000,
        presence_heartbeat_ms: 900,
        ..Config::default()
    };
    let err = c.validate().expect_err("heartbeat cannot renew the lease in time");
    assert!(
        err.to_string().contains("redis_url") && err.to_string().contains("heartbeat"),
        "{err}"
    );
    let c = Config {
        redis_url: Some("not a url".into()),
        ..Config::default()
    };
    assert!(c.validate().is_err());
}

#[test]
fn every_field_is_documented_in_docs_config_md() {
    let doc = include_str!("../../docs/CONFIG.md");
    for field in field_names() {
        assert!(
            doc.contains(&format!("| `{field}` |")),
            "docs/CONFIG.md lacks `{field}`: run `cargo build -p edge && python3 scripts/config-doc.py`"
        );
    }
}

#[test]
fn validate_names_the_field() {
    let c = Config {
        listen: "nope".into(),
        ..Config::default()
    };
    assert!(c.validate().expect_err("bad").to_string().contains("listen"));
    let c = Config {
        max_message_bytes: 10,
        ..Config::default()
    };
    assert!(c.validate().is_err());
    let c = Config {
        max_msgs_per_s: 0.0,
        ..Config::default()
    };
    assert!(c.validate().expect_err("bad").to_string().contains("max_msgs_per_s"));
}

#[test]
fn the_echo_endpoint_is_served_on_loopback_only_unless_allowed() {
    let echo = |listen: &str, allow: bool| Config {
        listen: listen.into(),
        echo_path: Some("/echo".into()),
        echo_allow_public: allow,
        ..Config::default()
    };
    let err = echo("0.0.0.0:8080", false).validate().expect_err("public echo");
    assert!(err.to_string().contains("echo_path"), "{err}");
    assert!(echo("0.0.0.0:8080", true).validate().is_ok(), "allowed on purpose");
    assert!(echo("127.0.0.1:8080", false).validate().is_ok());
    assert!(echo("[::1]:8080", false).validate().is_ok());
    let no_echo = Config {
        listen: "0.0.0.0:8080".into(),
        ..Config::default()
    };
    assert!(no_echo.validate().is_ok(), "no echo endpoint, nothing to refuse");
}

#[test]
fn max_conns_zero_is_derived_from_the_open_file_limit() {
    let c = Config::default();
    assert_eq!(c.conn_limits(20_000).max_total, 18_976, "1,024 descriptors kept");
    assert_eq!(c.conn_limits(1024).max_total, 768, "a quarter of a small limit kept");
    assert_eq!(c.conn_limits(0).max_total, 1, "never 0 (0 would mean no limit)");
    let set = Config {
        max_conns: 500,
        max_conns_per_ip: 7,
        ..Config::default()
    };
    let l = set.conn_limits(20_000);
    assert_eq!((l.max_total, l.max_per_ip, l.max_per_user), (500, 7, 64));
}

#[test]
fn a_bad_trusted_proxy_is_refused_naming_the_field() {
    let c = Config {
        trusted_proxies: vec!["10.0.0.0/8".into(), "10.0.0.0/40".into()],
        ..Config::default()
    };
    let e = c.validate().expect_err("a prefix over 32");
    assert!(e.to_string().contains("trusted_proxies"), "{e}");
}
