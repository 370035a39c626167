//! Benchmarks and the regression gate. Filled by the loadgen and storage issues.
