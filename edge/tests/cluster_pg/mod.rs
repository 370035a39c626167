//! A cluster on a shared PostgreSQL store, for the cluster tests that need one.

use crate::cluster_support::{start_cluster_with, Member, ENVS};
use crate::common::{self, RedisServer};
use crate::pg;

/// `n` nodes on a private Redis and a fresh PostgreSQL database, with `extra` in their
/// environment, and one sender per node joined to `room` (so each node publishes, and
/// writes, its own share).
pub(crate) fn cluster_on_postgres(
    n: usize,
    extra: &[(&str, &str)],
    room: &str,
) -> (RedisServer, pg::TestDb, Vec<common::Server>, Vec<Member>) {
    let redis = RedisServer::start();
    let db = pg::TestDb::create();
    let mut envs = ENVS.to_vec();
    envs.extend([("EDGE_STORE", "postgres"), ("EDGE_POSTGRES_URL", db.url.as_str())]);
    envs.extend(extra);
    let nodes = start_cluster_with(n, &redis, &envs);
    let mut senders: Vec<Member> = nodes
        .iter()
        .enumerate()
        .map(|(i, s)| Member::connect(s, &format!("n{}", i + 1), &format!("s{i}")))
        .collect();
    for s in &mut senders {
        s.join(room);
    }
    (redis, db, nodes, senders)
}
