//! WebSocket, sans-IO: the HTTP upgrade (`handshake`) and RFC 6455 framing
//! (`codec`). Bytes in, messages and violations out; the shard moves bytes.

pub mod codec;
pub mod handshake;
