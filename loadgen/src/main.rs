//! The companion load generator. Filled by the loadgen issue (#2).

fn main() -> anyhow::Result<()> {
    anyhow::bail!("loadgen is not built yet: see the loadgen issue (#2)")
}
