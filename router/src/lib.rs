//! How messages move between the threads of one node, and later between
//! nodes.
//!
//! - [`spsc`]: the bounded lock-free single-producer single-consumer ring
//!   everything else is built on.
//! - [`mesh()`]: one ring per ordered pair of shard threads, with async
//!   wake-ups, so every shard can hand frames to every other shard.
//! - [`frame`](Frame): the versioned rkyv frames carried over the mesh. The
//!   same bytes cross nodes through the Redis bridge.
//! - [`bridge`] (feature `redis`, on by default): the Redis bridge between
//!   nodes: cluster-wide seqs, room pub/sub, presence leases, catch-up.
//!
//! What must stay true: nothing here blocks a thread, every queue is
//! bounded, and no input bytes can make decoding panic.

#[cfg(feature = "redis")]
pub mod bridge;
mod frame;
mod mesh;
pub mod spsc;

pub use frame::{
    decode, encode, encode_in, encoded_size_hint, payload_bytes, try_encode, ArchivedChangeMsg, ArchivedChangeOp, ArchivedFileRef,
    ArchivedFrame, ArchivedRefusal, ArchivedRefusalCode, ArchivedSendMsg, ArchivedSeqPayload, ChangeMsg, ChangeOp, FileRef, Frame,
    FrameError, Refusal, RefusalCode, SendMsg, SeqPayload, FRAME_VERSION,
};
pub use mesh::{mesh, Endpoint, Full};
