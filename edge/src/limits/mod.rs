//! Rate limits: GCRA for per-connection message rates and admission control.

pub mod gcra;
