//! The bridge's configuration: one serde struct with defaults, checked by
//! [`BridgeConfig::validate`] before the bridge starts.
//!
//! What must stay true: every field has a unit in its name where it has a
//! unit, and `validate` rejects values the bridge cannot honour (a lease
//! that a heartbeat cannot renew in time, empty or ambiguous node ids).

use std::time::Duration;

use super::BridgeError;

/// How the bridge reaches Redis and how it uses it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct BridgeConfig {
    /// Redis URL as fred reads it: `redis://host:port/db`, or
    /// `redis-cluster://host:port?node=host2:port2` for a cluster.
    pub redis_url: String,
    /// This node's id, unique in the cluster; it names the node's presence
    /// entries. Must be non-empty and must not contain `|`.
    pub node_id: String,
    /// Use sharded pub/sub (SPUBLISH/SSUBSCRIBE), for Redis Cluster. Keys
    /// are hash-tagged by room either way. Needs Redis 7 or later.
    pub sharded_pubsub: bool,
    /// Length of each room's recent-history stream (approximate trim, so
    /// Redis may keep somewhat more).
    pub recent_len: u32,
    /// How long Redis remembers a sent `client_id` (per room and user), in ms: a retry
    /// through any node within it gets the original seq instead of a second message.
    /// 0: no cluster-wide dedupe (each node still remembers its own recent ones).
    pub dedupe_ttl_ms: u64,
    /// Most messages one publish call (one script call) may carry.
    pub batch_max: u32,
    /// Largest encoded message frame, in bytes, published or accepted.
    pub max_message_bytes: u32,
    /// How long a presence entry lives without renewal, in ms.
    pub presence_lease_ms: u64,
    /// How often this node renews its presence leases and sweeps expired
    /// entries of the rooms it is subscribed to, in ms.
    pub heartbeat_ms: u64,
    /// First delay before reconnecting to Redis, in ms.
    pub reconnect_min_ms: u32,
    /// Longest delay between reconnect attempts, in ms.
    pub reconnect_max_ms: u32,
    /// Timeout of one Redis command, in ms.
    pub command_timeout_ms: u64,
    /// Timeout of one TCP connect to Redis, in ms.
    pub connect_timeout_ms: u64,
    /// Bound of the queue of commands into the bridge (callers wait when full).
    pub command_queue_len: u32,
    /// Bound of the queue of events out of the bridge, and of the buffer of
    /// received pub/sub messages behind it. When the reader falls this far
    /// behind, messages are lost and a `Resync` is emitted.
    pub event_queue_len: u32,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        Self {
            redis_url: "redis://127.0.0.1:6379".into(),
            node_id: "node-1".into(),
            sharded_pubsub: false,
            recent_len: 1000,
            dedupe_ttl_ms: 300_000,
            batch_max: 64,
            max_message_bytes: 1 << 20,
            presence_lease_ms: 15_000,
            heartbeat_ms: 5_000,
            reconnect_min_ms: 100,
            reconnect_max_ms: 5_000,
            command_timeout_ms: 2_000,
            connect_timeout_ms: 2_000,
            command_queue_len: 4096,
            event_queue_len: 4096,
        }
    }
}

impl BridgeConfig {
    /// Checks that the bridge can run with these values.
    pub fn validate(&self) -> Result<(), BridgeError> {
        let bad = |field: &'static str, message: &str| {
            Err(BridgeError::Config {
                field,
                message: message.into(),
            })
        };
        if fred::types::config::Config::from_url(&self.redis_url).is_err() {
            return bad("redis_url", "not a Redis URL fred understands");
        }
        if self.node_id.is_empty() || self.node_id.contains('|') {
            return bad("node_id", "must be non-empty and must not contain `|`");
        }
        if self.recent_len == 0 {
            return bad("recent_len", "must be at least 1");
        }
        if self.batch_max == 0 || self.batch_max > 10_000 {
            return bad("batch_max", "must be in 1..=10000");
        }
        if self.max_message_bytes < 256 {
            return bad("max_message_bytes", "must be at least 256");
        }
        if self.heartbeat_ms == 0 || self.heartbeat_ms * 2 > self.presence_lease_ms {
            return bad("heartbeat_ms", "must be positive and at most half of presence_lease_ms");
        }
        if self.reconnect_min_ms == 0 || self.reconnect_min_ms > self.reconnect_max_ms {
            return bad("reconnect_min_ms", "must be positive and at most reconnect_max_ms");
        }
        if self.command_timeout_ms == 0 || self.connect_timeout_ms == 0 {
            return bad("command_timeout_ms", "timeouts must be positive");
        }
        if self.command_queue_len == 0 || self.event_queue_len == 0 {
            return bad("command_queue_len", "queue bounds must be positive");
        }
        Ok(())
    }

    pub(crate) fn command_timeout(&self) -> Duration {
        Duration::from_millis(self.command_timeout_ms)
    }

    pub(crate) fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        BridgeConfig::default().validate().unwrap();
    }

    #[test]
    fn rejects_unusable_values() {
        type Change = fn(&mut BridgeConfig);
        let cases: Vec<(Change, &str)> = vec![
            (|c| c.node_id = String::new(), "node_id"),
            (|c| c.node_id = "a|b".into(), "node_id"),
            (|c| c.redis_url = "not a url".into(), "redis_url"),
            (|c| c.recent_len = 0, "recent_len"),
            (|c| c.batch_max = 0, "batch_max"),
            (|c| c.heartbeat_ms = 10_000, "heartbeat_ms"),
            (|c| c.reconnect_min_ms = 10_000, "reconnect_min_ms"),
            (|c| c.event_queue_len = 0, "command_queue_len"),
        ];
        for (change, field) in cases {
            let mut c = BridgeConfig::default();
            change(&mut c);
            match c.validate() {
                Err(BridgeError::Config { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn partial_toml_like_input_takes_defaults() {
        // serde(default): missing fields take the defaults.
        let c: BridgeConfig = serde::Deserialize::deserialize(serde::de::value::MapDeserializer::<_, serde::de::value::Error>::new(
            [("node_id", "n7")].into_iter(),
        ))
        .unwrap();
        assert_eq!(c.node_id, "n7");
        assert_eq!(c.recent_len, 1000);
    }
}
