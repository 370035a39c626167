//! The chat edge node: shards on io_uring, connections, WebSocket framing,
//! the client protocol, rooms, auth and limits.
//!
//! Codemap (see ARCHITECTURE.md for what must stay true):
//! - sans-IO core, no sockets and no clock reads: [`ws`] (upgrade parsing,
//!   framing), [`protocol`] (client frames in, server frames out), [`room`]
//!   (placement, sequencing, dedupe, recent ring), [`auth`] (JWT, room
//!   rules), [`limits`] (GCRA);
//! - the io shell: [`shard`] (one monoio runtime per core) and [`node`]
//!   (threads, listeners, signals);
//! - [`config`] and [`metrics`].

pub mod auth;
pub mod config;
pub mod engine;
pub mod heap;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod operator;
pub mod protocol;
pub mod pump;
pub mod room;
pub mod shard;
pub mod ws;
