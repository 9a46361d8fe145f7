//! Per-client-address event counts over a fixed window, shared by every worker: connection and
//! message rate limits, and the AUTH failure throttle.
//!
//! SO_REUSEPORT spreads one address's connections over all cores, so a per-core count would
//! let a client through `cores` times the limit. The counts live behind a few mutexes sharded
//! by address; a check is one uncontended lock and one hash lookup, paid once per connection
//! or per MAIL, never per byte.
//!
//! IPv6 clients are counted per /64: one end site usually holds a whole /64, so counting
//! single addresses would let it rotate through 2^64 of them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

const SHARDS: usize = 16;
/// Entries per shard before expired windows are swept out (at most once per window).
const SWEEP_AT: usize = 8192;
/// Entries per shard that no sweep can bring down (a flood from very many addresses) are
/// forgotten all at once: the counts fail open rather than make every check scan the map.
const HARD_CAP: usize = 4 * SWEEP_AT;

/// Events per address within a window, e.g. "at most 60 connections per minute".
#[derive(Debug)]
pub struct IpCounter {
    window: Duration,
    /// Keyed per process, so that an attacker cannot choose addresses that share a shard.
    hasher: std::hash::RandomState,
    shards: [Mutex<Shard>; SHARDS],
    /// Set when a cluster shares this counter (`[cluster]`): this node's own count is
    /// multiplied by it, 1 while the nodes exchange counts, the number of nodes while they
    /// cannot (each node then allows its share of the limit). Unset: no cluster.
    factor: OnceLock<AtomicU32>,
}

#[derive(Debug, Default)]
struct Shard {
    map: HashMap<IpAddr, Window>,
    last_sweep: Option<Instant>,
    /// With a cluster: the events counted here since the last exchange, and what the other
    /// nodes counted in the current window as of that exchange.
    pending: HashMap<IpAddr, u32>,
    others: HashMap<IpAddr, u32>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    events: u32,
}

impl IpCounter {
    /// A counter whose windows last `window`.
    pub fn new(window: Duration) -> IpCounter {
        IpCounter {
            window,
            hasher: std::hash::RandomState::new(),
            shards: std::array::from_fn(|_| Mutex::new(Shard::default())),
            factor: OnceLock::new(),
        }
    }

    /// The length of a window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Starts keeping the events counted here for the other nodes of a cluster, and adding
    /// theirs to every count.
    pub fn share(&self) {
        let _ = self.factor.set(AtomicU32::new(1));
    }

    /// The events counted here since the last call, by address (IPv6 by /64).
    pub fn take_pending(&self) -> Vec<(IpAddr, u32)> {
        self.shards
            .iter()
            .flat_map(|s| std::mem::take(&mut s.lock().unwrap_or_else(|e| e.into_inner()).pending))
            .collect()
    }

    /// Sets what the other nodes counted in the current window, and the factor of this node's
    /// own counts (see `factor`).
    pub fn set_peers(&self, others: HashMap<IpAddr, u32>, factor: u32) {
        let Some(f) = self.factor.get() else { return };
        let mut by_shard: Vec<HashMap<IpAddr, u32>> = vec![HashMap::new(); SHARDS];
        for (ip, n) in others {
            by_shard[self.shard_of(ip)].insert(ip, n);
        }
        for (shard, others) in self.shards.iter().zip(by_shard) {
            shard.lock().unwrap_or_else(|e| e.into_inner()).others = others;
        }
        f.store(factor.max(1), Ordering::Release);
    }

    /// A count of this node's `local` events from the address keyed `key`, with the cluster's
    /// (under the shard's lock, already held).
    fn with_peers(&self, shard: &mut Shard, key: IpAddr, local: u32, counted: bool) -> u32 {
        let Some(factor) = self.factor.get() else {
            return local;
        };
        if counted {
            *shard.pending.entry(key).or_insert(0) += 1;
        }
        let others = shard.others.get(&key).copied().unwrap_or(0);
        local
            .saturating_mul(factor.load(Ordering::Acquire))
            .saturating_add(others)
    }

    /// Counts one event from `ip` at `now`; returns the events in its current window,
    /// this one included.
    pub fn add(&self, ip: IpAddr, now: Instant) -> u32 {
        let key = key(ip);
        let mut shard = self.shard(key);
        let window = self.window;
        let due = shard
            .last_sweep
            .is_none_or(|t| now.saturating_duration_since(t) >= window);
        if shard.map.len() >= SWEEP_AT && due {
            shard
                .map
                .retain(|_, w| now.saturating_duration_since(w.started) < window);
            shard.last_sweep = Some(now);
        }
        if shard.map.len() >= HARD_CAP {
            shard.map.clear();
        }
        let w = shard.map.entry(key).or_insert(Window {
            started: now,
            events: 0,
        });
        if now.saturating_duration_since(w.started) >= self.window {
            *w = Window {
                started: now,
                events: 0,
            };
        }
        w.events = w.events.saturating_add(1);
        let local = w.events;
        self.with_peers(&mut shard, key, local, true)
    }

    /// Events from `ip` in its current window, without counting one.
    pub fn count(&self, ip: IpAddr, now: Instant) -> u32 {
        let key = key(ip);
        let mut shard = self.shard(key);
        let local = shard
            .map
            .get(&key)
            .filter(|w| now.saturating_duration_since(w.started) < self.window)
            .map_or(0, |w| w.events);
        self.with_peers(&mut shard, key, local, false)
    }

    fn shard_of(&self, key: IpAddr) -> usize {
        use std::hash::BuildHasher;
        (self.hasher.hash_one(key) as usize) % SHARDS
    }

    fn shard(&self, key: IpAddr) -> std::sync::MutexGuard<'_, Shard> {
        let shard = &self.shards[self.shard_of(key)];
        // A panic while holding the lock leaves counts that are still valid numbers.
        shard.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A limit of `max` events per window; `max == 0` turns it off.
#[derive(Debug)]
pub struct RateLimit {
    max: u32,
    counter: Arc<IpCounter>,
}

impl RateLimit {
    /// `max` events per `window`; 0 means unlimited.
    pub fn new(max: u32, window: Duration) -> RateLimit {
        RateLimit {
            max,
            counter: Arc::new(IpCounter::new(window)),
        }
    }

    /// Its counter (a cluster shares it), when the limit is on.
    pub fn counter(&self) -> Option<Arc<IpCounter>> {
        (self.max > 0).then(|| Arc::clone(&self.counter))
    }

    /// Counts one event; `false` when `ip` has gone over the limit in this window.
    pub fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        self.max == 0 || self.counter.add(ip, now) <= self.max
    }
}

/// The address a count is kept under: IPv4 as is, IPv6 by its /64 (IPv4-mapped IPv6 as IPv4).
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_limit_holds_within_a_window_and_resets_after_it() {
        let limit = RateLimit::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        assert!((0..3).all(|_| limit.allow(a, t0)));
        assert!(!limit.allow(a, t0 + Duration::from_secs(59)));
        assert!(
            limit.allow(ip("192.0.2.2"), t0),
            "other addresses unaffected"
        );
        assert!(limit.allow(a, t0 + Duration::from_secs(60)), "new window");
    }

    #[test]
    fn a_shared_counter_adds_the_other_nodes_counts_and_keeps_its_own_for_them() {
        let c = IpCounter::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let (a, b) = (ip("192.0.2.1"), ip("2001:db8::1"));
        assert_eq!(c.add(a, t0), 1);
        assert!(c.take_pending().is_empty(), "not shared: nothing kept");
        c.share();
        assert_eq!(c.add(a, t0), 2);
        assert_eq!(c.add(b, t0), 1);
        let mut pending = c.take_pending();
        pending.sort();
        assert_eq!(pending, [(a, 1), (key(b), 1)]);
        assert!(c.take_pending().is_empty(), "taken once");
        // The others counted 5 from a: every count adds them.
        c.set_peers(HashMap::from([(a, 5)]), 1);
        assert_eq!(c.count(a, t0), 7);
        assert_eq!(c.add(a, t0), 8);
        assert_eq!(c.count(b, t0), 1);
        // Redis away, two nodes: this node's own events count twice, the others' are unknown.
        c.set_peers(HashMap::new(), 2);
        assert_eq!(c.count(a, t0), 6);
    }

    #[test]
    fn zero_means_unlimited() {
        let limit = RateLimit::new(0, Duration::from_secs(60));
        let t0 = Instant::now();
        assert!((0..10_000).all(|_| limit.allow(ip("192.0.2.1"), t0)));
    }

    #[test]
    fn ipv6_is_counted_per_64_and_mapped_ipv4_as_ipv4() {
        let c = IpCounter::new(Duration::from_secs(60));
        let t0 = Instant::now();
        c.add(ip("2001:db8:1:2::1"), t0);
        c.add(ip("2001:db8:1:2:ffff::9"), t0);
        assert_eq!(c.count(ip("2001:db8:1:2::77"), t0), 2);
        assert_eq!(c.count(ip("2001:db8:1:3::1"), t0), 0);
        c.add(ip("::ffff:192.0.2.7"), t0);
        assert_eq!(c.count(ip("192.0.2.7"), t0), 1);
    }

    #[test]
    fn expired_windows_are_swept_so_memory_stays_bounded() {
        let c = IpCounter::new(Duration::from_secs(1));
        let t0 = Instant::now();
        for i in 0..(SHARDS * SWEEP_AT * 2) as u32 {
            let t = t0 + Duration::from_secs(u64::from(i) / 1000);
            c.add(IpAddr::V4(i.into()), t);
        }
        let held: usize = c.shards.iter().map(|s| s.lock().unwrap().map.len()).sum();
        assert!(held <= SHARDS * SWEEP_AT, "{held} entries held");
    }

    /// Addresses that never expire (a flood within one window) cannot make every check scan
    /// the map: sweeps run at most once per window, and a shard past the hard cap is cleared.
    #[test]
    fn a_flood_of_live_addresses_is_capped() {
        let c = IpCounter::new(Duration::from_secs(3600));
        let t0 = Instant::now();
        for i in 0..(SHARDS * HARD_CAP * 2) as u32 {
            c.add(IpAddr::V4(i.into()), t0);
        }
        for s in &c.shards {
            let s = s.lock().unwrap();
            assert!(s.map.len() <= HARD_CAP, "{}", s.map.len());
            assert_eq!(s.last_sweep, Some(t0), "swept once, not per event");
        }
    }
}
