//! `Config::validate`: every bound of the configuration, checked at start (and by
//! `edge config`), each error naming its field.

use super::{Config, ConfigError};

impl Config {
    /// Checks every bound; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, message: &str| {
            Err(ConfigError::Invalid {
                field,
                message: message.to_owned(),
            })
        };
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return invalid("listen", "must be an IP:port address");
        }
        if self.cores > 1024 {
            return invalid("cores", "must be at most 1024");
        }
        if self.max_frame_bytes < 125 || self.max_message_bytes < self.max_frame_bytes.min(125) {
            return invalid("max_frame_bytes", "must be at least 125");
        }
        if self.max_message_bytes < self.max_frame_bytes {
            return invalid("max_message_bytes", "must be >= max_frame_bytes");
        }
        if self.max_body_chars == 0 {
            return invalid("max_body_chars", "must be positive");
        }
        self.validate_chat()?;
        if self.max_head_bytes < 512 {
            return invalid("max_head_bytes", "must be at least 512");
        }
        if !(self.max_msgs_per_s.is_finite() && self.max_msgs_per_s > 0.0) {
            return invalid("max_msgs_per_s", "must be a positive number");
        }
        if self.mesh_ring_capacity < 64 {
            return invalid("mesh_ring_capacity", "must be at least 64");
        }
        if self.outbound_queue_max_frames == 0 || self.outbound_queue_max_bytes < self.max_frame_bytes {
            return invalid("outbound_queue_max_bytes", "must be >= max_frame_bytes");
        }
        self.validate_outbound()?;
        if let Some(a) = &self.admin_listen {
            if a.parse::<std::net::SocketAddr>().is_err() {
                return invalid("admin_listen", "must be an IP:port address");
            }
            if *a == self.listen {
                return invalid("admin_listen", "must differ from listen");
            }
        }
        if let Some(p) = &self.echo_path {
            if !p.starts_with('/') || p == "/ws" {
                return invalid("echo_path", "must start with '/' and differ from /ws");
            }
            let loopback = self.listen.parse::<std::net::SocketAddr>().is_ok_and(|a| a.ip().is_loopback());
            if !loopback && !self.echo_allow_public {
                return invalid(
                    "echo_path",
                    "the echo endpoint is a conformance-testing tool without authentication: it is served only on a loopback --listen address unless echo_allow_public = true (EDGE_ECHO_ALLOW_PUBLIC)",
                );
            }
        }
        if !(self.admission_rate_per_shard.is_finite() && self.admission_rate_per_shard >= 0.0) {
            return invalid("admission_rate_per_shard", "must be a number >= 0 (0 admits everything)");
        }
        if self.recent_per_room_bytes < 1024 {
            return invalid("recent_per_room_bytes", "must be at least 1024");
        }
        if self.admission_burst == 0 {
            return invalid("admission_burst", "must be at least 1");
        }
        if self.mesh_spill_max_frames < 2 {
            return invalid("mesh_spill_max_frames", "must be at least 2");
        }
        if let Err(e) = self.trusted_proxy_nets() {
            return invalid("trusted_proxies", &e);
        }
        if self.node_id.is_empty() || self.node_id.len() > 64 {
            return invalid("node_id", "must be 1..=64 bytes");
        }
        if !(1..=storage::MAX_PAGE_MESSAGES).contains(&self.max_catch_up_messages) {
            return invalid("max_catch_up_messages", "must be 1..=1000");
        }
        if self.room_load_queue_max == 0 {
            return invalid("room_load_queue_max", "must be at least 1");
        }
        if let Err(e) = self.store_config().validate() {
            return invalid("store", &e.to_string());
        }
        if let Some(b) = self.bridge_config() {
            if let Err(e) = b.validate() {
                return invalid("redis_url", &e.to_string());
            }
        }
        Ok(())
    }

    /// The bounds of presence and typing.
    fn validate_chat(&self) -> Result<(), ConfigError> {
        let invalid = |field, message: &str| {
            Err(ConfigError::Invalid {
                field,
                message: message.to_owned(),
            })
        };
        if self.presence_roster_max == 0 {
            return invalid("presence_roster_max", "must be positive");
        }
        if self.typing_ttl_ms == 0 {
            return invalid("typing_ttl_ms", "must be positive");
        }
        if self.typing_interval_ms > self.typing_ttl_ms {
            return invalid("typing_interval_ms", "must be <= typing_ttl_ms");
        }
        Ok(())
    }

    /// The bounds of what is sent to clients beyond the outbound queue.
    fn validate_outbound(&self) -> Result<(), ConfigError> {
        let invalid = |field, message: &str| {
            Err(ConfigError::Invalid {
                field,
                message: message.to_owned(),
            })
        };
        if self.reply_budget_bytes < self.max_frame_bytes {
            return invalid("reply_budget_bytes", "must be >= max_frame_bytes");
        }
        if self.history_page_max_bytes < self.max_frame_bytes {
            return invalid("history_page_max_bytes", "must be >= max_frame_bytes");
        }
        if self.write_stall_timeout_ms < 100 {
            return invalid("write_stall_timeout_ms", "must be at least 100");
        }
        if self
            .api_keys
            .iter()
            .any(|k| k.len() < 16 || k.bytes().any(|b| !b.is_ascii_graphic()))
        {
            return invalid("api_keys", "each key must be at least 16 bytes of printable ASCII without spaces");
        }
        if !(1024..=16 << 20).contains(&self.api_max_body_bytes) {
            return invalid("api_max_body_bytes", "must be 1024..=16777216");
        }
        if self.api_timeout_ms < 100 {
            return invalid("api_timeout_ms", "must be at least 100");
        }
        Ok(())
    }
}
