//! Rate limits: GCRA for per-connection message rates and admission control.

pub mod admission;
pub mod gcra;
