//! Limits: GCRA for per-connection message rates and admission control, and the node's
//! connection limits (per node, client address and user).

pub mod admission;
pub mod client_ip;
pub mod conns;
pub mod gcra;
