//! Several nodes, one set of limits: `[cluster]` shares per-path connection and rate limits,
//! throttle pauses, operator suspensions, the per-address rate limits and the suppression list
//! through Redis.
//!
//! Each node keeps its own spool (shared-nothing): only limits and lists are shared. Nothing on
//! the message path talks to Redis. One agent thread per node ([`agent`]) exchanges state with
//! Redis every [`TICK`] and leaves what it learnt in the shared structures the workers read
//! anyway:
//!
//! - a path's connection limit is leased: each node holds a grant from Redis (busy nodes split
//!   the limit evenly; a grant is counted against the others at what the node really holds, so
//!   the sum of open connections never exceeds the limit), and a connection over the node's
//!   grant closes after its message; the message rate is split among the busy nodes;
//! - throttle pauses, suspensions and suppressions travel as events on a Redis stream, and
//!   suppressions and suspensions are also kept in Redis hashes that a (re)joining node merges
//!   both ways;
//! - the per-address counts are exchanged: each node adds what the others counted in the
//!   current window to its own.
//!
//! Redis down or slow: a node keeps its grants for one `cluster.lease`, then takes its fallback
//! share of every limit (`delivery::sites::fallback_share`: the limit divided by the nodes last
//! seen, at least 1) and counts each address as if every node saw what it sees. It keeps
//! accepting and delivering; nothing acknowledged depends on Redis. It re-joins by itself.

mod agent;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::config::cluster::ClusterSettings;
use crate::delivery::sites::Sites;
use crate::delivery::suspend::Suspensions;
use crate::ratelimit::IpCounter;
use crate::suppress::Suppressions;

/// How often the agent exchanges state with Redis.
pub const TICK: Duration = Duration::from_millis(100);

/// Changes made on this node that the others must learn, waiting for Redis. At most this many
/// are kept while Redis is away; the rest are merged from the lists at the re-join.
const BACKLOG: usize = 100_000;

/// What the agent shares: the structures the workers read.
pub struct Parts {
    /// Destination paths and their limits.
    pub sites: Arc<Sites>,
    /// The suppression list.
    pub suppressions: Arc<Suppressions>,
    /// Operator suspensions.
    pub suspensions: Arc<Suspensions>,
    /// Per-address counters by name (`connections`, `messages`, `auth_failures`).
    pub counters: Vec<(&'static str, Arc<IpCounter>)>,
}

/// A change this node made that the other nodes must learn.
#[derive(Debug)]
enum Outgoing {
    Suppression(crate::suppress::Change),
    Suspension(crate::delivery::suspend::Change),
}

/// The cluster membership of this node: its settings and its state, for the metrics.
pub struct Cluster {
    settings: ClusterSettings,
    /// Whether the last exchange with Redis succeeded.
    up: AtomicBool,
    /// Live nodes last seen in Redis (this one included).
    nodes: AtomicUsize,
    /// Times the node lost Redis and fell back to its local shares.
    fallbacks: AtomicU64,
    /// Events sent to and applied from the other nodes.
    events_out: AtomicU64,
    events_in: AtomicU64,
    /// Changes dropped because the backlog was full while Redis was away.
    dropped: AtomicU64,
    outbox: crossbeam_channel::Sender<Outgoing>,
    stop: AtomicBool,
    /// Set by the agent when it has stopped (and left Redis's node set).
    finished: AtomicBool,
}

impl Cluster {
    /// Joins the cluster: checks that no other node holds this node's number (when Redis
    /// answers; it is checked again at every join), wires the shared structures and starts the
    /// agent thread.
    pub fn start(settings: ClusterSettings, parts: Parts) -> Result<Arc<Cluster>> {
        let client = client(&settings)?;
        // A node number held by another node stops the start; Redis being away does not.
        let claimed = client
            .get_connection_with_timeout(Duration::from_secs(2))
            .map_err(anyhow::Error::from)
            .and_then(|mut con| agent::claim_node_id(&mut con, &settings));
        match claimed {
            Err(e) if e.downcast_ref::<agent::Conflict>().is_some() => return Err(e),
            Err(e) => tracing::warn!(
                redis = %settings.redis,
                error = %format!("{e:#}"),
                "cluster: Redis cannot be reached at start; running on the fallback shares until it can"
            ),
            Ok(()) => {}
        }
        let (tx, rx) = crossbeam_channel::bounded(BACKLOG);
        let cluster = Arc::new(Cluster {
            nodes: AtomicUsize::new(settings.nodes),
            settings,
            up: AtomicBool::new(false),
            fallbacks: AtomicU64::new(0),
            events_out: AtomicU64::new(0),
            events_in: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            outbox: tx,
            stop: AtomicBool::new(false),
            finished: AtomicBool::new(false),
        });
        parts
            .suspensions
            .set_id_base(u64::from(cluster.settings.node_id) << 40);
        let c = Arc::clone(&cluster);
        parts.suppressions.on_change(Box::new(move |change| {
            c.send(Outgoing::Suppression(change.clone()))
        }));
        let c = Arc::clone(&cluster);
        parts.suspensions.on_change(Box::new(move |change| {
            c.send(Outgoing::Suspension(change.clone()))
        }));
        for (_, counter) in &parts.counters {
            counter.share();
        }
        parts
            .sites
            .set_sharing(crate::delivery::sites::Sharing::Leased);
        let agent = agent::Agent::new(Arc::clone(&cluster), client, parts, rx);
        std::thread::Builder::new()
            .name("ringmta-cluster".into())
            .spawn(move || agent.run())
            .context("cannot start the cluster thread")?;
        Ok(cluster)
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.settings.node
    }

    /// This node's number in queue ids.
    pub fn node_id(&self) -> u8 {
        self.settings.node_id
    }

    /// Stops the agent (at shutdown) and waits for it, at most a second, to give this node's
    /// leases back.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while !self.finished.load(Ordering::Acquire) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn send(&self, change: Outgoing) {
        if self.outbox.try_send(change).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Appends the cluster's metrics in the Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let node = &self.settings.node;
        let gauges = [
            (
                "ringmta_cluster_redis_up",
                "gauge",
                "1 while this node exchanges state with Redis, 0 while it runs on its fallback shares",
                u64::from(self.up.load(Ordering::Acquire)),
            ),
            (
                "ringmta_cluster_nodes",
                "gauge",
                "live nodes last seen in Redis, this one included",
                self.nodes.load(Ordering::Acquire) as u64,
            ),
            (
                "ringmta_cluster_fallbacks_total",
                "counter",
                "times this node lost Redis and fell back to its local shares",
                self.fallbacks.load(Ordering::Relaxed),
            ),
            (
                "ringmta_cluster_events_sent_total",
                "counter",
                "throttles, suspensions and suppressions sent to the other nodes",
                self.events_out.load(Ordering::Relaxed),
            ),
            (
                "ringmta_cluster_events_applied_total",
                "counter",
                "throttles, suspensions and suppressions applied from the other nodes",
                self.events_in.load(Ordering::Relaxed),
            ),
            (
                "ringmta_cluster_changes_dropped_total",
                "counter",
                "changes not queued for the other nodes because Redis was away too long (merged at the re-join)",
                self.dropped.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{node=\"{node}\"}} {value}"
            );
        }
    }
}

/// A client of the configured Redis: TLS verified against `redis_ca_file` when it is set.
fn client(settings: &ClusterSettings) -> Result<redis::Client> {
    let url = settings.redis.as_str();
    let client = match &settings.redis_ca_file {
        None => redis::Client::open(url),
        Some(path) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("cluster.redis_ca_file {}", path.display()))?;
            redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
        }
    };
    client.with_context(|| format!("cluster.redis {url:?}"))
}

/// The node number `settings` claims, refused when another node's name holds it.
fn check_claim(settings: &ClusterSettings, holder: Option<String>) -> Result<()> {
    match holder {
        Some(other) if other != settings.node => bail!(
            "cluster: node number {} is held by node {other:?} (queue ids would collide): set a \
             free cluster.node_id for {:?}",
            settings.node_id,
            settings.node
        ),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_number_held_by_another_name_is_refused() {
        let s = ClusterSettings {
            redis: "redis://127.0.0.1".into(),
            redis_ca_file: None,
            node: "a".into(),
            node_id: 7,
            lease: Duration::from_secs(5),
            nodes: 2,
        };
        assert!(check_claim(&s, None).is_ok());
        assert!(check_claim(&s, Some("a".into())).is_ok());
        let e = check_claim(&s, Some("b".into())).unwrap_err().to_string();
        assert!(e.contains("node number 7 is held by node \"b\""), "{e}");
    }
}
