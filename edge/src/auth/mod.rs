//! Authentication and authorisation: JWT verification with a pinned
//! algorithm, the room rules (the `rooms` claim, direct-message rooms), and
//! HS256 token minting for `edge token` and dev mode.
//!
//! Sans-IO: nothing here reads a clock, a file or a socket. The caller passes
//! the current time (`now_s`, unix seconds) and the key material as strings.
//!
//! What must stay true:
//! - the accepted algorithm comes from configuration ([`AuthSettings::algorithm`]),
//!   never from the token header; a header naming any other algorithm
//!   (including `none`) is rejected before any claim is looked at;
//! - claims are only inspected after the signature has been verified;
//! - `exp` is required; `exp`, `nbf`, `iss` and `aud` are checked by
//!   [`Verifier::verify`] itself against the caller's `now_s` (the library's
//!   clock-reading checks are switched off);
//! - HS256 secrets are at least 32 bytes (RFC 7518 §3.2), for verifying and
//!   for minting;
//! - `sub` of an accepted token is a valid user id ([`is_valid_user_id`]), so
//!   it contains no `:` and [`dm_room`] of two users is unambiguous;
//! - a `dm:<a>:<b>` room is joinable only by `a` and `b`, only in the
//!   canonical sorted form built by [`dm_room`]; the `rooms` claim never grants
//!   access to a DM room;
//! - no function here panics on untrusted input (tokens, room ids, user ids,
//!   key PEMs).
//!
//! Crypto provider: `jsonwebtoken` 10 dispatches signing and verifying
//! through a process-wide `CryptoProvider`. With only its `rust_crypto`
//! feature enabled (as in this workspace) that provider is chosen
//! automatically; if feature unification ever enabled `aws_lc_rs` as well,
//! the library would panic on first use. [`Verifier::new`] and
//! [`mint_hs256`] therefore install the RustCrypto provider explicitly (a
//! no-op when a provider is already in place).

mod jwt;
mod mint;
mod rooms;

#[cfg(test)]
mod jwt_tests;
#[cfg(test)]
mod settings_tests;
#[cfg(test)]
mod test_keys;

pub use jwt::{AuthError, AuthSettings, Claims, JwtAlgorithm, Verifier};
pub use mint::{generate_dev_secret, mint_claims_hs256, mint_for_node, mint_hs256};
pub use rooms::{dm_participants, dm_room, is_valid_room_id, is_valid_user_id, may_join, may_moderate, Denied};

/// Minimum HS256 secret length in bytes (RFC 7518 §3.2: a key of the same
/// size as the hash output).
pub const MIN_SECRET_BYTES: usize = 32;
