//! Property-based fuzzing (proptest, stable Rust) of every parser of network input on
//! the edge: the WebSocket upgrade request head (`handshake`), the frame decoder (`codec`),
//! client JSON frames and `?resume=` (`client`), and JWTs (`jwt`).
//!
//! Every property runs `FUZZ_CASES` cases (default 256, so `cargo test --workspace` stays
//! quick; `scripts/test.sh` runs many more). Failure persistence is off: a case proptest
//! finds is committed as a plain `#[test]` holding its bytes, next to its property, and the
//! parser is fixed in its own source file.

use proptest::test_runner::Config;

#[path = "fuzz_parsers/client.rs"]
mod client;
#[path = "fuzz_parsers/codec.rs"]
mod codec;
#[path = "fuzz_parsers/handshake.rs"]
mod handshake;
#[path = "fuzz_parsers/jwt.rs"]
mod jwt;

/// Cases per property: `FUZZ_CASES`, else 256.
fn cases() -> u32 {
    std::env::var("FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(256)
}

/// The config of every property here: [`cases`], no regression files in the tree.
fn config() -> Config {
    Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    }
}
