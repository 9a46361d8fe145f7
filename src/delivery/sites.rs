//! Destination sites and their host-wide limits.
//!
//! A *site* is the set of mail hosts a domain resolves to: every domain a provider hosts on the
//! same MX set shares one site (MX rollup), and a static route is a site of its own. The limits
//! that a receiver counts — concurrent connections and messages per second — hold per site for
//! the whole process, whatever `threads` is: every core takes its connection slots and its send
//! times from the same [`Site`], with atomics.
//!
//! A site is looked up once per connection (behind a mutex); the per-message rate check is one
//! compare-and-swap on the site's next send time, with no lock.
//!
//! A site whose receiver answers `rate_limited` or `blocklisted` is throttled
//! ([`crate::queue::throttle`]): no new connection during the pause, then a connection limit
//! that ramps back. Only a throttled site's state is behind a lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::route::NextHop;
use crate::queue::shaping::{PathLimits, Rule, limits_for};
use crate::queue::throttle::{Signal, Throttle, ThrottlePolicy};

/// The name of the site a list of next hops belongs to: its host names, lower-cased, without a
/// trailing dot, sorted and deduplicated, joined by spaces. Two domains whose MX records name
/// the same hosts (in any order, with any preferences) get the same site.
pub fn site_of(hops: &[NextHop]) -> String {
    let mut names: Vec<String> = hops
        .iter()
        .map(|h| h.name.trim_end_matches('.').to_ascii_lowercase())
        .collect();
    names.sort();
    names.dedup();
    names.join(" ")
}

/// An egress path: (site, egress source).
type PathKey = (String, Option<String>);

/// How the connection limit of a path is shared with other nodes (`[cluster]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sharing {
    /// A single host: every path may use its whole limit.
    Alone,
    /// Leases from Redis: a new path opens nothing until its first grant.
    Leased,
    /// Redis cannot be reached: a new path takes its fallback share among this many nodes.
    Fallback(usize),
}

/// A node's share of a limit of `limit` among `nodes` nodes while they cannot agree through
/// Redis: `limit / nodes` rounded down, but at least 1 so that mail keeps moving (a limit
/// smaller than the number of nodes is then exceeded, by one connection per node at most).
pub fn fallback_share(limit: usize, nodes: usize) -> usize {
    (limit / nodes.max(1)).max(1).min(limit)
}

/// Every site the process has delivered to, with the limits they share.
pub struct Sites {
    /// The limits of a path no shaping rule matches (`[delivery]`).
    defaults: PathLimits,
    /// Operator rules, then built-in ones.
    rules: Vec<Rule>,
    /// Time zero of the sites' send times.
    epoch: Instant,
    /// By egress path: the limits hold per (site, source).
    sites: Mutex<HashMap<PathKey, Arc<Site>>>,
    /// The site each recipient domain resolved to last (for the queue summary by site).
    domains: Mutex<HashMap<String, String>>,
    /// How new paths start sharing their limits (`Sharing`, encoded by `sharing_code`).
    sharing: AtomicUsize,
}

/// `Sharing` in one word: 0 alone, `usize::MAX` leased, n a fallback among n nodes.
fn sharing_code(s: Sharing) -> usize {
    match s {
        Sharing::Alone => 0,
        Sharing::Leased => usize::MAX,
        Sharing::Fallback(n) => n.clamp(1, usize::MAX - 1),
    }
}

impl Sites {
    /// An empty registry: paths get the first matching rule's limits over `defaults`.
    pub fn new(defaults: PathLimits, rules: Vec<Rule>, epoch: Instant) -> Sites {
        Sites {
            defaults,
            rules,
            epoch,
            sites: Mutex::new(HashMap::new()),
            domains: Mutex::new(HashMap::new()),
            sharing: AtomicUsize::new(0),
        }
    }

    /// How paths created from now on share their limits with other nodes (the cluster agent
    /// sets it; existing paths get their caps from the agent itself).
    pub fn set_sharing(&self, sharing: Sharing) {
        self.sharing.store(sharing_code(sharing), Ordering::Release);
    }

    /// Every egress path used so far.
    pub fn paths(&self) -> Vec<Arc<Site>> {
        let sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
        sites.values().cloned().collect()
    }

    /// The egress path to the site named `name` from `source` (`None`: no egress source),
    /// created on first use with the limits of the first shaping rule for the site or for
    /// `domain`, the recipient domain it is looked up for.
    pub fn get(&self, name: &str, source: Option<&str>, domain: &str) -> Arc<Site> {
        {
            let mut domains = self.domains.lock().unwrap_or_else(|e| e.into_inner());
            if domains.get(domain).is_none_or(|s| s != name) {
                domains.insert(domain.to_owned(), name.to_owned());
            }
        }
        let key = (name.to_owned(), source.map(str::to_owned));
        let mut sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(site) = sites.get(&key) {
            return Arc::clone(site);
        }
        let (limits, rule) = limits_for(&self.rules, name, domain, self.defaults);
        let (cap, divisor) = match self.sharing.load(Ordering::Acquire) {
            0 => (usize::MAX, 1),
            usize::MAX => (0, 1),
            n => (fallback_share(limits.max_connections, n), n as u64),
        };
        let site = Arc::new(Site {
            name: name.to_owned(),
            domain: domain.to_owned(),
            cap: AtomicUsize::new(cap),
            rate_divisor: AtomicU64::new(divisor),
            signals: AtomicU64::new(0),
            last_signal: AtomicU8::new(0),
            own_until_ms: AtomicU64::new(0),
            retiring: AtomicUsize::new(0),
            source: source.map(str::to_owned),
            rule: rule.map(|r| r.origin.clone()),
            max_connections: limits.max_connections,
            max_messages_per_connection: limits.max_messages_per_connection,
            max_queue_lifetime_ms: limits.max_queue_lifetime_ms,
            send_interval_ns: match limits.max_messages_per_second {
                0 => 0,
                rate => 1_000_000_000 / u64::from(rate),
            },
            epoch: self.epoch,
            connections: AtomicUsize::new(0),
            next_send_ns: AtomicU64::new(0),
            waiting: Mutex::new(Vec::new()),
            policy: limits.throttle,
            throttled: AtomicBool::new(false),
            throttle: Mutex::new(Throttle::default()),
            outcomes: Default::default(),
        });
        sites.insert(key, Arc::clone(&site));
        site
    }

    /// Every egress path used so far, with its state at `now`, sorted by site then source.
    pub fn snapshot(&self, now: Instant) -> Vec<PathInfo> {
        let paths: Vec<Arc<Site>> = self
            .sites
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let mut out: Vec<PathInfo> = paths.iter().map(|s| s.info(now)).collect();
        out.sort_by(|a, b| (&a.site, &a.source).cmp(&(&b.site, &b.source)));
        out
    }

    /// The site `domain` resolved to last (`(not resolved yet)` before its first connection).
    pub fn site_name(&self, domain: &str) -> String {
        let domains = self.domains.lock().unwrap_or_else(|e| e.into_inner());
        domains
            .get(domain)
            .cloned()
            .unwrap_or_else(|| "(not resolved yet)".to_owned())
    }

    /// Adds up pending recipients by recipient domain into counts by the site each domain
    /// resolved to last; domains not resolved yet count under `""`.
    pub fn by_site<'a>(
        &self,
        by_domain: impl IntoIterator<Item = (&'a String, &'a u64)>,
    ) -> std::collections::BTreeMap<String, u64> {
        let domains = self.domains.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = std::collections::BTreeMap::new();
        for (domain, n) in by_domain {
            let site = domains.get(domain).cloned().unwrap_or_default();
            *out.entry(site).or_insert(0) += n;
        }
        out
    }

    /// Open connections per site (sites with none are left out), for metrics and tests.
    pub fn connections(&self) -> Vec<(String, usize)> {
        let sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<(String, usize)> = sites
            .values()
            .map(|s| (s.name.clone(), s.connections.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        out.sort();
        out
    }
}

/// What an egress path did, as counted per attempt result: the next hop accepted (2xx), the
/// attempt is to be tried again (4xx, connection failures), or the next hop refused (5xx).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathOutcome {
    /// 2xx.
    Delivered = 0,
    /// 4xx, or the connection failed.
    Deferred = 1,
    /// 5xx.
    Rejected = 2,
}

/// The state of one egress path (`GET /api/v1/sites`, `/metrics`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct PathInfo {
    /// The site (its MX host names).
    pub site: String,
    /// The egress source, if any.
    pub source: Option<String>,
    /// The shaping rule that set its limits, if any.
    pub rule: Option<String>,
    /// Connections open now.
    pub connections: usize,
    /// Connections allowed now (lower than the limit while throttled, 0 while paused).
    pub connection_limit: usize,
    /// Whether a throttling reply pauses or ramps it now.
    pub throttled: bool,
    /// Attempt results on this path: delivered, deferred, rejected.
    pub delivered: u64,
    /// See `delivered`.
    pub deferred: u64,
    /// See `delivered`.
    pub rejected: u64,
}

/// One egress path to a destination site: its connection slots and its next send time, shared
/// by every core.
pub struct Site {
    name: String,
    /// The recipient domain the path was first looked up for (its shaping rule's match).
    domain: String,
    /// The connections this node may hold, as leased through the cluster (`usize::MAX` alone).
    cap: AtomicUsize,
    /// The share of the message rate this node sends at: the interval is multiplied by it.
    rate_divisor: AtomicU64,
    /// Throttling signals taken from this node's own replies (not from other nodes).
    signals: AtomicU64,
    /// The last of them (`Signal as u8 + 1`; 0: none yet).
    last_signal: AtomicU8,
    /// The end of the pause the last of them started, in ms since `epoch`.
    own_until_ms: AtomicU64,
    /// Open connections that saw the path over its limit and are closing (each counted once).
    retiring: AtomicUsize,
    /// The egress source the path leaves from, if any.
    source: Option<String>,
    /// The shaping rule that set its limits (its origin), if any.
    rule: Option<String>,
    max_messages_per_connection: usize,
    /// The shaping rule's queue lifetime for mail to this path, in ms.
    max_queue_lifetime_ms: Option<u64>,
    max_connections: usize,
    /// Nanoseconds between two messages; 0 = unlimited.
    send_interval_ns: u64,
    epoch: Instant,
    connections: AtomicUsize,
    /// Earliest start of the next message, in ns since `epoch`.
    next_send_ns: AtomicU64,
    /// The cores waiting for a slot: each is woken once when one frees.
    waiting: Mutex<Vec<Arc<Notify>>>,
    policy: ThrottlePolicy,
    /// Whether `throttle` may limit the site now (set by a signal, cleared when the ramp is
    /// over, both under the `throttle` lock); an unthrottled site never takes that lock.
    throttled: AtomicBool,
    throttle: Mutex<Throttle>,
    /// Attempt results, indexed by [`PathOutcome`].
    outcomes: [AtomicU64; 3],
}

impl Site {
    /// The site's name (see [`site_of`]).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The egress source of this path, if any.
    pub fn source(&self) -> Option<&str> {
        self.source.as_deref()
    }

    /// Counts one attempt result on this path.
    pub fn count(&self, outcome: PathOutcome) {
        self.outcomes[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn info(&self, now: Instant) -> PathInfo {
        let limit = self.limit(now);
        let n = |o: PathOutcome| self.outcomes[o as usize].load(Ordering::Relaxed);
        PathInfo {
            site: self.name.clone(),
            source: self.source.clone(),
            rule: self.rule.clone(),
            connections: self.connections.load(Ordering::Acquire),
            connection_limit: limit,
            throttled: limit < self.max_connections.min(self.cap.load(Ordering::Acquire)),
            delivered: n(PathOutcome::Delivered),
            deferred: n(PathOutcome::Deferred),
            rejected: n(PathOutcome::Rejected),
        }
    }

    /// Messages a connection on this path carries before it closes.
    pub fn max_messages_per_connection(&self) -> usize {
        self.max_messages_per_connection
    }

    /// How long mail to this path may stay queued, in ms, when a shaping rule says so.
    pub fn max_queue_lifetime_ms(&self) -> Option<u64> {
        self.max_queue_lifetime_ms
    }

    /// The shaping rule that set this path's limits (`operator` or `builtin: <provider>`).
    pub fn rule(&self) -> Option<&str> {
        self.rule.as_deref()
    }

    /// Milliseconds since the sites' time zero.
    fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// How many connections the site may have open at `now`: its limit, or less while it is
    /// throttled or while the cluster leases this node less.
    fn limit(&self, now: Instant) -> usize {
        let cap = self.cap.load(Ordering::Acquire);
        if !self.throttled.load(Ordering::Acquire) {
            return self.max_connections.min(cap);
        }
        let throttle = self.throttle.lock().unwrap_or_else(|e| e.into_inner());
        let now_ms = self.ms(now);
        if throttle.is_over(now_ms, self.max_connections, &self.policy) {
            self.throttled.store(false, Ordering::Release);
        }
        throttle
            .limit(now_ms, self.max_connections, &self.policy)
            .min(cap)
    }

    /// Whether connections may start or take new messages at `now` (not paused).
    pub fn accepting(&self, now: Instant) -> bool {
        self.limit(now) > 0
    }

    /// The recipient domain the path was first looked up for.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The path's own connection limit (before throttles and cluster shares).
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// Connections open now, and whether a core waits for a slot.
    pub fn demand(&self) -> (usize, bool) {
        let waiting = !self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty();
        (self.connections.load(Ordering::Acquire), waiting)
    }

    /// Sets the connections this node may hold (its cluster lease or fallback share) and the
    /// divisor of its message rate; a raised cap wakes the cores waiting for a slot.
    pub fn set_share(&self, cap: usize, rate_divisor: u64) {
        self.rate_divisor
            .store(rate_divisor.max(1), Ordering::Release);
        let old = self.cap.swap(cap, Ordering::AcqRel);
        if cap > old {
            self.wake_waiting();
        }
    }

    /// The connections this node may hold now (`usize::MAX` when not limited by a cluster).
    pub fn cap(&self) -> usize {
        self.cap.load(Ordering::Acquire)
    }

    /// How many throttling signals this node's own replies gave, the last one, and what is
    /// left at `now` of the pause it started.
    pub fn own_signals(&self, now: Instant) -> (u64, Option<Signal>, Duration) {
        let last = match self.last_signal.load(Ordering::Acquire) {
            1 => Some(Signal::RateLimited),
            2 => Some(Signal::Blocklisted),
            _ => None,
        };
        let left = self
            .own_until_ms
            .load(Ordering::Acquire)
            .saturating_sub(self.ms(now));
        (
            self.signals.load(Ordering::Acquire),
            last,
            Duration::from_millis(left),
        )
    }

    /// Takes a throttling signal received at `now`; returns how long the site is paused.
    pub fn signal(&self, signal: Signal, now: Instant) -> Duration {
        self.last_signal.store(
            match signal {
                Signal::RateLimited => 1,
                Signal::Blocklisted => 2,
            },
            Ordering::Release,
        );
        let pause = self.signal_from_peer(signal, now);
        self.own_until_ms
            .store(self.ms(now) + pause.as_millis() as u64, Ordering::Release);
        self.signals.fetch_add(1, Ordering::AcqRel);
        pause
    }

    /// Takes a throttling signal another node received (`[cluster]`), at `now`.
    pub fn signal_from_peer(&self, signal: Signal, now: Instant) -> Duration {
        let mut throttle = self.throttle.lock().unwrap_or_else(|e| e.into_inner());
        let now_ms = self.ms(now);
        let until = throttle.signal(signal, now_ms, &self.policy);
        self.throttled.store(true, Ordering::Release);
        Duration::from_millis(until - now_ms)
    }

    /// Takes a connection slot, or, when every slot the site may use at `now` is taken (or it
    /// is paused), registers `wake` to be notified when one frees and returns `None`.
    pub fn acquire(self: &Arc<Self>, wake: &Arc<Notify>, now: Instant) -> Option<SiteSlot> {
        if let Some(slot) = self.try_acquire(now) {
            return Some(slot);
        }
        self.wait_for_slot(wake);
        // A slot freed between the first try and the registration woke nobody: try again.
        self.try_acquire(now)
    }

    /// Whether a connection slot is free at `now`.
    pub fn has_free_slot(&self, now: Instant) -> bool {
        self.connections.load(Ordering::Acquire) < self.limit(now)
    }

    /// Registers `wake` to be notified when a slot frees (a core whose mail waits for this
    /// path, which also tells the cluster agent that the path is wanted).
    pub fn wait_for_slot(&self, wake: &Arc<Notify>) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if !waiting.iter().any(|w| Arc::ptr_eq(w, wake)) {
            waiting.push(Arc::clone(wake));
        }
    }

    fn try_acquire(self: &Arc<Self>, now: Instant) -> Option<SiteSlot> {
        let limit = self.limit(now);
        self.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| SiteSlot {
                site: Arc::clone(self),
                retiring: AtomicBool::new(false),
            })
    }

    /// Reserves the next send time at or after `now`; returns how long to wait for it (the
    /// site's messages per second hold across every connection on every core).
    pub fn rate_delay(&self, now: Instant) -> Option<Duration> {
        if self.send_interval_ns == 0 {
            return None;
        }
        let now_ns = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        let interval = self
            .send_interval_ns
            .saturating_mul(self.rate_divisor.load(Ordering::Acquire));
        let reserved = self
            .next_send_ns
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |next| {
                Some(next.max(now_ns) + interval)
            })
            .expect("the update always succeeds");
        let slot = reserved.max(now_ns);
        (slot > now_ns).then(|| Duration::from_nanos(slot - now_ns))
    }
}

/// A connection slot of a site; freeing it (drop) wakes the cores that waited for one.
pub struct SiteSlot {
    site: Arc<Site>,
    /// Whether this connection was picked to close because the path is over its limit.
    retiring: AtomicBool,
}

impl SiteSlot {
    /// The site this slot belongs to.
    pub fn site(&self) -> &Arc<Site> {
        &self.site
    }

    /// Whether this connection should close rather than take another message at `now`: the
    /// path holds more connections than it may now (a throttle ramp, a smaller cluster
    /// grant). Only as many connections as are over the limit are picked, once each.
    pub fn over_limit(&self, now: Instant) -> bool {
        if self.retiring.load(Ordering::Acquire) {
            return true;
        }
        let limit = self.site.limit(now);
        let site = &self.site;
        let picked = site
            .retiring
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| {
                (site.connections.load(Ordering::Acquire).saturating_sub(r) > limit)
                    .then_some(r + 1)
            })
            .is_ok();
        if picked {
            self.retiring.store(true, Ordering::Release);
        }
        picked
    }
}

impl Drop for SiteSlot {
    fn drop(&mut self) {
        if self.retiring.load(Ordering::Acquire) {
            self.site.retiring.fetch_sub(1, Ordering::AcqRel);
        }
        self.site.connections.fetch_sub(1, Ordering::AcqRel);
        self.site.wake_waiting();
    }
}

impl Site {
    /// Wakes every core that waited for a slot.
    fn wake_waiting(&self) {
        let waiting = std::mem::take(&mut *self.waiting.lock().unwrap_or_else(|e| e.into_inner()));
        for wake in waiting {
            wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(conns: usize, rate: u32, throttle: ThrottlePolicy) -> PathLimits {
        PathLimits {
            max_connections: conns,
            max_messages_per_second: rate,
            max_messages_per_connection: 100,
            throttle,
            max_queue_lifetime_ms: None,
        }
    }

    fn hop(name: &str) -> NextHop {
        NextHop {
            name: name.to_owned(),
            addrs: vec![],
        }
    }

    #[test]
    fn domains_on_the_same_mx_hosts_share_a_site() {
        let a = site_of(&[hop("mx1.provider.test"), hop("MX2.provider.test.")]);
        let b = site_of(&[hop("mx2.provider.test"), hop("mx1.provider.test")]);
        assert_eq!(a, "mx1.provider.test mx2.provider.test");
        assert_eq!(a, b);
        assert_ne!(a, site_of(&[hop("mx1.provider.test")]));
        assert_eq!(site_of(&[hop("127.0.0.1:2525")]), "127.0.0.1:2525");
    }

    #[test]
    fn connection_slots_hold_for_every_core_and_a_freed_slot_wakes_a_waiter() {
        let t0 = Instant::now();
        let sites = Sites::new(limits(2, 0, ThrottlePolicy::default()), vec![], t0);
        let (core_a, core_b) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let site = sites.get("mx.test", None, "d.test");
        let one = site.acquire(&core_a, t0).expect("first slot");
        let two = sites
            .get("mx.test", None, "d.test")
            .acquire(&core_b, t0)
            .expect("second slot");
        assert!(site.acquire(&core_a, t0).is_none());
        assert!(site.acquire(&core_b, t0).is_none());
        assert!(site.acquire(&core_b, t0).is_none(), "registered once");
        let other_path = sites.get("mx.test", Some("source-a"), "d.test");
        assert!(
            other_path.acquire(&core_a, t0).is_some(),
            "another egress path"
        );
        assert_eq!(sites.connections(), [("mx.test".to_owned(), 2)]);
        assert_eq!(site.waiting.lock().unwrap().len(), 2);
        drop(one);
        assert!(
            site.waiting.lock().unwrap().is_empty(),
            "every waiter woken"
        );
        // Both cores hold a permit now: their next wait returns at once.
        let woken = |n: &Notify| {
            let fut = n.notified();
            let mut fut = std::pin::pin!(fut);
            fut.as_mut().enable()
        };
        assert!(woken(&core_a) && woken(&core_b));
        let three = site.acquire(&core_b, t0).expect("the freed slot");
        assert!(site.acquire(&core_a, t0).is_none());
        drop((two, three));
        assert!(sites.connections().is_empty());
    }

    #[test]
    fn the_rate_spaces_messages_across_connections() {
        let t0 = Instant::now();
        let sites = Sites::new(limits(4, 10, ThrottlePolicy::default()), vec![], t0);
        let site = sites.get("mx.test", None, "d.test");
        let other = sites.get("other.test", None, "d.test");
        let ms = Duration::from_millis;
        assert_eq!(site.rate_delay(t0), None);
        assert_eq!(site.rate_delay(t0), Some(ms(100)));
        assert_eq!(
            sites.get("mx.test", None, "d.test").rate_delay(t0),
            Some(ms(200))
        );
        assert_eq!(site.rate_delay(t0 + ms(250)), Some(ms(50)));
        assert_eq!(other.rate_delay(t0), None, "each site has its own rate");
        // Idle time is not saved up: after a pause the next message goes at once, one only.
        assert_eq!(site.rate_delay(t0 + ms(2000)), None);
        assert_eq!(site.rate_delay(t0 + ms(2000)), Some(ms(100)));
        assert_eq!(
            Sites::new(limits(1, 0, ThrottlePolicy::default()), vec![], t0)
                .get("x", None, "d.test")
                .rate_delay(t0),
            None
        );
    }

    #[test]
    fn a_throttled_site_takes_no_connection_during_the_pause_then_ramps_back() {
        let t0 = Instant::now();
        let policy = ThrottlePolicy {
            pause_ms: 1_000,
            blocklist_pause_ms: 10_000,
            ramp_step_ms: 500,
        };
        let sites = Sites::new(limits(4, 0, policy), vec![], t0);
        let core = Arc::new(Notify::new());
        let site = sites.get("mx.test", None, "d.test");
        let open = site.acquire(&core, t0).unwrap();
        let ms = Duration::from_millis;
        assert_eq!(site.signal(Signal::RateLimited, t0 + ms(100)), ms(1_000));
        assert!(
            !site.accepting(t0 + ms(100)),
            "paused: the open connection stops too"
        );
        assert!(site.acquire(&core, t0 + ms(1_099)).is_none());
        assert!(!site.has_free_slot(t0 + ms(1_099)));
        // After the pause: one connection, and the one still open counts.
        assert!(site.accepting(t0 + ms(1_100)));
        assert!(site.acquire(&core, t0 + ms(1_100)).is_none());
        drop(open);
        let one = site.acquire(&core, t0 + ms(1_100)).unwrap();
        assert!(site.acquire(&core, t0 + ms(1_599)).is_none());
        let two = site.acquire(&core, t0 + ms(1_600)).unwrap();
        // Back at full strength: the lock is no longer taken.
        let (three, four) = (
            site.acquire(&core, t0 + ms(2_100)).unwrap(),
            site.acquire(&core, t0 + ms(2_100)).unwrap(),
        );
        assert!(!site.throttled.load(Ordering::Acquire));
        assert!(
            site.acquire(&core, t0 + ms(2_100)).is_none(),
            "the limit is 4"
        );
        drop((one, two, three, four));
        assert!(
            sites
                .get("other.test", None, "d.test")
                .accepting(t0 + ms(200)),
            "one site only"
        );
    }

    #[test]
    fn a_lower_cap_closes_only_the_connections_over_it_and_a_higher_one_wakes_the_waiters() {
        let t0 = Instant::now();
        let sites = Sites::new(limits(4, 10, ThrottlePolicy::default()), vec![], t0);
        sites.set_sharing(Sharing::Leased);
        let core = Arc::new(Notify::new());
        let site = sites.get("mx.test", None, "d.test");
        assert!(site.acquire(&core, t0).is_none(), "no grant yet");
        assert_eq!(site.demand(), (0, true), "wanted");
        site.set_share(4, 2);
        assert!(
            site.waiting.lock().unwrap().is_empty(),
            "the grant woke the core"
        );
        let slots: Vec<SiteSlot> = (0..4).map(|_| site.acquire(&core, t0).unwrap()).collect();
        // The rate is shared by two nodes: twice the interval.
        assert_eq!(site.rate_delay(t0), None);
        assert_eq!(site.rate_delay(t0), Some(Duration::from_millis(200)));
        // The grant drops to 1: three connections close, once each, and the fourth stays.
        site.set_share(1, 1);
        let over: Vec<bool> = slots.iter().map(|s| s.over_limit(t0)).collect();
        assert_eq!(over, [true, true, true, false]);
        assert!(slots[0].over_limit(t0), "still picked");
        assert!(!slots[3].over_limit(t0));
        let mut slots = slots;
        slots.truncate(1);
        slots.pop();
        assert_eq!(site.retiring.load(Ordering::Acquire), 0);
        // Another node's throttle pauses this one's path too.
        assert_eq!(
            site.signal_from_peer(Signal::RateLimited, t0),
            Duration::from_millis(60_000)
        );
        assert!(!site.accepting(t0));
        assert_eq!(site.own_signals(t0).0, 0, "not this node's own signal");
        // Fallback: new paths take their share among the nodes last seen.
        sites.set_sharing(Sharing::Fallback(3));
        assert_eq!(sites.get("other.test", None, "d.test").cap(), 1);
        assert_eq!(fallback_share(10, 3), 3);
        assert_eq!(fallback_share(1, 3), 1);
        assert_eq!(fallback_share(0, 3), 0);
    }

    #[test]
    fn a_shaping_rule_sets_the_limits_of_the_paths_it_matches() {
        use crate::queue::shaping::RuleLimits;
        let rule = Rule {
            domain: None,
            mx: Some("*.google.com".into()),
            limits: RuleLimits {
                max_connections: Some(1),
                max_messages_per_connection: Some(5),
                ..RuleLimits::default()
            },
            origin: "operator".into(),
        };
        let t0 = Instant::now();
        let sites = Sites::new(limits(8, 0, ThrottlePolicy::default()), vec![rule], t0);
        let core = Arc::new(Notify::new());
        let gmail = sites.get("a.l.google.com b.l.google.com", Some("ip1"), "gmail.com");
        assert_eq!(
            (gmail.rule(), gmail.max_messages_per_connection()),
            (Some("operator"), 5)
        );
        let _one = gmail.acquire(&core, t0).unwrap();
        assert!(gmail.acquire(&core, t0).is_none(), "max_connections = 1");
        let other = sites.get("mx.other.test", None, "other.test");
        assert_eq!(
            (other.rule(), other.max_messages_per_connection()),
            (None, 100)
        );
    }
}
