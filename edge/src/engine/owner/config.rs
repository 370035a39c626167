//! What an owner is configured with: one immutable copy per shard, from the node's configuration.

use crate::config::{Config, Durability};

/// What an owner is configured with (one immutable copy per shard).
#[derive(Debug, Clone)]
pub struct OwnerConfig {
    /// This shard.
    pub shard: usize,
    /// Shards of the node.
    pub shards: usize,
    /// When a message is published and acked.
    pub durability: Durability,
    /// `client_id`s remembered per room.
    pub dedupe_per_room: usize,
    /// Messages kept in a room's recent ring.
    pub recent_per_room: usize,
    /// Bytes a room's recent ring keeps at most.
    pub recent_per_room_bytes: usize,
    /// Requests that may wait for a room load.
    pub room_load_queue_max: usize,
    /// Rooms kept in memory (loaded or loading).
    pub max_rooms_per_shard: usize,
    /// Empty rooms leave memory after this long without a request (0: never).
    pub room_idle_evict_ms: u64,
    /// Rooms one user may bring into this shard's memory per second, and back to back.
    pub rooms_per_user_per_s: f64,
    pub rooms_per_user_burst: u32,
    /// Largest history page, in bytes of messages.
    pub history_page_max_bytes: usize,
    /// Users a presence list shows (with the full count).
    pub presence_roster_max: usize,
    /// Rooms with more users online push no receipts.
    pub receipts_room_max: usize,
    /// Whether delivered marks are kept (their receipts go to the room's recent senders).
    pub delivered_marks: bool,
    /// Delivered marks are written to the store at most this often.
    pub delivered_flush_ms: u64,
    /// Whether the node's previous run ended cleanly (false re-epochs every room loaded).
    pub previous_run_clean: bool,
    /// This run's epoch, for rooms re-epoched after an unclean run.
    pub run_epoch: u64,
}

impl OwnerConfig {
    /// The owner settings of `shard` from the node's configuration.
    pub fn new(cfg: &Config, shard: usize, shards: usize, previous_run_clean: bool, run_epoch: u64) -> Self {
        Self {
            shard,
            shards,
            durability: cfg.durability,
            dedupe_per_room: cfg.dedupe_per_room,
            recent_per_room: cfg.recent_per_room,
            recent_per_room_bytes: cfg.recent_per_room_bytes,
            room_load_queue_max: cfg.room_load_queue_max,
            max_rooms_per_shard: cfg.max_rooms_per_shard,
            room_idle_evict_ms: cfg.room_idle_evict_ms,
            rooms_per_user_per_s: cfg.rooms_per_user_per_s,
            rooms_per_user_burst: cfg.rooms_per_user_burst,
            history_page_max_bytes: cfg.history_page_max_bytes,
            presence_roster_max: cfg.presence_roster_max,
            receipts_room_max: cfg.receipts_room_max,
            delivered_marks: cfg.delivered_marks,
            delivered_flush_ms: cfg.delivered_flush_ms,
            previous_run_clean,
            run_epoch,
        }
    }
}
