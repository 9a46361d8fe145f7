//! `[cluster]`: nodes that share their limits, throttles, suspensions and suppressions through
//! Redis (the `cluster` module). Off unless the section is present.

use std::time::Duration;

use serde::Deserialize;

use super::resolved::Resolver;

/// `[cluster]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// `redis://[:password@]host:port[/db]`, or `rediss://` for TLS.
    pub redis: Option<String>,
    /// This node's name, unique in the cluster.
    pub node: Option<String>,
    /// PEM file of the certificate authorities a `rediss://` server is verified against.
    /// Default: the system's roots.
    pub redis_ca_file: Option<String>,
    /// The node number in queue ids, 1–255. Default: derived from `node`.
    pub node_id: Option<u8>,
    /// How long a silent node's leases last, and how long a node cut off from Redis keeps the
    /// share it held before taking its fallback share. Default: 5s.
    pub lease: Option<String>,
    /// The number of nodes a limit is divided among while Redis cannot be reached, before a
    /// count was ever read from it. Default: 2.
    pub nodes: Option<usize>,
}

/// The resolved `[cluster]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// The Redis URL.
    pub redis: String,
    /// The CA certificates (PEM) a `rediss://` server is verified against, if not the system's.
    pub redis_ca_file: Option<std::path::PathBuf>,
    /// This node's name.
    pub node: String,
    /// The node number in queue ids (never 0).
    pub node_id: u8,
    /// Lease time.
    pub lease: Duration,
    /// Nodes assumed while Redis was never reached.
    pub nodes: usize,
}

/// The node number a name gets when `node_id` is not set: FNV-1a of the name, in 1–255.
pub fn node_id_of(name: &str) -> u8 {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    (h % 255) as u8 + 1
}

pub(super) fn resolve(r: &mut Resolver, raw: Option<RawCluster>) -> Option<ClusterSettings> {
    let raw = raw?;
    let redis = raw.redis.clone().unwrap_or_default();
    if !(redis.starts_with("redis://") || redis.starts_with("rediss://")) {
        r.problem(
            "cluster.redis",
            "set it to a redis:// or rediss:// (TLS) URL, e.g. \"redis://127.0.0.1:6379\"",
        );
    } else if let Err(e) = redis::Client::open(redis.as_str()) {
        r.problem("cluster.redis", format!("{redis:?}: {e}"));
    }
    let node = raw.node.clone().unwrap_or_default();
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if node.is_empty() || node.len() > 64 || !node.chars().all(valid) {
        r.problem(
            "cluster.node",
            "set it to this node's name: 1 to 64 letters, digits, '-', '_' or '.'",
        );
    }
    if raw.node_id == Some(0) {
        r.problem(
            "cluster.node_id",
            "0 is a single host's number: use 1 to 255",
        );
    }
    let lease = r.duration("cluster.lease", raw.lease.as_ref(), Duration::from_secs(5));
    if lease < Duration::from_secs(1) {
        r.problem("cluster.lease", "at least 1s");
    }
    let nodes = raw.nodes.unwrap_or(2);
    if nodes == 0 {
        r.problem("cluster.nodes", "at least 1");
    }
    let redis_ca_file = raw.redis_ca_file.as_ref().map(std::path::PathBuf::from);
    if let Some(path) = &redis_ca_file {
        if !redis.starts_with("rediss://") {
            r.problem(
                "cluster.redis_ca_file",
                "only for a rediss:// (TLS) cluster.redis",
            );
        } else if let Err(e) = std::fs::metadata(path) {
            r.problem(
                "cluster.redis_ca_file",
                format!("cannot read {}: {e}", path.display()),
            );
        }
    }
    Some(ClusterSettings {
        redis_ca_file,
        node_id: raw.node_id.unwrap_or_else(|| node_id_of(&node)),
        redis,
        node,
        lease,
        nodes: nodes.max(1),
    })
}

#[cfg(test)]
mod tests {
    use crate::config::from_toml;

    #[test]
    fn cluster_is_off_by_default_and_resolves_with_its_defaults() {
        assert_eq!(from_toml("", "t").unwrap().cluster, None);
        let c = from_toml(
            "[cluster]\nredis = \"redis://:pw@127.0.0.1:6379/2\"\nnode = \"mta-a\"\n",
            "t",
        )
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!(c.node, "mta-a");
        assert_eq!(c.node_id, super::node_id_of("mta-a"));
        assert_ne!(c.node_id, 0);
        assert_eq!(c.lease, std::time::Duration::from_secs(5));
        assert_eq!(c.nodes, 2);
    }

    #[test]
    fn cluster_problems_are_named() {
        let e = from_toml(
            "[cluster]\nredis = \"http://x\"\nnode = \"a b\"\nnode_id = 0\nlease = \"10ms\"\nnodes = 0\n",
            "t",
        )
        .unwrap_err()
        .to_string();
        for key in [
            "cluster.redis",
            "cluster.node",
            "cluster.node_id",
            "cluster.lease",
            "cluster.nodes",
        ] {
            assert!(e.contains(key), "{key} in {e}");
        }
    }
}
